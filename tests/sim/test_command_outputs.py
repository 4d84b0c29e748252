"""`build.py verilog` and `build.py sim` check their output names before writing anything (and, for sim, before
simulating): a folder where a file goes, or a file where a folder goes, is an error naming that path, with nothing
written and no temporary file left (sim/verilog_command.py, sim/sim_command.py, model.cli.refuse_taken_outputs)."""

import errno
import os

import numpy as np
import pytest

import build
from model.export.image import write_image
from tests.hw.netgen import random_network
from tests.sim.test_accelerator import full_disk_at_the_marker


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """An MLP image on the digits' 64 inputs (any image that gets as far as the writes without the checks)."""
    path = tmp_path_factory.mktemp("mlp") / "image"
    write_image(path, random_network(np.random.default_rng(5), sizes=(64, 8, 10), act_bits=4))
    return path


def refused(capsys, argv, out, taken, kind):
    """Run ``argv`` with ``out/taken`` made a ``kind`` ("folder" or "file"); check the refusal and that nothing
    else appeared in ``out``."""
    before = set(out.rglob("*")) if out.exists() else set()
    code = build.main([*map(str, argv), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    what = "is not a file" if kind == "folder" else "is not a folder"
    assert err.startswith(f"error: {out / taken}: {what}; ") and err.count("\n") == 1, err
    assert set(out.rglob("*")) == before  # nothing written, no temporary file


def make(path, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if kind == "folder" else path.write_text("x")


@pytest.mark.parametrize(("core", "taken", "kind"), [
    ("fc", "mpq_accel.v", "folder"),
    ("fc", "vivado", "file"),
    ("fc", "vivado/mpq_accel_selftest.xdc", "folder"),
    ("fc", "vivado/build_mpq_accel_selftest.sh", "folder"),
    ("array", "mpq_array.v", "folder"),
    ("array", "array_config.json", "folder"),
])
def test_verilog_refuses_taken_output_names(image, tmp_path, capsys, core, taken, kind):
    out = tmp_path / "verilog"
    make(out / taken, kind)
    selftest = ["--selftest-images", 2] if core == "fc" else []
    refused(capsys, ["verilog", "--image", image, "--core", core, *selftest], out, taken, kind)


@pytest.mark.parametrize("core", ["fc", "array"])
def test_verilog_that_fails_half_way_leaves_the_folder_as_it_was(image, tmp_path, capsys, monkeypatch, core):
    """The disk fills up at the last file (the system's ENOSPC names no file): exit 2 naming the folder, no
    traceback, and an earlier run's files all still there, unchanged (the outputs are one commit,
    model.files.staged_outputs; tests/model/test_files.py: into a new folder, no folder is left)."""
    import hw.platform.board
    import sim.verilog_command

    where = hw.platform.board if core == "fc" else sim.verilog_command
    real = {"fc": hw.platform.board.write_build_plan, "array": sim.verilog_command.write_json}[core]

    def then_full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(where, real.__name__, then_full)
    out = tmp_path / "verilog"
    earlier = ["mpq_accel.v", "vivado/mpq_accel_selftest.xdc"] if core == "fc" else ["mpq_array.v", "array_config.json"]
    for name in earlier:
        make(out / name, "file")
    # (2 engines, not `verilog`'s default 16: the outputs' commit is the same, and elaborating 16 engines took 20 s)
    options = ["--selftest-images", 2] if core == "fc" else ["--engines", 2]
    assert build.main(list(map(str, ["verilog", "--image", image, "--core", core, *options, "--out", out]))) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {out}: {os.strerror(errno.ENOSPC)}\n"), err
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file()} == {out / n: "x" for n in earlier}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verilog"]  # no staging folder left


@pytest.mark.parametrize(("args", "taken", "kind"), [
    ((), "mpq_accel.v", "folder"),
    ((), "sim.json", "folder"),
    ((), "sim_build", "file"),
    (("--core", "array"), "mpq_array.v", "folder"),
    (("--core", "array"), "sim.json", "folder"),
    (("--system",), "system", "file"),
    (("--system",), "system/mpq_system.v", "folder"),
    (("--system",), "system/sim.json", "folder"),
    (("--system",), "system/sim_build", "file"),
])
def test_sim_refuses_taken_output_names_before_simulating(image, tmp_path, capsys, args, taken, kind):
    out = tmp_path / "sim"
    make(out / taken, kind)
    refused(capsys, ["sim", "--image", image, "--images", 2, *args], out, taken, kind)


def test_sim_that_meets_a_full_disk_leaves_no_folder_it_made(image, tmp_path, capsys, monkeypatch):
    """The disk fills up as the simulator's build is marked done (sim.runner.build): exit 2 naming the marker,
    no traceback, and the new ``--out`` gone with the Verilog and the half build written into it."""
    full_disk_at_the_marker(monkeypatch)
    out = tmp_path / "new" / "sim"
    assert build.main(list(map(str, ["sim", "--image", image, "--images", 2, "--out", out]))) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith(f"error: {out / 'sim_build'}/build-icarus-"), err
    assert last.endswith(f"/.built: {os.strerror(errno.ENOSPC)}"), err
    assert list(tmp_path.iterdir()) == []
