"""Training and evaluation loops (one fixed-length run is IMQ's "train to convergence", Algorithm 1 line 7).

Data parallelism (under ``torchrun``, see :mod:`model.training.distributed`)
------------------------------------------------------------------
Every rank draws the same shuffle (and the same augmentation) from the seeded generator, so every rank
knows the whole global mini-batch of ``batch_size`` examples. Rank ``r`` of ``W`` takes the contiguous
shard :func:`~model.training.distributed.shard_bounds` ``(B, r, W)`` of it, computes the *summed* cross entropy of
its shard divided by the global batch size ``B``, and back-propagates. One all-reduce sums the gradients
(and the loss) over the ranks, which is the gradient of the mean loss over the whole global batch, also for
an uneven last batch, as in a single process; then every rank takes the same Adam step. The result equals
a single-process run with the same ``batch_size`` up to float rounding: the sum over the batch is formed
in another order (per shard, then across ranks), a difference of the order of float32 epsilon per step.

BatchNorm: a model's ``BatchNorm*d`` layers see batch statistics. On CUDA (NCCL) :func:`train` swaps
them for ``nn.SyncBatchNorm`` for the run, sharing their parameters and running buffers, so the statistics
are those of the global batch as in a single process; the original modules are put back afterwards.
``SyncBatchNorm`` supports only GPU-like devices, so under gloo on CPU each rank normalizes with the
statistics of its own shard (``B / W`` examples; training then differs from a single process), and the
running statistics are averaged over the ranks at the end so that every rank evaluates the same model;
:func:`train` warns once about this. The equality test (tests/model/training/test_distributed.py) uses the
MLPs, which have no BatchNorm.

Device and mixed precision
--------------------------
Every loop (this one, LTS's and BMPQ's) trains on :func:`model.training.distributed.device`, the one choice
of ``--device``, through :func:`place` and :func:`training_tensors`; checkpoints are written from CPU
copies (:func:`model.runs.checkpoint.save_checkpoint`), so export and the golden model read the same codes
whatever device trained. Autocast is deliberately not used. It leaves the weight codes alone (DoReFa's are
computed from the float32 latent weights in float64; a check on ResNet-20 found them identical under CPU
bfloat16 autocast), but it runs convolutions and matrix products in 16 bits, so the pre-activations that
PACT rounds change: in that check 0.4-70 % (mean 39 %) of each PACT layer's activation codes differed from
the float32 forward of the same weights. The network trained under autocast would then not be the one
that the fake-quant evaluation, export and the golden model compute.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.data import Split, augment_batch
from model.progress import progress_bar
from model.training import distributed


def _batchnorms(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, child name, module)`` of every ``BatchNorm*d`` submodule that is not already synced."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm)
    ]


@contextmanager
def torch_threads(threads: int):
    """``torch.set_num_threads(threads)`` for the ``with`` body, the caller's count restored afterwards (also when
    the body raises); ``0`` keeps torch's count."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def synced_batchnorm(model: nn.Module):
    """Swap every ``BatchNorm*d`` submodule of ``model`` for an ``nn.SyncBatchNorm`` for the ``with`` body.

    The stand-ins share the originals' ``weight``, ``bias`` and running buffers (the same tensor objects),
    so training updates the originals in place, and an optimizer built on ``model.parameters()`` before or
    inside the body steps the same tensors. The original modules are back in place afterwards, so the
    model's types (which the exporters check) never change. Without a process group ``SyncBatchNorm``
    computes exactly what ``BatchNorm`` does.

    Yields
    ------
    int
        Number of layers swapped.
    """
    swaps = _batchnorms(model)
    for parent, name, bn in swaps:
        sync = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for key in ("weight", "bias"):
            sync._parameters[key] = bn._parameters[key]
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            sync._buffers[key] = bn._buffers[key]
        sync.train(bn.training)
        parent._modules[name] = sync
    try:
        yield len(swaps)
    finally:
        for parent, name, bn in swaps:
            bn.train(parent._modules[name].training)  # keep a mode change made inside the body
            parent._modules[name] = bn


def _average_running_stats(model: nn.Module) -> None:
    """Average BatchNorm running means and variances over the ranks (rank 0's ``num_batches_tracked``)."""
    world = distributed.world_size()
    with torch.no_grad():
        for _, _, bn in _batchnorms(model):
            if bn.track_running_stats:
                for stat in (bn.running_mean, bn.running_var):
                    distributed.all_reduce_sum_(stat).div_(world)
                distributed.broadcast_(bn.num_batches_tracked)


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


#: Training tensors go onto the GPU itself when they take at most this fraction of its free memory.
DEVICE_DATA_FRACTION = 0.25


