"""``build.py bench dsp|lts|bmpq``: floors printed and written beside the rows, ``--check`` exit codes.

The measurements themselves take minutes; here each bench's run function is replaced by one returning
hand-written rows, so what is tested is the command: rows unchanged, ``<bench>_floors.json``, the exit status.
(``bench imq`` runs for real on a tiny budget in tests/model/bench/test_imq.py.)
"""

import importlib
import json

import pytest
import torch

import build
from model.bench import bmpq as bmpq_bench
from model.bench import conv as conv_bench
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

    rows[2] = dsp_row(rows[2]["weight_bits"], rows[2]["act_bits"])
    rows[1] = dsp_row(rows[1]["weight_bits"], rows[1]["act_bits"], matches=False)
    code, _, _ = bench(capsys, "dsp", "--quiet", "--out", tmp_path)
    assert code == 1  # a DSP48E1 configured otherwise than intended fails `bench dsp` without --check too
    rows[1] = dsp_row(rows[1]["weight_bits"], rows[1]["act_bits"])
    assert bench(capsys, "dsp", "--quiet", "--out", tmp_path)[0] == 0
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


@pytest.mark.parametrize(("golden", "code"), [(0.851, 0), (0.84, 1)])
def test_conv_rows_floors_and_check(tmp_path, capsys, monkeypatch, golden, code):
    def row(arch, method, g):
        return {"arch": arch, "method": method, "avg_weight_bits": 3.8, "fakequant_accuracy": 0.85,
                "golden_accuracy": g, "golden_minus_fakequant_pp": 100 * (g - 0.85), "payload_bytes": 9000,
                "metadata_bytes": 30000, "param_bytes": 1500, "image_bytes": 41000, "metadata_bits_per_weight": 0.9,
                "width_entropy_bits": 0.8, "nonzero_fraction": 0.2, "macs_dense": 31_000_000,
                "macs_nonzero": 6_000_000, "ticket_iteration": 5, "ticket_rule": "best validation <= 4 bits",
                "ticket_val_accuracy": 0.84}
    rows = [row("resnet20", "imq", golden), row("vgg", "imq", 0.85), row("vgg", "bmpq", 0.85)]
    summary = {"wall_seconds": 1200.0, "resumed_runs": [], "floors": conv_bench.floors(rows, 1200.0)}
    monkeypatch.setattr(conv_bench, "run_conv_bench", lambda out, **kwargs: (rows, summary))
    got, out, _ = bench(capsys, "conv", "--quiet", "--check", "--out", tmp_path)
    assert got == code and "31,000,000" in out and "resnet20 ticket: iteration 5" in out
    assert ("5 of 5 floors hold" in out) == (code == 0) and "conv_summary.json" in out


def test_restart_is_for_bench_imq_and_conv_only(tmp_path, capsys):
    code, _, err = bench(capsys, "dsp", "--restart", "--out", tmp_path)
    assert code == 2 and "--restart applies to `bench imq` and `bench conv` only" in err


@pytest.mark.parametrize("target", ["dsp", "lts", "bmpq"])
def test_smoke_is_for_bench_imq_conv_and_vertical_only(tmp_path, capsys, target):
    code, _, err = bench(capsys, target, "--smoke", "--out", tmp_path / "out")
    assert code == 2 and "--smoke applies to `bench imq`, `bench conv` and `bench vertical` only" in err
    assert f"`bench {target}`" in err
    assert not (tmp_path / "out").exists()


def test_data_root_is_rejected_where_no_data_set_is_read(tmp_path, capsys):
    code, _, err = bench(capsys, "dsp", "--data-root", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and "--data-root" in err and "`bench dsp`" in err and "reads no data set" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["imq", "conv", "lts", "bmpq", "vertical"])
def test_a_data_root_that_is_not_there_is_named_before_anything_is_written(tmp_path, capsys, target):
    code, _, err = bench(capsys, target, "--data-root", tmp_path / "none", "--out", tmp_path / "out")
    assert code == 2, err
    assert f"error: bench {target}: --data-root {tmp_path / 'none'}: IDX folder " in err, err
    assert not (tmp_path / "out").exists()


