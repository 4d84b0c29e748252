"""Synthesis of the array: the whole array flattened, and beside it one engine and the shell, each by Yosys
``synth_xilinx``.

**The whole array** (``synth_xilinx -flatten`` of ``mpq_array.v``) gives the figures of record: the resources,
the DSP48E1 configurations (one lane DSP48E1 per lane, :func:`check_lanes`) and the timing estimate of every
register-to-register path, those through the engines' ports included. The bench's 4 x 42 array takes Yosys
about 260 s and 1.5 GB here (measured 2026-12-05 at 1745bef's RTL: 41,190 LUT, 42,243 FF, 193 DSP48E1, 139
RAMB36, 106.2 MHz). (Until then this module synthesised the parts only, on the belief that a flattened run of a
150-lane array took Yosys hours: a figure not measured again after :func:`hw.platform.synth.read_command` left
the memories' zero inits unread, which had taken 1,152 s of a 1,682 s run.)

**The parts**, as an out-of-context flow would see them, for the breakdown: the array's ``G`` engines are ``G``
identical instances (:meth:`hw.array.top.ConvArray.engine`), so

* **one engine** (its own Verilog, flattened), and
* **the shell**: the whole array with every engine module turned into a black box (Yosys ``blackbox``), so
  the controller, loader, feature maps, patch memory, global buffer, writer and assemblers,

whose sum ``shell + G x engine`` (``parts_total``) leaves out optimisation across an engine's ports and ABC
mapping the whole netlist at once. It is no bound on the whole run either way: the bench's array came out
131 LUT smaller whole than by parts (41,190 against 41,321), two engines of 6 lanes 5 % larger and of 12 lanes
up to 9 % larger (``docs/array_design.md``, "Row ends for the fetchers"). Each part's timing estimate ends a
path at its ports (a black box's input is not an end point); the whole run's does not.

The three Yosys processes run side by side; the whole run is the longest. (``parts=False``: the whole run alone.)
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hw.array.top import ArrayConfig
from hw.platform.synth import Resources, _yosys, dsp_configs, parse_stat, read_command, synth_xilinx, synthesize_netlist
from hw.platform.timing import PathReport, TimingReport, estimate, slowest_paths
from hw.platform.verilog import ARRAY_TOP_NAME, array_verilog, engine_verilog, write_text_atomically
from model.progress import progress_bar

ENGINE_TOP_NAME = "mpq_engine"
#: End points listed per netlist (the whole array, each part), slowest first (where the next timing fix is).
SLOWEST_PATHS = 10
#: A pass lane's DSP48E1 as :func:`hw.platform.synth.dsp_configs` names it: M and P registers, the OPMODE set at
#: run time (a pass's first product restarts P, ``hw/dsp/pass_lane.py``). Nothing else in an engine has it.
LANE_DSP_CONFIG = "MREG=1 PREG=1 OPMODE=dynamic"


def lane_dsps(configs: dict) -> int:
    """DSP48E1 of an engine's ``dsp_configs`` in the pass lane's configuration (:data:`LANE_DSP_CONFIG`)."""
    return sum(n for key, n in configs.items() if key.endswith(LANE_DSP_CONFIG))


def check_lanes(configs: dict, lanes: int, netlist: str = "the engine's netlist") -> None:
    """``RuntimeError`` unless ``netlist`` (named in the message) has exactly ``lanes`` lane DSP48E1: a synthesis
    that drops a lane (as Yosys 0.23's ``-widemux`` did, ``hw/platform/synth.py``) counts a different design."""
    found = lane_dsps(configs)
    if found != lanes:
        raise RuntimeError(f"{netlist} has {found} DSP48E1 in the lanes' configuration "
                           f"({LANE_DSP_CONFIG}), not its {lanes} lanes: the synthesis lost or duplicated lanes")


@dataclass(frozen=True)
class ArraySynthesis:
    """Resources and timing of the whole array (flattened), and its parts' (module docstring).

    Members
    -------
    resources : Resources
        The whole array's.
    timing : TimingReport
        The whole array's slowest path.
    paths : tuple of PathReport
        Its :data:`SLOWEST_PATHS` slowest end points (:func:`hw.platform.timing.slowest_paths`).
    dsp_configs : dict
        DSP48E1 configurations of the whole array.
    engines : int
    seconds : float
        Wall time of the Yosys runs (side by side).
    parts_total : Resources or None
        ``shell + engines x engine`` (``cells`` summed the same way); None (as every part's field) when the parts
        were not synthesised (:func:`synthesize_array`'s ``parts``).
    engine, shell : Resources or None
        The two parts.
    engine_timing, shell_timing : TimingReport or None
    engine_paths, shell_paths : tuple of PathReport
        Each part's slowest end points.
    """

    resources: Resources
    timing: TimingReport
    dsp_configs: dict
    engines: int
    seconds: float
    paths: tuple[PathReport, ...] = ()
    parts_total: Resources | None = None
    engine: Resources | None = None
    shell: Resources | None = None
    engine_timing: TimingReport | None = None
    shell_timing: TimingReport | None = None
    engine_paths: tuple[PathReport, ...] = ()
    shell_paths: tuple[PathReport, ...] = ()

    def as_dict(self) -> dict:
        def part(x):
            return None if x is None else x.as_dict()

        return {"method": "the whole array flattened (the figures of record)" + (
                    "; the parts beside it: one engine and the shell with black-box engines" if self.engine else "")
                + " (hw/platform/array_synth.py)",
                "engines": self.engines, "total": self.resources.as_dict(), "timing": self.timing.as_dict(),
                "paths": [p.as_dict() for p in self.paths], "dsp_configs": self.dsp_configs,
                "parts_total": part(self.parts_total), "engine": part(self.engine), "shell": part(self.shell),
                "engine_timing": part(self.engine_timing), "shell_timing": part(self.shell_timing),
                "seconds": self.seconds, "engine_paths": [p.as_dict() for p in self.engine_paths],
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


def start_thread(box: dict, key: str, job, errors: tuple = (Exception,)) -> threading.Thread:
    """Start ``job()`` in a daemon thread: its result goes into ``box[key]``, an exception of ``errors`` into
    ``box[key + "_error"]``, for the caller's thread to re-raise or report (not printed as a thread's traceback).
    Yosys runs as a subprocess, so the caller's work goes on meanwhile."""

    def run():
        try:
            box[key] = job()
        except errors as exc:  # (the caller decides which: by default any of them)
            box[f"{key}_error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker


def synthesize_array(config: ArrayConfig, out_dir, *, timeout_s: float | None = None,
                      progress: bool = False, parts: bool = True) -> ArraySynthesis:
    """Write ``mpq_array.v`` and ``mpq_engine.v`` into ``out_dir`` and synthesise the whole array and its two parts
    side by side (logs ``yosys_whole.log``, ``yosys_engine.log`` and ``yosys_shell.log``; the memories' long zero
    inits are not read, :func:`hw.platform.synth.read_command`). ``timeout_s`` bounds each Yosys run; ``progress``
    shows the runs done and the time so far (Yosys itself says nothing until it ends: minutes on a large array);
    without ``parts`` only the whole array is synthesised (no ``mpq_engine.v``; the demo, which prints no
    breakdown, saves the parts' Yosys time for the cores it shares with its simulations).

    Raises
    ------
    RuntimeError
        A Yosys run failed (its log's tail in the message) or ran past ``timeout_s``, or a netlist (the whole
        array's, the engine's) does not hold one lane DSP48E1 per lane (:func:`check_lanes`).
    """
    out_dir = Path(out_dir)
    array_path = write_text_atomically(out_dir / f"{ARRAY_TOP_NAME}.v", array_verilog(config))
    box: dict = {}
    jobs = {"whole": lambda: synthesize_netlist(array_path, ARRAY_TOP_NAME, log_path=out_dir / "yosys_whole.log",
                                                 timeout_s=timeout_s)}
    if parts:
        epath = write_text_atomically(out_dir / f"{ENGINE_TOP_NAME}.v", engine_verilog(config, name=ENGINE_TOP_NAME))
        jobs["engine"] = lambda: synthesize_netlist(epath, ENGINE_TOP_NAME, log_path=out_dir / "yosys_engine.log",
                                                    timeout_s=timeout_s)
        jobs["shell"] = lambda: _shell_netlist(array_path, out_dir / "yosys_shell.log", timeout_s)
    t0 = time.perf_counter()
    # (any error, Yosys missing, its run, its netlist, is re-raised below)
    workers = {name: start_thread(box, name, job) for name, job in jobs.items()}
    # (no rate or time left: the three runs take very different times)
    with progress_bar(total=len(workers), desc="yosys", disable=not progress,
              bar_format="{desc}: {n_fmt} of {total_fmt} runs done, {elapsed}{postfix}") as bar:
        done: list[str] = []  # (counted here: a disabled bar counts nothing)
        while len(done) < len(workers):
            time.sleep(0.5)
            now = [name for name, w in workers.items() if not w.is_alive()]
            bar.set_postfix_str("done: " + (", ".join(now) or "none"), refresh=False)
            bar.update(len(now) - len(done))
            done = now
    for name in jobs:
        if f"{name}_error" in box:
            raise box[f"{name}_error"]
    whole, whole_design = box["whole"]
    n = config.engines
    configs = dsp_configs(whole_design, ARRAY_TOP_NAME)
    check_lanes(configs, n * config.lanes, "the whole array's netlist")
    record = ArraySynthesis(resources=whole, timing=estimate(whole_design, ARRAY_TOP_NAME), dsp_configs=configs,
                            engines=n, seconds=round(time.perf_counter() - t0, 1),
                            paths=tuple(slowest_paths(whole_design, ARRAY_TOP_NAME, SLOWEST_PATHS)))
    if not parts:
        return record
    (engine, engine_design), (shell, shell_design) = box["engine"], box["shell"]
    check_lanes(dsp_configs(engine_design, ENGINE_TOP_NAME), config.lanes, "the engine's netlist")
    return dataclasses.replace(
        record, parts_total=_sum(shell, engine, n), engine=engine, shell=shell,
        engine_timing=estimate(engine_design, ENGINE_TOP_NAME), shell_timing=estimate(shell_design, ARRAY_TOP_NAME),
        engine_paths=tuple(slowest_paths(engine_design, ENGINE_TOP_NAME, SLOWEST_PATHS)),
        shell_paths=tuple(slowest_paths(shell_design, ARRAY_TOP_NAME, SLOWEST_PATHS)))
