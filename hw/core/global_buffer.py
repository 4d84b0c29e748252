"""Global buffer: the packed image in block RAM, shared by its readers through fixed-priority read ports.

The MPQ-tickets paper's "global buffer of 32-bit width to store the mixed precision data, with the mask
indicating the bit-width of each data" (Sec. 3.3): here the image's words, the widths given by the version 2
masks (the fully connected core's weight decoder) or by the class-grouped weight streams of version 3
(:mod:`model.export.weight_stream`, the array's row decoders).

The buffer holds 32-bit words (``MemoryData``: its initial contents may be replaced before elaboration,
e.g. by another image for the same hardware). With ``writable`` it has a load port, one word a cycle, so
that an image is loaded at run time (the array's ``hw/array/top.py``; the fully connected core keeps a ROM). Each physical read port serves a list of named requesters in
priority order; a requester raises ``req`` with an ``addr``, sees ``grant`` in the same cycle when the port
is its own, and reads ``data`` one cycle later (the synchronous port's latency, :attr:`GlobalBuffer.latency`).
``data`` is shared by all requesters of a port, so a requester keeps track of its own reads in flight
(:class:`~hw.core.fetcher.WordFetcher` does).

With ``share_load`` (a writable buffer), the first read port shares its address with the load port: while a
word is loaded that port grants no requester and its address is the load's, so one block RAM column in
true-dual-port mode holds both (the load and the first port on port A, the second read port on port B), and
a buffer of two read ports is one copy of the image instead of two (Yosys makes one copy per read port that
has an address of its own). Loads happen between runs, so the requesters of the first port lose no cycle
to them in practice; one that asks during a load waits.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from model.export.format import WORD_BITS


def load_port_signature(addr_width: int) -> wiring.Signature:
    """The writer's side of the load port: a word ``data`` written at ``addr`` in each cycle ``en`` is high."""
    if addr_width < 1:
        raise ValueError(f"addr_width must be >= 1, not {addr_width!r}")
    return wiring.Signature({"en": Out(1), "addr": Out(addr_width), "data": Out(WORD_BITS)})


def buffer_port_signature(addr_width: int) -> wiring.Signature:
    """A requester's side of a global buffer read port: ``req``, ``addr`` out; ``grant``, ``data`` in."""
    if addr_width < 1:
        raise ValueError(f"addr_width must be >= 1, not {addr_width!r}")
    return wiring.Signature({"req": Out(1), "addr": Out(addr_width), "grant": In(1), "data": In(WORD_BITS)})


class GlobalBuffer(wiring.Component):
    """Image words with ``len(ports)`` read ports, each shared by named requesters by fixed priority.

    Parameters
    ----------
    data : MemoryData
        The buffer contents: ``shape`` 32 bits, ``depth`` >= 2 (any: an address at or past it reads an
        unspecified word, so whoever issues addresses checks them against the depth; the array's controller
        refuses an image whose ``words`` is more, ``hw/array/controller.py``).
    ports : sequence of sequence of str
        For each physical read port, its requesters from highest to lowest priority. Names are Python
        identifiers and unique over all ports.
    writable : bool
        A load port (``load``).
    share_load : bool
        The first read port shares the load port's address (module docstring): one block RAM copy for two
        read ports and the load.

    Members
    -------
    load : In(load_port_signature(addr_width)), with ``writable``
        One word written per cycle (a read of the same word in that cycle returns the old contents).
    <name> : In(buffer_port_signature(addr_width)), one per requester
        ``grant`` is ``req`` of the requester when no requester before it on its port asks; a requester
        that does not ask is not granted. The port reads ``addr`` of the granted requester (or of the last
        requester when none asks).

    Raises
    ------
    TypeError
        If ``data`` is not a ``MemoryData``.
    ValueError
        For a shape other than 32 bits, a depth that is not a power of two >= 2, no port, an empty port,
        or a requester name that is not an identifier or appears twice; ``share_load`` without ``writable``.
    """

    def __init__(self, data: MemoryData, *, ports, writable: bool = False, share_load: bool = False):
        if not isinstance(data, MemoryData):
            raise TypeError(f"data must be a MemoryData, not {data!r}")
        if data.shape != WORD_BITS:
            raise ValueError(f"data.shape must be unsigned({WORD_BITS}), not {data.shape!r}")
        if data.depth < 2:
            raise ValueError(f"data.depth must be >= 2, not {data.depth!r}")
        ports = tuple(tuple(port) for port in ports)
        names = [name for port in ports for name in port]
        if not ports or not all(ports):
            raise ValueError(f"ports must be one or more non-empty lists of requester names, not {ports!r}")
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ValueError(f"requester names must be unique identifiers, not {names!r}")
        self._data = data
        self._ports = ports
        self._addr_width = ceil_log2(data.depth)
        self._writable = bool(writable)
        if share_load and not self._writable:
            raise ValueError("share_load needs a writable buffer (it shares the load port's address)")
        self._share_load = bool(share_load)
        members = {name: In(buffer_port_signature(self._addr_width)) for name in names}
        if self._writable:
            if "load" in members:
                raise ValueError("a requester may not be named 'load' in a writable buffer")
            members["load"] = In(load_port_signature(self._addr_width))
        super().__init__(members)

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def ports(self) -> tuple[tuple[str, ...], ...]:
        return self._ports

    #: Cycles from a granted request to its ``data``.
    latency = 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(data=self._data)
        if self._writable:
            wr = memory.write_port()
            m.d.comb += [wr.data.eq(self.load.data), wr.en.eq(self.load.en)]
            if not self._share_load:
                m.d.comb += wr.addr.eq(self.load.addr)
        for k, requesters in enumerate(self._ports):
            port = memory.read_port()
            members = [getattr(self, name) for name in requesters]
            addr = members[-1].addr
            for member in reversed(members[:-1]):
                addr = Mux(member.req, member.addr, addr)
            ahead = None  # a requester before this one asks (or, with share_load on the first port, a load)
            if k == 0 and self._share_load:
                shared = Signal(self._addr_width)
                m.d.comb += [shared.eq(Mux(self.load.en, self.load.addr, addr)), wr.addr.eq(shared)]
                addr, ahead = shared, self.load.en
            m.d.comb += port.addr.eq(addr)
            for member in members:
                m.d.comb += [member.data.eq(port.data),
                             member.grant.eq(member.req if ahead is None else member.req & ~ahead)]
                ahead = member.req if ahead is None else ahead | member.req
        return m
