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
* :class:`ResidualStage`: ResNet-20's basic block, ``h = conv_forward(conv1, x)``,
  ``y = conv_forward(conv2, h, residual=shortcut_a(x, C_out, stride))``: conv2's requant adds the option-A
  shortcut codes with their own multiplier ``M_r`` (:func:`~model.export.golden_conv.requantize_residual`,
  the one rounding), then the PACT clamp. ``conv1`` carries the block's stride, ``conv2`` has stride 1 and a
  ``res_mult``; the shortcut's codes are ``x``'s (``conv1.in_bits`` bits, at most ``MAX_ACT_BITS``: bound 8).
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
    _conv_forward,
    _global_sum_pool,
    check_act_mass,
    check_codes,
    check_conv,
    conv_forward,
    max_pool_codes,
    shortcut_a,
)

#: Images :meth:`IntConvNetwork.forward` runs at once. A conv layer's int64 patches and maps take about 3 MB an
#: image on ResNet-20 at 28 x 28 (its 2,000 test images at once peaked at 6.1 GB; all 10,000 of Fashion-MNIST ran
#: out of a 24 GB machine's memory, found 2026-12-06), so a larger batch runs in chunks of this many: a few
#: hundred MB at most, and numpy's per-call overhead still small beside a chunk's work.
FORWARD_CHUNK = 128


@dataclass(frozen=True, eq=False)
class ConvStage:
    """A conv layer and an optional max-pool on its output codes (``pool`` = kernel = stride; 0 = none)."""

    conv: IntConv2d
    pool: int = 0

    @property
    def name(self) -> str:
        return self.conv.name or "conv"


