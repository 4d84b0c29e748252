"""cocotb tests of the stream transactors and the scoreboard (:mod:`sim.transactors`, :mod:`sim.scoreboard`)
on :class:`tests.sim.stream_fifo.StreamFifo`; run by tests/sim/test_transactors.py.

The FIFO's model is the identity, and the FIFO counts its own transfers (``i_count``, ``o_count``): a sink
that took a beat twice or missed one, or a source that offered one twice, disagrees with those counts and
with the scoreboard, whatever the pause patterns.
"""

from __future__ import annotations

import itertools
import random

import cocotb
from cocotb.triggers import ClockCycles, First, ReadOnly, Timer

from sim.scoreboard import Scoreboard
from sim.tb.stream import CLOCK_NS, StreamTB, backpressure_pattern, idle_pattern
from tests.sim.stream_fifo import CHANGE_PAYLOAD, DROP_VALID, PAYLOAD

N_BEATS = 120
#: Pause patterns: none, two pauses out of every three draws (exact counts follow), seeded random ones.
SOURCE_PAUSES = {"none": lambda: None, "cycle110": lambda: itertools.cycle([1, 1, 0]),
                 "random": lambda: idle_pattern(random.Random("fifo-source"))}
SINK_PAUSES = {"none": lambda: None, "cycle110": lambda: itertools.cycle([1, 1, 0]),
               "random": lambda: backpressure_pattern(random.Random("fifo-sink"))}


#: Faults of the FIFO, by the stream signal they break.
FAULTS = {"valid": DROP_VALID, "payload": CHANGE_PAYLOAD}


def beats(n: int, seed: int = 0) -> list[dict]:
    """``n`` payload values: the extremes of ``value`` first, then random ones; ``tag`` counts."""
    rng = random.Random(seed)
    values = [-2048, 2047, 0, -1] + [rng.randint(-2048, 2047) for _ in range(n - 4)]
    return [{"value": v, "tag": k % 16} for k, v in enumerate(values)]


class FifoTB(StreamTB):
    """Testbench of ``stream_fifo``: the model (the identity unless told otherwise) feeds the scoreboard.

    Parameters
    ----------
    dut : cocotb handle
    model : callable
        Expected output of one input value.
    source_pause, sink_pause : str
        Keys of :data:`SOURCE_PAUSES` and :data:`SINK_PAUSES`.
    """

    tail_cycles = 16

    def __init__(self, dut, *, model=lambda value: value, source_pause: str = "none", sink_pause: str = "none",
                 timeout_cycles: int = 200):
        super().__init__(dut, input_shape=PAYLOAD, output_shape=PAYLOAD, scoreboard=Scoreboard(name="beat"),
                         stall=False, seed=0, timeout_cycles=timeout_cycles)
        self.model = model
        for port, pause in ((self.source, SOURCE_PAUSES[source_pause]()), (self.sink, SINK_PAUSES[sink_pause]())):
            if pause is not None:
                port.set_pause_generator(pause)
        dut.fault.value = 0

    def expect_all(self, values) -> None:
        """Give the scoreboard the model's output for each of ``values``."""
        for value in values:
            self.scoreboard.expect(self.model(value))

    async def hardware_counts(self) -> tuple[int, int]:
        """The FIFO's own ``(i_count, o_count)``, read in the ReadOnly phase of this cycle."""
        await ReadOnly()
        return int(self.dut.i_count.value), int(self.dut.o_count.value)


@cocotb.test()
@cocotb.parametrize(source_pause=list(SOURCE_PAUSES), sink_pause=list(SINK_PAUSES))
async def every_beat_once_in_order(dut, source_pause, sink_pause):
    """Every beat arrives once, in order, unchanged, with exactly the pauses asked for."""
    tb = FifoTB(dut, source_pause=source_pause, sink_pause=sink_pause)
    values = beats(N_BEATS)
    tb.expect_all(values)
    await tb.reset()
    await tb.run(values)

    board, source, sink = tb.scoreboard, tb.source, tb.sink
    assert not tb.hung.is_set()
    assert board.passed, board.errors[:5]
    assert board.received == values
    assert sink.protocol_errors == []
    # What the transactors counted is what the hardware counted: no beat taken twice, none missed.
    assert (source.transfers, sink.transfers) == await tb.hardware_counts() == (N_BEATS, N_BEATS)
    # Pauses: "cycle110" is drawn once per beat the source could offer, once per cycle a beat is offered to the
    # sink, so it costs exactly two cycles per beat on either side.
    exact = {"none": 0, "cycle110": 2 * N_BEATS}
    for pause, cycles in ((source_pause, source.idle_cycles), (sink_pause, sink.stall_cycles)):
        if pause in exact:
            assert cycles == exact[pause], (pause, cycles)
        else:
            assert cycles > 0, (pause, cycles)
    if source_pause == "none" and sink_pause == "none":
        # Full throughput: one beat per cycle on both sides, no bubble from either transactor.
        assert tb.cycles(source.first_transfer_ns, source.last_transfer_ns) == N_BEATS
        assert tb.cycles(sink.first_transfer_ns, sink.last_transfer_ns) == N_BEATS
        assert source.wait_ns == 0
    elif source_pause == "none":
        assert source.wait_ns > 0  # the sink's back-pressure filled the FIFO and reached the source


