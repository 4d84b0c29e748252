"""`build.py train --method vertical`: defaults, rejected values (UserError, no traceback), what a run writes,
and that the accuracies it reports are those of the checkpoint it writes."""

from __future__ import annotations

import json

import pytest

import build
from model.data import load_dataset
from model.methods.vertical import evaluate_widths
from model.runs.checkpoint import load_vertical_checkpoint
from model.runs.train_command import resolve
from model.runs.validation import carve_validation
from tests.build_main import main

pytestmark = pytest.mark.usefixtures("one_thread")



def test_defaults():
    args = resolve(build.parser().parse_args(["train", "--method", "vertical"]))
    assert (args.widths, args.moo, args.no_compensation, args.no_kd, args.baseline) == ("2,3,4", "us", False, False,
                                                                                        None)
    assert (args.data, args.arch, args.hidden, args.epochs, args.mixed_points) == ("digits", "mlp", [64, 64, 64],
                                                                                   10, 5)


@pytest.mark.parametrize(("argv", "words"), [
    (["--widths", "2,4"], ["field 'widths'", "consecutive", "2..8"]),
    (["--widths", "2,x"], ["field 'widths'", "'2,x'"]),
    (["--widths", "1,2"], ["field 'widths'"]),
    (["--hidden", 16], ["at least three quantized layers", "--hidden"]),
    (["--baseline", "lsq", "--moo", "mgd"], ["--moo", "--baseline lsq", "joint training"]),
    (["--baseline", "ascending", "--no-compensation"], ["--no-compensation", "--baseline ascending"]),
    (["--act-bits", 4], ["--act-bits", "vertical"]),
    (["--compression", 4], ["--compression", "vertical"]),
])
def test_bad_values_are_user_errors(capsys, tmp_path, argv, words):
    code, out, err = main(capsys, "train", "--method", "vertical", "--epochs", 1, "--train-subset", 200,
                          *argv, "--quiet", "--out", tmp_path / "out")
    assert code == 2, out + err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_moo_choices_are_checked_by_the_parser(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        build.main(["train", "--method", "vertical", "--moo", "pcgrad", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "invalid choice: 'pcgrad'" in capsys.readouterr().err


def test_joint_run_writes_json_checkpoint_and_plots_that_agree(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = main(capsys, "train", "--method", "vertical", "--epochs", 2, "--train-subset", 500,
                             "--val-size", 100, "--mixed-points", 2, "--moo", "mgd", "--quiet", "--out", out)
    assert code == 0, err
    report = json.loads((out / "vertical.json").read_text())
    assert report["scheme"] == "joint" and report["moo"] == "mgd" and report["compensation"] and report["kd"]
    assert sorted(report["test_accuracy"]) == ["2", "3", "4"] and sorted(report["val_accuracy"]) == ["2", "3", "4"]
    assert report["config"]["val_images"] == 100 and report["config"]["train_images"] == 400
    assert len(report["history"]) == 2 and all(sorted(r["alpha"]) == ["2", "3", "4"] for r in report["history"])
    assert [r["kind"] for r in report["mixed_precision"]] == ["uniform"] * 3 + ["mixed"] * 2
    bits = report["model_bits"]
    assert bits["2"] < bits["3"] < bits["4"]
    for name in ("vertical_hist.png", "vertical_mixed.png"):
        assert (out / name).stat().st_size > 1000
    model, meta = load_vertical_checkpoint(out / "vertical.pt")
    assert meta["test_accuracy"] == report["test_accuracy"]
    split, val = carve_validation(load_dataset("digits", train_subset=500), 100, 0)
    assert {str(b): a for b, a in evaluate_widths(model, split.x_test, split.y_test).items()} == report["test_accuracy"]
    assert {str(b): a for b, a in evaluate_widths(model, val.x, val.y).items()} == report["val_accuracy"]
    assert "2-bit test accuracy" in stdout


def test_lsq_baseline_writes_one_net_per_width(capsys, tmp_path):
    out = tmp_path / "lsq"
    code, _, err = main(capsys, "train", "--method", "vertical", "--baseline", "lsq", "--widths", "3,4",
                        "--epochs", 1, "--train-subset", 300, "--quiet", "--out", out)
    assert code == 0, err
    report = json.loads((out / "vertical.json").read_text())
    assert report["scheme"] == "lsq" and not report["compensation"] and report["moo"] is None
    split, _ = carve_validation(load_dataset("digits", train_subset=300), report["config"]["val_size"], 0)
    for b in (3, 4):
        model, _ = load_vertical_checkpoint(out / f"lsq_{b}bit.pt")
        assert model.vertical == {"widths": [b], "compensate": False}
        assert evaluate_widths(model, split.x_test, split.y_test)[b] == report["test_accuracy"][str(b)]
    assert not (out / "vertical.pt").exists()


def test_float_edges_are_recorded_and_reloaded(capsys, tmp_path):
    out = tmp_path / "fe"
    code, _, err = main(capsys, "train", "--method", "vertical", "--float-edges", "--epochs", 1, "--train-subset", 300,
                        "--mixed-points", 0, "--quiet", "--out", out)
    assert code == 0, err
    report = json.loads((out / "vertical.json").read_text())
    assert report["edge_bits"] == 32 and report["mixed_precision"] == []
    model, _ = load_vertical_checkpoint(out / "vertical.pt")
    assert model.vertical["float_edges"] is True
    split, _ = carve_validation(load_dataset("digits", train_subset=300), report["config"]["val_size"], 0)
    assert {str(b): a for b, a in evaluate_widths(model, split.x_test, split.y_test).items()} == report["test_accuracy"]
    assert report["model_bits"]["2"] - report["model_bits"]["4"] == -2 * 64 * 64 * 2  # inner layers only change
