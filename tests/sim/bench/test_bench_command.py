"""``build.py bench dsp|lts|bmpq``: floors printed and written beside the rows, ``--check`` exit codes.

The measurements themselves take minutes; here each bench's run function is replaced by one returning
hand-written rows, so what is tested is the command: rows unchanged, ``<bench>_floors.json``, the exit status.
(``bench imq`` runs for real on a tiny budget in tests/model/bench/test_imq.py.)
"""

import json

import pytest

import build
from model.bench import bmpq as bmpq_bench
from model.bench import lts as lts_bench
from model.runs import provenance
from sim.bench import dsp as dsp_bench
from tests.sim.bench.test_dsp import dsp_row, readme_rows


def bench(capsys, *args):
    code = build.main(["bench", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dsp_floors_and_check(tmp_path, capsys, monkeypatch):
    rows = readme_rows()
    monkeypatch.setattr(dsp_bench, "run_bench", lambda progress=True: rows)
    code, out, _ = bench(capsys, "dsp", "--quiet", "--check", "--out", tmp_path)
    assert code == 0 and "floors (in" in out and f"{len(rows) - 1 + 3} of {len(rows) - 1 + 3} floors hold" in out
    assert json.loads((tmp_path / "dsp.json").read_text()) == rows  # the rows keep their format
    written = json.loads((tmp_path / "dsp_floors.json").read_text())
    assert written["floors"] == dsp_bench.floors(rows)
    assert written["provenance"]["revision"] == provenance.code_revision()["revision"]  # which code measured them

    rows[2] = dsp_row(rows[2]["weight_bits"], rows[2]["act_bits"], macs=0.1)  # below its README figure
    code, out, _ = bench(capsys, "dsp", "--quiet", "--out", tmp_path)
    assert code == 0 and "FAILS" in out  # printed either way; only --check fails the command
    code, _, _ = bench(capsys, "dsp", "--quiet", "--check", "--out", tmp_path)
    assert code == 1
    assert not json.loads((tmp_path / "dsp_floors.json").read_text())["floors"][
        f"macs_per_dsp_cycle_{rows[2]['weight_bits']}x{rows[2]['act_bits']}"]["holds"]

    rows[0] = dsp_row(rows[0]["weight_bits"], rows[0]["act_bits"], verified="FAILED")
    code, _, _ = bench(capsys, "dsp", "--quiet", "--out", tmp_path)
    assert code == 1  # a failed verification fails `bench dsp` with or without --check, as before


@pytest.mark.parametrize("check", [False, True])
def test_lts_floors_and_check(tmp_path, capsys, monkeypatch, check):
    rows = [{"bits": 2, "mode": "baseline", "accuracy": 0.88, "avg_wgs": 0.0, "bp_flops_reduction": 0.0,
             "backward_time_ratio": 1.0},
            {"bits": 2, "mode": "lts", "accuracy": 0.87, "avg_wgs": 0.55, "bp_flops_reduction": 0.5,
             "backward_time_ratio": 0.8}]
    monkeypatch.setattr(lts_bench, "run_lts_bench", lambda path, **kwargs: rows)
    code, out, _ = bench(capsys, "lts", "--quiet", "--out", tmp_path, *(["--check"] if check else []))
    assert code == (1 if check else 0)
    assert "accuracy_vs_qat_pp_2bit" in out and "failing: accuracy_vs_qat_pp_2bit" in out
    written = json.loads((tmp_path / "lts_floors.json").read_text())
    assert written["floors"] == lts_bench.floors(rows)
    assert written["provenance"]["revision"] == provenance.code_revision()["revision"]


@pytest.mark.parametrize(("drop", "code"), [(0.26, 0), (1.5, 1)])
def test_bmpq_floors_and_check(tmp_path, capsys, monkeypatch, drop, code):
    rows = [{"budget": 0.04, "layer_bits": [16, 4, 2, 16], "accuracy": 0.89, "fp_accuracy": 0.9,
             "accuracy_drop_pp": drop, "compression_ratio": 11.97, "target_compression": 10.0}]
    monkeypatch.setattr(bmpq_bench, "run_bmpq_bench", lambda path, **kwargs: rows)
    got, out, _ = bench(capsys, "bmpq", "--quiet", "--check", "--out", tmp_path)
    assert got == code and "accuracy_drop_pp_10x" in out
    written = json.loads((tmp_path / "bmpq_floors.json").read_text())
    assert written["floors"] == bmpq_bench.floors(rows)
    assert written["provenance"]["revision"] == provenance.code_revision()["revision"]


def test_restart_is_for_bench_imq_only(tmp_path, capsys):
    code, _, err = bench(capsys, "dsp", "--restart", "--out", tmp_path)
    assert code == 2 and "--restart applies to `bench imq` only" in err


@pytest.mark.parametrize("target", ["dsp", "lts", "bmpq"])
def test_smoke_is_for_bench_imq_only(tmp_path, capsys, target):
    code, _, err = bench(capsys, target, "--smoke", "--out", tmp_path / "out")
    assert code == 2 and "--smoke applies to `bench imq` only" in err and f"`bench {target}`" in err
    assert not (tmp_path / "out").exists()


def test_data_root_is_rejected_where_no_data_set_is_read(tmp_path, capsys):
    code, _, err = bench(capsys, "dsp", "--data-root", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and "--data-root" in err and "`bench dsp`" in err and "reads no data set" in err
    assert not (tmp_path / "out").exists()


def test_bench_help_names_every_bench():
    import argparse

    sub = next(a for a in build.parser()._actions if isinstance(a, argparse._SubParsersAction))
    summary = next(c.help for c in sub._choices_actions if c.dest == "bench")
    assert all(name in summary for name in ("dsp", "lts", "imq", "bmpq")), summary
