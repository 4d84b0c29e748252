# amaranth: UnusedElaboratable=no
"""The AXI4 master's read and write engines under cocotb (Icarus) against a latency AXI RAM model.

Random commands (lengths up to 4 KiB, starts next to 4 KiB boundaries, odd words for writes) with random
latency and back-pressure on every AXI channel and on the word streams; reads compared word for word,
writes byte for byte over the whole memory; a protocol checker on every burst (<= max_burst beats, no 4 KiB
crossing, wlast, stable valid); SLVERR responses reported; an unsolicited B or R beat reported once, with no hang
(:mod:`sim.system.tb_axi_master`).
"""

from pathlib import Path

import pytest

from hw.system.axi_master import AxiMaster
from sim.system.runner import run_block_test, write_block_verilog

TOPLEVEL = "axi_master"
TEST_MODULE = "sim.system.tb_axi_master"

pytestmark = pytest.mark.usefixtures("icarus")

#: (max_burst, max_reads): the HP port's setting, and a small one that makes many short bursts.
PARAMS = {"hp": (16, 4), "small": (4, 2)}


@pytest.fixture(scope="module", params=sorted(PARAMS))
def design(request, tmp_path_factory) -> tuple[Path, dict]:
    max_burst, max_reads = PARAMS[request.param]
    dut = AxiMaster(max_burst=max_burst, max_reads=max_reads, max_writes=max_reads, length_width=16)
    path = write_block_verilog(dut, tmp_path_factory.mktemp(f"axim_{request.param}") / f"{TOPLEVEL}.v",
                               name=TOPLEVEL)
    return path, {"AXI_TB_MAX_BURST": max_burst, "AXI_TB_MAX_READS": max_reads, "AXI_TB_MAX_WRITES": max_reads}


@pytest.mark.parametrize("test,seed,stall", [("read_engine_random", 1, 1), ("read_engine_random", 2, 0),
                                             ("write_engine_random", 3, 1), ("write_engine_random", 4, 0),
                                             ("error_responses", 5, 1), ("unsolicited_b", 6, 1),
                                             ("unsolicited_r", 7, 1)])
def test_axi_master(design, test, seed, stall):
    verilog, env = design
    result = run_block_test(verilog, toplevel=TOPLEVEL, test_module=TEST_MODULE, test=test,
                            work_dir=verilog.parent, seed=seed,
                            env=env | {"AXI_TB_SEED": seed, "AXI_TB_STALL": stall, "AXI_TB_COMMANDS": 25})
    assert result["passed"], result["log"]


def test_bad_parameters_name_the_value():
    for kwargs, text in (({"max_burst": 17}, "max_burst"), ({"max_reads": 0}, "max_reads"),
                         ({"data_width": 32}, "data_width"), ({"addr_width": 8}, "addr_width"),
                         ({"length_width": 40}, "length_width"), ({"bundle": "a b"}, "bundle")):
        with pytest.raises(ValueError, match=text):
            AxiMaster(**kwargs)
