# amaranth: UnusedElaboratable=no
"""PackedDspLane (behavioural form) in the Amaranth simulator: dot products bit-exact against Python ints."""

import functools
import random

import pytest

from hw.dsp.lane import DSP_LATENCY, PackedDspLane, sums_layout
from hw.dsp.packing import plan
from tests.hw.stream_source import simulate

#: Modes under test: the accelerator's (4x4 ... 16x8), a 16-bit operand in one chunk (8x16), two and four
#: chunk pairs per operand set (32x8, 32x32) and the densest narrow ones (2x2: 8 products, 3x3: 6).
MODES = [(4, 4), (8, 4), (4, 8), (8, 8), (16, 4), (16, 8), (32, 8), (2, 2), (3, 3), (8, 16), (32, 32)]
#: Dot products longer than this are not simulated (the wide modes drain after millions of products).
LONGEST = 300


def _ids(pairs):
    return [f"{w}x{a}" for w, a in pairs]


def _operands(rng: random.Random, bits: int, n: int, style: str) -> list[int]:
    top = (1 << bits) - 1
    if style == "max":
        return [top] * n
    if style == "random":
        return [rng.randrange(top + 1) for _ in range(n)]
    return [rng.choice([0, top, rng.randrange(top + 1)]) for _ in range(n)]  # "mixed": extremes often


def dot_products(p, lengths, rng: random.Random, styles=("max", "random", "mixed")):
    """Operand sets ``(w, a, last)`` grouped into dot products of the given lengths."""
    groups = []
    for length in lengths:
        style = rng.choice(styles)
        group = [(_operands(rng, p.weight_bits, p.weights, style), _operands(rng, p.act_bits, p.acts, style))
                 for _ in range(length)]
        groups.append(group)
    return groups


def model(p, groups):
    """``sums[w][a]`` of every dot product, in plain Python ints."""
    return [[[sum(ws[w] * acts[a] for ws, acts in group) for a in range(p.acts)] for w in range(p.weights)]
            for group in groups]


def lengths_for(p, rng: random.Random, n_random: int = 12) -> list[int]:
    """1, max_accumulation and max_accumulation + 1 (when simulable), and random lengths up to
    ``3 * max_accumulation`` capped at 64, shuffled."""
    m = p.max_accumulation
    lengths = [1, 1, 2]
    if m + 1 <= LONGEST:
        lengths += [m, m + 1, m, m + 1]
    lengths += [rng.randint(1, max(2, min(3 * m, 64))) for _ in range(n_random)]
    rng.shuffle(lengths)
    return lengths


def run_lane(lane, groups, *, seed: int, p_gap: float, p_stall: float):
    """Feed ``groups`` through ``lane``; return the received sums and the accept / output cycles.

    One testbench drives and samples every cycle (``sample`` shows the values the clock edge acts on), so
    cycle numbers are exact. It also checks that a stalled output is held unchanged until taken.
    """
    p = lane.plan
    rng = random.Random(seed)
    ops = [(ws, acts, k == len(group) - 1) for group in groups for k, (ws, acts) in enumerate(group)]
    got, accepted, emitted = [], [], []
    budget = (len(ops) * p.chunks + 20) * (1 + int(20 * (p_gap + p_stall))) + 100

    async def bench(ctx):
        pos, gap, held = 0, 0, None
        for cycle in range(budget):
            if len(got) == len(groups):
                break
            offer = gap == 0 and pos < len(ops)
            ctx.set(lane.i.valid, offer)
            if offer:
                ws, acts, last = ops[pos]
                ctx.set(lane.i.payload, {"w": ws, "a": acts, "last": last})
            ctx.set(lane.o.ready, rng.random() >= p_stall)
            _, _, iv, ir, ov, orr, sums = await ctx.tick().sample(
                lane.i.valid, lane.i.ready, lane.o.valid, lane.o.ready, lane.o.payload)
            if iv and ir:
                accepted.append(cycle)
                pos += 1
                gap = 1 if rng.random() < p_gap else 0
            elif gap:
                gap -= 1
            value = [[int(sums[w][a]) for a in range(p.acts)] for w in range(p.weights)] if ov else None
            if held is not None:
                assert value == held, f"cycle {cycle}: stalled output changed from {held} to {value}"
            held = value if ov and not orr else None
            if ov and orr:
                got.append(value)
                emitted.append(cycle)
        assert len(got) == len(groups), f"lane stalled after {len(got)} of {len(groups)} dot products"
        for _ in range(2 * lane.latency):  # and nothing more
            ctx.set(lane.i.valid, 0)
            ctx.set(lane.o.ready, 1)
            _, _, ov = await ctx.tick().sample(lane.o.valid)
            assert not ov, "output without a dot product"

    simulate(lane, bench)
    return got, ops, accepted, emitted


