"""An exported image's test images through the generated Verilog, against the golden model.

What ``sim`` and ``demo`` run: the image's recorded test images (:func:`model.export.vectors.image_vectors`),
padded to a multiple of the batch, through :func:`sim.runner.run_accelerator`. :func:`prepare` does the setup
once (padding, Verilog); :func:`simulate` runs it, as often as wanted (``demo``: with and without stalls);
:func:`run_rtl` is both in one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw.platform.verilog import write_verilog
from model.export.image import core_words
from model.export.vectors import ImageVectors
from sim.runner import run_accelerator


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """Test images padded to a multiple of the batch, and the Verilog they run on.

    Members
    -------
    vectors : model.export.vectors.ImageVectors
        The test images (without padding) and their golden scores.
    inputs, expected : numpy.ndarray
        Input codes and golden scores with the padding.
    padding : int
        Copies of the last image appended.
    batch : int
    verilog : Path
        The accelerator's Verilog.
    out : Path
        Output directory (the Verilog and the simulator's ``sim_build``).
    """

    vectors: ImageVectors
    inputs: np.ndarray
    expected: np.ndarray
    padding: int
    batch: int
    verilog: Path
    out: Path


def prepare(vectors: ImageVectors, out: Path, batch: int) -> PreparedRun:
    """Pad the test images to a multiple of ``batch`` and write the Verilog to ``out / "mpq_accel.v"``.

    The accelerator computes ``batch`` images at a time, so the stream is padded with copies of the last
    image (as a host would); the padding is checked too but not counted in the accuracy.
    """
    u, expected = vectors.codes, vectors.expected
    pad = -len(u) % batch
    u_all = np.concatenate([u, np.repeat(u[-1:], pad, axis=0)])
    expected_all = np.concatenate([expected, np.repeat(expected[-1:], pad, axis=0)])
    vpath = write_verilog(core_words(vectors.net, "image"), out / "mpq_accel.v", batch=batch)
    return PreparedRun(vectors, u_all, expected_all, pad, batch, vpath, out)


def simulate(run: PreparedRun, simulator: str, seed: int, stall: bool) -> dict:
    """Run a prepared stream through the RTL in cocotb and compare with the golden model.

    ``result["data"]`` records the data set the images come from.
    """
    vectors = run.vectors
    expected, labels = vectors.expected, vectors.labels
    t0 = time.time()
    result = run_accelerator(run.verilog, run.inputs, run.expected, work_dir=run.out / "sim_build",
                             simulator=simulator, stall=stall, seed=seed)
    result["padding_images"] = run.padding
    result["batch"] = run.batch
    scores = np.array(result["scores"], dtype=np.int64)[:len(vectors.codes)]
    result["rtl_accuracy"] = float((scores.argmax(axis=1) == labels[:len(scores)]).mean()) if len(scores) else 0.0
    result["golden_accuracy"] = float((expected.argmax(axis=1) == labels).mean())
    result["wall_s"] = time.time() - t0
    result["data"] = vectors.data.to_json()
    return result


def run_rtl(vectors: ImageVectors, out: Path, simulator: str, seed: int, stall: bool, batch: int) -> dict:
    """:func:`prepare` and :func:`simulate` the test images ``vectors``."""
    return simulate(prepare(vectors, out, batch), simulator, seed, stall)
