"""``build.py bench conv``: conv tickets on Fashion-MNIST -> golden model -> packed image, in 30 minutes on 2 cores.

Three networks, each trained, selected, converted to the integer golden model
(:func:`model.export.convert.to_golden`), written as an image (:func:`model.export.image.write_image`, under
``<out>/conv/<arch>_<method>/``) and measured:

* ``resnet20`` / ``imq``: an IMQ ticket of :class:`model.quant.nets.ResNet20` (DoReFa weights with an element-wise
  mask, PACT-4);
* ``vgg`` / ``imq``: an IMQ ticket of :class:`model.quant.nets.SmallVGG` (channels 16-32-64, PACT-4);
* ``vgg`` / ``bmpq``: the BMPQ signed model of ``bench bmpq`` (:func:`model.bench.bmpq.bench_model`, channels
  16-32-64-128) at 10x compression (layer-wise symmetric codes, 16-bit first and last layers).

The budget (:data:`COMMON`, :data:`IMQ_RUNS`, :data:`BMPQ_BUDGET`). The paper's schedule (25 IMQ iterations of full
training at ``rho = 0.3``) is hours of CPU for ResNet-20 (about 5 ms per 28x28 training image on 2 cores, 36 ms
per image for the golden model), so:

* data: Fashion-MNIST; the IMQ runs hold a seeded 1,000 of their training images out for validation
  (:mod:`model.runs.validation`, ``val_seed`` 0) and train on the rest; every network is tested on the first
  2,000 test images (fake-quant and golden on the same images, so their gap is a paired difference);
* IMQ: ``rho = 0.8``, Adam 3e-3 with cosine decay, batch 128, seed 0. IMQ keeps moving the same small weights down
  the hierarchy, so after 4 iterations 80 % are pruned and iteration 5 is at about 3.6 average bits (79 % 0, the
  rest mostly 16- and 32-bit); ``rho = 0.3`` would need about 20 iterations to get there (tried: 30 iterations
  in 8 minutes, more accurate tickets, but more of their kept weights at 32 bits and the validation's pick too
  wide for the chip's block RAM; ``docs/array_design.md``, "The paper's rate"). ResNet-20 runs 8
  iterations (0..7): iteration 6 is at about 2.3 bits, the operating point of the paper's hardware figures (Fig. 4:
  8.63x at 2.29 bits and PACT-4), with most of its non-zero weights at 4 and 8 bits, so ``bench accel`` measures
  the array on a ticket like the paper's (iteration 7, about 1.6 bits, lets the validation choose between the
  two). It trains on 5,000 images for 2 epochs per iteration; the VGG 6 iterations on 15,000 for 2;
* IMQ moves the conv layers' masks only, the classifier stays at 32 bits (Fig. 1's caption, "we only quantize or prune
  weights of convolutional layers"; :func:`model.methods.imq.schedule_layers`), and an iteration's average bits
  are those of its conv weights (the paper's axis; the row's ``avg_weight_bits`` is the image's, every weight,
  and ``ticket_conv_avg_bits`` the ticket's conv weights);
* the ticket: the iteration of at most :data:`TICKET_BITS` average bits and an image of at most
  :data:`TICKET_MAX_IMAGE_WORDS` words with the best *validation* accuracy (:func:`model.methods.imq.best_within`);
  the narrowest iteration if none is that narrow and that small (``ticket_rule``). The size limit is the block RAM
  that ``bench accel``'s array leaves its global buffer on the XC7Z020: which iteration the validation picks
  depends on the CPU that trained the run (its float kernels), and on another CPU it picked one too large for the
  chip (:data:`TICKET_MAX_IMAGE_WORDS`);
* BMPQ: the first 12,000 training images, 6 epochs of SGD (ILP after epochs 2 and 4), target compression 10x. It
  selects nothing (the last epoch's model is the result), so it holds no validation images out.

Measured: 4-7 minutes alone on 2 cores (233 s at 4f8eb2e, 389 s at 25da61e); 28 minutes at 04d0346 beside a helper's
jobs, and 20 minutes wall on 2 cores while another process kept them busy (load average 3-3.8: torch's two threads
then wait on each other, and a ResNet-20 epoch took 2-6 times its quiet 14 s); from the epochs that ran uncontended,
about 8 minutes on a quiet machine. The budget leaves that margin on purpose; more training would raise the
accuracies (ResNet-20's iteration 0 reaches only about 79 % on 5,000 images), not the figures this bench is for.

Every IMQ run is a run directory under ``<out>/conv_runs/<arch>_imq`` (:mod:`model.runs.rundir`): an interrupted
bench resumes its IMQ iterations; a run made under another code revision is refused, and ``restart=True``
(``bench conv --restart``) starts afresh. BMPQ and the golden evaluations always run again.

Results: ``conv.json``, a list of rows, one per network, with the keys of :data:`ROW_KEYS` (the image figures
from the manifest's ``memory``, :func:`model.export.image.memory_report`; the MAC counts per image from
:func:`model.export.golden_net.mac_counts`) plus details (the ticket's iteration and validation accuracy, the
width counts, the data and training budget of that network, seconds); ``conv_summary.json``: the budget, the
validation split, wall and per-network seconds, whether IMQ runs were resumed, the floors and the code revision
(``provenance``); ``conv.png``: fake-quant against golden accuracy, and the width classes of each network.

The floors (:func:`floors`):

* ``golden_gap_pp_<arch>_<method> <= 0.5`` for each network: ``|golden - fake-quant|`` test accuracy in percentage
  points;
* ``metadata_bits_per_weight_resnet20_imq <= 1.6``: the image's metadata (width map, counts, pointers) per weight
  of the ResNet-20 ticket;
* ``wall_seconds <= 1800``: the whole bench within 30 minutes.

``smoke=True`` shrinks everything (600 training images, 300 test images, 2 IMQ iterations of 1 epoch, BMPQ 2
epochs) to check the pipeline; its figures mean nothing.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.bench.bmpq import BenchBudget, bench_model
from model.bench.floors import floor_entry, points
from model.data import FASHION_MNIST_ROOT, DataRecord, check_idx_image_shape, load_idx_split
from model.export.convert import GOLDEN_BATCH, golden_accuracy, to_golden
from model.export.golden import WIDTHS
from model.export.golden_net import mac_counts
from model.export.image import pack, write_image
from model.files import save_figure, write_json
from model.methods.bmpq import BMPQConfig, train_bmpq
from model.methods.imq import IterationRecord, best_within
from model.progress import progress_bar
from model.quant.bmpq import ACT_BITS_CAP
from model.quant.nets import MAX_IMAGE_SIDE, min_image_side
from model.runs import provenance
from model.runs.rundir import load_iteration, make_run_config, run
from model.training.loop import evaluate, torch_threads

#: The keys every row has (the issue's interface), in this order.
ROW_KEYS = ("arch", "method", "avg_weight_bits", "fakequant_accuracy", "golden_accuracy", "payload_bytes",
            "metadata_bytes", "param_bytes", "image_bytes", "metadata_bits_per_weight", "width_entropy_bits",
            "nonzero_fraction", "macs_dense", "macs_nonzero")
#: The manifest ``memory`` figures a row copies.
MEMORY_KEYS = ("payload_bytes", "metadata_bytes", "param_bytes", "image_bytes", "metadata_bits_per_weight",
               "width_entropy_bits", "nonzero_fraction")
#: The networks, in bench order: (arch, method).
NETWORKS = (("resnet20", "imq"), ("vgg", "imq"), ("vgg", "bmpq"))
#: Settings shared by the IMQ runs (module docstring).
COMMON: dict = {"data": "fashion-mnist", "act_bits": 4, "val_size": 1000, "val_seed": 0, "test_subset": 2000,
                "batch_size": 128, "lr": 3e-3, "seed": 0, "float_baseline": False}
#: The IMQ runs: arch -> its settings (``train_subset`` includes the validation images).
IMQ_RUNS: dict[str, dict] = {
    "resnet20": {"arch": "resnet20", "train_subset": 6000, "epochs": 2, "rho": 0.8, "iterations": 8},
    "vgg": {"arch": "vgg", "train_subset": 16000, "epochs": 2, "rho": 0.8, "iterations": 6},
}
#: The BMPQ row's training (``bench bmpq``'s network and schedule, fewer images and epochs, the 10x budget only).
BMPQ_BUDGET = BenchBudget(train_subset=12000, test_subset=COMMON["test_subset"], epochs=6, warmup=2, interval=2,
                          compressions=(10.0,))
#: What ``smoke=True`` changes.
SMOKE_IMQ: dict = {"train_subset": 600, "val_size": 100, "test_subset": 300, "epochs": 1, "iterations": 2}
SMOKE_BMPQ: dict = {"train_subset": 600, "test_subset": 300, "epochs": 2, "warmup": 1, "interval": 1}
#: The ticket's width cap (average bits), as ``bench imq``'s.
TICKET_BITS = 4.0
#: The ticket's size cap: the words of an image that ``bench accel``'s 4 x 42 array holds on the XC7Z020. The
#: global buffer holds the whole image in 1,024-word RAMB36 columns (:func:`hw.array.sizing.config_for`), sized
#: for the largest image of the bitstream: the qnn4 row's (ResNet-20 with every weight at 4 bits, 36,824 words)
#: takes 36 columns, and with the array's patch (76), feature maps (21-25) and engines (6) that synthesised to
#: 139 of the chip's 140 RAMB36 in the recent ``bench accel`` runs (``docs/array_design.md``, "Block RAM"). A ticket of
#: at most those 36 columns adds none; on 2026-12-08 another machine (an AMD EPYC whose torch runs AVX2 kernels;
#: the runs before had a faster one) trained the same run, on the same two threads, to a validation pick of 43,445
#: words (43 columns: 147 RAMB36, and 43,509 LUT, 82 %), so the cap is part of the rule rather than left to the
#: CPU (``docs/array_design.md``, "The ticket on another CPU").
TICKET_MAX_IMAGE_WORDS = 36 * 1024
#: torch's intra-op threads while an IMQ run trains (restored afterwards). Pinned because the float reductions'
#: order, and so the trained weights, depend on it, and the ticket with them: on one thread the validation picked a
#: 3.56-bit ResNet-20 ticket (42,888 words, whose global buffer needs 145 RAMB36, more than the XC7Z020 has) where
#: on two (CI's machine) it picks the 2.35-bit one; a run directory records the thread count
#: (:mod:`model.runs.provenance`), so a run of another machine is refused rather than resumed. The thread count
#: does not pin the CPU's float kernels: on another CPU two threads gave a 3.56-bit pick too
#: (:data:`TICKET_MAX_IMAGE_WORDS`).
IMQ_THREADS = 2
#: The floors: golden vs fake-quant (pp), the ResNet-20 ticket's metadata per weight, the wall-time budget (s).
MAX_GAP_PP = 0.5
MAX_METADATA_BITS = 1.6
MAX_WALL_SECONDS = 1800.0


def imq_configs(root: str | os.PathLike | None = None, smoke: bool = False) -> dict[str, object]:
    """arch -> the :class:`model.runs.rundir.RunConfig` of its IMQ run (:data:`COMMON`, :data:`IMQ_RUNS`)."""
    configs = {}
    for arch, settings in IMQ_RUNS.items():
        kwargs = {**COMMON, "data_root": root or FASHION_MNIST_ROOT, "method": "imq", **settings}
        if smoke:
            kwargs.update(SMOKE_IMQ)
        configs[arch] = make_run_config(**kwargs)
    return configs


def bmpq_budget(smoke: bool = False) -> BenchBudget:
    """:data:`BMPQ_BUDGET`, or its smoke version."""
    return dataclasses.replace(BMPQ_BUDGET, **SMOKE_BMPQ) if smoke else BMPQ_BUDGET


def check_bench_images(root, budget: BenchBudget) -> None:
    """:class:`~model.errors.UserError` (naming the folder, its image shape and the shapes allowed) unless the images
    of the IDX folder ``root`` (``None``: Fashion-MNIST) fit all three networks: the IMQ runs' ResNet-20 and VGG and
    the BMPQ VGG of ``budget`` (the largest of their smallest sides). Reads the header only."""
    smallest = max(*(min_image_side(arch) for arch in IMQ_RUNS), min_image_side("vgg", budget.channels))
    check_idx_image_shape(root, "bench conv", f"each of its networks (ResNet-20, VGG, and a BMPQ VGG of "
                          f"{len(budget.channels)} blocks, a 2x2 max-pool each)", sides=(smallest, MAX_IMAGE_SIDE))


def pick_ticket(history: list[IterationRecord], image_words: dict[int, int] | None = None
                ) -> tuple[IterationRecord, str]:
    """The bench's ticket and the rule that chose it (module docstring): ``"best validation <= 4 bits, <= 36864
    words"`` (:func:`model.methods.imq.best_within`, ranking by validation accuracy when the run has it), else
    ``"narrowest"``.

    ``image_words``: iteration -> the words of its image, for every iteration of at most :data:`TICKET_BITS`
    (:func:`candidate_image_words`); ``None`` leaves the size out of the rule (``"best validation <= 4 bits"``).
    """
    within = [r for r in history if r.avg_bits <= TICKET_BITS]
    rule = f"best validation <= {TICKET_BITS:g} bits"
    if image_words is not None:
        within = [r for r in within if image_words[r.iteration] <= TICKET_MAX_IMAGE_WORDS]
        rule += f", <= {TICKET_MAX_IMAGE_WORDS} words"
    best = best_within(within, TICKET_BITS)
    if best is not None:
        return best, rule
    return min(history, key=lambda r: (r.avg_bits, r.iteration)), "narrowest"


def candidate_image_words(run_dir: Path, history: list[IterationRecord]) -> dict[int, int]:
    """iteration -> the words of its packed image (:func:`model.export.image.pack` of its golden model), for
    each iteration of ``run_dir`` of at most :data:`TICKET_BITS` average bits (ResNet-20's three: 0.74 s in all,
    loading, converting and packing, on the 2.45 GHz EPYC of 2026-12-08; :func:`network_row` converts the ticket
    once more, about 0.1 s, rather than take a network this function made)."""
    sizes = {}
    for r in history:
        if r.avg_bits <= TICKET_BITS:
            model = load_iteration(run_dir, r.iteration)
            model.eval()
            sizes[r.iteration] = len(pack(to_golden(model)))
    return sizes


def _golden_accuracy(net, model, x: torch.Tensor, y: torch.Tensor, label: str, progress: bool) -> float:
    """:func:`model.export.convert.golden_accuracy` in slices of :data:`GOLDEN_BATCH` images, with a bar."""
    correct = 0
    for i in progress_bar(range(0, len(x), GOLDEN_BATCH), desc=f"golden {label}", leave=False, disable=not progress):
        xs, ys = x[i:i + GOLDEN_BATCH], y[i:i + GOLDEN_BATCH]
        correct += round(golden_accuracy(net, model, xs, ys) * len(xs))
    return correct / max(len(x), 1)


def network_row(arch: str, method: str, model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor,
                image_dir: str | os.PathLike, data: DataRecord | None = None, progress: bool = False,
                **details) -> dict:
    """Measure one trained network: fake-quant and golden test accuracy, its image and its MACs.

    ``model`` goes to eval mode, is converted (:func:`model.export.convert.to_golden`) and written with
    :func:`model.export.image.write_image` to ``image_dir`` (``data``, the test images' record, goes into the
    manifest so that ``build.py eval`` reads the same images).

    Returns
    -------
    dict
        The :data:`ROW_KEYS` (``avg_weight_bits`` is the image's: pruned weights 0, a BMPQ layer at its storage
        class), then ``golden_minus_fakequant_pp``, ``width_counts`` (weights per width), ``test_images``,
        ``image`` (the folder) and ``details``.
    """
    model.eval()
    fq = evaluate(model, x_test, y_test, batch_size=GOLDEN_BATCH)
    net = to_golden(model)
    golden = _golden_accuracy(net, model, x_test, y_test, f"{arch}/{method}", progress)
    manifest = write_image(image_dir, net, extra={"bench": f"conv {arch}/{method}"},
                           data=None if data is None else data.to_json())
    memory = manifest["memory"]
    dense, nonzero = mac_counts(net)
    widths = np.concatenate([np.asarray(layer.widths).ravel() for layer in net.layers])
    row = {"arch": arch, "method": method, "avg_weight_bits": float(net.avg_weight_bits),
           "fakequant_accuracy": fq, "golden_accuracy": golden,
           **{k: memory[k] for k in MEMORY_KEYS}, "macs_dense": dense, "macs_nonzero": nonzero}
    row = {k: row[k] for k in ROW_KEYS}
    return {**row, "golden_minus_fakequant_pp": points(golden, fq),
            "width_counts": {str(m): int((widths == m).sum()) for m in WIDTHS}, "test_images": len(y_test),
            "image": str(image_dir), **details}


def _say(progress: bool, text: str) -> None:
    if progress:
        tqdm.write(f"bench conv: {text}", file=sys.stderr)


def _test_record(config, split, model) -> DataRecord:
    return DataRecord.of(config.data, config.data_root, split.image_shape, model.input_quant.bits, config.seed,
                         config.train_subset, config.test_subset)


def history_json(history: list[IterationRecord]) -> list[dict]:
    """An IMQ run's iterations as the rows keep them (``history`` of a ``bench conv`` row, and of ``bench accel``'s
    layer-ranked run): iteration, average bits, test and validation accuracy."""
    return [{"iteration": r.iteration, "avg_bits": r.avg_bits, "accuracy": r.accuracy, "val_accuracy": r.val_accuracy}
            for r in history]


def run_imq_row(arch: str, config, runs_dir: Path, image_root: Path, progress: bool, restart: bool
                ) -> tuple[dict, object]:
    """Run (or resume) ``arch``'s IMQ run on :data:`IMQ_THREADS` threads, pick its ticket, measure it
    (:func:`network_row`); ``(row, result)``."""
    t0 = time.time()
    with torch_threads(IMQ_THREADS):
        result = run(config, runs_dir / f"{arch}_imq", progress=progress, restart=restart)
    sizes = candidate_image_words(runs_dir / f"{arch}_imq", result.history)
    ticket, rule = pick_ticket(result.history, sizes)
    model = load_iteration(runs_dir / f"{arch}_imq", ticket.iteration)
    split = result.split
    train_seconds = time.time() - t0
    _say(progress, f"{arch} IMQ ticket: iteration {ticket.iteration}, {ticket.avg_bits:.2f} bits (its conv weights: "
                   "the classifier stays at 32 bits); measuring")
    row = network_row(arch, "imq", model, split.x_test, split.y_test, image_root / f"{arch}_imq",
                      data=_test_record(config, split, model), progress=progress,
                      ticket_iteration=ticket.iteration, ticket_rule=rule, ticket_val_accuracy=ticket.val_accuracy,
                      ticket_conv_avg_bits=ticket.avg_bits,
                      candidate_image_words={str(k): v for k, v in sizes.items()},
                      history=history_json(result.history),
                      train_images=int(split.x_train.shape[0]), val_images=(result.validation or {}).get("size"),
                      epochs=config.epochs, iterations=config.iterations, rho=config.rho, act_bits=config.act_bits,
                      run=str(runs_dir / f"{arch}_imq"), resumed=result.resumed)
    row["train_seconds"] = round(train_seconds, 1)
    row["seconds"] = round(time.time() - t0, 1)
    return row, result


def run_bmpq_row(root, budget: BenchBudget, image_root: Path, progress: bool) -> dict:
    """Train the BMPQ VGG at ``budget.compressions[0]`` and measure it (:func:`network_row`)."""
    t0 = time.time()
    data_root = str(Path(root or FASHION_MNIST_ROOT).expanduser().resolve())
    split = load_idx_split(data_root, train_subset=budget.train_subset, test_subset=budget.test_subset)
    model = bench_model(split, budget, act_bits=ACT_BITS_CAP)
    config = BMPQConfig(compression=budget.compressions[0], epochs=budget.epochs, warmup=budget.warmup,
                        interval=budget.interval, lr=budget.lr, batch_size=budget.batch_size, seed=budget.seed)
    result = train_bmpq(model, split, config, progress=progress)
    train_seconds = time.time() - t0
    _say(progress, f"vgg BMPQ: layer bits {result.layer_bits}, r_M^32 {result.compression_ratio:.2f}; measuring")
    data = DataRecord.of("fashion-mnist", data_root, split.image_shape, model.input_quant.bits, budget.seed,
                         budget.train_subset, budget.test_subset)
    row = network_row("vgg", "bmpq", model, split.x_test, split.y_test, image_root / "vgg_bmpq", data=data,
                      progress=progress, layer_names=result.layer_names, layer_bits=result.layer_bits,
                      compression_ratio=result.compression_ratio, target_compression=budget.compressions[0],
                      train_images=int(split.x_train.shape[0]), val_images=None, epochs=budget.epochs,
                      channels=list(budget.channels))
    row["train_seconds"] = round(train_seconds, 1)
    row["seconds"] = round(time.time() - t0, 1)
    return row


def floors(rows: list[dict], wall_seconds: float | None) -> dict[str, dict]:
    """The floors of the module docstring as :func:`model.bench.floors.floor_entry` entries.

    A network of :data:`NETWORKS` without a row, and a ``wall_seconds`` of ``None``, are unmeasured: they fail.
    """
    by_key = {(r["arch"], r["method"]): r for r in rows}
    result = {}
    for arch, method in NETWORKS:
        row = by_key.get((arch, method))
        gap = None if row is None else abs(points(row["golden_accuracy"], row["fakequant_accuracy"]))
        result[f"golden_gap_pp_{arch}_{method}"] = floor_entry(gap, MAX_GAP_PP, "<=")
    resnet = by_key.get(("resnet20", "imq"))
    result["metadata_bits_per_weight_resnet20_imq"] = floor_entry(
        None if resnet is None else resnet["metadata_bits_per_weight"], MAX_METADATA_BITS, "<=")
    result["wall_seconds"] = floor_entry(wall_seconds, MAX_WALL_SECONDS, "<=")
    return result


def run_conv_bench(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    smoke: bool = False,
    progress: bool = True,
    restart: bool = False,
) -> tuple[list[dict], dict]:
    """Train, select, export and measure the three networks; write ``conv.json``, ``conv_summary.json``, ``conv.png``.

    Parameters
    ----------
    out_dir : path
        ``out/bench``: the IMQ run directories go to ``out_dir/conv_runs`` (``conv_smoke_runs``), the images to
        ``out_dir/conv/<arch>_<method>`` (``conv_smoke/...``).
    root : path, optional
        Fashion-MNIST folder (default :data:`model.data.FASHION_MNIST_ROOT`).
    smoke : bool
        The tiny budget (files get a ``_smoke`` suffix).
    progress : bool
        tqdm bars and a line per stage on stderr.
    restart : bool
        Start the IMQ runs afresh instead of resuming them.

    Returns
    -------
    rows, summary
        What ``conv.json`` and ``conv_summary.json`` hold.

    Raises
    ------
    UserError
        If an IMQ run directory was made under another code revision or environment (and not ``restart``); if
        the images of ``root`` do not fit the three networks (checked first, before anything is trained or
        written: :func:`check_bench_images`).
    """
    budget = bmpq_budget(smoke)
    check_bench_images(root, budget)
    out_dir = Path(out_dir)
    suffix = "_smoke" if smoke else ""
    runs_dir, image_root = out_dir / f"conv{suffix}_runs", out_dir / f"conv{suffix}"
    started = time.time()
    configs = imq_configs(root, smoke)
    rows, validation = [], {}
    for arch, config in configs.items():
        _say(progress, f"{arch} IMQ ({config.iterations} iterations of {config.epochs} epochs)")
        row, result = run_imq_row(arch, config, runs_dir, image_root, progress, restart)
        rows.append(row)
        validation[arch] = result.validation
    _say(progress, f"vgg BMPQ ({budget.epochs} epochs, {budget.compressions[0]:g}x)")
    rows.append(run_bmpq_row(root, budget, image_root, progress))
    wall = round(time.time() - started, 1)
    write_json(out_dir / f"conv{suffix}.json", rows)
    plot_conv(rows, out_dir / f"conv{suffix}.png")
    resumed = [f"{r['arch']}_imq" for r in rows if r.get("resumed")]
    summary = {
        "smoke": smoke,
        "budget": {"common": {**COMMON, **({k: SMOKE_IMQ[k] for k in ("val_size", "test_subset")} if smoke else {})},
                   "imq": {arch: {k: c.to_json()[k] for k in ("arch", "train_subset", "val_size", "test_subset",
                                                               "epochs", "rho", "iterations", "act_bits",
                                                               "batch_size", "lr", "seed", "data_root")}
                           for arch, c in configs.items()},
                   "bmpq": dataclasses.asdict(budget), "ticket_bits": TICKET_BITS,
                   "ticket_max_image_words": TICKET_MAX_IMAGE_WORDS},
        "validation": validation, "wall_seconds": wall,
        "network_seconds": {f"{r['arch']}_{r['method']}": r["seconds"] for r in rows},
        "resumed": bool(resumed), "resumed_runs": resumed, "torch_threads": torch.get_num_threads(),
        "imq_threads": IMQ_THREADS,
        "floors": floors(rows, wall), "provenance": provenance.provenance(),
    }
    write_json(out_dir / f"conv{suffix}_summary.json", summary)
    return rows, summary


def plot_conv(rows: list[dict], png_path) -> None:
    """Left: fake-quant and golden test accuracy per network; right: the share of each weight width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['arch']}\n{r['method']}" for r in rows]
    xs = np.arange(len(rows))
    fig, (ax_acc, ax_w) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.bar(xs - 0.2, [100 * r["fakequant_accuracy"] for r in rows], 0.4, label="fake-quant")
    ax_acc.bar(xs + 0.2, [100 * r["golden_accuracy"] for r in rows], 0.4, label="golden (integer)")
    lo = min((100 * min(r["fakequant_accuracy"], r["golden_accuracy"]) for r in rows), default=0)
    ax_acc.set_ylim(max(0, lo - 5), 100)
    ax_acc.set_xticks(xs, labels)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.legend(fontsize=8)
    bottom = np.zeros(len(rows))
    for m in WIDTHS:
        share = np.array([r["width_counts"][str(m)] / max(1, sum(r["width_counts"].values())) for r in rows])
        ax_w.bar(xs, share, 0.6, bottom=bottom, label=f"{m} bits")
        bottom += share
    ax_w.set_xticks(xs, [f"{lab}\n{r['metadata_bits_per_weight']:.2f} b/w meta" for lab, r in zip(labels, rows)])
    ax_w.set_ylabel("share of weights")
    ax_w.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    try:
        save_figure(fig, png_path)
    finally:
        plt.close(fig)
