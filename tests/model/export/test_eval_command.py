"""`build.py eval`: float / fake-quant / golden accuracy of a checkpoint or an image, on its recorded data set."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import build
from model.data import DataRecord, load_digits_split
from model.export.convert import golden_accuracy, to_golden
from model.export.eval_command import float_twin
from model.quant.nets import DigitsMLP, build_model
from model.quant.pact import PACT, InputQuant
from model.quant.vertical import to_vertical
from model.revision import code_revision
from model.runs.checkpoint import save_checkpoint
from model.training.loop import evaluate, train
from tests.build_main import main
from tests.idx_files import idx_bytes, idx_name, write_idx_folder

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def ticket():
    """A small digits MLP, trained briefly, with some weights pruned and the rest at 4, 8 and 32 bits."""
    split = load_digits_split(seed=2)
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(16,), act_bits=4)
    train(model, split, epochs=4, lr=1e-2, seed=0, progress=False)
    widths = torch.tensor([0, 4, 8, 32]).repeat(16 * 64 // 4).reshape(16, 64)
    model.linears[0].set_bit_width(widths)
    return model, split


def test_eval_checkpoint_reports_each_accuracy_on_the_recorded_test_images(capsys, tmp_path, ticket):
    model, split = ticket
    record = DataRecord.of("digits", None, (1, 8, 8), 4, seed=2, test_subset=100)
    save_checkpoint(tmp_path / "t.pt", model, {"float_accuracy": 0.5}, data=record)
    code, out, err = main(capsys, "eval", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    x, y = split.x_test[:100], split.y_test[:100]  # seed 2, first 100: what the record says
    assert report["data"] == record.to_json() and report["test_images"] == 100
    assert report["fakequant_accuracy"] == evaluate(model, x, y)
    assert report["golden_accuracy"] == golden_accuracy(to_golden(model), model, x, y)
    assert report["float_accuracy"] == evaluate(float_twin(model), x, y)
    assert report["float_baseline_accuracy"] == 0.5 and "rounding off" in report["notes"]["float_accuracy"]
    assert report["code_revision"] == code_revision()
    assert "fake-quant" in out and "golden (integer)" in out and "digits" in out


def test_float_twin_turns_rounding_off_and_keeps_pruned_weights(ticket):
    model, split = ticket
    twin = float_twin(model)
    mask = model.linears[0].bit_width
    assert torch.equal(twin.linears[0].bit_width, torch.where(mask != 0, 32, 0))
    assert torch.equal(model.linears[0].bit_width, mask)  # the original is untouched
    assert all(m.bits == 32 for m in twin.modules() if isinstance(m, PACT | InputQuant))
    assert all(m.bits == 4 for m in model.modules() if isinstance(m, PACT | InputQuant))
    with torch.no_grad():
        w = twin.linears[0].quantized_weight()
    assert bool((w[mask == 0] == 0).all()) and not torch.equal(twin(split.x_test), model(split.x_test))


def test_eval_image_gives_the_golden_accuracy_of_the_exported_ticket(capsys, tmp_path, ticket):
    model, split = ticket
    save_checkpoint(tmp_path / "t.pt", model, data=DataRecord.of("digits", None, (1, 8, 8), 4, seed=2))
    assert main(capsys, "export", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "image")[0] == 0
    assert json.loads((tmp_path / "image" / "manifest.json").read_text())["data"]["seed"] == 2
    code, _, err = main(capsys, "eval", "--image", tmp_path / "image", "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["golden_accuracy"] == golden_accuracy(to_golden(model), model, split.x_test, split.y_test)
    assert report["fakequant_accuracy"] is None and report["float_accuracy"] is None
    assert report["test_images"] == 360 and "integer codes only" in report["notes"]["fakequant_accuracy"]


def test_eval_reports_the_networks_bits_and_refuses_a_baseline_that_is_no_accuracy(capsys, tmp_path, ticket):
    """``avg_weight_bits`` is the image's network's (the manifest's field went into eval.json as written, "x"
    included), and a checkpoint's ``meta.float_accuracy`` outside [0, 1] is refused naming the field (2026-12-06)."""
    model, _ = ticket
    save_checkpoint(tmp_path / "t.pt", model, data=DataRecord.of("digits", None, (1, 8, 8), 4, seed=2))
    assert main(capsys, "export", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "image")[0] == 0
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    (tmp_path / "image" / "manifest.json").write_text(json.dumps({**manifest, "avg_weight_bits": "x"}))
    assert main(capsys, "eval", "--image", tmp_path / "image", "--out", tmp_path / "eval")[0] == 0
    bits = json.loads((tmp_path / "eval" / "eval.json").read_text())["avg_weight_bits"]
    assert bits == to_golden(model).avg_weight_bits == manifest["avg_weight_bits"]
    for value in ("x", 1.5, -0.1, True):
        save_checkpoint(tmp_path / "b.pt", model, {"float_accuracy": value}, data=DataRecord.of("digits", None,
                                                                                               (1, 8, 8), 4))
        code, _, err = main(capsys, "eval", "--checkpoint", tmp_path / "b.pt", "--out", tmp_path / "e2")
        assert code == 2 and not (tmp_path / "e2").exists(), err
        assert f"{tmp_path / 'b.pt'}: field 'meta.float_accuracy' is {value!r}; allowed a number in [0, 1]" in err


