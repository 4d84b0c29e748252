"""An exported image's test images through the generated Verilog, against the golden model.

What ``sim`` and ``demo`` run: the image's recorded test images (:func:`model.export.vectors.image_vectors`).
On the fully connected core (``--core fc``), padded to a multiple of the batch, through
:func:`sim.runner.run_accelerator`: :func:`prepare` does the setup once (padding, Verilog); :func:`simulate`
runs it, as often as wanted (``demo``: with and without stalls); :func:`run_rtl` is both in one. On the packed
multiplier array (``--core array``): :func:`prepare_array` (the image's words, the array sized for them, its
Verilog) and :func:`simulate_array` (the images loaded through the load port, :func:`sim.array_runner.run_array_cases`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw.array.sizing import config_for
from hw.array.top import ArrayConfig
from hw.platform.verilog import array_verilog, write_text_atomically, write_verilog
from model.export.image import core_words, pack
from model.export.vectors import ImageVectors
from sim.array_runner import run_array_cases
from sim.reads import array_words_read, read_mismatches
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


def prepare(vectors: ImageVectors, out: Path, batch: int, where: str = "image") -> PreparedRun:
    """Pad the test images to a multiple of ``batch`` and write the Verilog to ``out / "mpq_accel.v"``.

    The accelerator computes ``batch`` images at a time, so the stream is padded with copies of the last
    image (as a host would); the padding is checked too but not counted in the accuracy.
    """
    u, expected = vectors.codes, vectors.expected
    pad = -len(u) % batch
    u_all = np.concatenate([u, np.repeat(u[-1:], pad, axis=0)])
    expected_all = np.concatenate([expected, np.repeat(expected[-1:], pad, axis=0)])
    vpath = write_verilog(core_words(vectors.net, where), out / "mpq_accel.v", batch=batch)
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


def run_rtl(vectors: ImageVectors, out: Path, simulator: str, seed: int, stall: bool, batch: int,
            where: str = "image") -> dict:
    """:func:`prepare` and :func:`simulate` the test images ``vectors`` (``where`` names the image in errors)."""
    return simulate(prepare(vectors, out, batch, where), simulator, seed, stall)


@dataclass(frozen=True, eq=False)
class PreparedArray:
    """An image's words and the packed multiplier array sized for them (:func:`prepare_array`).

    Members
    -------
    words : numpy.ndarray
        What the array loads: the image's own words for a vertical-layered (version 4) image, else the
        network packed as version 3 (an image of versions 1-3 holds the same network).
    config : hw.array.top.ArrayConfig
    verilog : Path
    out : Path
    """

    words: np.ndarray
    config: ArrayConfig
    verilog: Path
    out: Path


def prepare_array(vectors: ImageVectors, out: Path, *, engines: int, lanes: int | None = None,
                  vertical: bool = False, where: str = "image") -> PreparedArray:
    """The words of the image ``vectors`` were read from (a vertical image's as stored, ``vectors.words``; else
    its network packed as version 3), :func:`~hw.array.sizing.config_for` them with ``engines`` / ``lanes`` /
    ``vertical``, and the array's Verilog in ``out / "mpq_array.v"``; an image the array cannot hold is a
    :class:`~model.errors.UserError` naming ``where`` (the image's path)."""
    words = np.asarray(pack(vectors.net) if vectors.words is None else vectors.words, dtype=np.int64)
    config = config_for([words], engines=engines, lanes=lanes, vertical=vertical, names=[where])
    verilog = write_text_atomically(Path(out) / "mpq_array.v", array_verilog(config))
    return PreparedArray(words, config, verilog, Path(out))


def simulate_array(run: PreparedArray, vectors: ImageVectors, simulator: str, seed: int, stall: bool,
                   precision: int = 0) -> dict:
    """The test images ``vectors`` on the prepared array (a version 4 image at ``precision``, the shell's
    register: a width, or ``0x80 + r`` row ``r`` of its Eq. 12 table), against golden: the testbench's record
    (:meth:`sim.tb.array.ArrayTB.result`) with ``rtl_accuracy``, ``golden_accuracy``, ``wall_s``, ``data``,
    ``array_config``, ``image_bytes`` and ``read_mismatches`` (the images whose global-buffer words read differ
    from :func:`sim.reads.array_words_read`'s, or that did not come back)."""
    t0 = time.time()
    result = run_array_cases(run.verilog, [(run.words, vectors.codes, vectors.expected, precision)],
                             work_dir=run.out / "sim_build", simulator=simulator, stall=stall, seed=seed)
    scores = np.array(result["scores"], dtype=np.int64)
    labels = vectors.labels
    result["rtl_accuracy"] = float((scores.argmax(axis=1) == labels[:len(scores)]).mean()) if len(scores) else 0.0
    result["golden_accuracy"] = float((vectors.expected.argmax(axis=1) == labels).mean())
    result["wall_s"] = time.time() - t0
    result["data"] = vectors.data.to_json()
    result["array_config"] = dataclasses.asdict(run.config)
    result["image_bytes"] = 4 * len(run.words)
    want = array_words_read(run.words, vectors.net, run.config, precision)
    result["read_mismatches"] = read_mismatches(result["image_weight_reads"], result["image_reads"], want,
                                                len(vectors.codes))
    return result
