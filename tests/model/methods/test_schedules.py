"""The methods of Sec. 4 (IMQ, IRQ, IMP, IRP, QNN-k, QNN-k IMP): mask updates by hand, schedules, runs."""

import pytest
import torch

from model.data import load_digits_split
from model.errors import UserError
from model.methods.imq import choose, imq_update, prune_update, schedule_layers
from model.methods.schedules import (
    METHODS,
    init_masks,
    make_schedule,
    mask_generator,
    mask_update,
    run_method,
)
from model.quant.layers import QuantConv2d, QuantLinear
from model.quant.nets import DigitsMLP, SmallVGG

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(weight, widths):
    layer = QuantLinear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bit_width.copy_(torch.tensor(widths))
    return layer


def test_paper_defaults():
    assert {k: (m.rate, m.iterations, m.weight_bits) for k, m in METHODS.items()} == {
        "imq": (0.3, 25, 32), "irq": (0.3, 25, 32), "imp": (0.2, 16, 32), "irp": (0.2, 16, 32),
        "qnn": (None, 1, None), "qnn-imp": (0.2, 16, None),
    }
    s = make_schedule("qnn-imp")
    assert (s.weight_bits, s.rate, s.iterations, s.label) == (8, 0.2, 16, "QNN-8 IMP")
    assert make_schedule("qnn", weight_bits=2).label == "QNN-2"
    assert make_schedule("imq", hierarchy="extended").widths == (0, 1, 2, 4, 8, 16, 32)
    assert make_schedule("imp").widths == (0, 4, 8, 16, 32)


def test_imp_prunes_the_smallest_fifth_of_the_remaining_weights_and_keeps_32_bits():
    # 10 weights, 2 already pruned: 8 remain, round(0.2 * 8) = 2 go, namely |w| = 0.05 and 0.1.
    layer = _layer([[0.5, -0.05, 0.3, 0.01, 0.9], [-0.1, 0.7, 0.02, 0.4, -0.6]],
                   [[32, 32, 32, 0, 32], [32, 32, 0, 32, 32]])
    update = mask_update(make_schedule("imp"))
    assert update([layer]) == 2
    assert layer.bit_width.tolist() == [[32, 0, 32, 0, 32], [0, 32, 0, 32, 32]]
    # 6 remain: round(1.2) = 1, the 0.3.
    assert update([layer]) == 1
    assert layer.bit_width.tolist() == [[32, 0, 0, 0, 32], [0, 32, 0, 32, 32]]


def test_qnn_imp_keeps_k_bits():
    layer = _layer([[0.5, -0.05, 0.3, 0.2, 0.9]], [[8, 8, 8, 8, 8]])
    assert mask_update(make_schedule("qnn-imp", rate=0.4))([layer]) == 2
    assert layer.bit_width.tolist() == [[8, 0, 8, 0, 8]]


def test_imq_extended_hierarchy_goes_through_2_and_1_bits():
    layer = _layer([[0.1, 0.2, 0.3, 0.4]], [[4, 2, 1, 32]])
    imq_update([layer], rho=1.0, hierarchy=(32, 16, 8, 4, 2, 1, 0))
    assert layer.bit_width.tolist() == [[2, 1, 0, 16]]
    layer = _layer([[0.1, 0.2]], [[4, 8]])
    imq_update([layer], rho=1.0)
    assert layer.bit_width.tolist() == [[0, 4]]  # the paper's hierarchy skips 2 and 1
    with pytest.raises(UserError, match=r"\[2\].*allowed \(32, 16, 8, 4, 0\)"):
        imq_update([_layer([[0.1]], [[2]])], rho=1.0)


