"""The network-level integer contract of conv nets (golden_net) and the SmallVGG conversion (convert.to_golden)."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.data import load_dataset
from model.errors import UserError
from model.export import golden_net
from model.export.convert import input_codes, to_golden
from model.export.golden import ACC_SHIFT, SCORE_FRAC_BITS, WIDTHS, IntLinear, R, layer_forward, requantize
from model.export.golden_conv import ACT_SUM_BOUND, IntConv2d, conv_forward, global_sum_pool
from model.export.golden_net import (
    ConvStage,
    FCStage,
    GlobalSumPool,
    IntConvNetwork,
    check_network,
    mac_counts,
)
from model.quant.bmpq import to_bmpq
from model.quant.nets import ResNet20, SmallVGG
from model.training.loop import evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")

D = 2**32 - 1


def random_mask(model, seed: int) -> None:
    """A mixed element-wise mask over {0, 4, 8, 16, 32} on every quantized layer, like an IMQ ticket."""
    gen = torch.Generator().manual_seed(seed)
    for lin in model.quant_layers():
        idx = torch.randint(0, 5, lin.weight.shape, generator=gen)
        lin.set_bit_width(torch.tensor(WIDTHS)[idx])


def block_codes(model: SmallVGG, x: torch.Tensor) -> list[torch.Tensor]:
    """The float model's codes after each ``conv -> BN -> PACT -> max-pool`` block (eval mode)."""
    return [codes for _, codes in block_levels(model, x)]


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", train_subset=3000, test_subset=2000)


