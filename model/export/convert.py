"""Fake-quant network -> integer golden model (model/export/golden.py).

For a layer with input step ``s_in = alpha_in / (2^a_in - 1)``, DoReFa weights ``w`` (Eq. 3, 7) and bias
``b``, the float pre-activation is ``z = s_in * sum_i w_i u_i + b``; the next PACT code (Eq. 5-6) is
``round(clamp(z, 0, alpha_out) / s_out)``. So the requantizer's gain is ``s_in / s_out`` and its offset
``b / s_out``; the last layer has no PACT and emits ``z * 2^SCORE_FRAC_BITS``.

BMPQ layers (model/quant/bmpq.py, layer-wise symmetric codes ``c`` with scale ``S``, BMPQ Eq. 3-4, ternary at
2 bits) become *signed* golden layers (model/export/golden.py): a ``q``-bit layer is stored in the smallest
accelerator class ``m >= q`` (2 and 3 bits in the 4-bit class, 5 to 7 in the 8-bit class), as offset
binary ``c + 2^(m-1)``; weights with ``c = 0`` are pruned (width 0, skipped by the hardware). The golden
weight is ``2c / (2^m - 1)`` and the real one ``c S``, so the requantizer's gain gets the factor
``S (2^m - 1) / 2``. Storage in the image is therefore ``m`` bits per non-zero weight (plus the 3-bit
width code every weight has); Eq. 11's ``q_l`` bits per weight is the paper's count, not the image's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.errors import UserError
from model.export.golden import SCORE_FRAC_BITS, WIDTHS, IntLinear, IntNetwork, check_layer, requant_params
from model.export.image import write_image
from model.quant.bmpq import BMPQLinear, to_int

#: Accelerator class that stores a BMPQ layer of each width.
BMPQ_CLASS = {2: 4, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8, 16: 16}


def weight_codes(linear, where: str) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """``(codes, widths, signed, weight_gain)`` of one layer for the golden model (module docstring).

    Raises
    ------
    UserError
        For an FP-32 BMPQ layer (no integer codes) or a DoReFa width the accelerator lacks.
    """

    with torch.no_grad():
        if isinstance(linear, BMPQLinear):
            bits = int(linear.bits)
            if bits not in BMPQ_CLASS:
                raise UserError(f"{where}: BMPQ layer width {bits} cannot be exported; allowed {sorted(BMPQ_CLASS)}")
            m = BMPQ_CLASS[bits]
            c, scale = to_int(linear.weight, bits)
            c = c.numpy()
            widths = np.where(c != 0, m, 0).astype(np.int64)
            codes = np.where(c != 0, c + (1 << (m - 1)), 0).astype(np.int64)
            return codes, widths, True, scale * ((1 << m) - 1) / 2
        widths = linear.bit_width.detach().to(torch.int64).numpy().copy()
        bad = ~np.isin(widths, WIDTHS)
        if bad.any():
            raise UserError(f"{where}: weight widths {sorted(set(widths[bad].tolist()))} cannot be exported; the "
                            f"accelerator supports {WIDTHS}")
        return linear.weight_codes().numpy().copy(), widths, False, 1.0


def to_golden(model) -> IntNetwork:
    """Integer network computing what ``model`` computes, with the codes its quantizers produce."""
    layers = []
    stages = model.stages()
    for k, (linear, in_quant, out_quant) in enumerate(stages):
        name = getattr(linear, "name", None) or f"fc{k + 1}"
        codes, widths, signed, weight_gain = weight_codes(linear, name)
        with torch.no_grad():
            bias = (linear.bias.detach().double().numpy() if linear.bias is not None
                    else np.zeros(linear.out_features))
        if out_quant is not None:
            gain, offset, out_bits = in_quant.step * weight_gain / out_quant.step, bias / out_quant.step, out_quant.bits
        else:
            scale = float(1 << SCORE_FRAC_BITS)
            gain, offset, out_bits = in_quant.step * weight_gain * scale, bias * scale, 0
        mult, int_bias, shift = requant_params(np.full(linear.out_features, gain), offset)
        layer = IntLinear(codes=codes, widths=widths, in_bits=in_quant.bits, out_bits=out_bits, mult=mult,
                          bias=int_bias, shift=shift, name=name, signed=signed)
        check_layer(layer, where=layer.name)
        layers.append(layer)
    return IntNetwork(input_bits=stages[0][1].bits, layers=tuple(layers))


def input_codes(model, x: torch.Tensor) -> torch.Tensor:
    """The network input as integer codes (the first quantizer's ``to_codes``), int64."""
    return model.stages()[0][1].to_codes(x)


def golden_accuracy(net: IntNetwork, model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the integer network ``net`` on images ``x`` (quantized by ``model``'s input quantizer)."""
    pred = net.predict(input_codes(model, x).numpy())
    return float((pred == y.numpy()).mean())


def scales(model) -> dict:
    """Float scales of every quantizer, for the image manifest's ``extra`` (documentation only)."""
    return {
        "input_step": model.stages()[0][1].step,
        "layers": [{"in_step": q_in.step, "out_step": (q_out.step if q_out is not None else None)}
                   for _, q_in, q_out in model.stages()],
        "score_frac_bits": SCORE_FRAC_BITS,
    }


def export_image(model, out_dir: Path, data=None) -> dict:
    """Convert ``model`` to the golden model and write its image; ``data`` (a :class:`model.data.DataRecord`)
    goes into the manifest. Returns the manifest."""
    net = to_golden(model)
    if data is not None and (data.input_bits != net.input_bits or data.features != net.layers[0].n_in):
        raise UserError(f"data record {data.to_json()} does not fit the network: {net.layers[0].n_in} inputs of "
                        f"{net.input_bits} bits")
    return write_image(out_dir, net, extra={"scales": scales(model)},
                       data=None if data is None else data.to_json())
