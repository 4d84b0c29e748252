"""Vertical-layered layers (the vertical-layering paper, ``../shared/papers/vertical-layering-quantized-networks.txt``):
one full-precision weight and one source step ``s_w`` per layer, run at any width of the trained set
(default 2/3/4 bits; the source width ``n`` is the largest).

* :class:`VerticalLinear` / :class:`VerticalConv2d`: the weight at the selected width ``i`` is
  :func:`model.quant.lsq.vertical_quantize` (Eq. 1 at ``n`` bits, Eq. 5 floor downsampling, Eq. 6 positive
  compensation when ``compensate``, STE gradients of Eq. 7-8). The step is LSQ-initialised from the weight.
* :class:`VerticalActQuant`: unsigned LSQ (Eq. 1) of the activation with a learned step per width (Sec. 4.2.2:
  activation step sizes are bit-width specific). It takes the place of the nets' PACT (clip at 0 = ReLU).
* :class:`SwitchableBatchNorm`: one ``nn.BatchNorm`` per width (statistics and affine parameters; the paper's
  default "individual BN", Sec. 6.3.1), selected by the current width.
* :func:`to_vertical`: model surgery that turns the project's MLP, VGG and ResNet-20
  (:mod:`model.quant.nets`, built by :func:`model.quant.nets.build_model`) into vertical-layered nets, as
  :func:`model.quant.bmpq.to_bmpq` does for BMPQ: the builders stay untouched (no factory parameter needed).
* :func:`set_width` sets the width of the whole net; :func:`set_layer_widths` one width per weight layer
  (the mixed precision of Eq. 12), the activation quantizers and BNs following the layers they serve.

Choices, each said once here:

* **First and last layers.** The paper keeps them full precision and shared by every width (Sec. 6.1). The
  accelerator has no float, so they hold signed LSQ weights of a fixed :data:`EDGE_BITS` = 8 bits with their
  own learned step, shared by every precision (issue 12). They are not part of Eq. 12's choice.
  ``float_edges=True`` in :func:`to_vertical` gives the paper's float edges instead (for measuring what the
  8 bits cost; such a net has no integer codes there and is not for the accelerator).
* **Network input.** The input quantizer (``InputQuant``) becomes :data:`EDGE_BITS` = 8 bits, lossless for
  8-bit pixels (the conv nets' default already; the MLP's config ties it to ``act_bits``): the 8-bit first
  layer reads 8-bit inputs at every width. Every other activation is quantized at the current width (Fig. 4),
  the one feeding the last layer included.
* **Activation step initialisation.** Sec. 6.1 sets ``s_a = max|a| / (2^(i+1) - 1)`` from the first iteration's
  activations; we read ``2^(i+1) - 1`` as the largest unsigned code ``Q_P`` of the width (Eq. 1), i.e. ``s_a =
  max(a) / (2^b - 1)`` at ``b`` bits, set on the first training forward pass at that width. (With Eq. 3's index,
  ``i`` enhance layers over the 2-bit basic layer, the formula would give ``max|a|`` as the 2-bit step: every
  activation above half of the maximum would round to one code; so ``i`` there is read as counting from 1 bit.)
  (``max(a)``, not the paper's ``max|a|``: the codes are unsigned and the quantizer clips a negative input to 0, so
  a negative input's magnitude would only widen the step.)
* **Weight step initialisation.** ``s_w`` = :func:`model.quant.lsq.init_step` at the source width (Esser
  et al.'s ``2 mean|w| / sqrt(Q_P)``, ``sqrt(7)`` at 4 bits; Sec. 6.1 writes ``sqrt(2^4 - 1)``: the reason for
  LSQ's ``Q_P`` is in that function's docstring).
* **Widths.** Consecutive integers (each lower width drops one bit, Eq. 5), at least 2 bits (the paper's
  basic layer), at most 8. One width is allowed: the net is then a plain LSQ net (the per-width oracle).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.errors import UserError
from model.quant.layers import QUANT_LAYER_TYPES, QuantConv2d
from model.quant.lsq import downsample, init_step, lsq_codes, lsq_quantize, q_range, vertical_quantize
from model.quant.pact import PACT, InputQuant

#: The paper's widths (Sec. 6.1: 2-bit basic layer, 4-bit source).
DEFAULT_WIDTHS = (2, 3, 4)
#: Fixed signed integer width of the first and the last layer, shared by every precision (issue 12).
EDGE_BITS = 8
#: Largest width a vertical layer may run at (the accelerator's activation width).
MAX_BITS = 8


def check_widths(widths, field: str = "widths") -> tuple[int, ...]:
    """``widths`` as a sorted tuple of consecutive ints in 2..8.

    Raises
    ------
    UserError
        Naming ``field``, the value and the allowed values.
    """
    try:
        values = tuple(sorted(int(w) for w in widths))
        ok = all(not isinstance(w, bool) and int(w) == w for w in widths)
    except (TypeError, ValueError):
        values, ok = (), False
    if (not ok or not values or values[0] < 2 or values[-1] > MAX_BITS
            or values != tuple(range(values[0], values[-1] + 1))):
        raise UserError(f"field '{field}' is {widths!r}; allowed consecutive integer widths in 2..{MAX_BITS}, "
                        f"e.g. 2,3,4")
    return values


def parse_widths(text: str) -> tuple[int, ...]:
    """``"2,3,4"`` -> ``(2, 3, 4)`` (:func:`check_widths`)."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"field 'widths' is {text!r}; allowed comma-separated consecutive integers in "
                        f"2..{MAX_BITS}, e.g. 2,3,4") from None
    return check_widths(values)


