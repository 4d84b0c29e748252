"""Pass lane: one DSP48E1 whose P register sums a whole *pass* of a weight row, for two pixels or for one.

The array's engines (``hw/array/engine.py``, ``docs/array_design.md``) broadcast a weight row's entries to
their lanes class segment by class segment. A lane does not drain its DSP's P register into per-pixel sums in
fabric every few products (the first version's segment lane did: its drain multiplexers and six wide sums
cost about 800 LUT): P sums the whole pass, and the engine reads the pixel sums out of the 48-bit P word
once, at the pass's end. So a lane is its DSP48E1, a multiplexer on A and the output register. An engine's lanes
move in lockstep (the same entries but for their codes, the same output transfers), so all but one follow that
one's pipeline control (``leader``: the clock enables, the P restart, ``o.valid``) instead of keeping a copy each:
about 9 LUT and 7 FF a lane fewer (Yosys, the bench's 42-lane engine: 6,212 LUT against 6,582).

**Signed lane weights.** The engine does not send a weight's code ``q`` but ``b``, one 18-bit signed B word
it forms once for all its lanes (:func:`lane_weight`): with ``v = 2 q - D_m - s`` (``D_m = 2^m - 1``,
``s = 1`` in a signed layer), ``R_m v = 2 R_m q - D - s R_m``, so the lanes' sums weighted by ``R_m`` are
golden's ``acc = 2 sum_m R_m S_m - D A - sum_m R_m A_m`` (``model/export/golden.py`` ``combine``) directly:
no activation sums ``A`` or ``Y`` in the lanes, the combine or the requantizer (the version before kept two
20-bit sums a lane beside P, about 40 LUT and 120 FF each).

A pass is one of two forms (:func:`lane_passes` gives a segment's passes; the engine replays a segment's
entries for its second and later passes):

* **pair** (activations of at most :data:`PAIR_ACT_BITS` bits, weights of at most :data:`PAIR_WEIGHT_BITS`):
  ``A = u0 + 2^PAIR_SHIFT u1``, ``B = v``, so ``P = S0 + 2^PAIR_SHIFT S1`` with ``S_j = sum v u_j`` signed:
  the engine reads ``S0`` as the low ``PAIR_SHIFT`` bits sign-extended and ``S1`` as the bits above plus the
  borrow (bit ``PAIR_SHIFT - 1``). ``|S0| < 2^(PAIR_SHIFT - 1)`` while the pass has at most
  :func:`pass_capacity` entries (``|v| <= 2^m``: 2,184 of 4-bit weights, 136 of 8-bit ones); the engine
  splits a longer segment. ``u1 < 16`` keeps A below ``2^24``, positive in the DSP48E1's 25-bit signed A port.
* **single** (any other pair of widths): ``A = u_g`` for the pass's slot group ``g`` (0 or 1), ``B`` the
  entry's 16-bit chunk of ``v`` (:data:`~hw.dsp.packing.CHUNK_BITS`): ``v`` itself below 32 bits (17 bits
  signed), a 32-bit weight's ``v`` (33 bits) as its low 16 bits (unsigned) in chunk 0 and the signed rest in
  chunk 1, so ``P = sum v_c u_g``, ``|P| < 2^47`` for any contract row (at most 4,096 products of at most
  ``2^16 (2^8 - 1)``). A segment takes ``groups x chunks`` such passes: 2 for a 16-bit class or for 4- and
  8-bit weights at 5-8-bit activations, 4 for a 32-bit class.
* **merged single** (the wide passes of a DoReFa row, :class:`~hw.array.pass_sequencer.PassSequencer`): each
  entry places ``u_g`` in A by its ``a_mode``: ``u_g`` (:data:`A_LOW`), ``2^16 u_g`` (:data:`A_HIGH`) or
  ``(1 + 2^16) u_g`` (:data:`A_SPREAD`; ``u_g < 2^8``, so the two copies do not overlap and A stays below
  ``2^24``: wiring, no adder). A 32-bit weight's two chunks of ``v`` go in as ``(lo, A_LOW)`` and
  ``(hi, A_HIGH)``, so P sums ``v u`` itself, and a narrower weight of class ``m`` as ``q' = (R_m / R_16) q``
  in the 16-bit class (``2 q' - D_16``) with ``A_SPREAD``: ``R_16 (2 q' - D_16) u = R_m v u``. One pass per
  slot group holds every wide class of the row, already weighted (``R_32 = 1``). Each weight adds at most
  ``(2^32 - 1)(2^a - 1)`` to ``|P|``, so a pass holds :func:`merged_capacity` weights (2,184 at 4-bit
  activations, 128 at 8 bits).

So the lane's cost per entry grows with both widths: one cycle for two pixels at 4/8-bit weights and 1-4-bit
activations, two at 16 bits or at 5-8-bit activations, four for 32-bit weights.

Timing: P restarts from the product that follows an ``end`` (OPMODE Z = 0, as :class:`~hw.dsp.lane.PackedDspLane`
does), so passes follow each other without a gap; the output register takes P the cycle after the pass's last
product enters P, and holds it under back-pressure (which stops the whole lane).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.dsp.lane import DSP_LATENCY, M_STAGE, accumulate_in_p, delay_line, p_control
from hw.dsp.packing import A_BITS, B_BITS, CHUNK_BITS, P_BITS
from model.export.format import CLASS_WIDTHS
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN

#: Pair passes: activations up to 4 bits, weights up to 8 bits; ``u1`` goes in at bit 20.
PAIR_ACT_BITS = 4
PAIR_WEIGHT_BITS = 8
PAIR_SHIFT = 20
#: Pixel slots of a pass lane.
SLOTS = 2
#: Bits of a run-time activation-width field (0..MAX_ACT_BITS).
ACT_BITS_FIELD = ceil_log2(MAX_ACT_BITS + 1)
#: A single pass's placements of ``u_g`` in A (``a_mode``): ``u``, ``2^16 u``, ``(1 + 2^16) u``.
A_LOW, A_HIGH, A_SPREAD = 0, 1, 2


def is_pair(class_bits: int, act_bits: int) -> bool:
    """Whether a ``class_bits`` weight at ``act_bits`` activations runs in pair passes."""
    _check_widths(class_bits, act_bits)
    return class_bits <= PAIR_WEIGHT_BITS and act_bits <= PAIR_ACT_BITS


def pass_capacity(class_bits: int, act_bits: int) -> int:
    """The most entries a pass of this class may have: in a pair pass, ``|S0| < 2^(PAIR_SHIFT - 1)`` with every
    entry at its largest (``|v| <= 2^m``, codes of ``PAIR_ACT_BITS``); a single pass holds any row of the
    contract (``MAX_FAN_IN``)."""
    if not is_pair(class_bits, act_bits):
        return MAX_FAN_IN
    top = (1 << class_bits) * ((1 << PAIR_ACT_BITS) - 1)
    return min(MAX_FAN_IN, ((1 << (PAIR_SHIFT - 1)) - 1) // top)


def merged_capacity(act_bits: int) -> int:
    """The most weights a merged single pass may hold at ``act_bits`` activations: each adds at most
    ``(2^32 - 1)(2^act_bits - 1)`` to ``|P|`` (``|v| <= D`` for a 32-bit code's two chunks and for
    ``R_16 (2 q' - D_16)`` alike) and P must stay inside 48 bits signed; never more than a row (``MAX_FAN_IN``)."""
    if not isinstance(act_bits, int) or not 1 <= act_bits <= MAX_ACT_BITS:
        raise ValueError(f"act_bits must be an integer in 1..{MAX_ACT_BITS}, not {act_bits!r}")
    top = ((1 << 32) - 1) * ((1 << act_bits) - 1)
    return min(MAX_FAN_IN, ((1 << (P_BITS - 1)) - 1) // top)


def lane_weight(code: int, class_bits: int, signed: bool, chunk: int = 0) -> int:
    """The B word a lane multiplies by (module docstring): chunk ``chunk`` of ``v = 2 q - D_m - s`` for a
    ``class_bits``-bit code ``q``; below 32 bits ``v`` itself. The engine forms it in hardware
    (``hw/array/engine.py``); this is its reference."""
    if class_bits not in CLASS_WIDTHS or not 0 <= code < 1 << class_bits or chunk not in (0, 1):
        raise ValueError(f"no lane weight for code {code!r} of class {class_bits!r}, chunk {chunk!r}")
    v = 2 * code - ((1 << class_bits) - 1) - int(bool(signed))
    if class_bits < 32:
        if chunk:
            raise ValueError(f"a {class_bits}-bit weight has one chunk, not chunk {chunk}")
        return v
    return v >> CHUNK_BITS if chunk else v & ((1 << CHUNK_BITS) - 1)


def lane_passes(class_bits: int, act_bits: int) -> list[tuple[bool, int, int]]:
    """A segment's passes, in order: ``(pair, chunk, group)`` (chunk and group 0 in a pair pass)."""
    if is_pair(class_bits, act_bits):
        return [(True, 0, 0)]
    chunks = max(1, class_bits // CHUNK_BITS)
    return [(False, c, g) for c in range(chunks) for g in range(SLOTS)]


def entry_lane_cycles(class_bits: int, act_bits: int) -> int:
    """Lane cycles one non-zero weight of this class costs a lane's two pixels: one per pass it enters
    (:func:`lane_passes`): 1 in a pair pass, 2 for a 4/8/16-bit weight in single passes, 4 for a 32-bit one.
    A merged single pass (:mod:`hw.array.pass_sequencer`) takes the same lane cycles as the separate passes."""
    return len(lane_passes(class_bits, act_bits))


def _check_widths(class_bits: int, act_bits: int) -> None:
    if class_bits not in CLASS_WIDTHS:
        raise ValueError(f"class_bits must be one of {CLASS_WIDTHS}, not {class_bits!r}")
    if not isinstance(act_bits, int) or not 1 <= act_bits <= MAX_ACT_BITS:
        raise ValueError(f"act_bits must be an integer in 1..{MAX_ACT_BITS}, not {act_bits!r}")


def entry_layout() -> data.StructLayout:
    """One entry of a pass: the lane weight, how the pass places the two slots' codes in A, the codes."""
    return data.StructLayout({
        "b": signed(B_BITS + 1),  # B: the lane weight (lane_weight), |b| <= 2^16
        "pair": unsigned(1),  # a pair pass (else single)
        "group": unsigned(1),  # single: A = u[group] placed by a_mode
        "a_mode": unsigned(2),  # single: A_LOW (u), A_HIGH (2^16 u) or A_SPREAD ((1 + 2^16) u)
        "u": data.ArrayLayout(MAX_ACT_BITS, SLOTS),  # below 2^PAIR_ACT_BITS in a pair pass
        "end": unsigned(1),  # the pass's last entry
    })


def result_layout() -> data.StructLayout:
    """A pass's P word (two's complement: signed sums)."""
    return data.StructLayout({"p": signed(P_BITS)})


class PassDspLane(wiring.Component):
    """One DSP48E1 summing a pass's products in P.

    Parameters
    ----------
    leader : PassDspLane or None
        A lane whose entries and output transfers this one shares (an engine's lanes move in lockstep: the same
        ``i.valid``, ``o.ready`` and entries but for the codes ``u``): this lane then takes its pipeline's
        control (the clock enables, the P restart, ``o.valid``) from the leader instead of keeping its own
        copy, and ignores its own ``i.valid`` and ``o.ready``; its ``i.ready`` and ``o.valid`` are the
        leader's. ``None``: a lane of its own.

    Members
    -------
    i : In(stream.Signature(entry_layout()))
        One entry a cycle (``i.ready`` is low only under back-pressure from ``o``).
    o : Out(stream.Signature(result_layout()))
        One transfer per pass.
    """

    def __init__(self, leader: PassDspLane | None = None):
        super().__init__({
            "i": In(stream.Signature(entry_layout())),
            "o": Out(stream.Signature(result_layout())),
        })
        if leader is not None and leader._leader is not None:
            raise ValueError("a lane's leader must lead itself")
        self._leader = leader
        # The pipeline's control (driven by a lane without a leader; read by its followers).
        self._advance = Signal(name="advance")  # every pipeline register moves (the DSP's clock enables)
        self._enter = Signal(name="enter")  # a product enters P at this edge (CEP)
        self._restart = Signal(name="restart")  # P restarts from the product in M (OPMODE Z = 0)
        self._capture = Signal(name="capture")  # the output register takes P

    @property
    def latency(self) -> int:
        """Cycles from accepting a pass's last entry to its result on ``o`` (no back-pressure): the DSP's M
        and P registers and the output register."""
        return DSP_LATENCY + 1

    def elaborate(self, platform):
        m = Module()
        entry = self.i.payload

        # Stage 0: A (B is the entry's lane weight as it comes).
        a_word = Signal(A_BITS + 1)  # 25 bits, the DSP48E1's signed port, with the sign bit 0
        u_g = Mux(entry.group, entry.u[1], entry.u[0])
        low = Mux(entry.a_mode != A_HIGH, u_g, 0)
        high = Mux(entry.a_mode != A_LOW, u_g, 0)
        m.d.comb += a_word.eq(Mux(entry.pair,
                                  entry.u[0][:PAIR_ACT_BITS] | (entry.u[1][:PAIR_ACT_BITS] << PAIR_SHIFT),
                                  low | (high << CHUNK_BITS)))

        lead = self if self._leader is None else self._leader
        if self._leader is None:
            # Stages 1..DSP_LATENCY: the DSP (M and P registers) and its side band.
            advance = self._advance
            m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
            valid = delay_line(m, advance, self.i.valid, "valid")
            ends = delay_line(m, advance, Signal(name="end0"), "end")
            m.d.comb += ends[0].eq(entry.end & self.i.valid)
            p_control(m, advance, valid[M_STAGE], ends[M_STAGE], self._enter, self._restart)
            # Output register: P, the cycle after the pass's last product entered P.
            d = DSP_LATENCY
            m.d.comb += self._capture.eq(advance & valid[d] & ends[d])
            with m.If(self.o.ready):
                m.d.sync += self.o.valid.eq(0)
            with m.If(self._capture):
                m.d.sync += self.o.valid.eq(1)
        else:
            m.d.comb += [self.i.ready.eq(lead._advance), self.o.valid.eq(lead.o.valid)]

        # The DSP48E1's own form, a 25 x 18 signed product (A's sign bit 0, B signed): Yosys then finds the P
        # adder behind it and packs it with PREG.
        p_reg = accumulate_in_p(m, lead._advance, lead._enter, lead._restart, a_word.as_signed() * entry.b)
        with m.If(lead._capture):
            m.d.sync += self.o.payload.p.eq(p_reg)
        return m