def training_tensors(x: torch.Tensor, y: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a training loop builds its batches: ``(x, y)`` on ``dev`` or in pinned host memory.

    On a GPU the whole training set goes to the device once when it takes at most
    :data:`DEVICE_DATA_FRACTION` of the free device memory (Fashion-MNIST: 188 MB, CIFAR-10: 615 MB), so
    every batch is gathered (and augmented) there with no host copy per step; otherwise it stays in host
    memory and :func:`batch_of` gathers each batch into pinned memory, so that its copy (``non_blocking``)
    overlaps the previous step. (Pinning the whole set would not do that: a gather ``xs[idx]`` of a pinned
    tensor returns ordinary pageable memory, whose copy to the GPU is synchronous.) On the CPU they are
    returned as they are. The values are the same in every case (a copy and an index), so the batches are bit
    for bit those of a CPU run.
    """
    if dev.type != "cuda":
        return x, y
    need = x.numel() * x.element_size() + y.numel() * y.element_size()
    free, _ = torch.cuda.mem_get_info(dev)
    if need <= DEVICE_DATA_FRACTION * free:
        return x.to(dev), y.to(dev)
    return x, y


def batch_of(xs: torch.Tensor, ys: torch.Tensor, idx: torch.Tensor, dev: torch.device, augment=None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``xs[idx], ys[idx]`` of :func:`training_tensors`' tensors, for a loop training on ``dev``;
    ``augment`` (a function of the images, e.g. :func:`model.data.augment_batch` with its shape and generator)
    is applied to the gathered images.

    Where the tensors stayed in host memory for a GPU, the batch (augmented) is copied into pinned memory
    (torch's caching host allocator reuses the blocks once their copies have completed), so that the loop's
    ``.to(dev, non_blocking=True)`` is asynchronous. Otherwise (tensors on the device, or a CPU run) it is
    the plain gather. (Not run here: this machine's torch build has no CUDA, and ``pin_memory`` needs it.)
    """
    x, y = xs[idx], ys[idx]
    if augment is not None:
        x = augment(x)
    if dev.type == "cuda" and xs.device.type == "cpu":
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


def synchronizer(dev: torch.device):
    """A function that waits for ``dev``'s queued work (for honest timings), a no-op on the CPU.

    ``torch.cuda.synchronize(dev)`` with the device named: without it, the current CUDA device is the one
    waited for, which need not be ``dev``.
    """
    if dev.type == "cuda":
        return functools.partial(torch.cuda.synchronize, dev)
    return lambda: None


@dataclass(frozen=True)
class Placement:
    """Where a training loop runs (:func:`place`): the device, this process's rank of ``world``, and whether
    BatchNorm layers are swapped for ``SyncBatchNorm`` during the run."""

    device: torch.device
    rank: int
    world: int
    sync_bn: bool


def place(model: nn.Module) -> Placement:
    """Start the process group if under ``torchrun``, move ``model`` to
    :func:`model.training.distributed.device` and (with several ranks) give every rank rank 0's weights.

    The bit-width masks must already agree on all ranks (checked). Shared by :func:`train`, LTS and BMPQ,
    so one process and ``torchrun`` take the same path; warns once when BatchNorm runs per rank on CPU.
    """
    distributed.init()
    world, rank = distributed.world_size(), distributed.rank()
    dev = distributed.device()
    model.to(dev)
    if world > 1:
        distributed.check_masks(model)
        distributed.broadcast_state(model)
    sync_bn = world > 1 and dev.type != "cpu" and bool(_batchnorms(model))
    if world > 1 and dev.type == "cpu" and _batchnorms(model) and distributed.is_main():
        warnings.warn(
            "BatchNorm under gloo on CPU uses per-rank batch statistics (SyncBatchNorm needs CUDA); "
            "training differs from a single-process run with the same batch size",
            stacklevel=3,
        )
    return Placement(dev, rank, world, sync_bn)


def backward_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list[nn.Parameter],
                  where: Placement) -> torch.Tensor:
    """Cross entropy of one global batch and its gradients in ``.grad`` (call ``zero_grad`` before).

    In one process: the mean loss over the batch, back-propagated. Under ``torchrun``: this rank's contiguous
    shard (:func:`~model.training.distributed.shard_bounds`), summed loss over the global batch size, then one
    all-reduce of the gradients of ``params`` and the loss (module docstring), so every rank holds the
    global batch's gradient. Returns the loss summed over the global batch as a float64 0-d tensor on the
    device (no host synchronisation; ``float()`` of it equals ``float(mean loss) * len(y)``).
    """
    if where.world == 1:
        loss = F.cross_entropy(model(x.to(where.device, non_blocking=True)),
                               y.to(where.device, non_blocking=True))
        loss.backward()
        return loss.detach().double() * len(y)
    lo, hi = distributed.shard_bounds(len(y), where.rank, where.world)
    local = torch.zeros(1, device=where.device)
    if hi > lo or where.sync_bn:  # SyncBatchNorm's collectives need every rank, empty or not
        loss = F.cross_entropy(model(x[lo:hi].to(where.device, non_blocking=True)),
                               y[lo:hi].to(where.device, non_blocking=True), reduction="sum")
        (loss / len(y)).backward()
        local = loss.detach().reshape(1)
    return distributed.all_reduce_gradients(params, local)[0].double()


