# amaranth: UnusedElaboratable=no
"""The image-load path (AXI master -> buffer loader -> writable global buffer) under cocotb (Icarus).

Random image sizes and DDR addresses with random AXI latency and back-pressure, every buffer word read back
and compared; a SLVERR inside the image gives ``error`` and no hang (:mod:`sim.system.tb_buffer_loader`).
"""

from pathlib import Path

import pytest

from hw.system.buffer_loader import BufferLoader
from sim.system.loader_bench import LoaderBench
from sim.system.runner import run_block_test, write_block_verilog

TOPLEVEL = "loader_bench"
TEST_MODULE = "sim.system.tb_buffer_loader"


@pytest.fixture(scope="module")
def verilog(tmp_path_factory) -> Path:
    return write_block_verilog(LoaderBench(buffer_addr_width=10), tmp_path_factory.mktemp("loader") / f"{TOPLEVEL}.v",
                               name=TOPLEVEL)


@pytest.mark.usefixtures("icarus")
@pytest.mark.parametrize("test,seed,stall", [("load_random_images", 1, 1), ("load_random_images", 2, 0),
                                             ("load_with_error_response", 3, 1)])
def test_buffer_loader(verilog, test, seed, stall):
    result = run_block_test(verilog, toplevel=TOPLEVEL, test_module=TEST_MODULE, test=test,
                            work_dir=verilog.parent, seed=seed, env={"AXI_TB_SEED": seed, "AXI_TB_STALL": stall})
    assert result["passed"], result["log"]


def test_bad_parameters_name_the_value():
    for kwargs, text in (({"buffer_addr_width": 0}, "buffer_addr_width"),
                         ({"buffer_addr_width": 10, "length_width": 12}, "length_width"),
                         ({"buffer_addr_width": 10, "cycle_bits": 65}, "cycle_bits")):
        with pytest.raises(ValueError, match=text):
            BufferLoader(**kwargs)
