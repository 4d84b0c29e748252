"""The array's output pipeline: one pixel's combined sums -> its next-layer code or class score, 8 stages.

An engine of the array (``docs/array_design.md``, decision 5) ends each output channel with, per pixel, the
class-weighted signed sum ``X = sum_m R_m sum v u`` of its lanes' weights ``v = 2 q - D_m - s``
(``hw/dsp/pass_lane.py``; its combine stage forms it segment by segment), which is golden's
:func:`~model.export.golden.combine`, ``2 sum_m R_m S_m - D A - sum_m R_m A_m`` (the last term in a signed
layer only), already. This pipeline computes :func:`~model.export.golden.requantize`, or
:func:`~model.export.golden_conv.requantize_residual` when the layer adds a shortcut, bit for bit:

  ``acc = X + 2 R_8 k`` (``k = 0`` but in a vertical layer, below),
  ``t = acc >> ACC_SHIFT`` (floor),
  ``y = (t M + B + (r M_r << ACC_SHIFT) + 2^(S-1)) >> S`` (round half up; ``r M_r = 0`` without a shortcut),

then ``clamp(y, 0, 2^out_bits - 1)``, or for the last layer (``out_bits = 0``) saturation to int32.

**Compensation of a vertical layer** (``model/export/golden_vertical.py``, Eq. 6): at width ``i`` the layer's
effective codes are ``e = ±(2^(t+1) c + K_t)``, ``K_t = 2^t - 1``, in class 8. The engine's lanes only see
the non-zero ``c`` (``hw/array/plane_decoder.py``), so the same ``K_t`` for every weight enters here, once per
pixel: ``k = ±K_t U`` with ``U`` the pixel's activation sum over the whole patch (``u``, from the patch
loader) and ``±`` the row's ``negate``; in golden's signed combine a class-8 code contributes
``2 R_8 e u``, so the term is ``2 R_8 k`` (``comp_shift = t``, 0: no term).

Unlike :class:`hw.core.requant.Requantizer` (a 66-bit add and a variable shift in one stage), every stage
here holds one adder or one shift level group, so that the array reaches 100 MHz on the XC7Z020 (-1):

1. ``X`` registered; ``r M_r`` (8 x 17 bits, LUTs or a DSP); ``K_t U = (U << t) - U``;
2. ``X`` again, ``2^(S-1)``; ``2 R_8 K_t U`` (shift-adds: ``R_8 = 1 + 2^8 + 2^16 + 2^24``);
3. ``t = (acc ± 2 R_8 K_t U) >> ACC_SHIFT`` (one addition, then wiring) into the multiplier's input registers;
4. ``t M`` (DSP48E1s, registered);
5. ``t M + B`` and ``(r M_r << ACC_SHIFT) + 2^(S-1)``;
6. their sum;
7. ``>> S`` (a barrel shifter);
8. the clamp or the int32 saturation.

Widths come from the named bounds of the integer contract (``model/export/golden.py``, bounds 1-5 and 8):
each weight adds ``R_m v u`` with ``-(D + R_m) <= R_m v <= D`` (``R_m (2^m - 1) = D``), and a part of that term
which the combine holds on its own (a 32-bit signed weight's chunk passes: up to ``(D + 2^16 - 1) u``) stays
within ``(D + R_4) u`` too (``2^16 - 1 < R_4``), so ``|X| <= (D + R_4) ACT_SUM_BOUND`` (:data:`X_BOUND`), for the
row's whole sum and for any part of it that the combine holds; every stage is sized from it (:data:`X_BITS`
.. :data:`ROUND_BITS`), and ``tests/hw/array/test_requant.py`` checks the pipeline at those extremes against golden.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from model.export.format import RES_PARAMS
from model.export.golden import (
    ACC_SHIFT,
    INT32_MAX,
    INT32_MIN,
    MAX_ACT_BITS,
    MAX_FAN_IN,
    MAX_SHIFT,
    MULT_BITS,
    D,
    R,
)

#: Largest activation sum of one output: ``MAX_FAN_IN`` codes of ``MAX_ACT_BITS`` bits (bound 6 keeps the FC
#: after a global pool inside it too).
ACT_SUM_BOUND = ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN
#: Bits of an activation sum (the patch loader's ``U`` of a compensated vertical layer).
A_BITS = ACT_SUM_BOUND.bit_length()
#: ``|X|``, and any partial sum of it, is at most this (module docstring); ``X`` is two's complement.
X_BOUND = (D + R[4]) * ACT_SUM_BOUND
X_BITS = X_BOUND.bit_length() + 1
# (golden's ACC_BOUND, D ACT_SUM_BOUND, bounds DoReFa's |acc|; a signed layer's 4-bit code 0 reaches (D + R_4) u)
#: Largest ``t`` of a compensated layer: class-8 codes hold widths up to 6 (``inner_class``) over a basic layer
#: of at least 1 bit, so ``t = top - i <= 5`` and ``K_t <= 31``.
MAX_COMP_SHIFT = 5
COMP_CLASS = 8
#: ``K_t U`` and ``2 R_8 K_t U``.
KU_BITS = (((1 << MAX_COMP_SHIFT) - 1) * ACT_SUM_BOUND).bit_length()
COMP_BITS = (2 * R[COMP_CLASS] * ((1 << MAX_COMP_SHIFT) - 1) * ACT_SUM_BOUND).bit_length()
#: ``acc = X ± 2 R_8 K_t U`` (signed).
ACC_BITS = max(X_BITS, COMP_BITS + 1) + 1
T_BITS = ACC_BITS - ACC_SHIFT
PRODUCT_BITS = T_BITS + MULT_BITS + 1
#: The offset ``B`` as the image stores it (64-bit two's complement field).
BIAS_BITS = RES_PARAMS["bias"].width
#: ``r M_r << ACC_SHIFT`` (unsigned).
RES_TERM_BITS = (((1 << MAX_ACT_BITS) - 1) * ((1 << MULT_BITS) - 1) << ACC_SHIFT).bit_length()
#: ``(r M_r << ACC_SHIFT) + 2^(S-1)``, and the rounded sum ``t M + B + that``.
OFFSET_BITS = max(RES_TERM_BITS, MAX_SHIFT - 1) + 1
ROUND_BITS = max(PRODUCT_BITS, BIAS_BITS, OFFSET_BITS) + 2


def input_layout(tag_bits: int) -> data.StructLayout:
    """One pixel's sums, its shortcut code, its channel's parameters, and a tag carried to the output."""
    return data.StructLayout({
        "x": signed(X_BITS),
        "r": unsigned(MAX_ACT_BITS),
        "mult": unsigned(MULT_BITS),
        "res_mult": unsigned(MULT_BITS),
        "bias": signed(BIAS_BITS),
        "u": unsigned(A_BITS),  # the pixel's activation sum over the whole patch (compensation only)
        "negate": unsigned(1),  # the row's codes are negated: so is the compensation
        "tag": unsigned(tag_bits),
    })


def output_layout(tag_bits: int) -> data.StructLayout:
    """A code (zero-extended) or a class score, with the input's tag."""
    return data.StructLayout({"value": signed(32), "tag": unsigned(tag_bits)})