@dataclass(frozen=True, eq=False)
class ResidualStage:
    """A basic block: ``conv1`` (stride ``stride``), then ``conv2`` whose requant adds the option-A shortcut.

    ``conv2.res_mult`` is the shortcut's per-channel ``M_r``; the shortcut is ``shortcut_a(x, conv2.c_out,
    stride)`` of the block's input codes ``x``.
    """

    conv1: IntConv2d
    conv2: IntConv2d
    stride: int = 1
    name: str = ""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``conv_forward(conv2, conv_forward(conv1, x), residual=shortcut_a(x, C_out, stride))``."""
        return self._forward(x, conv_forward)

    def _forward(self, x: np.ndarray, conv) -> np.ndarray:
        """:meth:`forward` with ``conv`` for ``conv_forward`` (the network passes its unchecked variant)."""
        h = conv(self.conv1, x)
        r = shortcut_a(x, self.conv2.c_out, self.stride, where=f"{self.label} shortcut")
        return conv(self.conv2, h, residual=r)

    @property
    def label(self) -> str:
        return self.name or self.conv1.name or "block"


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


Stage = ConvStage | ResidualStage | GlobalSumPool | FCStage


def check_network(net: IntConvNetwork) -> None:
    """Raise :class:`UserError` unless ``net``'s stages chain from ``image_shape`` to one final FC.

    Checks each conv (:func:`~model.export.golden_conv.check_conv`), that its ``c_in`` and ``in_bits`` are the
    previous stage's channels and code width, that every map is at least the kernel or pool window, the
    global pool's sum width (bound 9), each residual block (:func:`_check_residual`: conv1/conv2 chaining,
    ``res_mult`` on conv2 only, shortcut channels, stride and map size, shortcut code width), and the FC (``check_layer``, fan-in = flattened size, ``pooled`` =
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
            _check_chain(conv, where, c, bits, pooled, "a conv", "fields")
            _check_fits(conv, where, h, w)
            (h, w), c, bits = conv.out_size(h, w), conv.c_out, conv.out_bits
            if stage.pool:
                if isinstance(stage.pool, bool) or not 1 <= stage.pool <= min(h, w):
                    raise UserError(f"{where}: field 'pool' is {stage.pool!r}; allowed 0 (none) or 1..{min(h, w)}"
                                    f" (the {h}x{w} output map)")
                h, w = h // stage.pool, w // stage.pool
        elif isinstance(stage, ResidualStage):
            c, h, w, bits = _check_residual(stage, where, c, h, w, bits, pooled)
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
            raise UserError(f"stage {k}: {type(stage).__name__}; allowed ConvStage, ResidualStage, GlobalSumPool,"
                            " FCStage")


def _check_chain(conv: IntConv2d, where: str, c: int, bits: int, pooled: int, what: str, fields: str,
                 note: str = "") -> None:
    """A conv (``what``, as the message names it) takes the previous stage's ``c`` channels of ``bits``-bit
    codes, and comes before the global pool."""
    if pooled != 1:
        raise UserError(f"{where}: {what} after the global pool; allowed only the FC")
    if conv.c_in != c or conv.in_bits != bits:
        raise UserError(f"{where}: {fields} 'c_in', 'in_bits' are {conv.c_in}, {conv.in_bits}; the previous"
                        f" stage gives {c} channels of {bits}-bit codes{note}")


def _check_fits(conv: IntConv2d, where: str, h: int, w: int, of: str = "") -> None:
    """The ``h x w`` input map of ``conv`` (``of`` names it in the message), padded, is at least the kernel."""
    if h + 2 * conv.padding < conv.kernel or w + 2 * conv.padding < conv.kernel:
        raise UserError(f"{where}: input map {h}x{w}{of} padded by {conv.padding} is smaller than the kernel")


def _check_residual(stage: ResidualStage, where: str, c: int, h: int, w: int, bits: int, pooled: int
                    ) -> tuple[int, int, int, int]:
    """Check one :class:`ResidualStage` on a ``c x h x w`` map of ``bits``-bit codes; its output ``(c, h, w, bits)``.

    conv1 takes the input (channels, width), conv2 conv1's output at stride 1 and carries ``res_mult``
    (conv1 none); the shortcut (``stride`` 1 or 2, ``c <= conv2.c_out``) has conv2's output map; its codes are
    the input's, ``bits <= MAX_ACT_BITS`` (bound 8, already checked for conv1's ``in_bits``).
    """
    one, two = stage.conv1, stage.conv2
    check_conv(one, f"{where} conv1")
    check_conv(two, f"{where} conv2")
    _check_chain(one, where, c, bits, pooled, "a residual block", "conv1 fields", " (the shortcut's codes too)")
    if not 1 <= bits <= MAX_ACT_BITS:
        raise UserError(f"{where}: shortcut codes of {bits} bits; allowed 1..{MAX_ACT_BITS} (bound 8)")
    if one.res_mult is not None or two.res_mult is None:
        raise UserError(f"{where}: field 'res_mult' must be None on conv1 and set on conv2 (the residual add)")
    if two.c_in != one.c_out or two.in_bits != one.out_bits or two.stride != 1:
        raise UserError(f"{where}: conv2 fields 'c_in', 'in_bits', 'stride' are {two.c_in}, {two.in_bits},"
                        f" {two.stride}; allowed conv1's {one.c_out}, {one.out_bits}, and 1")
    if isinstance(stage.stride, bool) or stage.stride not in (1, 2) or two.c_out < c:
        raise UserError(f"{where}: field 'stride' is {stage.stride!r} and conv2 has {two.c_out} channels; allowed"
                        f" stride 1 or 2 and at least the input's {c} channels (option A pads with zeros)")
    for conv, (hh, ww) in ((one, (h, w)), (two, one.out_size(h, w))):
        _check_fits(conv, where, hh, ww, of=f" of {conv.name or 'conv'}")
    out = two.out_size(*one.out_size(h, w))
    short = (-(-h // stage.stride), -(-w // stage.stride))
    if out != short:
        raise UserError(f"{where}: conv2's output map {out[0]}x{out[1]} differs from the shortcut's"
                        f" {short[0]}x{short[1]} ({h}x{w} subsampled by {stage.stride})")
    return two.c_out, out[0], out[1], two.out_bits


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
        :class:`ConvStage` and :class:`ResidualStage`, then optionally :class:`GlobalSumPool`, then one
        :class:`FCStage`.
    """

    input_bits: int
    image_shape: tuple[int, int, int]
    stages: tuple[Stage, ...]

    @property
    def layers(self) -> tuple[IntConv2d | IntLinear, ...]:
        """The weight layers, input to output."""
        out = []
        for s in self.stages:
            if isinstance(s, ConvStage):
                out.append(s.conv)
            elif isinstance(s, ResidualStage):
                out.extend((s.conv1, s.conv2))
            elif isinstance(s, FCStage):
                out.append(s.layer)
        return tuple(out)

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
        if len(x) <= FORWARD_CHUNK:
            return self._forward_checked(x)
        # Images are independent: the scores of a chunk are those rows of the whole batch's.
        return np.concatenate([self._forward_checked(x[i:i + FORWARD_CHUNK])
                               for i in range(0, len(x), FORWARD_CHUNK)])

    def _forward_checked(self, x: np.ndarray) -> np.ndarray:
        """:meth:`forward` on checked codes ``[N, C, H, W]``, all ``N`` at once."""
        # check_network checked every layer, the chaining and bound 9, and every code below is the checked
        # input or a requantizer's clamped output: the unchecked ops do not repeat those checks.
        for stage in self.stages:
            if isinstance(stage, ConvStage):
                x = _conv_forward(stage.conv, x)
                if stage.pool:
                    x = max_pool_codes(x, stage.pool, stage.pool, where=f"{stage.name} max-pool")
            elif isinstance(stage, ResidualStage):
                x = stage._forward(x, _conv_forward)
            elif isinstance(stage, GlobalSumPool):
                x = _global_sum_pool(x)
            else:
                x = layer_forward(stage.layer, x.reshape(x.shape[0], -1))
        return x

    def predict(self, u) -> np.ndarray:
        """Class index of the highest score (lowest index on ties, like ``np.argmax``)."""
        return self.forward(u).argmax(axis=1)


def mac_counts(net: IntConvNetwork) -> tuple[int, int]:
    """Multiply-accumulates per image of ``net``: ``(dense, non-zero)``.

    A conv of ``C_out x C_in x k x k`` weights with an ``H_out x W_out`` output map issues
    ``C_out H_out W_out C_in k k`` MACs dense and ``H_out W_out nnz`` when only its non-zero-width weights
    are multiplied (``nnz`` = weights of width > 0; the hardware skips pruned weights, not zero activations).
    Every kernel tap counts, also those that fall on the zero padding: the hardware issues them like the
    others (it streams the padded map), so a ``3 x 3`` conv with padding 1 counts ``9 C_in C_out`` per output
    pixel at the border too. The FC counts ``n_out n_in`` dense and ``nnz`` non-zero (its inputs after a
    :class:`GlobalSumPool` are sums, one MAC each). Pooling, the residual add and the requantizers are no MACs.

    Raises
    ------
    UserError
        From :func:`check_network`.
    """
    dense = nonzero = 0
    for layer, pixels, _, _ in mac_layers(net):
        widths = np.asarray(layer.widths)
        dense += pixels * int(widths.size)
        nonzero += pixels * int(np.count_nonzero(widths))
    return dense, nonzero


def mac_layers(net: IntConvNetwork):
    """The layers of ``net`` that multiply, in order, as ``(layer, output pixels, after a global pool, output
    width)``: each :class:`~model.export.golden_conv.IntConv2d` with its ``H_out W_out`` and ``W_out``, the FC's
    :class:`~model.export.golden.IntLinear` with 1 and 1 (and whether a :class:`GlobalSumPool` came before it).

    Raises
    ------
    UserError
        From :func:`check_network`.
    """
    check_network(net)
    _, h, w = net.image_shape
    pooled = False
    for stage in net.stages:
        if isinstance(stage, ConvStage | ResidualStage):
            convs = [stage.conv] if isinstance(stage, ConvStage) else [stage.conv1, stage.conv2]
            for conv in convs:
                h, w = conv.out_size(h, w)
                yield conv, h * w, False, w
            if isinstance(stage, ConvStage) and stage.pool:
                h, w = h // stage.pool, w // stage.pool
        elif isinstance(stage, FCStage):
            yield stage.layer, 1, pooled, 1
        else:  # GlobalSumPool: additions only
            h = w = 1
            pooled = True
