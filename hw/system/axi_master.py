"""AXI4 master (64-bit data) for the PS7's S_AXI_HP0: a read engine and a write engine on 32-bit word streams.

Both engines take a command (byte address, length in bytes) and split it into INCR bursts of at most
``max_burst`` beats (16 on the HP ports, which are AXI3 inside: ``*len`` is the AXI4 8-bit field, never above
15) that never cross a 4 KiB boundary. The ports are flat members named as HLS names an ``m_axi`` bundle
(``m_axi_gmem_araddr`` ...), so that Vivado's IP integrator infers an AXI4 master interface.

Read engine. A command of ``addr`` (8-byte aligned: its low 3 bits are ignored) and ``length`` (a multiple
of 8: its low 3 bits are ignored; 0 does nothing) is taken while the engine is idle. Up to ``max_reads``
bursts are outstanding; a burst is issued only when the read buffer (``max_reads * max_burst`` beats) has
room for all of it, so ``rready`` stays high and an R beat is never refused, however slowly ``rd_data`` is
drained. Each 64-bit beat leaves as two 32-bit words, low word (lower address) first, with ``last`` on the
command's final word. A beat with RRESP SLVERR / DECERR raises ``rd_error`` for one cycle; its data is
passed on unchanged (the core reports ``AXI_ERROR`` and discards the run). An unsolicited R beat (one that
comes while no burst is outstanding, counted from the cycle its AR is registered: a slave that breaks the
protocol) raises ``rd_error`` too and is dropped; it changes no count, so the engine does not hang.

Write engine. A command of ``addr`` (4-byte aligned) and ``length`` (a multiple of 4; 0 does nothing) is
taken while the engine is idle; ``length / 4`` words then come on ``wr_data`` and are packed into 64-bit
beats with WSTRB covering only the words written (an odd start or end word gives a half beat). A burst's AW
is issued only once all of its beats are buffered (``2 * max_burst`` beats), so W never waits for data once
AW is out; up to ``max_writes`` bursts wait for their B. A B with BRESP SLVERR / DECERR raises ``wr_error``
for one cycle. ``wr_busy`` stays high until the last B has come back: the data is then in DDR. An unsolicited B
(one that comes while no burst waits for its B, counted from the cycle its AW is registered) raises
``wr_error`` too and is otherwise ignored: the count of bursts awaiting their B does not wrap, so ``wr_busy``
does not stay high. (A stray response while a burst is outstanding cannot be told from that burst's own.)

Simulated under cocotb against cocotbext-axi's AXI RAM with random latency, back-pressure and injected error
responses (tests/sim/test_axi_master.py); not run on a board, and the HP port's behaviour under real DDR
traffic has not been observed here.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

#: Bits of a word on the engines' streams.
WORD_BITS = 32
#: AXI burst type INCR, size code of an 8-byte beat, AxCACHE of HLS masters (bufferable, modifiable).
BURST_INCR = 0b01
SIZE_8_BYTES = 0b011
CACHE_HLS = 0b0011
#: No INCR burst may cross this boundary (AXI spec).
BOUNDARY_BYTES = 4096


def command_layout(addr_width: int, length_width: int) -> data.StructLayout:
    """An engine command: byte ``addr`` and ``length`` in bytes."""
    return data.StructLayout({"addr": addr_width, "length": length_width})


#: A read word: ``data`` and ``last`` (the command's final word).
READ_WORD = data.StructLayout({"data": WORD_BITS, "last": 1})


def _channel_ports(p: str, addr_width: int, data_width: int, id_width: int) -> dict:
    ports = {}
    for ch in ("aw", "ar"):
        ports |= {f"{p}_{ch}id": Out(id_width), f"{p}_{ch}addr": Out(addr_width), f"{p}_{ch}len": Out(8),
                  f"{p}_{ch}size": Out(3), f"{p}_{ch}burst": Out(2), f"{p}_{ch}cache": Out(4),
                  f"{p}_{ch}prot": Out(3), f"{p}_{ch}valid": Out(1), f"{p}_{ch}ready": In(1)}
    ports |= {f"{p}_wdata": Out(data_width), f"{p}_wstrb": Out(data_width // 8), f"{p}_wlast": Out(1),
              f"{p}_wvalid": Out(1), f"{p}_wready": In(1),
              f"{p}_bid": In(id_width), f"{p}_bresp": In(2), f"{p}_bvalid": In(1), f"{p}_bready": Out(1),
              f"{p}_rid": In(id_width), f"{p}_rdata": In(data_width), f"{p}_rresp": In(2), f"{p}_rlast": In(1),
              f"{p}_rvalid": In(1), f"{p}_rready": Out(1)}
    return ports


class AxiMaster(wiring.Component):
    """AXI4 master with a burst read engine and a burst write engine (module docstring).

    Parameters
    ----------
    addr_width : int
        AXI address bits, 12 to 64 (32 on the Zynq-7000's HP ports).
    data_width : int
        AXI data bits; 64 only (S_AXI_HP0 in 64-bit mode, two stream words per beat).
    id_width : int
        Bits of the ID signals, 1 to 16; every transaction uses ID 0 (responses stay in order).
    max_burst : int
        Beats per burst, 1 to 16 (AXI3 limit of the HP ports).
    max_reads, max_writes : int
        Bursts outstanding at once, 1 to 32, per direction.
    length_width : int
        Bits of a command's byte ``length``, 4 to ``addr_width``.
    bundle : str
        The HLS bundle name: ports are ``m_axi_<bundle>_*``.

    Members
    -------
    m_axi_<bundle>_aw*, _w*, _b*, _ar*, _r*
        The AXI4 master port (``*id``, ``*addr``, ``*len``, ``*size``, ``*burst``, ``*cache``, ``*prot``,
        ``*valid``, ``*ready``; ``wdata``, ``wstrb``, ``wlast``; ``bresp``; ``rdata``, ``rresp``, ``rlast``).
    rd_cmd : In(stream.Signature(command_layout(addr_width, length_width)))
        Ready while the read engine is idle.
    rd_data : Out(stream.Signature(READ_WORD))
    rd_busy : Out(1)
        A read command is in progress (bursts to issue, in flight, or words not yet taken).
    rd_error : Out(1)
        One cycle per R beat with an error response or with no read burst outstanding (dropped).
    wr_cmd : In(stream.Signature(command_layout(addr_width, length_width)))
        Ready while the write engine is idle.
    wr_data : In(stream.Signature(32))
        The command's words, lowest address first.
    wr_busy : Out(1)
        A write command is in progress (words to take, bursts to issue, or B responses to come).
    wr_error : Out(1)
        One cycle per B with an error response or with no write burst outstanding (ignored).

    Raises
    ------
    ValueError
        A parameter out of its range, naming it and its value.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, id_width: int = 1, max_burst: int = 16,
                 max_reads: int = 4, max_writes: int = 4, length_width: int | None = None, bundle: str = "gmem"):
        length_width = addr_width if length_width is None else length_width
        for name, value, lo, hi in (("addr_width", addr_width, 12, 64), ("id_width", id_width, 1, 16),
                                    ("max_burst", max_burst, 1, 16), ("max_reads", max_reads, 1, 32),
                                    ("max_writes", max_writes, 1, 32)):
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")
        if data_width != 64:
            raise ValueError(f"data_width must be 64, not {data_width!r}")
        if not isinstance(length_width, int) or not 4 <= length_width <= addr_width:
            raise ValueError(f"length_width must be an integer from 4 to addr_width ({addr_width}), "
                             f"not {length_width!r}")
        if not isinstance(bundle, str) or not bundle.isidentifier():
            raise ValueError(f"bundle must be an identifier, not {bundle!r}")
        self._addr_width, self._data_width, self._id_width = addr_width, data_width, id_width
        self._max_burst, self._max_reads, self._max_writes = max_burst, max_reads, max_writes
        self._length_width, self._prefix = length_width, f"m_axi_{bundle}"
        cmd = command_layout(addr_width, length_width)
        super().__init__(_channel_ports(self._prefix, addr_width, data_width, id_width) | {
            "rd_cmd": In(stream.Signature(cmd)), "rd_data": Out(stream.Signature(READ_WORD)),
            "rd_busy": Out(1), "rd_error": Out(1),
            "wr_cmd": In(stream.Signature(cmd)), "wr_data": In(stream.Signature(WORD_BITS)),
            "wr_busy": Out(1), "wr_error": Out(1)})

    addr_width = property(lambda self: self._addr_width)
    data_width = property(lambda self: self._data_width)
    max_burst = property(lambda self: self._max_burst)
    max_reads = property(lambda self: self._max_reads)
    max_writes = property(lambda self: self._max_writes)
    length_width = property(lambda self: self._length_width)
    prefix = property(lambda self: self._prefix)

    @property
    def read_buffer_beats(self) -> int:
        """Beats the read buffer holds: every outstanding burst fits."""
        return self._max_reads * self._max_burst

    @property
    def write_buffer_beats(self) -> int:
        return 2 * self._max_burst

    def axi(self, name: str):
        """The AXI port ``m_axi_<bundle>_<name>``."""
        return getattr(self, f"{self._prefix}_{name}")

    def _burst(self, m, addr, beats_left, changed, name: str):
        """Beats of the next burst from ``addr``: min(beats_left, max_burst, beats to the 4 KiB boundary), and
        ``fresh``. The count is registered (with it computed in the cycle of the burst's issue, its compares, the
        room check and the buffer counters were one path: 12.4 ns in the timing estimate of the 4 x 42 system), so
        it is of ``addr`` and ``beats_left`` as they were the cycle before; ``fresh`` is low the cycle after they
        change (``changed``: a new command or an issued burst), when the count is not theirs yet. An issue
        needs ``fresh``, which costs nothing after a burst (its address channel is full that cycle) and one cycle
        at a command's start."""
        to_boundary = Signal(range(BOUNDARY_BYTES // 8 + 1), name=f"{name}_to_boundary")
        m.d.comb += to_boundary.eq((BOUNDARY_BYTES - addr[:12]) >> 3)
        capped = Signal(range(self._max_burst + 1), name=f"{name}_capped")
        nxt = Signal(range(self._max_burst + 1), name=f"{name}_next")
        m.d.comb += capped.eq(self._max_burst)
        with m.If(beats_left < self._max_burst):
            m.d.comb += capped.eq(beats_left)
        m.d.comb += nxt.eq(capped)
        with m.If(to_boundary < capped):
            m.d.comb += nxt.eq(to_boundary)
        burst = Signal(range(self._max_burst + 1), name=f"{name}_burst")
        fresh = Signal(name=f"{name}_fresh")
        m.d.sync += [burst.eq(nxt), fresh.eq(~changed)]
        return burst, fresh

    def _address_channel(self, m, ch: str, addr, burst, load):
        """Constant fields of AW / AR and a registered (valid, addr, len) triple, taken at ``load``; returns valid."""
        axi = self.axi
        valid = Signal(name=f"{ch}_valid")
        m.d.comb += [axi(f"{ch}id").eq(0), axi(f"{ch}size").eq(SIZE_8_BYTES), axi(f"{ch}burst").eq(BURST_INCR),
                     axi(f"{ch}cache").eq(CACHE_HLS), axi(f"{ch}prot").eq(0), axi(f"{ch}valid").eq(valid)]
        with m.If(load):
            m.d.sync += [valid.eq(1), axi(f"{ch}addr").eq(addr), axi(f"{ch}len").eq(burst - 1)]
        with m.Elif(valid & axi(f"{ch}ready")):
            m.d.sync += valid.eq(0)
        return valid

    def elaborate(self, platform):
        m = Module()
        self._read_engine(m)
        self._write_engine(m)
        return m

    def _read_engine(self, m):
        axi, aw, lw = self.axi, self._addr_width, self._length_width
        depth = self.read_buffer_beats
        m.submodules.read_buffer = buf = fifo.SyncFIFOBuffered(width=self._data_width, depth=depth)

        addr = Signal(aw, name="rd_addr")                      # next burst's byte address
        beats_left = Signal(lw - 2, name="rd_beats_left")      # beats not yet requested
        words_left = Signal(lw - 1, name="rd_words_left")      # words not yet taken from rd_data
        outstanding = Signal(range(self._max_reads + 1), name="rd_outstanding")
        reserved = Signal(range(depth + 1), name="rd_reserved")  # buffer beats promised to bursts
        half = Signal(name="rd_half")                          # the next word is the beat's high word

        busy = Signal()
        m.d.comb += [busy.eq((beats_left != 0) | (words_left != 0) | (outstanding != 0)),
                     self.rd_busy.eq(busy), self.rd_cmd.ready.eq(~busy)]
        accept = self.rd_cmd.valid & ~busy
        with m.If(accept):
            cmd = self.rd_cmd.payload
            m.d.sync += [addr.eq(Cat(Const(0, 3), cmd.addr[3:])), beats_left.eq(cmd.length[3:]),
                         words_left.eq(Cat(Const(0, 1), cmd.length[3:])), half.eq(0)]

        load = Signal(name="ar_load")  # put the next burst into the channel register
        burst, fresh = self._burst(m, addr, beats_left, accept | load, "ar")
        valid = self._address_channel(m, "ar", addr, burst, load)
        m.d.comb += load.eq((beats_left != 0) & ~valid & fresh & (outstanding < self._max_reads) &
                            (reserved + burst <= depth))
        with m.If(load):
            m.d.sync += [addr.eq(addr + (burst << 3)), beats_left.eq(beats_left - burst)]

        # R into the buffer; room was reserved when the burst was issued. A beat with no burst outstanding
        # (unsolicited) is dropped and reported; it must not wrap ``outstanding`` (rd_busy high for ever).
        r_take, r_stray = Signal(), Signal(name="r_stray")
        m.d.comb += [axi("rready").eq(buf.w_rdy), r_take.eq(axi("rvalid") & buf.w_rdy),
                     r_stray.eq(r_take & (outstanding == 0)),
                     buf.w_en.eq(r_take & ~r_stray), buf.w_data.eq(axi("rdata"))]
        m.d.sync += self.rd_error.eq(r_take & ((axi("rresp") != 0) | r_stray))
        burst_done = r_take & axi("rlast") & ~r_stray
        m.d.sync += outstanding.eq(outstanding + load - burst_done)

        # Buffer -> words, low word first.
        word_take = Signal()
        m.d.comb += [self.rd_data.valid.eq(buf.r_rdy & (words_left != 0)),
                     self.rd_data.payload.data.eq(buf.r_data.word_select(half, WORD_BITS)),
                     self.rd_data.payload.last.eq(words_left == 1),
                     word_take.eq(self.rd_data.valid & self.rd_data.ready),
                     buf.r_en.eq(word_take & half)]
        with m.If(word_take):
            m.d.sync += [half.eq(~half), words_left.eq(words_left - 1)]
        m.d.sync += reserved.eq(reserved + Mux(load, burst, 0) - buf.r_en)

    def _write_engine(self, m):
        axi, aw, lw = self.axi, self._addr_width, self._length_width
        depth = self.write_buffer_beats
        beat = data.StructLayout({"data": self._data_width, "strb": self._data_width // 8})
        m.submodules.write_buffer = buf = fifo.SyncFIFOBuffered(width=beat.size, depth=depth)
        m.submodules.write_bursts = lengths = fifo.SyncFIFOBuffered(width=ceil_log2(self._max_burst + 1),
                                                                    depth=self._max_writes)

        addr = Signal(aw, name="wr_addr")
        beats_left = Signal(lw - 2, name="wr_beats_left")      # beats not yet in an AW
        words_left = Signal(lw - 1, name="wr_words_left")      # words not yet taken from wr_data
        outstanding = Signal(range(self._max_writes + 1), name="wr_outstanding")  # AW issued, B not back
        committed = Signal(range(depth + 1), name="wr_committed")  # buffered beats claimed by an AW

        valid_aw = Signal()
        busy = Signal()
        m.d.comb += [busy.eq((beats_left != 0) | (words_left != 0) | (outstanding != 0) | valid_aw),
                     self.wr_busy.eq(busy), self.wr_cmd.ready.eq(~busy)]

        # Packer: words -> beats with strobes. ``slot`` is the half of the beat the next word fills.
        slot, low, low_valid = Signal(name="wr_slot"), Signal(WORD_BITS, name="wr_low"), Signal(name="wr_low_valid")
        accept = self.wr_cmd.valid & ~busy
        with m.If(accept):
            cmd = self.wr_cmd.payload
            words = cmd.length[2:]
            m.d.sync += [addr.eq(Cat(Const(0, 3), cmd.addr[3:])), slot.eq(cmd.addr[2]), low_valid.eq(0),
                         words_left.eq(words)]
            with m.If(words != 0):
                m.d.sync += beats_left.eq((cmd.addr[2] + words + 1) >> 1)
        take = Signal()
        push = data.View(beat, buf.w_data)
        m.d.comb += [self.wr_data.ready.eq((words_left != 0) & buf.w_rdy),
                     take.eq(self.wr_data.valid & self.wr_data.ready)]
        word, final = self.wr_data.payload, words_left == 1
        with m.If(take):
            m.d.sync += [words_left.eq(words_left - 1), slot.eq(~slot)]
            with m.If(~slot):
                m.d.sync += [low.eq(word), low_valid.eq(1)]
                with m.If(final):
                    m.d.comb += [buf.w_en.eq(1), push.data.eq(word), push.strb.eq(0x0F)]
            with m.Else():
                m.d.sync += low_valid.eq(0)
                m.d.comb += [buf.w_en.eq(1), push.data.eq(Cat(low & low_valid.replicate(WORD_BITS), word)),
                             push.strb.eq(Cat(low_valid.replicate(4), Const(0xF, 4)))]

        # AW once the whole burst is buffered and unclaimed.
        load = Signal(name="aw_load")  # put the next burst into the channel register
        burst, fresh = self._burst(m, addr, beats_left, accept | load, "aw")
        valid = self._address_channel(m, "aw", addr, burst, load)
        m.d.comb += [valid_aw.eq(valid),
                     load.eq((beats_left != 0) & ~valid & fresh & (outstanding < self._max_writes) & lengths.w_rdy &
                             (buf.level >= committed + burst)),
                     lengths.w_en.eq(load), lengths.w_data.eq(burst)]
        with m.If(load):
            m.d.sync += [addr.eq(addr + (burst << 3)), beats_left.eq(beats_left - burst)]

        # W: one burst after the other, in AW order.
        w_active = Signal(name="w_active")
        w_count = Signal(range(self._max_burst), name="w_count")
        w_len = Signal(range(self._max_burst + 1), name="w_len")
        out = data.View(beat, buf.r_data)
        w_take = Signal()
        m.d.comb += [lengths.r_en.eq(~w_active),
                     axi("wvalid").eq(w_active & buf.r_rdy), axi("wdata").eq(out.data), axi("wstrb").eq(out.strb),
                     axi("wlast").eq(w_count == w_len - 1),
                     w_take.eq(axi("wvalid") & axi("wready")), buf.r_en.eq(w_take)]
        with m.If(~w_active & lengths.r_rdy):
            m.d.sync += [w_active.eq(1), w_len.eq(lengths.r_data), w_count.eq(0)]
        with m.If(w_take):
            m.d.sync += w_count.eq(w_count + 1)
            with m.If(axi("wlast")):
                m.d.sync += w_active.eq(0)
        m.d.sync += committed.eq(committed + Mux(load, burst, 0) - w_take)

        # B: always ready; count and check. A B with no burst awaiting it (unsolicited) is reported and not
        # counted: it must not wrap ``outstanding`` (wr_busy high for ever).
        b_take, b_stray = Signal(), Signal(name="b_stray")
        m.d.comb += [axi("bready").eq(1), b_take.eq(axi("bvalid")), b_stray.eq(b_take & (outstanding == 0))]
        m.d.sync += [outstanding.eq(outstanding + load - (b_take & ~b_stray)),
                     self.wr_error.eq(b_take & ((axi("bresp") != 0) | b_stray))]
