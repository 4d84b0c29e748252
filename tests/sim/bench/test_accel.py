"""bench accel: the weight/activation variants of one network, the floors, the command's files and errors.

The measurement itself (six ResNet-20 images through a 152-lane RTL build and a Yosys synthesis of it) takes
about 40 minutes: the command test replaces :func:`sim.bench.accel.run_accel` with hand-written results, as
tests/sim/bench/test_bench_command.py does for the other benches; the variants run on a real ResNet-20.
"""

import dataclasses
import json
import multiprocessing
import re
import types
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import build
from hw.array.top import ArrayConfig
from hw.platform.verilog import array_verilog, write_text_atomically
from model.errors import UserError
from model.export.convert import to_golden
from model.export.layout_v3 import pack as pack_v3
from model.quant.layers import QUANT_LAYER_TYPES
from model.quant.nets import ResNet20
from model.quant.pact import PACT
from model.revision import code_revision
from model.runs.rundir import make_run_config, open_run
from model.training.loop import torch_threads
from sim import bounds
from sim.bench import accel
from sim.reads import words_read
from tests.hw.netgen import random_network


@pytest.fixture(scope="module")
def ticket():
    torch.manual_seed(0)
    m = ResNet20(image_shape=(1, 28, 28), n_classes=10, act_bits=4).eval()
    rng = np.random.default_rng(0)
    for layer in m.modules():
        if isinstance(layer, QUANT_LAYER_TYPES):  # a ticket-like mask: pruned and mixed widths
            widths = rng.choice([0, 4, 8, 16, 32], size=tuple(layer.bit_width.shape), p=[0.7, 0.1, 0.1, 0.05, 0.05])
            layer.set_bit_width(torch.as_tensor(widths))
    return m


def _widths(model):
    return torch.cat([layer.bit_width.flatten() for layer in model.modules() if isinstance(layer, QUANT_LAYER_TYPES)])


@pytest.mark.parametrize(("weights", "act", "bits"), [("dense32", 4, 32.0), ("qnn4", 8, 4.0)])
def test_variants_set_every_weight_and_activation_width(ticket, weights, act, bits):
    before = _widths(ticket).clone()
    v = accel.variant(ticket, weights, act)
    assert torch.equal(_widths(ticket), before)  # the ticket is not touched
    assert set(_widths(v).unique().tolist()) == {int(bits)}
    assert {a.bits for a in v.modules() if isinstance(a, PACT)} == {act}
    assert v.input_quant.bits == ticket.input_quant.bits  # the input keeps its 8 bits
    net = to_golden(v)
    assert net.avg_weight_bits == bits
    x = np.random.default_rng(1).integers(0, 256, size=(2, 1, 28, 28))
    assert net.forward(x).shape == (2, 10)


def test_the_ticket_variant_keeps_the_masks_and_changes_only_the_activations(ticket):
    same = accel.variant(ticket, "ticket", 4)
    assert torch.equal(_widths(same), _widths(ticket))
    a8 = to_golden(accel.variant(ticket, "ticket", 8))
    assert [np.array_equal(x.widths, y.widths) for x, y in zip(a8.layers, to_golden(same).layers)] == [True] * 20
    with pytest.raises(ValueError, match="allowed"):
        accel.variant(ticket, "dense16", 4)


def _row(weights, act, cycles, **kw):
    row = {"network": "resnet20", "weights": weights, "act_bits": act, "avg_weight_bits": 32.0 if weights == "dense32"
           else 4.0 if weights == "qnn4" else 3.5, "cycles_per_image": cycles,
           "images_per_second_at_100mhz": 1e8 / cycles, "rtl_images": 10, "rtl_mismatches": 0, "read_mismatches": 0,
           "dsp": 160,
           "lut": 40000, "ff": 50000, "bram36": 60.0, "fits_xc7z020": True, "fmax_mhz_estimate": 105.0,
           "image_bytes": 1000, "speedup_vs_dense32": None, "dense_macs_per_dsp_cycle": 1.0,
           "sim_cycles_per_second": 1e5, "golden_accuracy": 0.8, "nonzero_macs": 1, "macs_dense": 2,
           "width_counts": {}, "statuses": [0], "timed_out": False, "lane_bound_cycles": 20_000,
           "lane_bound_fraction": 20_000 / cycles, "tile_bound_cycles": 25_000, "tile_bound_fraction": 25_000 / cycles,
           "layer_cycles": [cycles / 4 + 100.0 * k for k in range(4)], "layer_tile_bounds": [cycles / 4] * 4}
    mac_bits = {"dense32": 32.0, "qnn4": 4.0}.get(weights, 4.9)
    row.update(mac_weighted_weight_bits=mac_bits, bit_proportional_speedup_bound=32 / mac_bits)
    chip = {"dense32": (280_000, 140_000), "qnn4": (35_000, 18_000)}.get(weights, (44_000, 26_000))
    row["xc7z020_dsp_bound_cycles"] = dict(zip(("lanes", "planner"), chip))
    row.update(kw)
    return row