def block_levels(model: SmallVGG, x: torch.Tensor) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Per ``conv -> BN -> PACT -> max-pool`` block of the float model (eval mode): the value its PACT rounds
    (``clamp(z, 0, alpha) s / alpha``, before the max-pool, float64 of the float32) and its pooled codes."""
    mods = list(model.features)
    out = []
    with torch.no_grad():
        h = model.input_quant(x.reshape(x.shape[0], *model.image_shape))
        for i in range(0, len(mods), 4):
            conv, bn, act, pool = mods[i:i + 4]
            z = bn(conv(h))
            level = act._clip(z) * act.levels / act.alpha  # (what act.to_codes rounds)
            out.append((level.double().numpy(), pool(act.to_codes(z).double()).to(torch.int64)))
            h = pool(act(z))
    return out


def test_vgg_golden_accuracy_matches_fake_quant(fashion):
    """Acceptance: a SmallVGG with a random element-wise mask, trained briefly; golden within 0.5 pp of fake-quant."""
    torch.manual_seed(0)
    model = SmallVGG(image_shape=fashion.image_shape, act_bits=4, channels=(8, 16))
    random_mask(model, 1)
    with torch.no_grad():  # start some BatchNorm gains negative, so that trained channels of both signs export
        model.features[1].weight[::3].neg_()
        model.features[5].weight[1::4].neg_()
    train(model, fashion, epochs=2, progress=False)
    model.eval()
    assert (model.features[1].weight < 0).any() and (model.features[5].weight < 0).any()
    fq = evaluate(model, fashion.x_test, fashion.y_test)
    net = to_golden(model)
    assert isinstance(net, IntConvNetwork)
    raw = net.forward(input_codes(model, fashion.x_test).numpy())  # the scores, computed once
    golden = float((raw.argmax(axis=1) == fashion.y_test.numpy()).mean())
    print(f"fake-quant {fq:.4f}, golden {golden:.4f}")
    assert fq > 0.6
    assert abs(golden - fq) <= 0.005
    # Each block's codes agree with the float model's (from the float model's codes of the block before: no error
    # carried over), at most one step apart and only where the float value sits within 2e-4 of a half step: the
    # float32 BN against the exact fixed-point requant, whose 17-bit multiplier errs by at most 2^-17 relative
    # (1.2e-4 at code 15), its bias by less. (Where trained values land is the CPU's float arithmetic: on an AMD
    # EPYC (AVX2) on 2026-12-07 a whole channel of the second block sat at 1.500006, off by one in 2 % of its
    # pixels, so a share of differing codes is no bound to test.)
    u = input_codes(model, fashion.x_test).numpy()
    blocks = block_levels(model, fashion.x_test)
    for stage, (level, ref) in zip(net.stages, blocks):
        codes = conv_forward(stage.conv, u)  # (before the max-pool, where the rounding is)
        off = codes != np.round(level)
        assert np.abs(codes - np.round(level)).max() <= 1
        assert (np.abs(level[off] - np.floor(level[off]) - 0.5) < 2e-4).all()
        u = ref.numpy()
    # The scores of the float model's last codes are the float logits to within the score resolution, mostly.
    (fc,) = net.stages[len(blocks):]  # (SmallVGG: the blocks, then its FC on the flattened codes)
    u = layer_forward(fc.layer, u.reshape(len(u), -1))
    with torch.no_grad():
        logits = model(fashion.x_test).double().numpy()
    err = np.abs(logits - u / 2**SCORE_FRAC_BITS)
    assert np.median(err) < 0.01 and np.quantile(err, 0.99) < 0.2


def test_negative_gamma_channel_is_exact():
    """Negating a channel's latent weights, gamma and running mean leaves BN(conv) unchanged in float, and the
    folded golden layer (complemented codes, |gain|) is bit for bit the one of the original channel."""
    torch.manual_seed(3)
    model = SmallVGG(image_shape=(1, 8, 8), act_bits=4, channels=(4, 8))
    random_mask(model, 2)
    with torch.no_grad():
        for bn in (model.features[1], model.features[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    model.eval()
    flipped = SmallVGG(image_shape=(1, 8, 8), act_bits=4, channels=(4, 8))
    flipped.load_state_dict(model.state_dict())
    channels = [0, 2]
    with torch.no_grad():
        conv, bn = flipped.features[0], flipped.features[1]
        conv.weight[channels] *= -1  # DoReFa: tanh(-w) -> codes 2^m - 1 - q (no ties on random floats)
        bn.weight[channels] *= -1
        bn.running_mean[channels] *= -1
    flipped.eval()
    x = torch.rand(16, 64)
    with torch.no_grad():
        assert torch.equal(model.features[:3](model.input_quant(x.reshape(-1, 1, 8, 8))),
                           flipped.features[:3](flipped.input_quant(x.reshape(-1, 1, 8, 8))))
    a, b = to_golden(model), to_golden(flipped)
    assert (b.stages[0].conv.codes[channels] != a.stages[0].conv.codes[channels]).sum() == 0
    for field in ("codes", "widths", "mult", "bias"):
        assert np.array_equal(getattr(a.stages[0].conv, field), getattr(b.stages[0].conv, field)), field
    assert a.stages[0].conv.shift == b.stages[0].conv.shift
    u = input_codes(model, x).numpy()
    assert np.array_equal(a.forward(u), b.forward(u))
    # The flipped model's raw codes really were complemented (so the fold did the work).
    raw = flipped.features[0].weight_codes().numpy()
    assert not np.array_equal(raw[channels], a.stages[0].conv.codes[channels])


def test_bmpq_signed_vgg_blocks_match_the_float_codes():
    """A BMPQ SmallVGG (layer-wise symmetric codes: signed golden layers, ternary included), negative gammas too:
    every block's codes are the float model's up to rare one-step differences on rounding boundaries."""
    torch.manual_seed(4)
    model = to_bmpq(SmallVGG(image_shape=(1, 16, 16), act_bits=4, channels=(8, 16)))
    with torch.no_grad():
        for conv, bits in ((model.features[0], 8), (model.features[4], 2), (model.fc, 4)):
            conv.bits.fill_(bits)
        for bn in (model.features[1], model.features[5]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.05, 0.2)
            bn.weight.uniform_(0.5, 1.5)
            bn.weight[::3].neg_()
            bn.bias.uniform_(0.0, 0.5)
        model.features[2].alpha.fill_(2.0)
        model.features[6].alpha.fill_(2.0)
    model.eval()
    x = torch.rand(64, 256)
    net = to_golden(model)
    assert all(stage.conv.signed for stage in net.stages[:-1]) and net.stages[-1].layer.signed
    assert set(net.stages[1].conv.widths.flatten().tolist()) <= {0, 4}  # ternary in the 4-bit class
    u = input_codes(model, x).numpy()
    for stage, ref in zip(net.stages, block_codes(model, x)):
        u = conv_forward(stage.conv, u)
        u = u.reshape(*u.shape[:2], u.shape[2] // 2, 2, u.shape[3] // 2, 2).max(axis=(3, 5))
        assert len(np.unique(ref.numpy())) > 3  # the comparison is not all zeros or all clamped
        diff = np.abs(u - ref.numpy())
        assert diff.max() <= 1 and (diff != 0).mean() < 2e-3
        u = ref.numpy()
    with torch.no_grad():
        logits = model(x).double().numpy()
    scores = net.forward(input_codes(model, x).numpy()) / 256
    assert np.quantile(np.abs(logits - scores), 0.9) < 0.05


def test_unsupported_width_is_a_user_error():
    model = SmallVGG(image_shape=(1, 8, 8), act_bits=4, channels=(4, 8))
    model.eval()
    model.features[4].bit_width.fill_(2)  # a training width (QNN-2) the accelerator lacks
    with pytest.raises(UserError, match=r"conv2: weight widths \[2\] cannot be exported; the accelerator supports"):
        to_golden(model)


def test_pact32_is_refused_and_resnet_converts():
    with pytest.raises(UserError, match="full precision, PACT-32"):
        to_golden(SmallVGG(image_shape=(1, 8, 8), act_bits=32, channels=(4,)).eval())
    with pytest.raises(UserError, match="full precision, PACT-32"):
        to_golden(ResNet20(image_shape=(1, 8, 8), act_bits=32).eval())
    assert isinstance(to_golden(ResNet20(image_shape=(1, 8, 8)).eval()), IntConvNetwork)  # tests: test_golden_resnet


def tiny_net(rng, pooled=True, fc_bits=4):
    widths = rng.choice(np.array(WIDTHS), size=(3, 2, 3, 3))
    codes = np.where(widths > 0, rng.integers(0, 2**31, size=widths.shape) % (
        np.where(widths == 32, D, (1 << np.minimum(widths, 31)) - 1) + 1), 0)
    conv = IntConv2d(codes=codes.astype(np.int64), widths=widths.astype(np.int64), in_bits=4, out_bits=fc_bits,
                     mult=rng.integers(0, 2**17, size=3), bias=rng.integers(-(2**40), 2**40, size=3), shift=40,
                     padding=1, name="c1")
    n_in = 3 if pooled else 3 * 3 * 3
    fw = rng.choice(np.array(WIDTHS), size=(5, n_in))
    fc = IntLinear(codes=np.where(fw > 0, rng.integers(0, 16, size=fw.shape) % np.where(fw > 0, 15, 1), 0),
                   widths=fw.astype(np.int64), in_bits=fc_bits, out_bits=0, mult=rng.integers(0, 2**17, size=5),
                   bias=rng.integers(-(2**40), 2**40, size=5), shift=30, name="fc")
    if pooled:
        return IntConvNetwork(4, (2, 7, 7), (ConvStage(conv, pool=2), GlobalSumPool(), FCStage(fc, pooled=9)))
    return IntConvNetwork(4, (2, 7, 7), (ConvStage(conv, pool=2), FCStage(fc)))


def test_global_pool_and_wide_fc_are_exact():
    """conv -> max-pool -> global sum -> FC on summed (wider than 8-bit) codes, against Python integers."""
    rng = np.random.default_rng(5)
    net = tiny_net(rng)
    u = rng.integers(0, 16, size=(4, 2, 7, 7))
    codes = conv_forward(net.stages[0].conv, u)
    pooled = global_sum_pool(codes[:, :, :6, :6].reshape(4, 3, 3, 2, 3, 2).max(axis=(3, 5)), 4)
    fc = net.stages[-1].layer
    dw = np.where(fc.widths > 0, 2 * np.vectorize(lambda m: R.get(m, 0))(fc.widths) * fc.codes - D, 0)
    acc = np.array([[sum(int(a) * int(b) for a, b in zip(row, col)) for col in dw] for row in pooled])
    assert np.array_equal(net.forward(u), requantize(acc, fc.mult, fc.bias, fc.shift, 0))
    assert np.array_equal(net.predict(u.reshape(4, -1)), net.forward(u).argmax(axis=1))
    assert ACC_SHIFT == 16  # the reference above uses golden's requantize, whose rounding golden's tests pin


def test_a_batch_past_the_chunk_runs_in_chunks_with_the_same_scores(monkeypatch):
    """forward runs a batch larger than FORWARD_CHUNK a chunk at a time (the memory of 10,000 ResNet-20 images at
    once was more than 24 GB): the scores are the rows of the whole batch's, the last chunk short or not."""
    rng = np.random.default_rng(11)
    net = tiny_net(rng)
    u = rng.integers(0, 16, size=(23, 2, 7, 7))
    whole = net.forward(u)  # 23 <= 128: one chunk
    assert golden_net.FORWARD_CHUNK >= len(u)
    calls = []
    one_pass = net._forward_checked
    monkeypatch.setattr(IntConvNetwork, "_forward_checked", lambda self, x: calls.append(len(x)) or one_pass(x))
    for chunk in (1, 5, 23):
        monkeypatch.setattr(golden_net, "FORWARD_CHUNK", chunk)
        calls.clear()
        assert np.array_equal(net.forward(u), whole), chunk
        assert calls == [min(chunk, 23 - i) for i in range(0, 23, chunk)], chunk