def test_benches_train_on_the_cpu_unless_told(tmp_path, capsys, monkeypatch):
    from model.bench import qat as qat_bench
    from model.training import distributed
    from tests.model.training.test_device import fake_cuda

    fake_cuda(monkeypatch, 2)  # a machine with two GPUs: `auto` would mean cuda:0
    monkeypatch.setattr(distributed, "_chosen", None)
    seen = []
    monkeypatch.setattr(qat_bench, "run_qat_bench", lambda path, **kwargs: seen.append(distributed.device()) or [])
    assert bench(capsys, "qat", "--quiet", "--out", tmp_path)[0] == 0
    assert bench(capsys, "qat", "--quiet", "--device", "cuda:1", "--out", tmp_path)[0] == 0
    assert seen == [torch.device("cpu"), torch.device("cuda", 1)]
    code, _, err = bench(capsys, "dsp", "--device", "cpu", "--out", tmp_path / "out")
    assert code == 2 and "--device applies to the benches that train" in err and "`bench dsp`" in err
    fake_cuda(monkeypatch, 0)
    code, _, err = bench(capsys, "qat", "--device", "cuda", "--out", tmp_path / "out")
    assert code == 2 and "CUDA is not available here" in err and not (tmp_path / "out").exists()


def test_bench_help_names_every_bench():
    import argparse

    sub = next(a for a in build.parser()._actions if isinstance(a, argparse._SubParsersAction))
    summary = next(c.help for c in sub._choices_actions if c.dest == "bench")
    assert all(name in summary for name in ("dsp", "lts", "imq", "bmpq", "conv")), summary


@pytest.mark.parametrize(("ratio", "code"), [(1.3, 0), (1.8, 1)])
def test_qat_rows_floors_and_check(tmp_path, capsys, monkeypatch, ratio, code):
    from model.bench import qat as qat_bench

    rows = [{"arch": "resnet20", "mode": "dorefa", "device": "cpu", "step_ms": 10.0 * ratio, "float_step_ms": 10.0,
             "ratio": ratio}]
    monkeypatch.setattr(qat_bench, "run_qat_bench", lambda path, **kwargs: rows)
    got, out, _ = bench(capsys, "qat", "--quiet", "--check", "--out", tmp_path)
    assert got == code and "dorefa_ratio_resnet20" in out and "resnet20" in out
    written = json.loads((tmp_path / "qat_floors.json").read_text())
    assert written["floors"] == qat_bench.floors(rows)


@pytest.mark.parametrize("name", ["lts", "qat"])
def test_floors_record_the_threads_the_bench_ran_under(tmp_path, capsys, monkeypatch, name):
    """``provenance.threads`` of ``<bench>_floors.json`` is the count the bench's timings ran under (its
    ``THREADS``), not torch's count restored after it."""
    module = importlib.import_module(f"model.bench.{name}")
    rows = {"lts": [{"bits": 2, "mode": "lts", "accuracy": 0.9, "avg_wgs": 0.6, "bp_flops_reduction": 0.5,
                     "backward_time_ratio": 0.8}],
            "qat": [{"arch": "mlp", "mode": "dorefa", "device": "cpu", "step_ms": 1.0, "float_step_ms": 1.0,
                     "ratio": 1.0}]}[name]
    asked = []
    monkeypatch.setattr(module, f"run_{name}_bench", lambda path, **kwargs: asked.append(kwargs["threads"]) or rows)
    before = torch.get_num_threads()
    torch.set_num_threads(module.THREADS + 1)  # the caller's count differs from the bench's
    try:
        bench(capsys, name, "--quiet", "--out", tmp_path)
    finally:
        torch.set_num_threads(before)
    written = json.loads((tmp_path / f"{name}_floors.json").read_text())
    assert asked == [module.THREADS] and written["provenance"]["threads"] == module.THREADS


@pytest.mark.parametrize("limit, code", [(float("inf"), 0), (0.0, 1)])
def test_export_bench_runs_and_checks_its_floor(tmp_path, capsys, monkeypatch, limit, code):
    """`bench export` for real on a small network (the layer sizes shrunk), its JSON keys, and --check."""
    from model.bench import export as export_bench

    monkeypatch.setattr(export_bench, "SIZES", (30, 20, 4))
    monkeypatch.setattr(export_bench, "PACK_SECONDS", limit)
    assert build.main(["bench", "export", "--quiet", "--check", "--out", str(tmp_path)]) == code
    result = json.loads((tmp_path / "export.json").read_text())
    assert result["weights"] == 30 * 20 + 20 * 4 and result["bytes"] % 4 == 0
    assert {"seconds", "metadata_bits_per_weight", "mixes", "floors", "provenance"} <= set(result)
    assert result["floors"]["pack_seconds"]["holds"] == (code == 0)
    assert "meta b/w" in capsys.readouterr().out
