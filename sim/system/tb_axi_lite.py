"""cocotb tests of :class:`hw.system.axi_lite.AxiLiteSlave` (the register map's AXI4-Lite slave).

The host side is cocotbext-axi's ``AxiLiteMaster`` with random pauses on all five channels, so AW and W
arrive in either order and B / R wait for ``bready`` / ``rready``; the core side (``ap_done``, ``status``,
the cycle counters, ...) is driven here. A Python model of the register words (from the same table) gives
every expected read. Settings: ``AXI_TB_SEED`` (stall patterns and data), ``AXI_TB_OPS`` (random accesses).
"""

from __future__ import annotations

import itertools
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from hw.system.axi_lite import PREFIX
from hw.system.register_map import REGISTER_MAP, WORD_BITS, WORD_BYTES, Access, field

CLOCK_NS = 10
MASK32 = (1 << WORD_BITS) - 1


def _pauses(rng: random.Random, p: float):
    while True:
        yield int(rng.random() < p)


class AxiLiteTB:
    """Clock, reset, the AXI4-Lite master with random pauses, core-side inputs and the pulse counters."""

    def __init__(self, dut):
        self.dut = dut
        self.seed = int(os.environ.get("AXI_TB_SEED", "0"))
        self.rng = random.Random(self.seed)
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        self.master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, PREFIX), dut.clk, dut.rst)
        for channel, p in ((self.master.write_if.aw_channel, 0.4), (self.master.write_if.w_channel, 0.4),
                           (self.master.write_if.b_channel, 0.3), (self.master.read_if.ar_channel, 0.3),
                           (self.master.read_if.r_channel, 0.3)):
            channel.set_pause_generator(_pauses(random.Random(self.rng.random()), p))
        self.load_pulses = 0
        self.aw_first = self.w_first = 0  # writes whose AW came before W, and the other way round

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        for name in ("ap_done", "ap_ready", "rresp_error", "bresp_error", "busy_cycles", "load_cycles", "status"):
            getattr(dut, name).value = 0
        dut.ap_idle.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        cocotb.start_soon(self._count_load_pulses())
        cocotb.start_soon(self._watch_order())

    async def _count_load_pulses(self):
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            self.load_pulses += int(self.dut.load_image.value)

    async def _watch_order(self):
        """Count the writes whose AW was taken before their W and the other way round."""
        dut, p = self.dut, PREFIX
        aw_pending = w_pending = 0
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            aw = int(getattr(dut, f"{p}_awvalid").value) and int(getattr(dut, f"{p}_awready").value)
            w = int(getattr(dut, f"{p}_wvalid").value) and int(getattr(dut, f"{p}_wready").value)
            if aw and not w and w_pending == 0:
                self.aw_first += 1
            if w and not aw and aw_pending == 0:
                self.w_first += 1
            aw_pending += aw
            w_pending += w
            matched = min(aw_pending, w_pending)
            aw_pending -= matched
            w_pending -= matched

    async def read(self, offset: int) -> int:
        return int.from_bytes((await self.master.read(offset, WORD_BYTES)).data, "little")

    async def write(self, offset: int, value: int, strb: int = 0xF) -> None:
        """Write the bytes of ``value`` selected by ``strb`` (contiguous runs only: one AXI write per run)."""
        data = value.to_bytes(WORD_BYTES, "little")
        lanes = [k for k in range(WORD_BYTES) if strb >> k & 1]
        for _, run in itertools.groupby(enumerate(lanes), key=lambda kv: kv[1] - kv[0]):
            run = [lane for _, lane in run]
            await self.master.write(offset + run[0], data[run[0]:run[-1] + 1])

    async def pulse(self, name: str, value: int = 1) -> None:
        """Drive the core input ``name`` to ``value`` for one clock cycle."""
        await RisingEdge(self.dut.clk)
        getattr(self.dut, name).value = value
        await RisingEdge(self.dut.clk)
        getattr(self.dut, name).value = 0


