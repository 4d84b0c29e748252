# amaranth: UnusedElaboratable=no
"""Resource report parsing, the XC7Z020 capacity check, and one real Yosys synthesis of the accelerator."""

import re

import numpy as np
import pytest

from hw.core.mac_lane import MacLane
from hw.core.requant import T_BITS
from hw.platform.synth import (
    XC7Z020,
    ZERO_INIT_MIN_WORDS,
    format_table,
    module_cells,
    parse_stat,
    read_command,
    synth_stat,
)
from hw.platform.verilog import TOP_NAME, write_verilog
from model.export.golden import MULT_BITS
from model.export.image import core_words as pack
from tests.hw.netgen import random_network

STAT = """
=== mpq_accel ===
   Number of cells:               4354
     BUFG                            1
     CARRY4                        197
     DSP48E1                       {dsp}
     FDRE                         1196
     FDSE                            4
     LUT1                           32
     LUT2                          685
     LUT6                          538
     RAM32M                         17
     RAM64M                          6
     RAMB36E1                        2
     RAMB18E1                        3
"""


def test_counts_luts_luttram_flops_and_block_ram():
    res = parse_stat(STAT.format(dsp=5))
    assert res.dsp == 5
    assert res.lut == 32 + 685 + 538 + 4 * (17 + 6)  # LUTRAM primitives occupy four LUTs each
    assert res.ff == 1200
    assert res.bram36 == 2 + 3 / 2
    assert res.fits()


def test_over_capacity_does_not_fit():
    res = parse_stat(STAT.format(dsp=XC7Z020["dsp"] + 1))
    assert not res.fits()
    assert res.utilisation()["dsp"] > 1
    assert "DSP48E1" in format_table(res) and "221" in format_table(res)


# -- a real synthesis ------------------------------------------------------------------------------------

def test_module_cells_splits_a_hierarchical_stat():
    text = """
=== top ===
   Number of cells:                  3
     FDRE                            2
     LUT2                            1
=== top.lane ===
   Number of cells:                  1
     DSP48E1                         1
=== design hierarchy ===
   Number of cells:                  4
     DSP48E1                         1
"""
    assert module_cells(text) == {"top": {"FDRE": 2, "LUT2": 1}, "top.lane": {"DSP48E1": 1}}


#: DSP48E1s Yosys 0.23 spends on the requantizer's ``t * M`` (signed ``T_BITS`` x ``MULT_BITS + 1`` bits): two
#: for the 41 x 18 product of the derived widths (measured; the earlier 44-bit ``t`` took three).
REQUANT_DSPS = {(41, 18): 2}


@pytest.mark.parametrize("batch", [1])
def test_synthesised_accelerator_puts_products_on_dsp48e1(tmp_path, batch):
    """Yosys synth_xilinx on a tiny Accelerator (hierarchy kept): each packed lane of the MAC lane is one
    DSP48E1 (not a LUT multiplier), the requantizer's multiply takes its DSP48E1s, and nothing else does
    (the sequencer's and decoder's arithmetic stay in LUTs). About 40 s on a busy 2-core machine."""
    net = random_network(np.random.default_rng(0), sizes=(4, 2), act_bits=4)
    verilog = write_verilog(pack(net), tmp_path / "tiny.v", batch=batch)
    stat = synth_stat(verilog, TOP_NAME, flatten=False, log_path=tmp_path / "yosys.log")
    modules = module_cells(stat)
    lane = MacLane(batch)
    lanes = {name: cells for name, cells in modules.items()
             if re.fullmatch(rf"{TOP_NAME}\.engine\.lane\.dsp_c\d+_g\d+", name)}
    assert len(lanes) == lane.dsp_count == 2 * batch
    for name, cells in lanes.items():
        assert cells.get("DSP48E1") == 1, f"{name} did not map to one DSP48E1: {cells}"
    requant = modules[f"{TOP_NAME}.engine.requant"]
    requant_dsps = REQUANT_DSPS[T_BITS, MULT_BITS + 1]  # a KeyError: the widths changed, measure again
    assert requant.get("DSP48E1") == requant_dsps
    elsewhere = {name: cells["DSP48E1"] for name, cells in modules.items()
                 if cells.get("DSP48E1") and name not in lanes and name != f"{TOP_NAME}.engine.requant"}
    assert elsewhere == {}, f"DSP48E1 outside the lanes and the requantizer: {elsewhere}"
    unmapped = {name: [c for c in cells if c.startswith("$")] for name, cells in modules.items()}
    assert not any(unmapped.values()), unmapped
    total = parse_stat(stat[stat.rfind("=== design hierarchy ==="):])
    assert total.dsp == lane.dsp_count + requant_dsps == 4
    assert total.fits()


def _memory(name: str, depth: int, value: int = 0) -> str:
    words = "".join(f"    {name}[{i}] = 32'd{value if i == 1 else 0};\n" for i in range(depth))
    return f"  reg [31:0] {name} [{depth - 1}:0];\n  initial begin\n{words}  end\n"


def test_yosys_reads_long_zero_inits_without_them_and_keeps_the_rest(tmp_path):
    n = ZERO_INIT_MIN_WORDS
    text = ("module m(input clk);\n" + _memory("big", n) + _memory("\\odd$1 ", n) + _memory("small", 8)
            + _memory("loaded", n, value=7) + "endmodule\n")
    src = tmp_path / "m.v"
    src.write_text(text)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    command = read_command(src, tmp)
    assert command == f"read_verilog {tmp / 'm.v'}" and src.read_text() == text  # a copy; the source untouched
    kept = (tmp / "m.v").read_text()
    assert "big[0] =" not in kept and "odd$1 [0] =" not in kept  # long and all zero: left out
    assert "small[7] = 32'd0;" in kept and "loaded[1] = 32'd7;" in kept and f"loaded[{n - 1}]" in kept
    assert kept.count("initial begin") == 2 and kept.count("reg [31:0]") == 4
    plain = tmp_path / "plain.v"
    plain.write_text("module p; endmodule\n")
    assert read_command(plain, tmp) == f"read_verilog {plain}"  # nothing to leave out: read as it is
