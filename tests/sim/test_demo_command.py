"""The demo's verdict (sim/demo_command.py): the whole demo runs in tests/test_cli.py; here, what fails it."""

from sim.demo_command import passed, read_mismatches

CLEAN = {"passed": True, "mismatches": 0, "read_mismatches": 0}


def test_the_array_runs_read_mismatches_add_up_and_the_fc_core_has_none():
    assert read_mismatches("array", CLEAN, {**CLEAN, "read_mismatches": 2}) == 2
    assert read_mismatches("array", {**CLEAN, "read_mismatches": 1}, CLEAN) == 1
    assert read_mismatches("fc", {"passed": True}, {"passed": True}) is None


def test_a_score_or_read_mismatch_a_failed_run_or_a_design_too_large_fails_the_demo():
    summary = {"rtl_mismatches": 0, "read_mismatches": 0}
    assert passed(summary, CLEAN, CLEAN, True)
    assert passed({**summary, "read_mismatches": None}, {}, {}, True)  # the fully connected core
    assert not passed({**summary, "read_mismatches": 1}, CLEAN, CLEAN, True)
    assert not passed({**summary, "rtl_mismatches": 1}, CLEAN, CLEAN, True)
    assert not passed(summary, {**CLEAN, "passed": False}, CLEAN, True)
    assert not passed(summary, CLEAN, {**CLEAN, "passed": False}, True)
    assert not passed(summary, CLEAN, CLEAN, False)
