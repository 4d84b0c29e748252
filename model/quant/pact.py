"""PACT activation quantizers of the MPQ-tickets paper (Eq. 5-6) and the input quantizer.

Like the weight quantizers in :mod:`model.quant.dorefa`, each has two faces: integer codes (``to_codes``) for
the accelerator and the fake-quant float value computed from them (``dequantize(to_codes(x))``).
"""

from __future__ import annotations

import torch
from torch import nn

from model.export.golden import MAX_ACT_BITS

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
        """Clip (Eq. 5), quantize (Eq. 6); STE on the rounding only, so ``d y_q / d alpha = d y / d alpha``.

        Bit for bit ``dequantize(to_codes(x))`` (:class:`_PACTFunction` runs the same float operations without
        the int64 round trip); the gradients are those of :meth:`_clip`.
        """
        if self.full_precision:
            return self._clip(x)
        return _PACTFunction.apply(x, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}"


class _PACTFunction(torch.autograd.Function):
    """PACT forward and backward in one pass each (a training step's largest quantizer cost: it runs over every
    activation, not every weight).

    Forward: ``round(clamp(x, 0, alpha) * s / alpha) * alpha / s``, the operations of
    :meth:`_ActivationQuant.to_codes` and :meth:`_ActivationQuant.dequantize` in their order, in ``x``'s
    dtype (the codes stay float: integers up to 255 are exact, so the int64 round trip changes nothing).
    Backward (the STE of Eq. 6 on the clip of Eq. 5, as :meth:`_ActivationQuant._clip` differentiates):
    ``dy/dx = 1`` on ``0 < x < alpha``, else 0; ``dy/dalpha = 1`` where ``x >= alpha``, summed.
    """

    @staticmethod
    def forward(ctx, x, alpha, levels):
        a = alpha.detach().to(x.dtype)
        y = torch.clamp(x, min=0.0, max=a)  # _clip's value (one pass instead of relu, compare and select)
        ctx.save_for_backward(x, a)
        return torch.round(y.mul_(levels).div_(a)).mul_(a).div_(levels)

    @staticmethod
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        high = x >= a
        dx = grad * ((x > 0) & ~high) if ctx.needs_input_grad[0] else None
        dalpha = torch.where(high, grad, 0.0).sum().to(a.dtype) if ctx.needs_input_grad[1] else None
        return dx, dalpha, None


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
