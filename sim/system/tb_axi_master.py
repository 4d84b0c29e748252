"""cocotb tests of :class:`hw.system.axi_master.AxiMaster` against :class:`~sim.system.axi_models.LatencyAxiRam`.

The memory answers with random latency and back-pressure on every channel; the command and word streams
run with random idle cycles and back-pressure (:mod:`sim.transactors`); :class:`AxiProtocolChecker` watches
every burst. Reads are compared word for word with the memory, writes byte for byte over the whole region
(so a wrong strobe that touches a neighbouring byte fails). Unsolicited B and R responses (the slave breaking
the protocol) must be reported once and leave the engines working. Settings: ``AXI_TB_SEED``, ``AXI_TB_COMMANDS``,
``AXI_TB_STALL`` ("1"/"0"), ``AXI_TB_MAX_BURST``, ``AXI_TB_MAX_READS`` (the DUT's parameters, for the
checker and the outstanding check).
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from hw.system.axi_master import READ_WORD, command_layout
from sim.system.axi_models import AxiProtocolChecker, LatencyAxiRam
from sim.tb.stream import backpressure_pattern, idle_pattern
from sim.transactors import StreamSink, StreamSource

CLOCK_NS = 10
PREFIX = "m_axi_gmem"
MEMORY_BYTES = 1 << 16
BEAT = 8


class AxiMasterTB:
    def __init__(self, dut):
        self.dut = dut
        env = os.environ
        self.seed = int(env.get("AXI_TB_SEED", "0"))
        self.stall = env.get("AXI_TB_STALL", "1") == "1"
        self.commands = int(env.get("AXI_TB_COMMANDS", "30"))
        self.max_burst = int(env.get("AXI_TB_MAX_BURST", "16"))
        self.max_reads = int(env.get("AXI_TB_MAX_READS", "4"))
        self.max_writes = int(env.get("AXI_TB_MAX_WRITES", str(self.max_reads)))  # the build's max_writes
        self.rng = random.Random(self.seed)
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        aw = len(dut.m_axi_gmem_araddr)
        cmd = command_layout(aw, len(dut.rd_cmd__payload) - aw)
        self.ram = LatencyAxiRam(dut, PREFIX, dut.clk, dut.rst, size=MEMORY_BYTES, rng=self.rng, stall=self.stall)
        self.checker = AxiProtocolChecker(dut, PREFIX, dut.clk, max_burst=self.max_burst)
        self.rd_cmd = StreamSource(dut, "rd_cmd", payload_shape=cmd)
        self.rd_data = StreamSink(dut, "rd_data", payload_shape=READ_WORD)
        self.wr_cmd = StreamSource(dut, "wr_cmd", payload_shape=cmd)
        self.wr_data = StreamSource(dut, "wr_data")
        if self.stall:
            self.rd_data.set_pause_generator(backpressure_pattern(random.Random(self.rng.random())))
            self.wr_data.set_pause_generator(idle_pattern(random.Random(self.rng.random())))
            self.rd_cmd.set_pause_generator(idle_pattern(random.Random(self.rng.random()), 0.5, 20))
            # Commands held back too: a write's words then wait in wr_data before its command arrives.
            self.wr_cmd.set_pause_generator(idle_pattern(random.Random(self.rng.random()), 0.5, 20))
        self.rd_errors = self.wr_errors = 0

    async def reset(self):
        dut = self.dut
        for port in (self.rd_cmd, self.rd_data, self.wr_cmd, self.wr_data):
            port.drive_idle()
        dut.rst.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        for port in (self.rd_cmd, self.rd_data, self.wr_cmd, self.wr_data):
            port.start()
        cocotb.start_soon(self._count_errors())

    async def _count_errors(self):
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            self.rd_errors += int(self.dut.rd_error.value)
            self.wr_errors += int(self.dut.wr_error.value)

    async def wait_until(self, condition, what: str, limit: int = 200_000):
        for _ in range(limit):
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if condition():
                await RisingEdge(self.dut.clk)
                return
        raise AssertionError(f"timed out after {limit} cycles waiting for {what}")

    def random_region(self, granule: int, max_bytes: int) -> tuple[int, int]:
        """(addr, length), multiples of ``granule``, inside the memory, often next to a 4 KiB boundary."""
        length = granule * self.rng.choice([1, 2, 3, self.rng.randint(1, 40),
                                            self.rng.randint(1, max_bytes // granule)])
        if self.rng.random() < 0.4:  # start just before a 4 KiB boundary
            boundary = 4096 * self.rng.randint(1, MEMORY_BYTES // 4096 - 1)
            addr = boundary - granule * self.rng.randint(1, 40)
        else:
            addr = granule * self.rng.randrange(MEMORY_BYTES // granule)
        addr = max(0, min(addr, MEMORY_BYTES - length))
        return addr, length

    def finish(self):
        assert not self.checker.errors, f"AXI protocol violations: {self.checker.errors[:5]}"
        for port in (self.rd_data,):
            assert not port.protocol_errors, port.protocol_errors[:5]


def _expected_words(memory: bytes, commands) -> list[dict]:
    words = []
    for addr, length in commands:
        chunk = memory[addr:addr + length]
        n = length // 4
        words += [{"data": int.from_bytes(chunk[4 * k:4 * k + 4], "little"), "last": int(k == n - 1)}
                  for k in range(n)]
    return words


async def _random_reads(tb, background: bytes) -> list[tuple[int, int]]:
    """Random read commands (and two that straddle 4 KiB boundaries); checks the words against ``background``
    and the bytes requested; returns the commands."""
    dut = tb.dut
    commands = [tb.random_region(BEAT, 4096) for _ in range(tb.commands)]
    commands += [(4096 - 8, 16), (8192 - 128, 256)]  # straddle boundaries
    expected = _expected_words(background, commands)
    n0, bursts0 = len(tb.rd_data.received), len(tb.checker.ar_bursts)
    tb.rd_cmd.send_all_nowait({"addr": a, "length": n} for a, n in commands)
    await tb.wait_until(lambda: len(tb.rd_data.received) >= n0 + len(expected) and not int(dut.rd_busy.value),
                        "all read words")
    await ClockCycles(dut.clk, 20)
    got = tb.rd_data.received[n0:]
    assert len(got) == len(expected), f"{len(got)} words, expected {len(expected)}"
    bad = [k for k, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not bad, f"{len(bad)} words differ, first at {bad[0]}: {got[bad[0]]} != {expected[bad[0]]}"
    assert sum(n for _, n in tb.checker.ar_bursts[bursts0:]) * BEAT == sum(n for _, n in commands), "bytes requested"
    return commands


async def _random_writes(tb, model: bytearray) -> tuple[list[tuple[int, int]], int]:
    """Random write commands (and three at boundaries and odd words), applied to ``model`` too; waits for every B,
    then checks the whole memory against ``model`` and the beats written; returns the commands and words."""
    dut = tb.dut
    commands = [tb.random_region(4, 4096) for _ in range(tb.commands)]
    commands += [(4096 - 4, 8), (8192 - 132, 264), (12, 4)]
    words = []
    for addr, length in commands:
        data = bytes(tb.rng.getrandbits(8) for _ in range(length))
        model[addr:addr + length] = data
        words += [int.from_bytes(data[k:k + 4], "little") for k in range(0, length, 4)]
    bursts0 = len(tb.checker.aw_bursts)
    tb.wr_cmd.send_all_nowait({"addr": a, "length": n} for a, n in commands)
    tb.wr_data.send_all_nowait(words)
    await tb.wait_until(lambda: tb.wr_data.idle and tb.wr_cmd.idle and not int(dut.wr_busy.value),
                        "all writes answered")
    got = tb.ram.read(0, MEMORY_BYTES)
    bad = [k for k in range(MEMORY_BYTES) if got[k] != model[k]]
    assert not bad, f"{len(bad)} bytes differ, first at {bad[0]:#x}: {got[bad[0]]:#x} != {model[bad[0]]:#x}"
    beats = sum((a % 8 // 4 + n // 4 + 1) // 2 for a, n in commands)
    assert sum(n for _, n in tb.checker.aw_bursts[bursts0:]) == beats, "beats written"
    return commands, len(words)


def _take_stray_report(tb, text: str) -> None:
    """The protocol checker saw the injected stray response (the slave's violation, not the master's): drop it."""
    assert tb.checker.errors == [text], f"protocol checker: {tb.checker.errors[:5]}"
    tb.checker.errors.clear()


@cocotb.test()
async def read_engine_random(dut):
    """Random reads (lengths 8 B to 4 KiB, starts near 4 KiB boundaries) equal the memory word for word."""
    tb = AxiMasterTB(dut)
    background = bytes(tb.rng.getrandbits(8) for _ in range(MEMORY_BYTES))
    tb.ram.write(0, background)
    await tb.reset()
    commands = await _random_reads(tb, background)
    assert tb.rd_errors == 0
    assert tb.checker.r_refused == 0, f"rready low for {tb.checker.r_refused} cycles with rvalid high"
    tb.finish()
    if tb.stall:
        assert tb.checker.max_reads_in_flight > 1, "never more than one read outstanding"
    assert tb.checker.max_reads_in_flight <= tb.max_reads, f"{tb.checker.max_reads_in_flight} reads in flight"
    dut._log.info("%d commands, %d words, %d bursts, up to %d reads in flight", len(commands),
                  len(tb.rd_data.received), len(tb.checker.ar_bursts), tb.checker.max_reads_in_flight)


@cocotb.test()
async def write_engine_random(dut):
    """Random writes (4-byte granularity, odd start / end words) leave the memory equal to the model."""
    tb = AxiMasterTB(dut)
    model = bytearray(tb.rng.getrandbits(8) for _ in range(MEMORY_BYTES))
    tb.ram.write(0, bytes(model))
    await tb.reset()
    commands, words = await _random_writes(tb, model)
    assert tb.wr_errors == 0
    tb.finish()
    if tb.stall:  # B responses held back by the memory model's latency: more than one burst waits for its B
        assert tb.checker.max_writes_in_flight > 1, "never more than one write outstanding"
    assert tb.checker.max_writes_in_flight <= tb.max_writes, f"{tb.checker.max_writes_in_flight} writes in flight"
    dut._log.info("%d commands, %d words, %d bursts, up to %d writes in flight", len(commands), words,
                  len(tb.checker.aw_bursts), tb.checker.max_writes_in_flight)


#: Cycles an engine may take to go idle after a stray response (a wrapped count kept it busy for ever).
STRAY_IDLE_CYCLES = 500


async def _started_idle(dut, busy: str) -> tuple[AxiMasterTB, bytearray]:
    """A testbench over random memory contents (returned: the model), reset, its engine's ``busy`` low."""
    tb = AxiMasterTB(dut)
    memory = bytearray(tb.rng.getrandbits(8) for _ in range(MEMORY_BYTES))
    tb.ram.write(0, bytes(memory))
    await tb.reset()
    await ClockCycles(dut.clk, 5)
    assert not int(getattr(dut, busy).value)
    return tb, memory


