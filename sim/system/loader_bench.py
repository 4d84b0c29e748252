"""The image-load path as one testable design: AXI master -> buffer loader -> writable global buffer.

:class:`LoaderBench` is what the system top will hold around ``load_image`` (without the array): its AXI
ports are the master's (``m_axi_gmem_*``), its controls the loader's, and a read requester ``peek`` of the
global buffer lets a testbench read back what was loaded.
"""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import MemoryData
from amaranth.lib.wiring import In, Out

from hw.core.global_buffer import GlobalBuffer, buffer_port_signature
from hw.system.axi_master import AxiMaster
from hw.system.buffer_loader import BufferLoader


class LoaderBench(wiring.Component):
    """AxiMaster + BufferLoader + GlobalBuffer(writable) with the loader's controls and a buffer read port.

    Parameters
    ----------
    buffer_addr_width : int
        The buffer holds ``2 ** buffer_addr_width`` words (initialised to 0xDEADBEEF, so a word that was not
        loaded shows).
    max_burst, max_reads : int
        The master's.
    """

    FILL = 0xDEADBEEF

    def __init__(self, *, buffer_addr_width: int = 10, max_burst: int = 16, max_reads: int = 4):
        self._master = AxiMaster(max_burst=max_burst, max_reads=max_reads, max_writes=max_reads)
        self._loader = BufferLoader(buffer_addr_width=buffer_addr_width)
        self._buffer = GlobalBuffer(MemoryData(shape=32, depth=1 << buffer_addr_width,
                                               init=[self.FILL] * (1 << buffer_addr_width)),
                                    ports=[["peek"]], writable=True)
        axi = {name: member for name, member in self._master.signature.members.items()
               if name.startswith(self._master.prefix)}
        loader = self._loader.signature.members
        super().__init__(axi | {name: loader[name] for name in ("start", "addr", "words", "busy", "done",
                                                               "error", "cycles", "expected_crc", "crc",
                                                               "crc_ok")} |
                         {"peek": In(buffer_port_signature(buffer_addr_width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.master = master = self._master
        m.submodules.loader = loader = self._loader
        m.submodules.buffer = buffer = self._buffer
        for name, member in master.signature.members.items():
            if name.startswith(master.prefix):
                if member.flow == Out:
                    m.d.comb += getattr(self, name).eq(getattr(master, name))
                else:
                    m.d.comb += getattr(master, name).eq(getattr(self, name))
        for name in ("start", "addr", "words", "expected_crc"):
            m.d.comb += getattr(loader, name).eq(getattr(self, name))
        for name in ("busy", "done", "error", "cycles", "crc", "crc_ok"):
            m.d.comb += getattr(self, name).eq(getattr(loader, name))
        wiring.connect(m, loader.rd_cmd, master.rd_cmd)
        wiring.connect(m, master.rd_data, loader.rd_data)
        m.d.comb += loader.rd_error.eq(master.rd_error)
        wiring.connect(m, loader.load, buffer.load)
        wiring.connect(m, wiring.flipped(self.peek), buffer.peek)
        # the write engine is idle here
        m.d.comb += [master.wr_cmd.valid.eq(0), master.wr_data.valid.eq(0)]
        return m
