"""model.training.loop and model.training.distributed in one process: sharding, the single-process path, BatchNorm swap.

The multi-process behaviour (2 gloo ranks against one process) is in tests/model/training/test_distributed.py.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from model.data import Split
from model.quant.nets import DigitsMLP
from model.training import distributed
from model.training.loop import evaluate, synced_batchnorm, train


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in (*distributed.TORCHRUN_ENV, "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _toy_split(n: int = 100, seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > x[:, 2] + x[:, 3]).to(torch.int64)
    return Split(x, y, x[:40], y[:40], name="toy")


def _toy_split_digits() -> Split:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(70, 64, generator=gen)
    return Split(x, torch.randint(0, 10, (70,), generator=gen), x[:20], torch.zeros(20, dtype=torch.int64), "t")


@pytest.mark.parametrize(("n", "world"), [(64, 2), (29, 2), (1, 2), (0, 3), (10, 4), (7, 7), (5, 8)])
def test_shards_partition_the_batch_in_order(n, world):
    bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_bounds_values_and_errors():
    assert [distributed.shard_bounds(29, r, 2) for r in range(2)] == [(0, 15), (15, 29)]
    assert [distributed.shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    for args in ((5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)):
        with pytest.raises(ValueError, match="shard_bounds"):
            distributed.shard_bounds(*args)


def test_single_process_has_no_process_group(no_torchrun):
    assert not distributed.launched()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.init() is False and not distributed.active()
    assert distributed.device() == torch.device("cpu")
    model = DigitsMLP(hidden=(8,))
    before = copy.deepcopy(model.state_dict())
    distributed.check_masks(model)
    distributed.broadcast_masks(model)
    distributed.broadcast_state(model)
    distributed.barrier()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    train(model, _toy_split_digits(), epochs=1, batch_size=32, progress=False)
    assert not distributed.active()


def test_rank_and_world_come_from_torchrun_env_before_init(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched()
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    assert not distributed.is_main()
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main()
    monkeypatch.delenv("LOCAL_RANK")
    assert not distributed.launched() and distributed.world_size() == 1


def test_mask_digest_sees_every_mask_element():
    model = DigitsMLP(hidden=(8,))
    names = [name for name, _ in distributed.masks(model)]
    assert names == ["linears.0.bit_width", "linears.1.bit_width"]
    digest = distributed.mask_digest(model)
    assert digest == distributed.mask_digest(copy.deepcopy(model))
    with torch.no_grad():
        model.linears[1].bit_width[-1, -1] = 16
    assert distributed.mask_digest(model) != digest


def test_all_reduce_gradients_in_one_process_keeps_gradients_and_none(no_torchrun):
    a, b = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(4))
    a.grad = torch.randn(3, 2)
    expected = a.grad.clone()
    extra = distributed.all_reduce_gradients([a, b], torch.tensor([2.5, -1.0]))
    assert torch.equal(a.grad, expected) and b.grad is None
    assert extra.tolist() == [2.5, -1.0]


def test_single_process_losses_are_the_mean_over_the_epoch(no_torchrun):
    # One epoch, one full batch, lr so small that the weights barely move: the returned epoch loss is the
    # cross entropy of the initial model on the whole set.
    split = _toy_split()
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(split.x_train), split.y_train))
    (loss,) = train(model, split, epochs=1, lr=1e-12, batch_size=len(split.x_train), progress=False)
    assert loss == pytest.approx(expected, rel=1e-6)


def test_train_leaves_the_global_rng_alone(no_torchrun):
    torch.manual_seed(123)
    model, split = nn.Linear(6, 2), _toy_split()
    state = torch.get_rng_state()
    train(model, split, epochs=2, batch_size=16, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_evaluate_in_chunks_equals_one_pass():
    split = _toy_split(n=97)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    whole = evaluate(model, split.x_train, split.y_train)
    assert whole == float((model(split.x_train).argmax(1) == split.y_train).double().mean())
    for batch_size in (1, 10, 96, 97, 500):
        assert evaluate(model, split.x_train, split.y_train, batch_size=batch_size) == whole


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.block = nn.Sequential(nn.BatchNorm1d(8), nn.ReLU())
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.block(self.fc(x)))


def test_synced_batchnorm_swaps_shares_and_restores():
    torch.manual_seed(0)
    model = _BNNet()
    bn = model.block[0]
    with synced_batchnorm(model) as swapped:
        assert swapped == 1
        sync = model.block[0]
        assert isinstance(sync, nn.SyncBatchNorm)
        assert sync.weight is bn.weight and sync.bias is bn.bias
        assert sync.running_mean is bn.running_mean and sync.num_batches_tracked is bn.num_batches_tracked
        model(torch.rand(16, 6))  # no process group: SyncBatchNorm is plain BatchNorm
        model.eval()
    assert model.block[0] is bn and type(bn) is nn.BatchNorm1d
    assert int(bn.num_batches_tracked) == 1 and not bn.training
    assert set(model.state_dict()) == set(_BNNet().state_dict())


def test_training_through_synced_batchnorm_equals_batchnorm(no_torchrun):
    # Without a process group the stand-ins compute exactly what BatchNorm does: same weights, same
    # running statistics, bit for bit.
    split = _toy_split()
    torch.manual_seed(0)
    plain = _BNNet()
    synced = copy.deepcopy(plain)
    train(plain, split, epochs=2, batch_size=32, progress=False)
    with synced_batchnorm(synced):
        train(synced, split, epochs=2, batch_size=32, progress=False)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, synced.state_dict()[key]), key
    assert int(plain.block[0].num_batches_tracked) == 8


def test_augmentation_is_applied_and_seeded(no_torchrun):
    base = _toy_split_digits()
    images = dataclasses.replace(base, image_shape=(1, 8, 8))
    augmented = dataclasses.replace(images, augment=True)
    assert getattr(base, "augment", False) is False
    torch.manual_seed(0)
    init = DigitsMLP(hidden=(8,))
    runs = {}
    for name, split in (("plain", images), ("aug", augmented), ("aug again", augmented)):
        model = copy.deepcopy(init)
        runs[name] = (train(model, split, epochs=2, batch_size=16, seed=5, progress=False), model.state_dict())
    assert runs["aug"][0] == runs["aug again"][0]
    assert all(torch.equal(v, runs["aug again"][1][k]) for k, v in runs["aug"][1].items())
    assert runs["aug"][0] != runs["plain"][0]
