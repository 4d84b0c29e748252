"""Run the cocotb testbenches of the AXI building blocks (hw/system/) on their generated Verilog.

Each block is converted to Verilog under ``work_dir`` (one file per block and parameter set, named after its
top module), built once per Verilog text by :func:`sim.runner.build`, and simulated one cocotb test at a
time::

    from hw.system.axi_lite import AxiLiteSlave
    from sim.system.runner import write_block_verilog, run_block_test
    verilog = write_block_verilog(AxiLiteSlave(), "out/sim/axil/axi_lite.v", name="axi_lite")
    result = run_block_test(verilog, toplevel="axi_lite", test_module="sim.system.tb_axi_lite",
                            test="registers_read_write", work_dir="out/sim/axil", seed=1)
    assert result["passed"], result["log"]

The testbenches drive the blocks with cocotbext-axi's AXI4-Lite master and AXI4 RAM model
(:mod:`sim.system.axi_models` adds latency, error injection and a protocol checker); they learn their
parameters from ``AXI_TB_<NAME>`` environment variables (:func:`run_block_test` ``env``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog

from hw.platform.verilog import write_text_atomically
from sim.runner import SimulationError, build, cocotb_results, run_cocotb


def write_block_verilog(component, path, *, name: str) -> Path:
    """Write the Verilog of ``component`` (top module ``name``) atomically
    (:func:`hw.platform.verilog.write_text_atomically`); return its path."""
    return write_text_atomically(path, verilog.convert(component, name=name, emit_src=False))


def run_block_test(verilog_path, *, toplevel: str, test_module: str, test: str, work_dir,
                   simulator: str = "icarus", seed: int = 0, env: dict[str, str] | None = None,
                   keep_logs: bool = False) -> dict:
    """Build ``verilog_path`` (once) and run the one cocotb test ``test`` of ``test_module`` on it.

    Parameters
    ----------
    env : dict, optional
        ``AXI_TB_*`` settings for the testbench (strings).

    Returns
    -------
    dict
        ``passed`` (the cocotb verdict of that test), ``test``, ``wall_s``, ``log`` (the run folder's
        ``sim.log``, kept when the test failed or ``keep_logs``; else None).

    Raises
    ------
    ValueError
        ``test`` is not an identifier.
    SimulationError
        The build failed or the simulation ended without running ``test``.
    """
    if not test.isidentifier():
        raise ValueError(f"test must be a cocotb test function name, not {test!r}")
    build_dir = build(verilog_path, work_dir=work_dir, simulator=simulator, toplevel=toplevel)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{test}-", dir=build_dir))
    t0 = time.perf_counter()
    results_xml = run_cocotb(build_dir, simulator=simulator, toplevel=toplevel, test_module=test_module,
                             test_dir=run_dir, env={k: str(v) for k, v in (env or {}).items()}, seed=seed,
                             test_filter=f"^{test_module}.{test}$")
    wall_s = time.perf_counter() - t0
    outcomes = {name.rsplit(".", 1)[-1]: ok for name, ok in cocotb_results(results_xml).items()}
    log = run_dir / "sim.log"
    if test not in outcomes:
        raise SimulationError(f"{simulator} simulation of {verilog_path} did not run {test} "
                              f"(ran {sorted(outcomes)})", log)
    passed = outcomes[test]
    if passed and not keep_logs:
        shutil.rmtree(run_dir, ignore_errors=True)
        log = None
    return {"passed": passed, "test": test, "wall_s": wall_s, "log": None if log is None else str(log)}
