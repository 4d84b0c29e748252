"""Pass sequencer: a weight row's decoded entries -> the passes of :class:`~hw.dsp.pass_lane.PassDspLane`.

A channel engine (``hw/array/engine.py``) broadcasts each decoded weight of a row to its pass lanes. A lane
sums a whole *pass* in its DSP48E1's P register (``hw/dsp/pass_lane.py``), and a class segment of the row
takes one or more passes (:func:`~hw.dsp.pass_lane.lane_passes`):

* **pair** (4- or 8-bit weights at 1-4-bit activations): one pass, both pixel slots of every lane at once. A
  pass may hold at most :func:`~hw.dsp.pass_lane.pass_capacity` entries (136 at 8 bits, 2,184 at 4
  bits: the lanes' signed sums, ``hw/dsp/pass_lane.py``), so a longer segment is cut into sub-passes (the
  engine adds them up). In a DoReFa layer the 4-bit segment and the 8-bit one share a pass: a 4-bit code is
  promoted exactly into the 8-bit class, ``q R_4 = (17 q) R_8`` (``R_4 = 17 R_8``, and ``17 q <= 255``; its
  lane weight ``2 (17 q) - 255 = 17 (2 q - 15)`` too), so the row's narrow weights cost one pass and one
  combine, not two; only when the row has 8-bit weights (the decoder's ``next_cls``, on every entry, says
  whether the 8-bit segment follows): a row of 4-bit weights alone keeps its own pass, which holds 2,184
  entries where the promoted codes' holds 136. (A signed layer's passes stay one per class: its offset ``2^m``
  does not scale by ``R_m / R_8`` into a code of the wider class.)
* **single** (16- or 32-bit weights, or any weight at 5-8-bit activations) in a signed row or under global
  pool: one pass per 16-bit chunk and slot *group* ``g`` (slot ``g`` of every lane: the tile's pixels
  ``2 k + g``), chunk-major: ``(c0, g0)``, ``(c0, g1)``, ``(c1, g0)``, ``(c1, g1)``. The decoder streams each
  row once, so the sequencer keeps the segment's entries (position, code) in a *replay* memory as they go
  out in the first pass and plays them back for the others. Group 1 is skipped when no pixel has slot 1 (a
  one-pixel tile);
* **merged single** in a DoReFa row: every class that does not run in the pair pass (16 and 32 bits at 1-4-bit
  activations, all four at 5-8 bits) shares one pass per slot group, weighted in the lanes
  (:data:`~hw.dsp.pass_lane.A_SPREAD` and ``(R_m / R_16) q`` for a class of at most 16 bits, a 32-bit code as
  its low chunk with :data:`~hw.dsp.pass_lane.A_LOW` then its high chunk with
  :data:`~hw.dsp.pass_lane.A_HIGH`: two lane cycles, the decoder held for the second), so the pass's P is
  ``sum R_m v u`` and its record has the 32-bit class (``R = 1``) and chunk 0: a row of 16- and 32-bit
  weights costs two combines instead of six. A pass holds at most
  :func:`~hw.dsp.pass_lane.merged_capacity` weights (2,184 at 1-4-bit activations, 128 at 8 bits), so a
  longer one is cut, in its first pass and in its replay alike.

Every entry leaves with what its lane needs (``code``, ``chunk``, ``a_mode``, ``empty`` for an all-pruned
row's one entry, and the record's ``pair``, ``cls`` and ``group``, from which the engine forms the lane
weight, :func:`~hw.dsp.pass_lane.lane_weight`; ``end`` on a pass's last entry) and with the pass's
*record*, which the engine's combine reads when the pass's sums come out of the lanes:

* ``cls``, ``pair``, ``chunk``, ``group``: how to take the pixels' sums out of a lane's P word;
* ``first``: per bank (pixel slot) whether this is the row's first pass that adds into it (the combine
  writes instead of adding, so the accumulators need no clearing);
* ``final``: the row's last pass into its banks: the combine passes the pixels' finished sums on;
* ``pixels``: the tile's pixels (from the row's command).

**Global pool** (``gap``): the inputs are 16-bit sums split into a low byte (pixel 0, slot 0) and a high byte
(pixel 1, slot 1 of lane 0) at 8-bit activations, so every segment runs single passes of both groups and
group 1 adds (shifted by 8, in the combine) into pixel 0: bank 0. Only its ``(last chunk, g1)`` pass is final.

Throughput: one entry a cycle from the decoder in a segment's first pass, one a cycle from the replay
memory in the others (a 32-bit weight of a merged pass two); one idle cycle when a segment's replay starts
(the memory's read latency).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.core.stream_decoder import entry_layout as decoder_entry_layout
from hw.dsp.pass_lane import (
    A_HIGH,
    A_LOW,
    A_SPREAD,
    ACT_BITS_FIELD,
    PAIR_ACT_BITS,
    PAIR_WEIGHT_BITS,
    SLOTS,
    merged_capacity,
    pass_capacity,
)
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN, R

#: Class index of the widest class that runs in pair passes, and of the 32-bit class (two chunks).
PAIR_CLASSES = max(c for c, w in enumerate(CLASS_WIDTHS) if w <= PAIR_WEIGHT_BITS)
WIDE_CLASS = CLASS_WIDTHS.index(32)
#: Classes whose pair passes can overflow a slot's field: ``(class, capacity)`` (a merged pass has class 1).
CAPPED = tuple((c, pass_capacity(w, PAIR_ACT_BITS)) for c, w in enumerate(CLASS_WIDTHS)
               if w <= PAIR_WEIGHT_BITS and pass_capacity(w, PAIR_ACT_BITS) < MAX_FAN_IN)
#: The promotion of a 4-bit code into the 8-bit class: ``R_4 / R_8`` (= 1 + 2^4).
PROMOTE = R[CLASS_WIDTHS[0]] // R[CLASS_WIDTHS[1]]
assert PROMOTE == 17 and PROMOTE * R[CLASS_WIDTHS[1]] == R[CLASS_WIDTHS[0]]
#: A merged pass's weights of each class of at most 16 bits: ``(R_m / R_16) q`` (4369, 257, 1), below 2^16.
SPREAD_SCALE = tuple(R[w] // R[16] if w <= 16 else 1 for w in CLASS_WIDTHS)
assert all(R[w] == SPREAD_SCALE[c] * R[16] and SPREAD_SCALE[c] * ((1 << w) - 1) < 1 << 16
           for c, w in enumerate(CLASS_WIDTHS) if w <= 16)


def record_layout(pixels: int) -> data.StructLayout:
    """What the combine needs of a pass (module docstring)."""
    return data.StructLayout({
        "cls": unsigned(2),
        "pair": unsigned(1),
        "chunk": unsigned(1),
        "group": unsigned(1),
        "first": data.ArrayLayout(1, SLOTS),
        "final": unsigned(1),
        "pixels": range(pixels + 1),
    })


def row_info_layout(pixels: int) -> data.StructLayout:
    """What the sequencer takes of each row: the tile's pixels and the patch bank its entries read."""
    return data.StructLayout({"pixels": range(pixels + 1), "bank": unsigned(1)})


