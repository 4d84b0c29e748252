"""Layer engine: the datapath that computes one layer of a batch, one output row at a time.

Data path (one non-zero weight per cycle, shared by the batch)::

    mask, payload, param words (global buffer, three WordFetchers)
        mask + payload -> WeightDecoder (skips pruned weights) -> operand fetch (activation buffer ``src``)
        -> MacLane (packed DSP48E1 lanes, per-image per-class sums) -> Requantizer (+ row params, one image
           a cycle) -> activation buffer ``1 - src`` (the image's lane), or the score memory (last layer)

A job carries the layer's descriptor as read from the image (:data:`~hw.core.image_layout.DESCRIPTOR_LAYOUT`):
the weight mode (DoReFa or signed offset-binary codes; the requantizer adds the signed correction,
model/export/golden.py), the requant shift and output width, and the region addresses the fetchers start
from. The engine restarts its fetchers when it takes the job, holds the decoder and the parameter reader
in reset while idle, and pulses ``done`` with the write of the last image's last row. A reserved width code
in the mask stops the decoder; the engine then reports ``RESERVED_WIDTH_CODE`` and never finishes the job.

The engine's ports are the datapath's whole contract with the rest of the core (global buffer read ports,
activation bank, score memory, job port): a different datapath with the same ports runs under the same
sequencer.
"""

from amaranth import Module, Mux, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.utils import bits_for, ceil_log2

from hw.core.activations import act_read_signature, act_write_signature, check_act_depth
from hw.core.fetcher import WordFetcher
from hw.core.global_buffer import buffer_port_signature
from hw.core.job import LAYER_JOB_LAYOUT, ErrorCode, job_signature
from hw.core.mac_lane import MacLane, check_lane_batch
from hw.core.requant import ParamReader, Requantizer
from hw.core.scores import score_write_signature
from hw.core.weight_decoder import WeightDecoder
from model.export.format import CODES_PER_WORD, PARAMS
from model.export.golden import MAX_ACT_BITS


def select(values: list, index):
    """``values[index]`` as a balanced tree of 2:1 multiplexers on the bits of ``index`` (< ``len(values)``).

    Indexing an array view with a signal shifts by ``index`` times the element width, which Yosys maps to a
    barrel shifter that grew faster than the batch (3,581 more LUTs at batch 4). A ``Switch`` synthesises
    to the same multiplexer, but its ``always @*`` block misbehaved under Icarus 11: until the lane's output
    first changed it held a wrong value (a first row whose sums were all zero came out wrong;
    tests/sim/test_accelerator.py ``test_pruned_rows``). A tree of ``Mux`` is continuous assignments.
    """
    level, bit = list(values), 0
    while len(level) > 1:
        pairs = [level[k:k + 2] for k in range(0, len(level), 2)]
        level = [Mux(index[bit], pair[1], pair[0]) if len(pair) == 2 else pair[0] for pair in pairs]
        bit += 1
    return level[0]


