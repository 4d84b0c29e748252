"""AXI4-Lite slave generated from the register map: the host's control port (the PS7's M_AXI_GP0).

The AXI ports are flat members named as Vivado infers an AXI4-Lite slave interface from an HLS core
(``s_axi_control_awaddr`` ... ``s_axi_control_rready``); the register fields are members named after the
rows of :data:`~hw.system.register_map.REGISTER_MAP`, facing the core.

Write channel: AW and W are taken independently, in either order (each has a one-entry holding register,
``awready`` / ``wready`` low while it is full); once both are held and no response is pending, the write
takes effect, honouring ``wstrb`` byte by byte, and B is raised; the next AW and W are taken while B waits.
Read channel: AR is taken while no R is pending; R carries the word one cycle later, with the read's side
effects (clear on read, the high-word latch of 64-bit read-only fields) done in the cycle AR is taken.
Unmapped words read 0 and ignore writes; every response is OKAY, as in HLS cores.

Simulated under cocotb against cocotbext-axi's AXI4-Lite master (tests/sim/test_axi_lite.py); it has not
run on a board or through Vivado's IP integrator.
"""

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.system.register_map import (
    INTERRUPT_EVENTS,
    REGISTER_MAP,
    WORD_BITS,
    WORD_BYTES,
    Access,
    address_width,
    check_map,
)

#: The HLS control bundle's port prefix.
PREFIX = "s_axi_control"


def _core_port(f):
    """The member of a field facing the core, or None for fields the slave keeps to itself."""
    if f.name in ("gie", "ier", "isr"):
        return None
    if f.access in (Access.RW, Access.COH, Access.SC):
        return Out(f.width)
    return In(f.width)  # RO: the value; COR, TOW, W1C: set pulses


