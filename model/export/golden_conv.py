"""Integer ops of the conv contract: conv class sums, negative-gain folding, residual requant, pooling.

The fully connected contract (:mod:`model.export.golden`) defines per-class sums ``S_m`` and ``A_m``, the
exact accumulator ``acc = D sum w u`` (:func:`~model.export.golden.combine`) and the one requantizer
(:func:`~model.export.golden.requantize`: floor shift, fixed-point multiply-add, round half up, clamp).
A conv layer (ResNet-20, He et al. 2016 Sec. 4.2 as MPQ-tickets Sec. 4 trains it; BMPQ's VGG/ResNet) is the
same contract applied at every output pixel: :func:`im2col` turns the zero-padded input into one row of
``C_in k k`` codes per output pixel, ordered like the weight ``[C_out, C_in, k, k]``, and the class sums
of that row are exactly :func:`golden.class_sums <model.export.golden.class_sums>` of the layer seen as a
fully connected one (:meth:`IntConv2d.as_linear`). A padded position carries the code ``u = 0``; it adds
0 to ``S_m`` and to ``A_m``, which is what the float conv computes on zero-padded input (``w * 0 = 0``,
for DoReFa's offset ``-D A`` too, because the offset multiplies ``u``, not 1).

No rounding is added here: every op is either exact integer arithmetic or goes through golden's
``requantize`` (floor, then half up). The ops:

* :func:`conv_class_sums`, :func:`conv_forward`: a conv layer; :func:`check_conv` checks it.
* :func:`complement_codes`, :func:`fold_negative_gain`: BatchNorm folded into the per-channel requant for
  either sign of gamma (a negative gain is moved into the codes, exactly; proof at :func:`complement_codes`).
* :func:`shortcut_a`, :func:`requantize_residual`: ResNet-20's option-A residual add.
* :func:`max_pool_codes`, :func:`global_sum_pool`, :func:`check_act_mass`: VGG's max-pool, and the global
  average pooling that feeds the final FC as the per-channel *sum* of codes (``1 / (H W)`` goes into the
  FC's requant gain).

Bounds (in addition to golden's, which this module reuses through :func:`~model.export.golden.check_layer`):

6. Every bound 1-5 of golden depends on the activations only through ``A = sum u <= U N``
   (``U = 2^MAX_ACT_BITS - 1``, ``N = MAX_FAN_IN``): :data:`ACT_SUM_BOUND` ``= U N`` is therefore the real
   limit, and a layer whose largest input code ``u_max`` and fan-in ``n`` have ``u_max n <= ACT_SUM_BOUND``
   keeps all of them, even with inputs wider than 8 bits (the FC after global pooling, :func:`check_act_mass`).
7. A conv's fan-in is ``C_in k^2 <= MAX_FAN_IN`` (checked by golden's ``check_layer`` on the linear view).
8. Residual: the shortcut code ``r < 2^MAX_ACT_BITS`` times its multiplier ``0 <= M_r < 2^MULT_BITS``,
   scaled like ``t`` by ``2^ACC_SHIFT``, is below :data:`RESIDUAL_BOUND` ``< 2^41``, so
   ``|t M + (r M_r << ACC_SHIFT) + B + 2^(S-1)| <= RES_ROUND_BOUND = ROUND_BOUND + RESIDUAL_BOUND < 2^63``
   (asserted at import).
   The same bound makes :func:`exact_matmul`'s float64 sums exact: ``(2^32 - 1) ACT_SUM_BOUND < 2^52``.
9. Global pooling: ``sum_{h,w} u <= (2^a - 1) H W < 2^GAP_SUM_BITS`` (16-bit pooled codes, :func:`global_sum_pool`).

This module imports numpy only (like golden it is part of the torch-free export contract ``hw/`` reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import UserError
from model.export.golden import (
    ACC_SHIFT,
    CLASSES,
    INT64_MAX,
    MAX_ACT_BITS,
    MAX_FAN_IN,
    MULT_BITS,
    ROUND_BOUND,
    IntLinear,
    as_codes,
    check_layer,
    combine,
    requantize,
)

#: Bound 6: the largest per-output sum of input codes golden's bounds 1-5 allow (``U N``).
ACT_SUM_BOUND = ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN
#: Bound 8: the largest shortcut term ``r M_r``.
RESIDUAL_BOUND = ((1 << MAX_ACT_BITS) - 1) * ((1 << MULT_BITS) - 1) << ACC_SHIFT
RES_ROUND_BOUND = ROUND_BOUND + RESIDUAL_BOUND
if RES_ROUND_BOUND > INT64_MAX:
    raise AssertionError(f"t*M + (r*M_r << ACC_SHIFT) + B + 2^(S-1) may reach {RES_ROUND_BOUND}, past int64")
#: Bound 9: width of a pooled (summed) code of :func:`global_sum_pool`.
GAP_SUM_BITS = 16
#: Kernel sizes, strides and paddings the contract accepts (the nets use k 1 and 3, stride 1 and 2, pad 0 and 1).
MAX_KERNEL = 7
MAX_STRIDE = 4
#: Largest sum of one float64 matmul of :func:`exact_matmul` for the contract's codes (32-bit weight codes,
#: rows within bound 6): below 2^53, so float64 sums are exact integers.
FLOAT_SUM_BOUND = ((1 << 32) - 1) * ACT_SUM_BOUND
if FLOAT_SUM_BOUND >= 1 << 53:
    raise AssertionError("32-bit codes times ACT_SUM_BOUND pass 2^53: float64 class sums would not be exact")


@dataclass(frozen=True, eq=False)
class IntConv2d:
    """One 2-D conv layer of the integer contract (zero padding, square kernel, no groups or dilation).

    Members
    -------
    codes, widths : int64 ``[C_out, C_in, k, k]``
        Weight codes and element-wise widths, as :class:`~model.export.golden.IntLinear`'s.
    in_bits, out_bits : int
        Widths of the input and output codes (1..MAX_ACT_BITS; a conv always ends in a PACT clamp).
    mult, bias : int64 ``[C_out]``; shift : int
        Per-channel requant ``M``, ``B`` and the layer's ``S`` (BatchNorm folded in, gain made non-negative
        by :func:`fold_negative_gain`).
    stride, padding : int
    name : str
    signed : bool
        DoReFa (False) or offset-binary signed codes (True), as for ``IntLinear``.
    res_mult : int64 ``[C_out]`` or None
        ``M_r`` of the residual codes added in the requant (:func:`requantize_residual`), or None.
    """

    codes: np.ndarray
    widths: np.ndarray
    in_bits: int
    out_bits: int
    mult: np.ndarray
    bias: np.ndarray
    shift: int
    stride: int = 1
    padding: int = 0
    name: str = ""
    signed: bool = False
    res_mult: np.ndarray | None = None

    @property
    def kernel(self) -> int:
        return int(self.codes.shape[-1])

    @property
    def c_out(self) -> int:
        return int(self.codes.shape[0])

    @property
    def c_in(self) -> int:
        return int(self.codes.shape[1])

    def as_linear(self) -> IntLinear:
        """The layer as the fully connected layer that one output pixel computes (rows ``C_in k k``)."""
        return IntLinear(codes=self.codes.reshape(self.c_out, -1), widths=self.widths.reshape(self.c_out, -1),
                         in_bits=self.in_bits, out_bits=self.out_bits, mult=self.mult, bias=self.bias,
                         shift=self.shift, name=self.name, signed=self.signed)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """``(H_out, W_out) = (floor((H + 2p - k) / s) + 1, ...)``, as ``torch.nn.functional.conv2d``."""
        k, s, p = self.kernel, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def check_conv(layer: IntConv2d, where: str | None = None) -> None:
    """Raise :class:`UserError` (naming the layer, the field and the allowed values) if ``layer`` breaks the contract.

    The geometry is checked here; codes, widths, mode, fan-in ``C_in k^2 <= MAX_FAN_IN`` and the requant
    fields by golden's :func:`~model.export.golden.check_layer` on :meth:`IntConv2d.as_linear`.
    """
    where = where or layer.name or "conv"
    q = np.asarray(layer.codes)
    if q.ndim != 4 or q.shape[2] != q.shape[3] or np.shape(layer.widths) != q.shape:
        raise UserError(f"{where}: fields 'codes' {q.shape} and 'widths' {np.shape(layer.widths)} must be equal"
                        " [C_out, C_in, k, k] shapes (square kernel)")
    for field, value, low, high in (("kernel", layer.kernel, 1, MAX_KERNEL), ("stride", layer.stride, 1, MAX_STRIDE),
                                    ("padding", layer.padding, 0, layer.kernel - 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise UserError(f"{where}: field '{field}' is {value!r}; allowed {low}..{high}")
    if not 1 <= layer.out_bits <= MAX_ACT_BITS:
        raise UserError(f"{where}: field 'out_bits' is {layer.out_bits}; allowed 1..{MAX_ACT_BITS} (a conv ends"
                        " in a PACT clamp)")
    check_layer(layer.as_linear(), where)
    if layer.res_mult is not None:
        r = np.asarray(layer.res_mult)
        if r.shape != (layer.c_out,) or r.dtype.kind not in "iu":
            raise UserError(f"{where}: field 'res_mult' must be integers of shape ({layer.c_out},)")
        outside = (r < 0) | (r > (1 << MULT_BITS) - 1)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise UserError(f"{where}: field 'res_mult' of channel {j} is {int(r[j])}; allowed"
                            f" [0, 2^{MULT_BITS} - 1] (MULT_BITS = {MULT_BITS} unsigned bits)")


def check_codes(u, bits: int, where: str, field: str = "input codes", channels: int | None = None) -> np.ndarray:
    """``u`` as int64 ``[N, C, H, W]`` after checking shape, integer type and range ``[0, 2^bits - 1]``."""
    x = np.asarray(u)
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        raise UserError(f"{where}: field '{field}' has shape {x.shape}; expected [N, {channels or 'C'}, H, W]")
    if x.dtype.kind not in "iu":
        raise UserError(f"{where}: field '{field}' holds {x.dtype}; expected integer codes")
    top = (1 << bits) - 1
    outside = (x < 0) | (x > top)
    if outside.any():
        idx = tuple(int(k[0]) for k in np.nonzero(outside))
        raise UserError(f"{where}: field '{field}' holds {int(x[idx])} at {idx}; allowed [0, {top}] ({bits} bits)")
    return x.astype(np.int64, copy=False)


def im2col(u, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Zero-padded patches of ``u`` ``[N, C, H, W]``: int64 ``[N, H_out, W_out, C k k]``.

    Row ``(n, y, x)`` holds ``u[n, c, y s + i - p, x s + j - p]`` (0 outside the map) at column
    ``(c k + i) k + j``, the order of ``codes.reshape(C_out, -1)``.
    """
    u = as_codes(u)
    n = u.shape[0]
    x = np.pad(u, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n, win.shape[2], win.shape[3], -1)


