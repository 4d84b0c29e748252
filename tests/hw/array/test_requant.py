# amaranth: UnusedElaboratable=no
"""The array's pipelined requantizer against golden's requantize / requantize_residual, bit for bit, on ``X`` (golden's
combined ``acc``) over its whole range, with and without a vertical layer's compensation."""

import numpy as np
import pytest

from hw.array import requant as rq
from hw.array.requant import ACT_SUM_BOUND, PixelRequantizer
from model.export.golden import (
    ACC_BOUND,
    ACC_SHIFT,
    BIAS_MAX,
    BIAS_MIN,
    MAX_SHIFT,
    MULT_BITS,
    D,
    R,
    requantize,
)
from model.export.golden_conv import requantize_residual
from model.export.golden_vertical import comp_offset
from tests.hw.stream_source import pump, simulate

MAX_M = (1 << MULT_BITS) - 1


def expected(item, shift, out_bits, residual, comp_shift=0):
    """Golden's requantizer on ``acc = X`` plus a vertical layer's compensation ``± 2 R_8 K_t U``
    (golden_vertical's ``compensated_dot`` in class 8); ``requantize_residual`` with a shortcut code."""
    acc = item["x"]
    acc += (-1 if item["negate"] else 1) * 2 * R[8] * comp_offset(comp_shift, 0, True) * item["u"]
    acc = np.array([[[[acc]]]], dtype=np.int64)
    if residual:
        out = requantize_residual(acc, np.array([[[[item["r"]]]]]), np.array([item["mult"]]),
                                  np.array([item["res_mult"]]), np.array([item["bias"]]), shift, out_bits)
    else:
        out = requantize(acc, item["mult"], item["bias"], shift, out_bits)
    return int(out.reshape(-1)[0])


def random_item(rng, tag):
    kind = int(rng.integers(0, 6))
    a = int(rng.integers(0, ACT_SUM_BOUND + 1))
    if kind == 0:  # the largest acc: every weight at D_m, every activation at its largest
        x = D * ACT_SUM_BOUND
    elif kind == 1:  # the most negative: a signed layer's 4-bit codes 0, every activation at its largest
        x = -(D + R[4]) * ACT_SUM_BOUND
    else:  # inside the range of an activation sum a
        x = int(rng.integers(-(D + R[4]) * a, D * a + 1)) if a else 0
    bias_kind = int(rng.integers(0, 4))
    bias = {0: BIAS_MIN, 1: BIAS_MAX, 2: 0}.get(bias_kind, int(rng.integers(-(1 << 40), 1 << 40)))
    return {"x": x, "r": int(rng.integers(0, 256)), "mult": int(rng.choice([0, MAX_M, rng.integers(0, MAX_M)])),
            "res_mult": int(rng.choice([0, MAX_M, rng.integers(0, MAX_M)])), "bias": bias,
            "u": int(rng.choice([0, ACT_SUM_BOUND, rng.integers(0, ACT_SUM_BOUND + 1)])),
            "negate": int(rng.integers(0, 2)), "tag": tag}


def run(items, shift, out_bits, residual, seed, p_gap=0.3, p_stall=0.3, comp_shift=0, compensate=True):
    dut = PixelRequantizer(tag_bits=12, compensate=compensate)
    rng = np.random.default_rng(seed)
    res = {}

    async def bench(ctx):
        ctx.set(dut.shift, shift)
        ctx.set(dut.out_bits, out_bits)
        ctx.set(dut.residual, residual)
        ctx.set(dut.comp_shift, comp_shift)
        got, _, out_cycles = await pump(ctx, dut, items, len(items), rng, p_gap, p_stall,
                                        lambda o: (int(o.value), int(o.tag)))
        res["got"], res["cycles"] = got, out_cycles

    simulate(dut, bench)
    return res


