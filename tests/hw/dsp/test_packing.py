"""Packing planner (hw.dsp.packing): slot geometry, port limits, density and plain-integer arithmetic, all modes."""

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.dsp.packing import (
    A_BITS,
    ACT_BITS,
    B_BITS,
    CHUNK_BITS,
    P_BITS,
    WEIGHT_BITS,
    PackingPlan,
    plan,
    supported_pairs,
)

PAIRS = supported_pairs()
PLANS = {pair: plan(*pair) for pair in PAIRS}
#: Minimum products per cycle the accelerator's throughput claims rest on.
MACS_FLOOR = {(4, 4): 4, (8, 4): 2, (4, 8): 2, (8, 8): 2, (16, 4): 1, (16, 8): 1}


def _ids(pairs):
    return [f"{w}x{a}" for w, a in pairs]


def _lanes(p: PackingPlan):
    return list(itertools.product(range(p.weights), range(p.acts)))


def _top_product(p: PackingPlan) -> int:
    """The largest product of two operand chunks."""
    return ((1 << p.weight_chunk) - 1) * ((1 << p.act_chunk) - 1)


def pack(p: PackingPlan, weights, acts) -> tuple[int, int]:
    """A and B port values for one cycle's weight and activation chunks, per the plan's layouts."""
    xs, ys = (weights, acts) if p.weight_port == "A" else (acts, weights)
    a_port = sum(x << off for x, off in zip(xs, p.a_layout(), strict=True))
    b_port = sum(y << off for y, off in zip(ys, p.b_layout(), strict=True))
    return a_port, b_port