def pass_entry_layout(fan_in_width: int, pixels: int) -> data.StructLayout:
    """One entry of a pass: where its codes are in the patch, the lane's fields, the pass's record."""
    return data.StructLayout({
        "position": unsigned(fan_in_width),
        "code": unsigned(max(CLASS_WIDTHS)),
        "chunk": unsigned(1),  # the lane's B chunk (a merged pass's record keeps chunk 0)
        "a_mode": unsigned(2),  # the lane's placement of u in A (A_LOW outside merged passes)
        "empty": unsigned(1),  # an all-pruned row's single entry: its lane weight is 0 (it adds nothing)
        "end": unsigned(1),
        "bank": unsigned(1),  # the patch bank of the entry's row (tiles overlap: hw/array/controller.py)
        "rec": record_layout(pixels),
    })


class PassSequencer(wiring.Component):
    """Decoded entries in, pass entries out (module docstring).

    Parameters
    ----------
    fan_in_width : int
        Width of a position; a segment has at most ``2^fan_in_width - 1`` entries (the replay memory's depth).
    pixels : int
        ``T``, the tile's pixels (2 a lane).

    Members
    -------
    act_bits, gap, signed : In
        The running layer's activation width, global-pool flag and weight mode (held while its rows run).
    rows : In(stream.Signature(row_info_layout(pixels)))
        Each row's pixel count and patch bank, in row order (taken at the row's last pass).
    i : In(stream.Signature(decoder entry))
    o : Out(stream.Signature(pass_entry_layout(fan_in_width, pixels)))
    """

    def __init__(self, *, fan_in_width: int, pixels: int):
        self._faw = fan_in_width
        self._t = pixels
        super().__init__({
            "act_bits": In(ACT_BITS_FIELD),
            "gap": In(1),
            "signed": In(1),
            "rows": In(stream.Signature(row_info_layout(pixels))),
            "i": In(stream.Signature(decoder_entry_layout(fan_in_width))),
            "o": Out(stream.Signature(pass_entry_layout(fan_in_width, pixels))),
        })

    def elaborate(self, platform):
        m = Module()
        faw = self._faw
        e = self.i.payload
        out = self.o.payload

        stored = data.StructLayout({"position": unsigned(faw), "code": unsigned(max(CLASS_WIDTHS)),
                                    "empty": unsigned(1), "split": unsigned(1)})
        m.submodules.replay = replay = Memory(shape=stored, depth=1 << faw, init=[])
        wr = replay.write_port()
        rd = replay.read_port()  # synchronous: data the cycle after en, held while en is low
        m.d.comb += rd.en.eq(0)  # (its reset value is 1)

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # The segment's mode, fixed by its first entry's class and the layer.
        gap = self.gap
        pixels = self.rows.payload.pixels
        two_groups = gap | (pixels > 1)
        pair_now = (e.cls <= PAIR_CLASSES) & (self.act_bits <= PAIR_ACT_BITS) & ~gap
        merge = pair_now & ~self.signed  # 4- and 8-bit entries may share one pass of class 1
        wmerge = ~pair_now & ~self.signed & ~gap  # the row's other classes in merged single passes
        # Promotion pays only when the row has 8-bit weights to share the pass with: a row of 4-bit weights alone
        # runs its own class-0 pair pass (capacity 2,184, against 136 for the promoted codes' 8-bit one).
        promote = merge & (e.cls == 0) & (e.next_cls == 1)
        live_cls = Mux(promote, 1, Mux(wmerge, WIDE_CLASS, e.cls))
        q4 = e.code[:CLASS_WIDTHS[0]]
        spread = Signal(max(CLASS_WIDTHS))  # (R_m / R_16) q of a merged pass: copies of q side by side
        with m.Switch(e.cls):
            for c, width in enumerate(CLASS_WIDTHS):
                with m.Case(c):
                    copies = 16 // width if width <= 16 else 1
                    assert sum(1 << (width * k) for k in range(copies)) == SPREAD_SCALE[c]
                    m.d.comb += spread.eq(Cat(*[e.code[:width]] * copies))
        live_code = Mux(promote, q4 + (q4 << 4), Mux(wmerge, spread, e.code))  # 17 q (PROMOTE), as a shift-add
        # The pass continues over the segment's end: a promoted 4-bit segment into the 8-bit one, a merged
        # single pass into the row's next (wider) class.
        go_on = e.seg_end & ~e.last & (promote | wmerge)
        split = wmerge & (e.cls == WIDE_CLASS)  # a 32-bit weight of a merged pass: two lane entries

        # Capacity of a merged pass at the layer's activation width (weights).
        wcap_last = Signal(range(MAX_FAN_IN))
        with m.Switch(self.act_bits):
            for a in range(1, MAX_ACT_BITS + 1):
                with m.Case(a):
                    m.d.comb += wcap_last.eq(merged_capacity(a) - 1)

        touched = Signal(SLOTS)  # banks this row's passes have added into
        sub = Signal(range(MAX_FAN_IN + 1))  # weights of the current pass (capacity split)
        half = Signal()  # the low chunk of a split weight has gone out
        cap_end = Signal()
        m.d.comb += cap_end.eq(wmerge & (sub == wcap_last))
        for cls, cap in CAPPED:
            with m.If(pair_now & (live_cls == cls) & (sub == cap - 1)):
                m.d.comb += cap_end.eq(1)

        # Replay state: the segment's class, mode, length, whether it is the row's last, the pass playing.
        replaying = Signal()
        priming = Signal()
        seg_cls = Signal(2)
        seg_merged = Signal()
        seg_len = Signal(range((1 << faw) + 1))
        seg_last = Signal()
        widx = Signal(range(1 << faw))
        ridx = Signal(range(1 << faw))
        chunk = Signal()
        group = Signal()

        def banks_of(pair, grp):
            """The banks a pass adds into: both for a pair pass, ``grp`` for a single one, 0 under gap."""
            return Mux(pair, 0b11, Mux(gap, 0b01, Mux(grp, 0b10, 0b01)))

        def emit(position, code, empty, cls, pair, c, g, end, final, lane_chunk, a_mode):
            banks = banks_of(pair, g)
            m.d.sync += [
                self.o.valid.eq(1),
                out.position.eq(position), out.code.eq(code), out.chunk.eq(lane_chunk), out.a_mode.eq(a_mode),
                out.empty.eq(empty), out.end.eq(end),
                out.bank.eq(self.rows.payload.bank),
                out.rec.cls.eq(cls), out.rec.pair.eq(pair), out.rec.chunk.eq(c), out.rec.group.eq(g),
                out.rec.first.eq(banks & ~touched), out.rec.final.eq(final), out.rec.pixels.eq(pixels),
            ]
            return banks

        def row_done():
            m.d.sync += touched.eq(0)
            m.d.comb += self.rows.ready.eq(1)

        with m.If(priming):
            # The replay memory's first entry is read this cycle.
            m.d.comb += [rd.addr.eq(0), rd.en.eq(1)]
            m.d.sync += [priming.eq(0), replaying.eq(1), ridx.eq(0), sub.eq(0)]
        with m.Elif(replaying):
            last_entry = ridx == seg_len - 1
            last_chunk = seg_merged | (chunk == (seg_cls == WIDE_CLASS))
            last_pass = last_chunk & (group | ~two_groups)
            final = seg_last & last_chunk & (~gap | group)
            cls_out = Mux(seg_merged, WIDE_CLASS, seg_cls)
            rec_chunk = chunk & ~seg_merged
            with m.If(advance):
                with m.If(seg_merged & rd.data.split & ~half):
                    # A split weight's low chunk; the memory holds the entry for its high chunk.
                    emit(rd.data.position, rd.data.code, rd.data.empty, cls_out, 0, rec_chunk, group, 0, 0,
                         0, A_LOW)
                    m.d.sync += half.eq(1)
                with m.Else():
                    m.d.sync += half.eq(0)
                    cut = seg_merged & (sub == wcap_last)
                    end = last_entry | cut
                    nxt = Mux(last_entry, 0, ridx + 1)
                    m.d.comb += [rd.addr.eq(nxt), rd.en.eq(1)]
                    m.d.sync += [ridx.eq(nxt), sub.eq(Mux(end, 0, sub + 1))]
                    hi_half = seg_merged & rd.data.split
                    banks = emit(rd.data.position, rd.data.code, rd.data.empty, cls_out, 0, rec_chunk, group,
                                 end, final & last_entry, Mux(seg_merged, hi_half, chunk),
                                 Mux(seg_merged, Mux(hi_half, A_HIGH, A_SPREAD), A_LOW))
                    with m.If(end):
                        m.d.sync += touched.eq(touched | banks)
                    with m.If(last_entry):
                        with m.If(last_pass):
                            m.d.sync += replaying.eq(0)
                            with m.If(seg_last):
                                row_done()
                        with m.Elif(group | ~two_groups):
                            m.d.sync += [chunk.eq(1), group.eq(0)]
                        with m.Else():
                            m.d.sync += group.eq(1)
        with m.Else():
            # Live: the first pass of a segment, straight from the decoder (a split weight's entry stays for
            # a second cycle: its low chunk goes out first).
            low_half = split & ~half
            m.d.comb += self.i.ready.eq(advance & self.rows.valid & ~low_half)
            with m.If(self.i.valid & advance & self.rows.valid & low_half):
                emit(e.position, e.code, e.empty, WIDE_CLASS, 0, 0, 0, 0, 0, 0, A_LOW)
                m.d.sync += half.eq(1)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += half.eq(0)
                wide = e.cls == WIDE_CLASS
                more = ~pair_now & Mux(wmerge, two_groups, wide | two_groups)  # the segment has passes to replay
                end = (e.seg_end & ~go_on) | cap_end
                # chunk 0 is the last chunk; gap ends in group 1; a merged pass of group 0 is bank 0's last
                final = e.last & e.seg_end & Mux(wmerge, 1, ~wide & ~gap)
                banks = emit(e.position, live_code, e.empty, live_cls, pair_now, 0, 0, end, final, split,
                             Mux(wmerge, Mux(split, A_HIGH, A_SPREAD), A_LOW))
                m.d.comb += [wr.addr.eq(widx), wr.en.eq(1), wr.data.position.eq(e.position),
                             wr.data.code.eq(Mux(wmerge, live_code, e.code)), wr.data.empty.eq(e.empty),
                             wr.data.split.eq(split)]
                restart = e.seg_end & ~go_on
                m.d.sync += [widx.eq(Mux(restart, 0, widx + 1)), sub.eq(Mux(end, 0, sub + 1))]
                with m.If(end):
                    m.d.sync += touched.eq(touched | banks)
                with m.If(restart):
                    with m.If(more):
                        m.d.sync += [priming.eq(1), seg_cls.eq(e.cls), seg_merged.eq(wmerge), seg_len.eq(widx + 1),
                                     seg_last.eq(e.last), chunk.eq(~two_groups), group.eq(two_groups)]
                    with m.Elif(e.last):
                        row_done()
        return m
