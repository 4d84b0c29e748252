# amaranth: UnusedElaboratable=no
"""Pass lane: P of every pass exact (signed lane weights), pair passes at their capacity with every lane weight at
its extreme and both fields read back, single passes of every chunk and group, merged passes, under idle input
cycles and output back-pressure; the lane weights against golden's combine; the pass schedule per width pair;
one DSP48E1 in Yosys at a small fraction of a segment lane's LUTs."""

import json
import random
import subprocess

import numpy as np
import pytest
from amaranth import Module
from amaranth.back import verilog

from hw.dsp.lane import DSP48E1_ATTRIBUTES
from hw.dsp.pass_lane import (
    A_HIGH,
    A_LOW,
    A_SPREAD,
    PAIR_SHIFT,
    PassDspLane,
    is_pair,
    lane_passes,
    lane_weight,
    merged_capacity,
    pass_capacity,
)
from hw.platform.synth import parse_stat, synth_xilinx, yosys_binary
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN, D, R, combine
from tests.hw.stream_source import simulate

PLACE = {A_LOW: 1, A_HIGH: 1 << 16, A_SPREAD: (1 << 16) + 1}


def make_pass(rng, class_bits, act_bits, length, style, pair=None, chunk=0, group=0, signed=None):
    """A pass's entries ``{b, pair, group, a_mode, u, end}``: the lane weights of random codes of the given
    class (``style`` "max": every code at the end of its range that makes ``|v|`` largest, and every
    activation at its largest)."""
    signed = rng.randrange(2) if signed is None else signed

    def act():
        top = (1 << act_bits) - 1
        return top if style == "max" else rng.choice([0, top, rng.randrange(top + 1)])

    pair = is_pair(class_bits, act_bits) if pair is None else pair
    top = (1 << class_bits) - 1
    entries = []
    for k in range(length):
        q = (0 if signed else top) if style == "max" else rng.choice([0, top, rng.randrange(top + 1)])
        entries.append({"b": lane_weight(q, class_bits, signed, chunk), "pair": int(pair), "group": group,
                        "a_mode": A_LOW, "u": [act(), act()], "end": int(k == length - 1)})
    return entries


def expected(entries):
    """P of one pass (module docstring's equations), as a signed number."""
    if entries[0]["pair"]:
        return sum(e["b"] * (e["u"][0] + (e["u"][1] << PAIR_SHIFT)) for e in entries)
    return sum(e["b"] * e["u"][e["group"]] * PLACE[e["a_mode"]] for e in entries)


def fields(p):
    """A pair pass's two slot sums out of its P word, as the engine's combine takes them."""
    word = p & ((1 << 48) - 1)
    low = word & ((1 << PAIR_SHIFT) - 1)
    low -= (low >> (PAIR_SHIFT - 1)) << PAIR_SHIFT
    return low, (p >> PAIR_SHIFT) + ((word >> (PAIR_SHIFT - 1)) & 1)


def run_passes(lane, passes, *, seed, p_gap, p_stall):
    rng = random.Random(seed)
    items = [e for entries in passes for e in entries]
    got = []
    budget = (len(items) + 10 * len(passes)) * (2 + int(30 * (p_gap + p_stall))) + 200

    async def bench(ctx):
        pos, gap, held = 0, 0, None
        for cycle in range(budget):
            if len(got) == len(passes):
                break
            offer = gap == 0 and pos < len(items)
            ctx.set(lane.i.valid, offer)
            if offer:
                ctx.set(lane.i.payload, items[pos])
            ctx.set(lane.o.ready, rng.random() >= p_stall)
            _, _, iv, ir, ov, orr, out = await ctx.tick().sample(
                lane.i.valid, lane.i.ready, lane.o.valid, lane.o.ready, lane.o.payload)
            if iv and ir:
                pos += 1
                gap = 1 if rng.random() < p_gap else 0
            elif gap:
                gap -= 1
            value = int(out.p) if ov else None
            if held is not None:
                assert value == held, f"cycle {cycle}: stalled output changed from {held} to {value}"
            held = value if ov and not orr else None
            if ov and orr:
                got.append(value)
        assert len(got) == len(passes), f"lane stalled after {len(got)} of {len(passes)} passes"
        for _ in range(2 * lane.latency):
            ctx.set(lane.i.valid, 0)
            ctx.set(lane.o.ready, 1)
            _, _, ov = await ctx.tick().sample(lane.o.valid)
            assert not ov, "output without a pass"

    simulate(lane, bench)
    return got


