"""BMPQ: bit-gradient sensitivity driven mixed-precision quantization (the BMPQ paper, Sec. III).

Layout, as in the style guide: pure functions of the paper's equations first (quantizers Eq. 3-4 and
ternary [24], bit gradients Eq. 5-7, NBG, the ILP of Eq. 8-9, memory and compression Eq. 10-12), then the
layers :class:`BMPQLinear` / :class:`BMPQConv2d`, the model surgery :func:`to_bmpq`, the training loop
:func:`train_bmpq`, and the bench (:func:`run_bmpq_bench`).

Choices where the paper leaves room, each said once here:

* **Quantizers.** A layer at ``q >= 3`` bits uses the symmetric quantizer of Eq. 3-4,
  ``S = max|W| / (2^(q-1) - 1)``, ``W_q = round(W / S) S`` (round half to even); at ``q = 2`` it uses the
  ternary quantizer of TWN [24] the paper names: ``Delta = 0.7 mean|W|``,
  ``alpha = mean(|W_i| : |W_i| > Delta)``, ``W_t = alpha sign(W) [|W| > Delta]``. ``q = 32`` means no
  weight quantization at all (the FP-32 baseline of Table I). Gradients pass straight through (STE).
* **Bit gradients.** ``dL/dw_q`` is the weight's ``.grad`` (the STE is the identity), so Eq. 7 gives
  ``dL/db_i = dL/dw_q * S * (-2^(q-1) if i = q-1 else 2^i)`` with ``S`` of Eq. 3 at the support's largest
  width ``q_max``. The row sum of ``|dL/db|`` over the ``q_max`` bits is therefore
  ``|dL/dw_q| S (2^q_max - 1)``; :func:`nbg` uses that closed form and a test checks it against the
  explicit ``d_l x q_max`` matrix of :func:`bit_gradients`.
* **NBG and ENBG.** The NBG of a layer for one epoch is the mean over that epoch's mini-batches of the
  per-batch NBG (the paper does not say which batches; averaging all of them costs one reduction per layer
  and batch). The ENBG (Def. 2) is the mean of the NBGs of the epochs of the interval that just ended; the
  warm-up is the first interval.
* **ILP.** ``Omega_l`` is the layer's width itself (``Psi`` is the identity), chosen from the support by
  one-hot binaries, and ``Phi(q) = p_l q`` bits, so Eq. 8-9 read: minimise ``sum_l -ENBG_l q_l`` subject to
  ``sum_l p_l q_l <= C``. Tied layers share one variable and their ENBGs add up. It is solved exactly with
  HiGHS through ``scipy.optimize.milp``.
* **Fixed and tied layers.** The first and the last quantized layer stay at 16 bits (Sec. IV-A). Layers
  that read the same input tensor (a ResNet-18 block's first conv and its 1x1 downsampling conv) are
  tied, so the downsampling layer follows the width of the layer it shares its input with ("as its input
  layer"); a layer tied to a fixed layer takes the fixed width. (This repository's ResNet-20 uses
  parameter-free option-A shortcuts, so it has no downsampling conv; the tie is found by tracing, for any
  network.)
* **Activations.** "The activation of layer l" (Sec. III-D) is layer l's *input* activation
  ``A_l^(q_l)`` (notation of Sec. III-A): the PACT quantizers that run between layer ``l-1`` and layer
  ``l`` use ``q_l`` bits, capped at :data:`ACT_BITS_CAP` = 8 bits, the accelerator's activation width.
  The first layer's input is the image (the network's input quantizer keeps its own width). Which PACT
  feeds which layer is found by running one forward pass with hooks.
* **Schedule.** SGD with momentum 0.9 and weight decay 5e-4 with the paper's step decay by 0.1 at 40 % and
  70 % of the epochs (80 and 140 of 200 in Sec. IV-A), batch 128 by default.
* **Memory.** Eq. 10-12 count the weights of the quantized (conv and fully connected) layers; biases,
  BN parameters and the per-layer scale are not counted (the paper: "negligible and ignored").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import layers as quant_layers
from .data import FASHION_MNIST_ROOT, Split, augment_batch, class_count, load_idx_split
from .errors import UserError
from .files import save_figure, write_json
from .nets import SmallVGG
from .quant import PACT
from .train import evaluate

#: Default support widths S_q (Sec. IV-A).
SUPPORT = (2, 4)
#: Width of the first and the last layer (Sec. IV-A).
EDGE_BITS = 16
#: Largest activation width: the accelerator's activation datapath (model/golden.py MAX_ACT_BITS).
ACT_BITS_CAP = 8
#: Widths a BMPQ layer accepts; 32 is the unquantized FP-32 baseline.
LAYER_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
#: Ternary threshold factor of TWN [24].
TWN_DELTA = 0.7


# ----------------------------------------------------------------------------------------------------------
# Pure functions of the paper's equations


def _check_bits(bits: int, where: str = "bits") -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in LAYER_BITS:
        raise UserError(f"field {where!r} is {bits!r}; allowed {LAYER_BITS}")


def symmetric_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Eq. 3: ``S = max|W| / (2^(q-1) - 1)`` as a 0-d tensor (a tiny positive value for an all-zero W)."""
    top = w.detach().abs().max().clamp_min(torch.finfo(w.dtype).tiny)
    return top / ((1 << (bits - 1)) - 1)


