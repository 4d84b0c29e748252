# amaranth: UnusedElaboratable=no
"""SegmentDspLane: per-segment class sums and activation sums bit-exact against Python ints, the published
cycles per entry measured in simulation, and Yosys mapping the lane to exactly one DSP48E1."""

import functools
import json
import random
import subprocess

import pytest
from amaranth.back import verilog

from hw.dsp.lane import DSP48E1_ATTRIBUTES
from hw.dsp.segment_lane import (
    DEFAULT_ACT_WIDTHS,
    SegmentDspLane,
    act_sum_bits,
    entry_cycles,
    promoted,
    segment_mode,
    sum_bits,
)
from hw.platform.synth import parse_stat, yosys_binary
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN
from tests.hw.stream_source import simulate

SLOTS = 3
#: Cycles per entry with 3 slots, by hand from the broadcast plans (docs/array_design.md, decision 3):
#: 4x4 3 products, 8x4 / 16x4 / 4x8 2 (2 cycles for 3 slots), 16x8 1 (3 cycles), 32-bit two chunks.
PUBLISHED = {
    4: [1, 1, 1, 1, 1, 2, 2, 2],  # act_bits 1..8 (1 runs as 2)
    8: [1, 1, 2, 2, 2, 2, 2, 2],
    16: [2, 2, 2, 2, 3, 3, 3, 3],
    32: [4, 4, 4, 4, 6, 6, 6, 6],
}


def _code(rng: random.Random, bits: int, style: str) -> int:
    top = (1 << bits) - 1
    if style == "max":
        return top
    if style == "random":
        return rng.randrange(top + 1)
    return rng.choice([0, top, 1, rng.randrange(top + 1)])


def make_segment(rng, cls, act_bits, length, style, slots=SLOTS):
    """``(cls, act_bits, [(q, [u_j])])``: one segment of entries."""
    width = CLASS_WIDTHS[cls]
    return cls, act_bits, [(_code(rng, width, style), [_code(rng, act_bits, style) for _ in range(slots)])
                           for _ in range(length)]


def expected(segments, slots=SLOTS):
    return [([sum(q * u[j] for q, u in entries) for j in range(slots)], [sum(u[j] for _, u in entries)
                                                                        for j in range(slots)])
            for _, _, entries in segments]


def run_segments(lane, segments, *, seed, p_gap, p_stall):
    """Feed ``segments`` through ``lane``; return the received ``(S, A)`` and the accept / output cycles.

    One testbench drives and samples every cycle, so cycle numbers are exact; a stalled output must stay
    unchanged until taken.
    """
    rng = random.Random(seed)
    slots = lane.slots
    items = [{"cls": cls, "code": q, "act_bits": act, "u": u, "end": k == len(entries) - 1}
             for cls, act, entries in segments for k, (q, u) in enumerate(entries)]
    got, accepted, emitted = [], [], []
    budget = (sum(6 * len(e) for _, _, e in segments) + 20) * (1 + int(20 * (p_gap + p_stall))) + 100

    async def bench(ctx):
        pos, gap, held = 0, 0, None
        for cycle in range(budget):
            if len(got) == len(segments):
                break
            offer = gap == 0 and pos < len(items)
            ctx.set(lane.i.valid, offer)
            if offer:
                ctx.set(lane.i.payload, items[pos])
            ctx.set(lane.o.ready, rng.random() >= p_stall)
            _, _, iv, ir, ov, orr, out = await ctx.tick().sample(
                lane.i.valid, lane.i.ready, lane.o.valid, lane.o.ready, lane.o.payload)
            if iv and ir:
                accepted.append(cycle)
                pos += 1
                gap = 1 if rng.random() < p_gap else 0
            elif gap:
                gap -= 1
            value = ([int(out.s[j]) for j in range(slots)], [int(out.a[j]) for j in range(slots)]) if ov else None
            if held is not None:
                assert value == held, f"cycle {cycle}: stalled output changed from {held} to {value}"
            held = value if ov and not orr else None
            if ov and orr:
                got.append(value)
                emitted.append(cycle)
        assert len(got) == len(segments), f"lane stalled after {len(got)} of {len(segments)} segments"
        for _ in range(2 * lane.latency):  # and nothing more
            ctx.set(lane.i.valid, 0)
            ctx.set(lane.o.ready, 1)
            _, _, ov = await ctx.tick().sample(lane.o.valid)
            assert not ov, "output without a segment"

    simulate(lane, bench)
    return got, items, accepted, emitted


