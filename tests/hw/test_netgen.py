"""The random test networks (tests/hw/netgen.py and the generators built on it) depend on their inputs.

A net whose requant biases outweigh ``t M`` scores every input the same, and a hardware test of it then checks
the weights' path and the requant but not which activations reached the lanes (every array test's conv nets
and every random vertical MLP did, until 2026-12-05)."""

import itertools

import numpy as np
import pytest

from sim.bench.calibrate import calibrated_vertical
from tests.hw.array.test_top import random_conv_net
from tests.hw.netgen import calibrated, random_network
from tests.model.export.test_image_v4 import random_net, random_resnet
from tests.model.export.test_layout_v3 import resnet_like


def distinct_rows(scores: np.ndarray) -> int:
    return len({tuple(int(v) for v in row) for row in scores})


@pytest.mark.parametrize("seed", range(3))
def test_calibrated_conv_nets_score_each_image_differently(seed):
    for net in (resnet_like(np.random.default_rng(seed)), random_conv_net(np.random.default_rng(1000 + seed))):
        x = np.random.default_rng(seed).integers(0, 1 << net.input_bits, size=(8, *net.image_shape))
        assert distinct_rows(calibrated(net, x, np.random.default_rng(seed)).forward(x)) >= 6


def test_random_mlps_score_each_input_differently():
    net = random_network(np.random.default_rng(4), sizes=(23, 17, 5), act_bits=4)
    x = np.random.default_rng(4).integers(0, 16, size=(8, 23))
    assert distinct_rows(net.forward(x)) >= 6


@pytest.mark.parametrize("make, shape", [
    (lambda: random_net(7, sizes=(20, 40, 12, 12, 12, 12, 10, 6), rows=2), (20,)),
    (lambda: random_net(9, sizes=(23, 14, 12, 5), rows=1), (23,)),
    (lambda: random_resnet(5, rows=2, row_groups=True), None),
])
def test_random_vertical_nets_score_each_input_differently_at_every_width_and_row(make, shape):
    """On inputs other than those they were calibrated on, at every uniform width, every table row (their own
    records where they have them) and, for the residual net, every mixed assignment."""
    net = make()
    x = np.random.default_rng(99).integers(0, 256, size=(8, *(shape or net.image_shape)))
    assignments = [*net.widths, *net.table]
    if net.image_shape:
        assignments += list(itertools.product(net.widths, repeat=len(net.inner)))
    for bits in assignments:
        assert distinct_rows(net.forward(x, bits)) >= 6, bits


def test_calibrated_vertical_changes_only_the_requant_and_keeps_the_input_net():
    raw = random_net(3, sizes=(12, 8, 8, 4), rows=2, calibrate=False)
    x = np.random.default_rng(0).integers(0, 256, size=(8, 12))
    assert all(distinct_rows(raw.forward(x, b)) == 1 for b in raw.widths)  # the random extremes: constant
    net = calibrated_vertical(raw, x, np.random.default_rng(0))
    assert all(distinct_rows(net.forward(x, b)) == 8 for b in net.widths)
    for a, b in zip(raw.layers, net.layers, strict=True):
        assert np.array_equal(a.base, b.base) and sorted(a.requant) == sorted(b.requant)
        for key, record in a.requant.items():
            assert np.array_equal(record.negate, b.requant[key].negate)
            assert not np.array_equal(record.bias, b.requant[key].bias)  # calibrated: a new offset
    assert all(distinct_rows(raw.forward(x, b)) == 1 for b in raw.widths)  # raw's records untouched
