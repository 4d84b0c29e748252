# amaranth: UnusedElaboratable=no
"""Requantizer against model.golden.combine + requantize, and ParamReader against the parameter words."""

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator
from stream_source import Source

from hw.mac_lane import ACT_SUM_BITS, SUM_BITS
from hw.requant import ParamReader, Requantizer
from model import golden as gm
from model.golden import CLASSES, INT32_MAX, INT32_MIN, MAX_FAN_IN, MULT_BITS, combine, requantize

MAX_U = 255  # 8-bit activations
MAX_SUM = {m: ((1 << m) - 1) * MAX_U * MAX_FAN_IN for m in CLASSES}  # a full row of one class at its maximum
MAX_A = MAX_U * MAX_FAN_IN
BIG_BIAS = (1 << 62) - 1  # the largest |B| model.golden.check_layer accepts




async def pump(ctx, dut, items, n_out, rng, p_gap, p_stall, convert):
    """Drive ``dut.i`` with ``items`` and collect ``n_out`` outputs; also the transfer cycles."""
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
    return got, in_cycles, out_cycles


# -- Requantizer ----------------------------------------------------------------------------------------

def golden(item, shift, out_bits):
    sums = {m: torch.tensor([item["sums"][f"s{m}"]], dtype=torch.int64) for m in CLASSES}
    acc = combine(sums, torch.tensor([item["sums"]["a"]], dtype=torch.int64))
    p = item["param"]
    return int(requantize(acc, torch.tensor([p["mult"]]), torch.tensor([p["bias"]]), shift, out_bits)[0])


def item(s, a, mult, bias):
    return {"sums": {**{f"s{m}": int(s[m]) for m in CLASSES}, "a": int(a)},
            "param": {"mult": int(mult), "bias": int(bias)}}


def random_sums(rng):
    """Sums of a random row (n_in up to MAX_FAN_IN), sometimes at the contract's or the layout's extremes."""
    kind = rng.integers(0, 6)
    if kind == 0:  # a full row of one class at its maximum: the largest acc
        m = int(rng.choice(CLASSES))
        return {c: MAX_SUM[c] if c == m else 0 for c in CLASSES}, MAX_A
    if kind == 1:  # all codes 0 at u = 255: the most negative acc
        return dict.fromkeys(CLASSES, 0), MAX_A
    if kind == 2:
        return dict.fromkeys(CLASSES, 0), 0
    if kind == 3:  # every field all ones: the widest the row-sum layout carries
        return {c: (1 << SUM_BITS[c]) - 1 for c in CLASSES}, int(rng.choice([0, (1 << ACT_SUM_BITS) - 1]))
    n_in = int(rng.integers(1, MAX_FAN_IN + 1))
    share = rng.dirichlet(np.ones(5)) * n_in  # weights per class (and pruned)
    s = {c: int(rng.integers(0, int(share[k] * ((1 << c) - 1) * MAX_U) + 1)) for k, c in enumerate(CLASSES)}
    a = int(rng.integers(0, int(sum(share[:4]) * MAX_U) + 1))
    return s, a


def aimed_bias(rng, s, a, mult, shift, out_bits):
    """A bias that puts ``y`` near a random in-range value, often exactly on a rounding tie (or one off)."""
    t = (2 * sum(gm.R[c] * s[c] for c in CLASSES) - gm.D * a) >> gm.ACC_SHIFT
    lo, hi = (INT32_MIN, INT32_MAX) if out_bits == 0 else (0, (1 << out_bits) - 1)
    room = (1 << max(0, 61 - shift)) - 1  # keeps |B| < 2^62
    target = int(rng.integers(max(lo, -room), min(hi, room) + 1))
    half = 1 << (shift - 1)
    delta = int(rng.choice([-half, -half - 1, -half + 1, half - 1, 0, int(rng.integers(-half, half))]))
    bias = target * (1 << shift) - t * mult + delta
    return bias if abs(bias) <= BIG_BIAS else 0


def random_batch(rng, n, out_bits):
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
            b = aimed_bias(rng, sums, a, m, shift, out_bits)
        items.append(item(sums, a, m, b))
    return items, shift


def run_requant(batches, seed, p_gap, p_stall):
    """Each batch is (items, shift, out_bits), run back to back with the pipeline drained in between."""
    rng = np.random.default_rng(seed)
    dut = Requantizer()
    results = []

    async def bench(ctx):
        for items, shift, out_bits in batches:
            ctx.set(dut.shift, shift)
            ctx.set(dut.out_bits, out_bits)
            results.append(await pump(ctx, dut, items, len(items), rng, p_gap, p_stall, int))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("seed", range(4))
def test_requantizer_matches_golden(seed):
    rng = np.random.default_rng(seed)
    batches = []
    for out_bits in (0, 1, 2, 4, 7, 8):
        items, shift = random_batch(rng, 12, out_bits)
        batches.append((items, shift, out_bits))
    p_gap, p_stall = [(0.0, 0.0), (0.3, 0.3), (0.6, 0.2), (0.2, 0.6)][seed]
    for (items, shift, out_bits), (got, _, _) in zip(batches, run_requant(batches, seed, p_gap, p_stall)):
        assert got == [golden(x, shift, out_bits) for x in items], f"shift {shift}, out_bits {out_bits}"


def test_requantizer_saturates_both_ways():
    """Scores saturate to int32 at both ends; codes clamp to [0, 2^out_bits - 1] at both ends."""
    top = {c: MAX_SUM[c] if c == 32 else 0 for c in CLASSES}
    zero = dict.fromkeys(CLASSES, 0)
    big = (1 << MULT_BITS) - 1
    extreme = [item(top, MAX_A, big, 0), item(zero, MAX_A, big, 0),  # acc = +-D * 255 * 4096
               item(zero, 0, 0, BIG_BIAS), item(zero, 0, 0, -BIG_BIAS),  # bias alone
               item(zero, 0, big, 0), item(zero, 1, 1, 0)]  # 0, and -D >> 16 = -65536 times 1
    batches = [(extreme, 1, 0), (extreme, 62, 0), (extreme, 1, 8), (extreme, 3, 1), (extreme, 62, 4)]
    results = run_requant(batches, 5, 0.2, 0.4)
    for (items, shift, out_bits), (got, _, _) in zip(batches, results):
        assert got == [golden(x, shift, out_bits) for x in items], f"shift {shift}, out_bits {out_bits}"
    assert results[0][0][:4] == [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN]
    assert results[2][0][:4] == [255, 0, 255, 0]
    # With S = 62 the extreme acc no longer saturates: (t * M + 2^61) >> 62 with |t * M| < 2^57 is 0.
    assert results[1][0][:2] == [0, 0] and results[1][0][2:4] == [1, -1]


def test_requantizer_latency_and_throughput():
    rng = np.random.default_rng(8)
    items, shift = random_batch(rng, 20, 4)
    (got, in_cycles, out_cycles), = run_requant([(items, shift, 4)], 8, 0.0, 0.0)
    assert got == [golden(x, shift, 4) for x in items]
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

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert out["got"] == list(zip(mults, biases))
    if p_gap == 0 and p_stall == 0:
        # One word a cycle, a record every third cycle, no bubble.
        assert out["in"] == list(range(out["in"][0], out["in"][0] + len(words)))
