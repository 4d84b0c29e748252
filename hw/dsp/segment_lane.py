"""Segment lane: one DSP48E1 that changes its packing plan per width-class segment of a weight row.

The array's engines (``docs/array_design.md``, decisions 3 and 4) broadcast one decoded weight code ``q`` of
width class ``CLASS_WIDTHS[cls]`` (4, 8, 16 or 32 bits) against the activation codes ``u`` of ``slots`` output
pixels. A row's entries come grouped by class, and each group (a *segment*) ends with ``end``; the lane then
emits, for every slot ``j``, the class sum ``S_j = sum q u_j`` and the activation sum ``A_j = sum u_j``
(DoReFa's offset term, no DSP) of the segment, and starts the next one, which may have another class.

Per entry the lane uses the weight-broadcast plan ``plan(class bits, act width, weights=1)`` of
:mod:`hw.dsp.packing` (weight in B, ``used = min(plan.acts, slots)`` activations in A at the plan's slot
offsets). Every entry takes :func:`entry_cycles` DSP cycles, ``chunks * groups``:

* ``groups = ceil(slots / used)``: cycles that each multiply ``q`` with one group of ``used`` slots
  (8x4 fits 2 products, so 3 slots take 2 cycles);
* ``chunks``: 32-bit weights go in two 16-bit chunks (:data:`hw.dsp.packing.CHUNK_BITS`), the second one's
  products drained shifted by 16.

P accumulates in its slots while the entries run in a single cycle (4-bit weights at up to 5-bit
activations with 3 slots) and drains into the per-slot LUT accumulators every ``plan.max_accumulation``
products and at the segment's end, restarting from the next product in the same cycle (as
:class:`~hw.dsp.lane.PackedDspLane`, whose DSP configuration :data:`~hw.dsp.lane.DSP48E1_ATTRIBUTES` and
restart logic this lane shares). In the multi-cycle modes consecutive cycles put different slot groups or
chunks in the same P slots, so those drain every cycle; a drain never costs a cycle.

The mode is decoded from each entry's ``cls`` and ``act_bits`` (both must stay the same over a segment);
``act_bits`` is promoted to the narrowest supported width at least as wide (``act_widths``, by default every
planner width up to :data:`~model.export.golden.MAX_ACT_BITS`; 1 runs as 2). Fewer widths cost fewer LUTs
in the A-port and drain multiplexers: a layer's codes then run in a wider mode, exactly.

Widths (the contract, ``model/export/golden.py``): a segment has at most ``max_entries`` entries (a row has
at most :data:`~model.export.golden.MAX_FAN_IN` = 4096 non-zeros), every code fits its width (``q < 2^32``,
``u < 2^MAX_ACT_BITS``, not checked), so ``S < 4096 (2^32 - 1) (2^8 - 1) < 2^52`` (:func:`sum_bits`, 52 bits)
and ``A <= 4096 (2^8 - 1) < 2^20`` (:func:`act_sum_bits`, 20 bits).

Cost (Yosys ``synth_xilinx``, 3 slots, ``tests/hw/dsp/test_segment_lane.py``): one DSP48E1 (MREG, PREG) and
about 950 LUT and 510 FF with all seven activation widths, 730 LUT with (2, 4, 8), 650 with (4, 8). The
FFs are the per-slot sums and the output register (3 x 2 x (52 + 20)); the LUTs mostly the drain
multiplexers (each slot's field sits at another offset in each mode), the 52-bit adders and the A-port
multiplexer.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.dsp.lane import DSP_LATENCY, M_STAGE, accumulate_in_p, delay_line
from hw.dsp.packing import A_BITS, ACT_BITS, B_BITS, CHUNK_BITS, PackingPlan, plan
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN

#: Activation widths a lane supports by default: every planner width the contract allows.
DEFAULT_ACT_WIDTHS = tuple(a for a in ACT_BITS if a <= MAX_ACT_BITS)
ACT_BITS_FIELD = ceil_log2(MAX_ACT_BITS + 1)  # bits of the run-time ``act_bits`` field (0..8)


def sum_bits(max_entries: int = MAX_FAN_IN) -> int:
    """Bits of ``S``: ``max_entries`` products of a 32-bit code and a ``MAX_ACT_BITS`` code, exactly."""
    return (max_entries * ((1 << max(CLASS_WIDTHS)) - 1) * ((1 << MAX_ACT_BITS) - 1)).bit_length()


def act_sum_bits(max_entries: int = MAX_FAN_IN) -> int:
    """Bits of ``A``: ``max_entries`` codes of ``MAX_ACT_BITS`` bits."""
    return (max_entries * ((1 << MAX_ACT_BITS) - 1)).bit_length()


@dataclass(frozen=True)
class SegmentMode:
    """How the lane runs one (class width, activation width) pair.

    Members
    -------
    plan : PackingPlan
        ``plan(class_bits, act_bits, weights=1)``: the weight in B, activations in A.
    used : int
        Activations packed per cycle (``min(plan.acts, slots)``).
    groups : int
        Cycles per weight chunk: slot groups of ``used`` activations.
    interval : int
        Products P sums before it drains (1 in the multi-cycle modes).
    """

    plan: PackingPlan
    used: int
    groups: int
    interval: int

    @property
    def class_bits(self) -> int:
        return self.plan.weight_bits

    @property
    def act_bits(self) -> int:
        return self.plan.act_bits

    @property
    def chunks(self) -> int:
        return self.plan.chunks

    @property
    def cycles(self) -> int:
        """DSP cycles per entry."""
        return self.chunks * self.groups

    @property
    def field_bits(self) -> int:
        """Bits of the largest value a slot's field of P holds: ``interval`` products at most."""
        top = ((1 << self.plan.weight_chunk) - 1) * ((1 << self.plan.act_chunk) - 1)
        return (self.interval * top).bit_length()

    def field(self, j: int) -> tuple[int, int, int]:
        """``(group, offset in P, width)`` of slot ``j``'s products: no wider than its slot (the top slot
        has the rest of P) nor than :attr:`field_bits`, which keeps the drain multiplexers narrow."""
        group, k = divmod(j, self.used)
        return group, self.plan.offset(0, k), min(self.plan.slot_width(0, k), self.field_bits)


