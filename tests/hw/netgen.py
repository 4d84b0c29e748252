"""Random integer networks for hardware tests (shared by the Amaranth and cocotb tests)."""

import dataclasses
import itertools

import numpy as np

from model.export.golden import IntLinear, IntNetwork, class_sums, combine, layer_forward, requant_params
from model.export.golden_conv import (
    IntConv2d,
    conv_accumulator,
    conv_forward,
    global_sum_pool,
    max_pool_codes,
    shortcut_a,
)
from model.export.golden_net import ConvStage, GlobalSumPool, IntConvNetwork, ResidualStage
from model.export.golden_vertical import TableRow, VerticalNetwork, check_vertical
from sim.bench.fuzz import calibrated_requant


def signed_codes(rng: np.random.Generator, widths: np.ndarray) -> np.ndarray:
    """Offset-binary codes ``q = c + 2^(m-1)`` of symmetric signed codes ``c`` (model/export/golden.py).

    ``c`` is uniform in ``[-(2^(m-1) - 1), 2^(m-1) - 1]``, and a fifth of the weights take one of the
    extremes ``c = +-(2^(m-1) - 1)`` (``q = 1`` or ``2^m - 1``), which uniform draws of wide codes never hit.
    Weights with ``c = 0`` are pruned, as an exporter does (zero-skipping); 0 wherever ``widths`` is 0.
    """
    half = np.int64(1) << np.maximum(widths - 1, 0)  # 2^(m-1)
    top = half - 1
    c = np.floor(rng.random(widths.shape) * (2.0 * top + 1)).astype(np.int64) - top
    c = np.clip(c, -top, top)
    extreme = rng.random(widths.shape) < 0.2
    c = np.where(extreme, np.where(rng.random(widths.shape) < 0.5, top, -top), c)
    widths[c == 0] = 0
    return np.where(widths > 0, c + half, 0)


def random_network(rng: np.random.Generator, sizes=(23, 17, 5), act_bits=4,
                   probs=(0.4, 0.25, 0.15, 0.1, 0.1), signed=False) -> IntNetwork:
    """A network with element-wise widths drawn from ``probs`` over (0, 4, 8, 16, 32) and realistic requant.

    ``signed``: the weight mode, one bool for every layer or one per layer; signed layers get symmetric
    signed codes (:func:`signed_codes`), DoReFa layers uniform DoReFa codes.
    """
    n_layers = len(sizes) - 1
    modes = [bool(signed)] * n_layers if isinstance(signed, bool) else [bool(s) for s in signed]
    if len(modes) != n_layers:
        raise ValueError(f"signed must be a bool or {n_layers} bools, not {signed!r}")
    layers = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        widths = rng.choice([0, 4, 8, 16, 32], size=(n_out, n_in), p=probs).astype(np.int64)
        if modes[k]:
            codes = signed_codes(rng, widths)
        else:
            top = np.where(widths == 32, (1 << 32) - 1, (1 << np.minimum(widths, 31)) - 1)
            codes = (rng.random((n_out, n_in)) * (top.astype(np.float64) + 1)).astype(np.int64)
            codes = np.minimum(codes, top) * (widths != 0)
        last = k == len(sizes) - 2
        out_bits = 0 if last else act_bits
        gain = rng.uniform(0.05, 0.6, size=n_out) * (2**act_bits - 1) / max(1, n_in) * 4
        offset = rng.normal(0, 3, size=n_out)
        mult, bias, shift = requant_params(gain, offset)
        layers.append(IntLinear(codes=codes, widths=widths, in_bits=act_bits, out_bits=out_bits,
                                mult=mult, bias=bias, shift=shift, name=f"fc{k}", signed=modes[k]))
    return IntNetwork(input_bits=act_bits, layers=tuple(layers))


