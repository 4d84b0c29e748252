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

from model.data import Split
from model.errors import UserError
from model.progress import progress_bar
from model.quant.lts import LTS_LAYERS, MODES, STRATEGIES, LTSQuantizer, _step, growth_rate, threshold
from model.training import distributed
from model.training.loop import batch_of, evaluate, synchronizer, training_tensors

# ----------------------------------------------------------------------------------------------------------
# Algorithm


class LTSScratcher:
    """Drives LTS over every LTS layer (:data:`model.quant.lts.LTS_LAYERS`) of a model (Sec. III-C).

    Iteration ``i`` (counted from 1) runs Eq. 5 and Eq. 6 in the layers' training forward, with ``t`` of
    Eq. 6 from ``p`` of Eq. 7/8 (or the fixed rate) at that ``i``: the scratcher sets each layer's threshold
    (:attr:`~model.quant.lts.QuantLinearLTS.lts_t`) for the next iteration. A weight whose ``D^i`` is below
    ``t`` is frozen from iteration ``i`` on: its gradient of iteration ``i`` is already zero ("If D^i_{w_n} is
    lower than the threshold t, w_n will be frozen, meaning zeroing out the gradient of w_n"), and it is
    never unfrozen (Sec. I: "A weight will be permanently frozen"). Call :meth:`after_step` once per training
    iteration, after ``optimizer.step()``; call :meth:`before_step` between the backward and
    ``optimizer.step()`` as well to keep the momentum of the weights that iteration froze from moving them in
    its step (without it they stop one step later, after :meth:`after_step` zeroes it).

    Frozen weights must not move. With ``optimizer`` given, the scratcher makes that hold by construction:
    the optimizer must apply no weight decay of its own to the layers' latent weights (the layers add it
    at their unfrozen positions, :attr:`~model.quant.lts.QuantLinearLTS.weight_decay`), and the scratcher
    zeroes the momentum of each weight the moment it freezes, so every later update of it is exactly 0 and
    nothing is restored. Without ``optimizer`` (any optimizer, any decay) each step ends by putting frozen
    weights back to their frozen values (one pass over every partly frozen layer). Either way a frozen weight
    also keeps its quantized value while the bounds ``l``, ``u`` train on: the layers' forwards use the
    fake-quant value it froze with (module docstring of :mod:`model.quant.lts`, "A frozen weight keeps its
    quantized value").

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
    optimizer : torch.optim.Optimizer, optional
        The optimizer stepping the layers (module docstring of :mod:`model.quant.lts`); SGD's
        ``momentum_buffer`` is the state it zeroes.

    Raises
    ------
    UserError
        For a bad strategy, ``m``, ``c`` or warm-up, a model without LTS layers, or an ``optimizer`` that
        decays the latent weights itself.
    """

    def __init__(self, model, iters_per_epoch, epochs, warmup, strategy="linear", c=0.5, m=0.99, enabled=True,
                 optimizer=None):
        if strategy not in STRATEGIES:
            raise UserError(f"field 'strategy' is {strategy!r}; allowed values {STRATEGIES}")
        if not 0 <= m < 1:
            raise UserError(f"field 'm' is {m!r}; allowed values in [0, 1)")
        if not 0 <= c <= 1:
            raise UserError(f"field 'p' is {c!r}; allowed values in [0, 1]")
        growth_rate(strategy, 1, iters_per_epoch, epochs, warmup, c)  # validates warmup
        self.layers = [mod for mod in model.modules() if isinstance(mod, LTS_LAYERS)]
        if not self.layers:
            raise UserError("model has no LTS layer (QuantLinearLTS, QuantConv2dLTS); LTS needs at least one")
        self.T, self.E, self.E_wm, self.strategy, self.c, self.m = iters_per_epoch, epochs, warmup, strategy, c, m
        self.enabled = enabled
        self.optimizer = optimizer
        self.iteration = 0
        self.total = sum(layer.weight.numel() for layer in self.layers)
        if optimizer is not None and enabled:
            latent = {id(layer.weight) for layer in self.layers}
            for group in optimizer.param_groups:
                if group.get("weight_decay", 0) and any(id(q) in latent for q in group["params"]):
                    raise UserError("LTSScratcher: the optimizer decays the LTS layers' latent weights itself; give "
                                    "their group weight_decay 0 and set the layers' weight_decay instead")
        for layer in self.layers:
            layer.lts_enabled = enabled
            layer.lts_m = m if enabled else None
            layer.lts_t = None
            layer.lts_restore = optimizer is None
        self._p = None
        self._set_threshold()

    def sparsity(self) -> float:
        """Weight-gradient sparsity now: frozen / all quantized weights (Sec. IV-A)."""
        return sum(layer.n_frozen for layer in self.layers) / self.total

    def rate(self, iteration: int) -> float:
        """``p`` of Eq. 7 / Eq. 8 (or the fixed rate) at (1-based) ``iteration``."""
        return growth_rate(self.strategy, iteration, self.T, self.E, self.E_wm, self.c)

    def _set_threshold(self) -> None:
        """Give every layer Eq. 6's ``t = Delta^B p`` of the next iteration (in its ``D`` units)."""
        if not self.enabled:
            return
        p = self.rate(self.iteration + 1)
        if p == self._p:
            return
        self._p = p
        for layer in self.layers:
            layer.lts_t = threshold(p, layer.bits) / _step(layer.bits)  # as lts_update divides it

    def before_step(self) -> None:
        """Zero the optimizer momentum of the weights this iteration's forward froze (call after the backward,
        before ``optimizer.step()``): their update in this step is then exactly 0 as well."""
        if not self.enabled or self.optimizer is None:
            return
        for layer in self.layers:
            n_new, idx = layer.pop_forward_freezes()
            if not n_new:
                continue
            buffer = self.optimizer.state.get(layer.weight, {}).get("momentum_buffer")
            if buffer is None:
                continue
            if any(i is None for i in idx):  # a dense freeze: zero where frozen (times the float mask)
                buffer.mul_(layer._plan.keep)
            else:  # sampled: only the few positions just frozen
                flat = buffer.view(-1)
                for i in idx:
                    flat.index_fill_(0, i, 0.0)

    def after_step(self) -> None:
        """End of an iteration (after ``optimizer.step()``): momentum of new freezes zeroed if
        :meth:`before_step` was not called, frozen weights restored without an optimizer, next ``t`` set."""
        self.iteration += 1
        if not self.enabled:
            return
        if self.optimizer is None:
            for layer in self.layers:
                layer.pop_forward_freezes()
                layer.restore_frozen_()
        else:
            self.before_step()
        self._set_threshold()


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


