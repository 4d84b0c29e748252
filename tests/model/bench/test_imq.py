"""``bench imq`` (model/bench/imq.py): the budget, ticket selection on validation accuracy, the floors, and the
resumable runs (refused under another revision, ``--restart``)."""

import json

import pytest

import build
from model.bench import imq as bench
from model.bench.imq import analyse, bench_configs, floors
from model.errors import UserError
from model.runs import provenance
from model.runs.rundir import make_run_config
from model.runs.validation import val_count

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows():
    # IMQ iteration 1 has the better test accuracy, iteration 2 the better validation accuracy.
    return [
        {"method": "float", "avg_weight_bits": 32.0, "accuracy": 0.880, "val_accuracy": 0.870, "iteration": None},
        {"method": "imq", "avg_weight_bits": 32.0, "accuracy": 0.870, "val_accuracy": 0.860, "iteration": 0},
        {"method": "imq", "avg_weight_bits": 4.0, "accuracy": 0.876, "val_accuracy": 0.850, "iteration": 1},
        {"method": "imq", "avg_weight_bits": 2.0, "accuracy": 0.878, "val_accuracy": 0.865, "iteration": 2},
        {"method": "irq", "avg_weight_bits": 32.0, "accuracy": 0.870, "val_accuracy": 0.860, "iteration": 0},
        {"method": "irq", "avg_weight_bits": 8.0, "accuracy": 0.860, "val_accuracy": 0.850, "iteration": 1},
        {"method": "irq", "avg_weight_bits": 2.0, "accuracy": 0.800, "val_accuracy": 0.790, "iteration": 2},
    ]


def test_analysis_and_floors_by_hand():
    rows = _rows()
    a = analyse(rows)
    assert a["best_imq_at_most_4_bits"]["iteration"] == 2 and a["ticket_selected_on"] == "validation"
    assert a["gap_to_float_pp"] == pytest.approx(-0.2) and a["ticket_within_0.5pp"] is True
    # IRQ at 4 bits: halfway between 8 and 2 bits in log2 -> (0.86 + 0.80) / 2 = 0.83; at 2 bits: 0.80.
    assert [(m["avg_weight_bits"], m["irq_accuracy"]) for m in a["imq_vs_irq"]] == [
        (4.0, pytest.approx(0.83)), (2.0, pytest.approx(0.80))]
    assert a["imq_above_irq"] is True and a["mean_difference_pp"] == pytest.approx((4.6 + 7.8) / 2)
    assert floors(rows) == {
        "ticket_avg_weight_bits": {"value": 2.0, "floor": 4.0, "op": "<=", "holds": True},
        "ticket_minus_float_pp": {"value": pytest.approx(-0.2), "floor": -0.5, "op": ">=", "holds": True},
        "imq_minus_irq_min_pp": {"value": pytest.approx(4.6), "floor": 0.0, "op": ">", "holds": True},
    }


def test_the_ticket_is_chosen_on_validation_and_reported_on_test():
    rows = _rows()
    rows[3]["accuracy"] = 0.870  # the validation choice is now 1 pp below float on test ...
    rows[2]["accuracy"] = 0.880  # ... while the test set's own favourite would meet the floor
    f = floors(rows)
    assert analyse(rows)["best_imq_at_most_4_bits"]["iteration"] == 2
    assert f["ticket_minus_float_pp"]["value"] == pytest.approx(-1.0) and not f["ticket_minus_float_pp"]["holds"]
    # Rows without validation accuracies (written before the split existed) fall back to test accuracy.
    old = [{k: v for k, v in r.items() if k != "val_accuracy"} for r in rows]
    assert analyse(old)["best_imq_at_most_4_bits"]["iteration"] == 1 and analyse(old)["ticket_selected_on"] == "test"


def test_a_tie_in_the_ticket_choice_goes_to_the_earliest_iteration():
    rows = _rows()
    rows[2]["val_accuracy"] = rows[3]["val_accuracy"]  # iterations 1 and 2 tie on validation
    assert analyse(rows)["best_imq_at_most_4_bits"] is rows[2]


def test_floors_fail_when_imq_loses_to_irq_or_nothing_is_measured():
    rows = _rows()
    rows[2]["accuracy"] = 0.82  # below IRQ's 0.83 at 4 bits
    assert floors(rows)["imq_minus_irq_min_pp"] == {"value": pytest.approx(-1.0), "floor": 0.0, "op": ">",
                                                    "holds": False}
    unmeasured = floors([r for r in rows if r["method"] == "float"])
    assert all(e["value"] is None and not e["holds"] for e in unmeasured.values())


