"""Bench floors: the figures a bench claims (in the README), each checked against its measured value.

Every bench (``build.py bench dsp|lts|imq|bmpq``) computes a ``floors`` object, name -> entry::

    {"value": 0.86, "floor": 0.855, "op": ">=", "holds": true}

``holds`` is ``value op floor``; a value that could not be measured (``None``, e.g. no IMQ iteration
reached 4 bits) or is NaN does not hold. ``op`` is one of :data:`OPS`; it says which side of the floor
passes (a ceiling such as a time ratio uses ``"<="``). The bench prints :func:`format_floors`, writes the
object next to its results, and with ``--check`` exits 1 when any floor fails (:func:`exit_code`). Where a
bench's JSON is an object (``imq_summary.json``) the object gains a ``floors`` key; where it is a list of
rows (``dsp.json``, ``lts.json``, ``bmpq.json``), the rows stay as they are and the floors go to a sibling
``<name>_floors.json`` (:func:`floors_path`) holding ``{"floors": {...}, "provenance": {...}}``: the code
revision and environment that measured them (:func:`model.runs.provenance.provenance`, which the bench passes in;
``imq_summary.json`` records it beside its ``floors``).
"""

from __future__ import annotations

import math
import operator
import os
from pathlib import Path

from model.files import write_json

#: Comparisons a floor may use.
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


def points(a: float, b: float) -> float:
    """``a - b`` in percentage points (``a``, ``b`` accuracies as fractions), rounded to 1e-9 points.

    An accuracy is a count of images over a test set, so a difference of two is a whole number of images, far
    coarser than 1e-9 points; the rounding takes off float error that would decide a floor met exactly: 4,155 and
    4,105 right of 5,000 are 1 point apart, and ``100 * (0.831 - 0.821)`` is ``1.0000000000000009``, which failed
    ``bench vertical``'s "at most 1 point below" at 6fc07b0.
    """
    return round(100 * (a - b), 9)


def floor_entry(value, bound, op: str = ">=") -> dict:
    """One floor entry: ``{"value", "floor", "op", "holds"}`` (module docstring).

    Raises
    ------
    ValueError
        If ``op`` is not one of :data:`OPS`.
    """
    if op not in OPS:
        raise ValueError(f"op {op!r}; allowed {tuple(OPS)}")
    measurable = value is not None and not (isinstance(value, float) and math.isnan(value))
    return {"value": value, "floor": bound, "op": op, "holds": bool(measurable and OPS[op](value, bound))}


def failed(floors: dict[str, dict]) -> list[str]:
    """Names of the floors that do not hold, in order."""
    return [name for name, entry in floors.items() if not entry["holds"]]


def exit_code(floors: dict[str, dict], check: bool) -> int:
    """What ``bench ... --check`` exits with: 1 if ``check`` and a floor fails, else 0."""
    return 1 if check and failed(floors) else 0


def _fmt(value) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_floors(floors: dict[str, dict], title: str = "floors") -> str:
    """One line per floor: name, value, comparison, floor and ``ok`` / ``FAILS``; then a count."""
    width = max((len(name) for name in floors), default=0)
    lines = [title]
    for name, entry in floors.items():
        verdict = "ok" if entry["holds"] else "FAILS"
        lines.append(f"  {name:<{width}}  {_fmt(entry['value']):>12} {entry['op']:>2} {_fmt(entry['floor']):<8} "
                     f"{verdict}")
    bad = failed(floors)
    lines.append(f"  {len(floors) - len(bad)} of {len(floors)} floors hold" + (f"; failing: {', '.join(bad)}"
                                                                               if bad else ""))
    return "\n".join(lines)


def floors_path(json_path: str | os.PathLike) -> Path:
    """``<dir>/<stem>_floors.json`` beside a bench's list-of-rows JSON ``<dir>/<stem>.json``."""
    path = Path(json_path)
    return path.with_name(f"{path.stem}_floors.json")


def write_floors(json_path: str | os.PathLike, floors: dict[str, dict], provenance: dict) -> Path:
    """Write ``{"floors": floors, "provenance": provenance}`` to :func:`floors_path` of ``json_path``
    (atomically); returns that path. ``provenance`` is :func:`model.runs.provenance.provenance` of the run that
    measured the floors (the code revision, so that a floors file says which code it holds for)."""
    return write_json(floors_path(json_path), {"floors": floors, "provenance": provenance})
