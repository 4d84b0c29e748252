"""The weight stream of a version 3 image: each row's non-zero weights grouped by width class, positions
Rice-coded, so that the metadata of a mixed-precision ticket costs little more than its width map's entropy.

A layer is a matrix of rows (output channels) of ``F`` weights each (``F = C_in k k`` for a conv, in the
order of the weight tensor ``[C_out, C_in, k, k]``; ``n_in`` for a fully connected layer). Width class
``c`` holds the weights of ``CLASS_WIDTHS[c]`` = 4, 8, 16 or 32 bits; only the classes present in the layer
(descriptor field ``classes``) appear in the stream. Row ``j`` is, bit by bit (every field least significant
bit first):

1. for each present class ``c`` in ascending order, the row's count ``n_c`` of class-``c`` weights in
   the layer's ``count_bits_c`` bits (descriptor ``count_bits4`` .. ``count_bits32``: the bit length of the
   class's largest count in a row of the layer, at most ``bit_length(F)``; a sparse class's counts are short);
2. for each present class ``c`` in ascending order, its ``n_c`` entries in ascending position: the gap
   ``v = p - p_prev - 1`` to the previous class-``c`` position of the row (``p_prev = -1`` for the first),
   Rice-coded with the layer's parameter ``k_c`` (below), then the weight code in ``CLASS_WIDTHS[c]`` bits.
   A class that fills the row (``n_c = F``) has no gap codes: its positions are ``0 .. F - 1``.

Rice code of ``v`` with parameter ``k``: ``q = v >> k``; if ``q < RICE_ESCAPE``, ``q`` one bits, a zero bit,
then ``v mod 2^k`` in ``k`` bits; otherwise ``RICE_ESCAPE`` one bits, then ``v`` in ``pos_bits =
max(1, bit_length(F - 1))`` bits. The packer picks each class's ``k`` (0 .. ``pos_bits``) that makes the
layer's stream shortest (:func:`best_rice_k`).

Why this code (the decision). The issue asks for metadata within reach of the width map's empirical entropy
and decodable at the array's speed, with each output's non-zeros grouped by width class (so a DSP's P
register accumulates a whole class segment; the order of products inside one output does not change its
sum, and the golden model sums per class anyway):

* Coding each class's positions as a set costs about ``F H(p_c)`` bits per row and class (``p_c`` the class's
  density): gaps of a Bernoulli set are geometric, and a Rice code with the best ``k`` is within a few
  hundredths of a bit per entry of the entropy of a geometric source (Gallager and van Voorhis 1975). The sum
  over classes of ``H(p_c)`` exceeds the joint entropy ``H(p_0, .., p_32)`` only by the information shared
  between the class indicators, small when one class dominates (a 60 %-pruned 4-bit-heavy ticket: about
  1.27 against 1.23 bits per weight). Coding a class among the positions the earlier classes left would
  reach the joint entropy, but the decoder would have to skip taken positions: not one entry per cycle.
* One entry (gap + code) per cycle: the decoder keeps a window of at most ``RICE_ESCAPE + pos_bits + 32``
  bits (52 at ``F <= 4096``), finds the first zero in its first ``RICE_ESCAPE`` bits (a priority encoder),
  and shifts by the entry's length; class widths are fixed per segment, so no per-weight width code is read.
* Rows start at any bit (the row-pointer table of the image gives each row's first bit), so the rows of a
  layer can be split across engines that start anywhere; counts at the row's head tell each engine its
  segment lengths before it starts.
* Per row the fixed costs are the pointer (``ptr_bits = bit_length(stream_bits)``, about 20 bits) and the
  counts (the bit length of each class's largest row count: about 9 + 6 + 3 + 3 bits for a 4-bit-heavy
  ticket); at ResNet-20's 144 to 576 weights per row that is 0.07 to 0.3 bits per weight, the price of
  random access to rows.

Everything here is numpy: :func:`encode_layer` is vectorised over the whole layer (a 10-million-weight network
packs in seconds), :func:`decode_layer` over the rows (one step per entry of the longest class segment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import UserError
from model.export.format import CLASS_WIDTHS, RICE_ESCAPE, WORD_BITS

_CLASS_OF_WIDTH = np.full(max(CLASS_WIDTHS) + 1, -1, dtype=np.int64)
_CLASS_OF_WIDTH[list(CLASS_WIDTHS)] = np.arange(len(CLASS_WIDTHS))
_CLASS_WIDTH = np.array(CLASS_WIDTHS, dtype=np.int64)


def count_bits(fan_in: int) -> int:
    """The most bits a row's class count may take: ``bit_length(F)`` (a count runs 0..F)."""
    return int(fan_in).bit_length()