def segment_mode(class_bits: int, act_bits: int, slots: int, max_entries: int = MAX_FAN_IN) -> SegmentMode:
    """The mode of a supported (class width, activation width) pair for ``slots`` pixels per lane."""
    p = plan(class_bits, act_bits, weights=1)
    if p.weight_port != "B" or p.weights != 1 or p.act_chunk != act_bits:
        raise ValueError(f"plan {p!r} is not a weight broadcast with the weight in B and unchunked activations")
    used = min(p.acts, slots)
    groups = -(-slots // used)
    interval = 1 if groups * p.chunks > 1 else min(p.max_accumulation, max_entries)
    return SegmentMode(p, used, groups, interval)


def promoted(act_bits: int, act_widths=DEFAULT_ACT_WIDTHS) -> int:
    """The supported width that runs ``act_bits`` (the narrowest one at least as wide)."""
    wider = [a for a in sorted(act_widths) if a >= act_bits]
    if not 1 <= act_bits <= MAX_ACT_BITS or not wider:
        raise ValueError(f"act_bits must be in 1..{max(act_widths)}, not {act_bits!r}")
    return wider[0]


def entry_cycles(class_bits: int, act_bits: int, slots: int = 3, act_widths=DEFAULT_ACT_WIDTHS) -> int:
    """DSP cycles per entry of a ``class_bits`` weight at ``act_bits`` activations (the array's budget)."""
    return segment_mode(class_bits, promoted(act_bits, act_widths), slots).cycles


def entry_layout(slots: int) -> data.StructLayout:
    """One decoded weight with the activation codes of the lane's pixel slots."""
    return data.StructLayout({
        "cls": unsigned(ceil_log2(len(CLASS_WIDTHS))),  # class c: CLASS_WIDTHS[c] bits
        "code": unsigned(max(CLASS_WIDTHS)),  # q, below 2^CLASS_WIDTHS[cls]
        "act_bits": unsigned(ACT_BITS_FIELD),  # the layer's activation width, 1..8
        "u": data.ArrayLayout(MAX_ACT_BITS, slots),  # codes below 2^act_bits
        "end": unsigned(1),  # the last entry of its segment
    })


def sums_layout(slots: int, max_entries: int = MAX_FAN_IN) -> data.StructLayout:
    """A segment's ``S_j`` and ``A_j`` per slot."""
    return data.StructLayout({
        "s": data.ArrayLayout(sum_bits(max_entries), slots),
        "a": data.ArrayLayout(act_sum_bits(max_entries), slots),
    })


class SegmentDspLane(wiring.Component):
    """One DSP48E1 summing ``q * u_j`` and ``u_j`` per slot over width-class segments, mode per segment.

    Parameters
    ----------
    slots : int
        Pixels per lane (1..16).
    act_widths : tuple of int
        Activation widths with their own mode (a non-empty subset of :data:`DEFAULT_ACT_WIDTHS`); the
        widest must be ``MAX_ACT_BITS`` so that every layer runs.
    max_entries : int
        Longest segment (1..``MAX_FAN_IN``); sizes the sums.

    Members
    -------
    i : In(stream.Signature(entry_layout(slots)))
        One entry per transfer; ``i.ready`` rises on the entry's last DSP cycle.
    o : Out(stream.Signature(sums_layout(slots, max_entries)))
        One transfer per segment.

    Raises
    ------
    ValueError
        For parameters out of range, naming the value.
    """

    def __init__(self, slots: int = 3, *, act_widths=DEFAULT_ACT_WIDTHS, max_entries: int = MAX_FAN_IN):
        if not isinstance(slots, int) or not 1 <= slots <= 16:
            raise ValueError(f"slots must be an integer in 1..16, not {slots!r}")
        act_widths = tuple(sorted(set(act_widths)))
        if not act_widths or not set(act_widths) <= set(DEFAULT_ACT_WIDTHS) or act_widths[-1] != MAX_ACT_BITS:
            raise ValueError(f"act_widths must be a subset of {DEFAULT_ACT_WIDTHS} including {MAX_ACT_BITS}, "
                             f"not {act_widths!r}")
        if not isinstance(max_entries, int) or not 1 <= max_entries <= MAX_FAN_IN:
            raise ValueError(f"max_entries must be an integer in 1..{MAX_FAN_IN}, not {max_entries!r}")
        self._slots = slots
        self._act_widths = act_widths
        self._max_entries = max_entries
        self._modes = tuple(segment_mode(c, a, slots, max_entries) for c in CLASS_WIDTHS for a in act_widths)
        super().__init__({
            "i": In(stream.Signature(entry_layout(slots))),
            "o": Out(stream.Signature(sums_layout(slots, max_entries))),
        })

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def act_widths(self) -> tuple[int, ...]:
        return self._act_widths

    @property
    def modes(self) -> tuple[SegmentMode, ...]:
        """Every mode, index ``cls * len(act_widths) + act width index``."""
        return self._modes

    @property
    def latency(self) -> int:
        """Cycles from accepting a segment's last entry to its sums on ``o`` (no back-pressure): the DSP's
        M and P registers and the drain into the output register."""
        return DSP_LATENCY + 1

    def cycles_per_entry(self, class_bits: int, act_bits: int) -> int:
        """DSP cycles an entry of this class takes at ``act_bits`` (1..8) activations."""
        return entry_cycles(class_bits, act_bits, self._slots, self._act_widths)

    def cycle_table(self) -> dict[tuple[int, int], int]:
        """``{(class bits, act bits): cycles per entry}`` for every class and act_bits 1..MAX_ACT_BITS."""
        return {(c, a): self.cycles_per_entry(c, a) for c in CLASS_WIDTHS for a in range(1, MAX_ACT_BITS + 1)}

    def elaborate(self, platform):
        m = Module()
        slots, modes = self._slots, self._modes
        entry = self.i.payload
        advance = Signal()  # every pipeline register moves (DSP clock enables)
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        # Stage 0: the entry's mode, its cycle (chunk, group) and what goes into A and B.
        mode = Signal(range(len(modes)))
        n_act = len(self._act_widths)
        with m.Switch(Cat(entry.act_bits, entry.cls)):
            for c in range(len(CLASS_WIDTHS)):
                for bits in range(1 << ACT_BITS_FIELD):
                    wider = [k for k, a in enumerate(self._act_widths) if a >= bits]
                    with m.Case(bits | c << ACT_BITS_FIELD):
                        m.d.comb += mode.eq(c * n_act + (wider[0] if wider else n_act - 1))

        max_groups = max(md.groups for md in modes)
        max_chunks = max(md.chunks for md in modes)
        grp = Signal(range(max(max_groups, 2)))
        chk = Signal(range(max(max_chunks, 2)))
        last_grp = Signal.like(grp)
        last_chk = Signal.like(chk)
        count = Signal(range(max(md.interval for md in modes) + 1))  # products in P's open accumulation
        last_count = Signal.like(count)
        a_word = Signal(A_BITS)
        with m.Switch(mode):
            for k, md in enumerate(modes):
                with m.Case(k):
                    m.d.comb += [last_grp.eq(md.groups - 1), last_chk.eq(md.chunks - 1),
                                 last_count.eq(md.interval - 1)]
                    # Non-overlapping fields: plain wiring into A (no pre-adder use).
                    with m.Switch(grp):
                        for g in range(md.groups):
                            with m.Case(g):
                                for j in range(g * md.used, min((g + 1) * md.used, slots)):
                                    _, off, _ = md.field(j)
                                    m.d.comb += a_word[off:off + md.act_bits].eq(entry.u[j][:md.act_bits])
        b_word = Signal(B_BITS)
        with m.Switch(entry.cls):
            for c, width in enumerate(CLASS_WIDTHS):
                with m.Case(c):
                    if width > CHUNK_BITS:
                        m.d.comb += b_word.eq(entry.code.word_select(chk, CHUNK_BITS))
                    else:
                        m.d.comb += b_word.eq(entry.code[:width])

        last_cycle = Signal()
        m.d.comb += [last_cycle.eq((grp == last_grp) & (chk == last_chk)),
                     self.i.ready.eq(advance & last_cycle)]
        with m.If(advance & self.i.valid):
            with m.If(last_cycle):
                m.d.sync += [grp.eq(0), chk.eq(0)]
            with m.Elif(grp == last_grp):
                m.d.sync += [grp.eq(0), chk.eq(chk + 1)]
            with m.Else():
                m.d.sync += grp.eq(grp + 1)

        # Drain schedule: P closes its accumulation at the segment's end and every `interval` products.
        final = Signal()
        close = Signal()
        m.d.comb += [final.eq(entry.end & last_cycle), close.eq(final | (count == last_count))]
        with m.If(advance & self.i.valid):
            m.d.sync += count.eq(Mux(close, 0, count + 1))

        # Stages 1..DSP_LATENCY: the DSP (M and P registers) and its side band.
        def stages(sig, name):
            return delay_line(m, advance, sig, name)

        valid = stages(self.i.valid, "valid")
        ends = stages(Signal.like(close, name="close0"), "close")
        finals = stages(Signal.like(final, name="final0"), "final")
        done = stages(Signal(name="done0"), "done")  # the entry's last cycle: count its u into A
        modes_p = stages(mode, "mode")
        groups_p = stages(grp, "grp")
        chunks_p = stages(chk, "chk")
        us = stages(Signal(data.ArrayLayout(MAX_ACT_BITS, slots), name="u0"), "u")
        m.d.comb += [ends[0].eq(close & self.i.valid), finals[0].eq(final & self.i.valid),
                     done[0].eq(last_cycle & self.i.valid), us[0].eq(entry.u)]

        p_reg = accumulate_in_p(m, advance, valid[M_STAGE], ends[M_STAGE], a_word * b_word)

        # Drain: each slot's field of P (by the mode and slot group of the product now in P) into its sum.
        d = DSP_LATENCY
        drain = Signal()
        m.d.comb += drain.eq(valid[d] & ends[d])
        s_bits, a_bits = sum_bits(self._max_entries), act_sum_bits(self._max_entries)
        for j in range(slots):
            field = Signal(max(md.field(j)[2] for md in modes), name=f"field{j}")
            with m.Switch(modes_p[d]):
                for k, md in enumerate(modes):
                    g, off, width = md.field(j)
                    with m.Case(k):
                        value = p_reg[off:off + width]
                        m.d.comb += field.eq(value if md.groups == 1 else Mux(groups_p[d] == g, value, 0))
            part = Signal(s_bits, name=f"part{j}")
            m.d.comb += part.eq(field << (chunks_p[d] * CHUNK_BITS))
            s_acc = Signal(s_bits, name=f"s_acc{j}")
            a_acc = Signal(a_bits, name=f"a_acc{j}")
            s_next = s_acc + part
            a_next = a_acc + us[d][j]
            with m.If(advance & valid[d]):
                with m.If(finals[d]):
                    m.d.sync += [self.o.payload.s[j].eq(s_next), self.o.payload.a[j].eq(a_next),
                                 s_acc.eq(0), a_acc.eq(0)]
                with m.Else():
                    with m.If(drain):
                        m.d.sync += s_acc.eq(s_next)
                    with m.If(done[d]):
                        m.d.sync += a_acc.eq(a_next)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(advance & valid[d] & finals[d]):
            m.d.sync += self.o.valid.eq(1)
        return m
