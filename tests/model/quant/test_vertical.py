"""Vertical-layered layers (model/quant/vertical.py): codes per width (Eq. 1, 5, 6), edge layers, per-width
activation steps and BN, width switching, the per-layer widths of Eq. 12 and BN re-estimation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from model.errors import UserError
from model.quant.lsq import compensation, lsq_quantize, vertical_quantize
from model.quant.nets import DigitsMLP, ResNet20, SmallVGG
from model.quant.vertical import (
    EDGE_BITS,
    SwitchableBatchNorm,
    VerticalActQuant,
    VerticalConv2d,
    VerticalLinear,
    check_widths,
    execution_order,
    inner_layers,
    parse_widths,
    recalibrate_batchnorm,
    set_layer_widths,
    set_width,
    to_vertical,
    vertical_layers,
    width,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(widths=(2, 3, 4), compensate=True, seed=0):
    torch.manual_seed(seed)
    return to_vertical(DigitsMLP(16, (12, 12), 5, 4), widths, compensate)


def test_widths_are_checked_with_the_field_named():
    assert check_widths([4, 2, 3]) == (2, 3, 4)
    assert parse_widths("2,3,4") == (2, 3, 4) and parse_widths("5") == (5,)
    for bad in ("2,4", "1,2", "2,x", "8,9", ""):
        with pytest.raises(UserError, match="field 'widths'.*consecutive"):
            parse_widths(bad)


def test_to_vertical_replaces_layers_and_keeps_weights():
    torch.manual_seed(0)
    base = DigitsMLP(16, (12, 12), 5, 4)
    weights = [layer.weight.detach().clone() for layer in base.linears]
    model = to_vertical(base)
    layers = vertical_layers(model)
    assert [type(m) for m in layers] == [VerticalLinear] * 3
    assert [m.edge for m in layers] == [True, False, True]
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, weights))
    assert sum(isinstance(m, VerticalActQuant) for m in model.modules()) == 2
    assert model.input_quant.bits == EDGE_BITS  # the MLP's config ties its input to act_bits (4 here)
    assert model.vertical == {"widths": [2, 3, 4], "compensate": True}
    with pytest.raises(UserError, match="at least three quantized layers"):
        to_vertical(DigitsMLP(16, (12,), 5, 4))


def test_inner_weight_is_eq5_codes_with_eq6_compensation():
    model = mlp()
    layer = inner_layers(model)[0]
    top = layer.source_codes()
    assert int(top.min()) >= -8 and int(top.max()) <= 7
    for bits in (2, 3, 4):
        codes = layer.weight_codes(bits)
        assert torch.equal(codes, torch.div(top, 1 << (4 - bits), rounding_mode="floor"))
        assert int(codes.min()) >= -(1 << (bits - 1)) and int(codes.max()) <= (1 << (bits - 1)) - 1
        layer.set_bits(bits)
        z = compensation(4 - bits)
        expected = (codes.double() + z) * float(layer.step.detach()) * (1 << (4 - bits))
        assert torch.allclose(layer.quantized_weight().double(), expected, atol=1e-6)
        assert torch.allclose(layer.quantized_weight(),
                              vertical_quantize(layer.weight, layer.step, 4, bits, compensate=True))
        assert torch.allclose(layer.dequantized(bits), expected)


def test_without_compensation_the_lower_width_is_floor_only():
    layer = inner_layers(mlp(compensate=False))[0]
    layer.set_bits(2)
    expected = layer.weight_codes(2).double() * float(layer.step.detach()) * 4
    assert torch.allclose(layer.quantized_weight().double(), expected, atol=1e-6)


def test_edge_layers_are_fixed_8_bit_at_every_width():
    model = mlp()
    first = vertical_layers(model)[0]
    outs = []
    for bits in (2, 3, 4):
        set_width(model, bits)
        assert first.weight_bits == EDGE_BITS
        outs.append(first.quantized_weight().detach())
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    codes = first.source_codes()
    assert int(codes.min()) >= -128 and int(codes.max()) <= 127
    assert torch.allclose(outs[0], lsq_quantize(first.weight, first.step, 8, signed=True))
    assert torch.allclose(outs[0].double(), codes.double() * float(first.step.detach()), atol=1e-6)
    # 8 bits resolve the weight far better than 4 would: distinct code count well above 16.
    assert codes.unique().numel() > 16


def test_one_width_net_is_plain_lsq():
    model = mlp(widths=(3,), compensate=False)
    layer = inner_layers(model)[0]
    assert layer.top == 3 and layer.bits == 3
    assert torch.allclose(layer.quantized_weight(), lsq_quantize(layer.weight, layer.step, 3, signed=True))


def test_activation_step_per_width_initialised_and_trained_by_its_own_width():
    act = VerticalActQuant((2, 3, 4))
    x = torch.tensor([[0.0, 0.3, 1.5, -2.0, 3.0]])
    act.train()
    act.set_bits(2)
    y = act(x)
    assert bool(act.initialized[0]) and not bool(act.initialized[1])
    assert act.steps[0].item() == pytest.approx(3.0 / 3)  # max(a) / (2^2 - 1)
    assert act.to_codes(x).tolist() == [[0, 0, 2, 0, 3]]
    assert torch.allclose(y, torch.tensor([[0.0, 0.0, 2.0, 0.0, 3.0]]))
    act.set_bits(4)
    y = act(x)
    assert act.steps[2].item() == pytest.approx(3.0 / 15)
    y.sum().backward()
    grad = act.steps.grad
    assert grad[2] != 0 and grad[0] == 0 and grad[1] == 0
    act.eval()
    act.set_bits(3)
    act(x)
    assert not bool(act.initialized[1])  # evaluation never initialises


def test_switchable_bn_keeps_statistics_and_parameters_per_width():
    bn = SwitchableBatchNorm(torch.nn.BatchNorm1d(3), (2, 3))
    assert bn.bns[0].weight is not bn.bns[1].weight
    bn.train()
    bn.set_bits(2)
    bn(torch.randn(8, 3) + 5)
    assert bn.bns[0].running_mean.abs().min() > 0.1
    assert torch.equal(bn.bns[1].running_mean, torch.zeros(3))
    with pytest.raises(UserError, match="not one of the trained widths"):
        bn.set_bits(4)


def test_width_context_switches_the_output_and_restores():
    model = mlp()
    model.train()
    x = torch.rand(20, 16)
    for bits in (2, 3, 4):  # initialise every width's activation steps
        set_width(model, bits)
        model(x)
    model.eval()
    set_width(model, 4)
    out4 = model(x)
    with width(model, 2):
        out2 = model(x)
    assert not torch.allclose(out2, out4)
    assert torch.equal(model(x), out4)


def resnet(widths=(2, 3, 4)):
    torch.manual_seed(0)
    return to_vertical(ResNet20((1, 8, 8), 4, 4), widths)


def test_resnet_and_vgg_convert_and_run_at_every_width():
    model = resnet()
    layers = vertical_layers(model)
    assert len(layers) == 20 and layers[0].edge and layers[-1].edge and not any(m.edge for m in layers[1:-1])
    assert isinstance(layers[0], VerticalConv2d)
    assert sum(isinstance(m, SwitchableBatchNorm) for m in model.modules()) == 19
    torch.manual_seed(1)
    vgg = to_vertical(SmallVGG((1, 8, 8), 3, 4, channels=(4, 6)), (2, 3))
    x = torch.rand(3, 64)
    for net in (model, vgg):
        net.train()
        for bits in net.vertical["widths"]:
            set_width(net, bits)
            assert net(x).shape[0] == 3


def test_layer_widths_move_activations_and_bn_with_their_layers():
    model = resnet()
    inner = inner_layers(model)
    assign = [2, 4] + [3] * (len(inner) - 2)
    set_layer_widths(model, assign, torch.rand(2, 64))
    assert [m.bits for m in inner] == assign
    block = model.layer1[0]
    assert block.conv1.bits == 2 and block.conv2.bits == 4
    assert model.act1.bits == 2       # feeds layer1.0.conv1
    assert model.bn1.bits == 2        # after the 8-bit first layer: the next inner layer's width
    assert block.bn1.bits == 2        # normalises conv1
    assert block.act1.bits == 4       # feeds conv2
    assert block.bn2.bits == 4        # normalises conv2
    assert model.layer3[2].act2.bits == 3  # feeds only the last (edge) layer: the previous inner layer's width
    with pytest.raises(UserError, match="layer_bits"):
        set_layer_widths(model, [2], torch.rand(2, 64))
    with pytest.raises(UserError, match="not one of the trained widths"):
        set_layer_widths(model, [5] * len(inner), torch.rand(2, 64))


def test_execution_order_starts_with_the_first_layer():
    order = execution_order(resnet(), torch.rand(2, 64))
    assert order[0].name == "conv1" and order[-1].name == "fc"


def test_recalibration_sets_running_stats_to_the_batch_statistics():
    model = resnet()
    set_width(model, 3)
    x = torch.rand(16, 64)
    captured = {}
    model.conv1.register_forward_hook(lambda m, i, o: captured.setdefault("out", o.detach()))
    other = model.bn1.bns[0].running_mean.clone()
    count = recalibrate_batchnorm(model, [x])
    assert count == 19 and not model.training
    out = captured["out"]
    assert torch.allclose(model.bn1.bns[1].running_mean, out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.bn1.bns[1].running_var, out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    assert torch.equal(model.bn1.bns[0].running_mean, other)  # the 2-bit BN is untouched
    assert model.bn1.bns[1].momentum == 0.1  # momentum restored


def test_forward_matches_a_manual_pass():
    model = mlp()
    model.train()
    x = torch.rand(6, 16)
    for bits in (2, 3, 4):
        set_width(model, bits)
        model(x)
    model.eval()
    set_width(model, 2)
    h = model.input_quant(x)
    fc1, fc2, fc3 = model.linears
    a1, a2 = model.acts
    h = F.linear(h, fc1.quantized_weight(), fc1.bias)
    h = lsq_quantize(h, a1.steps[0], 2, signed=False)
    h = F.linear(h, fc2.quantized_weight(), fc2.bias)
    h = lsq_quantize(h, a2.steps[0], 2, signed=False)
    h = F.linear(h, fc3.quantized_weight(), fc3.bias)
    assert torch.allclose(model(x), h)


def test_float_edges_are_the_papers_full_precision_first_and_last_layers():
    torch.manual_seed(0)
    model = to_vertical(DigitsMLP(16, (12, 12), 5, 4), float_edges=True)
    first, inner, last = vertical_layers(model)
    assert model.vertical["float_edges"] is True
    assert first.weight_bits == 32 and last.weight_bits == 32 and inner.weight_bits == 4
    assert torch.equal(first.quantized_weight(), first.weight)
    assert torch.equal(last.dequantized(), last.weight.detach().double())
    with pytest.raises(UserError, match="no integer codes"):
        first.source_codes()
    assert not torch.equal(vertical_layers(mlp())[0].quantized_weight(), first.weight)  # 8-bit by default
