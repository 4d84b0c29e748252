"""bench fuzz: the network generator covers what it claims, and a short run through the RTL agrees with golden."""

import json
from pathlib import Path

import numpy as np

import build
from model.export.golden_conv import conv_forward
from model.export.golden_net import ConvStage, GlobalSumPool, IntConvNetwork, ResidualStage
from model.export.layout_v3 import pack as pack_v3
from sim.bench import fuzz, fuzz_vertical
from sim.bench.fuzz import CONFIGS, fits, floors, random_network
from tests.sim.bench.fake_runs import FAKE_READS, fake_words_read, faulty_run


def test_networks_cover_kernels_strides_pools_blocks_widths_and_sparsity():
    rng = np.random.default_rng(0)
    nets = [random_network(rng) for _ in range(60)]
    convs = [n for n in nets if isinstance(n, IntConvNetwork)]
    assert 0 < len(convs) < len(nets)  # MLPs too
    layers = [layer for n in convs for layer in n.layers if hasattr(layer, "kernel")]
    assert {layer.kernel for layer in layers} >= {1, 3, 5} and {layer.stride for layer in layers} == {1, 2}
    assert any(isinstance(s, ResidualStage) for n in convs for s in n.stages)
    assert any(isinstance(s, ConvStage) and s.pool for n in convs for s in n.stages)
    assert any(isinstance(s, GlobalSumPool) for n in convs for s in n.stages)
    pruned = [float((np.asarray(layer.widths) == 0).mean()) for n in nets for layer in n.layers]
    assert min(pruned) < 0.1 and max(pruned) > 0.9
    assert {int(w) for n in nets for layer in n.layers for w in np.unique(layer.widths)} == {0, 4, 8, 16, 32}
    assert {bool(layer.signed) for n in nets for layer in n.layers} == {False, True}
    for net in nets:
        pack_v3(net)  # every network packs


def test_calibrated_requant_spreads_the_codes():
    rng = np.random.default_rng(1)
    spread = []
    for _ in range(20):
        net = random_network(rng)
        if not isinstance(net, IntConvNetwork):
            continue
        stem = net.stages[0].conv
        x = rng.integers(0, 1 << net.input_bits, size=(8, *net.image_shape))
        y = conv_forward(stem, x)
        spread.append(len(np.unique(y)) > 1)
    assert np.mean(spread) > 0.6  # most stems give more than one code value


