"""``build.py sim``: cocotb RTL simulation of an image on test images against the golden model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.cli import DEFAULT_OUT, SEED, add_batch_arg, add_image_arg, bounded, print_table, write_json

HELP = "cocotb RTL simulation of the image on the test set vs the golden model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="icarus",
                   help="HDL simulator (default: icarus)")
    p.add_argument("--images", type=bounded(int, 1, 360), default=None, help="number of test images (default: all)")
    p.add_argument("--no-stall", action="store_true", help="no random back-pressure (cycle measurement)")
    p.add_argument("--seed", type=SEED, default=0, help="data split and stall seed, 0..2^32-1 (default: 0)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "sim"), help="output directory")
    add_batch_arg(p)


def load_split(dataset: str, seed: int):
    from model.data import load_digits_split
    from model.errors import UserError

    if dataset != "digits":
        raise UserError(f"--data {dataset!r} is not supported; allowed: digits")
    return load_digits_split(seed=seed)


def golden_vectors(image_dir: Path, count: int | None, seed: int):
    """Golden inputs/outputs for the test split of the embedded data, from the image alone."""
    import numpy as np

    from model.errors import UserError
    from model.export.image import read_image
    from model.quant.pact import InputQuant

    net, manifest = read_image(image_dir)
    split = load_split("digits", seed)
    x = split.x_test if count is None else split.x_test[:count]
    y = split.y_test if count is None else split.y_test[:count]
    u = InputQuant(net.input_bits).to_codes(x)
    if u.shape[1] != net.layers[0].n_in:
        raise UserError(f"{image_dir}: layer 0 field 'n_in' is {net.layers[0].n_in}; the digits data has "
                        f"{u.shape[1]} inputs")
    expected = net.forward(u.numpy())
    return net, manifest, u.numpy().astype(np.int64), expected, y.numpy()


def run_rtl(image_dir: Path, out: Path, simulator: str, count: int | None, seed: int, stall: bool,
            batch: int) -> dict:
    """Run the test images through the RTL in cocotb and compare with the golden model.

    The accelerator computes ``batch`` images at a time, so the stream is padded with copies of the last
    image to a multiple of ``batch`` (as a host would); the padding is checked too but not counted in
    the accuracy.
    """
    import numpy as np

    from hw.platform.verilog import write_verilog
    from model.export.image import pack
    from sim.runner import run_accelerator

    net, _, u, expected, labels = golden_vectors(image_dir, count, seed)
    pad = -len(u) % batch
    u_all = np.concatenate([u, np.repeat(u[-1:], pad, axis=0)])
    expected_all = np.concatenate([expected, np.repeat(expected[-1:], pad, axis=0)])
    vpath = write_verilog(pack(net), out / "mpq_accel.v", batch=batch)
    t0 = time.time()
    result = run_accelerator(vpath, u_all, expected_all, work_dir=out / "sim_build", simulator=simulator,
                             stall=stall, seed=seed)
    result["padding_images"] = pad
    result["batch"] = batch
    scores = np.array(result["scores"], dtype=np.int64)[:len(u)]
    result["rtl_accuracy"] = float((scores.argmax(axis=1) == labels[:len(scores)]).mean()) if len(scores) else 0.0
    result["golden_accuracy"] = float((expected.argmax(axis=1) == labels).mean())
    result["wall_s"] = time.time() - t0
    result["simulator"] = simulator
    return result


def run(args) -> int:
    out = Path(args.out)
    result = run_rtl(Path(args.image), out, args.simulator, args.images, args.seed, not args.no_stall,
                     args.batch)
    write_json(out / "sim.json", {k: v for k, v in result.items() if k != "scores"})
    print_table([(k, result[k]) for k in ("images", "mismatches", "rtl_accuracy", "golden_accuracy",
                                          "cycles_per_image", "wall_s")], "RTL simulation vs golden model")
    return 0 if result["mismatches"] == 0 else 1
