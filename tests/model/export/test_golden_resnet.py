"""ResNet-20 in the integer contract: residual stages (golden_net), the residual requant (convert), the conversion."""

import dataclasses
import time

import numpy as np
import pytest
import torch

from model.data import load_digits_split
from model.errors import UserError
from model.export.convert import input_codes, residual_requant_params, to_golden
from model.export.golden import ACC_SHIFT, MULT_BITS, WIDTHS, D, IntLinear, R, layer_forward
from model.export.golden_conv import IntConv2d, conv_forward, global_sum_pool, requantize_residual
from model.export.golden_net import ConvStage, FCStage, GlobalSumPool, IntConvNetwork, ResidualStage, check_network
from model.quant.nets import ResNet20, build_model
from model.quant.pact import PACT
from model.training.loop import evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")


def random_mask(model, seed: int, widths=WIDTHS) -> None:
    """A mixed element-wise mask over ``widths`` on every quantized layer, like an IMQ ticket."""
    gen = torch.Generator().manual_seed(seed)
    for lin in model.quant_layers():
        idx = torch.randint(0, len(widths), lin.weight.shape, generator=gen)
        lin.set_bit_width(torch.tensor(widths)[idx])


def blocks(model: ResNet20):
    return [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]


def stage_codes(model: ResNet20, x: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(input codes, output codes)`` of the float model (eval mode) around the stem and every basic block."""
    out = []
    with torch.no_grad():
        h = model.input_quant(x.reshape(x.shape[0], *model.image_shape))
        u = model.input_quant.to_codes(x.reshape(x.shape[0], *model.image_shape))
        z = model.bn1(model.conv1(h))
        out.append((u.numpy(), model.act1.to_codes(z).numpy()))
        h, u = model.act1(z), model.act1.to_codes(z)
        for block in blocks(model):
            y = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(h))))) + block.shortcut(h)
            out.append((u.numpy(), block.act2.to_codes(y).numpy()))
            h, u = block.act2(y), block.act2.to_codes(y)
    return out


def check_blocks(net: IntConvNetwork, model: ResNet20, x: torch.Tensor, rate: float = 2e-3) -> None:
    """Each stage from the float model's input codes gives its output codes, up to rare one-step ties."""
    for stage, (u, ref) in zip(net.stages, stage_codes(model, x), strict=False):
        got = conv_forward(stage.conv, u) if isinstance(stage, ConvStage) else stage.forward(u)
        assert len(np.unique(ref)) > 3  # not all zeros or all clamped
        diff = np.abs(got - ref)
        assert diff.max() <= 1 and (diff != 0).mean() < rate, (stage.name, diff.max(), (diff != 0).mean())


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def test_resnet20_golden_accuracy_matches_fake_quant(digits):
    """Acceptance: a ResNet-20 on 8x8 digits, random element-wise mask, negative BN2 gammas, trained briefly:
    golden within 0.5 pp of fake-quant, every block's codes those of the float model."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model({"arch": "resnet20", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 4})
    assert isinstance(model, ResNet20)
    random_mask(model, 1)
    with torch.no_grad():  # some residual conv2 channels start (and stay) with negative gamma
        for block in blocks(model):
            block.bn2.weight[::3].neg_()
    train(model, digits, epochs=3, progress=False)
    model.eval()
    assert sum(int((b.bn2.weight < 0).sum()) for b in blocks(model)) > 0
    fq = evaluate(model, digits.x_test, digits.y_test)
    net = to_golden(model)
    assert isinstance(net, IntConvNetwork)
    kinds = [type(s) for s in net.stages]
    assert kinds == [ConvStage] + [ResidualStage] * 9 + [GlobalSumPool, FCStage]
    assert net.stages[-1].pooled == 4 and len(net.layers) == 20  # 8x8 -> 4x4 -> 2x2
    raw = net.forward(input_codes(model, digits.x_test).numpy())  # the scores, computed once
    golden = float((raw.argmax(axis=1) == digits.y_test.numpy()).mean())
    print(f"fake-quant {fq:.4f}, golden {golden:.4f}, {time.perf_counter() - start:.1f} s")
    assert fq > 0.6
    assert abs(golden - fq) <= 0.005
    check_blocks(net, model, digits.x_test)
    with torch.no_grad():
        logits = model(digits.x_test).double().numpy()
    scores = raw / 256
    err = np.abs(logits - scores)
    assert np.median(err) < 0.05 and np.quantile(err, 0.9) < 0.3


def test_residual_requant_params_precision():
    """M_r = round(g_r 2^(S - ACC_SHIFT)) exactly, below 2^MULT_BITS; the larger of M, M_r uses all 17 bits."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        gain = rng.uniform(0.0, 3.0, size=8) * 10.0 ** rng.uniform(-3, 1)
        res_gain = rng.uniform(0.1, 4.0, size=8)
        offset = rng.uniform(-20, 20, size=8)
        mult, res_mult, bias, shift = residual_requant_params(gain, res_gain, offset)
        scale = 2.0 ** (shift - ACC_SHIFT)
        assert np.array_equal(res_mult, np.round(res_gain * scale).astype(np.int64))
        assert np.all(np.abs(res_mult / scale - res_gain) <= 2.0 ** (ACC_SHIFT - 1 - shift))
        assert np.array_equal(mult, np.round(gain * 2**ACC_SHIFT / D * 2.0**shift).astype(np.int64))
        assert np.array_equal(bias, np.round(offset * 2.0**shift).astype(np.int64))
        top = max(int(mult.max()), int(res_mult.max()))
        assert top < 2**MULT_BITS and top >= 2 ** (MULT_BITS - 1) - 1  # S is the largest that fits
        # The one rounding: the fixed point equals the exact real value up to the stated precision.
        acc = rng.integers(-(2**40), 2**40, size=(4, 8, 1, 1))
        r = rng.integers(0, 16, size=(4, 8, 1, 1))
        y = requantize_residual(acc, r, mult, res_mult, bias, shift, 8)
        exact = ((acc >> ACC_SHIFT) * mult.reshape(-1, 1, 1) + (r * res_mult.reshape(-1, 1, 1) << ACC_SHIFT)
                 + bias.reshape(-1, 1, 1)) / 2.0**shift
        assert np.array_equal(y, np.clip(np.floor(exact + 0.5), 0, 255).astype(np.int64))
    with pytest.raises(UserError, match="non-negative"):
        residual_requant_params(np.ones(2), -np.ones(2), np.zeros(2))
    with pytest.raises(UserError, match="fit no shift"):
        residual_requant_params(np.ones(2), np.full(2, 2.0**40), np.zeros(2))


def test_negative_gamma_in_residual_conv_is_exact():
    """Negating channels' conv2 latent weights, BN2 gamma and running mean leaves the block's float output
    unchanged; the golden stage (complemented codes, |gain|, the shortcut's M_r untouched) is bit for bit the
    original's, and both agree with the float block."""
    torch.manual_seed(3)
    model = ResNet20(image_shape=(1, 8, 8), act_bits=4)
    # No 16- or 32-bit weights here: float32 tanh(-w) need not give the complement of tanh(w)'s wide code to the
    # last bits (a property of the latent float32 weights, not of the fold, which is exact on codes).
    random_mask(model, 2, widths=(0, 4, 8))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(1.0, 4.0)
                m.weight.uniform_(0.3, 1.0)
                m.bias.uniform_(0.0, 0.4)
            elif isinstance(m, PACT):
                m.alpha.fill_(2.0)  # codes spread over the range (the default alpha clamps little, codes stay small)
    model.eval()
    flipped = ResNet20(image_shape=(1, 8, 8), act_bits=4)
    flipped.load_state_dict(model.state_dict())
    channels = [0, 5, 9]
    with torch.no_grad():
        for block in blocks(flipped):
            block.conv2.weight[channels] *= -1
            block.bn2.weight[channels] *= -1
            block.bn2.running_mean[channels] *= -1
    flipped.eval()
    x = torch.rand(64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), flipped(x), atol=1e-4)
    a, b = to_golden(model), to_golden(flipped)
    assert (flipped.layer1[0].bn2.weight[channels] < 0).all()
    for sa, sb in zip(a.stages[1:10], b.stages[1:10], strict=True):
        for field in ("codes", "widths", "mult", "bias", "res_mult"):
            assert np.array_equal(getattr(sa.conv2, field), getattr(sb.conv2, field)), (sa.name, field)
        assert sa.conv2.shift == sb.conv2.shift
    raw = flipped.layer1[0].conv2.weight_codes().numpy()
    assert not np.array_equal(raw[channels], b.stages[1].conv2.codes[channels])  # the fold did the work
    u = input_codes(model, x).numpy()
    assert np.array_equal(a.forward(u), b.forward(u))
    check_blocks(b, flipped, x, rate=1e-2)


