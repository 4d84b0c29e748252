"""The array's cycle bounds of ``sim/bounds.py`` where ``tests/sim/bench/test_accel.py`` (ResNet-20's variants in
closed form) does not reach: an MLP's layers, and the per-layer report ``build.py sim --core array`` prints."""

import numpy as np
import pytest

from sim.bounds import layer_report, layer_tile_bounds, mac_weighted_bits, tile_bound_cycles, weight_layers
from tests.hw.netgen import random_network


def test_an_mlp_is_bound_as_fc_layers_one_row_a_lane():
    """Each layer of an MLP (``IntNetwork``) is a fully connected layer of one pixel: its rows' lane cycles (1 for a
    4- or 8-bit weight at 4-bit activations, 2 for a 16-bit one, 4 for a 32-bit one; an all-pruned row 1) over the
    engines."""
    net = random_network(np.random.default_rng(2), sizes=(23, 17, 5), act_bits=4)
    assert [(pixels, pooled, w_out) for _, pixels, pooled, w_out in weight_layers(net)] == [(1, False, 1)] * 2
    cost = {0: 0, 4: 1, 8: 1, 16: 2, 32: 4}
    want = []
    for layer in net.layers:
        rows = np.maximum(np.vectorize(cost.get)(layer.widths).sum(axis=1), 1)
        want.append(max(rows.sum(), len(rows)) / 3)
    assert layer_tile_bounds(net, 3, 5) == pytest.approx(want, rel=1e-12)
    assert tile_bound_cycles(net, 3, 5) == int(np.ceil(sum(want)))
    widths = np.concatenate([layer.widths.reshape(-1) for layer in net.layers])
    assert mac_weighted_bits(net) == pytest.approx(widths.mean(), rel=1e-12)  # an FC weight: one MAC an image


def test_the_layer_report_sets_each_layer_against_its_bound():
    """The mean of the images' per-layer counts against each layer's tiles' bound, with the layers' names; the
    images whose counts do not cover every layer (a run that stopped) are left out, and none left: no report."""
    rng = np.random.default_rng(4)
    net = random_network(rng, sizes=(12, 9, 4), act_bits=4)
    bounds = layer_tile_bounds(net, 2, 3)
    report = layer_report(net, [[100, 40], [110, 50], [7]], 2, 3)
    assert [row["layer"] for row in report] == [0, 1] and [row["name"] for row in report] == ["fc0", "fc1"]
    assert [row["cycles"] for row in report] == [105.0, 45.0]
    assert [row["tile_bound"] for row in report] == [round(b, 1) for b in bounds]
    assert [row["over"] for row in report] == [round(105.0 - bounds[0], 1), round(45.0 - bounds[1], 1)]
    assert layer_report(net, [[7]], 2, 3) == [] and layer_report(net, [], 2, 3) == []
