"""Reports over run directories (model/runs/report.py) and `build.py report` (the benches: tests/model/bench/)."""

import errno
import json
import os

import pytest

import build
from model.errors import UserError
from model.methods.imq import IterationRecord
from model.revision import code_revision
from model.runs.report import load_summary, markdown_table, table_rows, write_report
from model.runs.rundir import history_file, make_run_config, open_run, record_json, write_json


def make_run(path, method, points, float_accuracy=None, finished=True, **kwargs):
    """A run directory with a hand-written history: ``points`` are (avg_bits, accuracy[, val_accuracy]) per iteration."""
    config = make_run_config(method, data="digits", hidden=(8,), act_bits=8, **kwargs)
    open_run(path, config)
    history = [record_json(IterationRecord(k, *p[:2], {}, *p[2:])) for k, p in enumerate(points)]
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
    # Which code made the report and each run (run.json's provenance); one revision here, so no note.
    assert report["code_revision"] == code_revision() and "different code revisions" not in markdown
    assert {c["code_revision"] for c in report["curves"]} == {code_revision()["revision"]}


def test_a_report_over_runs_of_different_code_says_so(runs, tmp_path):
    """A run that another revision trained: its revision beside the curve, and a note under the table."""
    stored = json.loads((runs[1] / "run.json").read_text())
    stored["provenance"]["revision"] = "git:0123abcd"
    (runs[1] / "run.json").write_text(json.dumps(stored))
    _, markdown, paths = write_report(runs, tmp_path / "out", budgets=(4.0,))
    curves = {c["run"]: c["code_revision"] for c in json.loads(paths["json"].read_text())["curves"]}
    assert curves[str(runs[1])] == "git:0123abcd" and curves[str(runs[0])] == code_revision()["revision"]
    assert f"Runs come from different code revisions ({runs[0]}: {code_revision()['revision']}; {runs[1]}: " \
           "git:0123abcd;" in markdown, markdown


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
    # Records that are not objects, and values out of their range, are named too (not a traceback or a table
    # with -4 bits in it).
    for record, message in (('"x"', "an iteration record is 'x'"),
                            ('{"iteration": 0, "avg_bits": -4, "accuracy": 0.5, "width_counts": {}}',
                             "field 'avg_bits' is -4.0; allowed \\[0, 32\\]"),
                            ('{"iteration": 0, "avg_bits": 4, "accuracy": NaN, "width_counts": {}}',
                             "field 'accuracy' is nan"),
                            ('{"iteration": 0, "avg_bits": 4, "accuracy": 0.5, "width_counts": [4]}',
                             "field 'width_counts' is \\[4\\]; expected an object")):
        (run / "imq_history.json").write_text('{"history": [' + record + '], "finished": true}')
        with pytest.raises(UserError, match="imq_history.json: malformed run history.*" + message):
            load_summary(run)
    (run / "imq_history.json").unlink()
    (run / "imq_history.json").mkdir()
    with pytest.raises(UserError, match="imq_history.json: is not a file"):
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


def test_a_run_given_twice_is_refused(runs, tmp_path, capsys):
    """The same run directory twice (as given, or by another spelling of its path): exit 2 naming both, nothing
    written, instead of a report that counts its rows and curve twice."""
    for again in (runs[0], runs[0].parent / "." / runs[0].name):
        code = build.main(["report", str(runs[0]), str(runs[1]), str(again), "--out", str(tmp_path / "rep")])
        err = capsys.readouterr().err
        assert code == 2 and f"error: {again}: the run directory {runs[0]} is given already" in err, err
        assert not (tmp_path / "rep").exists()


def test_a_disk_that_fills_up_leaves_no_half_of_a_report(runs, tmp_path, capsys, monkeypatch):
    """The JSON, written last, meets a full disk (ENOSPC, which names no file): exit 2 naming the folder, no
    traceback, and an earlier report there whole (the three files are one commit, model.files.staged_outputs).
    An ENOSPC that reaches build.py with no file at all gets a message too, not a traceback."""
    import model.runs.report

    out = tmp_path / "rep"
    assert build.main(["report", *map(str, runs[:2]), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model.runs.report, "write_json", full)
    assert build.main(["report", *map(str, runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: {os.strerror(errno.ENOSPC)}\n", err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.setattr(model.runs.report, "write_report", full)
    assert build.main(["report", *map(str, runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {os.strerror(errno.ENOSPC)}: a write found the disk")


def test_rows_are_chosen_on_validation_accuracy_and_report_test_accuracy(tmp_path):
    # By test accuracy: best 9 bits, Algorithm 1 3.5 bits, <= 4 bits 3.5 bits. By validation: 5, 5 and 1.9 bits.
    run = make_run(tmp_path / "imq", "imq", [(32, 0.90, 0.80), (9, 0.93, 0.81), (5, 0.91, 0.84), (3.5, 0.905, 0.79),
                                             (1.9, 0.85, 0.82)], iterations=5)
    rows = table_rows([load_summary(run)], budgets=(4.0,))
    got = [(r["rule"], r["avg_weight_bits"], r["accuracy"], r["val_accuracy"], r["selected_on"]) for r in rows]
    assert got == [("best", 5.0, 0.91, 0.84, "validation"), ("algorithm-1", 1.9, 0.85, 0.82, "validation"),
                   ("<= 4 bits", 1.9, 0.85, 0.82, "validation")]
    assert "chosen by validation accuracy" in markdown_table(rows)
    test_only = make_run(tmp_path / "old", "imq", [(32, 0.90), (9, 0.93)], iterations=2)
    assert "no validation split; its tickets were chosen on the test set" in markdown_table(
        table_rows([load_summary(test_only)]))
