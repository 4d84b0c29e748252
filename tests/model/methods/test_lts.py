"""Lottery ticket scratcher: Eq. 1-8 by hand, freezing, the structured backward, the IDX loader, the bench."""

import gzip
import json
import math
import struct

import pytest
import torch
from torch.nn import functional as F

from model.bench.lts import plot_sparsity, run_lts_bench
from model.data import Split, load_idx_split
from model.errors import UserError
from model.methods.lts import BOUNDS_LR_RATIO, LTSScratcher, LTSTraining, train_lockstep, train_lts
from model.quant.lts import (
    LTSQuantizer,
    QuantConv2dLTS,
    QuantLinearLTS,
    build_lts_mlp,
    ema_distance,
    growth_rate,
    level_distance,
    quant_codes,
    quant_interval,
    threshold,
    to_lts,
)
from model.quant.nets import ResNet20, SmallVGG
from model.runs.train_command import LTS_BENCH

W = torch.tensor([-1.5, -0.6, -0.2, 0.1, 0.35, 0.9, 2.0])


def _quantizer(bits=2, lower=-1.0, upper=1.0):
    q = LTSQuantizer(bits)
    with torch.no_grad():
        q.lower.fill_(lower)
        q.upper.fill_(upper)
    return q


def test_eq1_to_eq3_values_by_hand():
    q = _quantizer()
    # Eq. 1: (w + 1) / 2 clipped; Eq. 2: round(3 x_n); Eq. 3: 2 (q / 3 - 0.5).
    assert torch.allclose(q.normalize(W), torch.tensor([0.0, 0.2, 0.4, 0.55, 0.675, 0.95, 1.0]))
    codes = q.to_int(W)
    assert codes.tolist() == [0, 1, 1, 2, 2, 3, 3]
    third = 1 / 3
    expected = torch.tensor([-1.0, -third, -third, third, third, 1.0, 1.0])
    assert torch.allclose(q.dequantize(codes), expected)
    assert torch.equal(q(W), q.dequantize(codes))  # forward value is exactly the de-quantized codes


def test_eq1_to_eq3_three_bits_asymmetric_bounds():
    q = _quantizer(bits=3, lower=-0.5, upper=1.5)
    # x_n = (w + 0.5) / 2 -> [0, 0, 0.15, 0.3, 0.425, 0.7, 1]; q = round(7 x_n) = [0, 0, 1, 2, 3, 5, 7].
    assert q.to_int(W).tolist() == [0, 0, 1, 2, 3, 5, 7]
    assert torch.allclose(q(W), torch.tensor([-1, -1, -5 / 7, -3 / 7, -1 / 7, 3 / 7, 1]))


def test_ste_gradients_of_w_l_u():
    q = _quantizer()
    w = W.clone().requires_grad_(True)
    q(w).sum().backward()
    # d(2 x_n - 1)/dw = 2 / (u - l) = 1 inside [l, u], 0 where Eq. 1 clips.
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    g = 1 / math.sqrt(7 * 3)  # LSQ gradient scale of l, u
    # d/dl = sum over inside of 2 (w - u) / (u - l)^2 = sum (w - 1) / 2 = -4.45 / 2.
    assert q.lower.grad.item() == pytest.approx(-2.225 * g, rel=1e-5)
    # d/du = -sum 2 (w - l) / (u - l)^2 = -sum (w + 1) / 2 = -5.55 / 2.
    assert q.upper.grad.item() == pytest.approx(-2.775 * g, rel=1e-5)


def test_init_bounds_are_three_std():
    q = LTSQuantizer(4)
    w = torch.tensor([1.0, -1.0, 1.0, -1.0])  # std (unbiased) = 2 / sqrt(3)
    q.init_bounds(w)
    assert q.lower.item() == pytest.approx(-6 / math.sqrt(3)) and q.upper.item() == pytest.approx(6 / math.sqrt(3))


@pytest.mark.parametrize("bits", [1, 9, 2.0, True])
def test_quantizer_rejects_bad_bits(bits):
    with pytest.raises(UserError, match="'bits'.*2..8"):
        LTSQuantizer(bits)


def test_level_distance_eq5_domain():
    # 2 bits, levels -1, -1/3, 1/3, 1 in the Eq. 3 domain; 2 x_n - 1 for x_n = 0.4, 0.55, 0.95, 0.
    d = level_distance(torch.tensor([0.4, 0.55, 0.95, 0.0]), 2)
    assert torch.allclose(d, torch.tensor([-0.2 + 1 / 3, 1 / 3 - 0.1, 1 - 0.9, 0.0]))


def test_eq5_ema_and_reset():
    prev = torch.tensor([0.5, 0.3, 0.1])
    dist = torch.tensor([0.2, 0.1, 0.05])
    changed = torch.tensor([False, True, False])
    out = ema_distance(prev, dist, changed, m=0.9, bits=2)
    # 0.9 * 0.5 + 0.1 * 0.2 = 0.47; reset to Delta^2 = 0.5; 0.9 * 0.1 + 0.1 * 0.05 = 0.095.
    assert torch.allclose(out, torch.tensor([0.47, 0.5, 0.095]))
    assert ema_distance(prev, dist, changed, m=0.9, bits=3)[1].item() == 0.25  # Delta^3 = 2 / 8


def test_eq6_threshold():
    assert quant_interval(2) == 0.5 and quant_interval(3) == 0.25 and quant_interval(4) == 0.125
    assert threshold(0.5, 2) == 0.25
    assert threshold(1.0, 4) == 0.125
    assert threshold(0.3, 3) == pytest.approx(0.075)


def test_eq7_eq8_and_fixed_schedules():
    # T = 10 iterations per epoch, E = 10 epochs, E_wm = 2: growth starts after iteration 20, spans 80.
    args = {"iters_per_epoch": 10, "epochs": 10, "warmup": 2}
    assert growth_rate("linear", 20, **args) == 0.0
    assert growth_rate("linear", 21, **args) == pytest.approx(1 / 80)
    assert growth_rate("linear", 60, **args) == pytest.approx(0.5)
    assert growth_rate("linear", 100, **args) == pytest.approx(1.0)
    assert growth_rate("sine", 20, **args) == 0.0
    assert growth_rate("sine", 40, **args) == pytest.approx(0.38268343)  # sin(pi / 8)
    assert growth_rate("sine", 60, **args) == pytest.approx(0.70710678)  # sin(pi / 4)
    assert growth_rate("sine", 100, **args) == pytest.approx(1.0)
    assert growth_rate("fixed", 20, c=0.3, **args) == 0.0
    assert growth_rate("fixed", 21, c=0.3, **args) == 0.3
    with pytest.raises(UserError, match="'strategy'.*'fixed', 'linear', 'sine'"):
        growth_rate("cosine", 5, **args)
    with pytest.raises(UserError, match="'warmup'"):
        growth_rate("linear", 5, iters_per_epoch=10, epochs=3, warmup=3)


