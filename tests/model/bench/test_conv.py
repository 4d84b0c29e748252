"""``bench conv`` (model/bench/conv.py): floors on hand-written rows, the ticket rule, and one row built for real from
a tiny VGG trained briefly on Fashion-MNIST (an IMQ-style mask and a BMPQ signed one), exported and measured."""

import json

import numpy as np
import pytest
import torch

from model.bench import conv
from model.bench.conv import MAX_GAP_PP, NETWORKS, ROW_KEYS, floors, imq_configs, network_row, pick_ticket
from model.data import DataRecord, load_dataset
from model.errors import UserError
from model.export.convert import to_golden
from model.export.golden_net import mac_counts
from model.export.image import write_image
from model.methods.imq import IterationRecord, imq_update
from model.quant.bmpq import to_bmpq
from model.quant.nets import SmallVGG
from model.runs.rundir import load_iteration, make_run_config
from model.training.loop import train
from tests.idx_files import write_idx_folder

pytestmark = pytest.mark.usefixtures("one_thread")


class _Stop(Exception):
    """Ends the run once its thread count is seen."""


def test_imq_runs_train_on_the_pinned_thread_count_and_restore_it(monkeypatch, tmp_path):
    """The ticket depends on torch's thread count, so an IMQ run of the bench trains on IMQ_THREADS, and the
    caller's count comes back even when the run stops with an error."""
    seen = []

    def fake_run(config, run_dir, progress, restart):
        seen.append(torch.get_num_threads())
        raise _Stop

    monkeypatch.setattr(conv, "run", fake_run)
    before = torch.get_num_threads()
    with pytest.raises(_Stop):
        conv.run_imq_row("resnet20", imq_configs(smoke=True)["resnet20"], tmp_path, tmp_path, False, False)
    assert seen == [conv.IMQ_THREADS] != [before] and torch.get_num_threads() == before


def _row(arch, method, fq=0.85, golden=0.851, meta=1.2):
    return {"arch": arch, "method": method, "fakequant_accuracy": fq, "golden_accuracy": golden,
            "metadata_bits_per_weight": meta}


def _rows(**changes):
    rows = [_row(a, m) for a, m in NETWORKS]
    for key, value in changes.items():
        arch, method, field = key.split("__")
        next(r for r in rows if (r["arch"], r["method"]) == (arch, method))[field] = value
    return rows


def test_floors_hold():
    f = floors(_rows(), wall_seconds=1500.0)
    assert list(f) == ["golden_gap_pp_resnet20_imq", "golden_gap_pp_vgg_imq", "golden_gap_pp_vgg_bmpq",
                       "metadata_bits_per_weight_resnet20_imq", "wall_seconds"]
    assert all(e["holds"] for e in f.values())
    assert f["golden_gap_pp_vgg_imq"]["value"] == pytest.approx(0.1)
    assert f["metadata_bits_per_weight_resnet20_imq"] == {"value": 1.2, "floor": 1.6, "op": "<=", "holds": True}


@pytest.mark.parametrize(("changes", "wall", "failing"), [
    ({"vgg__bmpq__golden_accuracy": 0.85 - 0.006}, 100.0, ["golden_gap_pp_vgg_bmpq"]),  # golden below: |gap|
    ({"vgg__imq__golden_accuracy": 0.85 + 0.006}, 100.0, ["golden_gap_pp_vgg_imq"]),  # ... and above
    ({"resnet20__imq__metadata_bits_per_weight": 1.61}, 100.0, ["metadata_bits_per_weight_resnet20_imq"]),
    ({"vgg__imq__metadata_bits_per_weight": 3.0}, 100.0, []),  # the metadata floor is the ResNet-20 ticket's
    ({}, 1800.5, ["wall_seconds"]),
    ({}, None, ["wall_seconds"]),
])
def test_floors_fail(changes, wall, failing):
    f = floors(_rows(**changes), wall_seconds=wall)
    assert [n for n, e in f.items() if not e["holds"]] == failing


def test_a_missing_network_is_unmeasured():
    f = floors([r for r in _rows() if r["arch"] != "resnet20"], wall_seconds=10.0)
    assert [n for n, e in f.items() if not e["holds"]] == ["golden_gap_pp_resnet20_imq",
                                                          "metadata_bits_per_weight_resnet20_imq"]
    assert f["golden_gap_pp_resnet20_imq"]["value"] is None


