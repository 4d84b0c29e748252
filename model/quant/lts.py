"""Lottery ticket scratcher (LTS): freeze quantized weights that have settled on their level (paper Sec. III).

Layout, as in the style guide: pure functions of the paper's equations first (Eq. 1-8), then the weight
quantizer module :class:`LTSQuantizer`, the layers :class:`QuantLinearLTS` and :class:`QuantConv2dLTS` with
their structured weight-gradient reduction (Sec. III-D) and shared bookkeeping (:class:`_LTSWeight`), the
MLP :class:`LTSMLP` and :func:`to_lts`, which gives ResNet-20 and the VGG of :mod:`model.quant.nets` LTS
layers. The algorithm is in :mod:`model.methods.lts` (:class:`~model.methods.lts.LTSScratcher`,
:func:`~model.methods.lts.train_lts`), the bench in :mod:`model.bench.lts`.

Naming: "Eq. 6" in :mod:`model.quant.lts`, :mod:`model.methods.lts` and :mod:`model.bench.lts` is the freeze test
``D^i < t`` with Eq. 6's threshold ``t = Delta^B p``: the paper numbers only the threshold, and states the test in
the sentence before it (Sec. III-C: "We then compare D^i with a threshold t to determine whether w_n should be
frozen").

Choices where the paper leaves room, each said once here:

* **Distance domain.** ``D_{w_n}`` (Eq. 5) is measured in the de-quantized domain of Eq. 3,
  ``|(2 x_n - 1) - w_bar|``, with the paper's ``Delta^B = 2 / 2^B`` (the issue: "threshold
  t = p * 2/2^B") as written. The Eq. 3 step is ``2 / (2^B - 1)``, so ``Delta^B`` is ``(2^B - 1) / 2^B`` of a
  step (3/4, 7/8, 15/16 at 2/3/4 bits), not a whole one. A weight is at most half a step,
  ``1 / (2^B - 1)``, from its level, and ``t`` reaches that at ``p = 2^B / (2 (2^B - 1))`` (2/3 for 2 bits):
  of the three readings (the normalized domain of Eq. 1, ``p`` = 1/3; the authors' code, whose grid step is
  exactly ``2 / 2^B``, ``p`` = 1/2; this one), the one that freezes slowest (measured: ``model/bench/lts.py``
  docstring).
* **EMA start and reset.** ``D`` starts at ``Delta^B`` and is reset to ``Delta^B`` whenever the weight's
  integer level (Eq. 2) differs from the level of the previous training iteration. ``D`` is updated from
  the values the forward pass of the iteration used (no second quantization). The layers store ``D`` in
  units of the Eq. 3 step ``2 / (2^B - 1)`` (``|z - q|``, see below) and divide the reset value and the
  threshold by that step alike (:meth:`_LTSWeight.eq5_distance` reports ``D`` in the domain above).
* **Freezing is permanent and exact.** Once ``D^i < t`` at iteration ``i`` a weight is frozen for the rest
  of training (Sec. I: "A weight will be permanently frozen"; nothing unfreezes it): Eq. 5 and Eq. 6 run
  in the training forward of iteration ``i`` (:meth:`_LTSWeight._train_weight`, with the threshold the
  scratcher set for ``i``), so its gradient is zero from iteration ``i`` on, that one included (Sec.
  III-C: "w_n will be frozen, meaning zeroing out the gradient of w_n"), and it is never computed after.
  SGD momentum and weight decay would still move it, so :func:`~model.methods.lts.train_lts` applies the
  weight decay inside the layers' backward, at unfrozen positions only, and the scratcher zeroes a weight's
  momentum between that backward and the optimizer step: the weight keeps, bit for bit, the value the
  forward of iteration ``i`` used, with no pass to restore it (with an optimizer it does not control, the
  scratcher restores frozen weights to that value after every step instead).
* **A frozen weight keeps its quantized value.** The ticket is a weight that has reached its quantization
  level (Sec. III-B); freezing it keeps that level: from iteration ``i`` on the forward uses the fake-quant
  value ``w_bar`` of iteration ``i`` at its position (:attr:`_LTSWeight._w_used`, one ``lerp`` with the
  unfrozen mask; eval forwards too), not a re-quantization of its (frozen) latent value under bounds ``l``,
  ``u`` that train on. Without this a frozen weight changed level whenever the bounds moved across it
  (most likely for the late freezes, up to half a step from their level), with no gradient to correct it,
  and the bounds' gradient, which sums over unfrozen weights only (below), ignored a dependence the forward
  had. The authors' code keeps the latent value and lets the bounds move at 1e-3 of the weights' learning
  rate, so that there the level hardly moves; here the bounds trained at the weights' rate when this was
  measured (since 2026-12-04 :class:`model.methods.lts.LTSTraining` trains them at the authors' ratio,
  :data:`model.methods.lts.BOUNDS_LR_RATIO`, and keeps the frozen value too). Measured
  (Fashion-MNIST MLP, 10 epochs, seeds 0 / 1): LTS +0.10 / +0.29 pp at 2 bits, +0.25 / +0.01 pp at 3
  bits against keeping only the latent value.
* **Bookkeeping cost.** The forward computes ``z = (2^B - 1) x_n`` and ``q = round(z)`` anyway; Eq. 5 is
  updated from them, ``D <- m D + (1 - m) (2 / (2^B - 1)) |z - q|`` (kept in units of that step, so one
  ``lerp(D, |z - q|, 1 - m)``), with the reset as a ``lerp`` whose
  weight is the level-change test written into the spent ``z`` (:meth:`_LTSWeight._ema`, run by the
  training forward itself when the scratcher drives the layer). Eq. 6 updates the float unfrozen mask
  directly, ``keep <- keep * [D >= t]`` (the comparison written into the spent ``z`` again), and counts
  the new freezes with one sum (:meth:`_LTSWeight._freeze`, in the same forward); the backward masks its
  fresh product in place. No full-size pass makes a
  bool from a comparison or calls ``masked_fill``, ``nonzero``, ``logical_*``, int64 or float64 (on this
  CPU each costs four to twenty times an add). Decisions are, up to float rounding at ``t``, those of
  :func:`level_distance`, :func:`ema_distance` and :func:`threshold` (a test runs both side by side).
  Measured cost (short 2-bit run, one thread, before the EMA became one ``lerp``): Eq. 5 alone is 7-8 %
  of a plain QAT step (warm-up epochs 1.06-1.08x with it, 0.99-1.00x without), being
  memory-bound passes over buffers that are out of cache by then (the 200k-weight layer: ~240 us a step
  in training, about twice the same passes on hot buffers). While a linear layer is on its sampled product only the
  pattern's positions are tracked, with as few small ops as possible (at 80-98 % frozen their count, not
  their size, is the cost): one gather of ``z`` (``q`` is its rounding), the level kept as that call's
  own ``q``, Eq. 6 as ``nonzero(D < t keep)``. A layer whose weights are all frozen gets no weight gradient, so the
  optimizer skips it, its bounds ``l``, ``u`` stop training and its fake-quant weight is computed once
  and reused.
* **Conv layers.** :class:`QuantConv2dLTS` masks the dense weight gradient of ``aten.convolution_backward``
  while any weight is unfrozen and skips it once all are (a conv weight gradient has no cheap sampled
  form).
* **Clipping bounds.** ``l`` and ``u`` (Eq. 1) stay trainable. Their gradient comes through the weight
  gradient ``dL/dw_bar``, which LTS does not compute at frozen positions, so it sums over unfrozen
  weights only; since a frozen weight keeps its value (above), its ``w_bar`` no longer depends on ``l``,
  ``u`` and that sum is the exact gradient (a test checks it against autograd), with the backward saving
  intact (computing frozen positions would cost the full dense weight gradient).
* **Structured reduction (Sec. III-D) on CPU.** Measured on this machine (1 thread, batch 128): for one
  256x784 weight, dense ``dY^T X`` takes 1.6-2.1 ms; skipping output rows (or input columns) that are
  wholly frozen saves nothing, because an unstructured mask leaves almost no row or column wholly frozen
  until sparsity is ~1; ``torch.sparse.sampled_addmm`` over the unfrozen positions takes 3.4 / 2.3 / 1.6 /
  0.86 / 0.45 ms at 50 / 70 / 80 / 90 / 97 % sparsity. The quantizer's STE backward (Eq. 1-3) is
  element-wise over the weight and costs about as much again, so :class:`_LTSLinearFunction` runs it only
  on the positions whose gradient it computed. Whole backward of the 784-256-256-10 MLP: 7.2 ms with
  nothing frozen; dense-masked 7.3-7.6 ms at 0-70 % frozen; sampled 10.4 / 7.8 / 6.7 / 5.3 / 4.3 / 3.7 ms
  at 50 / 70 / 80 / 90 / 95 / 99 %; 1.6 ms with every weight frozen (no weight gradient at all). So a
  layer uses the dense product, masked, while its unfrozen fraction is at least :data:`SAMPLED_BELOW`
  (crossover ~75 % frozen) and the sampled product below it. Building the CSR pattern costs about one
  dense product, so it is rebuilt only when the unfrozen count has shrunk to :data:`REBUILD_SHRINK` of
  the pattern's; positions frozen in between are computed and then masked to zero (same result). On the
  sampled product the training forward quantizes only the pattern's positions too (one gather of ``w``,
  their ``w_bar`` written into a copy of the last one), since every other position keeps its frozen value.
* **Fair baseline.** Plain QAT (LTS off) runs the same autograd function with nothing masked, so the
  backward-time ratio measures only what LTS skips (a test checks it equals autograd's gradient).
* **Activations (a deviation).** The paper quantizes activations with the weights' quantizer, Eq. 1 and 4 with
  trainable ``l``, ``u`` started at the activations' minimum and maximum (Sec. III-A). Here they are PACT
  (:class:`model.quant.pact.PACT`, a trainable clip ``alpha`` above 0). The reason is that the integer
  contract the accelerator runs (:mod:`model.export.golden`) has unsigned activation codes starting at 0,
  ``alpha q / (2^b - 1)``: an ``l`` other than 0 would need an offset term in every layer. LTS itself acts on
  the weights only, so its freezing rule (Eq. 5-8) is as written.
* **Start (a deviation).** The paper starts QAT from a pre-trained full-precision model (Sec. IV-A), and it
  names that start as one reason weights settle early (Sec. III-B). ``bench lts`` trains LTS and plain QAT from
  the same random start instead, within its CPU budget. Its sparsity figures are therefore those of training
  from scratch, which settles later than from a pre-trained model.
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from model.errors import UserError
from model.quant.layers import QuantConv2d, QuantLinear
from model.quant.pact import PACT

#: Growth strategies of the rate ``p`` (Sec. III-C).
STRATEGIES = ("fixed", "linear", "sine")
#: Training modes of :func:`train_lts`.
MODES = ("lts", "baseline")
#: Use the sampled (CSR) weight gradient once a layer's unfrozen fraction is below this (measured).
SAMPLED_BELOW = 0.25
#: Rebuild the CSR pattern when the unfrozen count has shrunk to this fraction of the pattern's count.
REBUILD_SHRINK = 0.9


# ----------------------------------------------------------------------------------------------------------
# Pure functions of the paper's equations


def normalize(w: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``x_n = clip((w - l) / (u - l), 0, 1)``; differentiable in ``w``, ``l`` and ``u``."""
    return torch.clamp((w - lower) / (upper - lower), 0.0, 1.0)


