"""Vertical-layered training (the vertical-layering paper, Sec. 4.2 and 5): one net trained once that runs at
every width of ``widths`` (default 2/3/4 bits), its baselines, and the mixed precision of Eq. 12.

The layers and the model surgery are in :mod:`model.quant.vertical`; the quantizers (Eq. 1, 5-8) in
:mod:`model.quant.lsq`.

* **Joint training (Sec. 4.2.1).** Per mini-batch, one forward and one backward pass per width, from the
  source width ``n`` down (so that the next wider net's output is there for Eq. 11), with the STE gradients
  of Eq. 7-8. The gradients of the *shared* parameters (every weight ``w``, every source step ``s_w``, the
  edge layers' weights, steps and biases) are combined by the MOO rule; the *per-width* parameters (BN
  affine parameters, activation steps; BN statistics are per width too) receive the gradient of their own
  width's loss only and stay outside the MOO (Sec. 4.2.2).
* **Unitary scalarization (US, Eq. 9).** ``alpha_i = 1/(n+1)`` for the ``n+1`` widths (the paper indexes the
  widths ``0..n``; so ``1/len(widths)``), the paper's default.
* **MGD (Eq. 10).** ``alpha`` is the min-norm point of the convex hull of the per-width gradients of the
  shared parameters (``w`` and ``s_w``, Eq. 7-8), found by the Frank-Wolfe iteration of Sener & Koltun
  (2018; the paper's [54]) with exact line search, once per mini-batch (:func:`min_norm_weights`).
* **Self-KD (Eq. 11).** ``L_i = CE_i + L_KD(z_(i+1), z_i)`` for ``i < n``, ``L_KD = 1 - cos(z_(i+1), z_i)`` of
  the softmax outputs, the teacher's (next wider net's) output detached; ``L_n = CE_n``.
* **Optimizer.** Adam with a per-step cosine schedule, as the project's other loops
  (:func:`model.training.loop.train`); the paper uses SGD with momentum and cosine decay from a
  pre-trained float net, which a 2-minute CPU run cannot afford. Every variant here (the baselines
  included) starts from the same random initialisation and trains for the same epochs.
* **Selection.** With a validation split, the state of the epoch with the best mean validation accuracy over
  the widths is kept; test accuracies are reported for it.
* **Baselines (Table 1, Sec. 6.3).** ``lsq``: a separate LSQ net per width (the oracle; a one-width vertical
  net is plain LSQ). ``downsample``: one LSQ net trained at the source width only, the lower widths obtained
  by direct floor downsampling without compensation (Fig. 5(b)), their BNs copied from the source width's
  and re-estimated, their activation steps ``2^(n-i)`` times the source width's. Fig. 5(b) and Table 5 also
  fine-tune the lower widths; here they are not: fine-tuning a width's weights would give it weights of its own,
  and the baseline stands for one stored model that serves every width by dropping bits (Sec. 3.2, Fig. 1(b)),
  whose per-width parameters (BN, activation steps) are set as above. So this baseline is weaker than the paper's
  at the lower widths. ``ascending``: Sec. 3.3's
  ascending layer training, the basic layer by QAT, then each enhance layer ``b_i = [b_i^r > 0]`` with an
  STE, one stage per width, lower bits frozen (:class:`AscendingState`). The no-compensation and no-KD
  ablations are options of the joint training. Table 1's "multi-layer co-training" (Sec. 3.3: every enhance
  layer's ``b_i = sign(b_i^r)`` optimised at once) is not built: the paper reports that it "easily diverges"
  (NaN in Table 1); it is a baseline, not a step of the method.
* **Mixed precision (Eq. 12).** Per inner layer ``m`` a width ``i_m`` minimising ``sum_m ||w_hat_(i_m) -
  w_hat_n||^2`` subject to ``sum_m N_m i_m <= B`` bits, solved exactly with HiGHS through ``scipy.optimize.milp``.
  The paper writes the error on the codes ``w_bar``; codes of different widths live on different steps (``s_i =
  2^(n-i) s_n``), so the error is taken on the de-quantized weights (with the compensation ``z_i`` when it is on),
  the same codes rescaled. The paper's budget counts bits relative to the source width, ``sum N_m (|w_bar_(i_m)| -
  |w_bar_n|) <= B`` (each term at most 0); the same constraint in absolute bits is ``sum N_m i_m <= B + n sum N_m``,
  and ``B`` here is that absolute total (what a user sizes a model by). The budget counts the inner layers' weights
  (the 8-bit edge layers are the same in every assignment). The sampled net's BN statistics are then re-estimated on
  a few training batches (Sec. 6.4).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn
from torch.nn import functional as F

from model.data import Split, augment_batch
from model.errors import UserError
from model.progress import progress_bar
from model.quant.lsq import lsq_codes, lsq_quantize
from model.quant.vertical import (
    DEFAULT_WIDTHS,
    EDGE_BITS,
    PER_WIDTH_TYPES,
    SwitchableBatchNorm,
    VerticalActQuant,
    check_widths,
    inner_layers,
    recalibrate_batchnorm,
    set_layer_widths,
    set_width,
    vertical_layers,
    width,
    widths_of,
)
from model.training.loop import batch_of, evaluate, place, training_tensors

#: MOO rules of Sec. 4.2.2.
MOO = ("us", "mgd")
#: Training schemes: the paper's joint training and the baselines (module docstring).
SCHEMES = ("joint", "lsq", "downsample", "ascending")


@dataclass(frozen=True)
class VerticalConfig:
    """Options of :func:`train_vertical` (module docstring).

    Raises
    ------
    UserError
        For a value outside the allowed ones, naming the field.
    """

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    moo: str = "us"
    compensate: bool = True
    kd: bool = True
    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "widths", check_widths(self.widths))
        if self.moo not in MOO:
            raise UserError(f"field 'moo' is {self.moo!r}; allowed {MOO}")
        for name, lo in (("epochs", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise UserError(f"field '{name}' is {value!r}; allowed integers >= {lo}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr <= 10):
            raise UserError(f"field 'lr' is {self.lr!r}; allowed numbers in (0, 10]")

    def to_json(self) -> dict:
        return {"widths": list(self.widths), "moo": self.moo, "compensate": self.compensate, "kd": self.kd,
                "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "seed": self.seed}


# --------------------------------------------------------------------------------------- Eq. 9-11
def us_weights(count: int) -> torch.Tensor:
    """Unitary scalarization: ``alpha_i = 1/(n+1)`` for ``count = n+1`` widths (Sec. 4.2.2)."""
    return torch.full((count,), 1.0 / count, dtype=torch.float64)


def min_norm_weights(grads: torch.Tensor, iters: int = 250, tol: float = 1e-12) -> torch.Tensor:
    """Eq. 10: ``alpha`` on the simplex minimising ``||sum_i alpha_i g_i||^2`` by Frank-Wolfe.

    ``grads`` is ``[K, P]`` (one flattened gradient of the shared parameters per width). Works on the Gram
    matrix ``M = G G^T`` (float64). Each step moves toward the vertex ``t = argmin_j (M alpha)_j`` (the
    Frank-Wolfe step of Sener & Koltun 2018, Alg. 2, the paper's [54]) or, when that promises more, away
    from the worst vertex in use (the away step of Lacoste-Julien & Jaggi 2015: plain Frank-Wolfe zigzags
    and converges sublinearly when the optimum lies on a face, as it often does here), with the exact line
    search of the quadratic.
    """
    g = grads.detach().double()
    k = g.shape[0]
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    m = (g @ g.T).cpu()  # K x K: the iteration runs on the host whatever device the gradients are on
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
    for _ in range(iters):
        grad = m @ alpha
        value = alpha @ grad
        t = int(torch.argmin(grad))
        support = alpha > 0
        a = int(torch.where(support, grad, torch.full_like(grad, -torch.inf)).argmax())
        fw_gap, away_gap = float(value - grad[t]), float(grad[a] - value)
        if max(fw_gap, away_gap) <= tol:
            break
        if fw_gap >= away_gap:
            d = -alpha.clone()
            d[t] += 1
            gamma_max = 1.0
        else:
            d = alpha.clone()
            d[a] -= 1
            gamma_max = float(alpha[a] / (1 - alpha[a])) if alpha[a] < 1 else 1.0
        curvature = float(d @ m @ d)
        if curvature <= 0:
            break
        gamma = min(max(-float(grad @ d) / curvature, 0.0), gamma_max)
        alpha = (alpha + gamma * d).clamp_min(0)
        alpha = alpha / alpha.sum()
    return alpha


def cosine_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 11's ``L_KD``: ``1 - cos(softmax(teacher), softmax(student))``, batch mean; teacher detached."""
    return (1 - F.cosine_similarity(F.softmax(student_logits, dim=1),
                                    F.softmax(teacher_logits.detach(), dim=1), dim=1)).mean()


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(shared, per_width)``: per-width are the parameters of BN and activation quantizers (Sec. 4.2.2)."""
    per_width_ids = {id(p) for m in model.modules() if isinstance(m, PER_WIDTH_TYPES) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) not in per_width_ids], [p for p in params if id(p) in per_width_ids]


def joint_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, widths: tuple[int, ...], moo: str,
                   kd: bool, shared: list[nn.Parameter]) -> tuple[list[float], torch.Tensor]:
    """One joint-training step's gradients in ``.grad`` (call ``zero_grad`` before; module docstring).

    Returns the loss of each width (in ``widths`` order) and the ``alpha`` used. Shared parameters hold
    ``sum_i alpha_i dL_i``; per-width parameters ``dL_i`` of their own width.
    """
    losses: dict[int, float] = {}
    grads: dict[int, torch.Tensor] = {}
    teacher = None
    for bits in sorted(widths, reverse=True):
        set_width(model, bits)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if kd and teacher is not None:
            loss = loss + cosine_kd(logits, teacher)
        teacher = logits.detach()
        loss.backward()
        losses[bits] = float(loss.detach())
        grads[bits] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                 for p in shared])
        for p in shared:
            p.grad = None
    stacked = torch.stack([grads[b] for b in widths])
    alpha = us_weights(len(widths)) if moo == "us" else min_norm_weights(stacked)
    combined = (alpha.to(stacked).unsqueeze(1) * stacked).sum(0)
    offset = 0
    for p in shared:
        p.grad = combined[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return [losses[b] for b in widths], alpha


def evaluate_widths(model: nn.Module, x: torch.Tensor, y: torch.Tensor, widths=None,
                    batch_size: int = 1024) -> dict[int, float]:
    """Top-1 accuracy at every width (uniform precision), ``{bits: accuracy}``."""
    result = {}
    for bits in widths or widths_of(model):
        with width(model, bits):
            result[bits] = evaluate(model, x, y, batch_size=batch_size)
    return result


# --------------------------------------------------------------------------------------- training
@dataclass
class VerticalResult:
    """What :func:`train_vertical` returns.

    Members
    -------
    test_accuracy, val_accuracy : dict
        ``{bits: accuracy}`` of the selected state (val empty without a validation split).
    history : list of dict
        Per epoch: ``epoch``, ``loss`` per width, ``val_accuracy`` per width, ``alpha`` (mean over the
        epoch's steps, per width).
    selected_epoch : int
        The epoch whose state was kept (the last without a validation split).
    model : nn.Module, optional
        The trained net (set by :func:`train_lsq_oracle`, which builds one per width).
    """

    test_accuracy: dict[int, float]
    val_accuracy: dict[int, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    selected_epoch: int = 0
    model: nn.Module | None = None

    def to_json(self) -> dict:
        return {"test_accuracy": {str(k): v for k, v in self.test_accuracy.items()},
                "val_accuracy": {str(k): v for k, v in self.val_accuracy.items()},
                "selected_epoch": self.selected_epoch, "history": self.history}


def _batches(split: Split, batch_size: int, generator: torch.Generator, xs, ys, dev: torch.device):
    n = xs.shape[0]
    order = torch.randperm(n, generator=generator).to(xs.device)
    for start in range(0, n, batch_size):
        idx = order[start: start + batch_size]
        yield batch_of(xs, ys, idx, dev, (lambda b: augment_batch(b, split.image_shape, generator))
                       if getattr(split, "augment", False) else None)


def train_vertical(model: nn.Module, split: Split, config: VerticalConfig, validation=None,
                   train_widths: tuple[int, ...] | None = None, params: list[nn.Parameter] | None = None,
                   progress: bool = False) -> VerticalResult:
    """Joint training of a vertical net (:func:`model.quant.vertical.to_vertical`) in place.

    Parameters
    ----------
    model : nn.Module
        A vertical net whose widths are ``config.widths``.
    split : Split
        Training and test data.
    config : VerticalConfig
        MOO rule, KD, epochs, Adam's learning rate, batch size, seed (shuffling and augmentation).
    validation : model.runs.validation.Validation, optional
        Held-out images for selecting the epoch (module docstring).
    train_widths : tuple of int, optional
        Train at these widths only (default all; the ``downsample`` baseline trains the source width).
    params : list of nn.Parameter, optional
        Train only these (default all; the ascending baseline trains one stage at a time).
    progress : bool
        Show a tqdm bar over the epochs.
    """
    if tuple(widths_of(model)) != tuple(config.widths):
        raise UserError(f"field 'widths' is {list(config.widths)} but the model was built for "
                        f"{list(widths_of(model))}")
    where = place(model)
    if where.world > 1:
        raise UserError("vertical training runs in one process; run it without torchrun")
    train_widths = tuple(sorted(train_widths or config.widths))
    xs, ys = training_tensors(split.x_train, split.y_train, where.device)
    generator = torch.Generator().manual_seed(config.seed)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    trainable_ids = {id(p) for p in trainable}
    shared = [p for p in split_parameters(model)[0] if id(p) in trainable_ids]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    steps = config.epochs * math.ceil(xs.shape[0] / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    history: list[dict] = []
    best = (-1.0, None, 0)
    bar = progress_bar(range(1, config.epochs + 1), desc="vertical", leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        loss_sum = np.zeros(len(train_widths))
        alpha_sum = np.zeros(len(train_widths))
        count = 0
        for x, y in _batches(split, config.batch_size, generator, xs, ys, where.device):
            x, y = x.to(where.device, non_blocking=True), y.to(where.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            losses, alpha = joint_backward(model, x, y, train_widths, config.moo, config.kd, shared)
            optimizer.step()
            schedule.step()
            loss_sum += losses
            alpha_sum += alpha.numpy()
            count += 1
        set_width(model, config.widths[-1])
        row = {"epoch": epoch, "loss": {str(b): float(v / count) for b, v in zip(train_widths, loss_sum)},
               "alpha": {str(b): float(v / count) for b, v in zip(train_widths, alpha_sum)}}
        if validation is not None:
            val = evaluate_widths(model, validation.x, validation.y, train_widths)
            row["val_accuracy"] = {str(b): a for b, a in val.items()}
            score = float(np.mean(list(val.values())))
            if score > best[0]:
                best = (score, copy.deepcopy(model.state_dict()), epoch)
        history.append(row)
    selected = config.epochs
    if best[1] is not None:
        model.load_state_dict(best[1])
        selected = best[2]
    set_width(model, config.widths[-1])
    val_acc = evaluate_widths(model, validation.x, validation.y) if validation is not None else {}
    test_acc = evaluate_widths(model, split.x_test, split.y_test)
    return VerticalResult(test_acc, val_acc, history, selected)


# --------------------------------------------------------------------------------------- baselines
def train_lsq_oracle(build, split: Split, config: VerticalConfig, validation=None,
                     progress: bool = False) -> dict[int, VerticalResult]:
    """Per-width LSQ (the oracle of Table 1): a separate net per width, ``{bits: result}``.

    ``build(widths)`` returns a fresh vertical net for ``widths`` (the same initial weights every call); a
    one-width net is plain LSQ (no downsampling, no compensation, no KD).
    """
    results = {}
    for bits in config.widths:
        single = VerticalConfig(widths=(bits,), moo="us", compensate=False, kd=False, epochs=config.epochs,
                                lr=config.lr, batch_size=config.batch_size, seed=config.seed)
        model = build((bits,))
        results[bits] = train_vertical(model, split, single, validation, progress=progress)
        results[bits].model = model
    return results


def train_downsample(model: nn.Module, split: Split, config: VerticalConfig, validation=None,
                     calib_batches: int = 8, progress: bool = False) -> VerticalResult:
    """Direct downsampling (Fig. 5(b)): LSQ at the source width only, then every lower width by floor
    downsampling without compensation; its BN copied from the source width and re-estimated, activation
    steps ``2^(n-i)`` times the source width's. ``model`` must be built without compensation."""
    if any(layer.compensate for layer in inner_layers(model)):
        raise UserError("the downsample baseline runs without compensation: build the model with compensate=False")
    top = config.widths[-1]
    train_vertical(model, split, VerticalConfig(**{**config.to_json(), "widths": config.widths, "kd": False}),
                   validation, train_widths=(top,), progress=progress)
    k_top = config.widths.index(top)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, VerticalActQuant):
                for k, bits in enumerate(m.widths):
                    m.steps[k] = m.steps[k_top] * (1 << (top - bits))
                    m.initialized[k] = True
            elif isinstance(m, SwitchableBatchNorm):
                for k in range(len(m.widths)):
                    m.bns[k].load_state_dict(m.bns[k_top].state_dict())
    dev = next(model.parameters()).device
    batches = [b.to(dev) for b in calibration_batches(split, config.batch_size, calib_batches, config.seed)]
    for bits in config.widths[:-1]:
        set_width(model, bits)
        recalibrate_batchnorm(model, batches)
    set_width(model, top)
    val = evaluate_widths(model, validation.x, validation.y) if validation is not None else {}
    return VerticalResult(evaluate_widths(model, split.x_test, split.y_test), val, [], config.epochs)


class AscendingState(nn.Module):
    """The ascending layer training of Sec. 3.3 on a vertical net: after the basic layer's QAT, the codes
    of the inner layers at ``bits`` are ``2 w_bar_(bits-1) + b``, ``b = [b^r > 0]`` (the paper's entry-wise
    1/0 sign) with a straight-through gradient (clipped to ``|b^r| <= 1``), the lower codes frozen, the step
    ``s_(bits) = s_(bits-1) / 2`` (Eq. 3).

    :meth:`attach` freezes the current codes of every inner layer at the current width and gives each an
    enhance source ``b^r`` (initialised to the rounding residual of ``w / s``, so that ``b`` starts as the
    next bit of the latent weight) used at the next width. The layers' forward then uses the frozen codes.
    """

    def __init__(self, model: nn.Module, base: int):
        super().__init__()
        self.layers = inner_layers(model)
        self.base = base
        for layer in self.layers:
            layer.ascending = {}
            layer.forward = _ascending_forward(layer, base)

    def attach(self, bits: int) -> list[nn.Parameter]:
        """Freeze the codes at ``bits - 1`` and add ``b^r`` for ``bits``; returns the new ``b^r`` parameters."""
        new = []
        for layer in self.layers:
            self._freeze(layer, bits - 1)
            codes, step = layer.ascending[bits - 1]
            with torch.no_grad():
                residual = layer.weight / (step / 2) - 2 * codes - 0.5
            b_r = nn.Parameter(residual.clamp(-1, 1).clone())
            if not hasattr(layer, "enhance_r"):
                layer.enhance_r = nn.ParameterList()
            layer.enhance_r.append(b_r)
            layer.ascending[bits] = None  # being trained
            new.append(b_r)
        return new

    def freeze_all(self, bits: int) -> None:
        """Freeze the codes at ``bits`` (after the last stage)."""
        for layer in self.layers:
            self._freeze(layer, bits)

    @staticmethod
    @torch.no_grad()
    def _freeze(layer, bits: int) -> None:
        if bits - 1 in layer.ascending:  # codes at bits = 2 * codes at bits-1 + [b^r > 0] (Eq. 3)
            codes, step = layer.ascending[bits - 1]
            b = (layer.enhance_r[bits - 1 - min(layer.ascending)] > 0).to(codes.dtype)
            layer.ascending[bits] = ((2 * codes + b).detach(), step / 2)
        else:  # the basic layer: the Eq. 1 codes its QAT stage trained, step s_w 2^(n - bits)
            step = layer.step * (1 << (layer.top - bits))
            layer.ascending[bits] = (lsq_codes(layer.weight, step, bits, signed=True).round().detach(),
                                     float(step.detach()))


def _ascending_forward(layer, base: int):
    def forward(x):
        bits = layer.bits
        state = layer.ascending.get(bits)
        if bits == base and state is None:  # stage 0: dedicated QAT (Eq. 1) at the base width, step s_w 2^(n-base)
            w = lsq_quantize(layer.weight, layer.step * (1 << (layer.top - base)), base, signed=True)
        elif state is not None:  # a frozen width
            codes, step = state
            w = codes * step
        elif bits in layer.ascending:  # the width being trained: frozen lower codes plus sign(b^r) (STE)
            codes, step = layer.ascending[bits - 1]
            b_r = layer.enhance_r[bits - 1 - min(layer.ascending)]  # enhance_r[0] is base + 1
            hard = (b_r > 0).to(b_r.dtype)
            soft = b_r.clamp(-1, 1)
            b = (hard - soft).detach() + soft
            w = (2 * codes + b) * (step / 2)
        else:
            w = layer.quantized_weight()
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, w, layer.bias)
        return F.linear(x, w, layer.bias)
    return forward


