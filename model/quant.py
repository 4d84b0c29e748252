"""Quantizers of the MPQ-tickets paper: element-wise DoReFa weights (Eq. 1-4, 7) and PACT activations (Eq. 5-6).

The pure functions come first, the activation modules after them. Every quantizer has two faces: the
integer codes the accelerator stores (``dorefa_codes``, ``to_codes``) and the fake-quant float value used
for training, and the float value is computed *from* the codes so that the two agree exactly. The
straight-through estimators are written as ``value.detach() + (y - y.detach())``: forward is exactly
``value`` (``y - y.detach()`` is exactly zero) and backward is the gradient of ``y``. The common form
``y + (value - y).detach()`` has the same gradient but rounds in float and can miss ``value`` by an ulp.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import UserError
from .golden import MAX_ACT_BITS, WIDTHS

#: Widths the DoReFa quantizer trains with: the hardware's :data:`model.golden.WIDTHS` plus 1 and 2 bits,
#: which the extended IMQ hierarchy of Sec. 3.2 / Fig. 6 and QNN-1 / QNN-2 use. Eq. 1 and 3 hold for any
#: ``k >= 1``; the exporter, the golden model and the hardware accept only :data:`model.golden.WIDTHS`.
TRAIN_WIDTHS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)


def check_widths(widths: torch.Tensor, where: str, allowed: tuple[int, ...] = WIDTHS) -> None:
    """Raise :class:`UserError` unless every element of ``widths`` is one of ``allowed``.

    Parameters
    ----------
    widths : torch.Tensor
        Integer bit-width mask.
    where : str
        Names the field in the message, e.g. ``"fc1.bit_width"``.
    allowed : tuple of int
        The accepted widths: :data:`model.golden.WIDTHS` (what the hardware runs, the default) or
        :data:`TRAIN_WIDTHS` (what training can quantize to).
    """
    if widths.dtype.is_floating_point or widths.dtype.is_complex:
        raise UserError(f"{where}: bit widths must be an integer tensor, not {widths.dtype}")
    bad = ~torch.isin(widths, torch.tensor(allowed, dtype=widths.dtype))
    if bad.any():
        found = sorted(set(widths[bad].tolist()))[:5]
        raise UserError(f"{where}: bit widths {found} are not allowed; allowed {allowed}")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` (half to even) forward, identity gradient (paper Eq. 1-2)."""
    return torch.round(x).detach() + (x - x.detach())


def dorefa_normalize(w: torch.Tensor) -> torch.Tensor:
    """Inner part of paper Eq. 3: ``tanh(w) / (2 max|tanh(w)|) + 1/2``, in ``[0, 1]``.

    The maximum is over the whole tensor (one layer). An all-zero tensor maps to 1/2 everywhere.
    Differentiable, including through the maximum.
    """
    t = torch.tanh(w)
    scale = 2 * t.abs().max().clamp_min(torch.finfo(t.dtype).tiny)
    return t / scale + 0.5


def _levels(widths: torch.Tensor) -> torch.Tensor:
    """``2^m - 1`` per element as float64 (exact up to ``m = 32``); 0 where ``m = 0``."""
    return ((torch.ones_like(widths, dtype=torch.int64) << widths.to(torch.int64)) - 1).to(torch.float64)


