"""``bench fuzz``'s vertical part: random version 4 (vertical-layered) networks through the array's RTL.

Every network is drawn at random within what its build of the array with the version 4 path holds
(:data:`VCONFIGS`: :data:`sim.bench.fuzz.CONFIG` with the plane decoders, three engines of four lanes or one of
seven): MLPs of one to three inner layers, and conv nets of an 8-bit edge stem (kernels 1 to 7, any padding,
stride 1 or 2, optional 2 x 2 max-pool), one to three inner stages (plain convs with an optional max-pool, or residual blocks of stride 1 or 2 with option
A's zero channels) and the 8-bit FC edge on the global pool or on the flattened map. The stored widths are
consecutive, from a basic layer of 2 to 6 bits up to at most :data:`~hw.array.controller.MAX_VERTICAL_TOP` (the
array's plane decoders); each inner layer is a random source code of the top width with 0 to 99 % of them zero,
split into its basic layer and enhance planes (Eq. 3 of the vertical-layering paper, ``c_(k+1) = 2 c_k + b_(k+1)``);
each layer compensates (Eq. 6's ``K_t``) or not, and negates a random third of its outputs (a negative BN gain). Up
to three Eq. 12 table rows, and for some of them per-row requant records (BN re-estimated for the row). Every record
is calibrated on the network's own inputs (:func:`sim.bench.calibrate.calibrated_vertical`), one in thirty keeping
random extremes (:data:`P_RANDOM`).

Each network runs at one to three of: a uniform stored width, the source width (``precision`` 0), a table row
(``0x80 + r``: its own records where it has them), one network after another on two RTL builds with the version 4
path (:data:`VCONFIGS`: three engines of four lanes, and one engine of seven, beside :mod:`sim.bench.fuzz`'s two;
the networks take them in turn, each drawn for its build), under random back-pressure on every stream; each image's
scores must equal golden's (:meth:`~model.export.golden_vertical.VerticalNetwork.forward` at those widths), and
its global-buffer words read the model's (:func:`sim.reads.words_read` at those widths).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from hw.array.controller import MAX_VERTICAL_TOP
from hw.array.top import ArrayConfig
from hw.platform.verilog import array_verilog, write_text_atomically
from model.errors import UserError
from model.export.golden_vertical import (
    EDGE_BITS,
    MIN_BITS,
    TableRow,
    VerticalLayer,
    VerticalNetwork,
    VerticalRequant,
    check_vertical,
    needed_pairs,
)
from model.export.image_v4 import pack_vertical
from model.progress import progress_bar
from sim.bench.calibrate import calibrated_vertical
from sim.bench.fuzz import CHUNK, CONFIG, RUN_COUNTS, config_record, fits, gather_builds, part_floors, run_chunk
from sim.reads import TABLE_ROW, words_read

#: The array the vertical networks run on: the fuzz's, with the version 4 path, and three engines of four lanes
#: (8-pixel tiles) rather than two of five, so that the fuzz also covers an odd engine count (the third engine
#: reads a patch copy of its own, hw/array/top.py) and another tile width.
VCONFIG = dataclasses.replace(CONFIG, engines=3, lanes=4, vertical=True)
#: The second build: one engine of seven lanes (14-pixel tiles), as the version 3 part's second build
#: (docs/array_design.md, "A deadlock on one engine": timing-dependent faults show on one engine first).
V_ONE_ENGINE = dataclasses.replace(VCONFIG, engines=1, lanes=7)
#: The vertical part's builds, taken in turn by the networks.
VCONFIGS = (VCONFIG, V_ONE_ENGINE)
#: The floor on each build's share of the layers (the networks alternate, so each gets about half).
VBUILD_LAYERS = 800
#: How often a layer's share of zero codes is 0, 30, 60, 90, 99 % or uniform in 0-99 %: a trained vertical net
#: has no pruning, and a network with a 99 % zero layer mostly scores every input the same (an empty row), so
#: the extremes are rarer than in the version 3 fuzz's layers.
ZERO_SHARES = (0.35, 0.2, 0.15, 0.05, 0.05, 0.2)
#: The chance that a record keeps random extremes of ``M``, ``B``, ``S`` (the version 3 fuzz: one in ten). An
#: extreme record mostly saturates its layer, and every layer after it then sees the same codes for every input;
#: the requantizer's extremes are the version 3 fuzz's to cover, the planes and widths this part's.
P_RANDOM = 1 / 30


def _signed(rng, shape, bits: int) -> np.ndarray:
    """Signed ``bits``-bit codes: uniform, a fifth at the two extremes, and a random share (0 to 99 %,
    :data:`ZERO_SHARES`) zero."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = rng.integers(low, high + 1, size=shape)
    extreme = rng.random(shape)
    codes = np.where(extreme < 0.1, low, np.where(extreme > 0.9, high, codes))
    zero = float(rng.choice([0.0, 0.3, 0.6, 0.9, 0.99, rng.uniform(0, 0.99)], p=ZERO_SHARES))
    return np.where(rng.random(shape) < zero, 0, codes).astype(np.int64)