def _layer(weight, bits=2, lower=-1.0, upper=1.0):
    layer = QuantLinearLTS(weight.shape[1], weight.shape[0], bits, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.quantizer.lower.fill_(lower)
        layer.quantizer.upper.fill_(upper)
    layer.lts_enabled = True
    return layer


def test_layer_ema_reset_on_level_change_and_permanent_freeze():
    layer = _layer(torch.tensor([[-0.2, 0.1, 0.9]]))  # x_n 0.4, 0.55, 0.95 -> d 2/15, 7/30, 0.1
    x = torch.ones(1, 3)
    layer(x)
    assert layer.lts_update(p=0.0, m=0.5) == 0
    assert torch.allclose(layer.eq5_distance(), torch.full((1, 3), 0.5))  # first iteration: reset to Delta
    layer(x)
    layer.lts_update(p=0.0, m=0.5)
    expected = torch.tensor([[0.25 + 1 / 15, 0.25 + 7 / 60, 0.25 + 0.05]])
    assert torch.allclose(layer.eq5_distance(), expected)
    with torch.no_grad():
        layer.weight[0, 1] = 0.5  # x_n 0.75 -> level 2 as before (no reset); weight 0 -> level 2 (reset)
        layer.weight[0, 0] = 0.3
    layer(x)
    layer.lts_update(p=0.0, m=0.5)
    assert layer.eq5_distance()[0, 0].item() == 0.5
    assert layer.eq5_distance()[0, 1].item() == pytest.approx(0.5 * (0.25 + 7 / 60) + 0.5 * (1 / 6))
    # Next D: weight 0 (x_n 0.65, d 1/30) 0.25 + 1/60 = 0.2667; weight 1: 0.5 * 0.3667 + 0.5 / 6 = 0.2167;
    # weight 2: 0.5 * 0.325 + 0.05 = 0.2125. p = 0.45 -> t = 0.225 freezes weights 1 and 2 only.
    layer(x)
    assert layer.lts_update(p=0.45, m=0.5) == 2
    assert layer.eq5_distance()[0, 0].item() == pytest.approx(0.25 + 1 / 60)
    assert layer.lts_frozen.tolist() == [[False, True, True]]
    with torch.no_grad():
        layer.weight.fill_(-0.99)  # every level changes, p drops to 0: frozen weights stay frozen
    layer(x)
    layer.lts_update(p=0.0, m=0.5)
    assert layer.lts_frozen.tolist() == [[False, True, True]]
    assert layer.eq5_distance()[0, 0].item() == 0.5
    layer(x)  # every D below t: only the one unfrozen weight counts as newly frozen
    assert layer.lts_update(p=0.99, m=0.5) == 1 and layer.lts_frozen.tolist() == [[True, True, True]]
    assert layer._plan.kind == "none" and layer.n_frozen == 3


def small_layer(seed):
    """A 2-bit 16 -> 8 layer with small random weights, its bounds set, and a batch of 32 to train it on."""
    gen = torch.Generator().manual_seed(seed)
    layer = QuantLinearLTS(16, 8, bits=2)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 16, generator=gen) * 0.05)
        layer.bias.zero_()
        layer.quantizer.init_bounds(layer.weight)
    return layer, torch.randn(32, 16, generator=gen), torch.randint(0, 8, (32,), generator=gen)


def test_frozen_weights_stay_exact_under_sgd_momentum_and_weight_decay():
    layer, x, y = small_layer(0)
    scratcher = LTSScratcher(layer, iters_per_epoch=1, epochs=20, warmup=0, strategy="fixed", c=0.4, m=0.0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    snapshots = {}
    for _ in range(12):
        loss = F.cross_entropy(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scratcher.after_step()
        for idx in layer.lts_frozen.view(-1).nonzero().squeeze(1).tolist():
            snapshots.setdefault(idx, layer.weight.view(-1)[idx].item())
    frozen = layer.lts_frozen.view(-1)
    assert 0 < int(frozen.sum()) < frozen.numel()
    for idx, value in snapshots.items():
        assert layer.weight.view(-1)[idx].item() == value  # bit for bit, momentum and decay notwithstanding
    assert torch.equal(layer.weight.view(-1)[frozen], layer.lts_frozen_value.view(-1)[frozen])
    assert layer.weight.grad.view(-1)[frozen].abs().max().item() == 0.0


@pytest.mark.parametrize("frozen_fraction, kind", [(0.5, "dense"), (0.9, "sampled"), (1.0, "none")])
def test_structured_backward_matches_dense_on_unfrozen_and_is_zero_on_frozen(frozen_fraction, kind):
    gen = torch.Generator().manual_seed(1)
    layer = QuantLinearLTS(40, 30, bits=3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 40, generator=gen) * 0.1)
        layer.bias.copy_(torch.randn(30, generator=gen) * 0.1)
        layer.quantizer.init_bounds(layer.weight)
        layer.lts_frozen.copy_(torch.rand(30, 40, generator=gen) < frozen_fraction)
    layer.lts_enabled = True
    layer._replan()
    assert layer._plan.kind == kind
    x = torch.randn(64, 40, generator=gen, requires_grad=True)
    upstream = torch.randn(64, 30, generator=gen)

    # Reference: plain autograd, dense dL/dw_bar, then masked to the unfrozen positions and pushed through the
    # quantizer's own (autograd) STE backward into w, l and u.
    ref_q = LTSQuantizer(3)
    ref_q.load_state_dict(layer.quantizer.state_dict())
    ref_w = layer.weight.detach().clone().requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    w_bar = ref_q(ref_w)
    w_bar_leaf = w_bar.detach().requires_grad_(True)
    (F.linear(ref_x, w_bar_leaf, layer.bias.detach()) * upstream).sum().backward()
    live = ~layer.lts_frozen
    w_bar.backward(torch.where(live, w_bar_leaf.grad, 0.0))

    (layer(x) * upstream).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)  # dX is dense, untouched by LTS
    assert torch.allclose(layer.bias.grad, upstream.sum(0), atol=1e-5)
    if kind == "none":  # nothing left to train: no weight gradient at all, none for l and u
        assert layer.weight.grad is None and layer.quantizer.lower.grad is None
        return
    assert ref_w.grad[live].abs().sum() > 0
    assert torch.allclose(layer.weight.grad, ref_w.grad, atol=1e-5)
    assert layer.weight.grad[~live].abs().max().item() == 0.0
    assert layer.quantizer.lower.grad.item() == pytest.approx(ref_q.lower.grad.item(), rel=1e-4, abs=1e-6)
    assert layer.quantizer.upper.grad.item() == pytest.approx(ref_q.upper.grad.item(), rel=1e-4, abs=1e-6)