def ptr_bits(stream_bits: int) -> int:
    """Bits of one row pointer: ``max(1, bit_length(stream_bits))`` (a pointer runs 0..stream_bits)."""
    return max(1, int(stream_bits).bit_length())


def pos_bits(fan_in: int) -> int:
    """Bits of an escaped gap: ``max(1, bit_length(F - 1))`` (a gap runs 0..F-1)."""
    return max(1, (int(fan_in) - 1).bit_length())


def rice_lengths(v: np.ndarray, k: int, fan_in: int) -> np.ndarray:
    """Bits of the Rice code of each gap ``v`` with parameter ``k`` (escaped ones included)."""
    q = np.asarray(v, dtype=np.int64) >> k
    return np.where(q < RICE_ESCAPE, q + 1 + k, RICE_ESCAPE + pos_bits(fan_in))


def best_rice_k(v: np.ndarray, fan_in: int) -> int:
    """The Rice parameter ``0 .. pos_bits`` that codes the gaps ``v`` in the fewest bits (the smallest on ties)."""
    v = np.asarray(v, dtype=np.int64)
    if v.size == 0:
        return 0
    # Only the histogram of v matters: cost(k) = sum over distinct gaps of count * length.
    values, counts = np.unique(v, return_counts=True)
    costs = [int((rice_lengths(values, k, fan_in) * counts).sum()) for k in range(pos_bits(fan_in) + 1)]
    return int(np.argmin(costs))


@dataclass(frozen=True)
class EncodedLayer:
    """One layer's weight stream and what its descriptor says about it.

    Members
    -------
    words : uint32 array
        The stream, padded with zeros to whole words.
    bits : int
        Stream length before the padding (descriptor ``stream_bits``).
    row_ptr : int64 array ``[rows]``
        First bit of each row, relative to the stream's first bit (the row-pointer table).
    classes : int
        Bit ``c`` set when class ``c`` is present (descriptor ``classes``).
    count_bits : tuple of 4 ints
        Bits of each class's row counts (0 for an absent class).
    rice_k : tuple of 4 ints
        Each class's Rice parameter (0 for an absent class).
    payload_bits : int
        Sum of the widths: the bits the weight codes take in the stream.
    """

    words: np.ndarray
    bits: int
    row_ptr: np.ndarray
    classes: int
    count_bits: tuple[int, ...]
    rice_k: tuple[int, ...]
    payload_bits: int