class PixelRequantizer(wiring.Component):
    """Requantization of one pixel per cycle in :attr:`latency` stages, with back-pressure.

    Parameters
    ----------
    tag_bits : int
        Width of the tag carried from input to output (channel and pixel of the value).
    compensate : bool
        Build the vertical layers' compensation (``K_t U``, ``2 R_8 K_t U`` and the ``±`` add of stage 3).
        Without it (an array built without the version 4 path) ``comp_shift``, ``u`` and ``negate`` are not
        read and stage 3 takes ``acc`` as it is: about 350 LUT and 200 FF less.

    Members
    -------
    shift : In(range(MAX_SHIFT + 1))
        ``S`` of the layer, 1..``MAX_SHIFT`` (hold while the layer's pixels are in the pipeline).
    out_bits : In(range(MAX_ACT_BITS + 1))
        Output code width, 0 for int32 scores.
    residual : In(1)
        Add ``(r M_r) << ACC_SHIFT``.
    comp_shift : In(range(MAX_COMP_SHIFT + 1))
        ``t`` of a compensated vertical layer: add ``± 2 R_8 (2^t - 1) u``; 0 adds nothing.
    i : In(stream.Signature(input_layout(tag_bits)))
    o : Out(stream.Signature(output_layout(tag_bits)))
    """

    #: Stages from accepting a pixel to its output (module docstring).
    latency = 8

    def __init__(self, tag_bits: int = 1, compensate: bool = True):
        if not isinstance(tag_bits, int) or tag_bits < 1:
            raise ValueError(f"tag_bits must be an integer >= 1, not {tag_bits!r}")
        self._tag_bits = tag_bits
        self._compensate = bool(compensate)
        super().__init__({
            "shift": In(range(MAX_SHIFT + 1)),
            "out_bits": In(range(MAX_ACT_BITS + 1)),
            "residual": In(1),
            "comp_shift": In(range(MAX_COMP_SHIFT + 1)),
            "i": In(stream.Signature(input_layout(tag_bits))),
            "o": Out(stream.Signature(output_layout(tag_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        p = self.i.payload

        def reg(shape, name, value):
            """A pipeline register loaded with ``value`` whenever the pipeline advances."""
            r = Signal(shape, name=name)
            with m.If(advance):
                m.d.sync += r.eq(value)
            return r

        valid = [self.i.valid]
        for k in range(1, self.latency):
            valid.append(reg(1, f"v{k}", valid[-1]))
        tags = [p.tag]
        for k in range(1, self.latency):
            tags.append(reg(self._tag_bits, f"tag{k}", tags[-1]))

        # Stage 1.
        x1 = reg(signed(X_BITS), "x1", p.x)
        rm1 = reg(unsigned(MAX_ACT_BITS + MULT_BITS), "rm1", Mux(self.residual, p.r * p.res_mult, 0))
        mult1 = reg(unsigned(MULT_BITS), "mult1", p.mult)
        bias1 = reg(signed(BIAS_BITS), "bias1", p.bias)
        # Stage 2.
        acc2 = reg(signed(X_BITS), "acc2", x1)
        mult2 = reg(unsigned(MULT_BITS), "mult2", mult1)
        bias2 = reg(signed(BIAS_BITS), "bias2", bias1)
        rm2 = reg(unsigned(MAX_ACT_BITS + MULT_BITS), "rm2", rm1)
        half2 = reg(unsigned(MAX_SHIFT), "half2", (Const(1, 1) << self.shift)[1:])  # 2^(S-1)
        # Stage 3: the compensation (stages 1 and 2 form it), then the multiplier's input registers.
        total = Signal(signed(ACC_BITS), name="acc_comp")
        if self._compensate:
            ku1 = reg(unsigned(KU_BITS), "ku1", (p.u << self.comp_shift) - p.u)  # K_t U (0 at t = 0)
            ng1 = reg(1, "negate1", p.negate)
            r8 = sum(ku1 << (8 * k) for k in range(4))  # R_8 K_t U
            comp2 = reg(unsigned(COMP_BITS), "comp2", r8 << 1)
            ng2 = reg(1, "negate2", ng1)
            m.d.comb += total.eq(Mux(ng2, acc2 - comp2, acc2 + comp2))
        else:
            m.d.comb += total.eq(acc2)
        t3 = reg(signed(T_BITS), "t3", total >> ACC_SHIFT)
        mult3 = reg(signed(MULT_BITS + 1), "mult3", mult2)
        bias3 = reg(signed(BIAS_BITS), "bias3", bias2)
        rm3 = reg(unsigned(MAX_ACT_BITS + MULT_BITS), "rm3", rm2)
        half3 = reg(unsigned(MAX_SHIFT), "half3", half2)
        # Stage 4: the product.
        prod4 = reg(signed(PRODUCT_BITS), "prod4", t3 * mult3)
        bias4 = reg(signed(BIAS_BITS), "bias4", bias3)
        res4 = reg(unsigned(OFFSET_BITS), "res4", (rm3 << ACC_SHIFT) + half3)
        # Stage 5 and 6: the round-half-up sum.
        sum5 = reg(signed(ROUND_BITS), "sum5", prod4 + bias4)
        res5 = reg(unsigned(OFFSET_BITS), "res5", res4)
        sum6 = reg(signed(ROUND_BITS), "sum6", sum5 + res5)
        # Stage 7: the shift.
        y7 = reg(signed(ROUND_BITS), "y7", sum6 >> self.shift)
        # Stage 8: clamp or saturate, into the output register.
        hi = Signal(signed(33))
        lo = Signal(signed(33))
        m.d.comb += [hi.eq(Mux(self.out_bits == 0, INT32_MAX, (Const(1, 9) << self.out_bits) - 1)),
                     lo.eq(Mux(self.out_bits == 0, INT32_MIN, 0))]
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid[-1]),
                         self.o.payload.value.eq(Mux(y7 > hi, hi, Mux(y7 < lo, lo, y7))),
                         self.o.payload.tag.eq(tags[-1])]
        return m
