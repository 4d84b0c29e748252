"""The accelerator: runs a packed mixed-precision network from its global buffer, ``batch`` images at a time.

Data path (one output row at a time, one non-zero weight per cycle, shared by the batch)::

    global buffer (BRAM, 32-bit words, the packed image) --port A--> mask fetcher  --+
                                                         --port A--> param fetcher  |  (descriptors too)
                                                         --port B--> payload fetcher-+
    mask + payload -> WeightDecoder (skips pruned weights) -> operand fetch (activation buffer)
        -> MacLane (packed DSP48E1 lanes, per-image per-class sums) -> Requantizer (+ row params, one image
           a cycle) -> activation buffer (the image's lane) or score buffer

The controller reads the header and each layer's descriptor from the buffer at run time
(docs/image_format.md), including the layer's weight mode (DoReFa or signed offset-binary codes; the
requantizer adds the signed correction, model/export/golden.py), so one bitstream runs both kinds of layers. It
loads ``batch`` images' input codes from ``i`` into the lanes of activation buffer 0, runs the layers
ping-ponging between the two activation buffers, and streams the last layer's scores out of ``o`` image by
image.
"""

from amaranth import Module, Mux, Signal, Value, signed, unsigned
from amaranth.hdl import ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect
from amaranth.utils import bits_for, ceil_log2

from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN
from model.export.image import SIGNED_BIT, unpack

from hw.core.fetcher import WordFetcher
from hw.core.mac_lane import MacLane
from hw.core.requant import ParamReader, Requantizer
from hw.core.weight_decoder import WeightDecoder

OUTPUT_LAYOUT = data.StructLayout({"score": signed(32), "last": unsigned(1)})
HEADER_WORDS = 8
DESCRIPTOR_WORDS = 8


def select(values: list, index: Value) -> Value:
    """``values[index]`` as a balanced tree of 2:1 multiplexers on the bits of ``index`` (< ``len(values)``).

    Indexing an array view with a signal shifts by ``index`` times the element width, which Yosys maps to a
    barrel shifter that grew faster than the batch (3,581 more LUTs at batch 4). A ``Switch`` synthesises
    to the same multiplexer, but its ``always @*`` block misbehaved under Icarus 11: until the lane's output
    first changed it held a wrong value (a first row whose sums were all zero came out wrong;
    tests/test_sim_accelerator.py ``test_pruned_rows``). A tree of ``Mux`` is continuous assignments.
    """
    level, bit = list(values), 0
    while len(level) > 1:
        pairs = [level[k:k + 2] for k in range(0, len(level), 2)]
        level = [Mux(index[bit], pair[1], pair[0]) if len(pair) == 2 else pair[0] for pair in pairs]
        bit += 1
    return level[0]


def step_image_major(m: Module, row: Signal, img: Signal, rows, batch: int):
    """Advance ``(img, row)`` in image-major order (all rows of image 0, then image 1, ...) this cycle.

    Returns a value that is true when this step wraps both counters to zero (the batch is complete).
    """
    last_row = row == rows - 1
    last_img = img == batch - 1
    m.d.sync += row.eq(Mux(last_row, 0, row + 1))
    with m.If(last_row):
        m.d.sync += img.eq(Mux(last_img, 0, img + 1))
    return last_row & last_img


