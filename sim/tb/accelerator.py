"""cocotb testbench of the accelerator top ``mpq_accel`` (hw/platform/verilog.py).

The test runs whole images through the Verilog: the source feeds input codes into ``i`` (one code per
beat, ``n_in`` beats per image), the sink takes class scores from ``o`` (:data:`OUTPUT_LAYOUT`: a signed
``score`` and ``last`` on the final class of an image), the testbench gathers them into images and the
scoreboard compares each image's scores with the golden model's, in order. Transactors, timing discipline
and stall patterns are :mod:`sim.tb.stream`'s.

The test is configured by environment variables (set by :func:`sim.runner.run_accelerator`):

``MPQ_CASE``
    ``.npz`` with ``inputs`` (int64 ``[N, n_in]``) and ``expected`` (int64 ``[N, n_out]``, the golden
    model's scores).
``MPQ_RESULT``
    Path of the JSON the test writes before it asserts (see :meth:`AcceleratorTB.result`).
``MPQ_STALL``
    ``"1"``: random gaps in ``i.valid`` and drops of ``o.ready`` (seeded by ``MPQ_SEED``); ``"0"``: none,
    for cycle counts.
``MPQ_SEED``
    Seed of the stall patterns (default 0).
``MPQ_TIMEOUT_CYCLES``
    Watchdog: the test fails as hung when no beat is accepted on ``i`` or ``o`` for this many cycles
    (default :data:`DEFAULT_TIMEOUT_CYCLES`).
"""

from __future__ import annotations

import itertools
import time

import cocotb
import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from sim.scoreboard import Scoreboard
from sim.tb.stream import RunSettings, StreamTB

#: Cycles without any accepted beat after which the DUT counts as hung.
DEFAULT_TIMEOUT_CYCLES = 1_000_000
#: Cycles the sink keeps listening after the last expected image, to catch extra beats.
TAIL_CYCLES = 64
#: ``i.payload``: one input activation code.
INPUT_SHAPE = unsigned(8)
#: ``o.payload``: the port contract of ``mpq_accel`` (``hw.accelerator.OUTPUT_LAYOUT``), written out here so
#: that the testbench does not import the design it checks.
OUTPUT_LAYOUT = data.StructLayout({"score": signed(32), "last": unsigned(1)})


class AcceleratorTB(StreamTB):
    """Clock, reset, input source, score sink, watchdog and scoreboard of ``mpq_accel``.

    Parameters
    ----------
    dut : cocotb handle
        The ``mpq_accel`` top level.
    expected : sequence of sequence of int
        Expected scores per image (the scoreboard's reference).
    stall : bool
        Random ``i.valid`` gaps and ``o.ready`` drops when true; ``o.ready`` held high otherwise.
    seed : int
        Seed of the stall patterns.
    timeout_cycles : int
        Watchdog limit: cycles without an accepted beat before the run counts as hung.

    Members
    -------
    image_done_ns : list of float
        Time of the transfer of each image's ``last`` score.
    pending : list of int
        Scores of the image being received.
    """

    tail_cycles = TAIL_CYCLES

    def __init__(self, dut, expected, *, stall: bool, seed: int = 0,
                 timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES):
        scoreboard = Scoreboard(expected, name="image")
        super().__init__(dut, input_shape=INPUT_SHAPE, output_shape=OUTPUT_LAYOUT, scoreboard=scoreboard,
                         stall=stall, seed=seed, timeout_cycles=timeout_cycles)
        self.image_done_ns: list[float] = []
        self.pending: list[int] = []

    def receive(self, value: dict) -> None:
        """One score: gather it; an image ends at ``last`` and goes to the scoreboard."""
        self.pending.append(value["score"])
        if value["last"]:
            self.image_done_ns.append(self.sink.last_transfer_ns)  # this score's transfer
            scores, self.pending = self.pending, []
            self.scoreboard.check(scores)

    async def run(self, images) -> None:
        """Drive ``images`` (rows of input codes) and wait for all their scores (or the watchdog)."""
        await super().run(itertools.chain.from_iterable(images))

    def result(self, wall_s: float) -> dict:
        """The result record (the ``MPQ_RESULT`` JSON).

        Keys: ``images`` (received), ``expected_images``, ``mismatches``, ``mismatched_images`` (first 20),
        ``scores`` (per received image), ``cycles_total`` (first input transfer through last output transfer),
        ``cycles_per_image``, ``first_image_latency_cycles``, ``image_done_cycles`` (per image, counted like
        ``cycles_total``), ``partial_beats`` (scores after the last ``last``), ``status_code`` (the core's
``error_code`` at the end: 0 for no error, -1 if unresolved) and the keys of
        :meth:`~sim.tb.stream.StreamTB.stream_record`; the test adds ``error`` (the exception that ended the
        run, or None).
        """
        board = self.scoreboard
        first = self.source.first_transfer_ns
        done = [self.cycles(first, t) for t in self.image_done_ns] if first is not None else []
        received = len(board.received)
        code = self.dut.error_code.value
        return {
            "images": received,
            "expected_images": len(board.expected),
            "mismatches": len(board.mismatched),
            "mismatched_images": board.mismatched[:20],
            "scores": board.received,
            "cycles_total": done[-1] if done else 0,
            "cycles_per_image": done[-1] / received if done else 0.0,
            "first_image_latency_cycles": done[0] if done else 0,
            "image_done_cycles": done,
            "partial_beats": len(self.pending),
            "status_code": int(code) if code.is_resolvable else -1,
            **self.stream_record(wall_s),
        }


@cocotb.test()
async def run_images(dut):
    """All images of ``MPQ_CASE`` through the accelerator; every score must equal the golden model's."""
    t0 = time.perf_counter()
    settings = RunSettings.from_env("MPQ", default_timeout_cycles=DEFAULT_TIMEOUT_CYCLES)
    with np.load(settings.case) as case:
        inputs = case["inputs"].astype(np.int64)
        expected = case["expected"].astype(np.int64)
    tb = AcceleratorTB(dut, expected.tolist(), stall=settings.stall, seed=settings.seed,
                       timeout_cycles=settings.timeout_cycles)
    record = await tb.run_and_record(inputs.tolist(), settings.result, t0)

    assert not record["timed_out"], (
        f"no beat accepted for {tb.timeout_cycles} cycles after {record['images']} of {len(expected)} images")
    assert not record["protocol_errors"], f"stream protocol violated: {record['protocol_errors']}"
    assert record["images"] == len(expected), f"received {record['images']} images, expected {len(expected)}"
    assert record["status_code"] == 0, f"the core reported error code {record['status_code']} on a valid image"
    assert record["partial_beats"] == 0, f"{record['partial_beats']} scores without a final 'last'"
    assert record["mismatches"] == 0, (
        f"{record['mismatches']} of {len(expected)} images differ from the golden model: "
        f"{record['mismatched_images']}")
