"""PassSequencer against a reference of its passes: the order of :func:`hw.dsp.pass_lane.lane_passes` per
segment (chunk-major, then slot group), the 4 -> 8-bit promotion of DoReFa rows (``17 q``), the capacity
split of pair passes, the per-bank ``first`` / ``final`` records and the empty entry of an all-pruned row, on random rows
under back-pressure (Amaranth simulator)."""

import numpy as np
import pytest

from hw.array.pass_sequencer import PROMOTE, SPREAD_SCALE, PassSequencer
from hw.dsp.pass_lane import (
    A_HIGH,
    A_LOW,
    A_SPREAD,
    PAIR_ACT_BITS,
    PAIR_WEIGHT_BITS,
    SLOTS,
    lane_passes,
    merged_capacity,
    pass_capacity,
)
from model.export.format import CLASS_WIDTHS
from tests.hw.stream_source import Source, simulate

FAN_IN_WIDTH = 10
PIXELS = 6


def decoder_entries(row):
    """A row ``[(cls, [(position, code), ...]), ...]`` (present classes, ascending) as the decoder emits it."""
    if not row:
        return [{"position": 0, "cls": 0, "code": 0, "last": 1, "empty": 1, "seg_end": 1, "next_cls": 0}]
    out = []
    for s, (cls, entries) in enumerate(row):
        nxt = row[s + 1][0] if s + 1 < len(row) else 0
        for i, (pos, code) in enumerate(entries):
            end = i == len(entries) - 1
            out.append({"position": pos, "cls": cls, "code": code, "last": int(end and s == len(row) - 1),
                        "empty": 0, "seg_end": int(end), "next_cls": nxt})
    return out


def reference_passes(row, act_bits, signed, gap, pixels):
    """The passes of one row: ``(cls, pair, chunk, group, [(position, code, lane chunk, a_mode, empty), ...])``
    in order (``chunk`` is the record's: the combine's ``2^16``; a merged pass's lanes take both chunks)."""
    empty = not row
    segs = [(0, [(0, 0)])] if empty else [(c, list(e)) for c, e in row]
    dorefa = not signed and not gap
    if dorefa and act_bits <= PAIR_ACT_BITS and segs[0][0] == 0 and len(segs) > 1 and segs[1][0] == 1:
        # DoReFa: R_4 = 17 R_8, so the 4-bit codes go out as 17 q in the 8-bit class, one pass with the
        # row's 8-bit codes (a row without 8-bit codes keeps its 4-bit pass).
        promoted = [(p, PROMOTE * q) for p, q in segs[0][1]]
        segs = [(1, promoted + segs[1][1])] + segs[2:]
    passes = []
    merged = []  # a DoReFa row's weights that do not run in pair passes: (position, code, cls)
    for cls, entries in segs:
        bits = CLASS_WIDTHS[cls]
        if not gap and bits <= PAIR_WEIGHT_BITS and act_bits <= PAIR_ACT_BITS:
            assert lane_passes(bits, act_bits) == [(True, 0, 0)]
            cap = pass_capacity(bits, PAIR_ACT_BITS)
            for k in range(0, len(entries), cap):
                passes.append((cls, 1, 0, 0, [(p, q, 0, A_LOW, int(empty)) for p, q in entries[k:k + cap]]))
            continue
        if dorefa:
            merged += [(p, q, cls) for p, q in entries]
            continue
        order = lane_passes(bits, act_bits if not gap else 8)
        assert order == sorted(order, key=lambda x: (x[1], x[2]))  # chunk-major
        for _, chunk, group in order:
            if group and pixels <= 1 and not gap:
                continue  # no pixel has slot 1
            passes.append((cls, 0, chunk, group, [(p, q, chunk, A_LOW, int(empty)) for p, q in entries]))
    if merged:
        # One merged pass per slot group (cut at the capacity, in weights): R_m q u in the lanes.
        cap = merged_capacity(act_bits)
        for group in (0, 1) if pixels > 1 else (0,):
            for k in range(0, len(merged), cap):
                lane_entries = []
                for p, q, cls in merged[k:k + cap]:
                    if CLASS_WIDTHS[cls] == 32:
                        lane_entries += [(p, q, 0, A_LOW, int(empty)), (p, q, 1, A_HIGH, int(empty))]
                    else:
                        lane_entries.append((p, SPREAD_SCALE[cls] * q, 0, A_SPREAD, int(empty)))
                passes.append((len(CLASS_WIDTHS) - 1, 0, 0, group, lane_entries))
    return passes


