# amaranth: UnusedElaboratable=no
"""RowStreamDecoder against model.export.weight_stream: rows of random layers decoded by row pointer, in
random order, with random command timing, read-port losses and output back-pressure; throughput; the
error paths; Verilog generation."""

import numpy as np
import pytest
from amaranth.back import verilog

from hw.core.stream_decoder import RowStreamDecoder
from model.errors import UserError
from model.export.format import CLASS_WIDTHS, RICE_ESCAPE
from model.export.weight_stream import decode_layer, encode_layer, pos_bits
from tests.hw.decoder_harness import DecoderHarness, run_decoder

ADDR_WIDTH = 10  # a 1024-word buffer: the largest test layer (6 rows of 80 32-bit weights) takes 480 words
FAN_IN_WIDTH = 7  # fan_in <= 127
WIDTHS = (0, *CLASS_WIDTHS)


# -- The expected entries, from the reference decoder ---------------------------------------------------

def expected_rows(codes: np.ndarray, widths: np.ndarray) -> list[list[tuple]]:
    """Per row its entries ``(position, cls, code, last, empty, seg_end, next_cls)`` in stream order: class by
    class, ascending position, ``seg_end`` on each class's last entry; an all-pruned row is one empty entry.
    ``next_cls`` is the next class with entries after the entry's own, 0 when none, on every entry."""
    rows = []
    for j in range(widths.shape[0]):
        entries = []
        present = [c for c, width in enumerate(CLASS_WIDTHS) if (widths[j] == width).any()]
        for c, width in enumerate(CLASS_WIDTHS):
            where = np.flatnonzero(widths[j] == width)
            later = [d for d in present if d > c]
            entries += [(int(p), c, int(codes[j, p]), 0, 0, int(k == len(where) - 1), later[0] if later else 0)
                        for k, p in enumerate(where)]
        if not entries:
            entries = [(0, 0, 0, 0, 1, 1, 0)]
        entries[-1] = entries[-1][:3] + (1,) + entries[-1][4:]
        rows.append(entries)
    return rows


def layer_fields(enc, fan_in: int) -> dict:
    return {"fan_in": fan_in, "classes": enc.classes, "pos_bits": pos_bits(fan_in),
            "count_bits": list(enc.count_bits), "rice_k": list(enc.rice_k)}


def escapes(widths: np.ndarray, rice_k) -> int:
    """Escaped gap codes in the layer's stream (to show a test reaches them)."""
    n = 0
    for row in widths:
        for c, width in enumerate(CLASS_WIDTHS):
            pos = np.flatnonzero(row == width)
            if 0 < len(pos) < len(row):
                n += int(((np.diff(np.concatenate([[-1], pos])) - 1) >> rice_k[c] >= RICE_ESCAPE).sum())
    return n


def random_layer(rng: np.random.Generator, rows: int, fan_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of several kinds: mixed, all pruned, dense 4-bit, dense 32-bit, sparse (escapes), one width."""
    widths = np.zeros((rows, fan_in), dtype=np.int64)
    for j in range(rows):
        kind = rng.integers(0, 7)
        if kind == 0:
            widths[j] = rng.choice(WIDTHS, size=fan_in)
        elif kind == 1:
            pass  # all pruned
        elif kind == 2:
            widths[j] = 4
        elif kind == 3:
            widths[j] = 32
        elif kind == 4:
            widths[j] = rng.choice(WIDTHS, size=fan_in, p=(0.92, 0.02, 0.02, 0.02, 0.02))
        elif kind == 5:
            widths[j] = np.where(rng.random(fan_in) < 0.5, rng.choice(CLASS_WIDTHS), 0)
        else:
            widths[j] = rng.choice(WIDTHS, size=fan_in, p=(0.6, 0.33, 0.05, 0.01, 0.01))
    top = np.array([(1 << int(w)) - 1 for w in widths.ravel()], dtype=np.int64).reshape(widths.shape)
    pick = rng.integers(0, 3, size=widths.shape)  # 0, the largest code, or uniform in between
    uniform = (rng.random(widths.shape) * (top.astype(np.float64) + 1)).astype(np.int64)
    codes = np.where(pick == 0, 0, np.where(pick == 1, top, np.minimum(uniform, top)))
    return codes, widths


def place(rng, stream_words, size=1 << ADDR_WIDTH) -> tuple[list[int], int]:
    """The stream at a random word offset of a buffer of random words."""
    words = [int(w) for w in rng.integers(0, 1 << 32, size=size, dtype=np.uint64)]
    base = int(rng.integers(0, size - len(stream_words) + 1))
    words[base:base + len(stream_words)] = [int(w) for w in stream_words]
    return words, base


def row_end(enc, base: int, j: int) -> int:
    """A row command's ``end_bit``: the bit after row ``j``'s last, the next row's pointer (the stream's bits
    for the last row) past the stream's first bit ``32 base``."""
    return 32 * base + int(enc.row_ptr[j + 1] if j + 1 < len(enc.row_ptr) else enc.bits)