def test_plain_qat_backward_equals_autograd():
    gen = torch.Generator().manual_seed(3)
    layer = QuantLinearLTS(12, 5, bits=4)  # lts_enabled false: the baseline's path
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 12, generator=gen) * 0.2)
        layer.bias.zero_()
    ref_q = LTSQuantizer(4)
    ref_q.load_state_dict(layer.quantizer.state_dict())
    ref_w = layer.weight.detach().clone().requires_grad_(True)
    x, up = torch.randn(6, 12, generator=gen), torch.randn(6, 5, generator=gen)
    (F.linear(x, ref_q(ref_w)) * up).sum().backward()
    (layer(x) * up).sum().backward()
    assert torch.allclose(layer.weight.grad, ref_w.grad, atol=1e-5)
    assert layer.quantizer.upper.grad.item() == pytest.approx(ref_q.upper.grad.item(), rel=1e-4)
    assert torch.equal(layer.eval()(x), F.linear(x, ref_q(ref_w), layer.bias))


def test_sampled_pattern_reused_and_masked_after_more_freezing():
    gen = torch.Generator().manual_seed(2)
    layer = QuantLinearLTS(50, 20, bits=2)
    with torch.no_grad():
        layer.lts_frozen.copy_(torch.rand(20, 50, generator=gen) < 0.85)
    layer.lts_enabled = True
    layer._replan()
    csr = layer._plan.csr
    live = (~layer.lts_frozen).nonzero()
    with torch.no_grad():
        layer.lts_frozen[live[0, 0], live[0, 1]] = True  # one more: pattern reused, position masked
    layer._replan()
    assert layer._plan.kind == "sampled" and layer._plan.csr is csr
    x = torch.randn(8, 50, generator=gen)
    layer(x).sum().backward()
    assert layer.weight.grad[live[0, 0], live[0, 1]].item() == 0.0
    assert layer.weight.grad[layer.lts_frozen].abs().max().item() == 0.0
    assert (layer.weight.grad[~layer.lts_frozen] != 0).float().mean().item() > 0.5


def test_compact_bookkeeping_of_a_sampled_layer_equals_the_dense_one(monkeypatch):
    import model.quant.lts as lts_module

    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(30, 40, generator=gen) * 0.2
    steps = [torch.randn(30, 40, generator=gen) * 0.004 for _ in range(40)]
    x = torch.randn(4, 40, generator=gen)

    def run(sampled_below):
        monkeypatch.setattr(lts_module, "SAMPLED_BELOW", sampled_below)
        layer = QuantLinearLTS(40, 30, bits=2)
        with torch.no_grad():
            layer.weight.copy_(w0)
            layer.quantizer.init_bounds(layer.weight)
        layer.lts_enabled = True
        frozen, kinds = [], set()
        for i, step in enumerate(steps):
            layer(x)
            layer.lts_update(p=i / 70, m=0.8)
            kinds.add(layer._plan.kind)
            frozen.append(layer.lts_frozen.clone())
            with torch.no_grad():
                layer.weight.add_(step)  # frozen weights move too here: only the bookkeeping is compared
        if layer._compact is not None:
            live = layer._compact[0][layer._compact[3].bool()]
            distance = layer._compact[1][layer._compact[3].bool()]
        else:
            live = (~layer.lts_frozen).view(-1).nonzero().squeeze(1)
            distance = layer.lts_distance.view(-1)[live]
        return frozen, kinds, live, distance

    dense = run(0.0)   # never sampled: the dense bookkeeping throughout
    compact = run(1.0)  # sampled (compact bookkeeping) from the first freeze on
    assert "sampled" in compact[1] and "sampled" not in dense[1]
    assert all(torch.equal(a, b) for a, b in zip(dense[0], compact[0], strict=True))
    assert 0 < int(dense[0][-1].sum()) < dense[0][-1].numel()
    assert torch.equal(dense[2], compact[2]) and torch.equal(dense[3], compact[3])


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("sampled_below", [0.0, 1.0])
def test_layer_freezes_as_the_pure_eq5_eq6_reference(monkeypatch, bits, sampled_below):
    """The layer's in-place bookkeeping (Eq. 5 from the forward's z and q, Eq. 6 as keep * [D >= t], compact
    state while sampled) freezes exactly the weights that level_distance / ema_distance / threshold freeze,
    up to float rounding at the threshold, and keeps the same D for the weights still unfrozen (eq5_distance
    reports NaN for frozen ones)."""
    import model.quant.lts as lts_module

    monkeypatch.setattr(lts_module, "SAMPLED_BELOW", sampled_below)
    gen = torch.Generator().manual_seed(11 + bits)
    layer = QuantLinearLTS(40, 30, bits=bits)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 40, generator=gen) * 0.2)
        layer.quantizer.init_bounds(layer.weight)
    layer.lts_enabled, layer.lts_m = True, 0.8
    x = torch.randn(4, 40, generator=gen)
    d = torch.full((30, 40), quant_interval(bits))
    level, frozen, ties = None, torch.zeros(30, 40, dtype=torch.bool), 0
    for i in range(60):
        x_n = layer.quantizer.normalize(layer.weight).detach()
        q = quant_codes(x_n, bits)
        changed = torch.ones_like(frozen) if level is None else q != level
        d, level = ema_distance(d, level_distance(x_n, bits, q), changed, 0.8, bits), q
        t = threshold(i / 150, bits)
        newly = (d < t) & ~frozen
        layer(x)
        n_new = layer.lts_update(p=i / 150, m=0.8)
        differ = (frozen | newly) != layer.lts_frozen
        assert ((d[differ] - t).abs() < 1e-5).all()  # a disagreement only where D sits on t
        ties += int(differ.sum())
        frozen = layer.lts_frozen.clone()
        assert n_new == int(newly.sum()) or differ.any()
        live = ~frozen
        assert torch.allclose(layer.eq5_distance()[live], d[live], rtol=0, atol=1e-6)
        assert layer.eq5_distance()[frozen].isnan().all()
        with torch.no_grad():
            layer.weight.add_(torch.randn(30, 40, generator=gen) * 0.004)
            layer.quantizer.lower.sub_(1e-3)  # the bounds move: frozen weights' levels may change too
    assert ties == 0 and 0 < int(frozen.sum()) < frozen.numel()
    if sampled_below:
        assert layer._plan.kind == "sampled"


