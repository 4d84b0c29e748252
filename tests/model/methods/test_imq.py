"""IMQ (Algorithm 1): the width hierarchy, the magnitude update, ticket selection and weight rewinding.

The core of the loop is pinned against plausible mistakes: the update ranks the weights trained in this
iteration (not theta_0), accuracies come from the test and validation images (not the training images),
and ticket selection ranks by validation accuracy."""

import copy

import pytest
import torch

from model.data import load_digits_split
from model.errors import UserError
from model.methods.imq import (
    EXTENDED_HIERARCHY,
    HIERARCHY,
    IterationRecord,
    average_bits,
    best_of,
    best_within,
    halve,
    imq_update,
    initial_state,
    rewind,
    run_imq,
    select_ticket,
    selection_split,
    width_counts,
)
from model.methods.schedules import make_schedule, run_method
from model.quant.layers import QuantLinear
from model.quant.nets import DigitsMLP
from model.training.loop import evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_halve_every_width():
    assert HIERARCHY == (32, 16, 8, 4, 0)
    assert halve(torch.tensor([32, 16, 8, 4, 0])).tolist() == [16, 8, 4, 0, 0]
    with pytest.raises(UserError, match="allowed"):
        halve(torch.tensor([2]))


def test_halve_extended_hierarchy():
    assert EXTENDED_HIERARCHY == (32, 16, 8, 4, 2, 1, 0)
    assert halve(torch.tensor([32, 16, 8, 4, 2, 1, 0]), EXTENDED_HIERARCHY).tolist() == [16, 8, 4, 2, 1, 0, 0]
    with pytest.raises(UserError, match=r"\[3\].*allowed \(32, 16, 8, 4, 2, 1, 0\)"):
        halve(torch.tensor([3, 4]), EXTENDED_HIERARCHY)
    with pytest.raises(UserError, match="hierarchy"):
        halve(torch.tensor([4]), (32, 8, 0))


def _layer(weight, widths):
    layer = QuantLinear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    layer.set_bit_width(torch.tensor(widths))
    return layer


def _two_layers():
    a = _layer([[0.5, -0.1, 0.3], [0.05, -0.9, 0.2]], [[32, 32, 0], [32, 16, 4]])
    b = _layer([[0.01, 0.7]], [[0, 32]])
    return a, b


def test_imq_update_global_halves_the_smallest_nonzero_width_weights():
    a, b = _two_layers()
    # Non-zero widths: |w| = 0.5, 0.1, 0.05, 0.9, 0.2 (a) and 0.7 (b): 6 weights, rho = 0.5 picks 3,
    # namely 0.05 (32 -> 16), 0.1 (32 -> 16) and 0.2 (4 -> 0). The 0-bit 0.3 and 0.01 are never candidates.
    assert imq_update([a, b], rho=0.5) == 3
    assert a.bit_width.tolist() == [[32, 16, 0], [16, 16, 0]]
    assert b.bit_width.tolist() == [[0, 32]]


def test_imq_update_per_layer_scope():
    a, b = _two_layers()
    # Layer a: 5 candidates, round(2.5) half up = 3 (same three as above); layer b: max(1, round(0.5)) = 1.
    assert imq_update([a, b], rho=0.5, scope="layer") == 4
    assert a.bit_width.tolist() == [[32, 16, 0], [16, 16, 0]]
    assert b.bit_width.tolist() == [[0, 16]]


@pytest.mark.parametrize(("rho", "moved"), [(0.2, 1), (0.05, 1), (0.25, 2), (1.0, 6)])
def test_imq_update_moves_round_half_up_of_rho_n_at_least_one(rho, moved):
    """k = max(1, floor(rho n + 1/2)) of the n = 6 non-zero weights: 0.2 -> 1.2 -> 1 (a ceiling would move 2),
    0.05 -> 0.3 -> 0 -> at least 1 (IMQ never stalls), 0.25 -> 1.5 -> 2 (half up), 1.0 -> all 6."""
    a, b = _two_layers()
    before = torch.cat([a.bit_width.flatten(), b.bit_width.flatten()])
    assert imq_update([a, b], rho=rho) == moved
    after = torch.cat([a.bit_width.flatten(), b.bit_width.flatten()])
    assert int((after != before).sum()) == moved


def test_imq_update_ties_go_to_the_earlier_weight_and_zero_widths_stay():
    layer = _layer([[0.1, -0.1, 0.1, -0.1], [0.0, 0.1, 0.2, 0.0]], [[4, 8, 16, 32], [0, 32, 32, 0]])
    assert imq_update([layer], rho=0.5) == 3  # 6 candidates; the first three of the five 0.1s
    assert layer.bit_width.tolist() == [[0, 4, 8, 32], [0, 32, 32, 0]]


