"""Requantizer: class sums of one output -> the next layer's PACT code (or a class score).

Implements :func:`model.export.golden.combine` and :func:`model.export.golden.requantize` bit for bit, for DoReFa and
signed layers, as a four-stage pipeline that accepts one output per cycle:

1. ``R_m * S_m`` as shift-and-add of the repeated-code constants (``0x11111111`` is eight shifted copies),
   ``A = sum_m A_m`` and ``D * A = (A << 32) - A``, and for a signed layer the correction
   ``sum_m R_m A_m``, by Horner's rule on ``R_4 = 17 R_8``, ``R_8 = 257 R_16``, ``R_16 = 65537 R_32``
   (six adders instead of fourteen): no multiplier needed for the class constants;
2. ``acc = 2 * sum_m R_m S_m - (D * A [+ sum_m R_m A_m])`` (exact), then ``t = acc >> ACC_SHIFT`` (floor);
3. ``t * M`` on DSP48E1s (``T_BITS`` x 18 bits signed), registered;
4. ``y = (t * M + B + 2^(S-1)) >> S`` (round half up), then clamp to ``[0, 2^out_bits - 1]`` or saturate
   to int32 for the last layer.

Every stage's width is derived, not written: from the largest row sums the lane's layout can carry
(:data:`~hw.core.mac_lane.SUM_BITS`, every field at its maximum, which is more than the contract allows),
and from the named bounds of the integer contract (:data:`~model.export.golden.ACC_SHIFT`,
:data:`~model.export.golden.MULT_BITS`, :data:`~model.export.golden.MAX_SHIFT`, the 64-bit ``bias`` field of
the image). So the pipeline computes the formula exactly for anything its inputs can hold;
``tests/hw/core/test_requant.py`` checks each width against the contract's bounds
(``model/export/golden.py``: ``ACC_BOUND`` .. ``ROUND_BOUND``).
"""

import itertools

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core.image_layout import PARAM_RECORD_LAYOUT
from hw.core.mac_lane import ACT_SUM_BITS, ROW_SUMS_LAYOUT, SUM_BITS
from model.export.format import PARAMS, WORD_BITS
from model.export.golden import ACC_SHIFT, CLASSES, INT32_MAX, INT32_MIN, MAX_ACT_BITS, MAX_SHIFT, MULT_BITS, D, R

#: Bits of the requant offset ``B`` as the image stores it (the hardware takes the whole field).
PARAM_BIAS_BITS = PARAMS["bias"].width
#: One output's requant parameters: ``M`` (the low :data:`MULT_BITS` of its field) and ``B``.
PARAM_LAYOUT = data.StructLayout({"mult": unsigned(MULT_BITS), "bias": signed(PARAM_BIAS_BITS)})

REQUANT_IN_LAYOUT = data.StructLayout({"sums": ROW_SUMS_LAYOUT, "param": PARAM_LAYOUT})


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


#: Largest ``sum_m R_m S_m`` and ``D A + sum_m R_m A_m`` the row-sum layout can carry.
SCALED_MAX = sum(R[m] * ((1 << SUM_BITS[m]) - 1) for m in CLASSES)
OFFSET_MAX = D * len(CLASSES) * ((1 << ACT_SUM_BITS) - 1) + class_weighted_sum(
    dict.fromkeys(CLASSES, (1 << ACT_SUM_BITS) - 1))
#: Stage widths (module docstring): unsigned ``sum_m R_m S_m`` and offset; signed ``acc`` (from
#: ``-OFFSET_MAX`` to ``2 SCALED_MAX``), ``t``, ``t M`` and ``t M + B + 2^(S-1)``.
SCALED_BITS = SCALED_MAX.bit_length()
OFFSET_BITS = OFFSET_MAX.bit_length()
ACC_BITS = max(SCALED_BITS + 1, OFFSET_BITS) + 1
T_BITS = ACC_BITS - ACC_SHIFT
PRODUCT_BITS = T_BITS + MULT_BITS + 1
ROUND_BITS = max(PRODUCT_BITS, PARAM_BIAS_BITS, MAX_SHIFT) + 2


