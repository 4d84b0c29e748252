"""The global-buffer words the array reads for one image, modelled: what the RTL's ``reads`` and ``weight_reads``
counters (``hw/array/top.py``) must show.

The array reads its global buffer through two ports (docs/array_design.md, "The global buffer's read ports"):
the engines' row or plane decoders read the weight words (``weight_reads``), the controller the header, the
descriptors and each row command's control words (``reads`` counts both). These functions count those words from
the packed image alone, by the schedule the controller follows: every row of every tile reads its own weight
words, none past its row, and its own control words, again on each tile. A run whose counters differ read a word
it need not, or skipped one: the scores may still be right (a word read twice gives the same codes), so the suite
(``tests/hw/array/test_top.py``), ``bench fuzz``, ``bench vertical``, ``bench accel``, ``build.py sim --core
array`` and the demo check the counts beside the scores.

Torch-free (``sim`` may use ``hw`` and ``model``'s export contract).
"""

from __future__ import annotations

import numpy as np

from hw.array.plane_decoder import BLOCK
from hw.array.top import ArrayConfig
from model.export.format import HEADER, LAYER, PARAMS, RES_PARAMS, VERTICAL_VERSION, VHEADER, VLAYER, VREQUANT
from model.export.golden import IntNetwork
from model.export.golden_conv import IntConv2d
from model.export.golden_net import IntConvNetwork
from model.export.golden_vertical import TableRow, VerticalNetwork
from model.export.image_v4 import pack_vertical, unpack_vertical
from model.export.layout_v3 import pack as pack_v3
from model.export.records import unpack_records
from model.export.weight_stream import ptr_bits
from sim.bounds import tile_pixels, weight_layers

#: A table word the controller reads and does not need (its VWIDTH state's comment said until 2026-12-07 that an
#: edge reads none): running a table row, the last edge (``layer_idx != 0``) reads the row's word of "inner layer"
#: ``layers - 2``, past the inner layers, and never uses it. Where ``inner`` is a multiple of 4 that word is past the
#: row: at the table's last row, one word past the image's end (the table is the image's last region), whatever the
#: buffer holds there. The RTL is left as it is; a fix of VWIDTH's ``wanted`` makes this 0.
LAST_EDGE_TABLE_READ = 1
#: The shell's ``precision`` register of a table row ``r``: ``TABLE_ROW + r`` (docs/image_format.md).
TABLE_ROW = 0x80


def record_fields(words, record, at) -> dict:
    """The fields of the version 4 ``record`` at word ``at`` of ``words``."""
    return {k: int(v[0]) for k, v in unpack_records(record, words[at:at + record.words], version=4).items()}


def _tiles(layers, config: ArrayConfig) -> list[int]:
    """Each layer's tiles (of :func:`sim.bounds.weight_layers`'s tuples) as the controller cuts them
    (:func:`sim.bounds.tile_pixels` of a conv's geometry; an FC one)."""
    return [len(tile_pixels(pixels, w_out, config.lanes)) if isinstance(layer, IntConv2d) else 1
            for layer, pixels, _, w_out in layers]


