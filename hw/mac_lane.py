"""MAC lane: DSP48E1 products of weight codes and activation codes, summed per bit-width class.

One lane takes one non-zero weight a cycle. The unsigned product ``q * u`` of a weight code (up to 32 bits)
and an activation code (up to 8 bits) is split in two 16 x 8 products, each a DSP48E1 multiply (a product
of 24 bits, above Yosys' 9-bit threshold for DSP mapping), so a 32-bit weight costs no extra cycle; a
narrower weight leaves the upper multiplier idle. The products go to one of four exact accumulators, one
per width class, and the activation codes to the sum ``A`` (model/golden.py): the class constants are
applied once per output by :mod:`hw.requant`, never per multiply.
"""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from model.golden import CLASSES, MAX_ACT_BITS, MAX_FAN_IN

from .weight_decoder import CODE_OF_WIDTH

#: Bits of each class accumulator: max code * max activation * max fan-in, exactly.
SUM_BITS = {m: (((1 << m) - 1) * ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN).bit_length() for m in CLASSES}
ACT_SUM_BITS = (((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN).bit_length()

OPERAND_LAYOUT = data.StructLayout({
    "code": unsigned(3),
    "q": unsigned(32),
    "u": unsigned(MAX_ACT_BITS),
    "row_end": unsigned(1),
})

ROW_SUMS_LAYOUT = data.StructLayout({
    **{f"s{m}": unsigned(SUM_BITS[m]) for m in CLASSES},
    "a": unsigned(ACT_SUM_BITS),
})


class MacLane(wiring.Component):
    """Per-class multiply-accumulate over one output row at a time.

    Latency from an operand to the row sums it closes: :attr:`latency` cycles.

    Members
    -------
    i : In(stream.Signature(OPERAND_LAYOUT))
        Weight code (width code 0 = no weight, only a row end), activation code, row end flag.
    o : Out(stream.Signature(ROW_SUMS_LAYOUT))
        The exact class sums ``S_4 .. S_32`` and ``A`` of each row.
    """

    i: In(stream.Signature(OPERAND_LAYOUT))
    o: Out(stream.Signature(ROW_SUMS_LAYOUT))

    latency = 2

    def elaborate(self, platform):
        m = Module()

        # Stage 1: the two DSP multiplies (operands straight from the input, product registered: DSP M reg).
        p_lo = Signal(16 + MAX_ACT_BITS)
        p_hi = Signal(16 + MAX_ACT_BITS)
        s1_valid = Signal()
        s1_code = Signal(3)
        s1_u = Signal(MAX_ACT_BITS)
        s1_end = Signal()

        s2_take = Signal()  # stage 2 takes stage 1's operand this cycle
        out_free = Signal()
        m.d.comb += [
            out_free.eq(~self.o.valid | self.o.ready),
            s2_take.eq(s1_valid & (~s1_end | out_free)),
            self.i.ready.eq(~s1_valid | s2_take),
        ]
        with m.If(self.i.ready):
            m.d.sync += [
                s1_valid.eq(self.i.valid),
                p_lo.eq(self.i.payload.q[:16] * self.i.payload.u),
                p_hi.eq(self.i.payload.q[16:] * self.i.payload.u),
                s1_code.eq(self.i.payload.code),
                s1_u.eq(self.i.payload.u),
                s1_end.eq(self.i.payload.row_end),
            ]

        # Stage 2: accumulate into the product's class; a row end hands the sums over and clears them.
        product = Signal(32 + MAX_ACT_BITS)
        m.d.comb += product.eq(p_lo + (p_hi << 16))
        sums = {c: Signal(SUM_BITS[c], name=f"sum{c}") for c in CLASSES}
        act_sum = Signal(ACT_SUM_BITS)
        nxt = {c: Signal(SUM_BITS[c], name=f"next{c}") for c in CLASSES}
        nxt_a = Signal(ACT_SUM_BITS)
        weighted = s1_code != 0
        for c in CLASSES:
            m.d.comb += nxt[c].eq(Mux(s1_code == CODE_OF_WIDTH[c], sums[c] + product, sums[c]))
        m.d.comb += nxt_a.eq(Mux(weighted, act_sum + s1_u, act_sum))

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(s2_take):
            with m.If(s1_end):
                m.d.sync += self.o.valid.eq(1)
                m.d.sync += [getattr(self.o.payload, f"s{c}").eq(nxt[c]) for c in CLASSES]
                m.d.sync += self.o.payload.a.eq(nxt_a)
                m.d.sync += [sums[c].eq(0) for c in CLASSES] + [act_sum.eq(0)]
            with m.Else():
                m.d.sync += [sums[c].eq(nxt[c]) for c in CLASSES] + [act_sum.eq(nxt_a)]
        return m
