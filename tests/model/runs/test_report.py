"""Reports over run directories (model/runs/report.py), `build.py report`, and the bench's floors."""

import json

import pytest

import build
from model.bench.imq import bench_configs, floors
from model.errors import UserError
from model.methods.imq import IterationRecord
from model.runs.report import load_summary, markdown_table, table_rows, write_report
from model.runs.rundir import history_file, make_run_config, open_run, record_json, write_json


def make_run(path, method, points, float_accuracy=None, finished=True, **kwargs):
    """A run directory with a hand-written history: ``points`` are (avg_bits, accuracy) per iteration."""
    config = make_run_config(method, data="digits", hidden=(8,), act_bits=8, **kwargs)
    open_run(path, config)
    history = [record_json(IterationRecord(k, b, a, {})) for k, (b, a) in enumerate(points)]
    write_json(path / history_file(config), {"method": method, "float_accuracy": float_accuracy,
                                             "float_model": "FloatMLP" if float_accuracy else None,
                                             "history": history, "finished": finished})
    return path


@pytest.fixture
def runs(tmp_path):
    imq = make_run(tmp_path / "imq", "imq", [(32, 0.90), (20, 0.92), (9, 0.93), (5, 0.91), (3.5, 0.905), (1.9, 0.85)],
                   float_accuracy=0.915, iterations=6)
    irq = make_run(tmp_path / "irq", "irq", [(32, 0.90), (18, 0.89), (6, 0.88), (3, 0.84)], iterations=6,
                   finished=False)
    q8 = make_run(tmp_path / "q8", "qnn", [(8, 0.905)], weight_bits=8)
    q4 = make_run(tmp_path / "q4", "qnn", [(4, 0.89)], weight_bits=4)
    return [imq, irq, q8, q4]


def test_table_rows_follow_table_1(runs):
    rows = table_rows([load_summary(r) for r in runs])
    got = [(r["model"], r["avg_weight_bits"], r["accuracy"], r["iteration"], r["rule"]) for r in rows]
    assert got == [
        ("Full precision", 32.0, 0.915, None, "float"),
        ("MPQ-ticket (PACT-8), best", 9.0, 0.93, 2, "best"),
        # Algorithm 1 line 12: more accurate than iteration 0 (0.90), fewest bits: 3.5 bits at 0.905.
        ("MPQ-ticket (PACT-8)", 3.5, 0.905, 4, "algorithm-1"),
        ("MPQ-ticket (PACT-8, 8-bit)", 5.0, 0.91, 3, "<= 8 bits"),
        ("MPQ-ticket (PACT-8, 4-bit)", 3.5, 0.905, 4, "<= 4 bits"),
        ("MPQ-ticket (PACT-8, 2-bit)", 1.9, 0.85, 5, "<= 2 bits"),
        ("Random MPQ-ticket (PACT-8), best", 32.0, 0.90, 0, "best"),
        ("Random MPQ-ticket (PACT-8, 8-bit)", 6.0, 0.88, 2, "<= 8 bits"),
        ("Random MPQ-ticket (PACT-8, 4-bit)", 3.0, 0.84, 3, "<= 4 bits"),
        ("QNN (PACT-8, 8-bit)", 8.0, 0.905, 0, "single run"),
        ("QNN (PACT-8, 4-bit)", 4.0, 0.89, 0, "single run"),
    ]


def test_write_report(runs, tmp_path):
    rows, markdown, paths = write_report(runs, tmp_path / "out", budgets=(4.0,))
    assert paths["png"].stat().st_size > 5000
    assert paths["md"].read_text() == markdown
    assert "| MPQ-ticket (PACT-8, 4-bit) | imq | 8 | 3.50 | 90.50 | 4 | <= 4 bits |" in markdown
    assert "irq: partial run, 4 of 6 iterations" in markdown
    report = json.loads(paths["json"].read_text())
    assert report["rows"] == rows
    # The two QNN-k runs are one curve, as in Fig. 8.
    assert sorted({c["curve"] for c in report["curves"]}) == ["PACT-8 IMQ", "PACT-8 IRQ", "PACT-8 QNN"]


def test_partial_run_without_iterations(tmp_path):
    open_run(tmp_path / "fresh", make_run_config("imp"))
    summary = load_summary(tmp_path / "fresh")
    assert summary.history == [] and not summary.finished
    assert table_rows([summary]) == []
    assert "0 of 16 iterations" in markdown_table([], [summary])


def test_report_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path], tmp_path / "out")
    with pytest.raises(UserError, match="at least one"):
        write_report([], tmp_path / "out")
    run = make_run(tmp_path / "imq", "imq", [(32, 0.9)])
    (run / "imq_history.json").write_text("{")
    with pytest.raises(UserError, match="malformed run history"):
        load_summary(run)
    code = build.main(["report", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing-here" in err and "no such run directory" in err
    assert not (tmp_path / "out").exists()


def test_report_cli(runs, tmp_path, capsys):
    code = build.main(["report", *map(str, runs), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0 and "| Full precision | float | float | 32.00 | 91.50 |" in out
    assert (tmp_path / "rep" / "report.png").is_file()


def test_bench_floors_by_hand():
    rows = [
        {"method": "float", "avg_weight_bits": 32.0, "accuracy": 0.880, "iteration": None},
        {"method": "imq", "avg_weight_bits": 32.0, "accuracy": 0.870, "iteration": 0},
        {"method": "imq", "avg_weight_bits": 4.0, "accuracy": 0.876, "iteration": 1},
        {"method": "imq", "avg_weight_bits": 2.0, "accuracy": 0.860, "iteration": 2},
        {"method": "irq", "avg_weight_bits": 32.0, "accuracy": 0.870, "iteration": 0},
        {"method": "irq", "avg_weight_bits": 8.0, "accuracy": 0.860, "iteration": 1},
        {"method": "irq", "avg_weight_bits": 2.0, "accuracy": 0.800, "iteration": 2},
    ]
    f = floors(rows)
    assert f["best_imq_at_most_4_bits"]["iteration"] == 1
    assert f["gap_to_float_pp"] == pytest.approx(-0.4) and f["ticket_within_0.5pp"] is True
    # IRQ at 4 bits: halfway between 8 and 2 bits in log2 -> (0.86 + 0.80) / 2 = 0.83; at 2 bits: 0.80.
    assert [(m["avg_weight_bits"], m["irq_accuracy"]) for m in f["imq_vs_irq"]] == [
        (4.0, pytest.approx(0.83)), (2.0, pytest.approx(0.80))]
    assert f["imq_above_irq"] is True and f["mean_difference_pp"] == pytest.approx((4.6 + 6.0) / 2)
    rows[2]["accuracy"] = 0.82
    f = floors(rows)
    assert f["imq_above_irq"] is False and f["ticket_within_0.5pp"] is False


def test_bench_budget():
    full = dict(bench_configs())
    assert [c.method for c in full.values()] == ["imq", "irq", "imp", "qnn", "qnn", "qnn"]
    imq = full["imq"]
    assert (imq.data, imq.arch, imq.hidden, imq.act_bits, imq.rho, imq.iterations, imq.epochs, imq.train_subset) == (
        "fashion-mnist", "mlp", (256,), 8, 0.5, 15, 4, 30000)
    assert sum(c.iterations for c in full.values()) == 33 and imq.float_baseline
    smoke = dict(bench_configs(smoke=True))
    assert max(c.iterations for c in smoke.values()) == 3 and smoke["imq"].train_subset == 1000
