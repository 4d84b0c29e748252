# amaranth: UnusedElaboratable=no
"""Requantizer against model.export.golden.combine + requantize (DoReFa and signed layers), and ParamReader against
the parameter words."""

import numpy as np
import pytest
import torch

from hw.core import requant as rq
from hw.core.mac_lane import ACT_SUM_BITS, SUM_BITS
from hw.core.requant import ParamReader, Requantizer, class_weighted_sum
from model.export import golden as gm
from model.export.golden import CLASSES, INT32_MAX, INT32_MIN, MAX_FAN_IN, MULT_BITS, combine, requantize
from tests.hw.stream_source import pump, simulate

MAX_U = 255  # 8-bit activations
MAX_SUM = {m: ((1 << m) - 1) * MAX_U * MAX_FAN_IN for m in CLASSES}  # a full row of one class at its maximum
MAX_A = MAX_U * MAX_FAN_IN
BIG_BIAS = (1 << 62) - 1  # the largest |B| model.export.golden.check_layer accepts




# -- Requantizer ----------------------------------------------------------------------------------------

def golden(item, shift, out_bits, signed):
    sums = {m: torch.tensor([item["sums"][f"s{m}"]], dtype=torch.int64) for m in CLASSES}
    act_sums = {m: torch.tensor([item["sums"][f"a{m}"]], dtype=torch.int64) for m in CLASSES}
    acc = combine(sums, act_sums, signed)
    p = item["param"]
    return int(requantize(acc, torch.tensor([p["mult"]]), torch.tensor([p["bias"]]), shift, out_bits)[0])


def item(s, a, mult, bias):
    """``s`` and ``a``: per-class S_m and A_m."""
    return {"sums": {**{f"s{m}": int(s[m]) for m in CLASSES}, **{f"a{m}": int(a[m]) for m in CLASSES}},
            "param": {"mult": int(mult), "bias": int(bias)}}


def one_class(m, value):
    return {c: value if c == m else 0 for c in CLASSES}


def random_sums(rng):
    """Per-class S_m and A_m of a random row (n_in up to MAX_FAN_IN), sometimes at the contract's or the
    layout's extremes (for either mode: the largest DoReFa acc is the largest signed one's neighbour)."""
    kind = rng.integers(0, 7)
    m = int(rng.choice(CLASSES))
    if kind == 0:  # a full row of one class at its maximum code: the largest acc
        return one_class(m, MAX_SUM[m]), one_class(m, MAX_A)
    if kind == 1:  # all codes 0 (DoReFa) at u = 255: the most negative acc
        return dict.fromkeys(CLASSES, 0), one_class(m, MAX_A)
    if kind == 2:  # all codes 1 (signed c = -(2^(m-1) - 1)) at u = 255: the most negative signed acc
        return one_class(m, MAX_A), one_class(m, MAX_A)
    if kind == 3:
        return dict.fromkeys(CLASSES, 0), dict.fromkeys(CLASSES, 0)
    if kind == 4:  # every field all ones: the widest the row-sum layout carries
        return ({c: (1 << SUM_BITS[c]) - 1 for c in CLASSES},
                {c: int(rng.choice([0, (1 << ACT_SUM_BITS) - 1])) for c in CLASSES})
    n_in = int(rng.integers(1, MAX_FAN_IN + 1))
    share = rng.dirichlet(np.ones(5)) * n_in  # weights per class (and pruned)
    a = {c: int(rng.integers(0, int(share[k] * MAX_U) + 1)) for k, c in enumerate(CLASSES)}
    s = {c: int(rng.integers(0, a[c] * ((1 << c) - 1) + 1)) for c in CLASSES}
    return s, a


def exact_acc(s, a, signed):
    """combine() in plain Python integers."""
    acc = 2 * sum(gm.R[c] * s[c] for c in CLASSES) - gm.D * sum(a.values())
    return acc - class_weighted_sum(a) if signed else acc