def test_short_fuzz_run_matches_golden_and_check_fails_its_layer_floor(tmp_path, capsys, monkeypatch):
    """`bench fuzz --check` end to end on 8 layers, in chunks of two networks so that both version 3 builds run
    (and its vertical part on a network of each version 4 build): the RTL agrees with golden, and the run exits 1
    because the 10,000-layer floor fails (the floors it prints and writes say which)."""
    monkeypatch.setattr(fuzz, "CHUNK", 2)
    code = build.main(["bench", "fuzz", "--layers", "8", "--simulator", "icarus", "--quiet", "--check",
                       "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 1 and "layers >= 10000" in printed
    result = json.loads((tmp_path / "fuzz.json").read_text())
    assert result["layers"] >= 8 and result["networks"] >= 2
    assert result["mismatches"] == 0 and result["deadlocks"] == 0 and result["failed_runs"] == []
    assert result["read_mismatches"] == 0 and result["floors"]["read_mismatches == 0"]["holds"]
    assert result["floors"]["mismatches == 0"]["holds"] and not result["floors"]["layers >= 10000"]["holds"]
    vertical = result["vertical"]
    assert vertical["networks"] >= 1 and vertical["cases"] >= 1 and vertical["images"] >= 1
    assert vertical["mismatches"] == 0 and vertical["deadlocks"] == 0 and vertical["failed_runs"] == []
    assert vertical["read_mismatches"] == 0
    assert [b["config"]["engines"] for b in vertical["builds"]] == [3, 1] and "vertical (v4)" in printed
    assert all(b["config"]["vertical"] and b["networks"] >= 1 and b["mismatches"] == 0 for b in vertical["builds"])
    assert result["floors"] == {**floors(result), **fuzz_vertical.floors(vertical)}
    assert result["floors"]["vertical mismatches == 0"]["holds"]
    assert [b["config"]["engines"] for b in result["builds"]] == [c.engines for c in CONFIGS] == [2, 1]
    assert all(b["layers"] >= 1 and b["images"] >= 1 and b["mismatches"] == 0 for b in result["builds"])
    assert sum(b["layers"] for b in result["builds"]) == result["layers"] and "1 x 7 lanes" in printed
    assert "provenance" in result


def test_every_network_fits_the_configuration():
    rng = np.random.default_rng(2)
    for config in CONFIGS:
        assert all(fits(pack_v3(random_network(rng, config))[0], config) for _ in range(60))


def test_the_one_engine_build_gets_maps_of_more_than_one_tile_and_tiles_of_more_than_one_row():
    """The second build's tiles are 14 pixels: its networks must still have conv layers over several tiles, and
    tiles of several output rows, or it would cover less of the engine than the first build; and they are drawn
    for it, with output rows wider than the first build's 10-pixel tiles hold."""
    rng = np.random.default_rng(3)
    t = CONFIGS[1].pixels
    outs = [conv_forward(s.conv, np.zeros((1, *n.image_shape), np.int64)).shape[2:]
            for n in (random_network(rng, CONFIGS[1]) for _ in range(60)) if isinstance(n, IntConvNetwork)
            for s in n.stages[:1]]
    assert t == 14 and any(h * w > t for h, w in outs) and any(w <= t // 2 for _, w in outs)
    assert any(w > CONFIGS[0].pixels for _, w in outs)


def test_the_runs_mismatches_lost_images_and_deadlocks_reach_the_result_and_fail_the_floors(tmp_path, monkeypatch):
    """The bookkeeping of run_fuzz with the simulator replaced (the RTL runs are the test above and the bench's
    own): run 0 returns one wrong score, run 1 one image short and timed out, run 2 an error status with the
    right scores, run 3 one image's reads one word over the model's; each is counted and each fails its floor.
    The runs take the two builds in turn, and each build's record holds its own runs' counts. Chunks of 10
    networks, not the bench's 150: the same bookkeeping, a fifteenth of the drawing (40-67 s before)."""
    calls, built = [], []

    def fake(vpath, cases, **kwargs):
        calls.append(len(calls))
        built.append(Path(vpath).name)
        return faulty_run(cases, calls[-1])

    monkeypatch.setattr(fuzz, "CHUNK", 10)
    monkeypatch.setattr(fuzz, "run_array_cases", fake)
    monkeypatch.setattr(fuzz, "words_read", fake_words_read)
    monkeypatch.setattr(fuzz, "array_verilog", lambda config: f"module mpq_array; // {config.engines}\nendmodule\n")
    result = fuzz.run_fuzz(tmp_path, layers=5 * fuzz.CHUNK * 3, progress=False)
    assert len(calls) >= 5 and result["runs"] == len(calls)
    assert built[:4] == ["mpq_array_2x5.v", "mpq_array_1x7.v"] * 2
    assert result["mismatches"] == 1 and result["not_run"] == 1 and result["deadlocks"] == 1
    assert result["read_mismatches"] == 1
    assert [r["run"] for r in result["failed_runs"]] == [0, 1, 2, 3] and result["failed_runs"][2]["statuses"] == [4]
    assert [r["build"] for r in result["failed_runs"]] == [0, 1, 0, 1]
    assert [len(r["read_mismatched_images"]) for r in result["failed_runs"]] == [0, 0, 0, 1]  # an entry a run
    (image,) = result["failed_runs"][3]["read_mismatched_images"]
    assert image["rtl"] == {"weight_reads": FAKE_READS[0], "reads": FAKE_READS[1] + 1}
    assert image["model"] == {"weight_reads": FAKE_READS[0], "reads": FAKE_READS[1]}
    one, two = result["builds"]
    assert (one["mismatches"], one["deadlocks"], two["mismatches"], two["deadlocks"], two["not_run"]) == (1, 0, 0, 1, 1)
    assert (one["read_mismatches"], two["read_mismatches"]) == (0, 1)
    assert one["runs"] + two["runs"] == result["runs"] and abs(one["runs"] - two["runs"]) <= 1
    for key in ("layers", "networks", "images", "sim_cycles"):
        assert one[key] > 0 and two[key] > 0 and one[key] + two[key] == result[key]
    held = {k: v["holds"] for k, v in floors(result).items()}
    assert held == {"layers >= 10000": False, "layers on each build >= 4000": False, "mismatches == 0": False,
                    "read_mismatches == 0": False, "deadlocks == 0": False, "not_run == 0": False,
                    "failed_runs == 0": False}
    builds = [{**b, "layers": 5_000} for b in result["builds"]]
    ok = {**result, "layers": 10_000, "mismatches": 0, "read_mismatches": 0, "deadlocks": 0, "not_run": 0,
          "failed_runs": [], "builds": builds}
    assert all(v["holds"] for v in floors(ok).values())
    lopsided = {**ok, "builds": [builds[0], {**builds[1], "layers": 3_999}]}
    assert not floors(lopsided)["layers on each build >= 4000"]["holds"]
