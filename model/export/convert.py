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

Conv nets (:func:`to_golden_conv`: :class:`~model.quant.nets.SmallVGG` and ResNet-20, below) become an
:class:`~model.export.golden_net.IntConvNetwork`. A block ``conv -> BN -> PACT [-> max-pool]`` computes, per
output channel, ``z = s_in sum w u + b`` (``b`` the conv bias, 0 in the nets here), then BatchNorm with its
running statistics, ``k (z - mean) + beta`` with ``k = gamma / sqrt(var + eps)``, then the PACT code
``round(clamp(., 0, alpha) / s_out)``. So BatchNorm folds into the per-channel requant exactly as the bias of
an MLP layer does:

  ``gain = s_in * weight_gain * k / s_out``,  ``offset = (beta + k (b - mean)) / s_out``.

A channel with ``gamma < 0`` has a negative gain; :func:`~model.export.golden_conv.fold_negative_gain`
complements its weight codes (DoReFa ``q' = 2^m - 1 - q``, signed ``q' = 2^m - q``), which negates its
accumulator exactly, and the requant gets ``|gain|`` with the same offset, so ``M >= 0`` always. Max-pool
after PACT then runs on the output codes: the requant with ``M >= 0`` and the clamp are non-decreasing, as is
the float code map, so the max of the codes is the code of the max (no rounding;
:mod:`model.export.golden_net`). The final FC is the MLP's last layer (``gain = s_in weight_gain 2^8``,
``offset = b 2^8``) on the flattened codes of the last block.

ResNet-20 (:class:`~model.quant.nets.ResNet20`): the stem ``conv -> BN -> PACT`` is a :class:`ConvStage`
folded as above (no pool). A :class:`~model.quant.nets.BasicBlock` becomes a
:class:`~model.export.golden_net.ResidualStage`: ``conv1 -> BN1 -> PACT`` folds as above; conv2 computes
``PACT(BN2(conv2(h)) + shortcut(x))``, i.e. in units of the output code

  ``gain acc / D + g_r r + offset``, ``gain = s_h weight_gain k2 / s_out``, ``offset = c2 / s_out``,
  ``g_r = s_x / s_out``

(``r`` the option-A shortcut codes of the block input ``x``, step ``s_x``). :func:`residual_requant_params`
turns ``gain``, ``g_r`` and ``offset`` into ``M``, ``M_r``, ``B`` with one shift ``S``
(:func:`~model.export.golden_conv.requantize_residual`).

Negative gamma in a residual conv2 (the decision; exact, not refused). ``fold_negative_gain`` complements
the codes of a channel with ``gain < 0``, so its accumulator is negated exactly (``acc' = -acc``) and
``|gain| acc' = gain acc``: the *conv term* keeps its value. The shortcut term ``g_r r`` is a separate
summand with its own multiplier and ``g_r = s_x / s_out > 0`` whatever gamma's sign (BatchNorm2 acts on the
conv output only, before the add), so it is neither negated nor should be: the pre-activation
``gain acc / D + g_r r + offset`` is the same sum with the same value, and ``M, M_r >= 0`` hold. So the
complement trick is exact for conv2 with the residual too; what would NOT be exact is negating the whole
pre-activation (e.g. complementing output codes), which is not done. Tested in
tests/model/export/test_golden_resnet.py.

The final FC after global average pooling gets the per-channel sums of the last block's codes
(:class:`~model.export.golden_net.GlobalSumPool`), so ``1 / (H W)`` goes into its gain:
``gain = s_last weight_gain 2^8 / (H W)`` (one rounding, in ``M``), ``FCStage(pooled=H W)``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from model.errors import UserError
from model.export.golden import (
    ACC_SHIFT,
    BIAS_BITS,
    MAX_SHIFT,
    MULT_BITS,
    SCORE_FRAC_BITS,
    WIDTHS,
    D,
    IntLinear,
    IntNetwork,
    check_layer,
    largest_shift,
    requant_params,
)
from model.export.golden_conv import IntConv2d, fold_negative_gain
from model.export.golden_net import ConvStage, FCStage, GlobalSumPool, IntConvNetwork, ResidualStage, check_network
from model.export.image import input_features, write_image
from model.quant.bmpq import BMPQConv2d, BMPQLinear, to_int
from model.quant.layers import QuantConv2d
from model.quant.nets import BasicBlock, ResNet20, SmallVGG
from model.quant.pact import PACT, InputQuant

