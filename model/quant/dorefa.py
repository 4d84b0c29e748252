"""DoReFa weight quantizer of the MPQ-tickets paper with an element-wise bit-width mask (Eq. 1-4, 7).

Pure functions; the PACT activation modules are in :mod:`model.quant.pact`. Every quantizer has two faces: the
integer codes the accelerator stores (``dorefa_codes``, ``to_codes``) and the fake-quant float value used
for training, and the float value is computed *from* the codes so that the two agree exactly. The
straight-through estimators are written as ``value.detach() + (y - y.detach())``: forward is exactly
``value`` (``y - y.detach()`` is exactly zero) and backward is the gradient of ``y``. The common form
``y + (value - y).detach()`` has the same gradient but rounds in float and can miss ``value`` by an ulp.
"""

from __future__ import annotations

from typing import NamedTuple

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
    bad = ~torch.isin(widths, torch.tensor(allowed, dtype=widths.dtype, device=widths.device))
    if bad.any():
        found = sorted(set(widths[bad].tolist()))[:5]
        raise UserError(f"{where}: bit widths {found} are not allowed; allowed {allowed}")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` (half to even) forward, identity gradient (paper Eq. 1-2)."""
    return torch.round(x).detach() + (x - x.detach())


def dorefa_normalize(w: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Inner part of paper Eq. 3: ``tanh(w) / (2 max|tanh(w)|) + 1/2``, in ``[0, 1]`` (1/2 where not ``kept``).

    The maximum is over the layer's weights that are not pruned (``kept``, the mask's ``m != 0``; the whole
    tensor without it). Eq. 7 makes a 0-bit weight "similar to one in IMP": the network is ``f(x; theta * m)``,
    so a pruned weight must not set the scale of the others, and through the maximum it would (a kept weight
    can shrink in training below a pruned one, and random pruning prunes large ones) and would take a gradient.
    Mostly the kept weights hold the maximum anyway: ``bench conv``, run again with this rule (04d0346), wrote
    its ResNet-20 and VGG IMQ images byte for byte as before. But in ``make demo``'s MLP the kept weight that held
    the classifier's maximum shrank in training below a pruned one (0.11985 against 0.11986), and from then on
    the old rule let that pruned weight set the scale and move; the demo's ticket changed (README). A pruned
    weight's ``x`` is 1/2 (its code is 0 whatever ``x``); a tensor with nothing kept, or all zero, maps to 1/2
    everywhere.
    Differentiable, including through the maximum (which gives a pruned weight no gradient).
    """
    t = torch.tanh(w)
    a = t.abs() if kept is None else torch.where(kept, t.abs(), 0.0)
    x = t / (2 * a.max().clamp_min(torch.finfo(t.dtype).tiny)) + 0.5
    return x if kept is None else torch.where(kept, x, 0.5)


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
        x = dorefa_normalize(w, widths != 0).to(torch.float64)
        return torch.round(x * _levels(widths)).to(torch.int64)


class MaskLevels(NamedTuple):
    """What :func:`dorefa_weight` needs of a checked mask, computed once per mask (:func:`mask_levels`)."""

    levels: torch.Tensor  #: ``2^m - 1`` per element, float64, 0 where ``m = 0``
    divisor: torch.Tensor  #: ``levels`` with 0 replaced by 1 (the value's divisor)
    nonzero: torch.Tensor  #: ``m != 0``, bool


def mask_levels(widths: torch.Tensor) -> MaskLevels:
    """:class:`MaskLevels` of ``widths`` after checking it.

    Raises
    ------
    UserError
        If ``widths`` holds a value outside :data:`TRAIN_WIDTHS`.
    """
    check_widths(widths, "bit widths", TRAIN_WIDTHS)
    levels = _levels(widths)
    return MaskLevels(levels, levels.clamp_min(1), widths != 0)


class _DoReFaValue(torch.autograd.Function):
    """Eq. 3 and 7 from ``x`` (:func:`dorefa_normalize`'s output) with the STE of Eq. 4 in one node.

    Forward: the codes ``round((2^m - 1) x)`` in float64 (exact for every width up to 32 bits, so no int64
    round trip is needed) and ``2 q / (2^m - 1) - 1`` from them, 0 where ``m = 0``, cast to ``x``'s dtype: the
    operations of :func:`dorefa_codes` and the reference form, in their order. Backward: ``d(2 x - 1)/dx = 2``
    where ``m != 0``, else 0, the gradient of ``value + (y - y.detach())`` with ``y = 2 x - 1``.
    """

    @staticmethod
    def forward(ctx, x, levels, divisor, nonzero):
        ctx.save_for_backward(nonzero)
        q = torch.round(x.to(torch.float64) * levels)
        return torch.where(nonzero, q.mul_(2).div_(divisor).sub_(1), 0.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (nonzero,) = ctx.saved_tensors
        return torch.where(nonzero, grad * 2, 0.0), None, None, None


def dorefa_weight(w: torch.Tensor, widths: torch.Tensor, levels: MaskLevels | None = None) -> torch.Tensor:
    """Element-wise DoReFa fake-quant weight, paper Eq. 3 and 7, with the STE of Eq. 4.

    Forward: 0 where ``m = 0``, else ``2 q / (2^m - 1) - 1`` with ``q`` the codes of :func:`dorefa_codes` (the
    value is computed in float64 from the codes and cast to ``w.dtype``). Backward: the gradient of the
    un-rounded ``2 x - 1`` (through ``tanh`` and the maximum), zero where ``m = 0``.

    ``x`` (:func:`dorefa_normalize`) is computed once, with its graph, and the codes are rounded from its
    value exactly as :func:`dorefa_codes` rounds them (:class:`_DoReFaValue`). ``levels`` is
    :func:`mask_levels` of a mask already checked (a layer keeps it until its mask changes); without it the
    mask is checked and its levels computed here.
    """
    if levels is None:
        levels = mask_levels(widths)
    return _DoReFaValue.apply(dorefa_normalize(w, levels.nonzero), levels.levels, levels.divisor, levels.nonzero)
