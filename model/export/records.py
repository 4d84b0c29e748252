"""Records of the image format as words: pack and unpack from the field table, and the field errors readers raise.

The field table is :mod:`model.export.format`; this module turns a record's field values into its 32-bit
words and back (numpy, many records at once), and builds the :class:`~model.errors.UserError` that names the
file, the field, the word and the allowed values. Both image layouts (:mod:`model.export.image` for
versions 1-2, :mod:`model.export.layout_v3` for version 3) use it.
"""

from __future__ import annotations

import numpy as np

from model.errors import UserError
from model.export.format import VERSION, WORD_BITS, Record

WORD_MASK = (1 << WORD_BITS) - 1


def pack_records(record: Record, values: dict, count: int = 1) -> np.ndarray:
    """``count`` records of ``record``'s layout (:mod:`model.export.format`), ``uint32 [count, record.words]``.

    ``values`` maps every field name to an integer or ``count`` integers (signed fields in two's complement).

    Raises
    ------
    ValueError
        For a missing or unknown field, or a value that its field's bits cannot hold.
    """
    if set(values) != set(record.names):
        raise ValueError(f"{record.name}: values for {sorted(values)}, expected {sorted(record.names)}")
    out = np.zeros((count, record.words), dtype=np.uint64)
    for field in record.fields:
        value = np.broadcast_to(np.asarray(values[field.name]), (count,))
        low, high = field.limits()
        if value.dtype.kind not in "iu" or (value < low).any() or (value > high).any():
            raise ValueError(f"{record.name}: field {field.name!r} needs integers in [{low}, {high}], not {value}")
        bits = value.astype(np.int64).view(np.uint64) if value.dtype.kind == "i" else value.astype(np.uint64)
        for word in field.words:
            skip = WORD_BITS * word - field.offset  # field bit that lands on bit 0 of `word`
            part = bits >> np.uint64(skip) if skip >= 0 else bits << np.uint64(-skip)
            out[:, word] |= part & np.uint64(_field_mask(field, word))
    return out.astype(np.uint32)


def unpack_records(record: Record, words: np.ndarray, version: int = VERSION) -> dict[str, np.ndarray]:
    """The fields of records ``words`` (``[count, record.words]``) that ``version`` has, as int64 arrays.

    Signed fields are sign-extended; reserved bits are ignored (:func:`unpack` checks them).
    """
    words = np.asarray(words, dtype=np.uint64).reshape(-1, record.words)
    out = {}
    for field in record.fields_of(version):
        bits = np.zeros(len(words), dtype=np.uint64)
        for word in field.words:
            skip = WORD_BITS * word - field.offset
            part = words[:, word] & np.uint64(_field_mask(field, word))
            bits |= part << np.uint64(skip) if skip >= 0 else part >> np.uint64(-skip)
        if field.width == 64:
            value = bits.view(np.int64)
        else:
            value = bits.astype(np.int64)
            if field.signed:
                value = value - ((value >> (field.width - 1)) << field.width)
        out[field.name] = value
    return out


def _field_mask(field, word: int) -> int:
    """Bits of record word ``word`` that ``field`` occupies."""
    return (((1 << field.width) - 1) << field.offset) >> (WORD_BITS * word) & WORD_MASK


def field_error(where: str, field: str, addr: int, value: object, allowed: str) -> UserError:
    return UserError(f"{where}: field '{field}' (word {addr}) is {value}; {allowed}")


def check_reserved(words: np.ndarray, record: Record, base: int, version: int, where: str, prefix: str = ""
                    ) -> None:
    """Reject set reserved bits of the record at word ``base``, naming the word by its label."""
    for word in range(record.words):
        mask = record.reserved_mask(word, version)
        value = int(words[base + word])
        if value & mask:
            newer = [f"'{f.name}' needs version {f.since}" for f in record.fields
                     if f.since > version and word in f.words]
            bits = "bits " + ("0-31" if mask == WORD_MASK else bit_span(mask))
            raise field_error(where, prefix + record.label(word), base + word, hex(value),
                         f"{bits} are reserved and must be 0 in format version {version}"
                         + (f" ({', '.join(newer)})" if newer else ""))


def bit_span(mask: int) -> str:
    """The bits set in ``mask`` as ranges: ``"25-31"``, ``"4-7, 24-31"`` (version 3's descriptor word 11 has
    reserved bits between its fields), ``"3"``."""
    spans, bit = [], 0
    while mask >> bit:
        if (mask >> bit) & 1:  # a run of ones starts at `bit`: walk to its last one
            low = bit
            while (mask >> (bit + 1)) & 1:
                bit += 1
            spans.append(f"{low}" if low == bit else f"{low}-{bit}")
        bit += 1
    return ", ".join(spans)