def _fields_to_words(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Concatenate bit fields (``lengths[i] <= 64`` bits of ``values[i]``, uint64, LSB first) into words.

    Returns ``(words, starts, total_bits)``; ``starts`` is each field's first bit. A field at bit offset
    ``o`` of its first word touches at most three words: bits ``0 .. 31 - o`` of the value in the first,
    then ``value >> (32 - o)`` split over the next two.
    """
    lengths = lengths.astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    n_words = -(-total // WORD_BITS)
    low32 = np.uint64(0xFFFFFFFF)
    off = (starts & (WORD_BITS - 1)).astype(np.uint64)
    vals = values.astype(np.uint64)
    rest = vals >> (np.uint64(WORD_BITS) - off)  # shift 1..32: what does not fit the first word
    word = starts >> 5
    # Fields never share a bit, so summing the parts of a word is OR-ing them; each word's sum is below 2^32,
    # exact in bincount's float64.
    out = np.bincount(word, weights=((vals << off) & low32).astype(np.float64), minlength=n_words + 3)
    out += np.bincount(word + 1, weights=(rest & low32).astype(np.float64), minlength=n_words + 3)
    out += np.bincount(word + 2, weights=(rest >> np.uint64(WORD_BITS)).astype(np.float64), minlength=n_words + 3)
    return out[:n_words].astype(np.uint32), starts, total


def encode_layer(codes: np.ndarray, widths: np.ndarray) -> EncodedLayer:
    """The weight stream of a layer with ``[rows, F]`` codes and widths (widths in 0, 4, 8, 16, 32).

    The caller has checked the codes against the widths (``golden.check_layer``).
    """
    codes = np.asarray(codes, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    rows, fan_in = widths.shape
    cls = _CLASS_OF_WIDTH[widths]
    counts = np.stack([(cls == c).sum(axis=1) for c in range(len(CLASS_WIDTHS))], axis=1)  # [rows, 4]
    present = [c for c in range(len(CLASS_WIDTHS)) if counts[:, c].any()]

    # Entries (the non-zeros) in stream order: by row, class, position.
    row_of, pos = np.nonzero(cls >= 0)
    ecls = cls[row_of, pos]
    order = np.argsort(row_of * len(CLASS_WIDTHS) + ecls, kind="stable")  # positions stay ascending
    row_of, pos, ecls = row_of[order], pos[order], ecls[order]
    code = codes[row_of, pos]
    group = row_of * len(CLASS_WIDTHS) + ecls
    first = np.ones(len(group), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    prev = np.where(first, -1, np.concatenate([[-1], pos[:-1]]))
    gap = pos - prev - 1
    dense = counts[row_of, ecls] == fan_in
    rice_k = [0] * len(CLASS_WIDTHS)
    for c in present:
        rice_k[c] = best_rice_k(gap[(ecls == c) & ~dense], fan_in)
    k = np.array(rice_k, dtype=np.int64)[ecls]
    q = gap >> k
    escaped = q >= RICE_ESCAPE
    pb = pos_bits(fan_in)
    # One field per entry (at most RICE_ESCAPE + pos_bits + 32 <= 53 bits): the unary part, the remainder (or
    # the escaped gap), then the weight code.
    prefix_len = np.where(dense, 0, np.where(escaped, RICE_ESCAPE, q + 1))
    prefix_val = np.where(escaped, (1 << RICE_ESCAPE) - 1, (1 << np.minimum(q, RICE_ESCAPE)) - 1)
    suffix_len = np.where(dense, 0, np.where(escaped, pb, k))
    suffix_val = np.where(escaped, gap, gap & ((1 << k) - 1))
    entry_val = (prefix_val.astype(np.uint64) | (suffix_val.astype(np.uint64) << prefix_len.astype(np.uint64))
                 | (code.astype(np.uint64) << (prefix_len + suffix_len).astype(np.uint64)))
    entry_len = prefix_len + suffix_len + _CLASS_WIDTH[ecls]

    # One field per row head (its counts, at most 4 bit_length(F) = 52 bits), then the row's entries.
    cbits = [int(counts[:, c].max()).bit_length() if c in present else 0 for c in range(len(CLASS_WIDTHS))]
    head_val = np.zeros(rows, dtype=np.uint64)
    head_len = 0
    for c in present:
        head_val |= counts[:, c].astype(np.uint64) << np.uint64(head_len)
        head_len += cbits[c]
    entries_per_row = np.bincount(row_of, minlength=rows)
    row_start = np.cumsum(entries_per_row + 1) - entries_per_row - 1  # field index of each row's head
    values = np.zeros(rows + len(row_of), dtype=np.uint64)
    lengths = np.zeros(rows + len(row_of), dtype=np.int64)
    values[row_start] = head_val
    lengths[row_start] = head_len
    entry_start = np.cumsum(entries_per_row) - entries_per_row
    at = row_start[row_of] + 1 + np.arange(len(row_of)) - entry_start[row_of]
    values[at] = entry_val
    lengths[at] = entry_len
    words, starts, total = _fields_to_words(values, lengths)
    row_ptr = starts[row_start]
    return EncodedLayer(words=words, bits=total, row_ptr=row_ptr.astype(np.int64),
                        classes=sum(1 << c for c in present), count_bits=tuple(cbits), rice_k=tuple(rice_k),
                        payload_bits=int(widths.sum()))


class _Bits:
    """A stream's bits for gathering fields at many cursors at once (zeros past the end)."""

    PAD = 64

    def __init__(self, words: np.ndarray):
        raw = np.unpackbits(np.asarray(words, dtype="<u4").view(np.uint8), bitorder="little")
        self.bits = np.concatenate([raw, np.zeros(self.PAD + RICE_ESCAPE + WORD_BITS, dtype=np.uint8)]).astype(
            np.int64)
        self.limit = len(raw) + self.PAD

    def read(self, cursor: np.ndarray, width: int | np.ndarray) -> np.ndarray:
        """The ``width``-bit fields (``<= 32``) at ``cursor``, as int64."""
        width = np.broadcast_to(np.asarray(width, dtype=np.int64), cursor.shape)
        span = int(width.max(initial=0))
        if span == 0:
            return np.zeros(cursor.shape, dtype=np.int64)
        at = np.minimum(cursor, self.limit)[:, None] + np.arange(span)
        got = self.bits[at] * (np.arange(span) < width[:, None])
        return (got << np.arange(span)).sum(axis=1)

    def ones(self, cursor: np.ndarray) -> np.ndarray:
        """Leading one bits at ``cursor``, at most ``RICE_ESCAPE``."""
        at = np.minimum(cursor, self.limit)[:, None] + np.arange(RICE_ESCAPE)
        window = self.bits[at]
        return np.where(window.all(axis=1), RICE_ESCAPE, np.argmin(window, axis=1))


def decode_layer(words: np.ndarray, bits: int, row_ptr: np.ndarray, fan_in: int, classes: int,
                 cbits: tuple[int, ...], rice_k: tuple[int, ...], where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, widths)``, ``int64 [rows, F]``, of a layer's weight stream; the inverse of :func:`encode_layer`.

    Checks everything the stream can get wrong and raises :class:`UserError` naming ``where`` (the layer), the
    row and the field: a count above ``F`` or counts summing past it, a position past the row, a position two
    classes claim, a row that does not end where the next one starts (or the last where ``stream_bits`` says),
    set padding bits.
    """
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    rows = len(row_ptr)
    reader = _Bits(words)
    present = [c for c in range(len(CLASS_WIDTHS)) if classes >> c & 1]
    pb = pos_bits(fan_in)
    cursor = row_ptr.copy()
    counts = np.zeros((rows, len(CLASS_WIDTHS)), dtype=np.int64)
    for c in present:
        counts[:, c] = reader.read(cursor, cbits[c])
        cursor += cbits[c]
    over = counts.sum(axis=1) > fan_in
    if over.any():
        j = int(np.flatnonzero(over)[0])
        raise UserError(f"{where}: row {j} field 'counts' is {counts[j, present].tolist()} (classes "
                        f"{[CLASS_WIDTHS[c] for c in present]} bits); their sum is allowed 0..{fan_in} (fan_in)")
    codes = np.zeros((rows, fan_in), dtype=np.int64)
    widths = np.zeros((rows, fan_in), dtype=np.int64)
    for c in present:
        n = counts[:, c]
        dense = n == fan_in
        k = rice_k[c]
        prev = np.full(rows, -1, dtype=np.int64)
        width = CLASS_WIDTHS[c]
        for t in range(int(n.max(initial=0))):
            act = np.flatnonzero(t < n)
            cur = cursor[act]
            gap = np.zeros(len(act), dtype=np.int64)
            coded = ~dense[act]
            if coded.any():
                cc = cur[coded]
                q = reader.ones(cc)
                esc = q >= RICE_ESCAPE
                rem_len = np.where(esc, pb, k)
                start = cc + np.where(esc, RICE_ESCAPE, q + 1)
                rem = reader.read(start, rem_len)
                gap[coded] = np.where(esc, rem, (q << k) | rem)
                cur[coded] = start + rem_len
            pos = prev[act] + gap + 1
            bad = pos >= fan_in
            if bad.any():
                j = int(act[np.flatnonzero(bad)[0]])
                raise UserError(f"{where}: row {j} field 'position' of entry {t} of the {width}-bit class is "
                                f"{int(pos[np.flatnonzero(bad)[0]])}; allowed 0..{fan_in - 1} (fan_in {fan_in})")
            taken = widths[act, pos] != 0
            if taken.any():
                j = int(act[np.flatnonzero(taken)[0]])
                p = int(pos[np.flatnonzero(taken)[0]])
                raise UserError(f"{where}: row {j} field 'position' {p} of the {width}-bit class already holds a "
                                f"{int(widths[j, p])}-bit weight; each weight has one class")
            codes[act, pos] = reader.read(cur, width)
            widths[act, pos] = width
            cursor[act] = cur + width
            prev[act] = pos
    ends = np.append(row_ptr[1:], bits)
    wrong = cursor != ends
    if wrong.any():
        j = int(np.flatnonzero(wrong)[0])
        what = f"row {j + 1}'s pointer" if j + 1 < rows else "field 'stream_bits'"
        raise UserError(f"{where}: row {j} ends at stream bit {int(cursor[j])}; {what} says {int(ends[j])}"
                        " (row pointers and stream_bits must follow the rows exactly)")
    tail = reader.read(np.array([bits]), min(WORD_BITS, len(words) * WORD_BITS - bits))
    if tail.any():
        raise UserError(f"{where}: field 'stream' has bits set after stream_bits {bits}; the padding must be 0")
    return codes, widths