class Accelerator(wiring.Component):
    """Mixed-precision network accelerator with the image in its global buffer.

    Parameters
    ----------
    image : sequence of int
        The packed image words (model/export/image.py); they initialise the global buffer.
    buffer_depth : int or None
        Global buffer depth in words (a power of two); default: the image rounded up.
    act_depth : int or None
        Depth of each activation buffer; default: the widest layer of the image, rounded up to a power
        of two. Any image whose layers fit these depths runs on the same hardware.
    batch : int
        Images computed together (1, or even up to 16): each decoded weight multiplies all of them on
        packed DSP48E1 lanes (hw/core/mac_lane.py). The input stream must carry a multiple of ``batch``
        images; a host pads the last group.

    Members
    -------
    i : In(stream.Signature(unsigned(8)))
        Input activation codes of one image after another, ``n_in`` of layer 0 each.

    Raises
    ------
    ValueError
        For a depth that is not a power of two or too small, or an unsupported ``batch``.
    o : Out(stream.Signature(OUTPUT_LAYOUT))
        Class scores (``2^-8`` units, model/export/golden.py), ``last`` on the final class of an image.
    """

    def __init__(self, image, *, buffer_depth: int | None = None, act_depth: int | None = None,
                 batch: int = 1):
        words = [int(w) for w in image]
        net = unpack(words, where="accelerator image")
        widest = max(max(layer.n_in, layer.n_out) for layer in net.layers)
        if buffer_depth is None:
            buffer_depth = 1 << ceil_log2(max(len(words), 2))
        if act_depth is None:
            act_depth = 1 << ceil_log2(max(widest, 2))
        if buffer_depth & (buffer_depth - 1) or buffer_depth < len(words):
            raise ValueError(f"buffer_depth must be a power of two >= {len(words)} words, not {buffer_depth!r}")
        if act_depth & (act_depth - 1) or act_depth < widest or act_depth > MAX_FAN_IN:
            raise ValueError(f"act_depth must be a power of two in [{widest}, {MAX_FAN_IN}], not {act_depth!r}")
        if batch != 1 and (batch % 2 or not 2 <= batch <= 16):
            raise ValueError(f"batch must be 1 or an even number in 2..16, not {batch!r}")
        self._batch = batch
        self._words = words
        self._net = net
        self._buffer_depth = buffer_depth
        self._act_depth = act_depth
        super().__init__({
            "i": In(stream.Signature(unsigned(MAX_ACT_BITS))),
            "o": Out(stream.Signature(OUTPUT_LAYOUT)),
        })

    @property
    def network(self):
        """The integer network the image holds (what the golden model runs)."""
        return self._net

    @property
    def batch(self) -> int:
        """Images computed together; the input stream must carry a multiple of ``batch`` images."""
        return self._batch

    @property
    def buffer_depth(self) -> int:
        return self._buffer_depth

    @property
    def act_depth(self) -> int:
        return self._act_depth

    def elaborate(self, platform):
        m = Module()
        addr_width = ceil_log2(self._buffer_depth)
        index_width = bits_for(self._act_depth + 16)

        m.submodules.buffer = buffer = Memory(shape=32, depth=self._buffer_depth, init=self._words)
        port_a = buffer.read_port()
        port_b = buffer.read_port()
        batch = self._batch
        # Activation buffers: one word per input index, one MAX_ACT_BITS lane per image of the batch.
        acts = [Memory(shape=MAX_ACT_BITS * batch, depth=self._act_depth, init=[]) for _ in range(2)]
        m.submodules.act0, m.submodules.act1 = acts
        act_rd = [mem.read_port() for mem in acts]
        act_wr = [mem.write_port(granularity=MAX_ACT_BITS) for mem in acts]
        # Scores of the last layer, image-major for the output stream.
        img_bits = max(1, ceil_log2(batch))
        row_bits = ceil_log2(self._act_depth)
        m.submodules.scores = scores = Memory(shape=signed(32), depth=batch << row_bits, init=[])
        score_wr = scores.write_port()
        score_rd = scores.read_port()

        restart = Signal()  # start of a layer: reload the prefetchers
        running = Signal()  # a layer runs; outside, the decoder and the parameter reader are held in reset
        mask_f = WordFetcher(addr_width=addr_width)
        param_f = WordFetcher(addr_width=addr_width, depth=8)
        payload_f = WordFetcher(addr_width=addr_width)
        decoder = WeightDecoder(index_width=index_width)
        m.submodules.mask_fetcher = mask_f
        m.submodules.param_fetcher = param_f
        m.submodules.payload_fetcher = payload_f
        m.submodules.decoder = ResetInserter(~running)(decoder)
        m.submodules.params = params = ResetInserter(~running)(ParamReader())
        m.submodules.lane = lane = MacLane(batch)
        m.submodules.requant = requant = Requantizer()

        # Layer descriptor registers.
        n_layers = Signal(8)
        layer = Signal(8)
        n_in = Signal(index_width)
        n_out = Signal(index_width)
        out_bits = Signal(8)
        shift = Signal(8)
        signed_layer = Signal()  # weight mode: 0 DoReFa, 1 signed offset-binary codes
        mask_base = Signal(addr_width)
        payload_base = Signal(addr_width)
        param_base = Signal(addr_width)
        per_row = Signal(index_width)
        sel = Signal()  # activation buffer read by this layer
        m.d.comb += sel.eq(layer[0])

        # Port A: controller reads first, then the parameter fetcher, then the mask fetcher.
        ctrl_req = Signal()
        ctrl_addr = Signal(addr_width)
        m.d.comb += [
            port_a.addr.eq(Mux(ctrl_req, ctrl_addr, Mux(param_f.req, param_f.addr, mask_f.addr))),
            param_f.grant.eq(~ctrl_req),
            mask_f.grant.eq(~ctrl_req & ~param_f.req),
            param_f.data.eq(port_a.data),
            mask_f.data.eq(port_a.data),
            port_b.addr.eq(payload_f.addr),
            payload_f.grant.eq(1),
            payload_f.data.eq(port_b.data),
        ]
        for f, base in ((mask_f, mask_base), (param_f, param_base), (payload_f, payload_base)):
            m.d.comb += [f.start.eq(restart), f.base.eq(base)]

        connect(m, mask=mask_f.o, decoder=decoder.mask)
        connect(m, payload=payload_f.o, decoder=decoder.payload)
        connect(m, words=param_f.o, params=params.i)
        m.d.comb += [decoder.words_per_row.eq(per_row), decoder.rows.eq(n_out)]

        # Operand fetch: the decoder's input index reads the activation buffer (one cycle).
        op = lane.i
        fetch_ready = Signal()
        m.d.comb += [fetch_ready.eq(~op.valid | op.ready), decoder.o.ready.eq(fetch_ready)]
        for rd in act_rd:
            m.d.comb += [rd.addr.eq(decoder.o.payload.index), rd.en.eq(fetch_ready)]
        m.d.comb += op.payload.u.eq(Mux(sel, act_rd[1].data, act_rd[0].data))  # all images at index i
        with m.If(fetch_ready):
            m.d.sync += [
                op.valid.eq(decoder.o.valid),
                op.payload.code.eq(decoder.o.payload.code),
                op.payload.q.eq(decoder.o.payload.q),
                op.payload.row_end.eq(decoder.o.payload.row_end),
            ]

        # Row sums meet their row's parameters at the requantizer.
        # Row sums of the batch meet their row's parameters at the requantizer, one image a cycle.
        img_q = Signal(img_bits)
        fed = Signal()
        last_img_q = Signal()
        m.d.comb += [
            last_img_q.eq(img_q == batch - 1),
            requant.i.valid.eq(lane.o.valid & params.o.valid),
            requant.i.payload.param.eq(params.o.payload),
            fed.eq(requant.i.valid & requant.i.ready),
            lane.o.ready.eq(fed & last_img_q),
            params.o.ready.eq(fed & last_img_q),
            requant.shift.eq(shift),
            requant.out_bits.eq(out_bits),
            requant.signed_layer.eq(signed_layer),
        ]
        m.d.comb += requant.i.payload.sums.eq(select(list(lane.o.payload), img_q))
        with m.If(fed):
            m.d.sync += img_q.eq(Mux(last_img_q, 0, img_q + 1))

        # Writer: hidden layers fill the other activation buffer (the image's lane), the last layer
        # fills the score memory.
        row = Signal(index_width)
        img = Signal(img_bits)  # image of the batch being written (or loaded)
        written = Signal()
        row_done = Signal()
        last_layer = out_bits == 0
        lane_en = Signal(batch)
        m.d.comb += [
            requant.o.ready.eq(running),
            written.eq(requant.o.valid & requant.o.ready),
            row_done.eq(written & (img == batch - 1)),
            lane_en.eq(1 << img),
            score_wr.addr.eq((img << row_bits) | row[:row_bits]),
            score_wr.data.eq(requant.o.payload),
            score_wr.en.eq(written & last_layer),
        ]
        for b in range(2):
            m.d.comb += [act_wr[b].addr.eq(row),
                         act_wr[b].data.eq(requant.o.payload[:MAX_ACT_BITS].replicate(batch))]
        m.d.comb += [
            act_wr[1].en.eq(Mux(written & ~last_layer & ~sel, lane_en, 0)),
            act_wr[0].en.eq(Mux(written & ~last_layer & sel, lane_en, 0)),
        ]
        with m.If(written):
            m.d.sync += img.eq(Mux(img == batch - 1, 0, img + 1))
        with m.If(row_done):
            m.d.sync += row.eq(row + 1)

        # Controller.
        step = Signal(4)  # word counter of descriptor reads
        desc_addr = Signal(addr_width)
        m.d.comb += desc_addr.eq(HEADER_WORDS + DESCRIPTOR_WORDS * layer)
        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += [ctrl_req.eq(1), ctrl_addr.eq(2)]
                m.next = "HEADER-DATA"
            with m.State("HEADER-DATA"):
                m.d.sync += [n_layers.eq(port_a.data), layer.eq(0), step.eq(0)]
                m.next = "DESCRIPTOR"
            with m.State("DESCRIPTOR"):
                # Word k is requested at step k and arrives at step k + 1.
                with m.If(step < DESCRIPTOR_WORDS):
                    m.d.comb += [ctrl_req.eq(1), ctrl_addr.eq(desc_addr + step)]
                word = port_a.data
                with m.Switch(step):
                    with m.Case(1):
                        m.d.sync += n_in.eq(word)
                    with m.Case(2):
                        m.d.sync += n_out.eq(word)
                    with m.Case(3):
                        m.d.sync += [out_bits.eq(word[8:16]), shift.eq(word[16:24]),
                                     signed_layer.eq(word[SIGNED_BIT])]
                    with m.Case(4):
                        m.d.sync += mask_base.eq(word)
                    with m.Case(5):
                        m.d.sync += payload_base.eq(word)
                    with m.Case(6):
                        m.d.sync += param_base.eq(word)
                    with m.Case(7):
                        m.d.sync += per_row.eq(word)
                m.d.sync += step.eq(step + 1)
                with m.If(step == DESCRIPTOR_WORDS):
                    m.d.sync += [step.eq(0), row.eq(0)]
                    with m.If(layer == 0):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "START"
            with m.State("LOAD"):
                # Image `img` of the batch, code `row`: lane `img` of activation word `row`.
                m.d.comb += [
                    self.i.ready.eq(1),
                    act_wr[0].en.eq(Mux(self.i.valid, lane_en, 0)),
                    act_wr[0].addr.eq(row),
                    act_wr[0].data.eq(self.i.payload.replicate(batch)),
                ]
                with m.If(self.i.valid), m.If(step_image_major(m, row, img, n_in, batch)):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += restart.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                with m.If(row_done & (row == n_out - 1)):
                    with m.If(layer == n_layers - 1):
                        m.d.sync += [layer.eq(0), row.eq(0), img.eq(0)]
                        m.next = "EMIT-READ"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "DESCRIPTOR"
            # Scores out, image by image: read (one cycle), then offer until taken.
            with m.State("EMIT-READ"):
                m.d.comb += [score_rd.addr.eq((img << row_bits) | row[:row_bits]), score_rd.en.eq(1)]
                m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [
                    score_rd.en.eq(0),
                    self.o.valid.eq(1),
                    self.o.payload.score.eq(score_rd.data),
                    self.o.payload.last.eq(row == n_out - 1),
                ]
                with m.If(self.o.ready):
                    m.next = "EMIT-READ"
                    with m.If(step_image_major(m, row, img, n_out, batch)):
                        m.next = "DESCRIPTOR"
        return m