def train_ascending(model: nn.Module, split: Split, config: VerticalConfig, validation=None,
                    progress: bool = False) -> VerticalResult:
    """Ascending layer training (Sec. 3.3, Table 1): ``config.epochs`` epochs of QAT at the lowest width, then
    ``config.epochs`` epochs per enhance layer (only ``b^r`` and that width's BN / activation steps train).
    ``model`` must be built without compensation (the codes are exact sums of bit planes)."""
    widths = config.widths
    base = widths[0]
    stage = VerticalConfig(**{**config.to_json(), "kd": False})
    if any(layer.compensate for layer in inner_layers(model)):
        raise UserError("the ascending baseline runs without compensation: build the model with compensate=False")
    # Stage 0: the basic layer by dedicated LSQ QAT (Eq. 1) at the lowest width.
    state = AscendingState(model, base)
    train_vertical(model, split, stage, validation, train_widths=(base,), progress=progress)
    for bits in widths[1:]:
        new = state.attach(bits)
        # Only b^r and the per-width parameters train: the edge layers and the lower bits stay as they are,
        # so the narrower nets are not changed by the later stages.
        per_width = [p for m in model.modules() if isinstance(m, PER_WIDTH_TYPES) for p in m.parameters()]
        train_vertical(model, split, stage, validation, train_widths=(bits,), params=new + per_width,
                       progress=progress)
    state.freeze_all(widths[-1])
    val = evaluate_widths(model, validation.x, validation.y) if validation is not None else {}
    return VerticalResult(evaluate_widths(model, split.x_test, split.y_test), val, [], config.epochs)


