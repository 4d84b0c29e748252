"""MAC lane: packed DSP48E1 products of one weight with a batch of images, summed per bit-width class.

One non-zero weight enters per cycle and multiplies the activations of ``batch`` images at its input
index (weight broadcast: a pruned weight is skipped for every image at once, so element-wise sparsity
idles no DSP lane). The weight code (up to 32 bits) is cut into chunks; each chunk drives one
:class:`~hw.dsp.lane.PackedDspLane` per group of images:

* ``batch == 1``: two 16-bit chunks, one image per DSP (``plan(16, 8)``): 2 DSP48E1;
* ``batch >= 2``: four 8-bit chunks, two images per DSP (``plan(8, 8)``: activations at bits 0 and 16 of
  A, products in 16-bit slots of P): ``2 * batch`` DSP48E1, two exact products per DSP and cycle; a
  32-bit weight still takes one cycle, and ``batch`` images share every decoded weight.

The lanes drain every product (``last`` on each operand set): consecutive weights usually belong to
different width classes, whose sums must stay apart (``S_4 .. S_32``, model/export/golden.py), so P cannot
accumulate across them. The per-image, per-class sums, and per-class activation sums ``A_4 .. A_32`` (the
offset terms of both weight modes, DoReFa and signed), are kept in LUT accumulators; the class constants
are applied once per output by :mod:`hw.core.requant`, never per multiply. The lane does not know the layer's
mode: both modes need the same sums.
"""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hw.core.image_layout import WidthCode
from hw.dsp.lane import PackedDspLane, lane_latency
from hw.dsp.packing import plan
from model.export.format import CODE_OF_WIDTH
from model.export.golden import CLASSES, MAX_ACT_BITS, MAX_FAN_IN

