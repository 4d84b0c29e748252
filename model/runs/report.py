"""Reports over run directories: accuracy against average weight bit width (the paper's Fig. 3 and Fig. 8)
and a Table-1-style markdown table.

A run directory is what :func:`model.runs.rundir.run` writes; finished and partial runs both report (a partial run
shows the iterations it has finished). The x-axis is the average weight width with pruned weights counting
0 bits, so IMP sits at ``32 * density``, QNN-k at ``k`` (Sec. 4, "test accuracy v.s. average bitwidth").

Curves: one per method and activation width (``"PACT-8 IMQ"``); QNN-k runs of several ``k`` with the same
activation width join into one ``"PACT-8 QNN"`` curve, one point per run, as in Fig. 8. A run's dense float
baseline is a dashed horizontal line.

Table (Table 1): per run, its most accurate iteration ("for LTH and random MPQ-tickets, we simply report
the best results"), Algorithm 1's ticket (line 12's set, the iterations more accurate than iteration 0,
and from it the narrowest: the project's rule) and, for each budget ``q`` (default 8, 4, 2 bits), "the best
performing lottery ticket with average weight bitwidth below q-bit" (the most accurate iteration with at most
``q`` average bits: at most, so that QNN-4's 4.0 bits are in the 4-bit row); plus a "Full precision" row per
float baseline. "Most accurate" ranks by validation accuracy when the run holds
a validation split (:func:`model.methods.imq.selection_accuracies`), and every row reports test accuracy;
a run without one is ranked on the test set, and the table says so in a note.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from model.errors import UserError, shown
from model.files import refuse_non_file, staged_outputs
from model.methods.imq import IterationRecord, best_of, best_within, select_ticket, selection_split
from model.methods.schedules import METHODS
from model.revision import code_revision
from model.runs.rundir import (
    RunConfig,
    atomic_write,
    history_file,
    read_provenance,
    read_run_config,
    record_from_json,
    write_json,
)

#: Table 1's budgets ``q`` of "(PACT-k, q-bit)".
DEFAULT_BUDGETS: tuple[float, ...] = (8.0, 4.0, 2.0)
#: Where a 0-bit point goes on the log-2 axis.
_MIN_PLOT_BITS = 2.0 ** -4


@dataclass(frozen=True, eq=False)
class RunSummary:
    """A run directory as the report sees it.

    Members
    -------
    run_dir : Path
    config : RunConfig
    history : list of IterationRecord
        Finished iterations (possibly none yet).
    float_accuracy : float or None
        The run's dense float baseline, if it has one (and it has finished).
    float_model : str or None
        What that baseline is.
    finished : bool
    """

    run_dir: Path
    config: RunConfig
    history: list[IterationRecord]
    float_accuracy: float | None
    float_model: str | None
    finished: bool

    @property
    def curve(self) -> str:
        """Name of the curve this run belongs to (``"PACT-8 IMQ"``, ``"PACT-8 QNN"``, ...)."""
        name = "QNN" if self.config.method == "qnn" else self.config.schedule.label
        return f"PACT-{self.config.act_bits} {name}"

    @property
    def setting(self) -> str:
        """Data and network (``"fashion-mnist / mlp 256"``): runs of different settings are not comparable."""
        net = self.config.arch + (" " + "-".join(map(str, self.config.hidden)) if self.config.hidden else "")
        return f"{self.config.data} / {net}"


def load_summary(run_dir: str | os.PathLike) -> RunSummary:
    """Read a run directory (config and history JSON).

    Raises
    ------
    UserError
        If it is not a run directory or its history file is malformed.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    path = run_dir / history_file(config)
    refuse_non_file(path, "expected the run's history (JSON)")
    if not path.is_file():
        return RunSummary(run_dir, config, [], None, None, False)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: malformed run history ({type(exc).__name__}: {exc})") from None
    history, float_accuracy, float_model, finished = _check_history(data, path)
    return RunSummary(run_dir, config, history, float_accuracy, float_model, finished)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # JSON's true is no accuracy


#: A history record's fields: name -> (whether it may be null or absent, what is allowed, in words).
_RECORD_FIELDS = {"iteration": (False, "allowed an integer >= 0"), "avg_bits": (False, "allowed a number in [0, 32]"),
                  "accuracy": (False, "allowed a number in [0, 1]"),
                  "val_accuracy": (True, "allowed null or a number in [0, 1]"),
                  "width_counts": (False, "expected an object {width: count}, widths and counts integers >= 0")}