def quant_codes(x_n: torch.Tensor, bits: int) -> torch.Tensor:
    """Eq. 2: integer level ``q = round((2^B - 1) x_n)`` (half to even), int64 in ``[0, 2^B - 1]``."""
    return torch.round(x_n.detach() * ((1 << bits) - 1)).to(torch.int64)


def dequantize_weight(q: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Eq. 3: ``w_bar = 2 (q / (2^B - 1) - 0.5)``, in ``[-1, 1]``."""
    return (2 * (q.to(torch.float64) / ((1 << bits) - 1) - 0.5)).to(dtype)


def quant_interval(bits: int) -> float:
    """``Delta^B = 2 / 2^B`` (Sec. III-C), the reset value of ``D`` and the scale of the threshold."""
    return 2.0 / (1 << bits)


def level_distance(x_n: torch.Tensor, bits: int, q: torch.Tensor | None = None) -> torch.Tensor:
    """Distance ``D_{w_n}`` of Eq. 5 in the domain of Eq. 3: ``|(2 x_n - 1) - w_bar|``.

    ``q`` are the Eq. 2 levels of ``x_n`` if already known. Computed in ``x_n``'s dtype (a distance needs
    no float64 exactness).
    """
    x_n = x_n.detach()
    if q is None:
        q = quant_codes(x_n, bits)
    levels = (1 << bits) - 1
    return ((2 * x_n - 1) - (q.to(x_n.dtype) * (2.0 / levels) - 1)).abs()


def ema_distance(
    previous: torch.Tensor, distance: torch.Tensor, changed: torch.Tensor, m: float, bits: int
) -> torch.Tensor:
    """Eq. 5, ``D^i = m D^{i-1} + (1 - m) D``, reset to ``Delta^B`` where the level ``changed``."""
    return torch.where(changed, quant_interval(bits), m * previous + (1 - m) * distance)


def _step(bits: int) -> float:
    """The Eq. 3 quantization step ``2 / (2^B - 1)``: the layers keep ``D`` in units of it (``|z - q|``)."""
    return 2.0 / ((1 << bits) - 1)


def threshold(p: float, bits: int) -> float:
    """Eq. 6: ``t = Delta^B * p = p * 2 / 2^B``."""
    return quant_interval(bits) * p


def growth_rate(
    strategy: str, iteration: int, iters_per_epoch: int, epochs: int, warmup: int, c: float = 0.5
) -> float:
    """Rate ``p`` at (1-based) training ``iteration`` (Sec. III-C).

    ``fixed``: ``p = c`` after the warm-up, 0 during it. ``linear``: Eq. 7,
    ``p = (i - T E_wm) / (T E - T E_wm) * I(i > T E_wm)``. ``sine``: Eq. 8, ``sin(pi/2 * that ratio)``.

    Parameters
    ----------
    strategy : str
        One of :data:`STRATEGIES`.
    iteration : int
        ``i``, counted from 1.
    iters_per_epoch : int
        ``T``.
    epochs, warmup : int
        ``E`` and ``E_wm``, ``0 <= E_wm < E``.
    c : float
        The constant of the fixing strategy, in ``[0, 1]``.

    Raises
    ------
    UserError
        If ``strategy`` is unknown or ``warmup`` is not in ``[0, epochs)``.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"field 'strategy' is {strategy!r}; allowed values {STRATEGIES}")
    if not 0 <= warmup < epochs:
        raise UserError(f"field 'warmup' is {warmup!r}; allowed values 0 <= warmup < epochs ({epochs})")
    start = iters_per_epoch * warmup
    if iteration <= start:
        return 0.0
    if strategy == "fixed":
        return float(c)
    ratio = (iteration - start) / (iters_per_epoch * epochs - start)
    return ratio if strategy == "linear" else math.sin(ratio * math.pi / 2)


