"""The driver's simulation backend: :class:`~driver.mpq_driver.MpqDriver` against the RTL under cocotb.

The driver is blocking code; cocotb is not. :func:`run_driver` runs a function of the driver in a thread
started with :func:`cocotb.task.bridge`, and every register access or wait of :class:`SimBackend` goes back into
the simulation through :func:`cocotb.task.resume`: the driver's own code issues the AXI4-Lite reads and writes
(cocotbext-axi's ``AxiLiteMaster``) on ``s_axi_control_*``, and its DDR buffers live in the AXI memory model
(:class:`~sim.system.axi_models.LatencyAxiRam`) on ``m_axi_gmem_*``.

::

    @cocotb.test()
    async def t(dut):
        backend = SimBackend(dut, ram, axil)
        scores = await run_driver(lambda: MpqDriver(backend).load(path) ...)
"""

from __future__ import annotations

from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles

from driver.backend import Backend, DeviceBuffer

#: Cycles the simulation runs between two polls of the driver.
POLL_CYCLES = 32


class SimBuffer(DeviceBuffer):
    """A buffer in the AXI memory model (host writes and reads take no simulated time, as a cache flush)."""

    def __init__(self, ram, address: int, size: int):
        self.ram, self.address, self.size = ram, address, size

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        self.ram.write(self.address + offset, bytes(data))

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self.ram.read(self.address + offset, length))


class SimBackend(Backend):
    """Register access through cocotbext-axi's AXI4-Lite master, buffers in the AXI memory model.

    Parameters
    ----------
    clock : cocotb handle
        ``ap_clk``.
    ram : LatencyAxiRam (or any cocotbext-axi Memory)
    axil : cocotbext.axi.AxiLiteMaster
    base : int
        First byte of the memory handed out to buffers; buffers are 4 KiB aligned, one after the other.
    clock_hz : float
        The clock the cycle figures are converted with (100 MHz: FCLK_CLK0 of the block design).
    """

    def __init__(self, clock, ram, axil, *, base: int = 0x1000, clock_hz: float = 100e6, poll_cycles: int = POLL_CYCLES):
        self.clock, self.ram, self.axil = clock, ram, axil
        self.clock_hz, self.poll_cycles = clock_hz, poll_cycles
        self._next = base
        self.reads = self.writes = 0

    def read(self, offset: int) -> int:
        self.reads += 1
        return resume(self.axil.read_dword)(offset)

    def write(self, offset: int, value: int) -> None:
        self.writes += 1
        resume(self.axil.write_dword)(offset, value)

    def allocate(self, size: int) -> SimBuffer:
        size = max(8, -(-size // 8) * 8)
        address = self._next
        if address + size > self.ram.size:
            raise MemoryError(f"the AXI memory model holds {self.ram.size} bytes; a buffer of {size} at "
                              f"{address:#x} does not fit")
        self._next = -(-(address + size) // 4096) * 4096
        return SimBuffer(self.ram, address, size)

    async def _cycles(self, n: int) -> None:
        await ClockCycles(self.clock, n)

    def wait(self) -> float:
        resume(self._cycles)(self.poll_cycles)
        return self.poll_cycles / self.clock_hz


async def run_driver(function, *args, **kwargs):
    """Run the blocking ``function(*args, **kwargs)`` (driver code) from a cocotb coroutine; return its result."""
    return await bridge(function)(*args, **kwargs)