class WordModel:
    """Expected words of the RW fields (and the reset view of every field) from the register map."""

    def __init__(self):
        self.words: dict[int, int] = {}
        self.rw_mask: dict[int, int] = {}
        for f in REGISTER_MAP:
            for k, offset in enumerate(f.word_offsets()):
                reset = (f.reset >> (WORD_BITS * k)) & MASK32 if f.width > WORD_BITS else f.reset << f.bit
                self.words[offset] = self.words.get(offset, 0) | reset
                if f.access == Access.RW:
                    bits = MASK32 if f.width > WORD_BITS else f.mask
                    if f.width > WORD_BITS and k == f.words - 1:
                        bits = (1 << (f.width - WORD_BITS * k)) - 1
                    self.rw_mask[offset] = self.rw_mask.get(offset, 0) | bits

    def write(self, offset: int, value: int, strb: int) -> None:
        bytes_mask = sum(0xFF << (8 * k) for k in range(WORD_BYTES) if strb >> k & 1)
        mask = self.rw_mask.get(offset, 0) & bytes_mask
        self.words[offset] = (self.words.get(offset, 0) & ~mask) | (value & mask)
        for f in REGISTER_MAP:  # ap_start: a written 1 sets it (no ap_ready comes in this test)
            if f.access == Access.COH and f.offset == offset:
                self.words[offset] |= value & bytes_mask & f.mask

    def field_value(self, name: str) -> int:
        f = field(name)
        if f.width > WORD_BITS:
            return sum(self.words[o] << (WORD_BITS * k) for k, o in enumerate(f.word_offsets()))
        return (self.words[f.offset] & f.mask) >> f.bit


def _rw_offsets() -> list[int]:
    return sorted({o for f in REGISTER_MAP if f.access == Access.RW for o in f.word_offsets()})


@cocotb.test()
async def registers_read_write(dut):
    """Reset values, then random RW writes (random wstrb) and reads in random order against the model."""
    tb = AxiLiteTB(dut)
    await tb.reset()
    model = WordModel()
    for f in REGISTER_MAP:  # reset values, RO inputs held at their reset view
        if f.access == Access.RW and f.name not in ("gie", "ier"):
            assert int(getattr(dut, f.name).value) == f.reset, f"{f.name} out of reset: {getattr(dut, f.name).value}"
    ctrl = await tb.read(0x00)
    assert ctrl == 1 << field("ap_idle").bit, f"control after reset {ctrl:#x}"
    assert await tb.read(field("image_count").offset) == field("image_count").reset
    offsets = _rw_offsets()
    unmapped = [o for o in range(0, 1 << len(dut.s_axi_control_awaddr), WORD_BYTES)
                if o not in model.words]
    assert unmapped, "the test needs an unmapped word"
    n_ops = int(os.environ.get("AXI_TB_OPS", "300"))
    for _ in range(n_ops):
        kind = tb.rng.random()
        offset = tb.rng.choice(offsets)
        if kind < 0.5:
            value, strb = tb.rng.getrandbits(32), tb.rng.choice([0xF, 0xF, 0x1, 0x2, 0x4, 0x8, 0x3, 0xC, 0x6, 0xE, 0x7])
            await tb.write(offset, value, strb)
            model.write(offset, value, strb)
        elif kind < 0.9:
            got = await tb.read(offset)
            assert got == model.words[offset], f"read {offset:#x}: {got:#x}, expected {model.words[offset]:#x}"
        else:
            off = tb.rng.choice(unmapped)
            await tb.write(off, tb.rng.getrandbits(32))
            assert await tb.read(off) == 0, f"unmapped word {off:#x} did not read 0"
    # Many writes and reads in flight at once (the master queues them; the slave takes one at a time).
    pending = []
    for offset in offsets:
        value = tb.rng.getrandbits(32)
        pending.append(tb.master.init_write(offset, value.to_bytes(4, "little")))
        model.write(offset, value, 0xF)
    for event in pending:
        await event.wait()
    for f in REGISTER_MAP:
        if f.access == Access.RW and f.name not in ("gie", "ier"):
            got = int(getattr(dut, f.name).value)
            assert got == model.field_value(f.name), f"{f.name} port {got:#x}, expected {model.field_value(f.name):#x}"
    for offset in offsets:
        assert await tb.read(offset) == model.words[offset]
    assert tb.aw_first > 0 and tb.w_first > 0, f"AW first {tb.aw_first}, W first {tb.w_first}: order not mixed"
    dut._log.info("%d ops; AW before W %d times, W before AW %d times", n_ops, tb.aw_first, tb.w_first)


