"""The host driver on what a PYNQ board runs: Python 3.10 and numpy 1.x (README, "On a PYNQ-Z2").

The suite runs on Python 3.11 with numpy 2.4.6; a PYNQ 3.x image has Python 3.10 and keeps a numpy below 2 (pynq
needs it). Two checks stand in for the board's interpreter, which does not run here:

* every module of this repository that ``driver.mpq_driver`` and ``driver.pynq_backend`` import (the driver, the
  register map, the image reader) needs nothing past Python 3.10, by vermin's static analysis of each file's syntax
  and standard-library use (no Python 3.10 is installable here: Debian 12 has 3.11 only);
* the driver's own tests, through the simulated Zynq system and the pynq backend's stand-in, pass with numpy 1.x
  (the Makefile's ``BOARD_NUMPY_VERSION``, installed beside the .venv) first on the path: in the test process,
  which checks the version it imported before and after the tests, and in the simulator's (cocotb's runner hands
  the simulator that process's ``sys.path`` as ``PYTHONPATH``).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The Python of the PYNQ 3.x images (Ubuntu 22.04's).
BOARD_PYTHON = "3.10"
#: The driver's tests that run again on numpy 1.x: every test of its module (a new one too) and the pynq backend's
#: run on the RTL, but for those of :data:`HOST_ONLY`.
BOARD_TESTS = ["tests/sim/test_system_driver.py", "tests/sim/test_system.py::test_system[pynq_backend-14-1]"]
#: Node-id prefixes left out: the command line's tests (``build.main`` loads the training side, the host's, whose
#: data module needs numpy 2) and the host environment's import list (numpy 1 brings Cython modules of its own).
HOST_ONLY = ["tests/sim/test_system_driver.py::test_cli_",
             "tests/sim/test_system_driver.py::test_the_driver_imports_only_what_the_readme_lists_for_the_board"]
#: Run in the subprocess: the numpy it imports, before and after pytest's run, must be the pin's.
INNER = ("import sys, numpy, pytest; pin = sys.argv[1]; assert numpy.__version__ == pin, numpy.__file__; "
         "code = pytest.main(sys.argv[2:]); assert sys.modules['numpy'].__version__ == pin; sys.exit(code)")


def driver_modules() -> dict[str, str | None]:
    """Every module that importing the driver and its pynq backend loads, in a fresh process: its name and its file
    (None for a module of none). The README's list of the board's packages is checked on it too
    (``tests/sim/test_system_driver.py``)."""
    probe = ("import sys, driver.mpq_driver, driver.pynq_backend; loaded = dict(sys.modules); import json; "
             "print(json.dumps({n: getattr(m, '__file__', None) for n, m in loaded.items()}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def board_modules() -> list[Path]:
    """The files of :func:`driver_modules`."""
    return sorted(Path(f) for f in driver_modules().values() if f)


def repository_modules(files: list[Path]) -> list[Path]:
    """Those of ``files`` that are this repository's (under its root, not in a virtual environment)."""
    return [f for f in files if f.is_relative_to(ROOT) and not f.relative_to(ROOT).parts[0].startswith(".venv")]


def test_the_boards_modules_need_no_python_past_3_10():
    files = repository_modules(board_modules())
    names = {f.relative_to(ROOT).as_posix() for f in files}
    assert {"driver/mpq_driver.py", "driver/pynq_backend.py", "hw/system/register_map.py",
            "model/export/image.py", "model/export/image_v4.py"} <= names, names
    vermin = Path(sys.executable).parent / "vermin"
    res = subprocess.run([vermin, "--no-tips", "--violations", f"-t={BOARD_PYTHON}-", *files], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "Target versions not met" not in res.stdout, res.stdout + res.stderr
    found = re.search(r"Minimum required versions: 3\.(\d+)", res.stdout)
    assert found and int(found[1]) <= 10, res.stdout


def test_the_driver_runs_with_the_boards_numpy_1(tmp_path):
    pin = re.search(r"^BOARD_NUMPY_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    assert int(pin.split(".")[0]) == 1
    folder = Path(sys.prefix) / "board-numpy"
    assert (folder / f"numpy-{pin}.dist-info").is_dir(), f"{folder}: no numpy {pin} (`make test` installs it)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    deselect = [arg for prefix in HOST_ONLY for arg in ("--deselect", prefix)]
    res = subprocess.run([sys.executable, "-c", INNER, pin, "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "--basetemp", str(tmp_path / "run"), *deselect, *BOARD_TESTS], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    summary = res.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed[1]) >= 20 and not re.search(r"failed|error|skipped", summary), summary
