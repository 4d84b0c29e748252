# amaranth: UnusedElaboratable=no
"""Pass lane: P and the activation sums of every pass exact, pair passes at their capacity with every code at
its largest, single passes of every chunk and group, under idle input cycles and output back-pressure; the
pass schedule per width pair; one DSP48E1 in Yosys at a small fraction of a segment lane's LUTs."""

import json
import random
import subprocess

import pytest
from amaranth.back import verilog

from hw.dsp.lane import DSP48E1_ATTRIBUTES
from hw.dsp.pass_lane import (
    A_HIGH,
    A_LOW,
    A_SPREAD,
    PAIR_SHIFT,
    PassDspLane,
    act_sum_bits,
    is_pair,
    lane_passes,
    merged_capacity,
    pass_capacity,
)
from hw.platform.synth import parse_stat, yosys_binary
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN
from tests.hw.stream_source import simulate


def make_pass(rng, class_bits, act_bits, length, style, pair=None, chunk=0, group=0):
    """A pass's entries: ``{code, pair, chunk, group, u, count, end}`` with codes of the given widths."""
    def code(bits):
        top = (1 << bits) - 1
        return top if style == "max" else rng.choice([0, top, rng.randrange(top + 1)])

    pair = is_pair(class_bits, act_bits) if pair is None else pair
    entries = []
    for k in range(length):
        entries.append({"code": code(class_bits), "pair": int(pair), "chunk": chunk, "group": group,
                        "u": [code(act_bits), code(act_bits)], "count": [rng.randrange(2), rng.randrange(2)],
                        "end": int(k == length - 1)})
    return entries


def expected(entries):
    """P and the two activation sums of one pass (module docstring's equations)."""
    e0 = entries[0]
    if e0["pair"]:
        p = sum(e["code"] * (e["u"][0] + (e["u"][1] << PAIR_SHIFT)) for e in entries)
    else:
        place = {A_LOW: 1, A_HIGH: 1 << 16, A_SPREAD: (1 << 16) + 1}
        p = sum(((e["code"] >> (16 * e["chunk"])) & 0xFFFF) * e["u"][e["group"]] * place[e.get("a_mode", A_LOW)]
                for e in entries)
    return p, [sum(e["u"][j] for e in entries if e["count"][j]) for j in range(2)]


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
            value = (int(out.p), [int(out.a[0]), int(out.a[1])]) if ov else None
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


def test_pair_passes_at_capacity_keep_the_slots_apart():
    """Every code at its largest for exactly pass_capacity entries: S0 just below 2^PAIR_SHIFT, and the
    fields read back exactly; then single passes of 4,096 largest products (the widest P)."""
    rng = random.Random(1)
    passes = [make_pass(rng, cls, 4, pass_capacity(cls, 4), "max") for cls in (4, 8)]
    passes += [make_pass(rng, 32, 8, MAX_FAN_IN, "max", False, chunk, 1) for chunk in (0, 1)]
    got = run_passes(PassDspLane(), passes, seed=5, p_gap=0.0, p_stall=0.2)
    for (p, a), entries in zip(got, passes):
        assert (p, a) == expected(entries)
        if entries[0]["pair"]:
            s0 = sum(e["code"] * e["u"][0] for e in entries)
            assert s0 < 1 << PAIR_SHIFT and p & ((1 << PAIR_SHIFT) - 1) == s0
            assert p >> PAIR_SHIFT == sum(e["code"] * e["u"][1] for e in entries)
    assert got[-1][0] == MAX_FAN_IN * 0xFFFF * 0xFF and max(a for _, aa in got for a in aa) < 1 << act_sum_bits()


