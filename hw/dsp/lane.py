"""Packed DSP48E1 lane: several exact unsigned multiply-accumulates per DSP per cycle.

The lane follows a :class:`~hw.dsp.packing.PackingPlan`: each cycle it packs ``plan.weights`` weight codes
and ``plan.acts`` activation codes into the A and B ports of one DSP48E1, which multiplies them and
accumulates in P; every product has its own slot of P (see :mod:`hw.dsp.packing`). Before a slot could
overflow into its neighbour (``plan.max_accumulation`` products), and at the end of every dot product,
P is *drained*: its slots are added into wide LUT accumulators while P restarts from the next product in
the same cycle, so accumulation is exact for any length up to ``2**count_bits`` products at full rate.
Operands wider than 16 bits go through in 16-bit chunks, one chunk pair per cycle, each drained with
its shift.

Two forms of the DSP, configured from one table (:data:`DSP48E1_ATTRIBUTES`):

* behavioural (default): a registered product ``M`` and ``P = (restart ? 0 : P) + M``. Yosys
  ``synth_xilinx`` maps it to exactly one DSP48E1 with MREG = PREG = 1 and the P feedback in the DSP's
  ALU (OPMODE Z = P or 0, switched per cycle), no fabric registers left behind; ``build.py bench dsp``
  and the tests check it;
* ``Instance("DSP48E1", ...)`` (``instance=True``) for the Vivado flow, with the same registers and the
  OPMODE switched between ``Z = P`` (accumulate) and ``Z = 0`` (restart) per cycle.

The latency from an operand set to the P register is :data:`DSP_LATENCY` cycles in both forms.
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.dsp.packing import A_BITS, B_BITS, CHUNK_BITS, P_BITS, PackingPlan

#: DSP48E1 configuration shared by both forms (UG479 v1.11, table 2-2 attributes, table 2-7 OPMODE).
DSP48E1_ATTRIBUTES = {
    "A_INPUT": "DIRECT",  # A from the fabric, not the cascade
    "B_INPUT": "DIRECT",
    "USE_DPORT": "FALSE",  # pre-adder unused: packing needs the full 25-bit A
    "USE_MULT": "MULTIPLY",
    "USE_SIMD": "ONE48",
    # No A/B input registers: the packed fields of A and B are partly constant zero, which keeps Yosys
    # from absorbing fabric registers there; the product (MREG) and accumulator (PREG) registers carry
    # the pipeline, which meets 100 MHz easily (the -1 speed grade's DSP48E1 runs at 464 MHz with MREG).
    "AREG": 0,
    "BREG": 0,
    "ACASCREG": 0,  # must equal AREG (UG479 table 2-2)
    "BCASCREG": 0,
    "MREG": 1,  # the registered product `m_reg`
    "PREG": 1,  # the accumulator `p_reg`
    "ADREG": 0,
    "DREG": 0,
    "CREG": 0,
    "CARRYINREG": 0,
    "CARRYINSELREG": 0,
    "OPMODEREG": 0,  # OPMODE comes from the fabric `restart` flop, registered with M (Yosys infers the same)
    "ALUMODEREG": 0,
    "INMODEREG": 0,
    "MASK": 0x3FFFFFFFFFFF,
    "PATTERN": 0,
    "SEL_MASK": "MASK",
    "SEL_PATTERN": "PATTERN",
    "USE_PATTERN_DETECT": "NO_PATDET",
    "AUTORESET_PATDET": "NO_RESET",
}
#: OPMODE = Z(6:4) Y(3:2) X(1:0): X = Y = M (01, 01) puts the product on the ALU; Z = P (010) accumulates,
#: Z = 0 (000) restarts P from the product (UG479 tables 2-7 to 2-9). ALUMODE 0000: Z + X + Y + CIN.
OPMODE_ACCUMULATE = 0b010_01_01
OPMODE_RESTART = 0b000_01_01
ALUMODE_ADD = 0b0000
INMODE_A2_B2 = 0b00000  # multiplier takes A2 and B2 (transparent with AREG = BREG = 0)
#: Cycles from the operands to P: the M register, then the P register.
DSP_LATENCY = DSP48E1_ATTRIBUTES["AREG"] + DSP48E1_ATTRIBUTES["MREG"] + DSP48E1_ATTRIBUTES["PREG"]
M_STAGE = DSP_LATENCY - 1  # pipeline stage whose product enters P at the next edge


def delay_line(m, advance, sig, name: str) -> list:
    """``sig`` and its copies 1 to :data:`DSP_LATENCY` stages later, moving when ``advance``: the side band
    that travels with an operand set through the DSP's registers."""
    pipe = [sig] + [Signal.like(sig, name=f"{name}{k}") for k in range(1, DSP_LATENCY + 1)]
    with m.If(advance):
        m.d.sync += [pipe[k + 1].eq(pipe[k]) for k in range(DSP_LATENCY)]
    return pipe


