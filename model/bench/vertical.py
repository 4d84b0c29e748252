"""`build.py bench vertical`: the vertical-layered net against its baselines on Fashion-MNIST (issue 12).

Training rows ``{arch, method, bits, accuracy}`` (test accuracy) with ``method`` in :data:`METHODS`:

* ``vertical``: joint training, unitary scalarization, compensation and cosine KD (Sec. 4.2, Eq. 6-11);
* ``lsq``: one LSQ net per width (the oracle of Table 1);
* ``ascending``: ascending layer training (Sec. 3.3);
* ``no-compensation``: the joint training without Eq. 6's ``z_i`` (ablation);
* ``no-kd``: the joint training without Eq. 11's distillation (ablation);
* ``mgd``: the joint training with the min-norm combination (Eq. 10).

Floors (:func:`floors`): the vertical net within :data:`MAX_GAP_PP` percentage points of per-width LSQ at each
width; compensation better than no compensation at the lowest width. The hardware rows (cycles and bytes read
per image at each width on one bitstream, RTL == golden) are measured by ``build.py bench vertical`` on the
exported vertical model (:func:`export_for_hardware`, then ``sim/bench/vertical_hw.py``: the torch-side
bench does not run the RTL).

Every net of one architecture trains with the same seed, epochs, optimiser and data (:class:`BenchConfig`);
the budget (images, epochs, wall time per method) is recorded in the JSON with the code revision. The default
(:data:`DEFAULT_CONFIGS`), measured at 10 minutes of training on 2 cores (one thread): the MLP 128-128-128 on
all 60,000 training images for 3 epochs (about 175 s for the six methods), the VGG on 6,000 images for 2
epochs, tested on 5,000 (about 205 s), and ResNet-20's joint training alone on 6,000 images for 2 epochs,
tested on 2,000 (about 210 s); with the RTL rows the whole ``bench vertical`` took 29 minutes of the issue's 40.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model.bench.floors import floor_entry, points
from model.data import FASHION_MNIST_ROOT, check_idx_image_shape, class_count, load_idx_split
from model.errors import UserError
from model.export.convert_vertical import export_vertical_image, vertical_input_codes
from model.files import write_json
from model.methods.vertical import (
    VerticalConfig,
    train_ascending,
    train_lsq_oracle,
    train_vertical,
)
from model.quant.nets import MAX_IMAGE_SIDE, build_model, min_image_side, model_config
from model.quant.vertical import to_vertical
from model.runs.provenance import provenance

METHODS = ("vertical", "lsq", "ascending", "no-compensation", "no-kd", "mgd")
#: Floor: the vertical net's accuracy may trail per-width LSQ by at most this many points at each width.
MAX_GAP_PP = 1.0
HARDWARE_NOTE = ("hardware rows (cycles_per_image, bytes_read_per_image, rtl_images, rtl_mismatches, read_mismatches "
                 "at each width "
                 "on one bitstream) come from `build.py bench vertical` (sim/bench/vertical_hw.py), which runs the "
                 "exported vertical model on the array's RTL; run_vertical_bench alone trains")


@dataclass(frozen=True)
class BenchConfig:
    """The bench's budget (recorded in the JSON)."""

    arch: str = "mlp"
    hidden: tuple[int, ...] = (256, 256, 256)
    widths: tuple[int, ...] = (2, 3, 4)
    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 128
    train_subset: int | None = 20000
    test_subset: int | None = 5000
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    #: Test images the hardware rows run at each width (at most; ``run_vertical_bench``'s ``hardware_images``
    #: caps it).
    rtl_images: int = 100


#: The full bench (module docstring): the MLP, then the VGG.
DEFAULT_CONFIGS = (BenchConfig(arch="mlp", hidden=(128, 128, 128), epochs=3, train_subset=None, test_subset=None),
                   BenchConfig(arch="vgg", epochs=2, train_subset=6000, test_subset=5000),
                   # ResNet-20 for the hardware: the joint-trained net only (its baselines would take the
                   # bench past its 40 minutes), 10 images a width on the RTL (about 13 s each on Verilator).
                   BenchConfig(arch="resnet20", epochs=2, train_subset=6000, test_subset=2000, methods=("vertical",),
                               rtl_images=10))
#: ``--smoke``: the training path in well under a minute (figures mean nothing); `bench vertical --smoke` then
#: runs the two nets on Icarus, 2 images a width (about 4 minutes in all on 2 cores).
SMOKE_CONFIGS = (BenchConfig(arch="mlp", hidden=(64, 64, 64), epochs=1, train_subset=2000, test_subset=1000),
                 BenchConfig(arch="vgg", epochs=1, train_subset=300, test_subset=200, batch_size=64))


def export_for_hardware(model, split, out_dir: Path, images: int) -> dict:
    """The trained vertical ``model`` as a version 4 image (``out_dir / "image"``) and the 8-bit input codes
    and labels of the first ``images`` test images (``out_dir / "inputs.npz"``): what the RTL runs (the
    hardware rows of ``build.py bench vertical``, :mod:`sim.bench.vertical_hw`). Returns the paths."""
    out_dir = Path(out_dir)
    export_vertical_image(model, out_dir / "image")
    n = min(images, len(split.y_test))
    codes = vertical_input_codes(model, split.x_test[:n]).reshape(n, -1)
    np.savez(out_dir / "inputs.npz", codes=codes, labels=split.y_test[:n].numpy())
    return {"image": str(out_dir / "image"), "inputs": str(out_dir / "inputs.npz"), "images": n}