def ternary_params(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN [24]: threshold ``Delta = 0.7 mean|W|`` and scale ``alpha = mean(|W_i| : |W_i| > Delta)``."""
    a = w.detach().abs()
    delta = TWN_DELTA * a.mean()
    above = a > delta
    alpha = a[above].mean() if bool(above.any()) else a.max()
    return delta, alpha


def to_int(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, float]:
    """Signed integer codes and the layer scale: ``W_q = codes * scale`` (Eq. 3-4; ternary for 2 bits).

    Returns
    -------
    codes : torch.Tensor
        int64, same shape as ``w``, in ``[-(2^(q-1) - 1), 2^(q-1) - 1]`` (``{-1, 0, 1}`` for 2 bits).
    scale : float
        ``S`` of Eq. 3, or TWN's ``alpha`` for 2 bits.

    Raises
    ------
    UserError
        If ``bits`` is 32 (not quantized) or not in :data:`LAYER_BITS`.
    """
    _check_bits(bits)
    if bits == 32:
        raise UserError("field 'bits' is 32: an FP-32 layer has no integer codes; allowed 2..16")
    with torch.no_grad():
        if bits == 2:
            delta, alpha = ternary_params(w)
            codes = torch.where(w.abs() > delta, torch.sign(w), torch.zeros_like(w)).to(torch.int64)
            return codes, float(alpha)
        scale = symmetric_scale(w, bits)
        limit = (1 << (bits - 1)) - 1
        codes = torch.round(w.detach() / scale).clamp(-limit, limit).to(torch.int64)
        return codes, float(scale)


def dequantize(codes: torch.Tensor, scale: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale`` (Eq. 4), computed in float64 and cast to ``dtype``."""
    return (codes.to(torch.float64) * scale).to(dtype)


def bmpq_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quant weight of a layer at ``bits`` (Eq. 3-4, ternary at 2, identity at 32) with the STE."""
    if bits == 32:
        return w
    codes, scale = to_int(w, bits)
    value = dequantize(codes, scale, w.dtype)
    return value + (w - w.detach())


def bit_gradients(grad_wq: torch.Tensor, scale: float, q_max: int) -> torch.Tensor:
    """Eq. 5-7: the ``d_l x q_max`` loss bit-gradient matrix, columns MSB first as in Eq. 6.

    ``w_q = S (-2^(q-1) b_(q-1) + sum_(i < q-1) 2^i b_i)`` (Eq. 5, with the scale of Eq. 4), so
    ``dL/db_i = dL/dw_q * S * (-2^(q-1))`` for the sign bit and ``dL/dw_q * S * 2^i`` for the others.
    """
    weights = torch.tensor([-(2.0 ** (q_max - 1))] + [2.0**i for i in range(q_max - 2, -1, -1)],
                           dtype=torch.float64)
    return grad_wq.detach().reshape(-1, 1).to(torch.float64) * scale * weights


def nbg(weight: torch.Tensor, grad_wq: torch.Tensor, q_max: int) -> float:
    """Normalized bit gradient of one layer (Sec. III-B): mean over weights of ``sum_bits |dL/db_i|``.

    Uses ``S`` of Eq. 3 at ``q_max`` bits and the closed form ``|dL/dw_q| S (2^q_max - 1)`` of the row sum.
    """
    scale = float(symmetric_scale(weight, q_max))
    return float(grad_wq.detach().abs().double().mean()) * scale * ((1 << q_max) - 1)


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
# Layers


class BMPQLinear(nn.Linear):
    """``nn.Linear`` whose weight is quantized layer-wise at :attr:`bits` (Eq. 3-4, ternary at 2 bits).

    Members
    -------
    bits : torch.Tensor
        0-d int64 buffer (so it travels in the state dict); 32 means not quantized.
    """

    bits: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 32, name: str = ""):
        super().__init__(in_features, out_features, bias=bias)
        _check_bits(bits)
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.int64))
        self.name = name or f"BMPQLinear({in_features}->{out_features})"

    def quantized_weight(self) -> torch.Tensor:
        return bmpq_weight(self.weight, int(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={int(self.bits)}"


class BMPQConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is quantized layer-wise at :attr:`bits`; see :class:`BMPQLinear`."""

    bits: torch.Tensor

    def __init__(self, *args, bits: int = 32, name: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        _check_bits(bits)
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.int64))
        self.name = name or f"BMPQConv2d({self.in_channels}->{self.out_channels})"

    def quantized_weight(self) -> torch.Tensor:
        return bmpq_weight(self.weight, int(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={int(self.bits)}"


BMPQ_LAYERS = (BMPQLinear, BMPQConv2d)


def _replacement(old: nn.Module) -> nn.Module:
    name = getattr(old, "name", "")
    if isinstance(old, nn.Linear):
        new = BMPQLinear(old.in_features, old.out_features, bias=old.bias is not None, name=name)
    elif isinstance(old, nn.Conv2d):
        new = BMPQConv2d(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                         padding=old.padding, dilation=old.dilation, groups=old.groups,
                         bias=old.bias is not None, padding_mode=old.padding_mode, name=name)
    else:  # pragma: no cover - QUANT_LAYER_TYPES only holds Linear and Conv2d subclasses
        raise TypeError(f"cannot convert {type(old).__name__}")
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    return new


@dataclass
class LayerGraph:
    """What one traced forward pass says about a BMPQ model.

    Members
    -------
    layers : list of nn.Module
        The BMPQ layers in call order.
    names : list of str
        Their module paths.
    acts : list of list of PACT
        The PACT modules called before each layer and after the previous one (the layer's input
        activation, ``A_l`` of Sec. III-A); empty for the first layer.
    ties : list of list of int
        Groups of layer indices that read the same input tensor.
    """

    layers: list[nn.Module]
    names: list[str]
    acts: list[list[PACT]]
    ties: list[list[int]]

    @property
    def params(self) -> list[int]:
        return [layer.weight.numel() for layer in self.layers]


def trace(model: nn.Module, example: torch.Tensor) -> LayerGraph:
    """Run ``model`` once on ``example`` with hooks and record layer order, activations and ties."""
    # The input tensors themselves are kept (not their ids) so that no address is reused during the pass.
    order: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    handles = []
    paths = {m: n for n, m in model.named_modules()}
    for module in model.modules():
        if isinstance(module, BMPQ_LAYERS):
            handles.append(module.register_forward_pre_hook(
                lambda m, args: order.append(("layer", m, args[0]))))
        elif isinstance(module, PACT):
            handles.append(module.register_forward_pre_hook(lambda m, args: order.append(("act", m, None))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers: list[nn.Module] = []
    acts: list[list[PACT]] = []
    pending: list[PACT] = []
    by_input: list[tuple[torch.Tensor, list[int]]] = []
    for kind, module, key in order:
        if kind == "layer":
            if any(module is m for m in layers):
                raise UserError(f"BMPQ: layer {paths[module]!r} is called twice in one forward pass")
            group = next((g for t, g in by_input if t is key), None)
            if group is None:
                by_input.append((key, group := []))
            group.append(len(layers))
            layers.append(module)
            acts.append(pending if acts else [])  # PACTs before the first layer are not its input's
            pending = []
        elif not any(module is a for a in pending):
            pending.append(module)
    if len(layers) < 2:
        raise UserError(f"BMPQ needs at least two quantized layers; the model has {len(layers)}")
    ties = [group for _, group in by_input if len(group) > 1]
    return LayerGraph(layers, [paths[m] for m in layers], acts, ties)


def to_bmpq(model: nn.Module) -> nn.Module:
    """Replace every ``QuantLinear`` / ``QuantConv2d`` of ``model`` in place by its BMPQ twin (same weights).

    The element-wise DoReFa masks are dropped: BMPQ quantizes layer-wise. Returns ``model``.
    """
    types = quant_layers.QUANT_LAYER_TYPES
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, types):
                setattr(parent, child_name, _replacement(child))
    if not any(isinstance(m, BMPQ_LAYERS) for m in model.modules()):
        raise UserError("BMPQ: the model has no QuantLinear/QuantConv2d layer to quantize")
    return model


def set_bits(graph: LayerGraph, bits: list[int]) -> None:
    """Give every layer its width and the PACTs feeding it ``min(width, ACT_BITS_CAP)`` bits (32 stays 32)."""
    for layer, acts, b in zip(graph.layers, graph.acts, bits, strict=True):
        _check_bits(b)
        layer.bits.fill_(b)
        for act in acts:
            act.bits = b if b == 32 else min(b, ACT_BITS_CAP)


def layer_bits(graph: LayerGraph) -> list[int]:
    return [int(layer.bits) for layer in graph.layers]


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
        _check_bits(self.edge_bits, "edge_bits")
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

    Raises
    ------
    UserError
        For out-of-range hyper-parameters or an infeasible budget.
    """
    config.check()
    if not any(isinstance(m, BMPQ_LAYERS) for m in model.modules()):
        to_bmpq(model)
    graph = trace(model, split.x_train[:2])
    n = len(graph.layers)
    params = graph.params
    fixed = {0: config.edge_bits, n - 1: config.edge_bits}
    q_max = max(config.support)
    if config.fp:
        bits = [32] * n
        budget = None
    else:
        bits = [fixed.get(i, q_max) for i in range(n)]
        budget = config.budget_bits if config.budget_bits is not None else 32 * sum(params) / config.compression
        # Fail before training if the budget is infeasible.
        assign_bits([0.0] * n, params, budget, config.support, fixed, graph.ties)
    set_bits(graph, bits)

    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    milestones = [max(1, round(0.4 * config.epochs)), max(1, round(0.7 * config.epochs))]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    augment = getattr(split, "augment", False)
    history: list[EpochRecord] = []
    assignments: list[dict] = []
    interval_nbg: list[list[float]] = []
    boundary = config.warmup
    n_train = split.x_train.shape[0]
    model.train()
    for epoch in tqdm(range(1, config.epochs + 1), desc="BMPQ", disable=not progress):
        order = torch.randperm(n_train, generator=generator)
        sums = [0.0] * n
        batches = 0
        total = 0.0
        for start in range(0, n_train, config.batch_size):
            idx = order[start : start + config.batch_size]
            x = split.x_train[idx]
            if augment:
                x = augment_batch(x, split.image_shape, generator)
            loss = F.cross_entropy(model(x), split.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            if not config.fp:
                for i, layer in enumerate(graph.layers):
                    if i not in fixed and layer.weight.grad is not None:
                        sums[i] += nbg(layer.weight, layer.weight.grad, q_max)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            batches += 1
        schedule.step()
        epoch_nbg = [s / batches for s in sums]
        accuracy = evaluate(model, split.x_test, split.y_test, batch_size=1000)
        record = EpochRecord(epoch, layer_bits(graph), total / n_train, accuracy, epoch_nbg)
        interval_nbg.append(epoch_nbg)
        if not config.fp and epoch == boundary and epoch < config.epochs:
            enbg = [float(np.mean([e[i] for e in interval_nbg])) for i in range(n)]
            new_bits = assign_bits(enbg, params, budget, config.support, fixed, graph.ties)
            assignments.append({"after_epoch": epoch, "enbg": enbg, "bits": new_bits})
            set_bits(graph, new_bits)
            record.ilp = True
            interval_nbg = []
            boundary += config.interval
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return BMPQResult(history, graph.names, layer_bits(graph), params, history[-1].accuracy, budget, assignments)


# ----------------------------------------------------------------------------------------------------------
# Bench

#: The bench's network: a 4-block VGG whose first conv (144 weights) and FC (1,280) are small, so the
#: 16-bit edge layers leave room for 10x (:class:`model.nets.SmallVGG` with these channels).
BENCH_CHANNELS = (16, 32, 64, 128)


@dataclass(frozen=True)
class BenchBudget:
    """What :func:`run_bmpq_bench` spends: subset sizes, epochs, schedule, and the budgets to try.

    The defaults fit 20 minutes on 2 CPU cores: the first 20,000 Fashion-MNIST training images, all 10,000
    test images, 8 epochs per run (ILP after epochs 2, 4 and 6; learning-rate steps after epochs 3 and 6),
    one FP-32 run and BMPQ runs at 6x, 10x (the floor's budget) and 13x (about 5 minutes of wall time per
    2 runs on a quiet machine).
    """

    train_subset: int | None = 20000
    test_subset: int | None = None
    epochs: int = 8
    warmup: int = 2
    interval: int = 2
    lr: float = 0.05
    batch_size: int = 128
    compressions: tuple[float, ...] = (6.0, 10.0, 13.0)
    channels: tuple[int, ...] = BENCH_CHANNELS
    pact_alpha: float = 3.0
    seed: int = 0


def _bench_model(split: Split, budget: BenchBudget, act_bits: int) -> nn.Module:
    torch.manual_seed(budget.seed)
    model = SmallVGG(image_shape=split.image_shape, n_classes=class_count("idx", split), act_bits=act_bits,
                     channels=budget.channels)
    with torch.no_grad():
        # PACT's clipping level starts at pact_alpha (it is trained, with weight decay as PACT's L2 term):
        # after BN the pre-activations are about N(0, 1), and the default 6.0 leaves a 2-bit activation
        # with levels {0, 2, 4, 6}, which rounds almost everything to 0 or 2.
        for module in model.modules():
            if isinstance(module, PACT):
                module.alpha.fill_(budget.pact_alpha)
    return to_bmpq(model)


def run_bmpq_bench(
    json_path,
    root=None,
    budget: BenchBudget = BenchBudget(),
    png_path=None,
    progress: bool = True,
) -> list[dict]:
    """FP-32 baseline and BMPQ at each target compression on Fashion-MNIST (or any IDX folder ``root``).

    Both runs use the same network (:data:`BENCH_CHANNELS` VGG), data, seed and SGD schedule; the FP-32
    run keeps every weight and activation unquantized (PACT-32 clipping only). Writes ``json_path``: a list
    of rows ``{budget, layer_bits, accuracy, compression_ratio, fp_accuracy}`` (``budget`` in MB of
    weights, Eq. 11 units) plus details, atomically; and a plot to ``png_path`` if given.
    """
    split = load_idx_split(root or FASHION_MNIST_ROOT, train_subset=budget.train_subset,
                           test_subset=budget.test_subset)
    common = {"epochs": budget.epochs, "warmup": budget.warmup, "interval": budget.interval, "lr": budget.lr,
              "batch_size": budget.batch_size, "seed": budget.seed}
    t0 = time.perf_counter()
    fp_model = _bench_model(split, budget, act_bits=32)
    fp = train_bmpq(fp_model, split, BMPQConfig(fp=True, **common), progress=progress)
    fp_seconds = time.perf_counter() - t0
    rows = []
    for target in budget.compressions:
        t0 = time.perf_counter()
        model = _bench_model(split, budget, act_bits=ACT_BITS_CAP)
        result = train_bmpq(model, split, BMPQConfig(compression=target, **common), progress=progress)
        rows.append({
            "budget": result.budget_bits / 8 / 2**20,
            "target_compression": target,
            "layer_names": result.layer_names,
            "layer_bits": result.layer_bits,
            "params": result.params,
            "accuracy": result.accuracy,
            "compression_ratio": result.compression_ratio,
            "compression_ratio_16": 0.5 * result.compression_ratio,
            "memory_mb": result.memory_mb,
            "fp_memory_mb": memory_mb(result.params, [32] * len(result.params)),
            "fp_accuracy": fp.accuracy,
            "accuracy_drop_pp": 100 * (fp.accuracy - result.accuracy),
            "meets_floor": result.compression_ratio >= 10 and fp.accuracy - result.accuracy <= 0.01,
            "assignments": result.assignments,
            "accuracy_per_epoch": [r.accuracy for r in result.history],
            "fp_accuracy_per_epoch": [r.accuracy for r in fp.history],
            "seconds": time.perf_counter() - t0,
            "fp_seconds": fp_seconds,
            "data": split.name,
            "train_images": int(split.x_train.shape[0]),
            "test_images": int(split.x_test.shape[0]),
            "network": f"SmallVGG channels={list(budget.channels)}",
            **{f"cfg_{k}": v for k, v in common.items()},
        })
    write_json(Path(json_path), rows)
    if png_path is not None:
        plot_bench(rows, png_path)
    return rows


def plot_bench(rows: list[dict], png_path) -> None:
    """Left: the widths the ILP chose per layer for each budget; right: accuracy vs compression ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bits, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(rows))
    for k, row in enumerate(rows):
        xs = [i + k * width for i in range(len(row["layer_bits"]))]
        ax_bits.bar(xs, row["layer_bits"], width=width, label=f"{row['compression_ratio']:.1f}x")
    if rows:
        ax_bits.set_xticks(range(len(rows[0]["layer_names"])), rows[0]["layer_names"], rotation=45, ha="right")
    ax_bits.set_ylabel("weight bits")
    ax_bits.set_title("BMPQ layer-wise widths")
    ax_bits.legend(fontsize=8)
    ax_acc.plot([r["compression_ratio"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label="BMPQ")
    if rows:
        ax_acc.axhline(100 * rows[0]["fp_accuracy"], color="gray", ls="--", label="FP-32")
        ax_acc.axhline(100 * rows[0]["fp_accuracy"] - 1, color="gray", ls=":", label="FP-32 - 1 pp")
    ax_acc.set_xlabel("compression ratio r_M^32 (Eq. 12)")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, png_path)
    finally:
        plt.close(fig)
