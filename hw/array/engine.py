"""Channel engine: one output channel at a time over a tile of pixels, from its weight row to its codes.

An engine (``docs/array_design.md``) takes *row commands*: an output channel ``j`` of the running layer with
its row's first bit in the global buffer and the bit after its last, its requant parameters (``M``, ``B``,
``M_r``), the shortcut codes of the tile's pixels and how many pixels the tile has. For each, it

1. decodes the row (:class:`~hw.core.stream_decoder.RowStreamDecoder`, its own global-buffer requester):
   one entry ``(position p, class, code q)`` per non-zero weight, grouped by width class (*segments*);
2. turns each segment into the *passes* of its lanes (:class:`~hw.array.pass_sequencer.PassSequencer`): one
   pair pass for 4- and 8-bit weights at 1-4-bit activations; in a DoReFa row one *merged* single pass per
   pixel slot for all its other weights (the lanes weight each by its ``R_m``, a 32-bit one in two cycles),
   in a signed row one single pass per class, 16-bit chunk and pixel slot; replayed from a small memory;
3. reads ``patch[p]``, the ``T = 2 lanes`` input codes of the tile's pixels at weight position ``p`` (the
   patch memory is outside: ``patch_addr`` / ``patch_en`` in, ``patch_data`` the next cycle; the read port
   holds its data while ``patch_en`` is low);
4. broadcasts the entry's *lane weight* ``b`` (:func:`lane_weight`: ``v = 2 q - D_m - s``, or a 32-bit
   weight's chunk of it, formed once here) to ``lanes`` :class:`~hw.dsp.pass_lane.PassDspLane` (one DSP48E1
   each; lane ``k`` holds pixels ``2k`` and ``2k + 1``), whose P registers sum the whole pass; a pruned weight
   has no entry and costs no cycle, an all-pruned row one entry of lane weight 0 (``acc = 0``);
5. at each pass's end the lanes' P words move into a holding register (the lanes go on with the next pass);
   the *combine* takes two lanes a cycle on two paths (path ``q`` lane ``2m + q``: after a pair pass its slot
   ``s`` in step ``2m + s``, after a single pass of group ``g`` its slot ``g`` in step ``m``, so pixel
   ``4m + 2q + s`` either way), takes each pixel's signed sum out of its lane's P word (a pair pass's low field
   sign-extended, the high one plus its borrow; a chunk-1 sum weighted by ``2^16``), multiplies by ``R_m`` in
   three conditional shift-adds (``R_4 = (1 + 2^4)(1 + 2^8)(1 + 2^16)``, ``R_8 = (1 + 2^8)(1 + 2^16)``,
   ``R_16 = 1 + 2^16``, ``R_32 = 1``) and adds into the path's bank of per-pixel accumulators
   ``X = sum_m R_m sum v u``, which is golden's ``acc = 2 sum_m R_m S_m - D A - sum_m R_m A_m`` (written, not
   added, by the row's first pass into the pixel's slot: no clearing); a DoReFa layer's 4- and 8-bit entries
   share one pass (the sequencer promotes 4-bit codes exactly: ``q R_4 = 17 q R_8``);
6. the row's last pass into a pixel passes its ``X`` into FIFO ``pixel mod 4``; the *emitter* takes
   the tile's pixels in order (pixel ``i`` from FIFO ``i mod 4``: a single pass's last chunk gives the even
   pixels before the odd ones) with their shortcut codes and the channel's parameters into the
   :class:`~hw.array.requant.PixelRequantizer`, whose codes (or scores) leave on ``o`` tagged
   ``(channel, pixel)``.

**Global pool before an FC** (``layer.gap``): the loader puts each input's 16-bit channel sum in pixels 0
(low byte) and 1 (high byte) of the patch, lane 0's two slots, and the layer runs at 8-bit activations (single
passes); the combine adds group 1's sums times 256 into pixel 0's accumulators: ``b U = b lo + 256 b hi``
exactly for the lane weight ``b`` of the pooled sum ``U``, so pixel 0 gets the FC's class sums over the pooled inputs (golden's ``global_sum_pool`` then
``layer_forward``).

**Vertical-layered layers** (image version 4, ``layer.vertical``): the rows come from the
:class:`~hw.array.plane_decoder.PlaneRowDecoder` instead (the row command's ``start_bit`` is then the row's
first weight ``j fan_in``, and ``negate`` its requant group's flag): it reads the base region and only the
planes of the run's width and emits the weights whose code is non-zero at that width, as the signed class-8
(edges: class-16) layer golden materializes; the same ``K_t`` of every weight (Eq. 6) is added once per
pixel by the requantizer from the pixel's activation sum over the whole patch (``usum``, summed by the patch
loader), so a weight that is zero at the run's width costs no lane cycle.

Throughput: per entry 1 lane cycle for two pixels at 4/8-bit weights and 1-4-bit activations, 2 at 16 bits
or 5-8-bit activations, 4 for 32-bit weights (``hw/dsp/pass_lane.py``); the combine two pixels a cycle
(``pixels / 2`` cycles after a pair pass, ``pixels / 4`` after a single one), overlapped with the lanes'
next pass; the emitter one pixel a cycle, overlapped with the next row. So a row costs at least ``pixels``
cycles (its outputs), and more when its passes are longer.

What is exact: the lanes' pass sums (``hw/dsp/pass_lane.py``), ``X`` at the width of :mod:`hw.array.requant`
(``|X| <= X_BOUND`` because ``-(D + R_m) <= R_m v <= D``, and a 32-bit weight's chunk parts stay within
``(D + R_4) u``: :mod:`hw.array.requant`), the
requantizer. The engine trusts the image's fields the decoder checks (``error``, sticky:
the decoder stops and so does the engine).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.array.pass_sequencer import WIDE_CLASS, PassSequencer, record_layout, row_info_layout
from hw.array.patch_loader import DIM_BITS
from hw.array.plane_decoder import PlaneRowDecoder, plane_layer_layout
from hw.array.requant import A_BITS, BIAS_BITS, MAX_COMP_SHIFT, X_BITS, PixelRequantizer
from hw.core.global_buffer import buffer_port_signature
from hw.core.stream_decoder import RowStreamDecoder, command_layout, layer_fields_layout
from hw.dsp.packing import CHUNK_BITS, P_BITS
from hw.dsp.pass_lane import A_SPREAD, ACT_BITS_FIELD, PAIR_SHIFT, SLOTS, PassDspLane, entry_layout
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_SHIFT, MULT_BITS

#: Pixel slots of one lane (a pass lane's two: ``hw/dsp/pass_lane.py``).
LANE_SLOTS = SLOTS


def engine_layer_layout() -> data.StructLayout:
    """What an engine needs of the running layer (hold while its rows run)."""
    return data.StructLayout({
        "stream": layer_fields_layout(),  # the version 3 decoder's fields
        "vertical": unsigned(1),  # a version 4 layer: rows from the plane decoder
        "planes": plane_layer_layout(),  # the plane decoder's fields
        "comp_shift": range(MAX_COMP_SHIFT + 1),  # t of a compensated vertical layer (0: none)
        "act_bits": unsigned(ACT_BITS_FIELD),  # lane mode: the input codes' width, 8 for a pooled FC
        "signed": unsigned(1),
        "residual": unsigned(1),
        "gap": unsigned(1),
        "shift": range(MAX_SHIFT + 1),
        "out_bits": range(MAX_ACT_BITS + 1),
    })


def row_command_layout(addr_width: int, channel_bits: int, pixels: int) -> data.StructLayout:
    """One row command: where the row starts, the channel, its parameters, its tile and patch bank."""
    return data.StructLayout({
        # Version 3: the row's first bit in the global buffer; version 4 (``layer.vertical``): the row's
        # first weight in the layer, ``j fan_in`` (the plane decoder's ``first``).
        "start_bit": command_layout(addr_width)["start_bit"].shape,
        # Version 3: the bit after the row's last (its fetcher reads no word past it); version 4: unused.
        "end_bit": command_layout(addr_width)["end_bit"].shape,
        "negate": unsigned(1),  # version 4: the row's codes (and compensation) are negated
        "channel": unsigned(channel_bits),
        "pixels": range(pixels + 1),  # pixels of the tile (1..T); the others are not emitted
        "mult": unsigned(MULT_BITS),
        "res_mult": unsigned(MULT_BITS),
        "bias": unsigned(BIAS_BITS),  # two's complement bits of B
        "bank": unsigned(1),  # the patch bank of the row's tile (tiles overlap: hw/array/controller.py)
        "tile": tile_layout(),  # the row's tile, passed on with its outputs to the map writer
    })


def tile_layout() -> data.StructLayout:
    """Where a row's tile lies in the output map (the map writer's address of its outputs)."""
    return data.StructLayout({"y": unsigned(DIM_BITS), "rows": unsigned(DIM_BITS)})


def output_layout(channel_bits: int, pixels: int) -> data.StructLayout:
    return data.StructLayout({
        "value": signed(32),  # a code (zero-extended) or a score
        "channel": unsigned(channel_bits),
        "pixel": range(pixels),
        "last": unsigned(1),  # the row's last pixel
        "tile": tile_layout(),
    })


def select(m: Module, index, pairs, n: int) -> None:
    """``out = array[index]`` for each ``(out, array)`` of ``n`` elements, as one case statement: Yosys maps it
    to a multiplexer tree, where a variable part-select (``array[index * w +: w]``) becomes a barrel shifter
    over the whole array."""
    with m.Switch(index):
        for k in range(n):
            with m.Case(k):
                m.d.comb += [out.eq(array[k]) for out, array in pairs]


def lane_weight(m: Module, entry, layer):
    """The lane weight of a pass entry (:func:`hw.dsp.pass_lane.lane_weight`): ``v = 2 q - D_m - s`` of its
    code in the class its pass weighs it by (the record's, or the 16-bit class for an ``A_SPREAD`` entry of a
    merged pass), a 32-bit one's chunk ``entry.chunk``, 0 for an all-pruned row's entry. One subtraction per
    engine (the lanes take it as it is)."""
    dcls = Mux(entry.a_mode == A_SPREAD, CLASS_WIDTHS.index(16), entry.rec.cls)
    d_m = Signal(32, name="lane_d")  # D_m = 2^m - 1
    with m.Switch(dcls):
        for c, width in enumerate(CLASS_WIDTHS):
            with m.Case(c):
                m.d.comb += d_m.eq((1 << width) - 1)
    v = Signal(signed(34), name="lane_v")
    m.d.comb += v.eq((entry.code << 1) - d_m - layer.signed)
    chunk = Mux(entry.chunk, v >> CHUNK_BITS, v[:CHUNK_BITS])
    return Mux(entry.empty, 0, Mux(dcls == WIDE_CLASS, chunk, v))


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
    vertical : bool
        Build the version 4 path (the plane decoder; ``layer.vertical`` selects it). Without it the engine
        runs version 3 rows only (smaller; the array's controller then refuses version 4 images).

    Members
    -------
    layer : In(engine_layer_layout())
    cmd : In(stream.Signature(row_command_layout(addr_width, channel_bits, T)))
    bus : Out(buffer_port_signature(addr_width))
        The decoder's global-buffer requests.
    patch_addr : Out(fan_in_width)
    patch_bank : Out(1)
    patch_en : Out(1)
    patch_data : In(data.ArrayLayout(MAX_ACT_BITS, T))
        The patch row at ``patch_addr`` of bank ``patch_bank`` (the bank of the row being read: the next
        tile's rows may start while this tile's last ones finish), the cycle after ``patch_en``; held while
        ``patch_en`` is low.
    usum : In(data.ArrayLayout(A_BITS, T))
        Each pixel's activation sum over the whole patch (a compensated vertical layer's ``U``; read only in a
        build with ``vertical``; hold while the tile's rows run).
    o : Out(stream.Signature(output_layout(channel_bits, T)))
    error : Out(1)
        The decoder found a corrupt row (sticky).
    busy : Out(1)
        A row is in the engine (from its command to its last pixel on ``o``).
    holds : Out(2)
        Per patch bank: a row of that bank is in the engine and has not yet gone into the requantizer (its
        patch reads are over once it has: the controller reloads a bank only when no engine holds it).
    """

    def __init__(self, *, lanes: int, addr_width: int, fan_in_width: int, channel_bits: int, vertical: bool = True):
        for name, value, lo in (("lanes", lanes, 1), ("addr_width", addr_width, 1),
                                ("fan_in_width", fan_in_width, 1), ("channel_bits", channel_bits, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {value!r}")
        self._lanes = lanes
        self._pixels = lanes * LANE_SLOTS
        self._addr_width = addr_width
        self._fan_in_width = fan_in_width
        self._channel_bits = channel_bits
        self._vertical = bool(vertical)
        t = self._pixels
        super().__init__({
            "layer": In(engine_layer_layout()),
            "cmd": In(stream.Signature(row_command_layout(addr_width, channel_bits, t))),
            "bus": Out(buffer_port_signature(addr_width)),
            "patch_addr": Out(fan_in_width),
            "patch_bank": Out(1),
            "patch_en": Out(1),
            "patch_data": In(data.ArrayLayout(MAX_ACT_BITS, t)),
            "usum": In(data.ArrayLayout(A_BITS, t)),
            "o": Out(stream.Signature(output_layout(channel_bits, t))),
            "error": Out(1),
            "busy": Out(1),
            "holds": Out(2),
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

        # -- Row commands: the decoder; the row's pixel count for the sequencer; its data for the emitter --
        # Version 3 rows from the stream decoder, version 4 rows from the plane decoder (``layer.vertical``);
        # both are global-buffer requesters on the engine's bus, only the running layer's one asks.
        m.submodules.decoder = dec = RowStreamDecoder(addr_width=self._addr_width,
                                                      fan_in_width=self._fan_in_width)
        m.d.comb += [dec.bus.data.eq(self.bus.data), dec.layer.eq(layer.stream)]
        if self._vertical:
            m.submodules.planes = pdec = PlaneRowDecoder(addr_width=self._addr_width,
                                                         fan_in_width=self._fan_in_width)
            vert = layer.vertical
            m.d.comb += [
                self.bus.req.eq(Mux(vert, pdec.bus.req, dec.bus.req)),
                self.bus.addr.eq(Mux(vert, pdec.bus.addr, dec.bus.addr)),
                dec.bus.grant.eq(self.bus.grant & ~vert), pdec.bus.grant.eq(self.bus.grant & vert),
                pdec.bus.data.eq(self.bus.data), pdec.layer.eq(layer.planes),
                self.error.eq(dec.error | pdec.error),
            ]
        else:  # built without version 4 support: the stream decoder alone (``layer.vertical`` is ignored)
            m.d.comb += [self.bus.req.eq(dec.bus.req), self.bus.addr.eq(dec.bus.addr),
                         dec.bus.grant.eq(self.bus.grant), self.error.eq(dec.error)]
        row_layout = data.StructLayout({"channel": unsigned(self._channel_bits), "pixels": range(t + 1),
                                        "mult": unsigned(MULT_BITS), "res_mult": unsigned(MULT_BITS),
                                        "bias": unsigned(BIAS_BITS), "negate": unsigned(1), "bank": unsigned(1),
                                        "tile": tile_layout()})
        m.submodules.rows = rows = SyncFIFOBuffered(width=row_layout.size, depth=4)
        info_layout = row_info_layout(t)
        m.submodules.row_pixels = row_pixels = SyncFIFOBuffered(width=info_layout.size, depth=4)
        cmd = self.cmd.payload
        accept = Signal()
        offer = self.cmd.valid & rows.w_rdy & row_pixels.w_rdy
        # (ready does not look at valid: the controller offers a command to an engine that is ready)
        if self._vertical:
            m.d.comb += [
                self.cmd.ready.eq(rows.w_rdy & row_pixels.w_rdy & Mux(vert, pdec.cmd.ready, dec.cmd.ready)),
                dec.cmd.valid.eq(offer & ~vert),
                pdec.cmd.valid.eq(offer & vert),
                pdec.cmd.payload.first.eq(cmd.start_bit), pdec.cmd.payload.negate.eq(cmd.negate),
            ]
        else:
            m.d.comb += [self.cmd.ready.eq(rows.w_rdy & row_pixels.w_rdy & dec.cmd.ready), dec.cmd.valid.eq(offer)]
        m.d.comb += [
            accept.eq(self.cmd.valid & self.cmd.ready),
            dec.cmd.payload.start_bit.eq(cmd.start_bit), dec.cmd.payload.end_bit.eq(cmd.end_bit),
            rows.w_en.eq(accept), row_pixels.w_en.eq(accept),
            rows.w_data.eq(Cat(cmd.channel, cmd.pixels, cmd.mult, cmd.res_mult, cmd.bias, cmd.negate, cmd.bank,
                               cmd.tile)),
            row_pixels.w_data.eq(Cat(cmd.pixels, cmd.bank)),
        ]
        row = data.View(row_layout, rows.r_data)
        # Rows held per patch bank: from the command to the row's last pixel into the requantizer.
        # (a row leaves when the emitter takes its last pixel: rows.r_en, below)
        held_rows = [Signal(range(16), name=f"held_rows{b}") for b in range(2)]
        for b in range(2):
            m.d.sync += held_rows[b].eq(held_rows[b] + (accept & (cmd.bank == b)) - (rows.r_en & (row.bank == b)))
            m.d.comb += self.holds[b].eq(held_rows[b] != 0)

        # -- Passes: the sequencer replays segments that take more than one pass -------------------------
        m.submodules.sequencer = seq = PassSequencer(fan_in_width=self._fan_in_width, pixels=t)
        m.d.comb += [seq.act_bits.eq(layer.act_bits), seq.gap.eq(layer.gap), seq.signed.eq(layer.signed),
                     seq.rows.valid.eq(row_pixels.r_rdy), seq.rows.payload.eq(row_pixels.r_data),
                     row_pixels.r_en.eq(seq.rows.ready)]
        if self._vertical:
            m.d.comb += [
                seq.i.valid.eq(Mux(vert, pdec.o.valid, dec.o.valid)),
                seq.i.payload.eq(Mux(vert, pdec.o.payload.as_value(), dec.o.payload.as_value())),
                dec.o.ready.eq(seq.i.ready & ~vert), pdec.o.ready.eq(seq.i.ready & vert),
            ]
        else:
            m.d.comb += [seq.i.valid.eq(dec.o.valid), seq.i.payload.eq(dec.o.payload.as_value()),
                         dec.o.ready.eq(seq.i.ready)]

        # -- Fetch: the entry waits here while its patch row is read ---------------------------------------
        f_valid = Signal()
        f = Signal.like(seq.o.payload, name="f_entry")
        f_b = Signal(entry_layout()["b"].shape, name="f_b")  # its lane weight
        take = Signal()  # the lanes take the entry in F
        f_adv = Signal()
        # A residual row's shortcut codes are patch row fan_in + channel of its bank (the loader's "Shortcut
        # rows"). The engine reads that row into `r_word` once the row is the emitter's (its bank is held until
        # its last pixel is emitted), in a cycle in which F is empty or handing its entry to the lanes: the
        # read port is then not holding an entry's codes, F takes no entry in that cycle and the next one's
        # read follows (one cycle a residual row).
        # If F holds an entry the lanes cannot take, the read goes ahead anyway (`f_lost`): the lanes may be
        # waiting for the holding register, the combine for the emitter and the emitter for these shortcut
        # codes, so waiting for F to empty would be a deadlock (random networks drawn as bench fuzz draws them
        # found it on one engine, 2026-12-05). The port then re-reads F's row in the next cycle, in which the
        # lanes take nothing.
        r_word = Signal(data.ArrayLayout(MAX_ACT_BITS, t))
        r_valid = Signal()  # r_word holds the emitter's row's codes
        r_wait = Signal()  # read in the cycle before: the codes are on patch_data
        steal = Signal()
        f_lost = Signal()  # a shortcut read took the port from F's waiting entry: re-read it now, no take
        f_free = ~f_valid | take  # F holds no entry after this cycle unless it takes one
        m.d.comb += [
            steal.eq(rows.r_rdy & layer.residual & ~r_valid & ~r_wait & ~f_lost),
            f_adv.eq(f_free & ~steal), seq.o.ready.eq(f_adv),
            self.patch_addr.eq(Mux(steal, layer.stream.fan_in + row.channel,
                                   Mux(f_lost, f.position, seq.o.payload.position))),
            self.patch_bank.eq(Mux(steal, row.bank, Mux(f_lost, f.bank, seq.o.payload.bank))),
            self.patch_en.eq(f_adv | steal | f_lost),
        ]
        m.d.sync += [r_wait.eq(steal), f_lost.eq(steal & ~f_free)]
        with m.If(r_wait):
            m.d.sync += [r_word.eq(self.patch_data), r_valid.eq(1)]
        with m.Elif(rows.r_en):
            m.d.sync += r_valid.eq(0)
        b_next = lane_weight(m, seq.o.payload, layer)
        with m.If(f_adv):
            m.d.sync += [f_valid.eq(seq.o.valid), f.eq(seq.o.payload), f_b.eq(b_next)]
        with m.Elif(take):
            m.d.sync += f_valid.eq(0)

        # -- Lanes: lane k holds pixels 2k (slot 0) and 2k + 1 (slot 1) ----------------------------------
        rec_layout = record_layout(t)
        m.submodules.recs = recs = SyncFIFOBuffered(width=rec_layout.size, depth=8)
        lane_list = []
        for k in range(lanes):
            # (lanes 1 .. lanes - 1 follow lane 0's pipeline control: they take the same entries and transfers)
            lane = PassDspLane(leader=lane_list[0] if lane_list else None)
            m.submodules[f"lane{k}"] = lane
            lane_list.append(lane)
            m.d.comb += [
                lane.i.valid.eq(f_valid & recs.w_rdy & ~f_lost),
                lane.i.payload.b.eq(f_b),
                lane.i.payload.pair.eq(f.rec.pair),
                lane.i.payload.a_mode.eq(f.a_mode),
                lane.i.payload.group.eq(f.rec.group),
                lane.i.payload.end.eq(f.end),
            ]
            for s in range(SLOTS):
                m.d.comb += lane.i.payload.u[s].eq(self.patch_data[k * SLOTS + s])
        lead = lane_list[0]  # every lane sees the same entries: they move in lockstep
        m.d.comb += [take.eq(f_valid & recs.w_rdy & ~f_lost & lead.i.ready),
                     recs.w_en.eq(take & f.end), recs.w_data.eq(f.rec)]

        # -- Combine: two lanes of a finished pass a cycle ---------------------------------------------------
        # Path q takes lane 2m + q: after a pair pass slot s of it in step n = 2m + s, after a single pass of
        # group g its slot g in step n = m; either way its pixel is 4m + 2q + s (s = g in a single pass), so a
        # pair pass takes about T / 2 steps and a single one T / 4. Under gap, pixel 0 alone (path 0, lane 0).
        c_adv = Signal()
        # The lanes' pass sums move into a holding register at once (the lanes go on with the next pass).
        held_valid = Signal()
        held_p = Signal(data.ArrayLayout(signed(P_BITS), lanes))
        rec = Signal(rec_layout)  # the held pass's record
        n = Signal(range(t))
        n_last = Signal(range(t))
        top = Signal(range(t))  # the pass's last pixel of path 0's kind: pixels - 1 (minus g in a single pass)
        m.d.comb += [top.eq(rec.pixels - 1 - Mux(rec.pair, 0, rec.group)),
                     n_last.eq(Mux(layer.gap, 0, Mux(rec.pair, ((top >> 2) << 1) | (top[:2] != 0), top >> 2)))]
        start = Signal()
        m.d.comb += start.eq(held_valid & c_adv)
        release = Signal()
        m.d.comb += release.eq(start & (n == n_last))
        capture = Signal()
        m.d.comb += capture.eq(lead.o.valid & recs.r_rdy & (~held_valid | release))
        for lane in lane_list:
            m.d.comb += lane.o.ready.eq(capture)
        m.d.comb += recs.r_en.eq(capture)
        with m.If(capture):
            m.d.sync += [held_valid.eq(1), rec.eq(recs.r_data)]
            for kk, lane in enumerate(lane_list):
                m.d.sync += held_p[kk].eq(lane.o.payload.p)
        with m.Elif(release):
            m.d.sync += held_valid.eq(0)
        with m.If(start):
            m.d.sync += n.eq(Mux(n == n_last, 0, n + 1))

        # Stage CP: each path's lane 2m + q picked in two steps, so that no step is a wide multiplexer (at 42
        # lanes the two paths' 21-way selects of a 48-bit word, in one stage with the field extraction, cost
        # about 0.9 k LUT an engine in Yosys 0.23; 0.6 k this way: docs/array_design.md, "Wide multiplexers"):
        # here lane m mod 4 of each group of four, one LUT6 a bit (two select bits, four words), registered; in
        # stage C0 the group, m / 4, among the path's group words (ceil(lanes / 8) on path 0, path 1 may have
        # one fewer). Stage CP also registers what stage C0 reads of the pass and the step.
        # Stage C0: each path's pixel sum out of its lane's word. A pair pass has slot 0's signed sum in P's low
        # PAIR_SHIFT bits (sign-extended) and slot 1's above them, plus the borrow the low field took
        # (hw/dsp/pass_lane.py); a single pass all of P, weighted by its chunk (2^16). Under gap, group 1
        # carries pixel 0's high bytes: weight 256.
        half = Signal(range(t))  # m
        slot = Signal()
        m.d.comb += [half.eq(Mux(rec.pair, n >> 1, n)), slot.eq(Mux(rec.pair, n[0], rec.group))]
        hi = layer.gap & rec.group
        first = rec.first.as_value().bit_select(Mux(layer.gap, 0, slot), 1)
        pair_lanes = -(-lanes // 2)
        side_layout = data.StructLayout({
            "valid": unsigned(1), "cls": unsigned(2), "final": unsigned(1), "addr": range(max(pair_lanes * 2, 1)),
            "fifo": unsigned(2), "first": unsigned(1),
        })
        # What stage C0 needs of the step besides the side fields: the group m / 4, the field and its weights.
        pick_layout = data.StructLayout({"group": range(max(-(-pair_lanes // 4), 1)), "pair": unsigned(1),
                                         "slot": unsigned(1), "chunk": unsigned(1), "hi": unsigned(1)})
        # side[q][0] / s0: the pixel's sum as taken out (its own stage: the lane select and the field selection
        # stay off the first adder's path); then three stages of R_m.
        pick_side = [Signal(side_layout, name=f"cp{q}") for q in range(2)]
        pick = Signal(pick_layout)  # (alike for both paths)
        side = [[Signal(side_layout, name=f"c{q}_{k}") for k in range(4)] for q in range(2)]
        s0 = [Signal(signed(X_BITS), name=f"cs{q}_0") for q in range(2)]
        sv = [[Signal(signed(X_BITS), name=f"cs{q}_{k}") for k in range(1, 4)] for q in range(2)]  # R_m S
        with m.If(c_adv):
            m.d.sync += [pick.group.eq(half >> 2), pick.pair.eq(rec.pair), pick.slot.eq(slot),
                         pick.chunk.eq(rec.chunk), pick.hi.eq(hi)]
        for q in range(2):
            group_of = [k for k in range(lanes) if k % 2 == q]  # path q's lanes, lane 2m + q at index m
            quads = [group_of[g:g + 4] for g in range(0, len(group_of), 4)]
            picked = [Signal(signed(P_BITS), name=f"p_pick{q}_{g}") for g in range(len(quads))]
            for g, quad in enumerate(quads):
                word = Signal(signed(P_BITS), name=f"p_quad{q}_{g}")
                select(m, half[:2], [(word, [held_p[k] for k in quad])], len(quad))
                with m.If(c_adv):
                    m.d.sync += picked[g].eq(word)
            p_sel = Signal(signed(P_BITS), name=f"p_sel{q}")
            if picked:
                select(m, pick.group, [(p_sel, picked)], len(picked))
            low = p_sel[:PAIR_SHIFT].as_signed()
            high = (p_sel >> PAIR_SHIFT) + p_sel[PAIR_SHIFT - 1]  # (P - low) >> PAIR_SHIFT
            single = Mux(pick.chunk, p_sel << CHUNK_BITS, p_sel)
            s_in = Mux(pick.pair, Mux(pick.slot, high, low), Mux(pick.hi, single << 8, single))
            pixel = (half << 2) | (q << 1) | slot
            on = Mux(layer.gap, (q == 0) & (half == 0), pixel < rec.pixels) if group_of else 0
            with m.If(c_adv):
                m.d.sync += [
                    pick_side[q].valid.eq(start & on), pick_side[q].cls.eq(rec.cls),
                    pick_side[q].final.eq(rec.final),
                    pick_side[q].addr.eq(Mux(layer.gap, 0, (half << 1) | slot)),
                    pick_side[q].fifo.eq(Mux(layer.gap, 0, (q << 1) | slot)), pick_side[q].first.eq(first),
                    side[q][0].eq(pick_side[q]), s0[q].eq(s_in),
                    side[q][1].eq(side[q][0]), side[q][2].eq(side[q][1]), side[q][3].eq(side[q][2]),
                ]
                # R_m by three conditional shift-adds: class 0 (4 bits) adds << 4, classes <= 1 << 8, <= 2 << 16.
                for k, (shift, upto) in enumerate(((4, 0), (8, 1), (16, 2))):
                    s_prev = s0[q] if k == 0 else sv[q][k - 1]
                    cls = side[q][k].cls
                    m.d.sync += sv[q][k].eq(s_prev + Mux(cls <= upto, s_prev << shift, 0))

        # Stage C5: the per-pixel accumulators, a bank per path (asynchronous read, written in the same
        # cycle); the row's last pass into a pixel passes its finished sum on, into FIFO pixel mod 4.
        fifos = []
        for f in range(4):
            fifo = SyncFIFOBuffered(width=X_BITS, depth=-(-t // 4) + 1)
            m.submodules[f"done{f}"] = fifo
            fifos.append(fifo)
        for q in range(2):
            last = side[q][3]
            accs = Memory(shape=signed(X_BITS), depth=max(pair_lanes * 2, 2), init=[])
            m.submodules[f"accs{q}"] = accs
            rd = accs.read_port(domain="comb")
            wr = accs.write_port()
            new = Signal(signed(X_BITS), name=f"new{q}")
            m.d.comb += [
                rd.addr.eq(last.addr), wr.addr.eq(last.addr), wr.data.eq(new), wr.en.eq(c_adv & last.valid),
                new.eq(Mux(last.first, sv[q][2], rd.data + sv[q][2])),
            ]
            for s_ in range(2):
                f = fifos[2 * q + s_]
                m.d.comb += [f.w_en.eq(c_adv & last.valid & last.final & (last.fifo[0] == s_)), f.w_data.eq(new)]
        m.d.comb += c_adv.eq(Cat(*(f.w_rdy for f in fifos)).all())

        # -- Emit: the row's pixels in order (pixel i from FIFO i mod 4) into the requantizer ---------------
        tag_layout = data.StructLayout({"pixel": unsigned(pix_bits), "channel": unsigned(self._channel_bits),
                                        "last": unsigned(1), "tile": tile_layout()})
        # (without the version 4 path: no compensation, so no per-pixel activation sum is selected either)
        m.submodules.requant = rq = PixelRequantizer(tag_bits=tag_layout.size, compensate=self._vertical)
        tag_in = data.View(tag_layout, rq.i.payload.tag)
        tag_out = data.View(tag_layout, rq.o.payload.tag)
        m.d.comb += [rq.shift.eq(layer.shift), rq.out_bits.eq(layer.out_bits), rq.residual.eq(layer.residual)]
        if self._vertical:
            m.d.comb += rq.comp_shift.eq(layer.comp_shift)
        i = Signal(range(t))
        pix = Signal(pix_bits)
        m.d.comb += pix.eq(i)
        which = Signal(2)
        m.d.comb += which.eq(i)
        head = Signal(signed(X_BITS))
        ready_b = Signal()
        with m.Switch(which):
            for f in range(4):
                with m.Case(f):
                    m.d.comb += [head.eq(fifos[f].r_data), ready_b.eq(fifos[f].r_rdy)]
        i_last = Mux(layer.gap, 1, row.pixels) - 1
        r_sel = Signal(MAX_ACT_BITS)
        select(m, i, [(r_sel, r_word)], t)
        if self._vertical:  # the compensation's inputs (the requantizer without it has no use for them)
            u_sel = Signal(A_BITS)
            select(m, i, [(u_sel, self.usum)], t)
            m.d.comb += [rq.i.payload.u.eq(u_sel), rq.i.payload.negate.eq(row.negate)]
        go = Signal()
        m.d.comb += [
            rq.i.valid.eq(rows.r_rdy & ready_b & (r_valid | ~layer.residual)),
            rq.i.payload.x.eq(head),
            rq.i.payload.r.eq(r_sel), rq.i.payload.mult.eq(row.mult), rq.i.payload.res_mult.eq(row.res_mult),
            rq.i.payload.bias.eq(row.bias),
            tag_in.pixel.eq(pix), tag_in.channel.eq(row.channel), tag_in.last.eq(i == i_last),
            tag_in.tile.eq(row.tile),
            go.eq(rq.i.valid & rq.i.ready),
            *(fifos[f].r_en.eq(go & (which == f)) for f in range(4)),
            rows.r_en.eq(go & (i == i_last)),
        ]
        with m.If(go):
            m.d.sync += i.eq(Mux(i == i_last, 0, i + 1))

        m.d.comb += [
            self.o.valid.eq(rq.o.valid), rq.o.ready.eq(self.o.ready),
            self.o.payload.value.eq(rq.o.payload.value),
            self.o.payload.pixel.eq(tag_out.pixel), self.o.payload.channel.eq(tag_out.channel),
            self.o.payload.last.eq(tag_out.last), self.o.payload.tile.eq(tag_out.tile),
        ]
        # Outputs owed: a tile's pixels (one for a pooled FC) per accepted command, one less per output.
        owed = Signal(16)
        gone = self.o.valid & self.o.ready
        m.d.sync += owed.eq(owed + Mux(accept, Mux(layer.gap, 1, cmd.pixels), 0) - gone)
        m.d.comb += self.busy.eq(owed != 0)
        return m