def test_random_choice_is_the_seeded_permutation_of_the_candidates():
    # Candidates in row-major order: indices 0, 1, 3, 4, 5 (index 2 has width 0); k = round(0.6 * 5) = 3.
    weight = [[0.5, 0.1, 0.3], [0.2, 0.9, 0.05]]
    widths = [[32, 16, 0], [8, 32, 4]]
    layer = _layer(weight, widths)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    expected = torch.zeros(6, dtype=torch.bool)
    expected[torch.tensor([0, 1, 3, 4, 5])[perm[:3]]] = True
    picks = choose([layer], 0.6, criterion="random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(picks[0].flatten(), expected)
    with pytest.raises(ValueError, match="Generator"):
        choose([layer], 0.6, criterion="random")


def test_irq_and_irp_ignore_magnitude():
    # Over many draws every candidate is chosen about rate of the time, the smallest included; IMQ would
    # always take the 3 smallest.
    weight = [[float(i + 1) for i in range(10)]]
    counts = {"irq": torch.zeros(10), "irp": torch.zeros(10)}
    generator = mask_generator(0)
    for key in counts:
        update = mask_update(make_schedule(key, rate=0.3), generator)
        for _ in range(400):
            layer = _layer(weight, [[32] * 10])
            update([layer])
            counts[key] += (layer.bit_width[0] != 32).float()
    for key, c in counts.items():
        assert c.sum() == 400 * 3
        assert (c / 400 - 0.3).abs().max() < 0.1, (key, c)
    layer = _layer(weight, [[32] * 10])
    mask_update(make_schedule("irq", rate=0.3), mask_generator(1))([layer])
    assert set(layer.bit_width.flatten().tolist()) == {16, 32}  # IRQ halves, IRP prunes
    layer = _layer(weight, [[32] * 10])
    mask_update(make_schedule("irp", rate=0.3), mask_generator(1))([layer])
    assert set(layer.bit_width.flatten().tolist()) == {0, 32}


def test_prune_update_per_layer_scope():
    a = _layer([[0.1, 0.2, 0.3, 0.4]], [[32, 32, 32, 32]])
    b = _layer([[0.01, 0.02]], [[32, 32]])
    # Global: round(0.5 * 6) = 3 smallest overall (0.01, 0.02, 0.1); per layer: 2 of a, 1 of b.
    assert prune_update([a, b], 0.5) == 3
    assert a.bit_width.tolist() == [[0, 32, 32, 32]] and b.bit_width.tolist() == [[0, 0]]
    a = _layer([[0.1, 0.2, 0.3, 0.4]], [[32, 32, 32, 32]])
    b = _layer([[0.01, 0.02]], [[32, 32]])
    assert prune_update([a, b], 0.5, scope="layer") == 3
    assert a.bit_width.tolist() == [[0, 0, 32, 32]] and b.bit_width.tolist() == [[0, 32]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "lth"}, "method.*allowed"),
        ({"method": "qnn", "rate": 0.2}, "rho.*does not apply"),
        ({"method": "qnn", "iterations": 3}, "iterations.*allowed 1"),
        ({"method": "imq", "weight_bits": 8}, "weight_bits.*qnn"),
        ({"method": "qnn", "weight_bits": 3}, r"weight_bits.*\(1, 2, 4, 8, 16, 32\)"),
        ({"method": "imp", "hierarchy": "extended"}, "hierarchy.*'paper'"),
        ({"method": "imq", "hierarchy": "fine"}, "hierarchy.*allowed"),
        ({"method": "irq", "rate": 1.5}, r"rho.*\(0, 1\]"),
        ({"method": "imp", "iterations": 0}, "iterations.*>= 1"),
        ({"method": "imq", "scope": "net"}, "scope"),
    ],
)
def test_make_schedule_names_the_field(kwargs, match):
    with pytest.raises(UserError, match=match):
        make_schedule(**kwargs)


@pytest.fixture(scope="module")
def small_split():
    split = load_digits_split()
    return type(split)(split.x_train[:160], split.y_train[:160], split.x_test[:80], split.y_test[:80], "small",
                       image_shape=(1, 8, 8))


def _run(split, method, seed=0, **kwargs):
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(8,))
    schedule = make_schedule(method, **kwargs)
    progress = run_method(model, split, schedule, epochs=1, lr=0.01, batch_size=32, seed=seed, progress=False)
    return model, progress


