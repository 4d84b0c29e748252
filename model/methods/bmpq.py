"""BMPQ training (the BMPQ paper, Sec. III): bit gradients (Eq. 5-7), NBG / ENBG (Def. 2), the ILP of
Eq. 8-9, memory and compression (Eq. 10-12), and the training loop.

The quantizers, layers and model surgery are in :mod:`model.quant.bmpq`, whose docstring gives the choices
made where the paper leaves room.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from model.data import Split, augment_batch
from model.errors import UserError
from model.progress import progress_bar
from model.quant.bmpq import (
    BMPQ_LAYERS,
    EDGE_BITS,
    LAYER_BITS,
    SUPPORT,
    check_bits,
    layer_bits,
    set_bits,
    symmetric_scale,
    to_bmpq,
    trace,
)
from model.training import distributed
from model.training.loop import (
    backward_step,
    batch_of,
    evaluate,
    finish,
    place,
    synced_batchnorm,
    training_tensors,
)


def bit_gradients(grad_wq: torch.Tensor, scale: float, q_max: int) -> torch.Tensor:
    """Eq. 5-7: the ``d_l x q_max`` loss bit-gradient matrix, columns MSB first as in Eq. 6.

    ``w_q = S (-2^(q-1) b_(q-1) + sum_(i < q-1) 2^i b_i)`` (Eq. 5, with the scale of Eq. 4), so
    ``dL/db_i = dL/dw_q * S * (-2^(q-1))`` for the sign bit and ``dL/dw_q * S * 2^i`` for the others.
    """
    weights = torch.tensor([-(2.0 ** (q_max - 1))] + [2.0**i for i in range(q_max - 2, -1, -1)],
                           dtype=torch.float64, device=grad_wq.device)
    return grad_wq.detach().reshape(-1, 1).to(torch.float64) * scale * weights


def nbg(weight: torch.Tensor, grad_wq: torch.Tensor, q_max: int) -> float:
    """Normalized bit gradient of one layer (Sec. III-B): mean over weights of ``sum_bits |dL/db_i|``.

    Uses ``S`` of Eq. 3 at ``q_max`` bits and the closed form ``|dL/dw_q| S (2^q_max - 1)`` of the row sum.
    """
    return float(nbg_tensor(weight, grad_wq, q_max))


def nbg_tensor(weight: torch.Tensor, grad_wq: torch.Tensor, q_max: int) -> torch.Tensor:
    """:func:`nbg` as a float64 0-d tensor on the weight's device (the same float64 operations, so the same
    value): the training loop sums it there without a host synchronisation per layer and batch."""
    scale = symmetric_scale(weight, q_max).double()
    return grad_wq.detach().abs().double().mean() * scale * ((1 << q_max) - 1)


def memory_mb(params: list[int], bits: list[int]) -> float:
    """Eq. 11: ``(4/32) sum_l p_l q_l / 2^20`` MB (Eq. 10 with all ``q_l = 32``)."""
    return 4 / 32 * sum(p * q for p, q in zip(params, bits, strict=True)) / 2**20


def compression_ratio(params: list[int], bits: list[int]) -> float:
    """Eq. 12: ``r_M^32 = M_fp32 / M_BMPQ`` (``r_M^16`` is half of it)."""
    return memory_mb(params, [32] * len(params)) / memory_mb(params, bits)


def assign_bits(
    enbg: list[float],
    params: list[int],
    budget_bits: float,
    support: tuple[int, ...] = SUPPORT,
    fixed: dict[int, int] | None = None,
    ties: list[list[int]] | None = None,
) -> list[int]:
    """The ILP of Eq. 8-9: widths maximising ``sum_l ENBG_l q_l`` with ``sum_l p_l q_l <= C``.

    Parameters
    ----------
    enbg : list of float
        ENBG of every layer (``g_l^(k-1)``; the objective's coefficients are ``-g_l``).
    params : list of int
        Parameter count ``p_l`` of every layer.
    budget_bits : float
        ``C``: the total weight storage allowed, in bits (fixed layers included).
    support : tuple of int
        Widths a free layer may take (``S_q``).
    fixed : dict, optional
        ``{layer index: width}`` for layers outside the ILP (the 16-bit first and last layers).
    ties : list of list of int, optional
        Groups of layers that must share one width (each layer in at most one group).

    Returns
    -------
    list of int
        A width per layer.

    Raises
    ------
    UserError
        If the budget is below the smallest assignment, or an argument is malformed.
    """
    n = len(enbg)
    fixed = dict(fixed or {})
    if len(params) != n:
        raise UserError(f"field 'params' has {len(params)} entries for {n} layers")
    if not support or any(b not in LAYER_BITS or b == 32 for b in support):
        raise UserError(f"field 'support' is {support!r}; allowed non-empty subsets of {LAYER_BITS[:-1]}")
    for group in ties or []:  # a layer tied to a fixed layer takes the fixed width
        widths = {fixed[i] for i in group if i in fixed}
        if len(widths) > 1:
            raise UserError(f"BMPQ: tied layers {group} hold different fixed widths {sorted(widths)}")
        if widths:
            width = widths.pop()
            fixed.update(dict.fromkeys(group, width))
    groups: list[list[int]] = []
    seen: set[int] = set()
    for group in [*(ties or []), *([i] for i in range(n))]:
        members = [i for i in group if i not in fixed and i not in seen]
        seen.update(members)
        if members:
            groups.append(members)
    fixed_bits = sum(params[i] * b for i, b in fixed.items())
    g_cost = [sum(params[i] for i in grp) for grp in groups]
    minimum = fixed_bits + min(support) * sum(g_cost)
    if budget_bits < minimum:
        raise UserError(
            f"field 'budget' is {budget_bits:.0f} bits ({budget_bits / 8 / 2**20:.4f} MB); the smallest "
            f"assignment (free layers at {min(support)} bits) needs {minimum} bits ({minimum / 8 / 2**20:.4f} MB), "
            f"{fixed_bits} of them for the fixed layers; allowed budgets >= {minimum} bits: ask for less "
            "compression, narrower edge layers, or a network whose first and last layers are a smaller share"
        )
    if not groups:
        return [fixed[i] for i in range(n)]
    nb = len(support)
    coeff = np.array([-sum(enbg[i] for i in grp) * b for grp in groups for b in support])
    cost = np.array([c * b for c in g_cost for b in support], dtype=np.float64)
    onehot = np.zeros((len(groups), len(groups) * nb))
    for k in range(len(groups)):
        onehot[k, k * nb : (k + 1) * nb] = 1
    constraints = [LinearConstraint(onehot, 1, 1), LinearConstraint(cost[None, :], -np.inf, budget_bits - fixed_bits)]
    result = milp(coeff, constraints=constraints, integrality=np.ones_like(coeff), bounds=Bounds(0, 1))
    if result.status != 0 or result.x is None:
        raise RuntimeError(f"scipy.optimize.milp failed: {result.message}")
    choice = np.round(result.x).reshape(len(groups), nb).argmax(axis=1)
    bits = [0] * n
    for i, b in fixed.items():
        bits[i] = b
    for grp, k in zip(groups, choice, strict=True):
        for i in grp:
            bits[i] = support[int(k)]
    return bits

# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class BMPQConfig:
    """Hyper-parameters of :func:`train_bmpq` (defaults follow Sec. III-D and IV-A, scaled where noted).

    Members
    -------
    budget_bits : float or None
        ILP budget ``C`` in bits; ``None`` together with ``compression`` sets ``C = 32 sum p_l / compression``.
    compression : float or None
        Target ``r_M^32`` (Eq. 12), used when ``budget_bits`` is None.
    support : tuple of int
        ``S_q``.
    edge_bits : int
        Width of the first and the last layer.
    warmup : int
        ``ep_w``: epochs at ``max(S_q)`` before the first ILP.
    interval : int
        ``ep_int`` (Def. 2, periodic).
    epochs, lr, momentum, weight_decay, batch_size, seed
        SGD schedule (step decay by 0.1 at 40 % and 70 % of ``epochs``).
    fp : bool
        Train the FP-32 baseline instead: every layer and activation at 32 bits, no ILP.
    """

    budget_bits: float | None = None
    compression: float | None = 10.0
    support: tuple[int, ...] = SUPPORT
    edge_bits: int = EDGE_BITS
    warmup: int = 2
    interval: int = 2
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    fp: bool = False

    def check(self) -> None:
        for name in ("warmup", "interval", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"field {name!r} is {value!r}; allowed integers >= 1")
        if not self.fp:
            if self.budget_bits is None and (self.compression is None or not self.compression > 1):
                raise UserError(f"field 'compression' is {self.compression!r}; allowed values > 1")
            if self.budget_bits is not None and not self.budget_bits > 0:
                raise UserError(f"field 'budget_bits' is {self.budget_bits!r}; allowed values > 0")
        if not self.fp and self.warmup >= self.epochs:
            raise UserError(f"field 'warmup' is {self.warmup} with {self.epochs} epochs; the first ILP runs after "
                            f"the warm-up, so allowed 1..{self.epochs - 1} (or more epochs)")
        check_bits(self.edge_bits, "edge_bits")
        if not self.lr > 0:
            raise UserError(f"field 'lr' is {self.lr!r}; allowed values > 0")


@dataclass
class EpochRecord:
    """One epoch: its index, the widths it trained with, mean loss, test accuracy, the layers' NBGs."""

    epoch: int
    bits: list[int]
    loss: float
    accuracy: float
    nbg: list[float]
    ilp: bool = False


@dataclass
class BMPQResult:
    """Outcome of :func:`train_bmpq`: per-epoch history, final widths, accuracy and Eq. 10-12 figures."""

    history: list[EpochRecord]
    layer_names: list[str]
    layer_bits: list[int]
    params: list[int]
    accuracy: float
    budget_bits: float | None
    assignments: list[dict] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.params, self.layer_bits)

    @property
    def memory_mb(self) -> float:
        return memory_mb(self.params, self.layer_bits)

    def to_json(self) -> dict:
        return {
            "layer_names": self.layer_names,
            "layer_bits": self.layer_bits,
            "params": self.params,
            "accuracy": self.accuracy,
            "budget_bits": self.budget_bits,
            "memory_mb": self.memory_mb,
            "fp32_memory_mb": memory_mb(self.params, [32] * len(self.params)),
            "compression_ratio": self.compression_ratio,
            "compression_ratio_16": 0.5 * self.compression_ratio,
            "assignments": self.assignments,
            "history": [vars(r) for r in self.history],
        }