def random_segments(rng, n, act_choices):
    """Random classes, widths and lengths: single entries, drain intervals and one past, tens, and long
    segments that cross many drain intervals; all-ones codes often."""
    segments = []
    for _ in range(n):
        cls = rng.randrange(len(CLASS_WIDTHS))
        act = rng.choice(act_choices)
        interval = segment_mode(CLASS_WIDTHS[cls], promoted(act), SLOTS).interval
        length = rng.choice([1, 1, 2, interval, interval + 1, rng.randint(3, 40), rng.randint(3, 40),
                             rng.randint(41, 600)])
        segments.append(make_segment(rng, cls, act, length, rng.choice(["max", "random", "mixed"])))
    return segments


@functools.cache
def _random_run():
    rng = random.Random("segment-lane")
    segments = random_segments(rng, 120, [1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 8])
    # Long all-ones segments: the 4x4 mode's P slots at their limit between drains, and the widest sums.
    segments += [make_segment(rng, 0, 4, 600, "max"), make_segment(rng, 3, 8, 150, "max"),
                 make_segment(rng, 1, 2, 400, "mixed"), make_segment(rng, 0, 5, 1, "max")]
    rng.shuffle(segments)
    lane = SegmentDspLane(SLOTS)
    got, _, _, _ = run_segments(lane, segments, seed=7, p_gap=0.3, p_stall=0.35)
    return got, segments


def test_random_segments_with_back_pressure():
    got, segments = _random_run()
    assert got == expected(segments)


def test_every_mode_exact_with_all_ones():
    """Every (class, act width) pair at all-ones codes, 1 entry and past its drain interval."""
    rng = random.Random(3)
    segments = []
    for cls, width in enumerate(CLASS_WIDTHS):
        for act in DEFAULT_ACT_WIDTHS:
            interval = segment_mode(width, act, SLOTS).interval
            segments += [make_segment(rng, cls, act, 1, "max"), make_segment(rng, cls, act, 2 * interval + 1, "max")]
    got, _, _, _ = run_segments(SegmentDspLane(SLOTS), segments, seed=1, p_gap=0.1, p_stall=0.1)
    assert got == expected(segments)


@pytest.mark.parametrize("slots,act_widths", [(2, (2, 4, 8)), (1, (8,)), (4, DEFAULT_ACT_WIDTHS)])
def test_other_slot_counts_and_width_sets(slots, act_widths):
    """Other lane shapes: promotion to the next supported width, one slot (P accumulates for long), four."""
    rng = random.Random(slots)
    lane = SegmentDspLane(slots, act_widths=act_widths)
    segments = []
    for _ in range(16):
        cls, act = rng.randrange(4), rng.randint(1, 8)
        segments.append(make_segment(rng, cls, act, rng.choice([1, 5, 40]), rng.choice(["max", "mixed"]), slots))
    got, _, _, _ = run_segments(lane, segments, seed=slots, p_gap=0.2, p_stall=0.3)
    assert got == expected(segments, slots)


def test_published_cycle_table():
    lane = SegmentDspLane(SLOTS)
    table = lane.cycle_table()
    assert table == {(c, a + 1): cycles for c, row in PUBLISHED.items() for a, cycles in enumerate(row)}
    assert entry_cycles(8, 4) == 2 and entry_cycles(4, 4) == 1 and entry_cycles(32, 8) == 6