class Requantizer(wiring.Component):
    """Fixed-point requantization of one output row per cycle, with back-pressure.

    Members
    -------
    shift : In(range(MAX_SHIFT + 1))
        Requant shift ``S`` of the layer, 1 .. ``MAX_SHIFT`` (held while the layer runs).
    out_bits : In(range(MAX_ACT_BITS + 1))
        Output code width, 0 for signed scores (the last layer's, saturated to int32).
    signed_layer : In(1)
        The layer's weight mode: 0 DoReFa, 1 signed offset-binary codes (held while the layer runs).
    i : In(stream.Signature(REQUANT_IN_LAYOUT))
    o : Out(stream.Signature(signed(32)))
        Codes (zero-extended) or scores.
    """

    shift: In(range(MAX_SHIFT + 1))
    out_bits: In(range(MAX_ACT_BITS + 1))
    signed_layer: In(1)
    i: In(stream.Signature(REQUANT_IN_LAYOUT))
    o: Out(stream.Signature(signed(32)))

    #: Pipeline stages from accepting a row's sums to its output (the four of the module docstring).
    latency = 4

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        # Stage 1: class constants by shift-and-add.
        v1 = Signal()
        scaled = Signal(unsigned(SCALED_BITS))
        offset = Signal(unsigned(OFFSET_BITS))  # D * A, plus sum_m R_m A_m for a signed layer
        mult1 = Signal(MULT_BITS)
        bias1 = Signal(signed(PARAM_BIAS_BITS))
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
        t2 = Signal(signed(T_BITS))
        mult2 = Signal(MULT_BITS)
        bias2 = Signal(signed(PARAM_BIAS_BITS))
        acc = Signal(signed(ACC_BITS))
        m.d.comb += acc.eq((scaled << 1) - offset)
        # Stage 3: DSP multiply.
        v3 = Signal()
        prod = Signal(signed(PRODUCT_BITS))
        bias3 = Signal(signed(PARAM_BIAS_BITS))
        # Stage 4: round, shift, clamp.
        half = Signal(MAX_SHIFT)  # 2^(S-1)
        m.d.comb += half.eq((Const(1, 1) << self.shift)[1:])
        rounded = Signal(signed(ROUND_BITS))
        m.d.comb += rounded.eq(prod + bias3 + half)
        y = Signal(signed(ROUND_BITS))
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
    """Assembles each row's requant parameters from its record of ``PARAMS.words`` buffer words.

    The record's layout (``M``, then ``B`` low and high word) comes from the field table
    (:data:`~hw.core.image_layout.PARAM_RECORD_LAYOUT`, docs/image_format.md); ``M`` keeps the low
    :data:`MULT_BITS` of its field (the image holds no more).

    Members
    -------
    i : In(stream.Signature(32))
        The layer's parameter words in order.
    o : Out(stream.Signature(PARAM_LAYOUT))
    """

    i: In(stream.Signature(WORD_BITS))
    o: Out(stream.Signature(PARAM_LAYOUT))

    def elaborate(self, platform):
        m = Module()
        last = PARAMS.words - 1
        part = Signal(range(PARAMS.words))
        head = Signal(WORD_BITS * last)  # the record's words before its last
        record = data.View(PARAM_RECORD_LAYOUT, Cat(head, self.i.payload))
        m.d.comb += self.i.ready.eq((part != last) | ~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            with m.If(part == last):
                m.d.sync += [
                    self.o.payload.mult.eq(record.mult),
                    self.o.payload.bias.eq(record.bias),
                    self.o.valid.eq(1),
                    part.eq(0),
                ]
            with m.Else():
                m.d.sync += [head.word_select(part, WORD_BITS).eq(self.i.payload), part.eq(part + 1)]
        return m