#: Accelerator class that stores a BMPQ layer of each width.
BMPQ_CLASS = {2: 4, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8, 16: 16}
#: Images per slice of :func:`golden_accuracy` (as eval_command's EVAL_BATCH).
GOLDEN_BATCH = 500


def weight_codes(linear, where: str) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """``(codes, widths, signed, weight_gain)`` of one layer for the golden model (module docstring).

    Raises
    ------
    UserError
        For an FP-32 BMPQ layer (no integer codes) or a DoReFa width the accelerator lacks.
    """

    with torch.no_grad():
        if isinstance(linear, BMPQLinear | BMPQConv2d):
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


def on_host(model):
    """``model`` itself when its parameters and buffers are on the CPU, else a CPU copy (the model stays put).

    The integer contract is computed on the CPU: a checkpoint holds CPU tensors and export reads the codes there,
    so a model still on a GPU after training converts to the golden model of its checkpoint (its weight codes
    from the CPU's ``tanh``; the GPU's may move a code by what an ulp of Eq. 3's ``x`` is worth,
    tests/model/training/test_cuda.py).
    """
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


def to_golden(model, where: str | None = None) -> IntNetwork | IntConvNetwork:
    """Integer network computing what ``model`` computes, with the codes its quantizers produce.

    MLPs give an :class:`IntNetwork`; conv nets an :class:`IntConvNetwork` (:func:`to_golden_conv`). A model on
    a GPU is converted from a CPU copy (:func:`on_host`).

    Raises
    ------
    UserError
        For what the integer contract cannot hold (a PACT-32 activation, a width or a requantizer out of range),
        naming the layer, prefixed with ``where`` (the file the model came from) when given.
    """
    try:
        return _to_golden(model)
    except UserError as exc:
        if where is None:
            raise
        raise UserError(f"{where}: {exc}") from None


def _to_golden(model) -> IntNetwork | IntConvNetwork:
    model = on_host(model)
    if isinstance(model, SmallVGG | ResNet20):
        return to_golden_conv(model)
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
        mult, int_bias, shift = requant_params(np.full(linear.out_features, gain), offset,
                                               where=f"{name}: requantization")
        layer = IntLinear(codes=codes, widths=widths, in_bits=in_quant.bits, out_bits=out_bits, mult=mult,
                          bias=int_bias, shift=shift, name=name, signed=signed)
        check_layer(layer, where=layer.name)
        layers.append(layer)
    return IntNetwork(input_bits=stages[0][1].bits, layers=tuple(layers))


def input_codes(model, x: torch.Tensor) -> torch.Tensor:
    """The network input as integer codes (the first quantizer's ``to_codes``), int64.

    For a conv net: ``[N, C, H, W]`` codes of ``x`` reshaped to the model's ``image_shape``. Computed on the CPU
    (a model on a GPU lends a CPU copy of its input quantizer, :func:`on_host`), as the golden model reads them.
    """
    if isinstance(model, SmallVGG | ResNet20):
        _codes_of(model.input_quant, "input_quant")
        return on_host(model.input_quant).to_codes(x.cpu().reshape(x.shape[0], *model.image_shape))
    return on_host(model.stages()[0][1]).to_codes(x.cpu())