def banks(pair, group, gap):
    return 0b11 if pair else (0b01 if gap else 1 << group)


def random_row(rng, fan_in, p_zero, long8=False):
    widths = rng.choice(len(CLASS_WIDTHS) + 1, size=fan_in, p=[p_zero] + [(1 - p_zero) / 4] * 4)
    if long8:
        widths = np.where(rng.random(fan_in) < 0.9, 2, widths)
    row = []
    for cls in range(len(CLASS_WIDTHS)):
        pos = np.flatnonzero(widths == cls + 1)
        if pos.size:
            hi = 1 << CLASS_WIDTHS[cls]
            row.append((cls, [(int(p), int(rng.integers(1, hi))) for p in pos]))
    return row


def run(rows, act_bits, signed, gap, pixels, seed, p_gap=0.3, p_stall=0.3, fan_in_width=FAN_IN_WIDTH):
    rng = np.random.default_rng(seed)
    dut = PassSequencer(fan_in_width=fan_in_width, pixels=PIXELS)
    items = [e for row in rows for e in decoder_entries(row)]
    want = [reference_passes(row, act_bits, signed, gap, pixels) for row in rows]
    n_out = sum(len(p[4]) for r in want for p in r)
    got = []

    async def bench(ctx):
        ctx.set(dut.act_bits, act_bits)
        ctx.set(dut.gap, gap)
        ctx.set(dut.signed, signed)
        src = Source(dut.i, items, rng, p_gap)
        row_src = Source(dut.rows, [{"pixels": pixels, "bank": r % 2} for r in range(len(rows))], rng, p_gap)
        held = None  # the payload offered and not taken: it must stay until its transfer
        for _ in range(20 * n_out + 100):
            if len(got) == n_out:
                break
            src.drive(ctx)
            row_src.drive(ctx)
            ctx.set(dut.o.ready, rng.random() >= p_stall)
            _, _, iv, ir, rv, rr, ov, orr, out = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.rows.valid, dut.rows.ready, dut.o.valid, dut.o.ready, dut.o.payload)
            src.update(iv, ir)
            row_src.update(rv, rr)
            if held is not None:
                assert ov and out.as_bits() == held, "a pass entry changed or vanished before its transfer"
            held = out.as_bits() if ov and not orr else None
            if ov and orr:
                got.append({"position": out.position, "code": out.code, "empty": out.empty,
                            "lane_chunk": out.chunk, "a_mode": out.a_mode, "bank": out.bank,
                            "end": out.end, "cls": out.rec.cls, "pair": out.rec.pair, "chunk": out.rec.chunk,
                            "group": out.rec.group, "first": out.rec.first[0] | (out.rec.first[1] << 1),
                            "final": out.rec.final, "pixels": out.rec.pixels})
        assert row_src.pos == len(rows), "the sequencer did not take every row's pixel count"

    simulate(dut, bench)
    assert len(got) == n_out, f"stalled after {len(got)} of {n_out} pass entries"

    # Cut the output into passes at `end` and compare with the reference, row by row.
    k = 0
    for r, passes in enumerate(want):
        touched = 0
        for i, (cls, pair, chunk, group, entries) in enumerate(passes):
            seen = got[k:k + len(entries)]
            k += len(entries)
            mine = banks(pair, group, gap)
            later = 0
            for p in passes[i + 1:]:
                later |= banks(p[1], p[3], gap)
            where = f"row {r} pass {i} ({cls=}, {pair=}, {chunk=}, {group=})"
            assert [(e["position"], e["code"], e["lane_chunk"], e["a_mode"], e["empty"]) for e in seen] == entries, \
                where
            assert [e["end"] for e in seen] == [0] * (len(entries) - 1) + [1], where
            for e in seen:
                assert (e["cls"], e["pair"], e["chunk"], e["group"]) == (cls, pair, chunk, group), where
                assert e["first"] == mine & ~touched, where
                assert e["pixels"] == pixels and e["bank"] == r % 2, where
            assert seen[-1]["final"] == int(mine & later == 0), where
            assert all(e["final"] == 0 for e in seen[:-1]), where
            touched |= mine
    return got


