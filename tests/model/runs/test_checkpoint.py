"""Checkpoints: round trip, and clear errors for files that are not checkpoints or do not fit the model."""

import re
import zipfile

import pytest
import torch

from model.data import DataRecord
from model.errors import UserError
from model.quant.bmpq import to_bmpq
from model.quant.nets import DigitsMLP
from model.runs.checkpoint import checkpoint_data, load_checkpoint, save_checkpoint


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = DigitsMLP(hidden=(8,), act_bits=4)
    m.linears[0].set_bit_width(torch.tensor([0, 4, 8, 16, 32]).repeat(8, 13)[:, :64])
    return m


def test_round_trip(tmp_path, model):
    path = save_checkpoint(tmp_path / "t.pt", model, {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"note": "x"}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "noise.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match=r"noise.pt: not a checkpoint: torch.save writes a zip archive, and this file "
                                        r"starts with b'\\x00gar'"):
        load_checkpoint(bad)
    # A zip archive cut short: said so, with its size (torch's own reason names no cause)
    good = tmp_path / "good.pt"
    torch.save({"format": "x", "w": torch.arange(64.0)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:60])
    with pytest.raises(UserError, match=r"cut.pt: not a readable checkpoint: the zip archive that torch.save writes "
                                        r"is cut short or damaged: it starts as one, but its 60 bytes hold no "
                                        r"end-of-archive record"):
        load_checkpoint(tmp_path / "cut.pt")
    # One byte of a tensor changed: torch.load would read it as another value (it checks no CRC); refused by name
    data = bytearray(good.read_bytes())
    at = data.index(torch.arange(64.0).numpy().tobytes()) + 100
    data[at] ^= 0x40
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    assert not torch.equal(torch.load(tmp_path / "flipped.pt", weights_only=True)["w"], torch.arange(64.0))
    with pytest.raises(UserError, match=r"flipped.pt: not a readable checkpoint: the zip archive that torch.save "
                                        r"writes is damaged: its member '[^']*/data/0' fails its CRC check"):
        load_checkpoint(tmp_path / "flipped.pt")
    # A file torch.save wrote without CRCs (set_crc32_options(False): every CRC 0) is whole and loads
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"format": "x", "w": torch.arange(64.0)}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    with pytest.raises(UserError, match="nocrc.pt: field 'format' is not"):
        load_checkpoint(tmp_path / "nocrc.pt")
    # A whole zip archive torch still cannot read: its reason's first line, whole (torch's run to paragraphs)
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as z:
        z.writestr("archive/nothing", b"")
    with pytest.raises(UserError, match=r"empty.pt: not a readable checkpoint \(\w+: [^\n]*\)$"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: field 'format'"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="missing.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_mask_value(tmp_path, model):
    path = save_checkpoint(tmp_path / "t.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["linears.0.bit_width"][0, 0] = 3
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"linears.0.bit_width' holds mask value 3; allowed \(0, 1, 2, 4, 8, 16, 32\)"):
        load_checkpoint(path)


@pytest.mark.parametrize(("value", "shown"), [(4.9, "4.9"), (7.9, "7.9"), (float("nan"), "nan")])
def test_a_mask_value_that_is_not_an_integer_is_refused_as_written(tmp_path, model, value, shown):
    """A float mask of 4.9 is not read as 4 (an allowed width) nor 7.9 reported as 7: the file's value is named."""
    path = save_checkpoint(tmp_path / "t.pt", model)
    payload = torch.load(path, weights_only=True)
    widths = payload["state_dict"]["linears.0.bit_width"].float()
    widths[0, 1] = value
    payload["state_dict"]["linears.0.bit_width"] = widths
    torch.save(payload, path)
    with pytest.raises(UserError, match=rf"linears.0.bit_width' holds mask value {shown}; allowed \(0, 1, 2, 4, 8, 16, 32\)"):
        load_checkpoint(path)
    widths[0, 1] = 4.0  # a float that is an allowed width loads as that width
    torch.save(payload, path)
    assert load_checkpoint(path)[0].linears[0].bit_width[0, 1] == 4


def test_a_bmpq_layer_width_that_is_not_an_integer_is_refused_as_written(tmp_path, model):
    path = save_checkpoint(tmp_path / "t.pt", to_bmpq(model))
    payload = torch.load(path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith(".bits"))
    payload["state_dict"][key] = torch.tensor(4.5)
    torch.save(payload, path)
    with pytest.raises(UserError, match=rf"{re.escape(key)}' is 4.5; allowed \(2, 3, 4, 5, 6, 7, 8, 16, 32\)"):
        load_checkpoint(path)


def test_shape_mismatch(tmp_path, model):
    path = save_checkpoint(tmp_path / "t.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["linears.1.weight"] = torch.zeros(10, 9)
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"linears.1.weight' has shape \(10, 9\); the model needs \(10, 8\)"):
        load_checkpoint(path)
    payload["config"]["act_bits"] = 12
    torch.save(payload, path)
    with pytest.raises(UserError, match="act_bits"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------------ data record
def test_the_data_record_round_trips_in_the_meta(tmp_path, model):
    record = DataRecord.of("digits", None, (1, 8, 8), 4, seed=7, test_subset=50)
    path = save_checkpoint(tmp_path / "t.pt", model, {"note": "x"}, data=record)
    loaded, meta = load_checkpoint(path)
    assert meta == {"note": "x", "dataset": record.to_json()}
    assert checkpoint_data(path, loaded, meta) == record


def test_a_run_checkpoint_derives_its_record_from_the_run_config(tmp_path, model):
    from tests.idx_files import write_idx_folder

    run = {"data": "digits", "data_root": None, "seed": 5, "train_subset": 100, "test_subset": None, "epochs": 1}
    path = save_checkpoint(tmp_path / "t.pt", model, {"run": run})
    loaded, meta = load_checkpoint(path)
    assert meta["dataset"] == {"name": "digits", "root": None, "input_shape": [1, 8, 8], "input_bits": 4, "seed": 5,
                               "train_subset": 100, "test_subset": None}
    # A checkpoint written before records existed: derived at load time, the same way.
    del meta["dataset"]
    assert checkpoint_data(path, loaded, meta) == DataRecord.of("digits", None, (1, 8, 8), 4, 5, 100)
    # An IDX run: the image shape comes from the folder's header (here 8x8, the MLP's 64 inputs).
    root = write_idx_folder(tmp_path / "idx", n_train=4, n_test=2, side=8)
    path = save_checkpoint(tmp_path / "i.pt", model, {"run": {**run, "data": "idx", "data_root": str(root)}})
    assert load_checkpoint(path)[1]["dataset"]["input_shape"] == [1, 8, 8]
    assert load_checkpoint(path)[1]["dataset"]["root"] == str(root)
    # A run's data root that is not a path is named (it was read for the MLP's shape first: a TypeError).
    meta = {"run": {**run, "data": "fashion-mnist", "data_root": 5}}
    with pytest.raises(UserError, match="field 'meta.run.data_root' is 5; allowed a folder path or null"):
        checkpoint_data(path, loaded, meta)


def test_no_record_and_bad_records(tmp_path, model):
    path = save_checkpoint(tmp_path / "t.pt", model, {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert checkpoint_data(path, loaded, meta) is None
    payload = torch.load(path, weights_only=True)
    for change, message in [
        ({"name": "mnist"}, r"t.pt: field 'meta.dataset': field 'name' is 'mnist'"),
        ({"input_shape": [1, 28, 28]}, r"t.pt: field 'meta.dataset.input_shape' is \[1, 28, 28\]; the model takes 64"),
        ({"input_bits": 8}, "t.pt: field 'meta.dataset.input_bits' is 8; the model's input quantizer has 4 bits"),
    ]:
        payload["meta"] = {"dataset": {**DataRecord.of("digits", None, (1, 8, 8), 4).to_json(), **change}}
        torch.save(payload, path)
        with pytest.raises(UserError, match=message):
            load_checkpoint(path)


@pytest.mark.parametrize(("meta", "message"), [
    ("x", "t.pt: field 'meta' is 'x'; expected an object"),
    ([1, 2], r"t.pt: field 'meta' is \[1, 2\]; expected an object"),
    ({"run": "x"}, "t.pt: field 'meta.run' is 'x'; expected an object"),
])
def test_a_meta_of_the_wrong_kind_is_named(tmp_path, model, meta, message):
    """Not read as empty: a note then told the user the file records no data set, which it did, wrongly."""
    path = save_checkpoint(tmp_path / "t.pt", model, {"note": "x"})
    payload = torch.load(path, weights_only=True)
    payload["meta"] = meta
    torch.save(payload, path)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_a_whole_pickled_model_is_named_as_such(tmp_path):
    """torch.save(model) (a Python object, not a state dict): torch's weights-only loader refuses it with a
    paragraph whose first line gives no reason and carries terminal colour codes; the message names the object."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "m.pt")
    with pytest.raises(UserError) as exc:
        load_checkpoint(tmp_path / "m.pt")
    text = str(exc.value)
    assert "m.pt: not a checkpoint: it holds Python objects" in text and "torch.nn.modules.linear.Linear" in text
    assert "\x1b" not in text and "two options" not in text
