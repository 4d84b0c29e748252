"""The image format's field table: consistency, the packer's use of it, the width codes, and the doc."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.export import format as fmt
from model.export.format import (
    CODE_OF_WIDTH,
    DESCRIPTOR,
    HEADER,
    LAYER,
    MASK_RESERVED,
    PARAMS,
    RES_PARAMS,
    RESERVED_CODES,
    WIDTH_OF_CODE,
    WIDTHS,
    Field,
    Record,
    markdown,
)
from model.export.image import pack_records, unpack_records

DOC = Path(__file__).resolve().parents[3] / "docs" / "image_format.md"
RECORDS = (HEADER, DESCRIPTOR, PARAMS, LAYER, RES_PARAMS)


def test_doc_tables_are_the_field_table():
    text = DOC.read_text()
    begin = text.index("<!-- BEGIN generated")
    begin = text.index("\n", begin) + 1
    end = text.index("<!-- END generated -->")
    assert text[begin:end] == markdown(), "docs/image_format.md is stale: paste `python -m model.export.format`"


def test_record_sizes_and_known_positions():
    """The positions every released image relies on (version 1 and 2 readers, the hardware)."""
    assert (HEADER.words, DESCRIPTOR.words, PARAMS.words) == (8, 8, 3)
    assert [(f.name, f.offset, f.width) for f in HEADER.fields_of(2)] == [
        ("magic", 0, 32), ("version", 32, 32), ("layers", 64, 32), ("input_bits", 96, 32), ("words", 128, 32)]
    d = {f.name: (f.word, f.bit, f.width, f.since) for f in DESCRIPTOR.fields}
    assert d["in_bits"] == (2, 0, 8, 1) and d["out_bits"] == (2, 8, 8, 1) and d["shift"] == (2, 16, 8, 1)
    assert d["signed"] == (2, 24, 1, 2) and d["nonzero"] == (7, 0, 32, 1)
    assert PARAMS["bias"].words == range(1, 3) and PARAMS["bias"].signed


def test_version_3_records():
    """Version 3: the header gains the input shape and the buffer depth; a 16-word layer descriptor; residual
    params with M_r in word 3."""
    assert (LAYER.words, RES_PARAMS.words) == (16, 4)
    assert all(f.since == 3 for f in LAYER.fields + RES_PARAMS.fields)
    assert {f.name for f in HEADER.fields if f.since == 3} == {"in_channels", "in_height", "in_width", "fmap_codes"}
    assert [RES_PARAMS[n].offset for n in ("mult", "bias", "res_mult")] == [0, 32, 96]
    assert [PARAMS[n].offset for n in ("mult", "bias")] == [RES_PARAMS[n].offset for n in ("mult", "bias")]
    d = {f.name: (f.word, f.bit, f.width) for f in LAYER.fields}
    assert d["kind"] == (0, 0, 2) and d["fan_in"] == (5, 0, 32) and d["payload_bits"] == (13, 0, 32)
    assert [LAYER.reserved_mask(w, 3) for w in (15,)] == [0xFFFFFFFF]
    assert LAYER.reserved_mask(0, 3) == 0b11100000 and LAYER.label(4) == "buffers"

def test_reserved_bits_by_version():
    assert DESCRIPTOR.reserved_mask(2, version=1) == 0xFF000000
    assert DESCRIPTOR.reserved_mask(2, version=2) == 0xFE000000
    assert [HEADER.reserved_mask(w, version=2) for w in range(8)] == [0] * 5 + [0xFFFFFFFF] * 3
    assert [HEADER.reserved_mask(w, version=3) for w in range(8)] == [0] * 6 + [0xFFFF0000, 0]
    assert all(PARAMS.reserved_mask(w) == 0 for w in range(3))
    assert MASK_RESERVED == 0xC0000000
    assert DESCRIPTOR.label(2) == "bits/shift" and HEADER.label(6) == "in_width" and DESCRIPTOR.label(0) == "n_in"


def test_width_codes():
    assert WIDTHS == (0, 4, 8, 16, 32) and RESERVED_CODES == (5, 6, 7)
    assert all(CODE_OF_WIDTH[WIDTH_OF_CODE[c]] == c for c in WIDTH_OF_CODE)


def test_table_rejects_overlaps_and_overruns():
    with pytest.raises(ValueError, match="overlaps"):
        Record("r", 1, (Field("a", 0, 0, 8, ""), Field("b", 0, 4, 8, "")))
    with pytest.raises(ValueError, match="runs past"):
        Record("r", 1, (Field("a", 0, 16, 32, ""),))
    with pytest.raises(ValueError, match="bit order"):
        Record("r", 1, (Field("a", 0, 8, 8, ""), Field("b", 0, 0, 8, "")))
    with pytest.raises(ValueError, match="bit in 0..31"):
        Field("a", 0, 32, 1, "")


@st.composite
def record_values(draw):
    record = draw(st.sampled_from(RECORDS))
    count = draw(st.integers(1, 4))
    values = {}
    for f in record.fields:
        low, high = f.limits()
        edge = st.sampled_from([low, high, 0, max(low, -1), min(high, 1)])
        values[f.name] = [draw(st.one_of(edge, st.integers(low, high))) for _ in range(count)]
    return record, count, values


@settings(max_examples=200, deadline=None)
@given(record_values())
def test_pack_records_places_each_field_by_the_table(case):
    """Packed words read as one little-endian integer hold each value at its field's offset (an independent
    bit-level model), and unpack_records returns the values."""
    record, count, values = case
    words = pack_records(record, {k: np.array(v, dtype=np.int64) for k, v in values.items()}, count)
    assert words.shape == (count, record.words) and words.dtype == np.uint32
    for n in range(count):
        big = sum(int(w) << (32 * k) for k, w in enumerate(words[n]))
        expected = sum((values[f.name][n] % (1 << f.width)) << f.offset for f in record.fields)
        assert big == expected
    back = unpack_records(record, words)
    assert {k: v.tolist() for k, v in back.items()} == values


def test_pack_records_rejects_values_that_do_not_fit():
    values = {f.name: 0 for f in DESCRIPTOR.fields}
    with pytest.raises(ValueError, match="'shift' needs integers in \\[0, 255\\]"):
        pack_records(DESCRIPTOR, {**values, "shift": 256})
    with pytest.raises(ValueError, match="expected"):
        pack_records(DESCRIPTOR, {"n_in": 1})


def test_unpack_records_leaves_out_newer_fields():
    words = pack_records(DESCRIPTOR, {f.name: 1 for f in DESCRIPTOR.fields})
    assert "signed" not in unpack_records(DESCRIPTOR, words, version=1)
    assert unpack_records(DESCRIPTOR, words, version=2)["signed"].tolist() == [1]


def test_format_module_imports_neither_numpy_nor_torch():
    code = "import sys, model.export.format; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=DOC.parents[1])
    assert out.stdout.strip() == "[]"


def test_format_prints_its_tables():
    out = subprocess.run([sys.executable, "-m", "model.export.format"], capture_output=True, text=True,
                         check=True, cwd=DOC.parents[1])
    assert out.stdout == markdown()
    assert fmt.VERSION in fmt.SUPPORTED_VERSIONS