def p_control(m, advance, valid_m, end_m, enter, restart) -> None:
    """The DSP48E1's P-register control, behaviourally: drive ``enter`` (a product enters P at this edge: CEP)
    and ``restart`` (P restarts, OPMODE Z = 0, with the product behind a closed or empty accumulation; registered
    with M, like the DSP's OPMODE register). ``valid_m`` / ``end_m``: the M stage's valid and "closes its
    accumulation" bits (:data:`M_STAGE` of a :func:`delay_line`). One copy serves every lane that moves in
    lockstep (:class:`~hw.dsp.pass_lane.PassDspLane`'s ``leader``)."""
    p_holds = Signal()  # P holds an open accumulation
    m.d.comb += enter.eq(advance & valid_m)
    with m.If(enter):
        m.d.sync += p_holds.eq(~end_m)
    with m.If(advance):
        m.d.sync += restart.eq(Mux(valid_m, end_m, ~p_holds))


def accumulate_in_p(m, advance, enter, restart, product):
    """The DSP48E1's M and P registers, behaviourally: ``M = product`` (CEM = ``advance``), P sums the products
    (CEP = ``enter``) and restarts from the one in M when ``restart`` (:func:`p_control`); returns P. The
    registers have no reset (``restart`` clears P before use): reset-less registers are what Yosys packs as MREG
    and PREG, the adder between them as the DSP's post-adder."""
    m_reg = Signal(product.shape(), reset_less=True)
    p_reg = Signal(P_BITS, reset_less=True)
    with m.If(advance):
        m.d.sync += m_reg.eq(product)
    with m.If(enter):
        m.d.sync += p_reg.eq((Mux(restart, 0, p_reg) + m_reg)[:P_BITS])
    return p_reg


def lane_latency(plan: PackingPlan) -> int:
    """Cycles from accepting an operand set with ``last`` to its sums on ``o``: the DSP's M and P
    registers and the drain into the output register. A multi-chunk set is accepted with its last chunk
    (``i.ready`` stays low over the earlier ones), so the chunk count does not add to it."""
    return DSP_LATENCY + 1


def operand_layout(plan: PackingPlan) -> data.StructLayout:
    return data.StructLayout({
        "w": data.ArrayLayout(plan.weight_bits, plan.weights),
        "a": data.ArrayLayout(plan.act_bits, plan.acts),
        "last": unsigned(1),  # this operand set ends the dot products
    })


def sums_layout(plan: PackingPlan, count_bits: int) -> data.ArrayLayout:
    """``sums[w][a]``: the dot product of weight lane ``w`` with activation lane ``a``."""
    bits = plan.weight_bits + plan.act_bits + count_bits
    return data.ArrayLayout(data.ArrayLayout(bits, plan.acts), plan.weights)