def merged_pass(rng, act_bits, weights, style, group):
    """A merged single pass (a DoReFa row's wide pass): ``weights`` weights of random classes, a 32-bit one as
    its two chunks (``A_LOW``, ``A_HIGH``), a narrower one as ``(R_m / R_16) q`` with ``A_SPREAD``."""
    entries = []
    for _ in range(weights):
        bits = 32 if style == "max" else rng.choice(CLASS_WIDTHS)
        top = (1 << bits) - 1
        q = top if style == "max" else rng.choice([0, top, rng.randrange(top + 1)])
        u = [(1 << act_bits) - 1] * 2 if style == "max" else [rng.randrange(1 << act_bits) for _ in range(2)]
        base = {"pair": 0, "group": group, "u": u, "end": 0}
        if bits == 32:
            entries.append({**base, "code": q, "chunk": 0, "a_mode": A_LOW, "count": [1 - group, group]})
            entries.append({**base, "code": q, "chunk": 1, "a_mode": A_HIGH, "count": [0, 0]})
        else:
            scale = {4: 4369, 8: 257, 16: 1}[bits]  # R_m / R_16
            entries.append({**base, "code": scale * q, "chunk": 0, "a_mode": A_SPREAD, "count": [1 - group, group]})
    entries[-1]["end"] = 1
    return entries


def test_merged_passes_sum_every_weight_times_its_r():
    """A merged pass's P is ``sum R_m q u`` over its weights (32-bit ones as two chunks), exact under
    back-pressure, and at :func:`merged_capacity` with every code and activation at its largest it stays
    below ``2^48`` (8-bit activations: 257 32-bit weights)."""
    rng = random.Random(11)
    passes = [merged_pass(rng, a, rng.randrange(1, 30), "mixed", rng.randrange(2)) for a in (2, 4, 5, 8) * 3]
    assert run_passes(PassDspLane(), passes, seed=12, p_gap=0.3, p_stall=0.3) == [expected(p) for p in passes]
    assert merged_capacity(8) == 257 and merged_capacity(4) == MAX_FAN_IN and merged_capacity(5) == 2114
    full = merged_pass(rng, 8, merged_capacity(8), "max", 1)
    got = run_passes(PassDspLane(), [full], seed=13, p_gap=0.0, p_stall=0.1)
    assert got == [expected(full)] and got[0][0] == 257 * ((1 << 32) - 1) * 255 < 1 << 48
    with pytest.raises(ValueError, match="act_bits"):
        merged_capacity(9)


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
                got.append((int(out.p), [int(out.a[0]), int(out.a[1])]))

    simulate(lane, bench)
    assert got == [expected(p) for p in passes]


@pytest.mark.parametrize(("cls", "act", "passes", "capacity"), [
    (4, 4, [(True, 0, 0)], MAX_FAN_IN), (8, 4, [(True, 0, 0)], 274), (8, 1, [(True, 0, 0)], 274),
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
    with pytest.raises(ValueError, match="max_entries"):
        PassDspLane(max_entries=0)


def test_maps_to_one_dsp48e1_and_few_luts(tmp_path):
    """Yosys ``synth_xilinx``: one DSP48E1 with MREG and PREG, nothing unmapped, and a fraction of the segment
    lane's ~800 LUT (the point of the redesign)."""
    path = tmp_path / "pass_lane.v"
    path.write_text(verilog.convert(PassDspLane(), name="lane", emit_src=False))
    script = f"read_verilog {path}; synth_xilinx -family xc7 -flatten -top lane; stat; write_json {path}.json"
    proc = subprocess.run([yosys_binary(), "-p", script], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = parse_stat(proc.stdout[proc.stdout.rfind("Printing statistics"):])
    cells = json.loads((tmp_path / "pass_lane.v.json").read_text())["modules"]["lane"]["cells"].values()
    dsps = [c for c in cells if c["type"] == "DSP48E1"]
    assert res.dsp == len(dsps) == 1
    assert not [c["type"] for c in cells if c["type"].startswith("$") or "MUL" in c["type"]]
    for name in ("AREG", "BREG", "MREG", "PREG"):
        assert int(dsps[0]["parameters"][name], 2) == DSP48E1_ATTRIBUTES[name], name
    assert res.lut < 200 and res.ff < 260, (res.lut, res.ff)