@pytest.mark.parametrize("change, message", [
    (lambda n: dataclasses.replace(n, stages=n.stages[:-1]), "must end in one FCStage"),
    (lambda n: dataclasses.replace(n, image_shape=(3, 7, 7)), "fields 'c_in', 'in_bits' are 2, 4"),
    (lambda n: dataclasses.replace(n, input_bits=5), "fields 'c_in', 'in_bits' are 2, 4"),
    (lambda n: dataclasses.replace(n, stages=(dataclasses.replace(n.stages[0], pool=9), *n.stages[1:])),
     "field 'pool' is 9"),
    (lambda n: dataclasses.replace(n, stages=(*n.stages[:2], dataclasses.replace(n.stages[2], pooled=4))),
     "'pooled' are 3, 4, 4; the previous stage gives 3 inputs, 4-bit codes, pooled over 9"),
    (lambda n: dataclasses.replace(n, stages=(n.stages[0], FCStage(n.stages[2].layer, pooled=9))),
     "'n_in'"),
])
def test_check_network_names_stage_and_field(change, message):
    net = tiny_net(np.random.default_rng(1))
    check_network(net)
    with pytest.raises(UserError, match=message):
        change(net).forward(np.zeros((1, 2, 7, 7), dtype=np.int64))


def gap_net(channels: int) -> IntConvNetwork:
    """1x16x16 -> 1x1 conv to ``channels`` 8-bit maps -> global sum (255 * 256 < 2^16) -> FC on the sums."""
    conv = IntConv2d(codes=np.full((channels, 1, 1, 1), 15), widths=np.full((channels, 1, 1, 1), 4), in_bits=8,
                     out_bits=8, mult=np.full(channels, 1), bias=np.zeros(channels, dtype=np.int64), shift=1,
                     name="c1")
    fc = IntLinear(codes=np.full((2, channels), 15), widths=np.full((2, channels), 4), in_bits=8, out_bits=0,
                   mult=np.full(2, 1), bias=np.zeros(2, dtype=np.int64), shift=1, name="fc")
    return IntConvNetwork(8, (1, 16, 16), (ConvStage(conv), GlobalSumPool(), FCStage(fc, pooled=256)))


