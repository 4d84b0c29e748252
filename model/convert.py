"""Fake-quant network -> integer golden model (model/golden.py).

For a layer with input step ``s_in = alpha_in / (2^a_in - 1)``, DoReFa weights ``w`` (Eq. 3, 7) and bias
``b``, the float pre-activation is ``z = s_in * sum_i w_i u_i + b``; the next PACT code (Eq. 5-6) is
``round(clamp(z, 0, alpha_out) / s_out)``. So the requantizer's gain is ``s_in / s_out`` and its offset
``b / s_out``; the last layer has no PACT and emits ``z * 2^SCORE_FRAC_BITS``.
"""

from __future__ import annotations

import numpy as np
import torch

from .golden import SCORE_FRAC_BITS, IntLinear, IntNetwork, check_layer, requant_params


def to_golden(model) -> IntNetwork:
    """Integer network computing what ``model`` computes, with the codes its quantizers produce."""
    layers = []
    stages = model.stages()
    for k, (linear, in_quant, out_quant) in enumerate(stages):
        with torch.no_grad():
            widths = linear.bit_width.detach().to(torch.int64).numpy().copy()
            codes = linear.weight_codes().numpy().copy()
            bias = (linear.bias.detach().double().numpy() if linear.bias is not None
                    else np.zeros(linear.out_features))
        if out_quant is not None:
            gain, offset, out_bits = in_quant.step / out_quant.step, bias / out_quant.step, out_quant.bits
        else:
            scale = float(1 << SCORE_FRAC_BITS)
            gain, offset, out_bits = in_quant.step * scale, bias * scale, 0
        mult, int_bias, shift = requant_params(np.full(linear.out_features, gain), offset)
        layer = IntLinear(codes=codes, widths=widths, in_bits=in_quant.bits, out_bits=out_bits, mult=mult,
                          bias=int_bias, shift=shift, name=getattr(linear, "name", None) or f"fc{k + 1}")
        check_layer(layer, where=layer.name)
        layers.append(layer)
    return IntNetwork(input_bits=stages[0][1].bits, layers=tuple(layers))


def input_codes(model, x: torch.Tensor) -> torch.Tensor:
    """The network input as integer codes (the first quantizer's ``to_codes``), int64."""
    return model.stages()[0][1].to_codes(x)


def scales(model) -> dict:
    """Float scales of every quantizer, for the image manifest's ``extra`` (documentation only)."""
    return {
        "input_step": model.stages()[0][1].step,
        "layers": [{"in_step": q_in.step, "out_step": (q_out.step if q_out is not None else None)}
                   for _, q_in, q_out in model.stages()],
        "score_frac_bits": SCORE_FRAC_BITS,
    }
