"""Quantized layers: a fully connected layer with an element-wise bit-width mask (paper Sec. 3.2, Eq. 7)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError
from .quant import check_widths, dorefa_codes, dorefa_weight


class QuantLinear(nn.Linear):
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
    weight : nn.Parameter
        Latent full-precision weight ``w``; IMQ ranks weights by ``|w|``.
    bit_width : torch.Tensor
        int64 buffer, same shape as ``weight``, elements in ``{0, 4, 8, 16, 32}``; initially all 32.
    """

    bit_width: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str | None = None):
        super().__init__(in_features, out_features, bias=bias)
        self.name = name or f"QuantLinear({in_features}->{out_features})"
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
        return dorefa_weight(self.weight, self.bit_width)

    def weight_codes(self) -> torch.Tensor:
        """int64 DoReFa codes, 0 where the width is 0 (what the accelerator stores)."""
        return dorefa_codes(self.weight, self.bit_width)

    @property
    def avg_bits(self) -> float:
        """Mean bit width of this layer's weights."""
        return float(self.bit_width.double().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, name={self.name!r}, avg_bits={self.avg_bits:.3g}"
