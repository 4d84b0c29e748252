"""Sequential word prefetcher: streams consecutive words of the global buffer into a small FIFO."""

from amaranth import Module, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hw.core.global_buffer import buffer_port_signature


class WordFetcher(wiring.Component):
    """Reads ``base, base+1, ...`` from a shared synchronous read port, ahead of its consumer.

    The fetcher does not know where its region ends: it keeps its FIFO full and is restarted (``start``:
    load ``base``, drop the FIFO and any read in flight) when the consumer moves to another region. Reads
    past the end of the buffer wrap around and are discarded by the restart.

    Parameters
    ----------
    addr_width : int
        Width of the global buffer address.
    depth : int
        FIFO depth in words (>= 2 keeps one read in flight while the consumer pops one a cycle).

    Members
    -------
    start, base : In
        Restart at ``base`` (one-cycle pulse).
    bus : Out(buffer_port_signature(addr_width))
        Read requests to a :class:`~hw.core.global_buffer.GlobalBuffer` port: ``req`` and ``addr`` out;
        ``grant`` says the read was issued this cycle, ``data`` returns it one cycle later (the port's
        latency).
    o : Out(stream.Signature(32))
        Words in address order.
    """

    def __init__(self, *, addr_width: int, depth: int = 4):
        if addr_width < 1:
            raise ValueError(f"addr_width must be >= 1, not {addr_width!r}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, not {depth!r}")
        self._depth = depth
        super().__init__({
            "start": In(1),
            "base": In(addr_width),
            "bus": Out(buffer_port_signature(addr_width)),
            "o": Out(stream.Signature(32)),
        })

    def elaborate(self, platform):
        m = Module()
        fifo = SyncFIFO(width=32, depth=self._depth)
        m.submodules.fifo = ResetInserter(self.start)(fifo)

        bus = self.bus
        addr = Signal.like(bus.addr)
        inflight = Signal()
        # Words the FIFO will hold next cycle without new reads: what it holds, plus the read in flight,
        # less the word popped now. Counting the popped word keeps one read a cycle going at depth 2.
        occupancy = Signal(range(self._depth + 2))
        m.d.comb += [
            occupancy.eq(fifo.level + inflight - (self.o.valid & self.o.ready)),
            bus.req.eq(~self.start & (occupancy < self._depth)),
            bus.addr.eq(addr),
            fifo.w_data.eq(bus.data),
            fifo.w_en.eq(inflight),
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        m.d.sync += inflight.eq(bus.req & bus.grant & ~self.start)
        with m.If(self.start):
            m.d.sync += addr.eq(self.base)
        with m.Elif(bus.req & bus.grant):
            m.d.sync += addr.eq(addr + 1)
        return m