@cocotb.test()
async def control_handshake_and_interrupt(dut):
    """ap_start (COH) and auto_restart, ap_done / ap_ready (COR), GIE / IER / ISR (TOW) and the interrupt."""
    tb = AxiLiteTB(dut)
    await tb.reset()
    done_bit, ready_bit = 1 << field("ap_done").bit, 1 << field("ap_ready").bit
    start_bit, restart_bit = 1 << field("ap_start").bit, 1 << field("auto_restart").bit
    isr_off, ier_off, gie_off = field("isr").offset, field("ier").offset, field("gie").offset
    # start: set by a written 1, unaffected by a written 0, cleared by ap_ready
    await tb.write(0x00, start_bit)
    assert int(dut.ap_start.value) == 1
    await tb.write(0x00, 0)
    assert int(dut.ap_start.value) == 1, "a written 0 must not clear ap_start"
    dut.ap_idle.value = 0
    await tb.pulse("ap_ready")
    await RisingEdge(dut.clk)
    assert int(dut.ap_start.value) == 0, "ap_ready must clear ap_start"
    ctrl = await tb.read(0x00)
    assert ctrl == ready_bit, f"control {ctrl:#x}: expected only ap_ready (COR)"
    assert await tb.read(0x00) == 0, "ap_ready must clear on read"
    # ap_done: COR, no interrupt while IER/GIE are 0
    await tb.pulse("ap_done")
    dut.ap_idle.value = 1
    await RisingEdge(dut.clk)
    assert int(dut.interrupt.value) == 0
    assert await tb.read(isr_off) == 0, "ISR set with IER clear"
    ctrl = await tb.read(0x00)
    assert ctrl == done_bit | (1 << field("ap_idle").bit), f"control {ctrl:#x}"
    assert await tb.read(0x00) == 1 << field("ap_idle").bit, "ap_done must clear on read"
    # auto_restart keeps ap_start across ap_ready
    await tb.write(0x00, start_bit | restart_bit)
    await tb.pulse("ap_ready")
    await RisingEdge(dut.clk)
    assert int(dut.ap_start.value) == 1 and int(dut.auto_restart.value) == 1, "auto_restart lost ap_start"
    await tb.write(0x00, 0)  # clear auto_restart (RW); ap_start stays until the next ap_ready
    await tb.pulse("ap_ready")
    await RisingEdge(dut.clk)
    assert int(dut.ap_start.value) == 0
    # interrupts: IER selects the events, GIE gates the output, ISR toggles on write
    await tb.write(ier_off, 0b01)
    await tb.pulse("ap_ready")  # not enabled
    await tb.pulse("ap_done")
    await RisingEdge(dut.clk)
    assert await tb.read(isr_off) == 0b01
    assert int(dut.interrupt.value) == 0, "interrupt without GIE"
    await tb.write(gie_off, 1)
    await RisingEdge(dut.clk)
    assert int(dut.interrupt.value) == 1, "no interrupt with GIE, IER and ISR set"
    await tb.write(isr_off, 0b01)  # toggle: clears
    await RisingEdge(dut.clk)
    assert int(dut.interrupt.value) == 0 and await tb.read(isr_off) == 0
    await tb.write(isr_off, 0b10)  # toggle: sets (TOW, not W1C)
    await RisingEdge(dut.clk)
    assert await tb.read(isr_off) == 0b10 and int(dut.interrupt.value) == 1
    await tb.write(isr_off, 0b10)
    await tb.write(ier_off, 0b11)
    await tb.pulse("ap_ready")
    await RisingEdge(dut.clk)
    assert await tb.read(isr_off) == 0b10 and int(dut.interrupt.value) == 1
    await tb.write(gie_off, 0)
    await RisingEdge(dut.clk)
    assert int(dut.interrupt.value) == 0