def small_block(rng, c_in=2, c_out=4, stride=2, bits=4):
    def conv(ci, co, s, res):
        widths = rng.choice(np.array([0, 4, 8]), size=(co, ci, 3, 3))
        codes = np.where(widths > 0, rng.integers(0, 15, size=widths.shape), 0)
        return IntConv2d(codes=codes, widths=widths, in_bits=bits, out_bits=bits, mult=rng.integers(0, 2**17, co),
                         bias=rng.integers(-(2**30), 2**30, co), shift=40, stride=s, padding=1, name="c",
                         res_mult=rng.integers(0, 2**17, co) if res else None)
    return ResidualStage(conv(c_in, c_out, stride, False), conv(c_out, c_out, 1, True), stride=stride, name="blk")


def test_residual_stage_is_conv_conv_plus_shortcut():
    """ResidualStage.forward is conv1, then conv2's residual requant with the option-A shortcut (zero channels)."""
    rng = np.random.default_rng(7)
    st = small_block(rng)
    u = rng.integers(0, 16, size=(3, 2, 7, 7))
    h = conv_forward(st.conv1, u)
    r = np.zeros((3, 4, 4, 4), dtype=np.int64)
    r[:, :2] = u[:, :, ::2, ::2]
    assert np.array_equal(st.forward(u), conv_forward(st.conv2, h, residual=r))
    fc_codes = np.full((2, 4), 7)
    fc = IntLinear(codes=fc_codes, widths=np.full((2, 4), 4), in_bits=4, out_bits=0, mult=np.ones(2, dtype=np.int64),
                   bias=np.zeros(2, dtype=np.int64), shift=1, name="fc")
    net = IntConvNetwork(4, (2, 7, 7), (st, GlobalSumPool(), FCStage(fc, pooled=16)))
    check_network(net)
    scores = net.forward(u)
    assert scores.shape == (3, 2)
    # An independent composition: the checked public ops one by one (the net's forward uses unchecked ones).
    pooled = global_sum_pool(st.forward(u), 4)
    assert np.array_equal(scores, layer_forward(fc, pooled))
    # And in plain Python integers: every weight is code 7 of 4 bits, acc = (2 R_4 7 - D) sum of the pooled codes.
    for n in range(3):
        acc = (2 * R[4] * 7 - D) * int(pooled[n].sum())
        assert scores[n].tolist() == [((acc >> ACC_SHIFT) + 1) >> 1] * 2  # M = 1, B = 0, S = 1


