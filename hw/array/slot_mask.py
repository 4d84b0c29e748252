"""The pixel slots of one output row in a tile: a mask from the row's first slot and its width.

A multi-row tile puts output row ``r`` of ``w_out`` pixels in slots ``off = r w_out`` to ``off + w_out - 1``
(:mod:`hw.array.patch_loader`, whose words fill those slots of the patch). Written as ``thermometer(w_out) << off`` the mask is a
comparator a slot and an 84-bit shifter (about 1,000 LUT at ``T = 84``, Yosys); here each slot compares both
ends against a constant through one shared decode of each end's low four bits and high bits, one LUT6 a slot.
"""

from __future__ import annotations

from amaranth import Cat, Value

#: Bits of a value decoded at once at the bottom of :func:`at_least` (a LUT4 each).
LOW_BITS = 4


def at_least(value: Value, count: int) -> list:
    """``[value >= c for c in range(count)]`` (``value`` unsigned): for ``c = 16 h + l``, ``value >= c`` is
    ``high > h or (high == h and low >= l)`` with ``high``/``low`` the value's bits above / below
    :data:`LOW_BITS`: sixteen shared ``low >= l``, two shared ``high`` compares per ``h``, three inputs a term."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    low = value[:LOW_BITS]
    high = value[LOW_BITS:]
    low_ge = [low >= lo for lo in range(1 << LOW_BITS)]
    result = []
    for c in range(count):
        h, lo = c >> LOW_BITS, c & ((1 << LOW_BITS) - 1)
        if len(high) == 0:
            result.append(low_ge[lo] if h == 0 else Value.cast(0))
        elif h >= 1 << len(high):
            result.append(Value.cast(0))
        else:
            result.append((high > h) | ((high == h) & low_ge[lo]))
    return result


def row_slot_mask(off: Value, width: Value, slots: int) -> Value:
    """``slots`` bits, bit ``i`` set when ``off <= i < off + width`` (``off``, ``width`` unsigned)."""
    end = off + width
    starts = at_least(off, slots + 1)  # off >= i + 1: slot i is before the row
    ends = at_least(end, slots + 1)  # end >= i + 1: slot i is before the row's end
    return Cat(*(ends[i + 1] & ~starts[i + 1] for i in range(slots)))