def weight_words_read(net: IntConvNetwork | IntNetwork, config: ArrayConfig, regions=None) -> int:
    """The global-buffer words the engines' row decoders read for one image of ``net``'s version 3 image: each
    row of each tile, from the word of its first bit to the word of its last (row ``j``'s bits run from its
    row pointer to the next one, the last row's to ``stream_bits``), none past it. ``regions``:
    :func:`model.export.layout_v3.pack`'s, where the caller packed the image already."""
    regions = pack_v3(net)[2] if regions is None else regions
    layers = weight_layers(net)
    assert len(layers) == len(regions)
    total = 0
    for n_tiles, region in zip(_tiles(layers, config), regions):
        bounds = np.append(region.stream.row_ptr, region.stream.bits)
        per_row = -(-bounds[1:] // 32) - bounds[:-1] // 32
        total += n_tiles * int(per_row.sum())
    return total


def control_words_read(net: IntConvNetwork | IntNetwork, config: ArrayConfig, regions=None) -> int:
    """The global-buffer words the controller reads for one image of ``net``'s version 3 image: the header, each
    layer's descriptor, and for each row command (every row of every tile, :func:`weight_words_read`'s tiles) the
    words holding row ``j``'s end pointer (none for the last row, whose end is the stream's length; one when the
    pointer lies in one word) and its requant record (``PARAMS``, ``RES_PARAMS`` for a residual layer): the READ
    state's schedule, which ``reads`` minus ``weight_reads`` counts. ``regions``: as :func:`weight_words_read`'s."""
    regions = pack_v3(net)[2] if regions is None else regions
    layers = weight_layers(net)
    total = HEADER.words + LAYER.words * len(layers)
    for (layer, *_), n_tiles, region in zip(layers, _tiles(layers, config), regions):
        rows, bits = len(region.stream.row_ptr), ptr_bits(region.stream.bits)
        ends = [(j + 1) * bits for j in range(rows - 1)]  # the bit of row j's end pointer; the last row has none
        per_tile = sum(1 if e % 32 + bits <= 32 else 2 for e in ends)
        residual = isinstance(layer, IntConv2d) and layer.res_mult is not None
        per_tile += rows * (RES_PARAMS.words if residual else PARAMS.words)
        total += n_tiles * per_tile
    return total


def vertical_run(net: VerticalNetwork, bits):
    """``bits`` as golden takes it: a width (0: the image's source width, ``top_bits``) or a :class:`TableRow`."""
    return bits if isinstance(bits, TableRow) else (bits or net.widths[-1])


def _vertical_layers(net: VerticalNetwork, bits, config: ArrayConfig, words=None) -> tuple[np.ndarray, list, list]:
    """``net``'s version 4 words (``words``: :func:`pack_vertical`'s, where the caller packed the image already),
    each layer's descriptor as the words hold it, and each layer's tiles under ``bits``."""
    words = (pack_vertical(net) if words is None else words).astype(np.int64)
    n = len(net.layers)
    descs = [record_fields(words, VLAYER, HEADER.words + VHEADER.words + VLAYER.words * k) for k in range(n)]
    layers = weight_layers(net.materialize(vertical_run(net, bits)))
    assert len(layers) == n
    return words, descs, _tiles(layers, config)


def vertical_weight_words_read(net: VerticalNetwork, bits, config: ArrayConfig, words=None, layout=None) -> int:
    """The global-buffer words the engines' plane decoders read for one image of ``net``'s version 4 image run
    under ``bits`` (a width, 0 for the source width, or a :class:`TableRow`): for each row ``j`` of each tile
    (:func:`_vertical_layers`), the 32-weight blocks its weights ``j fan_in .. (j + 1) fan_in - 1`` touch (a
    block shared by two rows is read by each), and per block ``base_bits + P`` aligned words: block ``k``'s
    ``base_bits`` words ``base_bits k ..`` of the base region and word ``k`` of each of the first ``P`` planes,
    ``P`` the layer's run width minus ``base_bits`` (0 for an 8-bit edge: its base words alone). ``layout``:
    :func:`_vertical_layers`'s, where the caller has it already."""
    _, descs, tiles = layout or _vertical_layers(net, bits, config, words)
    widths = iter(net.assignment(vertical_run(net, bits)))
    total = 0
    for d, n_tiles in zip(descs, tiles):
        planes = 0 if d["edge"] else next(widths) - d["base_bits"]
        first = np.arange(d["c_out"]) * d["fan_in"]
        blocks = (first + d["fan_in"] - 1) // BLOCK - first // BLOCK + 1
        total += n_tiles * int(blocks.sum()) * (d["base_bits"] + planes)
    assert next(widths, None) is None, "more inner widths than inner layers"
    return total


def vertical_control_words_read(net: VerticalNetwork, bits, config: ArrayConfig, words=None, layout=None) -> int:
    """The global-buffer words the controller reads for one image of ``net``'s version 4 image run under
    ``bits`` (as :func:`vertical_weight_words_read`): the header and the vertical header; per layer its
    descriptor; running a table row, the row's word holding this inner layer's width byte (none for an edge)
    and the one holding the next inner layer's (every layer before the last inner one), each read again per
    layer even where the layer before read it (the controller's VWIDTH state, as documented; the RTL also reads
    a word for the last edge: :data:`LAST_EDGE_TABLE_READ`, not counted here); the two-word heads of its
    requant groups in image order up to the first of the layer's ``(in_bits, out_bits[, res_bits])`` whose
    ``row`` is 0 or the table row's ``r + 1``; and for each row command (every row of every tile) the group's
    negate word holding row ``j``'s bit and its requant record (``PARAMS``, ``RES_PARAMS`` for a residual
    layer). No row pointers: a row's weights are ``j fan_in ..`` of its regions. ``layout``: as
    :func:`vertical_weight_words_read`'s."""
    words, descs, tiles = layout or _vertical_layers(net, bits, config, words)
    run = vertical_run(net, bits)
    table = isinstance(run, TableRow)
    rows = (0, run.index + 1) if table else (0,)
    n = len(descs)
    total = HEADER.words + VHEADER.words
    for k, (d, n_tiles) in enumerate(zip(descs, tiles)):
        total += VLAYER.words + (int(0 < k < n - 1) + int(k + 1 < n - 1) if table else 0)
        key = net.record_key(run, k)
        want = (*key[:2], key[2] if d["residual"] else 0)
        for g in range(d["requant_count"]):
            total += VREQUANT.words
            head = record_fields(words, VREQUANT, d["requant_base"] + g * d["group_words"])
            if (head["in_bits"], head["out_bits"], head["res_bits"]) == want and head["row"] in rows:
                break
        else:
            raise AssertionError(f"layer {k}: no requant group for {want}")
        total += n_tiles * d["c_out"] * (1 + (RES_PARAMS if d["residual"] else PARAMS).words)
    return total


def words_read(net, config: ArrayConfig, bits=None, words=None, regions=None) -> tuple[int, int]:
    """``(weight_reads, reads)`` of one image: a version 3 network's (``regions`` as :func:`weight_words_read`'s),
    or a :class:`VerticalNetwork`'s run under ``bits`` (``words`` as :func:`vertical_weight_words_read`'s; a table
    row's run with :data:`LAST_EDGE_TABLE_READ`)."""
    if isinstance(net, VerticalNetwork):
        layout = _vertical_layers(net, bits, config, words)  # (materialised once for both counts)
        weights = vertical_weight_words_read(net, bits, config, layout=layout)
        control = vertical_control_words_read(net, bits, config, layout=layout)
        return weights, weights + control + (LAST_EDGE_TABLE_READ if isinstance(bits, TableRow) else 0)
    regions = pack_v3(net)[2] if regions is None else regions
    weights = weight_words_read(net, config, regions)
    return weights, weights + control_words_read(net, config, regions)


def array_words_read(words, net, config: ArrayConfig, precision: int = 0) -> tuple[int, int]:
    """:func:`words_read` of one image of a run of ``words`` on the array at ``precision`` (the shell's register: a
    width, 0 the source width, ``TABLE_ROW + r`` row ``r`` of the Eq. 12 table): a version 4 image's words read
    back into its :class:`VerticalNetwork` (``net`` unused), else ``net``, the version 1-3 network whose version 3
    packing ``words`` are."""
    words = np.asarray(words, dtype=np.int64)
    if int(words[1]) != VERTICAL_VERSION:
        return words_read(net, config)
    # as the testbench drives the array's inputs (sim/tb/array.py set_precision)
    bits = TableRow(precision & 0x7F) if precision & TABLE_ROW else precision & 0xF
    return words_read(unpack_vertical(words), config, bits, words=words)


def read_mismatches(weight_reads, reads, want: tuple[int, int], images: int) -> int:
    """The images of a run (``images`` of them) whose ``(weight_reads, reads)`` counters (one per image that came
    back) differ from ``want``, and those that did not come back."""
    pairs = list(zip(weight_reads, reads, strict=True))
    if len(pairs) > images:
        raise ValueError(f"{len(pairs)} images' counters for a run of {images} images")
    return sum(pair != tuple(want) for pair in pairs) + images - len(pairs)
