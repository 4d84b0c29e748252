"""The accelerator shell for the Zynq: AXI4-Lite control, AXI4 DMA master, image loader and the array.

:class:`MpqSystem` wraps :class:`~hw.array.top.ConvArray` in what a PS7 needs to drive it, with the port names
Vivado's IP integrator infers as an HLS core's (``ap_clk``, ``ap_rst_n`` active low, ``interrupt``,
``s_axi_control_*`` to M_AXI_GP0, ``m_axi_gmem_*`` to S_AXI_HP0):

- :class:`~hw.system.axi_lite.AxiLiteSlave` holds :data:`~hw.system.register_map.REGISTER_MAP`;
- :class:`~hw.system.axi_master.AxiMaster` (64-bit) is shared by the image loader (in a load), the input
  reader and the score writer (in a run);
- :class:`~hw.system.buffer_loader.BufferLoader` writes the packed image into the array's global buffer.

Load (``load_image`` written 1). The array is reset; the 8 header words at ``image_addr`` are loaded and
checked (magic, version 3 or 4, ``words`` from 8 to the buffer depth, ``C H W`` from 1 to 2^24 - 1); then the
``words`` words of the image are loaded, their CRC-32 computed on the way into the buffer
(:class:`~hw.system.buffer_loader.BufferLoader`) and compared with ``image_crc`` at the end (``loaded_crc``
shows the core's). Work a load or run that timed out left in the DMA engines (a read that came back late, a
write still due) is finished first: a timed-out load's late words go into the buffer (which this load then
overwrites, its CRC and header restarted), a run's are dropped, writes still due are padded (TIMEOUT if the
bus still does not answer within the watchdog). ``status`` becomes OK (and the image usable) or the reason it is
not: BAD_ADDRESS (``image_addr`` not 8-byte aligned or at or above 4 GiB), AXI_ERROR, BAD_MAGIC, BAD_VERSION,
BAD_GEOMETRY, BAD_CHECKSUM (the CRC-32 of the ``4 words`` image bytes read is not ``image_crc``: what exactly it
covers is in :mod:`hw.system.register_map`), TIMEOUT. ``ap_idle`` is low during a load (from the cycle its write
response is offered), and a load gives no ``ap_done``: the host polls ``ap_idle`` and then reads ``status``.

Run (``ap_start``; ``ap_ready`` when taken, ``ap_done`` when finished, whatever the outcome). The array is
reset (its decoders' error is sticky), the DMA engines finish what a timed-out operation left (as for a load),
then ``image_count`` images run back to back. DDR layout:

- inputs at ``input_addr``: ``image_count`` images of ``C H W`` input codes, one byte per code (code k of
  image n at byte ``input_addr + n C H W + k``, the order of the array's ``i`` stream: channel, row, column),
  contiguous (no padding between images), read as one DMA stream of ``ceil(count C H W / 8)`` beats;
- scores at ``output_addr``: the class scores of image n, signed 32-bit little-endian, at
  ``output_addr + 4 n n_classes`` (contiguous, the array's ``o`` order).

Each image: ``start`` to the array, its codes into ``i``, its scores from ``o`` into a score FIFO
(``max_classes`` deep); at the array's ``done`` the scores are written (one DMA write, waited for until its B
came back) and the next image starts. The run stops at the first image that ends with a non-OK array
status (that status), an AXI error response (AXI_ERROR), more than ``max_classes`` scores (BAD_GEOMETRY), or
the watchdog (TIMEOUT: ``timeout_cycles`` cycles without any transfer or ``done``). The image that stopped it
writes no scores, unless the stop came during its score write (an error response: its scores as the bus took
them; the watchdog: the words the write engine had not yet taken go out as zeros); later images' scores are
not written (tests/sim/test_system.py ``score_overflow`` checks the output buffer). Then it drains the
DMA engines (remaining input words read and dropped), holding the array in reset, and raises ``ap_done``.
``ap_start`` before any successful load: NO_IMAGE; ``image_count`` 0 or an address not 8-byte aligned or at or above
4 GiB, or a batch whose inputs, rounded up to whole 8-byte beats, reach 4 GiB: BAD_ADDRESS. (A region is not checked
against the end of the 32-bit space: one that starts below 4 GiB and runs past it wraps to address 0. The driver's
buffers lie in the board's DDR, far below; a shell cannot know which addresses are safe to write in any case.)
``precision`` selects a vertical (version 4) image's widths for the next runs (bits 0-3 a width for every inner
layer, 0 the source width; bit 7 set: row ``bits 0-6`` of the image's Eq. 12 table); a width the image does not
store ends the run with the array's BAD_PRECISION. Version 3 images ignore it.

Counters: ``busy_cycles`` counts the cycles of runs (DDR reads and writes included), ``load_cycles`` those of
loads; ``buffer_reads`` and ``weight_reads`` are the array's counters of the global-buffer words the last image
read (all of them; the weight words; kept from its ``done``, as the array itself is held in reset after every
run; 0 from a run's start until its first image is done), which ``sim.reads.array_words_read`` models from the
image alone (every image of a network reads the same words).

Simulated under cocotb (Icarus) with cocotbext-axi's AXI4-Lite master and the latency AXI RAM of
:mod:`sim.system.axi_models` (tests/sim/test_system.py); it has not been through Vivado or run on a board.
After a TIMEOUT the DMA engines may still wait for the bus; the next load or run waits for them (dropping late
read words or letting a timed-out load's finish into the buffer it then overwrites, padding writes still due;
TIMEOUT again while the bus does not answer), so no late word reaches the new image or a run's inputs, and the
core never hangs. Only a bus that never answers needs a PL reset (``ap_rst_n``).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.hdl import ClockDomain, ClockSignal, ResetInserter, ResetSignal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.array.top import ArrayConfig, ConvArray
from hw.system.axi_lite import AxiLiteSlave
from hw.system.axi_master import AxiMaster
from hw.system.buffer_loader import BufferLoader
from hw.system.register_map import StatusCode
from model.export.format import HEADER, MAGIC, VERSION, VERTICAL_VERSION

#: Top module name of the system's Verilog (the IP's name in the block design).
SYSTEM_TOP_NAME = "mpq_system"
#: Header words the shell reads before loading an image.
HEADER_WORDS = HEADER.words
#: Default watchdog: cycles without progress before TIMEOUT (0.67 s at 100 MHz).
DEFAULT_TIMEOUT_CYCLES = 1 << 26
#: DDR address bits of the HP port.
ADDR_BITS = 32
#: Largest ``C H W`` the shell accepts (the input byte count of one image).
MAX_INPUT_CODES = (1 << 24) - 1


def _header_field(name: str):
    f = HEADER[name]
    return f.word, f.bit, f.width


def _check_init(words: list[int], buffer_words: int) -> int:
    """``C H W`` of an initial image, after the checks a load makes (the same fields, the same limits)."""
    def get(name):
        f = HEADER[name]
        return (words[f.word] >> f.bit) & ((1 << f.width) - 1) if f.word < len(words) else None

    if len(words) < HEADER_WORDS or get("magic") != MAGIC or get("version") not in (VERSION, VERTICAL_VERSION):
        raise ValueError(f"init must be a version {VERSION} or {VERTICAL_VERSION} image (magic {MAGIC:#x}), not one starting "
                         f"{[hex(w) for w in words[:2]]}")
    if get("words") != len(words) or len(words) > buffer_words:
        raise ValueError(f"init holds {len(words)} words, its header field 'words' says {get('words')}; the "
                         f"buffer holds {buffer_words}")
    codes = get("in_channels") * get("in_height") * get("in_width")
    if not 1 <= codes <= MAX_INPUT_CODES:
        raise ValueError(f"init: C H W = {codes} must be from 1 to {MAX_INPUT_CODES}")
    return codes


class MpqSystem(wiring.Component):
    """The Zynq accelerator shell around :class:`~hw.array.top.ConvArray` (module docstring).

    Parameters
    ----------
    config : ArrayConfig
        The array's configuration.
    max_classes : int
        Depth of the score FIFO: most class scores per image, 1 to 4096.
    timeout_cycles : int
        Watchdog limit, 16 to 2^32 - 1: cycles without any DMA word, array transfer or ``done``.
    max_burst, max_reads, max_writes : int
        The AXI master's (:class:`~hw.system.axi_master.AxiMaster`).
    init : sequence of int
        A packed version 3 or 4 image the global buffer holds from configuration (a BRAM-initialised build,
        whose words ``updatemem`` can replace in the bitstream): the core starts with it loaded (``ap_start``
        works without ``load_image``; its ``C H W`` is a reset value of the logic, so an image put in by
        ``updatemem`` must have the same input shape, or be followed by a ``load_image``). Empty: the core
        starts with NO_IMAGE until a load.

    Members
    -------
    ap_clk, ap_rst_n : In(1)
        Clock and active-low synchronous reset (FCLK_CLK0 and its ``peripheral_aresetn``).
    interrupt : Out(1)
        Level interrupt (``gie`` and ``ier``; to IRQ_F2P).
    s_axi_control_* :
        AXI4-Lite slave (:class:`~hw.system.axi_lite.AxiLiteSlave`).
    m_axi_gmem_* :
        AXI4 master, 64-bit, 32-bit addresses (:class:`~hw.system.axi_master.AxiMaster`).

    Raises
    ------
    TypeError
        ``config`` is not an ArrayConfig.
    ValueError
        A parameter out of range, naming it and its value, or an ``init`` that is not a version 3 or 4 image
        that fits the buffer.
    """

    def __init__(self, config: ArrayConfig, *, max_classes: int = 64,
                 timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES, max_burst: int = 16, max_reads: int = 4,
                 max_writes: int = 4, init=()):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        config.check()
        if not isinstance(max_classes, int) or not 1 <= max_classes <= 4096:
            raise ValueError(f"max_classes must be an integer from 1 to 4096, not {max_classes!r}")
        if not isinstance(timeout_cycles, int) or not 16 <= timeout_cycles < 1 << 32:
            raise ValueError(f"timeout_cycles must be an integer from 16 to 2^32 - 1, not {timeout_cycles!r}")
        self._config, self._max_classes, self._timeout_cycles = config, max_classes, timeout_cycles
        self._init = [int(w) for w in init]
        self._init_codes = 0
        if self._init:
            self._init_codes = _check_init(self._init, config.buffer_words)
        self._slave = AxiLiteSlave()
        self._master = AxiMaster(addr_width=ADDR_BITS, max_burst=max_burst, max_reads=max_reads,
                                 max_writes=max_writes)
        self._buffer_addr_width = ceil_log2(config.buffer_words)
        self._loader = BufferLoader(buffer_addr_width=self._buffer_addr_width, addr_width=ADDR_BITS,
                                    length_width=ADDR_BITS)
        for block in (self._slave, self._master, self._loader):
            # built here for their ports; used exactly when this component is (which keeps its own warning)
            block._MustUse__silence = True
        members = {"ap_clk": In(1), "ap_rst_n": In(1), "interrupt": Out(1)}
        for block, prefix in ((self._slave, "s_axi_control_"), (self._master, self._master.prefix + "_")):
            members |= {name: member for name, member in block.signature.members.items()
                        if name.startswith(prefix)}
        super().__init__(members)

    config = property(lambda self: self._config)
    init = property(lambda self: tuple(self._init))
    max_classes = property(lambda self: self._max_classes)
    timeout_cycles = property(lambda self: self._timeout_cycles)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("sync").eq(self.ap_clk), ResetSignal("sync").eq(~self.ap_rst_n)]

        m.submodules.control = regs = self._slave
        m.submodules.master = master = self._master
        m.submodules.loader = loader = self._loader
        array_rst = Signal()
        m.submodules.array = array = ResetInserter({"sync": array_rst})(ConvArray(cfg, init=self._init))
        fifo_clear = Signal()
        scores_fifo = fifo.SyncFIFOBuffered(width=32, depth=self._max_classes)
        m.submodules.scores = scores = ResetInserter({"sync": fifo_clear})(scores_fifo)

        # Top-level AXI ports <-> the blocks.
        for block, prefix in ((regs, "s_axi_control_"), (master, master.prefix + "_")):
            for name, member in block.signature.members.items():
                if name.startswith(prefix):
                    if member.flow == Out:
                        m.d.comb += getattr(self, name).eq(getattr(block, name))
                    else:
                        m.d.comb += getattr(block, name).eq(getattr(self, name))
        m.d.comb += self.interrupt.eq(regs.interrupt)

        wiring.connect(m, loader.load, array.load)
        # A width above 15 (bits 4-6 set without bit 7) goes in as 15, which no image stores: BAD_PRECISION.
        width = Mux(regs.precision[4:7].any(), 15, regs.precision[:4])
        m.d.comb += [array.precision.eq(Mux(regs.precision[7], 0, width)),
                     array.use_table.eq(regs.precision[7]), array.table_row.eq(regs.precision[:7])]
        loaded_crc = Signal(32)
        m.d.comb += [loader.expected_crc.eq(regs.image_crc), regs.loaded_crc.eq(loaded_crc)]
        # The array's read counters as the last image that finished left them (its ``done``), kept: the array is held
        # in reset after every run (DRAIN), which clears its own. 0 from a run's check until an image is done.
        buffer_reads, weight_reads = Signal(32), Signal(32)
        m.d.comb += [regs.buffer_reads.eq(buffer_reads), regs.weight_reads.eq(weight_reads)]
        with m.If(array.done):
            m.d.sync += [buffer_reads.eq(array.reads), weight_reads.eq(array.weight_reads)]
        m.d.comb += [loader.rd_error.eq(master.rd_error),
                     regs.rresp_error.eq(master.rd_error), regs.bresp_error.eq(master.wr_error)]

        # Shell state.
        status = Signal(8)
        image_loaded = Signal(init=int(bool(self._init)))
        hdr = {name: Signal(32, name=f"hdr_{name}") for name in ("magic", "version", "words", "chw_ch", "w")}
        codes = Signal(24, init=self._init_codes)  # C H W of the loaded image
        batch_bytes = Signal(64)
        images_left = Signal(32)
        out_ptr = Signal(ADDR_BITS)
        in_addr = Signal(ADDR_BITS)
        codes_left = Signal(24)
        score_count = Signal(range(self._max_classes + 1))
        overflow = Signal()
        axi_err = Signal()
        array_status = Signal(8)
        watchdog = Signal(32)
        progress = Signal()
        timed_out = Signal()
        m.d.comb += [regs.status.eq(status), timed_out.eq(watchdog >= self._timeout_cycles)]

        # Header snoop: the words the loader writes at buffer addresses 0..7.
        word_of = {"magic": HEADER["magic"].word, "version": HEADER["version"].word,
                   "words": HEADER["words"].word, "chw_ch": HEADER["in_channels"].word,
                   "w": HEADER["in_width"].word}
        with m.If(loader.load.en):
            for name, word in word_of.items():
                with m.If(loader.load.addr == word):
                    m.d.sync += hdr[name].eq(loader.load.data)

        def hfield(name):
            w, b, n = _header_field(name)
            sig = {HEADER["in_channels"].word: hdr["chw_ch"], HEADER["in_width"].word: hdr["w"]}[w]
            return sig[b:b + n]

        # C H W in two registered steps (C H, then times W), one multiplier level a cycle: LOAD_PRODUCT and
        # LOAD_PRODUCT_W wait for them. (With the second product unregistered, its multiplier, LOAD_CHECK's
        # compare and the loader's start were one path: 12.4 ns in the timing estimate of the 4 x 42 system.)
        ch_product = Signal(32)
        chw_product = Signal(48)
        m.d.sync += [ch_product.eq(hfield("in_channels") * hfield("in_height")),
                     chw_product.eq(ch_product * hfield("in_width"))]

        # Read engine: the loader in a load, the input reader and the drain in a run.
        run_cmd_valid = Signal()
        run_rd_ready = Signal()
        drain = Signal()
        m.d.comb += [
            master.rd_cmd.valid.eq(loader.rd_cmd.valid | run_cmd_valid),
            master.rd_cmd.payload.addr.eq(Mux(run_cmd_valid, in_addr, loader.rd_cmd.payload.addr)),
            master.rd_cmd.payload.length.eq(Mux(run_cmd_valid, (batch_bytes[:ADDR_BITS] + 7) & ~7,
                                                loader.rd_cmd.payload.length)),
            loader.rd_cmd.ready.eq(master.rd_cmd.ready & ~run_cmd_valid),
            loader.rd_data.valid.eq(master.rd_data.valid),
            loader.rd_data.payload.eq(master.rd_data.payload),
            master.rd_data.ready.eq(loader.rd_data.ready | run_rd_ready | drain),
        ]

        # Input unpacker: 32-bit words -> bytes (low byte first) -> the array's ``i``.
        cur_word = Signal(32)
        cur_bytes = Signal(range(5))
        feeding = Signal()
        i_take = Signal()
        in_run = Signal()
        m.d.comb += [array.i.valid.eq(feeding & (cur_bytes != 0) & (codes_left != 0)),
                     array.i.payload.eq(cur_word[:len(array.i.payload)]),
                     i_take.eq(array.i.valid & array.i.ready),
                     run_rd_ready.eq(in_run & ~drain & ((cur_bytes == 0) | ((cur_bytes == 1) & i_take)))]
        rd_take = Signal()
        m.d.comb += rd_take.eq(master.rd_data.valid & run_rd_ready)
        with m.If(rd_take):
            m.d.sync += [cur_word.eq(master.rd_data.payload.data), cur_bytes.eq(4)]
        with m.Elif(i_take):
            m.d.sync += [cur_word.eq(cur_word >> 8), cur_bytes.eq(cur_bytes - 1)]
        with m.If(i_take):
            m.d.sync += codes_left.eq(codes_left - 1)

        # Scores: ``o`` -> FIFO (beyond max_classes: dropped, overflow) -> write engine.
        collecting = Signal()
        o_take = Signal()
        full = score_count == self._max_classes
        m.d.comb += [array.o.ready.eq(collecting & (scores.w_rdy | full)),
                     o_take.eq(array.o.valid & array.o.ready),
                     scores.w_en.eq(o_take & ~full), scores.w_data.eq(array.o.payload)]
        with m.If(o_take):
            with m.If(full):
                m.d.sync += overflow.eq(1)
            with m.Else():
                m.d.sync += score_count.eq(score_count + 1)
        writing = Signal()
        m.d.comb += [master.wr_data.valid.eq((writing & scores.r_rdy) | drain),
                     master.wr_data.payload.eq(Mux(drain, 0, scores.r_data)),
                     scores.r_en.eq(writing & master.wr_data.ready),
                     master.wr_cmd.payload.addr.eq(out_ptr),
                     master.wr_cmd.payload.length.eq(score_count << 2)]
        with m.If(master.rd_error | master.wr_error):
            m.d.sync += axi_err.eq(1)

        # Watchdog: any transfer, buffer write or done is progress.
        m.d.comb += progress.eq(loader.load.en | rd_take | i_take | o_take | array.done |
                                (master.wr_data.valid & master.wr_data.ready) | (master.rd_data.valid &
                                                                                 master.rd_data.ready))

        busy_cycles, load_cycles = Signal(64), Signal(64)
        m.d.comb += [regs.busy_cycles.eq(busy_cycles), regs.load_cycles.eq(load_cycles)]
        m.d.comb += regs.ap_idle.eq(0)

        wd_clear = Signal()

        def fail(code):
            m.d.sync += status.eq(code)
            m.d.comb += wd_clear.eq(1)

        # Work a load or run that timed out left in the engines (a read that came back late, a write still due):
        # a new load or run first waits for it, dropping a run's late words (a load's finish into the buffer,
        # which the new load overwrites) and padding writes (``drain``); else the loader would ignore ``start``
        # and the late words be taken as the new load's header or the new run's inputs. A run needs a finished
        # load, so ``loader.busy`` is only ever high here before a load.
        stale_work = Signal()
        m.d.comb += stale_work.eq(loader.busy | master.rd_busy | master.wr_busy)

        def finish_stale_work(then):
            m.d.comb += drain.eq(1)
            with m.If(timed_out):
                fail(StatusCode.TIMEOUT)
                m.next = then

        with m.FSM(name="shell") as fsm:
            with m.State("IDLE"):
                m.d.comb += regs.ap_idle.eq(~regs.load_image)
                with m.If(regs.load_image):
                    m.d.sync += image_loaded.eq(0)
                    m.next = "LOAD_RESET"
                with m.Elif(regs.ap_start):
                    m.d.comb += regs.ap_ready.eq(1)
                    m.next = "RUN_CHECK"

            # --- load ---
            with m.State("LOAD_RESET"):
                m.d.comb += array_rst.eq(1)
                m.d.sync += loaded_crc.eq(0)
                with m.If((regs.image_addr[32:] != 0) | (regs.image_addr[:3] != 0)):
                    fail(StatusCode.BAD_ADDRESS)
                    m.next = "LOAD_END"
                with m.Elif(stale_work):
                    finish_stale_work("LOAD_END")
                with m.Else():
                    m.d.comb += [loader.start.eq(1), loader.addr.eq(regs.image_addr[:ADDR_BITS]),
                                 loader.words.eq(HEADER_WORDS)]
                    m.next = "LOAD_HEADER"
            with m.State("LOAD_HEADER"):
                with m.If(loader.done):
                    m.next = "LOAD_PRODUCT"
                with m.Elif(timed_out):
                    fail(StatusCode.TIMEOUT)
                    m.next = "LOAD_END"
            with m.State("LOAD_PRODUCT"):  # ch_product takes the header's C H
                m.next = "LOAD_PRODUCT_W"
            with m.State("LOAD_PRODUCT_W"):  # chw_product takes C H times W
                m.next = "LOAD_CHECK"
            with m.State("LOAD_CHECK"):
                with m.If(loader.error):
                    fail(StatusCode.AXI_ERROR)
                    m.next = "LOAD_END"
                with m.Elif(hdr["magic"] != MAGIC):
                    fail(StatusCode.BAD_MAGIC)
                    m.next = "LOAD_END"
                with m.Elif((hdr["version"] != VERSION) & (hdr["version"] != VERTICAL_VERSION)):
                    fail(StatusCode.BAD_VERSION)
                    m.next = "LOAD_END"
                with m.Elif((hdr["words"] < HEADER_WORDS) | (hdr["words"] > cfg.buffer_words) |
                            (chw_product == 0) | (chw_product > MAX_INPUT_CODES)):
                    fail(StatusCode.BAD_GEOMETRY)
                    m.next = "LOAD_END"
                with m.Else():
                    m.d.sync += codes.eq(chw_product)
                    m.d.comb += [loader.start.eq(1), loader.addr.eq(regs.image_addr[:ADDR_BITS]),
                                 loader.words.eq(hdr["words"])]
                    m.next = "LOAD_BODY"
            with m.State("LOAD_BODY"):
                with m.If(loader.done):
                    m.d.sync += loaded_crc.eq(loader.crc)
                    with m.If(loader.error):
                        fail(StatusCode.AXI_ERROR)
                    with m.Elif(~loader.crc_ok):
                        fail(StatusCode.BAD_CHECKSUM)
                    with m.Else():
                        fail(StatusCode.OK)
                        m.d.sync += image_loaded.eq(1)
                    m.next = "LOAD_END"
                with m.Elif(timed_out):
                    fail(StatusCode.TIMEOUT)
                    m.next = "LOAD_END"
            with m.State("LOAD_END"):
                m.next = "IDLE"

            # --- run ---
            with m.State("RUN_CHECK"):
                m.d.comb += array_rst.eq(1)
                m.d.sync += [buffer_reads.eq(0), weight_reads.eq(0)]
                m.d.sync += [batch_bytes.eq(regs.image_count * codes), axi_err.eq(0), cur_bytes.eq(0),
                             images_left.eq(regs.image_count), out_ptr.eq(regs.output_addr[:ADDR_BITS]),
                             in_addr.eq(regs.input_addr[:ADDR_BITS])]
                with m.If(~image_loaded):
                    fail(StatusCode.NO_IMAGE)
                    m.next = "FINISH"
                with m.Elif((regs.image_count == 0) | (regs.input_addr[32:] != 0) | (regs.input_addr[:3] != 0) |
                            (regs.output_addr[32:] != 0) | (regs.output_addr[:3] != 0)):
                    fail(StatusCode.BAD_ADDRESS)
                    m.next = "FINISH"
                with m.Else():
                    m.next = "RUN_SIZE"
            with m.State("RUN_SIZE"):
                m.d.comb += array_rst.eq(1)
                # 2^32 - 7 bytes or more: the read's length, rounded up to whole 8-byte beats, would be 2^32 or more
                # and wrap in its 32 bits (to 0 from 2^32 - 7 to 2^32 - 1: a run that waited for inputs, TIMEOUT).
                with m.If((batch_bytes[32:] != 0) | (batch_bytes[3:32].all() & batch_bytes[:3].any())):
                    fail(StatusCode.BAD_ADDRESS)
                    m.next = "FINISH"
                with m.Else():
                    m.next = "RUN_CMD"
            with m.State("RUN_CMD"):
                m.d.comb += in_run.eq(1)
                with m.If(stale_work):
                    finish_stale_work("FINISH")
                with m.Else():
                    m.d.comb += run_cmd_valid.eq(1)
                    with m.If(master.rd_cmd.ready):
                        m.next = "RUN_START"
            with m.State("RUN_START"):
                m.d.comb += [in_run.eq(1), array.start.eq(1), fifo_clear.eq(1)]
                m.d.sync += [codes_left.eq(codes), score_count.eq(0), overflow.eq(0)]
                m.next = "RUN_IMAGE"
            with m.State("RUN_IMAGE"):
                m.d.comb += [in_run.eq(1), feeding.eq(1), collecting.eq(1)]
                with m.If(array.done):
                    m.next = "RUN_SCORES"
                with m.Elif(timed_out):
                    fail(StatusCode.TIMEOUT)
                    m.next = "DRAIN"
            with m.State("RUN_SCORES"):
                # The array's status register takes its code with ``done``: read it the cycle after.
                m.d.comb += [in_run.eq(1), array_status.eq(array.status)]
                with m.If(array_status != 0):
                    fail(array_status)
                    m.next = "DRAIN"
                with m.Elif(axi_err):
                    fail(StatusCode.AXI_ERROR)
                    m.next = "DRAIN"
                with m.Elif(overflow | (codes_left != 0)):
                    fail(StatusCode.BAD_GEOMETRY)
                    m.next = "DRAIN"
                with m.Elif(score_count == 0):
                    m.next = "RUN_NEXT"
                with m.Else():
                    m.next = "RUN_WCMD"
            with m.State("RUN_WCMD"):
                # Every waiting state has a watchdog exit: the write engine is normally idle here, but an
                # interconnect that breaks the protocol must not hang the shell (no ap_done).
                m.d.comb += [in_run.eq(1), master.wr_cmd.valid.eq(1)]
                with m.If(master.wr_cmd.ready):
                    m.next = "RUN_WDATA"
                with m.Elif(timed_out):
                    fail(StatusCode.TIMEOUT)
                    m.next = "DRAIN"
            with m.State("RUN_WDATA"):
                m.d.comb += [in_run.eq(1), writing.eq(1)]
                with m.If(~master.wr_busy):
                    m.next = "RUN_NEXT"
                with m.Elif(timed_out):
                    fail(StatusCode.TIMEOUT)
                    m.next = "DRAIN"
            with m.State("RUN_NEXT"):
                m.d.comb += in_run.eq(1)
                m.d.sync += [out_ptr.eq(out_ptr + (score_count << 2)), images_left.eq(images_left - 1)]
                with m.If(axi_err):
                    fail(StatusCode.AXI_ERROR)
                    m.next = "DRAIN"
                with m.Elif(images_left == 1):
                    fail(StatusCode.OK)
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "RUN_START"
            with m.State("DRAIN"):
                # Hold the array in reset; drop the rest of the inputs, pad an unfinished score write.
                m.d.comb += [in_run.eq(1), drain.eq(1), array_rst.eq(1)]
                with m.If(~master.rd_busy & ~master.wr_busy):
                    m.next = "FINISH"
                with m.Elif(timed_out):
                    with m.If(status == StatusCode.OK):
                        fail(StatusCode.TIMEOUT)
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += regs.ap_done.eq(1)
                m.next = "IDLE"


        # Watchdog (cleared in IDLE, at each image's start, on progress and when a stop is decided) and the
        # cycle counters.
        with m.If(fsm.ongoing("IDLE") | fsm.ongoing("RUN_START") | progress | wd_clear):
            m.d.sync += watchdog.eq(0)
        with m.Elif(~timed_out):
            m.d.sync += watchdog.eq(watchdog + 1)
        load_states = ("LOAD_RESET", "LOAD_HEADER", "LOAD_PRODUCT", "LOAD_PRODUCT_W", "LOAD_CHECK", "LOAD_BODY",
                       "LOAD_END")
        in_load = Signal()
        m.d.comb += in_load.eq(Cat(*(fsm.ongoing(s) for s in load_states)).any())
        with m.If(in_load):
            m.d.sync += load_cycles.eq(load_cycles + 1)
        with m.Elif(~fsm.ongoing("IDLE")):
            m.d.sync += busy_cycles.eq(busy_cycles + 1)
        return m