def aimed_bias(rng, s, a, mult, shift, out_bits, signed):
    """A bias that puts ``y`` near a random in-range value, often exactly on a rounding tie (or one off)."""
    t = exact_acc(s, a, signed) >> gm.ACC_SHIFT
    lo, hi = (INT32_MIN, INT32_MAX) if out_bits == 0 else (0, (1 << out_bits) - 1)
    room = (1 << max(0, 61 - shift)) - 1  # keeps |B| < 2^62
    target = int(rng.integers(max(lo, -room), min(hi, room) + 1))
    half = 1 << (shift - 1)
    delta = int(rng.choice([-half, -half - 1, -half + 1, half - 1, 0, int(rng.integers(-half, half))]))
    bias = target * (1 << shift) - t * mult + delta
    return bias if abs(bias) <= BIG_BIAS else 0


def random_batch(rng, n, out_bits, signed):
    """Items of one layer: realistic mult/bias from requant_params, edge mults and biases, and biases
    aimed at the rounding ties of in-range outputs (the clamp hides rounding errors otherwise)."""
    gain = rng.uniform(0.01, 2.0, size=n) * 15 / rng.integers(1, MAX_FAN_IN)
    mult, bias, shift = gm.requant_params(gain, rng.normal(0, 20, size=n))
    if rng.random() < 0.4:
        shift = int(rng.integers(1, 63))
    items = []
    for k in range(n):
        m, b = int(mult[k]), int(bias[k])
        if rng.random() < 0.3:
            m = int(rng.choice([0, 1, (1 << MULT_BITS) - 1, int(rng.integers(0, 1 << MULT_BITS))]))
        sums, a = random_sums(rng)
        kind = rng.random()
        if kind < 0.2:
            b = int(rng.choice([1 << 50, -(1 << 50), BIG_BIAS, -BIG_BIAS, 0, -1]))
        elif kind < 0.6:
            b = aimed_bias(rng, sums, a, m, shift, out_bits, signed)
        items.append(item(sums, a, m, b))
    return items, shift


def run_requant(batches, seed, p_gap, p_stall):
    """Each batch is (items, shift, out_bits, signed), run back to back with the pipeline drained in
    between (as the accelerator changes layers)."""
    rng = np.random.default_rng(seed)
    dut = Requantizer()
    results = []

    async def bench(ctx):
        for items, shift, out_bits, signed in batches:
            ctx.set(dut.shift, shift)
            ctx.set(dut.out_bits, out_bits)
            ctx.set(dut.signed_layer, signed)
            results.append(await pump(ctx, dut, items, len(items), rng, p_gap, p_stall, int))

    simulate(dut, bench)
    return results


def test_class_weighted_sum_is_the_class_constants():
    """Horner's rule on R_4 = 17 R_8, R_8 = 257 R_16, R_16 = 65537: sum_m R_m x_m, extremes included."""
    rng = np.random.default_rng(0)
    for x in [dict.fromkeys(CLASSES, (1 << ACT_SUM_BITS) - 1), one_class(4, 1), one_class(32, 1)] + [
            {c: int(v) for c, v in zip(CLASSES, rng.integers(0, 1 << ACT_SUM_BITS, size=4))} for _ in range(50)]:
        assert class_weighted_sum(x) == sum(gm.R[c] * x[c] for c in CLASSES)


@pytest.mark.parametrize("seed", range(4))
def test_requantizer_matches_golden(seed):
    """DoReFa and signed layers interleaved (as a network mixing them runs), random and back-pressured."""
    rng = np.random.default_rng(seed)
    batches = []
    for out_bits in (0, 1, 2, 4, 7, 8):
        for signed in (False, True):
            items, shift = random_batch(rng, 12, out_bits, signed)
            batches.append((items, shift, out_bits, signed))
    p_gap, p_stall = [(0.0, 0.0), (0.3, 0.3), (0.6, 0.2), (0.2, 0.6)][seed]
    for (items, shift, out_bits, signed), (got, _, _) in zip(batches,
                                                             run_requant(batches, seed, p_gap, p_stall)):
        want = [golden(x, shift, out_bits, signed) for x in items]
        assert got == want, f"shift {shift}, out_bits {out_bits}, signed {signed}"