def split_planes(codes: np.ndarray, top: int, base_bits: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The basic layer (``base_bits`` bits) and the enhance planes (MSB first) of ``top``-bit signed ``codes``:
    ``compose(base, planes) == codes`` (golden_vertical's :func:`~model.export.golden_vertical.compose`, Eq. 3).
    (model/quant/lsq.py's ``enhance_layers`` does the same in torch; the bench stays torch-free.)"""
    shift = top - base_bits
    base = codes >> shift  # floor: the arithmetic shift of two's complement
    planes = tuple((codes >> (shift - 1 - i)) & 1 for i in range(shift))
    return base, planes


def _records(rng, n_out: int, keys, residual: bool) -> dict:
    """Placeholder records (calibrated later) for ``keys``: ``M = 0``, ``B = 0``, ``S = 1``, random negations."""
    zeros = np.zeros(n_out, dtype=np.int64)
    negate = rng.random(n_out) < 1 / 3
    return {key: VerticalRequant(key[0], key[1], zeros, zeros, 1, negate,
                                 **({"res_bits": key[2], "res_mult": zeros} if residual else {}))
            for key in keys}


def _layer(rng, name: str, kind: str, shape, edge: bool, widths, net_layers: int, k: int, **geometry
           ) -> VerticalLayer:
    residual = bool(geometry.get("residual"))
    keys = needed_pairs(net_layers, k, widths, residual=residual)
    if edge:
        base, planes, base_bits = _signed(rng, shape, EDGE_BITS), (), EDGE_BITS
    else:
        base, planes = split_planes(_signed(rng, shape, widths[-1]), widths[-1], widths[0])
        base_bits = widths[0]
    return VerticalLayer(name, kind, edge, base, planes, base_bits, bool(rng.integers(0, 2)),
                         _records(rng, shape[0], keys, residual), **geometry)


def _widths(rng) -> tuple[int, ...]:
    base = int(rng.integers(MIN_BITS, MAX_VERTICAL_TOP + 1))
    return tuple(range(base, int(rng.integers(base, MAX_VERTICAL_TOP + 1)) + 1))


def random_vertical_mlp(rng, widths) -> tuple[list, None]:
    """An 8-bit edge, one to three inner layers, the 8-bit edge: up to 40 inputs, 16 outputs a layer."""
    sizes = [int(rng.integers(1, 41))] + [int(rng.integers(1, 17)) for _ in range(int(rng.integers(3, 6)))]
    n = len(sizes) - 1
    layers = [_layer(rng, f"fc{k}", "linear", (sizes[k + 1], sizes[k]), k in (0, n - 1), widths, n, k)
              for k in range(n)]
    return layers, None


def random_vertical_conv(rng, widths, config: ArrayConfig = VCONFIG) -> tuple[list, tuple[int, int, int]]:
    """An 8-bit edge stem, one to three inner stages (a conv with an optional max-pool, or a residual block), the
    8-bit FC edge on the global pool or the flattened map; every map within ``config``."""
    t, rc = config.pixels, config.row_codes
    c0 = int(rng.integers(1, 4))
    while True:
        size = int(rng.integers(3, min(rc, 2 * t) + 1))
        k = int(rng.choice([1, 3, 5, 7]))
        pad, stride = int(rng.integers(0, k)), int(rng.integers(1, 3))
        if size + 2 * pad >= k and (size + 2 * pad - k) // stride + 1 <= t:
            break
    # (c_out, kernel, stride, padding, pool, residual) per conv layer; the FC edge follows.
    h = (size + 2 * pad - k) // stride + 1
    pool = 2 if h >= 2 and rng.random() < 0.4 else 0
    plan = [(int(rng.integers(1, 9)), k, stride, pad, pool, False)]
    ch, h = plan[0][0], h // 2 if pool else h
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:  # a residual block: conv1 (stride s), conv2 (the shortcut's add)
            s = int(rng.integers(1, 3)) if h >= 2 else 1
            c_out = int(rng.integers(ch, min(ch + 4, 16) + 1))
            plan += [(c_out, 3, s, 1, 0, False), (c_out, 3, 1, 1, 0, True)]
            ch, h = c_out, -(-h // s)
        else:
            kk = int(rng.choice([1, 3]))
            p = 2 if h >= 2 and rng.random() < 0.3 else 0
            plan.append((int(rng.integers(1, 9)), kk, 1, kk // 2, p, False))
            ch, h = plan[-1][0], h // 2 if p else h
    gap = rng.random() < 0.5 or ch * h * h >= 1 << config.fan_in_width
    n = len(plan) + 1
    layers, c_in = [], c0
    for k, (c_out, kk, s, p, pl, res) in enumerate(plan):
        layers.append(_layer(rng, f"conv{k}", "conv", (c_out, c_in, kk, kk), k == 0, widths, n, k, stride=s,
                             padding=p, pool=pl, residual=res))
        c_in = c_out
    layers.append(_layer(rng, "fc", "linear", (int(rng.integers(1, 17)), ch if gap else ch * h * h), True, widths,
                         n, n - 1, gap=bool(gap)))
    return layers, (c0, size, size)


def random_vertical_network(rng, calib: int = 4, config: ArrayConfig = VCONFIG) -> VerticalNetwork:
    """A conv net three times in four, else an MLP, with its table rows and row records, calibrated on
    ``calib`` random inputs; redrawn until it passes :func:`check_vertical`, packs and fits ``config``."""
    while True:
        widths = _widths(rng)
        layers, shape = random_vertical_conv(rng, widths, config) if rng.random() < 0.75 else \
            random_vertical_mlp(rng, widths)
        inner = sum(not layer.edge for layer in layers)
        table = tuple(tuple(int(w) for w in rng.choice(widths, inner)) for _ in range(int(rng.integers(0, 4))))
        net = VerticalNetwork(EDGE_BITS, shape, widths, tuple(layers), table)
        for r, row in enumerate(table):  # some rows re-estimated their BN: records of their own
            if rng.random() < 0.5:
                for k, layer in enumerate(layers):
                    if rng.random() < 0.5:
                        key = net.record_key(row, k)
                        own = _records(rng, layer.n_out, [key], layer.residual)[key]
                        layer.row_requant[(r, *key)] = dataclasses.replace(own, row=r + 1)
        try:
            check_vertical(net)
            x = rng.integers(0, 1 << EDGE_BITS, size=(calib, *(shape or (layers[0].base.shape[1],))))
            net = calibrated_vertical(net, x, rng, p_random=P_RANDOM)
            if fits(pack_vertical(net), config):
                return net
        except UserError:
            continue


def precisions(rng, net: VerticalNetwork) -> list[tuple[int, object]]:
    """One to three distinct ``(precision, bits)`` a run uses: a stored width (``precision`` the width), the
    source width (``precision`` 0) or a table row (``TABLE_ROW + r``, golden's :class:`TableRow`)."""
    options = [(int(w), int(w)) for w in net.widths] + [(0, int(net.widths[-1]))]
    options += [(TABLE_ROW + r, TableRow(r)) for r in range(len(net.table))]
    picks = rng.choice(len(options), size=min(len(options), int(rng.integers(1, 4))), replace=False)
    return [options[int(i)] for i in picks]


def network_counts(net: VerticalNetwork) -> dict[str, int]:
    """What one network covers, for the result's totals."""
    row_records = sum(len(layer.row_requant) for layer in net.layers)
    return {
        "inner_layers": len(net.inner),
        "conv_nets": int(net.image_shape is not None),
        "mlps": int(net.image_shape is None),
        "residual_blocks": sum(layer.residual for layer in net.layers),
        "pooled": sum(bool(layer.pool) for layer in net.layers),
        "gap": sum(layer.gap for layer in net.layers),
        "compensated": sum(layer.compensate and not layer.edge for layer in net.layers),
        "table_rows": len(net.table),
        "row_records": row_records,
        "planes": sum(len(layer.planes) for layer in net.layers),
    }


def run_vertical_fuzz(out_dir: Path, *, layers: int = 2_000, seed: int = 0, simulator: str = "verilator",
                      progress: bool = True, configs: tuple[ArrayConfig, ...] = VCONFIGS) -> dict:
    """Draw vertical networks until they hold ``layers`` weight layers (and every build of ``configs`` has one),
    each for the build whose turn it is, and run each at its :func:`precisions`, a chunk of :data:`CHUNK` cases a
    build at a time; the result record (``layers``, ``networks``, ``cases``: network-and-width runs, ``runs``:
    simulator runs, ``images``, ``mismatches``, ``read_mismatches``, ``deadlocks``, ``not_run``, ``failed_runs``
    (:func:`sim.bench.fuzz.run_chunk`'s), what the networks cover, ``precisions``: cases per kind,
    ``input_dependent``: networks whose scores at their first width differ over four probe images, the rest scoring
    every input the same: an all-zero or saturated layer; ``builds``: the run counts per build)."""
    rng = np.random.default_rng([seed, 4])
    out_dir = Path(out_dir)
    vpaths = [write_text_atomically(out_dir / f"mpq_array_v4_{c.engines}x{c.lanes}.v", array_verilog(c))
              for c in configs]
    t0 = time.perf_counter()
    total = {"layers": 0, "networks": 0, "cases": 0, "images": 0, "mismatches": 0, "read_mismatches": 0,
             "deadlocks": 0, "not_run": 0,
             "sim_cycles": 0, "failed_runs": [], "input_dependent": 0,
             "precisions": {"width": 0, "source": 0, "table_row": 0}}
    builds = [{"config": {**config_record(c), "vertical": c.vertical}, "layers": 0, "networks": 0, "cases": 0, "runs": 0,
               **dict.fromkeys(RUN_COUNTS, 0), "failed_runs": [], "seconds": 0.0} for c in configs]
    covered: dict[str, int] = {}
    bar = progress_bar(total=layers, unit="layer", disable=not progress, desc="fuzz (vertical)")
    run = 0

    def wanted() -> bool:
        return total["layers"] < layers or any(b["networks"] == 0 for b in builds)

    while wanted():
        chunks: list[list] = [[] for _ in configs]
        reads: list[list] = [[] for _ in configs]
        while max(len(c) for c in chunks) < CHUNK and wanted():
            b = total["networks"] % len(configs)
            net = random_vertical_network(rng, config=configs[b])
            words = pack_vertical(net).astype(np.int64)
            shape = net.image_shape or (net.layers[0].base.shape[1],)
            runs = precisions(rng, net)
            probe = rng.integers(0, 1 << EDGE_BITS, size=(4, *shape))
            total["input_dependent"] += int(len(np.unique(net.forward(probe, runs[0][1]), axis=0)) > 1)
            for precision, bits in runs:
                x = rng.integers(0, 1 << EDGE_BITS, size=(int(rng.integers(1, 3)), *shape))
                chunks[b].append((words, x.reshape(len(x), -1), net.forward(x, bits).astype(np.int64), precision))
                reads[b].append(words_read(net, configs[b], bits, words=words))
                kind = "table_row" if precision >= TABLE_ROW else "source" if precision == 0 else "width"
                total["precisions"][kind] += 1
            for key, value in network_counts(net).items():
                covered[key] = covered.get(key, 0) + value
            for record in (total, builds[b]):
                record["networks"] += 1
                record["layers"] += len(net.layers)
            bar.update(len(net.layers))
        for b, cases in enumerate(chunks):
            if not cases:
                continue
            t_run = time.perf_counter()
            run_chunk(vpaths[b], cases, out_dir / "sim_v4", simulator, seed * 1000 + 500 + run, run, builds[b],
                      reads[b])
            builds[b]["seconds"] += time.perf_counter() - t_run
            builds[b]["runs"] += 1
            for record in (total, builds[b]):
                record["cases"] += len(cases)
            run += 1
    bar.close()
    gather_builds(total, builds)
    total.update(covered=covered, seconds=round(time.perf_counter() - t0, 1), runs=run)
    return total


def floors(result: dict, layers: int = 2_000) -> dict:
    """The vertical part's floors: ``layers`` weight layers, :data:`VBUILD_LAYERS` of them on each build, and every
    image run and equal to golden's."""
    return part_floors(result, layers, VBUILD_LAYERS, prefix="vertical ")
