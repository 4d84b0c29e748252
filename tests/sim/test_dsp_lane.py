# amaranth: UnusedElaboratable=no
"""The packed DSP48E1 lane's Verilog under cocotb (Icarus): every dot product equal to Python integers.

4x4 and 8x4 run exhaustively (every combination of operand values, 65536 operand sets each), grouped into
dot products of random lengths up to 1024 with random input gaps and output back-pressure; 32x8 (two
chunks per operand set) runs a few thousand random operand sets, and the ``Instance("DSP48E1")`` form runs
against Yosys' behavioural DSP48E1 model.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hw.dsp.lane import PackedDspLane
from hw.dsp.packing import plan
from sim.lane_runner import (
    LONGEST,
    coverage,
    dsp48e1_model,
    exhaustive_ops,
    maximal_groups,
    random_ops,
    run_dsp_lane,
    with_lasts,
    write_lane_verilog,
)
from sim.runner import simulators_available
from sim.tb.dsp_lane import expected_dot_products


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lane_sim")


def _assert_verified(result: dict, p, ops: np.ndarray) -> None:
    assert result["passed"], {k: v for k, v in result.items() if k != "sums"}
    assert result["mode"] == f"{p.weight_bits}x{p.act_bits}"
    assert result["operand_sets"] == len(ops)
    assert result["dot_products"] == int(ops[:, -1].sum()) == result["expected_dot_products"]
    assert result["mismatches"] == 0 and result["protocol_errors"] == [] and not result["timed_out"]
    assert result["sums"] == expected_dot_products(p, ops.tolist())


def _report_speed(result: dict) -> None:
    """Simulation speed, shown with ``pytest -s`` (or ``-rP``)."""
    print(f"{result['mode']} {result['verified']}: {result['operand_sets']} operand sets, "
          f"{result['dot_products']} dot products, {result['sim_cycles']} cycles in {result['sim_wall_s']:.1f} s "
          f"({result['cycles_per_s']:.0f} cycles/s; {result['wall_s']:.1f} s with simulator start-up)")


def test_icarus_is_available():
    assert "icarus" in simulators_available()


@pytest.mark.parametrize("pair", [(4, 4), (8, 4)], ids=["4x4", "8x4"])
def test_exhaustive_with_stalls(pair, work_dir):
    """Every operand pair in every product slot, drained at random ``last``s and every max_accumulation."""
    p = plan(*pair)
    ops = exhaustive_ops(p, seed=sum(pair))
    lengths = np.diff(np.flatnonzero(np.r_[1, ops[:, -1]]))
    assert lengths.max() >= LONGEST and (lengths <= 8).sum() > 50  # long and short dot products
    verilog = write_lane_verilog(p, work_dir / f"lane_{pair[0]}x{pair[1]}.v")
    result = run_dsp_lane(verilog, dataclasses.asdict(p), ops, work_dir=work_dir, stall=True, seed=pair[0])
    _report_speed(result)
    _assert_verified(result, p, ops)
    assert result["verified"] == "exhaustive"
    assert result["operand_sets"] >= 65536
    # The stalls really happened: input gaps, sums held while o.ready was low, the lane refusing operands.
    assert result["valid_gap_cycles"] > 0 and result["ready_stall_cycles"] > 0
    assert result["input_wait_cycles"] > 0


def test_random_wide_mode_with_stalls(work_dir):
    """32x8: two 16-bit weight chunks per operand set, each drained with its shift."""
    p = plan(32, 8)
    assert p.chunks == 2
    ops = random_ops(p, 3000, seed=32)
    verilog = write_lane_verilog(p, work_dir / "lane_32x8.v")
    result = run_dsp_lane(verilog, p, ops, work_dir=work_dir, stall=True, seed=5)
    _report_speed(result)
    _assert_verified(result, p, ops)
    assert result["verified"] == "random"
    # i.ready stays low for the first chunk of every operand set, and more under back-pressure.
    assert result["input_wait_cycles"] >= len(ops) * (p.chunks - 1)
    assert result["ready_stall_cycles"] > 0


@pytest.mark.parametrize("pair", [(4, 4), (32, 8), (2, 2)], ids=["4x4", "32x8", "2x2"])
def test_instance_form_on_the_yosys_dsp48e1_model(pair, work_dir):
    """``Instance("DSP48E1")`` with DSP48E1_ATTRIBUTES, OPMODE switching and clock enables, simulated with
    Yosys' model of the primitive: the same sums as the behavioural form."""
    p = plan(*pair)
    ops = random_ops(p, 1500, seed=7)
    verilog = write_lane_verilog(p, work_dir / f"lane_inst_{pair[0]}x{pair[1]}.v", instance=True)
    assert "DSP48E1 #(" in verilog.read_text()
    model = dsp48e1_model(work_dir / "dsp48e1.v")
    result = run_dsp_lane(verilog, p, ops, work_dir=work_dir, stall=True, seed=3, extra_sources=[model])
    _assert_verified(result, p, ops)


