"""The packed image format as data: one table of every field, and the 3-bit width codes.

This module is the single source of the image layout (``docs/image_format.md`` shows these tables, and a
test checks that it does). The Python packer and reader (:mod:`model.export.image`) pack, unpack and check
the header, the layer descriptors and the requant parameter records from :data:`HEADER`,
:data:`DESCRIPTOR` and :data:`PARAMS`; the hardware (:mod:`hw.core.image_layout`) builds its
``amaranth.lib.data.StructLayout`` types and the ``amaranth.lib.enum.Enum`` of width codes from the same
tables, so no bit range is written twice.

A record is a fixed number of 32-bit words. A field lies at bit ``bit`` of word ``word`` and is ``width``
bits wide; a wider field continues into the following words (the 64-bit requant offset ``bias`` spans two
words, low word first), i.e. it occupies bits ``32 * word + bit ...`` of the record read as one
little-endian integer. Bits that no field of a format version covers are reserved: writers set them to 0
and readers reject them otherwise. A field added in a later version (``since``) is reserved before it.

Plain Python only (no numpy, no torch): the hardware generator and small tools import it cheaply.
Run ``python -m model.export.format`` to print the tables as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The first word of every image: the bytes ``"MPQA"`` read as a little-endian word.
MAGIC = 0x4151504D
#: Version written by the packer.
VERSION = 2
#: Versions readers accept; version 1 has no signed layers (descriptor bit ``signed`` reserved).
SUPPORTED_VERSIONS = (1, 2)
WORD_BITS = 32


@dataclass(frozen=True)
class Field:
    """One field of a record.

    Members
    -------
    name : str
        Field name, as error messages and the manifest spell it.
    word : int
        Word of the record holding the field's least significant bit.
    bit : int
        Position of that bit inside the word (0 = least significant).
    width : int
        Bits; may run past the word's end into the following words.
    meaning : str
        One line for the documentation.
    since : int
        First format version that has the field; in earlier versions its bits are reserved.
    signed : bool
        Two's complement (only the requant offset ``bias``).
    """

    name: str
    word: int
    bit: int
    width: int
    meaning: str
    since: int = 1
    signed: bool = False

    def __post_init__(self):
        if not 0 <= self.bit < WORD_BITS or self.word < 0 or self.width < 1:
            raise ValueError(f"field {self.name!r}: word {self.word}, bit {self.bit}, width {self.width}"
                             " must be word >= 0, bit in 0..31, width >= 1")

    @property
    def offset(self) -> int:
        """Position of the least significant bit in the record read as one integer."""
        return WORD_BITS * self.word + self.bit

    @property
    def words(self) -> range:
        """The record words the field touches."""
        return range(self.word, (self.offset + self.width - 1) // WORD_BITS + 1)

    @property
    def bits(self) -> str:
        """The bit range as the documentation writes it: ``"0-7"``, ``"24"``, ``"0-63 (words 1-2)"``."""
        last = self.bit + self.width - 1
        text = str(self.bit) if self.width == 1 else f"{self.bit}-{last}"
        if last >= WORD_BITS:
            text += f" (words {self.word}-{self.words[-1]})"
        return text

    def limits(self) -> tuple[int, int]:
        """Smallest and largest value the field's bits can hold."""
        if self.signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1


@dataclass(frozen=True)
class Record:
    """A fixed-size group of words: the header, one layer descriptor, or one output's requant parameters.

    Members
    -------
    name : str
    words : int
        Size in 32-bit words.
    fields : tuple of Field
        In word and bit order; they must not overlap and must fit inside ``words``.
    labels : tuple of (int, str)
        Names of words that hold several fields (error messages name a word's reserved bits by them);
        a word with one field is named after it, a word without any is ``"reserved"``.
    """

    name: str
    words: int
    fields: tuple[Field, ...]
    labels: tuple[tuple[int, str], ...] = ()

    def __post_init__(self):
        taken = 0
        for f in self.fields:
            mask = ((1 << f.width) - 1) << f.offset
            if taken & mask:
                raise ValueError(f"{self.name}: field {f.name!r} overlaps another field")
            if f.offset + f.width > WORD_BITS * self.words:
                raise ValueError(f"{self.name}: field {f.name!r} runs past the record's {self.words} words")
            taken |= mask
        if [f.offset for f in self.fields] != sorted(f.offset for f in self.fields):
            raise ValueError(f"{self.name}: fields must be listed in bit order")

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def fields_of(self, version: int = VERSION) -> tuple[Field, ...]:
        """The fields a format version has."""
        return tuple(f for f in self.fields if f.since <= version)

    def label(self, word: int) -> str:
        """Name of record word ``word`` in messages."""
        labels = dict(self.labels)
        if word in labels:
            return labels[word]
        names = [f.name for f in self.fields if word in f.words]
        return names[0] if len(names) == 1 else "reserved"

    def reserved_mask(self, word: int, version: int = VERSION) -> int:
        """Bits of record word ``word`` that are reserved (must be 0) in ``version``."""
        used = 0
        for f in self.fields_of(version):
            used |= ((1 << f.width) - 1) << f.offset
        return ~(used >> (WORD_BITS * word)) & ((1 << WORD_BITS) - 1)


