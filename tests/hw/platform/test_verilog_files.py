"""Verilog files appear whole or not at all (hw/platform/verilog.py): a failed write leaves no temporary file."""

import pytest

from hw.platform.verilog import write_text_atomically


def test_failed_write_leaves_no_temporary_file(tmp_path):
    taken = tmp_path / "mpq_accel.v"
    taken.mkdir()  # the name is a folder: the rename into place fails
    with pytest.raises(IsADirectoryError):
        write_text_atomically(taken, "module m; endmodule\n")
    assert [p.name for p in tmp_path.iterdir()] == ["mpq_accel.v"]
    assert list(taken.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_text_atomically(tmp_path / "deep" / "a.v", "old\n")  # makes the folder
    assert path.read_text() == "old\n"
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(path, "\ud800")  # a lone surrogate: fails while writing the temporary file
    assert path.read_text() == "old\n" and [p.name for p in path.parent.iterdir()] == ["a.v"]
    write_text_atomically(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in path.parent.iterdir()] == ["a.v"]
