"""DoReFa weight quantizer of the MPQ-tickets paper with an element-wise bit-width mask (Eq. 1-4, 7).

Pure functions; the PACT activation modules are in :mod:`model.quant.pact`. Every quantizer has two faces: the
integer codes the accelerator stores (``dorefa_codes``, ``to_codes``) and the fake-quant float value used
for training, and the float value is computed *from* the codes so that the two agree exactly. The
straight-through estimators are written as ``value.detach() + (y - y.detach())``: forward is exactly
``value`` (``y - y.detach()`` is exactly zero) and backward is the gradient of ``y``. The common form
``y + (value - y).detach()`` has the same gradient but rounds in float and can miss ``value`` by an ulp.
"""

from __future__ import annotations

import torch

from model.errors import UserError
from model.export.golden import WIDTHS

#: Widths the DoReFa quantizer trains with: the hardware's :data:`model.export.golden.WIDTHS` plus 1 and 2 bits,
#: which the extended IMQ hierarchy of Sec. 3.2 / Fig. 6 and QNN-1 / QNN-2 use. Eq. 1 and 3 hold for any
#: ``k >= 1``; the exporter, the golden model and the hardware accept only :data:`model.export.golden.WIDTHS`.
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
        The accepted widths: :data:`model.export.golden.WIDTHS` (what the hardware runs, the default) or
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
