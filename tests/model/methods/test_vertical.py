"""Vertical-layered training (model/methods/vertical.py): MOO (Eq. 9-10), self-KD (Eq. 11), the joint step's
gradients, Eq. 12's MILP, the baselines, training on tiny digits, checkpoints and plots."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.data import load_digits_split
from model.errors import UserError
from model.methods.vertical import (
    VerticalConfig,
    assign_widths,
    cosine_kd,
    downsampling_errors,
    evaluate_widths,
    joint_backward,
    min_norm_weights,
    mixed_precision_curve,
    model_bits,
    plot_histograms,
    plot_mixed_precision,
    split_parameters,
    train_ascending,
    train_downsample,
    train_lsq_oracle,
    train_vertical,
    us_weights,
)
from model.quant.nets import DigitsMLP, build_model
from model.quant.vertical import inner_layers, set_width, to_vertical, vertical_layers, width
from model.runs.checkpoint import load_checkpoint, load_vertical_checkpoint, save_checkpoint, save_vertical_checkpoint
from model.runs.validation import carve_validation

pytestmark = pytest.mark.usefixtures("one_thread")


def build(widths=(2, 3, 4), compensate=True, hidden=(32, 32)):
    torch.manual_seed(0)
    return to_vertical(DigitsMLP(64, hidden, 10, 4), widths, compensate)


@pytest.fixture(scope="module")
def digits():
    split = load_digits_split()
    import dataclasses

    return dataclasses.replace(split, x_train=split.x_train[:700], y_train=split.y_train[:700])


# --------------------------------------------------------------------------------------- Eq. 9-11
def test_us_weights_are_one_over_n_plus_one():
    assert us_weights(3).tolist() == pytest.approx([1 / 3] * 3)


def test_min_norm_two_gradients_closed_form():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    alpha = min_norm_weights(torch.stack([g1, g2]))
    # min over a of ||a g1 + (1 - a) g2||^2: a = (g2 - g1).g2 / ||g1 - g2||^2 = 4 / 5
    assert alpha.tolist() == pytest.approx([0.8, 0.2], abs=1e-6)


def test_min_norm_matches_a_brute_force_search_on_the_simplex():
    rng = np.random.default_rng(0)
    for trial in range(5):
        g = torch.tensor(rng.normal(size=(3, 6)) + (0.5 if trial % 2 else 0))
        alpha = min_norm_weights(g)
        assert float(alpha.sum()) == pytest.approx(1.0) and float(alpha.min()) >= 0
        a, b = np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401))
        keep = a + b <= 1 + 1e-12
        w = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1)
        best = float(((w @ g.numpy()) ** 2).sum(axis=1).min())
        assert float(((alpha @ g) ** 2).sum()) <= best + 1e-9


def test_min_norm_of_a_dominant_direction_picks_the_smallest_gradient():
    g = torch.tensor([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0]])  # all parallel: the shortest alone
    assert min_norm_weights(g).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_cosine_kd_hand_computed_and_teacher_detached():
    teacher = torch.tensor([[0.0, 0.0]], requires_grad=True)  # softmax (0.5, 0.5)
    student = torch.tensor([[float(np.log(3.0)), 0.0]], requires_grad=True)  # softmax (0.75, 0.25)
    loss = cosine_kd(student, teacher)
    cos = (0.5 * 0.75 + 0.5 * 0.25) / (np.sqrt(0.5) * np.sqrt(0.75**2 + 0.25**2))
    assert float(loss.detach()) == pytest.approx(1 - cos)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert float(cosine_kd(student.detach(), student.detach())) == pytest.approx(0.0, abs=1e-6)


def _reference_grads(model, x, y, widths, kd):
    """Per width: the gradients of L_i (CE + cosine KD from the next wider width's detached output)."""
    grads, teacher = {}, None
    for bits in sorted(widths, reverse=True):
        model.zero_grad(set_to_none=True)
        set_width(model, bits)
        out = model(x)
        loss = F.cross_entropy(out, y) + (cosine_kd(out, teacher) if kd and teacher is not None else 0)
        teacher = out.detach()
        loss.backward()
        grads[bits] = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                       for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("moo, kd", [("us", True), ("us", False), ("mgd", True)])
def test_joint_step_combines_shared_and_keeps_per_width_gradients(digits, moo, kd):
    model = build()
    model.train()
    x, y = digits.x_train[:48], digits.y_train[:48]
    for bits in (2, 3, 4):  # initialise the activation steps outside the step under test
        set_width(model, bits)
        model(x)
    ref = _reference_grads(model, x, y, (2, 3, 4), kd)
    shared, per_width = split_parameters(model)
    _, alpha = joint_backward(model, x, y, (2, 3, 4), moo, kd, shared)
    if moo == "us":
        assert alpha.tolist() == pytest.approx([1 / 3] * 3)
    else:
        flat = torch.stack([torch.cat([ref[b][n].reshape(-1) for n, p in model.named_parameters()
                                       if any(p is s for s in shared)]) for b in (2, 3, 4)])
        assert alpha.tolist() == pytest.approx(min_norm_weights(flat).tolist(), abs=1e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in shared:
        expected = sum(float(a) * ref[b][names[id(p)]] for a, b in zip(alpha, (2, 3, 4)))
        assert torch.allclose(p.grad, expected, atol=1e-6), names[id(p)]
    for p in per_width:  # the activation steps: entry k from width k's own loss, not scaled by alpha
        expected = sum(ref[b][names[id(p)]] for b in (2, 3, 4))
        assert torch.allclose(p.grad, expected, atol=1e-6), names[id(p)]
    assert any(p.grad.abs().sum() > 0 for p in per_width)


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(UserError, match="field 'moo'.*'us', 'mgd'"):
        VerticalConfig(moo="pcgrad")
    with pytest.raises(UserError, match="field 'widths'"):
        VerticalConfig(widths=(2, 4))
    with pytest.raises(UserError, match="field 'epochs'"):
        VerticalConfig(epochs=0)


# --------------------------------------------------------------------------------------- Eq. 12
def test_assign_widths_is_the_exact_optimum():
    rng = np.random.default_rng(1)
    for _ in range(6):
        m = 4
        params = [int(p) for p in rng.integers(10, 200, size=m)]
        errors = [{2: float(e2), 3: float(e3), 4: 0.0} for e2, e3 in zip(rng.uniform(5, 10, m), rng.uniform(1, 4, m))]
        budget = float(rng.uniform(2.2, 3.8) * sum(params))
        chosen = assign_widths(errors, params, budget)
        best = min((sum(errors[k][b] for k, b in enumerate(combo)), combo)
                   for combo in itertools.product((2, 3, 4), repeat=m)
                   if sum(p * b for p, b in zip(params, combo)) <= budget)
        assert sum(p * b for p, b in zip(params, chosen)) <= budget
        assert sum(errors[k][b] for k, b in enumerate(chosen)) == pytest.approx(best[0])
    with pytest.raises(UserError, match="budget_bits"):
        assign_widths([{2: 1.0, 4: 0.0}], [10], 19)


def test_downsampling_errors_are_the_dequantized_distance():
    model = build()
    errors = downsampling_errors(model)
    assert len(errors) == 1 and errors[0][4] == 0.0
    layer = inner_layers(model)[0]
    expected = float(((layer.dequantized(2) - layer.dequantized(4)) ** 2).sum())
    assert errors[0][2] == pytest.approx(expected) and errors[0][2] > errors[0][3] > 0


# --------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(digits):
    split, val = carve_validation(digits, 100, 0)
    model = build()
    result = train_vertical(model, split, VerticalConfig(epochs=3, lr=5e-3, batch_size=32), val)
    return model, result, split, val


def test_joint_training_learns_every_width_and_selects_on_validation(trained):
    model, result, split, val = trained
    assert set(result.test_accuracy) == {2, 3, 4}
    assert all(acc > 0.7 for acc in result.test_accuracy.values()), result.test_accuracy
    means = [np.mean(list(row["val_accuracy"].values())) for row in result.history]
    assert result.selected_epoch == 1 + int(np.argmax(means))
    assert result.val_accuracy == pytest.approx({int(k): v for k, v in
                                                 result.history[result.selected_epoch - 1]["val_accuracy"].items()})
    assert evaluate_widths(model, split.x_test, split.y_test) == result.test_accuracy
    assert evaluate_widths(model, val.x, val.y) == result.val_accuracy
    losses = [row["loss"]["2"] for row in result.history]
    assert losses[-1] < losses[0]


def test_checkpoint_round_trip_gives_the_same_outputs(trained, tmp_path):
    model, _, split, _ = trained
    path = save_vertical_checkpoint(tmp_path / "vertical.pt", model, {"method": "vertical"})
    loaded, meta = load_vertical_checkpoint(path)
    assert meta == {"method": "vertical"}
    x = split.x_test[:32]
    model.eval()
    for bits in (2, 3, 4):
        with width(model, bits), width(loaded, bits):
            assert torch.equal(model(x), loaded(x))
    # load_checkpoint (what export and eval read) takes the file too, at the source width
    generic, _ = load_checkpoint(path)
    generic.eval()
    assert torch.equal(generic(x), model(x))
    save_checkpoint(tmp_path / "other.pt", build_model(model.config))
    with pytest.raises(UserError, match="field 'quantizer' is 'dorefa'"):
        load_vertical_checkpoint(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["vertical"]["widths"] = [2, 4]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="field 'vertical.widths'"):
        load_checkpoint(tmp_path / "bad.pt")


def test_mixed_precision_rows_stay_within_budget_and_recalibrate(trained, tmp_path):
    model, result, split, _ = trained
    before = copy.deepcopy(model.state_dict())
    rows = mixed_precision_curve(model, split, points=3, calib_batches=2, batch_size=64)
    uniform = [r for r in rows if r["kind"] == "uniform"]
    mixed = [r for r in rows if r["kind"] == "mixed"]
    assert [r["accuracy"] for r in uniform] == [result.test_accuracy[b] for b in (2, 3, 4)]
    assert len(mixed) == 3
    inner_params = sum(layer.weight.numel() for layer in inner_layers(model))
    edge_bits = sum(layer.weight.numel() * 8 for layer in vertical_layers(model) if layer.edge)
    for r in mixed:
        assert r["avg_inner_bits"] * inner_params <= r["budget_bits"] + 1e-6
        assert r["model_bits"] == edge_bits + round(r["avg_inner_bits"] * inner_params)
        assert 0 <= r["accuracy"] <= 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # sampled on a copy
    assert model_bits(model) == edge_bits + 4 * inner_params
    assert plot_mixed_precision(rows, tmp_path / "fig8.png").stat().st_size > 1000
    assert plot_histograms(model, tmp_path / "fig5.png").stat().st_size > 1000


def test_lsq_oracle_trains_one_net_per_width(digits):
    results = train_lsq_oracle(lambda w: build(w, compensate=False), digits,
                               VerticalConfig(epochs=2, lr=5e-3, batch_size=32))
    assert sorted(results) == [2, 3, 4]
    assert all(list(r.test_accuracy) == [b] and r.test_accuracy[b] > 0.4 for b, r in results.items())


def test_downsample_baseline_uses_floor_codes_of_the_source_width(digits):
    with pytest.raises(UserError, match="without compensation"):
        train_downsample(build(), digits, VerticalConfig(epochs=1))
    model = build(compensate=False)
    result = train_downsample(model, digits, VerticalConfig(epochs=2, lr=5e-3, batch_size=32), calib_batches=2)
    layer = inner_layers(model)[0]
    assert torch.equal(layer.weight_codes(2), torch.div(layer.source_codes(), 4, rounding_mode="floor"))
    assert result.test_accuracy[4] > 0.4


def test_ascending_training_freezes_lower_bits_and_adds_one_bit_per_stage(digits):
    model = build(compensate=False)
    config = VerticalConfig(epochs=2, lr=5e-3, batch_size=32)
    result = train_ascending(model, digits, config)
    for layer in inner_layers(model):
        c2, s2 = layer.ascending[2]
        c3, s3 = layer.ascending[3]
        c4, s4 = layer.ascending[4]
        assert set((c3 - 2 * c2).unique().tolist()) <= {0.0, 1.0}  # Eq. 3: one enhance bit
        assert set((c4 - 2 * c3).unique().tolist()) <= {0.0, 1.0}
        assert s3 == pytest.approx(s2 / 2) and s4 == pytest.approx(s3 / 2)
        assert int(c2.min()) >= -2 and int(c2.max()) <= 1
    assert result.test_accuracy[2] > 0.4 and min(result.test_accuracy.values()) > 0.2  # chance: 0.1


def test_joint_training_keeps_bn_statistics_per_width():
    import dataclasses

    from model.quant.nets import SmallVGG
    from model.quant.vertical import SwitchableBatchNorm

    torch.manual_seed(0)
    model = to_vertical(SmallVGG((1, 8, 8), 10, 4, channels=(4, 8)), (2, 3, 4))
    split = load_digits_split()
    split = dataclasses.replace(split, x_train=split.x_train[:64], y_train=split.y_train[:64])
    train_vertical(model, split, VerticalConfig(epochs=1, batch_size=32))
    bns = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm)]
    assert len(bns) == 2
    for k, sbn in enumerate(bns):
        assert [int(bn.num_batches_tracked) for bn in sbn.bns] == [2, 2, 2]  # 2 steps, each width once per step
        means = [bn.running_mean for bn in sbn.bns]
        if k == 0:  # after the shared 8-bit first layer on 8-bit inputs: the same pre-activations at every width
            assert torch.allclose(means[0], means[2])
        else:  # the 2-bit and 4-bit nets see different pre-activations
            assert not torch.allclose(means[0], means[2])
        assert not torch.equal(sbn.bns[0].weight, sbn.bns[2].weight)  # affine parameters trained per width
