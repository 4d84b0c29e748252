"""``build.py bench imq``: MPQ-tickets (IMQ) against its baselines on Fashion-MNIST in a bounded budget.

The paper's setting (ResNet-20 on CIFAR, 25 IMQ iterations of full training, Sec. 4) is far beyond 20
minutes on 2 CPU cores, and so is a conv net here (:class:`model.quant.nets.SmallVGG` takes tens of seconds per
Fashion-MNIST epoch, and IMQ needs about 15 trainings to reach 2-3 bits), so the bench uses the MLP the
accelerator runs. The budget (:data:`BENCH`, :data:`RUNS`):

* Fashion-MNIST: the first 35,000 training images, of which a seeded 5,000 are held out for validation
  (:mod:`model.runs.validation`, ``val_seed`` 0), so every run trains on 30,000; all 10,000 test images;
* MLP 784-256-10 with PACT-8 activations (the paper's Fig. 8 setting is PACT-8), 203,264 weights;
* every training run: 4 epochs of Adam, batch 128, lr 3e-3 with cosine decay, seed 0;
* ``rho = 0.5`` instead of the paper's 0.3: IMQ keeps halving the same small weights, so with 0.3 it takes
  about 23 iterations to reach 4 average bits; with 0.5 about 12 (and 2.25 bits after 15);
* runs: dense float MLP (ReLU) once; IMQ 15 iterations; IRQ 10 iterations (random choice reaches low widths
  faster: about 1 bit after 10); IMP 5 iterations at pruning rate 0.5 (32 -> 2 average bits); QNN-8,
  QNN-4, QNN-2 (one run each). 34 training runs in all.

Each run is a run directory under ``out/bench/imq_runs`` (:mod:`model.runs.rundir`), so an interrupted bench
resumes where it stopped; a run made under another code revision or environment is refused, and
``restart=True`` (``bench imq --restart``) starts every run afresh. The result, ``out/bench/imq.json``, is a
list of rows ``{"method", "label", "act_bits", "avg_weight_bits", "accuracy", "iteration", "run",
"val_accuracy"}``, one per trained iteration plus one for the float model (``accuracy`` is test accuracy,
``val_accuracy`` the accuracy on the held-out training images). ``imq_summary.json`` holds the budget, the
validation split, whether any run was resumed (``resumed``, ``resumed_runs``), the wall time, the analysis
(:func:`analyse`), the ``floors`` object (:mod:`model.bench.floors`; :func:`floors`) and the code revision and
environment of this invocation (``provenance``, :func:`model.runs.provenance.provenance`). The floors:

* ``ticket_avg_weight_bits <= 4`` and ``ticket_minus_float_pp >= -0.5``: an MPQ-ticket of at most 4 average
  bits within 0.5 percentage points of the dense float model. The ticket is the IMQ iteration of at most 4
  bits with the best *validation* accuracy; its *test* accuracy is compared with the float model's (choosing
  it by test accuracy would report the maximum of noisy test figures);
* ``imq_minus_irq_min_pp > 0``: IMQ above IRQ at every matched average width <= 4 bits (IRQ's accuracy
  interpolated linearly in log2 bits between its neighbouring iterations, at each IMQ iteration of at most
  4 bits inside IRQ's range); no selection is involved, so test accuracies are compared.

``smoke=True`` shrinks everything (1,000 training images of which 200 validate, 500 test images, 32 hidden
units, 1 epoch, at most 3 iterations) to check the pipeline; its figures mean nothing.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path

import torch

from model.bench.floors import floor_entry, points
from model.data import FASHION_MNIST_ROOT, check_idx_image_shape
from model.methods.imq import IterationRecord, best_within, selection_split
from model.runs import provenance
from model.runs.report import load_summary, plot_report
from model.runs.rundir import make_run_config, run, write_json

#: Settings shared by every run of the bench (see the module docstring for why).
BENCH: dict = {"data": "fashion-mnist", "arch": "mlp", "hidden": (256,), "act_bits": 8, "train_subset": 35000,
               "val_size": 5000, "val_seed": 0, "test_subset": None, "epochs": 4, "batch_size": 128, "lr": 3e-3,
               "seed": 0}
#: The runs: directory name and method settings.
RUNS: tuple[tuple[str, dict], ...] = (
    ("imq", {"method": "imq", "rho": 0.5, "iterations": 15, "float_baseline": True}),
    ("irq", {"method": "irq", "rho": 0.5, "iterations": 10, "float_baseline": False}),
    ("imp", {"method": "imp", "rho": 0.5, "iterations": 5, "float_baseline": False}),
    ("qnn-8", {"method": "qnn", "weight_bits": 8, "float_baseline": False}),
    ("qnn-4", {"method": "qnn", "weight_bits": 4, "float_baseline": False}),
    ("qnn-2", {"method": "qnn", "weight_bits": 2, "float_baseline": False}),
)
#: What ``smoke=True`` changes.
SMOKE: dict = {"train_subset": 1000, "val_size": 200, "test_subset": 500, "hidden": (32,), "epochs": 1}
SMOKE_MAX_ITERATIONS = 3
#: The floors: ticket width (also the matched-width limit) and allowed drop below the float model (pp).
TICKET_BITS = 4.0
FLOAT_GAP_PP = 0.5
#: What the rows rank by when they have validation accuracies (:func:`analyse`).
SELECTION_KEY = "val_accuracy"


def bench_configs(root: str | os.PathLike | None = None, smoke: bool = False) -> list[tuple[str, object]]:
    """``(name, RunConfig)`` of every run of the bench (:data:`BENCH`, :data:`RUNS`, :data:`SMOKE`)."""
    configs = []
    for name, settings in RUNS:
        kwargs = {**BENCH, "data_root": root or FASHION_MNIST_ROOT, **settings}
        if smoke:
            kwargs.update(SMOKE)
            if "iterations" in kwargs:
                kwargs["iterations"] = min(kwargs["iterations"], SMOKE_MAX_ITERATIONS)
        configs.append((name, make_run_config(**kwargs)))
    return configs


def _interpolate(points: list[tuple[float, float]], bits: float) -> float | None:
    """Accuracy at ``bits`` on the curve ``points`` ((bits, acc)), linear in log2 bits; None outside it."""
    for (b0, a0), (b1, a1) in itertools.pairwise(points):
        lo, hi = min(b0, b1), max(b0, b1)
        if lo <= bits <= hi and lo > 0:
            if b0 == b1:
                return max(a0, a1)
            t = (math.log2(bits) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
            return a0 + t * (a1 - a0)
    return None


def _record(row: dict) -> IterationRecord:
    """A bench row as the :class:`model.methods.imq.IterationRecord` that ticket selection ranks."""
    return IterationRecord(row["iteration"], row["avg_weight_bits"], row["accuracy"], {},
                           row.get(SELECTION_KEY))


def analyse(rows: list[dict]) -> dict:
    """The ticket and IMQ-against-IRQ comparisons behind the floors, from the bench rows.

    Returns
    -------
    dict
        ``float_accuracy``; ``best_imq_at_most_4_bits`` (the row of the IMQ iteration of at most 4 bits with
        the best validation accuracy, or None), ``ticket_selected_on`` (``"validation"``, or ``"test"`` for rows
        without validation accuracies), ``gap_to_float_pp`` (its test accuracy minus the float model's, in
        pp) and ``ticket_within_0.5pp`` (bool or None); ``imq_vs_irq`` (one entry per IMQ iteration at most 4
        bits wide inside IRQ's range: bits, both test accuracies, difference in pp), ``imq_above_irq`` (all
        differences positive; None without matched points) and ``mean_difference_pp``.
    """
    float_rows = [r for r in rows if r["method"] == "float"]
    float_acc = float_rows[0]["accuracy"] if float_rows else None
    imq = sorted((r for r in rows if r["method"] == "imq"), key=lambda r: r["iteration"])
    irq = sorted((r for r in rows if r["method"] == "irq"), key=lambda r: r["iteration"])
    low = [r for r in imq if r["avg_weight_bits"] <= TICKET_BITS]
    records = [_record(r) for r in low]
    chosen = best_within(records, TICKET_BITS)
    best = None if chosen is None else next(r for r, rec in zip(low, records, strict=True) if rec is chosen)
    gap = None if best is None or float_acc is None else points(best["accuracy"], float_acc)
    irq_points = [(r["avg_weight_bits"], r["accuracy"]) for r in irq]
    matched = []
    for r in low:
        other = _interpolate(irq_points, r["avg_weight_bits"]) if r["avg_weight_bits"] > 0 else None
        if other is not None:
            matched.append({"avg_weight_bits": r["avg_weight_bits"], "imq_accuracy": r["accuracy"],
                            "irq_accuracy": other, "difference_pp": points(r["accuracy"], other)})
    return {
        "float_accuracy": float_acc,
        "best_imq_at_most_4_bits": best,
        "ticket_selected_on": None if best is None else selection_split(records),
        "gap_to_float_pp": gap,
        "ticket_within_0.5pp": None if gap is None else gap >= -FLOAT_GAP_PP,
        "imq_vs_irq": matched,
        "imq_above_irq": all(m["difference_pp"] > 0 for m in matched) if matched else None,
        "mean_difference_pp": (sum(m["difference_pp"] for m in matched) / len(matched)) if matched else None,
    }


def floors(rows: list[dict]) -> dict[str, dict]:
    """The bench's floors (module docstring) as :func:`model.bench.floors.floor_entry` entries.

    A floor whose value cannot be measured (no IMQ iteration of at most 4 bits, no float row, no matched
    width) does not hold.
    """
    a = analyse(rows)
    best = a["best_imq_at_most_4_bits"]
    differences = [m["difference_pp"] for m in a["imq_vs_irq"]]
    return {
        "ticket_avg_weight_bits": floor_entry(None if best is None else best["avg_weight_bits"], TICKET_BITS, "<="),
        "ticket_minus_float_pp": floor_entry(a["gap_to_float_pp"], -FLOAT_GAP_PP, ">="),
        "imq_minus_irq_min_pp": floor_entry(min(differences, default=None), 0.0, ">"),
    }


def run_imq_bench(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    smoke: bool = False,
    progress: bool = True,
    restart: bool = False,
) -> tuple[list[dict], dict]:
    """Run (or resume) every run of the bench; write ``imq.json``, ``imq.png`` and ``imq_summary.json``.

    Parameters
    ----------
    out_dir : path
        ``out/bench``; the run directories go to ``out_dir/imq_runs`` (``imq_smoke_runs`` for smoke).
    root : path, optional
        Fashion-MNIST folder (default :data:`model.data.FASHION_MNIST_ROOT`).
    smoke : bool
        The tiny budget.
    progress : bool
        tqdm bars.
    restart : bool
        Start every run afresh (:func:`model.runs.rundir.run`'s ``restart``) instead of resuming.

    Returns
    -------
    rows, summary
        The rows written to ``imq.json`` and the summary written to ``imq_summary.json``.

    Raises
    ------
    UserError
        If ``root`` holds no readable IDX images, or a run directory was made under another code revision or
        environment (and not ``restart``).
    """
    check_idx_image_shape(root, "bench imq", "its MLP")  # a folder it cannot read, named before anything is made
    out_dir = Path(out_dir)
    runs_dir = out_dir / ("imq_smoke_runs" if smoke else "imq_runs")
    started = time.time()
    rows: list[dict] = []
    timings = {}
    resumed = []
    validation = None
    for name, config in bench_configs(root, smoke):
        t0 = time.time()
        result = run(config, runs_dir / name, progress=progress, restart=restart)
        timings[name] = round(time.time() - t0, 1)
        validation = validation or result.validation
        if result.resumed:
            resumed.append(name)
        if result.float_accuracy is not None:
            rows.append({"method": "float", "label": "float MLP (ReLU)", "act_bits": None, "avg_weight_bits": 32.0,
                         "accuracy": result.float_accuracy, "iteration": None, "run": str(runs_dir / name),
                         "val_accuracy": result.float_val_accuracy})
        for r in result.history:
            rows.append({"method": config.method, "label": config.schedule.label, "act_bits": config.act_bits,
                         "avg_weight_bits": r.avg_bits, "accuracy": r.accuracy, "iteration": r.iteration,
                         "run": str(runs_dir / name), "val_accuracy": r.val_accuracy})
    summaries = [load_summary(runs_dir / name) for name, _ in RUNS]
    suffix = "_smoke" if smoke else ""
    write_json(out_dir / f"imq{suffix}.json", rows)
    plot_report(summaries, out_dir / f"imq{suffix}.png")
    first = bench_configs(root, smoke)[0][1].to_json()
    budget = {k: first[k] for k in ("data", "data_root", "train_subset", "test_subset", "arch", "hidden", "act_bits",
                                    "epochs", "batch_size", "lr", "seed", "val_size", "val_seed")}
    budget["runs"] = [{"name": name, **{k: c.to_json()[k] for k in ("method", "rho", "iterations", "weight_bits")}}
                      for name, c in bench_configs(root, smoke)]
    summary = {"smoke": smoke, "budget": budget, "validation": validation,
               "wall_seconds": round(time.time() - started, 1), "run_seconds": timings, "resumed": bool(resumed),
               "resumed_runs": resumed, "torch_threads": torch.get_num_threads(), **analyse(rows),
               "floors": floors(rows), "provenance": provenance.provenance()}
    write_json(out_dir / f"imq{suffix}_summary.json", summary)
    return rows, summary
