"""The array's cycle bounds of a network: what its lanes, tiles and emitters allow, layer by layer.

Torch-free, so that ``build.py sim --core array`` prints each layer's RTL cycles against its bound and ``build.py
bench accel`` records them (``sim/bench/accel.py``). The bounds count the lane cycles of each row
(:func:`~hw.dsp.pass_lane.entry_lane_cycles` of its non-zero weights) and the emitters' one code a cycle, not
loads, drains, the engines' imbalance or the global buffer's ports: what a layer's RTL cycles exceed its
bound by is the cost of those (``docs/array_design.md``, "Early starts"). :func:`dsp_bound_cycles` is the chip's
bound: every DSP48E1 of the XC7Z020 busy every cycle, at the lanes' or the packing planner's rate a weight class.
"""

from __future__ import annotations

import numpy as np

from hw.dsp.packing import plan
from hw.dsp.pass_lane import SLOTS, entry_lane_cycles
from hw.platform.synth import XC7Z020
from model.export.golden import MAX_ACT_BITS, IntNetwork
from model.export.golden_conv import IntConv2d
from model.export.golden_net import IntConvNetwork, mac_layers


def weight_layers(net: IntConvNetwork | IntNetwork):
    """:func:`~model.export.golden_net.mac_layers` of a conv network; an MLP's layers as fully connected ones
    (``(layer, 1, False, 1)`` each: the array runs an MLP as a version 3 image of FC layers)."""
    if isinstance(net, IntNetwork):
        return [(layer, 1, False, 1) for layer in net.layers]
    return list(mac_layers(net))


def row_cycles(widths: np.ndarray, act_bits: int) -> np.ndarray:
    """Each output channel's lane cycles (rows of ``widths`` ``[C_out, fan_in]``): its non-zero weights'
    :func:`~hw.dsp.pass_lane.entry_lane_cycles`, at least 1 (an all-pruned row is one entry of zeros)."""
    cost = np.zeros(widths.shape[0], dtype=np.int64)
    for m in (4, 8, 16, 32):
        cost += entry_lane_cycles(m, act_bits) * (widths == m).sum(axis=1)
    return np.maximum(cost, 1)


def layer_act_bits(layer, after_pool: bool) -> int:
    """The activation width a layer's lanes multiply by: a conv's input width; an FC after a global pool 8 bits
    (its 16-bit sums split over a lane's two slots)."""
    return MAX_ACT_BITS if after_pool else layer.in_bits


def layer_rows(layer, after_pool: bool) -> np.ndarray:
    """:func:`row_cycles` of one layer of :func:`~model.export.golden_net.mac_layers`: a conv at its input
    width; an FC after a global pool at 8-bit activations (its 16-bit sums split over a lane's two slots)."""
    widths = np.asarray(layer.widths).reshape(layer.widths.shape[0], -1)
    return row_cycles(widths, layer_act_bits(layer, after_pool))


def lane_bound_cycles(net: IntConvNetwork | IntNetwork, engines: int, lanes: int) -> int:
    """The fewest cycles an array of ``engines`` x ``lanes`` pass lanes could take for one image of ``net``,
    summed over its layers: a layer's lane work (each row's lane cycles for every pair of its output
    pixels) spread evenly over every lane, or its output codes one a cycle per engine's emitter, whichever
    is more; a fully connected layer's rows use one lane each. It counts no load, no drain and no partly
    filled tile; it is the bound the measured ``cycles_per_image`` is to be read against, not a count of it
    (a 32-bit weight costs two lane cycles a pixel, so a ticket whose work is mostly 32-bit weights is bound
    to a few times its dense32 row, whatever the rest of the array does)."""
    total = 0.0
    for layer, pixels, after_pool, _ in weight_layers(net):
        rows = layer_rows(layer, after_pool)
        if isinstance(layer, IntConv2d):
            lane_work = rows.sum() * (pixels / SLOTS) / (engines * lanes)
            total += max(lane_work, len(rows) * pixels / engines)
        else:  # the FC: one lane per row
            total += max(rows.sum(), len(rows)) / engines
    return int(np.ceil(total))


def tile_pixels(pixels: int, w_out: int, lanes: int) -> list[int]:
    """The pixels of each tile of a conv layer of ``pixels`` output pixels in rows of ``w_out``, as the controller
    cuts them: ``T // w_out`` output rows a tile (``T`` = 2 ``lanes``; at least one), the last tile the rows left."""
    h_out, per_tile = pixels // w_out, max(lanes * SLOTS // w_out, 1)
    return [min(per_tile, h_out - y) * w_out for y in range(0, h_out, per_tile)]


def layer_tile_bounds(net: IntConvNetwork | IntNetwork, engines: int, lanes: int) -> list[float]:
    """:func:`tile_bound_cycles` layer by layer (the weight layers of :func:`weight_layers`, in the order of the
    RTL's ``layer_cycles``), not rounded."""
    bounds = []
    for layer, pixels, after_pool, w_out in weight_layers(net):
        rows = layer_rows(layer, after_pool)
        if isinstance(layer, IntConv2d):
            tiles = tile_pixels(pixels, w_out, lanes)
            bounds.append(sum(float(np.maximum(rows, tile).sum()) for tile in tiles) / engines)
        else:  # the FC, as in lane_bound_cycles
            bounds.append(max(float(rows.sum()), len(rows)) / engines)
    return bounds


