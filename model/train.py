"""Training and evaluation loops (one fixed-length run is IMQ's "train to convergence", Algorithm 1 line 7)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .data import Split


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

    Deterministic for a given ``seed``: the only randomness is the shuffling, drawn from its own
    ``torch.Generator`` (the global RNG is neither used nor touched).

    Parameters
    ----------
    model : nn.Module
        Maps ``[N, n_in]`` float inputs to ``[N, n_classes]`` logits.
    split : Split
        Training data come from ``split.x_train`` / ``split.y_train``.
    epochs : int
        Passes over the training set.
    lr : float
        Peak learning rate.
    batch_size : int
        Mini-batch size.
    seed : int
        Seed of the shuffling.
    progress : bool
        Show a tqdm bar over the epochs.

    Returns
    -------
    list of float
        Mean training loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = split.x_train.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    model.train()
    losses = []
    for _ in tqdm(range(epochs), desc="train", leave=False, disable=not progress):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in ``[0, 1]`` (the model's train/eval mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x).argmax(dim=1) == y).double().mean())
    finally:
        model.train(was_training)
