# amaranth: UnusedElaboratable=no
"""slot_mask against its definition, exhaustively over small fields (both ends of a row, empty rows, rows
running past the last slot)."""

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from hw.array.slot_mask import at_least, row_slot_mask


def run_comb(module, inputs, outputs, cases):
    """``[(ctx.get(o) for o in outputs) for each case]``: the module's combinational outputs per input case."""
    got = []

    async def bench(ctx):
        for case in cases:
            for signal, value in zip(inputs, case):
                ctx.set(signal, value)
            got.append(tuple(ctx.get(o) for o in outputs))

    sim = Simulator(module)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("width,count", [(2, 20), (3, 9), (4, 40), (6, 70), (8, 85), (9, 300)])
def test_at_least_is_a_thermometer(width, count):
    m = Module()
    value = Signal(width)
    out = Signal(count)
    for c, bit in enumerate(at_least(value, count)):
        m.d.comb += out[c].eq(bit)
    values = list(range(1 << width))
    for v, (got,) in zip(values, run_comb(m, [value], [out], [(v,) for v in values])):
        assert got == sum(1 << c for c in range(count) if v >= c), f"value {v}"


@pytest.mark.parametrize("slots", [6, 21])
def test_row_slot_mask_covers_off_to_off_plus_width(slots):
    m = Module()
    off = Signal(range(slots + 1))
    width = Signal(6)
    mask = Signal(slots)
    m.d.comb += mask.eq(row_slot_mask(off, width, slots))
    cases = [(o, w) for o in range(1 << len(off)) for w in range(1 << len(width))]
    for (o, w), (got,) in zip(cases, run_comb(m, [off, width], [mask], cases)):
        assert got == sum(1 << i for i in range(slots) if o <= i < o + w), f"off {o} width {w}"