def exact_matmul(x: np.ndarray, weights: np.ndarray, where: str = "exact_matmul") -> np.ndarray:
    """``x @ weights.T`` for non-negative integer arrays, exact, in float64 BLAS: int64 result.

    Exact when every product and partial sum is an integer below ``2^53``: float64 represents those exactly
    and adds them exactly in any order (FMA and blocked BLAS included). With non-negative terms every partial
    sum is at most the full sum, at most ``max(weights) * max_row(sum x)``; for the contract's codes that is
    ``(2^32 - 1) ACT_SUM_BOUND < 2^52`` (:data:`FLOAT_SUM_BOUND`, golden's bound 1), so even 32-bit codes
    need no splitting into halves. The premise is checked (cheaply, from the row sums), not assumed.
    """
    bound = int(weights.max(initial=0)) * int(x.sum(axis=1).max(initial=0))
    if bound >= 1 << 53 or (weights < 0).any() or (x < 0).any():
        raise UserError(f"{where}: sums of codes may reach {bound}, past the 2^53 of exact float64 sums"
                        f" (allowed at most FLOAT_SUM_BOUND = {FLOAT_SUM_BOUND}), or a code is negative")
    return np.rint(x.astype(np.float64) @ weights.astype(np.float64).T).astype(np.int64)


