"""PayloadCodec packs exactly as Amaranth lays out a payload, unpacks back, and names the field it refuses."""

import pytest
from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data, enum
from hypothesis import given
from hypothesis import strategies as st

from hw.dsp.lane import operand_layout, sums_layout
from hw.dsp.packing import plan
from sim.payload import PayloadCodec

LEAVES = st.builds(lambda width, is_signed: signed(width) if is_signed else unsigned(width),
                   st.integers(1, 12), st.booleans())
SHAPES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(data.ArrayLayout, inner, st.integers(1, 3)),
        st.dictionaries(st.sampled_from("abcdef"), inner, min_size=1, max_size=3).map(data.StructLayout)),
    max_leaves=8)


def values(shape) -> st.SearchStrategy:
    """Values of ``shape`` in the form PayloadCodec takes (and Amaranth's ``Layout.const``)."""
    if isinstance(shape, data.ArrayLayout):
        return st.lists(values(shape.elem_shape), min_size=shape.length, max_size=shape.length)
    if isinstance(shape, data.StructLayout):
        return st.fixed_dictionaries({name: values(field.shape) for name, field in shape})
    low, high = (-(1 << shape.width - 1), (1 << shape.width - 1) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    return st.integers(low, high)


@st.composite
def shapes_and_values(draw):
    shape = draw(SHAPES)
    return shape, draw(values(shape))


def amaranth_bits(shape, value) -> int:
    """The bits Amaranth gives ``value`` of ``shape``: the reference the codec must agree with."""
    if isinstance(shape, data.Layout):
        return shape.const(value).as_bits()
    return value & ((1 << shape.width) - 1)


@given(shapes_and_values())
def test_pack_agrees_with_amaranth_and_unpack_inverts_it(case):
    shape, value = case
    codec = PayloadCodec(shape)
    bits = codec.pack(value)
    assert codec.width == Shape.cast(shape).width
    assert bits == amaranth_bits(shape, value)
    assert 0 <= bits < 1 << codec.width
    assert codec.unpack(bits) == value


def test_the_lane_layouts():
    """Field order of the lane's operand struct (w, a, last, LSB first) and its nested sums array."""
    p = plan(4, 4)
    operands = PayloadCodec(operand_layout(p))
    assert operands.width == 2 * 4 + 2 * 4 + 1
    assert operands.pack({"w": [0x1, 0x2], "a": [0x3, 0x4], "last": 1}) == 0x1_4321
    sums = PayloadCodec(sums_layout(p, 1))  # 9-bit sums, [w][a]
    assert sums.unpack(sum(v << (9 * k) for k, v in enumerate([1, 2, 3, 511]))) == [[1, 2], [3, 511]]


def test_signed_fields_sign_extend():
    codec = PayloadCodec(data.StructLayout({"score": signed(32), "last": unsigned(1)}))
    assert codec.pack({"score": -5, "last": 1}) == (1 << 32) | 0xFFFF_FFFB
    assert codec.unpack((1 << 32) | 0xFFFF_FFFB) == {"score": -5, "last": 1}
    assert codec.unpack(0x7FFF_FFFF) == {"score": 2**31 - 1, "last": 0}
    assert codec.unpack(1 << 40) == {"score": 0, "last": 0}  # bits beyond the payload are ignored


def test_plain_shapes_and_enums():
    class Mode(enum.Enum, shape=3):
        A = 1
        B = 6

    assert PayloadCodec(8).pack(255) == 255
    assert PayloadCodec(signed(4)).unpack(0b1000) == -8
    codec = PayloadCodec(data.StructLayout({"mode": Mode, "x": unsigned(2)}))
    assert codec.pack({"mode": Mode.B, "x": 1}) == 0b01_110
    assert codec.unpack(0b01_110) == {"mode": 6, "x": 1}


@pytest.mark.parametrize(("value", "error", "message"), [
    ({"w": [0, 16], "a": [0, 0], "last": 0}, ValueError, r"payload\.w\[1\] must lie in \[0, 15\], not 16"),
    ({"w": [0, 0], "a": [0, 0], "last": -1}, ValueError, r"payload\.last must lie in \[0, 1\], not -1"),
    ({"w": [0, 0], "a": [0, 0]}, TypeError, r"payload must be a mapping with exactly the fields \['w', 'a', 'last'\]"),
    ({"w": [0], "a": [0, 0], "last": 0}, TypeError, r"payload\.w must be a sequence of 2 elements"),
    ({"w": "ab", "a": [0, 0], "last": 0}, TypeError, r"payload\.w must be a sequence of 2 elements"),
    ({"w": [0, 1.0], "a": [0, 0], "last": 0}, TypeError, r"payload\.w\[1\] must be an integer, not 1\.0"),
])
def test_pack_names_the_field_it_refuses(value, error, message):
    with pytest.raises(error, match=message):
        PayloadCodec(operand_layout(plan(4, 4))).pack(value)


def test_signed_bounds_and_port_name():
    codec = PayloadCodec(signed(3), name="o.payload")
    assert codec.pack(-4) == 0b100 and codec.pack(3) == 0b011
    with pytest.raises(ValueError, match=r"o\.payload must lie in \[-4, 3\], not 4"):
        codec.pack(4)


def test_overlapping_layouts_are_refused():
    with pytest.raises(TypeError, match="union layouts cannot be packed"):
        PayloadCodec(data.StructLayout({"u": data.UnionLayout({"a": 4, "b": 2})}))
    flexible = data.FlexibleLayout(8, {"x": data.Field(unsigned(4), 0), "y": data.Field(unsigned(4), 2)})
    with pytest.raises(TypeError, match=r"payload\.x and payload\.y overlap"):
        PayloadCodec(flexible)
    with pytest.raises(TypeError, match="must be an Amaranth shape or layout, not 'wide'"):
        PayloadCodec("wide")
