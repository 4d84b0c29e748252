"""`build.py bench export`: how fast the version 3 packer packs a 10-million-weight network, and how close its
metadata comes to the width map's entropy.

The network is a fully connected one of ``2048 -> 2048 -> 2048 -> 800 -> 10`` (10,035,008 weights; conv
layers take the same stream encoder, row by row) with random element-wise widths drawn from two mixes:

* ``ticket``: like an IMQ ticket near 2.2 average bits (60 % pruned, 33 % 4-bit, 5 % 8-bit, 1 % each 16- and
  32-bit), the case the format is built for;
* ``uniform``: every width equally likely (the map's entropy is the largest, log2 5 = 2.32 bits).

Timed: :func:`model.export.image.pack` (the contract checks of every layer, the stream encoder, the
descriptors and regions) and, for the record, :func:`~model.export.image.unpack` (the checked reader, which
decodes row-parallel and is not part of the goal). ``export.json`` holds the ``ticket`` mix's ``weights``,
``seconds``, ``bytes``, ``metadata_bits_per_weight`` (the issue's keys) and every mix under ``mixes``. The
floor is the issue's goal: packing under :data:`PACK_SECONDS` seconds on 2 cores.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from model.bench.floors import floor_entry
from model.export.golden import MULT_BITS, IntLinear, IntNetwork
from model.export.image import memory_report, pack, unpack
from model.progress import progress_bar

#: Layer sizes: ``SIZES[i] -> SIZES[i + 1]``.
SIZES = (2048, 2048, 2048, 800, 10)
#: Width mixes over (0, 4, 8, 16, 32).
MIXES = {"ticket": (0.60, 0.33, 0.05, 0.01, 0.01), "uniform": (0.2, 0.2, 0.2, 0.2, 0.2)}
#: The goal (issue 10): pack in under this many seconds.
PACK_SECONDS = 5.0


def random_network(probs, seed: int = 0, sizes=SIZES) -> IntNetwork:
    """A fully connected network with i.i.d. widths drawn from ``probs`` and uniform codes of each width."""
    rng = np.random.default_rng(seed)
    layers = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        widths = rng.choice(np.array([0, 4, 8, 16, 32], dtype=np.int64), size=(n_out, n_in), p=probs)
        codes = rng.integers(0, 1 << 32, size=widths.shape, dtype=np.int64) & ((np.int64(1) << widths) - 1)
        last = k == len(sizes) - 2
        layers.append(IntLinear(codes=codes, widths=widths, in_bits=4, out_bits=0 if last else 4,
                                mult=rng.integers(0, 1 << MULT_BITS, n_out), bias=rng.integers(-(1 << 40), 1 << 40, n_out),
                                shift=40, name=f"fc{k + 1}"))
    return IntNetwork(input_bits=4, layers=tuple(layers))


def measure(mix: str, seed: int = 0, sizes=SIZES) -> dict:
    """Pack and unpack one network of ``mix``; its row (times, sizes, memory report)."""
    net = random_network(MIXES[mix], seed, sizes)
    start = time.perf_counter()
    words = pack(net)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    back = unpack(words)
    unpack_seconds = time.perf_counter() - start
    if not all(np.array_equal(a.codes, b.codes) and np.array_equal(a.widths, b.widths)
               for a, b in zip(net.layers, back.layers)):
        raise AssertionError("the image does not unpack to the network packed")
    report = memory_report(net, words)
    return {"mix": mix, "weights": report["weights"], "seconds": seconds, "unpack_seconds": unpack_seconds,
            "bytes": report["image_bytes"], "metadata_bits_per_weight": report["metadata_bits_per_weight"],
            "width_entropy_bits": report["width_entropy_bits"], "avg_weight_bits": report["avg_weight_bits"],
            "payload_bytes": report["payload_bytes"], "metadata_bytes": report["metadata_bytes"],
            "param_bytes": report["param_bytes"], "weights_per_second": report["weights"] / seconds}


def run_export_bench(sizes=None, progress: bool = True) -> dict:
    """Every mix (layer sizes ``sizes``, default :data:`SIZES`); the result object of ``export.json`` (without
    provenance and floors, which the command adds)."""
    sizes = SIZES if sizes is None else sizes
    rows = [measure(mix, sizes=sizes) for mix in progress_bar(MIXES, desc="bench export", disable=not progress)]
    main = rows[0]
    return {"weights": main["weights"], "seconds": main["seconds"], "bytes": main["bytes"],
            "metadata_bits_per_weight": main["metadata_bits_per_weight"], "mixes": rows,
            "layer_sizes": list(sizes)}


def floors(result: dict) -> dict[str, dict]:
    """``pack_seconds``: the ``ticket`` network packs in under :data:`PACK_SECONDS` s."""
    return {"pack_seconds": floor_entry(result["seconds"], PACK_SECONDS, "<")}
