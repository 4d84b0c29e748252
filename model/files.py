"""Atomic file output: every file the project writes appears whole or not at all.

A file is written to a temporary name in its own directory (so the rename cannot cross file systems),
given the permissions a plain ``open`` would give it (``mkstemp`` makes it 0600), and renamed over the
target with ``os.replace``. If writing fails, the temporary file is removed and the target is untouched.
(``model/export/image.py`` writes its three files the same way, manifest last, as one commit.)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON (with a final newline) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)
            f.write("\n")

    return atomic_write(path, write)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (the format is given, the temporary name has no suffix)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
