"""Vertical-layered net (model/quant/vertical.py) -> its integer contract
(:class:`~model.export.golden_vertical.VerticalNetwork`).

Weights: an inner layer's source codes ``w_bar_n = Q(w, s_w)`` (Eq. 1) split into the basic layer and the
enhance planes (Eq. 3-5, :func:`model.quant.lsq.enhance_layers`); an edge's 8-bit codes as they are.

Requant records, one per ``(in_bits, out_bits)`` pair an assignment can need
(:func:`~model.export.golden_vertical.needed_pairs`). For the layer's input step ``s_in`` (the 8-bit input
quantizer's, or the per-width step ``s_a`` of the activation quantizer feeding it at ``in_bits``, Sec.
4.2.2), weight unit ``v`` (``s_w / 2`` for an inner layer, whose effective code ``e_i`` is in those units at
every width; the edge's own step), golden class ``m`` (signed mode: golden weight ``2 e / (2^m - 1)``), bias
``b``, the output step ``s_out`` at ``out_bits``, the float pre-activation in output-code units is

  ``gain * (sum of golden weights * u) + offset``,  ``gain = s_in v (2^m - 1) / 2 * k / s_out``,
  ``offset = (beta + k (b - mean)) / s_out``

with BatchNorm's ``k = gamma / sqrt(var + eps)`` of the BN at the width that layer runs at (an inner
layer's own width = ``in_bits``; the first edge's BN follows the next inner layer = ``out_bits``), ``k = 1``,
``beta = mean = 0`` without BN (the MLP). The last layer emits scores: ``s_out = 2^-SCORE_FRAC_BITS``. A
negative gain sets the output's ``negate`` flag and uses ``|gain|`` (exact: the effective codes are negated).

ResNet-20 (:class:`~model.quant.nets.ResNet20` after :func:`~model.quant.vertical.to_vertical`): the stem is the
first edge, each basic block's conv1 a plain inner conv and its conv2 a ``residual`` inner conv, whose records
are keyed by ``(in_bits, out_bits, res_bits)`` and add the shortcut's ``g_r = s_x / s_out`` (``s_x``: the
block input's step at ``res_bits``) with its own ``M_r`` (:func:`model.export.convert.residual_requant_params`;
``g_r > 0`` whatever BN2's sign, so ``negate`` touches the conv term only, as in version 3). The FC is the last
edge with ``gap`` set: it reads the per-channel sums of the last block's codes, so its gain carries
``1 / (H W)``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from model.errors import UserError, shown
from model.export.convert import GOLDEN_BATCH, fold_batchnorm, on_host, residual_requant_params
from model.export.golden import SCORE_FRAC_BITS, requant_params
from model.export.golden_vertical import (
    EDGE_BITS,
    VerticalLayer,
    VerticalNetwork,
    VerticalRequant,
    check_vertical,
    edge_class,
    inner_class,
    needed_pairs,
)
from model.export.image_v4 import write_vertical_image
from model.quant.lsq import enhance_layers
from model.quant.nets import BasicBlock, DigitsMLP, ResNet20, SmallVGG
from model.quant.pact import InputQuant
from model.quant.vertical import (
    SwitchableBatchNorm,
    VerticalActQuant,
    VerticalConv2d,
    VerticalLinear,
    inner_layers,
    vertical_layers,
    widths_of,
)


def _step(quant, bits: int) -> float:
    """The step of ``quant`` at ``bits``: a per-width :class:`VerticalActQuant` step, or the input quantizer's."""
    if isinstance(quant, VerticalActQuant):
        return float(quant.steps.detach()[quant.widths.index(bits)])
    if isinstance(quant, InputQuant):
        if quant.bits != bits:
            raise UserError(f"input quantizer has {quant.bits} bits, the contract needs {bits}")
        return float(quant.step)
    raise UserError(f"expected a VerticalActQuant or the 8-bit InputQuant, found {type(quant).__name__}")