def test_random_passes_exact_under_back_pressure():
    rng = random.Random("pass-lane")
    passes = []
    for _ in range(150):
        cls = rng.choice(CLASS_WIDTHS)
        act = rng.randint(1, MAX_ACT_BITS)
        for pair, chunk, group in lane_passes(cls, act):
            length = rng.choice([1, 1, 2, 3, rng.randint(4, 60), rng.randint(4, 60),
                                 min(pass_capacity(cls, act), rng.randint(61, 400))])
            passes.append(make_pass(rng, cls, act, length, rng.choice(["max", "mixed"]), pair, chunk, group))
    got = run_passes(PassDspLane(), passes, seed=3, p_gap=0.3, p_stall=0.35)
    assert got == [expected(p) for p in passes]


def test_followers_take_the_leaders_pipeline_control():
    """An engine's lanes (``hw/array/engine.py``): one leads, the others follow its pipeline control. Three lanes
    get the same entries but for their codes, under idle cycles and back-pressure on the leader, while the
    followers' own ``i.valid`` and ``o.ready`` are random (ignored): each lane's pass sums are its own codes'
    exactly, and a follower's ``i.ready`` and ``o.valid`` are the leader's in every cycle."""
    rng = random.Random("lane-group")
    passes = []
    for _ in range(60):
        cls, act = rng.choice(CLASS_WIDTHS), rng.randint(1, MAX_ACT_BITS)
        for pair, chunk, group in lane_passes(cls, act):
            passes.append(make_pass(rng, cls, act, rng.choice([1, 2, rng.randint(3, 40)]), "mixed", pair, chunk,
                                    group))
    items = [e for entries in passes for e in entries]
    # The followers' codes: other codes of the same widths (pair passes keep theirs below 2^PAIR_ACT_BITS).
    codes = [[[rng.randrange(16 if e["pair"] else 256) for _ in e["u"]] for e in items] for _ in range(2)]
    lead = PassDspLane()
    lanes = [lead, PassDspLane(leader=lead), PassDspLane(leader=lead)]
    m = Module()
    m.submodules += lanes
    got = [[] for _ in lanes]

    async def bench(ctx):
        pos, cycle = 0, 0
        while len(got[0]) < len(passes):
            cycle += 1
            assert cycle < 40 * len(items), f"stalled after {len(got[0])} of {len(passes)} passes"
            offer = pos < len(items) and rng.random() >= 0.3
            ctx.set(lead.i.valid, offer)
            ctx.set(lead.o.ready, rng.random() >= 0.35)
            for k, lane in enumerate(lanes):
                if pos < len(items):
                    ctx.set(lane.i.payload, dict(items[pos], u=items[pos]["u"] if k == 0 else codes[k - 1][pos]))
                if k:
                    ctx.set(lane.i.valid, rng.random() < 0.5)
                    ctx.set(lane.o.ready, rng.random() < 0.5)
            sampled = await ctx.tick().sample(*[s for lane in lanes for s in (lane.i.ready, lane.o.valid,
                                                                              lane.o.payload)])
            ready, valid = sampled[-9], sampled[-8]
            assert [sampled[-9 + 3 * k] for k in range(3)] == [ready] * 3
            assert [sampled[-8 + 3 * k] for k in range(3)] == [valid] * 3
            if offer and ready:
                pos += 1
            if valid and ctx.get(lead.o.ready):
                for k in range(3):
                    got[k].append(int(sampled[-7 + 3 * k].p))

    simulate(m, bench)
    at = 0
    want = [[], [], []]
    for entries in passes:
        n = len(entries)
        want[0].append(expected(entries))
        for k in (1, 2):
            want[k].append(expected([dict(e, u=codes[k - 1][at + i]) for i, e in enumerate(entries)]))
        at += n
    assert got == want


def test_a_lanes_leader_leads_itself():
    with pytest.raises(ValueError, match="a lane's leader must lead itself"):
        PassDspLane(leader=PassDspLane(leader=PassDspLane()))


@pytest.mark.parametrize("signed", [0, 1])
def test_pair_passes_at_capacity_keep_the_slots_apart(signed):
    """Every lane weight at its extreme for exactly pass_capacity entries: ``|S0|`` just below
    ``2^(PAIR_SHIFT - 1)``, and both fields read back exactly (with the borrow); then single passes of 4,096
    extreme products (the widest P)."""
    rng = random.Random(1)
    passes = [make_pass(rng, cls, 4, pass_capacity(cls, 4), "max", signed=signed) for cls in (4, 8)]
    passes += [make_pass(rng, 32, 8, MAX_FAN_IN, "max", False, chunk, 1, signed=signed) for chunk in (0, 1)]
    got = run_passes(PassDspLane(), passes, seed=5, p_gap=0.0, p_stall=0.2)
    assert got == [expected(p) for p in passes]
    for p, entries in zip(got[:2], passes[:2]):
        s0 = sum(e["b"] * e["u"][0] for e in entries)
        s1 = sum(e["b"] * e["u"][1] for e in entries)
        assert abs(s0) < 1 << (PAIR_SHIFT - 1) and fields(p) == (s0, s1)
        if signed:  # the capacity is tight for the signed extreme |v| = 2^m: one more entry would overflow
            assert abs(s0) + abs(entries[0]["b"]) * 15 >= 1 << (PAIR_SHIFT - 1)
    assert abs(got[-1]) == MAX_FAN_IN * abs(lane_weight(0 if signed else (1 << 32) - 1, 32, signed, 1)) * 0xFF


