"""QuantLinear, QuantConv2d and the DigitsMLP network built from QuantLinear."""

import itertools

import pytest
import torch
from torch.nn import functional as F

from model.errors import UserError
from model.quant.layers import QUANT_LAYER_TYPES, ElementWiseMask, QuantConv2d, QuantLinear
from model.quant.nets import DigitsMLP, build_model
from model.quant.pact import PACT, InputQuant


def test_quant_linear_starts_at_32_bits():
    layer = QuantLinear(3, 2, name="fc1")
    assert layer.bias is not None
    assert layer.bit_width.dtype == torch.int64 and layer.bit_width.shape == (2, 3)
    assert layer.bit_width.unique().tolist() == [32]
    assert layer.avg_bits == 32.0
    assert "bit_width" in layer.state_dict()


def test_quant_linear_forward_uses_the_eq7_weight():
    layer = QuantLinear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 0.0, 1.0], [0.2, 0.3, -0.4, 0.1]]))
        layer.bias.copy_(torch.tensor([0.25, -0.5]))
    layer.set_bit_width(torch.tensor([[4, 8, 32, 32], [0, 4, 16, 0]]))
    # Row 0 by hand (see test_quant): codes 12, 0, 2^31, 2^32 - 1 -> weights 0.6, -1, 2^-32 ~ 0, 1.
    assert layer.weight_codes()[0].tolist() == [12, 0, 2147483648, 4294967295]
    w_q = layer.quantized_weight()
    assert w_q[1, 0].item() == 0.0 and w_q[1, 3].item() == 0.0
    assert layer.avg_bits == (4 + 8 + 32 + 32 + 0 + 4 + 16 + 0) / 8
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(layer(x), F.linear(x, w_q, layer.bias))
    assert layer(x)[0, 0].item() == pytest.approx(0.6 - 2.0 + 3 / 4294967295 + 4.0 + 0.25, abs=1e-5)


def test_quant_linear_gradient_is_zero_for_pruned_weights():
    layer = QuantLinear(4, 3)
    widths = torch.tensor([[32, 0, 4, 8], [0, 0, 16, 4], [32, 32, 32, 0]])
    layer.set_bit_width(widths)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-0.1, 0.1, 12).view(3, 4))  # max |w| at [0, 0] and [2, 3]
        layer.weight[0, 0] = 0.5  # the single maximum, not pruned
    layer(torch.ones(1, 4)).sum().backward()
    assert (layer.weight.grad[widths == 0] == 0).all()
    assert (layer.weight.grad[widths != 0] != 0).all()


def test_set_bit_width_validates_shape_and_values():
    layer = QuantLinear(3, 2, name="fc2")
    with pytest.raises(UserError, match=r"fc2.*\(3, 2\).*\(2, 3\)"):
        layer.set_bit_width(torch.full((3, 2), 4))
    with pytest.raises(UserError, match=r"fc2\.bit_width.*\[5\].*\(0, 4, 8, 16, 32\)"):
        layer.set_bit_width(torch.tensor([[4, 5, 8], [0, 16, 32]]))
    assert layer.bit_width.unique().tolist() == [32]  # unchanged after the errors
    layer.set_bit_width([[4, 4, 8], [0, 16, 32]])
    assert layer.bit_width.tolist() == [[4, 4, 8], [0, 16, 32]]


def test_digits_mlp_structure_and_stages():
    model = DigitsMLP(n_in=64, hidden=(32, 16), n_classes=10, act_bits=3)
    layers = model.quant_layers()
    assert [(q.in_features, q.out_features, q.name) for q in layers] == [
        (64, 32, "fc1"),
        (32, 16, "fc2"),
        (16, 10, "fc3"),
    ]
    stages = model.stages()
    assert [s[0] for s in stages] == layers
    assert isinstance(stages[0][1], InputQuant)
    assert stages[1][1] is stages[0][2] and stages[2][1] is stages[1][2]
    assert all(isinstance(s[2], PACT) and s[2].bits == 3 for s in stages[:2])
    assert stages[2][2] is None
    assert model(torch.rand(5, 64)).shape == (5, 10)
    assert model.config == {"n_in": 64, "hidden": [32, 16], "n_classes": 10, "act_bits": 3}


def test_forward_is_the_composition_of_the_stages():
    torch.manual_seed(1)
    model = DigitsMLP(hidden=(8,))
    x = torch.rand(4, 64)
    y = x
    for linear, in_quant, out_quant in model.stages():
        y = linear(in_quant(y)) if in_quant is model.input_quant else linear(y)
        y = out_quant(y) if out_quant is not None else y
    assert torch.equal(model(x), y)


def test_build_model_round_trips_a_checkpoint():
    model = DigitsMLP(hidden=(16,), act_bits=5)
    model.quant_layers()[0].set_bit_width(torch.full((16, 64), 8))
    rebuilt = build_model(dict(model.config))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(3, 64)
    assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"act_bits": 9}, "act_bits"),
        ({"act_bits": 0}, "act_bits"),
        ({"hidden": []}, "hidden"),
        ({"hidden": [16, 0]}, "hidden"),
        ({"n_in": 5000}, "n_in"),
        ({"n_classes": True}, "n_classes"),
        ({"depth": 3}, "depth"),
    ],
)
def test_build_model_rejects_bad_configs(change, field):
    config = {"n_in": 64, "hidden": [16], "n_classes": 10, "act_bits": 4, **change}
    with pytest.raises(UserError, match=field):
        build_model(config)
    config = {"n_in": 64, "hidden": [16], "n_classes": 10}
    with pytest.raises(UserError, match="act_bits"):
        build_model(config)


