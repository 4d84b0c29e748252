"""``build.py verilog``: an image -> the accelerator's Verilog and a Vivado build plan with a self-test ROM."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import DEFAULT_OUT, SEED, add_batch_arg, add_image_arg, bounded
from sim.sim_command import golden_vectors

HELP = "image -> accelerator Verilog and a Vivado build plan (XDC, TCL)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--board", default="arty_z7_20", choices=("arty_z7_20",), help="XC7Z020 board")
    p.add_argument("--selftest-images", type=bounded(int, 1, 360), default=16,
                   help="test images in the on-board self-test ROM (default: 16)")
    p.add_argument("--seed", type=SEED, default=0, help="data split seed, 0..2^32-1 (default: 0)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "verilog"), help="output directory")
    add_batch_arg(p)


def run(args) -> int:
    from hw.platform.board import write_build_plan
    from hw.platform.verilog import write_verilog
    from model.errors import UserError
    from model.export.image import pack, read_image

    net, _ = read_image(args.image)
    words = pack(net)
    out = Path(args.out)
    path = write_verilog(words, out / "mpq_accel.v", batch=args.batch)
    print(f"wrote {path}")
    _, _, u, expected, _ = golden_vectors(Path(args.image), args.selftest_images, args.seed)
    if len(u) % args.batch:
        raise UserError(f"--selftest-images {len(u)} must be a multiple of --batch {args.batch}")
    files = write_build_plan(out / "vivado", words, u, expected, board=args.board, batch=args.batch)
    print(f"wrote the Vivado build plan for {args.board} ({len(files)} files) to {out / 'vivado'}; "
          f"run build_mpq_accel_selftest.sh there with Vivado on PATH")
    return 0