def calibrated_layer(layer: IntConv2d | IntLinear, u, rng: np.random.Generator, residual=None
                     ) -> IntConv2d | IntLinear:
    """``layer`` with its ``M``, ``B``, ``S`` (and a residual conv's ``M_r``) calibrated on its accumulators over
    the inputs ``u`` as ``bench fuzz`` calibrates its layers (:func:`sim.bench.fuzz.calibrated_requant`, without
    its random extremes): its codes (or scores) spread over their range and depend on the input.
    ``residual``: a conv2's shortcut codes (only whether there is one matters to the calibration)."""
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
    mult, bias, shift, res = calibrated_requant(rng, flat.T, layer.out_bits, residual, p_random=0.0)
    if isinstance(layer, IntConv2d):
        return dataclasses.replace(layer, mult=mult, bias=bias, shift=shift, res_mult=res)
    return dataclasses.replace(layer, mult=mult, bias=bias, shift=shift)


def calibrated(net: IntConvNetwork, images, rng: np.random.Generator) -> IntConvNetwork:
    """``net`` with every conv layer calibrated on its accumulators over ``images`` (:func:`calibrated_layer`),
    so that the codes spread over their range and depend on the image; the FC as it is. (``make_conv``'s random
    ``B`` outweighs ``t M`` at its shift of 40: every conv output of the array tests' nets came out the same for
    every image, 2026-12-05, so the scores checked the weights' path and the requant but not which activations
    reached the lanes.)"""
    x = np.asarray(images)

    def conv(layer, u, residual=None):
        layer = calibrated_layer(layer, u, rng, residual)
        return layer, conv_forward(layer, u, residual)

    stages = []
    for stage in net.stages:
        if isinstance(stage, ConvStage):
            layer, x = conv(stage.conv, x)
            if stage.pool:
                x = max_pool_codes(x, stage.pool, stage.pool)
            stages.append(dataclasses.replace(stage, conv=layer))
        elif isinstance(stage, ResidualStage):
            one, h = conv(stage.conv1, x)
            two, x = conv(stage.conv2, h, shortcut_a(x, stage.conv2.c_out, stage.stride))
            stages.append(dataclasses.replace(stage, conv1=one, conv2=two))
        else:  # the global pool and the FC (its scores depend on its inputs as they are)
            stages.append(stage)
    return dataclasses.replace(net, stages=tuple(stages))


def calibrated_vertical(net: VerticalNetwork, images, rng: np.random.Generator) -> VerticalNetwork:
    """``net`` with every requant record calibrated (:func:`calibrated_layer`) on the accumulators of ``images``
    under the first assignment that reaches it: the table's rows first (their own records), then every uniform
    and mixed assignment of the stored widths, each run forward through the records calibrated so far.

    A record shared by several assignments (an inner layer's ``(a, b)`` reached from different upstream widths)
    is calibrated on the first one's inputs; the others see inputs of the same widths from other records, which
    keeps their codes varied too. (``random_net``'s random ``B`` of +-2^40 outweighed ``t M``: every score of
    its MLPs was the same for every image, 2026-12-05, and a bias of +-2^(S+2) did not help.)"""
    layers = [dataclasses.replace(v, requant=dict(v.requant), row_requant=dict(v.row_requant)) for v in net.layers]
    net = dataclasses.replace(net, layers=tuple(layers))
    total = sum(len(v.requant) + len(v.row_requant) for v in layers)
    done: set = set()
    runs = [*(TableRow(r) for r in range(len(net.table))), *itertools.product(net.widths, repeat=len(net.inner))]
    for bits in runs:
        if len(done) == total:
            break
        order = iter(range(len(layers)))

        def calibrate(layer, u, residual=None, bits=bits, order=order):
            k = next(order)
            key = net.record_key(bits, k)
            store, at = layers[k].requant, key
            if isinstance(bits, TableRow) and (bits.index, *key) in layers[k].row_requant:
                store, at = layers[k].row_requant, (bits.index, *key)
            if (k, at) in done:  # materialize took the calibrated record
                return layer
            layer = calibrated_layer(layer, u, rng, residual)
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
