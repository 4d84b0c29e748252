"""Image format version 4: one image holds a whole vertical-layered network
(:class:`~model.export.golden_vertical.VerticalNetwork`; ``docs/image_format.md``, "Version 4").

Words, in order (every address a word address, every region word aligned):

1. the 8-word header (:data:`~model.export.format.HEADER`, ``version = 4``, ``layers`` = all weight layers,
   ``input_bits`` = 8, the input shape and ``fmap_codes`` as version 3 computes them at the source width);
2. the vertical header (:data:`~model.export.format.VHEADER`): stored widths, inner layer count, width table;
3. one :data:`~model.export.format.VLAYER` descriptor per layer, input to output;
4. per layer its **weight region**, plane-major: the base region (``c_out * fan_in`` signed ``base_bits``-bit
   codes in two's complement, weight ``j * fan_in + i`` at bit ``base_bits (j fan_in + i)``, least significant
   bit first), then each enhance plane (one bit per weight, same order) from ``b_(base+1)`` to ``b_top``. At
   width ``i`` a reader fetches the first ``base_words + (i - base_bits) plane_words`` words: a prefix. An edge
   has its 8-bit codes in the base region and no planes. Then its **requant groups**, one per ``(in_bits,
   out_bits)`` pair (``(in_bits, out_bits, res_bits)`` for a residual layer), each table row's own groups
   (``row = r + 1``: BN re-estimated for the row) before the width groups (``row = 0``): a two-word
   :data:`~model.export.format.VREQUANT` head, ``c_out`` :data:`~model.export.format.PARAMS` records (``M``,
   ``B``; :data:`~model.export.format.RES_PARAMS` with ``M_r`` for a residual layer), and ``ceil(c_out / 32)`` words of ``negate`` bits (output ``j`` at bit ``j % 32`` of
   word ``j / 32``; bits past ``c_out`` reserved);
5. the Eq. 12 width table (``table_rows`` rows of ``ceil(inner / 4)`` words, one byte per inner layer).

:func:`pack_vertical` and :func:`unpack_vertical` are inverses; the reader checks every field (reserved bits
included, addresses recomputed) and raises :class:`~model.errors.UserError` naming the file, the field and the
allowed values, then checks the network (:func:`~model.export.golden_vertical.check_vertical`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from model.errors import UserError
from model.export import layout_v3
from model.export.format import (
    HEADER,
    KIND_CONV,
    KIND_FC,
    MAGIC,
    PARAMS,
    RES_PARAMS,
    VERTICAL_VERSION,
    VHEADER,
    VLAYER,
    VREQUANT,
    WORD_BITS,
)
from model.export.golden import BIAS_MAX, BIAS_MIN, MAX_ACT_BITS, MAX_SHIFT, MULT_BITS
from model.export.golden_vertical import (
    EDGE_BITS,
    MAX_BITS,
    MIN_BITS,
    VerticalLayer,
    VerticalNetwork,
    VerticalRequant,
    check_vertical,
)
from model.export.image import (
    check_described_fields,
    pack,
    read_image,
    read_image_files,
    refuse_data_file,
    unpack,
    write_image_files,
)
from model.export.records import check_reserved, field_error, pack_records, unpack_records

FORMAT = "mpqaccel-image"
HEADER_WORDS, VHEADER_WORDS, VLAYER_WORDS = HEADER.words, VHEADER.words, VLAYER.words
MAX_PLANES = MAX_BITS - MIN_BITS


def _words(bits: int) -> int:
    return -(-bits // WORD_BITS)


def _pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` (int) as a ``width``-bit two's complement LSB-first stream, padded to words."""
    v = np.asarray(values, dtype=np.int64).reshape(-1) & ((1 << width) - 1)
    bits = ((v[:, None] >> np.arange(width)) & 1).astype(np.uint8).reshape(-1)
    bits = np.concatenate([bits, np.zeros(_words(bits.size) * WORD_BITS - bits.size, np.uint8)])
    return np.packbits(bits, bitorder="little").view("<u4").astype(np.uint32)


