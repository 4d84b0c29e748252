"""A stand-in for the ``pynq`` package, so that :class:`driver.pynq_backend.PynqBackend` runs against the RTL.

pynq is not installed here and there is no board; :mod:`driver.pynq_backend` is the one part of the driver
that only a board would run. This module builds a module object with the pieces of pynq's documented API
that the backend uses, each wired into the cocotb simulation of :mod:`sim.system.tb_system`:

- ``Overlay(bitfile)``: its ``mpq_system_0.mmio`` reads and writes the control registers through
  cocotbext-axi's AXI4-Lite master (as ``SimBackend`` does);
- ``allocate(shape, dtype)``: a numpy array (the CPU's view) with a ``physical_address`` in the AXI memory
  model (DDR, what the core reads and writes); like a cached buffer on the Zynq's ARM, the two are separate
  copies: ``flush()`` copies the CPU's view to DDR, ``invalidate()`` DDR to the CPU's view. A backend that
  forgot either would show it here (the core reads stale DDR, the host reads stale scores), which the
  cocotb test ``pynq_backend`` checks for both;
- ``ps.Clocks.fclk0_mhz``: 100.

It is a model of the API as documented, not pynq: what pynq itself does on a board (the download, the
``.hwh`` parsing, the real cache) has not run. Install it with :func:`install` before constructing a
``PynqBackend``; :func:`uninstall` removes it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
from cocotb.task import resume

#: The block-design cell the stand-in overlay offers (driver/pynq_backend.py's default).
IP_NAME = "mpq_system_0"


class CachedBuffer(np.ndarray):
    """A ``pynq.allocate`` buffer: this array is the CPU's copy; DDR is the memory model's bytes."""

    ram = None
    physical_address = 0
    flushes = invalidates = 0

    def flush(self) -> None:
        self.ram.write(self.physical_address, self.tobytes())
        self.flushes += 1

    def invalidate(self) -> None:
        data = np.frombuffer(self.ram.read(self.physical_address, self.nbytes), dtype=self.dtype)
        self[...] = data.reshape(self.shape)
        self.invalidates += 1


class _Mmio:
    def __init__(self, axil):
        self.axil = axil

    def read(self, offset: int) -> int:
        return resume(self.axil.read_dword)(offset)

    def write(self, offset: int, value: int) -> None:
        resume(self.axil.write_dword)(offset, value)


def standin(ram, axil, *, base: int = 0x1000) -> types.ModuleType:
    """A ``pynq`` module object on the memory model ``ram`` and the AXI4-Lite master ``axil``; buffers are
    handed out from ``base`` up, 4 KiB aligned (DDR starts filled with ``0xA5`` there, so that a buffer the
    core reads before any flush is not accidentally right)."""
    module = types.ModuleType("pynq", "stand-in for pynq (sim/system/pynq_standin.py)")
    state = {"next": base}

    def allocate(shape, dtype=np.uint8):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        address = state["next"]
        if address + n > ram.size:
            raise MemoryError(f"the memory model holds {ram.size} bytes; {n} more at {address:#x} do not fit")
        state["next"] = -(-(address + n) // 4096) * 4096
        ram.write(address, bytes([0xA5]) * n)
        buf = np.zeros(shape, dtype=dtype).view(CachedBuffer)
        buf.ram, buf.physical_address = ram, address
        return buf

    class Overlay:
        def __init__(self, bitfile):
            self.bitfile = bitfile
            setattr(self, IP_NAME, types.SimpleNamespace(mmio=_Mmio(axil)))

    module.Overlay = Overlay
    module.allocate = allocate
    module.ps = types.SimpleNamespace(Clocks=types.SimpleNamespace(fclk0_mhz=100.0))
    return module


def install(ram, axil) -> types.ModuleType:
    """Put the stand-in into ``sys.modules['pynq']`` (refusing to shadow a real pynq); return it."""
    current = sys.modules.get("pynq")
    if current is not None and not getattr(current, "__doc__", "").startswith("stand-in"):
        raise RuntimeError("a real pynq is imported; the stand-in would shadow it")
    sys.modules["pynq"] = module = standin(ram, axil)
    return module


def uninstall() -> None:
    sys.modules.pop("pynq", None)