# --------------------------------------------------------------------------------------- Eq. 12
def downsampling_errors(model: nn.Module) -> list[dict[int, float]]:
    """Per inner layer, ``{bits: ||w_hat_bits - w_hat_n||^2}`` of the de-quantized weights (module docstring)."""
    rows = []
    for layer in inner_layers(model):
        top = layer.dequantized(layer.top)
        rows.append({b: float(((layer.dequantized(b) - top) ** 2).sum()) for b in layer.widths})
    return rows


def assign_widths(errors: list[dict[int, float]], params: list[int], budget_bits: float) -> list[int]:
    """Eq. 12 solved exactly: one width per layer minimising the summed error with ``sum N_m i_m <= B``.

    One-hot binaries ``x_(m,i)`` (``sum_i x_(m,i) = 1``), objective ``sum e_(m,i) x_(m,i)``, budget
    ``sum N_m i x_(m,i) <= B``; HiGHS through ``scipy.optimize.milp``.

    Raises
    ------
    UserError
        If the lists differ in length or the budget is below every layer at its lowest width.
    """
    if len(errors) != len(params) or not errors:
        raise UserError(f"field 'params' has {len(params)} entries for {len(errors)} layers")
    choices = [(m, b) for m, row in enumerate(errors) for b in sorted(row)]
    lowest = sum(p * min(row) for p, row in zip(params, errors))
    if budget_bits < lowest:
        raise UserError(f"field 'budget_bits' is {budget_bits:g}; at least {lowest} bits are needed (every layer at "
                        f"its lowest width)")
    c = np.array([errors[m][b] for m, b in choices], dtype=np.float64)
    one_hot = np.zeros((len(errors), len(choices)))
    for j, (m, _) in enumerate(choices):
        one_hot[m, j] = 1
    cost = np.array([[params[m] * b for m, b in choices]], dtype=np.float64)
    res = milp(c, constraints=[LinearConstraint(one_hot, 1, 1), LinearConstraint(cost, -np.inf, budget_bits)],
               integrality=np.ones(len(choices)), bounds=Bounds(0, 1))
    if not res.success:  # pragma: no cover - feasible by the check above
        raise UserError(f"Eq. 12: the MILP found no assignment ({res.message})")
    chosen = [b for (m, b), x in zip(choices, res.x) if x > 0.5]
    return chosen


