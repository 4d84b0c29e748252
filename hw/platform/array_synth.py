"""Parts synthesis of the array: one engine and the shell around the engines, each by Yosys ``synth_xilinx``.

A flattened ``synth_xilinx`` of a whole 150-lane array takes Yosys hours on this machine (its optimisation
passes grow faster than the design), while the array's ``G`` engines are ``G`` identical instances
(:meth:`hw.array.top.ConvArray.engine`). So, as an out-of-context flow would, this synthesises

* **one engine** (its own Verilog, flattened), and
* **the shell**: the whole array with every engine module turned into a black box (Yosys ``blackbox``), so
  the controller, loader, feature maps, patch memory, global buffer, writer and assemblers,

in two Yosys processes side by side, and counts ``shell + G x engine``. What this leaves out, and says:
optimisation across an engine's ports, and ABC mapping the whole netlist at once instead of an engine at a
time. A flattened run may come out smaller or larger: measured on two engines, the tiny array of
``tests/hw/platform/test_array_synth.py`` agrees within 2 %, but 6 lanes an engine came out 5 % larger
flattened (at 494a5d3 and at f3e2313) and 12 lanes 0.1 % larger at 494a5d3 and 9 % larger at f3e2313
(``docs/array_design.md``, "Row ends for the fetchers"): the counts are Yosys's for the parts, not a bound
on a flattened run, nor on Vivado's. Timing paths that cross an engine's ports are timed only up to the
port on each side (:func:`hw.platform.timing.estimate` starts a path at a top-level input and ends one at a
top-level output or at a black box's input is not an end point); the slower of the two parts' estimates is
reported. The engine's ports are registered on the engine's side for the command and patch paths
(``hw/array/engine.py``), so the paths most at risk are inside the parts.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog

from hw.array.top import ArrayConfig, ConvArray
from hw.platform.synth import Resources, _yosys, dsp_configs, parse_stat, read_command, synth_xilinx, synthesize_netlist
from hw.platform.timing import PathReport, TimingReport, estimate, slowest_paths
from hw.platform.verilog import ARRAY_TOP_NAME, write_text_atomically

ENGINE_TOP_NAME = "mpq_engine"
#: End points listed per part, slowest first (where the next timing fix is).
SLOWEST_PATHS = 10
#: A pass lane's DSP48E1 as :func:`hw.platform.synth.dsp_configs` names it: M and P registers, the OPMODE set at
#: run time (a pass's first product restarts P, ``hw/dsp/pass_lane.py``). Nothing else in an engine has it.
LANE_DSP_CONFIG = "MREG=1 PREG=1 OPMODE=dynamic"


def lane_dsps(configs: dict) -> int:
    """DSP48E1 of an engine's ``dsp_configs`` in the pass lane's configuration (:data:`LANE_DSP_CONFIG`)."""
    return sum(n for key, n in configs.items() if key.endswith(LANE_DSP_CONFIG))


def check_lanes(configs: dict, lanes: int) -> None:
    """``RuntimeError`` unless the engine's netlist has exactly ``lanes`` lane DSP48E1: a synthesis that drops a
    lane (as Yosys 0.23's ``-widemux`` did, ``hw/platform/synth.py``) counts a different design."""
    found = lane_dsps(configs)
    if found != lanes:
        raise RuntimeError(f"the engine's netlist has {found} DSP48E1 in the lanes' configuration "
                           f"({LANE_DSP_CONFIG}), not its {lanes} lanes: the synthesis lost or duplicated lanes")


@dataclass(frozen=True)
class ArraySynthesis:
    """Resources of the whole array (``shell + engines x engine``) and the slower part's timing estimate.

    Members
    -------
    resources : Resources
        The totals (``cells`` summed the same way).
    timing : TimingReport
        The slower of the engine's and the shell's estimates.
    engine, shell : Resources
        The two parts.
    engine_timing, shell_timing : TimingReport
    engine_paths, shell_paths : list of PathReport
        Each part's :data:`SLOWEST_PATHS` slowest end points (:func:`hw.platform.timing.slowest_paths`).
    dsp_configs : dict
        DSP48E1 configurations of the whole array (the engine's counted ``engines`` times).
    engines : int
    seconds : float
        Wall time of the two Yosys runs (side by side).
    """

    resources: Resources
    timing: TimingReport
    engine: Resources
    shell: Resources
    engine_timing: TimingReport
    shell_timing: TimingReport
    dsp_configs: dict
    engines: int
    seconds: float
    engine_paths: tuple[PathReport, ...] = ()
    shell_paths: tuple[PathReport, ...] = ()

    def as_dict(self) -> dict:
        return {"method": "parts: one engine + the shell with black-box engines (hw/platform/array_synth.py)",
                "engines": self.engines, "total": self.resources.as_dict(), "engine": self.engine.as_dict(),
                "shell": self.shell.as_dict(), "timing": self.timing.as_dict(),
                "engine_timing": self.engine_timing.as_dict(), "shell_timing": self.shell_timing.as_dict(),
                "dsp_configs": self.dsp_configs, "seconds": self.seconds,
                "engine_paths": [p.as_dict() for p in self.engine_paths],
                "shell_paths": [p.as_dict() for p in self.shell_paths]}


def _sum(shell: Resources, engine: Resources, n: int) -> Resources:
    cells = dict(shell.cells)
    for k, v in engine.cells.items():
        cells[k] = cells.get(k, 0) + n * v
    cells = {k: v for k, v in cells.items() if not k.startswith(f"{ARRAY_TOP_NAME}.engine")}
    return Resources(dsp=shell.dsp + n * engine.dsp, lut=shell.lut + n * engine.lut, ff=shell.ff + n * engine.ff,
                     bram36=shell.bram36 + n * engine.bram36, cells=cells)


def _shell_netlist(path: Path, log_path: Path | None, timeout_s: float | None) -> tuple[Resources, dict]:
    """``synth_xilinx -flatten`` of the array (Verilog at ``path``) with its engines as black boxes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "netlist.json"
        script = (f"{read_command(path, tmp)}; hierarchy -top {ARRAY_TOP_NAME}; "
                  f"blackbox {ARRAY_TOP_NAME}.engine*; {synth_xilinx(ARRAY_TOP_NAME)}; "
                  f"stat; write_json {out}")
        text = _yosys(path, script, log_path, timeout_s)
        design = json.loads(out.read_text())
    return parse_stat(text[text.rfind("Printing statistics"):]), design


def synthesize_array(config: ArrayConfig, out_dir, *, timeout_s: float | None = None) -> ArraySynthesis:
    """Write ``mpq_array.v`` and ``mpq_engine.v`` into ``out_dir``, synthesise the two parts side by side
    (logs ``yosys_engine.log`` and ``yosys_shell.log``; the memories' long zero inits are not read,
    :func:`hw.platform.synth.read_command`), and add them up (module docstring). ``timeout_s`` bounds each
    Yosys run.

    Raises
    ------
    RuntimeError
        A Yosys run failed (its log's tail in the message) or ran past ``timeout_s``, or the engine's netlist
        does not hold one lane DSP48E1 per lane (:func:`check_lanes`).
    """
    out_dir = Path(out_dir)
    array = ConvArray(config)
    engine_verilog = verilog.convert(array.engine(), name=ENGINE_TOP_NAME, emit_src=False)
    shell_path = write_text_atomically(out_dir / f"{ARRAY_TOP_NAME}.v",
                                       verilog.convert(array, name=ARRAY_TOP_NAME, emit_src=False))  # = array_verilog
    epath = write_text_atomically(out_dir / f"{ENGINE_TOP_NAME}.v", engine_verilog)
    box: dict = {}

    def engine_part():
        try:
            box["engine"] = synthesize_netlist(epath, ENGINE_TOP_NAME, log_path=out_dir / "yosys_engine.log",
                                               timeout_s=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any of them (Yosys missing, its run, its netlist) is re-raised in
            box["engine_error"] = exc  # the caller's thread, not printed as a thread's traceback

    t0 = time.perf_counter()
    worker = threading.Thread(target=engine_part, daemon=True)
    worker.start()
    shell, shell_design = _shell_netlist(shell_path, out_dir / "yosys_shell.log", timeout_s)
    worker.join()
    if "engine_error" in box:
        raise box["engine_error"]
    engine, engine_design = box["engine"]
    n = config.engines
    engine_timing = estimate(engine_design, ENGINE_TOP_NAME)
    shell_timing = estimate(shell_design, ARRAY_TOP_NAME)
    engine_configs = dsp_configs(engine_design, ENGINE_TOP_NAME)
    check_lanes(engine_configs, config.lanes)
    configs = dsp_configs(shell_design, ARRAY_TOP_NAME)
    for k, v in engine_configs.items():
        configs[k] = configs.get(k, 0) + n * v
    slower = max(engine_timing, shell_timing, key=lambda t: t.delay_ns)
    return ArraySynthesis(resources=_sum(shell, engine, n), timing=slower, engine=engine, shell=shell,
                          engine_timing=engine_timing, shell_timing=shell_timing, dsp_configs=configs, engines=n,
                          seconds=round(time.perf_counter() - t0, 1),
                          engine_paths=tuple(slowest_paths(engine_design, ENGINE_TOP_NAME, SLOWEST_PATHS)),
                          shell_paths=tuple(slowest_paths(shell_design, ARRAY_TOP_NAME, SLOWEST_PATHS)))
