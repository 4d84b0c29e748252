"""Hardware types of the image against the field table: every field where the table puts it."""

import numpy as np
import pytest
from amaranth import signed, unsigned

from hw.core.image_layout import (
    DESCRIPTOR_LAYOUT,
    HEADER_LAYOUT,
    MASK_WORD_LAYOUT,
    PARAM_RECORD_LAYOUT,
    WidthCode,
    record_layout,
)
from model.export.format import CODE_BITS, CODES_PER_WORD, DESCRIPTOR, HEADER, PARAMS, WIDTH_CODES
from model.export.image import pack_records

LAYOUTS = [(HEADER, HEADER_LAYOUT), (DESCRIPTOR, DESCRIPTOR_LAYOUT), (PARAMS, PARAM_RECORD_LAYOUT)]


@pytest.mark.parametrize("record, layout", LAYOUTS, ids=[r.name for r, _ in LAYOUTS])
def test_layout_fields_sit_at_the_table_offsets(record, layout):
    assert layout.size == 32 * record.words
    for f in record.fields:
        member = layout[f.name]
        assert member.offset == f.offset and member.shape == (signed(f.width) if f.signed else unsigned(f.width))
    # Everything else is reserved padding, and exactly the reserved bits.
    reserved = 0
    for name, member in layout:
        if name.startswith("reserved_"):
            reserved |= ((1 << member.width) - 1) << member.offset
    assert reserved == sum(record.reserved_mask(w) << (32 * w) for w in range(record.words))


def test_version_1_layout_has_no_signed_field():
    assert "signed" not in dict(record_layout(DESCRIPTOR, version=1))
    assert record_layout(DESCRIPTOR, version=1).size == DESCRIPTOR_LAYOUT.size


@pytest.mark.parametrize("seed", range(3))
def test_views_of_packed_words_read_the_values(seed):
    """Words packed by the Python packer, viewed with the hardware layout, give back every field."""
    rng = np.random.default_rng(seed)
    for record, layout in LAYOUTS:
        values = {}
        for f in record.fields:
            low, high = f.limits()
            values[f.name] = int(rng.choice([low, high, int(rng.integers(low, high, endpoint=True))]))
        words = pack_records(record, values)[0]
        const = layout.from_bits(sum(int(w) << (32 * k) for k, w in enumerate(words)))
        assert {f.name: int(const[f.name]) for f in record.fields} == values


def test_width_code_enum_is_the_table():
    assert WidthCode.as_shape() == unsigned(CODE_BITS)
    assert [(m.name, m.value) for m in WidthCode] == [(c.name, c.code) for c in WIDTH_CODES]
    codes = MASK_WORD_LAYOUT["codes"]
    assert codes.offset == 0 and codes.shape.length == CODES_PER_WORD and codes.shape.elem_shape is WidthCode
    assert MASK_WORD_LAYOUT["reserved"].offset == CODE_BITS * CODES_PER_WORD and MASK_WORD_LAYOUT.size == 32
    word = sum(c << (CODE_BITS * p) for p, c in enumerate([1, 0, 4, 3, 2, 0, 0, 1, 4, 2]))
    view = MASK_WORD_LAYOUT.from_bits(word)
    assert [view.codes[p] for p in range(CODES_PER_WORD)] == [WidthCode(c) for c in [1, 0, 4, 3, 2, 0, 0, 1, 4, 2]]