def run_vertical_bench(json_path, root=None, configs=DEFAULT_CONFIGS, progress: bool = False,
                       hardware_dir=None, hardware_archs=("mlp", "vgg", "resnet20"), hardware_images: int = 100
                       ) -> dict:
    """Train every method of each config (one per architecture) and write ``{"configs", "rows", "hardware",
    "seconds", "provenance"}`` (the code revision, :func:`model.runs.provenance.provenance`) to ``json_path``;
    returns it."""
    if isinstance(configs, BenchConfig):
        configs = (configs,)
    start = time.time()
    rows, seconds, budget = [], {}, []
    for config in configs:
        bad = [m for m in config.methods if m not in METHODS]
        if bad:
            raise UserError(f"field 'methods' holds {bad}; allowed {METHODS}")
    conv_archs = sorted({c.arch for c in configs} - {"mlp"})
    if conv_archs:  # the MLPs take any image size; the conv nets need a few pixels after their pooling
        check_idx_image_shape(root, "bench vertical", f"each of its conv nets ({', '.join(conv_archs)})",
                              sides=(max(min_image_side(a) for a in conv_archs), MAX_IMAGE_SIDE))
    exports = {}
    for config in configs:
        part = _run_arch(root, config, progress)
        rows += part["rows"]
        seconds[config.arch] = part["seconds"]
        budget.append(part["config"])
        if hardware_dir is not None and config.arch in hardware_archs and part["model"] is not None:
            exports[config.arch] = export_for_hardware(part["model"], part["split"], Path(hardware_dir) / config.arch,
                                                       min(hardware_images, config.rtl_images))
    report = {"configs": budget, "rows": rows, "hardware": HARDWARE_NOTE, "hardware_exports": exports,
              "seconds": {**seconds, "total": time.time() - start}, "provenance": provenance()}
    write_json(Path(json_path), report)
    return report


def _run_arch(root, config: BenchConfig, progress: bool) -> dict:
    start = time.time()
    split = load_idx_split(root or FASHION_MNIST_ROOT, train_subset=config.train_subset,
                           test_subset=config.test_subset)
    n_classes = class_count("fashion-mnist", split)
    net_config = model_config(config.arch, split, config.hidden, n_classes, act_bits=max(config.widths))

    def build(widths, compensate=True):
        torch.manual_seed(config.seed)
        return to_vertical(build_model(net_config), widths, compensate)

    def vconfig(**over) -> VerticalConfig:
        base = {"widths": config.widths, "epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size,
                "seed": config.seed}
        return VerticalConfig(**{**base, **over})

    rows, seconds = [], {}
    kept = None  # the joint-trained vertical model: the one the hardware rows run
    for method in config.methods:
        t0 = time.time()
        if method == "lsq":
            accs = {b: r.test_accuracy[b] for b, r in train_lsq_oracle(build, split, vconfig(), progress=progress).items()}
        elif method == "ascending":
            accs = train_ascending(build(config.widths, False), split, vconfig(compensate=False),
                                   progress=progress).test_accuracy
        else:
            over = {"vertical": {}, "no-compensation": {"compensate": False}, "no-kd": {"kd": False},
                    "mgd": {"moo": "mgd"}}[method]
            model = build(config.widths, over.get("compensate", True))
            accs = train_vertical(model, split, vconfig(**over), progress=progress).test_accuracy
            if method == "vertical":
                kept = model
        seconds[method] = time.time() - t0
        rows += [{"arch": config.arch, "method": method, "bits": int(b), "accuracy": float(a)} for b, a in accs.items()]
    return {"config": {**asdict(config), "data": "fashion-mnist", "train_images": len(split.y_train),
                       "test_images": len(split.y_test)},
            "rows": rows, "seconds": {**seconds, "total": time.time() - start}, "model": kept, "split": split}


def _acc(rows: list[dict], arch: str, method: str, bits: int):
    return next((r["accuracy"] for r in rows if r["arch"] == arch and r["method"] == method and r["bits"] == bits),
                None)


def compared_archs(configs) -> list[str]:
    """The architectures whose configs train what the floors compare (vertical, LSQ, no compensation)."""
    need = {"vertical", "lsq", "no-compensation"}
    return [c.arch for c in configs if need <= set(c.methods)]


def floors(rows: list[dict], widths=(2, 3, 4), archs=None) -> dict[str, dict]:
    """The bench's floors (module docstring) per architecture (default: every arch in ``rows``, the MLP at
    least; the command passes :func:`compared_archs`), named ``<arch>_...``; a floor whose rows are missing is
    unmeasured and fails."""
    archs = archs or sorted({r["arch"] for r in rows} | {"mlp"})
    out = {}
    for arch in archs:
        for bits in widths:
            v, lsq = _acc(rows, arch, "vertical", bits), _acc(rows, arch, "lsq", bits)
            gap = None if v is None or lsq is None else points(lsq, v)
            out[f"{arch}_vertical_gap_to_lsq_pp_{bits}bit"] = floor_entry(gap, MAX_GAP_PP, "<=")
        low = min(widths)
        v, nc = _acc(rows, arch, "vertical", low), _acc(rows, arch, "no-compensation", low)
        out[f"{arch}_compensation_gain_pp_{low}bit"] = floor_entry(None if v is None or nc is None
                                                                   else points(v, nc), 0.0, ">")
    return out