def _result(ticket_cycles=30_000.0, **ticket_kw):
    rows = []
    for act in (4, 8):
        rows += [_row("ticket", act, ticket_cycles if act == 4 else 50_000.0,
                      **({"rtl_images": 100, **ticket_kw} if act == 4 else {})),
                 _row("dense32", act, 400_000.0), _row("qnn4", act, 60_000.0)]
    for r in rows:
        base = next(b for b in rows if b["weights"] == "dense32" and b["act_bits"] == r["act_bits"])
        r["speedup_vs_dense32"] = base["cycles_per_image"] / r["cycles_per_image"]
    curve = [_row("imq", act, 400_000.0 / k, imq_iteration=k, rtl_images=1, is_ticket=k == 2 and ranking == "global",
                  fakequant_accuracy=0.8, val_accuracy=0.8, speedup_vs_dense32=float(k), ranking=ranking)
             for ranking in ("global", "layer") for act in (4, 8) for k in (1, 2)]
    stalled = {"weights": "ticket", "act_bits": 4, "images_asked": 10, "rtl_images": 10, "rtl_mismatches": 0,
               "read_mismatches": 0, "statuses": [0], "timed_out": False}
    return {"rows": rows, "curve": curve, "backpressure": stalled, "config": {"engines": 8, "lanes": 19}, "synthesis": {
        "dsp": 160, "lut": 40000, "ff": 50000, "bram36": 60.0, "lut_fraction": 40000 / 53200,
        "timing": {"fmax_mhz": 105.0}, "engine": {"lut": 6000}, "shell": {"lut": 16100}, "parts_total": {"lut": 40100}}}


#: ResNet-20 on 28 x 28: (C_in, C_out, output side) of its 19 convs, stem first.
RESNET20_CONVS = ([(1, 16, 28)] + [(16, 16, 28)] * 6 + [(16, 32, 14)] + [(32, 32, 14)] * 5 + [(32, 64, 7)]
                  + [(64, 64, 7)] * 5)


@pytest.mark.parametrize(("weights", "lanes"), [("dense32", 42), ("qnn4", 42), ("qnn4", 4000)])
def test_the_lane_bound_counts_every_weight_at_its_lane_cycles(ticket, weights, lanes):
    """Closed forms for the two uniform variants at PACT-4: a 32-bit weight 4 lane cycles for two pixels, a
    4-bit one 1 in a pair pass (2 in the stem, whose input codes are 8 bits, and in the FC after the global
    pool); with thousands of lanes the emitters (one output code a cycle per engine) bound each conv."""
    engines = 4
    net = to_golden(accel.variant(ticket, weights, 4))
    total = 0.0
    for i, (c_in, c_out, side) in enumerate(RESNET20_CONVS):
        per_entry = 4 if weights == "dense32" else 2 if i == 0 else 1
        lanes_work = c_out * 9 * c_in * per_entry * side * side / 2 / (engines * lanes)
        total += max(lanes_work, c_out * side * side / engines)
    total += 10 * 64 * (4 if weights == "dense32" else 2) / engines
    assert bounds.lane_bound_cycles(net, engines, lanes) == int(np.ceil(total))


