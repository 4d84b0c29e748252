"""``bench dsp`` floors (sim/bench/dsp.py) on hand-written rows."""

import random

import pytest

from hw.dsp.packing import plan
from sim.bench import dsp
from sim.bench.dsp import README_MACS_PER_DSP_CYCLE, floors


def dsp_row(w, a, macs=None, dsp=1, verified="random", matches=True):
    return {"weight_bits": w, "act_bits": a, "dsp48e1": dsp, "verified": verified, "dsp_config_matches": matches,
            "macs_per_dsp_cycle": README_MACS_PER_DSP_CYCLE.get((w, a), 1) if macs is None else macs,
            "lut": 10, "ff": 20, "weights": 2, "acts": 2, "chunk_cycles": 1, "drain_interval": 63}


def readme_rows():
    return [dsp_row(w, a) for w, a in README_MACS_PER_DSP_CYCLE] + [dsp_row(4, 5, macs=2)]


def test_floors_hold_on_the_readme_figures():
    f = floors(readme_rows())
    assert [n for n in f if n.startswith("macs")] == [f"macs_per_dsp_cycle_{w}x{a}"
                                                     for w, a in README_MACS_PER_DSP_CYCLE]
    assert f["macs_per_dsp_cycle_4x4"] == {"value": 4, "floor": 4, "op": ">=", "holds": True}
    assert f["modes_failing_verification"] == {"value": 0, "floor": 0, "op": "<=", "holds": True}
    assert all(e["holds"] for e in f.values())


@pytest.mark.parametrize(
    ("change", "name"),
    [({"verified": "FAILED"}, "modes_failing_verification"), ({"dsp": 2}, "modes_not_one_dsp48e1"),
     ({"matches": False}, "modes_dsp_config_mismatch"), ({"macs": 3}, "macs_per_dsp_cycle_4x4")],
)
def test_each_floor_fails(change, name):
    rows = [r for r in readme_rows() if (r["weight_bits"], r["act_bits"]) != (4, 4)] + [dsp_row(4, 4, **change)]
    f = floors(rows)
    assert [n for n, e in f.items() if not e["holds"]] == [name]
    assert f[name]["value"] == {"modes_failing_verification": 1, "modes_not_one_dsp48e1": 1,
                                "modes_dsp_config_mismatch": 1, "macs_per_dsp_cycle_4x4": 3}[name]


def test_modes_the_bench_did_not_run_have_no_mac_floor():
    f = floors([dsp_row(4, 4)])
    assert [n for n in f if n.startswith("macs")] == ["macs_per_dsp_cycle_4x4"]


@pytest.mark.parametrize(("w", "a"), [(4, 4), (8, 4), (2, 2), (32, 8), (32, 32)])
def test_the_lane_takes_an_operand_set_every_chunk_cycle_in_the_rtl(w, a):
    """``lane_rate`` counts the sets the lane's RTL takes a cycle (bench dsp's ``macs_per_dsp_cycle`` since
    2026-12-06; it was the plan's figure): one a cycle, or one every 2 / 4 cycles for 32-bit operands in 16-bit
    chunks, across dot products of every length, so the measured MACs equal the plan's (no bubble at a dot
    product's end or a drain)."""
    p = plan(w, a)
    sets = dsp.lane_rate(p, dsp.random_groups(p, 300, random.Random(3)))
    assert sets == 1 / p.chunks and sets * p.weights * p.acts == p.macs_per_cycle
