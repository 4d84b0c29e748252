"""What the cocotb testbenches of stream components share: clock, reset, stall patterns, watchdog.

A DUT here has a clock ``clk``, a synchronous reset ``rst``, an input stream ``i`` and an output stream
``o`` (Amaranth's ``i__valid`` / ``i__ready`` / ``i__payload`` and the same for ``o``).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Event, RisingEdge, Timer

#: Clock period in ns (the papers' 100 MHz).
CLOCK_NS = 10


def valid_gaps(rng: random.Random, p_gap: float = 0.3, max_gap: int = 3) -> Iterator[int]:
    """Idle cycles before each input beat: 0 with probability ``1 - p_gap``, else 1 to ``max_gap``."""
    while True:
        yield rng.randint(1, max_gap) if rng.random() < p_gap else 0


def ready_pattern(rng: random.Random, p_drop: float = 0.35, p_long: float = 0.03) -> Iterator[int]:
    """Per-cycle ``o.ready``: single-cycle drops with probability ``p_drop``, occasionally 4 to 16 in a row."""
    while True:
        if rng.random() < p_long:
            yield from itertools.repeat(0, rng.randint(4, 16))
        yield int(rng.random() >= p_drop)


def write_json(path: Path, record: dict) -> None:
    """Write the result record atomically (the runner reads it after the simulator exits)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


class StreamTB:
    """Base of a stream testbench: clock, reset, seeded stall patterns, protocol log and watchdog.

    Parameters
    ----------
    dut : cocotb handle
    stall : bool
        Random ``i.valid`` gaps and ``o.ready`` drops when true; ``o.ready`` held high otherwise.
    seed : int
        Seed of the stall patterns (one independent generator per stream, so that changing one pattern
        does not shift the other).
    timeout_cycles : int
        Watchdog limit: cycles without progress (:meth:`progress`) before the run counts as hung.
    """

    def __init__(self, dut, *, stall: bool, seed: int, timeout_cycles: int):
        if timeout_cycles < 1:
            raise ValueError(f"timeout_cycles must be >= 1, not {timeout_cycles!r}")
        self.dut = dut
        self.stall = stall
        self.timeout_cycles = timeout_cycles
        self.valid_gaps = valid_gaps(random.Random(f"valid-{seed}")) if stall else itertools.repeat(0)
        self.ready_pattern = ready_pattern(random.Random(f"ready-{seed}")) if stall else itertools.repeat(1)
        self.clk_edge = RisingEdge(dut.clk)
        self.hung = Event()
        self.protocol_errors: list[str] = []
        self.valid_gap_cycles = 0  # idle cycles the driver inserted
        self.ready_stall_cycles = 0  # cycles with o.valid high and o.ready low
        # The C++ clock: Icarus runs twice as fast as with a Python coroutine toggling clk (measured); our
        # own writes still land in the ReadWrite phase after the edge, so no race with the DUT's registers.
        Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()

    def progress(self) -> int:
        """A count that grows with every accepted beat (the watchdog's measure of life)."""
        raise NotImplementedError

    async def reset(self, cycles: int = 4) -> None:
        """Hold the synchronous reset for ``cycles`` edges with both streams idle."""
        self.dut.rst.value = 1
        self.dut.i__valid.value = 0
        self.dut.i__payload.value = 0
        self.dut.o__ready.value = 0
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst.value = 0
        await self.clk_edge

    def _protocol_error(self, message: str) -> None:
        self.protocol_errors.append(f"{get_sim_time('ns'):.0f} ns: {message}")
        cocotb.log.error("%s", message)

    async def watchdog(self) -> None:
        """Set :attr:`hung` when :meth:`progress` stands still for :attr:`timeout_cycles` cycles."""
        while True:
            before = self.progress()
            await Timer(self.timeout_cycles * CLOCK_NS, unit="ns")
            if self.progress() == before:
                self.hung.set()
                return