@pytest.mark.parametrize(("weights", "lanes"), [("dense32", 42), ("qnn4", 42), ("qnn4", 4000)])
def test_the_tile_bound_counts_every_tile_row_by_row(ticket, weights, lanes):
    """Closed forms for the uniform variants at PACT-4: every row of a conv costs the same lane cycles, so a
    tile of ``p`` pixels costs ``C_out max(lane cycles, p) / engines``; 84-pixel tiles hold 3 rows of 28, 6 of
    14 and 7 of 7 (one partly filled tile each on 28 and 14: 784 = 9 x 84 + 28, 196 = 2 x 84 + 28)."""
    engines, t = 4, 2 * lanes
    net = to_golden(accel.variant(ticket, weights, 4))
    layers = []
    for i, (c_in, c_out, side) in enumerate(RESNET20_CONVS):
        row = c_in * 9 * (4 if weights == "dense32" else 2 if i == 0 else 1)
        per_tile = max(t // side, 1)
        layers.append(sum(c_out * max(row, min(per_tile, side - y) * side) for y in range(0, side, per_tile)) / engines)
    layers.append(10 * 64 * (4 if weights == "dense32" else 2) / engines)
    assert bounds.layer_tile_bounds(net, engines, lanes) == pytest.approx(layers, rel=1e-12)  # layer by layer
    assert bounds.tile_bound_cycles(net, engines, lanes) == int(np.ceil(sum(layers)))
    assert bounds.tile_bound_cycles(net, engines, lanes) >= bounds.lane_bound_cycles(net, engines, lanes)


def test_mac_weighted_bits_count_each_weight_once_per_output_pixel(ticket):
    """Uniform variants: every MAC sees the one width. The ticket-like mix: each conv layer's widths summed and
    weighted by its output map's pixels (``RESNET20_CONVS``), the classifier's once; not the plain average of
    the stored weights, which weights a layer3 weight (49 output pixels) like a layer1 one (784)."""
    assert bounds.mac_weighted_bits(to_golden(accel.variant(ticket, "dense32", 4))) == 32.0
    assert bounds.mac_weighted_bits(to_golden(accel.variant(ticket, "qnn4", 8))) == 4.0
    net = to_golden(accel.variant(ticket, "ticket", 4))
    convs = [layer for layer in ticket.modules() if isinstance(layer, QUANT_LAYER_TYPES)]
    assert len(convs) == len(RESNET20_CONVS) + 1
    bits = macs = 0
    for layer, (c_in, c_out, side) in zip(convs, RESNET20_CONVS):
        assert tuple(layer.bit_width.shape) == (c_out, c_in, 3, 3)
        bits += int(layer.bit_width.sum()) * side * side
        macs += layer.bit_width.numel() * side * side
    bits += int(convs[-1].bit_width.sum())
    macs += convs[-1].bit_width.numel()
    assert bounds.mac_weighted_bits(net) == pytest.approx(bits / macs, rel=1e-12)
    assert bounds.mac_weighted_bits(net) != pytest.approx(net.avg_weight_bits, rel=1e-3)


def test_a_run_other_code_trained_is_reused_with_both_revisions_named(tmp_path, capsys):
    """The revision a reused run's run.json records goes into accel.json (``training_revision``), and a note names
    it beside the code's now when the sources differ (the audit of 2026-12-06: a reused ticket was unlabelled)."""
    run_dir = tmp_path / "run"
    open_run(run_dir, make_run_config("imq", data="digits", hidden=(8,)))
    assert accel.reused_revision(run_dir, "the ticket", True, "run X") == accel.training_revision(run_dir)
    assert accel.training_revision(run_dir)["revision"] == code_revision()["revision"]
    assert "note:" not in capsys.readouterr().out  # (the same code: no note)
    stored = json.loads((run_dir / "run.json").read_text())
    stored["provenance"].update(revision="git:0123abcd", source_sha256="0" * 64)
    (run_dir / "run.json").write_text(json.dumps(stored))
    assert accel.reused_revision(run_dir, "the ticket", True, "run X")["revision"] == "git:0123abcd"
    out = capsys.readouterr().out
    assert (f"note: the ticket ({run_dir}) was trained at git:0123abcd, the code now is {code_revision()['revision']};"
            " its accuracies are that run's (run X to train it with this code)") in out, out
    assert accel.training_revision(tmp_path) is None  # (no run.json)


def test_the_layer_ranked_run_is_read_from_its_file_or_trained(tmp_path, monkeypatch):
    """A file naming a finished run of the current config is used as it is; a bad file is named; without one, or
    with one of another config (a stale run), the run is trained with ``bench conv``'s ResNet-20 config ranked
    within each layer, restarted, and the file written with that config."""
    (tmp_path / "conv_runs" / accel.LAYER_RUN / "iterations").mkdir(parents=True)
    history = [{"iteration": 0, "avg_bits": 32.0, "accuracy": 0.8, "val_accuracy": 0.7}]
    config = dataclasses.replace(accel.imq_configs()["resnet20"], scope="layer")
    wanted = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    marker = tmp_path / accel.LAYER_RUN_JSON
    marker.write_text(json.dumps({"run": str(tmp_path / "conv_runs" / accel.LAYER_RUN), "history": history,
                                  "config": wanted}))
    monkeypatch.setattr(accel, "run", lambda *a, **k: pytest.fail("trained although the file names a run"))
    got = accel.layer_run_source(tmp_path, progress=False)
    assert got["history"] == history and not got["trained_now"]
    marker.write_text("{")
    with pytest.raises(UserError, match=accel.LAYER_RUN_JSON):
        accel.layer_run_source(tmp_path, progress=False)
    marker.write_text(json.dumps({"run": "x", "history": []}))
    with pytest.raises(UserError, match="'config'"):
        accel.layer_run_source(tmp_path, progress=False)
    seen = {}

    def fake_run(config, run_dir, progress, restart):
        seen.update(config=config, run_dir=run_dir, restart=restart, threads=torch.get_num_threads())
        record = types.SimpleNamespace(iteration=0, avg_bits=32.0, accuracy=0.5, val_accuracy=0.4)
        return types.SimpleNamespace(history=[record])

    monkeypatch.setattr(accel, "run", fake_run)
    stale = {**wanted, "epochs": wanted["epochs"] + 1}  # bench conv's schedule changed since the run
    marker.write_text(json.dumps({"run": str(tmp_path / "conv_runs" / accel.LAYER_RUN), "history": history,
                                  "config": stale}))
    got = accel.layer_run_source(tmp_path, progress=False)
    assert got["trained_now"] and json.loads(marker.read_text())["config"] == wanted
    marker.unlink()
    seen.clear()
    with torch_threads(1):  # a caller's count other than IMQ_THREADS, so that the pin is seen
        got = accel.layer_run_source(tmp_path, progress=False)
    assert seen["config"].scope == "layer" and seen["restart"] and seen["threads"] == accel.IMQ_THREADS
    assert seen["config"] == dataclasses.replace(accel.imq_configs()["resnet20"], scope="layer")
    assert seen["run_dir"] == tmp_path / "conv_runs" / accel.LAYER_RUN and got["trained_now"]
    assert json.loads(marker.read_text())["history"] == [{"iteration": 0, "avg_bits": 32.0, "accuracy": 0.5,
                                                          "val_accuracy": 0.4}]


def test_floors_hold_and_fail_on_the_ticket_at_pact4():
    f = accel.floors(_result())
    assert all(e["holds"] for e in f.values()), f
    f = accel.floors(_result(50_000.0))  # too slow, and then below 8.63x over dense32 (400,000 / 50,000 = 8)
    assert not f["ticket_a4_cycles_per_image <= 40000"]["holds"]
    assert not f["ticket_a4_speedup_vs_dense32 >= 8.63"]["holds"]
    assert not accel.floors(_result(rtl_mismatches=1))["ticket_a4_rtl_mismatches == 0"]["holds"]
    assert not accel.floors(_result(rtl_images=99))["ticket_a4_rtl_images >= 100"]["holds"]
    small = _result()
    for r in small["rows"]:
        r["dsp"] = 140
    assert not accel.floors(small)["dsp >= 150"]["holds"]


def test_the_imq_curve_must_run_and_match_golden():
    result = _result()
    result["curve"][1]["rtl_mismatches"] = 1
    assert not accel.floors(result)["imq_curve_rtl_mismatches == 0"]["holds"]
    result = _result()  # a point that hung: no image came back, one mismatch
    result["curve"][1].update(rtl_images=0, rtl_mismatches=1, timed_out=True)
    assert not accel.floors(result)["imq_curve_rtl_mismatches == 0"]["holds"]
    for r in result["curve"]:  # no point ran (the budget): unmeasured, so the floor fails
        r.update(rtl_images=0, rtl_mismatches=0, timed_out=False)
    entry = accel.floors(result)["imq_curve_rtl_mismatches == 0"]
    assert entry["value"] is None and not entry["holds"]


def test_whole_images_under_back_pressure_must_run_and_match_golden():
    result = _result()
    result["backpressure"]["rtl_mismatches"] = 1
    assert not accel.floors(result)["ticket_a4_backpressure_mismatches == 0"]["holds"]
    result["backpressure"].update(rtl_images=9, rtl_mismatches=0)
    assert not accel.floors(result)["ticket_a4_backpressure_images >= 10"]["holds"]
    result["backpressure"] = None  # not run: both unmeasured
    f = accel.floors(result)
    assert not f["ticket_a4_backpressure_images >= 10"]["holds"]
    assert not f["ticket_a4_backpressure_mismatches == 0"]["holds"]


def test_every_image_must_read_the_words_its_network_needs():
    """One floor over every row, curve point and the back-pressure run: an image whose RTL read counters differ
    from sim/reads.py's fails it, wherever it ran; a record without the counts (written before they were
    checked) fails it too."""
    assert accel.floors(_result())["read_mismatches == 0"]["holds"]
    for where in ("rows", "curve", "backpressure"):
        result = _result()
        record = result[where] if where == "backpressure" else result[where][1]
        record["read_mismatches"] = 1
        entry = accel.floors(result)["read_mismatches == 0"]
        assert entry["value"] == 1 and not entry["holds"], where
        del record["read_mismatches"]
        assert not accel.floors(result)["read_mismatches == 0"]["holds"], where


def test_the_curve_networks_are_every_iteration_at_its_own_widths(ticket, monkeypatch):
    """One network per iteration of the run and activation width, each with that iteration's masks."""
    dense = accel.variant(ticket, "dense32", 4)  # stands for iteration 0 (every weight at 32 bits)
    models = {0: dense, 3: ticket}
    monkeypatch.setattr(accel, "load_iteration", lambda run, k: models[k])
    source = {"run": "run", "history": [{"iteration": 0}, {"iteration": 3}]}
    nets = accel.curve_networks(source)
    assert set(nets) == {("imq0", 4), ("imq0", 8), ("imq3", 4), ("imq3", 8)}
    assert nets[("imq0", 8)].avg_weight_bits == 32.0
    assert nets[("imq3", 4)].avg_weight_bits == to_golden(accel.variant(ticket, "ticket", 4)).avg_weight_bits < 32
    assert {a.bits for a in ticket.modules() if isinstance(a, PACT)} == {4}  # the models are not touched


def bench(capsys, *args):
    code = build.main(["bench", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


#: MACs a DSP48E1 does a cycle by (weight class, activation bits): the array's pass lanes (two pixels a lane; a pair
#: pass for 4/8-bit weights at 4-bit activations, single passes otherwise, 16-bit chunks) and the packing planner's
#: densest layouts (4x4 two weights by two codes; 16x4 and 32x4 two codes on each 16-bit chunk).
LANE_RATES = {(4, 4): 2, (8, 4): 2, (16, 4): 1, (32, 4): 0.5, (4, 8): 1, (8, 8): 1, (16, 8): 1, (32, 8): 0.5}
PLANNER_RATES = {(4, 4): 4, (8, 4): 2, (16, 4): 2, (32, 4): 1, (4, 8): 2, (8, 8): 2, (16, 8): 1, (32, 8): 0.5}


@pytest.mark.parametrize("weights", ["dense32", "qnn4", "ticket"])
@pytest.mark.parametrize(("packing", "rates"), [("lanes", LANE_RATES), ("planner", PLANNER_RATES)])
def test_the_chip_bound_counts_every_non_zero_mac_at_its_class_rate_on_220_dsps(ticket, weights, packing, rates):
    """Every non-zero MAC of ResNet-20 at PACT-4 (the stem's input codes and the pooled FC's at 8 bits) at its
    class's rate, over the XC7Z020's 220 DSP48E1 (or another count); pruned weights cost nothing."""
    net = to_golden(accel.variant(ticket, weights, 4))
    layers = [layer for layer in ticket.modules() if isinstance(layer, QUANT_LAYER_TYPES)]
    sides = [side for _, _, side in RESNET20_CONVS] + [1]
    cycles = 0.0
    for i, (layer, side) in enumerate(zip(layers, sides)):
        widths = layer.bit_width.numpy()
        if weights != "ticket":
            widths = np.full(widths.shape, 32 if weights == "dense32" else 4)
        act = 8 if i in (0, len(layers) - 1) else 4
        cycles += sum(int((widths == m).sum()) * side * side / rates[m, act] for m in (4, 8, 16, 32))
    assert bounds.dsp_bound_cycles(net, packing) == int(np.ceil(cycles / 220))
    assert bounds.dsp_bound_cycles(net, packing, dsps=7) == int(np.ceil(cycles / 7))
    with pytest.raises(ValueError, match="packing must be one of"):
        bounds.dsp_bound_cycles(net, "grid")
    with pytest.raises(ValueError, match="dsps must be a positive integer"):
        bounds.dsp_bound_cycles(net, packing, dsps=0)


def test_command_writes_rows_plot_and_floors(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_run(out_dir, bench_dir, **kw):
        seen.update(kw)
        return _result(50_000.0)

    monkeypatch.setattr(accel, "run_accel", fake_run)
    code, out, _ = bench(capsys, "accel", "--quiet", "--out", tmp_path, "--engines", 4, "--lanes", 10,
                         "--images", 30)
    assert code == 0 and "FAILS" in out and "cycles/img" in out
    assert seen["engines"] == 4 and seen["lanes"] == 10 and seen["ticket_images"] == 30 and seen["other_images"] == 3
    written = json.loads((tmp_path / "accel.json").read_text())
    assert written["rows"][0]["cycles_per_image"] == 50_000.0 and "provenance" in written
    assert not written["floors"]["ticket_a4_cycles_per_image <= 40000"]["holds"]
    assert (tmp_path / "accel.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "accel_layers.png").read_bytes()[:4] == b"\x89PNG"
    # each row's layer_cycles exceed its layer_tile_bounds by 0, 100, 200 and 300 (_row): 600 in all, 0 to 300
    assert "cycles over the tiles' bound" in out and out.count("     4      600       0     300") == 6
    assert "Fig. 4's curve" in out and written["curve"][0]["imq_iteration"] == 1
    assert "under random back-pressure" in out and written["backpressure"]["rtl_images"] == 10
    assert "40,000 LUT (75 % of the XC7Z020)" in out  # the whole array's synthesis; its parts beside it
    # the chip's DSP48E1 bound of the ticket at PACT-4, and dense32's at the planner's layouts (_row): 140,000 / 26,000
    assert ("220 DSP48E1 of the XC7Z020, each busy every cycle, would take at least 44,000 cycles for its non-zero "
            "MACs at the array's cost per weight class and 26,000 at the packing planner's densest layouts, where "
            "dense32 takes 140,000: with those layouts an array whose time followed its DSP work would run the row "
            "5.38x faster than dense32") in out
    assert "by parts: one engine 6,000 LUT, the shell 16,100 LUT; the shell and the engines 40,100 LUT" in out
    code, _, _ = bench(capsys, "accel", "--quiet", "--check", "--out", tmp_path)
    assert code == 1


@pytest.mark.parametrize(("args", "message"), [
    (["accel", "--lanes", "0"], "--lanes is 0; allowed 1 to 64"),
    (["accel", "--images", "0"], "--images is 0"),
    (["accel", "--engines", "6", "--lanes", "40"], "bench accel: --engines 6 --lanes 40 is 240 DSP48E1 lanes, past"),
    (["fuzz", "--engines", "4"], "--engines applies to `bench accel` only"),
    (["accel", "--layers", "10"], "--layers applies to `bench fuzz` only, not `bench accel`"),
    (["fuzz", "--layers", "0"], "--layers is 0; allowed 1 to 1,000,000"),
    (["fuzz", "--layers", "1000000000000"], "--layers is 1000000000000; allowed 1 to 1,000,000"),
    (["dsp", "--simulator", "icarus"], "--simulator applies to `bench fuzz` and `bench accel` only"),
])
def test_bad_flags_are_named(tmp_path, capsys, args, message):
    code, _, err = bench(capsys, *args, "--out", tmp_path)
    assert code == 2 and message in err
    assert not (tmp_path / "accel.json").exists()


def test_a_conv_json_without_the_ticket_fields_is_named(tmp_path):
    (tmp_path / "conv.json").write_text(json.dumps([{"arch": "resnet20", "method": "imq", "run": "x"}]))
    with pytest.raises(UserError, match="conv.json: the resnet20/imq row has no field 'ticket_iteration'"):
        accel.ticket_source(tmp_path, progress=False)
    (tmp_path / "conv.json").write_text("{")
    with pytest.raises(UserError, match="conv.json: not JSON"):
        accel.ticket_source(tmp_path, progress=False)
    (tmp_path / "conv.json").write_text(json.dumps({"rows": 1}))  # (was ignored: the ticket trained again)
    with pytest.raises(UserError, match="conv.json: a JSON dict, not bench conv's list of rows"):
        accel.ticket_source(tmp_path, progress=False)
    row = {"arch": "resnet20", "method": "imq", "run": str(tmp_path), "image": str(tmp_path),
           "history": [{"iteration": 0}], "ticket_iteration": 6}
    for key, value in (("run", 5), ("image", None), ("ticket_iteration", "x"), ("ticket_iteration", -1),
                       ("history", "h"), ("history", [{"iteration": "0"}])):
        (tmp_path / "conv.json").write_text(json.dumps([{**row, key: value}]))
        with pytest.raises(UserError, match=re.escape(f"the resnet20/imq row's field '{key}' is {value!r}; allowed")):
            accel.ticket_source(tmp_path, progress=False)


def test_the_budget_plan_gives_every_row_an_image_then_the_ticket_then_the_others():
    counts = {(w, a): 100 if (w, a) == ("ticket", 4) else 10 for w in accel.WEIGHTS for a in accel.ACT_BITS}
    planned = dict.fromkeys(counts, 0)
    done = dict.fromkeys(counts, 0)
    wall = dict.fromkeys(counts, 0.0)
    seen = []
    while (step := accel._plan(counts, planned, done, wall, left_s=1e9)) is not None:
        key, n = step
        seen.append(step)
        planned[key] += n
        done[key] += n
        wall[key] += 2.0 * n
    assert [k for k, _ in seen[:6]] == list(counts) and all(n == 1 for _, n in seen[:6])
    assert seen[6] == (("ticket", 4), 25)  # a quarter of the row a chunk
    assert done == counts
    # With the run's overhead and 30 s more left at 2 s an image, the ticket's next chunk is 15 images;
    # with less than the overhead left nothing runs.
    planned = done = {k: 1 for k in counts}
    wall = {k: 2.0 for k in counts}
    assert accel._plan(counts, planned, done, wall, left_s=accel.RUN_OVERHEAD_S + 30.0) == (("ticket", 4), 15)
    assert accel._plan(counts, planned, done, wall, left_s=accel.RUN_OVERHEAD_S + 1.0) is None


def test_the_curve_points_come_after_every_row_and_only_with_time_left():
    counts = {("ticket", 4): 4, ("dense32", 4): 2, ("imq0", 4): 1, ("imq1", 4): 1}
    planned = dict.fromkeys(counts, 0)
    done = dict.fromkeys(counts, 0)
    wall = dict.fromkeys(counts, 0.0)
    seen = []
    while (step := accel._plan(counts, planned, done, wall, left_s=1e9)) is not None:
        seen.append(step)
        planned[step[0]] += step[1]
        done[step[0]] += step[1]
        wall[step[0]] += 2.0 * step[1]
    assert [k for k, _ in seen][-2:] == [("imq0", 4), ("imq1", 4)] and done == counts
    # A point starts only if the slowest image measured (dense32's 50 s here) ends in time.
    planned = {**counts, ("imq0", 4): 0, ("imq1", 4): 0}
    done = dict(planned)
    wall = {("ticket", 4): 8.0, ("dense32", 4): 100.0, ("imq0", 4): 0.0, ("imq1", 4): 0.0}
    assert accel._plan(counts, planned, done, wall, left_s=accel.RUN_OVERHEAD_S + 50) == (("imq0", 4), 1)
    assert accel._plan(counts, planned, done, wall, left_s=accel.RUN_OVERHEAD_S + 49) is None


def fake_words_read(net, config, **kwargs) -> tuple[int, int]:
    """A stand-in for :func:`sim.reads.words_read` in the fake runs (the model is checked against the RTL by the
    suite's array tests and below): ``(words, 2 words)`` of the network's image, what :func:`_reads` reports."""
    n = len(accel.pack(net))
    return n, 2 * n


def _reads(words, n: int, off: int = 0) -> dict:
    """The read counters of ``n`` images of a fake chunk of ``words``: :func:`fake_words_read`'s, ``reads`` plus
    ``off``."""
    return {"image_weight_reads": [len(words)] * n, "image_reads": [2 * len(words) + off] * n}


def _fake_accel_run(ticket, tmp_path, monkeypatch, chunk):
    """``run_accel`` on 1 x 14 lanes with the training, the images, the Verilog, the simulator and the read model
    replaced: ``chunk(words, codes, stall, seed)`` answers each chunk (the RTL runs are bench accel's own).
    Returns the result and the test images asked for."""
    from concurrent.futures import ThreadPoolExecutor

    models = {0: accel.variant(ticket, "dense32", 4), 1: ticket}
    source = {"run": "run", "iteration": 1, "image": "img", "trained_now": False, "training_revision": None,
              "history": [{"iteration": 0, "avg_bits": 32.0, "accuracy": 0.8, "val_accuracy": 0.79},
                          {"iteration": 1, "avg_bits": 3.0, "accuracy": 0.7, "val_accuracy": 0.69}]}
    monkeypatch.setattr(accel, "ticket_source", lambda bench_dir, progress: source)
    layer_models = {0: models[0], 2: accel.variant(ticket, "qnn4", 4)}  # the layer-ranked run's iterations
    layer = {"run": "layer_run", "trained_now": False, "training_revision": None,
             "history": [{"iteration": 0, "avg_bits": 32.0, "accuracy": 0.8, "val_accuracy": 0.79},
                         {"iteration": 2, "avg_bits": 4.0, "accuracy": 0.6, "val_accuracy": 0.59}]}
    monkeypatch.setattr(accel, "load_iteration", lambda run, k: (layer_models if run == "layer_run" else models)[k])
    monkeypatch.setattr(accel, "layer_run_source", lambda bench_dir, progress: layer)
    asked = []

    def vectors(image, n, seed):
        asked.append(n)
        codes = np.random.default_rng(0).integers(0, 256, size=(n, 784))
        return types.SimpleNamespace(net=to_golden(accel.variant(ticket, "ticket", 4)), codes=codes,
                                     labels=np.zeros(n, dtype=np.int64))

    monkeypatch.setattr(accel, "image_vectors", vectors)
    monkeypatch.setattr(accel, "array_verilog", lambda config: "module mpq_array; endmodule\n")
    monkeypatch.setattr(accel, "ProcessPoolExecutor", lambda max_workers, mp_context: ThreadPoolExecutor(1))

    def fake_chunk(vpath, words, codes, expected, work_dir, simulator, stall=False, seed=0):
        return chunk(words, codes, stall, seed)

    monkeypatch.setattr(accel, "_run_chunk", fake_chunk)
    monkeypatch.setattr(accel, "words_read", fake_words_read)
    result = accel.run_accel(tmp_path, tmp_path, engines=1, lanes=14, ticket_images=4, other_images=1, synth=False,
                             progress=False)
    return result, asked


def test_run_accel_runs_the_rows_the_back_pressure_images_and_the_curve_on_one_build(ticket, tmp_path, monkeypatch):
    """run_accel's bookkeeping, with the simulator replaced by a record whose cycles are the image's words (the
    RTL runs are bench accel's): the back-pressure chunks are the only stalled ones, with a seed each and the
    images after the ones before; they make no row; the curve has every iteration at both widths, the ticket's
    marked, each with its speed-up over the same build's dense32; ten back-pressure images with fewer asked of
    the ticket's row load ten test images."""
    calls = []

    def chunk(words, codes, stall, seed):
        calls.append((len(words), len(codes), stall, seed))
        return {"sim_wall_s": 0.01, "image_cycles": [float(len(words))] * len(codes), "layer_cycles": [],
                "mismatches": 0, "images": len(codes), "sim_cycles": len(words) * len(codes), "statuses": [0],
                "timed_out": False, "error": None, **_reads(words, len(codes))}

    result, asked = _fake_accel_run(ticket, tmp_path, monkeypatch, chunk)
    assert asked == [10]  # the back-pressure run's ten images, more than the rows ask
    assert [(r["weights"], r["act_bits"]) for r in result["rows"]] == [(w, a) for w in accel.WEIGHTS
                                                                      for a in accel.ACT_BITS]
    ticket_words = len(accel.pack(to_golden(accel.variant(ticket, "ticket", 4))))
    stalled = [c for c in calls if c[2]]
    assert sum(c[1] for c in stalled) == 10 and all(c[0] == ticket_words for c in stalled)
    assert sorted(c[3] for c in stalled) == [0, *np.cumsum([c[1] for c in stalled])[:-1].tolist()]
    assert result["backpressure"]["rtl_images"] == 10 and result["backpressure"]["rtl_mismatches"] == 0
    assert accel.floors({**result, "synthesis": None})["read_mismatches == 0"]["holds"]
    by_ranking = {(r["ranking"], r["imq_iteration"], r["act_bits"]): r for r in result["curve"]}
    assert list(by_ranking) == [("global", 0, 4), ("global", 1, 4), ("global", 0, 8), ("global", 1, 8),
                                ("layer", 0, 4), ("layer", 2, 4), ("layer", 0, 8), ("layer", 2, 8)]
    curve = {(k, a): r for (ranking, k, a), r in by_ranking.items() if ranking == "global"}
    qnn4_words = len(accel.pack(to_golden(accel.variant(ticket, "qnn4", 4))))
    assert by_ranking[("layer", 2, 4)]["cycles_per_image"] == qnn4_words  # its own iteration's network
    assert not any(r["is_ticket"] for (ranking, _, _), r in by_ranking.items() if ranking == "layer")
    assert by_ranking[("layer", 2, 8)]["fakequant_accuracy"] == 0.6 and result["layer_run"]["run"] == "layer_run"
    assert curve[(1, 4)]["is_ticket"] and not curve[(0, 4)]["is_ticket"] and curve[(1, 4)]["conv_avg_bits"] == 3.0
    dense = next(r for r in result["rows"] if r["weights"] == "dense32" and r["act_bits"] == 4)
    assert curve[(0, 4)]["speedup_vs_dense32"] == 1.0  # iteration 0 is every weight at 32 bits, as dense32
    assert curve[(1, 4)]["speedup_vs_dense32"] == dense["cycles_per_image"] / ticket_words
    assert curve[(1, 4)]["fakequant_accuracy"] == 0.7 and "lut" not in curve[(1, 4)]
    assert json.loads((tmp_path / "rtl_rows.json").read_text())["backpressure"]["rtl_images"] == 10
    for r in result["rows"] + result["curve"]:  # each layer's tiles' bound, 20 layers summing to the whole's
        assert len(r["layer_tile_bounds"]) == 20
        assert abs(sum(r["layer_tile_bounds"]) - r["tile_bound_cycles"]) <= 1 + 20 * 0.05


def test_run_accel_counts_what_the_rtl_runs_report_wrong(ticket, tmp_path, monkeypatch):
    """Mismatches the simulator reports, and images that did not come back, reach the row, the curve point and
    the back-pressure record that ran them, and fail their floors: a chunk of qnn4's words (its PACT-4 row and
    the layer-ranked iteration of the same network) reports one mismatch an image and a word too many read,
    dense32's chunks return one image fewer than they were given (a mismatch and a read mismatch each), and the
    first back-pressure chunk one mismatch."""
    qnn4_words = len(accel.pack(to_golden(accel.variant(ticket, "qnn4", 4))))
    dense_words = len(accel.pack(to_golden(accel.variant(ticket, "dense32", 4))))

    def chunk(words, codes, stall, seed):
        wrong = len(codes) if (len(words) == qnn4_words and not stall) else int(stall and seed == 0)
        back = len(codes) - 1 if len(words) == dense_words and not stall else len(codes)
        return {"sim_wall_s": 0.01, "image_cycles": [float(len(words))] * back, "layer_cycles": [],
                "mismatches": wrong, "images": back, "sim_cycles": len(words) * back, "statuses": [0],
                "timed_out": False, "error": None, **_reads(words, back, int(len(words) == qnn4_words))}

    result, _ = _fake_accel_run(ticket, tmp_path, monkeypatch, chunk)
    rows = {(r["weights"], r["act_bits"]): r for r in result["rows"]}
    assert rows[("qnn4", 4)]["rtl_mismatches"] == rows[("qnn4", 4)]["images_asked"] > 0
    assert rows[("ticket", 4)]["rtl_mismatches"] == 0 and rows[("ticket", 8)]["rtl_mismatches"] == 0
    for key, row in rows.items():  # qnn4's images (all mismatched) read a word too many, dense32's lost one counts
        assert row["read_mismatches"] == row["rtl_mismatches"], key
    for act in accel.ACT_BITS:  # every chunk of dense32 lost one image; the curve's iteration 0 is that network
        dense = rows[("dense32", act)]
        assert dense["rtl_mismatches"] >= 1 and dense["rtl_images"] == dense["images_asked"] - dense["rtl_mismatches"]
    points = {(r["ranking"], r["imq_iteration"], r["act_bits"]): r for r in result["curve"]}
    assert points[("layer", 2, 4)]["rtl_mismatches"] == 1 and points[("global", 1, 4)]["rtl_mismatches"] == 0
    assert points[("global", 0, 4)]["rtl_mismatches"] == 1  # dense32's network: its image did not come back
    assert result["backpressure"]["rtl_mismatches"] == 1 and result["backpressure"]["read_mismatches"] == 0
    assert points[("layer", 2, 4)]["read_mismatches"] == 1 and points[("global", 1, 4)]["read_mismatches"] == 0
    floors = accel.floors(result)
    read = floors["read_mismatches == 0"]
    assert read["value"] == sum(r["read_mismatches"] for r in result["rows"] + result["curve"]) and not read["holds"]
    assert not floors["other_rows_rtl_mismatches == 0"]["holds"]
    assert not floors["imq_curve_rtl_mismatches == 0"]["holds"]
    assert floors["ticket_a4_rtl_mismatches == 0"]["holds"]
    assert not floors["ticket_a4_backpressure_mismatches == 0"]["holds"]


def test_chunks_out_at_once_are_planned_from_what_is_given_out_not_what_came_back():
    counts = {("ticket", 4): 100, ("dense32", 4): 10}
    wall = {("ticket", 4): 2.0, ("dense32", 4): 0.0}
    # The ticket's first chunk (25 of 100) is out, dense32's first image too: the ticket gets its next 25,
    # dense32 nothing until its first image's time is known.
    planned = {("ticket", 4): 26, ("dense32", 4): 1}
    done = {("ticket", 4): 1, ("dense32", 4): 0}
    assert accel._plan(counts, planned, done, wall, left_s=1e9) == (("ticket", 4), 25)
    planned[("ticket", 4)] = 100
    assert accel._plan(counts, planned, done, wall, left_s=1e9) is None
    done[("dense32", 4)], wall[("dense32", 4)] = 1, 50.0
    assert accel._plan(counts, planned, done, wall, left_s=1e9) == (("dense32", 4), 2)


def test_a_synthesis_that_did_not_finish_keeps_the_rtl_rows_and_fails_its_floors(tmp_path, capsys, monkeypatch):
    result = _result()
    result["synthesis"] = None
    result["synthesis_error"] = "yosys on x.v did not finish in 3600 s (killed)"
    for r in result["rows"]:
        r.update(dsp=None, lut=None, ff=None, bram36=None, fits_xc7z020=None, fmax_mhz_estimate=None)
    monkeypatch.setattr(accel, "run_accel", lambda out_dir, bench_dir, **kw: result)
    code, out, _ = bench(capsys, "accel", "--quiet", "--check", "--out", tmp_path)
    assert code == 1 and "no resources: the synthesis did not finish (yosys on x.v" in out
    floors = json.loads((tmp_path / "accel.json").read_text())["floors"]
    assert not floors["dsp >= 150"]["holds"] and not floors["fmax_mhz_estimate >= 100"]["holds"]
    assert floors["ticket_a4_cycles_per_image <= 40000"]["holds"]  # the RTL's figures stand


def test_a_chunk_runs_in_the_rtl_in_a_spawned_worker_and_a_failed_build_comes_back_as_a_record(tmp_path):
    """`_run_chunk` for real (Icarus, a 1 x 2 array, a small MLP): in-process it builds the simulator, as the
    bench's first chunk does; in a spawned process (the bench's pool) it runs on that build with back-pressure;
    the scores equal golden's. A build that fails comes back as ``{"failure": ...}``, not as an exception that
    need not survive the trip between processes."""
    config = ArrayConfig(engines=1, lanes=2, buffer_words=1024, fmap_rows=64, row_codes=12, fan_in_width=6,
                         channel_bits=5, vertical=False)
    vpath = write_text_atomically(tmp_path / "mpq_array.v", array_verilog(config))
    rng = np.random.default_rng(8)
    net = random_network(rng, sizes=(12, 9, 4), act_bits=4)
    codes = rng.integers(0, 16, size=(3, 12))
    expected = net.forward(codes)
    words = pack_v3(net)[0]
    first = accel._run_chunk(str(vpath), words, codes[:1], expected[:1], str(tmp_path / "sim"), "icarus")
    assert first["mismatches"] == 0 and first["scores"] == expected[:1].tolist(), first
    assert list(zip(first["image_weight_reads"], first["image_reads"])) == [words_read(net, config)]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        rest = pool.submit(accel._run_chunk, str(vpath), words, codes[1:], expected[1:], str(tmp_path / "sim"),
                           "icarus", True, 1).result()
    assert rest["mismatches"] == 0 and rest["scores"] == expected[1:].tolist(), rest
    assert rest["images"] == 2 and rest["ready_stall_cycles"] > 0
    assert list(zip(rest["image_weight_reads"], rest["image_reads"])) == [words_read(net, config)] * 2
    bad = write_text_atomically(tmp_path / "bad" / "mpq_array.v", "module mpq_array(; endmodule\n")
    failed = accel._run_chunk(str(bad), words, codes[:1], expected[:1], str(tmp_path / "bad" / "sim"), "icarus")
    assert set(failed) == {"failure"} and failed["failure"].startswith("the simulator failed ("), failed