def _field_ok(field: str, value) -> bool:
    """Whether a record's ``field`` has the type :func:`model.runs.rundir.record_from_json` converts without
    guessing (it checks the ranges): ``int("4")`` or ``float(True)`` would pass what the file got wrong."""
    if field == "width_counts":
        return isinstance(value, dict) and all(
            k.isascii() and k.isdigit() and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in value.items())
    if field == "iteration":
        return isinstance(value, int) and not isinstance(value, bool)
    return _is_number(value)


def _check_history(data, path: Path) -> tuple[list[IterationRecord], float | None, str | None, bool]:
    """The records, float baseline, its description and ``finished`` of a parsed history file, checked field by
    field: a malformed file is a :class:`UserError` naming ``path``, the field (``history[2]: field 'avg_bits'``)
    and what is allowed, rather than whichever conversion happens to fail first, or a report drawn from nothing
    (the training loop writes the file after each iteration, so a history without records is malformed too)."""
    where = f"{path}: malformed run history"
    if not isinstance(data, dict):
        kind = "an array" if isinstance(data, list) else shown(data)
        raise UserError(f"{where}: the file holds {kind}; expected a JSON object with 'history' and 'finished' (what "
                        "`train` writes)")
    checks = (("history", lambda v: isinstance(v, list) and v, "allowed a non-empty list of iteration records"),
              ("finished", lambda v: isinstance(v, bool), "allowed true or false"),
              ("float_accuracy", lambda v: v is None or _is_number(v) and 0 <= v <= 1,
               "allowed null or a number in [0, 1]"),
              ("float_model", lambda v: v is None or isinstance(v, str), "allowed null or a string"))
    for field, ok, allowed in checks:
        if field in ("history", "finished") and field not in data:
            raise UserError(f"{where}: field {field!r} is missing; {allowed}")
        if not ok(data.get(field)):
            raise UserError(f"{where}: field {field!r} is {shown(data.get(field))}; {allowed}")
    history = []
    for i, record in enumerate(data["history"]):
        if not isinstance(record, dict):
            raise UserError(f"{where}: history[{i}]: an iteration record is {shown(record)}; expected an object "
                            f"with {', '.join(map(repr, _RECORD_FIELDS))}")
        for field, (optional, allowed) in _RECORD_FIELDS.items():
            if optional and record.get(field) is None:
                continue
            if field not in record:
                raise UserError(f"{where}: history[{i}]: field {field!r} is missing; {allowed}")
            if not _field_ok(field, record[field]):
                raise UserError(f"{where}: history[{i}]: field {field!r} is {shown(record[field])}; {allowed}")
        try:
            history.append(record_from_json(record))
        except ValueError as exc:  # a value out of its range: the message names the field and the range
            raise UserError(f"{where}: history[{i}]: {exc}") from None
        _check_record_counts(history, i, where)
    float_accuracy = data.get("float_accuracy")
    return history, None if float_accuracy is None else float(float_accuracy), data.get("float_model"), data["finished"]


#: The widths a history's ``width_counts`` may name: the paper's hierarchy and the extended one's 2 and 1 bits (Fig. 6).
HISTORY_WIDTHS = (0, 1, 2, 4, 8, 16, 32)


def _check_record_counts(history: list[IterationRecord], i: int, where: str) -> None:
    """Record ``i`` against itself and the records before it: widths of :data:`HISTORY_WIDTHS`, the same number of
    weights as every record before (the masks move widths, not weights), ``avg_bits`` their mean width, and an
    iteration after the one before. Each would otherwise pass into a report drawn from a history `train` never
    wrote."""
    record = history[i]
    odd = sorted(set(record.width_counts) - set(HISTORY_WIDTHS))
    if odd:
        raise UserError(f"{where}: history[{i}]: field 'width_counts' names width {odd[0]}; allowed widths "
                        f"{', '.join(map(str, HISTORY_WIDTHS))}")
    total = sum(record.width_counts.values())
    if i and total != sum(history[0].width_counts.values()):
        raise UserError(f"{where}: history[{i}]: field 'width_counts' counts {total} weights, history[0] "
                        f"{sum(history[0].width_counts.values())}; every iteration counts the same weights")
    mean = sum(w * c for w, c in record.width_counts.items()) / total if total else 0.0
    if total and abs(mean - record.avg_bits) > 1e-6 * max(1.0, mean):
        raise UserError(f"{where}: history[{i}]: field 'avg_bits' is {record.avg_bits!r} but 'width_counts' average "
                        f"{mean:.6g} bits")
    if i and record.iteration <= history[i - 1].iteration:
        raise UserError(f"{where}: history[{i}]: field 'iteration' is {record.iteration}, not after history[{i - 1}]'s "
                        f"{history[i - 1].iteration}")