def train_bmpq(
    model: nn.Module,
    split: Split,
    config: BMPQConfig,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> BMPQResult:
    """BMPQ training (Sec. III-D): warm-up at ``max(S_q)``, then the ILP after every epoch interval.

    ``model`` is converted in place with :func:`to_bmpq` if it still has DoReFa layers. Epoch ``e``
    (1-based) trains with the current widths while accumulating every free layer's NBG; after epoch
    ``ep_w`` and then every ``ep_int`` epochs the ENBG of the interval drives :func:`assign_bits`
    (Eq. 8-9). With ``config.fp`` every layer stays at 32 bits (the FP-32 baseline).

    Runs on :func:`model.training.distributed.device` and, under ``torchrun``, data-parallel exactly as
    :func:`model.training.loop.train` does (:func:`~model.training.loop.place`,
    :func:`~model.training.loop.backward_step`): the bit gradients are taken from the all-reduced gradient
    of the global batch, so each rank's NBGs are those of one process, and each epoch's NBG sums are then
    broadcast from rank 0 so that every rank's ILP sees the same numbers, bit for bit, and assigns the same
    widths. ``on_epoch`` is called on every rank.

    Raises
    ------
    UserError
        For out-of-range hyper-parameters or an infeasible budget.
    """
    config.check()
    if not any(isinstance(m, BMPQ_LAYERS) for m in model.modules()):
        to_bmpq(model)
    where = place(model)
    graph = trace(model, split.x_train[:2].to(where.device))
    n = len(graph.layers)
    if n < 3 and not config.fp:  # (the first and last layers are fixed: the ILP would have nothing to choose)
        raise UserError(f"BMPQ needs a network of at least three weight layers: its first and last stay at "
                        f"--edge-bits {config.edge_bits} and the ILP (Eq. 8-9) chooses the widths of those between; "
                        f"this one has {n} (an MLP needs two hidden layers, e.g. --hidden 64 64)")
    params_count = graph.params
    fixed = {0: config.edge_bits, n - 1: config.edge_bits}
    q_max = max(config.support)
    if config.fp:
        bits = [32] * n
        budget = None
    else:
        bits = [fixed.get(i, q_max) for i in range(n)]
        budget = (config.budget_bits if config.budget_bits is not None
                  else 32 * sum(params_count) / config.compression)
        # Fail before training if the budget is infeasible.
        assign_bits([0.0] * n, params_count, budget, config.support, fixed, graph.ties)
    set_bits(graph, bits)

    xs, ys = training_tensors(split.x_train, split.y_train, where.device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    milestones = [max(1, round(0.4 * config.epochs)), max(1, round(0.7 * config.epochs))]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    augment = getattr(split, "augment", False)
    history: list[EpochRecord] = []
    assignments: list[dict] = []
    interval_nbg: list[list[float]] = []
    boundary = config.warmup
    n_train = split.x_train.shape[0]
    free = [i for i in range(n) if i not in fixed]
    model.train()
    bar = progress_bar(range(1, config.epochs + 1), desc="BMPQ", disable=not progress or not distributed.is_main())
    with synced_batchnorm(model) if where.sync_bn else nullcontext():
        for epoch in bar:
            order = torch.randperm(n_train, generator=generator).to(xs.device)
            # Per-layer NBG sums and the loss stay on the device (no host synchronisation per batch).
            sums = torch.zeros(n, dtype=torch.float64, device=where.device)
            batches = 0
            total = torch.zeros((), dtype=torch.float64, device=where.device)
            for start in range(0, n_train, config.batch_size):
                idx = order[start : start + config.batch_size]
                x, y = batch_of(xs, ys, idx, where.device,
                                (lambda b: augment_batch(b, split.image_shape, generator)) if augment else None)
                optimizer.zero_grad()
                total += backward_step(model, x, y, params, where)
                if not config.fp:
                    # The gradient is the global batch's (all-reduced under torchrun): every rank's bit
                    # gradients are the single-process ones.
                    for i in free:
                        grad = graph.layers[i].weight.grad
                        if grad is not None:
                            sums[i] += nbg_tensor(graph.layers[i].weight, grad, q_max)
                optimizer.step()
                batches += 1
            schedule.step()
            finish(model, where)
            # Every rank solves the ILP with rank 0's statistics, bit for bit (they agree already; this
            # makes the widths independent of any difference in float summation between ranks).
            distributed.broadcast_(sums)
            epoch_nbg = (sums / batches).tolist()
            accuracy = evaluate(model, split.x_test, split.y_test, batch_size=1000)
            record = EpochRecord(epoch, layer_bits(graph), float(total) / n_train, accuracy, epoch_nbg)
            interval_nbg.append(epoch_nbg)
            if not config.fp and epoch == boundary and epoch < config.epochs:
                enbg = [float(np.mean([e[i] for e in interval_nbg])) for i in range(n)]
                new_bits = assign_bits(enbg, params_count, budget, config.support, fixed, graph.ties)
                assignments.append({"after_epoch": epoch, "enbg": enbg, "bits": new_bits})
                set_bits(graph, new_bits)
                record.ilp = True
                interval_nbg = []
                boundary += config.interval
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
    return BMPQResult(history, graph.names, layer_bits(graph), params_count, history[-1].accuracy, budget,
                      assignments)