@pytest.mark.parametrize("seed", range(12))
def test_random_rows_follow_lane_passes(seed):
    rng = np.random.default_rng(100 + seed)
    act_bits = int(rng.choice([2, 4, 5, 8]))
    signed = bool(seed % 2)
    gap = seed % 6 == 5
    pixels = 1 if seed % 6 == 4 else int(rng.integers(2, PIXELS + 1))
    rows = [random_row(rng, int(rng.integers(1, 40)), float(rng.choice([0.0, 0.5, 0.95]))) for _ in range(5)]
    rows.append([])  # an all-pruned row
    run(rows, act_bits, signed, gap, pixels, seed)


@pytest.mark.parametrize("signed", [False, True])
def test_four_bit_codes_join_the_eight_bit_pass_only_in_dorefa_rows(signed):
    """At 1-4-bit activations a DoReFa row's 4-bit codes go out as ``17 q`` in the 8-bit class (one pass);
    a signed row keeps a 4-bit and an 8-bit pass (its offset 2^m does not scale into the wider class)."""
    row = [(0, [(1, 3), (4, 15), (9, 1)]), (1, [(2, 200), (7, 9)])]
    got = run([row], act_bits=4, signed=signed, gap=False, pixels=PIXELS, seed=7)
    if signed:
        assert [e["code"] for e in got] == [3, 15, 1, 200, 9]
        assert [e["cls"] for e in got] == [0, 0, 0, 1, 1]
        assert sum(e["end"] for e in got) == 2
    else:
        assert [e["code"] for e in got] == [51, 255, 17, 200, 9]
        assert all(e["cls"] == 1 for e in got) and sum(e["end"] for e in got) == 1
        # A row of 4-bit codes alone is not promoted: one class-0 pass of 300 entries, where the promoted
        # codes' pass would have been cut every 136.
        alone = [(0, [(k, 1 + k % 15) for k in range(300)])]
        got4 = run([alone], act_bits=4, signed=False, gap=False, pixels=PIXELS, seed=9, p_gap=0.1, p_stall=0.1)
        assert [e["code"] for e in got4] == [1 + k % 15 for k in range(300)]
        assert {e["cls"] for e in got4} == {0} and sum(e["end"] for e in got4) == 1
    # At 5-8-bit activations a DoReFa row's classes all go into the merged single passes (one per slot
    # group), each code times R_m / R_16; a signed row keeps one single pass per class and group.
    got = run([row], act_bits=8, signed=signed, gap=False, pixels=PIXELS, seed=8)
    if signed:
        assert [e["code"] for e in got] == [3, 15, 1] * 2 + [200, 9] * 2 and sum(e["end"] for e in got) == 4
    else:
        assert [e["code"] for e in got] == [3 * 4369, 15 * 4369, 4369, 200 * 257, 9 * 257] * 2
        assert {e["cls"] for e in got} == {3} and sum(e["end"] for e in got) == 2