def tile_bound_cycles(net: IntConvNetwork | IntNetwork, engines: int, lanes: int) -> int:
    """The fewest cycles the array's tiles allow for one image of ``net``: as :func:`lane_bound_cycles`, but a
    conv layer runs as the array runs it, tile by tile (``T = 2 lanes`` pixel slots; a tile holds
    ``T // W_out`` whole output rows, the last tile what is left), each row of a tile costing its lane cycles
    (every lane of the engine works on the tile's pixels at once, the unused ones idle) or the tile's pixels
    (the emitter's one code a cycle), whichever is more, and the rows spread evenly over the engines. So it
    counts what partly filled tiles cost (ResNet-20's layer3: 49 pixels on 84 slots) and what the emitters
    cost row by row, still without loads, drains or the engines' imbalance; :func:`lane_bound_cycles` <= it.
    The sum of :func:`layer_tile_bounds`."""
    return int(np.ceil(sum(layer_tile_bounds(net, engines, lanes))))


def mac_weighted_bits(net: IntConvNetwork | IntNetwork) -> float:
    """The network's average weight width weighted by the MACs each weight takes part in: a conv weight once
    per output pixel of its layer, a fully connected one once (:func:`~model.export.golden_net.mac_layers`),
    a pruned weight at 0 bits. ``avg_weight_bits`` weights every stored weight alike; this is the average a
    multiply-accumulate sees. ``32 / mac_weighted_bits(net)`` is the speed-up over dense32 of *any* array
    whose time per MAC is proportional to the weight's bits (the paper's premise, Sec. 3.3: narrower operands,
    more products a DSP48E1) and that has no other cost: the ceiling of the ratio ``speedup_vs_dense32``
    measures, whatever the lanes, tiles and engines do. (This array's lanes are less than proportional at the
    narrow end: a 4-bit weight costs what an 8-bit one does, :func:`~hw.dsp.pass_lane.entry_lane_cycles`.)"""
    bits = macs = 0
    for layer, pixels, _, _ in weight_layers(net):
        widths = np.asarray(layer.widths)
        bits += int(widths.sum(dtype=np.int64)) * pixels
        macs += widths.size * pixels
    return bits / macs


#: How a DSP48E1 multiplies a weight of each class in :func:`dsp_bound_cycles`: ``"lanes"``, as this array's
#: pass lanes do (two pixels a lane, :func:`~hw.dsp.pass_lane.entry_lane_cycles` a weight: at 1-4-bit activations
#: a 4- or 8-bit weight 2 MACs a DSP cycle, a 16-bit one 1, a 32-bit one 0.5), or ``"planner"``, the densest
#: layout of the packing planner (:func:`hw.dsp.packing.plan`'s ``macs_per_cycle``: 4x4 4, 8x4 2, 16x4 2,
#: 32x4 1), whose P drains after every product of a 16- or 32-bit weight instead of summing a pass.
DSP_PACKINGS = ("lanes", "planner")


def class_macs_per_dsp_cycle(class_bits: int, act_bits: int, packing: str = "lanes") -> float:
    """MACs a DSP48E1 does a cycle for a ``class_bits``-bit weight at ``act_bits``-bit activations, as ``packing``
    (:data:`DSP_PACKINGS`) multiplies it."""
    if packing == "lanes":
        return SLOTS / entry_lane_cycles(class_bits, act_bits)
    if packing == "planner":
        return plan(class_bits, act_bits).macs_per_cycle
    raise ValueError(f"packing must be one of {DSP_PACKINGS}, not {packing!r}")


def dsp_bound_cycles(net: IntConvNetwork | IntNetwork, packing: str = "lanes", dsps: int = XC7Z020["dsp"]) -> int:
    """The fewest cycles ``dsps`` DSP48E1 (by default all of the XC7Z020's 220) could take for one image's
    non-zero MACs, every DSP multiplying every cycle at ``packing``'s rate for each weight's class
    (:func:`class_macs_per_dsp_cycle` at :func:`layer_act_bits`). No array, tile, emitter or control: a bound of
    the chip and the packing alone, which an array of those DSP48E1 cannot beat however its lanes are arranged
    (``docs/array_design.md``, "The ticket's composition")."""
    if not isinstance(dsps, int) or dsps < 1:
        raise ValueError(f"dsps must be a positive integer, not {dsps!r}")
    cycles = 0.0
    for layer, pixels, after_pool, _ in weight_layers(net):
        widths = np.asarray(layer.widths)
        act_bits = layer_act_bits(layer, after_pool)
        for m in (4, 8, 16, 32):
            cycles += int((widths == m).sum()) * pixels / class_macs_per_dsp_cycle(m, act_bits, packing)
    return int(np.ceil(cycles / dsps))


def layer_report(net: IntConvNetwork | IntNetwork, layer_cycles: list[list[int]], engines: int, lanes: int
                 ) -> list[dict]:
    """Each weight layer's RTL cycles (``layer_cycles``: per image, per layer, as the array testbench counts them by
    ``layer_index``; their mean over the images) against its tiles' bound (:func:`layer_tile_bounds`):
    ``{"layer", "name", "cycles", "tile_bound", "over"}`` each. Empty when no image has one count per layer (a
    run that stopped early)."""
    layers = weight_layers(net)
    counts = [c for c in layer_cycles if len(c) == len(layers)]
    if not counts:
        return []
    mean = np.mean(np.asarray(counts, dtype=np.float64), axis=0)
    bounds = layer_tile_bounds(net, engines, lanes)
    return [{"layer": k, "name": getattr(layer, "name", "") or "", "cycles": round(float(c), 1),
             "tile_bound": round(b, 1), "over": round(float(c) - b, 1)}
            for k, ((layer, *_), c, b) in enumerate(zip(layers, mean, bounds))]