@functools.cache
def _timed_run():
    """No gaps, no stalls: every (class, act_bits 1..8) pair, segments of 1, 2 and 5 entries in turn."""
    rng = random.Random("timing")
    segments = [make_segment(rng, cls, act, length, "mixed")
                for length in (1, 2, 5) for cls in range(4) for act in range(1, MAX_ACT_BITS + 1)]
    lane = SegmentDspLane(SLOTS)
    got, items, accepted, emitted = run_segments(lane, segments, seed=0, p_gap=0.0, p_stall=0.0)
    assert got == expected(segments)
    return lane, items, accepted, emitted


def test_measured_cycles_per_entry_equal_the_table():
    """Back to back, each entry is accepted ``cycles_per_entry`` cycles after the one before: segment ends,
    drains and mode changes cost no cycle."""
    lane, items, accepted, _ = _timed_run()
    for k in range(1, len(items)):
        item = items[k]
        cycles = lane.cycles_per_entry(CLASS_WIDTHS[item["cls"]], item["act_bits"])
        assert accepted[k] - accepted[k - 1] == cycles, (k, item["cls"], item["act_bits"])


def test_sums_leave_latency_cycles_after_the_segment_end():
    lane, items, accepted, emitted = _timed_run()
    ends = [cycle for cycle, item in zip(accepted, items, strict=True) if item["end"]]
    assert emitted == [cycle + lane.latency for cycle in ends]


def test_sum_widths_from_the_contract():
    assert sum_bits() == 52 and act_sum_bits() == 20
    assert MAX_FAN_IN * ((1 << 32) - 1) * ((1 << MAX_ACT_BITS) - 1) < 1 << sum_bits()
    lane = SegmentDspLane(SLOTS, max_entries=16)
    assert lane.o.payload.shape().size == SLOTS * (sum_bits(16) + act_sum_bits(16))


def test_promotion():
    assert [promoted(a) for a in range(1, 9)] == [2, 2, 3, 4, 5, 6, 7, 8]
    assert [promoted(a, (2, 4, 8)) for a in range(1, 9)] == [2, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match=r"act_bits must be in 1\.\.8, not 9"):
        promoted(9)


@pytest.mark.parametrize("kwargs,message", [
    ({"slots": 0}, r"slots must be an integer in 1\.\.16, not 0"),
    ({"slots": 17}, r"slots must be an integer in 1\.\.16, not 17"),
    ({"act_widths": (2, 4)}, r"act_widths must be a subset of .* including 8, not \(2, 4\)"),
    ({"act_widths": (1, 8)}, r"act_widths must be a subset of .* including 8, not \(1, 8\)"),
    ({"max_entries": 0}, r"max_entries must be an integer in 1\.\.4096, not 0"),
    ({"max_entries": 4097}, r"max_entries must be an integer in 1\.\.4096, not 4097"),
])
def test_parameters_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentDspLane(**kwargs)


def test_maps_to_one_dsp48e1(tmp_path):
    """Yosys ``synth_xilinx`` (about 10 s): one DSP48E1 with the lane's registers (MREG, PREG, no A/B
    registers), nothing left unmapped; also the lane's LUT / FF cost, bounded so that growth shows."""
    path = tmp_path / "segment_lane.v"
    path.write_text(verilog.convert(SegmentDspLane(SLOTS), name="lane", emit_src=False))
    script = f"read_verilog {path}; synth_xilinx -family xc7 -flatten -top lane; stat; write_json {path}.json"
    proc = subprocess.run([yosys_binary(), "-p", script], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = parse_stat(proc.stdout[proc.stdout.rfind("Printing statistics"):])
    cells = json.loads((tmp_path / "segment_lane.v.json").read_text())["modules"]["lane"]["cells"].values()
    dsps = [c for c in cells if c["type"] == "DSP48E1"]
    assert res.dsp == len(dsps) == 1
    assert not [c["type"] for c in cells if c["type"].startswith("$") or "MUL" in c["type"]]
    for name in ("AREG", "BREG", "MREG", "PREG"):
        assert int(dsps[0]["parameters"][name], 2) == DSP48E1_ATTRIBUTES[name], name
    assert res.lut < 1100 and res.ff < 560, (res.lut, res.ff)
