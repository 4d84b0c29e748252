"""Sequential word prefetcher: streams consecutive words of the global buffer into a small FIFO."""

from amaranth import Module, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hw.core.global_buffer import buffer_port_signature
from model.export.format import WORD_BITS

#: Bits of a bit address within a word.
WORD_SHIFT = (WORD_BITS - 1).bit_length()


class WordFetcher(wiring.Component):
    """Reads ``base, base+1, ...`` from a shared synchronous read port, ahead of its consumer.

    It keeps its FIFO full and is restarted (``start``: load ``base`` and ``end_bit``, drop the FIFO and any
    read in flight) when the consumer moves to another region. It reads no word at or past
    ``ceil(end_bit / 32)``, the region's end (a row decoder's row ends there: a word read past it would be
    dropped at the next restart, a port cycle lost to the other readers of the port); once its reads have
    stopped there and the FIFO is empty it offers words it did not read (the FIFO's stale output), which a
    consumer that stays inside the region never takes into use, and which keep one that does not (a corrupt
    row in an image) going to its own checks instead of waiting for ever. An ``end_bit`` whose word lies past
    the buffer's last (all ones) does not stop the reads: they wrap around, as before ``end_bit`` existed.
    Before its first restart it reads nothing (and offers only unread words).

    Parameters
    ----------
    addr_width : int
        Width of the global buffer address.
    depth : int
        FIFO depth in words (>= 2 keeps one read in flight while the consumer pops one a cycle).

    Members
    -------
    start, base, end_bit : In
        Restart at ``base`` (one-cycle pulse), reading up to the word that holds bit ``end_bit - 1``.
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
        self._addr_width = addr_width
        super().__init__({
            "start": In(1),
            "base": In(addr_width),
            "end_bit": In(addr_width + WORD_SHIFT, init=(1 << (addr_width + WORD_SHIFT)) - 1),  # no end
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
        # The region's end word, ceil(end_bit / 32), registered at the restart, and whether a word of the region
        # is left to read (a register: no comparator before the request, nor before ``o.valid``, which the row
        # decoder's window loop reads).
        end = Signal(self._addr_width + 1)
        more = Signal()  # (no read before the first restart)
        end_next = Signal.like(end)
        m.d.comb += end_next.eq((self.end_bit + (WORD_BITS - 1))[WORD_SHIFT:WORD_SHIFT + self._addr_width + 1])
        m.d.comb += [
            occupancy.eq(fifo.level + inflight - (fifo.r_rdy & self.o.ready)),
            bus.req.eq(~self.start & (occupancy < self._depth) & more),
            bus.addr.eq(addr),
            fifo.w_data.eq(bus.data),
            fifo.w_en.eq(inflight),
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy | (~self.start & ~more & ~inflight)),
            fifo.r_en.eq(self.o.ready),
        ]
        m.d.sync += inflight.eq(bus.req & bus.grant & ~self.start)
        with m.If(self.start):
            m.d.sync += [addr.eq(self.base), end.eq(end_next), more.eq(self.base != end_next)]
        with m.Elif(bus.req & bus.grant):
            m.d.sync += [addr.eq(addr + 1), more.eq((addr + 1)[:self._addr_width] != end)]
        return m
