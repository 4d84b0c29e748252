"""The version 3 weight stream: a stream written by hand, an independent bit-level reference encoder, round
trips, the Rice parameter choice, and every rejection path of the decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.errors import UserError
from model.export.format import CLASS_WIDTHS, RICE_ESCAPE
from model.export.weight_stream import best_rice_k, count_bits, decode_layer, encode_layer, pos_bits, rice_lengths

WIDTHS = (0, 4, 8, 16, 32)


def random_codes(rng, widths):
    top = (1 << widths.astype(object)) - 1
    return np.array([[int(rng.integers(0, 2**62)) % (t + 1) if t else 0 for t in row] for row in top],
                    dtype=np.int64).reshape(widths.shape)


def reference_bits(codes, widths, count_bits_, rice_k) -> list[int]:
    """The stream written from the module docstring, one Python bit at a time (no numpy, no shared code)."""
    rows, fan_in = widths.shape
    esc_bits = max(1, (fan_in - 1).bit_length())
    present = [c for c, m in enumerate(CLASS_WIDTHS) if (widths == m).any()]
    out: list[int] = []

    def put(value: int, n: int) -> None:
        out.extend((value >> i) & 1 for i in range(n))

    for j in range(rows):
        members = {c: [i for i in range(fan_in) if widths[j, i] == CLASS_WIDTHS[c]] for c in present}
        for c in present:
            put(len(members[c]), count_bits_[c])
        for c in present:
            prev = -1
            for i in members[c]:
                if len(members[c]) != fan_in:
                    v, k = i - prev - 1, rice_k[c]
                    q = v >> k
                    if q < RICE_ESCAPE:
                        out.extend([1] * q + [0])
                        put(v & ((1 << k) - 1), k)
                    else:
                        out.extend([1] * RICE_ESCAPE)
                        put(v, esc_bits)
                put(int(codes[j, i]), CLASS_WIDTHS[c])
                prev = i
    return out


def words_of(bits: list[int]) -> list[int]:
    bits = bits + [0] * (-len(bits) % 32)
    return [sum(b << k for k, b in enumerate(bits[w : w + 32])) for w in range(0, len(bits), 32)]


def test_stream_by_hand():
    """One row of F = 4: 4-bit codes 1, 2 at positions 0, 2 and an 8-bit code 3 at position 3."""
    widths = np.array([[4, 0, 4, 8]])
    codes = np.array([[1, 0, 2, 3]])
    enc = encode_layer(codes, widths)
    # counts: n_4 = 2 in 2 bits, n_8 = 1 in 1 bit; class 4: k = 0 (gaps 0, 1 cost 1 + 2 bits), class 8: gap 3,
    # k = 1 (q = 1: "10", r = 1) ties with k = 2 (3 bits), the smaller wins.
    assert enc.count_bits == (2, 1, 0, 0) and enc.rice_k == (0, 1, 0, 0) and enc.classes == 0b0011
    bits = ([0, 1] + [1]  # counts
            + [0] + [1, 0, 0, 0]  # gap 0 ("0"), code 1
            + [1, 0] + [0, 1, 0, 0]  # gap 1 ("10"), code 2
            + [1, 0, 1] + [1, 1, 0, 0, 0, 0, 0, 0])  # gap 3 = q 1, r 1; code 3 in 8 bits
    assert enc.bits == len(bits) == 25 and enc.payload_bits == 16
    assert enc.words.tolist() == words_of(bits) and enc.row_ptr.tolist() == [0]
    got = decode_layer(enc.words, enc.bits, enc.row_ptr, 4, enc.classes, enc.count_bits, enc.rice_k, "t")
    assert np.array_equal(got[0], codes) and np.array_equal(got[1], widths)


def test_escape_and_dense_rows():
    """A gap too long for the layer's k is escaped (8 ones, then the gap in pos_bits bits); a class that fills
    a row has no gap codes."""
    widths = np.zeros((2, 100), dtype=np.int64)
    widths[0, :20] = 4
    widths[0, 99] = 4
    widths[1, :] = 8
    codes = np.where(widths > 0, 5, 0)
    enc = encode_layer(codes, widths)
    assert enc.rice_k[0] == 0 and pos_bits(100) == 7 and count_bits(100) == 7
    assert enc.count_bits == (5, 7, 0, 0)  # the largest counts: 21 and 100
    row0 = 5 + 7 + 20 * (1 + 4) + (RICE_ESCAPE + 7 + 4)  # counts; 20 gaps "0"; the escaped gap 79
    row1 = 5 + 7 + 100 * 8  # counts (n_4 = 0, n_8 = 100 = F: dense, no gaps)
    assert enc.row_ptr.tolist() == [0, row0] and enc.bits == row0 + row1
    assert enc.words.tolist() == words_of(reference_bits(codes, widths, enc.count_bits, enc.rice_k))
    got = decode_layer(enc.words, enc.bits, enc.row_ptr, 100, enc.classes, enc.count_bits, enc.rice_k, "t")
    assert np.array_equal(got[1], widths) and np.array_equal(got[0], codes)


@st.composite
def layers(draw):
    rows = draw(st.integers(1, 6))
    fan_in = draw(st.integers(1, 70))
    raw = np.array(draw(st.lists(st.sampled_from([0.0, 0.05, 1.0, 5.0]), min_size=5, max_size=5)))
    probs = raw / raw.sum() if raw.sum() else np.eye(5)[0]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    widths = rng.choice(WIDTHS, size=(rows, fan_in), p=probs).astype(np.int64)
    if draw(st.booleans()):
        widths[draw(st.integers(0, rows - 1))] = draw(st.sampled_from(WIDTHS))  # a dense or empty row
    return random_codes(rng, widths), widths


@settings(max_examples=200, deadline=None)
@given(layers())
def test_encoder_matches_the_reference_and_round_trips(layer):
    codes, widths = layer
    enc = encode_layer(codes, widths)
    bits = reference_bits(codes, widths, enc.count_bits, enc.rice_k)
    assert enc.bits == len(bits) and enc.words.tolist() == words_of(bits)
    assert enc.payload_bits == int(widths.sum())
    for c, m in enumerate(CLASS_WIDTHS):
        counts = (widths == m).sum(axis=1)
        assert enc.count_bits[c] == (int(counts.max()).bit_length() if counts.any() else 0)
        assert bool(enc.classes >> c & 1) == bool(counts.any())
    got = decode_layer(enc.words, enc.bits, enc.row_ptr, widths.shape[1], enc.classes, enc.count_bits, enc.rice_k,
                       "t")
    assert np.array_equal(got[0], codes) and np.array_equal(got[1], widths)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 499), max_size=60), st.integers(1, 500))
def test_best_rice_k_is_the_cheapest(gaps, fan_in):
    gaps = [g % fan_in for g in gaps]
    k = best_rice_k(np.array(gaps, dtype=np.int64), fan_in)

    def cost(kk):  # unary q + stop bit + k bits, or the escape
        return sum((g >> kk) + 1 + kk if g >> kk < RICE_ESCAPE else RICE_ESCAPE + pos_bits(fan_in) for g in gaps)

    assert 0 <= k <= pos_bits(fan_in) and cost(k) == min(cost(kk) for kk in range(pos_bits(fan_in) + 1))
    assert cost(k) == int(rice_lengths(np.array(gaps, dtype=np.int64), k, fan_in).sum())


def by_hand():
    widths = np.array([[4, 0, 4, 8], [0, 8, 0, 0]])
    codes = np.array([[1, 0, 2, 3], [0, 9, 0, 0]])
    return codes, widths, encode_layer(codes, widths)


def decode(words, enc, **change):
    args = {"bits": enc.bits, "row_ptr": enc.row_ptr, "classes": enc.classes, "cbits": enc.count_bits,
            "rice_k": enc.rice_k, **change}
    return decode_layer(np.asarray(words, dtype=np.uint32), args["bits"], args["row_ptr"], 4, args["classes"],
                        args["cbits"], args["rice_k"], "bad.bin: layer 0 stream")


def test_decoder_rejects_counts_past_the_row():
    _, _, enc = by_hand()
    # With 3-bit counts: n_4 = 5, n_8 = 0, more than F = 4.
    with pytest.raises(UserError, match=r"bad\.bin: layer 0 stream: row 0 field 'counts' is \[5, 0\].*allowed 0\.\.4"):
        decode(words_of([1, 0, 1, 0, 0, 0]), enc, bits=6, row_ptr=np.array([0]), cbits=(3, 3, 0, 0))


def test_decoder_rejects_positions_past_the_row_and_shared_positions():
    _, _, enc = by_hand()
    assert enc.count_bits == (2, 1, 0, 0)
    # Row 0's 8-bit gap "10" + r=1 (v 3, position 3) -> "110" + r=1: v = 5, position 5 >= F.
    bits = [int(w) >> i & 1 for w in enc.words for i in range(32)]
    bad = bits[:14] + [1, 1, 0, 1] + bits[17:]
    with pytest.raises(UserError, match=r"row 0 field 'position' of entry 0 of the 8-bit class is 5; allowed 0\.\.3"):
        decode(words_of(bad[: enc.bits + 1]), enc, bits=enc.bits + 1, row_ptr=enc.row_ptr + [0, 1])
    # r = 0: v = 2, position 2 already holds a 4-bit weight.
    bad = bits[:14] + [1, 0, 0] + bits[17:]
    with pytest.raises(UserError, match=r"row 0 field 'position' 2 of the 8-bit class already holds a 4-bit weight"):
        decode(words_of(bad[: enc.bits]), enc)


def test_decoder_rejects_pointers_and_padding():
    _, _, enc = by_hand()
    assert enc.row_ptr.tolist() == [0, 25]
    bits = [int(w) >> i & 1 for w in enc.words for i in range(32)][: enc.bits]
    gap = bits[:25] + [0] + bits[25:]  # a stray bit between the rows: row 1 still decodes from bit 26
    with pytest.raises(UserError, match=r"row 0 ends at stream bit 25; row 1's pointer says 26"):
        decode(words_of(gap), enc, row_ptr=np.array([0, 26]), bits=enc.bits + 1)
    with pytest.raises(UserError, match=r"row 1 ends at stream bit 38; field 'stream_bits' says 37"):
        decode(enc.words, enc, bits=enc.bits - 1)
    words = enc.words.copy()
    words[-1] |= np.uint32(1 << 31)
    with pytest.raises(UserError, match="padding must be 0"):
        decode(words, enc)