def finish(model: nn.Module, where: Placement) -> None:
    """After a data-parallel run on CPU: average the per-rank BatchNorm running statistics (module docstring)."""
    if where.world > 1 and not where.sync_bn and _batchnorms(model):
        _average_running_stats(model)


def train(
    model: nn.Module,
    split: Split,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place with Adam, cross entropy and a per-step cosine learning-rate schedule.

    Deterministic for a given ``seed``: the only randomness is the shuffling (and, if ``split.augment``,
    the augmentation), drawn from its own ``torch.Generator`` (the global RNG is neither used nor touched).
    The model moves to :func:`model.training.distributed.device` (``--device``) and stays there; batches are
    built where :func:`training_tensors` says. Under ``torchrun`` this is data-parallel (module docstring):
    every rank starts from rank 0's parameters and buffers, the bit-width masks must already agree on all
    ranks (:func:`model.training.distributed.check_masks`; every mask update happens between two training
    runs), and every rank ends with the same model and returns the same losses. In a single process nothing
    is communicated.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of ``split.x_train`` rows (or augmented images) to ``[N, n_classes]`` logits.
    split : Split
        Training data come from ``split.x_train`` / ``split.y_train``. If ``split.augment`` is true
        (``False`` when the attribute is missing), every global mini-batch goes through
        ``model.data.augment_batch(x, split.image_shape, generator)`` before it is sharded, with the
        shuffling's generator, so all ranks (and a single process) see the same augmented images.
    epochs : int
        Passes over the training set.
    lr : float
        Peak learning rate.
    batch_size : int
        Global mini-batch size (split over the ranks under ``torchrun``).
    seed : int
        Seed of the shuffling and augmentation.
    progress : bool
        Show a tqdm bar over the epochs (on rank 0 only).

    Returns
    -------
    list of float
        Mean training loss of each epoch over the whole training set (all ranks together).
    """
    where = place(model)
    augment = bool(getattr(split, "augment", False))
    xs, ys = training_tensors(split.x_train, split.y_train, where.device)

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    n = split.x_train.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    model.train()
    losses = []
    bar = progress_bar(range(epochs), desc="train", leave=False, disable=not progress or not distributed.is_main())
    with synced_batchnorm(model) if where.sync_bn else nullcontext():
        for _ in bar:
            order = torch.randperm(n, generator=generator).to(xs.device)
            total = torch.zeros((), dtype=torch.float64, device=where.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                x, y = batch_of(xs, ys, idx, where.device,
                                (lambda b: augment_batch(b, split.image_shape, generator)) if augment else None)
                optimizer.zero_grad()
                total += backward_step(model, x, y, params, where)
                optimizer.step()
                schedule.step()
            losses.append(float(total) / n)
    finish(model, where)
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Top-1 accuracy in ``[0, 1]`` (the model's train/eval mode is restored afterwards).

    Under ``torchrun`` each rank classifies its contiguous shard of ``x`` and one all-reduce sums the
    integer counts of correct predictions, so the accuracy is exact and the same on every rank (each
    rank must call this). Inputs move to the model's device.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    x, y : torch.Tensor
        Inputs and int64 labels.
    batch_size : int, optional
        Classify at most this many examples per forward pass (bounds memory for big test sets);
        ``None``: the whole (per-rank) set at once.
    """
    distributed.init()
    dev = _model_device(model)
    n = x.shape[0]
    lo, hi = distributed.shard_bounds(n, distributed.rank(), distributed.world_size())
    step = batch_size or max(hi - lo, 1)
    was_training = model.training
    model.eval()
    try:
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        for start in range(lo, hi, step):
            stop = min(start + step, hi)
            correct += (model(x[start:stop].to(dev)).argmax(dim=1) == y[start:stop].to(dev)).sum()
        count = int(distributed.all_reduce_sum_(correct))
    finally:
        model.train(was_training)
    return count / n if n else float("nan")