# -- Cycle-by-cycle driver --------------------------------------------------------------------------------

def entry_tuple(entry) -> tuple:
    """``(position, cls, code, last, empty, seg_end, next_cls)``."""
    return (int(entry.position), int(entry.cls), int(entry.code), int(entry.last), int(entry.empty),
            int(entry.seg_end), int(entry.next_cls))


def run_commands(words, fields, starts, ends, n_out, seed, p_gap=0.0, p_stall=0.0, p_other=0.0, limit=None,
                 after_error=30):
    """Offer row commands from ``starts`` to ``ends`` and collect ``n_out`` entries (or stop ``after_error``
    cycles after ``error``); return the entries, their cycles, the cycle ``error`` rose and what moved after
    it (:func:`tests.hw.decoder_harness.run_decoder`)."""
    dut = DecoderHarness(RowStreamDecoder(addr_width=ADDR_WIDTH, fan_in_width=FAN_IN_WIDTH), words)
    return run_decoder(dut, fields, [{"start_bit": s, "end_bit": e} for s, e in zip(starts, ends)], n_out, seed,
                       convert=entry_tuple,
                       limit=limit or 200 + 40 * n_out + 20 * len(starts), p_gap=p_gap, p_stall=p_stall,
                       p_other=p_other, after_error=after_error)