@pytest.mark.parametrize("pair", [(16, 4), (32, 8)], ids=["16x4", "32x8"])
def test_unstalled_throughput(pair, work_dir):
    """No gaps, no back-pressure: one operand set every ``chunks`` cycles, although 16x4 drains every
    product (max_accumulation 1) and every dot product is short."""
    p = plan(*pair)
    ops = random_ops(p, 600, seed=11)
    verilog = write_lane_verilog(p, work_dir / f"lane_{pair[0]}x{pair[1]}.v")
    result = run_dsp_lane(verilog, p, ops, work_dir=work_dir, stall=False)
    _assert_verified(result, p, ops)
    assert result["valid_gap_cycles"] == result["ready_stall_cycles"] == 0
    assert result["input_cycles"] == (len(ops) - 1) * p.chunks + 1
    assert result["input_wait_cycles"] == len(ops) * (p.chunks - 1)
    if p.chunks == 1:
        assert result["cycles_total"] == result["input_cycles"] + PackedDspLane(p).latency


def test_scoreboard_reports_overflowing_sums(work_dir):
    """A lane with 1-bit counts (9-bit sums) on 8 maximal 4x4 products: the scoreboard flags exactly those
    dot products, and the received sums are the truncated ones (the payload decoding is right)."""
    p = plan(4, 4)
    groups = maximal_groups(p, [2, 8]) + [np.array([[1, 2, 3, 4]] * 2)] + maximal_groups(p, [9])
    ops = with_lasts(p, groups)
    verilog = write_lane_verilog(p, work_dir / "lane_4x4_narrow.v", count_bits=1)
    result = run_dsp_lane(verilog, p, ops, work_dir=work_dir, stall=True, seed=1)
    assert not result["passed"]
    assert result["mismatches"] == 2 and result["mismatched_dot_products"] == [1, 3]
    expected = expected_dot_products(p, ops.tolist())
    assert result["sums"] == [[[s % 512 for s in row] for row in sums] for sums in expected]
    assert result["sums"][1] == [[8 * 225 % 512] * 2] * 2
    assert Path(result["log"]).is_file()  # a failing run keeps its log


def test_coverage_needs_every_combination():
    p = plan(4, 4)
    ops = exhaustive_ops(p, seed=0)
    assert coverage(p, ops) == "exhaustive"
    combos = ops[:, :-1]
    missing = np.flatnonzero((combos == [15, 15, 15, 15]).all(axis=1))
    assert coverage(p, np.delete(ops, missing, axis=0)) == "random"
    assert coverage(plan(32, 8), random_ops(plan(32, 8), 100, seed=0)) == "random"


@pytest.mark.parametrize(("ops", "message"), [
    (np.zeros((0, 5), dtype=np.int64), r"ops must be integers \[N >= 1, weights \+ acts \+ 1 = 5\]"),
    (np.ones((3, 4), dtype=np.int64), r"weights \+ acts \+ 1 = 5\], not int64 of shape \(3, 4\)"),
    (np.array([[16, 0, 0, 0, 1]]), r"weight codes must lie in \[0, 15\], not \[0, 16\]"),
    (np.array([[0, 0, -1, 0, 1]]), r"activation codes must lie in \[0, 15\], not \[-1, 0\]"),
    (np.array([[0, 0, 0, 0, 2]]), r"last column \(last\) must be 0 or 1"),
    (np.array([[0, 0, 0, 0, 1], [1, 1, 1, 1, 0]]), r"final operand set must have last = 1"),
    (np.array([[0.0, 0, 0, 0, 1]]), r"ops must be integers"),
])
def test_run_dsp_lane_rejects_bad_operands(ops, message, work_dir):
    with pytest.raises(ValueError, match=message):
        run_dsp_lane(work_dir / "unused.v", plan(4, 4), ops, work_dir=work_dir)


def test_run_dsp_lane_rejects_bad_plans_and_options(work_dir):
    ops = np.array([[0, 0, 0, 0, 1]])
    fields = dataclasses.asdict(plan(4, 4))
    with pytest.raises(ValueError, match="exactly the PackingPlan fields"):
        run_dsp_lane(work_dir / "unused.v", {**fields, "extra": 1}, ops, work_dir=work_dir)
    with pytest.raises(TypeError, match="mapping of PackingPlan fields"):
        run_dsp_lane(work_dir / "unused.v", (4, 4), ops, work_dir=work_dir)
    with pytest.raises(ValueError, match=r"timeout_cycles must be >= 1, not 0"):
        run_dsp_lane(work_dir / "unused.v", fields, ops, work_dir=work_dir, timeout_cycles=0)
    with pytest.raises(ValueError, match=r"simulator must be one of .*, not 'ghdl'"):
        run_dsp_lane(work_dir / "unused.v", fields, ops, work_dir=work_dir, simulator="ghdl")
