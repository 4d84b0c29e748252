"""Atomic file output: every file the project writes appears whole or not at all.

A file is written to a temporary name in its own directory (so the rename cannot cross file systems),
given the permissions a plain ``open`` would give it (``mkstemp`` makes it 0600), and renamed over the
target with ``os.replace``. If writing fails, the temporary file is removed and the target is untouched.
(``model/export/image.py`` writes its three files the same way, manifest last, as one commit.)

A command that writes several files (``verilog``, ``report``, ``system``) writes them into a staging folder and
moves them into place at the end (:func:`staged_outputs`), so that it leaves all of them or none. A failure that
the system reports without a file name (a full disk's ``ENOSPC``) is given the file or folder being written
(:func:`name_the_file`), which ``build.py`` prints instead of a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from model.errors import UserError


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders ``path`` and its parents that do not exist yet, deepest first: what ``mkdir(parents=True)``
    would make, and what :func:`remove_empty` takes away again after a failed write."""
    out = []
    path = Path(path)
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; a folder something was written into stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def name_the_file(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file when the system named none (a write that meets a full disk raises
    ``ENOSPC`` without a file name), so that ``build.py`` prints the file and the reason, not a traceback."""
    return exc if exc.filename is not None else _as_output(exc, path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``; returns ``path``.

    On any failure the temporary file is removed, and so are the folders this call made for it (a write that
    fails into a new ``--out`` leaves no empty folder); an :class:`OSError` without a file name gets ``path``
    (:func:`name_the_file`)."""
    path = Path(path)
    made = missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        remove_empty(made)
        if isinstance(exc, OSError):
            raise name_the_file(exc, path)
        raise
    return path


@contextmanager
def staged_outputs(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A command's several output files as one commit: yields a new, empty staging folder beside ``out_dir`` (on
    the same file system) to write them into. When the block ends without an error, every file in it is moved to
    the same place under ``out_dir`` (made if missing; a file of the same name replaced, any other file left as
    it was) by renames, which write no data, so a disk that fills up cannot stop them half-way. On an error the
    staging folder is removed and ``out_dir`` is as it was: no half of a Verilog file and its Vivado plan, no
    report without its JSON, no new empty folder. A staging folder is removed in every case."""
    out = Path(out_dir)
    made = missing_folders(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".staged"))
    except OSError as exc:  # (named by the output folder, not by the staging folder's hidden name)
        remove_empty(made)
        raise _as_output(exc, out) from exc
    try:
        yield stage
        for src in sorted(p for p in stage.rglob("*") if p.is_file() or p.is_symlink()):
            dest = out / src.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        remove_empty(made)  # (folders a commit filled stay)
        if isinstance(exc, OSError):
            raise _named_for_output(exc, stage, out)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _named_for_output(exc: OSError, stage: Path, out: Path) -> OSError:
    """``exc`` naming what the user asked for: the output a staged file was to become, or ``out`` where the
    system named no file (a full disk); a file outside the stage keeps its name."""
    name = exc.filename
    if isinstance(name, str | bytes | os.PathLike) and Path(os.fsdecode(name)).is_relative_to(stage):
        return _as_output(exc, out / Path(os.fsdecode(name)).relative_to(stage))
    return name_the_file(exc, out)


def _as_output(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path``: the file as the user knows it (the output a staged file would have become, not
    ``.<name>.<random>.staged``; the file a write that the system named nothing for was writing)."""
    named = OSError(exc.errno, exc.strerror or str(exc), str(path))
    named.__cause__ = exc
    return named


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


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Refuse an output folder no file can be written into, before any work starts (a command that would train
    for minutes and then fail on its first write loses nothing this way). Creates nothing: the folder is made
    at the first write, on the rank that writes (under torchrun the others write nothing), and a user mistake
    refused before that leaves no folder behind. What only the attempt shows (a file system that refuses
    ``mkdir`` to root, a full disk) still fails at that write, with the path (``build.py``).

    ``path`` must be a writable folder, or not exist yet under a writable folder (the nearest existing parent);
    :class:`~model.errors.UserError` names ``option``, the path and what is wrong otherwise. An empty path is
    refused too: ``Path("")`` is the current folder, where a mistyped ``--out "$DIR"`` would scatter the files.
    """
    if not os.fspath(path):
        raise UserError(f"{option} is empty; give a folder to write into (\".\" for the current folder)")
    path = Path(path)
    probe = path
    try:
        while not probe.exists() and probe != probe.parent:
            if probe.is_symlink():  # a dangling link: mkdir would fail on it
                raise UserError(f"{option} {path}: {probe} is a broken symbolic link")
            probe = probe.parent
    except OSError as exc:  # a parent that cannot be searched (Path.exists raises on Python 3.11)
        raise UserError(f"{option} {path}: cannot look into {probe.parent} ({exc.strerror})") from None
    if not probe.is_dir():
        what = "is a file" if probe.is_file() else "is not a folder"
        raise UserError(f"{option} {path}: {probe} {what}; give a folder to write into")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder {probe} is not writable")
    return path


def refuse_non_file(path: str | os.PathLike, why: str) -> None:
    """Raise :class:`~model.errors.UserError` ``"<path>: is not a file; <why>"`` when ``path`` exists as something
    else than a file (a folder where a file is read or written); nothing when it is a file or absent."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"{path}: is not a file; {why}")


def refuse_special_file(path: str | os.PathLike, why: str) -> None:
    """Raise :class:`~model.errors.UserError` ``"<path>: is not a regular file (a device or a pipe); <why>"`` when
    ``path`` exists as neither a file nor a folder: reading a named pipe waits for a writer that may never come."""
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise UserError(f"{path}: is not a regular file (a device or a pipe); {why}")


def refuse_non_folder(path: str | os.PathLike, why: str) -> None:
    """Raise :class:`~model.errors.UserError` ``"<path>: is not a folder; <why>"`` when ``path`` exists as something
    else than a folder (a file where a folder is written); nothing when it is a folder or absent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is not a folder; {why}")
