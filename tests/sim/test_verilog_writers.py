"""The simulation runners write their Verilog through hw.platform.verilog.write_text_atomically: a name taken by a
folder is an error that leaves no temporary file behind."""

import pytest

from hw.dsp.packing import plan
from hw.system.crc32 import Crc32
from sim.lane_runner import write_lane_verilog
from sim.system.runner import write_block_verilog


@pytest.mark.parametrize("write", [lambda path: write_block_verilog(Crc32(), path, name="crc32"),
                                   lambda path: write_lane_verilog(plan(4, 4), path)], ids=["block", "lane"])
def test_failed_write_leaves_no_temporary_file(tmp_path, write):
    taken = tmp_path / "dut.v"
    taken.mkdir()
    with pytest.raises(IsADirectoryError):
        write(taken)
    assert [p.name for p in tmp_path.iterdir()] == ["dut.v"]
    assert "module" in write(tmp_path / "ok.v").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dut.v", "ok.v"]
