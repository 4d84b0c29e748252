"""An exported image's test images through the whole Zynq shell and the host driver, in RTL simulation.

What ``build.py sim --system`` runs: :class:`hw.system.zynq_top.MpqSystem` around an array sized for the
image (:func:`hw.array.sizing.config_for`), converted to Verilog and simulated on Icarus; inside the
simulation the host driver (:class:`driver.mpq_driver.MpqDriver` on :class:`sim.system.sim_backend.SimBackend`)
loads the image folder through DDR, runs the test images in DMA batches, and measures a throughput batch
(test ``driver_run`` of :mod:`sim.system.tb_system`).

The DDR model answers every read burst after ``ddr_latency`` cycles (before its first beat, bursts one after the
other) and writes without added latency; ``stall`` adds random latency and back-pressure on both buses.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hw.array.sizing import config_for
from hw.platform.verilog import system_verilog, write_text_atomically
from hw.system.zynq_top import SYSTEM_TOP_NAME
from model.export.image import read_image
from model.export.image_v4 import is_vertical
from sim.reads import array_words_read
from sim.runner import SimulationError
from sim.system.runner import run_block_test

#: Default DDR read latency of the model, cycles of the 100 MHz ``ap_clk`` (about what the Zynq-7000's HP
#: ports are quoted at: 200-300 ns from AR to the first beat; not measured here).
DEFAULT_DDR_LATENCY = 24
#: Engines of the array built for the simulation.
ENGINES = 2


def run_system(image_dir, inputs: np.ndarray, expected: np.ndarray, out: Path, *, seed: int = 0,
               stall: bool = False, ddr_latency: int = DEFAULT_DDR_LATENCY, max_batch: int = 16,
               throughput_images: int | None = None, precision: int = 0) -> dict:
    """Run ``inputs`` ``[N, C H W]`` through the system and the driver; compare with ``expected``.
    ``precision``: the ``precision`` register the driver writes before the runs (a vertical image's widths).

    Returns
    -------
    dict
        ``passed``, ``images``, ``rtl_mismatches``, ``cycles_per_image`` (``busy_cycles`` of the test-image
        runs per image: DMA reads of the inputs and writes of the scores included), ``ddr_bytes_per_image``,
        ``ddr_latency_cycles``, ``throughput`` (:meth:`~driver.mpq_driver.MpqDriver.throughput_test` on a
        batch of random images), ``load_cycles``, ``array_config``, ``scores``, ``wall_s``, ``log``;
        ``buffer_reads`` and ``weight_reads`` (the core's registers after the test images: the last one's
        global-buffer words) and ``read_mismatches`` (1 when they differ from
        :func:`sim.reads.array_words_read`'s for the image at ``precision``, else 0).

    Raises
    ------
    SimulationError
        The build failed or the simulation wrote no record.
    """
    image_dir = Path(image_dir)
    words = np.fromfile(image_dir / "weights.bin", dtype="<u4")
    config = config_for([words], engines=ENGINES, names=[image_dir / "weights.bin"])
    out = Path(out).resolve()  # the simulator runs in its build directory: every path it reads is absolute
    out.mkdir(parents=True, exist_ok=True)
    verilog = write_text_atomically(out / f"{SYSTEM_TOP_NAME}.v", system_verilog(config))
    n = len(inputs)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        case, result_path = Path(tmp) / "case.npz", Path(tmp) / "result.json"
        np.savez(case, image_dir=np.array(str(image_dir.resolve())), a_inputs=np.asarray(inputs, np.int64),
                 a_expected=np.asarray(expected, np.int64),
                 images=np.int64(throughput_images or min(n, max_batch)), precision=np.int64(precision))
        t0 = time.perf_counter()
        run = run_block_test(verilog, toplevel=SYSTEM_TOP_NAME, test_module="sim.system.tb_system",
                             test="driver_run", work_dir=out / "sim_build", seed=seed,
                             env={"MPQS_CASE": case, "MPQS_RESULT": result_path, "MPQS_SEED": seed,
                                  "MPQS_STALL": int(stall), "MPQS_MAX_BATCH": max_batch,
                                  "MPQS_DDR_LATENCY": ddr_latency}, keep_logs=True)
        if not result_path.is_file():
            raise SimulationError(f"the system simulation wrote no record (log: {run['log']})", run["log"])
        record = json.loads(result_path.read_text())
    record.update({"passed": run["passed"], "log": run["log"], "wall_s": time.perf_counter() - t0,
                   "ddr_latency_cycles": ddr_latency, "stall": stall, "max_batch": max_batch,
                   "array_config": {k: getattr(config, k) for k in ("engines", "lanes", "buffer_words",
                                                                      "fmap_rows", "row_codes", "fan_in_width",
                                                                      "channel_bits")}})
    if "images" in record:
        codes = int(np.asarray(inputs).shape[1])
        batches = [min(max_batch, n - k) for k in range(0, n, max_batch)]
        n_classes = int(np.asarray(expected).shape[1])
        ddr = sum(-(-b * codes // 8) * 8 + 4 * b * n_classes for b in batches)
        record["ddr_bytes_per_image"] = ddr / n
        record["image_bytes"] = 4 * len(words)
    if "buffer_reads" in record:
        net = None if is_vertical(image_dir) else read_image(image_dir)[0]
        want = array_words_read(words, net, config, precision)
        record["read_mismatches"] = int((record["weight_reads"], record["buffer_reads"]) != want)
    return record