def unpack(p: PackingPlan, p_reg: int) -> dict[tuple[int, int], int]:
    """Each product slot's value in a P register value."""
    return {(w, a): (p_reg >> p.offset(w, a)) & ((1 << p.slot_width(w, a)) - 1) for w, a in _lanes(p)}


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_slots_are_disjoint_and_inside_p(pair):
    p = PLANS[pair]
    assert (p.weight_bits, p.act_bits) == pair
    assert p.weight_chunk == min(pair[0], CHUNK_BITS) and p.act_chunk == min(pair[1], CHUNK_BITS)
    assert p.weight_port in ("A", "B") and {p.n_a, p.n_b} == {p.weights, p.acts}
    spans = sorted((p.offset(w, a), p.offset(w, a) + p.slot_width(w, a)) for w, a in _lanes(p))
    assert len(spans) == p.products
    assert spans[0][0] == 0 and spans[-1][1] == P_BITS  # the top slot owns the rest of P
    for (lo, hi), (next_lo, _) in itertools.pairwise(spans):
        assert lo < hi <= next_lo
    # Every slot holds one product; all slots but the top one have the same width.
    assert all(hi - lo >= p.product_bits for lo, hi in spans)
    assert all(hi - lo == p.slot for lo, hi in spans[:-1])


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_max_accumulation_is_exact_and_tight(pair):
    p = PLANS[pair]
    top = _top_product(p)
    assert p.max_accumulation >= 1
    for w, a in _lanes(p):
        assert p.max_accumulation * top < 1 << p.slot_width(w, a)
    # One product more overflows the narrowest slot: the drain interval is not needlessly short.
    narrowest = min(p.slot_width(w, a) for w, a in _lanes(p))
    assert (p.max_accumulation + 1) * top >= 1 << narrowest
    assert p.guard_bits == p.slot - p.product_bits >= 0


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_layouts_fit_the_ports(pair):
    p = PLANS[pair]
    x_bits, y_bits = (p.weight_chunk, p.act_chunk) if p.weight_port == "A" else (p.act_chunk, p.weight_chunk)
    assert len(p.a_layout()) == p.n_a and len(p.b_layout()) == p.n_b
    assert p.a_layout()[-1] + x_bits <= A_BITS
    assert p.b_layout()[-1] + y_bits <= B_BITS
    # With every operand at its maximum the packed ports, and P after max_accumulation products, fit.
    a_max, b_max = pack(p, [(1 << p.weight_chunk) - 1] * p.weights, [(1 << p.act_chunk) - 1] * p.acts)
    assert a_max < 1 << A_BITS and b_max < 1 << B_BITS
    assert p.max_accumulation * a_max * b_max < 1 << P_BITS


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_chunks_and_throughput(pair):
    p = PLANS[pair]
    n_w, n_a = -(-pair[0] // CHUNK_BITS), -(-pair[1] // CHUNK_BITS)
    assert p.chunks == n_w * n_a
    assert p.macs_per_cycle == p.products / p.chunks


@pytest.mark.parametrize("pair", MACS_FLOOR, ids=_ids(MACS_FLOOR))
def test_macs_floors(pair):
    assert PLANS[pair].macs_per_cycle >= MACS_FLOOR[pair]


def _fits_from_first_principles(n_a, x_bits, n_b, y_bits):
    """Whether ``n_a x n_b`` products of ``x_bits``- and ``y_bits``-bit operands fit without guard bits."""
    s = x_bits + y_bits
    a_max = sum(((1 << x_bits) - 1) << (i * n_b * s) for i in range(n_a))
    b_max = sum(((1 << y_bits) - 1) << (j * s) for j in range(n_b))
    return a_max < 1 << A_BITS and b_max < 1 << B_BITS and a_max * b_max < 1 << P_BITS


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_no_denser_packing_exists_and_ties_prefer_broadcast(pair):
    p = PLANS[pair]
    wc, ac = p.weight_chunk, p.act_chunk
    densest, broadcast_densest = 0, 0
    for weight_port in ("A", "B"):
        x_bits, y_bits = (wc, ac) if weight_port == "A" else (ac, wc)
        for n_a, n_b in itertools.product(range(1, A_BITS + 1), range(1, B_BITS + 1)):
            if _fits_from_first_principles(n_a, x_bits, n_b, y_bits):
                densest = max(densest, n_a * n_b)
                if (n_a if weight_port == "A" else n_b) == 1:
                    broadcast_densest = max(broadcast_densest, n_a * n_b)
    assert p.products == densest
    if broadcast_densest == densest:
        assert p.weights == 1


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_forced_weight_broadcast(pair):
    p = plan(*pair, weights=1)
    assert p.weights == 1 and p.acts >= 1
    assert p.products <= PLANS[pair].products
    top = _top_product(p)
    assert all(p.max_accumulation * top < 1 << p.slot_width(0, a) for a in range(p.acts))
    a_max, b_max = pack(p, [(1 << p.weight_chunk) - 1], [(1 << p.act_chunk) - 1] * p.acts)
    assert a_max < 1 << A_BITS and b_max < 1 << B_BITS


@pytest.mark.parametrize("pair", [(5, 4), (4, 9), (4, 64), (1, 4), (4, 1), (0, 8), (64, 64)],
                         ids=lambda pair: f"{pair[0]}x{pair[1]}")
def test_unsupported_pairs_name_the_offending_values_and_the_supported_set(pair):
    with pytest.raises(ValueError) as info:
        plan(*pair)
    message = str(info.value)
    assert f"weight {pair[0]}" in message and f"activation {pair[1]}" in message
    assert str(WEIGHT_BITS) in message and str(ACT_BITS) in message


def test_forced_count_that_cannot_fit_raises():
    with pytest.raises(ValueError, match=r"weight 4, activation 4\) with 5 weights"):
        plan(4, 4, weights=5)


def test_supported_pairs_is_the_full_grid():
    assert PAIRS == [(w, a) for w in WEIGHT_BITS for a in ACT_BITS]
    assert len(set(PAIRS)) == len(WEIGHT_BITS) * len(ACT_BITS)


def _check_products(p: PackingPlan, operand_sets) -> None:
    """Pack each operand set, multiply, accumulate like P: every slot holds its own exact sum."""
    p_reg, expected = 0, dict.fromkeys(_lanes(p), 0)
    for weights, acts in operand_sets:
        a_port, b_port = pack(p, weights, acts)
        assert a_port < 1 << A_BITS and b_port < 1 << B_BITS
        assert unpack(p, a_port * b_port) == {(w, a): weights[w] * acts[a] for w, a in _lanes(p)}
        p_reg += a_port * b_port
        for w, a in _lanes(p):
            expected[w, a] += weights[w] * acts[a]
    assert p_reg < 1 << P_BITS
    assert unpack(p, p_reg) == expected


def _chunk_values(rng: random.Random, bits: int, n: int) -> list[int]:
    return [rng.choice([0, (1 << bits) - 1, rng.randrange(1 << bits)]) for _ in range(n)]


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_packed_products_land_in_their_slots(pair):
    p = PLANS[pair]
    rng = random.Random(f"pack-{pair}")
    for _ in range(20):
        length = rng.randint(1, min(p.max_accumulation, 50))
        _check_products(p, [(_chunk_values(rng, p.weight_chunk, p.weights),
                             _chunk_values(rng, p.act_chunk, p.acts)) for _ in range(length)])
    # Worst case: max_accumulation maximal products sum to max_accumulation * top in every slot, no carry.
    a_max, b_max = pack(p, [(1 << p.weight_chunk) - 1] * p.weights, [(1 << p.act_chunk) - 1] * p.acts)
    assert set(unpack(p, p.max_accumulation * a_max * b_max).values()) == {p.max_accumulation * _top_product(p)}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_packed_products_property(data):
    pair = data.draw(st.sampled_from(PAIRS), label="pair")
    p = PLANS[pair]
    length = data.draw(st.integers(1, min(p.max_accumulation, 8)), label="length")
    sets = [(data.draw(st.lists(st.integers(0, (1 << p.weight_chunk) - 1), min_size=p.weights,
                                max_size=p.weights)),
             data.draw(st.lists(st.integers(0, (1 << p.act_chunk) - 1), min_size=p.acts, max_size=p.acts)))
            for _ in range(length)]
    _check_products(p, sets)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([pair for pair in PAIRS if PLANS[pair].chunks > 1]), st.data())
def test_chunked_products_reassemble(pair, data):
    """Wide operands: chunk-pair products, each from its slot and shifted by its chunk offsets, sum to w * a."""
    p = PLANS[pair]
    weights = [data.draw(st.integers(0, (1 << p.weight_bits) - 1)) for _ in range(p.weights)]
    acts = [data.draw(st.integers(0, (1 << p.act_bits) - 1)) for _ in range(p.acts)]
    total = dict.fromkeys(_lanes(p), 0)
    for cw in range(-(-p.weight_bits // p.weight_chunk)):
        for ca in range(-(-p.act_bits // p.act_chunk)):
            chunk_w = [(w >> (cw * p.weight_chunk)) & ((1 << p.weight_chunk) - 1) for w in weights]
            chunk_a = [(a >> (ca * p.act_chunk)) & ((1 << p.act_chunk) - 1) for a in acts]
            a_port, b_port = pack(p, chunk_w, chunk_a)
            for lane, value in unpack(p, a_port * b_port).items():
                total[lane] += value << (cw * p.weight_chunk + ca * p.act_chunk)
    assert total == {(w, a): weights[w] * acts[a] for w, a in _lanes(p)}