# ----------------------------------------------------------------------------------------------------------
# Modules


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value exactly ``x`` (``y - y.detach()`` is exactly 0), gradient scaled by ``g``."""
    y = x * g
    return x.detach() + (y - y.detach())


class LTSQuantizer(nn.Module):
    """Uniform layer-wise weight quantizer with trainable clipping bounds ``l``, ``u`` (Eq. 1-3, STE).

    Parameters
    ----------
    bits : int
        ``B``, 2..8.

    Members
    -------
    lower, upper : nn.Parameter
        ``l`` and ``u``; :meth:`init_bounds` sets them to ``-3 std(w)`` and ``+3 std(w)`` (Sec. III-A).

    Raises
    ------
    UserError
        If ``bits`` is not an integer in 2..8.
    """

    def __init__(self, bits: int):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise UserError(f"field 'bits' is {bits!r}; allowed values integers 2..8")
        self.bits = bits
        self.lower = nn.Parameter(torch.tensor(-1.0))
        self.upper = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def init_bounds(self, w: torch.Tensor) -> None:
        """``l = -3 std(w)``, ``u = 3 std(w)`` (Sec. III-A)."""
        std = float(w.std())
        self.lower.fill_(-3 * std)
        self.upper.fill_(3 * std)

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        """Eq. 1 with this quantizer's bounds.

        The gradients of ``l`` and ``u`` are sums over every weight of the layer, so they are scaled by
        ``g = 1 / sqrt(numel (2^B - 1))`` (LSQ's gradient scale; forward values unchanged). Without it SGD
        at the paper's learning rates throws ``l`` and ``u`` past each other within an epoch.
        """
        g = self.bound_grad_scale(w.numel())
        return normalize(w, _grad_scale(self.lower, g), _grad_scale(self.upper, g))

    def bound_grad_scale(self, numel: int) -> float:
        """``g = 1 / sqrt(numel (2^B - 1))``, the gradient scale of ``l`` and ``u``."""
        return 1.0 / math.sqrt(numel * ((1 << self.bits) - 1))

    def to_int(self, w: torch.Tensor) -> torch.Tensor:
        """Integer levels (Eq. 1-2), int64 in ``[0, 2^B - 1]``: what an exporter stores."""
        with torch.no_grad():
            return quant_codes(self.normalize(w), self.bits)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """Eq. 3 of integer levels, bit for bit what :meth:`forward` returns."""
        return dequantize_weight(q, self.bits, self.lower.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Fake-quant ``w_bar``: value from Eq. 1-3, gradient of ``2 x_n - 1`` (STE on the rounding)."""
        return self.quantize(w)[0]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w_bar, x_n, q)``: the fake-quant weight plus the detached Eq. 1 and Eq. 2 values LTS uses."""
        x_n = self.normalize(w)
        q = quant_codes(x_n, self.bits)
        y = 2 * x_n - 1
        return self.dequantize(q) + (y - y.detach()), x_n.detach(), q


class _Plan:
    """How the layers' weight-gradient backward runs.

    ``dense``: full ``dL/dw_bar``, times ``keep`` if given (``keep=None``: nothing frozen, plain QAT);
    ``sampled`` (linear layers only): only at the CSR pattern's positions ``flat``; ``none``: no weight
    gradient at all.
    """

    def __init__(self, kind: str, keep: torch.Tensor | None = None, csr=None, flat=None, keep_flat=None):
        self.kind, self.keep, self.csr, self.flat, self.keep_flat = kind, keep, csr, flat, keep_flat


_FULL = _Plan("dense")


def _ste_chain(gy, w, lower, upper, g):
    """Backward of ``y = 2 clip((w - l) / (u - l), 0, 1) - 1`` (Eq. 1-3 with the STE) for given ``dL/dy``.

    Returns ``(dL/dw, dL/dl, dL/du)``, the bounds' gradients scaled by ``g``. Element-wise, so it runs on a
    dense weight or on the vector of a sampled pattern's positions alike.
    """
    span = upper - lower
    z = (w - lower) / span
    gy = torch.where((z >= 0) & (z <= 1), gy, 0.0)  # torch.clamp passes the gradient on [0, 1] inclusive
    dw = gy * (2 / span)
    scale = 2 * g / (span * span)
    dl = (gy * (w - upper)).sum() * scale
    du = -(gy * (w - lower)).sum() * scale
    return dw, dl, du


def _weight_grad(gy, w, lower, upper, plan: _Plan, g: float, weight_decay: float):
    """``(dL/dw, dL/dl, dL/du)`` from the dense ``dL/dw_bar`` ``gy`` (``None`` for ``plan.kind == "none"``).

    Masks ``gy`` with ``plan.keep``, runs the STE chain and adds the weight decay ``weight_decay * w`` at
    the unfrozen positions only, so a frozen weight's gradient is exactly 0 (``dense``) or absent
    (``sampled`` positions outside the pattern, ``none``).
    """
    if plan.kind == "none":
        return None, None, None
    if plan.kind == "dense":
        if plan.keep is not None:
            gy = gy.mul_(plan.keep)  # gy is the fresh product of the backward: masked in place
        dw, dl, du = _ste_chain(gy, w, lower, upper, g)
        if weight_decay:
            dw = dw.add_(w, alpha=weight_decay) if plan.keep is None else dw.addcmul_(w, plan.keep, value=weight_decay)
        return dw, dl, du
    raise ValueError(f"plan {plan.kind!r} needs the sampled product")  # pragma: no cover - linear handles it


class _LTSLinearFunction(torch.autograd.Function):
    """``y = x w_bar^T + b`` with ``w_bar`` of Eq. 1-3; the backward skips frozen weights (Sec. III-D).

    Inputs ``(x, w, lower, upper, bias, w_bar, plan, g, weight_decay)``: ``w_bar`` is the (detached)
    fake-quant value of ``w``; the backward computes ``dL/dw_bar`` only where ``plan`` says and runs the STE
    chain (:func:`_ste_chain`) and the weight decay only there, so the weight-gradient product, the
    element-wise quantizer backward and the decay all shrink with the frozen fraction. Both training modes
    use this function, so the baseline and LTS differ only in what is skipped.
    """

    @staticmethod
    def forward(ctx, x, w, lower, upper, bias, w_bar, plan, g, weight_decay):
        ctx.save_for_backward(x, w, lower, upper, w_bar)
        ctx.plan, ctx.g, ctx.has_bias, ctx.weight_decay = plan, g, bias is not None, weight_decay
        y = x @ w_bar.t()
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, grad):
        x, w, lower, upper, w_bar = ctx.saved_tensors
        plan = ctx.plan
        dx = grad @ w_bar if ctx.needs_input_grad[0] else None
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[4] else None
        if plan.kind == "sampled":
            # Dot products of dY and X columns at the pattern's positions only; positions frozen since the
            # pattern was built are zeroed by ``keep`` (the layer's compact copy of the mask at the pattern's
            # positions, kept up to date by _freeze, so no gather of the dense mask). Gathers and the
            # scatter are index_select / scatter_: on this CPU advanced indexing (``t[idx]``, ``t[idx] = v``)
            # costs three to four times as much per element.
            keep = plan.keep_flat if plan.keep_flat is not None else plan.keep.view(-1).index_select(0, plan.flat)
            values = torch.sparse.sampled_addmm(plan.csr, grad.t(), x, beta=0.0).values().mul_(keep)
            w_live = w.view(-1).index_select(0, plan.flat)
            dw_v, dl, du = _ste_chain(values, w_live, lower, upper, ctx.g)
            if ctx.weight_decay:
                dw_v = dw_v.addcmul_(w_live, keep, value=ctx.weight_decay)
            dw = torch.zeros(w.numel(), dtype=w.dtype, device=w.device).scatter_(0, plan.flat, dw_v).view_as(w)
        else:
            gy = grad.t() @ x if plan.kind == "dense" else None
            dw, dl, du = _weight_grad(gy, w, lower, upper, plan, ctx.g, ctx.weight_decay)
        # "none": every weight frozen, so no weight gradient and (it flows through dL/dw_bar) none for l, u.
        return dx, dw, dl, du, db, None, None, None, None


class _LTSConvFunction(torch.autograd.Function):
    """``conv2d(x, w_bar) + b`` with ``w_bar`` of Eq. 1-3; the backward skips frozen weights (Sec. III-D).

    As :class:`_LTSLinearFunction`, with ``aten.convolution_backward`` computing only the gradients asked
    for: a conv weight gradient is a correlation of the input with ``dY`` over every output position, so
    there is no cheap sampled form; it is computed densely and masked while any weight is unfrozen, and not
    at all once every weight is frozen (``none``).
    """

    @staticmethod
    def forward(ctx, x, w, lower, upper, bias, w_bar, plan, g, weight_decay, conv):
        stride, padding, dilation, groups = conv
        ctx.save_for_backward(x, w, lower, upper, w_bar)
        ctx.plan, ctx.g, ctx.has_bias, ctx.weight_decay, ctx.conv = plan, g, bias is not None, weight_decay, conv
        return F.conv2d(x, w_bar, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, w, lower, upper, w_bar = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        plan = ctx.plan
        mask = [ctx.needs_input_grad[0], plan.kind != "none", ctx.has_bias and ctx.needs_input_grad[4]]
        dx, gy, db = torch.ops.aten.convolution_backward(
            grad, x, w_bar, [w_bar.shape[0]] if ctx.has_bias else None, list(stride), list(padding),
            list(dilation), False, [0, 0], groups, mask)
        dw, dl, du = _weight_grad(gy, w, lower, upper, plan, ctx.g, ctx.weight_decay)
        return dx, dw, dl, du, db, None, None, None, None, None


class _LTSWeight:
    """The per-weight LTS state (Eq. 5-6) and its bookkeeping, shared by :class:`QuantLinearLTS` and
    :class:`QuantConv2dLTS` (a base for ``nn.Module`` layers owning ``weight``; call :meth:`_init_lts`).

    Cost per training step, per weight: about eight in-place float32 passes (module docstring, "Bookkeeping
    cost"), all in the training forward: five for Eq. 5 from the forward's ``z = (2^B - 1) x_n`` and ``q``,
    Eq. 6 as a comparison, a product into the unfrozen mask and one sum. Weight decay is applied inside the backward
    at the unfrozen positions (:attr:`weight_decay`), so with an optimizer that applies no decay of its own
    to the latent weights and whose momentum is zeroed where a weight freezes
    (:class:`model.methods.lts.LTSScratcher` does both when it is given the optimizer), a frozen weight's
    update is exactly zero and nothing needs restoring; a layer whose weights are all frozen gets no weight
    gradient at all, so the optimizer skips it, its bounds stop training, and its fake-quant weight is
    computed once and reused.

    Members
    -------
    quantizer : LTSQuantizer
    lts_distance : torch.Tensor
        float32 EMA distance ``D`` (Eq. 5) in units of the Eq. 3 step ``2 / (2^B - 1)``, starts at ``Delta^B``
        (while a linear layer is sampled, its pattern's values live in a compact copy; :meth:`eq5_distance`
        reads both and returns ``D`` in the domain of Eq. 3).
    lts_level : torch.Tensor
        float32 level of the previous iteration (-1 before the first).
    lts_frozen : torch.Tensor
        bool, true for frozen weights (never cleared); rewritten from the float unfrozen mask when read after
        :meth:`_freeze` froze more (not on every training step).
    lts_frozen_w_bar : torch.Tensor
        The fake-quant values frozen weights keep (written from :attr:`_w_used` when the state is saved, read
        back into it when loaded).
    _w_used : torch.Tensor or None
        The fake-quant weight of the last training forward; at frozen positions the value each weight froze
        with, which every later forward (training and eval) uses there. ``None`` until a training forward
        with LTS on (then frozen positions fall back to the quantizer's value).
    lts_frozen_value : torch.Tensor
        Latent value of each frozen weight at the moment it froze (kept by :meth:`_freeze` when
        :attr:`lts_restore` is true, for :meth:`restore_frozen_`).
    lts_enabled : bool
        Whether the custom backward and freezing are active (set by :class:`LTSScratcher`).
    lts_m : float or None
        EMA momentum; when set (by :class:`LTSScratcher`) each training forward updates Eq. 5 itself.
    lts_t : float or None
        Eq. 6 threshold ``t`` of the next training iteration, divided by the Eq. 3 step (the units of
        :attr:`lts_distance`); when set (by :class:`LTSScratcher`, with :attr:`lts_m`) each training forward
        freezes the weights with ``D^i < t`` itself, before its backward (:meth:`_train_weight`).
    lts_restore : bool
        Whether frozen weights are put back after each optimizer step (an optimizer that may move them).
    weight_decay : float
        L2 decay added to the weight gradient at unfrozen positions (0: none).
    """

    weight: nn.Parameter
    quantizer: LTSQuantizer

    def _init_lts(self, bits: int) -> None:
        self.quantizer = LTSQuantizer(bits)
        self.quantizer.init_bounds(self.weight)
        # D is kept in units of the Eq. 3 step 2 / (2^B - 1) (the forward's z units), so that Eq. 5 is one lerp.
        self.register_buffer("lts_distance", torch.full_like(self.weight, quant_interval(bits) / _step(bits)))
        self.register_buffer("lts_level", torch.full_like(self.weight, -1))
        self.register_buffer("lts_frozen", torch.zeros_like(self.weight, dtype=torch.bool))
        self.register_buffer("lts_frozen_value", torch.zeros_like(self.weight))
        # The fake-quant value each frozen weight keeps (its Eq. 3 level when it froze); written from
        # _w_used when the state is saved (live positions: their value of the last training forward).
        self.register_buffer("lts_frozen_w_bar", torch.zeros_like(self.weight))
        # Eq. 3 of every level, so that the forward's w_bar is one gather, bit for bit dequantize_weight(q).
        self.register_buffer("_w_levels", dequantize_weight(torch.arange(1 << bits), bits, self.weight.dtype),
                             persistent=False)
        self.lts_enabled = False
        self.lts_m: float | None = None
        self.lts_t: float | None = None
        self.lts_restore = True
        self.weight_decay = 0.0
        self.n_frozen = 0
        #: (z, q) of the last training forward for lts_update, True if the forward did Eq. 5 itself, None if
        #: it did Eq. 5 and Eq. 6 (lts_t set) or there is nothing to do.
        self._last: tuple[torch.Tensor, torch.Tensor] | bool | None = None
        self._reset: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None
        self._plan = _Plan("dense")
        #: While sampled: (pattern positions, their D, their level, still unfrozen) (_ema, _freeze).
        self._compact: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._frozen_w_bar: tuple[tuple[int, int, int], torch.Tensor] | None = None
        #: The fake-quant weight the last training forward used; its frozen positions hold the value each
        #: weight froze with (its level), which later forwards keep (_train_weight, _eval_weight).
        self._w_used: torch.Tensor | None = None
        #: True while lts_frozen lags behind the unfrozen mask (_freeze); __getattr__ brings it up to date.
        self._frozen_stale = False
        #: Flat indices frozen by the last _freeze of a sampled layer (None: dense, see the mask).
        self._new_frozen_idx: torch.Tensor | None = None
        #: Weights frozen by training forwards (Eq. 6 with lts_t) and their indices, for pop_forward_freezes.
        self._fwd_new = 0
        self._fwd_idx: list[torch.Tensor | None] = []

    def __getattr__(self, name: str):
        # Buffers live in nn.Module._buffers, so reads of ``lts_frozen`` come here: rewrite it from the
        # unfrozen mask first if _freeze left it stale (one pass when read, not one per training step).
        if name == "lts_frozen" and self.__dict__.get("_frozen_stale"):
            self.__dict__["_frozen_stale"] = False
            torch.bitwise_not(self._plan.keep.bool(), out=self._buffers["lts_frozen"])
        return super().__getattr__(name)

    #: Tensors of the LTS state kept outside the module's buffers (per step, not saved: the buffers are).
    _STATE_ATTRS = ("_last", "_reset", "_scratch", "_compact", "_frozen_w_bar", "_w_used", "_new_frozen_idx",
                    "_fwd_idx")

    def _apply(self, fn, *args, **kwargs):
        """Move the state outside the buffers (``_plan``'s mask and pattern, :attr:`_STATE_ATTRS`) with the
        buffers, so that a layer moved by ``.to()`` / ``.cpu()`` / ``.double()`` after freezing (trained on a
        GPU, evaluated on the CPU) runs on; ``fn`` is what ``nn.Module`` applies to every parameter and buffer
        (it casts only floating-point tensors, so index tensors keep their dtype)."""
        out = super()._apply(fn, *args, **kwargs)

        def move(value):
            if isinstance(value, torch.Tensor):
                return fn(value)
            if isinstance(value, (tuple, list)):
                return type(value)(move(v) for v in value)
            return value

        plan = self._plan
        if plan is not _FULL:
            self._plan = _Plan(plan.kind, *(move(v) for v in (plan.keep, plan.csr, plan.flat, plan.keep_flat)))
        for name in self._STATE_ATTRS:
            self.__dict__[name] = move(self.__dict__[name])
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.lts_frozen  # noqa: B018 - brings the buffer up to date (__getattr__)
        with torch.no_grad():
            used = self._kept_w_bar()
            if used is None:
                used = self.quantizer(self.weight)
            if used is not self._buffers["lts_frozen_w_bar"]:
                self._buffers["lts_frozen_w_bar"].copy_(used)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__["_frozen_stale"] = False  # the loaded mask wins
        super()._load_from_state_dict(*args, **kwargs)
        self._w_used = None  # the loaded frozen values win too: read from the buffer (_kept_w_bar)
        self.__dict__["_w_from_buffer"] = True

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    def _train_weight(self) -> tuple[torch.Tensor, _Plan, float]:
        """``(w_bar, plan, g)`` for a training forward.

        With :attr:`lts_m` set (by :class:`~model.methods.lts.LTSScratcher`) it runs Eq. 5 on this forward's
        ``z`` and ``q`` and, with :attr:`lts_t` set too, Eq. 6 against that threshold, before the plan is
        chosen: a weight whose ``D^i`` falls below ``t`` at iteration ``i`` gets no gradient from iteration ``i``
        on (Sec. III-C: "If D^i is lower than the threshold t, w_n will be frozen, meaning zeroing out the
        gradient of w_n"). Otherwise it keeps ``(z, q)`` for :meth:`lts_update`.

        A frozen weight keeps its quantized value: ``w_bar`` at a position frozen before this forward is the
        value the weight froze with (:attr:`_w_used`), not a re-quantization of its latent value under bounds
        ``l``, ``u`` that have trained on since (which could move it to another level with no gradient to
        correct it, while the bounds' gradient leaves it out). While a linear layer is on its sampled product
        (and the scratcher drives it) only the pattern's positions are quantized at all.
        """
        qz = self.quantizer
        plan = self._plan if self.lts_enabled and self._plan.keep is not None else _FULL
        g = qz.bound_grad_scale(self.weight.numel())
        used = self._kept_w_bar() if plan.keep is not None else None
        if plan.kind == "none":
            # Nothing here trains any more (no gradient for w, l or u): the values of the last forward stand.
            self._last = None
            if used is not None:
                return used, plan, g
            versions = (self.weight._version, qz.lower._version, qz.upper._version)
            if self._frozen_w_bar is None or self._frozen_w_bar[0] != versions:
                self._frozen_w_bar = (versions, qz.dequantize(qz.to_int(self.weight)))
            return self._frozen_w_bar[1], plan, g
        driven = self.lts_enabled and self.lts_m is not None and self.lts_t is not None
        with torch.no_grad():
            if plan.kind == "sampled" and used is not None and driven and self._compact is not None:
                # Only the pattern's positions: Eq. 1-3 on them (one gather of w), their w_bar written into
                # a copy of the last one; positions frozen since the pattern was built keep theirs (keep 0).
                flat, _, _, keep_c = self._compact
                z = ((self.weight.detach().view(-1).index_select(0, flat) - qz.lower) / (qz.upper - qz.lower))
                z = z.clamp_(0.0, 1.0).mul_((1 << qz.bits) - 1)
                q = torch.round(z)
                values = self._w_levels[q.to(torch.int64)]
                values = torch.lerp(used.view(-1).index_select(0, flat), values, keep_c, out=values)
                w_bar = used.clone()
                w_bar.view(-1).index_copy_(0, flat, values)
                compact = True
            else:
                # Eq. 1-2 as LTSQuantizer.normalize / quant_codes compute them (the same float32 operations).
                z = ((self.weight - qz.lower) / (qz.upper - qz.lower)).clamp_(0.0, 1.0).mul_((1 << qz.bits) - 1)
                q = torch.round(z)
                w_bar = self._w_levels[q.to(torch.int64)]
                if used is not None:
                    # Frozen before this forward (keep 0): the value it froze with (lerp is exact at 0 and 1).
                    w_bar = torch.lerp(used, w_bar, plan.keep, out=w_bar)
                compact = False
            if self.lts_enabled:
                self._w_used = w_bar
                self.__dict__["_w_from_buffer"] = False
            if self.lts_enabled and self.lts_m is not None:
                # Eq. 5 now, while z and q are fresh in the cache (the values the iteration uses either way).
                self._ema(z, q, self.lts_m, compact=compact)
                t = self.lts_t
                if t is None:
                    self._last = True
                else:
                    # Eq. 6 now too, while D is in the cache; the spent z takes the comparison.
                    self._last = None
                    if t > 0 and self.n_frozen < self.weight.numel():
                        n_new = self._freeze(t, None if compact else z)
                        if n_new:
                            self._fwd_new += n_new
                            self._fwd_idx.append(self._new_frozen_idx)
                    plan = self._plan if self._plan.keep is not None else _FULL
            else:
                self._last = (z, q)
        return w_bar, plan, g

    def _kept_w_bar(self) -> torch.Tensor | None:
        """:attr:`_w_used` on the weight's device (after a ``.to()``), or the loaded buffer after a
        ``load_state_dict`` and before the next training forward."""
        used = self._w_used
        if used is None:
            return self._buffers["lts_frozen_w_bar"] if self.__dict__.get("_w_from_buffer") else None
        if used.device != self.weight.device:
            used = self._w_used = used.to(self.weight.device)
        return used

    def _eval_weight(self) -> torch.Tensor:
        """The fake-quant weight of an eval forward: :class:`LTSQuantizer`'s, with frozen weights at the value
        they froze with (as in training)."""
        w = self.quantizer(self.weight)
        keep = self._plan.keep
        used = self._kept_w_bar() if self.lts_enabled and keep is not None else None
        if used is not None:
            w = torch.lerp(used, w, keep)
        return w

    def pop_forward_freezes(self) -> tuple[int, list[torch.Tensor | None]]:
        """``(n, idx)``: the weights frozen by training forwards (Eq. 6 with :attr:`lts_t`) since the last call,
        and per freezing forward the flat indices it froze (a sampled layer) or ``None`` (a dense one, whose
        unfrozen mask ``_plan.keep`` says which)."""
        out = (self._fwd_new, self._fwd_idx)
        if self._fwd_new:
            self._fwd_new, self._fwd_idx = 0, []
        return out

    def eq5_distance(self) -> torch.Tensor:
        """``D`` of Eq. 5 per weight (a copy, with the compact values of a sampled layer in place; NaN where a
        weight is frozen: its ``D`` is no longer tracked)."""
        d = self.lts_distance.detach().clone()
        if self._compact is not None:
            d.view(-1)[self._compact[0]] = self._compact[1]
        return d.mul_(_step(self.bits)).masked_fill_(self.lts_frozen, math.nan)  # in the domain of Eq. 3

    @torch.no_grad()
    def _ema(self, z: torch.Tensor, q: torch.Tensor, m: float, compact: bool = False) -> None:
        """Eq. 5 on a training forward's ``z`` and ``q``: ``D <- m D + (1 - m) (2 / (2^B - 1)) |z - q|``, reset to
        ``Delta^B`` where the level changed. ``D`` is kept in units of the Eq. 3 step ``2 / (2^B - 1)`` (so the
        EMA is ``lerp(D, |z - q|, 1 - m)``, the reset value and the threshold divided by the step; the
        decisions are Eq. 5-6's up to float rounding); five in-place float passes, the spent ``z`` holding
        the level-change test. A frozen weight's ``D`` is updated with the others and never looked at (the
        unfrozen mask decides). ``compact``: ``z`` and ``q`` are already those of the sampled pattern's
        positions."""
        if self.n_frozen == self.weight.numel():
            return
        if self._compact is None:
            e, level = self.lts_distance, self.lts_level
        else:
            flat, e, level, keep = self._compact
            if not compact:
                # One gather: the pattern positions' z; their q is its rounding (as the forward's q is of z).
                z = z.view(-1).index_select(0, flat)
                q = torch.round(z)
        reset = self._reset
        if reset is None or reset.shape != e.shape or reset.device != e.device:
            value = torch.tensor(quant_interval(self.bits) / _step(self.bits), dtype=z.dtype, device=z.device)
            reset = self._reset = value.expand_as(e)  # expanded once per shape (a view, no pass)
        e.lerp_(z.sub_(q).abs_(), 1 - m)  # m D + (1 - m) |z - q|, in step units (one pass)
        # z is spent: it takes the level-change test, the lerp weight (0 or 1: exactly D or exactly Delta^B).
        e.lerp_(reset, torch.ne(q, level, out=z))
        if self._compact is None:
            self.lts_level = q
        else:
            self._compact = (flat, e, q, keep)  # q is this call's own compact tensor: it becomes the level

    @torch.no_grad()
    def lts_update(self, p: float, m: float) -> int:
        """One LTS iteration on the values of the last training forward: Eq. 5 EMA, Eq. 6 freeze.

        ``D`` is updated as ``m D + (1 - m) (2 / (2^B - 1)) |z - q|`` (the distance of :func:`level_distance`
        in the forward's own terms) and reset to ``Delta^B`` where the level changed (:meth:`_ema`; when the
        scratcher has set :attr:`lts_m`, the forward has done this already, with that ``m``); a weight
        freezes where ``D < t``. Returns the number of newly frozen weights.

        Every full-size pass is float arithmetic in place (on this CPU a comparison into a bool tensor,
        ``logical_*``, ``masked_fill`` and ``nonzero`` cost four to twenty times an add): Eq. 6 is
        ``stays = [D >= t]`` as float 0/1, the unfrozen mask ``keep <- keep * stays`` (a frozen weight stays 0
        whatever its ``D``) and one sum, whose drop is the number of new freezes. The bool :attr:`lts_frozen`
        is not rewritten then (nothing on the training path reads it; ``keep`` decides): it is marked stale and
        rewritten (``~keep.bool()``) when next read, by attribute or ``state_dict`` (unless
        :attr:`lts_restore`, which needs it at once). While a linear layer uses a sampled pattern (fewer
        than :data:`SAMPLED_BELOW` of its weights unfrozen), ``D`` and the level are kept for the pattern's
        positions only (gathered once per pattern; a new pattern is cut out of the old one's compact state,
        whose positions it is a subset of), so the update costs in proportion to them; ``lts_distance`` and
        ``lts_level`` are stale there (:meth:`eq5_distance` reads the compact values); the flat indices it
        froze are left in ``_new_frozen_idx``, so that
        the scratcher zeroes their momentum by index instead of a pass over the layer.

        When the scratcher drives the layer (:attr:`lts_m` and :attr:`lts_t` set) the training forward has
        run both equations already (:meth:`_train_weight`) and this returns 0; its freezes are reported by
        :meth:`pop_forward_freezes`.
        """
        last, self._last = self._last, None
        self._new_frozen_idx = None
        if last is None:
            return 0
        if last is not True:
            self._ema(*last, m)
        if self.n_frozen == self.weight.numel():
            return 0
        t = threshold(p, self.bits)
        if t <= 0:  # warm-up: nothing can freeze
            return 0
        return self._freeze(t / _step(self.bits))  # D is kept in step units (_init_lts)

    @torch.no_grad()
    def _freeze(self, t: float, scratch: torch.Tensor | None = None) -> int:
        """Eq. 6 against ``t`` (in the step units ``D`` is kept in): freeze every unfrozen weight with ``D < t``;
        returns how many. ``scratch``, a spent full-size float buffer (the forward's ``z``), takes the
        comparison; without it the layer's own scratch buffer does. Leaves the flat indices a sampled layer
        froze in ``_new_frozen_idx`` (``None`` for a dense layer)."""
        self._new_frozen_idx = None
        if self._compact is None:
            e, keep = self.lts_distance, self._plan.keep
            if scratch is None or scratch.shape != e.shape or scratch.dtype != e.dtype:
                scratch = self._scratch
                if scratch is None or scratch.shape != e.shape or scratch.device != e.device:
                    scratch = self._scratch = torch.empty_like(e)
            stays = torch.ge(e, t, out=scratch)  # 1.0 where D >= t: the weight stays unfrozen (Eq. 6)
        else:
            flat, e, _, keep = self._compact
            stays = None
        if keep is None:  # nothing of the layer frozen yet
            n_new = stays.numel() - int(stays.sum())
            if not n_new:
                return 0
            torch.bitwise_not(stays.bool(), out=self.lts_frozen)  # was all False: now D < t
            if self.lts_restore:
                self.lts_frozen_value.copy_(torch.where(self.lts_frozen, self.weight, self.lts_frozen_value))
            self._replan(n_new)
            return n_new
        if self._compact is not None:
            # Compact (small): unfrozen (keep 1) and D < t is D < t * keep, since D >= 0 and frozen positions
            # have keep 0. Few small ops: their count, not their size, is the cost here.
            pos = torch.lt(e, keep * t).nonzero().squeeze(1)
            n_new = pos.numel()
            if not n_new:
                return 0
            keep.index_fill_(0, pos, 0.0)
            idx = flat.index_select(0, pos)
            if self.lts_restore:
                self.lts_frozen.view(-1).index_fill_(0, idx, True)
                self.lts_frozen_value.view(-1).index_copy_(0, idx, self.weight.detach().view(-1).index_select(0, idx))
            else:
                self._frozen_stale = True  # rewritten from the dense keep below when next read
            self._plan.keep.view(-1).index_fill_(0, idx, 0.0)
            self._new_frozen_idx = idx
            self._replan(n_new)
            return n_new
        # keep <- keep * [D >= t]: frozen weights stay 0 whatever their D; the count of 1s gives the new freezes.
        n_live = keep.numel() - self.n_frozen
        keep.mul_(stays)
        n_new = n_live - int(keep.sum())
        if not n_new:
            return 0
        if self.lts_restore:
            frozen_before = self.lts_frozen.clone()
            torch.bitwise_not(keep.bool(), out=self.lts_frozen)  # (bool ops on CPU: bitwise, not logical_*)
            newly = self.lts_frozen & ~frozen_before
            self.lts_frozen_value.copy_(torch.where(newly, self.weight, self.lts_frozen_value))
        else:
            # Nothing on the training path reads the bool mask (keep decides): it is rewritten from keep
            # when next read (__getattr__, state_dict), not on every step.
            self._frozen_stale = True
        self._replan(n_new)
        return n_new

    @torch.no_grad()
    def restore_frozen_(self) -> None:
        """Put every frozen weight back to its frozen value (undoes momentum / weight-decay drift exactly).

        Not needed when the optimizer cannot move frozen weights (class docstring); a layer with every weight
        frozen gets no gradient, so no optimizer step touches it.
        """
        if self._plan.keep is not None and self._plan.kind != "none":
            self.weight.copy_(torch.where(self.lts_frozen, self.lts_frozen_value, self.weight))

    def _replan(self, n_new: int | None = None) -> None:
        """Bring the plan up to date with :attr:`lts_frozen`: after :meth:`_freeze` froze ``n_new`` more
        weights (and already cleared them in the plan's ``keep``), or from scratch without ``n_new``."""
        if n_new is None or self._plan.keep is None:
            self.n_frozen = int(torch.count_nonzero(self.lts_frozen))
            keep = (~self.lts_frozen).to(self.weight.dtype)
        else:
            self.n_frozen += n_new
            keep = self._plan.keep
        kind = "none" if self.n_frozen == keep.numel() else "dense"
        self._plan = _Plan(kind, keep)
        if kind == "none":
            self._compact = None


class QuantLinearLTS(_LTSWeight, nn.Linear):
    """``nn.Linear`` with an :class:`LTSQuantizer` weight and the per-weight LTS state (Eq. 5-6).

    In training the layer runs :class:`_LTSLinearFunction`: with LTS off (:attr:`lts_enabled` false, or
    nothing frozen yet) it is ordinary QAT with the full weight gradient; with frozen weights it skips
    their gradient (module docstring: dense-masked while at least :data:`SAMPLED_BELOW` is unfrozen,
    ``sampled_addmm`` below, nothing when all are frozen). In eval mode it is ``F.linear`` of
    :class:`LTSQuantizer`'s output. State and bookkeeping: :class:`_LTSWeight`.

    Parameters
    ----------
    in_features, out_features : int
        As for ``nn.Linear``.
    bits : int
        Weight bit width ``B``, 2..8.
    bias : bool
        Full-precision bias (never frozen, never quantized).
    """

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self._init_lts(bits)
        self._pattern_nnz = 0
        self._sampled: _Plan | None = None  # the last sampled plan, whose CSR pattern may be reused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self._eval_weight(), self.bias)
        w_bar, plan, g = self._train_weight()
        qz = self.quantizer
        return _LTSLinearFunction.apply(x, self.weight, qz.lower, qz.upper, self.bias, w_bar, plan, g,
                                        self.weight_decay)

    def _replan(self, n_new: int | None = None) -> None:
        super()._replan(n_new)
        n_live = self.weight.numel() - self.n_frozen
        if n_live == 0 or n_live >= SAMPLED_BELOW * self.weight.numel():
            return
        keep, previous = self._plan.keep, self._sampled
        if previous is None or n_live < REBUILD_SHRINK * self._pattern_nnz:
            rows, cols = self.weight.shape
            if self._compact is not None and n_new is not None:
                # The live positions are a subset of the old pattern's: found in its compact state (its size),
                # not by a pass over the whole layer (nonzero over a full bool mask is slow on this CPU).
                old_flat, d, level, old_keep = self._compact
                pos = old_keep.nonzero().squeeze(1)
                flat = old_flat.index_select(0, pos)
                compact = (flat, d.index_select(0, pos), level.index_select(0, pos), old_keep.index_select(0, pos))
            else:
                self._store_compact()
                flat = (~self.lts_frozen).view(-1).nonzero().squeeze(1)
                compact = (flat, self.lts_distance.view(-1).index_select(0, flat),
                           self.lts_level.view(-1).index_select(0, flat), keep.view(-1).index_select(0, flat))
            crow = torch.zeros(rows + 1, dtype=torch.int64, device=flat.device)
            torch.cumsum(torch.bincount(torch.div(flat, cols, rounding_mode="floor"), minlength=rows), 0,
                         out=crow[1:])
            col = flat % cols
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
                # The pattern is valid by construction (row pointers from a count, columns of sorted flat
                # indices), so the checks stay off; CUDA builds of torch warn that they are off even when
                # check_invariants=False says so (seen with torch 2.11 on an H200).
                warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
                csr = torch.sparse_csr_tensor(
                    crow, col, torch.ones(flat.numel(), dtype=self.weight.dtype, device=flat.device), (rows, cols),
                    check_invariants=False,
                )
            self._pattern_nnz = n_live
            self._compact = compact
            self._plan = _Plan("sampled", keep, csr, flat, self._compact[3])
        else:
            if self._compact is None:  # pragma: no cover - a reused pattern always has its compact state
                raise RuntimeError("sampled pattern without its compact LTS state")
            self._plan = _Plan("sampled", keep, previous.csr, previous.flat, self._compact[3])
            if n_new is None:  # rebuilt from lts_frozen (not by _freeze): refresh which positions are live
                self._compact[3].copy_(keep.view(-1).index_select(0, previous.flat))
        self._sampled = self._plan

    def _store_compact(self) -> None:
        """Write the pattern positions' ``D`` and level back into the dense buffers (before a new pattern)."""
        if self._compact is not None:
            flat, d, level, _ = self._compact
            self.lts_distance.view(-1).index_copy_(0, flat, d)
            self.lts_level.view(-1).index_copy_(0, flat, level)
            self._compact = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"


class QuantConv2dLTS(_LTSWeight, nn.Conv2d):
    """``nn.Conv2d`` with an :class:`LTSQuantizer` weight and the per-weight LTS state (Eq. 5-6).

    Training runs :class:`_LTSConvFunction`: the full weight gradient with LTS off, masked to the unfrozen
    weights while any is unfrozen, none once all are frozen. Eval mode is ``conv2d`` of
    :class:`LTSQuantizer`'s output. State and bookkeeping: :class:`_LTSWeight`.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        As for ``nn.Conv2d`` (zero padding).
    bits : int
        Weight bit width ``B``, 2..8.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, bits: int, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)
        self._init_lts(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv_forward(x, self._eval_weight(), self.bias)
        w_bar, plan, g = self._train_weight()
        qz = self.quantizer
        conv = (self.stride, self.padding, self.dilation, self.groups)
        return _LTSConvFunction.apply(x, self.weight, qz.lower, qz.upper, self.bias, w_bar, plan, g,
                                      self.weight_decay, conv)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"


#: The layers :class:`model.methods.lts.LTSScratcher` drives.
LTS_LAYERS = (QuantLinearLTS, QuantConv2dLTS)


class LTSMLP(nn.Module):
    """``[QuantLinearLTS -> BatchNorm1d -> PACT] * len(hidden) -> QuantLinearLTS`` for flattened 28x28 inputs.

    Every linear layer, first and last included, has ``bits``-bit LTS weights (the paper quantizes all
    layers). Eq. 3 puts weights in ``[-1, 1]`` whatever ``l``, ``u`` are, so each hidden layer is followed by
    batch normalization (as in the paper's ResNets); the last layer's logits are multiplied by a
    learnable scalar ``logit_scale`` (initially ``1 / sqrt(fan_in)``) instead; with a fixed scale the last
    layer's ``l``, ``u`` shrank until most of its weights sat clipped at +-1. Activations are
    :class:`model.quant.pact.PACT` at ``bits`` bits, ``alpha`` initially 4 (batch-normalized inputs), so
    W/A = B/B as in the paper's tables; the 8-bit input pixels are not re-quantized.

    Parameters
    ----------
    bits : int
        Weight and activation bit width, 2..8.
    n_in : int
        Input features (784).
    hidden : tuple of int
        Hidden sizes.
    n_classes : int
        Output classes.
    """

    def __init__(self, bits: int, n_in: int = 784, hidden: tuple[int, ...] = (256, 256), n_classes: int = 10):
        super().__init__()
        sizes = [n_in, *hidden, n_classes]
        self.linears = nn.ModuleList(
            QuantLinearLTS(a, b, bits, bias=(i == len(hidden)))
            for i, (a, b) in enumerate(itertools.pairwise(sizes))
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden)
        self.acts = nn.ModuleList(PACT(bits, alpha=4.0) for _ in hidden)
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(sizes[-2])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, norm, act in zip(self.linears, self.norms, self.acts):
            x = act(norm(linear(x)))
        return self.linears[-1](x) * self.logit_scale


def build_lts_mlp(bits: int, hidden: tuple[int, ...] = (256, 256), seed: int = 0) -> LTSMLP:
    """An :class:`LTSMLP` for Fashion-MNIST-sized inputs, initialized from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LTSMLP(bits, hidden=hidden)


def to_lts(model: nn.Module, bits: int) -> nn.Module:
    """Give a network of :mod:`model.quant.nets` (ResNet-20, the VGG, an MLP) ``bits``-bit LTS weights, in place.

    Every :class:`~model.quant.layers.QuantLinear` / :class:`~model.quant.layers.QuantConv2d` becomes a
    :class:`QuantLinearLTS` / :class:`QuantConv2dLTS` with the same weights and bias and bounds at
    ``+-3 std(w)`` (Sec. III-A); every PACT gets ``bits`` bits (W/A = B/B, as :class:`LTSMLP`); the input
    quantizer keeps its width. ``model.config["act_bits"]`` follows. Returns ``model``.

    Raises
    ------
    UserError
        If ``bits`` is not 2..8 or the model has no quantized layer.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise UserError(f"field 'bits' is {bits!r}; allowed values integers 2..8")
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantConv2d):
                new = QuantConv2dLTS(child.in_channels, child.out_channels, child.kernel_size, bits,
                                     stride=child.stride, padding=child.padding, dilation=child.dilation,
                                     groups=child.groups, bias=child.bias is not None)
            elif isinstance(child, QuantLinear):
                new = QuantLinearLTS(child.in_features, child.out_features, bits, bias=child.bias is not None)
            else:
                if type(child) is PACT:
                    child.bits = bits
                continue
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
                new.quantizer.init_bounds(new.weight)
            setattr(parent, name, new)
            replaced += 1
    if not replaced:
        raise UserError("LTS: the model has no QuantLinear/QuantConv2d layer to give LTS weights")
    if isinstance(getattr(model, "config", None), dict) and "act_bits" in model.config:
        model.config["act_bits"] = bits
    return model
