"""cocotb testbench of the packed DSP48E1 lane ``dsp_lane`` (:class:`hw.dsp.lane.PackedDspLane`).

The source feeds operand sets into ``i`` (:func:`hw.dsp.lane.operand_layout`: ``w[0..weights)``,
``a[0..acts)``, ``last``), the sink takes the finished dot products from ``o``
(:func:`hw.dsp.lane.sums_layout`: ``sums[w][a]``), and the scoreboard compares every ``sums`` with plain Python
integers computed from the operand sets (:func:`expected_dot_products`), in order. The payloads are packed
by the lane's own layouts, so the testbench and the hardware cannot disagree on where a field lies.
Transactors, timing discipline and stall patterns are :mod:`sim.tb.stream`'s.

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
import time

import cocotb
import numpy as np

from hw.dsp.lane import operand_layout, sums_layout
from hw.dsp.packing import PackingPlan
from sim.scoreboard import Scoreboard
from sim.tb.stream import CLOCK_NS, RunSettings, StreamTB

#: Cycles without any accepted beat after which the lane counts as hung (its latency is a few cycles).
DEFAULT_TIMEOUT_CYCLES = 2000
#: Cycles the sink keeps listening after the last expected dot product, to catch extra beats.
TAIL_CYCLES = 32


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


def operand_set(plan: PackingPlan, row) -> dict:
    """The ``i`` payload value of one operand row ``[w..., a..., last]``."""
    return {"w": row[:plan.weights], "a": row[plan.weights:plan.weights + plan.acts], "last": row[-1]}


class DspLaneTB(StreamTB):
    """Clock, reset, operand source, sums sink, watchdog and scoreboard of ``dsp_lane``.

    Parameters
    ----------
    dut : cocotb handle
        The ``dsp_lane`` top level.
    plan : PackingPlan
        The mode the Verilog was generated for; the port widths must agree with it (the sums' count bits
        are read from ``o__payload``).
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

    tail_cycles = TAIL_CYCLES

    def __init__(self, dut, plan: PackingPlan, ops, *, stall: bool, seed: int = 0,
                 timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES):
        out_bits = len(dut.o__payload)
        if out_bits % plan.products:
            raise ValueError(f"o__payload has {out_bits} bits, not a multiple of {plan.products} products")
        count_bits = out_bits // plan.products - plan.weight_bits - plan.act_bits
        if count_bits < 0:
            raise ValueError(f"o__payload has {out_bits} bits: sums narrower than weight_bits + act_bits = "
                             f"{plan.weight_bits + plan.act_bits}")
        super().__init__(dut, input_shape=operand_layout(plan), output_shape=sums_layout(plan, count_bits),
                         scoreboard=Scoreboard(expected_dot_products(plan, ops), name="dot product"),
                         stall=stall, seed=seed, timeout_cycles=timeout_cycles)
        self.plan = plan
        self.operand_sets = [operand_set(plan, row) for row in ops]  # what run() sends on i

    def result(self, wall_s: float) -> dict:
        """The result record (the ``MPQ_LANE_RESULT`` JSON).

        Keys: ``mode``, ``operand_sets`` (accepted by the lane), ``expected_operand_sets``, ``dot_products``
        (received), ``expected_dot_products``, ``mismatches``, ``mismatched_dot_products`` (first 20),
        ``sums`` (per received dot product, ``[w][a]``), ``cycles_total`` (first input transfer through
        last output transfer), ``input_cycles`` (first through last input transfer), ``input_wait_cycles``
        (cycles offered operand sets waited for ``i.ready``: chunks, stalls), the keys of
        :meth:`~sim.tb.stream.StreamTB.stream_record` and ``cycles_per_s`` (simulated cycles per wall second).
        """
        board, source = self.scoreboard, self.source
        record = {
            "mode": f"{self.plan.weight_bits}x{self.plan.act_bits}",
            "operand_sets": source.transfers,
            "expected_operand_sets": len(self.operand_sets),
            "dot_products": len(board.received),
            "expected_dot_products": len(board.expected),
            "mismatches": len(board.mismatched),
            "mismatched_dot_products": board.mismatched[:20],
            "sums": board.received,
            "cycles_total": self.cycles(source.first_transfer_ns, self.sink.last_transfer_ns),
            "input_cycles": self.cycles(source.first_transfer_ns, source.last_transfer_ns),
            "input_wait_cycles": round(source.wait_ns / CLOCK_NS),
            **self.stream_record(wall_s),
        }
        record["cycles_per_s"] = record["sim_cycles"] / wall_s if wall_s > 0 else 0.0
        return record


@cocotb.test()
async def run_dot_products(dut):
    """All operand sets of ``MPQ_LANE_CASE`` through the lane; every sum must equal the Python model's."""
    t0 = time.perf_counter()
    settings = RunSettings.from_env("MPQ_LANE", default_timeout_cycles=DEFAULT_TIMEOUT_CYCLES)
    with np.load(settings.case) as case:
        ops = case["ops"].astype(np.int64).tolist()
        plan = PackingPlan(**json.loads(str(case["plan"])))
    tb = DspLaneTB(dut, plan, ops, stall=settings.stall, seed=settings.seed,
                   timeout_cycles=settings.timeout_cycles)
    record = await tb.run_and_record(tb.operand_sets, settings.result, t0)

    assert not record["timed_out"], (
        f"no beat accepted for {tb.timeout_cycles} cycles after {record['operand_sets']} of {len(ops)} "
        f"operand sets and {record['dot_products']} dot products")
    assert not record["protocol_errors"], f"stream protocol violated: {record['protocol_errors']}"
    assert record["operand_sets"] == len(ops), f"the lane took {record['operand_sets']} of {len(ops)} sets"
    assert record["dot_products"] == record["expected_dot_products"], (
        f"received {record['dot_products']} dot products, expected {record['expected_dot_products']}")
    assert record["mismatches"] == 0, (
        f"{record['mismatches']} dot products differ from the model: {record['mismatched_dot_products']}")