def test_wide_classes_of_a_dorefa_row_share_one_pass_per_group():
    """At 4-bit activations a DoReFa row with weights of every class takes three passes (the pair pass, then
    one merged pass per slot group: a 16-bit code once with ``A_SPREAD``, a 32-bit one as its low and high
    chunk) where a signed row takes eight."""
    row = [(0, [(1, 3)]), (1, [(2, 200)]), (2, [(3, 40000), (5, 7)]), (3, [(6, 0x89ABCDEF)])]
    got = run([row], act_bits=4, signed=False, gap=False, pixels=PIXELS, seed=5)
    assert sum(e["end"] for e in got) == 3
    wide = [(e["code"], e["lane_chunk"], e["a_mode"], e["group"]) for e in got if e["cls"] == 3]
    lo, hi = [(0x89ABCDEF, 0, A_LOW), (0x89ABCDEF, 1, A_HIGH)]
    assert wide == [(40000, 0, A_SPREAD, 0), (7, 0, A_SPREAD, 0), (*lo, 0), (*hi, 0),
                    (40000, 0, A_SPREAD, 1), (7, 0, A_SPREAD, 1), (*lo, 1), (*hi, 1)]
    assert sum(e["end"] for e in run([row], act_bits=4, signed=True, gap=False, pixels=PIXELS, seed=6)) == 8
    # A one-pixel tile has no slot-1 pass.
    assert sum(e["end"] for e in run([row], act_bits=4, signed=False, gap=False, pixels=1, seed=7)) == 2


def test_merged_passes_are_cut_at_capacity_in_the_first_pass_and_the_replay():
    """At 8-bit activations a merged pass holds 128 weights: a row of 600 32-bit weights and a few narrower
    ones is cut the same way in both slot groups' passes."""
    rng = np.random.default_rng(4)
    row = [(1, [(k, int(rng.integers(1, 256))) for k in range(20)]),
           (3, [(20 + k, int(rng.integers(1, 1 << 32))) for k in range(600)])]
    got = run([row], act_bits=8, signed=False, gap=False, pixels=PIXELS, seed=10, p_gap=0.1, p_stall=0.1)
    weights = np.cumsum([e["a_mode"] != A_HIGH for e in got])  # a 32-bit weight's high chunk is its second entry
    ends = [int(weights[i]) for i, e in enumerate(got) if e["end"]]
    assert ends == [*range(128, 620, 128), 620, *range(620 + 128, 1240, 128), 1240] and merged_capacity(8) == 128


def test_eight_bit_pair_passes_are_cut_at_capacity():
    """A 600-entry 8-bit segment (with promoted 4-bit codes ahead of it) is cut into passes of at most 136."""
    rng = np.random.default_rng(3)
    row = random_row(rng, 700, 0.0, long8=True)
    got = run([row], act_bits=4, signed=False, gap=False, pixels=PIXELS, seed=9, p_gap=0.1, p_stall=0.1)
    sizes = np.diff([-1] + [i for i, e in enumerate(got) if e["end"] and e["cls"] == 1])
    assert sizes.max() == pass_capacity(8, PAIR_ACT_BITS) == 136 and len(sizes) >= 5
    assert SLOTS == 2


@pytest.mark.parametrize("signed", [False, True])
def test_four_bit_pair_passes_are_cut_at_capacity(signed):
    """A row of 2,500 4-bit weights alone (a 12-bit fan-in) runs class-0 pair passes of at most 2,184 entries
    (``|v| <= 16`` at 4-bit activations), in a signed row and in a DoReFa one (not promoted: no 8-bit weights)."""
    rng = np.random.default_rng(12 + signed)
    row = [(0, [(k, int(rng.integers(0, 16))) for k in range(2500)])]
    got = run([row], act_bits=4, signed=signed, gap=False, pixels=PIXELS, seed=13, p_gap=0.05, p_stall=0.05,
              fan_in_width=12)
    ends = [i + 1 for i, e in enumerate(got) if e["end"]]
    assert ends == [2184, 2500] == [pass_capacity(4, PAIR_ACT_BITS), 2500]
    assert {e["cls"] for e in got} == {0}