@pytest.mark.parametrize("seed", range(6))
def test_matches_golden(seed):
    rng = np.random.default_rng(seed)
    shift = int(rng.choice([1, 16, 30, 47, MAX_SHIFT]))
    out_bits = int(rng.choice([0, 1, 4, 8]))
    residual = bool(seed & 2)
    if residual:  # a shortcut ends a hidden conv: codes, never scores
        out_bits = max(out_bits, 1)
    items = [random_item(rng, k) for k in range(150)]
    # seeds 3 (residual) and 4: the build without the compensation, which must not read its
    # u, negate (random) and comp_shift (the largest) inputs
    compensate = seed not in (3, 4)
    got = run(items, shift, out_bits, residual, seed, compensate=compensate,
              comp_shift=0 if compensate else rq.MAX_COMP_SHIFT)["got"]
    assert [tag for _, tag in got] == list(range(len(items)))
    want = [expected(it, shift, out_bits, residual) for it in items]
    assert [v for v, _ in got] == want


@pytest.mark.parametrize("comp_shift", [1, 3, rq.MAX_COMP_SHIFT])
def test_vertical_compensation_matches_golden(comp_shift):
    """A signed layer with Eq. 6's ``K_t`` times the pixel's activation sum, on either sign of the row."""
    rng = np.random.default_rng(50 + comp_shift)
    shift = int(rng.choice([16, 30, MAX_SHIFT]))
    items = [random_item(rng, k) for k in range(120)]
    got = run(items, shift, 4, False, comp_shift, comp_shift=comp_shift)["got"]
    assert [v for v, _ in got] == [expected(it, shift, 4, False, comp_shift) for it in items]
    scores = run(items, shift, 0, False, comp_shift + 1, comp_shift=comp_shift)["got"]
    assert [v for v, _ in scores] == [expected(it, shift, 0, False, comp_shift) for it in items]


def test_one_pixel_a_cycle_after_the_latency():
    rng = np.random.default_rng(7)
    items = [random_item(rng, k) for k in range(40)]
    res = run(items, 20, 4, True, 7, p_gap=0.0, p_stall=0.0)
    cycles = res["cycles"]
    assert cycles == list(range(cycles[0], cycles[0] + len(items)))
    assert cycles[0] == PixelRequantizer.latency


def test_widths_hold_the_contract_bounds():
    # X between -(D + R_4) A and D A at the bounds; t M + B + offset within the rounding width.
    assert rq.X_BOUND == (D + R[4]) * ACT_SUM_BOUND and ACC_BOUND == D * ACT_SUM_BOUND
    assert -(1 << (rq.X_BITS - 1)) <= -rq.X_BOUND and rq.X_BOUND < 1 << (rq.X_BITS - 1)
    t_max = ACC_BOUND >> ACC_SHIFT
    t_min = -(D * ACT_SUM_BOUND + R[4] * ACT_SUM_BOUND) >> ACC_SHIFT
    assert max(abs(t_max), abs(t_min)) * MAX_M < 1 << (rq.PRODUCT_BITS - 1)
    offset = (255 * MAX_M << ACC_SHIFT) + (1 << (MAX_SHIFT - 1))
    assert offset < 1 << rq.OFFSET_BITS
    assert max(abs(t_min), t_max) * MAX_M + max(-BIAS_MIN, BIAS_MAX) + offset < 1 << (rq.ROUND_BITS - 1)
    # The compensation: K_t U at its largest, and acc plus or minus 2 R_8 K_t U at either extreme.
    comp = 2 * R[8] * ((1 << rq.MAX_COMP_SHIFT) - 1) * ACT_SUM_BOUND
    assert ((1 << rq.MAX_COMP_SHIFT) - 1) * ACT_SUM_BOUND < 1 << rq.KU_BITS and comp < 1 << rq.COMP_BITS
    assert ACC_BOUND + comp < 1 << (rq.ACC_BITS - 1)
    assert -(D * ACT_SUM_BOUND + R[4] * ACT_SUM_BOUND) - comp >= -(1 << (rq.ACC_BITS - 1))


def test_rejects_bad_tag_bits():
    with pytest.raises(ValueError, match="tag_bits"):
        PixelRequantizer(tag_bits=0)
