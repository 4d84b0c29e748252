"""Requantizer: class sums of one output -> the next layer's PACT code (or a class score).

Implements :func:`model.export.golden.combine` and :func:`model.export.golden.requantize` bit for bit, for DoReFa and
signed layers, as a four-stage pipeline that accepts one output per cycle:

1. ``R_m * S_m`` as shift-and-add of the repeated-code constants (``0x11111111`` is eight shifted copies),
   ``A = sum_m A_m`` and ``D * A = (A << 32) - A``, and for a signed layer the correction
   ``sum_m R_m A_m``, by Horner's rule on ``R_4 = 17 R_8``, ``R_8 = 257 R_16``, ``R_16 = 65537 R_32``
   (six adders instead of fourteen): no multiplier needed for the class constants;
2. ``acc = 2 * sum_m R_m S_m - (D * A [+ sum_m R_m A_m])`` (exact, < 2^53 in magnitude), then
   ``t = acc >> ACC_SHIFT`` (floor);
3. ``t * M`` on DSP48E1s (41 x 18 bits signed), registered;
4. ``y = (t * M + B + 2^(S-1)) >> S`` (round half up), then clamp to ``[0, 2^out_bits - 1]`` or saturate
   to int32 for the last layer.
"""

import itertools

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from model.export.golden import ACC_SHIFT, CLASSES, INT32_MAX, INT32_MIN, MULT_BITS, R

from hw.core.mac_lane import ROW_SUMS_LAYOUT

PARAM_LAYOUT = data.StructLayout({"mult": unsigned(MULT_BITS), "bias": signed(64)})

REQUANT_IN_LAYOUT = data.StructLayout({"sums": ROW_SUMS_LAYOUT, "param": PARAM_LAYOUT})

ACC_BITS = 60  # signed; |acc| < 2^57 for n_in <= MAX_FAN_IN and 8-bit activations (model/export/golden.py)


def repeat_shifts(m: int) -> list[int]:
    """Shifts whose sum of ``x << s`` is ``x * R_m`` (``R_m`` is 1 every ``m`` bits of a 32-bit word)."""
    shifts = [s for s in range(0, 32, m)]
    assert sum(1 << s for s in shifts) == R[m]
    return shifts


def class_weighted_sum(values: dict):
    """``sum_m R_m * values[m]`` by Horner's rule: ``R_m = (2^m + 1) R_2m``, so each step is two adders.

    Works on Amaranth values and on Python ints alike (the tests check it on ints).
    """
    total = values[CLASSES[0]]
    for narrow, wide in itertools.pairwise(CLASSES):
        assert R[narrow] == ((1 << narrow) + 1) * R[wide]
        total = values[wide] + total + (total << narrow)
    return total


class Requantizer(wiring.Component):
    """Fixed-point requantization of one output row per cycle, with back-pressure.

    Members
    -------
    shift : In(range(64))
        Requant shift ``S`` of the layer (held while the layer runs).
    out_bits : In(4)
        Output code width, 0 for the last layer (signed scores).
    signed_layer : In(1)
        The layer's weight mode: 0 DoReFa, 1 signed offset-binary codes (held while the layer runs).
    i : In(stream.Signature(REQUANT_IN_LAYOUT))
    o : Out(stream.Signature(signed(32)))
        Codes (zero-extended) or scores.
    """

    shift: In(range(64))
    out_bits: In(4)
    signed_layer: In(1)
    i: In(stream.Signature(REQUANT_IN_LAYOUT))
    o: Out(stream.Signature(signed(32)))

    latency = 4

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        # Stage 1: class constants by shift-and-add.
        v1 = Signal()
        scaled = Signal(unsigned(ACC_BITS))
        offset = Signal(unsigned(ACC_BITS))  # D * A, plus sum_m R_m A_m for a signed layer
        mult1 = Signal(MULT_BITS)
        bias1 = Signal(signed(64))
        sums = self.i.payload.sums
        terms = []
        for c in CLASSES:
            s = getattr(sums, f"s{c}")
            terms += [s << k for k in repeat_shifts(c)]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        acts = {c: getattr(sums, f"a{c}") for c in CLASSES}
        act_total = sum(acts.values())
        correction = Mux(self.signed_layer, class_weighted_sum(acts), 0)
        # Stage 2: exact accumulator and floor shift.
        v2 = Signal()
        t2 = Signal(signed(ACC_BITS - ACC_SHIFT))
        mult2 = Signal(MULT_BITS)
        bias2 = Signal(signed(64))
        acc = Signal(signed(ACC_BITS + 1))
        m.d.comb += acc.eq((scaled << 1) - offset)
        # Stage 3: DSP multiply.
        v3 = Signal()
        prod = Signal(signed(ACC_BITS - ACC_SHIFT + MULT_BITS + 1))
        bias3 = Signal(signed(64))
        # Stage 4: round, shift, clamp.
        rounded = Signal(signed(66))
        m.d.comb += rounded.eq(prod + bias3 + (Const(1, 65) << self.shift)[1:])
        y = Signal(signed(66))
        m.d.comb += y.eq(rounded >> self.shift)
        hi = Signal(signed(33))
        lo = Signal(signed(33))
        m.d.comb += [
            hi.eq(Mux(self.out_bits == 0, INT32_MAX, (1 << self.out_bits) - 1)),
            lo.eq(Mux(self.out_bits == 0, INT32_MIN, 0)),
        ]

        with m.If(advance):
            m.d.sync += [
                v1.eq(self.i.valid),
                scaled.eq(total),
                offset.eq((act_total << 32) - act_total + correction),
                mult1.eq(self.i.payload.param.mult),
                bias1.eq(self.i.payload.param.bias),
                v2.eq(v1),
                t2.eq(acc >> ACC_SHIFT),
                mult2.eq(mult1),
                bias2.eq(bias1),
                v3.eq(v2),
                prod.eq(t2 * mult2),
                bias3.eq(bias2),
                self.o.valid.eq(v3),
                self.o.payload.eq(Mux(y > hi, hi, Mux(y < lo, lo, y))),
            ]
        return m


class ParamReader(wiring.Component):
    """Assembles each row's requant parameters from three buffer words: ``M``, ``B`` low, ``B`` high.

    Members
    -------
    i : In(stream.Signature(32))
        The layer's parameter words in order (docs/image_format.md).
    o : Out(stream.Signature(PARAM_LAYOUT))
    """

    i: In(stream.Signature(32))
    o: Out(stream.Signature(PARAM_LAYOUT))

    def elaborate(self, platform):
        m = Module()
        part = Signal(range(3))
        mult = Signal(MULT_BITS)
        bias_lo = Signal(32)
        m.d.comb += self.i.ready.eq((part != 2) | ~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready), m.Switch(part):
            with m.Case(0):
                m.d.sync += [mult.eq(self.i.payload), part.eq(1)]
            with m.Case(1):
                m.d.sync += [bias_lo.eq(self.i.payload), part.eq(2)]
            with m.Case(2):
                m.d.sync += [
                    self.o.payload.mult.eq(mult),
                    self.o.payload.bias.eq(Cat(bias_lo, self.i.payload)),
                    self.o.valid.eq(1),
                    part.eq(0),
                ]
        return m
