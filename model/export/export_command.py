"""``build.py export``: a checkpoint -> the packed image (weights.bin, weights.hex, manifest.json).

The manifest records the data set the checkpoint was trained on (``"data"``, :class:`model.data.DataRecord`),
so that ``sim``, ``verilog`` and ``eval --image`` feed the image its own test images. Heavy modules (torch)
are imported inside the functions so that ``--help`` stays fast; see :mod:`model.cli`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.cli import DEFAULT_OUT, print_table

HELP = "checkpoint -> packed image (weights.bin, weights.hex, manifest.json with the data set it was trained on)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=str(DEFAULT_OUT / "train" / "ticket.pt"),
                   help="checkpoint from `train` (default: out/train/ticket.pt)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "image"), help="image directory (default: out/image)")


def require_mlp(model, path) -> None:
    """:class:`UserError` for a conv net: the accelerator (and so the golden model) runs MLPs only."""
    from model.errors import UserError

    arch = model.config.get("arch", "mlp")
    if arch != "mlp":
        raise UserError(f"{path}: field 'config.arch' is {arch!r}; the accelerator (and so `export`) "
                        f"does not support conv nets (resnet20, vgg) yet, only MLPs (arch 'mlp')")


def run(args) -> int:
    from model.runs.checkpoint import checkpoint_data, load_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    require_mlp(model, args.checkpoint)
    data = checkpoint_data(args.checkpoint, model, meta)
    if data is None:
        print(f"note: {args.checkpoint} does not record its data set (written before checkpoints did); the "
              f"image will not either, and `sim` / `verilog` / `eval` will assume digits unless given --data",
              file=sys.stderr)
    from model.export.convert import export_image

    manifest = export_image(model, Path(args.out), data)
    print_table([("words", manifest["words"]), ("bytes", manifest["bytes"]),
                 ("avg weight bits", manifest["avg_weight_bits"]), ("sha256", manifest["sha256"][:16]),
                 ("data", "unrecorded" if data is None else data.describe())],
                f"image written to {args.out}")
    return 0
