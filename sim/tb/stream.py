"""Base of the testbenches of stream components: clock, reset, transactors, stall patterns, watchdog, record.

A DUT here has a clock ``clk``, a synchronous reset ``rst``, an input stream ``i`` and an output stream
``o`` (Amaranth's ``i__payload`` / ``i__valid`` / ``i__ready`` and the same for ``o``). :class:`StreamTB`
puts a :class:`~sim.transactors.StreamSource` on ``i`` and a :class:`~sim.transactors.StreamSink` on ``o``,
and every knob of a run in one place: the stall patterns (:func:`idle_pattern`, :func:`backpressure_pattern`,
or any pause generator set on :attr:`StreamTB.source` / :attr:`StreamTB.sink`), the watchdog and the tail.
A subclass names the payload shapes, builds the :class:`~sim.scoreboard.Scoreboard` from its model and
writes the result record.

The runners (:func:`sim.runner.run_test`) configure a testbench through environment variables
``<PREFIX>_CASE``, ``_RESULT``, ``_STALL``, ``_SEED`` and ``_TIMEOUT_CYCLES``; :class:`RunSettings` reads them.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Event, First, RisingEdge, Timer

from model.files import write_json
from sim.scoreboard import Scoreboard
from sim.transactors import StreamSink, StreamSource

#: Clock period in ns (the papers' 100 MHz).
CLOCK_NS = 10


def idle_pattern(rng: random.Random, p_gap: float = 0.3, max_gap: int = 3) -> Iterator[int]:
    """Source pauses: before each beat no idle cycle with probability ``1 - p_gap``, else 1 to ``max_gap``."""
    while True:
        if rng.random() < p_gap:
            yield from itertools.repeat(1, rng.randint(1, max_gap))
        yield 0


def backpressure_pattern(rng: random.Random, p_drop: float = 0.35, p_long: float = 0.03) -> Iterator[int]:
    """Sink pauses (``ready`` low): single cycles with probability ``p_drop``, occasionally 4 to 16 in a row."""
    while True:
        if rng.random() < p_long:
            yield from itertools.repeat(1, rng.randint(4, 16))
        yield int(rng.random() < p_drop)


@dataclass(frozen=True)
class RunSettings:
    """What a runner asks of one simulation (:func:`sim.runner.run_test` sets the variables).

    Members
    -------
    case : Path
        ``.npz`` with the run's arrays.
    result : Path
        Where the testbench writes its JSON record.
    stall : bool
        Random idle cycles on ``i`` and back-pressure on ``o``.
    seed : int
        Seed of the stall patterns.
    timeout_cycles : int
        Watchdog limit (the testbench's default when the runner sets none).
    """

    case: Path
    result: Path
    stall: bool
    seed: int
    timeout_cycles: int

    @classmethod
    def from_env(cls, prefix: str, *, default_timeout_cycles: int) -> RunSettings:
        env = os.environ
        return cls(case=Path(env[f"{prefix}_CASE"]), result=Path(env[f"{prefix}_RESULT"]),
                   stall=env.get(f"{prefix}_STALL", "1") == "1", seed=int(env.get(f"{prefix}_SEED", "0")),
                   timeout_cycles=int(env.get(f"{prefix}_TIMEOUT_CYCLES", default_timeout_cycles)))


class StreamTB:
    """Clock, reset, source on ``i``, sink on ``o``, stall patterns, watchdog and scoreboard of a DUT.

    Parameters
    ----------
    dut : cocotb handle
    input_shape, output_shape : shape-like or amaranth.lib.data.Layout
        Payload shapes of ``i`` and ``o`` (the port widths must agree).
    scoreboard : Scoreboard
        Holds the model's expected transactions; by default every value from the sink goes to it
        (:meth:`receive`).
    stall : bool
        Random idle cycles on ``i`` (:func:`idle_pattern`) and back-pressure on ``o``
        (:func:`backpressure_pattern`) when true; ``o.ready`` held high otherwise.
    seed : int
        Seed of the stall patterns (one independent generator per stream, so that changing one pattern
        does not shift the other).
    timeout_cycles : int
        Watchdog limit: cycles without a transfer on ``i`` or ``o`` before the run counts as hung.

    Members
    -------
    source : StreamSource
    sink : StreamSink
    scoreboard : Scoreboard
    hung : cocotb.triggers.Event
        Set by the watchdog.
    tail_cycles : int
        Cycles the sink keeps listening after the last expected transaction, to catch extra ones.

    Raises
    ------
    ValueError
        ``timeout_cycles`` below 1, or ports that do not match the shapes.
    """

    tail_cycles = 64

    def __init__(self, dut, *, input_shape, output_shape, scoreboard: Scoreboard, stall: bool, seed: int,
                 timeout_cycles: int):
        if timeout_cycles < 1:
            raise ValueError(f"timeout_cycles must be >= 1, not {timeout_cycles!r}")
        self.dut = dut
        self.stall = stall
        self.timeout_cycles = timeout_cycles
        self.scoreboard = scoreboard
        self.source = StreamSource(dut, "i", payload_shape=input_shape)
        self.sink = StreamSink(dut, "o", payload_shape=output_shape, callback=self.receive)
        if stall:
            self.source.set_pause_generator(idle_pattern(random.Random(f"valid-{seed}")))
            self.sink.set_pause_generator(backpressure_pattern(random.Random(f"ready-{seed}")))
        self.hung = Event()
        # The C++ clock: Icarus runs twice as fast as with a Python coroutine toggling clk (measured); our
        # own writes still land in the ReadWrite phase after the edge, so no race with the DUT's registers.
        Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()

    def receive(self, value) -> None:
        """One value from the sink; the default hands it to the scoreboard."""
        self.scoreboard.check(value)

    def progress(self) -> int:
        """Transfers on ``i`` and ``o`` so far (the watchdog's measure of life)."""
        return self.source.transfers + self.sink.transfers

    async def reset(self, cycles: int = 4) -> None:
        """Hold the synchronous reset for ``cycles`` edges with both streams idle."""
        self.dut.rst.value = 1
        self.source.drive_idle()
        self.sink.drive_idle()
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def watchdog(self) -> None:
        """Set :attr:`hung` when :meth:`progress` stands still for :attr:`timeout_cycles` cycles."""
        while True:
            before = self.progress()
            await Timer(self.timeout_cycles * CLOCK_NS, unit="ns")
            if self.progress() == before:
                self.hung.set()
                return

    async def run(self, values: Iterable) -> None:
        """Send ``values`` on ``i`` and wait for every expected transaction (or the watchdog), then the tail."""
        self.source.send_all_nowait(values)
        self.source.start()
        self.sink.start()
        cocotb.start_soon(self.watchdog())
        await First(self.scoreboard.done.wait(), self.hung.wait())
        if not self.hung.is_set():
            await ClockCycles(self.dut.clk, self.tail_cycles)  # extra transactions would reach the scoreboard

    async def run_and_record(self, values: Iterable, path: Path, t0: float) -> dict:
        """:meth:`reset`, :meth:`run`, then write :meth:`result` (plus ``error``) to ``path``, also when the
        run raises (e.g. a missing port), so that the runner gets what was received so far."""
        error = None
        try:
            await self.reset()
            await self.run(values)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record = self.result(time.perf_counter() - t0)
            record["error"] = error
            write_json(path, record)
        return record

    @staticmethod
    def cycles(start_ns: float | None, end_ns: float | None) -> int:
        """Clock cycles from the transfer at ``start_ns`` through the one at ``end_ns``, both included."""
        return 0 if start_ns is None or end_ns is None else round((end_ns - start_ns) / CLOCK_NS) + 1

    def stream_record(self, wall_s: float) -> dict:
        """The record keys every stream testbench has: ``stall``, ``valid_gap_cycles`` and
        ``ready_stall_cycles`` (the idle cycles and back-pressure applied), ``timed_out``,
        ``protocol_errors`` (first 20), ``sim_cycles`` (whole simulation) and ``sim_wall_s``."""
        return {
            "stall": self.stall,
            "valid_gap_cycles": self.source.idle_cycles,
            "ready_stall_cycles": self.sink.stall_cycles,
            "timed_out": self.hung.is_set(),
            "protocol_errors": self.sink.protocol_errors[:20],
            "sim_cycles": round(get_sim_time("ns") / CLOCK_NS),
            "sim_wall_s": wall_s,
        }

    def result(self, wall_s: float) -> dict:
        """The result record; each testbench defines its keys."""
        raise NotImplementedError
