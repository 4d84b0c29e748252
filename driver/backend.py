"""What :class:`~driver.mpq_driver.MpqDriver` needs from a platform: register access, DDR buffers, a clock.

A backend is the only part that differs between the board (:class:`driver.pynq_backend.PynqBackend`: pynq's
MMIO and ``allocate``) and the simulation (:class:`sim.system.sim_backend.SimBackend`: cocotbext-axi's
AXI4-Lite master and the AXI memory model); the driver's register sequence is the same on both.
"""

from __future__ import annotations

import abc


class DeviceBuffer(abc.ABC):
    """A DDR buffer the accelerator reaches through its AXI master (contiguous, physically addressed)."""

    #: Physical byte address (8-byte aligned).
    address: int
    #: Size in bytes.
    size: int

    @abc.abstractmethod
    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` into the buffer at byte ``offset`` (and make it visible to the device)."""

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at byte ``offset`` as the device left them."""

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"bytes {offset}..{offset + length} lie outside the {self.size}-byte buffer at "
                             f"{self.address:#x}")


class Backend(abc.ABC):
    """Register and memory access to one accelerator instance."""

    #: The accelerator's clock (``ap_clk``) in Hz.
    clock_hz: float

    @abc.abstractmethod
    def read(self, offset: int) -> int:
        """The 32-bit control register word at byte ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, value: int) -> None:
        """Write the 32-bit word ``value`` at byte ``offset`` of the control registers."""

    @abc.abstractmethod
    def allocate(self, size: int) -> DeviceBuffer:
        """A new DDR buffer of at least ``size`` bytes (8-byte aligned)."""

    #: Whether the device runs in the host's real time (a board): the driver then bounds its polls by the host's
    #: clock, which counts the register reads too; a simulation's device time is the sum of its waits.
    wall_clock = False

    @abc.abstractmethod
    def wait(self) -> float:
        """Let the device run between two polls; return the device time that passed, in seconds."""
