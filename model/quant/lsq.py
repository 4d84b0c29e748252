"""LSQ quantization (Eq. 1 of the vertical-layering paper, after Esser et al. 2020) and the vertical-layered
downsampling of its integer codes (Eq. 5): the first building blocks of the vertical-layered training of
``../shared/papers/vertical-layering-quantized-networks.txt``.

Eq. 1: ``v_bar = Q(v, s) = clip(round(v / s), -Q_N, Q_P)``, ``v_hat = v_bar s``; ``K`` bits signed:
``Q_N = 2^(K-1)``, ``Q_P = 2^(K-1) - 1``; unsigned: ``Q_N = 0``, ``Q_P = 2^K - 1``. The step ``s > 0`` is
learned (LSQ): the rounding passes gradients straight through (STE), and the step's gradient is scaled by
``g = 1 / sqrt(N Q_P)`` (``N`` the number of elements quantized with that step), as Esser et al. do, which
gives, per element, ``d v_hat / d s = g (-v / s + round(v / s))`` inside the range and ``g (-Q_N)`` or
``g Q_P`` outside it (the paper's Eq. 8 without ``g``, which LSQ adds for stable steps).

Eq. 5: the ``i``-bit-lower codes of a vertical-layered weight are ``w_bar_i = floor(w_bar_(i+1) / 2)``; Eq. 3:
the step ``s_i = 2 s_(i+1)``; the enhance layer ``b_(i+1) = w_bar_(i+1) - 2 w_bar_i`` is the dropped bit (0 or 1), so a
``K``-bit code is its ``K - 1``-bit code and one more bit plane (:func:`downsample`, :func:`enhance_layers`,
:func:`compose`). ``floor`` (not round) keeps the lower codes inside the ``K - 1``-bit signed range.

:func:`vertical_quantize` gives a lower-precision weight of a vertical-layered tensor for training: the codes of
Eq. 5 from one source weight and one source step, the positive compensation ``z_i`` of Eq. 6 with the paper's
preset value (Sec. 6.1: ``z_i = (1 - 2^(i - n)) / 2`` for ``n - i`` downsamplings, the mean error of the floor), and
the straight-through gradients of Eq. 7-8.

The vertical layers built on these are in :mod:`model.quant.vertical`, the joint training (Eq. 9-11), the
baselines and Eq. 12 in :mod:`model.methods.vertical` (``train --method vertical``).
"""

from __future__ import annotations

import math

import torch


def q_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of Eq. 1 for ``bits`` bits."""
    if not isinstance(bits, int) or bits < 1 or (signed and bits < 2):
        raise ValueError(f"bits must be an int >= 1 (>= 2 when signed), not {bits!r}")
    return (1 << (bits - 1), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass, gradient multiplied by ``scale`` in the backward pass."""
    return (x - x * scale).detach() + x * scale


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (``torch.round``) forward; identity gradient (the straight-through estimator)."""
    return (torch.round(x) - x).detach() + x


def _scaled_step(v: torch.Tensor, step: torch.Tensor, q_p: int) -> torch.Tensor:
    """``step`` with LSQ's gradient scale ``g = 1 / sqrt(N Q_P)``."""
    return grad_scale(step, 1.0 / math.sqrt(max(v.numel(), 1) * q_p))


