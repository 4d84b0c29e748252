"""A ticket of any data set through `train -> export -> sim / verilog / eval` on its own test images.

The data sets are generated here (tests/idx_files.py: 28x28 images a tiny MLP learns), so the tests need no
download: one as Fashion-MNIST (`--data fashion-mnist --data-root`, the dotted, gzipped file names of some
mirrors), one as a plain IDX folder (`--data idx`, MNIST's hyphenated names).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import build
from tests.idx_files import write_idx_folder

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--hidden", 16, "--epochs", 6, "--lr", 0.01, "--iterations", 2, "--target-bits", 30, "--no-float-baseline",
              "--quiet"]


def main(*argv) -> int:
    return build.main([str(a) for a in argv])


def train_and_export(tmp, data: str, root) -> None:
    assert main("train", "--data", data, "--data-root", root, *TINY_TRAIN, "--run-dir", tmp / "run") == 0
    assert main("export", "--checkpoint", tmp / "run" / "ticket.pt", "--out", tmp / "image") == 0


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fashion")
    root = write_idx_folder(tmp / "fashion-mnist", n_train=300, n_test=30, spelling="dot", gz=True)
    train_and_export(tmp, "fashion-mnist", root)
    return tmp, root


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("idx")
    root = write_idx_folder(tmp / "idx", n_train=300, n_test=10, spelling="hyphen", gz=False, seed=1)
    train_and_export(tmp, "idx", root)
    return tmp, root


def test_the_image_records_its_data_set(fashion):
    tmp, root = fashion
    data = json.loads((tmp / "image" / "manifest.json").read_text())["data"]
    assert data == {"name": "fashion-mnist", "root": str(root), "input_shape": [1, 28, 28], "input_bits": 4,
                    "seed": 0, "train_subset": None, "test_subset": None}


def test_fashion_mnist_ticket_runs_bit_exact_in_rtl_on_its_own_test_images(fashion, capsys):
    tmp, _ = fashion
    assert main("sim", "--image", tmp / "image", "--images", 8, "--out", tmp / "sim") == 0, capsys.readouterr().err
    report = json.loads((tmp / "sim" / "sim.json").read_text())
    assert report["images"] == 8 and report["mismatches"] == 0 and report["data"]["name"] == "fashion-mnist"
    assert report["rtl_accuracy"] == report["golden_accuracy"] > 0.5  # it learned: 10 classes


def test_idx_ticket_runs_bit_exact_in_rtl_and_in_the_selftest_rom(idx, capsys):
    tmp, _ = idx
    assert main("sim", "--image", tmp / "image", "--out", tmp / "sim") == 0, capsys.readouterr().err
    report = json.loads((tmp / "sim" / "sim.json").read_text())
    assert report["images"] == 10 and report["mismatches"] == 0 and report["data"]["name"] == "idx"
    # In a subprocess, like tests/test_cli.py: amaranth-boards' deprecation warnings are not errors there.
    res = subprocess.run([sys.executable, str(ROOT / "build.py"), "verilog", "--image", str(tmp / "image"),
                          "--selftest-images", "4", "--out", str(tmp / "verilog")], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert (tmp / "verilog" / "vivado").is_dir()
    assert main("eval", "--image", tmp / "image", "--out", tmp / "eval") == 0
    evaluated = json.loads((tmp / "eval" / "eval.json").read_text())
    assert evaluated["golden_accuracy"] == report["golden_accuracy"] and evaluated["test_images"] == 10


def test_more_images_than_the_data_set_has_is_an_error(idx, capsys):
    tmp, _ = idx
    capsys.readouterr()
    assert main("sim", "--image", tmp / "image", "--images", 11, "--out", tmp / "sim11") == 2
    assert "--images 11 is more than the 10 test images of idx" in capsys.readouterr().err
    assert not (tmp / "sim11").exists()
    assert main("verilog", "--image", tmp / "image", "--selftest-images", 12, "--out", tmp / "v12") == 2
    assert "--selftest-images 12 is more than the 10 test images" in capsys.readouterr().err
    assert not (tmp / "v12").exists()


def test_recorded_data_that_is_not_here_is_a_clear_error(fashion, tmp_path, capsys):
    tmp, root = fashion
    image = tmp_path / "image"
    shutil.copytree(tmp / "image", image)
    data = json.loads((image / "manifest.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    manifest = image / "manifest.json"
    manifest.write_text(json.dumps({**data, "data": {**data["data"], "root": str(tmp_path / "gone")}}))
    capsys.readouterr()
    for command in (["sim", "--images", 2], ["verilog"], ["eval"]):
        out = tmp_path / command[0]
        assert main(*command[:1], "--image", image, *command[1:], "--out", out) == 2
        err = capsys.readouterr().err
        assert f"{manifest}: field 'data' records the data set fashion-mnist ({tmp_path / 'gone'})" in err, err
        assert "does not exist" in err and "--data-root" in err
        assert not out.exists()
    # --data-root finds the same data set elsewhere
    assert main("eval", "--image", image, "--data-root", moved, "--out", tmp_path / "eval") == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["data"]["root"] == str(moved) and report["test_images"] == 30
    # and the digits do not fit a 784-input network
    assert main("eval", "--image", image, "--data", "digits", "--out", tmp_path / "digits") == 2
    assert "has 64 inputs per image" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ sim's default count
def export_untrained(tmp: Path, n_test: int) -> Path:
    """An image of an untrained 16-8-10 MLP that records an IDX folder of 4x4 images with ``n_test`` test images."""
    from model.data import DataRecord, load_dataset
    from model.export.convert import export_image
    from model.quant.nets import build_model, model_config
    from model.runs.checkpoint import input_bits_of

    root = write_idx_folder(tmp / "idx", n_train=20, n_test=n_test, side=4)
    split = load_dataset("idx", root)
    model = build_model(model_config("mlp", split, [8], 10, act_bits=4))
    export_image(model, tmp / "image", DataRecord.of("idx", root, split.image_shape, input_bits_of(model)))
    return tmp / "image"


@pytest.mark.parametrize(("n_test", "argv", "simulated", "capped"), [
    (400, [], 360, True),             # a large test set: the first 360 by default, with a note
    (400, ["--images", 400], 400, False),  # --images still goes up to the data set's test count
    (100, [], 100, False),            # a smaller one: all of it (as the digits' 360)
])
def test_sim_runs_at_most_360_test_images_by_default(tmp_path, capsys, monkeypatch, n_test, argv, simulated, capped):
    """Icarus takes hours for 10,000 Fashion-MNIST images: `sim` without --images stops at the digits' 360."""
    from sim import image_run

    image = export_untrained(tmp_path, n_test)
    counts = []

    def fake_run_rtl(vectors, out, simulator, seed, stall, batch, where="image"):
        count = len(vectors.codes)
        counts.append(count)
        return {"data": {"name": "idx"}, "images": count, "mismatches": 0, "rtl_accuracy": 0.0,
                "golden_accuracy": 0.0, "cycles_per_image": 1, "wall_s": 0.0, "passed": True, "scores": []}

    monkeypatch.setattr(image_run, "run_rtl", fake_run_rtl)
    capsys.readouterr()
    assert main("sim", "--image", image, *argv, "--out", tmp_path / "sim") == 0
    err = capsys.readouterr().err
    assert counts == [simulated]
    assert ("note: simulating the first 360 of the 400 test images of idx" in err) == capped, err
    assert ("--images N runs up to 400" in err) == capped
