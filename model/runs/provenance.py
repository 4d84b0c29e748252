"""What a run's results depend on besides its config: the code revision and the numeric environment.

A run directory (:mod:`model.runs.rundir`) records :func:`provenance` in ``run.json`` and refuses to resume
under another one (:func:`differences`: other package sources, versions, threads, processes or device), so that
results of two code versions are never mixed.

The code revision (:func:`code_revision`) is :mod:`model.revision`'s, taken once per process before the command
starts its work. The environment adds the torch and numpy versions, torch's intra-op thread count, the number
of processes (``torchrun``) and the device type: a different summation order changes the last bits of every
result (README, "`python build.py train`").
"""

from __future__ import annotations

import numpy as np
import torch

from model.revision import (
    HASH_DIGITS,
    ROOT,
    SOURCE_FILES,
    SOURCE_PACKAGES,
    code_revision,
    git_state,
    revision_of,
    source_files,
    source_hash,
)
from model.training import distributed

__all__ = ["CHECKED_FIELDS", "HASH_DIGITS", "ROOT", "SOURCE_FILES", "SOURCE_PACKAGES", "code_revision", "differences",
           "git_state", "provenance", "revision_of", "source_files", "source_hash"]

#: The fields of :func:`provenance` that must agree for a run to resume. The sources' hash, not the commit:
#: a commit that changes only the README, the docs or the tests leaves the code that runs, and so the
#: results, as they were, and must not throw away a long run (the commit is recorded for information).
CHECKED_FIELDS = ("source_sha256", "torch", "numpy", "threads", "processes", "device")


def provenance() -> dict:
    """What ``run.json`` records beside the config: :func:`code_revision` and the numeric environment.

    Returns
    -------
    dict
        ``revision``, ``git_commit``, ``dirty``, ``source_sha256``, ``torch`` and ``numpy`` (versions),
        ``threads`` (``torch.get_num_threads()`` now), ``processes`` (the ``torchrun`` world size, 1 alone) and
        ``device`` (the type of the device training runs on, ``"cpu"`` or ``"cuda"``: float results differ
        between them, not between two GPUs of one kind).
    """
    # str(): torch.__version__ is a str subclass that torch.load(weights_only=True) refuses to unpickle (meta of a
    # checkpoint such as bmpq.pt holds this dict).
    return {**code_revision(), "torch": str(torch.__version__), "numpy": str(np.__version__),
            "threads": torch.get_num_threads(), "processes": distributed.world_size(),
            "device": distributed.device().type}


def differences(stored: dict | None, current: dict) -> list[str]:
    """The :data:`CHECKED_FIELDS` in which ``stored`` differs from ``current``, as ``"field: stored X, now Y"``.

    ``stored`` ``None`` (a ``run.json`` written before revisions were recorded) or not a dict differs in
    every field.
    """
    if not isinstance(stored, dict):
        return [f"{name}: stored none, now {current[name]!r}" for name in CHECKED_FIELDS]
    return [f"{name}: stored {stored.get(name)!r}, now {current[name]!r}" for name in CHECKED_FIELDS
            if stored.get(name) != current[name]]