def _fmt_bits(bits: float) -> str:
    return f"{bits:g}" if bits == int(bits) else f"{bits:.2f}"


def table_rows(summaries: list[RunSummary], budgets: tuple[float, ...] = DEFAULT_BUDGETS) -> list[dict]:
    """Table 1's rows: full-precision baselines, then per run its best, Algorithm-1 and best-under-``q`` rows.

    Returns
    -------
    list of dict
        Keys ``model`` (Table 1's name, e.g. ``"MPQ-ticket (PACT-8, 4-bit)"``), ``method``, ``act_bits``
        (``None`` for float), ``avg_weight_bits``, ``accuracy`` (test, in ``[0, 1]``), ``iteration`` (``None``
        for float), ``rule`` (``"float"``, ``"best"``, ``"algorithm-1"``, ``"<= q bits"`` or ``"single run"``),
        ``setting``, ``run`` (the directory), ``val_accuracy`` (``None`` without a validation split) and
        ``selected_on`` (the accuracy the rule ranked by: ``"validation"`` or ``"test"``; ``None`` for rows
        that rank nothing: float and single runs).
    """
    rows: list[dict] = []
    seen_float = set()
    for s in summaries:
        if s.float_accuracy is not None and (s.setting, s.float_accuracy) not in seen_float:
            seen_float.add((s.setting, s.float_accuracy))
            rows.append({"model": "Full precision", "method": "float", "act_bits": None, "avg_weight_bits": 32.0,
                         "accuracy": s.float_accuracy, "iteration": None, "rule": "float", "setting": s.setting,
                         "run": str(s.run_dir), "val_accuracy": None, "selected_on": None})
    for s in summaries:
        spec = METHODS[s.config.method]
        act = s.config.act_bits

        def row(name: str, record: IterationRecord, rule: str, s=s, spec=spec, act=act) -> dict:
            return {"model": name, "method": s.config.method, "act_bits": act, "avg_weight_bits": record.avg_bits,
                    "accuracy": record.accuracy, "iteration": record.iteration, "rule": rule,
                    "setting": s.setting, "run": str(s.run_dir), "val_accuracy": record.val_accuracy,
                    "selected_on": None if rule == "single run" else selection_split(s.history)}

        if not s.history:
            continue
        if spec.step is None:
            rows.append(row(f"QNN (PACT-{act}, {s.config.weight_bits}-bit)", s.history[0], "single run"))
            continue
        name = spec.ticket_name if s.config.method != "qnn-imp" else f"QNN-{s.config.weight_bits}-ticket"
        rows.append(row(f"{name} (PACT-{act}), best", best_of(s.history), "best"))
        ticket = select_ticket(s.history)
        if ticket is not None:
            rows.append(row(f"{name} (PACT-{act})", ticket, "algorithm-1"))
        for q in budgets:
            best = best_within(s.history, q)
            if best is not None:
                rows.append(row(f"{name} (PACT-{act}, {_fmt_bits(q)}-bit)", best, f"<= {_fmt_bits(q)} bits"))
    return rows


