"""What the tests of the engines' row decoders share (the version 3 :class:`~hw.core.stream_decoder.RowStreamDecoder`
and the version 4 :class:`~hw.array.plane_decoder.PlaneRowDecoder`): the decoder on a global-buffer port it
shares with another requester, and a cycle-by-cycle driver that offers row commands and collects the entries
under back-pressure."""

import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import MemoryData
from amaranth.lib.wiring import In, Out

from hw.core.global_buffer import GlobalBuffer
from tests.hw.stream_source import Source, simulate


class DecoderHarness(wiring.Component):
    """``decoder`` on the lower-priority requester of a global buffer port holding ``words`` (its
    ``2^addr_width`` words); ``other`` takes the port away.

    Members: the decoder's ``layer``, ``cmd``, ``o`` and ``error``; ``other`` in; ``reading`` (the decoder
    requests a word) and ``granted`` (and gets it) out.
    """

    def __init__(self, decoder, words):
        self._decoder = decoder
        self._words = [int(w) for w in words]
        members = decoder.signature.members
        super().__init__({
            "layer": members["layer"], "cmd": members["cmd"], "o": members["o"], "error": Out(1),
            "other": In(1), "reading": Out(1), "granted": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        dec = self._decoder
        m.submodules.buffer = buf = GlobalBuffer(MemoryData(shape=32, depth=1 << len(dec.bus.addr), init=self._words),
                                                 ports=[["other", "dec"]])
        m.submodules.dec = dec
        wiring.connect(m, buf.dec, dec.bus)
        wiring.connect(m, cmd=wiring.flipped(self.cmd), dec=dec.cmd)
        wiring.connect(m, dec=dec.o, out=wiring.flipped(self.o))
        m.d.comb += [
            dec.layer.eq(self.layer), self.error.eq(dec.error),
            buf.other.req.eq(self.other), buf.other.addr.eq(0),
            self.reading.eq(dec.bus.req), self.granted.eq(dec.bus.req & dec.bus.grant),
        ]
        return m


def run_decoder(dut: DecoderHarness, fields, commands, n_out, seed, *, convert, limit, p_gap=0.0, p_stall=0.0,
                p_other=0.0, after_error=None) -> dict:
    """Offer ``commands`` (with random gaps), stall ``o`` and take the port away at random (seeded), and
    collect ``n_out`` entries (``convert(payload)`` each), or stop ``after_error`` cycles after ``error``
    rose (``None``: at ``limit``).

    Checked here: an offered entry holds until its transfer; ``error`` is sticky; no command is taken and no
    read requested in the cycle it rises. Returns ``entries``, ``cycles`` (each entry's), ``last_cycle``,
    ``reads`` (granted reads), ``error_cycle`` (``None``: no error), ``moved_after_error`` (``(cycle, command
    taken, read requested)`` of the cycles after it where either happened) and ``commands_taken``.
    """
    rng = np.random.default_rng(seed)
    out = {"entries": [], "cycles": [], "last_cycle": 0, "reads": 0, "error_cycle": None, "moved_after_error": []}

    async def bench(ctx):
        ctx.set(dut.layer, fields)
        src = Source(dut.cmd, commands, rng, p_gap)
        held = None
        for cycle in range(limit):
            if len(out["entries"]) == n_out and out["error_cycle"] is None:
                break
            src.drive(ctx)
            ctx.set(dut.o.ready, rng.random() >= p_stall)
            ctx.set(dut.other, rng.random() < p_other)
            _, _, cv, cr, ov, orr, entry, err, reading, granted = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.ready, dut.o.valid, dut.o.ready, dut.o.payload, dut.error, dut.reading,
                dut.granted)
            src.update(cv, cr)
            out["last_cycle"] = cycle
            out["reads"] += int(granted)
            if held is not None:
                assert ov and entry == held, "entry changed or vanished before its transfer"
            held = entry if ov and not orr else None
            if ov and orr:
                out["entries"].append(convert(entry))
                out["cycles"].append(cycle)
            if out["error_cycle"] is not None:
                assert err, "error is sticky"
                # From the error on: no command taken, no read requested (the entries that left are checked
                # by the caller: only those before the fault).
                if (cv and cr) or reading:
                    out["moved_after_error"].append((cycle, cv and cr, reading))
                if after_error is not None and cycle == out["error_cycle"] + after_error:
                    break
            elif err:
                out["error_cycle"] = cycle
                assert not (cv and cr) and not reading, "command taken or read requested as the error rose"
        out["commands_taken"] = src.pos

    simulate(dut, bench)
    return out
