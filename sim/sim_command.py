"""``build.py sim``: cocotb RTL simulation of an image on its own test images against the golden model.

The test images are those of the data set the image's manifest records (``"data"``; ``--data`` /
``--data-root`` choose another), read by :func:`model.export.vectors.image_vectors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.cli import (
    DEFAULT_OUT,
    IMAGE_COUNT,
    SEED,
    SIM_DEFAULT_IMAGES,
    add_batch_arg,
    add_data_override_args,
    add_image_arg,
    print_table,
    write_json,
)

HELP = "cocotb RTL simulation of the image on the test images of its data set vs the golden model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="icarus",
                   help="HDL simulator (default: icarus)")
    p.add_argument("--images", type=IMAGE_COUNT, default=None,
                   help="number of test images, 1 up to the data set's test count (default: all of them, at most "
                        f"{SIM_DEFAULT_IMAGES}: the digits' whole test set; Icarus takes hours for Fashion-MNIST's "
                        "10,000)")
    p.add_argument("--no-stall", action="store_true", help="no random back-pressure (cycle measurement)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="stall seed, and the digits split seed of an image that records no data set; 0..2^32-1 "
                        "(default: 0)")
    add_data_override_args(p, "the image")
    p.add_argument("--out", default=str(DEFAULT_OUT / "sim"), help="output directory")
    add_batch_arg(p)


def read_vectors(args):
    """The test images to simulate, read once: ``--images``, or left out the data set's test count, at most
    :data:`model.cli.SIM_DEFAULT_IMAGES` (with a note when that leaves images out)."""
    from model.export.vectors import image_vectors

    cap = SIM_DEFAULT_IMAGES if args.images is None else None
    vectors = image_vectors(Path(args.image), args.images, args.seed, args.data, args.data_root, cap=cap)
    available = vectors.available
    if cap is not None and available > cap:
        print(f"note: simulating the first {cap} of the {available} test images of "
              f"{vectors.data.describe()} (the default, to keep the RTL simulation short); --images N runs up to "
              f"{available}", file=sys.stderr)
    return vectors


def run(args) -> int:
    from sim.image_run import run_rtl

    out = Path(args.out)
    result = run_rtl(read_vectors(args), out, args.simulator, args.seed, not args.no_stall, args.batch)
    write_json(out / "sim.json", {k: v for k, v in result.items() if k != "scores"})
    print_table([("data", result["data"]["name"])]
                + [(k, result[k]) for k in ("images", "mismatches", "rtl_accuracy", "golden_accuracy",
                                            "cycles_per_image", "wall_s")], "RTL simulation vs golden model")
    if not result.get("passed", True):
        print(f"error: the testbench failed ({result.get('images')} of {result.get('expected_images')} images "
              f"received{'; ' + str(result['error']) if result.get('error') else ''}); log: {result.get('log')}",
              file=sys.stderr)
    return 0 if result["mismatches"] == 0 and result.get("passed", True) else 1