def dorefa_codes(w: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Integer DoReFa codes ``q = round((2^m - 1) x)`` with ``x`` from :func:`dorefa_normalize` (Eq. 1, 3, 7).

    ``x`` is computed in ``w``'s dtype exactly as the forward pass does; the multiply and the rounding
    (half to even) are in float64 because ``2^32 - 1`` levels do not fit float32. ``q = 0`` where ``m = 0``.

    Parameters
    ----------
    w : torch.Tensor
        Latent full-precision weights of one layer.
    widths : torch.Tensor
        Integer mask of the same shape, elements in :data:`TRAIN_WIDTHS`.

    Returns
    -------
    torch.Tensor
        int64 codes in ``[0, 2^m - 1]``.

    Raises
    ------
    UserError
        If ``widths`` holds a value outside :data:`TRAIN_WIDTHS`.
    """
    check_widths(widths, "bit widths", TRAIN_WIDTHS)
    with torch.no_grad():
        x = dorefa_normalize(w).to(torch.float64)
        return torch.round(x * _levels(widths)).to(torch.int64)


def dorefa_weight(w: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Element-wise DoReFa fake-quant weight, paper Eq. 3 and 7, with the STE of Eq. 4.

    Forward: 0 where ``m = 0``, else ``2 q / (2^m - 1) - 1`` with ``q`` from :func:`dorefa_codes` (the
    value is computed in float64 from the codes and cast to ``w.dtype``). Backward: the gradient of the
    un-rounded ``2 x - 1`` (through ``tanh`` and the maximum), zero where ``m = 0``.
    """
    q = dorefa_codes(w, widths).to(torch.float64)
    levels = _levels(widths)
    value = torch.where(levels > 0, 2 * q / levels.clamp_min(1) - 1, 0.0).to(w.dtype)
    y = 2 * dorefa_normalize(w) - 1
    return torch.where(widths != 0, value + (y - y.detach()), torch.zeros_like(y))


#: Activation ``bits`` meaning full precision, the paper's PACT-32 (Sec. 4): clip (Eq. 5) without rounding.
FULL_PRECISION_BITS = 32


class _ActivationQuant(nn.Module):
    """Shared body of :class:`PACT` and :class:`InputQuant`; subclasses provide ``self.alpha``.

    ``bits`` is 1..MAX_ACT_BITS (integer codes) or :data:`FULL_PRECISION_BITS`: then :meth:`forward` is the
    clip alone and there are no codes (:meth:`to_codes` and :meth:`dequantize` raise ``ValueError``).
    """

    alpha: torch.Tensor

    def __init__(self, bits: int):
        super().__init__()
        if (isinstance(bits, bool) or not isinstance(bits, int)
                or not (1 <= bits <= MAX_ACT_BITS or bits == FULL_PRECISION_BITS)):
            raise ValueError(
                f"activation bits must be an integer in 1..{MAX_ACT_BITS} or {FULL_PRECISION_BITS} "
                f"(full precision), not {bits!r}"
            )
        self.bits = bits

    @property
    def full_precision(self) -> bool:
        """Whether ``bits`` is :data:`FULL_PRECISION_BITS` (clip only, no codes)."""
        return self.bits == FULL_PRECISION_BITS

    def _check_codes(self) -> None:
        if self.full_precision:
            raise ValueError(
                f"a {FULL_PRECISION_BITS}-bit activation is full precision and has no integer codes"
            )

    @property
    def levels(self) -> int:
        """``s = 2^bits - 1``, the largest code."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """Quantization step ``alpha / s`` as a Python float (float64 of the float32 ``alpha``)."""
        return float(self.alpha.detach()) / self.levels

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        # Eq. 5 in its piecewise form: exactly clamp(x, 0, alpha) in value (0.5(|x| - |x - alpha| + alpha)
        # rounds in float) and d/d alpha = 1 where x >= alpha (the abs form gives 1/2 at x == alpha).
        return torch.where(x >= self.alpha, self.alpha.to(x.dtype), torch.relu(x))

    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes ``round(clamp(x, 0, alpha) s / alpha)`` (Eq. 5-6), int64 in ``[0, s]``."""
        self._check_codes()
        with torch.no_grad():
            return torch.round(self._clip(x) * self.levels / self.alpha).to(torch.int64)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes * alpha / s``, bit for bit the value :meth:`forward` returns."""
        self._check_codes()
        return codes.to(self.alpha.dtype) * self.alpha.detach() / self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (Eq. 5), quantize (Eq. 6); STE on the rounding only, so ``d y_q / d alpha = d y / d alpha``."""
        y = self._clip(x)
        if self.full_precision:
            return y
        value = self.dequantize(self.to_codes(x))
        return value + (y - y.detach())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}"


class PACT(_ActivationQuant):
    """PACT activation (paper Eq. 5-6) with a learnable clipping level ``alpha``.

    Parameters
    ----------
    bits : int
        Activation code width, 1..8, or 32 for full precision (the paper's PACT-32: clip only).
    alpha : float
        Initial clipping level.

    Members
    -------
    alpha : nn.Parameter
        Scalar clipping level; its gradient is 1 per element with ``x >= alpha`` and 0 elsewhere.

    Raises
    ------
    ValueError
        If ``bits`` is not an integer in 1..8 or 32, or ``alpha`` is not positive.
    """

    def __init__(self, bits: int, alpha: float = 6.0):
        super().__init__(bits)
        if not alpha > 0:
            raise ValueError(f"PACT alpha must be positive, not {alpha!r}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))


class InputQuant(_ActivationQuant):
    """Quantizer of the network input: inputs in ``[0, 1]``, fixed ``alpha = 1`` (a buffer, not learned).

    Same interface as :class:`PACT`; ``bits`` in 1..8 or 32, else ``ValueError``.
    """

    def __init__(self, bits: int):
        super().__init__(bits)
        self.register_buffer("alpha", torch.tensor(1.0))
