"""Fake-quant network -> golden model (model/export/convert.py): what it cannot convert is named."""

import pytest
import torch

from model.errors import UserError
from model.export.convert import to_golden
from model.quant.nets import DigitsMLP, build_model


def test_conversion_errors_name_the_layer_and_the_file_given():
    """A PACT clip of 1e30 before fc2 gives a gain no requantizer holds; a PACT-32 activation has no codes. Both
    name the layer, and the file the model came from when told (``where``)."""
    torch.manual_seed(0)
    mlp = DigitsMLP(hidden=(8,), act_bits=4)
    with torch.no_grad():
        mlp.acts[0].alpha.fill_(1e30)
    with pytest.raises(UserError, match=r"^t.pt: fc2: requantization: field 'mult': gain .* needs M >= 2\^17"):
        to_golden(mlp, where="t.pt")
    with pytest.raises(UserError, match=r"^fc2: requantization: field 'mult'"):
        to_golden(mlp)
    vgg = build_model({"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 32})
    with pytest.raises(UserError, match=r"^v.pt: conv1 activation: field 'bits' is 32 \(full precision, PACT-32\)"):
        to_golden(vgg, where="v.pt")