def test_ticket_is_the_best_validation_accuracy_within_4_bits():
    history = [IterationRecord(0, 32.0, 0.90, {}, 0.91), IterationRecord(1, 4.0, 0.88, {}, 0.87),
               IterationRecord(2, 3.0, 0.89, {}, 0.86), IterationRecord(3, 2.0, 0.80, {}, 0.85)]
    ticket, rule = pick_ticket(history)
    assert ticket.iteration == 1 and "validation" in rule  # iteration 2's better *test* accuracy does not count
    ticket, rule = pick_ticket(history[:1] + [IterationRecord(1, 6.0, 0.9, {}, 0.9)])
    assert ticket.iteration == 1 and rule == "narrowest"


def test_a_ticket_past_the_chips_block_ram_is_passed_over():
    """The size cap leaves out the iterations whose image ``bench accel``'s array cannot hold on the XC7Z020 (the
    validation's pick on another CPU, 2026-12-08); the rest of the rule is as before."""
    cap = conv.TICKET_MAX_IMAGE_WORDS
    history = [IterationRecord(0, 32.0, 0.90, {}, 0.91), IterationRecord(1, 3.6, 0.88, {}, 0.90),
               IterationRecord(2, 2.4, 0.85, {}, 0.86), IterationRecord(3, 1.7, 0.87, {}, 0.86)]
    ticket, rule = pick_ticket(history, {1: cap + 1, 2: cap, 3: cap - 8000})
    assert ticket.iteration == 2 and rule == f"best validation <= 4 bits, <= {cap} words"  # the tie: the earlier
    assert pick_ticket(history, {1: cap, 2: cap, 3: cap})[0].iteration == 1
    assert pick_ticket(history) == (history[1], "best validation <= 4 bits")  # no sizes: no cap
    assert pick_ticket(history, {1: cap + 1, 2: cap + 1, 3: cap + 1}) == (history[3], "narrowest")


def test_run_imq_row_ranks_the_candidates_that_fit_by_their_images(monkeypatch, tmp_path):
    """A tiny IMQ run (a VGG on the 8 x 8 digits, 8 iterations at rho 0.8: 32 bits down to about 1.6) through
    :func:`~model.bench.conv.run_imq_row`: a size for each iteration of at most 4 bits, that of the image
    ``write_image`` writes of it, and the ticket :func:`~model.bench.conv.pick_ticket` picks with those sizes; run
    again (resumed) under a cap at the smallest image, the ticket is that image's iteration."""
    config = make_run_config("imq", arch="vgg", train_subset=200, test_subset=100, epochs=1, batch_size=32,
                             lr=0.01, iterations=8, rho=0.8, seed=1)
    rows = []
    for cap in ("bench", "smallest"):
        row, result = conv.run_imq_row("vgg", config, tmp_path / "runs", tmp_path / "images", False, False)
        sizes = {int(k): v for k, v in row["candidate_image_words"].items()}
        ticket, rule = pick_ticket(result.history, sizes)
        assert row["ticket_iteration"] == ticket.iteration and row["ticket_rule"] == rule == (
            f"best validation <= 4 bits, <= {conv.TICKET_MAX_IMAGE_WORDS} words")
        assert row["image_bytes"] == 4 * sizes[ticket.iteration] and sizes[ticket.iteration] <= (
            conv.TICKET_MAX_IMAGE_WORDS)
        rows.append((row, sizes))
        monkeypatch.setattr(conv, "TICKET_MAX_IMAGE_WORDS", min(sizes.values()))
    (first, sizes), (second, again) = rows
    assert not first["resumed"] and second["resumed"] and again == sizes and len(set(sizes.values())) == len(sizes) > 1
    assert sizes[second["ticket_iteration"]] == min(sizes.values())
    assert sorted(sizes) == [r.iteration for r in result.history if r.avg_bits <= conv.TICKET_BITS]
    assert len(sizes) < len(result.history)
    for iteration, words in sizes.items():
        model = load_iteration(tmp_path / "runs" / "vgg_imq", iteration)
        model.eval()
        manifest = write_image(tmp_path / f"img{iteration}", to_golden(model))
        assert words * 4 == manifest["memory"]["image_bytes"] == (tmp_path / f"img{iteration}" / "weights.bin"
                                                                   ).stat().st_size


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", train_subset=600, test_subset=300)


