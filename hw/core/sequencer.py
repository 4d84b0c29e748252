"""Layer sequencer: reads the image's header and layer descriptors and runs a batch through the layers.

For every batch: read layer 0's descriptor, load the batch's input codes into activation buffer 0
(input loader job), then for each layer ``l`` run it (layer engine job: the descriptor, source buffer
``l mod 2``, last-layer flag), reading the next descriptor in between, and finally stream the scores out
(score streamer job). The header is read once after reset. The descriptor words are kept as read, and the
fields are taken from them by :data:`~hw.core.image_layout.DESCRIPTOR_LAYOUT` (the image's field table).

The sequencer knows nothing about how a layer is computed: any datapath with the layer job port
(:func:`~hw.core.job.job_signature` of :data:`~hw.core.job.LAYER_JOB_LAYOUT`) runs under it.

Errors: a header or descriptor this hardware cannot run (:class:`~hw.core.job.ErrorCode`), or an error code
reported by the datapath, stops the sequencer for good: ``error`` rises and ``error_code`` says why, no
further job is issued, so the input stream takes no more codes and the output stream sends nothing more
(the scores of the batch in progress are lost). The core stays idle like this until reset; it never hangs
with ``error`` low on account of a corrupt image.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from hw.core.activations import check_act_depth
from hw.core.global_buffer import buffer_port_signature
from hw.core.image_layout import DESCRIPTOR_LAYOUT, HEADER_LAYOUT
from hw.core.job import LAYER_JOB_LAYOUT, ErrorCode, emit_job_layout, job_signature, load_job_layout
from model.export.format import CODES_PER_WORD, DESCRIPTOR, HEADER, MAGIC, WORD_BITS
from model.export.golden import MAX_ACT_BITS, MAX_SHIFT


class LayerSequencer(wiring.Component):
    """Reads header and descriptors from the global buffer and issues load, layer and emit jobs.

    Parameters
    ----------
    addr_width : int
        Global buffer address width (the buffer holds ``2^addr_width`` words, at least a header and one
        descriptor).
    act_depth : int
        Words per activation buffer (a power of two in 2..MAX_FAN_IN): a layer with a larger ``n_in`` or
        ``n_out`` is a ``BAD_DESCRIPTOR`` error.

    Members
    -------
    bus : Out(buffer_port_signature(addr_width))
        Header and descriptor reads (highest priority on its port: the sequencer reads while the datapath
        is idle, but it copes with lost arbitration).
    load : Out(job_signature(load_job_layout(act_depth)))
    run : Out(job_signature(LAYER_JOB_LAYOUT, error=True))
    emit : Out(job_signature(emit_job_layout(act_depth)))
    error : Out(1)
        The core has stopped on an error (sticky until reset).
    error_code : Out(ErrorCode)
        Why; ``NONE`` while ``error`` is low.

    Raises
    ------
    ValueError
        For an ``addr_width`` too small for a header and a descriptor, or an ``act_depth`` that is not a power
        of two in 2..MAX_FAN_IN.
    """

    def __init__(self, *, addr_width: int, act_depth: int):
        min_width = (HEADER.words + DESCRIPTOR.words - 1).bit_length()  # room for a header and a descriptor
        if addr_width < min_width:
            raise ValueError(f"addr_width must be >= {min_width}, not {addr_width!r}")
        check_act_depth(act_depth)
        self._addr_width = addr_width
        self._act_depth = act_depth
        super().__init__({
            "bus": Out(buffer_port_signature(addr_width)),
            "load": Out(job_signature(load_job_layout(act_depth))),
            "run": Out(job_signature(LAYER_JOB_LAYOUT, error=True)),
            "emit": Out(job_signature(emit_job_layout(act_depth))),
            "error": Out(1),
            "error_code": Out(ErrorCode),
        })

    @property
    def max_layers(self) -> int:
        """Most layers whose descriptors fit the buffer after the header."""
        return ((1 << self._addr_width) - HEADER.words) // DESCRIPTOR.words

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        record_words = max(HEADER.words, DESCRIPTOR.words)

        # Record reader: `count` words from `base` into `words` (word k at bits 32k..), one request a cycle
        # while granted; each word arrives one cycle after its grant.
        words = Signal(WORD_BITS * record_words)
        header = data.View(HEADER_LAYOUT, words[:HEADER_LAYOUT.size])
        desc = data.View(DESCRIPTOR_LAYOUT, words[:DESCRIPTOR_LAYOUT.size])
        reading = Signal()
        reading_header = Signal(init=1)  # the first record after reset is the header
        base = Signal(self._addr_width)
        issued = Signal(range(record_words + 1))
        count = Signal(range(record_words + 1))
        inflight = Signal()
        slot = Signal(range(record_words))
        m.d.comb += [
            count.eq(Mux(reading_header, HEADER.words, DESCRIPTOR.words)),
            bus.req.eq(reading & (issued != count)),
            bus.addr.eq(base + issued),
        ]
        m.d.sync += inflight.eq(bus.req & bus.grant)
        with m.If(bus.req & bus.grant):
            m.d.sync += [issued.eq(issued + 1), slot.eq(issued)]
        with m.If(inflight):
            m.d.sync += words.word_select(slot, WORD_BITS).eq(bus.data)
        read_done = Signal()  # the record's last word lands at this edge
        m.d.comb += read_done.eq(reading & (issued == count) & inflight)

        n_layers = Signal(range(self.max_layers + 1))
        layer = Signal(range(self.max_layers))
        last_layer = Signal()
        m.d.comb += last_layer.eq(layer == n_layers - 1)

        def read(first_word, header_record=False):
            m.d.sync += [base.eq(first_word), issued.eq(0), reading_header.eq(header_record)]

        def fail(code):
            m.d.sync += self.error_code.eq(code)
            m.next = "ERROR"

        m.d.comb += self.error.eq(self.error_code != ErrorCode.NONE)
        act_depth = self._act_depth
        # ceil(n_in / 10) == mask_words_per_row, by shift-and-add (a product would cost a DSP48E1 here).
        per_row_codes = sum(desc.mask_words_per_row << k for k in range(CODES_PER_WORD.bit_length())
                            if CODES_PER_WORD >> k & 1)
        good_descriptor = ((desc.n_in >= 1) & (desc.n_in <= act_depth) & (desc.n_out >= 1) &
                           (desc.n_out <= act_depth) & (per_row_codes >= desc.n_in) &
                           (per_row_codes < desc.n_in + CODES_PER_WORD) & (desc.out_bits <= MAX_ACT_BITS) &
                           (desc.shift >= 1) & (desc.shift <= MAX_SHIFT))
        with m.FSM() as fsm:
            with m.State("HEADER"), m.If(read_done):
                m.next = "CHECK-HEADER"
            with m.State("CHECK-HEADER"):
                with m.If((header.magic != MAGIC) | (header.layers == 0) | (header.layers > self.max_layers)):
                    fail(ErrorCode.BAD_HEADER)
                with m.Else():
                    m.d.sync += [n_layers.eq(header.layers), layer.eq(0)]
                    read(HEADER.words)
                    m.next = "DESCRIPTOR"
            with m.State("DESCRIPTOR"), m.If(read_done):
                m.next = "CHECK-DESCRIPTOR"
            with m.State("CHECK-DESCRIPTOR"):
                with m.If(~good_descriptor):
                    fail(ErrorCode.BAD_DESCRIPTOR)
                with m.Elif(layer == 0):
                    m.next = "LOAD"
                with m.Else():
                    m.next = "RUN"
            with m.State("LOAD"), m.If(self.load.job.ready):
                m.next = "LOAD-WAIT"
            with m.State("LOAD-WAIT"), m.If(self.load.done):
                m.next = "RUN"
            with m.State("RUN"), m.If(self.run.job.ready):
                m.next = "RUN-WAIT"
            with m.State("RUN-WAIT"):
                with m.If(self.run.error != ErrorCode.NONE):
                    m.d.sync += self.error_code.eq(self.run.error)
                    m.next = "ERROR"
                with m.Elif(self.run.done & last_layer):
                    m.next = "EMIT"
                with m.Elif(self.run.done):
                    m.d.sync += layer.eq(layer + 1)
                    read(base + DESCRIPTOR.words)  # `base` still holds this layer's descriptor address
                    m.next = "DESCRIPTOR"
            with m.State("EMIT"), m.If(self.emit.job.ready):
                m.next = "EMIT-WAIT"
            with m.State("EMIT-WAIT"), m.If(self.emit.done):
                m.d.sync += layer.eq(0)
                read(HEADER.words)
                m.next = "DESCRIPTOR"
            with m.State("ERROR"):
                pass
        # Outputs as plain functions of the state, outside the FSM's control flow: Icarus 11 leaves an
        # `always @*` block at X until one of its inputs changes, and a state can hold from time 0.
        m.d.comb += [
            reading.eq(fsm.ongoing("HEADER") | fsm.ongoing("DESCRIPTOR")),
            self.load.job.valid.eq(fsm.ongoing("LOAD")),
            self.load.job.payload.count.eq(desc.n_in),
            self.load.job.payload.buf.eq(0),
            self.run.job.valid.eq(fsm.ongoing("RUN")),
            self.run.job.payload.desc.eq(desc),
            self.run.job.payload.src.eq(layer[0]),
            self.run.job.payload.last.eq(last_layer),
            self.emit.job.valid.eq(fsm.ongoing("EMIT")),
            self.emit.job.payload.count.eq(desc.n_out),
        ]
        return m