class _Switchable:
    """A module whose behaviour depends on the current width ``bits`` out of ``widths``."""

    widths: tuple[int, ...]
    bits: int

    def _index(self) -> int:
        return self.widths.index(self.bits)

    def set_bits(self, bits: int) -> None:
        if bits not in self.widths:
            raise UserError(f"{getattr(self, 'name', type(self).__name__)}: width {bits!r} is not one of the "
                            f"trained widths {self.widths}")
        self.bits = bits


class VerticalWeight(_Switchable):
    """Shared body of :class:`VerticalLinear` and :class:`VerticalConv2d` (a base for ``nn.Module`` layers that
    own ``weight``; call :meth:`_init_vertical` after the module's own ``__init__``).

    Members
    -------
    weight : nn.Parameter
        The one full-precision weight ``w`` (shared by every width).
    step : nn.Parameter
        The source step ``s_w`` (``s_n``; ``s_i = 2^(n-i) s_w``, Eq. 3), or the edge layer's 8-bit step.
    widths, bits : tuple of int, int
        Trained widths and the current one (ignored by an edge layer).
    top : int
        The source width ``n = max(widths)``.
    edge : bool
        First or last layer: fixed :data:`EDGE_BITS`-bit LSQ weight, shared by every width.
    compensate : bool
        Whether the lower widths add Eq. 6's compensation ``z_i``.
    """

    weight: nn.Parameter
    step: nn.Parameter

    def _init_vertical(self, widths, compensate: bool, edge: bool, name: str, float_edge: bool = False) -> None:
        self.widths = check_widths(widths)
        self.top = self.widths[-1]
        self.bits = self.top
        self.compensate = bool(compensate)
        self.edge = bool(edge)
        self.float_edge = bool(edge and float_edge)
        self.name = name
        self.step = nn.Parameter(torch.tensor(init_step(self.weight, self.weight_bits)))

    @property
    def weight_bits(self) -> int:
        """The width the forward pass uses now: :data:`EDGE_BITS` for an edge layer (32 for a float one), else
        ``bits``."""
        if self.edge:
            return 32 if self.float_edge else EDGE_BITS
        return self.bits

    def quantized_weight(self) -> torch.Tensor:
        """De-quantized weight at the current width: ``(w_bar_i + z_i) s_i`` (Eq. 5-8), or Eq. 1 at 8 bits."""
        if self.float_edge:
            return self.weight
        if self.edge:
            return lsq_quantize(self.weight, self.step, EDGE_BITS, signed=True)
        return vertical_quantize(self.weight, self.step, self.top, self.bits, self.compensate)

    @torch.no_grad()
    def source_codes(self) -> torch.Tensor:
        """int64 codes ``w_bar_n = Q(w, s_w)`` at the source width (Eq. 1), or the edge layer's 8-bit codes."""
        if self.float_edge:
            raise UserError(f"{self.name}: a float edge layer has no integer codes")
        bits = EDGE_BITS if self.edge else self.top
        return lsq_codes(self.weight, self.step, bits, signed=True).round().to(torch.int64)

    @torch.no_grad()
    def weight_codes(self, bits: int | None = None) -> torch.Tensor:
        """int64 codes ``w_bar_i = floor(w_bar_n / 2^(n-i))`` at ``bits`` (default the current width; Eq. 5)."""
        if self.edge:
            return self.source_codes()
        bits = self.bits if bits is None else bits
        if bits not in self.widths:
            raise UserError(f"{self.name}: width {bits!r} is not one of the trained widths {self.widths}")
        return downsample(self.source_codes(), self.top - bits)

    @torch.no_grad()
    def dequantized(self, bits: int | None = None) -> torch.Tensor:
        """The float weight the forward pass uses at ``bits``, from :meth:`weight_codes` (float64)."""
        if self.float_edge:
            return self.weight.detach().double()
        if self.edge:
            return self.source_codes().double() * float(self.step.detach())
        bits = self.bits if bits is None else bits
        times = self.top - bits
        z = 0.5 * (1.0 - 2.0 ** -times) if self.compensate else 0.0
        return (self.weight_codes(bits).double() + z) * float(self.step.detach()) * (1 << times)

    def extra_repr(self) -> str:
        mode = f"edge {self.weight_bits}-bit" if self.edge else f"widths={self.widths}, bits={self.bits}"
        return f"{super().extra_repr()}, name={self.name!r}, {mode}, compensate={self.compensate}"


