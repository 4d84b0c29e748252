"""An exported image's test images through the generated Verilog, against the golden model.

What ``sim`` and ``demo`` run and ``verilog`` puts in its self-test ROM: the image's recorded test images
(:mod:`model.export.vectors`), padded to a multiple of the batch, through :func:`sim.runner.run_accelerator`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hw.platform.verilog import write_verilog
from model.export.image import pack
from model.export.vectors import image_vectors
from sim.runner import run_accelerator


def golden_vectors(image_dir: Path, count: int | None, seed: int, data: str | None = None,
                   data_root: str | None = None, flag: str = "--images"):
    """``(net, manifest, input codes, golden scores, labels)`` of the first ``count`` test images of the image's
    data set (:func:`model.export.vectors.image_vectors`)."""
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
