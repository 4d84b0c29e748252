"""``build.py export``: a checkpoint -> the packed image (weights.bin, weights.hex, manifest.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import DEFAULT_OUT, print_table

HELP = "checkpoint -> packed image (weights.bin, weights.hex, manifest.json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=str(DEFAULT_OUT / "train" / "ticket.pt"),
                   help="checkpoint from `train` (default: out/train/ticket.pt)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "image"), help="image directory (default: out/image)")


def export_image(model, out_dir: Path) -> dict:
    from model.export.convert import scales, to_golden
    from model.export.image import write_image

    return write_image(out_dir, to_golden(model), extra={"scales": scales(model)})


def run(args) -> int:
    from model.runs.checkpoint import load_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    arch = model.config.get("arch", "mlp")
    if arch != "mlp":
        from model.errors import UserError

        raise UserError(f"{args.checkpoint}: field 'config.arch' is {arch!r}; the accelerator (and so `export`) "
                        f"does not support conv nets (resnet20, vgg) yet, only MLPs (arch 'mlp')")
    manifest = export_image(model, Path(args.out))
    print_table([("words", manifest["words"]), ("bytes", manifest["bytes"]),
                 ("avg weight bits", manifest["avg_weight_bits"]), ("sha256", manifest["sha256"][:16])],
                f"image written to {args.out}")
    return 0
