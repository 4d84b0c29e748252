"""Random integer networks for hardware tests (shared by the Amaranth and cocotb tests)."""

import itertools

import numpy as np

from model.golden import IntLinear, IntNetwork, requant_params


def random_network(rng: np.random.Generator, sizes=(23, 17, 5), act_bits=4,
                   probs=(0.4, 0.25, 0.15, 0.1, 0.1)) -> IntNetwork:
    """A network with element-wise widths drawn from ``probs`` over (0, 4, 8, 16, 32) and realistic requant."""
    layers = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        widths = rng.choice([0, 4, 8, 16, 32], size=(n_out, n_in), p=probs).astype(np.int64)
        top = np.where(widths == 32, (1 << 32) - 1, (1 << np.minimum(widths, 31)) - 1)
        codes = (rng.random((n_out, n_in)) * (top.astype(np.float64) + 1)).astype(np.int64)
        codes = np.minimum(codes, top) * (widths != 0)
        last = k == len(sizes) - 2
        out_bits = 0 if last else act_bits
        gain = rng.uniform(0.05, 0.6, size=n_out) * (2**act_bits - 1) / max(1, n_in) * 4
        offset = rng.normal(0, 3, size=n_out)
        mult, bias, shift = requant_params(gain, offset)
        layers.append(IntLinear(codes=codes, widths=widths, in_bits=act_bits, out_bits=out_bits,
                                mult=mult, bias=bias, shift=shift, name=f"fc{k}"))
    return IntNetwork(input_bits=act_bits, layers=tuple(layers))
