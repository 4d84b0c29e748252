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
VERSION = 3
#: Versions readers accept; version 1 has no signed layers (descriptor bit ``signed`` reserved); versions 1
#: and 2 hold fully connected networks in the mask + payload layout (:data:`DESCRIPTOR`), version 3 any
#: network of the integer contract in the layer layout (:data:`LAYER`, class-grouped weight streams).
SUPPORTED_VERSIONS = (1, 2, 3)
#: The last version with the mask + payload layout (the fully connected core of ``hw/core`` reads it).
MASK_VERSION = 2
#: The vertical-layered image (:mod:`model.export.image_v4`): one network at every width of its training
#: (the vertical-layering paper), read by :func:`model.export.image_v4.read_vertical_image`; the readers of
#: versions 1-3 (:func:`model.export.image.unpack`, ``read_image``) refuse it by name.
VERTICAL_VERSION = 4
#: Every version this module describes.
ALL_VERSIONS = (*SUPPORTED_VERSIONS, VERTICAL_VERSION)
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
    Field("version", 1, 0, 32, "format version (1, 2 and 3; 4 for a vertical-layered net, see Versions)"),
    Field("layers", 2, 0, 32, "number of layers `L`"),
    Field("input_bits", 3, 0, 32, "input code width in bits"),
    Field("words", 4, 0, 32, "total number of words in the image"),
    Field("in_channels", 5, 0, 16, "input channels `C` (a fully connected network: its fan-in)", since=3),
    Field("in_height", 5, 16, 16, "input height `H` (1 for a fully connected network)", since=3),
    Field("in_width", 6, 0, 16, "input width `W` (1 for a fully connected network)", since=3),
    Field("fmap_codes", 7, 0, 32, "codes the largest feature map (or activation vector) held in one "
          "feature-map buffer has: the buffer depth an accelerator needs", since=3),
), labels=((5, "in_channels/in_height"), (6, "in_width")))

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

#: Layer kinds of a version 3 descriptor (field ``kind``).
KIND_FC = 0
KIND_CONV = 1
KINDS = {KIND_FC: "fc", KIND_CONV: "conv"}
#: Feature-map buffers of a version 3 network (the input image is in buffer 0), and the ``out_buf`` of the
#: last layer, whose outputs are the class scores (streamed out, not stored in a buffer).
FMAP_BUFFERS = 3
SCORE_SINK = 7