def lsq_codes(v: torch.Tensor, step: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Eq. 1's integer codes ``v_bar`` (as float values), with LSQ's gradients to ``v`` and ``step``."""
    q_n, q_p = q_range(bits, signed)
    return round_ste(torch.clamp(v / _scaled_step(v, step, q_p), -q_n, q_p))


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Eq. 1's de-quantized ``v_hat = Q(v, s) s`` with LSQ's gradients."""
    q_n, q_p = q_range(bits, signed)
    s = _scaled_step(v, step, q_p)
    return round_ste(torch.clamp(v / s, -q_n, q_p)) * s


def init_step(v: torch.Tensor, bits: int) -> float:
    """LSQ's initial step ``2 mean|v| / sqrt(Q_P)`` with the signed ``Q_P = 2^(b-1) - 1`` (Esser et al., the
    vertical-layering paper's [9]: ``sqrt(7)`` at 4 bits).

    The vertical-layering paper's Sec. 6.1 writes ``2 mean|w| / sqrt(2^4 - 1)``, i.e. ``sqrt(15)``: a start 1.46
    times smaller. Kept as LSQ's because it is LSQ's rule for the signed codes Eq. 1 uses (``-Q_N .. Q_P``), the
    step is learned from there (Eq. 8), and the per-width LSQ oracle that ``bench vertical`` compares the
    vertical nets with starts from the same rule; ``bench vertical``'s figures were measured with it."""
    _, q_p = q_range(bits, signed=True)
    return float(2 * v.detach().abs().mean() / math.sqrt(max(q_p, 1)))


def downsample(codes: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Eq. 5 applied ``times`` times: ``floor(w_bar / 2^times)`` of integer codes (exact in int64)."""
    if times < 0:
        raise ValueError(f"times must be >= 0, not {times!r}")
    return torch.div(codes.to(torch.int64), 1 << times, rounding_mode="floor")


def enhance_layers(codes: torch.Tensor, top_bits: int, base_bits: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The basic layer (``base_bits`` codes) and the enhance layers ``b_(base+1) .. b_top`` (0/1 bit planes) of
    ``top_bits``-bit signed codes: ``w_bar_(i+1) = 2 w_bar_i + b_(i+1)``."""
    if not 2 <= base_bits <= top_bits:
        raise ValueError(f"need 2 <= base_bits <= top_bits, not {base_bits}, {top_bits}")
    codes = codes.to(torch.int64)
    planes = []
    for k in range(base_bits, top_bits):  # plane of width k + 1 over width k
        higher = downsample(codes, top_bits - k - 1)
        planes.append(higher - 2 * downsample(higher, 1))
    return downsample(codes, top_bits - base_bits), planes


def compose(base: torch.Tensor, planes: list[torch.Tensor], use: int | None = None) -> torch.Tensor:
    """Codes at ``base_bits + use`` bits from the basic layer and the first ``use`` enhance layers (default
    all): a lower precision reads a prefix of the planes."""
    out = base.to(torch.int64)
    for plane in planes[: len(planes) if use is None else use]:
        out = 2 * out + plane
    return out


def compensation(times: int) -> float:
    """Eq. 6's preset ``z_i`` after ``times = n - i`` downsamplings: ``(1 - 2^-times) / 2`` (Sec. 6.1 of the paper,
    ``z_i = 2^-1 (1 - 2^(i-2))`` with ``n = 2``): the mean of ``x / 2^times - floor(x / 2^times)`` over integers."""
    if times < 0:
        raise ValueError(f"times must be >= 0, not {times!r}")
    return 0.5 * (1.0 - 2.0 ** -times)


def vertical_quantize(w: torch.Tensor, step: torch.Tensor, top_bits: int, bits: int,
                      compensate: bool = True) -> torch.Tensor:
    """The de-quantized ``bits``-bit weight ``(w_bar_i + z_i) s_i`` of a vertical-layered tensor (signed codes).

    ``w_bar_n = Q(w, s_w)`` at ``top_bits`` (Eq. 1), ``w_bar_i = floor(w_bar_n / 2^d)`` and ``s_i = 2^d s_w`` with
    ``d = top_bits - bits`` (Eq. 5, Eq. 3), ``z_i`` = :func:`compensation` (0 with ``compensate=False``). Gradients
    (Eq. 7-8, with the compensation added): ``w_bar_i`` acts as ``w / s_i`` inside the top code's range (straight
    through, 0 outside), so the de-quantized weight's ``d/dw`` is 1 inside and 0 outside, and ``d/ds_i = w_bar_i +
    z_i - w / s_i`` inside and ``w_bar_i + z_i`` outside (the clipped code's value, LSQ's ``-Q_N`` / ``Q_P`` case);
    the step's gradient is scaled by LSQ's ``g = 1 / sqrt(N Q_P)`` of the top width. (Eq. 8 is LSQ's step gradient
    without ``z_i``; the ``+ z_i`` here is the exact derivative of the compensated weight ``(w_bar_i + z_i) s_i`` of
    Eq. 6 that the forward computes.)
    """
    if not 2 <= bits <= top_bits:
        raise ValueError(f"need 2 <= bits <= top_bits, not bits={bits!r}, top_bits={top_bits!r}")
    q_n, q_p = q_range(top_bits, signed=True)
    times = top_bits - bits
    s_w = _scaled_step(w, step, q_p)
    top = torch.clamp(w / s_w, -q_n, q_p)  # the top code's range, as a float (gradient 0 outside)
    codes = downsample(torch.round(top.detach()).to(torch.int64), times).to(w.dtype)
    s_i = s_w * (1 << times)
    x = top / (1 << times)  # = w / s_i inside the range
    z = compensation(times) if compensate else 0.0
    return ((codes - x).detach() + x + z) * s_i
