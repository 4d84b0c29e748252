"""Buffer loader: the DMA side of ``load_image``, from DDR through the AXI read engine into the global buffer.

On ``start`` it takes a DDR byte address and a word count, asks :class:`~hw.system.axi_master.AxiMaster`'s
read engine for them (rounded up to whole 8-byte beats) and writes each word it receives into the global
buffer's load port (:func:`hw.core.global_buffer.load_port_signature`: ``en``, word ``addr``, ``data``; one
word a cycle, no back-pressure), word k at buffer address k. A word past the count (the pad of an odd
count) is read and dropped. An error response on any beat (``rd_error``) makes ``error`` high from then
until the next ``start``; the load still runs to its end, so the engine is idle afterwards.

``cycles`` counts the cycles the loader has been busy since reset. (The shell's ``load_cycles`` register counts
its own load states instead, header and checks included: :class:`~hw.system.zynq_top.MpqSystem`.)

Checksum. :class:`~hw.system.crc32.Crc32` (32-bit step) takes every word as it is written into the buffer
(the ``load.en`` cycles: the pad word of an odd count is not written and not checked), restarted by
``start``; ``crc`` is the zlib CRC-32 of the ``words`` words, i.e. of the ``4 words`` image bytes from
``addr`` in DDR byte order (a 32-bit word holds its 4 bytes little-endian, lowest address first), and it is
final with ``done``, when ``crc_ok`` says whether it equals ``expected_crc``. A load of 0 words has CRC 0.
The CRC runs in parallel with the buffer write (the same word, the same cycle), so it adds no load cycle;
its path is the read engine's word mux and the xor of at most 17 ``state ^ data`` pairs (two LUT6 levels at
best; :mod:`hw.system.crc32`) into the 32 state flip-flops, and ``crc_ok`` is the compare of those
flip-flops with ``expected_crc`` (a register of the AXI-Lite slave), read by the shell on ``done``.

Simulated with the AXI master, a writable global buffer and the latency AXI RAM model under cocotb
(tests/sim/test_buffer_loader.py); not run on a board.
"""

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core.global_buffer import load_port_signature
from hw.system.axi_master import READ_WORD, command_layout
from hw.system.crc32 import CRC_BITS, Crc32


