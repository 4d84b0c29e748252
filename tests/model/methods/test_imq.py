"""IMQ (Algorithm 1): the width hierarchy, the magnitude update, ticket selection and weight rewinding."""

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
    best_within,
    halve,
    imq_update,
    initial_state,
    rewind,
    run_imq,
    select_ticket,
    width_counts,
)
from model.quant.layers import QuantLinear
from model.quant.nets import DigitsMLP
from model.training.loop import train

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