def _chain(model) -> list[tuple]:
    """``(layer, in_quant, bn, out_quant, pool, short_quant, pooled)`` input to output, for the nets the
    contract takes: ``short_quant`` quantized a residual layer's shortcut (None elsewhere), ``pooled`` is the
    area a ``gap`` FC sums over (0: no global pool)."""
    if isinstance(model, DigitsMLP):
        return [(lin, q_in, None, q_out, 0, None, 0) for lin, q_in, q_out in model.stages()]
    if isinstance(model, SmallVGG):
        mods = list(model.features)
        chain, q_in = [], model.input_quant
        for i in range(0, len(mods), 4):
            conv, bn, act, pool = mods[i:i + 4]
            if not isinstance(pool, torch.nn.MaxPool2d):
                raise UserError(f"{conv.name}: expected MaxPool2d(2) after the activation, found {pool!r}")
            chain.append((conv, q_in, bn, act, 2, None, 0))
            q_in = act
        chain.append((model.fc, q_in, None, None, 0, None, 0))
        return chain
    if isinstance(model, ResNet20):
        _, h, w = model.image_shape

        def out_size(conv, h, w):
            k, st, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            return (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1

        chain = [(model.conv1, model.input_quant, model.bn1, model.act1, 0, None, 0)]
        h, w = out_size(model.conv1, h, w)
        q_in = model.act1
        for block in (*model.layer1, *model.layer2, *model.layer3):
            if not isinstance(block, BasicBlock):
                raise UserError(f"expected a BasicBlock, found {type(block).__name__}")
            chain.append((block.conv1, q_in, block.bn1, block.act1, 0, None, 0))
            chain.append((block.conv2, block.act1, block.bn2, block.act2, 0, q_in, 0))
            h, w = out_size(block.conv2, *out_size(block.conv1, h, w))
            q_in = block.act2
        chain.append((model.fc, q_in, None, None, 0, None, h * w))
        return chain
    raise UserError(f"{type(model).__name__}: the vertical integer contract takes the MLP, VGG and ResNet-20 nets")


def _record(link, key: tuple[int, ...], widths, row: int = 0) -> VerticalRequant:
    """The requant record of one chain link (:func:`_chain`) for the widths ``key`` (module docstring), with
    the BN statistics the link's BN holds at the width it runs at."""
    layer, q_in, bn, q_out, _, q_short, pooled = link
    unit = float(layer.step.detach()) if layer.edge else float(layer.step.detach()) / 2
    m = edge_class() if layer.edge else inner_class(layer.top)
    with torch.no_grad():
        bias = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(layer.weight.shape[0])
    in_bits, out_bits = key[:2]
    s_in = _step(q_in, in_bits)
    if isinstance(bn, SwitchableBatchNorm):
        bn_bits = out_bits if layer.edge else in_bits
        kk, offset = fold_batchnorm(bn.bns[bn.widths.index(bn_bits)], layer.bias, layer.name)
    else:
        kk, offset = np.ones_like(bias), bias
    s_out = 2.0 ** -SCORE_FRAC_BITS if q_out is None else _step(q_out, out_bits)
    gain = s_in * unit * ((1 << m) - 1) / 2 * kk / s_out / max(pooled, 1)
    negate = gain < 0
    where = f"{layer.name} {key}" + (f" (table row {row - 1})" if row else "")
    if q_short is None:
        mult, int_bias, shift = requant_params(np.abs(gain), offset / s_out, where=where)
        return VerticalRequant(in_bits, out_bits, mult, int_bias, int(shift), negate, row=row)
    res_gain = np.full(layer.weight.shape[0], _step(q_short, key[2]) / s_out)
    mult, res_mult, int_bias, shift = residual_requant_params(np.abs(gain), res_gain, offset / s_out, where=where)
    return VerticalRequant(in_bits, out_bits, mult, int_bias, int(shift), negate, res_bits=key[2],
                           res_mult=res_mult, row=row)


#: Characters of a bad Eq. 12 value an error shows (:func:`model.errors.shown`).
_CUT = 60


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def checked_eq12(model, table, row_bn) -> tuple[tuple[tuple[int, ...], ...], list | None]:
    """A checkpoint's Eq. 12 rows (its meta ``eq12_table``: per row one width per inner layer, what
    :func:`model.methods.vertical.mixed_precision_curve` chose) and their re-estimated BN statistics (``eq12_bn``:
    None, or per row None or ``{BN name: {"bits", "running_mean", "running_var"}}``), checked against ``model``
    before anything is converted. Returns the rows as integers and ``row_bn``.

    Raises
    ------
    UserError
        Naming the field (``meta.eq12_table`` row ``r``, ``meta.eq12_bn`` row ``r``), what it holds and what is
        allowed (the net's inner-layer count and stored widths).
    """
    widths, n = widths_of(model), len(inner_layers(model))
    rows = [] if table is None else table
    allowed = f"allowed a list of rows of {n} widths (one per inner layer) from the stored {list(widths)}"
    if not isinstance(rows, list | tuple):
        raise UserError(f"field 'meta.eq12_table' is {shown(rows, _CUT)}; {allowed}")
    for r, row in enumerate(rows):
        if not (isinstance(row, list | tuple) and len(row) == n and all(_is_int(b) and b in widths for b in row)):
            raise UserError(f"field 'meta.eq12_table' row {r} is {shown(row, _CUT)}; {allowed}")
    if row_bn is None:
        return tuple(tuple(int(b) for b in row) for row in rows), None
    if not (isinstance(row_bn, list | tuple) and len(row_bn) == len(rows)):
        raise UserError(f"field 'meta.eq12_bn' is {shown(row_bn, _CUT)}; allowed null or a list of {len(rows)} "
                        "entries, one per row of 'meta.eq12_table'")
    for r, state in enumerate(row_bn):
        if state is None:
            continue
        if not isinstance(state, dict) or not all(
                isinstance(name, str) and isinstance(entry, dict) and _is_int(entry.get("bits"))
                and "running_mean" in entry and "running_var" in entry for name, entry in state.items()):
            raise UserError(f"field 'meta.eq12_bn' row {r} is {shown(state, _CUT)}; allowed null or an object naming "
                            "per-width BatchNorms, each {'bits': width, 'running_mean': ..., 'running_var': ...}")
    return tuple(tuple(int(b) for b in row) for row in rows), list(row_bn)


def _row_model(model, state: dict):
    """A copy of ``model`` whose BNs in use hold the statistics ``state`` (name of a
    :class:`SwitchableBatchNorm` -> ``{"bits", "running_mean", "running_var"}``, what
    :func:`model.methods.vertical.mixed_precision_curve` re-estimated for the row)."""
    sampled = copy.deepcopy(model)
    modules = dict(sampled.named_modules())
    for name, entry in state.items():
        bn = modules.get(name)
        if not isinstance(bn, SwitchableBatchNorm) or int(entry["bits"]) not in bn.widths:
            raise UserError(f"field 'meta.eq12_bn' names {name!r} at {entry.get('bits')} bits; the model has no "
                            "such per-width BatchNorm")
        target = bn.bns[bn.widths.index(int(entry["bits"]))]
        with torch.no_grad():
            for part in ("running_mean", "running_var"):
                try:
                    value = torch.as_tensor(entry[part], dtype=target.running_mean.dtype)
                except (TypeError, ValueError, RuntimeError):
                    raise UserError(f"field 'meta.eq12_bn' {name}.{part} is {shown(entry[part], _CUT)}; allowed a list "
                                    f"of {target.running_mean.numel()} numbers") from None
                if value.shape != target.running_mean.shape:
                    raise UserError(f"field 'meta.eq12_bn' {name}.{part} has shape {tuple(value.shape)}; the BN has "
                                    f"{tuple(target.running_mean.shape)}")
                getattr(target, part).copy_(value)
    return sampled


def _name_of(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def to_golden_vertical(model, table=(), row_bn=None) -> VerticalNetwork:
    """The :class:`VerticalNetwork` of a vertical-layered ``model`` (module docstring); ``table``: Eq. 12 rows;
    ``row_bn``: per row, the BN statistics re-estimated for it (:func:`_row_model`), from which each layer with
    a BN gets the row's own requant record (Sec. 6.4; ``golden_vertical``, "Eq. 12 rows and their BatchNorm").

    Raises
    ------
    UserError
        For a net that is not vertical-layered, float edges, an unsupported architecture, or a bound.
    """
    model = on_host(model)  # the codes are read on the CPU, as from a checkpoint
    layers = vertical_layers(model)
    if not layers:
        raise UserError("the model has no vertical-layered layer; export it as a plain net")
    if any(layer.float_edge for layer in layers):
        raise UserError("the model has float first/last layers (--float-edges): no integer codes to export; "
                        f"train with {EDGE_BITS}-bit edges")
    widths = widths_of(model)
    chain = _chain(model)
    if [c[0] for c in chain] != layers:
        raise UserError("the net's layers and its vertical layers differ; cannot export")
    table, row_bn = checked_eq12(model, table, row_bn)
    out = []
    for k, link in enumerate(chain):
        layer, _, _, _, pool, q_short, pooled = link
        codes = layer.source_codes().numpy()
        if layer.edge:
            base, planes, base_bits = codes, (), EDGE_BITS
        else:
            b, p = enhance_layers(torch.from_numpy(codes), layer.top, widths[0])
            base, planes, base_bits = b.numpy(), tuple(x.numpy() for x in p), widths[0]
        records = {key: _record(link, key, widths)
                   for key in needed_pairs(len(chain), k, widths, residual=q_short is not None)}
        conv = isinstance(layer, VerticalConv2d)
        if not isinstance(layer, VerticalLinear | VerticalConv2d):
            raise UserError(f"{layer.name}: unexpected layer {type(layer).__name__}")
        out.append(VerticalLayer(
            name=layer.name, kind="conv" if conv else "linear", edge=layer.edge, base=np.asarray(base, np.int64),
            planes=tuple(np.asarray(x, np.int64) for x in planes), base_bits=base_bits,
            compensate=bool(layer.compensate), requant=records,
            stride=int(layer.stride[0]) if conv else 1, padding=int(layer.padding[0]) if conv else 0, pool=pool,
            residual=q_short is not None, gap=pooled > 0))
    image_shape = tuple(model.image_shape) if isinstance(model, SmallVGG | ResNet20) else None
    net = VerticalNetwork(input_bits=EDGE_BITS, image_shape=image_shape, widths=tuple(widths), layers=tuple(out),
                          table=table)
    for r, state in enumerate(row_bn or ()):
        if not state:
            continue
        sampled = _row_model(model, state)
        row_chain = _chain(sampled)
        for k, link in enumerate(row_chain):
            if isinstance(link[2], SwitchableBatchNorm):
                key = net.record_key(table[r], k)
                bn_bits = key[1] if link[0].edge else key[0]  # the width whose BN the record folds (_record)
                name = _name_of(sampled, link[2])
                entry = state.get(name)
                if entry is not None and int(entry["bits"]) != bn_bits:
                    raise UserError(f"field 'meta.eq12_bn' row {r}: {name} was re-estimated at "
                                    f"{entry['bits']} bits; the row runs it at {bn_bits}")
                out[k].row_requant[(r, *key)] = _record(link, key, widths, row=r + 1)
    check_vertical(net)
    return net


def vertical_input_codes(model, x: torch.Tensor) -> np.ndarray:
    """The 8-bit input codes of ``x`` (the net's input quantizer), int64 numpy; ``[N, C, H, W]`` for a conv net."""
    if isinstance(model, SmallVGG | ResNet20):
        x = x.reshape(x.shape[0], *model.image_shape)
    return on_host(model.input_quant).to_codes(x.cpu()).numpy()  # on the CPU, as from a checkpoint


def vertical_golden_accuracy(net: VerticalNetwork, model, x: torch.Tensor, y: torch.Tensor, bits) -> float:
    """Accuracy of ``net`` under ``bits`` (an int or one width per inner layer) on images ``x``."""
    golden = net.materialize(bits)
    pred = np.concatenate([golden.predict(vertical_input_codes(model, x[i:i + GOLDEN_BATCH]))
                           for i in range(0, max(len(x), 1), GOLDEN_BATCH)])
    return float((pred == y.cpu().numpy()).mean())


def export_vertical_image(model, out_dir, data=None, table=(), row_bn=None, revisions: dict | None = None,
                          where: str = "") -> dict:
    """Convert a vertical ``model`` (:func:`to_golden_vertical`, Eq. 12 rows ``table``) and write its version 4
    image (:func:`model.export.image_v4.write_vertical_image`); ``data`` (a :class:`model.data.DataRecord`)
    goes into the manifest, ``revisions`` (the code revisions of the export and of the training) into its
    ``extra``. A model that cannot be converted is a :class:`UserError` naming ``where`` (its checkpoint) where
    given. Returns the manifest."""
    try:
        net = to_golden_vertical(model, table, row_bn)
    except UserError as exc:
        if not where:
            raise
        raise UserError(f"{where}: {exc}") from None
    if data is not None and data.input_bits != net.input_bits:
        raise UserError(f"data record {data.to_json()} does not fit the network: {net.input_bits}-bit inputs")
    steps = {name: [float(s) for s in m.steps.detach()] for name, m in model.named_modules()
             if isinstance(m, VerticalActQuant)}
    extra = {"scales": {"activation_steps": steps, "weight_steps": {layer.name: float(layer.step.detach())
                                                                     for layer in vertical_layers(model)},
                        "score_frac_bits": SCORE_FRAC_BITS},
             "note": ("Eq. 12 table rows carry their own requant records with the BN statistics re-estimated for "
                      "the row (Sec. 6.4)" if row_bn else "Eq. 12 table rows use the per-width BatchNorms as "
                      "trained (no re-estimation per row recorded)"), **(revisions or {})}
    return write_vertical_image(out_dir, net, extra=extra, data=None if data is None else data.to_json())
