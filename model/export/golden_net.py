"""Network-level integer contract of a conv net: an ordered tuple of stages, ``forward`` -> int64 scores.

The ops are those of :mod:`model.export.golden` (fully connected layer, the one requantizer) and
:mod:`model.export.golden_conv` (conv class sums, max-pool on codes, global sum pooling); this module only
chains them and checks that the chain fits together (channels, map sizes, code widths, fan-ins). No
rounding is added here. The stages:

* :class:`ConvStage`: an :class:`~model.export.golden_conv.IntConv2d` (BatchNorm folded into its per-channel
  requant, PACT clamp) with an optional max-pool on its output codes (``kernel = stride = pool``, floor
  mode, :func:`~model.export.golden_conv.max_pool_codes`). Max-pool commutes with the requantizer and the
  PACT clamp: per channel ``acc -> clamp((floor(acc / 2^ACC_SHIFT) M + B + 2^(S-1)) >> S)`` is
  non-decreasing in ``acc`` because ``M >= 0`` (a negative BatchNorm gain is moved into the codes by
  :func:`~model.export.golden_conv.fold_negative_gain`, never into ``M``), and the float model's
  ``x -> round(clamp(x, 0, alpha) / step)`` is non-decreasing too, so the max of the codes is the code of
  the max: pooling the unsigned output codes is exact and needs no rounding.
* :class:`GlobalSumPool`: global average pooling as the per-channel sum of codes
  (:func:`~model.export.golden_conv.global_sum_pool`, bound 9); the ``1 / (H W)`` goes into the next FC's gain.
* :class:`FCStage`: the final fully connected layer (an :class:`~model.export.golden.IntLinear` with
  ``out_bits = 0``: int32 scores in units of ``2^-SCORE_FRAC_BITS``). A 4-D input is flattened in
  ``(C, H, W)`` order (``torch.flatten(x, 1)``). Its inputs are sums of ``pooled`` codes of ``in_bits`` bits
  (``pooled = 1``: plain codes, e.g. VGG's flattened map; ``pooled = H W`` after :class:`GlobalSumPool`), so
  they may be wider than :data:`~model.export.golden.MAX_ACT_BITS`: the stage is checked by golden's
  ``check_layer`` (``in_bits`` is the width of the codes *before* pooling, so golden's MLP semantics are
  unchanged) plus :func:`~model.export.golden_conv.check_act_mass` on the largest input
  ``(2^in_bits - 1) pooled`` times the fan-in (bound 6), which keeps every bound of golden.

:func:`check_network` walks the shapes from ``image_shape`` and raises :class:`~model.errors.UserError`
naming the stage, the field and the allowed values. This module imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import UserError
from model.export.golden import MAX_ACT_BITS, IntLinear, check_layer, layer_forward
from model.export.golden_conv import (
    GAP_SUM_BITS,
    IntConv2d,
    check_act_mass,
    check_codes,
    check_conv,
    conv_forward,
    global_sum_pool,
    max_pool_codes,
)


@dataclass(frozen=True, eq=False)
class ConvStage:
    """A conv layer and an optional max-pool on its output codes (``pool`` = kernel = stride; 0 = none)."""

    conv: IntConv2d
    pool: int = 0

    @property
    def name(self) -> str:
        return self.conv.name or "conv"


@dataclass(frozen=True, eq=False)
class GlobalSumPool:
    """Global average pooling as the per-channel sum of the codes (``1 / (H W)`` folded into the FC)."""

    name: str = "global pool"


@dataclass(frozen=True, eq=False)
class FCStage:
    """The final fully connected layer; inputs are sums of ``pooled`` codes of ``layer.in_bits`` bits."""

    layer: IntLinear
    pooled: int = 1

    @property
    def name(self) -> str:
        return self.layer.name or "fc"

    @property
    def in_max(self) -> int:
        """The largest input the layer may see: ``(2^in_bits - 1) pooled``."""
        return ((1 << self.layer.in_bits) - 1) * self.pooled


Stage = ConvStage | GlobalSumPool | FCStage


def check_network(net: IntConvNetwork) -> None:
    """Raise :class:`UserError` unless ``net``'s stages chain from ``image_shape`` to one final FC.

    Checks each conv (:func:`~model.export.golden_conv.check_conv`), that its ``c_in`` and ``in_bits`` are the
    previous stage's channels and code width, that every map is at least the kernel or pool window, the
    global pool's sum width (bound 9), and the FC (``check_layer``, fan-in = flattened size, ``pooled`` =
    the pooled area, bound 6 by ``check_act_mass``).
    """
    shape = tuple(net.image_shape)
    if len(shape) != 3 or min(shape, default=0) < 1:
        raise UserError(f"network: field 'image_shape' is {net.image_shape!r}; allowed (C, H, W) positive")
    if not 1 <= net.input_bits <= MAX_ACT_BITS:
        raise UserError(f"network: field 'input_bits' is {net.input_bits}; allowed 1..{MAX_ACT_BITS}")
    if not net.stages or not isinstance(net.stages[-1], FCStage):
        raise UserError("network: field 'stages' must end in one FCStage (the class scores)")
    c, h, w = shape
    bits, pooled = net.input_bits, 1
    for k, stage in enumerate(net.stages):
        where = f"stage {k} ({stage.name})"
        if isinstance(stage, ConvStage):
            conv = stage.conv
            check_conv(conv, where)
            if pooled != 1:
                raise UserError(f"{where}: a conv after the global pool; allowed only the FC")
            if conv.c_in != c or conv.in_bits != bits:
                raise UserError(f"{where}: fields 'c_in', 'in_bits' are {conv.c_in}, {conv.in_bits}; the previous"
                                f" stage gives {c} channels of {bits}-bit codes")
            if h + 2 * conv.padding < conv.kernel or w + 2 * conv.padding < conv.kernel:
                raise UserError(f"{where}: input map {h}x{w} padded by {conv.padding} is smaller than the kernel")
            (h, w), c, bits = conv.out_size(h, w), conv.c_out, conv.out_bits
            if stage.pool:
                if isinstance(stage.pool, bool) or not 1 <= stage.pool <= min(h, w):
                    raise UserError(f"{where}: field 'pool' is {stage.pool!r}; allowed 0 (none) or 1..{min(h, w)}"
                                    f" (the {h}x{w} output map)")
                h, w = h // stage.pool, w // stage.pool
        elif isinstance(stage, GlobalSumPool):
            if pooled != 1:
                raise UserError(f"{where}: a second global pool")
            bound = ((1 << bits) - 1) * h * w
            if bound >= 1 << GAP_SUM_BITS:
                raise UserError(f"{where}: field 'pool sum' may reach {bound}; allowed below 2^{GAP_SUM_BITS}"
                                " (GAP_SUM_BITS)")
            pooled, h, w = h * w, 1, 1
        elif isinstance(stage, FCStage):
            if k != len(net.stages) - 1:
                raise UserError(f"{where}: the FC must be the last stage")
            layer = stage.layer
            check_layer(layer, where)
            if layer.out_bits != 0:
                raise UserError(f"{where}: field 'out_bits' is {layer.out_bits}; the final FC emits scores (0)")
            if layer.n_in != c * h * w or layer.in_bits != bits or stage.pooled != pooled:
                raise UserError(f"{where}: fields 'n_in', 'in_bits', 'pooled' are {layer.n_in}, {layer.in_bits},"
                                f" {stage.pooled}; the previous stage gives {c * h * w} inputs, {bits}-bit codes,"
                                f" pooled over {pooled}")
            check_act_mass(stage.in_max, layer.n_in, where)
        else:
            raise UserError(f"stage {k}: {type(stage).__name__}; allowed ConvStage, GlobalSumPool, FCStage")


@dataclass(frozen=True, eq=False)
class IntConvNetwork:
    """A conv net of the integer contract: ``stages`` applied in order to ``[N, C, H, W]`` input codes.

    Members
    -------
    input_bits : int
        Width of the input codes.
    image_shape : tuple of int
        ``(C, H, W)`` of one input image.
    stages : tuple
        :class:`ConvStage`, then optionally :class:`GlobalSumPool`, then one :class:`FCStage`.
    """

    input_bits: int
    image_shape: tuple[int, int, int]
    stages: tuple[Stage, ...]

    @property
    def layers(self) -> tuple[IntConv2d | IntLinear, ...]:
        """The weight layers, input to output."""
        return tuple(s.conv if isinstance(s, ConvStage) else s.layer for s in self.stages
                     if not isinstance(s, GlobalSumPool))

    @property
    def avg_weight_bits(self) -> float:
        total = sum(int(np.asarray(layer.widths).sum()) for layer in self.layers)
        return total / sum(np.asarray(layer.widths).size for layer in self.layers)

    def check_inputs(self, u, where: str = "input codes") -> np.ndarray:
        """``u`` (``[N, C, H, W]`` or flattened ``[N, C H W]``) as int64 ``[N, C, H, W]``, range checked."""
        x = np.asarray(u)
        c, h, w = self.image_shape
        if x.ndim == 2 and x.shape[1] == c * h * w:
            x = x.reshape(x.shape[0], c, h, w)
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise UserError(f"{where}: shape {x.shape}; expected [N, {c}, {h}, {w}] or [N, {c * h * w}]")
        return check_codes(x, self.input_bits, "network", field=where)

    def forward(self, u) -> np.ndarray:
        """Integer inference: int64 scores ``[N, n_classes]`` (units of ``2^-SCORE_FRAC_BITS``).

        Raises
        ------
        UserError
            From :func:`check_network`, or for input codes of another shape, type or range.
        """
        check_network(self)
        x = self.check_inputs(u)
        for stage in self.stages:
            if isinstance(stage, ConvStage):
                x = conv_forward(stage.conv, x)
                if stage.pool:
                    x = max_pool_codes(x, stage.pool, stage.pool, where=f"{stage.name} max-pool")
            elif isinstance(stage, GlobalSumPool):
                x = global_sum_pool(x, stage_bits(self, stage), where=stage.name)
            else:
                x = layer_forward(stage.layer, x.reshape(x.shape[0], -1))
        return x

    def predict(self, u) -> np.ndarray:
        """Class index of the highest score (lowest index on ties, like ``np.argmax``)."""
        return self.forward(u).argmax(axis=1)


def stage_bits(net: IntConvNetwork, stage: Stage) -> int:
    """Code width entering ``stage`` (the previous conv's ``out_bits``, or ``input_bits``)."""
    bits = net.input_bits
    for s in net.stages:
        if s is stage:
            return bits
        if isinstance(s, ConvStage):
            bits = s.conv.out_bits
    raise UserError(f"{stage.name}: not a stage of this network")
