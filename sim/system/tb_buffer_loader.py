"""cocotb tests of the image-load path (:class:`sim.system.loader_bench.LoaderBench`): DDR -> AXI -> buffer.

The DDR side is :class:`~sim.system.axi_models.LatencyAxiRam` (random latency, back-pressure, SLVERR ranges);
after each load every buffer word is read back through the buffer's ``peek`` port and compared with a model:
words below the count equal DDR, the others keep what they held; the loader's ``crc`` equals ``zlib.crc32`` of
the ``4 words`` DDR bytes (the pad word of an odd count not included) and ``crc_ok`` compares it with
``expected_crc``. Settings: ``AXI_TB_SEED``, ``AXI_TB_STALL``.
"""

from __future__ import annotations

import os
import random
import zlib

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from sim.system.axi_models import AxiProtocolChecker, LatencyAxiRam
from sim.system.loader_bench import LoaderBench

CLOCK_NS = 10
MEMORY_BYTES = 1 << 16


class LoaderTB:
    def __init__(self, dut):
        self.dut = dut
        self.seed = int(os.environ.get("AXI_TB_SEED", "0"))
        self.rng = random.Random(self.seed)
        stall = os.environ.get("AXI_TB_STALL", "1") == "1"
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        self.ram = LatencyAxiRam(dut, "m_axi_gmem", dut.clk, dut.rst, size=MEMORY_BYTES, rng=self.rng, stall=stall)
        self.checker = AxiProtocolChecker(dut, "m_axi_gmem", dut.clk)
        self.depth = 1 << len(dut.peek__addr)
        self.buffer = [LoaderBench.FILL] * self.depth
        self.dones = self.cycle = 0
        self.done_at: list[int] = []

    async def reset(self):
        dut = self.dut
        dut.start.value = dut.addr.value = dut.words.value = dut.expected_crc.value = 0
        dut.peek__req.value = dut.peek__addr.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        cocotb.start_soon(self._count_done())

    async def _count_done(self):
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if int(self.dut.done.value):
                self.dones += 1
                self.done_at.append(self.cycle)
            self.cycle += 1

    async def load(self, addr: int, words: int, limit: int = 100_000, expected_crc: int | None = None) -> int:
        """Start a load, wait for ``done``; return the cycles it took (``done`` must come exactly once).

        The loader's ``crc`` must be ``zlib.crc32`` of the DDR bytes (an error beat: zeros), and ``crc_ok``
        whether it equals ``expected_crc`` (default: that CRC).
        """
        dut = self.dut
        before = self.dones
        data = bytearray(self.ram.read(addr, 4 * words))
        for beat in range(addr, addr + 4 * words, 8):  # an error beat reads as zeros (the loader sees those)
            if any(beat < hi and lo < beat + 8 for lo, hi in self.ram.error_ranges):
                data[beat - addr:beat - addr + 8] = bytes(len(data[beat - addr:beat - addr + 8]))
        want = zlib.crc32(data)
        expected_crc = want if expected_crc is None else expected_crc
        await FallingEdge(dut.clk)
        dut.addr.value, dut.words.value, dut.start.value = addr, words, 1
        dut.expected_crc.value = expected_crc
        started = self.cycle
        await FallingEdge(dut.clk)
        dut.start.value = 0
        for _ in range(limit):
            if self.dones > before:
                break
            await RisingEdge(dut.clk)
        else:
            raise AssertionError(f"no done within {limit} cycles for {words} words at {addr:#x}")
        await ClockCycles(dut.clk, 3)
        await ReadOnly()
        assert self.dones == before + 1, f"done pulsed {self.dones - before} times for one load"
        assert not int(dut.busy.value), "busy after done"
        assert int(dut.crc.value) == want, (f"load of {words} words at {addr:#x}: crc {int(dut.crc.value):#010x}, "
                                            f"zlib.crc32 {want:#010x}")
        assert int(dut.crc_ok.value) == (want == expected_crc), "crc_ok is not crc == expected_crc"
        return self.done_at[-1] - started

    async def peek_all(self) -> list[int]:
        dut, words = self.dut, []
        for k in range(self.depth):
            await FallingEdge(dut.clk)
            dut.peek__req.value, dut.peek__addr.value = 1, k
            await RisingEdge(dut.clk)
            await ReadOnly()
            words.append(int(dut.peek__data.value))
        await FallingEdge(dut.clk)
        dut.peek__req.value = 0
        return words

    def ddr_words(self, addr: int, words: int) -> list[int]:
        data = self.ram.read(addr, 4 * words)
        return [int.from_bytes(data[4 * k:4 * k + 4], "little") for k in range(words)]


@cocotb.test()
async def load_random_images(dut):
    """Loads of random sizes (0, odd, the whole buffer) from random addresses; the buffer equals the model."""
    tb = LoaderTB(dut)
    tb.ram.write(0, bytes(tb.rng.getrandbits(8) for _ in range(MEMORY_BYTES)))
    await tb.reset()
    sizes = [tb.depth, 1, 0, 37, tb.rng.randint(2, tb.depth), tb.rng.randint(2, tb.depth) | 1, 2]
    busy_cycles = 0
    for words in sizes:
        addr = 8 * tb.rng.randrange((MEMORY_BYTES - 4 * tb.depth - 8) // 8)
        busy_cycles += await tb.load(addr, words)
        assert not int(dut.error.value)
        tb.buffer[:words] = tb.ddr_words(addr, words)
        got = await tb.peek_all()
        bad = [k for k in range(tb.depth) if got[k] != tb.buffer[k]]
        assert not bad, f"load of {words} words at {addr:#x}: {len(bad)} buffer words differ, first {bad[0]}"
    cycles = int(dut.cycles.value)
    assert 0 < cycles <= busy_cycles, f"cycles {cycles}, load calls took {busy_cycles}"
    assert not tb.checker.errors, tb.checker.errors[:5]


@cocotb.test()
async def load_with_error_response(dut):
    """A SLVERR inside the image raises ``error`` until the next load; the load still ends (no hang)."""
    tb = LoaderTB(dut)
    tb.ram.write(0, bytes(tb.rng.getrandbits(8) for _ in range(MEMORY_BYTES)))
    await tb.reset()
    tb.ram.error_ranges.append((0x1100, 0x1108))
    await tb.load(0x1000, 256)
    assert int(dut.error.value) == 1, "no error after a SLVERR beat"
    assert tb.ram.read_errors == 1
    tb.ram.error_ranges.clear()
    await tb.load(0x1000, 256, expected_crc=0x12345678)  # a wrong expected CRC: crc_ok low
    assert int(dut.crc_ok.value) == 0
    await tb.load(0x1000, 256)
    assert int(dut.error.value) == 0, "error must clear at the next start"
    tb.buffer[:256] = tb.ddr_words(0x1000, 256)
    assert (await tb.peek_all()) == tb.buffer
    assert not tb.checker.errors, tb.checker.errors[:5]
