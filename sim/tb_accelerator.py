"""cocotb testbench of the accelerator top ``mpq_accel`` (hw/platform/verilog.py).

The test runs whole images through the Verilog: a driver feeds input codes into ``i`` (one code per beat,
``n_in`` beats per image), a monitor collects class scores from ``o`` (``payload[31:0]`` signed score,
``payload[32]`` ``last``), and a scoreboard compares each image's scores with the golden model's, in order.

Handshakes are sampled in the :class:`~cocotb.triggers.ReadOnly` phase of the cycle *before* the rising edge
that performs the transfer: there every combinational ``valid`` / ``ready`` has settled, on Icarus and on
Verilator alike (right after ``RisingEdge(clk)`` Verilator already shows the registers' new values, Icarus
may not). Inputs are driven right after ``RisingEdge(clk)``. While the DUT computes, neither coroutine wakes
per cycle: the driver waits for ``i.ready`` to rise and the monitor for ``o.valid`` to rise, so simulation
speed is the simulator's, not Python's.

The test is configured by environment variables (set by :func:`sim.runner.run_accelerator`):

``MPQ_CASE``
    ``.npz`` with ``inputs`` (int64 ``[N, n_in]``) and ``expected`` (int64 ``[N, n_out]``).
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
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, RisingEdge
from cocotb.types import LogicArray

from sim.stream_tb import CLOCK_NS, StreamTB, write_json

#: Cycles without any accepted beat after which the DUT counts as hung.
DEFAULT_TIMEOUT_CYCLES = 1_000_000
#: Cycles the monitor keeps listening after the last expected image, to catch extra beats.
TAIL_CYCLES = 64
SCORE_MASK = (1 << 32) - 1
LAST_BIT = 1 << 32
_UNRESOLVED_TO_0 = str.maketrans("xXzZuUwW-", "000000000")


def to_signed32(value: int) -> int:
    """The low 32 bits of ``value`` as a two's complement integer."""
    value &= SCORE_MASK
    return value - (1 << 32) if value >> 31 else value


class Scoreboard:
    """Compares received images with the expected ones, in order.

    Parameters
    ----------
    expected : sequence of sequence of int
        Expected class scores, one sequence per image.

    Members
    -------
    received : list of list of int
        Scores of every image received so far (an image ends at a beat with ``last``).
    mismatched : list of int
        Indices of received images whose scores (values or count) differ from the expected ones; images
        beyond the expected number count as mismatched too.
    done : Event
        Set when as many images as expected have been received.
    """

    def __init__(self, expected):
        self.expected = [[int(v) for v in row] for row in expected]
        self.received: list[list[int]] = []
        self.mismatched: list[int] = []
        self.done = Event()

    def check(self, scores: list[int]) -> None:
        """Take one received image."""
        k = len(self.received)
        self.received.append(scores)
        if k >= len(self.expected) or scores != self.expected[k]:
            self.mismatched.append(k)
            if len(self.mismatched) <= 5:
                want = self.expected[k] if k < len(self.expected) else "no image"
                cocotb.log.error("image %d: got %s, expected %s", k, scores, want)
        if len(self.received) == len(self.expected):
            self.done.set()