@pytest.mark.parametrize("pair", MODES, ids=_ids(MODES))
def test_random_dot_products_with_stalls(pair):
    p = plan(*pair)
    rng = random.Random(f"lane-{pair}")
    groups = dot_products(p, lengths_for(p, rng), rng)
    # Always some maximal dot products of the critical lengths: only they can carry across a slot.
    m = p.max_accumulation
    groups += dot_products(p, [m, m + 1] if m + 1 <= LONGEST else [64], rng, styles=("max",))
    got, _, _, _ = run_lane(PackedDspLane(p), groups, seed=sum(pair), p_gap=0.3, p_stall=0.35)
    assert got == model(p, groups)


def test_weight_broadcast_mode():
    """The accelerator's forced weight broadcast: one weight against several activations."""
    p = plan(4, 4, weights=1)
    rng = random.Random(5)
    groups = dot_products(p, lengths_for(p, rng), rng)
    got, _, _, _ = run_lane(PackedDspLane(p), groups, seed=5, p_gap=0.2, p_stall=0.5)
    assert got == model(p, groups)


TIMED = [(4, 4), (8, 4), (16, 8), (32, 8), (32, 32)]


@functools.cache
def _timed_run(pair):
    """No gaps, no stalls: back-to-back single products, and dot products that drain internally right
    before, at and after their end."""
    p = plan(*pair)
    lane = PackedDspLane(p)
    rng = random.Random(f"timing-{pair}")
    m = min(p.max_accumulation, LONGEST)
    lengths = [1, 1, 1, 2, 1, m, m + 1, 2 * m + 1, 1, 3, m - 1 or 1, 1]
    groups = dot_products(p, lengths, rng)
    got, ops, accepted, emitted = run_lane(lane, groups, seed=0, p_gap=0.0, p_stall=0.0)
    assert got == model(p, groups)
    last_accepts = [cycle for cycle, (_, _, last) in zip(accepted, ops, strict=True) if last]
    return lane, ops, accepted, last_accepts, emitted


@pytest.mark.parametrize("pair", TIMED, ids=_ids(TIMED))
def test_throughput_one_operand_set_per_chunks_cycles(pair):
    """Drains and ``last``s cost no cycle; dot products leave at a fixed distance from their end."""
    lane, ops, accepted, last_accepts, emitted = _timed_run(pair)
    assert accepted == [accepted[0] + k * lane.plan.chunks for k in range(len(ops))]
    assert len({out - end for out, end in zip(emitted, last_accepts, strict=True)}) == 1


@pytest.mark.parametrize("pair", TIMED, ids=_ids(TIMED))
def test_latency_from_the_accepted_last_operand_set(pair):
    """``lane.latency`` cycles from the transfer of the ``last`` operand set to ``o.valid``, in every mode.

    The chunked modes (32x8, 32x32) hold ``i.ready`` low until the last chunk, so the transfer is the last
    chunk's and the sums follow ``DSP_LATENCY + 1`` cycles later: the chunk count does not add to it.
    """
    lane, _, _, last_accepts, emitted = _timed_run(pair)
    assert lane.latency == DSP_LATENCY + 1
    assert emitted == [cycle + lane.latency for cycle in last_accepts]


def test_sums_exact_up_to_count_bits():
    """``count_bits = 2``: four maximal 4x4 products (900) fill the 10-bit sums exactly."""
    p = plan(4, 4)
    lane = PackedDspLane(p, count_bits=2)
    assert sums_layout(p, 2).size == p.products * (4 + 4 + 2)
    groups = [[([15, 15], [15, 15])] * 4, [([15, 1], [15, 2])] * 4, [([0, 15], [15, 0])]]
    got, _, _, _ = run_lane(lane, groups, seed=1, p_gap=0.3, p_stall=0.3)
    assert got == model(p, groups)
    assert got[0] == [[900, 900], [900, 900]]


def test_plan_and_ports():
    p = plan(8, 4)
    lane = PackedDspLane(p, count_bits=20)
    assert lane.plan is p
    assert lane.i.payload.shape().size == p.weights * 8 + p.acts * 4 + 1
    assert lane.o.payload.shape().size == p.products * (8 + 4 + 20)


@pytest.mark.parametrize("count_bits", [0, -1, 49, 64])
def test_count_bits_out_of_range(count_bits):
    with pytest.raises(ValueError, match=rf"count_bits must be in 1\.\.48, not {count_bits}"):
        PackedDspLane(plan(4, 4), count_bits=count_bits)


@pytest.mark.parametrize("count_bits", [1, 48])
def test_count_bits_bounds_accepted(count_bits):
    assert PackedDspLane(plan(4, 4), count_bits=count_bits).o.payload.shape().size == 4 * (8 + count_bits)


@pytest.mark.parametrize("bad", [(4, 4), {"weight_bits": 4, "act_bits": 4}, None, "4x4"])
def test_plan_must_be_a_packing_plan(bad):
    with pytest.raises(TypeError, match=r"plan must be a PackingPlan, not "):
        PackedDspLane(bad)