def test_imq_update_validates_its_arguments():
    a, b = _two_layers()
    with pytest.raises(UserError, match="rho.*\\(0, 1\\]"):
        imq_update([a, b], rho=0.0)
    with pytest.raises(UserError, match="scope.*'global', 'layer'"):
        imq_update([a, b], rho=0.3, scope="net")


def test_average_bits_and_width_counts():
    a, b = _two_layers()
    assert average_bits([a, b]) == (32 + 32 + 0 + 32 + 16 + 4 + 0 + 32) / 8
    assert width_counts([a, b]) == {0: 2, 4: 1, 8: 0, 16: 1, 32: 4}


def _record(iteration, avg_bits, accuracy):
    return IterationRecord(iteration, avg_bits, accuracy, {})


def test_select_ticket_is_algorithm_1_line_12():
    history = [_record(0, 32.0, 0.90), _record(1, 27.2, 0.91), _record(2, 20.0, 0.89), _record(3, 15.0, 0.92)]
    assert select_ticket(history).iteration == 3
    assert select_ticket(history[:3]).iteration == 1
    assert select_ticket([_record(0, 32.0, 0.9), _record(1, 27.2, 0.9)]) is None
    assert select_ticket([]) is None
    # Ties in bits go to the earlier iteration (a width that stops moving: IMQ with nothing left to halve).
    tied = [_record(0, 32.0, 0.90), _record(1, 4.0, 0.91), _record(2, 4.0, 0.93)]
    assert select_ticket(tied).iteration == 1


def test_best_within_is_table_1s_budget_ticket():
    history = [_record(0, 32.0, 0.90), _record(1, 9.0, 0.93), _record(2, 4.0, 0.91), _record(3, 3.0, 0.91),
               _record(4, 1.5, 0.80)]
    assert best_within(history, 8.0).iteration == 2  # ties in accuracy go to the earlier iteration
    assert best_within(history, 2.0).iteration == 4
    assert best_within(history, 1.0) is None


@pytest.fixture(scope="module")
def small_split():
    split = load_digits_split()
    return type(split)(
        split.x_train[:160], split.y_train[:160], split.x_test[:80], split.y_test[:80], "small"
    )


def test_run_imq_rewinds_to_theta_0_and_keeps_the_masks(small_split):
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(8,), act_bits=4)
    with torch.no_grad():
        model.acts[0].alpha.fill_(3.0)
    fresh = copy.deepcopy(model)
    theta_0 = initial_state(model)
    snapshots = []
    result = run_imq(
        model,
        small_split,
        rho=0.3,
        target_avg_bits=0.0,
        max_iterations=2,
        epochs=1,
        lr=0.01,
        batch_size=32,
        seed=5,
        progress=False,
        on_iteration=lambda record, m: snapshots.append(copy.deepcopy(m.state_dict())),
    )
    # 64 * 8 + 8 * 10 = 592 weights; round(0.3 * 592) = 178 of them go 32 -> 16 after iteration 0.
    assert [r.avg_bits for r in result.history] == [32.0, 32 - 16 * 178 / 592]
    assert result.history[1].width_counts == {0: 0, 4: 0, 8: 0, 16: 178, 32: 414}
    assert not result.reached_target
    assert all(torch.equal(v, snapshots[1][k]) for k, v in result.state_dict.items())

    # Iteration 1 is exactly: theta_0 with iteration 1's masks, trained like iteration 0.
    masks = {k: v for k, v in snapshots[1].items() if k.endswith("bit_width")}
    fresh.load_state_dict(masks, strict=False)
    train(fresh, small_split, epochs=1, lr=0.01, batch_size=32, seed=5, progress=False)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in fresh.state_dict().items())
    assert not torch.equal(snapshots[0]["linears.0.weight"], snapshots[1]["linears.0.weight"])

    # Rewinding the final model restores theta_0 (PACT alpha and biases included) and keeps its masks.
    rewind(model, theta_0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, masks[k] if k.endswith("bit_width") else theta_0[k]), k
    assert model.acts[0].alpha.item() == 3.0