def test_pair_fields_with_mixed_signs():
    """Random signed sums in both slots, positive and negative, including a low field of exactly
    ``-2^(PAIR_SHIFT - 1) + 1``: the fields come back as the engine reads them."""
    rng = random.Random(4)
    passes = [make_pass(rng, rng.choice((4, 8)), rng.randint(1, 4), rng.randint(1, 136), "mixed") for _ in range(60)]
    got = run_passes(PassDspLane(), passes, seed=6, p_gap=0.2, p_stall=0.2)
    for p, entries in zip(got, passes):
        assert fields(p) == (sum(e["b"] * e["u"][0] for e in entries), sum(e["b"] * e["u"][1] for e in entries))


def merged_pass(rng, act_bits, weights, style, group):
    """A merged single pass (a DoReFa row's wide pass): ``weights`` weights of random classes, a 32-bit one as
    its two chunks of ``v`` (``A_LOW``, ``A_HIGH``), a narrower one as ``(R_m / R_16) q`` in the 16-bit class
    with ``A_SPREAD``. Returns the entries and the pass's ``sum R_m v u``."""
    entries, want = [], 0
    for _ in range(weights):
        bits = 32 if style == "max" else rng.choice(CLASS_WIDTHS)
        top = (1 << bits) - 1
        q = top if style == "max" else rng.choice([0, top, rng.randrange(top + 1)])
        u = [(1 << act_bits) - 1] * 2 if style == "max" else [rng.randrange(1 << act_bits) for _ in range(2)]
        base = {"pair": 0, "group": group, "u": u, "end": 0}
        want += R[bits] * (2 * q - top) * u[group]  # R_m v u, v = 2 q - D_m (DoReFa)
        if bits == 32:
            entries.append({**base, "b": lane_weight(q, 32, False, 0), "a_mode": A_LOW})
            entries.append({**base, "b": lane_weight(q, 32, False, 1), "a_mode": A_HIGH})
        else:
            scale = R[bits] // R[16]
            entries.append({**base, "b": lane_weight(scale * q, 16, False), "a_mode": A_SPREAD})
    entries[-1]["end"] = 1
    return entries, want


def test_merged_passes_sum_every_weight_times_its_r():
    """A merged pass's P is ``sum R_m v u`` over its weights (32-bit ones as two chunks), exact under
    back-pressure, and at :func:`merged_capacity` with every weight and activation at its largest it stays
    inside 48 bits signed (8-bit activations: 128 32-bit weights)."""
    rng = random.Random(11)
    made = [merged_pass(rng, a, rng.randrange(1, 30), "mixed", rng.randrange(2)) for a in (2, 4, 5, 8) * 3]
    got = run_passes(PassDspLane(), [e for e, _ in made], seed=12, p_gap=0.3, p_stall=0.3)
    assert got == [w for _, w in made] == [expected(e) for e, _ in made]
    assert merged_capacity(8) == 128 and merged_capacity(4) == 2184 and merged_capacity(5) == 1057
    full, want = merged_pass(rng, 8, merged_capacity(8), "max", 1)
    got = run_passes(PassDspLane(), [full], seed=13, p_gap=0.0, p_stall=0.1)
    assert got == [want] and want == 128 * ((1 << 32) - 1) * 255 < 1 << 47
    with pytest.raises(ValueError, match="act_bits"):
        merged_capacity(9)


@pytest.mark.parametrize("signed", [False, True])
def test_lane_weights_weighted_by_r_are_goldens_combine(signed):
    """``sum_m R_m sum v u`` (a 32-bit weight's two chunks joined as ``lo + 2^16 hi``) equals golden's
    :func:`~model.export.golden.combine` of the class sums and activation sums, on random codes of every class."""
    rng = np.random.default_rng(int(signed))
    sums, act_sums, total = {}, {}, 0
    for bits in CLASS_WIDTHS:
        q = rng.integers(0, 1 << bits, size=50, dtype=np.uint64).astype(object)
        q[:2] = [0, (1 << bits) - 1]
        u = rng.integers(0, 256, size=50).astype(object)
        sums[bits], act_sums[bits] = np.array([int((q * u).sum())]), np.array([int(u.sum())])
        for qq, uu in zip(q, u):
            if bits == 32:
                v = lane_weight(int(qq), 32, signed, 0) + (lane_weight(int(qq), 32, signed, 1) << 16)
            else:
                v = lane_weight(int(qq), bits, signed)
            assert -(1 << 16) <= (v if bits < 32 else lane_weight(int(qq), 32, signed, 1)) < 1 << 16
            total += R[bits] * v * int(uu)
    assert total == int(combine(sums, act_sums, signed)[0])
    assert lane_weight(0, 4, True) == -16 and lane_weight(15, 4, False) == 15 and D == (1 << 32) - 1
    with pytest.raises(ValueError, match="chunk"):
        lane_weight(3, 8, False, 1)
    with pytest.raises(ValueError, match="code"):
        lane_weight(16, 4, False)