@cocotb.test()
async def scoreboard_reports_an_injected_mismatch(dut):
    """A model that is wrong about one beat: the scoreboard names exactly that beat."""
    bad, index = 17, itertools.count()

    def model(value):
        return {**value, "value": value["value"] ^ 1} if next(index) == bad else value

    values = beats(N_BEATS, seed=1)
    tb = FifoTB(dut, model=model, source_pause="random", sink_pause="random")
    tb.expect_all(values)
    await tb.reset()
    await tb.run(values)

    board = tb.scoreboard
    assert board.mismatched == [bad] and not board.passed
    assert len(board.errors) == 1 and board.errors[0].startswith(f"beat {bad}: got {values[bad]}, expected ")
    assert board.received == values  # the DUT was right, the reference was not


@cocotb.test()
async def scoreboard_reports_an_extra_beat(dut):
    """The model expects one beat fewer than the DUT sends: the extra one is a mismatch at its index."""
    values = beats(20, seed=2)
    tb = FifoTB(dut, sink_pause="cycle110")
    tb.expect_all(values[:-1])
    await tb.reset()
    await tb.run(values)

    board = tb.scoreboard
    assert board.mismatched == [len(values) - 1] and not board.passed
    assert board.errors == [f"beat {len(values) - 1}: got {values[-1]}, expected no beat"]


@cocotb.test()
async def watchdog_ends_a_run_that_misses_a_beat(dut):
    """The model expects one beat more than the DUT sends: the run ends by the watchdog, one beat missing."""
    values = beats(20, seed=3)
    tb = FifoTB(dut, timeout_cycles=50)
    tb.expect_all([*values, {"value": 5, "tag": 5}])
    await tb.reset()
    await tb.run(values)

    board = tb.scoreboard
    assert tb.hung.is_set()
    assert board.missing == 1 and board.mismatched == [] and not board.passed


@cocotb.test()
@cocotb.parametrize(fault=list(FAULTS))
async def sink_reports_protocol_violations(dut, fault):
    """A DUT that drops ``valid`` or changes ``payload`` while stalled is reported; the transfers themselves
    are right, so the scoreboard passes: the protocol check is the sink's, not the scoreboard's."""
    values = beats(30, seed=4)
    tb = FifoTB(dut, sink_pause="cycle110")
    tb.expect_all(values)
    await tb.reset()
    dut.fault.value = FAULTS[fault]
    await tb.run(values)

    assert tb.scoreboard.passed, tb.scoreboard.errors[:5]
    message = {"valid": "o.valid dropped before the beat", "payload": "o.payload changed from"}[fault]
    assert tb.sink.protocol_errors, "no protocol error reported"
    assert all(message in error for error in tb.sink.protocol_errors), tb.sink.protocol_errors[:5]


@cocotb.test()
async def source_restarts_after_running_dry(dut):
    """Values queued after the source ran dry (mid-cycle) go out after the next edge, in order; a finite pause
    generator pauses exactly as long as it lasts."""
    values = beats(20, seed=5)
    tb = FifoTB(dut)
    tb.expect_all(values)
    await tb.reset()
    tb.source.set_pause_generator([1] * 5)
    tb.source.send_all_nowait(values[:10])
    tb.source.start()
    tb.sink.start()
    await tb.source.wait()
    assert tb.source.idle and tb.source.idle_cycles == 5
    await ClockCycles(dut.clk, 7)
    assert (await tb.hardware_counts())[0] == 10  # valid stayed low while the queue was empty

    await Timer(CLOCK_NS // 2, unit="ns")
    tb.source.send_all_nowait(values[10:])
    assert not tb.source.idle
    await tb.source.wait()
    await First(tb.scoreboard.done.wait(), ClockCycles(dut.clk, 20))
    await ClockCycles(dut.clk, 1)  # the edge that transfers the last beat

    assert tb.scoreboard.passed and tb.scoreboard.received == values
    assert await tb.hardware_counts() == (20, 20)
    assert tb.source.idle_cycles == 5 and tb.source.wait_ns == 0
    # The second batch went out on the clock edges like the first (it was queued mid-cycle).
    assert (tb.source.last_transfer_ns - tb.source.first_transfer_ns) % CLOCK_NS == 0
