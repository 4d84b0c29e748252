"""ResNet-20 and the small VGG: structure, shapes, configs, checkpoints and IMQ over conv + linear layers."""

import itertools

import pytest
import torch
from torch import nn

from model.errors import UserError
from model.methods.imq import imq_update, initial_state, rewind
from model.quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLinear
from model.quant.nets import BasicBlock, DigitsMLP, ResNet20, SmallVGG, build_model
from model.quant.pact import PACT, InputQuant
from model.runs.checkpoint import load_checkpoint, save_checkpoint

RESNET_CIFAR = {"arch": "resnet20", "image_shape": [3, 32, 32], "n_classes": 10, "act_bits": 4,
                "input_bits": 8}
TINY_VGG = {"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 3, "act_bits": 4, "input_bits": 8,
            "channels": [2, 3]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n_params(model):
    """Weights, biases and BatchNorm affine parameters; not the PACT alphas (He et al. have none)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("alpha"))


def test_resnet20_cifar10_has_the_0_27m_parameters_of_he_et_al():
    model = ResNet20()
    # conv 432 + 6 * 2304 + (4608 + 5 * 9216) + (18432 + 5 * 36864) = 267,696; fc 650; BN 2 * 688 = 1376.
    assert _n_params(model) == 269_722
    assert sum(layer.weight.numel() for layer in model.quant_layers()) == 267_696 + 640
    layers = model.quant_layers()
    assert len(layers) == 20
    assert all(isinstance(q, QuantConv2d) for q in layers[:-1]) and isinstance(layers[-1], QuantLinear)
    assert [q.name for q in layers[:4]] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert layers[-2].name == "layer3.2.conv2" and layers[-1].name == "fc"
    assert [q.out_channels for q in layers[:-1]] == [16] * 7 + [32] * 6 + [64] * 6
    assert [q.stride for q in layers[:-1] if q.stride != (1, 1)] == [(2, 2), (2, 2)]
    acts = [m for m in model.modules() if isinstance(m, PACT)]
    assert len(acts) == 19 and {a.bits for a in acts} == {4}
    assert isinstance(model.input_quant, InputQuant) and model.input_quant.bits == 8
    # 32-bit full-precision ResNet-20 weights: 0.27 M * 4 bytes, the paper's 1.02 MB (Sec. 4.3, Fig. 7).
    assert sum(q.weight.numel() for q in layers) * 4 / 2**20 == pytest.approx(1.02, abs=0.01)


def test_resnet20_for_28x28x1_and_cifar100():
    model = ResNet20(image_shape=(1, 28, 28), n_classes=100)
    assert model.quant_layers()[0].weight.shape == (16, 1, 3, 3)
    assert model.fc.weight.shape == (100, 64)
    assert _n_params(model) == 269_722 - 2 * 16 * 9 + 90 * 65


@pytest.mark.parametrize(
    ("model", "shape", "last_conv_map", "fc_in"),
    [
        (ResNet20((3, 32, 32)), (3, 32, 32), (64, 8, 8), 64),
        (ResNet20((1, 28, 28), act_bits=32), (1, 28, 28), (64, 7, 7), 64),
        (ResNet20((1, 8, 8), act_bits=8, input_bits=32), (1, 8, 8), (64, 2, 2), 64),
        (SmallVGG((1, 28, 28)), (1, 28, 28), (64, 7, 7), 64 * 3 * 3),
        (SmallVGG((3, 32, 32), act_bits=32, channels=(4, 8)), (3, 32, 32), (8, 16, 16), 8 * 8 * 8),
    ],
)
def test_output_and_feature_map_shapes(model, shape, last_conv_map, fc_in):
    seen = []
    last_conv = [q for q in model.quant_layers() if isinstance(q, QuantConv2d)][-1]
    handle = last_conv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = torch.rand(2, shape[0] * shape[1] * shape[2])
    model.eval()
    y = model(x)
    handle.remove()
    assert y.shape == (2, model.config["n_classes"])
    assert seen == [(2, *last_conv_map)]
    assert model.fc.in_features == fc_in
    assert torch.equal(model(x.view(2, *shape)), y)  # [N, C, H, W] input is accepted too


def test_vgg_default_sizes():
    model = SmallVGG()
    assert [q.name for q in model.quant_layers()] == ["conv1", "conv2", "conv3", "fc"]
    assert [tuple(q.weight.shape) for q in model.quant_layers()] == [
        (16, 1, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (10, 576)
    ]
    assert _n_params(model) == 29_178
    assert model.config == {"arch": "vgg", "image_shape": [1, 28, 28], "n_classes": 10, "act_bits": 4,
                            "input_bits": 8, "channels": [16, 32, 64]}


def test_option_a_shortcut_subsamples_and_pads_zero_channels():
    block = BasicBlock(2, 4, stride=2, act_bits=4, name="b")
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).view(2, 2, 5, 5)
    s = block.shortcut(x)
    assert s.shape == (2, 4, 3, 3)
    assert torch.equal(s[:, :2], x[:, :, ::2, ::2]) and (s[:, 2:] == 0).all()
    assert block.conv1(x).shape[1:] == (4, 3, 3)  # the main path has the same shape (ceil(5 / 2) = 3)
    same = BasicBlock(4, 4, stride=1, act_bits=4, name="c")
    assert same.shortcut(s) is s
    with pytest.raises(ValueError, match="stride"):
        BasicBlock(4, 2, stride=1, act_bits=4, name="d")


def test_block_forward_adds_the_shortcut_before_the_last_pact():
    torch.manual_seed(0)
    block = BasicBlock(2, 4, stride=2, act_bits=32, name="b").eval()
    x = torch.rand(1, 2, 4, 4)
    main = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))
    expected = torch.clamp(main + block.shortcut(x), 0, float(block.act2.alpha.detach()))
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_pact32_is_full_precision_clip():
    pact = PACT(32, alpha=1.5)
    x = torch.tensor([-1.0, 0.123456789, 1.4999, 2.0])
    assert torch.equal(pact(x), torch.tensor([0.0, 0.123456789, 1.4999, 1.5]))
    with pytest.raises(ValueError, match="full precision"):
        pact.to_codes(x)


@pytest.mark.parametrize("config", [RESNET_CIFAR, TINY_VGG])
def test_build_model_round_trips_conv_nets(config):
    torch.manual_seed(1)
    model = build_model(dict(config))
    assert model.config == config
    for i, q in enumerate(model.quant_layers()):
        pattern = (torch.arange(q.weight.numel()) + i) % 5
        q.set_bit_width(torch.tensor([0, 4, 8, 16, 32])[pattern].view_as(q.weight))
    model(torch.rand(4, x_probe(config).shape[1]))  # training mode: moves the BN running statistics
    rebuilt = build_model(dict(model.config))
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict())
    x = x_probe(config)
    model.eval()
    rebuilt.eval()
    assert torch.equal(rebuilt(x), model(x))
    assert [q.avg_bits for q in rebuilt.quant_layers()] == [q.avg_bits for q in model.quant_layers()]


def x_probe(config):
    c, h, w = config["image_shape"]
    return torch.rand(2, c * h * w, generator=torch.Generator().manual_seed(5))


def test_checkpoint_round_trip_of_a_vgg(tmp_path):
    model = build_model(dict(TINY_VGG))
    model.quant_layers()[1].set_bit_width(torch.full_like(model.quant_layers()[1].bit_width, 4))
    path = save_checkpoint(tmp_path / "vgg.pt", model, {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, SmallVGG) and meta == {"note": "x"}
    x = x_probe(TINY_VGG)
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_old_mlp_config_without_arch_still_builds():
    old = {"n_in": 64, "hidden": [16], "n_classes": 10, "act_bits": 4}
    model = build_model(old)
    assert isinstance(model, DigitsMLP) and model.config == old
    assert isinstance(build_model({**old, "arch": "mlp"}), DigitsMLP)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"arch": "resnet18"}, r"'arch'.*'mlp', 'resnet20', 'vgg'"),
        ({"arch": None}, "'arch'"),
        ({"act_bits": 16}, r"'act_bits' is 16; allowed 1\.\.8 or 32"),
        ({"act_bits": 0}, "'act_bits'"),
        ({"input_bits": True}, "'input_bits'"),
        ({"image_shape": [3, 32]}, r"'image_shape'.*\[C, H, W\]"),
        ({"image_shape": [3, 2, 32]}, r"'image_shape' is 2; allowed integers 4\.\.1024"),
        ({"image_shape": [0, 32, 32]}, "'image_shape'"),
        ({"n_classes": 1}, "'n_classes'"),
        ({"depth": 20}, r"unknown keys \['depth'\]"),
        ({"channels": [8]}, r"unknown keys \['channels'\]"),  # a ResNet has no channel list
    ],
)
def test_build_model_rejects_bad_resnet_configs(change, field):
    with pytest.raises(UserError, match=field):
        build_model({**RESNET_CIFAR, **change})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channels": []}, "'channels'"),
        ({"channels": [4, 0]}, "'channels'"),
        ({"channels": "16"}, "'channels'"),
        ({"image_shape": [1, 2, 8]}, r"'image_shape' is 2; allowed integers 4\.\.1024"),  # 2 pools need 4
    ],
)
def test_build_model_rejects_bad_vgg_configs(change, field):
    with pytest.raises(UserError, match=field):
        build_model({**TINY_VGG, **change})


def test_build_model_missing_keys_and_defaults():
    with pytest.raises(UserError, match=r"missing keys \['act_bits'\]"):
        build_model({k: v for k, v in RESNET_CIFAR.items() if k != "act_bits"})
    with pytest.raises(UserError, match="must be a dict"):
        build_model(["resnet20"])
    model = build_model({"arch": "vgg", "image_shape": [1, 28, 28], "n_classes": 10, "act_bits": 8})
    assert model.config["input_bits"] == 8 and model.config["channels"] == [16, 32, 64]


def test_gradients_reach_every_quant_layer_and_pact():
    torch.manual_seed(2)
    model = build_model(dict(TINY_VGG))
    nn.functional.cross_entropy(model(x_probe(TINY_VGG)), torch.tensor([0, 2])).backward()
    assert all(q.weight.grad is not None and q.weight.grad.abs().sum() > 0 for q in model.quant_layers())
    assert all(m.alpha.grad is not None for m in model.modules() if isinstance(m, PACT))


def test_imq_update_ranks_conv_and_linear_weights_together():
    torch.manual_seed(4)
    model = build_model(dict(TINY_VGG))
    layers = model.quant_layers()
    assert [type(q) for q in layers] == [QuantConv2d, QuantConv2d, QuantLinear]
    magnitudes = torch.cat([q.weight.detach().abs().flatten() for q in layers])
    n = magnitudes.numel()  # 18 + 54 + 3 * 12 = 108 weights
    assert n == 108
    assert imq_update(layers, rho=0.25) == 27
    widths = torch.cat([q.bit_width.flatten() for q in layers])
    smallest = torch.sort(magnitudes, stable=True).indices[:27]
    expected = torch.full((n,), 32)
    expected[smallest] = 16
    assert torch.equal(widths, expected)
    # Each of the three layers holds some of the smallest weights (the ranking is global, not per layer).
    sizes = [q.weight.numel() for q in layers]
    bounds = torch.tensor([0, sizes[0], sizes[0] + sizes[1], n])
    assert all(((smallest >= lo) & (smallest < hi)).any() for lo, hi in itertools.pairwise(bounds))


def test_rewind_keeps_the_conv_masks():
    model = build_model(dict(TINY_VGG))
    theta_0 = initial_state(model)
    assert not any(k.endswith("bit_width") for k in theta_0)
    conv = model.quant_layers()[0]
    assert isinstance(conv, QUANT_LAYER_TYPES)
    before = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.add_(1.0)
    conv.set_bit_width(torch.full_like(conv.bit_width, 8))
    # BatchNorm's running statistics are part of theta_0 too (Algorithm 1 line 5 rewinds the whole state).
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = {k: v.clone() for k, v in bn.state_dict().items()}
    with torch.no_grad():
        bn.running_mean.add_(3.0)
        bn.running_var.mul_(5.0)
        bn.num_batches_tracked.add_(7)
    rewind(model, theta_0)
    assert torch.equal(conv.weight, before) and conv.bit_width.unique().tolist() == [8]
    assert all(torch.equal(v, stats[k]) for k, v in bn.state_dict().items())