def test_wide_fc_inputs_are_bounded_by_act_mass():
    """The FC after global pooling: largest summed code (255 * 256) times fan-in at most ACT_SUM_BOUND."""
    assert 255 * 256 * 16 == ACT_SUM_BOUND
    check_network(gap_net(16))  # exactly at the bound
    with pytest.raises(UserError, match="stage 2 \\(fc\\): field 'input codes'.*ACT_SUM_BOUND"):
        check_network(gap_net(17))
    rng = np.random.default_rng(2)
    flat = tiny_net(rng, pooled=False)
    assert flat.forward(rng.integers(0, 16, size=(2, 2, 7, 7))).shape == (2, 5)


def test_input_codes_are_checked():
    net = tiny_net(np.random.default_rng(4))
    with pytest.raises(UserError, match="allowed \\[0, 15\\]"):
        net.forward(np.full((1, 2, 7, 7), 16))
    with pytest.raises(UserError, match="expected \\[N, 2, 7, 7\\]"):
        net.forward(np.zeros((1, 3, 7, 7), dtype=np.int64))


def torch_mac_counts(model, image_shape) -> tuple[int, int]:
    """MACs per image counted by torch itself, independently of golden_net's stage walk: each quantized layer's
    input shape comes from a forward hook; a conv's MACs are ``conv2d`` of an all-ones input padded with *ones*
    (so every tap on the padding counts, as the hardware issues it) against all-ones weights (dense) or the
    non-zero-width indicator (non-zero), summed over the output."""
    shapes = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.__setitem__(mod, args[0].shape[1:]))
             for m in model.quant_layers()]
    with torch.no_grad():
        model(torch.rand(1, int(np.prod(image_shape))))
    for h in hooks:
        h.remove()
    dense = nonzero = 0
    for m in model.quant_layers():
        nz = (m.bit_width != 0).double()
        if isinstance(m, torch.nn.Conv2d):
            p, s = m.padding[0], m.stride[0]
            ones = F.pad(torch.ones(1, *shapes[m], dtype=torch.float64), (p, p, p, p), value=1.0)
            dense += int(F.conv2d(ones, torch.ones_like(nz), stride=s).sum())
            nonzero += int(F.conv2d(ones, nz, stride=s).sum())
        else:
            dense += nz.numel()
            nonzero += int(nz.sum())
    return dense, nonzero


