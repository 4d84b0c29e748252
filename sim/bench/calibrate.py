"""Requantizer calibration of random integer networks: ``bench fuzz``'s layers and the tests' random nets.

A random network's requantizer (``M``, ``B``, ``S`` of :func:`model.export.golden.requantize`) drawn at random
mostly saturates: a random ``B`` outweighs ``t M``, and every input gives the same codes. A hardware test of
such a net checks the weights' path and the requantizer but not which activations reached the lanes. So each
layer's requantizer is set from its own accumulators on a few inputs (golden's ``requant_params`` mapping each
channel's 5th to 95th percentile onto the code range), layer after layer through the calibrated layers before.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from model.export.golden import MULT_BITS, IntLinear, IntNetwork, class_sums, combine, layer_forward, requant_params
from model.export.golden_conv import (
    IntConv2d,
    conv_accumulator,
    conv_forward,
    global_sum_pool,
    max_pool_codes,
    shortcut_a,
)
from model.export.golden_net import ConvStage, GlobalSumPool, ResidualStage
from model.export.golden_vertical import TableRow, VerticalNetwork, check_vertical


def calibrated_requant(rng, acc: np.ndarray, out_bits: int, residual: np.ndarray | None = None,
                       p_random: float = 0.1):
    """``(mult, bias, shift, res_mult)`` mapping each channel's accumulator (axis 1) to the code range, or
    random extremes with probability ``p_random``. ``acc`` is ``[N, C, ...]``; ``residual`` the shortcut codes."""
    c = acc.shape[1]
    if rng.random() < p_random:
        shift = int(rng.integers(1, 63))
        bias = rng.integers(-(1 << min(62, shift + 8)), 1 << min(62, shift + 8), size=c)
        res = rng.integers(0, 1 << MULT_BITS, size=c) if residual is not None else None
        return rng.integers(0, 1 << MULT_BITS, size=c), bias, shift, res
    flat = np.moveaxis(acc, 1, 0).reshape(c, -1).astype(np.float64)
    lo, hi = np.percentile(flat, 5, axis=1), np.percentile(flat, 95, axis=1)
    top = (1 << out_bits) - 1 if out_bits else 1000
    span = np.maximum(hi - lo, 1.0)
    gain = top * float((1 << 32) - 1) / span
    offset = -gain * lo / float((1 << 32) - 1)
    if residual is not None:
        offset = offset - 0.5 * top
    mult, bias, shift = requant_params(gain, offset, where="fuzz")
    res = None
    if residual is not None:
        g_r = rng.uniform(0.2, 1.0) * top / 255.0
        scale = 2.0 ** (shift - 16)
        need = g_r * scale
        drop = int(np.ceil(np.log2(need / ((1 << MULT_BITS) - 1)))) + 1 if need >= 1 << MULT_BITS else 0
        if drop:
            mult, bias, shift = mult >> drop, bias >> drop, shift - drop
            scale = 2.0 ** (shift - 16)
        res = np.minimum(np.round(g_r * scale * np.ones(c)), (1 << MULT_BITS) - 1).astype(np.int64)
    return mult, bias, shift, res


def calibrated_layer(layer: IntConv2d | IntLinear, u, rng: np.random.Generator, residual=None,
                     p_random: float = 0.0) -> IntConv2d | IntLinear:
    """``layer`` with its ``M``, ``B``, ``S`` (and a residual conv's ``M_r``) calibrated on its accumulators over
    the inputs ``u`` (:func:`calibrated_requant`): its codes (or scores) spread over their range and depend on
    the input. ``residual``: a conv2's shortcut codes (only whether there is one matters to the calibration);
    ``p_random``: the chance of random extremes instead (the version 3 fuzz's one layer in ten)."""
    if isinstance(layer, IntConv2d):
        acc = np.moveaxis(conv_accumulator(layer, u), 1, 0).reshape(layer.c_out, -1)
    else:
        acc = np.asarray(combine(*class_sums(layer, u), layer.signed)).T
    # A channel whose accumulator hardly varies (all its weights pruned, say) has no M that maps its range to
    # the codes' (requant_params refuses the gain): it takes the widest channel's (its codes stay constant).
    # (The span calibrated_requant maps: the 5th to the 95th percentile; its gain must stay below 2^32.)
    span = np.percentile(acc, 95, axis=1) - np.percentile(acc, 5, axis=1)
    narrow = span <= 4 * ((1 << layer.out_bits) - 1 if layer.out_bits else 1000)
    if narrow.all():  # (every channel, or a one-pixel map of one image: each value and itself + 2^20)
        flat = np.concatenate([acc, acc + (1 << 20)], axis=1)
    else:
        flat = np.where(narrow[:, None], acc[int(np.argmax(span))][None, :], acc)
    mult, bias, shift, res = calibrated_requant(rng, flat.T, layer.out_bits, residual, p_random)
    if isinstance(layer, IntConv2d):
        return dataclasses.replace(layer, mult=mult, bias=bias, shift=shift, res_mult=res)
    return dataclasses.replace(layer, mult=mult, bias=bias, shift=shift)


def covering_assignments(widths, inner: int) -> list[tuple[int, ...]]:
    """Assignments of ``inner`` layers in which every three consecutive layers take every triple of ``widths``
    (every assignment when ``inner <= 3``; else the ``len(widths)^3`` periodic ones ``(a, b, c, a, b, c, ...)``):
    a layer's requant record depends on its own width, the next layer's and, for a residual layer, the layer
    before's (:meth:`~model.export.golden_vertical.VerticalNetwork.record_key`), so these reach every record
    (5 widths over 6 inner layers: 125 assignments, not 15,625)."""
    if inner <= 3:
        return list(itertools.product(widths, repeat=inner))
    return [tuple(t[i % 3] for i in range(inner)) for t in itertools.product(widths, repeat=3)]


def _record_at(net: VerticalNetwork, bits, k: int) -> tuple[dict, tuple[int, ...]]:
    """The record layer ``k`` uses under ``bits``: ``(requant, key)``, or ``(row_requant, (r, *key))`` where the
    table row has its own (as :meth:`~model.export.golden_vertical.VerticalNetwork.materialize` picks it)."""
    layer, key = net.layers[k], net.record_key(bits, k)
    if isinstance(bits, TableRow) and (bits.index, *key) in layer.row_requant:
        return layer.row_requant, (bits.index, *key)
    return layer.requant, key


def calibrated_vertical(net: VerticalNetwork, images, rng: np.random.Generator, p_random: float = 0.0
                        ) -> VerticalNetwork:
    """``net`` with every requant record calibrated (:func:`calibrated_layer`) on the accumulators of ``images``
    under the first assignment that reaches it: the table's rows first (their own records), then
    :func:`covering_assignments` (the uniform ones among them), each run forward through the records calibrated so
    far; an assignment that reaches no record left is skipped.

    A record shared by several assignments (an inner layer's ``(a, b)`` reached from different upstream widths)
    is calibrated on the first one's inputs; the others see inputs of the same widths from other records, which
    keeps their codes varied too. ``p_random`` as in :func:`calibrated_layer`. Returns a new network (the
    records of ``net`` are left as they are)."""
    layers = [dataclasses.replace(v, requant=dict(v.requant), row_requant=dict(v.row_requant)) for v in net.layers]
    net = dataclasses.replace(net, layers=tuple(layers))
    total = sum(len(v.requant) + len(v.row_requant) for v in layers)
    done: set = set()
    runs = [*(TableRow(r) for r in range(len(net.table))), *covering_assignments(net.widths, len(net.inner))]
    for bits in runs:
        if len(done) == total:
            break
        if all((k, _record_at(net, bits, k)[1]) in done for k in range(len(layers))):
            continue  # nothing new to calibrate under these widths
        order = iter(range(len(layers)))

        def calibrate(layer, u, residual=None, bits=bits, order=order):
            k = next(order)
            store, at = _record_at(net, bits, k)
            if (k, at) in done:  # materialize took the calibrated record
                return layer
            layer = calibrated_layer(layer, u, rng, residual, p_random)
            res = {"res_mult": layer.res_mult} if residual is not None else {}
            store[at] = dataclasses.replace(store[at], mult=layer.mult, bias=layer.bias, shift=layer.shift, **res)
            done.add((k, at))
            return layer

        x = np.asarray(images)
        materialized = net.materialize(bits)
        if isinstance(materialized, IntNetwork):
            for layer in materialized.layers:
                x = layer_forward(calibrate(layer, x), x)
            continue
        for stage in materialized.stages:
            if isinstance(stage, ConvStage):
                conv = calibrate(stage.conv, x)
                x = conv_forward(conv, x)
                if stage.pool:
                    x = max_pool_codes(x, stage.pool, stage.pool)
                x_bits = conv.out_bits
            elif isinstance(stage, ResidualStage):
                one = calibrate(stage.conv1, x)
                h = conv_forward(one, x)
                r = shortcut_a(x, stage.conv2.c_out, stage.stride)
                two = calibrate(stage.conv2, h, r)
                x, x_bits = conv_forward(two, h, r), two.out_bits
            elif isinstance(stage, GlobalSumPool):
                x = global_sum_pool(x, x_bits)
            else:
                fc = calibrate(stage.layer, x.reshape(len(x), -1))
                x = layer_forward(fc, x.reshape(len(x), -1))
    check_vertical(net)
    return net
