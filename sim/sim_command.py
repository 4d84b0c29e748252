"""``build.py sim``: cocotb RTL simulation of an image on its own test images against the golden model.

The test images are those of the data set the image's manifest records (``"data"``; ``--data`` /
``--data-root`` choose another), read by :func:`model.export.eval_command.image_vectors`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.cli import (
    DEFAULT_OUT,
    IMAGE_COUNT,
    SEED,
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
                   help="number of test images, 1 up to the data set's test count (default: all)")
    p.add_argument("--no-stall", action="store_true", help="no random back-pressure (cycle measurement)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="stall seed, and the digits split seed of an image that records no data set; 0..2^32-1 "
                        "(default: 0)")
    add_data_override_args(p, "the image")
    p.add_argument("--out", default=str(DEFAULT_OUT / "sim"), help="output directory")
    add_batch_arg(p)


def golden_vectors(image_dir: Path, count: int | None, seed: int, data: str | None = None,
                   data_root: str | None = None, flag: str = "--images"):
    """``(net, manifest, input codes, golden scores, labels)`` of the first ``count`` test images of the image's
    data set (:func:`model.export.eval_command.image_vectors`)."""
    from model.export.eval_command import image_vectors

    v = image_vectors(image_dir, count, seed, data, data_root, flag)
    return v.net, v.manifest, v.codes, v.expected, v.labels


def run_rtl(image_dir: Path, out: Path, simulator: str, count: int | None, seed: int, stall: bool,
            batch: int, data: str | None = None, data_root: str | None = None) -> dict:
    """Run the test images through the RTL in cocotb and compare with the golden model.

    The accelerator computes ``batch`` images at a time, so the stream is padded with copies of the last
    image to a multiple of ``batch`` (as a host would); the padding is checked too but not counted in
    the accuracy. The images are the first ``count`` test images of the image's data set (``data`` and
    ``data_root`` choose another, :func:`golden_vectors`); ``result["data"]`` records which.
    """
    import numpy as np

    from hw.platform.verilog import write_verilog
    from model.export.eval_command import image_vectors
    from model.export.image import pack
    from sim.runner import run_accelerator

    vectors = image_vectors(image_dir, count, seed, data, data_root)
    net, u, expected, labels = vectors.net, vectors.codes, vectors.expected, vectors.labels
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
    result["data"] = vectors.data.to_json()
    return result


def run(args) -> int:
    out = Path(args.out)
    result = run_rtl(Path(args.image), out, args.simulator, args.images, args.seed, not args.no_stall,
                     args.batch, args.data, args.data_root)
    write_json(out / "sim.json", {k: v for k, v in result.items() if k != "scores"})
    print_table([("data", result["data"]["name"])]
                + [(k, result[k]) for k in ("images", "mismatches", "rtl_accuracy", "golden_accuracy",
                                            "cycles_per_image", "wall_s")], "RTL simulation vs golden model")
    if not result.get("passed", True):
        print(f"error: the testbench failed ({result.get('images')} of {result.get('expected_images')} images "
              f"received{'; ' + str(result['error']) if result.get('error') else ''}); log: {result.get('log')}",
              file=sys.stderr)
    return 0 if result["mismatches"] == 0 and result.get("passed", True) else 1
