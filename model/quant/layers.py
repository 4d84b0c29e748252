"""Quantized layers with an element-wise bit-width mask (paper Sec. 3.2, Eq. 7): fully connected and 2-D conv.

Both layers keep a latent full-precision ``weight`` and an int64 ``bit_width`` buffer of the same shape;
the forward pass uses the DoReFa fake-quant weight ``Q(w, m)`` of Eq. 3 and 7. The mask logic lives once,
in :class:`ElementWiseMask`; the layer classes only say how the quantized weight is applied.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.errors import UserError
from model.quant.dorefa import MaskLevels, check_widths, dorefa_codes, dorefa_weight, mask_levels


class ElementWiseMask:
    """The element-wise DoReFa mask shared by :class:`QuantLinear` and :class:`QuantConv2d`.

    A base for ``nn.Module`` layers that own a ``weight`` parameter: it adds the ``bit_width`` buffer
    (call :meth:`_init_mask` after the module's own ``__init__``) and everything that reads or writes it.

    Members
    -------
    weight : nn.Parameter
        Latent full-precision weight ``w``; IMQ ranks weights by ``|w|``.
    bit_width : torch.Tensor
        int64 buffer, same shape as ``weight``, elements in ``{0, 4, 8, 16, 32}``; initially all 32
        (``m_q = {32}^|theta|``, Sec. 3.2).
    name : str
        Used in error messages and by the exporters.
    """

    weight: nn.Parameter
    bit_width: torch.Tensor
    name: str

    def _init_mask(self, name: str) -> None:
        self.name = name
        self.register_buffer("bit_width", torch.full_like(self.weight, 32, dtype=torch.int64))

    def set_bit_width(self, widths: torch.Tensor) -> None:
        """Replace the mask.

        Raises
        ------
        UserError
            If ``widths`` has another shape than ``weight`` or holds a value outside ``{0, 4, 8, 16, 32}``.
        """
        widths = torch.as_tensor(widths)
        if tuple(widths.shape) != tuple(self.weight.shape):
            raise UserError(
                f"{self.name}: bit_width shape {tuple(widths.shape)} differs from weight shape "
                f"{tuple(self.weight.shape)}"
            )
        check_widths(widths, f"{self.name}.bit_width")
        self.bit_width.copy_(widths)

    def quantized_weight(self) -> torch.Tensor:
        """Fake-quant weight ``Q(w, m)`` of Eq. 7, in ``[-1, 1]``, with the STE of Eq. 4."""
        return dorefa_weight(self.weight, self.bit_width, self._mask_levels())

    def _mask_levels(self) -> MaskLevels:
        """The mask's levels ``2^m - 1`` (:class:`~model.quant.dorefa.MaskLevels`), checked and computed once
        per mask.

        The mask changes only in place (``set_bit_width``, ``load_state_dict``, IMQ's updates), each of which
        bumps the buffer's version counter; the cache is keyed on that counter and the device. A move
        (``.to()``, ``.cpu()``, ``.cuda()``) replaces the buffer with a new tensor whose counter restarts and
        whose storage may reuse the old address, so :meth:`_apply` drops the cache.
        """
        key = (self.bit_width._version, self.bit_width.device, self.bit_width.data_ptr())
        cached = self.__dict__.get("_levels_cache")
        if cached is None or cached[0] != key:
            cached = (key, mask_levels(self.bit_width))
            self.__dict__["_levels_cache"] = cached
        return cached[1]

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_levels_cache", None)  # the buffer may be replaced (_mask_levels)
        return super()._apply(fn, *args, **kwargs)

    def weight_codes(self) -> torch.Tensor:
        """int64 DoReFa codes, 0 where the width is 0 (what the accelerator stores)."""
        return dorefa_codes(self.weight, self.bit_width)

    @property
    def avg_bits(self) -> float:
        """Mean bit width of this layer's weights."""
        return float(self.bit_width.double().mean())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, name={self.name!r}, avg_bits={self.avg_bits:.3g}"


class QuantLinear(ElementWiseMask, nn.Linear):
    """``nn.Linear`` whose weight goes through element-wise DoReFa quantization (Eq. 3, 7).

    Parameters
    ----------
    in_features, out_features : int
        As for ``nn.Linear``.
    bias : bool
        Whether the layer has a (full-precision) bias.
    name : str, optional
        Used in error messages and by the exporters; defaults to ``"QuantLinear(in->out)"``.

    Members
    -------
    weight, bit_width, name
        See :class:`ElementWiseMask`; ``weight`` and ``bit_width`` are ``[out_features, in_features]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str | None = None):
        super().__init__(in_features, out_features, bias=bias)
        self._init_mask(name or f"QuantLinear({in_features}->{out_features})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class QuantConv2d(ElementWiseMask, nn.Conv2d):
    """``nn.Conv2d`` (zero padding) whose weight goes through element-wise DoReFa quantization (Eq. 3, 7).

    Every kernel element has its own width, as every weight of :class:`QuantLinear` does.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups : int or tuple
        As for ``nn.Conv2d``.
    bias : bool
        Whether the layer has a (full-precision) bias; ``False`` when a BatchNorm follows.
    name : str, optional
        Used in error messages and by the exporters; defaults to ``"QuantConv2d(in->out,KhxKw)"``.

    Members
    -------
    weight, bit_width, name
        See :class:`ElementWiseMask`; ``weight`` and ``bit_width`` are
        ``[out_channels, in_channels / groups, Kh, Kw]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        name: str | None = None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias,
        )
        kh, kw = self.kernel_size
        self._init_mask(name or f"QuantConv2d({in_channels}->{out_channels},{kh}x{kw})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


#: Every layer type with an element-wise bit-width mask: ``isinstance(m, QUANT_LAYER_TYPES)``.
QUANT_LAYER_TYPES = (QuantLinear, QuantConv2d)