def test_eval_of_conv_nets_vgg_and_resnet_golden(capsys, tmp_path):
    """SmallVGG and ResNet-20 are in the integer contract (model/export/golden_net.py): both get a golden accuracy
    (ResNet-20 with negative BN2 gammas in its residual convs too: exact, not refused, model/export/convert.py)."""
    torch.manual_seed(0)  # (the nets' initial weights: the same draw whichever tests ran before in this worker)
    record = DataRecord.of("digits", None, (1, 8, 8), 8, test_subset=20)
    vgg = build_model({"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 4, "channels": [4]})
    save_checkpoint(tmp_path / "vgg.pt", vgg, data=record)
    code, _out, err = main(capsys, "eval", "--checkpoint", tmp_path / "vgg.pt", "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert 0.0 <= report["golden_accuracy"] <= 1.0 and "golden_accuracy" not in report["notes"]
    resnet = build_model({"arch": "resnet20", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 4})
    with torch.no_grad():
        resnet.layer2[1].bn2.weight[::2].neg_()
    save_checkpoint(tmp_path / "r20.pt", resnet, data=record)
    code, _out, err = main(capsys, "eval", "--checkpoint", tmp_path / "r20.pt", "--out", tmp_path / "eval20")
    assert code == 0, err
    report = json.loads((tmp_path / "eval20" / "eval.json").read_text())
    assert 0.0 <= report["golden_accuracy"] <= 1.0 and "golden_accuracy" not in report["notes"]
    assert report["fakequant_accuracy"] is not None


def test_eval_says_when_the_recorded_data_is_not_here(capsys, tmp_path, ticket):
    model, _ = ticket
    gone = tmp_path / "gone"
    save_checkpoint(tmp_path / "t.pt", model, data=DataRecord.of("idx", gone, (1, 8, 8), 4))
    code, _, err = main(capsys, "eval", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "eval")
    assert code == 2
    assert "t.pt: field 'meta.dataset' records the data set idx" in err and str(gone) in err and "--data-root" in err
    assert not (tmp_path / "eval").exists()
    # --data / --data-root read the test images from elsewhere
    code, _, err = main(capsys, "eval", "--checkpoint", tmp_path / "t.pt", "--data", "digits", "--out",
                        tmp_path / "eval")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["data"]["name"] == "digits"


def test_eval_of_a_file_without_a_record_assumes_digits_with_a_note(capsys, tmp_path, ticket):
    model, _ = ticket
    save_checkpoint(tmp_path / "old.pt", model)
    code, _, err = main(capsys, "eval", "--checkpoint", tmp_path / "old.pt", "--out", tmp_path / "eval")
    assert code == 0 and "records no data set" in err and "digits" in err


def test_eval_needs_exactly_one_of_checkpoint_and_image(capsys, tmp_path):
    for argv in ([], ["--checkpoint", "a.pt", "--image", "b"]):
        with pytest.raises(SystemExit) as exc:
            build.main(["eval", *argv])
        assert exc.value.code == 2
    capsys.readouterr()


def test_an_image_without_a_record_is_read_on_digits_with_a_note(capsys, tmp_path, ticket):
    model, split = ticket
    save_checkpoint(tmp_path / "old.pt", model)
    code, _, err = main(capsys, "export", "--checkpoint", tmp_path / "old.pt", "--out", tmp_path / "image")
    assert code == 0 and "does not record its data set" in err
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    assert "data" not in manifest
    code, _, err = main(capsys, "eval", "--image", tmp_path / "image", "--seed", 2, "--out", tmp_path / "eval")
    assert code == 0 and "records no data set" in err and "seed 2" in err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["data"]["name"] == "digits" and report["data"]["seed"] == 2
    assert report["golden_accuracy"] == golden_accuracy(to_golden(model), model, split.x_test, split.y_test)
    (tmp_path / "image" / "manifest.json").write_text(json.dumps({**manifest, "data": "digits"}))
    code, _, err = main(capsys, "eval", "--image", tmp_path / "image", "--out", tmp_path / "bad")
    assert code == 2 and re.search(r"manifest.json: field 'data' is .*; expected an object", err)
    assert not (tmp_path / "bad").exists()


def test_a_checkpoint_directory_is_named_as_such(capsys, tmp_path, ticket):
    model, _ = ticket
    code, _, err = main(capsys, "eval", "--checkpoint", tmp_path, "--out", tmp_path / "eval")
    assert code == 2 and f"{tmp_path}: is a directory, not a checkpoint file" in err, err
    assert "no such checkpoint file" not in err and "ticket.pt" in err  # what to give instead
    # A run directory: its ticket first, then its iterations; state.pt and theta_0.pt (no model checkpoints) left out
    save_checkpoint(tmp_path / "run" / "iterations" / "iter_000.pt", model, {})
    save_checkpoint(tmp_path / "run" / "ticket.pt", model, {})
    for name in ("state.pt", "theta_0.pt"):
        (tmp_path / "run" / name).write_bytes(b"x")
    code, _, err = main(capsys, "eval", "--checkpoint", tmp_path / "run", "--out", tmp_path / "eval")
    assert code == 2 and "it holds ticket.pt, iterations/iter_000.pt: give one of those, e.g. " in err, err
    assert f"e.g. {tmp_path / 'run' / 'ticket.pt'}" in err and "state.pt" not in err, err
    assert not (tmp_path / "eval").exists()
    # A device or a pipe is named as what it is, not as missing (2026-12-06: /dev/null was "no such ... file").
    os.mkfifo(tmp_path / "pipe.pt")
    for path in (Path("/dev/null"), tmp_path / "pipe.pt"):
        code, _, err = main(capsys, "eval", "--checkpoint", path, "--out", tmp_path / "eval")
        assert code == 2 and err.endswith(f"error: {path}: is not a regular file (a device or a pipe); give a "
                                          "checkpoint file\n"), err


def test_a_seed_for_a_file_that_records_its_data_set_is_refused(capsys, tmp_path, ticket):
    """--seed chooses the digits split of a file that records no data set; for a checkpoint or an image that
    records one (whose split it keeps) it is refused, naming the file, not ignored."""
    model, _ = ticket
    save_checkpoint(tmp_path / "t.pt", model, data=DataRecord.of("digits", None, (1, 8, 8), 4, seed=2))
    assert main(capsys, "export", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "image")[0] == 0
    for flag, path in (("--checkpoint", tmp_path / "t.pt"), ("--image", tmp_path / "image")):
        code, _, err = main(capsys, "eval", flag, path, "--seed", 5, "--out", tmp_path / "eval")
        assert code == 2 and f"--seed 5: {path}" in err and "records its data set" in err, err
        assert not (tmp_path / "eval").exists()


def test_test_labels_the_network_has_no_class_for_are_refused(capsys, tmp_path, ticket):
    """Test labels 50..59 for the 10-class ticket: exit 2 naming the labels file and 0..9, for a checkpoint and for
    its image (the data loading eval, sim and verilog share), instead of a silent accuracy of 0."""
    model, _ = ticket
    root = write_idx_folder(tmp_path / "idx", n_train=20, n_test=10, side=8)
    labels = root / idx_name("t10k", "labels")
    labels.write_bytes(idx_bytes(np.arange(10) + 50))
    save_checkpoint(tmp_path / "t.pt", model, data=DataRecord.of("digits", None, (1, 8, 8), 4))
    assert main(capsys, "export", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "image")[0] == 0
    for flag, path in (("--checkpoint", tmp_path / "t.pt"), ("--image", tmp_path / "image")):
        code, _, err = main(capsys, "eval", flag, path, "--data", "idx", "--data-root", root, "--out",
                            tmp_path / "eval")
        assert code == 2, err
        assert f"--data idx --data-root {root}: {labels}: holds test label 50" in err and "allowed 0..9" in err, err
        assert str(path) in err
        assert not (tmp_path / "eval").exists()


def test_an_override_that_cannot_be_read_is_blamed_on_the_option(capsys, tmp_path, ticket):
    """--data idx without a folder: the message names --data idx and says the file records digits (not that the
    file records idx)."""
    model, _ = ticket
    save_checkpoint(tmp_path / "t.pt", model, data=DataRecord.of("digits", None, (1, 8, 8), 4))
    assert main(capsys, "export", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "image")[0] == 0
    for path, where in ((tmp_path / "t.pt", f"{tmp_path / 't.pt'}: field 'meta.dataset'"),
                        (tmp_path / "image", f"{tmp_path / 'image' / 'manifest.json'}: field 'data'")):
        flag = "--checkpoint" if path.suffix == ".pt" else "--image"
        code, _, err = main(capsys, "eval", flag, path, "--data", "idx", "--out", tmp_path / "eval")
        assert code == 2 and err.startswith("error: --data idx: the data set idx cannot be read here"), err
        assert f"({where} records the data set digits)" in err and "records the data set idx" not in err, err
        assert not (tmp_path / "eval").exists()


def test_a_vertical_checkpoint_without_golden_model_names_itself(capsys, tmp_path):
    """A vertical checkpoint with float first and last layers has no integer network: `eval` gives its float and
    fake-quant accuracy, and golden's n/a names the checkpoint, as the other golden failures do."""
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "v.pt", to_vertical(DigitsMLP(64, (16, 16), 10, 4), float_edges=True))
    code, _, err = main(capsys, "eval", "--checkpoint", path, "--out", tmp_path / "ev")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["golden_accuracy"] is None
    assert f"{path}: the model has float first/last layers" in json.dumps(report)
