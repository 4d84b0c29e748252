"""The Amaranth-simulator helpers the hardware tests share: a kept simulation runs each testbench from the
design's initial state, as a fresh simulator would."""

import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.lib import memory

from tests.hw.stream_source import KeptSimulation, simulate


class Counter(Elaboratable):
    """A counter that also writes its count into a memory initialised with 7, 8, 9, 10."""

    def __init__(self):
        self.count = Signal(8, init=3)
        self.en = Signal()
        self.addr = Signal(2)
        self.mem = memory.Memory(shape=8, depth=4, init=[7, 8, 9, 10])

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = self.mem
        write = self.mem.write_port()
        m.d.comb += [write.addr.eq(self.addr), write.data.eq(self.count), write.en.eq(self.en)]
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


def trace(dut, seen, ticks):
    """A testbench: the count and the memory as it starts, then ``ticks`` cycles that count and write."""
    async def bench(ctx):
        seen.append((ctx.get(dut.count), [ctx.get(dut.mem.data[i]) for i in range(4)]))
        ctx.set(dut.en, 1)
        for i in range(ticks):
            ctx.set(dut.addr, i % 4)
            await ctx.tick()
        seen.append((ctx.get(dut.count), [ctx.get(dut.mem.data[i]) for i in range(4)]))
    return bench


def test_each_run_starts_where_a_fresh_simulator_would():
    fresh, fresh_dut = [], Counter()
    simulate(fresh_dut, trace(fresh_dut, fresh, 5))
    assert fresh == [(3, [7, 8, 9, 10]), (8, [7, 4, 5, 6])]
    kept = KeptSimulation(Counter)
    for ticks in (5, 2, 5):
        seen = []
        kept.run(trace(kept.dut, seen, ticks))
        assert seen[0] == (3, [7, 8, 9, 10])  # the signals' and the memory's initial values, not the last run's
    assert seen == fresh


def test_a_run_that_raises_leaves_nothing_to_the_next():
    kept = KeptSimulation(Counter)
    dut = kept.dut

    async def fails(ctx):
        ctx.set(dut.en, 1)
        await ctx.tick()
        await ctx.tick()
        raise ValueError("the testbench failed")

    with pytest.raises(ValueError, match="the testbench failed"):
        kept.run(fails)
    assert kept.dut is not dut  # built anew, its simulation too
    seen = []
    kept.run(trace(kept.dut, seen, 5))
    assert seen == [(3, [7, 8, 9, 10]), (8, [7, 4, 5, 6])]
