"""What the Amaranth-simulator tests of the hardware blocks share: a clocked run, a stream driver and a pump."""

from amaranth.sim import Simulator


def simulate(dut, bench) -> None:
    """Run the async testbench ``bench`` against ``dut`` on a 100 MHz clock until it returns."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


class KeptSimulation:
    """The design ``make_dut()`` builds, compiled once for the Amaranth simulator, each :meth:`run` from its initial
    state.

    Compiling a ConvArray for the simulator takes 1 to 3 s, a fifth of the time of ``tests/hw/array/test_top.py``
    and ``test_engine.py`` (102 s of 490 s, measured 2026-12-06). Amaranth 0.5's ``Simulator.reset()`` gives every
    signal and memory its initial value and restarts the clock and the testbench, so that a run here is a run on
    a fresh simulator. A run that raises drops the design and its simulation, whatever they were left in: the next
    use of :attr:`dut` builds both anew (a design elaborates once: its memories take no ports after that).
    """

    def __init__(self, make_dut):
        self._make_dut = make_dut
        self._dut = self._sim = self._bench = None
        self._ran = False

    @property
    def dut(self):
        """The design the next :meth:`run` simulates (the testbench drives and reads its ports)."""
        if self._dut is None:
            self._dut, self._sim = self._make_dut(), None
        return self._dut

    def run(self, bench) -> None:
        """Run the async testbench ``bench`` against :attr:`dut` on a 100 MHz clock until it returns."""
        self._bench = bench
        if self._sim is None:
            self._sim, self._ran = Simulator(self.dut), False
            self._sim.add_clock(1e-8)
            self._sim.add_testbench(self._dispatch)
        if self._ran:
            self._sim.reset()
        self._ran = True
        try:
            self._sim.run()
        except BaseException:
            self._dut = self._sim = None
            raise

    async def _dispatch(self, ctx):
        await self._bench(ctx)


class Source:
    """Offers ``items`` on a stream, with a random number of idle cycles before each (seeded).

    Call :meth:`drive` before each ``ctx.tick()`` and :meth:`update` with the sampled ``valid`` and
    ``ready`` after it.
    """

    def __init__(self, port, items, rng, p_gap):
        self.port, self.items, self.rng, self.p_gap = port, list(items), rng, p_gap
        self.pos, self.gap = 0, self._draw()

    def _draw(self):
        gap = 0
        while self.rng.random() < self.p_gap:
            gap += 1
        return gap

    def drive(self, ctx):
        offer = self.gap == 0 and self.pos < len(self.items)
        ctx.set(self.port.valid, offer)
        if offer:
            ctx.set(self.port.payload, self.items[self.pos])

    def update(self, valid, ready):
        if valid and ready:
            self.pos += 1
            self.gap = self._draw()
        elif self.gap:
            self.gap -= 1


async def pump(ctx, dut, items, n_out, rng, p_gap, p_stall, convert, tail: int = 8):
    """Drive ``dut.i`` with ``items`` and collect ``n_out`` outputs; also the transfer cycles. A stalled output
    must hold, and after the ``n_out``-th nothing more may come out for ``tail`` cycles of ``o.ready``."""
    src = Source(dut.i, items, rng, p_gap)
    got, in_cycles, out_cycles, held = [], [], [], None
    for cycle in range(10 * len(items) + 50):
        if len(got) == n_out:
            break
        src.drive(ctx)
        ctx.set(dut.o.ready, rng.random() >= p_stall)
        _, _, iv, ir, ov, orr, out = await ctx.tick().sample(
            dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload)
        src.update(iv, ir)
        if iv and ir:
            in_cycles.append(cycle)
        if held is not None:
            assert ov and out == held, "output changed or vanished before its transfer"
        held = out if ov and not orr else None
        if ov and orr:
            got.append(convert(out))
            out_cycles.append(cycle)
    assert len(got) == n_out, f"stalled after {len(got)} of {n_out} outputs"
    ctx.set(dut.i.valid, 0)
    ctx.set(dut.o.ready, 1)
    for _ in range(tail):
        _, _, ov = await ctx.tick().sample(dut.o.valid)
        assert not ov, f"an output after the last of {n_out}"
    return got, in_cycles, out_cycles
