"""CRC-32 (the zlib / IEEE 802.3 one) of a word stream, one word a cycle: the image checksum of a load.

The CRC is the reflected CRC-32 of polynomial 0x04C11DB7 (0xEDB88320 reflected), initial value 0xFFFFFFFF,
final xor 0xFFFFFFFF: what Python's ``zlib.crc32`` and ``binascii.crc32`` compute. A ``data_width``-bit word
is the ``data_width // 8`` bytes at increasing addresses, byte k in bits ``8k .. 8k + 7`` (little-endian, the
order in which a 32-bit word of the AXI read engine holds the DDR bytes), so a stream of words has the CRC
of the bytes it came from.

Word-parallel step. For the reflected CRC a whole word enters at once: ``state ^= word``, then ``data_width``
shifts of the bit-serial register (shift right, xor 0xEDB88320 when the bit shifted out is 1). All of it is
linear over GF(2), so each bit of the next state is the xor of a fixed set of bits of ``state ^ word``
(:func:`step_terms`, computed here from the bit-serial definition, not from a table). For the 32-bit step
(the loader's) a next-state bit is the xor of 12 to 17 ``state ^ data`` pairs (:func:`max_terms`), so of at
most 34 signals: two levels of LUT6 (6 x 6 = 36 inputs), register to register, when ``data`` comes from a
register. A 64-bit step would need up to 34 pairs (68 signals, three levels); the loader takes one 32-bit
word a cycle, so the 32-bit step keeps pace with it and the load takes no extra cycle for the CRC. Yosys
0.23 (not Vivado): ``synth -flatten; abc -lut 6`` maps the 32-bit block in 3 LUT levels register to
register (the xor tree and the enable / clear select, which ``synth_xilinx`` puts on the flip-flops' CE
and S pins); ``synth_xilinx`` uses 199 LUTs and 32 FDSE for it.

Simulated against ``zlib.crc32`` in the Amaranth simulator (tests/hw/system/test_crc32.py); not run on a board.
"""

from __future__ import annotations

from functools import reduce
from operator import xor

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

#: The reflected polynomial (bit-reversed 0x04C11DB7), the initial value and the final xor.
POLY_REFLECTED = 0xEDB88320
INIT = 0xFFFFFFFF
FINAL_XOR = 0xFFFFFFFF
CRC_BITS = 32


def _serial(value: int, shifts: int) -> int:
    """``shifts`` steps of the bit-serial reflected CRC register from ``value``."""
    for _ in range(shifts):
        value = (value >> 1) ^ (POLY_REFLECTED if value & 1 else 0)
    return value


def step_terms(data_width: int) -> tuple[tuple[int, ...], ...]:
    """For each bit i of the next state, the bits j of ``state ^ word`` whose xor it is.

    ``state ^ word`` has ``max(32, data_width)`` bits: a wider word than the state is xored into its low 32
    bits, the rest enters the register as it shifts.
    """
    width = max(CRC_BITS, data_width)
    columns = [_serial(1 << j, data_width) for j in range(width)]  # the image of each input bit
    return tuple(tuple(j for j in range(width) if columns[j] >> i & 1) for i in range(CRC_BITS))


def max_terms(data_width: int) -> int:
    """The largest number of ``state ^ word`` bits one next-state bit is the xor of."""
    return max(len(t) for t in step_terms(data_width))


def crc32_words(words, data_width: int = 32, crc: int = 0) -> int:
    """The CRC of ``words`` (each ``data_width`` bits, little-endian bytes) by the word step (a model)."""
    state = crc ^ FINAL_XOR
    for w in words:
        state = _serial(state ^ int(w), data_width)
    return state ^ FINAL_XOR


class Crc32(wiring.Component):
    """CRC-32 of a stream of ``data_width``-bit words, one word a cycle (module docstring).

    Parameters
    ----------
    data_width : int
        Bits of a word, a multiple of 8 from 8 to 64.

    Members
    -------
    clear : In(1)
        Restart: the state becomes 0xFFFFFFFF (``crc`` reads 0) at the next edge; ``en`` in the same cycle
        is ignored.
    en : In(1)
        Take ``data`` this cycle.
    data : In(data_width)
        A word, its first byte in bits 0-7.
    crc : Out(32)
        The CRC of the words taken since the last ``clear`` (or reset), final xor applied: valid the cycle
        after the last word was taken.

    Raises
    ------
    ValueError
        ``data_width`` out of range, naming its value.
    """

    def __init__(self, data_width: int = 32):
        if not isinstance(data_width, int) or data_width % 8 or not 8 <= data_width <= 64:
            raise ValueError(f"data_width must be a multiple of 8 from 8 to 64, not {data_width!r}")
        self._data_width = data_width
        super().__init__({"clear": In(1), "en": In(1), "data": In(data_width), "crc": Out(CRC_BITS)})

    data_width = property(lambda self: self._data_width)

    def elaborate(self, platform):
        m = Module()
        state = Signal(CRC_BITS, init=INIT)
        width = max(CRC_BITS, self._data_width)
        mixed = Signal(width)
        m.d.comb += mixed.eq(state ^ self.data)
        nxt = Signal(CRC_BITS)
        bits = [reduce(xor, [mixed[j] for j in terms], 0) for terms in step_terms(self._data_width)]
        for i, bit in enumerate(bits):
            m.d.comb += nxt[i].eq(bit)
        with m.If(self.clear):
            m.d.sync += state.eq(INIT)
        with m.Elif(self.en):
            m.d.sync += state.eq(nxt)
        m.d.comb += self.crc.eq(state ^ FINAL_XOR)
        return m
