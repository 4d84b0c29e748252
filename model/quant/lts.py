"""Lottery ticket scratcher (LTS): freeze quantized weights that have settled on their level (paper Sec. III).

Layout, as in the style guide: pure functions of the paper's equations first (Eq. 1-8), then the weight
quantizer module :class:`LTSQuantizer`, the layer :class:`QuantLinearLTS` with its structured weight-gradient
reduction (Sec. III-D), then the algorithm (:class:`LTSScratcher`, :func:`train_lts`) and the bench
(:func:`run_lts_bench`, :func:`plot_sparsity`).

Choices where the paper leaves room, each said once here:

* **Distance domain.** ``D_{w_n}`` (Eq. 5) is measured in the de-quantized domain of Eq. 3,
  ``|(2 x_n - 1) - w_bar|``, the domain in which ``Delta^B = 2 / 2^B`` (the issue: "threshold
  t = p * 2/2^B") is the size of a quantization step. A weight is therefore at most half a step,
  ``1 / (2^B - 1)``, from its level, and ``t`` reaches that at ``p = 2^B / (2 (2^B - 1))`` (2/3 for 2 bits).
* **EMA start and reset.** ``D`` starts at ``Delta^B`` and is reset to ``Delta^B`` whenever the weight's
  integer level (Eq. 2) differs from the level of the previous training iteration. ``D`` is updated from
  the values the forward pass of the iteration used (no second quantization).
* **Freezing is permanent and exact.** Once ``D < t`` a weight is frozen for the rest of training; its
  weight gradient is never computed (it is exactly 0) and, because SGD momentum and weight decay would
  still move it, its latent value is restored bit for bit after every optimizer step.
* **Clipping bounds.** ``l`` and ``u`` (Eq. 1) stay trainable. Their gradient comes through the weight
  gradient ``dL/dw_bar``, which LTS does not compute at frozen positions, so it sums over unfrozen
  weights only; this is what makes the backward saving real (computing it anyway would cost the full
  dense weight gradient).
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
  the pattern's; positions frozen in between are computed and then masked to zero (same result).
* **Fair baseline.** Plain QAT (LTS off) runs the same autograd function with nothing masked, so the
  backward-time ratio measures only what LTS skips (a test checks it equals autograd's gradient).
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from model.errors import UserError
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
    """How :class:`_LTSLinearFunction` computes the weight gradient.

    ``dense``: full ``dY^T X``, times ``keep`` if given (``keep=None``: nothing frozen, plain QAT);
    ``sampled``: only at the CSR pattern's positions ``flat``; ``none``: no weight gradient at all.
    """

    def __init__(self, kind: str, keep: torch.Tensor | None = None, csr=None, flat=None):
        self.kind, self.keep, self.csr, self.flat = kind, keep, csr, flat


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


class _LTSLinearFunction(torch.autograd.Function):
    """``y = x w_bar^T + b`` with ``w_bar`` of Eq. 1-3; the backward skips frozen weights (Sec. III-D).

    Inputs ``(x, w, lower, upper, bias, w_bar, plan, g)``: ``w_bar`` is the (detached) fake-quant value of
    ``w``; the backward computes ``dL/dw_bar`` only where ``plan`` says and runs the STE chain
    (:func:`_ste_chain`) only there, so both the weight-gradient product and the element-wise quantizer
    backward shrink with the frozen fraction. Both training modes use this function, so the baseline and
    LTS differ only in what is skipped.
    """

    @staticmethod
    def forward(ctx, x, w, lower, upper, bias, w_bar, plan, g):
        ctx.save_for_backward(x, w, lower, upper, w_bar)
        ctx.plan, ctx.g, ctx.has_bias = plan, g, bias is not None
        y = x @ w_bar.t()
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, grad):
        x, w, lower, upper, w_bar = ctx.saved_tensors
        plan = ctx.plan
        dx = grad @ w_bar if ctx.needs_input_grad[0] else None
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[4] else None
        dw = dl = du = None
        if plan.kind == "dense":
            gy = grad.t() @ x
            if plan.keep is not None:
                gy = gy * plan.keep
            dw, dl, du = _ste_chain(gy, w, lower, upper, ctx.g)
        elif plan.kind == "sampled":
            # Dot products of dY and X columns at the pattern's positions only; positions frozen since the
            # pattern was built are zeroed by ``keep``.
            values = torch.sparse.sampled_addmm(plan.csr, grad.t(), x, beta=0.0).values()
            values = values * plan.keep.view(-1)[plan.flat]
            dw_v, dl, du = _ste_chain(values, w.view(-1)[plan.flat], lower, upper, ctx.g)
            dw = torch.zeros(w.numel(), dtype=w.dtype)
            dw[plan.flat] = dw_v
            dw = dw.view_as(w)
        # "none": every weight frozen, so no weight gradient and (it flows through dL/dw_bar) none for l, u.
        return dx, dw, dl, du, db, None, None, None


class QuantLinearLTS(nn.Linear):
    """``nn.Linear`` with an :class:`LTSQuantizer` weight and the per-weight LTS state (Eq. 5-6).

    In training the layer runs :class:`_LTSLinearFunction`: with LTS off (:attr:`lts_enabled` false, or
    nothing frozen yet) it is ordinary QAT with the full weight gradient; with frozen weights it skips
    their gradient (module docstring: dense-masked while at least :data:`SAMPLED_BELOW` is unfrozen,
    ``sampled_addmm`` below, nothing when all are frozen). In eval mode it is ``F.linear`` of
    :class:`LTSQuantizer`'s output. Each training forward keeps ``x_n`` and ``q`` for :meth:`lts_update`.

    Parameters
    ----------
    in_features, out_features : int
        As for ``nn.Linear``.
    bits : int
        Weight bit width ``B``, 2..8.
    bias : bool
        Full-precision bias (never frozen, never quantized).

    Members
    -------
    quantizer : LTSQuantizer
    lts_distance : torch.Tensor
        float32 EMA distance ``D`` (Eq. 5), starts at ``Delta^B``.
    lts_level : torch.Tensor
        int64 level of the previous iteration (-1 before the first).
    lts_frozen : torch.Tensor
        bool, true for frozen weights (never cleared).
    lts_frozen_value : torch.Tensor
        Latent value of each frozen weight at the moment it froze.
    lts_enabled : bool
        Whether the custom backward and freezing are active (set by :class:`LTSScratcher`).
    """

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.quantizer = LTSQuantizer(bits)
        self.quantizer.init_bounds(self.weight)
        self.register_buffer("lts_distance", torch.full_like(self.weight, quant_interval(bits)))
        self.register_buffer("lts_level", torch.full_like(self.weight, -1, dtype=torch.int64))
        self.register_buffer("lts_frozen", torch.zeros_like(self.weight, dtype=torch.bool))
        self.register_buffer("lts_frozen_value", torch.zeros_like(self.weight))
        self.lts_enabled = False
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._plan = _Plan("dense")
        self._pattern_nnz = 0
        self.n_frozen = 0

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.quantizer(self.weight), self.bias)
        qz = self.quantizer
        with torch.no_grad():
            x_n = qz.normalize(self.weight)
            q = quant_codes(x_n, qz.bits)
            w_bar = qz.dequantize(q)
        self._last = (x_n, q)
        plan = self._plan if self.lts_enabled and self._plan.keep is not None else _FULL
        g = qz.bound_grad_scale(self.weight.numel())
        return _LTSLinearFunction.apply(x, self.weight, qz.lower, qz.upper, self.bias, w_bar, plan, g)

    @torch.no_grad()
    def lts_update(self, p: float, m: float) -> int:
        """One LTS iteration on the values of the last training forward: Eq. 5 EMA, Eq. 6 freeze.

        Returns the number of newly frozen weights. Frozen weights keep their ``D`` and level.
        """
        if self._last is None:
            return 0
        x_n, q = self._last
        self._last = None
        if self.n_frozen == self.lts_frozen.numel():
            return 0
        live = ~self.lts_frozen
        changed = q != self.lts_level
        d = ema_distance(self.lts_distance, level_distance(x_n, self.bits, q), changed, m, self.bits)
        self.lts_distance.copy_(torch.where(live, d, self.lts_distance))
        self.lts_level.copy_(torch.where(live, q, self.lts_level))
        newly = live & (self.lts_distance < threshold(p, self.bits))
        n_new = int(newly.sum())
        if n_new:
            self.lts_frozen_value.copy_(torch.where(newly, self.weight, self.lts_frozen_value))
            self.lts_frozen |= newly
            self._replan()
        return n_new

    @torch.no_grad()
    def restore_frozen_(self) -> None:
        """Put every frozen weight back to its frozen value (undoes momentum / weight-decay drift exactly)."""
        if self._plan.keep is not None:
            self.weight.copy_(torch.where(self.lts_frozen, self.lts_frozen_value, self.weight))

    def _replan(self) -> None:
        keep = (~self.lts_frozen).to(self.weight.dtype)
        self.n_frozen = int(self.lts_frozen.sum())
        n_live = self.lts_frozen.numel() - self.n_frozen
        if n_live == 0:
            self._plan = _Plan("none", keep)
        elif n_live >= SAMPLED_BELOW * self.weight.numel():
            self._plan = _Plan("dense", keep)
        else:
            plan = self._plan
            if plan.kind != "sampled" or n_live < REBUILD_SHRINK * self._pattern_nnz:
                live = ~self.lts_frozen
                flat = live.view(-1).nonzero().squeeze(1)
                crow = torch.zeros(live.shape[0] + 1, dtype=torch.int64)
                torch.cumsum(live.sum(1), 0, out=crow[1:])
                col = flat % live.shape[1]
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
                    csr = torch.sparse_csr_tensor(
                        crow, col, torch.ones(flat.numel(), dtype=self.weight.dtype), live.shape,
                        check_invariants=False,
                    )
                self._pattern_nnz = n_live
                self._plan = _Plan("sampled", keep, csr, flat)
            else:
                self._plan = _Plan("sampled", keep, plan.csr, plan.flat)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"


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