async def _after_stray(tb, channel, valid, busy: str, what: str) -> None:
    """Wait until the model has sent the stray response ``what`` on ``channel`` (its ``valid`` low again), then until
    the engine's ``busy`` output is low, and 20 cycles more: it must stay low."""
    busy_signal = getattr(tb.dut, busy)
    await tb.wait_until(lambda: channel.idle() and not int(valid.value), f"the stray {what} sent", 1000)
    await tb.wait_until(lambda: not int(busy_signal.value), f"{busy} low after the stray {what}", STRAY_IDLE_CYCLES)
    await ClockCycles(tb.dut.clk, 20)
    assert not int(busy_signal.value), f"{busy} high after the stray {what}"


@cocotb.test()
async def unsolicited_b(dut):
    """A B while no write is outstanding (the slave breaking the protocol): ``wr_error`` once, ``wr_busy`` back
    low (before the fix the count of bursts awaiting a B wrapped and the engine stayed busy for ever), and random
    writes afterwards still leave the memory equal to the model."""
    tb, model = await _started_idle(dut, "wr_busy")
    tb.ram.send_unsolicited_b()
    await _after_stray(tb, tb.ram.write_if.b_channel, dut.m_axi_gmem_bvalid, "wr_busy", "B")
    assert tb.wr_errors == 1, f"wr_error pulsed {tb.wr_errors} times for one stray B"
    _take_stray_report(tb, "a B came for a write that was never requested")
    await _random_writes(tb, model)
    assert tb.wr_errors == 1, f"{tb.wr_errors - 1} wr_error pulses in the writes after the stray B"
    tb.finish()


