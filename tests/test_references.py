"""Paths and names that docstrings and comments point a reader to exist: no mention of a module of an older layout.

Checked in every project source (build.py, model/, hw/, sim/, tests/): file paths such as ``model/quant/bmpq.py`` in
comments and triple-quoted strings, and Sphinx references such as ``:func:`model.quant.bmpq.to_bmpq``` anywhere
(the module must exist and, where the reference goes on, define that name at its top level). README.md and docs/
are prose for users and not checked here.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "hw", "sim", "tests")
#: ``model/quant/bmpq.py``, not preceded by another path part (``out/model/x.py``) or a word.
PATH = re.compile(r"(?<![\w/.-])((?:model|hw|sim|tests)/[\w/]+\.py)\b")
#: ``:func:`model.quant.bmpq.to_bmpq```, ``:mod:`~sim.runner```, ...
ROLE = re.compile(r":(?:func|mod|class|data|meth|attr|exc|obj):`~?((?:model|hw|sim|tests)(?:\.\w+)+)`")


def sources() -> list[Path]:
    return [ROOT / "build.py", *sorted(p for d in PACKAGES for p in (ROOT / d).rglob("*.py")
                                       if "__pycache__" not in p.parts)]


def prose(text: str) -> list[tuple[int, str]]:
    """``(line, text)`` of the comments and triple-quoted strings (docstrings) of a Python source."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.string.lstrip("rbuRBU")[:3] in
                                            ('"""', "'''")):
            found.append((tok.start[0], tok.string))
    return found


@functools.cache
def top_level_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def reference_problem(dotted: str) -> str | None:
    """Why ``dotted`` (``model.quant.bmpq.to_bmpq``) names nothing in the tree, or ``None`` if it resolves."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        rest = parts[i:]
        if base.with_suffix(".py").is_file():
            if rest and rest[0] not in top_level_names(base.with_suffix(".py")):
                return f"{'.'.join(parts[:i])} defines no {rest[0]!r}"
            return None
        if (base / "__init__.py").is_file():
            return f"there is no module {'.'.join(parts[:i + 1])}" if rest else None
    return "no such package"


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mentioned_paths_and_references_exist(path):
    text = path.read_text()
    stale = []
    for line, chunk in prose(text):
        for offset, piece in enumerate(chunk.splitlines()):
            stale += [f"line {line + offset}: {m.group(1)} (no such file)" for m in PATH.finditer(piece)
                      if not (ROOT / m.group(1)).is_file()]
    for number, piece in enumerate(text.splitlines(), 1):
        for m in ROLE.finditer(piece):
            why = reference_problem(m.group(1))
            if why is not None:
                stale.append(f"line {number}: {m.group(1)} ({why})")
    assert not stale, f"{path.relative_to(ROOT)} mentions what does not exist: " + "; ".join(stale)


def test_the_checks_catch_the_old_flat_layout():
    assert reference_problem("model.bmpq.to_bmpq") == "there is no module model.bmpq"
    assert reference_problem("model.quant.bmpq.to_bmpq") is None
    assert reference_problem("model.quant.bmpq.no_such_name") == "model.quant.bmpq defines no 'no_such_name'"
    assert [m.group(1) for m in PATH.finditer("see model/bmpq.py and out/model/x.py")] == ["model/bmpq.py"]
    assert prose('x = "model/a.py"  # model/b.py\n"""model/c.py"""\n') == [(1, "# model/b.py"),
                                                                           (2, '"""model/c.py"""')]