@pytest.mark.parametrize("sampled_below", [0.0, 1.0])
def test_eq5_and_eq6_in_the_forward_equal_them_in_the_update(monkeypatch, sampled_below):
    """Eq. 5 in the forward (lts_m set) and Eq. 6 in the forward too (lts_t set, as LTSScratcher drives the
    layers) take exactly the decisions of lts_update after the forward, dense and sampled."""
    import model.quant.lts as lts_module

    monkeypatch.setattr(lts_module, "SAMPLED_BELOW", sampled_below)
    gen = torch.Generator().manual_seed(8)
    w0 = torch.randn(12, 20, generator=gen) * 0.2
    x = torch.randn(4, 20, generator=gen)
    layers = []
    for m, in_forward in ((None, False), (0.8, False), (0.8, True)):
        layer = QuantLinearLTS(20, 12, bits=3)
        with torch.no_grad():
            layer.weight.copy_(w0)
            layer.quantizer.init_bounds(layer.weight)
        layer.lts_enabled, layer.lts_m = True, m
        layers.append((layer, in_forward))
    counts = [[], [], []]
    for i in range(30):
        for (layer, in_forward), count in zip(layers, counts):
            if in_forward:
                layer.lts_t = threshold(i / 40, 3) / (2 / 7)  # in the units of D (the Eq. 3 step 2 / 7)
                layer(x)
                count.append(layer.pop_forward_freezes()[0])
                assert layer.lts_update(p=i / 40, m=0.8) == 0  # done in the forward already
            else:
                layer(x)
                count.append(layer.lts_update(p=i / 40, m=0.8))
            with torch.no_grad():
                layer.weight.add_(torch.sin(torch.arange(240.0) * (i + 1)).view(12, 20) * 0.01)
    (a, _), (b, _), (c, _) = layers
    assert counts[0] == counts[1] == counts[2] and sum(counts[0]) == int(a.lts_frozen.sum())
    for other in (b, c):
        assert torch.equal(a.lts_frozen, other.lts_frozen)
        torch.testing.assert_close(a.eq5_distance(), other.eq5_distance(), rtol=0, atol=0, equal_nan=True)
    assert 0 < int(a.lts_frozen.sum()) < a.lts_frozen.numel()
    assert (c._plan.kind == "sampled") == bool(sampled_below)