@pytest.mark.parametrize("arch", ["vgg", "resnet20"])
def test_mac_counts_match_torch(arch):
    """Dense and non-zero MACs per image of a masked VGG / ResNet-20 (odd map sizes, strides, padding, pools)."""
    torch.manual_seed(0)
    shape = (1, 13, 11)
    model = (SmallVGG(image_shape=shape, act_bits=4, channels=(4, 8)) if arch == "vgg"
             else ResNet20(image_shape=shape, act_bits=4))
    random_mask(model, 7)
    model.eval()
    dense, nonzero = mac_counts(to_golden(model))
    assert (dense, nonzero) == torch_mac_counts(model, shape)
    assert 0.7 * dense < nonzero < 0.9 * dense  # a fifth of the random widths are 0


def test_mac_counts_by_hand():
    """tiny_net: a 3x2x3x3 conv, padding 1, on 7x7 (49 output pixels, border taps included), then a 5x3 FC."""
    net = tiny_net(np.random.default_rng(5))
    conv, fc = net.stages[0].conv, net.stages[-1].layer
    assert mac_counts(net) == (49 * 3 * 2 * 9 + 5 * 3,
                               49 * int((conv.widths != 0).sum()) + int((fc.widths != 0).sum()))


def test_resnet20_dense_macs_on_fashion_mnist():
    """About 31 M MACs per 1x28x28 image (option-A shortcuts, padding taps included); CIFAR's 3x32x32: 40.55 M."""
    fashion = mac_counts(to_golden(ResNet20(image_shape=(1, 28, 28), act_bits=4).eval()))[0]
    assert 30e6 < fashion < 32e6
    assert mac_counts(to_golden(ResNet20(image_shape=(3, 32, 32), act_bits=4).eval()))[0] == 40_551_040