class AcceleratorTB(StreamTB):
    """Clock, reset, input driver, output monitor, watchdog and scoreboard of ``mpq_accel``.

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
    """

    def __init__(self, dut, expected, *, stall: bool, seed: int = 0,
                 timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES):
        super().__init__(dut, stall=stall, seed=seed, timeout_cycles=timeout_cycles)
        self.scoreboard = Scoreboard(expected)
        self.beats = 0  # accepted beats on i and o: the watchdog's progress counter
        self.first_input_ns: float | None = None
        self.image_done_ns: list[float] = []
        self.pending: list[int] = []  # scores of the image being received

    def progress(self) -> int:
        return self.beats

    def start(self, images) -> None:
        """Start the driver on ``images`` (rows of input codes), the monitor and the watchdog."""
        cocotb.start_soon(self.drive_inputs([[int(c) for c in row] for row in images]))
        cocotb.start_soon(self.monitor_outputs())
        cocotb.start_soon(self.watchdog())

    async def drive_inputs(self, images: list[list[int]]) -> None:
        """Input driver: one code per beat, ``valid`` held until accepted, gaps from :attr:`valid_gaps`."""
        valid, ready, payload = self.dut.i__valid, self.dut.i__ready, self.dut.i__payload
        for code in itertools.chain.from_iterable(images):
            gap = next(self.valid_gaps)
            if gap:
                self.valid_gap_cycles += gap
                valid.value = 0
                for _ in range(gap):
                    await self.clk_edge
            payload.value = code
            valid.value = 1
            await ReadOnly()
            while not ready.value:
                # The DUT computes: sleep until it asks for input again instead of polling every cycle.
                await RisingEdge(ready)
                await ReadOnly()
            if self.first_input_ns is None:
                self.first_input_ns = get_sim_time("ns")
            self.beats += 1
            await self.clk_edge  # the transfer
        valid.value = 0

    async def monitor_outputs(self) -> None:
        """Output monitor: ``ready`` from :attr:`ready_pattern`; checks that a stalled beat is held."""
        valid, ready, payload = self.dut.o__valid, self.dut.o__ready, self.dut.o__payload
        ready_now = next(self.ready_pattern)
        ready.value = ready_now
        held: int | None = None  # payload offered while ready was low: must stay until taken
        while True:
            await ReadOnly()
            if not valid.value:
                if held is not None:
                    self._protocol_error(f"o.valid dropped before the beat {held:#x} was taken")
                    held = None
                await RisingEdge(valid)
                continue
            value = payload.value
            if not value.is_resolvable:
                self._protocol_error(f"o.payload is {value} while o.valid is high")
                value = LogicArray(str(value).translate(_UNRESOLVED_TO_0))
            beat = value.to_unsigned()
            if held is not None and beat != held:
                self._protocol_error(f"o.payload changed from {held:#x} to {beat:#x} while stalled")
            if ready_now:
                held = None
                self._take(beat)
            else:
                held = beat
                self.ready_stall_cycles += 1
            await self.clk_edge
            new_ready = next(self.ready_pattern)
            if new_ready != ready_now:
                ready.value = ready_now = new_ready

    def _take(self, beat: int) -> None:
        self.beats += 1
        self.pending.append(to_signed32(beat))
        if beat & LAST_BIT:
            self.image_done_ns.append(get_sim_time("ns"))
            scores, self.pending = self.pending, []
            self.scoreboard.check(scores)

    async def run(self, images) -> None:
        """Drive ``images`` and wait for all their scores (or the watchdog), then a short tail."""
        self.start(images)
        await First(self.scoreboard.done.wait(), self.hung.wait())
        if not self.hung.is_set():
            await ClockCycles(self.dut.clk, TAIL_CYCLES)  # extra beats would land in the scoreboard

    def _cycles(self, t_ns: float) -> int:
        """Clock cycles from the first input transfer through the transfer at ``t_ns``, both included."""
        return round((t_ns - self.first_input_ns) / CLOCK_NS) + 1

    def result(self, wall_s: float) -> dict:
        """The result record (the ``MPQ_RESULT`` JSON).

        Keys: ``images`` (received), ``expected_images``, ``mismatches``, ``mismatched_images`` (first 20),
        ``scores`` (per received image), ``cycles_total`` (first input transfer through last output transfer),
        ``cycles_per_image``, ``first_image_latency_cycles``, ``image_done_cycles`` (per image, counted like
        ``cycles_total``), ``stall``, ``valid_gap_cycles`` and ``ready_stall_cycles`` (the back-pressure
        actually applied), ``timed_out``, ``protocol_errors``, ``partial_beats`` (scores after the
        last ``last``), ``sim_cycles`` (whole simulation), ``sim_wall_s`` (wall time of the test body); the
        test adds ``error`` (the exception that ended the run, or None).
        """
        board = self.scoreboard
        done = [self._cycles(t) for t in self.image_done_ns] if self.first_input_ns is not None else []
        received = len(board.received)
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
            "stall": self.stall,
            "valid_gap_cycles": self.valid_gap_cycles,
            "ready_stall_cycles": self.ready_stall_cycles,
            "timed_out": self.hung.is_set(),
            "protocol_errors": self.protocol_errors[:20],
            "partial_beats": len(self.pending),
            "sim_cycles": round(get_sim_time("ns") / CLOCK_NS),
            "sim_wall_s": wall_s,
        }


@cocotb.test()
async def run_images(dut):
    """All images of ``MPQ_CASE`` through the DUT; scores must equal the golden model's, in order."""
    t0 = time.perf_counter()
    with np.load(os.environ["MPQ_CASE"]) as case:
        inputs = case["inputs"].astype(np.int64)
        expected = case["expected"].astype(np.int64)
    tb = AcceleratorTB(dut, expected.tolist(), stall=os.environ.get("MPQ_STALL", "1") == "1",
                       seed=int(os.environ.get("MPQ_SEED", "0")),
                       timeout_cycles=int(os.environ.get("MPQ_TIMEOUT_CYCLES", DEFAULT_TIMEOUT_CYCLES)))
    error = None
    try:
        await tb.reset()
        await tb.run(inputs.tolist())
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # Also when the run dies (e.g. a port is missing): the caller gets what was received so far.
        record = tb.result(time.perf_counter() - t0)
        record["error"] = error
        write_json(Path(os.environ["MPQ_RESULT"]), record)

    assert not record["timed_out"], (
        f"no beat accepted for {tb.timeout_cycles} cycles after {record['images']} of {len(expected)} images")
    assert not record["protocol_errors"], f"stream protocol violated: {record['protocol_errors']}"
    assert record["images"] == len(expected), f"received {record['images']} images, expected {len(expected)}"
    assert record["partial_beats"] == 0, f"{record['partial_beats']} scores without a final 'last'"
    assert record["mismatches"] == 0, (
        f"{record['mismatches']} of {len(expected)} images differ from the golden model: "
        f"{record['mismatched_images']}")
