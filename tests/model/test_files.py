"""Atomic file output (model/files.py): whole or nothing, no temporary left behind, ordinary permissions."""

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from model.errors import UserError
from model.files import atomic_write, check_output_dir, staged_outputs, write_json


def test_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"x": 1})
    write_json(path, [1, 2, 3])
    assert json.loads(path.read_text()) == [1, 2, 3]
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"old": True})

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def full_disk(tmp):
    """A write that meets a full disk: the system's ENOSPC, which names no file, after half the data."""
    with open(tmp, "w") as f:
        f.write("half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_named_and_leaves_no_folder_the_write_made(tmp_path):
    path = tmp_path / "new" / "deeper" / "eval.json"
    with pytest.raises(OSError) as caught:
        atomic_write(path, full_disk)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []  # neither the temporary file nor the two folders made for it
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError):
        atomic_write(tmp_path / "kept" / "a.json", full_disk)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_staged_outputs_commit_every_file_or_none(tmp_path):
    out = tmp_path / "out"
    (out / "plan").mkdir(parents=True)
    (out / "a.v").write_text("old a")
    (out / "other.txt").write_text("not the command's")
    with pytest.raises(OSError) as caught, staged_outputs(out) as stage:
        (stage / "a.v").write_text("new a")
        (stage / "plan").mkdir()
        (stage / "plan" / "b.tcl").write_text("new b")
        atomic_write(stage / "plan" / "c.tcl", full_disk)
    assert caught.value.filename == str(out / "plan" / "c.tcl")  # the file it was to be, not the staged one
    assert (out / "a.v").read_text() == "old a" and list((out / "plan").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    with staged_outputs(out) as stage:
        (stage / "a.v").write_text("new a")
        (stage / "plan").mkdir()
        (stage / "plan" / "b.tcl").write_text("new b")
        assert stage.parent == tmp_path and not (out / "plan" / "b.tcl").exists()  # nothing before the block ends
    assert (out / "a.v").read_text() == "new a" and (out / "plan" / "b.tcl").read_text() == "new b"
    assert (out / "other.txt").read_text() == "not the command's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError), staged_outputs(tmp_path / "new" / "out") as stage:
        (stage / "a.v").write_text("x")
        raise RuntimeError("the design failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the folders made for the stage are gone too


def test_a_staging_folder_that_cannot_be_made_is_named_by_the_output(tmp_path):
    """/proc takes no folder: the error names the output (it named ``/proc/.x.<random>.staged``, 2026-12-06)."""
    with pytest.raises(OSError) as caught, staged_outputs(Path("/proc/x")):
        pass
    assert caught.value.filename == "/proc/x" and ".staged" not in str(caught.value)


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_output_folders_are_checked_without_creating_them(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path in (afile, afile / "sub" / "deeper"):
        with pytest.raises(UserError, match=rf"^--out {path}: {afile} is a file; give a folder"):
            check_output_dir(path, "--out")
    new = tmp_path / "a" / "b"
    assert check_output_dir(new, "--run-dir") == new and not (tmp_path / "a").exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="broken symbolic link"):
        check_output_dir(tmp_path / "dangling" / "x", "--out")
