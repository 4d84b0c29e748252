"""Hardware types of the packed image, built from its field table (model/export/format.py).

Nothing here states a bit position: :func:`record_layout` turns a :class:`~model.export.format.Record` into an
``amaranth.lib.data.StructLayout`` (fields in bit order, reserved bits as padding members named
``reserved_<offset>``), and :data:`WidthCode` is the ``amaranth.lib.enum.Enum`` of the 3-bit mask codes.
A record read from the global buffer word by word (word ``k`` in bits ``32k ..``) is viewed with these
layouts, e.g. ``data.View(DESCRIPTOR_LAYOUT, words).n_out``.
"""

import types

from amaranth import Value, signed, unsigned
from amaranth.lib import data, enum

from model.export.format import (
    CODE_BITS,
    CODES_PER_WORD,
    DESCRIPTOR,
    HEADER,
    PARAMS,
    RESERVED_CODES,
    VERSION,
    WIDTH_CODES,
    WORD_BITS,
    Record,
)


def record_layout(record: Record, version: int = VERSION) -> data.StructLayout:
    """``record``'s words as one ``StructLayout``: the fields ``version`` has, reserved bits as padding.

    The layout is ``WORD_BITS * record.words`` bits wide, so a register holding the record's words (word
    ``k`` in bits ``32k .. 32k + 31``) is viewed with it directly.
    """
    members, at = {}, 0
    for field in record.fields_of(version):
        if field.offset > at:
            members[f"reserved_{at}"] = unsigned(field.offset - at)
        members[field.name] = signed(field.width) if field.signed else unsigned(field.width)
        at = field.offset + field.width
    if at < WORD_BITS * record.words:
        members[f"reserved_{at}"] = unsigned(WORD_BITS * record.words - at)
    layout = data.StructLayout(members)
    assert layout.size == WORD_BITS * record.words
    return layout


#: The image header (magic, version, layers, input bits, words).
HEADER_LAYOUT = record_layout(HEADER)
#: One layer descriptor (sizes, code widths, requant shift, weight mode, region addresses).
DESCRIPTOR_LAYOUT = record_layout(DESCRIPTOR)
#: One output's requant parameter record (``mult``, ``bias``).
PARAM_RECORD_LAYOUT = record_layout(PARAMS)


def _width_code_members(namespace):
    namespace["__module__"] = __name__
    for entry in WIDTH_CODES:
        namespace[entry.name] = entry.code


#: The 3-bit width codes of the mask (``PRUNED``, ``W4`` .. ``W32``); values 5-7 are reserved and have no
#: member. Built from :data:`model.export.format.WIDTH_CODES`.
WidthCode = types.new_class("WidthCode", (enum.Enum,), {"shape": CODE_BITS}, _width_code_members)

#: One mask word: ten width codes (code ``p`` in bits ``3p .. 3p + 2``) and the reserved top bits.
MASK_WORD_LAYOUT = data.StructLayout({
    "codes": data.ArrayLayout(WidthCode, CODES_PER_WORD),
    "reserved": unsigned(WORD_BITS - CODE_BITS * CODES_PER_WORD),
})


def is_reserved(code) -> Value:
    """True where a width code (a ``WidthCode`` view or a 3-bit value) is one of the reserved codes."""
    raw = code.as_value() if isinstance(code, enum.EnumView) else Value.cast(code)
    return raw.matches(*RESERVED_CODES)