def _imq_vgg(split):
    """A tiny SmallVGG: trained one epoch, then IMQ steps (least-|w| weights down 32/16/8/4/0), trained again."""
    torch.manual_seed(0)
    model = SmallVGG(image_shape=split.image_shape, act_bits=4, channels=(4, 8))
    train(model, split, epochs=1, batch_size=64, progress=False)
    for _ in range(5):
        imq_update(model.quant_layers(), 0.6)
    train(model, split, epochs=1, batch_size=64, progress=False)
    return model


@pytest.mark.parametrize("method", ["imq", "bmpq"])
def test_network_row_of_a_tiny_vgg(fashion, tmp_path, method):
    if method == "imq":
        model = _imq_vgg(fashion)
    else:  # layer-wise signed codes: 16-bit edges, a ternary middle layer (pruned where its code is 0)
        torch.manual_seed(0)
        model = to_bmpq(SmallVGG(image_shape=fashion.image_shape, act_bits=4, channels=(4, 8)))
        with torch.no_grad():
            for layer, bits in ((model.features[0], 16), (model.features[4], 2), (model.fc, 16)):
                layer.bits.fill_(bits)
        train(model, fashion, epochs=1, batch_size=64, progress=False)
    data = DataRecord.of("fashion-mnist", None, fashion.image_shape, 8, test_subset=300)
    row = network_row("vgg", method, model, fashion.x_test, fashion.y_test, tmp_path / "img", data=data,
                      note="tiny")
    assert tuple(row)[:len(ROW_KEYS)] == ROW_KEYS and row["note"] == "tiny" and row["test_images"] == 300
    net = to_golden(model)
    assert (row["macs_dense"], row["macs_nonzero"]) == mac_counts(net)
    # The figures describe this network: its widths (IMQ pruned most weights; BMPQ prunes its zero codes) ...
    widths = np.concatenate([np.asarray(layer.widths).ravel() for layer in net.layers])
    assert row["width_counts"] == {str(m): int((widths == m).sum()) for m in (0, 4, 8, 16, 32)}
    assert row["nonzero_fraction"] == pytest.approx(np.count_nonzero(widths) / widths.size)
    assert row["avg_weight_bits"] == pytest.approx(widths.mean())
    assert 0 < row["nonzero_fraction"] < (0.5 if method == "imq" else 1)
    assert row["macs_nonzero"] < row["macs_dense"]
    # ... and its image: the manifest on disk says what the row says.
    manifest = json.loads((tmp_path / "img" / "manifest.json").read_text())
    for key in ("payload_bytes", "metadata_bytes", "param_bytes", "image_bytes", "metadata_bits_per_weight"):
        assert row[key] == manifest["memory"][key], key
    assert row["image_bytes"] == (tmp_path / "img" / "weights.bin").stat().st_size
    assert manifest["data"]["test_subset"] == 300
    # Accuracies are of the trained net, and golden is the integer model's (a few boundary cases may differ).
    assert row["fakequant_accuracy"] > 0.3  # chance is 0.1
    assert abs(row["golden_minus_fakequant_pp"]) <= MAX_GAP_PP + 100 / 300
    assert row["golden_minus_fakequant_pp"] == pytest.approx(100 * (row["golden_accuracy"] - row["fakequant_accuracy"]))


def test_images_a_network_cannot_take_are_refused_before_training(tmp_path):
    """8x8 images fit the IMQ runs' ResNet-20 and VGG but not the BMPQ VGG (16 pixels at least): refused before the
    IMQ runs train, so no run directory is left behind."""
    root = write_idx_folder(tmp_path / "idx", n_train=150, n_test=10, side=8)
    with pytest.raises(UserError, match=r"bench conv: the data folder '.*idx' \(--data-root\) holds images of shape "
                                        r"\(1, 8, 8\); .*needs \(1, H, W\) with H and W in 16\.\.1024"):
        conv.run_conv_bench(tmp_path / "out", root=root, smoke=True, progress=False)
    assert not (tmp_path / "out").exists()
