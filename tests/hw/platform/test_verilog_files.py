"""Verilog files appear whole or not at all (hw/platform/verilog.py): a failed write leaves no temporary file. A
design's text is converted once a process for equal arguments."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from hw.platform.verilog import component_verilog, write_text_atomically


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


def test_a_design_is_elaborated_once_for_equal_arguments():
    built = []

    class Counter(wiring.Component):
        def __init__(self, width, *, start=0):
            built.append((width, start))
            super().__init__({"count": Out(width, init=start)})

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.count.eq(self.count + 1)
            return m

    text = component_verilog(Counter, 4, name="counter")
    assert "module counter" in text and "count" in text
    assert component_verilog(Counter, 4, name="counter") is text and built == [(4, 0)]
    other = component_verilog(Counter, 4, start=3, name="counter")  # other arguments: elaborated again
    assert other != text and "4'h3" in other and built == [(4, 0), (4, 3)]
    assert component_verilog(Counter, 4, name="top") != text and len(built) == 3  # the top's name is a key too