def test_requantizer_signed_correction_is_applied():
    """The same sums give different codes by mode: acc differs by exactly sum_m R_m A_m."""
    s, a = {4: 0, 8: 300, 16: 0, 32: 0}, {4: 20, 8: 10, 16: 0, 32: 0}  # 20 pruned-like 4-bit q = 0 at u = 1
    items = [item(s, a, 1, 0)]
    (dorefa, _, _), (signed, _, _) = run_requant([(items, 1, 0, False), (items, 1, 0, True)], 0, 0.0, 0.0)
    assert dorefa == [golden(items[0], 1, 0, False)] and signed == [golden(items[0], 1, 0, True)]
    t_dorefa, t_signed = exact_acc(s, a, False) >> 16, exact_acc(s, a, True) >> 16
    assert exact_acc(s, a, False) - exact_acc(s, a, True) == 20 * gm.R[4] + 10 * gm.R[8]
    assert dorefa == [(t_dorefa + 1) >> 1] and signed == [(t_signed + 1) >> 1] and dorefa != signed


def test_requantizer_saturates_both_ways():
    """Scores saturate to int32 at both ends; codes clamp to [0, 2^out_bits - 1] at both ends; in both
    modes, with the signed extremes c = +-(2^(m-1) - 1) at MAX_FAN_IN inputs of u = 255."""
    top = one_class(32, MAX_SUM[32])
    zero = dict.fromkeys(CLASSES, 0)
    full = {m: one_class(m, MAX_A) for m in CLASSES}
    big = (1 << MULT_BITS) - 1
    extreme = [item(top, full[32], big, 0), item(zero, full[32], big, 0),  # DoReFa acc = +-D * 255 * 4096
               item(zero, zero, 0, BIG_BIAS), item(zero, zero, 0, -BIG_BIAS),  # bias alone
               item(zero, zero, big, 0), item(zero, one_class(8, 1), 1, 0)]  # 0, and -D >> 16 = -65536 * 1
    # Signed: q = 2^m - 1 (c = 2^(m-1) - 1) and q = 1 (c = -(2^(m-1) - 1)), every width, full rows.
    extreme += [item(one_class(m, q * MAX_A), full[m], big, 0) for m in CLASSES for q in (1, (1 << m) - 1)]
    batches = [(extreme, 1, 0, False), (extreme, 62, 0, False), (extreme, 1, 8, False), (extreme, 3, 1, False),
               (extreme, 62, 4, False), (extreme, 1, 0, True), (extreme, 62, 0, True), (extreme, 1, 8, True),
               (extreme, 20, 4, True)]
    results = run_requant(batches, 5, 0.2, 0.4)
    for (items, shift, out_bits, signed), (got, _, _) in zip(batches, results):
        want = [golden(x, shift, out_bits, signed) for x in items]
        assert got == want, f"shift {shift}, out_bits {out_bits}, signed {signed}"
    assert results[0][0][:4] == [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN]
    assert results[2][0][:4] == [255, 0, 255, 0]
    # With S = 62 the extreme acc no longer saturates: (t * M + 2^61) >> 62 with |t * M| < 2^57 is 0.
    assert results[1][0][:2] == [0, 0] and results[1][0][2:4] == [1, -1]
    # Signed extremes saturate the other way round by code: q = 1 -> most negative, q = 2^m - 1 -> positive.
    assert results[5][0][6:] == [INT32_MIN, INT32_MAX] * 4
    assert results[7][0][6:] == [0, 255] * 4


def test_requantizer_latency_and_throughput():
    rng = np.random.default_rng(8)
    items, shift = random_batch(rng, 20, 4, True)
    (got, in_cycles, out_cycles), = run_requant([(items, shift, 4, True)], 8, 0.0, 0.0)
    assert got == [golden(x, shift, 4, True) for x in items]
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + len(items)))
    assert out_cycles == [c + Requantizer.latency for c in in_cycles]