def index_width(act_depth: int) -> int:
    """Bits of an input index: the decoder's indices reach the end of a row's last mask word."""
    return max(4, bits_for(CODES_PER_WORD * -(-act_depth // CODES_PER_WORD) - 1), bits_for(act_depth))


class LayerEngine(wiring.Component):
    """One layer of a ``batch`` of images per job (module docstring).

    Parameters
    ----------
    batch : int
        Images computed together: 1, or an even number up to 16 (:class:`~hw.core.mac_lane.MacLane`).
    addr_width : int
        Global buffer address width.
    act_depth : int
        Words per activation buffer (a power of two in 2..MAX_FAN_IN); the layer's ``n_in`` and ``n_out``
        must not exceed it (the sequencer checks).

    Members
    -------
    ctl : In(job_signature(LAYER_JOB_LAYOUT, error=True))
        Layer jobs from the sequencer.
    mask_bus, param_bus, payload_bus : Out(buffer_port_signature(addr_width))
        Read requests of the three fetchers.
    acts : Out(act_read_signature(batch, ceil_log2(act_depth)))
        Operand reads from buffer ``src``.
    act_write : Out(act_write_signature(batch, ceil_log2(act_depth)))
        Hidden layers' codes into buffer ``1 - src``.
    scores : Out(score_write_signature(batch, act_depth))
        The last layer's scores.

    Raises
    ------
    ValueError
        For an unsupported ``batch``, ``addr_width`` < 1, or an ``act_depth`` that is not a power of two in
        2..MAX_FAN_IN.
    """

    def __init__(self, *, batch: int, addr_width: int, act_depth: int):
        check_lane_batch(batch)
        if addr_width < 1:
            raise ValueError(f"addr_width must be >= 1, not {addr_width!r}")
        check_act_depth(act_depth)
        self._batch = batch
        self._addr_width = addr_width
        self._act_depth = act_depth
        act_addr = ceil_log2(act_depth)
        super().__init__({
            "ctl": In(job_signature(LAYER_JOB_LAYOUT, error=True)),
            "mask_bus": Out(buffer_port_signature(addr_width)),
            "param_bus": Out(buffer_port_signature(addr_width)),
            "payload_bus": Out(buffer_port_signature(addr_width)),
            "acts": Out(act_read_signature(batch, act_addr)),
            "act_write": Out(act_write_signature(batch, act_addr)),
            "scores": Out(score_write_signature(batch, act_depth)),
        })

    @property
    def batch(self) -> int:
        return self._batch

    def elaborate(self, platform):
        m = Module()
        batch = self._batch
        job = self.ctl.job

        # The job: latched when taken; the engine is busy until the last row is written.
        desc = Signal.like(job.payload.desc)
        src = Signal()
        last = Signal()
        busy = Signal()
        start = Signal()
        m.d.comb += [job.ready.eq(~busy), start.eq(job.valid & job.ready)]
        with m.If(start):
            m.d.sync += [desc.eq(job.payload.desc), src.eq(job.payload.src), last.eq(job.payload.last),
                         busy.eq(1)]

        # Fetchers, restarted at the job's regions; the parameter fetcher holds a few records.
        fetchers = {
            "mask": (WordFetcher(addr_width=self._addr_width), self.mask_bus, "mask_base"),
            "param": (WordFetcher(addr_width=self._addr_width, depth=2 * PARAMS.words + 2), self.param_bus,
                      "param_base"),
            "payload": (WordFetcher(addr_width=self._addr_width), self.payload_bus, "payload_base"),
        }
        for name, (fetcher, bus, base) in fetchers.items():
            m.submodules[f"{name}_fetcher"] = fetcher
            connect(m, fetcher.bus, flipped(bus))
            m.d.comb += [fetcher.start.eq(start), fetcher.base.eq(job.payload.desc[base])]
        mask_f, param_f, payload_f = (fetchers[k][0] for k in ("mask", "param", "payload"))

        decoder = WeightDecoder(index_width=index_width(self._act_depth))
        m.submodules.decoder = ResetInserter(~busy)(decoder)
        m.submodules.params = params = ResetInserter(~busy)(ParamReader())
        m.submodules.lane = lane = MacLane(batch)
        m.submodules.requant = requant = Requantizer()
        connect(m, mask_f.o, decoder.mask)
        connect(m, payload_f.o, decoder.payload)
        connect(m, param_f.o, params.i)
        m.d.comb += [decoder.words_per_row.eq(desc.mask_words_per_row), decoder.rows.eq(desc.n_out)]
        m.d.comb += self.ctl.error.eq(Mux(decoder.error, ErrorCode.RESERVED_WIDTH_CODE, ErrorCode.NONE))

        # Operand fetch: the decoder's input index reads the activation buffer (its latency: one cycle).
        op = lane.i
        fetch_ready = Signal()
        m.d.comb += [
            fetch_ready.eq(~op.valid | op.ready),
            decoder.o.ready.eq(fetch_ready),
            self.acts.addr.eq(decoder.o.payload.index),
            self.acts.buf.eq(src),
            self.acts.en.eq(fetch_ready),
            op.payload.u.eq(self.acts.data),  # all images at index i
        ]
        with m.If(fetch_ready):
            m.d.sync += [
                op.valid.eq(decoder.o.valid),
                op.payload.code.eq(decoder.o.payload.code),
                op.payload.q.eq(decoder.o.payload.q),
                op.payload.row_end.eq(decoder.o.payload.row_end),
            ]

        # Row sums of the batch meet their row's parameters at the requantizer, one image a cycle.
        img_q = Signal(range(batch))
        fed = Signal()
        last_img_q = Signal()
        m.d.comb += [
            last_img_q.eq(img_q == batch - 1),
            requant.i.valid.eq(lane.o.valid & params.o.valid),
            requant.i.payload.param.eq(params.o.payload),
            requant.i.payload.sums.eq(select(list(lane.o.payload), img_q)),
            fed.eq(requant.i.valid & requant.i.ready),
            lane.o.ready.eq(fed & last_img_q),
            params.o.ready.eq(fed & last_img_q),
            requant.shift.eq(desc.shift),
            requant.out_bits.eq(desc.out_bits),
            requant.signed_layer.eq(desc.signed),
        ]
        with m.If(fed):
            m.d.sync += img_q.eq(Mux(last_img_q, 0, img_q + 1))

        # Writer: a hidden layer fills the other activation buffer (the image's lane), the last layer
        # the score memory.
        row = Signal(range(self._act_depth))
        img = Signal(range(batch))
        written = Signal()
        row_done = Signal()
        m.d.comb += [
            requant.o.ready.eq(busy),
            written.eq(requant.o.valid & requant.o.ready),
            row_done.eq(written & (img == batch - 1)),
            self.scores.img.eq(img),
            self.scores.row.eq(row),
            self.scores.data.eq(requant.o.payload),
            self.scores.en.eq(written & last),
            self.act_write.addr.eq(row),
            self.act_write.buf.eq(~src),
            self.act_write.data.eq(requant.o.payload[:MAX_ACT_BITS]),
            self.act_write.lanes.eq(Mux(written & ~last, 1 << img, 0)),
        ]
        with m.If(written):
            m.d.sync += img.eq(Mux(img == batch - 1, 0, img + 1))
        finished = Signal()  # the last image's last row is written now
        m.d.comb += [finished.eq(row_done & (row == desc.n_out - 1)), self.ctl.done.eq(finished)]
        with m.If(start):
            m.d.sync += row.eq(0)
        with m.Elif(row_done):
            m.d.sync += row.eq(row + 1)
        with m.If(finished):
            m.d.sync += busy.eq(0)
        return m