@cocotb.test()
async def unsolicited_r(dut):
    """An R beat (``rlast`` high) while no read is outstanding: ``rd_error`` once, the beat dropped (no word on
    ``rd_data``), ``rd_busy`` back low, and random reads afterwards still equal the memory."""
    tb, background = await _started_idle(dut, "rd_busy")
    tb.ram.send_unsolicited_r(rdata=0x0123_4567_89AB_CDEF)
    await _after_stray(tb, tb.ram.read_if.r_channel, dut.m_axi_gmem_rvalid, "rd_busy", "R")
    assert tb.rd_errors == 1, f"rd_error pulsed {tb.rd_errors} times for one stray R beat"
    assert not tb.rd_data.received, f"the stray beat came out as words: {tb.rd_data.received}"
    _take_stray_report(tb, "an R burst ended that was never requested")
    await _random_reads(tb, background)
    assert tb.rd_errors == 1, f"{tb.rd_errors - 1} rd_error pulses in the reads after the stray R"
    tb.finish()


@cocotb.test()
async def error_responses(dut):
    """SLVERR on some read beats and on some write bursts: reported once per bad beat / B, and no hang."""
    tb = AxiMasterTB(dut)
    background = bytes(tb.rng.getrandbits(8) for _ in range(MEMORY_BYTES))
    tb.ram.write(0, background)
    bad_lo, bad_hi = 0x2040, 0x2060  # four beats answer SLVERR
    tb.ram.error_ranges.append((bad_lo, bad_hi))
    await tb.reset()
    read = (0x2000, 256)
    tb.rd_cmd.send_nowait({"addr": read[0], "length": read[1]})
    expected = _expected_words(background, [read])
    await tb.wait_until(lambda: len(tb.rd_data.received) >= len(expected) and not int(dut.rd_busy.value),
                        "the read with errors")
    await ClockCycles(dut.clk, 5)
    assert tb.rd_errors == (bad_hi - bad_lo) // BEAT == tb.ram.read_errors, \
        f"rd_error pulsed {tb.rd_errors} times for {tb.ram.read_errors} bad beats"
    got = tb.rd_data.received
    assert len(got) == len(expected), "the read must complete despite errors"
    for k, (g, e) in enumerate(zip(got, expected)):
        addr = read[0] + 4 * k
        if not bad_lo <= addr < bad_hi:
            assert g == e, f"word at {addr:#x}: {g} != {e}"
    # a write over the bad range: one error per burst that touches it
    write = (0x1F80, 512)
    tb.wr_cmd.send_nowait({"addr": write[0], "length": write[1]})
    tb.wr_data.send_all_nowait(tb.rng.getrandbits(32) for _ in range(write[1] // 4))
    await tb.wait_until(lambda: tb.wr_data.idle and not int(dut.wr_busy.value), "the write with errors")
    await ClockCycles(dut.clk, 5)
    touching = sum(1 for a, n in tb.checker.aw_bursts if a < bad_hi and bad_lo < a + n * BEAT)
    assert touching >= 1 and tb.wr_errors == touching, f"wr_error pulsed {tb.wr_errors} times, {touching} bad bursts"
    # the engines still work afterwards
    tb.ram.error_ranges.clear()
    tb.rd_cmd.send_nowait({"addr": 0x100, "length": 64})
    n0 = len(tb.rd_data.received)
    await tb.wait_until(lambda: len(tb.rd_data.received) >= n0 + 16 and not int(dut.rd_busy.value), "a clean read")
    assert tb.rd_data.received[n0:] == _expected_words(background, [(0x100, 64)])
    tb.finish()