#: The learning rate of the quantizers' bounds ``l``, ``u`` as a fraction of the weights' (both modes). The
#: authors' code trains them at ``--lr_q 1e-4`` against ``--lr_m 0.1`` for the weights; here they also carry LSQ's
#: gradient scale (:meth:`model.quant.lts.LTSQuantizer.normalize`). The LTS minus plain-QAT gap on the validation
#: split (last 10,000 training images held out; seeds 0 / 1 at 3 bits; at 4 bits; the mean of the four), all at
#: the same sparsity (0.57 / 0.60): ratio 1 (the weights' rate) -0.44 / -0.17; -0.35 / +0.02; -0.235 pp. 0.1:
#: +0.03 / -0.27; -0.19 / -0.24; -0.17. 0.01: +0.32 / +0.07; -0.10 / -0.16; +0.03. 1e-3: +0.10 / -0.09; +0.26 /
#: -0.12; +0.04. 0 (bounds fixed at init): -0.23 / +0.08; +0.06 / +0.22; +0.03. Everything at or below 0.01 is
#: alike within the seed noise; the authors' 1e-3 is kept (LTS 0.1-0.25 pp more accurate than at ratio 1, plain
#: QAT within its noise). Bounds that move little keep a weight frozen at its level a sensible quantization of the
#: weights that go on training. (Ratios 1, 0.1 and 1e-3 were first run by a script that set the group itself;
#: 1e-3 run again through this class gives the same accuracies to the last image; 0.01 and 0 ran through it.)
BOUNDS_LR_RATIO = 1e-3


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
    bounds_lr_ratio: float = BOUNDS_LR_RATIO,
) -> LTSResult:
    """Quantization-aware training with (``mode="lts"``) or without (``"baseline"``) the scratcher.

    SGD with momentum and weight decay (Sec. IV-A; weight decay on the latent weights only, not on ``l``,
    ``u``, PACT ``alpha``, batch-norm or bias; under LTS only at unfrozen positions: the layers add it to
    their weight gradient, :class:`LTSScratcher` with the optimizer), a per-step cosine learning rate, cross
    entropy. Shuffling from its own generator seeded by ``seed``, so both modes see the same batches. Runs
    on :func:`model.training.distributed.device` (one process; batches from
    :func:`model.training.loop.training_tensors`). ``train_time`` covers the whole loop, bookkeeping included,
    and is what ``bench lts`` compares as ``total_time_ratio``.

    Parameters
    ----------
    model : nn.Module
        Holds LTS layers (:class:`~model.quant.lts.QuantLinearLTS`, :class:`~model.quant.lts.QuantConv2dLTS`) of
        ``bits`` bits.
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
    bounds_lr_ratio : float
        The bounds' learning rate over ``lr`` (:data:`BOUNDS_LR_RATIO`).

    Raises
    ------
    UserError
        For an unknown ``mode`` / ``strategy``, ``warmup`` outside ``[0, epochs)``, ``m`` outside
        ``[0, 1)``, or layers whose bits differ from ``bits``.
    """

    run = LTSTraining(model, split, epochs, bits, mode, strategy, p, m, warmup, lr, momentum, weight_decay,
                      batch_size, seed, bounds_lr_ratio)
    train_lockstep([run], progress=progress)
    return run.result