class AxiLiteSlave(wiring.Component):
    """AXI4-Lite slave (32-bit data) holding the fields of a register map.

    Parameters
    ----------
    fields : sequence of Field
        The register map (default :data:`~hw.system.register_map.REGISTER_MAP`); checked by
        :func:`~hw.system.register_map.check_map`. Fields named ``gie`` (RW), ``ier`` (RW) and ``isr`` (TOW)
        make the interrupt logic: ``isr`` bit k is set by an event of ``INTERRUPT_EVENTS[k]`` (the input of
        that name) while ``ier`` bit k is set, and ``interrupt = gie & (isr != 0)``. A ``COH`` field is
        cleared by the ``ap_ready`` input unless an ``auto_restart`` field is set.
    prefix : str
        Name prefix of the AXI ports.

    Members
    -------
    <prefix>_awaddr, _awvalid, _awready, _wdata, _wstrb, _wvalid, _wready, _bresp, _bvalid, _bready,
    <prefix>_araddr, _arvalid, _arready, _rdata, _rresp, _rvalid, _rready
        The AXI4-Lite slave port; addresses are :func:`~hw.system.register_map.address_width` bits.
    <field name>
        ``Out(width)`` for RW (the stored value), COH (the bit: ``ap_start``) and SC (a one-cycle pulse the
        cycle after the write takes effect); ``In(width)`` for RO (the value to read), COR, W1C and TOW (set
        pulses, one bit per field bit). ``gie``, ``ier`` and ``isr`` have no member.
    interrupt : Out(1)
        Level interrupt (only with the ``gie`` / ``ier`` / ``isr`` fields).

    Raises
    ------
    ValueError
        A map :func:`check_map` rejects, a ``COH`` field without an ``ap_ready`` COR field, an ``isr`` without
        ``ier`` and ``gie``, an ``isr`` wider than ``INTERRUPT_EVENTS`` or an event field missing, or a
        prefix that is not an identifier.
    """

    def __init__(self, fields=REGISTER_MAP, *, prefix: str = PREFIX):
        fields = tuple(fields)
        check_map(fields)
        if not isinstance(prefix, str) or not prefix.isidentifier():
            raise ValueError(f"prefix must be an identifier, not {prefix!r}")
        by_name = {f.name: f for f in fields}
        if any(f.access == Access.COH for f in fields) and (
                "ap_ready" not in by_name or by_name["ap_ready"].access != Access.COR):
            raise ValueError("a COH field needs an 'ap_ready' COR field that clears it, not "
                             f"{by_name.get('ap_ready')!r}")
        for f in fields:
            if f.access == Access.TOW and f.name != "isr":
                raise ValueError(f"TOW is the interrupt status's access, not that of {f.name!r}")
        if "isr" in by_name:
            isr = by_name["isr"]
            if "ier" not in by_name or "gie" not in by_name:
                raise ValueError(f"an 'isr' field needs 'ier' and 'gie' fields, not only {sorted(by_name)!r}")
            if isr.width > len(INTERRUPT_EVENTS) or by_name["ier"].width != isr.width:
                raise ValueError(f"isr and ier must be equally wide, at most {len(INTERRUPT_EVENTS)} bits, "
                                 f"not {isr.width!r} and {by_name['ier'].width!r}")
            missing = [e for e in INTERRUPT_EVENTS[:isr.width] if e not in by_name]
            if missing:
                raise ValueError(f"interrupt events {missing!r} have no field")
        self._fields = fields
        self._prefix = prefix
        self._addr_width = address_width(fields)
        aw, p = self._addr_width, prefix
        members = {
            f"{p}_awaddr": In(aw), f"{p}_awvalid": In(1), f"{p}_awready": Out(1),
            f"{p}_wdata": In(WORD_BITS), f"{p}_wstrb": In(WORD_BYTES), f"{p}_wvalid": In(1), f"{p}_wready": Out(1),
            f"{p}_bresp": Out(2), f"{p}_bvalid": Out(1), f"{p}_bready": In(1),
            f"{p}_araddr": In(aw), f"{p}_arvalid": In(1), f"{p}_arready": Out(1),
            f"{p}_rdata": Out(WORD_BITS), f"{p}_rresp": Out(2), f"{p}_rvalid": Out(1), f"{p}_rready": In(1),
        }
        for f in fields:
            port = _core_port(f)
            if port is not None:
                if f.name in members:
                    raise ValueError(f"field name {f.name!r} collides with an AXI port")
                members[f.name] = port
        if "isr" in by_name:
            members["interrupt"] = Out(1)
        super().__init__(members)

    @property
    def fields(self):
        return self._fields

    @property
    def addr_width(self) -> int:
        return self._addr_width

    def axi(self, name: str):
        """The AXI port ``<prefix>_<name>``."""
        return getattr(self, f"{self._prefix}_{name}")

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        fields = self._fields
        by_name = {f.name: f for f in fields}

        # Write channel: one holding register each for AW and W, B after both.
        aw_full, aw_addr = Signal(), Signal(self._addr_width)
        w_full, w_data, w_strb = Signal(), Signal(WORD_BITS), Signal(WORD_BYTES)
        bvalid = Signal()
        m.d.comb += [axi("awready").eq(~aw_full), axi("wready").eq(~w_full), axi("bvalid").eq(bvalid),
                     axi("bresp").eq(0)]
        with m.If(axi("awvalid") & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(axi("awaddr"))]
        with m.If(axi("wvalid") & ~w_full):
            m.d.sync += [w_full.eq(1), w_data.eq(axi("wdata")), w_strb.eq(axi("wstrb"))]
        do_write = Signal()
        m.d.comb += do_write.eq(aw_full & w_full & ~bvalid)
        with m.If(do_write):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bvalid.eq(1)]
        with m.Elif(bvalid & axi("bready")):
            m.d.sync += bvalid.eq(0)
        byte_mask = Signal(WORD_BITS)
        m.d.comb += byte_mask.eq(Cat(*(b.replicate(8) for b in w_strb)))
        w_word = aw_addr[2:]

        # Read channel: AR while no R pends, R one cycle later.
        rvalid, rdata = Signal(), Signal(WORD_BITS)
        m.d.comb += [axi("arready").eq(~rvalid), axi("rvalid").eq(rvalid), axi("rdata").eq(rdata),
                     axi("rresp").eq(0)]
        do_read = Signal()
        m.d.comb += do_read.eq(axi("arvalid") & ~rvalid)
        with m.If(do_read):
            m.d.sync += rvalid.eq(1)
        with m.Elif(rvalid & axi("rready")):
            m.d.sync += rvalid.eq(0)
        r_word = axi("araddr")[2:]

        def written(offset):
            """(this write hits the word at ``offset``, its enabled data bits)."""
            hit = Signal(name=f"w_hit_{offset:02x}")
            m.d.comb += hit.eq(do_write & (w_word == offset // WORD_BYTES))
            return hit, w_data & byte_mask

        def is_read(offset):
            hit = Signal(name=f"r_hit_{offset:02x}")
            m.d.comb += hit.eq(do_read & (r_word == offset // WORD_BYTES))
            return hit

        # Storage and read values of every field; read_parts[offset] lists (bit, value) pairs of the word.
        read_parts: dict[int, list] = {}
        storage = {f.name: Signal(f.width, name=f"reg_{f.name}", init=f.reset)
                   for f in fields if f.access not in (Access.RO, Access.SC)}
        for f in fields:
            value = getattr(self, f.name) if f.access == Access.RO else storage.get(f.name)
            if f.width > WORD_BITS:
                hi_shadow = None
                if f.access == Access.RO:  # read the high word as it was when the low word was read
                    hi_shadow = Signal(f.width - WORD_BITS, name=f"{f.name}_hi_latch")
                    with m.If(is_read(f.offset)):
                        m.d.sync += hi_shadow.eq(value[WORD_BITS:])
                for k, offset in enumerate(f.word_offsets()):
                    part = value[WORD_BITS * k:WORD_BITS * (k + 1)]
                    read_parts.setdefault(offset, []).append((0, hi_shadow if k == 1 and hi_shadow is not None
                                                              else part))
                    if f.access == Access.RW:
                        hit, data = written(offset)
                        mask = byte_mask[:len(part)]
                        with m.If(hit):
                            m.d.sync += part.eq((part & ~mask) | (data[:len(part)] & mask))
            else:
                if value is not None:
                    read_parts.setdefault(f.offset, []).append((f.bit, value))
                else:
                    read_parts.setdefault(f.offset, [])
                hit, data = written(f.offset)
                wbits = data[f.bit:f.bit + f.width]
                if f.access == Access.RW:
                    mask = byte_mask[f.bit:f.bit + f.width]
                    with m.If(hit):
                        m.d.sync += value.eq((value & ~mask) | (wbits & mask))
                elif f.access == Access.COH:
                    restart = storage["auto_restart"] if "auto_restart" in by_name else Const(0)
                    with m.If(self.ap_ready & ~restart):
                        m.d.sync += value.eq(0)
                    with m.If(hit & wbits[0]):
                        m.d.sync += value.eq(1)
                elif f.access == Access.COR:
                    with m.If(is_read(f.offset)):
                        m.d.sync += value.eq(0)
                    with m.If(getattr(self, f.name)):
                        m.d.sync += value.eq(1)
                elif f.access in (Access.W1C, Access.TOW):
                    if f.name == "isr":
                        ier = storage["ier"]
                        events = Cat(*(getattr(self, e) for e in INTERRUPT_EVENTS[:f.width])) & ier
                    else:
                        events = getattr(self, f.name)
                    after_write = Signal(f.width, name=f"{f.name}_written")
                    changed = (value ^ wbits) if f.access == Access.TOW else (value & ~wbits)
                    m.d.comb += after_write.eq(value)
                    with m.If(hit):
                        m.d.comb += after_write.eq(changed)
                    m.d.sync += value.eq(after_write | events)
                elif f.access == Access.SC:
                    pulse = getattr(self, f.name)
                    m.d.sync += pulse.eq(hit & wbits[0])
                if f.access in (Access.RW, Access.COH) and _core_port(f) is not None:
                    m.d.comb += getattr(self, f.name).eq(value)
        for f in fields:
            if f.access == Access.RW and f.width > WORD_BITS and _core_port(f) is not None:
                m.d.comb += getattr(self, f.name).eq(storage[f.name])

        # The read multiplexer: the word addressed by AR, registered into R.
        with m.If(do_read):
            m.d.sync += rdata.eq(0)
            with m.Switch(r_word):
                for offset, parts in sorted(read_parts.items()):
                    with m.Case(offset // WORD_BYTES):
                        word = Signal(WORD_BITS, name=f"word_{offset:02x}")
                        m.d.comb += word.eq(0)  # bits no field drives read 0 (not left undriven)
                        for bit, part in parts:
                            m.d.comb += word[bit:bit + len(part)].eq(part)
                        m.d.sync += rdata.eq(word)

        if "isr" in by_name:
            m.d.comb += self.interrupt.eq(storage["gie"][0] & storage["isr"].any())
        return m