def decode_rows(codes, widths, seed, p_gap, p_stall, p_other):
    rng = np.random.default_rng(seed)
    fan_in = widths.shape[1]
    enc = encode_layer(codes, widths)
    ref_codes, ref_widths = decode_layer(enc.words, enc.bits, enc.row_ptr, fan_in, enc.classes, enc.count_bits,
                                         enc.rice_k, "test layer")
    want = expected_rows(ref_codes, ref_widths)
    words, base = place(rng, enc.words)
    order = [int(j) for j in rng.permutation(len(want))]
    order += [int(j) for j in rng.integers(0, len(want), size=2)]  # some rows again
    bounds = np.append(enc.row_ptr, enc.bits)  # row j's bits: bounds[j] .. bounds[j + 1] - 1
    starts = [32 * base + int(bounds[j]) for j in order]
    ends = [32 * base + int(bounds[j + 1]) for j in order]
    n_out = sum(len(want[j]) for j in order)
    res = run_commands(words, layer_fields(enc, fan_in), starts, ends, n_out, seed, p_gap, p_stall, p_other)
    assert res["error_cycle"] is None, "error on a good stream"
    # Each row's words are read once, and no word past its end (the fetcher's end_bit): the word of its first
    # bit to the word of its last.
    assert res["reads"] == sum(-(-e // 32) - s // 32 for s, e in zip(starts, ends))
    got, at = res["entries"], 0
    for j in order:
        assert got[at:at + len(want[j])] == want[j], f"row {j} (fan_in {fan_in})"
        at += len(want[j])
    assert at == len(got)
    return enc


@pytest.mark.parametrize("seed", range(8))
def test_rows_match_reference_decoder(seed):
    rng = np.random.default_rng(100 + seed)
    codes, widths = random_layer(rng, int(rng.integers(1, 7)), int(rng.integers(1, 81)))
    p_gap, p_stall, p_other = [(0.0, 0.0, 0.0), (0.3, 0.3, 0.3), (0.6, 0.1, 0.0), (0.1, 0.6, 0.5),
                               (0.5, 0.5, 0.2), (0.2, 0.8, 0.1), (0.0, 0.2, 0.7), (0.8, 0.0, 0.3)][seed]
    decode_rows(codes, widths, seed, p_gap, p_stall, p_other)


def test_edge_rows():
    """fan_in 1, escapes of every class, a row whose only class is the last, every class dense in turn."""
    single = np.array([[4], [0], [32], [8], [16]])
    sparse = np.zeros((5, 80), dtype=np.int64)
    for c, width in enumerate(CLASS_WIDTHS):
        sparse[c, [0, 1, 2, 3, 4, 5, 79]] = width  # small gaps pick k = 0: gap 73 escapes
    sparse[1, 40] = 4
    sparse[4, 79] = 32  # only the last class, at the last position
    dense = np.array([[4] * 9, [8] * 9, [16] * 9, [32] * 9, [4, 8, 16, 32, 0, 4, 8, 16, 32]])
    rng = np.random.default_rng(5)
    total_escapes = 0
    for i, widths in enumerate((single, sparse, dense)):
        top = np.array([(1 << int(w)) - 1 for w in widths.ravel()], dtype=np.int64).reshape(widths.shape)
        codes = np.minimum((rng.random(widths.shape) * (top + 1.0)).astype(np.int64), top)
        enc = decode_rows(codes, widths, 40 + i, 0.3, 0.3, 0.3)
        total_escapes += escapes(widths, enc.rice_k)
    assert total_escapes >= 5


def test_four_bit_row_runs_at_one_entry_per_cycle():
    """Output always ready, port always granted: a 4-bit row's entries leave on consecutive cycles after
    the first few (a structural property of the window: a 4-bit entry is at most 8 + pos_bits + 4 bits)."""
    rng = np.random.default_rng(8)
    fan_in = 127
    widths = np.where(rng.random((2, fan_in)) < 0.7, 4, 0)
    widths[1, ::5] = 0  # a second row, so the run covers a command after a row
    codes = rng.integers(0, 16, size=widths.shape)
    enc = encode_layer(codes, widths)
    words, base = place(rng, enc.words)
    want = expected_rows(codes, widths)
    bounds = [32 * base + int(p) for p in np.append(enc.row_ptr, enc.bits)]
    res = run_commands(words, layer_fields(enc, fan_in), bounds[:-1], bounds[1:], len(want[0]) + len(want[1]), 9)
    assert res["error_cycle"] is None
    assert res["entries"] == want[0] + want[1]
    cycles = res["cycles"][:len(want[0])]
    warm = 4
    rate = (len(cycles) - 1 - warm) / (cycles[-1] - cycles[warm])
    assert rate >= 0.9, f"{rate:.3f} entries per cycle"
    # Measured: exactly one a cycle from the first entry. The command is taken in cycle 0 and the first entry
    # leaves in cycle 6 (the fetcher's restart: the first word in cycle 3; the skip, the one count, the
    # output register), and the next row's first 6 cycles after the row's last (the next command is taken
    # as the last entry enters the output register).
    assert cycles == list(range(cycles[0], cycles[0] + len(cycles)))
    assert cycles[0] == 6
    assert res["cycles"][len(want[0])] - cycles[-1] == 6


@pytest.mark.parametrize("seed", range(3))
def test_a_row_cut_short_by_its_end_bit_stops_the_decoder(seed):
    """A command whose ``end_bit`` lies inside its row (an image whose row pointers disagree with its stream):
    the fetcher reads no word past the end and then offers words it did not read, so the decoder parses on
    instead of waiting for words that never come, and the row, longer than its end says, is an error."""
    rng = np.random.default_rng(60 + seed)
    fan_in = 40
    widths = np.full((2, fan_in), (32, 16, 4)[seed])
    widths[1, ::3] = 0
    codes = np.minimum((rng.random(widths.shape) * (1 << int(widths.max()))).astype(np.int64),
                       (1 << widths) - 1)
    enc = encode_layer(codes, widths)
    words, base = place(rng, enc.words)
    starts = [32 * base + int(p) for p in enc.row_ptr]
    ends = [starts[0] + int(rng.integers(1, 64)), 32 * base + enc.bits]
    res = run_commands(words, layer_fields(enc, fan_in), starts, ends, 10_000, seed, 0.2, 0.2, 0.2, limit=3000)
    assert res["error_cycle"] is not None, "the cut row ran on"
    assert res["moved_after_error"] == []
    assert res["reads"] <= -(-ends[0] // 32) - starts[0] // 32 + -(-ends[1] // 32) - starts[1] // 32


@pytest.mark.parametrize("width, shift", [(4, -1), (4, 1), (8, 32), (16, -7), (32, 5), (4, "before")])
def test_a_row_that_does_not_end_at_its_end_bit_stops_the_decoder(width, shift):
    """The row's counts and entries must take exactly ``end_bit - start_bit`` bits (each row ends where the next
    row pointer says): an end a bit short or past, a word past, or before the row's start. The row's entries
    all leave (the check comes the cycle after its last is parsed), ``error`` rises, and the next row yields
    none."""
    rng = np.random.default_rng(70 + width)
    fan_in = 30
    widths = np.where(rng.random((2, fan_in)) < 0.5, width, 0)
    codes = rng.integers(0, 1 << width, size=widths.shape) * (widths > 0)
    enc = encode_layer(codes, widths)
    words, base = place(rng, enc.words)
    want = expected_rows(codes, widths)
    bounds = [32 * base + int(p) for p in np.append(enc.row_ptr, enc.bits)]
    ends = [bounds[0] - 1 if shift == "before" else bounds[1] + shift, bounds[2]]
    res = run_commands(words, layer_fields(enc, fan_in), bounds[:2], ends, 10_000, width, 0.2, 0.3, 0.2,
                       limit=2000)
    assert res["error_cycle"] is not None, "a row off its end ran on"
    assert res["moved_after_error"] == []
    if shift == "before":  # (the fetcher reads on, around the buffer; the entries are the row's or past it)
        return
    assert res["entries"] == want[0]  # (the last ones may leave after the error: parsed, waiting on ``o``)
    # The same rows at their true ends: no error.
    res = run_commands(words, layer_fields(enc, fan_in), bounds[:2], bounds[1:], len(want[0]) + len(want[1]),
                       width, 0.2, 0.3, 0.2)
    assert res["error_cycle"] is None and res["entries"] == want[0] + want[1]


# -- Error paths ------------------------------------------------------------------------------------------

def bit_words(fields) -> tuple[np.ndarray, int]:
    """``(value, bits)`` fields, least significant bit first, into words (docs/image_format.md)."""
    acc, n = 0, 0
    for value, bits in fields:
        assert 0 <= value < 1 << bits
        acc |= value << n
        n += bits
    return np.array([(acc >> (32 * i)) & 0xFFFFFFFF for i in range(-(-n // 32))], dtype=np.uint32), n


def rice(v: int, k: int, fan_in: int) -> list[tuple[int, int]]:
    q = v >> k
    if q < RICE_ESCAPE:
        return [((1 << q) - 1, q + 1), (v & ((1 << k) - 1), k)] if k else [((1 << q) - 1, q + 1)]
    return [((1 << RICE_ESCAPE) - 1, RICE_ESCAPE), (v, pos_bits(fan_in))]


def run_bad(fields_list, fan_in, classes, cbits, ks, seed, *, fields=None, n_good=0, p=(0.3, 0.3, 0.3)):
    rng = np.random.default_rng(seed)
    stream_words, bits = bit_words(fields_list)
    words, base = place(rng, stream_words)
    fields = fields or {"fan_in": fan_in, "classes": classes, "pos_bits": pos_bits(fan_in),
                        "count_bits": list(cbits), "rice_k": list(ks)}
    # A good command behind the bad one must not be taken.
    res = run_commands(words, fields, [32 * base] * 2, [32 * base + bits] * 2, n_good + 1, seed, *p, limit=400)
    assert res["error_cycle"] is not None, "no error"
    assert res["error_cycle"] < 150, "the error took too long"
    assert res["moved_after_error"] == []
    assert res["commands_taken"] == 1
    return res, stream_words, bits


@pytest.mark.parametrize("seed", range(3))
def test_counts_past_fan_in_stop_the_decoder(seed):
    fan_in, cbits = 6, (3, 3, 0, 0)
    fields = [(4, 3), (3, 3)] + [(0, 1), (5, 4)] * 7  # counts 4 + 3 > 6, then entries
    res, words, bits = run_bad(fields, fan_in, 0b0011, cbits, (0, 0, 0, 0), seed)
    assert res["entries"] == []
    with pytest.raises(UserError, match="field 'counts'"):
        decode_layer(words, bits, np.array([0]), fan_in, 0b0011, cbits, (0, 0, 0, 0), "bad")


@pytest.mark.parametrize("last_gap, escaped", [(5, False), (7, False), (5, True), (9, True)])
def test_gap_past_fan_in_stops_the_decoder(last_gap, escaped):
    """Entries before the bad one leave; the one whose position runs past the row (position 4 + 1 + gap: 10 =
    fan_in, or 12, 14; as a Rice code or escaped) does not."""
    fan_in, k = 10, 1
    fields = [(3, 4)]
    for v, code in zip((1, 2, last_gap), (0xA, 0x5, 0xF)):
        if escaped and v == last_gap:
            fields += [((1 << RICE_ESCAPE) - 1, RICE_ESCAPE), (v, pos_bits(fan_in))]
        else:
            fields += rice(v, k, fan_in)
        fields.append((code, 4))
    res, words, bits = run_bad(fields, fan_in, 0b0001, (4, 0, 0, 0), (k, 0, 0, 0), 3, n_good=2)
    assert res["entries"] == [(1, 0, 0xA, 0, 0, 0, 0), (4, 0, 0x5, 0, 0, 0, 0)]
    with pytest.raises(UserError, match="field 'position'"):
        decode_layer(words, bits, np.array([0]), fan_in, 0b0001, (4, 0, 0, 0), (k, 0, 0, 0), "bad")


@pytest.mark.parametrize("first_gap, escaped", [(10, False), (13, False), (10, True), (15, True)])
def test_first_gap_past_fan_in_stops_the_decoder(first_gap, escaped):
    """A class's first entry whose gap (its position: 10 = fan_in, or past it; as a Rice code or escaped) runs
    past the row: no entry leaves."""
    fan_in, k = 10, 1
    gap = rice(first_gap, k, fan_in)
    if escaped:
        gap = [((1 << RICE_ESCAPE) - 1, RICE_ESCAPE), (first_gap, pos_bits(fan_in))]
    fields = [(2, 4)] + gap + [(0xA, 4)] + rice(1, k, fan_in) + [(0x5, 4)]
    res, words, bits = run_bad(fields, fan_in, 0b0001, (4, 0, 0, 0), (k, 0, 0, 0), 3)
    assert res["entries"] == []
    with pytest.raises(UserError, match="field 'position'"):
        decode_layer(words, bits, np.array([0]), fan_in, 0b0001, (4, 0, 0, 0), (k, 0, 0, 0), "bad")


@pytest.mark.parametrize("bad", [{"rice_k": [5, 0, 0, 0]}, {"pos_bits": 0}, {"pos_bits": 8},
                                 {"fan_in": 0}, {"fan_in": 128}, {"count_bits": [0, 0, 8, 0]},
                                 # each class's own check (of the classes absent too), and pos_bits 0 alone
                                 {"rice_k": [1, 5, 2, 0]}, {"rice_k": [1, 0, 5, 0]}, {"rice_k": [1, 0, 2, 5]},
                                 {"count_bits": [8, 0, 4, 0]}, {"count_bits": [4, 8, 4, 0]},
                                 {"count_bits": [4, 0, 4, 8]}, {"pos_bits": 0, "rice_k": [0, 0, 0, 0]}])
def test_layer_fields_out_of_range_stop_the_decoder(bad):
    """Fields that could make an entry longer than the window (or a row endless) are refused at the command."""
    fields = {"fan_in": 10, "classes": 0b0101, "pos_bits": 4, "count_bits": [4, 0, 4, 0], "rice_k": [1, 0, 2, 0]}
    fields.update(bad)
    res, _, _ = run_bad([(0, 8)] * 4, 10, 0, (0,) * 4, (0,) * 4, 4, fields=fields)
    assert res["entries"] == []


def test_verilog():
    text = verilog.convert(RowStreamDecoder(addr_width=12, fan_in_width=16), name="row_stream_decoder",
                           emit_src=False)
    assert "module row_stream_decoder" in text


@pytest.mark.parametrize("kwargs, message", [
    ({"addr_width": 0, "fan_in_width": 8}, "addr_width must be >= 1, not 0"),
    ({"addr_width": 8, "fan_in_width": 0}, "fan_in_width must be 1..24, not 0"),
    ({"addr_width": 8, "fan_in_width": 25}, "fan_in_width must be 1..24, not 25"),
    ({"addr_width": 8, "fan_in_width": 8, "fetch_depth": 1}, "fetch_depth must be >= 2, not 1"),
])
def test_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        RowStreamDecoder(**kwargs)


def test_window_holds_the_longest_entry_and_a_word():
    for fw in (1, 7, 16, 24):
        dec = RowStreamDecoder(addr_width=8, fan_in_width=fw)
        assert dec.max_entry_bits == RICE_ESCAPE + fw + 32
        assert dec.window_bits - 32 >= dec.max_entry_bits and dec.window_bits % 32 == 0
