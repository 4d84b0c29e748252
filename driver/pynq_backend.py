"""The driver's board backend: pynq's ``Overlay``, ``MMIO`` and ``allocate`` on a PYNQ-Z2 or Arty Z7-20.

::

    from driver.mpq_driver import MpqDriver
    from driver.pynq_backend import PynqBackend
    drv = MpqDriver(PynqBackend("mpq_system.bit"))   # mpq_system.hwh beside it
    drv.load("image")                                 # weights.bin + manifest.json
    scores = drv.run(codes)

NOT RUN ON A BOARD. pynq is not installed here and there is no Zynq; this module has run only against the RTL
through a stand-in for pynq (sim/system/pynq_standin.py, cocotb test ``pynq_backend``: the register access
and the buffers' flush / invalidate as documented; not pynq's own code). What
it relies on (PYNQ 3.x, its Python 3.10, as documented; not 2.x: the driver's ``isinstance(x, A | B)`` needs
Python 3.10, and PYNQ before 2.7 listed a block design's module reference as a hierarchy, without ``mmio``):
``pynq.Overlay(bitfile)`` downloads the bitstream and
parses the ``.hwh`` of the same name; the IP instance is an attribute named after the block-design cell
(``mpq_system_0`` in the TCL of ``build.py system``) with an ``mmio`` (``read(offset)`` / ``write(offset,
value)``, 32-bit); ``pynq.allocate(shape, dtype)`` returns a physically contiguous buffer with
``physical_address``, ``flush()`` (CPU cache -> DDR, before the core reads) and ``invalidate()`` (before
the CPU reads what the core wrote); ``pynq.ps.Clocks.fclk0_mhz`` is FCLK_CLK0. Everything above this layer
(:class:`~driver.mpq_driver.MpqDriver`) is the code the simulation runs (tests/sim/test_system.py).
"""

from __future__ import annotations

import time

import numpy as np

from driver.backend import Backend, DeviceBuffer

#: The accelerator's cell name in the block design (hw/system/vivado.py).
DEFAULT_IP_NAME = "mpq_system_0"


class PynqBuffer(DeviceBuffer):
    """A ``pynq.allocate`` buffer of bytes (not run on a board)."""

    def __init__(self, buffer, size: int):
        self.buffer, self.size = buffer, size
        self.address = int(buffer.physical_address)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        self.buffer[offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.buffer.flush()

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        self.buffer.invalidate()
        return bytes(self.buffer[offset:offset + length])


class PynqBackend(Backend):
    """The accelerator of a bitstream built by ``build.py system`` on a PYNQ board (not run on a board).

    Parameters
    ----------
    bitfile : str
        The ``.bit`` (its ``.hwh`` beside it, same name).
    ip_name : str
        The accelerator's cell in the block design.
    poll_s : float
        Host sleep between two status polls (0: busy polling).
    """

    wall_clock = True  # the driver's timeouts count the MMIO reads' time too, not only the sleeps

    def __init__(self, bitfile: str, *, ip_name: str = DEFAULT_IP_NAME, poll_s: float = 0.0):
        import pynq  # only on the board; not installed here

        self._pynq = pynq
        self.overlay = pynq.Overlay(bitfile)
        self.ip = getattr(self.overlay, ip_name)
        self.mmio = self.ip.mmio
        self.clock_hz = float(pynq.ps.Clocks.fclk0_mhz) * 1e6
        self.poll_s = poll_s

    def read(self, offset: int) -> int:
        return int(self.mmio.read(offset))

    def write(self, offset: int, value: int) -> None:
        self.mmio.write(offset, int(value))

    def allocate(self, size: int) -> PynqBuffer:
        size = max(8, -(-size // 8) * 8)
        return PynqBuffer(self._pynq.allocate(shape=(size,), dtype=np.uint8), size)

    def wait(self) -> float:
        t0 = time.perf_counter()
        if self.poll_s:
            time.sleep(self.poll_s)
        return max(time.perf_counter() - t0, 1e-6)
