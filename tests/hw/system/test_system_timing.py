"""The Zynq system (the array behind its AXI shell) meets the 100 MHz of the block design's FCLK_CLK0 in the timing
estimate of its flattened Yosys netlist (``hw/platform/timing.py``; no Vivado here), on a small array: the shell's
paths do not grow with the lanes. Before 2026-12-05 the AXI master's burst count and the header's C H W product
were computed in the cycle they were used: 12.4 ns (80.5 MHz) here and in the 4 x 42 system alike."""


import pytest

from hw.array.top import ArrayConfig
from hw.platform.array_synth import lane_dsps
from hw.platform.synth import dsp_configs, synthesize_netlist
from hw.platform.timing import estimate, slowest_paths
from hw.platform.verilog import system_verilog
from hw.system.vivado import FCLK_MHZ
from hw.system.zynq_top import SYSTEM_TOP_NAME

pytestmark = pytest.mark.usefixtures("yosys")

SMALL = ArrayConfig(engines=1, lanes=1, buffer_words=512, fmap_rows=32, row_codes=3, fan_in_width=6, channel_bits=5)


def test_the_system_meets_the_pl_clock_in_the_estimate(tmp_path):
    path = tmp_path / f"{SYSTEM_TOP_NAME}.v"
    path.write_text(system_verilog(SMALL))
    res, design = synthesize_netlist(path, SYSTEM_TOP_NAME, log_path=tmp_path / "yosys.log")
    assert res.fits()
    timing = estimate(design, SYSTEM_TOP_NAME)
    slowest = "; ".join(f"{p.end} <- {p.start} {p.delay_ns} ns" for p in slowest_paths(design, SYSTEM_TOP_NAME, 3))
    assert timing.fmax_mhz >= FCLK_MHZ, slowest
    # The system's array has the version 4 path (plane decoders; `vertical` is ArrayConfig's default, which
    # test_array_synth.py's array leaves out): its lanes are DSP48E1 in the pass lane's configuration too.
    assert SMALL.vertical
    assert lane_dsps(dsp_configs(design, SYSTEM_TOP_NAME)) == SMALL.engines * SMALL.lanes