#: Bits of each class accumulator: max code * max activation * max fan-in, exactly.
SUM_BITS = {m: (((1 << m) - 1) * ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN).bit_length() for m in CLASSES}
ACT_SUM_BITS = (((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN).bit_length()

#: One image's sums of one output row: ``S_m`` (``s4`` .. ``s32``) and ``A_m`` (``a4`` .. ``a32``).
ROW_SUMS_LAYOUT = data.StructLayout({
    **{f"s{m}": unsigned(SUM_BITS[m]) for m in CLASSES},
    **{f"a{m}": unsigned(ACT_SUM_BITS) for m in CLASSES},
})


def operand_layout(batch: int) -> data.StructLayout:
    """One weight (width code and code ``q``) with the activations of ``batch`` images at its input index."""
    return data.StructLayout({
        "code": WidthCode,
        "q": unsigned(32),
        "u": data.ArrayLayout(MAX_ACT_BITS, batch),
        "row_end": unsigned(1),
    })


def check_lane_batch(batch: int) -> None:
    """Raise ``ValueError`` unless ``batch`` is 1 or an even number in 2..16 (images share a lane in pairs)."""
    if batch != 1 and (batch % 2 or not 2 <= batch <= 16):
        raise ValueError(f"batch must be 1 or an even number in 2..16, not {batch!r}")


class MacLane(wiring.Component):
    """Per-class multiply-accumulate of one output row for ``batch`` images at a time.

    Parameters
    ----------
    batch : int
        Images processed together (1, or an even number up to 16).

    Members
    -------
    i : In(stream.Signature(operand_layout(batch)))
        Weight code (width code ``PRUNED`` = no weight, only a row end), the images' activation codes, row
        end.
    o : Out(stream.Signature(data.ArrayLayout(ROW_SUMS_LAYOUT, batch)))
        Each image's exact class sums ``S_4 .. S_32`` and class activation sums ``A_4 .. A_32`` for the
        row (model.export.golden.class_sums).
    """

    def __init__(self, batch: int = 1):
        check_lane_batch(batch)
        self._batch = batch
        self._plan = plan(16 if batch == 1 else 8, MAX_ACT_BITS, weights=1)
        super().__init__({
            "i": In(stream.Signature(operand_layout(batch))),
            "o": Out(stream.Signature(data.ArrayLayout(ROW_SUMS_LAYOUT, batch))),
        })

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def latency(self) -> int:
        """Cycles from a row's last operand to its sums on ``o`` (DSP lane, then the accumulators)."""
        return lane_latency(self._plan) + 1

    @property
    def dsp_count(self) -> int:
        return self.chunks * self.groups

    @property
    def chunks(self) -> int:
        return 32 // self._plan.weight_chunk

    @property
    def groups(self) -> int:
        return -(-self._batch // self._plan.acts)

    def elaborate(self, platform):
        m = Module()
        p = self._plan
        batch, chunk = self._batch, p.weight_chunk
        lanes = [[PackedDspLane(p, count_bits=1) for _ in range(self.groups)] for _ in range(self.chunks)]
        for c, row in enumerate(lanes):
            for g, lane in enumerate(row):
                m.submodules[f"dsp_c{c}_g{g}"] = lane
        flat = [lane for row in lanes for lane in row]

        # Side band (width code, activation codes, row end) waits in a FIFO for the products.
        side_layout = data.StructLayout({"code": WidthCode, "u": data.ArrayLayout(MAX_ACT_BITS, batch),
                                         "row_end": unsigned(1)})
        m.submodules.side = side = SyncFIFO(width=side_layout.size, depth=flat[0].latency + 2)
        side_in = data.View(side_layout, side.w_data)
        side_out = data.View(side_layout, side.r_data)

        lanes_ready = Signal()
        m.d.comb += lanes_ready.eq(flat[0].i.ready)
        accept = Signal()
        m.d.comb += [
            self.i.ready.eq(lanes_ready & side.w_rdy),
            accept.eq(self.i.valid & self.i.ready),
            side.w_en.eq(accept),
            side_in.code.eq(self.i.payload.code),
            side_in.u.eq(self.i.payload.u),
            side_in.row_end.eq(self.i.payload.row_end),
        ]
        for c, row in enumerate(lanes):
            for g, lane in enumerate(row):
                m.d.comb += [
                    lane.i.valid.eq(accept),
                    lane.i.payload.w[0].eq(self.i.payload.q[c * chunk:(c + 1) * chunk]),
                    lane.i.payload.last.eq(1),
                ]
                for k in range(p.acts):
                    image = g * p.acts + k
                    if image < batch:
                        m.d.comb += lane.i.payload.a[k].eq(self.i.payload.u[image])

        # Accumulate: each image's product (chunks shifted into place) into its class.
        products_valid = Signal()
        take = Signal()
        out_free = Signal()
        m.d.comb += [
            products_valid.eq(flat[0].o.valid & side.r_rdy),
            out_free.eq(~self.o.valid | self.o.ready),
            take.eq(products_valid & (~side_out.row_end | out_free)),
            side.r_en.eq(take),
        ]
        for lane in flat:
            m.d.comb += lane.o.ready.eq(take)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(take & side_out.row_end):
            m.d.sync += self.o.valid.eq(1)
        in_class = {cl: side_out.code == WidthCode(CODE_OF_WIDTH[cl]) for cl in CLASSES}
        for image in range(batch):
            g, k = divmod(image, p.acts)
            product = Signal(32 + MAX_ACT_BITS, name=f"product{image}")
            m.d.comb += product.eq(sum(lanes[c][g].o.payload[0][k] << (c * chunk) for c in range(self.chunks)))
            sums = {cl: Signal(SUM_BITS[cl], name=f"sum{cl}_{image}") for cl in CLASSES}
            act_sums = {cl: Signal(ACT_SUM_BITS, name=f"act_sum{cl}_{image}") for cl in CLASSES}
            nxt = {cl: Mux(in_class[cl], sums[cl] + product, sums[cl]) for cl in CLASSES}
            # The class select gates the operand rather than muxing the sum: the adder's LUTs absorb it
            # (72 fewer LUTs at batch 2 than Mux(sel, a + u, a), Yosys synth_xilinx).
            nxt_a = {cl: act_sums[cl] + Mux(in_class[cl], side_out.u[image], 0) for cl in CLASSES}
            out = self.o.payload[image]
            with m.If(take):
                with m.If(side_out.row_end):
                    m.d.sync += [getattr(out, f"s{cl}").eq(nxt[cl]) for cl in CLASSES]
                    m.d.sync += [getattr(out, f"a{cl}").eq(nxt_a[cl]) for cl in CLASSES]
                    m.d.sync += [sums[cl].eq(0) for cl in CLASSES] + [act_sums[cl].eq(0) for cl in CLASSES]
                with m.Else():
                    m.d.sync += [sums[cl].eq(nxt[cl]) for cl in CLASSES]
                    m.d.sync += [act_sums[cl].eq(nxt_a[cl]) for cl in CLASSES]
        return m
