# amaranth: UnusedElaboratable=no
"""The device under test of the transactor tests: a small stream FIFO that counts its own transfers and can
break the stream protocol on request."""

from amaranth.back import verilog
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

#: A struct payload with a signed field, so that packing, sign extension and field order are exercised.
PAYLOAD = data.StructLayout({"value": signed(12), "tag": unsigned(4)})
DEPTH = 4
TOPLEVEL = "stream_fifo"
#: ``fault`` bits: 0 is a correct FIFO.
DROP_VALID = 0b01  # o.valid drops on every other cycle of a stall, before the beat is taken
CHANGE_PAYLOAD = 0b10  # o.payload flips a bit on every other cycle of a stall


class StreamFifo(wiring.Component):
    """A :data:`DEPTH`-deep FIFO from ``i`` to ``o`` of :data:`PAYLOAD` beats.

    Members
    -------
    i : In(stream.Signature(PAYLOAD))
    o : Out(stream.Signature(PAYLOAD))
    fault : In(2)
        :data:`DROP_VALID` and :data:`CHANGE_PAYLOAD` violate the protocol while ``o`` is stalled; neither
        changes what is transferred.
    i_count, o_count : Out(16)
        Transfers on ``i`` and ``o`` so far, counted by the hardware: the testbench's reference for what
        its source and sink saw.
    """

    i: In(stream.Signature(PAYLOAD))
    o: Out(stream.Signature(PAYLOAD))
    fault: In(2)
    i_count: Out(16)
    o_count: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFO(width=PAYLOAD.size, depth=DEPTH)
        phase = Signal()  # toggles every cycle: the faults act on every other stalled cycle
        m.d.sync += phase.eq(~phase)
        stalled_phase = ~self.o.ready & phase
        m.d.comb += [
            fifo.w_data.eq(self.i.payload),
            fifo.w_en.eq(self.i.valid),
            self.i.ready.eq(fifo.w_rdy),
            self.o.valid.eq(fifo.r_rdy & ~(self.fault[0] & stalled_phase)),
            self.o.payload.as_value().eq(fifo.r_data ^ Mux(self.fault[1] & stalled_phase, 1, 0)),
            fifo.r_en.eq(self.o.ready),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += self.i_count.eq(self.i_count + 1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o_count.eq(self.o_count + 1)
        return m


def write_fifo_verilog(path):
    """Write the Verilog of :class:`StreamFifo` (top module :data:`TOPLEVEL`) to ``path``; return it."""
    path.write_text(verilog.convert(StreamFifo(), name=TOPLEVEL, emit_src=False))
    return path
