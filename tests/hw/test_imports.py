"""Import hygiene of hw/: generating Verilog loads no deep-learning framework and nothing from sim/."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The only parts of model/ that hw/ may import: the torch-free export contract, the atomic file output
#: (model.files: one way for every file the project writes, hw/'s Verilog and Vivado projects included) and the
#: progress bars (model.progress: tqdm's, drawn to suit a terminal or a log; the synthesis shows one).
ALLOWED_MODEL = {"model.errors", "model.export.golden", "model.export.golden_conv", "model.export.image",
                 "model.export.format", "model.files", "model.progress"}
#: ``build.py`` command modules (``*_command.py``) beside the hardware they drive may also use the
#: torch-free command-line helpers, the version 4 (vertical) image reader and the code revision they record.
ALLOWED_COMMAND = ALLOWED_MODEL | {"model.cli", "model.export.image_v4", "model.revision"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "hw").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_hw_imports_only_the_export_contract(path):
    names = imported_modules(path)
    assert not {n for n in names if n == "sim" or n.startswith("sim.")}, "hw/ must not import sim/"
    assert not {n for n in names if n.split(".")[0] in ("torch", "torchvision")}
    model = {n for n in names if n == "model" or n.startswith("model.")}
    allowed = ALLOWED_COMMAND if path.name.endswith("_command.py") else ALLOWED_MODEL
    assert model <= allowed, f"{sorted(model - allowed)} are not part of the torch-free contract"


def loaded_after(imports: str) -> list[str]:
    """Top-level torch and sim modules loaded by a fresh interpreter after ``imports``."""
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sim')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return ast.literal_eval(out.stdout.strip())


def test_import_hw_accelerator_loads_no_torch():
    assert loaded_after("import hw.accelerator") == []


def test_every_hw_module_loads_no_torch():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "hw").rglob("*.py"))
    assert "hw.core.engine" in modules
    assert loaded_after("; ".join(f"import {m}" for m in modules)) == []
