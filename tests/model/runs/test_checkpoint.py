"""Checkpoints: round trip, and clear errors for files that are not checkpoints or do not fit the model."""

import pytest
import torch

from model.errors import UserError
from model.quant.nets import DigitsMLP
from model.runs.checkpoint import load_checkpoint, save_checkpoint


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
    with pytest.raises(UserError, match="noise.pt: not a readable checkpoint"):
        load_checkpoint(bad)
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
    with pytest.raises(UserError, match=r"linears.0.bit_width' holds mask value 3; allowed \(0, 4, 8, 16, 32\)"):
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