def test_every_placement_puts_the_codes_where_the_pass_says():
    """One-entry passes of ``b = 1`` read A back: every form, slot group and ``a_mode`` on random 8-bit codes in
    both slots; a pair pass takes only the low 4 bits of each (``u0 + 2^20 u1``), a single pass ``u_group`` at
    bit 0, bit 16 or both."""
    rng = random.Random(21)
    passes, want = [], []
    for pair, group, a_mode in [(p, g, a) for p in (1, 0) for g in (0, 1) for a in PLACE]:
        for _ in range(12):
            u = [rng.randrange(256), rng.randrange(256)]
            passes.append([{"b": 1, "pair": pair, "group": group, "a_mode": a_mode, "u": u, "end": 1}])
            want.append((u[0] & 15) + ((u[1] & 15) << PAIR_SHIFT) if pair else u[group] * PLACE[a_mode])
    assert run_passes(PassDspLane(), passes, seed=22, p_gap=0.2, p_stall=0.2) == want


def test_one_entry_a_cycle_without_back_pressure():
    rng = random.Random(2)
    passes = [make_pass(rng, 4, 4, n, "mixed") for n in (1, 5, 1, 9)]
    got = []
    lane = PassDspLane()
    items = [e for p in passes for e in p]

    async def bench(ctx):
        accepted = 0
        for _ in range(len(items) + 10):
            ctx.set(lane.i.valid, accepted < len(items))
            if accepted < len(items):
                ctx.set(lane.i.payload, items[accepted])
            ctx.set(lane.o.ready, 1)
            _, _, ir, ov, out = await ctx.tick().sample(lane.i.ready, lane.o.valid, lane.o.payload)
            assert ir  # never stalls by itself
            accepted += 1  # noqa: SIM113 (the entries offered, as the loop turns: the lane never stalls)
            if ov:
                got.append(int(out.p))

    simulate(lane, bench)
    assert got == [expected(p) for p in passes]


@pytest.mark.parametrize(("cls", "act", "passes", "capacity"), [
    (4, 4, [(True, 0, 0)], 2184), (8, 4, [(True, 0, 0)], 136), (8, 1, [(True, 0, 0)], 136),
    (16, 4, [(False, 0, 0), (False, 0, 1)], MAX_FAN_IN), (4, 8, [(False, 0, 0), (False, 0, 1)], MAX_FAN_IN),
    (32, 2, [(False, 0, 0), (False, 0, 1), (False, 1, 0), (False, 1, 1)], MAX_FAN_IN),
])
def test_the_pass_schedule_grows_with_both_widths(cls, act, passes, capacity):
    assert lane_passes(cls, act) == passes
    assert pass_capacity(cls, act) == capacity


@pytest.mark.parametrize(("args", "message"), [((5, 4), "class_bits"), ((4, 0), "act_bits"), ((4, 9), "act_bits")])
def test_widths_validated(args, message):
    with pytest.raises(ValueError, match=message):
        lane_passes(*args)


def test_maps_to_one_dsp48e1_and_few_luts(tmp_path):
    """Yosys ``synth_xilinx``: one DSP48E1 with MREG and PREG, nothing unmapped, and a fraction of the segment
    lane's ~800 LUT (the point of the redesign)."""
    path = tmp_path / "pass_lane.v"
    path.write_text(verilog.convert(PassDspLane(), name="lane", emit_src=False))
    script = f"read_verilog {path}; {synth_xilinx('lane')}; stat; write_json {path}.json"
    proc = subprocess.run([yosys_binary(), "-p", script], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = parse_stat(proc.stdout[proc.stdout.rfind("Printing statistics"):])
    cells = json.loads((tmp_path / "pass_lane.v.json").read_text())["modules"]["lane"]["cells"].values()
    dsps = [c for c in cells if c["type"] == "DSP48E1"]
    assert res.dsp == len(dsps) == 1
    assert not [c["type"] for c in cells if c["type"].startswith("$") or "MUL" in c["type"]]
    for name in ("AREG", "BREG", "MREG", "PREG"):
        assert int(dsps[0]["parameters"][name], 2) == DSP48E1_ATTRIBUTES[name], name
    assert res.lut < 120 and res.ff < 140, (res.lut, res.ff)
