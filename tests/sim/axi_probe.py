# amaranth: UnusedElaboratable=no
"""The device under test of the protocol checker's own test: an AXI4 master's ports, every one an input, so
that the testbench (tests/sim/axi_checker_tb.py) plays both the master and the slave, breaking the protocol
on purpose."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from hw.system.axi_master import _channel_ports

TOPLEVEL = "axi_probe"
PREFIX = "m_axi_gmem"


class AxiProbe(wiring.Component):
    """``clk``, ``rst`` and the ports of :class:`~hw.system.axi_master.AxiMaster` (64-bit data, 32-bit
    addresses, 1-bit IDs), all inputs; no logic."""

    def __init__(self):
        ports = {name: In(member.shape) for name, member in _channel_ports(PREFIX, 32, 64, 1).items()}
        super().__init__({"clk": In(1), "rst": In(1)} | ports)

    def elaborate(self, platform):
        return Module()