@pytest.mark.parametrize("sampled_below", [0.0, 1.0])
def test_a_weight_frozen_at_iteration_i_keeps_its_value_of_that_forward(monkeypatch, sampled_below):
    """Driven as LTSTraining drives it (forward, backward, before_step, SGD step, after_step), a weight whose
    D^i falls below t at iteration i gets a zero gradient at iteration i (Sec. III-C: frozen means its gradient
    is zeroed) and keeps, bit for bit, the value that iteration's forward used, for the rest of training."""
    import model.quant.lts as lts_module

    monkeypatch.setattr(lts_module, "SAMPLED_BELOW", sampled_below)
    layer, x, y = small_layer(1)
    latent, others = [layer.weight], [q for q in layer.parameters() if q is not layer.weight]
    opt = torch.optim.SGD([{"params": latent, "weight_decay": 0.0}, {"params": others}], lr=0.5, momentum=0.9)
    layer.weight_decay = 5e-4
    scratcher = LTSScratcher(layer, iters_per_epoch=2, epochs=15, warmup=1, strategy="linear", m=0.5,
                             optimizer=opt)
    assert layer.lts_m == 0.5  # Eq. 5's momentum reaches the layer as given
    frozen_at = {}
    kinds = set()
    for i in range(1, 31):
        before = layer.weight.detach().clone()
        was = layer.lts_frozen.clone()
        assert layer.lts_t == pytest.approx(threshold(scratcher.rate(i), 2) / (2 / 3))
        loss = F.cross_entropy(layer(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        newly = layer.lts_frozen & ~was
        if newly.any() and layer.weight.grad is not None:
            assert layer.weight.grad[newly].abs().max().item() == 0.0  # no gradient in its own iteration
        scratcher.before_step()
        opt.step()
        scratcher.after_step()
        kinds.add(layer._plan.kind)
        for idx in newly.view(-1).nonzero().squeeze(1).tolist():
            frozen_at[idx] = before.view(-1)[idx].item()
        for idx, value in frozen_at.items():
            assert layer.weight.view(-1)[idx].item() == value
    assert 0 < len(frozen_at) == int(layer.lts_frozen.sum())
    assert ("sampled" in kinds) == bool(sampled_below)


def test_training_forward_is_the_quantizer_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    for bits in (2, 3, 5, 8):
        layer = QuantLinearLTS(30, 20, bits)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(20, 30, generator=gen) * 0.3)
        x = torch.randn(4, 30, generator=gen)
        expected = F.linear(x, layer.quantizer(layer.weight), layer.bias)
        assert torch.equal(layer.train()(x), expected)  # the level table gives dequantize_weight's values
        _z, q = layer._last
        assert torch.equal(q.to(torch.int64), layer.quantizer.to_int(layer.weight))


def _exact_run(layer, x, y, steps, scratcher_kwargs, weight_decay=5e-4):
    """SGD with no decay in the optimizer, the layers decaying their unfrozen weights, as train_lts sets it up (the
    bounds here at the weights' rate; what is checked is the freezing, not the bounds' rate)."""
    latent = [layer.weight]
    others = [q for q in layer.parameters() if q is not layer.weight]
    opt = torch.optim.SGD([{"params": latent, "weight_decay": 0.0}, {"params": others}], lr=0.5, momentum=0.9)
    layer.weight_decay = weight_decay
    scratcher = LTSScratcher(layer, optimizer=opt, **scratcher_kwargs)
    snapshots = {}
    for _ in range(steps):
        loss = F.cross_entropy(layer(x).flatten(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scratcher.after_step()
        for idx in layer.lts_frozen.view(-1).nonzero().squeeze(1).tolist():
            snapshots.setdefault(idx, layer.weight.view(-1)[idx].item())
    return snapshots


def test_frozen_weights_never_move_with_the_optimizer_given_and_nothing_restored():
    layer, x, y = small_layer(0)
    kwargs = {"iters_per_epoch": 1, "epochs": 20, "warmup": 0, "strategy": "fixed", "c": 0.4, "m": 0.0}
    layer.restore_frozen_ = None  # would raise if called: the optimizer cannot move frozen weights
    snapshots = _exact_run(layer, x, y, 12, kwargs)
    frozen = layer.lts_frozen.view(-1)
    assert 0 < int(frozen.sum()) < frozen.numel() and not layer.lts_restore
    for idx, value in snapshots.items():
        assert layer.weight.view(-1)[idx].item() == value  # bit for bit, momentum and decay notwithstanding
    assert layer.lts_frozen_value.abs().sum() == 0  # not kept: nothing to restore


def test_layer_weight_decay_is_sgds_at_unfrozen_positions():
    gen = torch.Generator().manual_seed(5)
    layer = QuantLinearLTS(10, 6, bits=3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, 10, generator=gen) * 0.2)
        layer.lts_frozen.copy_(torch.rand(6, 10, generator=gen) < 0.4)
    x = torch.randn(5, 10, generator=gen)
    layer(x).sum().backward()
    plain = layer.weight.grad.clone()
    layer.weight.grad = None
    layer.weight_decay = 0.01
    layer(x).sum().backward()
    assert torch.allclose(layer.weight.grad, plain + 0.01 * layer.weight.detach(), rtol=0, atol=1e-7)
    layer.lts_enabled = True
    layer._replan()
    layer.weight.grad = None
    layer(x).sum().backward()
    live = ~layer.lts_frozen
    assert torch.allclose(layer.weight.grad[live], (plain + 0.01 * layer.weight.detach())[live], atol=1e-7)
    assert layer.weight.grad[~live].abs().max().item() == 0.0


def test_scratcher_refuses_an_optimizer_that_decays_the_latent_weights():
    layer = QuantLinearLTS(4, 3, bits=2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    with pytest.raises(UserError, match="decays the LTS layers' latent weights"):
        LTSScratcher(layer, 1, 2, 0, optimizer=opt)


@pytest.mark.parametrize("frozen_fraction, kind", [(0.0, "full"), (0.6, "dense"), (1.0, "none")])
def test_conv_backward_matches_autograd_on_unfrozen_and_skips_frozen(frozen_fraction, kind):
    gen = torch.Generator().manual_seed(6)
    layer = QuantConv2dLTS(3, 5, 3, bits=2, stride=2, padding=1, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 3, 3, 3, generator=gen) * 0.2)
        layer.bias.copy_(torch.randn(5, generator=gen) * 0.1)
        layer.quantizer.init_bounds(layer.weight)
        layer.lts_frozen.copy_(torch.rand(5, 3, 3, 3, generator=gen) < frozen_fraction)
    layer.lts_enabled = True
    layer._replan()
    x = torch.randn(4, 3, 9, 9, generator=gen, requires_grad=True)
    upstream = torch.randn(4, 5, 5, 5, generator=gen)
    ref_q = LTSQuantizer(2)
    ref_q.load_state_dict(layer.quantizer.state_dict())
    ref_w = layer.weight.detach().clone().requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    w_bar = ref_q(ref_w)
    w_bar_leaf = w_bar.detach().requires_grad_(True)
    out = F.conv2d(ref_x, w_bar_leaf, layer.bias.detach(), stride=2, padding=1)
    (out * upstream).sum().backward()
    live = ~layer.lts_frozen
    w_bar.backward(torch.where(live, w_bar_leaf.grad, 0.0))

    got = layer(x)
    assert torch.equal(got, out.detach())  # the forward is the quantizer's conv, bit for bit
    (got * upstream).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)
    assert torch.allclose(layer.bias.grad, upstream.sum((0, 2, 3)), atol=1e-5)
    if kind == "none":
        assert layer.weight.grad is None and layer.quantizer.lower.grad is None
        cached = layer._frozen_w_bar[1]
        layer(x)
        assert layer._frozen_w_bar[1] is cached  # nothing trains: w_bar computed once
        return
    assert torch.allclose(layer.weight.grad, ref_w.grad, atol=1e-5)
    if kind == "dense":
        assert layer.weight.grad[~live].abs().max().item() == 0.0
    assert layer.quantizer.lower.grad.item() == pytest.approx(ref_q.lower.grad.item(), rel=1e-4, abs=1e-6)
    assert torch.equal(layer.eval()(x), F.conv2d(x, ref_q(layer.weight), layer.bias, stride=2, padding=1))


@pytest.mark.parametrize("net", [
    lambda: ResNet20((1, 12, 12), n_classes=4, act_bits=4),
    lambda: SmallVGG((1, 12, 12), n_classes=4, act_bits=4, channels=(4, 8)),
])
def test_conv_nets_train_under_lts(net):
    torch.manual_seed(0)
    model = to_lts(net(), bits=3)
    convs = [m for m in model.modules() if isinstance(m, QuantConv2dLTS)]
    assert convs and all(c.bits == 3 for c in convs) and model.config["act_bits"] == 3
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(48, 144, generator=gen), torch.randint(0, 4, (48,), generator=gen)
    split = Split(x, y, x[:16], y[:16], "tiny", image_shape=(1, 12, 12))
    result = train_lts(model, split, epochs=3, bits=3, warmup=1, batch_size=16, progress=False)
    assert result.sparsity_history[0] == 0 and result.sparsity_history[-1] > 0.3
    assert result.train_time >= result.backward_time > 0


# ---------------------------------------------------------------------------------------------------------
# IDX loader


def _idx_bytes(array_bytes: bytes, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}i", *shape) + array_bytes


def _write_idx_folder(root, n_train=3, n_test=2, rows=2, cols=3, gz_train=True, gz_test=False):
    root.mkdir(exist_ok=True)
    for prefix, n, gz in (("train", n_train, gz_train), ("t10k", n_test, gz_test)):
        pixels = bytes((7 * i + (0 if prefix == "train" else 100)) % 256 for i in range(n * rows * cols))
        labels = bytes(i % 10 for i in range(n))
        for stem, data in (
            (f"{prefix}-images-idx3-ubyte", _idx_bytes(pixels, (n, rows, cols))),
            (f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, (n,))),
        ):
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)
    return root


