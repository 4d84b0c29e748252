"""bench fuzz's vertical part (sim/bench/fuzz_vertical.py): the generator covers what it claims, every network
is valid and fits the build, and the bookkeeping counts what the runs return (the RTL run is the bench command
test's, tests/sim/bench/test_fuzz.py, and the bench's own)."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from model.export.golden_vertical import TableRow, check_vertical, compose
from model.export.image_v4 import pack_vertical, unpack_vertical
from sim.bench import fuzz, fuzz_vertical
from sim.bench.calibrate import covering_assignments
from sim.bench.fuzz import fits
from sim.bench.fuzz_vertical import (
    TABLE_ROW,
    VCONFIG,
    VCONFIGS,
    floors,
    precisions,
    random_vertical_network,
    run_vertical_fuzz,
    split_planes,
)
from tests.sim.bench.fake_runs import fake_words_read, faulty_run


@pytest.mark.parametrize("base, top", [(b, t) for b in range(2, 6) for t in range(b, 7)])
def test_split_planes_composes_back_to_every_code(base, top):
    codes = np.arange(-(1 << (top - 1)), 1 << (top - 1))
    b, planes = split_planes(codes, top, base)
    assert len(planes) == top - base and np.array_equal(compose(b, planes, len(planes)), codes)
    assert b.min() == -(1 << (base - 1)) and b.max() == (1 << (base - 1)) - 1
    assert all(set(np.unique(p)) <= {0, 1} for p in planes)


@pytest.fixture(scope="module")
def nets():
    rng = np.random.default_rng(0)
    return [random_vertical_network(rng) for _ in range(60)]


def test_networks_cover_shapes_widths_tables_and_modes(nets):
    convs = [n for n in nets if n.image_shape is not None]
    assert 0 < len(convs) < len(nets)  # MLPs too
    conv_layers = [layer for n in convs for layer in n.layers if layer.kind == "conv"]
    assert {layer.base.shape[2] for layer in conv_layers} >= {1, 3, 5, 7}
    assert {layer.stride for layer in conv_layers} == {1, 2}
    assert any(layer.residual for layer in conv_layers) and any(layer.pool for layer in conv_layers)
    assert {n.layers[-1].gap for n in convs} == {False, True}  # the global pool and the flattened map
    assert {(n.widths[0], n.widths[-1]) for n in nets} >= {(2, 2), (2, 4), (3, 6), (4, 6), (5, 6), (6, 6)}
    inner = [layer for n in nets for layer in n.inner]
    assert {layer.compensate for layer in inner} == {False, True}
    zero = [float((layer.base == 0).mean()) for n in nets for layer in n.layers if layer.edge]
    assert min(zero) < 0.1 and max(zero) > 0.5
    records = [r for n in nets for layer in n.layers for r in layer.requant.values()]
    assert any(r.negate.any() for r in records) and any(not r.negate.all() for r in records)
    assert any(n.table for n in nets) and any(layer.row_requant for n in nets for layer in n.layers)


def test_every_network_is_valid_round_trips_and_fits_the_build(nets):
    for net in nets:
        check_vertical(net)
        words = pack_vertical(net)
        assert fits(words, VCONFIG)
        assert np.array_equal(pack_vertical(unpack_vertical(words)), words)
    rng = np.random.default_rng(5)
    wide = [random_vertical_network(rng, config=VCONFIGS[1]) for _ in range(30)]
    assert all(fits(pack_vertical(net), VCONFIGS[1]) for net in wide)
    # drawn for the one-engine build (14-pixel tiles): some have output rows wider than VCONFIG's 8-pixel tiles
    assert any(not fits(pack_vertical(net), VCONFIG) for net in wide)


def test_most_networks_score_their_inputs_differently_at_every_width(nets):
    """The calibrated records (sim/bench/calibrate.py): most networks' scores depend on the input at each stored
    width and table row (the rest hold an all-zero layer or a record left at random extremes)."""
    rng = np.random.default_rng(1)
    varied = []
    for net in nets:
        x = rng.integers(0, 256, size=(6, *(net.image_shape or (net.layers[0].base.shape[1],))))
        for bits in [*net.widths, *(TableRow(r) for r in range(len(net.table)))]:
            varied.append(len(np.unique(net.forward(x, bits), axis=0)) > 1)
    assert np.mean(varied) > 0.7


def test_precisions_name_widths_the_source_width_and_table_rows(nets):
    rng = np.random.default_rng(2)
    seen = set()
    for net in nets:
        runs = precisions(rng, net)
        assert 1 <= len(runs) <= 3 and len({p for p, _ in runs}) == len(runs)
        for precision, bits in runs:
            if precision >= TABLE_ROW:
                assert bits == TableRow(precision - TABLE_ROW) and precision - TABLE_ROW < len(net.table)
                seen.add("row")
            elif precision == 0:
                assert bits == net.widths[-1]
                seen.add("source")
            else:
                assert bits == precision and precision in net.widths
                seen.add("width")
    assert seen == {"row", "source", "width"}


def test_the_runs_mismatches_and_deadlocks_reach_the_result_and_fail_the_floors(tmp_path, monkeypatch):
    """run_vertical_fuzz's bookkeeping with the simulator replaced: every case carries its precision and golden's
    scores at it; run 0 returns one wrong score, run 1 one image short and timed out, run 2 an error status, run 3
    one image's reads one word over the model's (tests/sim/bench/fake_runs.py). The networks take the two builds
    in turn; each build's record holds its own runs' counts."""
    calls, built = [], []

    def fake(vpath, cases, **kwargs):
        calls.append(cases)
        built.append(Path(vpath).name)
        assert all(len(case) == 4 and 0 <= case[3] < 0x100 for case in cases)
        return faulty_run(cases, len(calls) - 1)

    monkeypatch.setattr(fuzz, "run_array_cases", fake)
    monkeypatch.setattr(fuzz_vertical, "words_read", fake_words_read)
    monkeypatch.setattr(fuzz_vertical, "array_verilog", lambda config: f"module mpq_array; // {config.engines}\nendmodule\n")
    monkeypatch.setattr(fuzz_vertical, "CHUNK", 10)
    result = run_vertical_fuzz(tmp_path, layers=200, progress=False)
    assert len(calls) >= 5 and result["runs"] == len(calls) and result["layers"] >= 200
    assert built[:4] == ["mpq_array_v4_3x4.v", "mpq_array_v4_1x7.v"] * 2
    one, two = result["builds"]
    assert [r["build"] for r in result["failed_runs"]] == [0, 1, 0, 1]
    assert (one["mismatches"], one["deadlocks"], two["mismatches"], two["deadlocks"], two["not_run"]) == (1, 0, 0, 1, 1)
    assert (one["read_mismatches"], two["read_mismatches"], result["read_mismatches"]) == (0, 1, 1)
    assert abs(one["networks"] - two["networks"]) <= 1
    for key in ("layers", "networks", "cases", "images", "sim_cycles"):
        assert one[key] > 0 and two[key] > 0 and one[key] + two[key] == result[key]
    assert result["cases"] == sum(len(c) for c in calls) == sum(result["precisions"].values())
    assert result["images"] == sum(len(case[1]) for c in calls for case in c)
    assert result["mismatches"] == 1 and result["not_run"] == 1 and result["deadlocks"] == 1
    assert [r["run"] for r in result["failed_runs"]] == [0, 1, 2, 3] and result["failed_runs"][2]["statuses"] == [4]
    assert 0 < result["input_dependent"] <= result["networks"]
    held = {k: v["holds"] for k, v in floors(result).items()}
    assert held == {"vertical layers >= 2000": False, "vertical layers on each build >= 800": False,
                    "vertical mismatches == 0": False, "vertical read_mismatches == 0": False,
                    "vertical deadlocks == 0": False,
                    "vertical not_run == 0": False, "vertical failed_runs == 0": False}
    builds = [{**b, "layers": 1_000} for b in result["builds"]]
    ok = {**result, "layers": 2_000, "mismatches": 0, "read_mismatches": 0, "deadlocks": 0, "not_run": 0,
          "failed_runs": [], "builds": builds}
    assert all(v["holds"] for v in floors(ok).values())
    lopsided = {**ok, "builds": [builds[0], {**builds[1], "layers": 799}]}
    assert not floors(lopsided)["vertical layers on each build >= 800"]["holds"]


def test_every_build_runs_a_network_however_few_layers_are_asked(tmp_path, monkeypatch):
    """One layer asked: the first network is more, but the second build still gets one (each build is run)."""
    built = []

    def fake(vpath, cases, **kwargs):
        built.append(Path(vpath).name)
        return faulty_run(cases, 4)  # a clean run

    monkeypatch.setattr(fuzz, "run_array_cases", fake)
    monkeypatch.setattr(fuzz_vertical, "words_read", fake_words_read)
    monkeypatch.setattr(fuzz_vertical, "array_verilog", lambda config: f"module mpq_array; // {config.engines}\nendmodule\n")
    result = run_vertical_fuzz(tmp_path, layers=1, progress=False)
    assert sorted(built) == ["mpq_array_v4_1x7.v", "mpq_array_v4_3x4.v"] and result["networks"] == 2
    assert [b["networks"] for b in result["builds"]] == [1, 1]


def test_covering_assignments_reach_every_triple_of_consecutive_widths():
    widths = (2, 3, 4, 5, 6)
    for inner in range(1, 8):
        runs = covering_assignments(widths, inner)
        assert len(runs) == len(widths) ** min(inner, 3) and all(len(r) == inner for r in runs)
        for start in range(max(inner - 2, 1)):
            span = min(3, inner)
            assert {r[start:start + span] for r in runs} == set(itertools.product(widths, repeat=span))
