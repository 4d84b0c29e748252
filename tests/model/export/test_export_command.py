"""`build.py export`: a checkpoint -> its image; what cannot be exported names the checkpoint and the layer."""

import torch

from model.quant.nets import DigitsMLP, build_model
from model.runs.checkpoint import save_checkpoint
from tests.build_main import main


def test_what_cannot_be_exported_names_the_checkpoint_and_the_layer(capsys, tmp_path):
    torch.manual_seed(0)
    mlp = DigitsMLP(hidden=(8,), act_bits=4)
    with torch.no_grad():
        mlp.acts[0].alpha.fill_(1e30)  # a gain before fc2 that no requantizer holds
    vgg = build_model({"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 32})  # PACT-32
    for name, model, words in (("huge.pt", mlp, "fc2: requantization: field 'mult'"),
                               ("pact32.pt", vgg, "conv1 activation: field 'bits' is 32")):
        path = save_checkpoint(tmp_path / name, model)
        code, _, err = main(capsys, "export", "--checkpoint", path, "--out", tmp_path / "image")
        assert code == 2, err
        assert f"error: {path}: {words}" in err, err
        assert not (tmp_path / "image").exists()