class PackedDspLane(wiring.Component):
    """One DSP48E1 computing ``plan.weights x plan.acts`` exact dot products at once.

    Parameters
    ----------
    plan : PackingPlan
        The mode (:func:`hw.dsp.packing.plan`).
    count_bits : int
        Accumulators hold sums of up to ``2**count_bits`` products exactly.
    instance : bool
        Use an explicit ``Instance("DSP48E1")`` (Vivado) instead of the behavioural DSP (simulation,
        Yosys).

    Members
    -------
    i : In(stream.Signature(operand_layout(plan)))
        Weight and activation codes of one step of the dot products; ``last`` closes them.
    o : Out(stream.Signature(sums_layout(plan, count_bits)))
        The finished dot products, one transfer per ``last``.
    """

    def __init__(self, plan: PackingPlan, *, count_bits: int = 32, instance: bool = False):
        if not isinstance(plan, PackingPlan):
            raise TypeError(f"plan must be a PackingPlan, not {plan!r}")
        if not 1 <= count_bits <= 48:
            raise ValueError(f"count_bits must be in 1..48, not {count_bits!r}")
        self._plan = plan
        self._count_bits = count_bits
        self._instance = instance
        super().__init__({
            "i": In(stream.Signature(operand_layout(plan))),
            "o": Out(stream.Signature(sums_layout(plan, count_bits))),
        })

    @property
    def plan(self) -> PackingPlan:
        return self._plan

    @property
    def latency(self) -> int:
        """Cycles from the last operand set's acceptance to its sums on ``o`` (no back-pressure)."""
        return lane_latency(self._plan)

    def elaborate(self, platform):
        m = Module()
        plan = self._plan
        wchunks = -(-plan.weight_bits // plan.weight_chunk)
        achunks = -(-plan.act_bits // plan.act_chunk)
        chunked = plan.chunks > 1
        advance = Signal()  # every pipeline register moves (DSP clock enables)
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        # Stage 0: chunk sequencing and drain scheduling for the operand set at the input.
        cw = Signal(range(max(wchunks, 2)))
        ca = Signal(range(max(achunks, 2)))
        last_chunk = Signal()
        m.d.comb += last_chunk.eq((cw == wchunks - 1) & (ca == achunks - 1))
        m.d.comb += self.i.ready.eq(advance & last_chunk)
        with m.If(advance & self.i.valid):
            with m.If(last_chunk):
                m.d.sync += [cw.eq(0), ca.eq(0)]
            with m.Elif(ca == achunks - 1):
                m.d.sync += [ca.eq(0), cw.eq(cw + 1)]
            with m.Else():
                m.d.sync += ca.eq(ca + 1)

        w_chunks = [Signal(plan.weight_chunk, name=f"w{k}_chunk") for k in range(plan.weights)]
        a_chunks = [Signal(plan.act_chunk, name=f"a{k}_chunk") for k in range(plan.acts)]
        for k, sig in enumerate(w_chunks):
            full = self.i.payload.w[k]
            m.d.comb += sig.eq(full.word_select(cw, plan.weight_chunk) if wchunks > 1 else full)
        for k, sig in enumerate(a_chunks):
            full = self.i.payload.a[k]
            m.d.comb += sig.eq(full.word_select(ca, plan.act_chunk) if achunks > 1 else full)
        xs, ys = (w_chunks, a_chunks) if plan.weight_port == "A" else (a_chunks, w_chunks)
        a_word = Signal(A_BITS)
        b_word = Signal(B_BITS)
        # Non-overlapping fields: plain wiring (an adder here would be packed into the pre-adder).
        for x, off in zip(xs, plan.a_layout()):
            m.d.comb += a_word[off:off + len(x)].eq(x)
        for y, off in zip(ys, plan.b_layout()):
            m.d.comb += b_word[off:off + len(y)].eq(y)

        # Drain schedule: a segment of P accumulation ends at `last`, after max_accumulation products,
        # or on every chunk (chunk pairs need different shifts).
        count = Signal(range(plan.max_accumulation + 1))
        seg_end = Signal()
        final = Signal()
        m.d.comb += [
            final.eq(self.i.payload.last & last_chunk),
            seg_end.eq(final | (count == plan.max_accumulation - 1) | Const(chunked)),
        ]
        with m.If(advance & self.i.valid):
            m.d.sync += count.eq(Mux(seg_end, 0, count + 1))
        shift_bits = CHUNK_BITS * (wchunks + achunks)
        shift = Signal(range(shift_bits + 1))
        m.d.comb += shift.eq((cw + ca) * CHUNK_BITS if chunked else 0)

        # Stages 1-3: the DSP (A/B register, M register, P register) and its side-band pipeline.
        valid = [Signal(name=f"valid{k}") for k in range(DSP_LATENCY + 1)]
        ends = [Signal(name=f"seg_end{k}") for k in range(DSP_LATENCY + 1)]
        finals = [Signal(name=f"final{k}") for k in range(DSP_LATENCY + 1)]
        shifts = [Signal.like(shift, name=f"shift{k}") for k in range(DSP_LATENCY + 1)]
        m.d.comb += [valid[0].eq(self.i.valid), ends[0].eq(seg_end), finals[0].eq(final), shifts[0].eq(shift)]
        with m.If(advance):
            for k in range(DSP_LATENCY):
                m.d.sync += [valid[k + 1].eq(valid[k]), ends[k + 1].eq(ends[k] & valid[k]),
                             finals[k + 1].eq(finals[k] & valid[k]), shifts[k + 1].eq(shifts[k])]
        # P holds an open segment (products accumulated but not drained). The product in the M stage enters
        # P at the next edge; the one behind it restarts P (OPMODE Z = 0) if, by the time it arrives, P's
        # segment is closed or empty. That decision is registered with M, like the DSP's OPMODE register.
        restart = Signal()
        enter = Signal()  # a product enters P at this edge (CEP)
        p_control(m, advance, valid[M_STAGE], ends[M_STAGE], enter, restart)
        p_reg = Signal(P_BITS, reset_less=True)
        if self._instance:
            self._dsp_instance(m, a_word, b_word, advance, enter, restart, p_reg)
        else:
            # No reset on the DSP's registers: the lane never reads them before a valid product fills them
            # (`restart` clears P), and reset-less registers are what Yosys packs as AREG/BREG/MREG/PREG.
            m_reg = Signal(A_BITS + B_BITS, reset_less=True)
            with m.If(advance):
                m.d.sync += m_reg.eq(a_word * b_word)
            with m.If(enter):
                m.d.sync += p_reg.eq((Mux(restart, 0, p_reg) + m_reg)[:P_BITS])

        # Drain: P's slots into the wide accumulators when the product now in P closed a segment.
        drain = Signal()
        m.d.comb += drain.eq(valid[DSP_LATENCY] & ends[DSP_LATENCY])
        sum_bits = plan.weight_bits + plan.act_bits + self._count_bits
        accs = [[Signal(sum_bits, name=f"acc_{w}_{a}") for a in range(plan.acts)] for w in range(plan.weights)]
        for w in range(plan.weights):
            for a in range(plan.acts):
                off, width = plan.offset(w, a), plan.slot_width(w, a)
                part = Signal(sum_bits, name=f"slot_{w}_{a}")
                m.d.comb += part.eq(p_reg[off:off + width] << shifts[DSP_LATENCY])
                total = accs[w][a] + part
                with m.If(advance & drain):
                    with m.If(finals[DSP_LATENCY]):
                        m.d.sync += [self.o.payload[w][a].eq(total), accs[w][a].eq(0)]
                    with m.Else():
                        m.d.sync += accs[w][a].eq(total)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(advance & drain & finals[DSP_LATENCY]):
            m.d.sync += self.o.valid.eq(1)
        return m

    def _dsp_instance(self, m, a_word, b_word, advance, enter, restart, p_reg):
        """The DSP48E1 primitive with :data:`DSP48E1_ATTRIBUTES`; OPMODE follows the ``restart`` flop that
        is registered with M, exactly as in the behavioural form."""
        opmode = Signal(7)
        m.d.comb += opmode.eq(Mux(restart, OPMODE_RESTART, OPMODE_ACCUMULATE))
        params = {f"p_{k}": v for k, v in DSP48E1_ATTRIBUTES.items()}
        m.submodules.dsp = Instance(
            "DSP48E1",
            **params,
            i_CLK=ClockSignal("sync"),
            i_A=Cat(a_word, Const(0, 30 - A_BITS)),
            i_B=Cat(b_word, Const(0, 18 - B_BITS)),
            i_C=Const(0, 48), i_D=Const(0, 25), i_CARRYIN=0, i_CARRYINSEL=Const(0, 3),
            i_OPMODE=opmode, i_ALUMODE=Const(ALUMODE_ADD, 4), i_INMODE=Const(INMODE_A2_B2, 5),
            i_CEA1=0, i_CEA2=0, i_CEB1=0, i_CEB2=0, i_CEM=advance, i_CEP=enter,
            i_CECTRL=0, i_CEAD=0, i_CED=0, i_CEC=0, i_CECARRYIN=0, i_CEINMODE=0, i_CEALUMODE=0,
            i_RSTA=0, i_RSTB=0, i_RSTM=0, i_RSTP=0, i_RSTC=0, i_RSTD=0, i_RSTCTRL=0, i_RSTALLCARRYIN=0,
            i_RSTALUMODE=0, i_RSTINMODE=0,
            i_ACIN=Const(0, 30), i_BCIN=Const(0, 18), i_PCIN=Const(0, 48), i_CARRYCASCIN=0, i_MULTSIGNIN=0,
            o_P=p_reg,
        )