def test_idx_loader_gz_and_plain(tmp_path):
    split = load_idx_split(_write_idx_folder(tmp_path / "d"), name="tiny")
    assert split.name == "tiny"
    assert split.x_train.shape == (3, 6) and split.x_test.shape == (2, 6)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.x_train[0].tolist() == pytest.approx([0, 7 / 255, 14 / 255, 21 / 255, 28 / 255, 35 / 255])
    assert split.x_test[0, 0].item() == pytest.approx(100 / 255)
    assert split.y_train.tolist() == [0, 1, 2] and split.y_test.tolist() == [0, 1]
    sub = load_idx_split(tmp_path / "d", train_subset=2, test_subset=1)
    assert sub.x_train.shape == (2, 6) and sub.y_test.tolist() == [0]


def test_idx_loader_errors(tmp_path):
    with pytest.raises(UserError, match=r"nowhere.*does not exist.*train-images-idx3-ubyte\[\.gz\]"):
        load_idx_split(tmp_path / "nowhere")
    root = _write_idx_folder(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match=r"missing 't10k-labels-idx1-ubyte'.*expected the files"):
        load_idx_split(root)
    root = _write_idx_folder(tmp_path / "bad", gz_test=False)
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01garbage")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: not an unsigned-byte IDX file with 3"):
        load_idx_split(root)
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(b"\x00" * 5, (1, 2, 3)))
    with pytest.raises(UserError, match=r"header says shape \(1, 2, 3\)"):
        load_idx_split(root)
    root = _write_idx_folder(tmp_path / "count", n_test=2)
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(b"\x01", (1,)))
    with pytest.raises(UserError, match="has 2 images but .* has 1 labels"):
        load_idx_split(root)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read IDX file"):
        load_idx_split(root)
    with pytest.raises(UserError, match="'train_subset'.*integer >= 1"):
        load_idx_split(root, train_subset=0)


# ---------------------------------------------------------------------------------------------------------
# Training loop and bench


def test_train_lts_freezes_and_reports(tmp_path):
    split = load_idx_split(_write_idx_folder(tmp_path / "d", n_train=96, n_test=32, rows=28, cols=28))
    results = {}
    for mode in ("baseline", "lts"):
        model = build_lts_mlp(2, hidden=(32,), seed=0)
        results[mode] = train_lts(model, split, epochs=4, bits=2, mode=mode, warmup=1, batch_size=32,
                                  progress=False)
    base, lts = results["baseline"], results["lts"]
    assert base.avg_wgs == 0.0 and base.sparsity_history == [0.0] * 4
    assert len(lts.wgs) == 12 and lts.wgs[:4] == [0.0] * 4  # warm-up epoch (3 iterations) + first growth
    assert lts.sparsity_history == sorted(lts.sparsity_history) and lts.sparsity_history[-1] > 0.3
    assert lts.avg_wgs == pytest.approx(sum(lts.wgs) / 12) and lts.bp_flops_reduction == lts.avg_wgs / 2
    assert lts.backward_time > 0 and 0 <= lts.accuracy <= 1
    with pytest.raises(UserError, match="'bits' is 3"):
        train_lts(build_lts_mlp(2, hidden=(8,)), split, epochs=2, bits=3, progress=False)
    with pytest.raises(UserError, match="'mode'.*'lts', 'baseline'"):
        train_lts(build_lts_mlp(2, hidden=(8,)), split, epochs=2, bits=2, mode="qat", progress=False)


@pytest.mark.parametrize("mode", ["baseline", "lts"])
def test_the_bounds_train_at_their_own_rate_in_both_modes(tmp_path, mode):
    split = load_idx_split(_write_idx_folder(tmp_path / "d", n_train=96, n_test=32, rows=28, cols=28))
    bounds = {}
    for ratio in (0.0, 0.5):
        model = build_lts_mlp(2, hidden=(16,), seed=0)
        run = LTSTraining(model, split, 2, 2, mode=mode, warmup=1, batch_size=32, lr=0.05, bounds_lr_ratio=ratio)
        quantizers = [m for m in model.modules() if isinstance(m, LTSQuantizer)]
        group = run.optimizer.param_groups[-1]
        assert group["lr"] == 0.05 * ratio and group["weight_decay"] == 0.0
        assert {id(p) for p in group["params"]} == {id(p) for q in quantizers for p in (q.lower, q.upper)}
        before = [(float(q.lower.detach()), float(q.upper.detach())) for q in quantizers]
        latent = model.linears[0].weight.detach().clone()
        train_lockstep([run], progress=False)
        bounds[ratio] = [(float(q.lower.detach()), float(q.upper.detach())) for q in quantizers]
        assert not torch.equal(model.linears[0].weight.detach(), latent)  # the weights trained either way
        if ratio == 0.0:
            assert bounds[ratio] == before  # at rate 0 the bounds stay where init_bounds put them
    assert bounds[0.5] != bounds[0.0]
    for bad in (-1.0, float("nan"), 2.0, "0.1"):
        with pytest.raises(UserError, match="'bounds_lr_ratio'.*numbers in \\[0, 1\\]"):
            LTSTraining(build_lts_mlp(2, hidden=(8,)), split, 2, 2, bounds_lr_ratio=bad)
    assert BOUNDS_LR_RATIO == LTS_BENCH["bounds_lr_ratio"]  # train --method lts's default is the bench's