def test_run_imq_stops_at_the_target(small_split):
    torch.manual_seed(0)
    seen = []
    result = run_imq(
        DigitsMLP(hidden=(8,)),
        small_split,
        target_avg_bits=32.0,
        epochs=1,
        progress=False,
        on_iteration=lambda record, m: seen.append(record.iteration),
    )
    assert result.reached_target and seen == [0] and len(result.history) == 1
    assert 0.0 <= result.history[0].accuracy <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rho": 1.5}, "rho"),
        ({"scope": "x"}, "scope"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"target_avg_bits": -1.0}, "target_avg_bits"),
    ],
)
def test_run_imq_validates_before_training(small_split, kwargs, field):
    with pytest.raises(UserError, match=field):
        run_imq(DigitsMLP(hidden=(8,)), small_split, epochs=1, progress=False, **kwargs)


def test_selection_ranks_by_validation_accuracy_when_every_record_has_one():
    # Test accuracy would pick iteration 2 (Algorithm 1) and 1 (best within 8 bits); validation picks 3 and 3.
    history = [IterationRecord(0, 32.0, 0.90, {}, 0.80), IterationRecord(1, 9.0, 0.95, {}, 0.79),
               IterationRecord(2, 6.0, 0.93, {}, 0.78), IterationRecord(3, 7.0, 0.85, {}, 0.81)]
    assert selection_split(history) == "validation"
    assert select_ticket(history).iteration == 3
    assert best_within(history, 8.0).iteration == 3
    assert best_of(history).iteration == 3
    # One record without a validation accuracy: the whole history ranks by test accuracy (never a mix).
    mixed = [*history[:3], IterationRecord(3, 7.0, 0.85, {})]
    assert selection_split(mixed) == "test"
    assert select_ticket(mixed).iteration == 2 and best_within(mixed, 8.0).iteration == 2
    assert best_of(mixed).iteration == 1


def _quant_weights(model):
    return [layer.weight.detach().clone() for layer in model.quant_layers()]


def test_iterate_ranks_the_trained_weights_not_theta_0(small_split):
    """Algorithm 1 line 8 ranks the weights trained in this iteration; theta_0 is only the rewind point."""
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(8,), act_bits=4)
    theta_0 = _quant_weights(model)
    trained, masks = [], []

    def on_iteration(record, m):
        trained.append(_quant_weights(m))

    def on_step(progress, m):
        masks.append([layer.bit_width.clone() for layer in m.quant_layers()])

    run_method(model, small_split, make_schedule("imq", rate=0.3, iterations=2), epochs=3, lr=0.05, batch_size=32,
               seed=5, progress=False, on_iteration=on_iteration, on_step=on_step)
    # After iteration 0 every weight was 32-bit: the round(0.3 * 592) = 178 smallest |w| go to 16 bits.
    k = 178

    def smallest(weights):
        flat = torch.cat([w.abs().flatten() for w in weights])
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[torch.sort(flat, stable=True).indices[:k]] = True
        return chosen

    by_trained, by_theta_0 = smallest(trained[0]), smallest(theta_0)
    # The two rankings really disagree (otherwise the test could not tell them apart).
    assert int((by_trained & ~by_theta_0).sum()) > 20
    halved = torch.cat([m.flatten() for m in masks[0]]) == 16
    assert torch.equal(halved, by_trained)
    assert int(halved.sum()) == k and set(torch.cat([m.flatten() for m in masks[0]]).tolist()) == {16, 32}


def test_iterate_records_test_and_validation_accuracy(small_split):
    """``accuracy`` is measured on the test images and ``val_accuracy`` on the validation images, never on the
    training images: the three sets carry different labels, so the three accuracies differ."""
    x = small_split.x_train
    train_labels = torch.zeros(120, dtype=torch.int64)  # all class 0: training teaches "always 0"
    test_labels = torch.tensor([0] * 30 + [1] * 30)  # half of them 0
    val_labels = torch.tensor([0] * 10 + [3] * 30)  # a quarter of them 0
    split = type(small_split)(x[:120], train_labels, small_split.x_test[:60], test_labels, "labels")
    val = (x[120:160], val_labels)
    torch.manual_seed(0)
    seen = []

    def on_iteration(record, m):
        seen.append((record, evaluate(m, split.x_train, split.y_train), evaluate(m, split.x_test, split.y_test),
                     evaluate(m, *val)))

    run_method(DigitsMLP(hidden=(8,)), split, make_schedule("imq", iterations=2), epochs=3, lr=0.05, batch_size=32,
               seed=5, progress=False, on_iteration=on_iteration, val=val)
    assert len(seen) == 2
    for record, on_train, on_test, on_val in seen:
        assert (on_train, on_test, on_val) == (1.0, 0.5, 0.25)  # the model answers 0 everywhere
        assert record.accuracy == on_test
        assert record.val_accuracy == on_val
