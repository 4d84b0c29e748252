# amaranth: UnusedElaboratable=no
"""The AXI4 protocol checker of the system benches (sim/system/axi_models.py) shown to find what it claims:
tests/sim/axi_checker_tb.py breaks the protocol on purpose, one violation at a time."""

import pytest

from sim.system.runner import run_block_test, write_block_verilog
from tests.sim.axi_probe import TOPLEVEL, AxiProbe


@pytest.mark.usefixtures("icarus")
def test_the_checker_reports_each_violation_once_and_a_clean_exchange_never(tmp_path):
    verilog = write_block_verilog(AxiProbe(), tmp_path / f"{TOPLEVEL}.v", name=TOPLEVEL)
    result = run_block_test(verilog, toplevel=TOPLEVEL, test_module="tests.sim.axi_checker_tb",
                            test="finds_each_violation", work_dir=tmp_path)
    assert result["passed"], result["log"]
