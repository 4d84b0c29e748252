"""cocotb testbench of the packed DSP48E1 lane ``dsp_lane`` (:class:`hw.dsp.lane.PackedDspLane`).

A driver feeds operand sets into ``i`` (``payload`` = ``w[0..weights)``, ``a[0..acts)``, ``last``, packed
LSB first in that order, as Amaranth flattens its struct and array layouts), a monitor takes the finished
dot products from ``o`` (``payload`` = ``sums[w][a]``, ``w`` major, each ``len(o__payload) / products`` bits)
and a scoreboard compares every sum with plain Python integers computed from the operand sets, in order.

The sampling discipline is :mod:`sim.tb_accelerator`'s: handshakes are sampled in the
:class:`~cocotb.triggers.ReadOnly` phase before the edge that performs the transfer, inputs are driven right
after ``RisingEdge(clk)``, and neither coroutine wakes per cycle while it waits (the driver sleeps until
``i.ready`` rises, the monitor until ``o.valid`` rises), so a stalled or computing lane costs no Python time.
Input gaps and ``o.ready`` drops come from :func:`sim.stream_tb.valid_gaps` and
:func:`sim.stream_tb.ready_pattern`.

The test is configured by environment variables (set by :func:`sim.lane_runner.run_dsp_lane`):

``MPQ_LANE_CASE``
    ``.npz`` with ``ops`` (int64 ``[N, weights + acts + 1]``: weight codes, activation codes, ``last``) and
    ``plan`` (JSON of the :class:`~hw.dsp.packing.PackingPlan` fields).
``MPQ_LANE_RESULT``
    Path of the JSON the test writes before it asserts (see :meth:`DspLaneTB.result`).
``MPQ_LANE_STALL``
    ``"1"``: random ``i.valid`` gaps and ``o.ready`` drops (seeded by ``MPQ_LANE_SEED``); ``"0"``: none.
``MPQ_LANE_SEED``
    Seed of the stall patterns (default 0).
``MPQ_LANE_TIMEOUT_CYCLES``
    Watchdog: the test fails as hung when no beat is accepted on ``i`` or ``o`` for this many cycles
    (default :data:`DEFAULT_TIMEOUT_CYCLES`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, RisingEdge

from hw.dsp.packing import PackingPlan
from sim.stream_tb import CLOCK_NS, StreamTB, write_json

#: Cycles without any accepted beat after which the lane counts as hung (its latency is a few cycles).
DEFAULT_TIMEOUT_CYCLES = 2000
#: Cycles the monitor keeps listening after the last expected dot product, to catch extra beats.
TAIL_CYCLES = 32


class LaneFormat:
    """Bit layout of the lane's flattened stream payloads.

    Parameters
    ----------
    plan : PackingPlan
        The lane's mode.
    sum_bits : int
        Width of one ``sums[w][a]`` field (``weight_bits + act_bits + count_bits``).
    """

    def __init__(self, plan: PackingPlan, sum_bits: int):
        if sum_bits < plan.weight_bits + plan.act_bits:
            raise ValueError(f"sum_bits must be >= weight_bits + act_bits = "
                             f"{plan.weight_bits + plan.act_bits}, not {sum_bits!r}")
        self.plan = plan
        self.sum_bits = sum_bits
        self.shifts = ([k * plan.weight_bits for k in range(plan.weights)]
                       + [plan.weights * plan.weight_bits + k * plan.act_bits for k in range(plan.acts)])
        self.last_bit = plan.weights * plan.weight_bits + plan.acts * plan.act_bits
        self.input_bits = self.last_bit + 1
        self.output_bits = plan.products * sum_bits

    def encode(self, row) -> int:
        """``i.payload`` of one operand set ``[w..., a..., last]``."""
        *codes, last = row
        value = int(last) << self.last_bit
        for code, shift in zip(codes, self.shifts, strict=True):
            value |= int(code) << shift
        return value

    def decode(self, beat: int) -> list[list[int]]:
        """``sums[w][a]`` from an ``o.payload`` value."""
        mask, plan = (1 << self.sum_bits) - 1, self.plan
        return [[(beat >> ((w * plan.acts + a) * self.sum_bits)) & mask for a in range(plan.acts)]
                for w in range(plan.weights)]


def expected_dot_products(plan: PackingPlan, ops) -> list[list[list[int]]]:
    """The golden model: ``sums[w][a]`` of every dot product in ``ops``, in plain Python integers."""
    out, acc = [], [[0] * plan.acts for _ in range(plan.weights)]
    for row in ops:
        ws, acts, last = row[:plan.weights], row[plan.weights:plan.weights + plan.acts], row[-1]
        for w in range(plan.weights):
            for a in range(plan.acts):
                acc[w][a] += int(ws[w]) * int(acts[a])
        if last:
            out.append(acc)
            acc = [[0] * plan.acts for _ in range(plan.weights)]
    return out


class DotProductScoreboard:
    """Compares received dot products with the expected ones, in order.

    Members
    -------
    received : list
        Every received ``sums[w][a]``.
    mismatched : list of int
        Indices of received dot products that differ from the expected ones (extra ones count too).
    done : Event
        Set when as many dot products as expected have been received.
    """

    def __init__(self, expected):
        self.expected = expected
        self.received: list[list[list[int]]] = []
        self.mismatched: list[int] = []
        self.done = Event()

    def check(self, sums: list[list[int]]) -> None:
        k = len(self.received)
        self.received.append(sums)
        if k >= len(self.expected) or sums != self.expected[k]:
            self.mismatched.append(k)
            if len(self.mismatched) <= 5:
                want = self.expected[k] if k < len(self.expected) else "no dot product"
                cocotb.log.error("dot product %d: got %s, expected %s", k, sums, want)
        if len(self.received) == len(self.expected):
            self.done.set()


class DspLaneTB(StreamTB):
    """Clock, reset, operand driver, sums monitor, watchdog and scoreboard of ``dsp_lane``.

    Parameters
    ----------
    dut : cocotb handle
        The ``dsp_lane`` top level.
    plan : PackingPlan
        The mode the Verilog was generated for; the port widths must agree with it.
    ops : sequence of sequence of int
        Operand sets ``[w..., a..., last]``; the scoreboard's reference comes from them.
    stall : bool
        Random ``i.valid`` gaps and ``o.ready`` drops when true; ``o.ready`` held high otherwise.
    seed : int
        Seed of the stall patterns.
    timeout_cycles : int
        Watchdog limit: cycles without an accepted beat before the run counts as hung.

    Raises
    ------
    ValueError
        The ports do not have the widths ``plan`` implies.
    """

    def __init__(self, dut, plan: PackingPlan, ops, *, stall: bool, seed: int = 0,
                 timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES):
        out_bits = len(dut.o__payload)
        if out_bits % plan.products:
            raise ValueError(f"o__payload has {out_bits} bits, not a multiple of {plan.products} products")
        self.format = LaneFormat(plan, out_bits // plan.products)
        if len(dut.i__payload) != self.format.input_bits:
            raise ValueError(f"i__payload has {len(dut.i__payload)} bits, the plan needs "
                             f"{self.format.input_bits}: the Verilog is not this mode's lane")
        super().__init__(dut, stall=stall, seed=seed, timeout_cycles=timeout_cycles)
        self.plan = plan
        self.beats = [self.format.encode(row) for row in ops]
        self.scoreboard = DotProductScoreboard(expected_dot_products(plan, ops))
        self.accepted = 0  # operand sets taken by the lane
        self.taken = 0  # dot products taken from the lane
        self.input_wait_cycles = 0  # cycles an offered operand set waited for i.ready (chunks, stalls)
        self.first_input_ns: float | None = None
        self.last_input_ns: float | None = None
        self.last_output_ns: float | None = None

    def progress(self) -> int:
        return self.accepted + self.taken

    async def drive_inputs(self) -> None:
        """Operand driver: ``valid`` held until accepted, gaps from :attr:`valid_gaps`."""
        valid, ready, payload = self.dut.i__valid, self.dut.i__ready, self.dut.i__payload
        for beat in self.beats:
            gap = next(self.valid_gaps)
            if gap:
                self.valid_gap_cycles += gap
                valid.value = 0
                for _ in range(gap):
                    await self.clk_edge
            payload.value = beat
            valid.value = 1
            offered_ns = get_sim_time("ns")
            await ReadOnly()
            while not ready.value:
                await RisingEdge(ready)
                await ReadOnly()
            now = get_sim_time("ns")
            self.input_wait_cycles += round((now - offered_ns) / CLOCK_NS)
            if self.first_input_ns is None:
                self.first_input_ns = now
            self.last_input_ns = now
            self.accepted += 1
            await self.clk_edge  # the transfer
        valid.value = 0

    async def monitor_outputs(self) -> None:
        """Sums monitor: ``ready`` from :attr:`ready_pattern`; checks that a stalled beat is held."""
        valid, ready, payload = self.dut.o__valid, self.dut.o__ready, self.dut.o__payload
        ready_now = next(self.ready_pattern)
        ready.value = ready_now
        held: int | None = None  # payload offered while ready was low: must stay until taken
        while True:
            await ReadOnly()
            if not valid.value:
                if held is not None:
                    self._protocol_error(f"o.valid dropped before the beat {held:#x} was taken")
                    held = None
                await RisingEdge(valid)
                continue
            value = payload.value
            if not value.is_resolvable:
                self._protocol_error(f"o.payload is {value} while o.valid is high")
                beat = -1
            else:
                beat = value.to_unsigned()
                if held is not None and beat != held:
                    self._protocol_error(f"o.payload changed from {held:#x} to {beat:#x} while stalled")
            if ready_now:
                held = None
                self.taken += 1
                self.last_output_ns = get_sim_time("ns")
                self.scoreboard.check(self.format.decode(beat) if beat >= 0 else [])
            else:
                held = beat if beat >= 0 else None
                self.ready_stall_cycles += 1
            await self.clk_edge
            new_ready = next(self.ready_pattern)
            if new_ready != ready_now:
                ready.value = ready_now = new_ready

    async def run(self) -> None:
        """Drive every operand set and wait for all dot products (or the watchdog), then a short tail."""
        cocotb.start_soon(self.drive_inputs())
        cocotb.start_soon(self.monitor_outputs())
        cocotb.start_soon(self.watchdog())
        if self.scoreboard.expected:
            await First(self.scoreboard.done.wait(), self.hung.wait())
        if not self.hung.is_set():
            await ClockCycles(self.dut.clk, TAIL_CYCLES)  # extra beats would land in the scoreboard

    def _cycles(self, start_ns: float | None, end_ns: float | None) -> int:
        """Clock cycles from the transfer at ``start_ns`` through the one at ``end_ns``, both included."""
        return 0 if start_ns is None or end_ns is None else round((end_ns - start_ns) / CLOCK_NS) + 1

    def result(self, wall_s: float) -> dict:
        """The result record (the ``MPQ_LANE_RESULT`` JSON).

        Keys: ``mode``, ``operand_sets`` (accepted by the lane), ``expected_operand_sets``, ``dot_products``
        (received), ``expected_dot_products``, ``mismatches``, ``mismatched_dot_products`` (first 20),
        ``sums`` (per received dot product, ``[w][a]``), ``cycles_total`` (first input transfer through
        last output transfer), ``input_cycles`` (first through last input transfer), ``stall``,
        ``valid_gap_cycles``, ``input_wait_cycles`` and ``ready_stall_cycles`` (the gaps and back-pressure
        actually seen), ``timed_out``, ``protocol_errors``, ``sim_cycles`` (whole simulation),
        ``sim_wall_s`` (wall time of the test body) and ``cycles_per_s`` (simulated cycles per wall second).
        """
        board = self.scoreboard
        sim_cycles = round(get_sim_time("ns") / CLOCK_NS)
        return {
            "mode": f"{self.plan.weight_bits}x{self.plan.act_bits}",
            "operand_sets": self.accepted,
            "expected_operand_sets": len(self.beats),
            "dot_products": len(board.received),
            "expected_dot_products": len(board.expected),
            "mismatches": len(board.mismatched),
            "mismatched_dot_products": board.mismatched[:20],
            "sums": board.received,
            "cycles_total": self._cycles(self.first_input_ns, self.last_output_ns),
            "input_cycles": self._cycles(self.first_input_ns, self.last_input_ns),
            "stall": self.stall,
            "valid_gap_cycles": self.valid_gap_cycles,
            "input_wait_cycles": self.input_wait_cycles,
            "ready_stall_cycles": self.ready_stall_cycles,
            "timed_out": self.hung.is_set(),
            "protocol_errors": self.protocol_errors[:20],
            "sim_cycles": sim_cycles,
            "sim_wall_s": wall_s,
            "cycles_per_s": sim_cycles / wall_s if wall_s > 0 else 0.0,
        }


@cocotb.test()
async def run_dot_products(dut):
    """All operand sets of ``MPQ_LANE_CASE`` through the lane; every sum must equal the Python model's."""
    t0 = time.perf_counter()
    with np.load(os.environ["MPQ_LANE_CASE"]) as case:
        ops = case["ops"].astype(np.int64).tolist()
        plan = PackingPlan(**json.loads(str(case["plan"])))
    tb = DspLaneTB(dut, plan, ops, stall=os.environ.get("MPQ_LANE_STALL", "1") == "1",
                   seed=int(os.environ.get("MPQ_LANE_SEED", "0")),
                   timeout_cycles=int(os.environ.get("MPQ_LANE_TIMEOUT_CYCLES", DEFAULT_TIMEOUT_CYCLES)))
    error = None
    try:
        await tb.reset()
        await tb.run()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record = tb.result(time.perf_counter() - t0)
        record["error"] = error
        write_json(Path(os.environ["MPQ_LANE_RESULT"]), record)

    assert not record["timed_out"], (
        f"no beat accepted for {tb.timeout_cycles} cycles after {record['operand_sets']} of {len(ops)} "
        f"operand sets and {record['dot_products']} dot products")
    assert not record["protocol_errors"], f"stream protocol violated: {record['protocol_errors']}"
    assert record["operand_sets"] == len(ops), f"the lane took {record['operand_sets']} of {len(ops)} sets"
    assert record["dot_products"] == record["expected_dot_products"], (
        f"received {record['dot_products']} dot products, expected {record['expected_dot_products']}")
    assert record["mismatches"] == 0, (
        f"{record['mismatches']} dot products differ from the model: {record['mismatched_dot_products']}")
