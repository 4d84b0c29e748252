"""The package layers import one way (README, "Layout"): checked on the source, so a new upward import fails here.

Each project module gets a layer from :data:`LAYERS` (longest matching prefix); a module may import only
modules of a lower layer or of its own package at the same layer, and the module graph has no cycle.
Project imports inside functions are allowed only in the ``*_command.py`` modules, whose ``run`` defers the
heavy imports so that ``--help`` stays fast; anywhere else an import inside a function would hide a cycle.
A command module imports no other command module (what two commands share is library code), except
``demo``, the composition of ``train``, ``export`` and ``sim``, which takes ``train``'s options.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "hw", "sim", "driver")

#: Module prefix -> layer; lower layers never import higher ones.
LAYERS: dict[str, float] = {
    "model.errors": 0,
    "model.files": 0.5,  # above model.errors: its folder checks raise UserError
    "model.progress": 0.5,
    "model.revision": 0.5,
    "model.export.format": 1,
    "model.export.golden": 1,
    "model.export.golden_conv": 1,
    "model.export.golden_net": 1,
    "model.export.golden_vertical": 1,
    "model.export.image": 1,
    "model.export.image_v4": 1,
    "model.export.layout_v3": 1,
    "model.export.records": 1,
    "model.export.weight_stream": 1,
    "model.cli": 2,
    "model.data": 2,
    # hw sees only the torch-free contract (layers 0-1; checked again by ALLOWED_FOR_HW), inside it:
    # DSP lanes -> the core's blocks -> the accelerator top -> platform (Verilog, boards, Yosys)
    # (what hw/ may import from model/ exactly: tests/hw/test_imports.py)
    "hw": 2.0,
    "hw.dsp": 2.1,
    "hw.core": 2.2,
    "hw.array": 2.25,
    "hw.accelerator": 2.3,
    "hw.system": 2.35,
    "hw.platform": 2.4,
    # the host driver: the register map and the image reader below it; its simulation backend is in sim
    "driver": 2.5,
    "model.quant": 3,
    "model.training": 4,
    "model.methods": 5,
    "model.export.convert": 5,
    "model.export.convert_vertical": 5,
    "model.export.vectors": 5,
    "model.runs": 6,
    "model.bench": 7,
    "sim": 7.5,
    "build": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module_or_package(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def top_package(name: str) -> str:
    """``model.quant`` for ``model.quant.nets``, ``sim`` for ``sim.tb.stream``: where sideways imports are fine."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "model" else parts[0]


def layer_of(name: str) -> float:
    if (ROOT / name.replace(".", "/") / "__init__.py").is_file() and name not in LAYERS:
        # a package itself (its __init__ is empty): the layer of its prefix, or 0 for one that spans layers
        prefix = max((p for p in LAYERS if name.startswith(p + ".")), key=len, default=None)
        return LAYERS[prefix] if prefix else 0
    if name.endswith("_command"):
        return 8
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{name} has no layer in tests/test_layering.py LAYERS: add it"
    return LAYERS[best]


def project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import of a project module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from model.quant import nets` imports the module model.quant.nets, `from model import quant`
                # the package model.quant (checked like its modules); `from model.x import name` model.x
                names = [f"{child.module}.{a.name}" if is_module_or_package(f"{child.module}.{a.name}")
                         else child.module for a in child.names]
            for name in names:
                if name.split(".")[0] in (*PACKAGES, "build"):
                    found.append((name, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def sources() -> list[Path]:
    files = [ROOT / "build.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def test_no_relative_imports():
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in sources() for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not bad, f"use absolute imports (the layer check reads them): {bad}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down(path):
    me = module_name(path)
    mine = layer_of(me)
    for name, line, in_function in project_imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {name}"
        if in_function:
            assert me.endswith("_command") or me == "build", f"{where} inside a function (only *_command.py modules defer imports)"
        if me.endswith("_command") and name.endswith("_command"):
            # demo is by design the composition of train, export and sim: it reuses train's options
            assert me == "sim.demo_command", (f"{where}: a command module imports another; move what they share "
                                              f"into a library module")
            continue
        same_package = top_package(name) == top_package(me)
        assert layer_of(name) < mine or (layer_of(name) == mine and same_package), (
            f"{where}: layer {layer_of(name)} above or beside layer {mine}")


def test_no_import_cycles():
    graph = {module_name(p): {n for n, _, _ in project_imports(p)} for p in sources()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [])