@pytest.mark.parametrize(
    ("method", "kwargs", "bits"),
    [
        # 64 * 8 + 8 * 10 = 592 weights. IMQ / IRQ: round(0.3 * 592) = 178 go 32 -> 16 first.
        ("imq", {"iterations": 2}, [32.0, 32 - 16 * 178 / 592]),
        ("irq", {"iterations": 2}, [32.0, 32 - 16 * 178 / 592]),
        # IMP / IRP: 118 then round(0.2 * 474) = 95 pruned: 474 and 379 remain.
        ("imp", {"iterations": 3}, [32.0, 32 * 474 / 592, 32 * 379 / 592]),
        ("irp", {"iterations": 3}, [32.0, 32 * 474 / 592, 32 * 379 / 592]),
        ("qnn", {"weight_bits": 4}, [4.0]),
        ("qnn-imp", {"iterations": 2}, [8.0, 8 * 474 / 592]),
    ],
)
def test_run_method_average_bits(small_split, method, kwargs, bits):
    model, progress = _run(small_split, method, **kwargs)
    assert [r.avg_bits for r in progress.history] == bits
    assert progress.finished and not progress.reached_target
    assert all(0 <= r.accuracy <= 1 for r in progress.history)
    # The model keeps the masks its last iteration was trained with.
    widths = torch.cat([layer.bit_width.flatten() for layer in model.quant_layers()])
    assert {m: int((widths == m).sum()) for m in progress.history[-1].width_counts} == \
        progress.history[-1].width_counts
    assert sum(progress.history[-1].width_counts.values()) == 592


def test_random_methods_are_reproducible(small_split):
    masks = []
    for seed in (3, 3, 4):
        model, _ = _run(small_split, "irq", seed=seed, iterations=3)
        masks.append(torch.cat([layer.bit_width.flatten() for layer in model.quant_layers()]))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_init_masks_sets_the_start_width():
    model = DigitsMLP(hidden=(4,))
    init_masks(model, make_schedule("qnn", weight_bits=2))
    assert all(set(layer.bit_width.flatten().tolist()) == {2} for layer in model.quant_layers())


def test_a_conv_networks_classifier_is_neither_quantized_nor_pruned():
    """Fig. 1's caption: "we only quantize or prune weights of convolutional layers": QNN-4's start width and every
    IMQ / IMP update reach the conv layers, the classifier stays at 32 bits (an MLP's layers all move)."""
    torch.manual_seed(0)
    model = SmallVGG(image_shape=(1, 8, 8), n_classes=10, act_bits=4, channels=(4, 8))
    init_masks(model, make_schedule("qnn", weight_bits=4))
    convs, fcs = _conv_and_fc(model)
    assert convs and fcs
    assert all(set(c.bit_width.flatten().tolist()) == {4} for c in convs)
    assert all(set(f.bit_width.flatten().tolist()) == {32} for f in fcs)
    mlp = DigitsMLP(hidden=(4,))
    assert schedule_layers(model) == convs and schedule_layers(mlp) == mlp.quant_layers()
    for method in ("imq", "imp"):
        init_masks(model, make_schedule(method))
        update = mask_update(make_schedule(method, rate=0.5))
        for _ in range(3):
            update(schedule_layers(model))
        assert all(set(f.bit_width.flatten().tolist()) == {32} for f in fcs)
        assert all((c.bit_width < 32).any() for c in convs)


def test_a_conv_runs_iterations_leave_the_classifier_at_32_bits(small_split):
    """The whole loop (:func:`run_method`): IMQ's masks move in the conv layers only, and the records' average
    and counts are over the conv weights (the classifier's 32-bit weights are not the ticket's widths)."""
    torch.manual_seed(0)
    model = SmallVGG(image_shape=(1, 8, 8), n_classes=10, act_bits=4, channels=(4,))
    progress = run_method(model, small_split, make_schedule("imq", rate=0.5, iterations=3), epochs=1, lr=0.01,
                          batch_size=32, seed=0, progress=False)
    convs, fcs = _conv_and_fc(model)
    assert all(set(f.bit_width.flatten().tolist()) == {32} for f in fcs)
    n_conv = sum(x.bit_width.numel() for x in convs)
    conv_bits = sum(int(c.bit_width.sum()) for c in convs)
    assert conv_bits < 32 * n_conv
    assert progress.history[-1].avg_bits == pytest.approx(conv_bits / n_conv)
    assert sum(progress.history[-1].width_counts.values()) == n_conv


def _conv_and_fc(model):
    layers = model.quant_layers()
    return [x for x in layers if isinstance(x, QuantConv2d)], [x for x in layers if not isinstance(x, QuantConv2d)]