LAYER = Record("layer", 16, (
    Field("kind", 0, 0, 2, "0 fully connected, 1 conv", since=3),
    Field("signed", 0, 2, 1, "weight mode: 0 DoReFa, 1 signed offset-binary codes (see Payload)", since=3),
    Field("residual", 0, 3, 1, "1: the requant adds the option-A shortcut of buffer `res_buf` (conv only)",
          since=3),
    Field("gap", 0, 4, 1, "1: the input map is summed per channel first (global average pooling; FC only)",
          since=3),
    Field("pool", 0, 8, 8, "max-pool window (= stride) on the output codes, 0 none (conv only)", since=3),
    Field("in_bits", 0, 16, 8, "input code width (of the codes before a global pool)", since=3),
    Field("out_bits", 0, 24, 8, "output code width; 0 for the last layer (signed int32 scores)", since=3),
    Field("c_in", 1, 0, 16, "input channels (fully connected, no global pool: the fan-in)", since=3),
    Field("c_out", 1, 16, 16, "output channels (rows)", since=3),
    Field("in_height", 2, 0, 16, "input map height `H` (1 for a vector)", since=3),
    Field("in_width", 2, 16, 16, "input map width `W` (1 for a vector)", since=3),
    Field("kernel", 3, 0, 8, "kernel size `k` (square; 1 for fully connected)", since=3),
    Field("stride", 3, 8, 8, "stride (1 for fully connected)", since=3),
    Field("padding", 3, 16, 8, "zero padding on every side", since=3),
    Field("shift", 3, 24, 8, "requant shift `S`", since=3),
    Field("in_buf", 4, 0, 8, f"feature-map buffer read (0..{FMAP_BUFFERS - 1}; the input image is in 0)",
          since=3),
    Field("out_buf", 4, 8, 8, f"buffer written (0..{FMAP_BUFFERS - 1}), or {SCORE_SINK} for the scores", since=3),
    Field("res_buf", 4, 16, 8, "buffer holding the shortcut's codes (the block input; 0 without residual)",
          since=3),
    Field("res_stride", 4, 24, 8, "shortcut subsampling stride, 1 or 2 (0 without residual)", since=3),
    Field("fan_in", 5, 0, 32, "weights per row: `c_in k k` (conv), `c_in H W` or `c_in` after a global pool "
          "(fully connected)", since=3),
    Field("param_base", 6, 0, 32, "word address of the requant parameters, one record per row", since=3),
    Field("row_base", 7, 0, 32, "word address of the row-pointer table: one `ptr_bits`-bit pointer per row, "
          "row `j` at bit `j ptr_bits`", since=3),
    Field("stream_base", 8, 0, 32, "word address of the layer's weight stream", since=3),
    Field("stream_bits", 9, 0, 32, "bits of the weight stream before its padding to a word", since=3),
    Field("nonzero", 10, 0, 32, "number of non-zero weights in the layer", since=3),
    Field("classes", 11, 0, 4, "width classes present: bit `c` for class `c` (4, 8, 16, 32 bits)", since=3),
    Field("pos_bits", 11, 8, 8, "bits of an escaped gap: bit length of `fan_in - 1` (at least 1)", since=3),
    Field("ptr_bits", 11, 16, 8, "bits of a row pointer: bit length of `stream_bits` (at least 1)", since=3),
    Field("rice_k4", 12, 0, 8, "Rice parameter of the 4-bit class's position gaps", since=3),
    Field("rice_k8", 12, 8, 8, "Rice parameter of the 8-bit class", since=3),
    Field("rice_k16", 12, 16, 8, "Rice parameter of the 16-bit class", since=3),
    Field("rice_k32", 12, 24, 8, "Rice parameter of the 32-bit class", since=3),
    Field("payload_bits", 13, 0, 32, "sum of the layer's weight widths (its payload bits)", since=3),
    Field("count_bits4", 14, 0, 8, "bits of a row's 4-bit-class count (bit length of the layer's largest; "
          "0 when absent)", since=3),
    Field("count_bits8", 14, 8, 8, "bits of a row's 8-bit-class count", since=3),
    Field("count_bits16", 14, 16, 8, "bits of a row's 16-bit-class count", since=3),
    Field("count_bits32", 14, 24, 8, "bits of a row's 32-bit-class count", since=3),
), labels=((0, "kind/flags/bits"), (1, "c_in/c_out"), (2, "in_height/in_width"),
           (3, "kernel/stride/padding/shift"), (4, "buffers"), (11, "classes/pos_bits/ptr_bits"),
           (12, "rice_k"), (14, "count_bits")))

RES_PARAMS = Record("residual params", 4, (
    Field("mult", 0, 0, 32, "requant multiplier `M`", since=3),
    Field("bias", 1, 0, 64, "requant offset `B`, two's complement, low word first", since=3, signed=True),
    Field("res_mult", 3, 0, 32, "shortcut multiplier `M_r`, unsigned, below `2^MULT_BITS`", since=3),
))

VHEADER = Record("vertical header", 3, (
    Field("base_bits", 0, 0, 8, "width of the basic layer `b` (the smallest stored width)", since=4),
    Field("top_bits", 0, 8, 8, "source width `n` (the largest stored width)", since=4),
    Field("edge_bits", 0, 16, 8, "width of the first and last layers' signed codes (8)", since=4),
    Field("inner", 0, 24, 8, "inner (switchable) layers: all but the first and the last", since=4),
    Field("table_rows", 1, 0, 32, "rows of the Eq. 12 width table (0: none)", since=4),
    Field("table_base", 2, 0, 32, "word address of the width table: per row `ceil(inner / 4)` words, the "
          "width of inner layer `m` in byte `m % 4` of the row's word `m / 4`", since=4),
), labels=((0, "widths/inner"),))