def golden_accuracy(net: IntNetwork | IntConvNetwork, model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the integer network ``net`` on images ``x`` (quantized by ``model``'s input quantizer).

    Evaluated in slices of :data:`GOLDEN_BATCH` images (a conv net's im2col of a whole test set is GBs).
    """
    pred = np.concatenate([net.predict(input_codes(model, x[i:i + GOLDEN_BATCH]).numpy())
                           for i in range(0, max(len(x), 1), GOLDEN_BATCH)])
    return float((pred == y.cpu().numpy()).mean())


def _codes_of(quant, where: str) -> int:
    """``quant.bits``, or :class:`UserError` for a full-precision (PACT-32) quantizer, which has no codes."""
    if quant.full_precision:
        raise UserError(f"{where}: field 'bits' is {quant.bits} (full precision, PACT-32): no integer codes to"
                        " export; allowed 1..8")
    return quant.bits


def fold_batchnorm(bn: torch.nn.BatchNorm2d, conv_bias, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(k, c)`` with ``BN(z + b) = k z + c`` per channel (running statistics, i.e. eval mode), float64.

    ``k = gamma / sqrt(var + eps)``, ``c = beta + k (b - mean)``; ``gamma = 1``, ``beta = 0`` without ``affine``.
    """
    if not isinstance(bn, torch.nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise UserError(f"{where}: expected a BatchNorm2d with running statistics, found {type(bn).__name__}")
    with torch.no_grad():
        mean = bn.running_mean.double().numpy()
        var = bn.running_var.double().numpy()
        gamma = bn.weight.double().numpy() if bn.weight is not None else np.ones_like(mean)
        beta = bn.bias.double().numpy() if bn.bias is not None else np.zeros_like(mean)
        b = conv_bias.detach().double().numpy() if conv_bias is not None else np.zeros_like(mean)
    k = gamma / np.sqrt(var + bn.eps)
    return k, beta + k * (b - mean)


def residual_requant_params(gain, res_gain, offset, where: str = "residual requantization"
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(M, M_r, B, S)`` with ``y ~= gain acc / D + res_gain r + offset`` (per channel) for ``requantize_residual``.

    ``M = round(gain 2^ACC_SHIFT / D 2^S)`` and ``B = round(offset 2^S)`` as :func:`golden.requant_params
    <model.export.golden.requant_params>`, and ``M_r = round(res_gain 2^(S - ACC_SHIFT))`` (the shortcut
    enters at the accumulator's scale, ``(r M_r) << ACC_SHIFT``). ``S`` is the largest shift in
    ``1..MAX_SHIFT`` with every ``M`` and ``M_r`` below ``2^MULT_BITS`` and every ``B`` inside
    :data:`~model.export.golden.BIAS_BITS` signed bits. Since ``2^ACC_SHIFT / D ~= 2^-ACC_SHIFT``, ``M`` and
    ``M_r`` have the same scale ``2^(S - ACC_SHIFT)``: the larger of ``max gain`` and ``max res_gain`` gets
    16 to 17 significant bits. Precision: ``|M_r - res_gain 2^(S - ACC_SHIFT)| <= 1/2``, so the shortcut term
    ``r M_r 2^ACC_SHIFT / 2^S`` is ``r res_gain`` to within ``r 2^(ACC_SHIFT - 1 - S)`` output units
    (``<= 255 * 2^(15 - S)``; ``2^-8`` of a step at ``S = 31``, a shortcut gain near 1), before the one rounding.

    Raises
    ------
    UserError
        Naming ``where``: a negative or non-finite gain or residual gain, a non-finite offset, or no shift fits.
    """
    gain, res_gain, offset = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (gain, res_gain, offset)))
    if ((gain < 0).any() or (res_gain < 0).any() or not np.isfinite(gain).all() or not np.isfinite(res_gain).all()
            or not np.isfinite(offset).all()):
        raise UserError(f"{where}: gains must be finite and non-negative (M, M_r unsigned), the offset finite")
    c = gain * (1 << ACC_SHIFT) / D
    fit = largest_shift(offset, (c, 0), (res_gain, -ACC_SHIFT))
    if fit is not None:
        (mult, res_mult), bias, shift = fit
        return mult, res_mult, bias, shift
    raise UserError(f"{where}: fields 'mult', 'res_mult', 'bias': gain {float(gain.max())!r}, residual gain"
                    f" {float(res_gain.max())!r}, offset {float(np.abs(offset).max())!r} fit no shift 1..{MAX_SHIFT}"
                    f" (M, M_r below 2^{MULT_BITS}, B in {BIAS_BITS} signed bits)")


def _check_geometry(conv, where: str) -> None:
    if not isinstance(conv, QuantConv2d | BMPQConv2d):
        raise UserError(f"{where}: expected a QuantConv2d or BMPQConv2d, found {type(conv).__name__}")
    k_h, k_w = conv.kernel_size
    if (k_h != k_w or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"):
        raise UserError(f"{where}: kernel {conv.kernel_size}, stride {conv.stride}, padding {conv.padding},"
                        f" dilation {conv.dilation}, groups {conv.groups}, padding_mode {conv.padding_mode!r};"
                        " allowed square kernels, equal strides and paddings, no dilation or groups, zeros")


def residual_conv(conv, bn, act, in_quant, short_quant, where: str) -> IntConv2d:
    """conv2 of a basic block: ``PACT(BN(conv(h)) + shortcut(x))`` as an :class:`IntConv2d` with ``res_mult``.

    ``in_quant`` quantized ``h`` (conv1's PACT), ``short_quant`` the block input ``x`` (the shortcut codes).
    A negative BN gain is folded into the codes exactly as for a plain block (module docstring: exact with
    the residual too, the shortcut's ``g_r = s_x / s_out`` stays positive).
    """
    return conv_block(conv, bn, act, in_quant, where, short_quant=short_quant)


def conv_block(conv, bn, act, in_quant, where: str, short_quant=None) -> IntConv2d:
    """One ``conv -> BN -> PACT`` block as an :class:`IntConv2d` (module docstring: BN fold, negative gamma).

    With ``short_quant`` (the quantizer of a residual shortcut's codes) the block adds the shortcut before
    the PACT and the layer gets a ``res_mult`` (:func:`residual_conv`).
    """
    _check_geometry(conv, where)
    codes, widths, signed, weight_gain = weight_codes(conv, where)
    k, c = fold_batchnorm(bn, conv.bias, where)
    in_bits, out_bits = _codes_of(in_quant, f"{where} input"), _codes_of(act, f"{where} activation")
    if short_quant is not None:
        _codes_of(short_quant, f"{where} shortcut")
    gain = in_quant.step * weight_gain * k / act.step
    codes, gain = fold_negative_gain(codes, widths, gain, signed)
    if short_quant is None:
        res_mult = None
        mult, bias, shift = requant_params(gain, c / act.step, where=where)
    else:
        res_gain = np.full(conv.out_channels, short_quant.step / act.step)
        mult, res_mult, bias, shift = residual_requant_params(gain, res_gain, c / act.step, where=where)
    return IntConv2d(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits, mult=mult, bias=bias,
                     shift=shift, stride=int(conv.stride[0]), padding=int(conv.padding[0]), name=where,
                     signed=signed, res_mult=res_mult)


def final_fc(fc, in_quant, pooled: int = 1) -> IntLinear:
    """The FC that ends a conv net: scores ``2^8 (s_in weight_gain sum w u / pooled + b)`` (``pooled = H W``
    after global average pooling, whose sum of codes the FC receives)."""
    codes, widths, signed, weight_gain = weight_codes(fc, fc.name)
    with torch.no_grad():
        bias = fc.bias.detach().double().numpy() if fc.bias is not None else np.zeros(fc.out_features)
    scale = float(1 << SCORE_FRAC_BITS)
    mult, int_bias, shift = requant_params(np.full(fc.out_features, in_quant.step * weight_gain * scale / pooled),
                                           bias * scale, where=fc.name)
    return IntLinear(codes=codes, widths=widths, in_bits=_codes_of(in_quant, f"{fc.name} input"), out_bits=0,
                     mult=mult, bias=int_bias, shift=shift, name=fc.name, signed=signed)


def to_golden_resnet(model: ResNet20) -> IntConvNetwork:
    """:class:`IntConvNetwork` of a :class:`ResNet20`: stem, 9 :class:`ResidualStage`, global sum pool, FC.

    Module docstring: the residual requant, negative gamma (exact), ``1 / (H W)`` in the FC's gain.
    """
    stem = conv_block(model.conv1, model.bn1, model.act1, model.input_quant, "conv1")
    stages = [ConvStage(stem)]
    h, w = stem.out_size(*model.image_shape[1:])
    in_quant = model.act1
    for layer in (model.layer1, model.layer2, model.layer3):
        for block in layer:
            if not isinstance(block, BasicBlock):
                raise UserError(f"expected a BasicBlock, found {type(block).__name__}")
            name = block.conv1.name.rsplit(".", 1)[0]
            conv1 = conv_block(block.conv1, block.bn1, block.act1, in_quant, block.conv1.name)
            conv2 = residual_conv(block.conv2, block.bn2, block.act2, block.act1, in_quant, block.conv2.name)
            stages.append(ResidualStage(conv1, conv2, stride=int(block.stride), name=name))
            h, w = conv2.out_size(*conv1.out_size(h, w))
            in_quant = block.act2
    fc = final_fc(model.fc, in_quant, pooled=h * w)
    net = IntConvNetwork(input_bits=_codes_of(model.input_quant, "input_quant"), image_shape=tuple(model.image_shape),
                         stages=(*stages, GlobalSumPool(), FCStage(fc, pooled=h * w)))
    check_network(net)
    return net


def to_golden_conv(model) -> IntConvNetwork:
    """:class:`IntConvNetwork` of a :class:`SmallVGG` (``conv -> BN -> PACT -> max-pool`` blocks, then the FC)
    or a :class:`ResNet20` (:func:`to_golden_resnet`).

    Raises
    ------
    UserError
        For another model, a PACT-32 activation, a weight width outside :data:`WIDTHS`, or a layer the
        contract lacks; from :func:`check_network` for a bound it breaks.
    """
    model = on_host(model)
    if isinstance(model, ResNet20):
        return to_golden_resnet(model)
    if not isinstance(model, SmallVGG):
        raise UserError(f"{type(model).__name__}: the integer contract takes SmallVGG and ResNet20 conv nets")
    mods = list(model.features)
    stages = []
    in_quant = model.input_quant
    for i in range(0, len(mods), 4):
        conv, bn, act, pool = mods[i:i + 4]
        where = getattr(conv, "name", "") or f"conv{i // 4 + 1}"
        if (not isinstance(pool, torch.nn.MaxPool2d) or pool.kernel_size not in (2, (2, 2))
                or pool.stride not in (2, (2, 2)) or pool.padding not in (0, (0, 0)) or pool.ceil_mode
                or pool.dilation not in (1, (1, 1))):
            raise UserError(f"{where}: expected MaxPool2d(2) after the PACT, found {pool!r}")
        stages.append(ConvStage(conv_block(conv, bn, act, in_quant, where), pool=2))
        in_quant = act
    layer = final_fc(model.fc, in_quant)
    net = IntConvNetwork(input_bits=_codes_of(model.input_quant, "input_quant"),
                         image_shape=tuple(model.image_shape), stages=(*stages, FCStage(layer)))
    check_network(net)
    return net


def scales(model) -> dict:
    """Float scales of every quantizer, for the image manifest's ``extra`` (documentation only).

    MLPs: the input step and each layer's input and output steps; conv nets: every quantizer's step by its
    module name (``input_quant``, ``act1``, ``layer1.0.act2``, ...).
    """
    if isinstance(model, SmallVGG | ResNet20):
        return {"steps": {name: float(m.step) for name, m in model.named_modules()
                          if isinstance(m, PACT | InputQuant) and not m.full_precision},
                "score_frac_bits": SCORE_FRAC_BITS}
    return {
        "input_step": model.stages()[0][1].step,
        "layers": [{"in_step": q_in.step, "out_step": (q_out.step if q_out is not None else None)}
                   for _, q_in, q_out in model.stages()],
        "score_frac_bits": SCORE_FRAC_BITS,
    }


def export_image(model, out_dir: Path, data=None, where: str | None = None, revisions: dict | None = None) -> dict:
    """Convert ``model`` to the golden model and write its image; ``data`` (a :class:`model.data.DataRecord`)
    goes into the manifest, and ``revisions`` (the code revisions of the export and of the training) into its
    ``extra``; ``where`` (the checkpoint file) prefixes the conversion's errors. Returns the manifest."""
    net = to_golden(model, where)
    if data is not None and (data.input_bits != net.input_bits or data.features != input_features(net)):
        raise UserError(f"{where + ': ' if where else ''}data record {data.to_json()} does not fit the network: "
                        f"{input_features(net)} inputs of {net.input_bits} bits")
    return write_image(out_dir, net, extra={"scales": scales(model), **(revisions or {})},
                       data=None if data is None else data.to_json())
