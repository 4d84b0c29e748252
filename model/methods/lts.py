"""LTS algorithm: the scratcher that freezes settled weights (Sec. III-C) and its training loop.

The quantizer, the layer and the equations are in :mod:`model.quant.lts`, whose docstring gives the
choices made where the paper leaves room.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from model.data import Split
from model.errors import UserError
from model.quant.lts import MODES, STRATEGIES, QuantLinearLTS, growth_rate
from model.training.loop import evaluate

# ----------------------------------------------------------------------------------------------------------
# Algorithm


class LTSScratcher:
    """Drives LTS over every :class:`QuantLinearLTS` of a model (Sec. III-C).

    Call :meth:`after_step` once per training iteration, after ``optimizer.step()``: it restores frozen
    weights, then runs Eq. 5-6 with ``p`` of Eq. 7/8 (or the fixed rate) for that iteration.

    Parameters
    ----------
    model : nn.Module
    iters_per_epoch, epochs, warmup : int
        ``T``, ``E``, ``E_wm``.
    strategy : str
        One of :data:`STRATEGIES`.
    c : float
        Rate of the fixing strategy.
    m : float
        EMA momentum of Eq. 5, in ``[0, 1)``.
    enabled : bool
        False for plain QAT: no freezing, plain autograd backward; sparsity stays 0.
    """

    def __init__(self, model, iters_per_epoch, epochs, warmup, strategy="linear", c=0.5, m=0.99, enabled=True):
        if strategy not in STRATEGIES:
            raise UserError(f"field 'strategy' is {strategy!r}; allowed values {STRATEGIES}")
        if not 0 <= m < 1:
            raise UserError(f"field 'm' is {m!r}; allowed values in [0, 1)")
        if not 0 <= c <= 1:
            raise UserError(f"field 'p' is {c!r}; allowed values in [0, 1]")
        growth_rate(strategy, 1, iters_per_epoch, epochs, warmup, c)  # validates warmup
        self.layers = [mod for mod in model.modules() if isinstance(mod, QuantLinearLTS)]
        if not self.layers:
            raise UserError("model has no QuantLinearLTS layer; LTS needs at least one")
        self.T, self.E, self.E_wm, self.strategy, self.c, self.m = iters_per_epoch, epochs, warmup, strategy, c, m
        self.enabled = enabled
        self.iteration = 0
        self.total = sum(layer.weight.numel() for layer in self.layers)
        for layer in self.layers:
            layer.lts_enabled = enabled

    def sparsity(self) -> float:
        """Weight-gradient sparsity now: frozen / all quantized weights (Sec. IV-A)."""
        return sum(layer.n_frozen for layer in self.layers) / self.total

    def after_step(self) -> None:
        self.iteration += 1
        if not self.enabled:
            return
        p = growth_rate(self.strategy, self.iteration, self.T, self.E, self.E_wm, self.c)
        for layer in self.layers:
            layer.restore_frozen_()
            layer.lts_update(p, self.m)


@dataclass
class LTSResult:
    """Outcome of :func:`train_lts`.

    ``avg_wgs``: mean over iterations of the weight-gradient sparsity that iteration's backward used;
    ``bp_flops_reduction``: ``avg_wgs / 2`` (Sec. IV-A); ``backward_time``: seconds summed over
    ``loss.backward()`` calls; ``train_time``: seconds of the whole training loop (LTS bookkeeping included);
    ``sparsity_history``: sparsity at the end of each epoch; ``wgs``: per-iteration sparsity.
    """

    accuracy: float
    avg_wgs: float
    bp_flops_reduction: float
    backward_time: float
    train_time: float
    sparsity_history: list[float] = field(default_factory=list)
    wgs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train_lts(
    model: nn.Module,
    split: Split,
    epochs: int,
    bits: int,
    mode: str = "lts",
    strategy: str = "linear",
    p: float = 0.5,
    m: float = 0.99,
    warmup: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> LTSResult:
    """Quantization-aware training with (``mode="lts"``) or without (``"baseline"``) the scratcher.

    SGD with momentum and weight decay (Sec. IV-A; weight decay on the latent weights only, not on ``l``,
    ``u``, PACT ``alpha``, batch-norm or bias), a per-step cosine learning rate, cross entropy. Shuffling
    from its own generator seeded by ``seed``, so both modes see the same batches.

    Parameters
    ----------
    model : nn.Module
        Holds :class:`QuantLinearLTS` layers of ``bits`` bits.
    split : Split
        Train on ``x_train``, report top-1 accuracy on ``x_test``.
    epochs : int
        ``E``.
    bits : int
        ``B``; must match the model's layers.
    mode : str
        One of :data:`MODES`.
    strategy : str
        Growth of ``p``, one of :data:`STRATEGIES`.
    p : float
        Constant of the fixing strategy (ignored by linear / sine).
    m : float
        EMA momentum (Eq. 5).
    warmup : int
        ``E_wm`` epochs before any freezing.
    lr, momentum, weight_decay, batch_size, seed, progress
        Optimizer and loop settings; ``progress`` shows a tqdm bar over epochs.

    Raises
    ------
    UserError
        For an unknown ``mode`` / ``strategy``, ``warmup`` outside ``[0, epochs)``, ``m`` outside
        ``[0, 1)``, or layers whose bits differ from ``bits``.
    """

    if mode not in MODES:
        raise UserError(f"field 'mode' is {mode!r}; allowed values {MODES}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"field 'epochs' is {epochs!r}; allowed values integers >= 1")
    n = split.x_train.shape[0]
    iters = math.ceil(n / batch_size)
    scratcher = LTSScratcher(model, iters, epochs, warmup, strategy, p, m, enabled=(mode == "lts"))
    wrong = sorted({layer.bits for layer in scratcher.layers} - {bits})
    if wrong:
        raise UserError(f"field 'bits' is {bits!r} but the model's QuantLinearLTS layers have bits {wrong}")
    latent = [layer.weight for layer in scratcher.layers]
    latent_ids = {id(w) for w in latent}
    others = [q for q in model.parameters() if id(q) not in latent_ids]
    optimizer = torch.optim.SGD(
        [{"params": latent, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * iters)
    generator = torch.Generator().manual_seed(seed)
    result = LTSResult(0.0, 0.0, 0.0, 0.0, 0.0)
    model.train()
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc=f"{mode} {bits}b", leave=False, disable=not progress):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for first in range(0, n, batch_size):
            idx = order[first : first + batch_size]
            result.wgs.append(scratcher.sparsity() if scratcher.enabled else 0.0)
            loss = F.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss.backward()
            result.backward_time += time.perf_counter() - t0
            optimizer.step()
            schedule.step()
            scratcher.after_step()
            total += float(loss.detach()) * len(idx)
        result.losses.append(total / n)
        result.sparsity_history.append(scratcher.sparsity() if scratcher.enabled else 0.0)
    result.train_time = time.perf_counter() - start
    result.accuracy = evaluate(model, split.x_test, split.y_test)
    result.avg_wgs = sum(result.wgs) / len(result.wgs)
    result.bp_flops_reduction = result.avg_wgs / 2
    return result
