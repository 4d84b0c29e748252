"""AXI4 memory model with random latency, back-pressure and error injection, and an AXI4 protocol checker.

:class:`LatencyAxiRam` is cocotbext-axi's ``AxiRam`` (an AXI4 slave: INCR / WRAP / FIXED bursts, WSTRB,
one burst at a time per direction) with what an interconnect and a DDR controller add:

- random latency: before each R beat and after each W beat a random wait (usually none or a few cycles,
  now and then a long one, like a DDR page miss or a refresh);
- random back-pressure: pause generators on AW, W and AR (``*ready`` low) and on R and B (``*valid`` held
  back);
- outstanding requests: ``ar_channel`` / ``aw_channel`` accept up to ``outstanding`` addresses ahead of
  the burst being served;
- error injection: beats whose address lies in :attr:`LatencyAxiRam.error_ranges` answer SLVERR, and in
  :attr:`LatencyAxiRam.decode_error_ranges` DECERR (an interconnect's "no slave here"): a read returns
  zeros, a write is dropped and its burst's B carries the error;
- one-shot long waits (:attr:`LatencyAxiRam.read_waits`, :attr:`LatencyAxiRam.write_waits`): a read beat or
  a write at a chosen address waits a chosen number of cycles once (a bus that stops answering, for watchdog
  tests). A read beat takes its data from memory when it is fetched and then waits, so a late beat carries
  what memory held then;
- unsolicited responses (:meth:`LatencyAxiRam.send_unsolicited_b`, :meth:`LatencyAxiRam.send_unsolicited_r`):
  one B or R beat that answers no request, as an interconnect that breaks the protocol would send.

:class:`AxiProtocolChecker` watches the master's side of the bus and records violations: a ``*valid`` that
drops or a payload that changes before its handshake, a burst over ``max_burst`` beats, across a 4 KiB
boundary, of another size than the bus width or not INCR, a ``wlast`` out of place, and more R or B than were
requested. It also counts the most bursts in flight at once.

cocotbext-axi samples handshakes right after the rising edge: right on Icarus (event-driven), not on
Verilator (see :mod:`sim.transactors`); these benches run on Icarus.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiResp
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite
from cocotbext.axi.memory import Memory

BOUNDARY_BYTES = 4096


def pauses(rng: random.Random, p: float, p_long: float = 0.0, long: tuple[int, int] = (8, 24)):
    """A pause generator: 1 with probability ``p`` per cycle, and runs of ``long`` cycles with ``p_long``."""
    while True:
        if p_long and rng.random() < p_long:
            yield from [1] * rng.randint(*long)
        yield int(rng.random() < p)


class InjectedError(Exception):
    """Raised by the model's memory access inside an error range (cocotbext-axi answers it with SLVERR)."""