# -- ParamReader ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_param_reader_assembles_records(seed):
    rng = np.random.default_rng(100 + seed)
    mults = [0, (1 << MULT_BITS) - 1] + [int(x) for x in rng.integers(0, 1 << MULT_BITS, size=28)]
    biases = [-1, 0, -BIG_BIAS, BIG_BIAS, -(1 << 63), (1 << 63) - 1, -(1 << 32), (1 << 32) - 1]
    biases += [int(x) for x in rng.integers(-BIG_BIAS, BIG_BIAS, size=len(mults) - len(biases))]
    rng.shuffle(biases)
    words = []
    for m, b in zip(mults, biases):  # docs/image_format.md: M, then B two's complement, low word first
        words += [m, b & 0xFFFFFFFF, (b >> 32) & 0xFFFFFFFF]
    p_gap, p_stall = [(0.0, 0.0), (0.4, 0.3), (0.1, 0.7)][seed]
    dut = ParamReader()
    out = {}

    async def bench(ctx):
        out["got"], out["in"], out["out"] = await pump(
            ctx, dut, words, len(mults), np.random.default_rng(seed), p_gap, p_stall,
            lambda rec: (int(rec.mult), int(rec.bias)))

    simulate(dut, bench)
    assert out["got"] == list(zip(mults, biases))
    if p_gap == 0 and p_stall == 0:
        # One word a cycle, a record every third cycle, no bubble.
        assert out["in"] == list(range(out["in"][0], out["in"][0] + len(words)))


def test_stage_widths_hold_the_contract_bounds():
    """Each stage holds the bound model/export/golden.py proves for every layer check_layer accepts (and the
    row-sum layout's own maxima), so golden and RTL compute the same integers."""
    assert rq.SCALED_MAX < 1 << rq.SCALED_BITS and rq.OFFSET_MAX < 1 << rq.OFFSET_BITS
    # acc ranges from -OFFSET_MAX to 2 SCALED_MAX (signed ACC_BITS), and covers the contract's |acc|.
    assert -(1 << (rq.ACC_BITS - 1)) <= -rq.OFFSET_MAX and 2 * rq.SCALED_MAX < 1 << (rq.ACC_BITS - 1)
    assert gm.ACC_BOUND <= min(rq.OFFSET_MAX, 2 * rq.SCALED_MAX)
    # t = acc >> ACC_SHIFT, signed T_BITS; t * M signed PRODUCT_BITS.
    assert gm.T_BOUND < 1 << (rq.T_BITS - 1)
    t_max = 1 << (rq.T_BITS - 1)
    assert t_max * ((1 << MULT_BITS) - 1) <= 1 << (rq.PRODUCT_BITS - 1)
    # t M + B + 2^(S-1) for the hardware's whole ranges (64-bit B field, S <= MAX_SHIFT), signed ROUND_BITS.
    top = (1 << (rq.PRODUCT_BITS - 1)) + (1 << (rq.PARAM_BIAS_BITS - 1)) + (1 << (gm.MAX_SHIFT - 1))
    assert top <= 1 << (rq.ROUND_BITS - 1)
    # The golden model's own int64 bound, and the parameter ranges it admits, fit the hardware ports.
    assert gm.ROUND_BOUND <= gm.INT64_MAX and gm.BIAS_BITS <= rq.PARAM_BIAS_BITS
    assert Requantizer().shift.shape().width >= gm.MAX_SHIFT.bit_length()


def test_requantizer_at_the_contract_extremes():
    """The extreme parameters check_layer admits (M = 2^17 - 1, B = -2^62 and 2^62 - 1, S = 1 and 62) with
    the largest |acc| of either sign, against plain Python integers (no int64 anywhere)."""
    zero = dict.fromkeys(CLASSES, 0)
    top = one_class(32, MAX_SUM[32])
    full = one_class(32, MAX_A)
    big = (1 << MULT_BITS) - 1
    items = [item(s, a, big, b) for s, a in ((top, full), (zero, full)) for b in (gm.BIAS_MIN, gm.BIAS_MAX, 0)]
    batches = [(items, shift, out_bits, signed) for shift in (1, 62) for out_bits in (0, 8)
               for signed in (False, True)]
    for (its, shift, out_bits, signed), (got, _, _) in zip(batches, run_requant(batches, 3, 0.2, 0.2)):
        want = []
        for x in its:
            s, a = ({m: x["sums"][f"s{m}"] for m in CLASSES}, {m: x["sums"][f"a{m}"] for m in CLASSES})
            t = exact_acc(s, a, signed) >> gm.ACC_SHIFT
            y = (t * x["param"]["mult"] + x["param"]["bias"] + (1 << (shift - 1))) >> shift
            lo, hi = (INT32_MIN, INT32_MAX) if out_bits == 0 else (0, (1 << out_bits) - 1)
            want.append(min(max(y, lo), hi))
        assert got == want == [golden(x, shift, out_bits, signed) for x in its]
