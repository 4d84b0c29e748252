"""The digits split, training and evaluation loops."""

import pytest
import torch
from torch import nn

from model.data import Split, load_digits_split
from model.errors import UserError
from model.train import evaluate, train


def test_digits_split_shapes_ranges_and_stratification():
    split = load_digits_split()
    assert split.name == "digits"
    assert split.x_train.shape == (1437, 64) and split.x_test.shape == (360, 64)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    x = torch.cat([split.x_train, split.x_test])
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert torch.equal(x * 16, torch.round(x * 16))  # pixels are k / 16
    # 1797 images, 10 classes of 174..183: a stratified 20 % leaves 34..37 of each class for testing.
    counts = torch.bincount(split.y_test, minlength=10)
    assert counts.min().item() >= 34 and counts.max().item() <= 37


def test_digits_split_is_deterministic_per_seed():
    a, b, c = load_digits_split(seed=0), load_digits_split(seed=0), load_digits_split(seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction(fraction):
    with pytest.raises(UserError, match="test_fraction"):
        load_digits_split(test_fraction=fraction)


def test_evaluate_counts_correct_argmax_and_keeps_the_mode():
    model = nn.Identity()
    model.train()
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert evaluate(model, x, torch.tensor([0, 1, 1, 0])) == 0.5
    assert model.training


def test_train_is_deterministic_and_learns():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 4, generator=gen)
    y = (x[:, 0] > x[:, 1]).to(torch.int64)
    split = Split(x, y, x, y, name="toy")
    init = nn.Linear(4, 2)
    models = [nn.Linear(4, 2) for _ in range(2)]
    for m in models:
        m.load_state_dict(init.state_dict())
    losses = [train(m, split, epochs=15, lr=0.05, batch_size=16, seed=3, progress=False) for m in models]
    assert losses[0] == losses[1]
    assert torch.equal(models[0].weight, models[1].weight)
    assert losses[0][-1] < losses[0][0]
    assert evaluate(models[0], x, y) > 0.9
