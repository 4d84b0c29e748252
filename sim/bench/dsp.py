"""``build.py bench dsp``: every lane mode's density, resources and verification, with what limits it.

For each (weight bits, activation bits) mode: the packing plan (:mod:`hw.dsp.packing`), Yosys
``synth_xilinx`` of the lane alone (DSP48E1 / LUT / FF, and the inferred DSP configuration against
:data:`hw.dsp.lane.DSP48E1_ATTRIBUTES`), a randomized bit-exact check in Amaranth's simulator with
back-pressure, and for the 4x4 and 8x4 modes the exhaustive cocotb check of the generated Verilog.

``dsp.json`` is a list of rows, one per mode; the floors (:func:`floors`, :mod:`model.bench.floors`) go beside
it to ``dsp_floors.json`` as ``{"floors": {...}}``, so the rows keep their format. From the README ("every
mode maps to exactly one DSP48E1 with the intended registers; exact MACs per DSP per cycle: ..."):

* ``modes_failing_verification <= 0``: modes whose randomized (or exhaustive) check found a wrong sum;
* ``modes_not_one_dsp48e1 <= 0``: modes that Yosys did not map to exactly one DSP48E1;
* ``modes_dsp_config_mismatch <= 0``: modes whose inferred DSP registers differ from the ``Instance`` form's;
* ``macs_per_dsp_cycle_<w>x<a> >= README figure`` for each mode of :data:`README_MACS_PER_DSP_CYCLE` that
  the bench ran.
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from pathlib import Path

from amaranth.sim import Simulator

from hw.dsp.lane import DSP48E1_ATTRIBUTES, PackedDspLane
from hw.dsp.packing import A_BITS, B_BITS, P_BITS, PackingPlan, plan
from hw.platform.synth import parse_stat, synth_xilinx, yosys_binary
from model.bench.floors import floor_entry
from model.progress import progress_bar
from sim.lane_runner import exhaustive_ops, run_dsp_lane, write_lane_verilog

#: Modes of the bench: every weight width with the activation widths the papers use, and more.
MODES = [(w, a) for w in (2, 3, 4, 8, 16, 32) for a in (2, 4, 8, 16, 32)] + [(4, 3), (4, 5), (4, 6), (4, 7)]
EXHAUSTIVE = {(4, 4), (8, 4)}
#: Operand sets of :func:`lane_rate`'s run (dot products of every length :func:`random_groups` draws).
RATE_SETS = 600
COUNT_BITS = 32
LANE_TOP = "dsp_lane"
#: The README's exact MACs per DSP48E1 per cycle, by (weight bits, activation bits): floors of :func:`floors`.
README_MACS_PER_DSP_CYCLE = {(2, 2): 8, (3, 2): 8, (4, 4): 4, (4, 2): 6, (8, 4): 2, (4, 8): 2, (8, 8): 2, (16, 4): 2,
                             (16, 8): 1, (32, 8): 0.5, (32, 32): 0.25}


def limit_text(p: PackingPlan) -> str:
    """What stops one more packed value, and how far each resource is from its limit."""
    x_bits = p.weight_chunk if p.weight_port == "A" else p.act_chunk
    y_bits = p.act_chunk if p.weight_port == "A" else p.weight_chunk
    a_used = (p.n_a - 1) * p.n_b * p.slot + x_bits
    b_used = (p.n_b - 1) * p.slot + y_bits
    p_used = (p.products - 1) * p.slot + p.product_bits
    tight = p.product_bits  # the smallest slot that holds one product
    more_a = p.n_a * p.n_b * tight + x_bits  # one more value in A, slots shrunk to the product
    more_b = p.n_b * tight + y_bits
    more_b_a = (p.n_a - 1) * (p.n_b + 1) * tight + x_bits
    reasons = [f"A {a_used}/{A_BITS} bits", f"B {b_used}/{B_BITS}", f"P {p_used}/{P_BITS}",
               f"guard {p.guard_bits} bits (drain every {p.max_accumulation} products)"]
    why = []
    if more_a > A_BITS:
        why.append(f"one more value in A needs {more_a} > {A_BITS} bits")
    if more_b > B_BITS:
        why.append(f"one more value in B needs {more_b} > {B_BITS} bits")
    elif more_b_a > A_BITS:
        why.append(f"one more value in B spreads A to {more_b_a} > {A_BITS} bits")
    for port, extra in (("A", p.n_b), ("B", p.n_a)):
        if (p.products + extra) * tight > P_BITS:
            why.append(f"one more value in {port} makes {p.products + extra} slots of {tight} bits > {P_BITS} in P")
    if p.chunks > 1:
        why.append(f"operands over 16 bits: {p.chunks} chunk cycles per product set")
    return "; ".join(reasons) + ". Limited by: " + ("; ".join(why) or "nothing smaller")


def dsp_cells(json_path: Path) -> list[dict]:
    """Parameters of every DSP48E1 in a Yosys JSON netlist (integers decoded from bit strings)."""
    netlist = json.loads(Path(json_path).read_text())
    cells = []
    for module in netlist["modules"].values():
        for cell in module.get("cells", {}).values():
            if cell["type"] == "DSP48E1":
                params = {}
                for key, value in cell["parameters"].items():
                    params[key] = int(value, 2) if set(value) <= {"0", "1"} and len(value) >= 8 else value
                cells.append({"parameters": params, "connections": cell["connections"]})
    return cells


def config_mismatches(cell: dict) -> list[str]:
    """Register and multiplier settings where Yosys' inferred DSP differs from the Instance form's."""
    out = []
    for key in ("AREG", "BREG", "MREG", "PREG", "USE_DPORT", "USE_MULT"):
        want, got = DSP48E1_ATTRIBUTES[key], cell["parameters"].get(key)
        if str(want) != str(got):
            out.append(f"{key}: Instance {want}, inferred {got}")
    return out


def synth_lane(p: PackingPlan, work: Path) -> dict:
    """Yosys on the behavioural lane alone: resources and the inferred DSP configuration."""
    vpath = write_lane_verilog(p, work / f"lane_{p.weight_bits}x{p.act_bits}.v", count_bits=COUNT_BITS,
                               name=LANE_TOP)
    jpath = vpath.with_suffix(".json")
    script = f"read_verilog {vpath}; {synth_xilinx(LANE_TOP)}; stat; write_json {jpath}"
    proc = subprocess.run([yosys_binary(), "-p", script], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed on {vpath}:\n" + "\n".join(proc.stdout.splitlines()[-10:]))
    res = parse_stat(proc.stdout[proc.stdout.rfind("Printing statistics"):])
    cells = dsp_cells(jpath)
    mism = [m for c in cells for m in config_mismatches(c)]
    return {"dsp48e1": res.dsp, "lut": res.lut, "ff": res.ff, "verilog": vpath, "dsp_config_matches": not mism,
            "dsp_config_mismatches": mism}


def random_groups(p: PackingPlan, n_sets: int, rng: random.Random) -> list[list[tuple[list, list]]]:
    """Dot products of random lengths (1, at and past the drain interval, long) with extreme codes."""
    groups, total = [], 0
    lengths = [1, 2, min(p.max_accumulation, 300), min(p.max_accumulation + 1, 301), 1024]
    while total < n_sets:
        length = rng.choice(lengths + [rng.randint(1, 64)])
        wtop, atop = (1 << p.weight_bits) - 1, (1 << p.act_bits) - 1
        group = [([rng.choice([0, wtop, rng.randint(0, wtop)]) for _ in range(p.weights)],
                  [rng.choice([0, atop, rng.randint(0, atop)]) for _ in range(p.acts)]) for _ in range(length)]
        groups.append(group)
        total += length
    return groups


def simulate_lane(p: PackingPlan, groups, *, seed: int = 0, stall: bool = True) -> int:
    """Run ``groups`` through the lane in Amaranth's simulator; return the number of wrong dot products."""
    dut = PackedDspLane(p, count_bits=COUNT_BITS)
    rng = random.Random(seed)
    expect = [[[sum(w[i] * a[j] for w, a in g) for j in range(p.acts)] for i in range(p.weights)] for g in groups]
    got = []

    async def driver(ctx):
        for g in groups:
            for k, (w, a) in enumerate(g):
                ctx.set(dut.i.payload, {"w": w, "a": a, "last": int(k == len(g) - 1)})
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
                ctx.set(dut.i.valid, 0)
                if stall and rng.random() < 0.25:
                    await ctx.tick()

    async def ready(ctx):
        while True:
            ctx.set(dut.o.ready, (not stall) or rng.random() < 0.7)
            await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, rdy, payload in ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload):
            if valid and rdy:
                got.append([[payload[i][j] for j in range(p.acts)] for i in range(p.weights)])
                if len(got) == len(groups):
                    break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(ready, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return sum(g != e for g, e in zip(got, expect, strict=True))


def lane_rate(p: PackingPlan, groups) -> float:
    """Operand sets the lane takes per cycle in Amaranth's simulator, its output always ready and every set offered
    at once: the cycles from the first set taken to the last, over the sets between (``bench dsp``'s
    ``macs_per_dsp_cycle`` is this times the MACs a set holds, over the DSP48E1 count; the plan's own figure,
    ``PackingPlan.macs_per_cycle``, goes beside it). Counted rather than taken from the plan since 2026-12-06, so
    that a lane that took a bubble at a dot product's end or a drain would show it."""
    dut = PackedDspLane(p, count_bits=COUNT_BITS)
    taken = []

    async def driver(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = 0
        for g in groups:
            for k, (w, a) in enumerate(g):
                ctx.set(dut.i.payload, {"w": w, "a": a, "last": int(k == len(g) - 1)})
                ctx.set(dut.i.valid, 1)
                ready = 0
                while not ready:
                    _, _, ready = await ctx.tick().sample(dut.i.ready)
                    cycle += 1
                taken.append(cycle)
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.run()
    if len(taken) < 2:
        raise ValueError(f"lane_rate needs at least two operand sets, not {len(taken)}")
    return (len(taken) - 1) / (taken[-1] - taken[0])


def exhaustive_check(p: PackingPlan, vpath: Path, work: Path) -> dict:
    """The cocotb exhaustive check of the generated Verilog (sim/lane_runner.py)."""
    ops = exhaustive_ops(p, seed=0)
    return run_dsp_lane(vpath, p, ops, work_dir=work / "cocotb", simulator="icarus", stall=True, seed=0)



def bench_mode(w: int, a: int, work: Path, *, random_sets: int = 3000) -> dict:
    p = plan(w, a)
    syn = synth_lane(p, work)
    wrong = simulate_lane(p, random_groups(p, random_sets, random.Random(w * 100 + a)), seed=w + a)
    verified, detail = ("random" if wrong == 0 else "FAILED"), f"{random_sets} random operand sets"
    if (w, a) in EXHAUSTIVE and wrong == 0:
        result = exhaustive_check(p, syn["verilog"], work)
        ok = result.get("mismatches") == 0 and result.get("passed") and result.get("verified") == "exhaustive"
        verified = "exhaustive" if ok else "FAILED"
        detail = f"{result.get('operand_sets')} operand sets (every combination), cocotb/Icarus"
    sets_per_cycle = lane_rate(p, random_groups(p, RATE_SETS, random.Random(w * 100 + a + 1)))
    return {
        "weight_bits": w, "act_bits": a,
        "macs_per_dsp_cycle": sets_per_cycle * p.weights * p.acts / max(syn["dsp48e1"], 1),
        "planned_macs_per_dsp_cycle": p.macs_per_cycle / max(syn["dsp48e1"], 1),
        "sets_per_cycle": sets_per_cycle,
        "dsp48e1": syn["dsp48e1"], "lut": syn["lut"], "ff": syn["ff"],
        "max_accumulation": (1 << COUNT_BITS) - 1,
        "verified": verified,
        "verification": detail,
        "products_per_cycle": p.products, "weights": p.weights, "acts": p.acts, "weight_port": p.weight_port,
        "slot_bits": p.slot, "guard_bits": p.guard_bits, "drain_interval": p.max_accumulation,
        "chunk_cycles": p.chunks, "dsp_config_matches": syn["dsp_config_matches"],
        "dsp_config_mismatches": syn["dsp_config_mismatches"],
        "limit": limit_text(p),
    }


def run_bench(modes=MODES, progress: bool = True) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, a in progress_bar(modes, desc="bench dsp", disable=not progress):
            rows.append(bench_mode(w, a, Path(tmp)))
    return rows


def floors(rows: list[dict]) -> dict[str, dict]:
    """The floors of the module docstring over the bench's rows (MAC floors only for modes in ``rows``)."""
    out = {
        "modes_failing_verification": floor_entry(sum(r["verified"] == "FAILED" for r in rows), 0, "<="),
        "modes_not_one_dsp48e1": floor_entry(sum(r["dsp48e1"] != 1 for r in rows), 0, "<="),
        "modes_dsp_config_mismatch": floor_entry(sum(not r["dsp_config_matches"] for r in rows), 0, "<="),
    }
    by_mode = {(r["weight_bits"], r["act_bits"]): r for r in rows}
    for (w, a), macs in README_MACS_PER_DSP_CYCLE.items():
        if (w, a) in by_mode:
            out[f"macs_per_dsp_cycle_{w}x{a}"] = floor_entry(by_mode[(w, a)]["macs_per_dsp_cycle"], macs, ">=")
    return out


def format_rows(rows: list[dict]) -> str:
    head = f"{'mode':>6} {'MAC/DSP/cyc':>11} {'layout':>12} {'DSP':>4} {'LUT':>5} {'FF':>5} {'drain':>9} verified"
    lines = [head, "-" * len(head)]
    for r in rows:
        layout = f"{r['weights']}w x {r['acts']}a" + ("/c" if r["chunk_cycles"] > 1 else "")
        lines.append(f"{r['weight_bits']:>2}x{r['act_bits']:<3} {r['macs_per_dsp_cycle']:>11.2f} {layout:>12} "
                     f"{r['dsp48e1']:>4} {r['lut']:>5} {r['ff']:>5} {r['drain_interval']:>9} {r['verified']}")
    return "\n".join(lines)
