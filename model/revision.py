"""The code revision a result was made with: the commit, whether the package sources differ from it, and their hash.

The revision (:func:`code_revision`) is, in order of preference:

``git:<commit>``
    The repository's ``HEAD`` when ``git status`` shows no change to the package sources (``model/``,
    ``hw/``, ``sim/``, ``build.py``; untracked files included, ignored ones and byte code not).
``git:<commit>+dirty:<hash>``
    The same with uncommitted changes: ``<hash>`` is the first 16 hex digits of :func:`source_hash`, so
    two different sets of uncommitted edits on one commit are two revisions.
``src:<hash>``
    Outside git (an unpacked archive, no ``git`` binary, a repository git refuses to read): the source hash
    alone.

The revision is computed once per process, and ``build.py`` computes it before a command starts its work: the
code that runs is the code that was imported, even if a file changes on disk later (and a long run compares one
value with itself). Torch-free, so that every command records it, the hardware's too (:mod:`model.runs.provenance`
adds the numeric environment of a training run).
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

#: The repository root: the folder that holds ``model/`` and ``build.py``.
ROOT = Path(__file__).resolve().parents[1]
#: What the revision covers: the packages (every file but byte code; inside git, those git does not ignore) and
#: the entry point.
SOURCE_PACKAGES = ("model", "hw", "sim")
SOURCE_FILES = ("build.py",)
#: Hex digits of the source hash kept in a revision string.
HASH_DIGITS = 16
#: What neither the hash nor the dirty check looks at (git pathspecs; byte code even where no .gitignore says so).
_EXCLUDE = (":(exclude)*/__pycache__/*", ":(exclude)*.pyc")


def source_files(root: Path = ROOT) -> list[Path]:
    """The package sources under ``root``, sorted: the files of :data:`SOURCE_PACKAGES` and :data:`SOURCE_FILES`
    except ``__pycache__`` folders and ``*.pyc``.

    Inside git, the files git sees there (tracked or untracked, not ignored: ``git ls-files --cached --others
    --exclude-standard``), the same files the dirty check of :func:`git_state` looks at, so that an ignored
    build artefact (``sim_build/``, ``*.vcd``) changes neither. Outside git, every file below the packages.
    """
    listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCE_PACKAGES,
                  *SOURCE_FILES, *_EXCLUDE)
    if listed is not None:
        files = {root / name for name in listed.split("\0") if name and (root / name).is_file()}
    else:
        files = {root / name for name in SOURCE_FILES if (root / name).is_file()}
        for package in SOURCE_PACKAGES:
            files |= {p for p in (root / package).rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def source_hash(root: Path = ROOT) -> str:
    """SHA-256 (hex) over the relative path and the bytes of every file of :func:`source_files`."""
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` stdout, or ``None`` if git is missing or fails (not a repository, ...)."""
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: Path = ROOT) -> tuple[str, bool] | None:
    """``(HEAD commit, whether the package sources have uncommitted changes)``, or ``None`` outside git."""
    head = _git(root, "rev-parse", "--verify", "HEAD")
    if head is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *SOURCE_PACKAGES, *SOURCE_FILES,
                  *_EXCLUDE)
    if status is None:
        return None
    return head.strip(), bool(status.strip())


def revision_of(root: Path = ROOT) -> dict:
    """The code revision of the sources under ``root`` (module docstring), with its parts.

    Returns
    -------
    dict
        ``revision`` (the string runs compare), ``git_commit`` (``None`` outside git), ``dirty`` (``None``
        outside git) and ``source_sha256`` (:func:`source_hash`).
    """
    sources = source_hash(root)
    state = git_state(root)
    if state is None:
        return {"revision": f"src:{sources[:HASH_DIGITS]}", "git_commit": None, "dirty": None,
                "source_sha256": sources}
    commit, dirty = state
    revision = f"git:{commit}" + (f"+dirty:{sources[:HASH_DIGITS]}" if dirty else "")
    return {"revision": revision, "git_commit": commit, "dirty": dirty, "source_sha256": sources}


def revision_part(stored) -> dict | None:
    """The :func:`revision_of` fields of a recorded provenance (``run.json``'s, a checkpoint's ``meta``): ``revision``,
    ``git_commit``, ``dirty``, ``source_sha256``; None where none is recorded (not a dict)."""
    if not isinstance(stored, dict):
        return None
    return {k: stored.get(k) for k in ("revision", "git_commit", "dirty", "source_sha256")}


@functools.cache
def code_revision() -> dict:
    """:func:`revision_of` this checkout, computed once per process (module docstring)."""
    return revision_of(ROOT)