class BufferLoader(wiring.Component):
    """Copies ``words`` 32-bit words from DDR at byte ``addr`` into the global buffer from address 0.

    Parameters
    ----------
    buffer_addr_width : int
        Word address bits of the global buffer (its depth is ``2 ** buffer_addr_width``), 1 to 28.
    addr_width, length_width : int
        Those of the :class:`~hw.system.axi_master.AxiMaster` it drives; ``length_width`` must hold the byte
        length of a full buffer (``buffer_addr_width + 3`` bits at least).
    cycle_bits : int
        Width of ``cycles``, 1 to 64.

    Members
    -------
    start : In(1)
        Take ``addr`` and ``words`` and start (ignored while ``busy``).
    addr : In(addr_width)
        DDR byte address, 8-byte aligned (the low 3 bits are ignored).
    words : In(buffer_addr_width + 1)
        Words to load, 0 to the buffer depth (0: ``done`` at once, nothing written).
    busy : Out(1)
    done : Out(1)
        One cycle, the cycle after the last word is written (the read engine is idle then).
    error : Out(1)
        An error response came during the current or last load.
    cycles : Out(cycle_bits)
        Busy cycles since reset (wraps).
    expected_crc : In(32)
        The CRC the host computed over the image (``image_crc``).
    crc : Out(32)
        CRC-32 of the words written by the current or last load (final with ``done``).
    crc_ok : Out(1)
        ``crc == expected_crc``.
    rd_cmd : Out(stream.Signature(command_layout(addr_width, length_width)))
        To ``AxiMaster.rd_cmd``.
    rd_data : In(stream.Signature(READ_WORD))
        From ``AxiMaster.rd_data``; ready while words of this load are due (never otherwise, so the read
        engine may serve other clients between loads).
    rd_error : In(1)
        From ``AxiMaster.rd_error``.
    load : Out(load_port_signature(buffer_addr_width))
        To ``GlobalBuffer(..., writable=True).load``.

    Raises
    ------
    ValueError
        A parameter out of range, naming it and its value.
    """

    def __init__(self, *, buffer_addr_width: int, addr_width: int = 32, length_width: int = 32,
                 cycle_bits: int = 64):
        if not isinstance(buffer_addr_width, int) or not 1 <= buffer_addr_width <= 28:
            raise ValueError(f"buffer_addr_width must be an integer from 1 to 28, not {buffer_addr_width!r}")
        if not isinstance(length_width, int) or length_width < buffer_addr_width + 3 or length_width > addr_width:
            raise ValueError(f"length_width must be from buffer_addr_width + 3 ({buffer_addr_width + 3}) to "
                             f"addr_width ({addr_width}), not {length_width!r}")
        if not isinstance(cycle_bits, int) or not 1 <= cycle_bits <= 64:
            raise ValueError(f"cycle_bits must be an integer from 1 to 64, not {cycle_bits!r}")
        self._buffer_addr_width = buffer_addr_width
        super().__init__({
            "start": In(1), "addr": In(addr_width), "words": In(buffer_addr_width + 1),
            "busy": Out(1), "done": Out(1), "error": Out(1), "cycles": Out(cycle_bits),
            "expected_crc": In(CRC_BITS), "crc": Out(CRC_BITS), "crc_ok": Out(1),
            "rd_cmd": Out(stream.Signature(command_layout(addr_width, length_width))),
            "rd_data": In(stream.Signature(READ_WORD)), "rd_error": In(1),
            "load": Out(load_port_signature(buffer_addr_width))})

    @property
    def buffer_addr_width(self) -> int:
        return self._buffer_addr_width

    def elaborate(self, platform):
        m = Module()
        count = Signal(self._buffer_addr_width + 1)      # words still to write
        received = Signal(self._buffer_addr_width + 2)   # words to take from rd_data (count, rounded up even)
        index = Signal(self._buffer_addr_width + 1)      # next buffer address
        cmd_pending = Signal()
        busy = Signal()
        m.d.comb += [busy.eq(cmd_pending | (received != 0)), self.busy.eq(busy)]

        with m.If(self.start & ~busy):
            even = Cat(Const(0, 1), (self.words + 1)[1:])  # words rounded up to whole beats
            m.d.sync += [count.eq(self.words), received.eq(even), index.eq(0), cmd_pending.eq(self.words != 0),
                         self.error.eq(0),
                         self.rd_cmd.payload.addr.eq(self.addr), self.rd_cmd.payload.length.eq(even << 2)]
        m.d.comb += self.rd_cmd.valid.eq(cmd_pending)
        with m.If(self.rd_cmd.valid & self.rd_cmd.ready):
            m.d.sync += cmd_pending.eq(0)

        take = Signal()
        m.d.comb += [self.rd_data.ready.eq(received != 0), take.eq(self.rd_data.valid & (received != 0)),
                     self.load.en.eq(take & (count != 0)), self.load.addr.eq(index),
                     self.load.data.eq(self.rd_data.payload.data)]
        with m.If(take):
            m.d.sync += [received.eq(received - 1), index.eq(index + 1)]
            with m.If(count != 0):
                m.d.sync += count.eq(count - 1)
        m.d.sync += self.done.eq((take & (received == 1)) | (self.start & ~busy & (self.words == 0)))
        with m.If(self.rd_error & busy):
            m.d.sync += self.error.eq(1)
        with m.If(busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        m.submodules.crc = crc = Crc32(data_width=32)
        m.d.comb += [crc.clear.eq(self.start & ~busy), crc.en.eq(self.load.en), crc.data.eq(self.load.data),
                     self.crc.eq(crc.crc), self.crc_ok.eq(crc.crc == self.expected_crc)]
        return m