def test_lockstep_runs_give_the_results_of_runs_on_their_own(tmp_path):
    split = load_idx_split(_write_idx_folder(tmp_path / "d", n_train=96, n_test=32, rows=28, cols=28))
    alone = {mode: train_lts(build_lts_mlp(2, hidden=(16,), seed=0), split, epochs=3, bits=2, mode=mode, warmup=1,
                             batch_size=32, progress=False) for mode in ("baseline", "lts")}
    runs = {mode: LTSTraining(build_lts_mlp(2, hidden=(16,), seed=0), split, 3, 2, mode=mode, warmup=1,
                              batch_size=32) for mode in ("baseline", "lts")}
    train_lockstep(list(runs.values()), progress=False)
    for mode, res in alone.items():
        got = runs[mode].result
        assert (got.losses, got.wgs, got.sparsity_history, got.accuracy) == (
            res.losses, res.wgs, res.sparsity_history, res.accuracy)
        assert got.train_time >= got.backward_time > 0
    with pytest.raises(ValueError, match="same data, epochs and batch size"):
        train_lockstep([runs["lts"], LTSTraining(build_lts_mlp(2, hidden=(16,)), split, 2, 2)], progress=False)


def test_bench_rows_json_and_plot(tmp_path):
    root = _write_idx_folder(tmp_path / "d", n_train=64, n_test=16, rows=28, cols=28)
    out = tmp_path / "bench" / "lts.json"
    rows = run_lts_bench(out, epochs=2, warmup=1, bits_list=(2,), root=root, png_path=tmp_path / "s.png",
                         progress=False)
    assert json.loads(out.read_text()) == rows
    assert [(r["bits"], r["mode"]) for r in rows] == [(2, "baseline"), (2, "lts")]
    assert set(rows[0]) == {"bits", "mode", "accuracy", "avg_wgs", "bp_flops_reduction", "backward_time_ratio",
                            "total_time_ratio", "seeds", "accuracies"}
    assert rows[0]["backward_time_ratio"] == pytest.approx(1.0) and rows[0]["total_time_ratio"] == pytest.approx(1.0)
    assert rows[1]["backward_time_ratio"] > 0 and rows[1]["total_time_ratio"] > 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert not list(out.parent.glob("*.tmp"))
    plot_sparsity([0.0, 0.2, 0.5], tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 0


def test_lockstep_alternates_the_order_of_the_runs(tmp_path, monkeypatch):
    split = load_idx_split(_write_idx_folder(tmp_path / "d", n_train=96, n_test=32, rows=28, cols=28))
    runs = [LTSTraining(build_lts_mlp(2, hidden=(8,), seed=0), split, 2, 2, mode=mode, warmup=1, batch_size=32)
            for mode in ("baseline", "lts")]
    order = []
    for r in runs:
        step = r.step
        monkeypatch.setattr(r, "step", lambda first, r=r, step=step: (order.append(r.label), step(first)))
    train_lockstep(runs, progress=False)
    pairs = [tuple(order[i:i + 2]) for i in range(0, len(order), 2)]
    assert len(pairs) == 6  # 2 epochs of 3 iterations, one step of each run per turn
    assert pairs == [("baseline 2b", "lts 2b"), ("lts 2b", "baseline 2b")] * 3
    with pytest.raises(ValueError, match="at least one run"):
        train_lockstep([], progress=False)


def test_frozen_mask_is_rewritten_when_read_and_saved():
    """lts_update leaves the bool mask to be rewritten when read: every read (attribute, state_dict) sees the
    frozen set that the float unfrozen mask says, and a loaded mask is not overwritten."""
    gen = torch.Generator().manual_seed(3)
    layer = QuantLinearLTS(40, 30, bits=2)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 40, generator=gen) * 0.2)
        layer.quantizer.init_bounds(layer.weight)
    layer.lts_enabled, layer.lts_m, layer.lts_restore = True, 0.5, False
    x = torch.randn(4, 40, generator=gen)
    counts, stale = [], 0
    for i in range(12):
        layer(x)
        counts.append(layer.lts_update(p=0.03 * i, m=0.5))
        with torch.no_grad():
            layer.weight.add_(torch.randn(30, 40, generator=gen) * 0.02)
        if layer._frozen_stale:  # frozen before, more now (dense): the mask is stale until read
            stale += 1
            state = layer.state_dict()
            assert not layer._frozen_stale
            assert torch.equal(state["lts_frozen"], layer._plan.keep == 0)
    assert stale > 0 and layer._plan.kind == "dense", counts
    assert sum(counts) == layer.n_frozen == int(layer.lts_frozen.sum()) > 0
    assert torch.equal(layer.lts_frozen, layer._plan.keep == 0)
    layer(x)
    layer.lts_update(p=0.9, m=0.5)
    saved = torch.zeros(30, 40, dtype=torch.bool)
    state = dict(layer.state_dict(), lts_frozen=saved)
    layer.load_state_dict(state)
    assert not layer.lts_frozen.any()


def test_sampled_layer_momentum_zeroed_at_the_new_freezes_only(monkeypatch):
    """A sampled layer's newly frozen positions get their momentum zeroed by index (no pass over the layer); the
    frozen weights then never move, as with the dense mask."""
    import model.quant.lts as lts_module

    monkeypatch.setattr(lts_module, "SAMPLED_BELOW", 1.0)  # sampled from the first freeze on
    layer, x, y = small_layer(0)
    kwargs = {"iters_per_epoch": 1, "epochs": 30, "warmup": 0, "strategy": "linear", "m": 0.0}
    seen = []
    real = lts_module.QuantLinearLTS.pop_forward_freezes

    def spy(self):
        n, idx = real(self)
        seen.append((self._plan.kind, n > 0 and all(i is not None for i in idx)))
        if n:
            assert sum(i.numel() for i in idx if i is not None) == n or any(i is None for i in idx)
        return n, idx

    monkeypatch.setattr(lts_module.QuantLinearLTS, "pop_forward_freezes", spy)
    snapshots = _exact_run(layer, x, y, 25, kwargs)
    assert ("sampled", True) in seen  # freezes of an already sampled layer, zeroed by index
    assert len(snapshots) > 0
    for idx, value in snapshots.items():
        assert layer.weight.view(-1)[idx].item() == value