def _dorefa_by_hand(w: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Eq. 3 and 7 element by element in float64: 0 for m = 0, else 2 round((2^m - 1) x) / (2^m - 1) - 1, the
    maximum over the kept (m != 0) elements."""
    t = torch.tanh(w)
    x = (t / (2 * t[widths != 0].abs().max()) + 0.5).double()
    out = torch.zeros(w.shape, dtype=torch.float64)
    for idx in itertools.product(*(range(d) for d in w.shape)):
        m = int(widths[idx])
        if m:
            levels = 2.0**m - 1
            out[idx] = 2 * round(float(x[idx]) * levels) / levels - 1
    return out


def test_quant_conv2d_weight_is_eq7_per_element_hand_case():
    conv = QuantConv2d(1, 1, 2, bias=True, name="c1")
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.5, -1.0], [0.0, 1.0]]]]))
        conv.bias.fill_(0.25)
    conv.set_bit_width(torch.tensor([[[[4, 8], [32, 32]]]]))
    # max|tanh| = tanh(1). 0.5: x = tanh(.5) / (2 tanh(1)) + .5 = 0.8034, round(15 x) = 12, 24/15 - 1 = 0.6.
    # -1: x = 0, code 0, weight -1. 0: x = 1/2, round((2^32 - 1) / 2) = 2^31 (half to even), 1/(2^32 - 1).
    assert conv.weight_codes().flatten().tolist() == [12, 0, 2147483648, 4294967295]
    w_q = conv.quantized_weight()
    assert w_q.flatten().tolist() == pytest.approx([0.6, -1.0, 1 / 4294967295, 1.0], abs=1e-7)
    x = torch.tensor([[[[1.0, 2.0, 0.0], [3.0, 4.0, 1.0]]]])  # [1, 1, 2, 3]: two output positions
    y = conv(x)
    assert y.shape == (1, 1, 1, 2)
    assert y[0, 0, 0, 0].item() == pytest.approx(0.6 - 2.0 + 3 / 4294967295 + 4.0 + 0.25, abs=1e-5)
    assert y[0, 0, 0, 1].item() == pytest.approx(2 * 0.6 - 0.0 + 4 / 4294967295 + 1.0 + 0.25, abs=1e-5)


def test_quant_conv2d_matches_dorefa_per_element_and_f_conv2d():
    torch.manual_seed(3)
    conv = QuantConv2d(2, 3, 3, stride=2, padding=1, bias=False, name="c2")
    widths = torch.tensor([0, 4, 8, 16, 32])[torch.randint(0, 5, conv.weight.shape)]
    conv.set_bit_width(widths)
    expected = _dorefa_by_hand(conv.weight.detach(), widths)
    assert torch.equal(conv.quantized_weight().detach(), expected.float())
    assert conv.avg_bits == widths.double().mean().item()
    # A pruned weight larger than every kept one sets no scale in the layer either (Eq. 7: pruned as in IMP).
    big = conv.weight.detach().abs().argmax()
    with torch.no_grad():
        conv.weight.view(-1)[big] = 5.0
        conv.bit_width.view(-1)[big] = 0
    expected = _dorefa_by_hand(conv.weight.detach(), conv.bit_width)
    assert torch.equal(conv.quantized_weight().detach(), expected.float())
    assert expected.abs().max().item() == 1.0  # the kept maximum reaches a full-scale code
    x = torch.rand(2, 2, 5, 4)
    y = conv(x)
    assert torch.equal(y, F.conv2d(x, conv.quantized_weight(), None, stride=2, padding=1))
    assert y.shape == (2, 3, 3, 2)
    y.sum().backward()
    assert (conv.weight.grad[widths == 0] == 0).all()
    assert (conv.weight.grad[widths != 0] != 0).any()


def test_quant_conv2d_mask_starts_at_32_and_is_validated():
    conv = QuantConv2d(3, 4, (3, 1), padding=(1, 0), bias=False)
    assert conv.name == "QuantConv2d(3->4,3x1)"
    assert conv.bias is None and conv.bit_width.shape == (4, 3, 3, 1) and conv.bit_width.dtype == torch.int64
    assert conv.bit_width.unique().tolist() == [32] and "bit_width" in conv.state_dict()
    with pytest.raises(UserError, match=r"QuantConv2d\(3->4,3x1\).*\(4, 3, 1, 3\).*\(4, 3, 3, 1\)"):
        conv.set_bit_width(torch.full((4, 3, 1, 3), 4))
    bad = torch.full((4, 3, 3, 1), 8)
    bad[1, 2, 0, 0] = 2
    with pytest.raises(UserError, match=r"bit_width.*\[2\].*\(0, 4, 8, 16, 32\)"):
        conv.set_bit_width(bad)
    with pytest.raises(UserError, match="integer"):
        conv.set_bit_width(torch.full((4, 3, 3, 1), 4.0))
    assert conv.bit_width.unique().tolist() == [32]  # unchanged after the errors
    assert "avg_bits=32" in repr(conv)


def test_both_layer_types_share_the_mask_code():
    assert QUANT_LAYER_TYPES == (QuantLinear, QuantConv2d)
    for cls in QUANT_LAYER_TYPES:
        assert issubclass(cls, ElementWiseMask)
        assert all(name not in vars(cls) for name in ("set_bit_width", "quantized_weight", "weight_codes"))
