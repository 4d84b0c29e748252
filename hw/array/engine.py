"""Channel engine: one output channel at a time over a tile of pixels, from its weight row to its codes.

An engine (``docs/array_design.md``, decisions 1, 3-5) takes *row commands*: an output channel ``j`` of the
running layer with its row's first bit in the global buffer, its requant parameters (``M``, ``B``, ``M_r``),
the shortcut codes of the tile's pixels and how many pixels the tile has. For each, it

1. decodes the row (:class:`~hw.core.stream_decoder.RowStreamDecoder`, its own global-buffer requester):
   one entry ``(position p, class, code q)`` per non-zero weight, grouped by width class;
2. reads ``patch[p]``, the ``T = lanes * slots`` input codes of the tile's pixels at weight position ``p``
   (the patch memory is outside: ``patch_addr`` / ``patch_en`` in, ``patch_data`` the next cycle; the read
   port holds its data while ``patch_en`` is low);
3. broadcasts ``q`` to ``lanes`` :class:`~hw.dsp.segment_lane.SegmentDspLane` (one DSP48E1 each, ``slots``
   pixels per lane) in the lane mode of the entry's class and the layer's activation width; a pruned weight
   has no entry and costs no cycle, an all-pruned row one entry of zeros (``acc = 0``);
4. at each class segment's end the lanes give ``S`` and ``A`` per pixel, which move into a holding register
   (the lanes go on with the next segment); the *combine* takes them one pixel a cycle, multiplies by ``R_m`` in three conditional shift-adds (``R_4 = (1 + 2^4)(1 + 2^8)(1 + 2^16)``,
   ``R_8 = (1 + 2^8)(1 + 2^16)``, ``R_16 = 1 + 2^16``, ``R_32 = 1``; also ``R_m A`` for a signed layer) and
   adds into per-pixel accumulators ``X = sum_m R_m S_m``, ``A``, ``Y = sum_m R_m A_m`` (written, not
   added, by a row's first segment: no clearing);
5. with a row's last segment, each pixel's ``(X, A, Y)`` goes with its shortcut code and the channel's
   parameters into the :class:`~hw.array.requant.PixelRequantizer`, whose codes (or scores) leave on ``o``
   tagged ``(channel, pixel)``.

**Global pool before an FC** (``layer.gap``): the loader puts each input's 16-bit channel sum in pixel
slots 0 (low byte) and 1 (high byte) of the patch, and the layer runs at 8-bit activations; the combine adds
slot 1's sums times 256 into pixel 0's accumulators: ``q v = q lo + 256 q hi`` exactly, so pixel 0 gets the
FC's class sums over the pooled inputs (golden's ``global_sum_pool`` then ``layer_forward``).

Throughput: one entry per lane cycle count (``SegmentDspLane.cycles_per_entry``: 1 for 4-bit weights at
1-5-bit activations); the combine needs one cycle per pixel of each segment, which the lanes' output
register and the decoder's row start overlap with the next segment's entries; rows follow each other
without a gap in the lanes when the next command is waiting.

What is exact: the lanes' sums (``hw/dsp/segment_lane.py``), ``X``, ``A``, ``Y`` at the widths of
:mod:`hw.array.requant` (``X <= ACC_BOUND`` because ``R_m (2^m - 1) = D``), the requantizer. The engine
trusts the image's fields the decoder checks (``error``, sticky: the decoder stops and so does the engine).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.array.requant import A_BITS, BIAS_BITS, X_BITS, Y_BITS, PixelRequantizer
from hw.core.global_buffer import buffer_port_signature
from hw.core.stream_decoder import RowStreamDecoder, command_layout, layer_fields_layout
from hw.dsp.segment_lane import ACT_BITS_FIELD, DEFAULT_ACT_WIDTHS, SegmentDspLane
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_SHIFT, MULT_BITS

#: Pixel slots of one lane (the 4x4 broadcast plan packs 3 products per DSP48E1, ``hw/dsp/packing.py``).
LANE_SLOTS = 3
#: Bits of a global-pool sum split over two slots (``GAP_SUM_BITS``, two bytes).
GAP_SLOTS = 2


def engine_layer_layout() -> data.StructLayout:
    """What an engine needs of the running layer (hold while its rows run)."""
    return data.StructLayout({
        "stream": layer_fields_layout(),  # the decoder's fields
        "act_bits": unsigned(ACT_BITS_FIELD),  # lane mode: the input codes' width, 8 for a pooled FC
        "signed": unsigned(1),
        "residual": unsigned(1),
        "gap": unsigned(1),
        "shift": range(MAX_SHIFT + 1),
        "out_bits": range(MAX_ACT_BITS + 1),
    })


def row_command_layout(addr_width: int, channel_bits: int, pixels: int) -> data.StructLayout:
    """One row command: where the row starts, the channel, its parameters and the tile's shortcut codes."""
    return data.StructLayout({
        "start_bit": command_layout(addr_width)["start_bit"].shape,
        "channel": unsigned(channel_bits),
        "pixels": range(pixels + 1),  # pixels of the tile (1..T); the others are not emitted
        "mult": unsigned(MULT_BITS),
        "res_mult": unsigned(MULT_BITS),
        "bias": unsigned(BIAS_BITS),  # two's complement bits of B
        "r": data.ArrayLayout(MAX_ACT_BITS, pixels),  # shortcut codes (0 without a residual)
    })


