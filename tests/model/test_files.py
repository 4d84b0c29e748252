"""Atomic file output (model/files.py): whole or nothing, no temporary left behind, ordinary permissions."""

import json
import os
import stat

import pytest

from model.errors import UserError
from model.files import atomic_write, check_output_dir, write_json


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