def _unpack_bits(words: np.ndarray, count: int, width: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``count`` ``width``-bit values of an LSB-first stream, and the padding bits after them."""
    bits = np.unpackbits(np.asarray(words, dtype="<u4").view(np.uint8), bitorder="little").astype(np.int64)
    body = bits[:count * width].reshape(count, width)
    v = (body << np.arange(width)).sum(axis=1)
    if signed:
        v = v - ((v >> (width - 1)) << width)
    return v, bits[count * width:]


def _geometry(layer: VerticalLayer) -> tuple[int, int, int, int]:
    """``(c_in, c_out, kernel, fan_in)``."""
    shape = layer.base.shape
    if layer.kind == "conv":
        return int(shape[1]), int(shape[0]), int(shape[2]), int(np.prod(shape[1:]))
    return int(shape[1]), int(shape[0]), 1, int(shape[1])


def _record(residual: bool):
    """The per-output requant record of a group: (``M``, ``B``), with ``M_r`` for a residual layer."""
    return RES_PARAMS if residual else PARAMS


def _group_words(c_out: int, residual: bool = False) -> int:
    return VREQUANT.words + _record(residual).words * c_out + _words(c_out)


def pack_vertical(net: VerticalNetwork) -> np.ndarray:
    """The version 4 words of ``net`` (module docstring), ``uint32``.

    Raises
    ------
    UserError
        From :func:`check_vertical` if ``net`` breaks the contract.
    """
    check_vertical(net)
    n = len(net.layers)
    row_words = _words(8 * len(net.inner))
    base = HEADER_WORDS + VHEADER_WORDS + VLAYER_WORDS * n
    descs, regions = [], []
    for layer in net.layers:
        c_in, c_out, kernel, fan_in = _geometry(layer)
        weights = [_pack_bits(layer.base, layer.base_bits)] + [_pack_bits(p, 1) for p in layer.planes]
        groups = []
        # A table row's own groups first: a reader running row r takes the first group of its widths whose
        # row is r + 1 or 0, so that the row's group wins where it has one.
        for _, r in [*sorted(layer.row_requant.items()), *sorted(layer.requant.items())]:
            head = pack_records(VREQUANT, {"in_bits": r.in_bits, "out_bits": r.out_bits, "shift": int(r.shift),
                                           "res_bits": r.res_bits, "row": r.row})
            values = {"mult": np.asarray(r.mult, np.int64), "bias": np.asarray(r.bias, np.int64)}
            if layer.residual:
                values["res_mult"] = np.asarray(r.res_mult, np.int64)
            params = pack_records(_record(layer.residual), values, count=c_out)
            negate = _pack_bits(np.asarray(r.negate, dtype=np.int64), 1)
            groups.append(np.concatenate([head.reshape(-1), params.reshape(-1), negate]))
        weight_words = sum(len(w) for w in weights)
        descs.append({
            "kind": KIND_CONV if layer.kind == "conv" else KIND_FC, "edge": int(layer.edge),
            "compensate": int(layer.compensate), "residual": int(layer.residual), "gap": int(layer.gap),
            "pool": layer.pool, "base_bits": layer.base_bits,
            "top_bits": layer.top, "c_in": c_in, "c_out": c_out, "kernel": kernel, "stride": layer.stride,
            "padding": layer.padding, "fan_in": fan_in, "weight_base": base, "base_words": len(weights[0]),
            "plane_words": _words(c_out * fan_in) if layer.planes else 0, "requant_base": base + weight_words,
            "requant_count": len(groups), "group_words": _group_words(c_out, layer.residual)})
        regions.extend(weights + groups)
        base += weight_words + sum(len(g) for g in groups)
    table = np.zeros((len(net.table), row_words * 4), dtype=np.uint8)
    for k, row in enumerate(net.table):
        table[k, :len(row)] = row
    table_words = table.reshape(-1).view("<u4").astype(np.uint32) if table.size else np.zeros(0, np.uint32)
    total = base + len(table_words)
    shape = net.image_shape if net.image_shape is not None else (_geometry(net.layers[0])[0], 1, 1)
    _, _, fmap = layout_v3.layer_specs(net.materialize(net.widths[-1]))
    header = pack_records(HEADER, {"magic": MAGIC, "version": VERTICAL_VERSION, "layers": n,
                                   "input_bits": net.input_bits, "words": total, "in_channels": shape[0],
                                   "in_height": shape[1], "in_width": shape[2], "fmap_codes": fmap})
    vheader = pack_records(VHEADER, {"base_bits": net.widths[0], "top_bits": net.widths[-1], "edge_bits": EDGE_BITS,
                                     "inner": len(net.inner), "table_rows": len(net.table), "table_base": base})
    desc_words = np.concatenate([pack_records(VLAYER, d).reshape(-1) for d in descs])
    words = np.concatenate([header.reshape(-1), vheader.reshape(-1), desc_words, *regions, table_words])
    assert len(words) == total
    return words.astype(np.uint32)


def _expect(where: str, field: str, addr: int, value: int, ok: bool, allowed: str) -> None:
    if not ok:
        raise field_error(where, field, addr, value, allowed)


def unpack_vertical(words: np.ndarray, where: str = "image") -> VerticalNetwork:
    """Parse and check version 4 words; the inverse of :func:`pack_vertical` (layer names empty).

    Raises
    ------
    UserError
        Naming ``where``, the field (and its word) and the allowed values.
    """
    words = np.asarray(words)
    if words.ndim != 1 or words.dtype.kind not in "ui" or (words.size and (words.min() < 0 or words.max() > 0xFFFFFFFF)):
        raise UserError(f"{where}: expected a 1-D array of 32-bit words")
    words = words.astype(np.uint32)
    fixed = HEADER_WORDS + VHEADER_WORDS
    if len(words) < fixed:
        raise UserError(f"{where}: field 'words' is {len(words)}; a version 4 image holds at least {fixed}")
    header = {k: int(v[0]) for k, v in unpack_records(HEADER, words[:HEADER_WORDS], VERTICAL_VERSION).items()}
    _expect(where, "magic", 0, hex(header["magic"]), header["magic"] == MAGIC, f"expected {MAGIC:#x} (the bytes 'MPQA')")
    _expect(where, "version", 1, header["version"], header["version"] == VERTICAL_VERSION,
            f"this reader takes version {VERTICAL_VERSION} (versions 1-3: model.export.image.read_image)")
    _expect(where, "words", HEADER["words"].word, header["words"], header["words"] == len(words),
            f"the image holds {len(words)} words (truncated or padded?)")
    _expect(where, "input_bits", HEADER["input_bits"].word, header["input_bits"], header["input_bits"] == EDGE_BITS,
            f"allowed {EDGE_BITS} (the 8-bit first layer reads 8-bit inputs)")
    check_reserved(words, HEADER, 0, VERTICAL_VERSION, where)
    check_reserved(words, VHEADER, HEADER_WORDS, VERTICAL_VERSION, where, "vertical header ")
    vh = {k: int(v[0]) for k, v in unpack_records(VHEADER, words[HEADER_WORDS:fixed], VERTICAL_VERSION).items()}
    b, t = vh["base_bits"], vh["top_bits"]
    _expect(where, "base_bits", HEADER_WORDS, b, MIN_BITS <= b <= MAX_BITS, f"allowed {MIN_BITS}..{MAX_BITS}")
    _expect(where, "top_bits", HEADER_WORDS, t, b <= t <= MAX_BITS, f"allowed {b}..{MAX_BITS} (>= base_bits)")
    _expect(where, "edge_bits", HEADER_WORDS, vh["edge_bits"], vh["edge_bits"] == EDGE_BITS, f"allowed {EDGE_BITS}")
    n = header["layers"]
    _expect(where, "layers", HEADER["layers"].word, n, 3 <= n <= (len(words) - fixed) // VLAYER_WORDS,
            "allowed 3.. (an edge, inner layers, an edge; the descriptors must fit)")
    _expect(where, "inner", HEADER_WORDS, vh["inner"], vh["inner"] == n - 2, f"allowed {n - 2} (layers - 2)")
    widths = tuple(range(b, t + 1))
    base = fixed + VLAYER_WORDS * n
    layers = []
    for k in range(n):
        at = fixed + VLAYER_WORDS * k
        name = f"layer {k} "
        check_reserved(words, VLAYER, at, VERTICAL_VERSION, where, name)
        d = {f: int(v[0]) for f, v in unpack_records(VLAYER, words[at:at + VLAYER_WORDS], VERTICAL_VERSION).items()}

        def addr(field: str) -> int:
            return at + VLAYER[field].word  # noqa: B023 - used inside this iteration only

        edge = k in (0, n - 1)
        _expect(where, name + "kind", addr("kind"), d["kind"], d["kind"] in (KIND_FC, KIND_CONV), "allowed 0 (fc), 1 (conv)")
        _expect(where, name + "edge", addr("edge"), d["edge"], d["edge"] == int(edge),
                f"allowed {int(edge)} (the first and the last layers are the edges)")
        want = (EDGE_BITS, EDGE_BITS) if edge else (b, t)
        _expect(where, name + "base_bits", addr("base_bits"), d["base_bits"], d["base_bits"] == want[0], f"allowed {want[0]}")
        _expect(where, name + "top_bits", addr("top_bits"), d["top_bits"], d["top_bits"] == want[1], f"allowed {want[1]}")
        conv = d["kind"] == KIND_CONV
        kernel = d["kernel"]
        _expect(where, name + "kernel", addr("kernel"), kernel, kernel >= 1 and (conv or kernel == 1),
                "allowed >= 1 (1 for fully connected)")
        fan_in = d["c_in"] * kernel * kernel
        _expect(where, name + "fan_in", addr("fan_in"), d["fan_in"], d["fan_in"] == fan_in and fan_in >= 1,
                f"allowed c_in k k = {fan_in}")
        c_out = d["c_out"]
        _expect(where, name + "c_out", addr("c_out"), c_out, c_out >= 1, "allowed >= 1")
        count = c_out * fan_in
        n_planes = d["top_bits"] - d["base_bits"]
        residual = bool(d["residual"])
        _expect(where, name + "residual", addr("residual"), d["residual"], not residual or (conv and not edge),
                "allowed 1 on inner conv layers only")
        _expect(where, name + "gap", addr("gap"), d["gap"], not d["gap"] or (k == n - 1 and not conv),
                "allowed 1 on the last (fully connected) layer only")
        expected = {"weight_base": base, "base_words": _words(count * d["base_bits"]),
                    "plane_words": _words(count) if n_planes else 0,
                    "group_words": _group_words(c_out, residual)}
        for field, value in expected.items():
            _expect(where, name + field, addr(field), d[field], d[field] == value, f"expected {value}")
        weight_end = base + d["base_words"] + n_planes * d["plane_words"]
        _expect(where, name + "requant_base", addr("requant_base"), d["requant_base"], d["requant_base"] == weight_end,
                f"expected {weight_end} (after the weight region)")
        end = weight_end + d["requant_count"] * d["group_words"]
        _expect(where, name + "requant_count", addr("requant_count"), d["requant_count"],
                1 <= d["requant_count"] and end <= len(words), "allowed 1.. groups that fit the image")
        region = words[base:base + d["base_words"]]
        codes, pad = _unpack_bits(region, count, d["base_bits"], signed=True)
        _expect(where, name + "base region padding", base, "set", not pad.any(), "padding bits must be 0")
        planes = []
        for p in range(n_planes):
            start = base + d["base_words"] + p * d["plane_words"]
            plane, pad = _unpack_bits(words[start:start + d["plane_words"]], count, 1, signed=False)
            _expect(where, name + f"plane {p} padding", start, "set", not pad.any(), "padding bits must be 0")
            planes.append(plane)
        shape = (c_out, d["c_in"], kernel, kernel) if conv else (c_out, d["c_in"])
        requant, row_requant = {}, {}
        for g in range(d["requant_count"]):
            g_at = weight_end + g * d["group_words"]
            gname = f"{name}requant group {g} "
            check_reserved(words, VREQUANT, g_at, VERTICAL_VERSION, where, gname)
            head = {f: int(v[0]) for f, v in unpack_records(VREQUANT, words[g_at:g_at + VREQUANT.words],
                                                             VERTICAL_VERSION).items()}
            last = k == n - 1
            _expect(where, gname + "in_bits", g_at, head["in_bits"],
                    head["in_bits"] == (EDGE_BITS if k == 0 else head["in_bits"]) and 1 <= head["in_bits"] <= MAX_ACT_BITS
                    and (k == 0 or head["in_bits"] in widths), f"allowed {EDGE_BITS if k == 0 else list(widths)}")
            _expect(where, gname + "out_bits", g_at, head["out_bits"],
                    head["out_bits"] == 0 if last else head["out_bits"] in widths,
                    "allowed 0 (scores)" if last else f"allowed {list(widths)}")
            _expect(where, gname + "shift", g_at, head["shift"], 1 <= head["shift"] <= MAX_SHIFT, f"allowed 1..{MAX_SHIFT}")
            _expect(where, gname + "res_bits", g_at, head["res_bits"],
                    head["res_bits"] in widths if residual else head["res_bits"] == 0,
                    f"allowed {list(widths)} (a residual layer's shortcut width)" if residual else "allowed 0")
            rec = _record(residual)
            key = (head["in_bits"], head["out_bits"], head["res_bits"])[:3 if residual else 2]
            row = head["row"]
            _expect(where, gname + "row", g_at + 1, row, row <= vh["table_rows"] and not (row and requant),
                    f"allowed 0..{vh['table_rows']} (table_rows), the rows' groups before the width groups")
            store, skey = (row_requant, (row - 1, *key)) if row else (requant, key)
            _expect(where, gname + "in_bits/out_bits", g_at, key, skey not in store, "each width key stored once "
                    "(per row)")
            params = unpack_records(rec, words[g_at + VREQUANT.words:g_at + VREQUANT.words + rec.words * c_out],
                                    VERTICAL_VERSION)
            neg_at = g_at + VREQUANT.words + rec.words * c_out
            negate, pad = _unpack_bits(words[neg_at:neg_at + _words(c_out)], c_out, 1, signed=False)
            _expect(where, gname + "negate", neg_at, "set", not pad.any(), f"bits past c_out = {c_out} are reserved")
            for j in range(c_out):
                check_reserved(words, rec, g_at + VREQUANT.words + rec.words * j, VERTICAL_VERSION, where, gname)
            # The integer contract's requant bounds (model/export/golden.py check_layer), at the record's address.
            mult_top = (1 << MULT_BITS) - 1
            for field, low, high in (("mult", 0, mult_top), ("bias", BIAS_MIN, BIAS_MAX),
                                     ("res_mult", 0, mult_top)):
                values = params.get(field)
                bad = np.flatnonzero((values < low) | (values > high)) if values is not None else ()
                if len(bad):
                    j = int(bad[0])
                    raise field_error(where, gname + f"{field} of output {j}", g_at + VREQUANT.words + rec.words * j,
                                      int(values[j]), f"allowed [{low}, {high}]")
            store[skey] = VerticalRequant(head["in_bits"], head["out_bits"], params["mult"], params["bias"],
                                          head["shift"], negate.astype(bool), res_bits=head["res_bits"],
                                          res_mult=params["res_mult"] if residual else None, row=row)
        layers.append(VerticalLayer(
            name="", kind="conv" if conv else "linear", edge=edge, base=codes.reshape(shape),
            planes=tuple(p.reshape(shape) for p in planes), base_bits=d["base_bits"], compensate=bool(d["compensate"]),
            requant=requant, stride=d["stride"], padding=d["padding"], pool=d["pool"], residual=residual,
            gap=bool(d["gap"]), row_requant=row_requant))
        base = end
    rows, inner = vh["table_rows"], vh["inner"]
    row_words = _words(8 * inner)
    _expect(where, "table_base", HEADER_WORDS + VHEADER["table_base"].word, vh["table_base"], vh["table_base"] == base,
            f"expected {base} (after the last layer's requant groups)")
    _expect(where, "table_rows", HEADER_WORDS + VHEADER["table_rows"].word, rows,
            base + rows * row_words == len(words), f"allowed {(len(words) - base) // max(row_words, 1)} (the table "
            "ends the image)")
    table = words[base:].astype("<u4").view(np.uint8).reshape(rows, row_words * 4).astype(np.int64)
    for r in range(rows):
        bad = [int(x) for x in table[r, :inner] if x not in widths] + [int(x) for x in table[r, inner:] if x]
        _expect(where, f"table row {r}", base + r * row_words, bad[:1], not bad,
                f"allowed widths {list(widths)} per inner layer, 0 in the padding bytes")
    in_shape = (header["in_channels"], header["in_height"], header["in_width"])
    conv_net = layers[0].kind == "conv"
    if not conv_net:  # (an MLP's input is its first layer's fan-in as C x 1 x 1, as pack_vertical writes it and the
        # array reads it: its controller takes the header's shape for layer 0's input map; a conv net's is checked
        # against its layers below)
        for field, expected in zip(("in_channels", "in_height", "in_width"), (_geometry(layers[0])[0], 1, 1)):
            _expect(where, field, HEADER[field].word, header[field], header[field] == expected,
                    f"expected {expected} (a fully connected network's input: its first layer's fan-in x 1 x 1)")
    net = VerticalNetwork(input_bits=header["input_bits"], image_shape=in_shape if conv_net else None,
                          widths=widths, layers=tuple(layers),
                          table=tuple(tuple(int(x) for x in table[r, :inner]) for r in range(rows)))
    try:
        check_vertical(net, where)
        _, _, fmap = layout_v3.layer_specs(net.materialize(widths[-1]))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    _expect(where, "fmap_codes", HEADER["fmap_codes"].word, header["fmap_codes"], header["fmap_codes"] == fmap,
            f"expected {fmap}")
    return net


def unpack_any(words: np.ndarray, where: str = "image"):
    """The network image words hold, by their header's version: version 4 through :func:`unpack_vertical`,
    versions 1-3 through :func:`model.export.image.unpack` (which refuses any other)."""
    words = np.asarray(words)
    if words.ndim == 1 and len(words) > 1 and int(words[1]) == VERTICAL_VERSION:
        return unpack_vertical(words, where)
    return unpack(words, where)


def bytes_read(net: VerticalNetwork, bits) -> int:
    """Weight-region bytes a reader fetches under ``bits`` (an int or an Eq. 12 row): every edge's base
    region, each inner layer's base region and the planes up to its width (whole words)."""
    assigned = iter(net.assignment(bits))
    total = 0
    for layer in net.layers:
        _, c_out, _, fan_in = _geometry(layer)
        count = c_out * fan_in
        total += _words(count * layer.base_bits)
        if not layer.edge:
            total += (next(assigned) - layer.base_bits) * _words(count)
    return 4 * total


def rename(net: VerticalNetwork, names) -> VerticalNetwork:
    return dataclasses.replace(net, layers=tuple(dataclasses.replace(layer, name=str(name))
                                                 for layer, name in zip(net.layers, names)))


def vertical_description(net: VerticalNetwork) -> tuple[dict, list[dict]]:
    """What a version 4 manifest says of the network, as the words give it: the image's fields (input width,
    widths, table, bytes read per width, input shape) and each layer's (all but its name); what
    :func:`vertical_manifest` writes and :func:`read_vertical_words` holds a manifest to."""
    whole = {"input_bits": net.input_bits, "widths": list(net.widths), "table": [list(row) for row in net.table],
             "weight_bytes_read": {str(b): bytes_read(net, b) for b in net.widths}}
    if net.image_shape is not None:
        whole["input_shape"] = list(net.image_shape)
    layers = [{"kind": layer.kind, "edge": layer.edge, "shape": list(layer.base.shape), "compensate": layer.compensate,
               "requant_pairs": [list(p) for p in sorted(layer.requant)]} for layer in net.layers]
    return whole, layers


def vertical_manifest(net: VerticalNetwork, words: np.ndarray, extra: dict | None = None,
                      data: dict | None = None) -> dict:
    """The manifest of a version 4 image: checksum, widths, layers, bytes read per width, table."""
    raw = np.asarray(words, dtype="<u4").tobytes()
    whole, layers = vertical_description(net)
    input_shape = whole.pop("input_shape", None)
    record = {"format": FORMAT, "version": VERTICAL_VERSION, "words": len(words), "bytes": len(raw),
              "sha256": hashlib.sha256(raw).hexdigest(), **whole,
              "layers": [{"name": layer.name, **entry} for layer, entry in zip(net.layers, layers)]}
    if input_shape is not None:
        record["input_shape"] = input_shape
    if extra is not None:
        record["extra"] = extra
    if data is not None:
        record["data"] = data
    return record


def write_vertical_image(out_dir, net: VerticalNetwork, extra: dict | None = None, data: dict | None = None) -> dict:
    """Write ``weights.bin``, ``weights.hex`` and ``manifest.json`` (version 4) atomically, manifest last."""
    words = pack_vertical(net)
    record = vertical_manifest(net, words, extra, data)
    write_image_files(out_dir, words, record)
    return record


def read_vertical_image(path) -> tuple[VerticalNetwork, dict]:
    """Read a version 4 image directory (or its manifest): size, checksum, every field; names from the manifest.

    Raises
    ------
    UserError
        Naming the file and the field.
    """
    net, record, _ = read_vertical_words(path)
    return net, record


def read_vertical_words(path) -> tuple[VerticalNetwork, dict, np.ndarray]:
    """:func:`read_vertical_image` and the image's words (``weights.bin`` read once: what a loader sends)."""
    record, words, man_path, bin_path = read_image_files(path, (VERTICAL_VERSION,), "write_vertical_image",
                                                         hint=lambda v: " (a vertical-layered image)")
    net = unpack_vertical(words, where=str(bin_path))
    if len(record["layers"]) != len(net.layers):
        raise UserError(f"{man_path}: field 'layers' lists {len(record['layers'])} layers; {bin_path.name} holds "
                        f"{len(net.layers)}")
    whole, layers = vertical_description(net)  # (what the words give; the names are the manifest's own)
    check_described_fields(record, {"words": len(words), **whole}, layers, man_path, bin_path)
    return rename(net, [layer.get("name", "") for layer in record["layers"]]), record, words


def array_words(path) -> np.ndarray:
    """The words the packed multiplier array loads for the image at ``path`` (a directory or its manifest): a
    version 4 image's as stored (the array reads its planes at run time), any other's network packed as
    version 3 (the array's format for conv networks and MLPs alike). Reads and checks the whole image.

    Raises
    ------
    UserError
        Naming the file and the field.
    """
    if is_vertical(path):
        return read_vertical_words(path)[2]
    return pack(read_image(path)[0])


def refuse_vertical(path, instead: str) -> None:
    """What the fully connected core's commands (``sim``, ``verilog``, ``synth`` without ``--core array``) say of a
    version 4 image: a :class:`UserError` naming ``path`` and what to run ``instead``. Nothing for other images."""
    if is_vertical(path):
        raise UserError(f"{path}: a vertical-layered (version 4) image runs on the array with its run-time widths: "
                        f"{instead}")


def is_vertical(path) -> bool:
    """Whether the image at ``path`` (a directory or its manifest) is version 4, from its weights' header."""
    path = Path(path)
    refuse_data_file(path)  # (before the version check: `--image v4/weights.hex` is told the folder at once)
    bin_path = (path if path.is_dir() else path.parent) / "weights.bin"
    if not bin_path.is_file():
        return False  # read_image names the missing file
    head = np.fromfile(bin_path, dtype="<u4", count=2)
    return len(head) == 2 and int(head[1]) == VERTICAL_VERSION
