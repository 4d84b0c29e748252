"""An empty ``--out ""`` (or ``--run-dir ""``) is refused by build.py before any work, not taken for the current
folder (build.py main -> model.files.check_output_dir)."""

import numpy as np
import pytest

import build
from model.errors import UserError
from model.export.image import write_image
from model.files import check_output_dir
from tests.hw.netgen import random_network
from tests.model.runs.test_report import make_run


def test_check_output_dir_refuses_an_empty_path():
    with pytest.raises(UserError, match='^--out is empty; give a folder to write into'):
        check_output_dir("", "--out")


@pytest.fixture
def inputs(tmp_path):
    """A run directory and an MLP image on the digits' inputs, and an empty current folder."""
    run = make_run(tmp_path / "run", "imq", [(32, 0.9), (20, 0.91)])
    image = tmp_path / "image"
    write_image(image, random_network(np.random.default_rng(5), sizes=(64, 8, 10), act_bits=4))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return run, image, cwd


@pytest.mark.parametrize("command", [
    lambda run, image: ["report", run, "--out", ""],
    lambda run, image: ["verilog", "--image", image, "--selftest-images", 2, "--out", ""],
    lambda run, image: ["verilog", "--image", image, "--core", "array", "--out", ""],
    lambda run, image: ["system", "--image", image, "--engines", 1, "--out", ""],
    lambda run, image: ["train", "--hidden", 8, "--epochs", 1, "--iterations", 1, "--quiet", "--run-dir", ""],
], ids=["report", "verilog", "verilog-array", "system", "train-run-dir"])
def test_empty_output_folder_is_refused(inputs, monkeypatch, capsys, command):
    run, image, cwd = inputs
    monkeypatch.chdir(cwd)
    argv = [str(a) for a in command(run, image)]
    assert build.main(argv) == 2
    option = "--run-dir" if "--run-dir" in argv else "--out"
    assert capsys.readouterr().err == f'error: {option} is empty; give a folder to write into ("." for the current ' \
                                      'folder)\n'
    assert list(cwd.iterdir()) == []  # nothing written into the current folder