def test_bench_budget():
    full = dict(bench_configs())
    assert [c.method for c in full.values()] == ["imq", "irq", "imp", "qnn", "qnn", "qnn"]
    imq = full["imq"]
    assert (imq.data, imq.arch, imq.hidden, imq.act_bits, imq.rho, imq.iterations, imq.epochs) == (
        "fashion-mnist", "mlp", (256,), 8, 0.5, 15, 4)
    # 35,000 images loaded, a seeded 5,000 validate: every run trains on 30,000.
    assert all((c.train_subset, c.val_size, c.val_seed) == (35000, 5000, 0) for c in full.values())
    assert 35000 - val_count(imq.val_size, 35000) == 30000
    assert sum(c.iterations for c in full.values()) == 33 and imq.float_baseline
    smoke = dict(bench_configs(smoke=True))
    assert max(c.iterations for c in smoke.values()) == 3 and smoke["imq"].train_subset == 1000
    assert smoke["imq"].val_size == 200


def _tiny_configs(root=None, smoke=False):
    """The bench's runs on 200 digits (40 of them validate), 1 epoch, at most 2 iterations; IMQ halves every
    weight (rho 1) for 4 iterations, so it reaches a 4-bit ticket."""
    configs = []
    for name, settings in bench.RUNS:
        settings = {**settings, "iterations": min(settings.get("iterations", 1), 2)}
        if name == "imq":
            settings.update(rho=1.0, iterations=4)
        configs.append((name, make_run_config(**settings, data="digits", hidden=(8,), act_bits=8, train_subset=200,
                                              test_subset=100, val_size=40, epochs=1, batch_size=32, lr=0.01)))
    return configs


def test_bench_command_resumes_refuses_another_revision_and_restarts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "bench_configs", _tiny_configs)
    args = ["bench", "imq", "--smoke", "--quiet", "--out", str(tmp_path)]
    assert build.main(args) == 0
    out = capsys.readouterr().out
    assert "floors (in" in out and "ticket_minus_float_pp" in out and "chosen on validation accuracy" in out
    summary = json.loads((tmp_path / "imq_smoke_summary.json").read_text())
    assert summary["resumed"] is False and summary["resumed_runs"] == []
    assert summary["validation"] == {"size": 40, "seed": 0, "requested": 40, "train_images": 160}
    assert set(summary["floors"]) == {"ticket_avg_weight_bits", "ticket_minus_float_pp", "imq_minus_irq_min_pp"}
    assert summary["floors"] == floors(json.loads((tmp_path / "imq_smoke.json").read_text()))
    rows = json.loads((tmp_path / "imq_smoke.json").read_text())
    assert all(0 <= r["val_accuracy"] <= 1 for r in rows)
    assert {k for r in rows for k in r} == {"method", "label", "act_bits", "avg_weight_bits", "accuracy", "iteration",
                                            "run", "val_accuracy"}
    # --check turns a failing floor into exit status 1 (a 1-epoch MLP on 160 digits is far from float).
    assert not summary["floors"]["ticket_minus_float_pp"]["holds"]
    assert build.main([*args, "--check"]) == 1
    assert json.loads((tmp_path / "imq_smoke_summary.json").read_text())["resumed"] is True
    capsys.readouterr()

    real = provenance.code_revision()
    monkeypatch.setattr(provenance, "code_revision", lambda: {**real, "revision": "src:changed",
                                                              "source_sha256": "c" * 64})
    assert build.main(args) == 2
    err = capsys.readouterr().err
    assert "another code revision" in err and f"now '{'c' * 64}'" in err and "--restart" in err
    assert build.main([*args, "--restart"]) == 0
    summary = json.loads((tmp_path / "imq_smoke_summary.json").read_text())
    assert summary["resumed"] is False and summary["resumed_runs"] == []
    assert json.loads((tmp_path / "imq_smoke_runs" / "imq" / "run.json").read_text())["provenance"]["revision"] == (
        "src:changed")
    assert summary["provenance"]["revision"] == "src:changed"  # the floors say which code measured them


@pytest.mark.parametrize("restart", [False, True])
def test_restart_is_passed_to_the_runs(tmp_path, monkeypatch, restart):
    seen = []

    def fake_run(config, run_dir, progress=True, restart=False, on_step=None):
        seen.append((run_dir.name, restart))
        raise UserError("stop")

    monkeypatch.setattr(bench, "run", fake_run)
    with pytest.raises(UserError, match="stop"):
        bench.run_imq_bench(tmp_path, smoke=True, restart=restart)
    assert seen == [("imq", restart)]
