"""Stream payloads as Python values: pack a value into the payload's bits and unpack it, by an Amaranth shape.

Amaranth flattens a ``data.StructLayout`` LSB first in field order and a ``data.ArrayLayout`` element 0
first; a Verilog port ``name__payload`` carries those bits. :class:`PayloadCodec` follows the same layout
object the hardware is built from, so a testbench writes ``{"w": [3, 1], "a": [2, 0], "last": 1}`` instead
of shifting bits by hand, and reads back ``{"score": -5, "last": 1}`` with the sign already applied::

    codec = PayloadCodec(data.StructLayout({"score": signed(32), "last": unsigned(1)}))
    codec.pack({"score": -5, "last": 1})    # 0x1_FFFF_FFFB
    codec.unpack(0x1_FFFF_FFFB)             # {"score": -5, "last": 1}

Values map to shapes as follows: a plain shape (``unsigned(n)``, ``signed(n)``, an ``int`` width, a
``range`` or an Amaranth ``enum.Enum``) is an ``int``; a struct (or flexible) layout is a ``dict`` with exactly
its field names; an array layout is a sequence of exactly its length. Union layouts are refused: their fields
overlap, so a value does not determine the bits.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["PayloadCodec"]

_SEQUENCES = (list, tuple)  # checked by type first: an ABC isinstance check per beat is measurable


@dataclass(frozen=True)
class _Leaf:
    """One plain-shaped field: ``width`` bits at ``offset`` of the payload."""

    path: str
    offset: int
    width: int
    signed: bool

    @property
    def bounds(self) -> tuple[int, int]:
        if not self.signed:
            return 0, (1 << self.width) - 1
        half = (1 << (self.width - 1)) if self.width else 0
        return -half, max(half - 1, 0)


@dataclass(frozen=True)
class _Struct:
    path: str
    fields: tuple[tuple[str, _Leaf | _Struct | _Array], ...]


@dataclass(frozen=True)
class _Array:
    path: str
    elems: tuple[_Leaf | _Struct | _Array, ...]


def _compile(shape, path: str, offset: int) -> _Leaf | _Struct | _Array:
    """The tree of ``shape`` with absolute bit offsets; leaves are plain shapes."""
    if isinstance(shape, data.UnionLayout):
        raise TypeError(f"{path}: union layouts cannot be packed (their fields overlap), not {shape!r}")
    if isinstance(shape, data.ArrayLayout):
        return _Array(path, tuple(_compile(field.shape, f"{path}[{k}]", offset + field.offset)
                                  for k, field in shape))
    if isinstance(shape, data.Layout):
        return _Struct(path, tuple((name, _compile(field.shape, f"{path}.{name}", offset + field.offset))
                                   for name, field in shape))
    try:
        cast = Shape.cast(shape)
    except TypeError as exc:
        raise TypeError(f"{path}: a payload shape must be an Amaranth shape or layout, not {shape!r}") from exc
    return _Leaf(path, offset, cast.width, cast.signed)


def _leaves(node) -> list[_Leaf]:
    if isinstance(node, _Leaf):
        return [node]
    children = node.elems if isinstance(node, _Array) else (child for _, child in node.fields)
    return [leaf for child in children for leaf in _leaves(child)]


class PayloadCodec:
    """Packs Python values into the bits of a stream payload and back, by its Amaranth shape or layout.

    Parameters
    ----------
    shape : shape-like or amaranth.lib.data.Layout
        The payload shape of the stream signature (``stream.Signature(shape)``).
    name : str
        How errors name the payload (``"i.payload"``, ...).

    Members
    -------
    shape
        The shape given.
    width : int
        Bits of the payload: the width of the ``name__payload`` port.

    Raises
    ------
    TypeError
        ``shape`` is not a shape, is or holds a union layout, or is a layout whose fields overlap.
    """

    def __init__(self, shape, *, name: str = "payload"):
        self.shape = shape
        root = _compile(shape, name, 0)
        end, previous = 0, None  # end of the fields so far, and the field that reaches it
        for leaf in sorted((leaf for leaf in _leaves(root) if leaf.width), key=lambda leaf: leaf.offset):
            if leaf.offset < end:
                raise TypeError(f"{previous.path} and {leaf.path} overlap; a payload layout's fields must not")
            end, previous = leaf.offset + leaf.width, leaf
        self.width = Shape.cast(shape).width
        # Compiled once: a source packs every beat of a long test (65536 operand sets for a lane).
        self._pack = _packer(root)
        self._unpack = _unpacker(root)

    def __repr__(self) -> str:
        return f"PayloadCodec({self.shape!r})"

    def pack(self, value) -> int:
        """The payload bits (a non-negative ``int`` of :attr:`width` bits) of ``value``.

        Raises
        ------
        TypeError
            ``value`` does not have the structure of the shape (a missing or extra field, a wrong length, a
            non-integer where a number belongs).
        ValueError
            A number does not fit its field; the message names the field.
        """
        return self._pack(value)

    def unpack(self, bits: int):
        """The value of the payload ``bits`` (signed fields sign-extended; bits outside fields ignored)."""
        return self._unpack(int(bits))


def _packer(node) -> Callable[[object], int]:
    """``value -> bits`` for the subtree ``node``."""
    if isinstance(node, _Leaf):
        path, offset, mask = node.path, node.offset, (1 << node.width) - 1
        low, high = node.bounds

        def pack_leaf(value) -> int:
            if type(value) is not int:
                if isinstance(value, enum.Enum):
                    value = value.value
                try:
                    value = operator.index(value)
                except TypeError:
                    raise TypeError(f"{path} must be an integer, not {value!r}") from None
            if not low <= value <= high:
                raise ValueError(f"{path} must lie in [{low}, {high}], not {value!r}")
            return (value & mask) << offset
        return pack_leaf

    if isinstance(node, _Array):
        path, parts = node.path, tuple(_packer(elem) for elem in node.elems)

        def pack_array(value) -> int:
            if type(value) not in _SEQUENCES and (isinstance(value, str | bytes) or not isinstance(value, Sequence)) \
                    or len(value) != len(parts):
                raise TypeError(f"{path} must be a sequence of {len(parts)} elements, not {value!r}")
            bits = 0
            for part, elem in zip(parts, value, strict=True):
                bits |= part(elem)
            return bits
        return pack_array

    path, fields = node.path, tuple((name, _packer(child)) for name, child in node.fields)
    names = {name for name, _ in fields}

    def pack_struct(value) -> int:
        if type(value) is not dict and not isinstance(value, Mapping) or value.keys() != names:
            raise TypeError(f"{path} must be a mapping with exactly the fields {[n for n, _ in fields]}, "
                            f"not {value!r}")
        bits = 0
        for name, part in fields:
            bits |= part(value[name])
        return bits
    return pack_struct


def _unpacker(node) -> Callable[[int], object]:
    """``bits -> value`` for the subtree ``node``."""
    if isinstance(node, _Leaf):
        offset, mask = node.offset, (1 << node.width) - 1
        sign = 1 << (node.width - 1) if node.signed and node.width else 0

        def unpack_leaf(bits: int) -> int:
            value = (bits >> offset) & mask
            return value - (sign << 1) if value & sign else value
        return unpack_leaf

    if isinstance(node, _Array):
        parts = tuple(_unpacker(elem) for elem in node.elems)
        return lambda bits: [part(bits) for part in parts]

    fields = tuple((name, _unpacker(child)) for name, child in node.fields)
    return lambda bits: {name: part(bits) for name, part in fields}