class _Delays:
    def __init__(self, rng: random.Random, p_wait: float, max_wait: int, p_long: float, long_wait: int):
        self.rng, self.p_wait, self.max_wait, self.p_long, self.long_wait = rng, p_wait, max_wait, p_long, long_wait

    def cycles(self) -> int:
        r = self.rng.random()
        if r < self.p_long:
            return self.rng.randint(self.long_wait // 2, self.long_wait)
        if r < self.p_long + self.p_wait:
            return self.rng.randint(1, self.max_wait)
        return 0


def _decode_error_sender(side, send, resp: str, counter: str):
    """``send`` of an R or B channel that answers DECERR, not cocotbext's SLVERR, for the beat or burst that
    ``side`` (the model's read or write side) refused as a decode error; counts them in ``owner.<counter>``."""
    async def wrapped(txn):
        if side._decode_error:
            side._decode_error = False
            setattr(txn, resp, AxiResp.DECERR)
            setattr(side._owner, counter, getattr(side._owner, counter) + 1)
        await send(txn)

    return wrapped


class _Read(AxiRamRead):
    def __init__(self, owner, *args, **kwargs):
        self._owner = owner
        self._burst_start = False
        self._decode_error = False
        super().__init__(*args, **kwargs)
        recv, send = self.ar_channel.recv, self.r_channel.send

        async def recv_burst():  # marks the next beat as a burst's first (for ``first_beat_latency``)
            ar = await recv()
            self._burst_start = True
            return ar

        self.ar_channel.recv = recv_burst
        self.r_channel.send = _decode_error_sender(self, send, "rresp", "decerr_reads")

    def _handle_reset(self, state):
        super()._handle_reset(state)
        if state:
            self._decode_error = self._burst_start = False

    async def _read(self, address, length):
        owner = self._owner
        wait = owner.delays.cycles()
        if self._burst_start:
            self._burst_start = False
            wait += owner.first_beat_latency
        wait += owner.read_waits.pop(address, 0)
        # DDR is read when the beat is fetched, the wait is the way back: a late beat carries the memory as it
        # was then, not what the host wrote there since
        error = owner.in_error_range(address, length)
        data = None if error else await super()._read(address, length)
        if wait:
            await ClockCycles(self.clock, wait)
        if error:
            owner.read_errors += 1
            self._decode_error = owner.in_error_range(address, length, owner.decode_error_ranges)
            raise InjectedError(f"read of {length} bytes at {address:#x}")
        return data


class _Write(AxiRamWrite):
    def __init__(self, owner, *args, **kwargs):
        self._owner = owner
        self._decode_error = False
        super().__init__(*args, **kwargs)
        self.b_channel.send = _decode_error_sender(self, self.b_channel.send, "bresp", "decerr_writes")

    def _handle_reset(self, state):
        super()._handle_reset(state)
        if state:
            self._decode_error = False

    async def _write(self, address, data):
        owner = self._owner
        wait = owner.delays.cycles() + owner.write_waits.pop(address, 0)
        if owner.in_error_range(address, len(data)):
            owner.write_errors += 1
            self._decode_error |= owner.in_error_range(address, len(data), owner.decode_error_ranges)
            raise InjectedError(f"write of {len(data)} bytes at {address:#x}")
        await super()._write(address, data)
        if wait:
            await ClockCycles(self.clock, wait)


class LatencyAxiRam(Memory):
    """cocotbext-axi's AXI4 RAM with random latency, back-pressure, outstanding depth and error ranges.

    Parameters
    ----------
    dut : cocotb handle
    prefix : str
        The bus's signal prefix (``"m_axi_gmem"``).
    clock, reset : cocotb handles
    size : int
        Bytes of memory (addresses wrap modulo ``size``).
    rng : random.Random
        Source of every random choice (one generator per channel is drawn from it).
    stall : bool
        Random latency and back-pressure; False: every channel at full speed.
    outstanding : int
        Addresses accepted ahead of the burst being served, per direction (>= 1).
    reset_active_level : bool
        Level of ``reset`` that resets (False for an active-low ``ap_rst_n``).
    first_beat_latency : int
        Extra cycles before the first R beat of every burst (a DDR read latency; bursts are served one
        after the other, so this latency does not overlap between outstanding bursts: pessimistic).

    Members
    -------
    error_ranges : list of (int, int)
        Byte ranges ``[lo, hi)`` that answer SLVERR.
    decode_error_ranges : list of (int, int)
        Byte ranges ``[lo, hi)`` that answer DECERR.
    read_waits, write_waits : dict of int to int
        One-shot waits: the read beat at byte address ``a`` (bus aligned) waits ``read_waits[a]`` cycles before
        its R; the write at ``a`` (the address of a beat's first written byte) ``write_waits[a]`` cycles before
        the burst goes on (its B comes after); each is used once.
    read_errors, write_errors : int
        Beat accesses answered with an error.
    decerr_reads, decerr_writes : int
        R beats and B responses sent as DECERR.

    Raises
    ------
    ValueError
        ``outstanding`` below 1.
    """

    def __init__(self, dut, prefix: str, clock, reset, *, size: int, rng: random.Random, stall: bool = True,
                 outstanding: int = 4, reset_active_level: bool = True, first_beat_latency: int = 0):
        if outstanding < 1:
            raise ValueError(f"outstanding must be >= 1, not {outstanding!r}")
        if first_beat_latency < 0:
            raise ValueError(f"first_beat_latency must be >= 0, not {first_beat_latency!r}")
        super().__init__(size)
        self.first_beat_latency = first_beat_latency
        bus = AxiBus.from_prefix(dut, prefix)
        self.error_ranges: list[tuple[int, int]] = []
        self.decode_error_ranges: list[tuple[int, int]] = []
        self.read_waits: dict[int, int] = {}
        self.write_waits: dict[int, int] = {}
        self.decerr_reads = self.decerr_writes = 0
        self.read_errors = self.write_errors = 0
        self.delays = _Delays(random.Random(rng.random()), *((0.15, 3, 0.02, 30) if stall else (0, 0, 0, 0)))
        self.write_if = _Write(self, bus.write, clock, reset, reset_active_level=reset_active_level, mem=self.mem)
        self.read_if = _Read(self, bus.read, clock, reset, reset_active_level=reset_active_level, mem=self.mem)
        self.read_if.ar_channel.queue_occupancy_limit = outstanding
        self.write_if.aw_channel.queue_occupancy_limit = outstanding
        self.write_if.w_channel.queue_occupancy_limit = 4
        if stall:
            for channel, p in ((self.write_if.aw_channel, 0.3), (self.write_if.w_channel, 0.3),
                               (self.write_if.b_channel, 0.3), (self.read_if.ar_channel, 0.3),
                               (self.read_if.r_channel, 0.25)):
                channel.set_pause_generator(pauses(random.Random(rng.random()), p, 0.01))

    def in_error_range(self, address: int, length: int, ranges=None) -> bool:
        """Whether ``[address, address + length)`` meets ``ranges`` (default: both kinds of error range)."""
        if ranges is None:
            ranges = self.error_ranges + self.decode_error_ranges
        return any(address < hi and lo < address + length for lo, hi in ranges)

    def send_unsolicited_b(self, bresp: int = AxiResp.OKAY) -> None:
        """Queue one B (ID 0, ``bresp``) that answers no write, behind any B already queued (a protocol violation
        of the slave, for the master's tests). It bypasses the DECERR wrapper of ``b_channel.send``, so a
        pending decode error stays with its own burst. Raises cocotbext's ``QueueFull`` if 2 B are queued."""
        b = self.write_if.b_channel._transaction_obj()
        b.bid, b.bresp = 0, bresp
        self.write_if.b_channel.send_nowait(b)

    def send_unsolicited_r(self, rdata: int = 0, rresp: int = AxiResp.OKAY, rlast: bool = True) -> None:
        """Queue one R beat (ID 0) that answers no read, behind any R already queued (as
        :meth:`send_unsolicited_b`)."""
        r = self.read_if.r_channel._transaction_obj()
        r.rid, r.rdata, r.rresp, r.rlast = 0, rdata, rresp, int(rlast)
        self.read_if.r_channel.send_nowait(r)


class AxiProtocolChecker:
    """Checks the master's AXI4 behaviour from the wires (module docstring); read :attr:`errors`.

    Members
    -------
    errors : list of str
    ar_bursts, aw_bursts : list of (addr, beats)
        Every burst requested, in order.
    max_reads_in_flight, max_writes_in_flight : int
        Most bursts requested and not yet answered (last R beat, B) at one time.
    r_refused : int
        Cycles with ``rvalid`` high and ``rready`` low (a master that buffers whole bursts has none).
    """

    def __init__(self, dut, prefix: str, clock, *, data_bytes: int = 8, max_burst: int = 16, reset=None,
                 reset_active_level: bool = True):
        self.dut, self.p, self.clock = dut, prefix, clock
        self.reset = dut.rst if reset is None else reset
        self.reset_active_level = reset_active_level
        self.data_bytes, self.max_burst = data_bytes, max_burst
        self.errors: list[str] = []
        self.ar_bursts: list[tuple[int, int]] = []
        self.aw_bursts: list[tuple[int, int]] = []
        self.max_reads_in_flight = self.max_writes_in_flight = 0
        self.r_refused = 0
        cocotb.start_soon(self._run())

    def _sig(self, name):
        return getattr(self.dut, f"{self.p}_{name}")

    def _check_burst(self, ch: str, addr: int, beats: int, size: int, burst: int) -> None:
        if beats > self.max_burst:
            self.errors.append(f"{ch} burst of {beats} beats at {addr:#x} (max {self.max_burst})")
        if 1 << size != self.data_bytes or burst != 1:
            self.errors.append(f"{ch} at {addr:#x}: size code {size}, burst type {burst} (want full width INCR)")
        if addr % self.data_bytes:
            self.errors.append(f"{ch} at {addr:#x} is not aligned to {self.data_bytes} bytes")
        if addr // BOUNDARY_BYTES != (addr + beats * self.data_bytes - 1) // BOUNDARY_BYTES:
            self.errors.append(f"{ch} burst {addr:#x} + {beats} beats crosses a 4 KiB boundary")

    async def _run(self) -> None:
        held: dict[str, tuple] = {}  # channel -> payload offered while its ready was low
        payloads = {"ar": ("araddr", "arlen", "arsize", "arburst"), "aw": ("awaddr", "awlen", "awsize", "awburst"),
                    "w": ("wdata", "wstrb", "wlast")}
        w_expect: list[int] = []  # beats of each AW whose W is not complete
        w_ahead: list[int] = []  # beats of each W burst that completed before its AW
        w_beat = 0
        w_reported = False  # a wrong wlast of the current burst was reported
        reads_in_flight = writes_in_flight = 0
        while True:
            await RisingEdge(self.clock)
            await ReadOnly()
            if int(self.reset.value) == int(self.reset_active_level):
                continue
            now = {}
            for ch, names in payloads.items():
                valid, ready = int(self._sig(f"{ch}valid").value), int(self._sig(f"{ch}ready").value)
                values = [self._sig(n).value for n in names] if valid else []
                if not all(v.is_resolvable for v in values):
                    self.errors.append(f"{ch} payload {values} has X/Z bits while {ch}valid is high")
                now[ch] = tuple(int(v) if v.is_resolvable else -1 for v in values)
            for ch in payloads:
                valid, ready = int(self._sig(f"{ch}valid").value), int(self._sig(f"{ch}ready").value)
                if ch in held and (not valid or now[ch] != held[ch]):
                    self.errors.append(f"{ch}valid dropped or payload changed before the handshake")
                held.pop(ch, None)
                if valid and not ready:
                    held[ch] = now[ch]
                if not (valid and ready):
                    continue
                if ch == "ar":
                    addr, length, size, burst = now[ch]
                    if -1 not in now[ch]:  # (an X payload is reported once, above)
                        self._check_burst("AR", addr, length + 1, size, burst)
                    self.ar_bursts.append((addr, length + 1))
                    reads_in_flight += 1
                elif ch == "aw":
                    addr, length, size, burst = now[ch]
                    if -1 not in now[ch]:  # (an X payload is reported once, above)
                        self._check_burst("AW", addr, length + 1, size, burst)
                    self.aw_bursts.append((addr, length + 1))
                    if w_ahead:  # its W burst is complete already
                        if w_ahead[0] != length + 1:
                            self.errors.append(f"a {w_ahead[0]}-beat W burst ran ahead of a {length + 1}-beat AW")
                        w_ahead.pop(0)
                    else:
                        w_expect.append(length + 1)
                    writes_in_flight += 1
                else:
                    last = now[ch][2]
                    if w_expect:  # its AW is known: the burst ends by its length, a wrong wlast reported once
                        expect_last = w_beat == w_expect[0] - 1
                        if last != expect_last and not w_reported:
                            self.errors.append(f"wlast={last} on beat {w_beat} of a {w_expect[0]}-beat burst")
                            w_reported = True
                        w_beat += 1
                        if expect_last:
                            w_expect.pop(0)
                            w_beat, w_reported = 0, False
                    else:  # W ahead of its AW: wlast ends the burst, its AW checks the length
                        w_beat += 1
                        if last:
                            w_ahead.append(w_beat)
                            w_beat = 0
            if int(self._sig("rvalid").value) and not int(self._sig("rready").value):
                self.r_refused += 1
            if int(self._sig("rvalid").value) and int(self._sig("rready").value) and int(self._sig("rlast").value):
                reads_in_flight -= 1
                if reads_in_flight < 0:
                    self.errors.append("an R burst ended that was never requested")
                    reads_in_flight = 0  # reported once; later bursts are counted as they come
            if int(self._sig("bvalid").value) and int(self._sig("bready").value):
                writes_in_flight -= 1
                if writes_in_flight < 0:
                    self.errors.append("a B came for a write that was never requested")
                    writes_in_flight = 0
            self.max_reads_in_flight = max(self.max_reads_in_flight, reads_in_flight)
            self.max_writes_in_flight = max(self.max_writes_in_flight, writes_in_flight)