@pytest.mark.parametrize(("sampled_below", "plan"), [(0.0, "dense"), (0.25, "sampled"), (1.0, "sampled")])
def test_frozen_weights_keep_their_quantized_value_when_the_bounds_move(monkeypatch, sampled_below, plan):
    """A frozen weight keeps the fake-quant value it froze with (its level) while ``l``, ``u`` train on: the
    training and eval forwards use it, not a re-quantization of its latent value under the new bounds; the
    live weights follow the bounds. With every position sampled (``SAMPLED_BELOW`` 1) the forward quantizes
    only the pattern's positions and must give the same values."""
    import model.quant.lts as lts_module

    monkeypatch.setattr(lts_module, "SAMPLED_BELOW", sampled_below)
    layer, x, y = small_layer(0)
    kwargs = {"iters_per_epoch": 1, "epochs": 20, "warmup": 0, "strategy": "fixed", "c": 0.4, "m": 0.0}
    _exact_run(layer, x, y, 6, kwargs)
    frozen = layer.lts_frozen.clone()
    assert 0 < int(frozen.sum()) < frozen.numel()
    assert layer._plan.kind == plan  # 0.0: the dense path keeps the frozen values too (none is sampled)
    kept = layer._w_used.detach().clone()
    with torch.no_grad():  # bounds move as training would move them (no gradient from frozen weights)
        layer.quantizer.lower.mul_(0.7)
        layer.quantizer.upper.mul_(1.4)
    requant = layer.quantizer(layer.weight).detach()
    assert not torch.equal(requant[frozen], kept[frozen])  # the latent values alone would change level
    layer.eval()
    expected = F.linear(x, torch.where(frozen, kept, requant), layer.bias)
    assert torch.equal(layer(x), expected)
    layer.train()
    layer.lts_t = 0.0  # no new freezes in this forward: every position is either kept or re-quantized
    w_bar, _plan, _g = layer._train_weight()
    assert torch.equal(w_bar[frozen], kept[frozen])
    assert torch.equal(w_bar[~frozen], requant[~frozen])


def test_bound_gradient_is_exact_with_frozen_weights_constant():
    """With frozen weights held at their value, ``w_bar`` of a frozen position does not depend on ``l``, ``u``:
    the layer's bound gradients (over the unfrozen positions only) equal autograd's for that forward."""
    gen = torch.Generator().manual_seed(11)
    layer = QuantLinearLTS(40, 30, bits=3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 40, generator=gen) * 0.1)
        layer.quantizer.init_bounds(layer.weight)
    layer.lts_enabled = True
    layer(torch.randn(2, 40, generator=gen))  # a training forward: the values frozen weights will keep
    kept = layer._w_used.detach().clone()
    with torch.no_grad():
        layer.lts_frozen.copy_(torch.rand(30, 40, generator=gen) < 0.5)
        layer.quantizer.upper.mul_(1.2)
    layer._replan()
    frozen = layer.lts_frozen.clone()
    x, up = torch.randn(16, 40, generator=gen), torch.randn(16, 30, generator=gen)
    ref_q = LTSQuantizer(3)
    ref_q.load_state_dict(layer.quantizer.state_dict())
    ref_w = layer.weight.detach().clone().requires_grad_(True)
    w_bar = torch.where(frozen, kept, ref_q(ref_w))
    (F.linear(x, w_bar, layer.bias.detach()) * up).sum().backward()
    out = layer(x)
    assert torch.allclose(out, F.linear(x, w_bar, layer.bias), atol=1e-6)  # the forward uses the kept values
    (out * up).sum().backward()
    assert torch.allclose(layer.weight.grad, ref_w.grad, atol=1e-5)
    assert layer.quantizer.lower.grad.item() == pytest.approx(ref_q.lower.grad.item(), rel=1e-4, abs=1e-6)
    assert layer.quantizer.upper.grad.item() == pytest.approx(ref_q.upper.grad.item(), rel=1e-4, abs=1e-6)


def test_frozen_values_survive_a_state_dict_round_trip():
    layer, x, y = small_layer(2)
    kwargs = {"iters_per_epoch": 1, "epochs": 20, "warmup": 0, "strategy": "fixed", "c": 0.4, "m": 0.0}
    _exact_run(layer, x, y, 6, kwargs)
    with torch.no_grad():
        layer.quantizer.upper.mul_(1.5)
    layer.eval()
    out = layer(x)
    other = QuantLinearLTS(16, 8, bits=2)
    other.load_state_dict(layer.state_dict())
    other.lts_enabled = True
    other._replan()
    assert torch.equal(other.eval()(x), out)


@pytest.mark.parametrize(("sampled_below", "plan"), [(0.0, "dense"), (1.0, "sampled")])
def test_a_moved_layer_keeps_its_frozen_state(monkeypatch, sampled_below, plan):
    """``.to()`` / ``.cpu()`` / ``.double()`` move the layer's LTS state held outside its buffers (the plan's
    unfrozen mask and pattern, the compact bookkeeping, the kept values), as they move the buffers: a layer
    trained on a GPU and moved to the CPU evaluates and trains on. A dtype move stands in for a device move."""
    import model.quant.lts as lts_module

    monkeypatch.setattr(lts_module, "SAMPLED_BELOW", sampled_below)
    layer, x, y = small_layer(4)
    kwargs = {"iters_per_epoch": 1, "epochs": 20, "warmup": 0, "strategy": "fixed", "c": 0.4, "m": 0.0}
    _exact_run(layer, x, y, 6, kwargs)
    assert layer._plan.kind == plan and 0 < int(layer.lts_frozen.sum()) < layer.weight.numel()
    layer.eval()
    out, w_eval, frozen = layer(x), layer._eval_weight().detach(), layer.lts_frozen.clone()
    layer.double()
    assert layer._plan.keep.dtype == layer._w_used.dtype == torch.float64
    assert torch.equal(layer._eval_weight().detach()[frozen].float(), w_eval[frozen])  # the kept levels
    torch.testing.assert_close(layer(x.double()).float(), out)
    assert torch.equal(layer.state_dict()["lts_frozen"], layer.lts_frozen)
    layer.train()
    layer.weight.grad = None
    loss = F.cross_entropy(layer(x.double()), y)  # a training forward and backward on the moved state
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    assert bool((layer.weight.grad[layer.lts_frozen] == 0).all())