@pytest.mark.parametrize("change, message", [
    (lambda s: dataclasses.replace(s, conv2=dataclasses.replace(s.conv2, res_mult=None)), "field 'res_mult'"),
    (lambda s: dataclasses.replace(s, stride=1), "differs from the shortcut's 7x7"),
    (lambda s: dataclasses.replace(s, conv1=dataclasses.replace(s.conv1, in_bits=5)),
     "conv1 fields 'c_in', 'in_bits' are 2, 5"),
    (lambda s: dataclasses.replace(s, conv2=dataclasses.replace(s.conv2, stride=2)), "'stride' are 4, 4, 2"),
])
def test_check_network_names_residual_stage_and_field(change, message):
    rng = np.random.default_rng(8)
    st = small_block(rng)
    fc = IntLinear(codes=np.full((2, 4), 7), widths=np.full((2, 4), 4), in_bits=4, out_bits=0,
                   mult=np.ones(2, dtype=np.int64), bias=np.zeros(2, dtype=np.int64), shift=1, name="fc")
    net = IntConvNetwork(4, (2, 7, 7), (st, GlobalSumPool(), FCStage(fc, pooled=16)))
    check_network(net)
    bad = dataclasses.replace(net, stages=(change(st), *net.stages[1:]))
    with pytest.raises(UserError, match=f"stage 0 \\(blk\\).*{message}"):
        check_network(bad)