def markdown_table(rows: list[dict], summaries: list[RunSummary] | None = None,
                   revisions: dict[str, str | None] | None = None) -> str:
    """Rows of :func:`table_rows` as a markdown table (accuracy in percent), plus notes on partial runs and on runs
    of different code (``revisions``: run directory -> the code revision its ``run.json`` records)."""
    lines = ["| model | method | act bits | avg weight bits | accuracy (%) | ticket iteration | rule | run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        act = "float" if r["act_bits"] is None else str(r["act_bits"])
        it = "-" if r["iteration"] is None else str(r["iteration"])
        lines.append(f"| {r['model']} | {r['method']} | {act} | {r['avg_weight_bits']:.2f} | "
                     f"{100 * r['accuracy']:.2f} | {it} | {r['rule']} | {r['run']} |")
    notes = []
    settings = sorted({r["setting"] for r in rows})
    if len(settings) > 1:
        notes.append(f"Rows come from different settings ({'; '.join(settings)}); compare within one only.")
    if revisions and len(set(revisions.values())) > 1:
        notes.append("Runs come from different code revisions ("
                     + "; ".join(f"{run}: {rev or 'not recorded'}" for run, rev in revisions.items())
                     + "); their results may differ by the code, not only by the method.")
    for s in summaries or []:
        if not s.finished:
            notes.append(f"{s.run_dir}: partial run, {len(s.history)} of {s.config.iterations} iterations.")
    if any(r["selected_on"] == "validation" for r in rows):
        notes.append("Tickets are chosen by validation accuracy (held-out training images); accuracies are test "
                     "accuracies.")
    for run in sorted({r["run"] for r in rows if r["selected_on"] == "test"}):
        notes.append(f"{run}: no validation split; its tickets were chosen on the test set, so their accuracies are "
                     f"optimistic.")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def plot_report(summaries: list[RunSummary], path: str | os.PathLike) -> Path:
    """Accuracy (%) against average weight bits (log 2, decreasing to the right), one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({s.setting for s in summaries}) > 1
    curves: dict[str, list[tuple[float, float]]] = {}
    for s in summaries:
        name = s.curve + (f" [{s.setting}]" if several else "")
        curves.setdefault(name, []).extend((r.avg_bits, 100 * r.accuracy) for r in s.history)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    markers = "os^vD<>px*h"
    for i, (name, points) in enumerate(curves.items()):
        points.sort(key=lambda p: -p[0])
        ax.plot([max(b, _MIN_PLOT_BITS) for b, _ in points], [a for _, a in points], marker=markers[i % len(markers)],
                ms=4, label=name)
    floats = {}
    for s in summaries:
        if s.float_accuracy is not None:
            floats.setdefault(s.setting, s.float_accuracy)
    for setting, acc in floats.items():
        ax.axhline(100 * acc, color="gray", ls="--", lw=1,
                   label="full precision" + (f" [{setting}]" if several else ""))
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()
    ax.set_xlabel("average weight bit width (pruned = 0)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    if curves or floats:
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_report(
    run_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    budgets: tuple[float, ...] = DEFAULT_BUDGETS,
) -> tuple[list[dict], str, dict[str, Path]]:
    """Read ``run_dirs`` and write ``report.png``, ``report.md`` and ``report.json`` to ``out_dir``.

    Returns
    -------
    rows, markdown, paths
        :func:`table_rows`, :func:`markdown_table`, and the written files by kind.

    Raises
    ------
    UserError
        If no run directory is given, one is not a run, one is given twice (its rows would be counted twice), a
        budget is not positive, or a name the report writes is taken by something other than a file (checked
        before anything is written, so that no half of a report is left there).
    """
    if not run_dirs:
        raise UserError("report needs at least one run directory")
    seen: dict[Path, str] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise UserError(f"{d}: the run directory {seen[key]} is given already; allowed each run once (its rows "
                            "and curve would be counted twice)")
        seen[key] = str(d)
    for q in budgets:
        if not (isinstance(q, int | float) and math.isfinite(q) and q > 0):
            raise UserError(f"field 'budgets' holds {q!r}; allowed numbers > 0")
    out_dir = Path(out_dir)
    paths = {"png": out_dir / "report.png", "md": out_dir / "report.md", "json": out_dir / "report.json"}
    for path in paths.values():
        refuse_non_file(path, f"the report writes its {path.name} there (remove it or choose another --out)")
    summaries = [load_summary(d) for d in run_dirs]
    revisions = {str(s.run_dir): (read_provenance(s.run_dir) or {}).get("revision") for s in summaries}
    rows = table_rows(summaries, budgets)
    markdown = markdown_table(rows, summaries, revisions)
    curves = [{"run": str(s.run_dir), "curve": s.curve, "setting": s.setting, "method": s.config.method,
               "act_bits": s.config.act_bits, "finished": s.finished, "code_revision": revisions[str(s.run_dir)],
               "points": [{"iteration": r.iteration, "avg_weight_bits": r.avg_bits, "accuracy": r.accuracy,
                           "val_accuracy": r.val_accuracy} for r in s.history]} for s in summaries]
    with staged_outputs(out_dir) as stage:  # (one commit: the three files, or none of them)
        plot_report(summaries, stage / paths["png"].name)
        atomic_write(stage / paths["md"].name, lambda tmp: Path(tmp).write_text(markdown))
        write_json(stage / paths["json"].name, {"rows": rows, "curves": curves, "code_revision": code_revision()})
    return rows, markdown, paths
