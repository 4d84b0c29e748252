"""Run the cocotb testbench of the packed DSP48E1 lane (:mod:`sim.tb.dsp_lane`) on its generated Verilog.

:func:`run_dsp_lane` builds the Verilog once per (Verilog text, simulator) under ``work_dir`` and simulates
any number of operand streams against it::

    from hw.dsp.packing import plan
    from sim.lane_runner import run_dsp_lane, write_lane_verilog
    p = plan(4, 4)
    verilog = write_lane_verilog(p, "out/dsp_lane_4x4.v")
    result = run_dsp_lane(verilog, p, ops, work_dir="out/sim")   # ops: [N, weights + acts + 1]
    print(result["verified"], result["mismatches"], result["sim_wall_s"])

The instance form (``PackedDspLane(plan, instance=True)``) simulates with Yosys' behavioural model of the
DSP48E1 (:func:`dsp48e1_model`) passed in ``extra_sources``.

As with :func:`sim.runner.run_accelerator`, a run that reached a verdict returns its record even when the
testbench failed; only a run that could not be built or ended without a record raises
:class:`~sim.runner.SimulationError`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from amaranth.back import verilog

from hw.dsp.lane import PackedDspLane
from hw.dsp.packing import PackingPlan
from hw.platform.synth import yosys_binary
from hw.platform.verilog import write_text_atomically
from sim.runner import build, check_timeout, run_test

TOPLEVEL = "dsp_lane"
TEST_MODULE = "sim.tb.dsp_lane"


def mode_name(plan: PackingPlan) -> str:
    """``"<weight bits>x<act bits>"``, e.g. ``"4x4"``."""
    return f"{plan.weight_bits}x{plan.act_bits}"


def write_lane_verilog(plan: PackingPlan, path, *, count_bits: int = 32, instance: bool = False,
                       name: str = TOPLEVEL) -> Path:
    """Write the Verilog of ``PackedDspLane(plan, ...)`` (top module ``name``) atomically
    (:func:`hw.platform.verilog.write_text_atomically`); return its path."""
    text = verilog.convert(PackedDspLane(plan, count_bits=count_bits, instance=instance), name=name,
                           emit_src=False)
    return write_text_atomically(path, text)


def dsp48e1_model(path) -> Path:
    """Write Yosys' behavioural ``DSP48E1`` simulation model (from its ``xilinx/cells_sim.v``) to ``path``.

    Raises
    ------
    FileNotFoundError
        Yosys' data folder has no ``xilinx/cells_sim.v`` with a ``DSP48E1`` module.
    """
    library = Path(yosys_binary()).resolve().parent.parent / "share" / "yosys" / "xilinx" / "cells_sim.v"
    found = re.search(r"^module DSP48E1\b.*?^endmodule\b", library.read_text() if library.is_file() else "",
                      flags=re.MULTILINE | re.DOTALL)
    if found is None:
        raise FileNotFoundError(f"{library}: no DSP48E1 simulation model")
    return write_text_atomically(path, f"// DSP48E1 from {library}\n{found.group(0)}\n")


def coverage(plan: PackingPlan, ops) -> str:
    """``"exhaustive"`` when ``ops`` holds every combination of operand values of the mode, else ``"random"``.

    ``ops`` must be validated rows ``[w..., a..., last]``.
    """
    ops = np.asarray(ops, dtype=np.int64)
    combination_bits = plan.weights * plan.weight_bits + plan.acts * plan.act_bits
    if combination_bits > 40 or len(ops) < 1 << combination_bits:
        return "random"
    return "exhaustive" if len(np.unique(ops[:, :-1], axis=0)) == 1 << combination_bits else "random"


def _as_plan(plan_dict) -> PackingPlan:
    if isinstance(plan_dict, PackingPlan):
        return plan_dict
    if not isinstance(plan_dict, Mapping):
        raise TypeError(f"plan_dict must be a mapping of PackingPlan fields, not {plan_dict!r}")
    fields = {f.name for f in dataclasses.fields(PackingPlan)}
    if set(plan_dict) != fields:
        raise ValueError(f"plan_dict must have exactly the PackingPlan fields {sorted(fields)}, "
                         f"not {sorted(plan_dict)}")
    return PackingPlan(**plan_dict)


def _check_ops(plan: PackingPlan, ops) -> np.ndarray:
    ops = np.asarray(ops)
    width = plan.weights + plan.acts + 1
    if ops.ndim != 2 or ops.shape[1] != width or len(ops) == 0 or not np.issubdtype(ops.dtype, np.integer):
        raise ValueError(f"ops must be integers [N >= 1, weights + acts + 1 = {width}], "
                         f"not {ops.dtype} of shape {ops.shape}")
    ops = ops.astype(np.int64)
    for name, cols, bits in (("weight", slice(0, plan.weights), plan.weight_bits),
                             ("activation", slice(plan.weights, width - 1), plan.act_bits)):
        lo, hi = int(ops[:, cols].min()), int(ops[:, cols].max())
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(f"{name} codes must lie in [0, {(1 << bits) - 1}], not [{lo}, {hi}]")
    if not np.isin(ops[:, -1], (0, 1)).all():
        raise ValueError("the last column (last) must be 0 or 1")
    if ops[-1, -1] != 1:
        raise ValueError("the final operand set must have last = 1, or its dot product is never emitted")
    return ops


def build_lane(verilog_path, *, work_dir, simulator: str = "icarus", extra_sources=()) -> Path:
    """Build ``verilog_path`` (top ``dsp_lane``) plus ``extra_sources`` (:func:`sim.runner.build`)."""
    return build(verilog_path, work_dir=work_dir, simulator=simulator, toplevel=TOPLEVEL,
                 extra_sources=extra_sources, prefix="lane")


def run_dsp_lane(verilog_path, plan_dict, ops, *, work_dir, simulator: str = "icarus", stall: bool = True,
                 seed: int = 0, timeout_cycles: int | None = None, extra_sources=(),
                 keep_logs: bool = False) -> dict:
    """Simulate the lane Verilog on ``ops`` and compare every dot product with Python integers.

    Parameters
    ----------
    verilog_path : path
        Verilog of :class:`~hw.dsp.lane.PackedDspLane` with top module ``dsp_lane``
        (:func:`write_lane_verilog`).
    plan_dict : mapping or PackingPlan
        The mode the Verilog was generated for: ``dataclasses.asdict(plan)`` (or the plan itself).
    ops : array_like of int, ``[N, weights + acts + 1]``
        Operand sets, one per row: weight codes ``w[0..weights)``, activation codes ``a[0..acts)``, ``last``
        (1 closes the dot products); the final row must have ``last = 1``.
    work_dir : path
        Holds the build folders (reused across calls) and the run folders.
    simulator : {"icarus", "verilator"}
    stall : bool
        Random ``i.valid`` gaps and ``o.ready`` drops; False for cycle counts.
    seed : int
        Seed of the stall patterns (and cocotb's random seed).
    timeout_cycles : int or None
        Cycles without any accepted beat after which the run fails as hung; None: the testbench default.
    extra_sources : sequence of path
        More Verilog to compile (:func:`dsp48e1_model` for the instance form).
    keep_logs : bool
        Keep the run folder after a passing run; failing runs always keep theirs.

    Returns
    -------
    dict
        The testbench's record (:meth:`sim.tb.dsp_lane.DspLaneTB.result`: ``mode``, ``operand_sets``,
        ``dot_products``, ``mismatches``, ``sums``, ``cycles_total``, ``sim_wall_s``, ``cycles_per_s``...)
        plus ``verified`` (``"exhaustive"`` when ``ops`` holds every combination of operand values, see
        :func:`coverage`, else ``"random"``), ``passed`` (the cocotb verdict), ``simulator``, ``wall_s``
        (whole simulator run), ``build_dir`` and ``log`` (the kept run folder's ``sim.log``, or None).

    Notes
    -----
    Separate processes may run concurrently, threads of one process may not (the runner sets
    ``os.environ`` while the simulator runs).

    Raises
    ------
    TypeError
        ``plan_dict`` is neither a mapping nor a PackingPlan.
    ValueError
        Bad plan fields, operand values or shapes, simulator name or timeout.
    SimulationError
        The build failed, or the simulation ended without writing its record.
    """
    plan = _as_plan(plan_dict)
    ops = _check_ops(plan, ops)
    check_timeout(timeout_cycles)
    build_dir = build_lane(verilog_path, work_dir=work_dir, simulator=simulator, extra_sources=extra_sources)
    case = {"ops": ops, "plan": np.array(json.dumps(dataclasses.asdict(plan)))}
    result = run_test(build_dir, verilog_path, simulator=simulator, toplevel=TOPLEVEL, test_module=TEST_MODULE,
                      env_prefix="MPQ_LANE", case=case, stall=stall, seed=seed, timeout_cycles=timeout_cycles,
                      keep_logs=keep_logs)
    result["verified"] = coverage(plan, ops)
    return result


# ------------------------------------------------------------------ operand streams for the checks
LONGEST = 1024


def dot_product_lengths(total: int, rng: np.random.Generator, longest: int = LONGEST) -> list[int]:
    """Lengths summing to ``total``: one of ``longest``, then short (1-8), medium (9-64) and long (65 to
    ``longest``) ones at random."""
    lengths = [min(longest, total)]
    while (left := total - sum(lengths)) > 0:
        kind = rng.random()
        low, high = (1, 8) if kind < 0.45 else (9, 64) if kind < 0.75 else (65, longest)
        lengths.append(min(int(rng.integers(low, high, endpoint=True)), left))
    return [int(n) for n in rng.permutation(lengths)]


def with_lasts(p, groups) -> np.ndarray:
    """Operand rows ``[w..., a..., last]`` of the dot products ``groups`` (arrays ``[length, w + a]``)."""
    rows = []
    for group in groups:
        last = np.zeros((len(group), 1), dtype=np.int64)
        last[-1] = 1
        rows.append(np.concatenate([group, last], axis=1))
    return np.concatenate(rows)


def maximal_groups(p, lengths) -> list[np.ndarray]:
    """Dot products of all-maximal operands: the only ones that can carry out of a slot."""
    top = [(1 << p.weight_bits) - 1] * p.weights + [(1 << p.act_bits) - 1] * p.acts
    return [np.array([top] * n, dtype=np.int64) for n in lengths]


def exhaustive_ops(p, seed: int) -> np.ndarray:
    """Every combination of operand values, shuffled and grouped into random dot products, plus all-maximal
    dot products right at the drain boundaries (max_accumulation, +1, 2 max_accumulation + 1) and 1024 long."""
    rng = np.random.default_rng(seed)
    axes = [np.arange(1 << p.weight_bits)] * p.weights + [np.arange(1 << p.act_bits)] * p.acts
    combos = rng.permutation(np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1))
    cuts = np.cumsum(dot_product_lengths(len(combos), rng))[:-1]
    m = p.max_accumulation
    groups = np.split(combos, cuts) + maximal_groups(p, [m, m + 1, 2 * m + 1, LONGEST])
    return with_lasts(p, [groups[k] for k in rng.permutation(len(groups))])


def random_ops(p, n: int, seed: int, longest: int = 256) -> np.ndarray:
    """``n`` random operand sets (a third of the values extreme) in random dot products of up to ``longest``,
    plus maximal ones."""
    rng = np.random.default_rng(seed)
    tops = np.array([(1 << p.weight_bits) - 1] * p.weights + [(1 << p.act_bits) - 1] * p.acts)
    values = (rng.random((n, len(tops))) * (tops + 1.0)).astype(np.int64).clip(0, tops)
    extreme = rng.random(values.shape) < 1 / 3
    values[extreme] = np.where(rng.random(values.shape) < 0.5, 0, tops)[extreme]
    cuts = np.cumsum(dot_product_lengths(n, rng, longest=min(longest, n)))[:-1]
    groups = np.split(values, cuts) + maximal_groups(p, [1, 2, 64])
    return with_lasts(p, [groups[k] for k in rng.permutation(len(groups))])