def output_layout(channel_bits: int, pixels: int) -> data.StructLayout:
    return data.StructLayout({
        "value": signed(32),  # a code (zero-extended) or a score
        "channel": unsigned(channel_bits),
        "pixel": range(pixels),
    })


class ChannelEngine(wiring.Component):
    """Decoder, patch reads, ``lanes`` segment lanes, the combine and the requantizer of one engine.

    Parameters
    ----------
    lanes : int
        DSP48E1 lanes; the tile has ``T = lanes * LANE_SLOTS`` pixels.
    addr_width : int
        Word-address width of the global buffer.
    fan_in_width : int
        Positions (patch addresses) of up to ``2^fan_in_width - 1`` weights.
    channel_bits : int
        Width of the channel tag.
    act_widths : tuple of int
        Activation widths the lanes have a mode for (:class:`~hw.dsp.segment_lane.SegmentDspLane`).

    Members
    -------
    layer : In(engine_layer_layout())
    cmd : In(stream.Signature(row_command_layout(addr_width, channel_bits, T)))
    bus : Out(buffer_port_signature(addr_width))
        The decoder's global-buffer requests.
    patch_addr : Out(fan_in_width)
    patch_en : Out(1)
    patch_data : In(data.ArrayLayout(MAX_ACT_BITS, T))
        The patch row at ``patch_addr``, the cycle after ``patch_en``; held while ``patch_en`` is low.
    o : Out(stream.Signature(output_layout(channel_bits, T)))
    error : Out(1)
        The decoder found a corrupt row (sticky).
    busy : Out(1)
        A row is in the engine (from its command to its last pixel on ``o``).
    """

    def __init__(self, *, lanes: int, addr_width: int, fan_in_width: int, channel_bits: int,
                 act_widths=DEFAULT_ACT_WIDTHS):
        for name, value, lo in (("lanes", lanes, 1), ("addr_width", addr_width, 1),
                                ("fan_in_width", fan_in_width, 1), ("channel_bits", channel_bits, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {value!r}")
        self._lanes = lanes
        self._pixels = lanes * LANE_SLOTS
        self._addr_width = addr_width
        self._fan_in_width = fan_in_width
        self._channel_bits = channel_bits
        self._act_widths = tuple(act_widths)
        t = self._pixels
        super().__init__({
            "layer": In(engine_layer_layout()),
            "cmd": In(stream.Signature(row_command_layout(addr_width, channel_bits, t))),
            "bus": Out(buffer_port_signature(addr_width)),
            "patch_addr": Out(fan_in_width),
            "patch_en": Out(1),
            "patch_data": In(data.ArrayLayout(MAX_ACT_BITS, t)),
            "o": Out(stream.Signature(output_layout(channel_bits, t))),
            "error": Out(1),
            "busy": Out(1),
        })

    @property
    def pixels(self) -> int:
        """``T``: pixels of a tile."""
        return self._pixels

    def elaborate(self, platform):
        m = Module()
        t, lanes = self._pixels, self._lanes
        layer = self.layer
        pix_bits = max(ceil_log2(t), 1)

        # -- Row commands: the decoder, and the row's data for the combine -----------------------------
        m.submodules.decoder = dec = RowStreamDecoder(addr_width=self._addr_width,
                                                      fan_in_width=self._fan_in_width)
        wiring.connect(m, dec.bus, wiring.flipped(self.bus))
        m.d.comb += [dec.layer.eq(layer.stream), self.error.eq(dec.error)]
        row_layout = data.StructLayout({"channel": unsigned(self._channel_bits), "pixels": range(t + 1),
                                        "mult": unsigned(MULT_BITS), "res_mult": unsigned(MULT_BITS),
                                        "bias": unsigned(BIAS_BITS), "r": data.ArrayLayout(MAX_ACT_BITS, t)})
        m.submodules.rows = rows = SyncFIFOBuffered(width=row_layout.size, depth=4)
        cmd = self.cmd.payload
        m.d.comb += [
            dec.cmd.valid.eq(self.cmd.valid & rows.w_rdy),
            dec.cmd.payload.start_bit.eq(cmd.start_bit),
            self.cmd.ready.eq(rows.w_rdy & dec.cmd.ready),
            rows.w_en.eq(self.cmd.valid & rows.w_rdy & dec.cmd.ready),
            rows.w_data.eq(Cat(cmd.channel, cmd.pixels, cmd.mult, cmd.res_mult, cmd.bias, cmd.r)),
        ]
        row = data.View(row_layout, rows.r_data)

        # -- Fetch: the entry waits here while its patch row is read ---------------------------------------
        f_valid = Signal()
        f = Signal.like(dec.o.payload, name="f_entry")
        take = Signal()  # the lanes take the entry in F
        f_adv = Signal()
        m.d.comb += [f_adv.eq(~f_valid | take), dec.o.ready.eq(f_adv),
                     self.patch_addr.eq(dec.o.payload.position), self.patch_en.eq(f_adv)]
        with m.If(f_adv):
            m.d.sync += [f_valid.eq(dec.o.valid), f.eq(dec.o.payload)]

        # -- Lanes ---------------------------------------------------------------------------------------
        seg_layout = data.StructLayout({"cls": unsigned(2), "first": unsigned(1), "last": unsigned(1)})
        m.submodules.segs = segs = SyncFIFOBuffered(width=seg_layout.size, depth=8)
        lane_list = []
        for k in range(lanes):
            lane = SegmentDspLane(LANE_SLOTS, act_widths=self._act_widths)
            m.submodules[f"lane{k}"] = lane
            lane_list.append(lane)
            m.d.comb += [
                lane.i.valid.eq(f_valid & segs.w_rdy),
                lane.i.payload.cls.eq(f.cls),
                lane.i.payload.code.eq(f.code),
                lane.i.payload.act_bits.eq(layer.act_bits),
                lane.i.payload.end.eq(f.seg_end),
            ]
            for s in range(LANE_SLOTS):
                m.d.comb += lane.i.payload.u[s].eq(Mux(f.empty, 0, self.patch_data[k * LANE_SLOTS + s]))
        lead = lane_list[0]  # every lane sees the same entries and modes: they move in lockstep
        m.d.comb += take.eq(f_valid & segs.w_rdy & lead.i.ready)
        row_open = Signal()  # a segment of the current row has gone into the FIFO
        seg_w = data.View(seg_layout, segs.w_data)
        m.d.comb += [segs.w_en.eq(take & f.seg_end), seg_w.cls.eq(f.cls), seg_w.first.eq(~row_open),
                     seg_w.last.eq(f.last)]
        with m.If(take & f.seg_end):
            m.d.sync += row_open.eq(~f.last)

        # -- Combine: one pixel of a finished segment a cycle ------------------------------------------
        m.submodules.requant = rq = PixelRequantizer(tag_bits=self._channel_bits + pix_bits)
        m.d.comb += [rq.shift.eq(layer.shift), rq.out_bits.eq(layer.out_bits),
                     rq.signed_layer.eq(layer.signed), rq.residual.eq(layer.residual)]
        c_adv = Signal()
        m.d.comb += c_adv.eq(rq.i.ready)
        # The lanes' segment sums move into a holding register at once, so that the lanes go on with the next
        # segment while the combine takes this one pixel by pixel.
        s_shape = lead.o.payload.s[0].shape()
        a_shape = lead.o.payload.a[0].shape()
        held_valid = Signal()
        held_s = Signal(data.ArrayLayout(s_shape, t))
        held_a = Signal(data.ArrayLayout(a_shape, t))
        seg = Signal(seg_layout)  # the held segment's class and position in its row
        k = Signal(range(t))
        n_last = Signal(range(t))  # the segment's last pixel to combine
        m.d.comb += n_last.eq(Mux(layer.gap, GAP_SLOTS - 1, row.pixels - 1))
        start = Signal()
        m.d.comb += start.eq(held_valid & rows.r_rdy & c_adv)
        at_end = Signal()
        m.d.comb += at_end.eq(k == n_last)
        release = start & at_end
        capture = Signal()
        m.d.comb += capture.eq(lead.o.valid & segs.r_rdy & (~held_valid | release))
        for lane in lane_list:
            m.d.comb += lane.o.ready.eq(capture)
        m.d.comb += [segs.r_en.eq(capture), rows.r_en.eq(release & seg.last)]
        with m.If(capture):
            m.d.sync += [held_valid.eq(1), seg.eq(segs.r_data)]
            for kk in range(t):
                lane = lane_list[kk // LANE_SLOTS]
                m.d.sync += [held_s[kk].eq(lane.o.payload.s[kk % LANE_SLOTS]),
                             held_a[kk].eq(lane.o.payload.a[kk % LANE_SLOTS])]
        with m.Elif(release):
            m.d.sync += held_valid.eq(0)
        with m.If(start):
            m.d.sync += k.eq(Mux(at_end, 0, k + 1))

        # Stage C0 -> C1: select pixel k's sums, the row's data for it.
        s_sel = Signal(s_shape)
        a_sel = Signal(a_shape)
        m.d.comb += [s_sel.eq(held_s[k]), a_sel.eq(held_a[k])]
        r_sel = Signal(MAX_ACT_BITS)
        m.d.comb += r_sel.eq(row.r[k])
        # In gap mode slot 1 holds the high bytes: weight 256, into pixel 0.
        s_in = Mux(layer.gap & (k == 1), s_sel << 8, s_sel)
        a_in = Mux(layer.gap & (k == 1), a_sel << 8, a_sel)
        dest = Mux(layer.gap, 0, k)
        emit = seg.last & Mux(layer.gap, k == GAP_SLOTS - 1, 1)
        first = seg.first & ~(layer.gap & (k != 0))  # slot 1 of a pooled input adds to slot 0's sums

        side_layout = data.StructLayout({
            "valid": unsigned(1), "cls": unsigned(2), "first": unsigned(1), "emit": unsigned(1),
            "dest": range(t), "r": unsigned(MAX_ACT_BITS), "channel": unsigned(self._channel_bits),
            "mult": unsigned(MULT_BITS), "res_mult": unsigned(MULT_BITS), "bias": unsigned(BIAS_BITS),
        })
        side = [Signal(side_layout, name=f"c{n}") for n in range(1, 4)]
        sv = [Signal(X_BITS, name=f"cs{n}") for n in range(1, 4)]  # R_m S in the making
        av = [Signal(A_BITS, name=f"ca{n}") for n in range(1, 4)]  # A, unchanged
        yv = [Signal(Y_BITS, name=f"cy{n}") for n in range(1, 4)]  # R_m A in the making (signed layers)
        with m.If(c_adv):
            m.d.sync += [
                side[0].valid.eq(start), side[0].cls.eq(seg.cls), side[0].first.eq(first),
                side[0].emit.eq(emit), side[0].dest.eq(dest), side[0].r.eq(r_sel),
                side[0].channel.eq(row.channel), side[0].mult.eq(row.mult), side[0].res_mult.eq(row.res_mult),
                side[0].bias.eq(row.bias),
                side[1].eq(side[0]), side[2].eq(side[1]),
            ]
            # R_m by three conditional shift-adds: class 0 (4 bits) adds << 4, classes <= 1 << 8, <= 2 << 16.
            for n, (shift, upto) in enumerate(((4, 0), (8, 1), (16, 2))):
                s_prev = s_in if n == 0 else sv[n - 1]
                y_prev = a_in if n == 0 else yv[n - 1]
                cls = seg.cls if n == 0 else side[n - 1].cls
                m.d.sync += [sv[n].eq(s_prev + Mux(cls <= upto, s_prev << shift, 0)),
                             yv[n].eq(y_prev + Mux(cls <= upto, y_prev << shift, 0)),
                             av[n].eq(a_in if n == 0 else av[n - 1])]

        # Stage C4: the per-pixel accumulators (asynchronous read, written in the same cycle).
        acc_layout = data.StructLayout({"x": unsigned(X_BITS), "a": unsigned(A_BITS), "y": unsigned(Y_BITS)})
        m.submodules.accs = accs = Memory(shape=acc_layout, depth=t, init=[])
        rd = accs.read_port(domain="comb")
        wr = accs.write_port()
        last = side[2]
        m.d.comb += rd.addr.eq(last.dest)
        x_new = Mux(last.first, sv[2], rd.data.x + sv[2])
        a_new = Mux(last.first, av[2], rd.data.a + av[2])
        y_new = Mux(last.first, yv[2], rd.data.y + yv[2])
        m.d.comb += [wr.addr.eq(last.dest), wr.data.x.eq(x_new), wr.data.a.eq(a_new), wr.data.y.eq(y_new),
                     wr.en.eq(c_adv & last.valid)]
        m.d.comb += [
            rq.i.valid.eq(last.valid & last.emit),
            rq.i.payload.x.eq(x_new), rq.i.payload.a.eq(a_new), rq.i.payload.y.eq(y_new),
            rq.i.payload.r.eq(last.r), rq.i.payload.mult.eq(last.mult), rq.i.payload.res_mult.eq(last.res_mult),
            rq.i.payload.bias.eq(last.bias), rq.i.payload.tag.eq(Cat(last.dest, last.channel)),
        ]
        # c_adv is rq.i.ready, which does not depend on rq.i.valid: C4 moves when the requantizer can take.

        m.d.comb += [
            self.o.valid.eq(rq.o.valid), rq.o.ready.eq(self.o.ready),
            self.o.payload.value.eq(rq.o.payload.value),
            self.o.payload.pixel.eq(rq.o.payload.tag[:pix_bits]),
            self.o.payload.channel.eq(rq.o.payload.tag[pix_bits:]),
        ]
        # Outputs owed: a tile's pixels (one for a pooled FC) per accepted command, one less per output.
        owed = Signal(16)
        taken = self.cmd.valid & self.cmd.ready
        gone = self.o.valid & self.o.ready
        m.d.sync += owed.eq(owed + Mux(taken, Mux(layer.gap, 1, cmd.pixels), 0) - gone)
        m.d.comb += self.busy.eq(owed != 0)
        return m
