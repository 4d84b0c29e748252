"""Stream transactors: a source that drives an Amaranth stream into the DUT and a sink that takes one out.

An Amaranth ``stream.Signature`` port ``name`` appears in the Verilog as ``name__payload``, ``name__valid``
and ``name__ready``; a beat transfers at a rising clock edge where ``valid`` and ``ready`` are both high.
:class:`StreamSource` and :class:`StreamSink` speak values (packed by a :class:`~sim.payload.PayloadCodec`),
count what they did, and take their idle cycles and back-pressure from pause generators, as cocotbext-axi's
``AxiStreamSource`` / ``AxiStreamSink`` do::

    source = StreamSource(dut, "i", payload_shape=operand_layout(plan))
    sink = StreamSink(dut, "o", payload_shape=sums_layout(plan, 32), callback=scoreboard.check)
    source.set_pause_generator(itertools.cycle([1, 1, 0]))   # two idle cycles before every beat
    sink.set_pause_generator(itertools.cycle([0, 1]))        # ready low every other cycle a beat waits
    source.send_all_nowait(operand_sets)
    source.start()
    sink.start()

Timing discipline. Both write right after ``RisingEdge(clk)`` and sample the handshake in the
:class:`~cocotb.triggers.ReadOnly` phase of the same cycle, i.e. just before the edge that performs the
transfer, when every combinational ``valid`` / ``ready`` has settled. This is the handshake the next edge
sees on Icarus and on Verilator alike; sampling right after ``RisingEdge(clk)`` (cocotbext-axi's way) reads
pre-edge values on an event-driven simulator but post-edge ones on Verilator, which is cycle-based.

Pause generators. A pause generator yields one value per cycle in which the transactor could move a beat:
the source draws before offering each beat (a true value idles ``valid`` for that cycle, so
``itertools.cycle([1, 1, 0])`` puts two idle cycles before every beat), the sink draws once per cycle in which
``valid`` is high (a true value holds ``ready`` low for that cycle). Neither draws while it waits for the
other side: the source sleeps until ``ready`` rises, the sink until ``valid`` rises. So a DUT that computes
for a million cycles costs no Python time, and a pattern means the same whatever the DUT's latency.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator

import cocotb
from amaranth.hdl import unsigned
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, ReadOnly, RisingEdge
from cocotb.types import LogicArray

from sim.payload import PayloadCodec

__all__ = ["StreamSink", "StreamSource"]

_UNRESOLVED_TO_0 = str.maketrans("xXzZuUwW-", "000000000")


class _StreamPort:
    """The three signals of stream port ``name`` on ``dut``, its clock and its payload codec."""

    def __init__(self, dut, name: str, clk, payload_shape):
        try:
            self.payload = getattr(dut, f"{name}__payload")
            self.valid = getattr(dut, f"{name}__valid")
            self.ready = getattr(dut, f"{name}__ready")
        except AttributeError as exc:
            raise ValueError(f"{dut._name} has no stream port {name!r} "
                             f"({name}__payload, {name}__valid, {name}__ready)") from exc
        self.name = name
        self.clk = dut.clk if clk is None else clk
        width = len(self.payload)
        self.codec = PayloadCodec(unsigned(width) if payload_shape is None else payload_shape,
                                  name=f"{name}.payload")
        if self.codec.width != width:
            raise ValueError(f"{name}__payload has {width} bits, the payload shape {payload_shape!r} has "
                             f"{self.codec.width}")
        self._pause: Iterator | None = None
        self._task = None
        self.transfers = 0
        self.first_transfer_ns: float | None = None
        self.last_transfer_ns: float | None = None

    def set_pause_generator(self, generator: Iterable) -> None:
        """Take pauses from ``generator`` (true: pause that cycle); see the module docstring for when it is drawn.

        A finite generator pauses no more once it is exhausted.
        """
        self._pause = iter(generator)

    def clear_pause_generator(self) -> None:
        """No pauses from now on."""
        self._pause = None

    def _paused(self) -> bool:
        return self._pause is not None and bool(next(self._pause, 0))

    def _count_transfer(self) -> None:
        now = get_sim_time("ns")
        if self.first_transfer_ns is None:
            self.first_transfer_ns = now
        self.last_transfer_ns = now
        self.transfers += 1

    def start(self) -> None:
        """Start the transactor (once; later calls do nothing). Call it after reset, right after a clock edge."""
        if self._task is None:
            self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        raise NotImplementedError


class StreamSource(_StreamPort):
    """Drives values into the DUT's stream port ``name``: ``payload`` and ``valid``, honouring ``ready``.

    Queued values are offered one per beat, in order; an offered beat holds ``valid`` and ``payload`` until
    the DUT takes it. When the queue runs dry ``valid`` drops, and a value queued later is offered after the
    next rising edge.

    Parameters
    ----------
    dut : cocotb handle
        The top level.
    name : str
        The port's name in the Amaranth signature (``"i"``).
    clk : cocotb handle, optional
        The port's clock (default ``dut.clk``).
    payload_shape : shape-like or amaranth.lib.data.Layout, optional
        The payload's shape (default: ``unsigned`` of the port's width, i.e. plain integers).

    Members
    -------
    codec : PayloadCodec
    transfers : int
        Beats the DUT accepted.
    idle_cycles : int
        Cycles the pause generator kept ``valid`` low before a beat.
    wait_ns : float
        Time offered beats waited for ``ready``, all together (divide by the clock period for cycles).
    first_transfer_ns, last_transfer_ns : float or None
        Simulation time of the cycle of the first and the latest transfer.

    Raises
    ------
    ValueError
        The DUT has no such port, or its payload width is not the shape's.
    """

    def __init__(self, dut, name: str, *, clk=None, payload_shape=None):
        super().__init__(dut, name, clk, payload_shape)
        self._queue: collections.deque[int] = collections.deque()
        self._queued = Event()
        self._idle = Event()
        self._idle.set()
        self._busy = False  # a beat is offered and not yet taken
        self.idle_cycles = 0
        self.wait_ns = 0.0

    def drive_idle(self) -> None:
        """``valid`` and ``payload`` to 0 (during reset, before :meth:`start`)."""
        self.valid.value = 0
        self.payload.value = 0

    def send_nowait(self, value) -> None:
        """Queue one value (packed now, so a value that does not fit fails here)."""
        self._queue.append(self.codec.pack(value))
        self._idle.clear()
        self._queued.set()

    def send_all_nowait(self, values: Iterable) -> None:
        """Queue every value of ``values``, in order."""
        for value in values:
            self.send_nowait(value)

    @property
    def idle(self) -> bool:
        """Nothing queued and no beat offered."""
        return not self._queue and not self._busy

    async def wait(self) -> None:
        """Return once every queued value has been taken by the DUT."""
        await self._idle.wait()

    async def _run(self) -> None:
        clk_edge = RisingEdge(self.clk)
        valid, ready, payload, queue = self.valid, self.ready, self.payload, self._queue
        driven = None  # the valid we drive, None while unknown: write it only when it changes (a GPI call)
        while True:
            if not queue:
                valid.value = driven = 0
                self._idle.set()
                self._queued.clear()
                await self._queued.wait()
                await clk_edge  # values may be queued mid-cycle: offer them from the next edge on
                continue
            if self._paused():
                if driven != 0:
                    valid.value = driven = 0
                self.idle_cycles += 1
                await clk_edge
                continue
            payload.value = queue.popleft()
            if driven != 1:
                valid.value = driven = 1
            self._busy = True
            offered_ns = get_sim_time("ns")
            await ReadOnly()
            while not ready.value:
                await RisingEdge(ready)  # the DUT is busy: sleep instead of waking every cycle
                await ReadOnly()
            self._count_transfer()
            self.wait_ns += self.last_transfer_ns - offered_ns
            await clk_edge  # the transfer
            self._busy = False


class StreamSink(_StreamPort):
    """Takes values out of the DUT's stream port ``name``: drives ``ready``, checks the stream protocol.

    Every accepted beat is unpacked and handed to ``callback`` (or appended to :attr:`received`), in the
    ReadOnly phase before the edge that transfers it. While ``valid`` is high and ``ready`` low the DUT must
    hold its beat: a ``valid`` that drops, or a ``payload`` that changes, before the beat is taken is a
    protocol error, and so is an unresolved (X/Z) payload while ``valid`` is high (the beat is then taken
    with those bits as 0).

    Parameters
    ----------
    dut : cocotb handle
        The top level.
    name : str
        The port's name in the Amaranth signature (``"o"``).
    clk : cocotb handle, optional
        The port's clock (default ``dut.clk``).
    payload_shape : shape-like or amaranth.lib.data.Layout, optional
        The payload's shape (default: ``unsigned`` of the port's width, i.e. plain integers).
    callback : callable, optional
        Called with each received value; default: append it to :attr:`received`.

    Members
    -------
    codec : PayloadCodec
    transfers : int
        Beats taken from the DUT.
    stall_cycles : int
        Cycles with ``valid`` high and ``ready`` low (the back-pressure applied).
    received : list
        The values received, when there is no ``callback``.
    protocol_errors : list of str
        ``"<time> ns: <what>"`` for each violation seen.
    first_transfer_ns, last_transfer_ns : float or None
        Simulation time of the cycle of the first and the latest transfer.

    Raises
    ------
    ValueError
        The DUT has no such port, or its payload width is not the shape's.
    """

    def __init__(self, dut, name: str, *, clk=None, payload_shape=None,
                 callback: Callable[[object], object] | None = None):
        super().__init__(dut, name, clk, payload_shape)
        self.received: list = []
        self.callback = self.received.append if callback is None else callback
        self.stall_cycles = 0
        self.protocol_errors: list[str] = []
        self.log = logging.getLogger(f"cocotb.tb.{name}")

    def drive_idle(self) -> None:
        """``ready`` to 0 (during reset, before :meth:`start`)."""
        self.ready.value = 0

    def _protocol_error(self, message: str) -> None:
        self.protocol_errors.append(f"{get_sim_time('ns'):.0f} ns: {message}")
        self.log.error("%s", message)

    async def _run(self) -> None:
        clk_edge = RisingEdge(self.clk)
        name = self.name
        ready_now = int(not self._paused())
        self.ready.value = ready_now
        held: int | None = None  # the beat offered while ready was low: it must stay until taken
        while True:
            await ReadOnly()
            if not self.valid.value:
                if held is not None:
                    self._protocol_error(f"{name}.valid dropped before the beat {held:#x} was taken")
                    held = None
                await RisingEdge(self.valid)  # nothing offered: sleep instead of waking every cycle
                continue
            value = self.payload.value
            if not value.is_resolvable:
                self._protocol_error(f"{name}.payload is {value} while {name}.valid is high")
                value = LogicArray(str(value).translate(_UNRESOLVED_TO_0))
            beat = value.to_unsigned()
            if held is not None and beat != held:
                self._protocol_error(f"{name}.payload changed from {held:#x} to {beat:#x} while stalled")
            if ready_now:
                held = None
                self._count_transfer()
                self.callback(self.codec.unpack(beat))
            else:
                held = beat
                self.stall_cycles += 1
            await clk_edge
            new_ready = int(not self._paused())
            if new_ready != ready_now:
                self.ready.value = ready_now = new_ready
