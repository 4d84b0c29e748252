"""`build.py bench bmpq`: FP-32 against BMPQ at several compression ratios on Fashion-MNIST, and its plot.

``bmpq.json`` is a list of rows (:func:`run_bmpq_bench`); the floors (:func:`floors`, :mod:`model.bench.floors`)
go beside it to ``bmpq_floors.json`` as ``{"floors": {...}}``, so the rows keep their format. From the
README ("10x within 1 point of FP-32"), for the row whose target compression is :data:`FLOOR_COMPRESSION`:

* ``compression_ratio_10x >= 10``: the reached ``r_M^32`` (Eq. 12);
* ``accuracy_drop_pp_10x <= 1``: FP-32's test accuracy minus BMPQ's, in percentage points.

Without a 10x row (a custom ``compressions``) both are unmeasured and fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.bench.floors import failed, floor_entry, points
from model.data import FASHION_MNIST_ROOT, Split, check_idx_image_shape, class_count, load_idx_split
from model.files import save_figure, write_json
from model.methods.bmpq import BMPQConfig, memory_mb, train_bmpq
from model.quant.bmpq import ACT_BITS_CAP, to_bmpq
from model.quant.nets import MAX_IMAGE_SIDE, SmallVGG, min_image_side
from model.quant.pact import PACT

# ----------------------------------------------------------------------------------------------------------
# Bench

#: The bench's network: a 4-block VGG whose first conv (144 weights) and FC (1,280) are small, so the
#: 16-bit edge layers leave room for 10x (:class:`model.quant.nets.SmallVGG` with these channels).
BENCH_CHANNELS = (16, 32, 64, 128)
#: The floors (module docstring): the target compression they look at, and the allowed drop below FP-32 (pp).
FLOOR_COMPRESSION = 10.0
MAX_DROP_PP = 1.0


@dataclass(frozen=True)
class BenchBudget:
    """What :func:`run_bmpq_bench` spends: subset sizes, epochs, schedule, and the budgets to try.

    The defaults fit 20 minutes on 2 CPU cores: the first 20,000 Fashion-MNIST training images, all 10,000
    test images, 8 epochs per run (ILP after epochs 2, 4 and 6; learning-rate steps after epochs 3 and 6),
    one FP-32 run and BMPQ runs at 6x, 10x (the floor's budget) and 13x (about 5 minutes of wall time per
    2 runs on a quiet machine).
    """

    train_subset: int | None = 20000
    test_subset: int | None = None
    epochs: int = 8
    warmup: int = 2
    interval: int = 2
    lr: float = 0.05
    batch_size: int = 128
    compressions: tuple[float, ...] = (6.0, 10.0, 13.0)
    channels: tuple[int, ...] = BENCH_CHANNELS
    pact_alpha: float = 3.0
    seed: int = 0


def bench_model(split: Split, budget: BenchBudget, act_bits: int) -> nn.Module:
    """The bench's BMPQ SmallVGG (``budget.channels``, PACT clip ``budget.pact_alpha``), seeded with ``budget.seed``
    (``bench conv`` trains its BMPQ row on it too)."""
    torch.manual_seed(budget.seed)
    model = SmallVGG(image_shape=split.image_shape, n_classes=class_count("idx", split), act_bits=act_bits,
                     channels=budget.channels)
    with torch.no_grad():
        # PACT's clipping level starts at pact_alpha (it is trained, with weight decay as PACT's L2 term):
        # after BN the pre-activations are about N(0, 1), and the default 6.0 leaves a 2-bit activation
        # with levels {0, 2, 4, 6}, which rounds almost everything to 0 or 2.
        for module in model.modules():
            if isinstance(module, PACT):
                module.alpha.fill_(budget.pact_alpha)
    return to_bmpq(model)


def check_bench_images(root, budget: BenchBudget) -> None:
    """:class:`~model.errors.UserError` (naming the folder, its image shape and the shapes allowed) unless the images
    of the IDX folder ``root`` (``None``: Fashion-MNIST) fit the bench's VGG (``budget.channels``): H and W at least
    one pixel after its ``len(channels)`` 2x2 max-pools. Reads the header only, before anything is trained."""
    check_idx_image_shape(root, "bench bmpq", f"its BMPQ VGG ({len(budget.channels)} blocks, a 2x2 max-pool each)",
                          sides=(min_image_side("vgg", budget.channels), MAX_IMAGE_SIDE))


def run_bmpq_bench(
    json_path,
    root=None,
    budget: BenchBudget = BenchBudget(),
    png_path=None,
    progress: bool = True,
) -> list[dict]:
    """FP-32 baseline and BMPQ at each target compression on Fashion-MNIST (or any IDX folder ``root``).

    Both runs use the same network (:data:`BENCH_CHANNELS` VGG), data, seed and SGD schedule; the FP-32
    run keeps every weight and activation unquantized (PACT-32 clipping only). Writes ``json_path``: a list
    of rows ``{budget, layer_bits, accuracy, compression_ratio, fp_accuracy}`` (``budget`` in MB of
    weights, Eq. 11 units) plus details, atomically; and a plot to ``png_path`` if given. Images the VGG cannot
    take are refused first (:func:`check_bench_images`).
    """
    check_bench_images(root, budget)
    split = load_idx_split(root or FASHION_MNIST_ROOT, train_subset=budget.train_subset,
                           test_subset=budget.test_subset)
    common = {"epochs": budget.epochs, "warmup": budget.warmup, "interval": budget.interval, "lr": budget.lr,
              "batch_size": budget.batch_size, "seed": budget.seed}
    t0 = time.perf_counter()
    fp_model = bench_model(split, budget, act_bits=32)
    fp = train_bmpq(fp_model, split, BMPQConfig(fp=True, **common), progress=progress)
    fp_seconds = time.perf_counter() - t0
    rows = []
    for target in budget.compressions:
        t0 = time.perf_counter()
        model = bench_model(split, budget, act_bits=ACT_BITS_CAP)
        result = train_bmpq(model, split, BMPQConfig(compression=target, **common), progress=progress)
        rows.append({
            "budget": result.budget_bits / 8 / 2**20,
            "target_compression": target,
            "layer_names": result.layer_names,
            "layer_bits": result.layer_bits,
            "params": result.params,
            "accuracy": result.accuracy,
            "compression_ratio": result.compression_ratio,
            "compression_ratio_16": 0.5 * result.compression_ratio,
            "memory_mb": result.memory_mb,
            "fp_memory_mb": memory_mb(result.params, [32] * len(result.params)),
            "fp_accuracy": fp.accuracy,
            "accuracy_drop_pp": points(fp.accuracy, result.accuracy),
            "meets_floor": None,  # below, from the row's own floors (_row_floors)
            "assignments": result.assignments,
            "accuracy_per_epoch": [r.accuracy for r in result.history],
            "fp_accuracy_per_epoch": [r.accuracy for r in fp.history],
            "seconds": time.perf_counter() - t0,
            "fp_seconds": fp_seconds,
            "data": split.name,
            "train_images": int(split.x_train.shape[0]),
            "test_images": int(split.x_test.shape[0]),
            "network": f"SmallVGG channels={list(budget.channels)}",
            **{f"cfg_{k}": v for k, v in common.items()},
        })
        rows[-1]["meets_floor"] = not failed(_row_floors(rows[-1]))
    write_json(Path(json_path), rows)
    if png_path is not None:
        plot_bench(rows, png_path)
    return rows


def floors(rows: list[dict]) -> dict[str, dict]:
    """The floors of the module docstring (the first row with target compression :data:`FLOOR_COMPRESSION`)."""
    return _row_floors(next((r for r in rows if r["target_compression"] == FLOOR_COMPRESSION), None))


def _row_floors(row: dict | None) -> dict[str, dict]:
    """The floors of the module docstring measured on ``row`` (``None``: unmeasured, every floor fails)."""
    tag = f"{FLOOR_COMPRESSION:g}x"
    return {
        f"compression_ratio_{tag}": floor_entry(None if row is None else row["compression_ratio"],
                                                FLOOR_COMPRESSION, ">="),
        f"accuracy_drop_pp_{tag}": floor_entry(None if row is None else row["accuracy_drop_pp"], MAX_DROP_PP, "<="),
    }


def plot_bench(rows: list[dict], png_path) -> None:
    """Left: the widths the ILP chose per layer for each budget; right: accuracy vs compression ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bits, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(rows))
    for k, row in enumerate(rows):
        xs = [i + k * width for i in range(len(row["layer_bits"]))]
        ax_bits.bar(xs, row["layer_bits"], width=width, label=f"{row['compression_ratio']:.1f}x")
    if rows:
        ax_bits.set_xticks(range(len(rows[0]["layer_names"])), rows[0]["layer_names"], rotation=45, ha="right")
    ax_bits.set_ylabel("weight bits")
    ax_bits.set_title("BMPQ layer-wise widths")
    ax_bits.legend(fontsize=8)
    ax_acc.plot([r["compression_ratio"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label="BMPQ")
    if rows:
        ax_acc.axhline(100 * rows[0]["fp_accuracy"], color="gray", ls="--", label="FP-32")
        ax_acc.axhline(100 * rows[0]["fp_accuracy"] - 1, color="gray", ls=":", label="FP-32 - 1 pp")
    ax_acc.set_xlabel("compression ratio r_M^32 (Eq. 12)")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, png_path)
    finally:
        plt.close(fig)