VLAYER = Record("vertical layer", 10, (
    Field("kind", 0, 0, 2, "0 fully connected, 1 conv", since=4),
    Field("edge", 0, 2, 1, "1: first or last layer (`edge_bits` codes, no planes, every width)", since=4),
    Field("compensate", 0, 3, 1, "1: the lower widths add Eq. 6's `K_t = 2^t - 1` (golden_vertical.py)", since=4),
    Field("residual", 0, 4, 1, "1: conv2 of a basic block, the requant adds the option-A shortcut of the "
          "previous layer's input (subsampled by its stride); requant records of 4 words with `M_r`", since=4),
    Field("gap", 0, 5, 1, "1: the last (fully connected) layer reads the per-channel sums of the last map "
          "(global average pooling; `c_in` = channels, `fan_in` = `c_in`)", since=4),
    Field("pool", 0, 8, 8, "max-pool window (= stride) on the output codes, 0 none", since=4),
    Field("base_bits", 0, 16, 8, "width of the codes in the base region (`edge_bits` for an edge)", since=4),
    Field("top_bits", 0, 24, 8, "width with every plane (`base_bits` for an edge)", since=4),
    Field("c_in", 1, 0, 16, "input channels (fully connected: the fan-in)", since=4),
    Field("c_out", 1, 16, 16, "output channels (rows)", since=4),
    Field("kernel", 2, 0, 8, "kernel size `k` (1 for fully connected)", since=4),
    Field("stride", 2, 8, 8, "stride (1 for fully connected)", since=4),
    Field("padding", 2, 16, 8, "zero padding on every side", since=4),
    Field("fan_in", 3, 0, 32, "weights per row: `c_in k k`", since=4),
    Field("weight_base", 4, 0, 32, "word address of the weight region: the base region, then each plane",
          since=4),
    Field("base_words", 5, 0, 32, "words of the base region: `ceil(c_out fan_in base_bits / 32)`", since=4),
    Field("plane_words", 6, 0, 32, "words of one enhance plane: `ceil(c_out fan_in / 32)`; 0 in a layer without planes "
          "(an edge layer, or `base_bits = top_bits`)", since=4),
    Field("requant_base", 7, 0, 32, "word address of the layer's first requant group", since=4),
    Field("requant_count", 8, 0, 32, "requant groups: one per `(in_bits, out_bits)` pair (with `res_bits` for a "
          "residual layer), and the table rows' own groups", since=4),
    Field("group_words", 9, 0, 32, "words per requant group: `2 + 3 c_out + ceil(c_out / 32)` (`2 + 4 c_out + "
          "ceil(c_out / 32)` for a residual layer)", since=4),
), labels=((0, "kind/flags/pool/bits"), (1, "c_in/c_out"), (2, "kernel/stride/padding")))

VREQUANT = Record("vertical requant group", 2, (
    Field("in_bits", 0, 0, 8, "width of the layer's input codes this group serves", since=4),
    Field("out_bits", 0, 8, 8, "width of its output codes (0: class scores)", since=4),
    Field("shift", 0, 16, 8, "requant shift `S`", since=4),
    Field("res_bits", 0, 24, 8, "width of the shortcut's codes a residual layer's group serves (0 otherwise)",
          since=4),
    Field("row", 1, 0, 16, "0: the group of its widths; `r + 1`: table row `r`'s own group (BN re-estimated for "
          "the row), stored before the layer's width groups", since=4),
))


#: The records only version 4 has.
VERTICAL_RECORDS = (VHEADER, VLAYER, VREQUANT)
#: Width classes of a version 3 weight stream, in stream order (class ``c`` is ``CLASS_WIDTHS[c]`` bits).
CLASS_WIDTHS = (4, 8, 16, 32)
#: Rice parameter field of each class.
RICE_FIELDS = ("rice_k4", "rice_k8", "rice_k16", "rice_k32")
#: Count-width field of each class.
COUNT_FIELDS = ("count_bits4", "count_bits8", "count_bits16", "count_bits32")
#: A Rice quotient of this many ones or more is escaped: the ones, then the raw gap in ``pos_bits`` bits.
RICE_ESCAPE = 8

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


def record_table(record: Record, version: int = VERSION) -> str:
    """A record's fields as a Markdown table (the one in ``docs/image_format.md``), reserved bits as of
    ``version``."""
    rows = ["| word | bits | field | since | meaning |", "|---|---|---|---|---|"]
    for word in range(record.words):
        for f in (f for f in record.fields if f.word == word):
            rows.append(f"| {word} | {f.bits} | `{f.name}` | {f.since} | {f.meaning} |")
        reserved = record.reserved_mask(word, version)
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
    parts = [f"### {title}\n\n{record_table(rec, VERTICAL_VERSION if rec in VERTICAL_RECORDS else VERSION)}"
             for title, rec in
             (("Header", HEADER), ("Layer descriptor (versions 1, 2)", DESCRIPTOR),
              ("Requant parameter record", PARAMS), ("Layer descriptor (version 3)", LAYER),
              ("Requant parameter record with a shortcut (version 3)", RES_PARAMS),
              ("Vertical header (version 4)", VHEADER), ("Vertical layer descriptor (version 4)", VLAYER),
              ("Vertical requant group head (version 4)", VREQUANT))]
    parts.append(f"### Width codes\n\n{width_code_table()}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
