"""``build.py verilog``: an image -> the accelerator's Verilog and a Vivado build plan with a self-test ROM.

The self-test ROM holds the first ``--selftest-images`` test images of the data set the image's manifest
records (``--data`` / ``--data-root`` choose another) and their golden scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import DEFAULT_OUT, IMAGE_COUNT, SEED, add_batch_arg, add_data_override_args, add_image_arg

HELP = "image -> accelerator Verilog and a Vivado build plan (XDC, TCL)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--board", default="arty_z7_20", choices=("arty_z7_20",), help="XC7Z020 board")
    p.add_argument("--selftest-images", type=IMAGE_COUNT, default=16,
                   help="test images in the on-board self-test ROM, up to the data set's test count (default: 16)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="digits split seed of an image that records no data set, 0..2^32-1 (default: 0)")
    add_data_override_args(p, "the image")
    p.add_argument("--out", default=str(DEFAULT_OUT / "verilog"), help="output directory")
    add_batch_arg(p)


def run(args) -> int:
    from hw.platform.board import write_build_plan
    from hw.platform.verilog import write_verilog
    from model.errors import UserError
    from model.export.image import core_words
    from model.export.vectors import image_vectors

    # The test vectors first: a data set that is not available here is an error before any file is written.
    v = image_vectors(Path(args.image), args.selftest_images, args.seed, args.data, args.data_root,
                      flag="--selftest-images")
    u, expected = v.codes, v.expected
    if len(u) % args.batch:
        raise UserError(f"--selftest-images {len(u)} must be a multiple of --batch {args.batch}")
    words = core_words(v.net, args.image)
    out = Path(args.out)
    path = write_verilog(words, out / "mpq_accel.v", batch=args.batch)
    print(f"wrote {path}")
    files = write_build_plan(out / "vivado", words, u, expected, board=args.board, batch=args.batch)
    print(f"wrote the Vivado build plan for {args.board} ({len(files)} files) to {out / 'vivado'}; "
          f"run build_mpq_accel_selftest.sh there with Vivado on PATH")
    return 0
