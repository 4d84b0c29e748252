"""The set-up's pins: ``pyproject.toml`` pins the direct dependencies, ``constraints.txt`` every package they bring
in, and the ``.venv`` the suite runs in holds exactly that set (the Makefile installs with ``-c constraints.txt``)."""

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Installed beside the pinned set but not in it: the venv's own tools, this package, and what PyPI's CUDA build of
#: torch brings on a machine whose pip offers no CPU build (README: "Which torch build comes is pip's choice").
NOT_PINNED = re.compile(r"^(pip|setuptools|wheel|mpqaccel|nvidia-.*|triton|cuda-.*)$")
#: A pin as both files write it: ``name==version`` (an extra such as ``[builtin-yosys]`` allowed after the name).
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[a-z0-9,-]+\])?==([A-Za-z0-9.+!-]+)$")


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them (``Jinja2`` = ``jinja2``, ``find_libpython`` =
    ``find-libpython``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pin(text: str, where: str) -> tuple[str, str]:
    """``(canonical name, version)`` of ``name==version``; anything else fails naming the file."""
    match = PIN.match(text.strip())
    assert match, f"{where}: {text!r} is not pinned as name==version"
    return canonical(match[1]), match[3]


def constraints() -> dict[str, str]:
    """``constraints.txt`` as {canonical name: version}; every line a ``name==version``."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(pin(line, "constraints.txt") for line in lines if line.strip() and not line.startswith("#"))


def test_pyproject_pins_each_dependency_as_constraints_txt_does():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        name, version = pin(text, "pyproject.toml")
        assert pins.get(name) == version, f"{name}: constraints.txt pins {pins.get(name)}, pyproject.toml {version}"


def test_the_venv_holds_exactly_the_pinned_set():
    """Every package installed in the suite's environment is pinned in constraints.txt at its installed version
    (a dependency added to pyproject.toml without regenerating constraints.txt fails here); the venv was made by
    the Makefile, so every pin is installed too."""
    assert sys.prefix != sys.base_prefix, "the suite runs in the .venv the Makefile makes"
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pins = constraints()
    unpinned = sorted(n for n in installed if n not in pins and not NOT_PINNED.match(n))
    assert not unpinned, f"installed but not in constraints.txt: {unpinned}"
    # torch's local label (+cpu) is left out of its pin: either build matches it.
    wrong = {n: (installed.get(n), v) for n, v in pins.items() if installed.get(n, "").split("+")[0] != v}
    assert not wrong, f"constraints.txt against the venv (installed, pinned): {wrong}"
