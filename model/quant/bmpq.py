"""BMPQ: bit-gradient sensitivity driven mixed-precision quantization (the BMPQ paper, Sec. III).

Layout, as in the style guide: the quantizers as pure functions first (Eq. 3-4 and ternary [24]), then the
layers :class:`BMPQLinear` / :class:`BMPQConv2d`, the layer graph (:func:`trace`) and the model surgery
:func:`to_bmpq`. The algorithm (bit gradients Eq. 5-7, NBG and ENBG, the ILP of Eq. 8-9, memory and compression
Eq. 10-12, :func:`~model.methods.bmpq.train_bmpq`) is in :mod:`model.methods.bmpq`, the bench in
:mod:`model.bench.bmpq`.

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
  feeds which layer is found by running one forward pass with hooks. Sec. III-D's "ReLU non-linearity for the
  last layer" is read as the last layer's input activation, like every other: a PACT (a clipped ReLU) at
  ``min(16, 8)`` = 8 bits for the 16-bit last layer, since the accelerator holds no wider activation.
* **Schedule.** SGD with momentum 0.9 and weight decay 5e-4 with the paper's step decay by 0.1 at 40 % and
  70 % of the epochs (80 and 140 of 200 in Sec. IV-A), batch 128 by default.
* **Memory.** Eq. 10-12 count the weights of the quantized (conv and fully connected) layers; biases,
  BN parameters and the per-layer scale are not counted (the paper: "negligible and ignored").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.errors import UserError
from model.quant import layers as quant_layers
from model.quant.pact import PACT

#: Default support widths S_q (Sec. IV-A).
SUPPORT = (2, 4)
#: Width of the first and the last layer (Sec. IV-A).
EDGE_BITS = 16
#: Largest activation width: the accelerator's activation datapath (model/export/golden.py MAX_ACT_BITS).
ACT_BITS_CAP = 8
#: Widths a BMPQ layer accepts; 32 is the unquantized FP-32 baseline.
LAYER_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
#: Ternary threshold factor of TWN [24].
TWN_DELTA = 0.7


# ----------------------------------------------------------------------------------------------------------
# Pure functions of the paper's equations


def check_bits(bits: int, where: str = "bits") -> None:
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
    check_bits(bits)
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
        check_bits(bits)
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
        check_bits(bits)
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
        check_bits(b)
        layer.bits.fill_(b)
        for act in acts:
            act.bits = b if b == 32 else min(b, ACT_BITS_CAP)


def layer_bits(graph: LayerGraph) -> list[int]:
    return [int(layer.bits) for layer in graph.layers]


