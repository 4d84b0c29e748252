"""cocotb test of :class:`sim.system.axi_models.AxiProtocolChecker` on :class:`tests.sim.axi_probe.AxiProbe`:
a clean exchange gives no error, and each violation the checker claims to find gives exactly one error that
names it. Run by tests/sim/test_axi_checker.py."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
from cocotb.types import LogicArray

from sim.system.axi_models import AxiProtocolChecker
from tests.sim.axi_probe import PREFIX

OKAY_BURST = {"size": 3, "burst": 1}  # 8-byte beats, INCR


class Bus:
    """Drives the probe's inputs between clock edges (on the falling edge, so the checker's rising-edge
    sample sees them settled)."""

    def __init__(self, dut):
        self.dut = dut
        for name in dir(dut):
            if name.startswith(PREFIX + "_"):
                getattr(dut, name).value = 0

    async def cycle(self, **values):
        """One clock cycle with ``values`` (names without the prefix) set; the others keep theirs."""
        await FallingEdge(self.dut.clk)
        for name, value in values.items():
            getattr(self.dut, f"{PREFIX}_{name}").value = value
        await RisingEdge(self.dut.clk)

    async def address(self, ch: str, addr: int, beats: int, *, size: int = 3, burst: int = 1, stalls: int = 0):
        """An AR or AW request, ``stalls`` cycles with ready low first."""
        payload = {f"{ch}addr": addr, f"{ch}len": beats - 1, f"{ch}size": size, f"{ch}burst": burst}
        for _ in range(stalls):
            await self.cycle(**payload, **{f"{ch}valid": 1, f"{ch}ready": 0})
        await self.cycle(**payload, **{f"{ch}valid": 1, f"{ch}ready": 1})
        await self.cycle(**{f"{ch}valid": 0, f"{ch}ready": 0})

    async def read_data(self, beats: int):
        for k in range(beats):
            await self.cycle(rvalid=1, rready=1, rlast=int(k == beats - 1), rdata=k)
        await self.cycle(rvalid=0, rlast=0)

    async def write_data(self, beats: int, last_at: int | None = None):
        last_at = beats - 1 if last_at is None else last_at
        for k in range(beats):
            await self.cycle(wvalid=1, wready=1, wlast=int(k == last_at), wdata=k, wstrb=0xFF)
        await self.cycle(wvalid=0, wlast=0)

    async def response(self):
        await self.cycle(bvalid=1, bready=1)
        await self.cycle(bvalid=0, bready=0)


@cocotb.test()
async def finds_each_violation(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    bus = Bus(dut)
    dut.rst.value = 1
    checker = AxiProtocolChecker(dut, PREFIX, dut.clk, reset=dut.rst)
    # in reset nothing counts: a valid that drops, an unrequested R
    await bus.cycle(arvalid=1, araddr=0x1000)
    await bus.cycle(arvalid=0, rvalid=1, rready=1, rlast=1)
    await bus.cycle(rvalid=0, rlast=0)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    assert not checker.errors, checker.errors

    # a clean exchange: a stalled then taken AR and its 16 beats, a 2-beat write with its B
    await bus.address("ar", 0x1000, 16, stalls=2)
    await bus.read_data(16)
    await bus.address("aw", 0x2000, 2, stalls=1)
    await bus.write_data(2)
    await bus.response()
    # W ahead of its AW, as AXI allows
    await bus.write_data(3)
    await bus.address("aw", 0x2100, 3)
    await bus.response()
    assert not checker.errors, checker.errors
    assert checker.ar_bursts == [(0x1000, 16)] and checker.aw_bursts == [(0x2000, 2), (0x2100, 3)]
    assert checker.max_reads_in_flight == 1 and checker.max_writes_in_flight == 1

    windows = [0]

    async def expect(what: str, action):
        before = len(checker.errors)
        await action
        await ClockCycles(dut.clk, 1)
        new = checker.errors[before:]
        assert len(new) == 1 and what in new[0], f"{what!r}: checker reported {new}"
        windows[0] += 1

    # responses nobody asked for (nothing is in flight now)
    await expect("never requested", bus.read_data(1))
    await expect("never requested", bus.response())
    await bus.address("aw", 0x6000, 2)
    await expect("wlast=1 on beat 0", bus.write_data(2, last_at=0))
    await bus.response()

    async def drop_valid():
        await bus.cycle(arvalid=1, arready=0, araddr=0x3000, arlen=0, **{f"ar{k}": v for k, v in OKAY_BURST.items()})
        await bus.cycle(arvalid=0)

    async def change_payload():
        await bus.cycle(awvalid=1, awready=0, awaddr=0x3000, awlen=0, **{f"aw{k}": v for k, v in OKAY_BURST.items()})
        await bus.cycle(awaddr=0x3008, awready=1)  # taken, but not as first offered
        await bus.cycle(awvalid=0, awready=0)
        await bus.write_data(1)
        await bus.response()

    async def x_payload():
        await bus.cycle(arvalid=1, arready=1, araddr=LogicArray("X" * 32))
        await bus.cycle(arvalid=0, arready=0, araddr=0)

    await expect("dropped or payload changed", drop_valid())
    await expect("dropped or payload changed", change_payload())
    await expect("X/Z", x_payload())
    await expect("burst of 17 beats", bus.address("ar", 0x4000, 17))
    await expect("crosses a 4 KiB boundary", bus.address("ar", 0x4F88, 16))
    await expect("size code 2", bus.address("ar", 0x5000, 1, size=2))
    await expect("burst type 2", bus.address("aw", 0x5000, 1, burst=2))
    await bus.write_data(1)  # the data and the response of the burst just requested
    await bus.response()
    await expect("not aligned", bus.address("ar", 0x5004, 1))
    # the checker is back in step after each report: a clean exchange adds nothing, and nothing was reported
    # outside the windows above (a response after an unrequested one, the beats after a wrong wlast)
    await bus.address("aw", 0x7000, 2)
    await bus.write_data(2)
    await bus.response()
    await bus.address("ar", 0x7000, 2)
    await bus.read_data(2)
    await ClockCycles(dut.clk, 2)
    assert len(checker.errors) == windows[0], "\n".join(checker.errors)
