"""The suite's file order (tests/conftest.py ``SLOW_FILES_FIRST``): the slow files it names exist, and the
collection puts them first in that order, the others after them as collected."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import SLOW_FILES_FIRST, pytest_collection_modifyitems

ROOT = Path(__file__).resolve().parents[1]


def test_every_slow_file_named_exists():
    """A renamed or removed file would drop out of the order without a word."""
    assert len(set(SLOW_FILES_FIRST)) == len(SLOW_FILES_FIRST)
    for path in SLOW_FILES_FIRST:
        assert (ROOT / path).is_file(), path


def test_the_slow_files_come_first_in_their_order_the_others_as_collected():
    first, second = SLOW_FILES_FIRST[0], SLOW_FILES_FIRST[1]
    names = ["tests/a/test_x.py::t1", f"{second}::t1", "tests/b/test_y.py::t1", f"{first}::t2",
             f"{second}::t2", f"{first}::t1", "tests/a/test_x.py::t2"]
    items = [SimpleNamespace(nodeid=n) for n in names]
    pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == [f"{first}::t2", f"{first}::t1", f"{second}::t1", f"{second}::t2",
                                         "tests/a/test_x.py::t1", "tests/b/test_y.py::t1", "tests/a/test_x.py::t2"]


def test_make_test_keeps_the_order():
    """xdist would sort the files by their test counts again without ``--no-loadscope-reorder``."""
    make = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in make.splitlines() if "-m pytest" in ln)
    assert "--dist loadfile" in line and "--no-loadscope-reorder" in line, line