def conv_class_sums(layer: IntConv2d, u) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per-class sums ``S_m`` and ``A_m`` of a conv layer, ``[N, C_out, H_out, W_out]`` each (golden's definitions).

    ``S_m[n, o, y, x] = sum over class-m weights (c, i, j) of q[o, c, i, j] u_pad[n, c, y s + i, x s + j]``
    and ``A_m`` the same with ``q`` replaced by 1; ``u_pad`` is ``u`` zero-padded by ``p``. This equals
    ``golden.class_sums(layer.as_linear(), im2col(u))`` (tested), computed with :func:`exact_matmul`: float64
    matmuls (BLAS; numpy's int64 matmul has no BLAS and is many times slower) that are exact by bound 6: each
    input row sums to at most ``(2^in_bits - 1) C_in k^2 <= ACT_SUM_BOUND < 2^20`` and each code is below
    ``2^32``, so every partial sum is an integer at most ``FLOAT_SUM_BOUND < 2^52``.

    Raises
    ------
    UserError
        From :func:`check_conv`, or for input codes of another shape, type or range (naming the layer).
    """
    check_conv(layer)
    where = layer.name or "conv"
    u = check_codes(u, layer.in_bits, where, channels=layer.c_in)
    if u.shape[2] + 2 * layer.padding < layer.kernel or u.shape[3] + 2 * layer.padding < layer.kernel:
        raise UserError(f"{where}: input map {u.shape[2:]} padded by {layer.padding} is smaller than the kernel"
                        f" {layer.kernel}")
    return _conv_class_sums(layer, u)


def _conv_class_sums(layer: IntConv2d, u: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """:func:`conv_class_sums` without its checks, for a layer and int64 codes already checked (by
    :func:`~model.export.golden_net.check_network` and the network's input check). :func:`exact_matmul`
    still checks its exactness premise."""
    cols = im2col(u, layer.kernel, layer.stride, layer.padding)
    n, ho, wo, f = cols.shape
    x = cols.reshape(-1, f)
    q = np.asarray(layer.codes, dtype=np.int64).reshape(layer.c_out, f)
    w = np.asarray(layer.widths, dtype=np.int64).reshape(layer.c_out, f)

    def to_map(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, ho, wo, layer.c_out).transpose(0, 3, 1, 2)

    # One matmul for all classes: rows [k C_out, (k + 1) C_out) hold class k's codes (k < 4), then its
    # indicator (k >= 4). Stacking rows changes no output sum, and every row is still a code below 2^32 or
    # 0/1, so the one bound check (max weight times max input row sum < 2^53) is the same as per class.
    k = len(CLASSES)
    stacked = np.concatenate([np.where(w == m, q, 0) for m in CLASSES]
                             + [(w == m).astype(np.int64) for m in CLASSES])
    out = exact_matmul(x, stacked)
    parts = [to_map(out[:, i * layer.c_out:(i + 1) * layer.c_out]) for i in range(2 * k)]
    sums = {m: parts[i] for i, m in enumerate(CLASSES)}
    act_sums = {m: parts[k + i] for i, m in enumerate(CLASSES)}
    return sums, act_sums


def conv_accumulator(layer: IntConv2d, u) -> np.ndarray:
    """``acc = D sum w u`` per output pixel, int64 ``[N, C_out, H_out, W_out]`` (golden's ``combine``)."""
    sums, act_sums = conv_class_sums(layer, u)
    return combine(sums, act_sums, layer.signed)


def requantize_residual(acc, residual, mult, res_mult, bias, shift: int, out_bits: int,
                        where: str = "residual") -> np.ndarray:
    """Requant with a residual: ``clamp((t M + (r M_r << ACC_SHIFT) + B + 2^(S-1)) >> S, 0, 2^out_bits - 1)``.

    ``t = acc >> ACC_SHIFT``. The float block computes ``PACT(BN2(conv2(y)) + shortcut(x))``; in units of the
    output code the shortcut is ``r s_r / s_out`` for input codes ``r`` of step ``s_r``, which the
    fixed-point ``M_r 2^ACC_SHIFT / 2^S`` represents. The shortcut enters at the accumulator's scale
    (``t`` carries ``2^ACC_SHIFT`` times ``D sum w u / 2^32``): with ``r`` added unscaled, a shortcut of
    gain near 1 would force ``S <= MULT_BITS`` and leave the conv's ``M`` one or two significant bits; scaled,
    ``M`` and ``M_r`` share one ``S`` at full precision. ``r M_r 2^ACC_SHIFT`` is an exact integer added
    before the one rounding, so this is golden's :func:`~model.export.golden.requantize` with the per-pixel
    offset ``B + (r M_r << ACC_SHIFT)`` (no second rounding rule). Per-channel arrays (``mult``, ``res_mult``, ``bias``: ``[C]``)
    broadcast over ``[N, C, H, W]``.

    Raises
    ------
    UserError
        Naming ``where`` and the field: residual codes outside ``[0, 2^MAX_ACT_BITS - 1]`` or of another
        shape than ``acc``, ``M_r`` outside ``[0, 2^MULT_BITS - 1]`` (bound 8), or ``out_bits`` not in
        ``1..MAX_ACT_BITS``.
    """
    acc = as_codes(acc)
    r = check_codes(residual, MAX_ACT_BITS, where, field="residual")
    if r.shape != acc.shape:
        raise UserError(f"{where}: field 'residual' has shape {r.shape}; expected the conv output's {acc.shape}")
    if not 1 <= out_bits <= MAX_ACT_BITS:
        raise UserError(f"{where}: field 'out_bits' is {out_bits}; allowed 1..{MAX_ACT_BITS}")
    res_mult = as_codes(res_mult)
    if ((res_mult < 0) | (res_mult > (1 << MULT_BITS) - 1)).any():
        raise UserError(f"{where}: field 'res_mult' outside [0, 2^{MULT_BITS} - 1] (MULT_BITS = {MULT_BITS}"
                        " unsigned bits)")

    return _requantize_residual(acc, r, mult, res_mult, bias, shift, out_bits)


def _requantize_residual(acc: np.ndarray, r: np.ndarray, mult, res_mult, bias, shift: int,
                         out_bits: int) -> np.ndarray:
    """:func:`requantize_residual` without its checks (residual codes, ``M_r`` and ``out_bits`` already checked)."""

    def per_channel(a) -> np.ndarray:
        a = as_codes(a)
        return a.reshape(-1, 1, 1) if a.ndim == 1 else a

    offset = per_channel(bias) + ((r * per_channel(res_mult)) << ACC_SHIFT)  # |B| <= 2^62, < 2^41: fits int64
    return requantize(acc, per_channel(mult), offset, shift, out_bits)


def conv_forward(layer: IntConv2d, u, residual=None) -> np.ndarray:
    """The next layer's codes ``[N, C_out, H_out, W_out]``: class sums, ``combine``, (residual) requant, clamp.

    ``residual`` (the option-A shortcut codes, :func:`shortcut_a`) is required exactly when the layer has a
    ``res_mult``.
    """
    acc = conv_accumulator(layer, u)
    where = layer.name or "conv"
    if (residual is None) != (layer.res_mult is None):
        raise UserError(f"{where}: field 'res_mult' is {'set' if layer.res_mult is not None else 'None'} but a"
                        f" residual was {'not ' if residual is None else ''}given")
    if residual is not None:
        return requantize_residual(acc, residual, layer.mult, layer.res_mult, layer.bias, layer.shift,
                                   layer.out_bits, where=f"{where} residual")
    c = (-1, 1, 1)
    return requantize(acc, np.asarray(layer.mult).reshape(c), np.asarray(layer.bias).reshape(c), layer.shift,
                      layer.out_bits)


def _conv_forward(layer: IntConv2d, u: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """:func:`conv_forward` without its checks: ``layer`` checked by :func:`~model.export.golden_net.check_network`,
    ``u`` and ``residual`` int64 codes of the checked widths (``residual`` given exactly with ``res_mult``)."""
    acc = combine(*_conv_class_sums(layer, u), layer.signed)
    if residual is not None:
        return _requantize_residual(acc, residual, layer.mult, layer.res_mult, layer.bias, layer.shift,
                                    layer.out_bits)
    c = (-1, 1, 1)
    return requantize(acc, np.asarray(layer.mult).reshape(c), np.asarray(layer.bias).reshape(c), layer.shift,
                      layer.out_bits)


def shortcut_a(u, out_channels: int, stride: int, where: str = "shortcut") -> np.ndarray:
    """He et al.'s option A on codes: ``u[:, :, ::s, ::s]`` with zero channels appended up to ``out_channels``.

    Exactly :meth:`model.quant.nets.BasicBlock.shortcut` (a zero code is the value 0).
    """
    u = as_codes(u)
    if u.ndim != 4 or out_channels < u.shape[1] or stride not in (1, 2):
        raise UserError(f"{where}: input {u.shape} -> {out_channels} channels, stride {stride}; allowed"
                        " [N, C, H, W] with C <= out_channels and stride 1 or 2")
    x = u[:, :, ::stride, ::stride]
    return np.pad(x, ((0, 0), (0, out_channels - u.shape[1]), (0, 0), (0, 0)))


def complement_codes(codes, widths, signed: bool) -> np.ndarray:
    """Codes of the negated weights: DoReFa ``q' = 2^m - 1 - q``, signed offset binary ``q' = 2^m - q``; 0 stays pruned.

    Proof that the accumulator is negated exactly, ``acc' = -acc``. Golden's ``combine`` computes
    ``acc = D sum_i w_i u_i`` exactly in both modes (golden's module docstring), so it suffices that every
    weight is negated, ``w(q') = -w(q)``:

    * DoReFa (MPQ-tickets Eq. 3): ``w(q) = 2q / (2^m - 1) - 1``, so
      ``w(2^m - 1 - q) = 2 (2^m - 1 - q) / (2^m - 1) - 1 = 1 - 2q / (2^m - 1) = -w(q)``, and ``q'`` is again in
      ``[0, 2^m - 1]``.
    * signed: ``c = q - 2^(m-1)`` and ``w = 2c / (2^m - 1)``; ``c' = 2^m - q - 2^(m-1) = 2^(m-1) - q = -c``,
      and ``q' = 2^m - q`` is again in ``[1, 2^m - 1]`` (the symmetric range is closed under negation).
    * pruned weights (``m = 0``) are 0 and stay 0 (code 0).

    For ``m = 32`` the DoReFa complement is ``D - q``. Widths and the class structure are unchanged, so the
    image, the lanes and every bound stay as they are.
    """
    q = as_codes(codes)
    m = as_codes(widths)
    full = np.where(m == 32, (1 << 32) - 1, (np.int64(1) << np.minimum(m, 31)) - 1)  # 2^m - 1, no 1 << 32 overflow
    flipped = full - q + (1 if signed else 0)
    return np.where(m > 0, flipped, 0)


def fold_negative_gain(codes, widths, gain, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm with a negative gain, folded exactly: ``(codes', |gain|)``.

    The requant computes ``y = gain acc / D + offset`` per output channel (axis 0 of ``codes``), and its
    multiplier ``M`` is unsigned (:data:`~model.export.golden.MULT_BITS` bits; a DSP48E1 B port). For a
    channel with ``gain < 0`` (BatchNorm ``gamma < 0``) the codes of its row are complemented
    (:func:`complement_codes`), so ``acc' = -acc`` and ``|gain| acc' = gain acc`` exactly: the channel's
    float value is unchanged and the one rounding (golden's requantizer) applies to it as to any other
    channel. Pass ``|gain|`` and the unchanged offset to :func:`~model.export.golden.requant_params`.
    """
    q = as_codes(codes)
    gain = np.asarray(gain, dtype=np.float64)
    if gain.shape != (q.shape[0],):
        raise UserError(f"negative-gain fold: field 'gain' has shape {gain.shape}; expected ({q.shape[0]},)")
    neg = (gain < 0).reshape((-1,) + (1,) * (q.ndim - 1))
    return np.where(neg, complement_codes(q, widths, signed), q), np.abs(gain)


def max_pool_codes(u, kernel: int = 2, stride: int = 2, where: str = "max-pool") -> np.ndarray:
    """Max-pool of output codes, ``kernel = stride`` windows, floor mode (``torch.nn.MaxPool2d(2)``).

    PACT codes are unsigned and the code map ``x -> round(clamp(x) / step)`` is monotone, so the max of
    the codes is the code of the max: pooling after the clamp is exact on codes, no rounding.
    """
    u = as_codes(u)
    if u.ndim != 4 or kernel != stride or not 1 <= kernel <= min(u.shape[2:], default=0):
        raise UserError(f"{where}: input {u.shape}, kernel {kernel}, stride {stride}; allowed [N, C, H, W] with"
                        " kernel = stride <= H, W")
    n, c, h, w = u.shape
    ho, wo = h // kernel, w // kernel
    x = u[:, :, : ho * kernel, : wo * kernel].reshape(n, c, ho, kernel, wo, kernel)
    return x.max(axis=(3, 5))


def global_sum_pool(u, bits: int, where: str = "global pool") -> np.ndarray:
    """Global average pooling as the per-channel SUM of codes: int64 ``[N, C]``, ``< 2^GAP_SUM_BITS``.

    ``mean = sum / (H W)``; the ``1 / (H W)`` is folded into the next FC's requant gain (exact in float, one
    rounding there), so no rounding happens here. Bound 9: ``(2^bits - 1) H W < 2^GAP_SUM_BITS``, checked
    from the shape (the hardware's pooled-code width, independent of the data).
    """
    u = check_codes(u, bits, where)
    bound = ((1 << bits) - 1) * u.shape[2] * u.shape[3]
    if bound >= 1 << GAP_SUM_BITS:
        raise UserError(f"{where}: field 'pool sum' may reach (2^{bits} - 1) * {u.shape[2]} * {u.shape[3]} ="
                        f" {bound}; allowed below 2^{GAP_SUM_BITS} (GAP_SUM_BITS)")
    return _global_sum_pool(u)


def _global_sum_pool(u: np.ndarray) -> np.ndarray:
    """:func:`global_sum_pool` without its checks (codes and bound 9 checked by ``check_network``)."""
    return u.sum(axis=(2, 3))


def check_act_mass(max_code: int, fan_in: int, where: str) -> None:
    """Bound 6 for a layer with inputs wider than ``MAX_ACT_BITS`` (the FC after :func:`global_sum_pool`).

    ``max_code fan_in <= ACT_SUM_BOUND`` keeps every bound of golden (1-5) and :func:`exact_matmul`'s.
    """
    if max_code * fan_in > ACT_SUM_BOUND:
        raise UserError(f"{where}: field 'input codes': largest code {max_code} times fan-in {fan_in} ="
                        f" {max_code * fan_in}; allowed at most ACT_SUM_BOUND = {ACT_SUM_BOUND}"
                        f" ((2^{MAX_ACT_BITS} - 1) * MAX_FAN_IN)")