class LTSTraining:
    """One :func:`train_lts` run, stepped from outside (:func:`train_lockstep`); arguments as there.

    The run's ``result.train_time`` and ``backward_time`` count only the time spent in its own
    :meth:`step` and epoch boundaries, so several runs stepped in turn (one step each) are timed under the
    same machine load: what ``bench lts`` needs for an LTS / plain QAT time ratio on a shared machine.
    """

    def __init__(self, model, split, epochs, bits, mode="lts", strategy="linear", p=0.5, m=0.99, warmup=1,
                 lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=128, seed=0, bounds_lr_ratio=BOUNDS_LR_RATIO):
        if mode not in MODES:
            raise UserError(f"field 'mode' is {mode!r}; allowed values {MODES}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"field 'epochs' is {epochs!r}; allowed values integers >= 1")
        if not (isinstance(bounds_lr_ratio, int | float) and 0.0 <= bounds_lr_ratio <= 1.0):
            raise UserError(f"field 'bounds_lr_ratio' is {bounds_lr_ratio!r}; allowed values numbers in [0, 1]")
        n = split.x_train.shape[0]
        iters = math.ceil(n / batch_size)
        layers = [mod for mod in model.modules() if isinstance(mod, LTS_LAYERS)]
        latent_ids = {id(layer.weight) for layer in layers}
        latent = [w for w in model.parameters() if id(w) in latent_ids]
        bounds = [q for mod in model.modules() if isinstance(mod, LTSQuantizer) for q in (mod.lower, mod.upper)]
        grouped = latent_ids | {id(q) for q in bounds}
        others = [q for q in model.parameters() if id(q) not in grouped]
        # Plain QAT is plain SGD with weight decay on the latent weights. Under LTS the layers apply the decay
        # at their unfrozen positions instead (none by SGD), so a frozen weight's update is exactly zero.
        lts = mode == "lts"
        self.optimizer = torch.optim.SGD(
            [{"params": latent, "weight_decay": 0.0 if lts else weight_decay}, {"params": others, "weight_decay": 0.0},
             {"params": bounds, "weight_decay": 0.0, "lr": lr * bounds_lr_ratio}],
            lr=lr,
            momentum=momentum,
        )
        self.scratcher = LTSScratcher(model, iters, epochs, warmup, strategy, p, m, enabled=(mode == "lts"),
                                      optimizer=self.optimizer)
        wrong = sorted({layer.bits for layer in self.scratcher.layers} - {bits})
        if wrong:
            raise UserError(f"field 'bits' is {bits!r} but the model's LTS layers have bits {wrong}")
        for layer in self.scratcher.layers:
            layer.weight_decay = weight_decay if lts else 0.0
        self.dev = distributed.device()
        self.model = model.to(self.dev)
        self.split, self.epochs, self.n, self.batch_size = split, epochs, n, batch_size
        self.label = f"{mode} {bits}b"
        self.xs, self.ys = training_tensors(split.x_train, split.y_train, self.dev)
        # Honest timings on a GPU: wait for the device before reading the clock.
        self.sync = synchronizer(self.dev)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs * iters)
        self.generator = torch.Generator().manual_seed(seed)
        self.result = LTSResult(0.0, 0.0, 0.0, 0.0, 0.0)
        self._order = self._total = None

    def start_epoch(self) -> None:
        t0 = time.perf_counter()
        self.model.train()
        self._order = torch.randperm(self.n, generator=self.generator).to(self.xs.device)
        self._total = torch.zeros((), dtype=torch.float64, device=self.dev)
        self.result.train_time += time.perf_counter() - t0

    def step(self, first: int) -> None:
        """The training iteration on the batch starting at position ``first`` of this epoch's order.

        Forward (under LTS: Eq. 5 and Eq. 6 in the layers, :class:`LTSScratcher`), backward, the scratcher's
        :meth:`~LTSScratcher.before_step`, optimizer and learning-rate steps, :meth:`~LTSScratcher.after_step`.
        ``wgs`` records the sparsity the backward of the iteration used (after its forward's freezes).
        """
        self.sync()
        t0 = time.perf_counter()
        result, scratcher = self.result, self.scratcher
        idx = self._order[first : first + self.batch_size]
        x, y = batch_of(self.xs, self.ys, idx, self.dev)
        y = y.to(self.dev, non_blocking=True)
        loss = F.cross_entropy(self.model(x.to(self.dev, non_blocking=True)), y)
        # The sparsity this iteration's backward uses: the forward has just frozen the weights whose D^i < t.
        result.wgs.append(scratcher.sparsity() if scratcher.enabled else 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        t1 = time.perf_counter()
        loss.backward()
        self.sync()
        result.backward_time += time.perf_counter() - t1
        scratcher.before_step()
        self.optimizer.step()
        self.schedule.step()
        scratcher.after_step()
        self._total += loss.detach().double() * len(idx)
        self.sync()
        result.train_time += time.perf_counter() - t0

    def end_epoch(self) -> None:
        t0 = time.perf_counter()
        self.result.losses.append(float(self._total) / self.n)
        self.result.sparsity_history.append(self.scratcher.sparsity() if self.scratcher.enabled else 0.0)
        self.result.train_time += time.perf_counter() - t0

    def finish(self) -> None:
        result = self.result
        result.accuracy = evaluate(self.model, self.split.x_test, self.split.y_test)
        result.avg_wgs = sum(result.wgs) / len(result.wgs)
        result.bp_flops_reduction = result.avg_wgs / 2


def train_lockstep(runs: list[LTSTraining], progress: bool = True) -> None:
    """Train every run of ``runs`` to the end, one step of each in turn (they must share the data and the
    batch size); each run's times are its own (:class:`LTSTraining`).

    The order of the runs within a turn alternates (A B, B A, A B, ...): a run stepped right after another
    finds the caches and the clock as that one left them, so always stepping the same run second would bias
    a time ratio; alternating gives each run each position on half the steps. Each run's computation is
    unchanged by the order (its own model, optimizer and generator), so its results are those of a run on
    its own.
    """
    if not runs:
        raise ValueError("train_lockstep needs at least one run")
    first = runs[0]
    if any(r.n != first.n or r.batch_size != first.batch_size or r.epochs != first.epochs for r in runs):
        raise ValueError("train_lockstep needs runs over the same data, epochs and batch size")
    label = " / ".join(r.label for r in runs)
    backwards = runs[::-1]
    turn = 0
    for _ in progress_bar(range(first.epochs), desc=label, leave=False, disable=not progress):
        for r in runs:
            r.start_epoch()
        for start in range(0, first.n, first.batch_size):
            for r in runs if turn % 2 == 0 else backwards:
                r.step(start)
            turn += 1
        for r in runs:
            r.end_epoch()
    for r in runs:
        r.finish()