@cocotb.test()
async def status_counters_w1c_and_command(dut):
    """RO status, 64-bit counters read without tearing, W1C error flags, the load_image command pulse."""
    tb = AxiLiteTB(dut)
    await tb.reset()
    dut.status.value = 5
    await RisingEdge(dut.clk)
    assert await tb.read(field("status").offset) == 5
    busy, load = field("busy_cycles"), field("load_cycles")
    # the carry put between the host's two reads: the high word is the one latched with the low word, on
    # each counter (a slave without the latch reads 0x1_ffffffff here)
    for f in (busy, load):
        getattr(dut, f.name).value = (1 << 32) - 1
        await RisingEdge(dut.clk)
        assert await tb.read(f.offset) == 0xFFFFFFFF
        getattr(dut, f.name).value = 1 << 32
        await RisingEdge(dut.clk)
        assert await tb.read(f.offset + 4) == 0, f"{f.name}: the high word read after the carry, not latched"
        assert await tb.read(f.offset) == 0 and await tb.read(f.offset + 4) == 1, f"{f.name}: the next read"
    # a counter that crosses 2**32 while the host reads it: low then high word must belong together

    async def count():
        value = (1 << 32) - 40
        while True:
            await RisingEdge(dut.clk)
            value += 1
            dut.busy_cycles.value = value
            dut.load_cycles.value = (value * 3) & ((1 << 64) - 1)

    counter = cocotb.start_soon(count())
    seen_carry = False
    previous = 0
    for _ in range(30):
        lo = await tb.read(busy.offset)
        hi = await tb.read(busy.offset + 4)
        value = hi << 32 | lo
        now = int(dut.busy_cycles.value)
        assert previous < value <= now, f"busy_cycles read {value:#x} (previous {previous:#x}, now {now:#x})"
        assert now - value < 100, f"busy_cycles read {value:#x} long after {now:#x}"
        seen_carry |= hi == 1
        previous = value
        lo = await tb.read(load.offset)
        hi = await tb.read(load.offset + 4)
        assert (hi << 32 | lo) % 3 == 0, f"load_cycles read torn: {hi:#x}:{lo:#x}"
    counter.cancel()
    assert seen_carry, "the counter never crossed 2**32 during the test"
    # W1C: set by pulses, cleared by a written 1 only for that bit
    r_bit, b_bit = 1 << field("rresp_error").bit, 1 << field("bresp_error").bit
    off = field("rresp_error").offset
    await tb.pulse("rresp_error")
    await tb.pulse("bresp_error")
    await RisingEdge(dut.clk)
    assert await tb.read(off) == r_bit | b_bit
    assert await tb.read(off) == r_bit | b_bit, "W1C bits must not clear on read"
    await tb.write(off, r_bit)
    assert await tb.read(off) == b_bit
    await tb.write(off, b_bit)
    assert await tb.read(off) == 0
    # SC: one pulse per written 1, reads 0
    tb.load_pulses = 0
    cmd = field("load_image").offset
    await tb.write(cmd, 1)
    await tb.write(cmd, 0)
    await tb.write(cmd, 1)
    await ClockCycles(dut.clk, 3)
    assert tb.load_pulses == 2, f"load_image pulsed {tb.load_pulses} times for two written 1s"
    assert await tb.read(cmd) == 0
