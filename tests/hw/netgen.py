"""Random integer networks for hardware tests (shared by the Amaranth and cocotb tests)."""

import dataclasses
import itertools

import numpy as np

from model.export.golden import IntLinear, IntNetwork, requant_params
from model.export.golden_conv import conv_forward, max_pool_codes, shortcut_a
from model.export.golden_net import ConvStage, IntConvNetwork, ResidualStage
from sim.bench.calibrate import calibrated_layer


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