HEADER = Record("header", 8, (
    Field("magic", 0, 0, 32, f"magic `0x{MAGIC:08X}` (the bytes `MPQA`)"),
    Field("version", 1, 0, 32, "format version (readers accept 1 and 2, see Versions)"),
    Field("layers", 2, 0, 32, "number of layers `L`"),
    Field("input_bits", 3, 0, 32, "input code width in bits"),
    Field("words", 4, 0, 32, "total number of words in the image"),
))

DESCRIPTOR = Record("descriptor", 8, (
    Field("n_in", 0, 0, 32, "fan-in"),
    Field("n_out", 1, 0, 32, "outputs"),
    Field("in_bits", 2, 0, 8, "input code width"),
    Field("out_bits", 2, 8, 8, "output code width; 0 for the last layer (signed int32 scores)"),
    Field("shift", 2, 16, 8, "requant shift `S`"),
    Field("signed", 2, 24, 1, "weight mode: 0 DoReFa, 1 signed offset-binary codes (see Payload)", since=2),
    Field("mask_base", 3, 0, 32, "word address of the layer's width mask"),
    Field("payload_base", 4, 0, 32, "word address of the layer's payload bit stream"),
    Field("param_base", 5, 0, 32, "word address of the layer's requant parameters"),
    Field("mask_words_per_row", 6, 0, 32, "mask words per output row, `ceil(n_in / 10)`"),
    Field("nonzero", 7, 0, 32, "number of non-zero weights in the layer"),
), labels=((2, "bits/shift"),))

PARAMS = Record("params", 3, (
    Field("mult", 0, 0, 32, "requant multiplier `M`, unsigned, below `2^MULT_BITS` (model/export/golden.py)"),
    Field("bias", 1, 0, 64, "requant offset `B`, two's complement, low word first", signed=True),
))

#: Bits per width code in the mask, and codes per mask word (code ``p`` in bits ``3p .. 3p + 2``).
CODE_BITS = 3
CODES_PER_WORD = WORD_BITS // CODE_BITS
#: Bits of a mask word above its codes: reserved, must be 0.
MASK_RESERVED = ((1 << WORD_BITS) - 1) & ~((1 << (CODE_BITS * CODES_PER_WORD)) - 1)


@dataclass(frozen=True)
class MaskCode:
    """One 3-bit mask code: its number, its name in the hardware enum, and the weight width it stands for."""

    code: int
    name: str
    width: int


#: The width codes, in code order. Codes from ``len(WIDTH_CODES)`` to ``2^CODE_BITS - 1`` are reserved.
WIDTH_CODES = (
    MaskCode(0, "PRUNED", 0),
    MaskCode(1, "W4", 4),
    MaskCode(2, "W8", 8),
    MaskCode(3, "W16", 16),
    MaskCode(4, "W32", 32),
)
assert [c.code for c in WIDTH_CODES] == list(range(len(WIDTH_CODES)))
#: Weight widths the format encodes (the MPQ-tickets hierarchy, paper Sec. 3.2; 0 = pruned), in code order.
WIDTHS: tuple[int, ...] = tuple(c.width for c in WIDTH_CODES)
CODE_OF_WIDTH: dict[int, int] = {c.width: c.code for c in WIDTH_CODES}
WIDTH_OF_CODE: dict[int, int] = {c.code: c.width for c in WIDTH_CODES}
RESERVED_CODES: tuple[int, ...] = tuple(range(len(WIDTH_CODES), 1 << CODE_BITS))


def record_table(record: Record) -> str:
    """A record's fields as a Markdown table (the one in ``docs/image_format.md``)."""
    rows = ["| word | bits | field | since | meaning |", "|---|---|---|---|---|"]
    for word in range(record.words):
        for f in (f for f in record.fields if f.word == word):
            rows.append(f"| {word} | {f.bits} | `{f.name}` | {f.since} | {f.meaning} |")
        reserved = record.reserved_mask(word)
        covered = any(word in f.words for f in record.fields)
        if reserved and not covered:
            rows.append(f"| {word} | 0-31 | reserved | | 0 |")
        elif reserved:
            rows.append(f"| {word} | {_bit_ranges(reserved)} | reserved | | 0 |")
    return "\n".join(rows)


def width_code_table() -> str:
    """The width codes as a Markdown table."""
    rows = ["| code | weight width | hardware name |", "|---|---|---|"]
    rows += [f"| {c.code} | {c.width} | `{c.name}` |" for c in WIDTH_CODES]
    rows += [f"| {c} | reserved (rejected) | |" for c in RESERVED_CODES]
    return "\n".join(rows)


def _bit_ranges(mask: int) -> str:
    """``0b1111_0000_0010`` -> ``"1, 8-11"``."""
    out, bit = [], 0
    while mask >> bit:
        if mask >> bit & 1:
            start = bit
            while mask >> (bit + 1) & 1:
                bit += 1
            out.append(str(start) if bit == start else f"{start}-{bit}")
        bit += 1
    return ", ".join(out)


def markdown() -> str:
    """Every table of the format, as ``docs/image_format.md`` embeds them."""
    parts = [f"### {title}\n\n{record_table(rec)}" for title, rec in
             (("Header", HEADER), ("Layer descriptor", DESCRIPTOR), ("Requant parameter record", PARAMS))]
    parts.append(f"### Width codes\n\n{width_code_table()}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
