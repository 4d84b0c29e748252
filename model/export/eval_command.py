"""``build.py eval``: float / fake-quant / golden accuracy of a checkpoint, or golden accuracy of an image."""

from __future__ import annotations

import argparse

HELP = "accuracy of a checkpoint (float, fake-quant, golden) or of an exported image (golden) on its data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="checkpoint from `train`")


def run(args) -> int:
    from model.errors import UserError

    raise UserError("eval is not written yet")
