# amaranth: UnusedElaboratable=no
"""The register map's AXI4-Lite slave under cocotb (Icarus), driven by cocotbext-axi's AXI4-Lite master.

Random pauses on all five channels (AW and W in either order), random RW writes with random ``wstrb``
against a model of the words, the HLS control handshake, interrupts, W1C and clear-on-read bits, a 64-bit
counter read across a carry, and the load command pulse (:mod:`sim.system.tb_axi_lite`).
"""

from pathlib import Path

import pytest

from hw.system.axi_lite import AxiLiteSlave
from sim.system.runner import run_block_test, write_block_verilog

TOPLEVEL = "axi_lite"
TEST_MODULE = "sim.system.tb_axi_lite"

pytestmark = pytest.mark.usefixtures("icarus")


@pytest.fixture(scope="module")
def verilog(tmp_path_factory) -> Path:
    return write_block_verilog(AxiLiteSlave(), tmp_path_factory.mktemp("axil") / f"{TOPLEVEL}.v", name=TOPLEVEL)


@pytest.mark.parametrize("test,seed", [("registers_read_write", 1), ("registers_read_write", 2),
                                       ("control_handshake_and_interrupt", 3),
                                       ("status_counters_w1c_and_command", 4)])
def test_axi_lite_slave(verilog, test, seed):
    result = run_block_test(verilog, toplevel=TOPLEVEL, test_module=TEST_MODULE, test=test,
                            work_dir=verilog.parent, seed=seed, env={"AXI_TB_SEED": seed})
    assert result["passed"], result["log"]