def calibration_batches(split: Split, batch_size: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` random training batches (the data for BN re-estimation)."""
    order = torch.randperm(split.x_train.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    return [split.x_train[order[i * batch_size: (i + 1) * batch_size]] for i in range(count)
            if i * batch_size < len(order)]


def model_bits(model: nn.Module) -> int:
    """Weight storage of the net at its current widths: ``sum N_m bits_m`` (edge layers at 8 bits)."""
    return sum(layer.weight.numel() * layer.weight_bits for layer in vertical_layers(model))


def bn_state(model: nn.Module) -> dict:
    """The statistics of the BN in use of every :class:`SwitchableBatchNorm`: ``{name: {"bits", "running_mean",
    "running_var"}}`` (CPU tensors), what :func:`model.export.convert_vertical.to_golden_vertical` takes per
    Eq. 12 row."""
    return {name: {"bits": int(m.bits), "running_mean": m.current.running_mean.detach().cpu().clone(),
                   "running_var": m.current.running_var.detach().cpu().clone()}
            for name, m in model.named_modules() if isinstance(m, SwitchableBatchNorm)}


def mixed_precision_curve(model: nn.Module, split: Split, points: int = 5, calib_batches: int = 8,
                          batch_size: int = 128, seed: int = 0) -> list[dict]:
    """Fig. 8: test accuracy against model size for Eq. 12 assignments at ``points`` budgets spread evenly
    between every inner layer at the lowest and at the highest width, each evaluated on a copy of ``model``
    with its BN statistics re-estimated on ``calib_batches`` training batches; plus the uniform widths (as
    trained, no re-estimation). Rows: ``kind`` (mixed / uniform), ``budget_bits``, ``layer_bits``,
    ``model_bits``, ``avg_inner_bits``, ``accuracy``; a mixed row also ``bn_state`` (:func:`bn_state`: the
    re-estimated statistics, which the exported image's row records fold in; not JSON)."""
    widths = widths_of(model)
    layers = inner_layers(model)
    params = [layer.weight.numel() for layer in layers]
    errors = downsampling_errors(model)
    dev = next(model.parameters()).device
    example = split.x_train[:2].to(dev)
    batches = [b.to(dev) for b in calibration_batches(split, batch_size, calib_batches, seed)]
    lo, hi = sum(params) * widths[0], sum(params) * widths[-1]
    rows = []
    for bits in widths:
        with width(model, bits):
            rows.append({"kind": "uniform", "budget_bits": sum(params) * bits, "layer_bits": [bits] * len(layers),
                         "model_bits": model_bits(model), "avg_inner_bits": float(bits),
                         "accuracy": evaluate(model, split.x_test, split.y_test, batch_size=1024)})
    for k in range(points):
        budget = lo + (hi - lo) * (k + 0.5) / points
        assignment = assign_widths(errors, params, budget)
        sampled = copy.deepcopy(model)
        set_layer_widths(sampled, assignment, example)
        recalibrate_batchnorm(sampled, batches)
        rows.append({"kind": "mixed", "budget_bits": budget, "layer_bits": assignment,
                     "model_bits": model_bits(sampled),
                     "avg_inner_bits": sum(p * b for p, b in zip(params, assignment)) / sum(params),
                     "accuracy": evaluate(sampled, split.x_test, split.y_test, batch_size=1024),
                     "bn_state": bn_state(sampled)})
    set_width(model, widths[-1])
    return rows


# --------------------------------------------------------------------------------------- plots
def plot_histograms(model, path, title: str = "") -> Path:
    """Fig. 5: histograms of the integer weight codes of every inner layer, one panel per width.

    ``model`` is a vertical net (every width from it: Fig. 5(b)/(c)) or ``{bits: net}`` (one net per width,
    the per-width LSQ oracle: Fig. 5(a))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = model if isinstance(model, dict) else {b: model for b in widths_of(model)}
    widths = sorted(nets)
    fig, axes = plt.subplots(1, len(widths), figsize=(3.2 * len(widths), 2.8), squeeze=False)
    for ax, bits in zip(axes[0], widths):
        codes = torch.cat([layer.weight_codes(bits).reshape(-1).cpu() for layer in inner_layers(nets[bits])])
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        counts = torch.bincount(codes - lo, minlength=hi - lo + 1).double()
        ax.bar(range(lo, hi + 1), (counts / counts.sum()).numpy(), color="tab:blue")
        ax.set_title(f"{bits}-bit codes")
        ax.set_xlabel("weight code")
    axes[0][0].set_ylabel("fraction of weights")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mixed_precision(rows: list[dict], path) -> Path:
    """Fig. 8: test accuracy against model size (KB of weights) for Eq. 12 assignments and uniform widths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for kind, marker in (("mixed", "o-"), ("uniform", "s")):
        pts = sorted((r["model_bits"] / 8 / 1024, r["accuracy"]) for r in rows if r["kind"] == kind)
        if pts:
            ax.plot(*zip(*pts), marker, label=kind)
    ax.set_xlabel("weight storage (KB)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["EDGE_BITS", "MOO", "SCHEMES", "AscendingState", "VerticalConfig", "VerticalResult", "assign_widths",
           "calibration_batches", "cosine_kd", "downsampling_errors", "evaluate_widths", "joint_backward",
           "min_norm_weights", "mixed_precision_curve", "model_bits", "plot_histograms",
           "plot_mixed_precision", "split_parameters", "train_ascending",
           "train_downsample", "train_lsq_oracle", "train_vertical", "us_weights"]