class VerticalLinear(VerticalWeight, nn.Linear):
    """``nn.Linear`` with a vertical-layered weight (:class:`VerticalWeight`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, widths=DEFAULT_WIDTHS,
                 compensate: bool = True, edge: bool = False, name: str = "", float_edge: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self._init_vertical(widths, compensate, edge, name or f"VerticalLinear({in_features}->{out_features})",
                            float_edge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class VerticalConv2d(VerticalWeight, nn.Conv2d):
    """``nn.Conv2d`` (zero padding) with a vertical-layered weight (:class:`VerticalWeight`)."""

    def __init__(self, *args, widths=DEFAULT_WIDTHS, compensate: bool = True, edge: bool = False,
                 name: str = "", float_edge: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_vertical(widths, compensate, edge, name or "VerticalConv2d", float_edge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


VERTICAL_LAYER_TYPES = (VerticalLinear, VerticalConv2d)


class VerticalActQuant(_Switchable, nn.Module):
    """Unsigned LSQ activation (Eq. 1, ``Q_N = 0``) with one learned step per width.

    Replaces a ReLU/PACT: codes ``clip(round(a / s_a), 0, 2^b - 1)``; the clip at 0 is the ReLU.

    Members
    -------
    steps : nn.Parameter
        ``[len(widths)]`` steps ``s_a``, entry ``k`` used at ``widths[k]``.
    initialized : torch.Tensor
        bool buffer per width: set by the first training forward pass at that width (module docstring).
    """

    def __init__(self, widths=DEFAULT_WIDTHS):
        super().__init__()
        self.widths = check_widths(widths)
        self.bits = self.widths[-1]
        self.steps = nn.Parameter(torch.ones(len(self.widths)))
        self.register_buffer("initialized", torch.zeros(len(self.widths), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._index()
        if self.training and not bool(self.initialized[k]):
            with torch.no_grad():
                _, q_p = q_range(self.bits, signed=False)
                self.steps[k] = x.detach().max().clamp_min(1e-3) / q_p
                self.initialized[k] = True
        return lsq_quantize(x, self.steps[k], self.bits, signed=False)

    @torch.no_grad()
    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """int64 codes at the current width."""
        return lsq_codes(x, self.steps[self._index()], self.bits, signed=False).round().to(torch.int64)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, bits={self.bits}"


class SwitchableBatchNorm(_Switchable, nn.Module):
    """One BatchNorm (statistics and affine parameters) per width, the one of the current width applied."""

    def __init__(self, template: nn.modules.batchnorm._BatchNorm, widths=DEFAULT_WIDTHS):
        super().__init__()
        self.widths = check_widths(widths)
        self.bits = self.widths[-1]
        bns = []
        for _ in self.widths:
            bn = type(template)(template.num_features, eps=template.eps, momentum=template.momentum,
                                affine=template.affine, track_running_stats=template.track_running_stats)
            bn.load_state_dict(template.state_dict())
            bns.append(bn)
        self.bns = nn.ModuleList(bns)

    @property
    def current(self) -> nn.modules.batchnorm._BatchNorm:
        return self.bns[self._index()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.current(x)


#: Modules holding per-width parameters: trained by their own width's loss only (Sec. 4.2.2).
PER_WIDTH_TYPES = (VerticalActQuant, SwitchableBatchNorm)
SWITCHABLE_TYPES = (*VERTICAL_LAYER_TYPES, VerticalActQuant, SwitchableBatchNorm)


def _vertical_twin(old: nn.Module, widths, compensate: bool, edge: bool, float_edge: bool) -> nn.Module:
    if isinstance(old, QuantConv2d):
        new = VerticalConv2d(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                             padding=old.padding, dilation=old.dilation, groups=old.groups,
                             bias=old.bias is not None, widths=widths, compensate=compensate, edge=edge,
                             name=old.name, float_edge=float_edge)
    else:
        new = VerticalLinear(old.in_features, old.out_features, bias=old.bias is not None, widths=widths,
                             compensate=compensate, edge=edge, name=old.name, float_edge=float_edge)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
        new.step.fill_(init_step(new.weight, new.weight_bits))
    return new


def to_vertical(model: nn.Module, widths=DEFAULT_WIDTHS, compensate: bool = True,
                float_edges: bool = False) -> nn.Module:
    """Turn a net of :mod:`model.quant.nets` into a vertical-layered net in place (same weights); returns it.

    Every ``QuantLinear`` / ``QuantConv2d`` becomes a :class:`VerticalLinear` / :class:`VerticalConv2d` (the
    first and the last in registration order, which is input to output for these nets, are edge layers of
    :data:`EDGE_BITS` bits), every ``BatchNorm`` a :class:`SwitchableBatchNorm`, every PACT a
    :class:`VerticalActQuant`, the input quantizer an 8-bit one. ``float_edges=True`` keeps the edge layers'
    weights full precision (the paper's setting) instead of 8 bits. ``model.vertical = {"widths": [...],
    "compensate": bool}`` (plus ``"float_edges": true`` when set) records the choice next to the net's own
    ``config``. The net is left at its source width.

    Raises
    ------
    UserError
        If ``widths`` is malformed or the net has fewer than three quantized layers (nothing would switch).
    """
    widths = check_widths(widths)
    layers = [m for m in model.modules() if isinstance(m, QUANT_LAYER_TYPES)]
    if len(layers) < 3:
        raise UserError(f"vertical layering needs a net with at least three quantized layers (the first and the "
                        f"last are fixed {EDGE_BITS}-bit edges), not {len(layers)}; an MLP needs two or more "
                        f"hidden layers (--hidden)")
    edges = {id(layers[0]), id(layers[-1])}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, QUANT_LAYER_TYPES):
                new = _vertical_twin(child, widths, compensate, id(child) in edges, float_edges)
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                new = SwitchableBatchNorm(child, widths)
            elif isinstance(child, PACT):
                new = VerticalActQuant(widths)
            elif isinstance(child, InputQuant):
                new = InputQuant(EDGE_BITS)
            else:
                continue
            setattr(parent, child_name, new)
    model.vertical = {"widths": list(widths), "compensate": bool(compensate)}
    if float_edges:
        model.vertical["float_edges"] = True
    return model


def vertical_layers(model: nn.Module) -> list[VerticalWeight]:
    """The vertical weight layers of ``model`` in registration order (input to output), edges included."""
    return [m for m in model.modules() if isinstance(m, VERTICAL_LAYER_TYPES)]


def inner_layers(model: nn.Module) -> list[VerticalWeight]:
    """The non-edge weight layers: the ones that switch width (and that Eq. 12 assigns)."""
    return [m for m in vertical_layers(model) if not m.edge]


def widths_of(model: nn.Module) -> tuple[int, ...]:
    """The trained widths of a vertical net."""
    layers = inner_layers(model) or vertical_layers(model)
    if not layers:
        raise UserError("the model has no vertical-layered layer (see model.quant.vertical.to_vertical)")
    return layers[0].widths


def set_width(model: nn.Module, bits: int) -> None:
    """Run the whole net at ``bits`` (uniform precision): every switchable module, edges unaffected.

    Raises
    ------
    UserError
        If ``bits`` is not a trained width.
    """
    for m in model.modules():
        if isinstance(m, SWITCHABLE_TYPES):
            m.set_bits(bits)


class width:
    """Context manager: ``with width(model, 2): ...`` runs at 2 bits and restores the previous widths."""

    def __init__(self, model: nn.Module, bits: int):
        self.model, self.bits = model, bits

    def __enter__(self):
        self.saved = [(m, m.bits) for m in self.model.modules() if isinstance(m, SWITCHABLE_TYPES)]
        set_width(self.model, self.bits)
        return self.model

    def __exit__(self, *exc):
        for m, bits in self.saved:
            m.bits = bits


def execution_order(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The switchable modules of ``model`` in the order one forward pass of ``example`` calls them (eval mode,
    no gradient; the train/eval mode is restored)."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: order.append(mod))
             for m in model.modules() if isinstance(m, SWITCHABLE_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def set_layer_widths(model: nn.Module, layer_bits: list[int], example: torch.Tensor) -> None:
    """Mixed precision (Eq. 12): ``layer_bits[m]`` for the ``m``-th inner layer (:func:`inner_layers`).

    The per-width modules follow the layers they serve, found from the execution order of ``example``: an
    activation quantizer takes the width of the next inner layer executed after it (the layer it feeds; the
    previous inner layer where only the last edge layer follows); a BN takes the width of the weight layer
    executed just before it (the layer it normalises; the next inner layer after the first edge layer).

    Raises
    ------
    UserError
        If the list has the wrong length or holds a width that was not trained.
    """
    inner = inner_layers(model)
    if len(layer_bits) != len(inner):
        raise UserError(f"field 'layer_bits' has {len(layer_bits)} entries for {len(inner)} inner layers")
    for layer, bits in zip(inner, layer_bits):
        layer.set_bits(int(bits))
    order = execution_order(model, example)
    positions = [i for i, m in enumerate(order) if isinstance(m, VERTICAL_LAYER_TYPES) and not m.edge]
    weights_at = [i for i, m in enumerate(order) if isinstance(m, VERTICAL_LAYER_TYPES)]
    for i, m in enumerate(order):
        after = [p for p in positions if p > i]
        before = [p for p in positions if p < i]
        if isinstance(m, VerticalActQuant):
            source = after[0] if after else before[-1]
        elif isinstance(m, SwitchableBatchNorm):
            producer = max(p for p in weights_at if p < i)
            source = producer if not order[producer].edge else (after[0] if after else before[-1])
        else:
            continue
        m.set_bits(order[source].bits)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Re-estimate the running statistics of the BNs in use (the current width of every
    :class:`SwitchableBatchNorm`) from ``batches`` of training inputs, as the paper does for a sampled
    mixed-precision net (Sec. 6.4): statistics reset, then the cumulative mean over the batches (BN momentum
    ``None``). Returns the number of BNs re-estimated; the model ends in eval mode."""
    bns = [m.current for m in model.modules() if isinstance(m, SwitchableBatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.eval()
    return len(bns)
