"""Packed weight image (``docs/image_format.md``): packer, unpacker, writer, reader, memory report.

An image is a ``uint32`` array that starts with an 8-word header (magic, version, ...). Two layouts exist:

* **Version 3** (written by default, :mod:`model.export.layout_v3`): any network of the integer contract,
  fully connected or conv (ResNet-20, VGG): a 16-word descriptor per weight layer (geometry, feature-map
  buffers, residual source, pooling, weight mode, code widths), then per layer its requant parameters, a
  row-pointer table and a class-grouped, Rice-coded weight stream (:mod:`model.export.weight_stream`).
* **Versions 1 and 2** (fully connected only; the core in ``hw/core`` reads them): an 8-word descriptor per
  layer (version 2 adds the weight mode, DoReFa or signed), then for each layer its requant parameters, its
  3-bit width mask (ten codes a word, rows word aligned) and its weight payload (a bit stream of weight
  codes, least significant bit first, 0-bit weights absent). ``pack(net, version=2)`` writes it; version 1
  images (no signed layers; the ``signed`` bit reserved) still load.

Where each field of a record lies, and which bits are reserved in which version, comes from the field table
in :mod:`model.export.format` (:mod:`model.export.records` packs and unpacks it); :func:`layer_regions` (v1-2)
and :func:`model.export.layout_v3.pack` are the places that decide where each region lies. :func:`pack`
writes by both and :func:`unpack` checks every word against both, so they cannot drift apart.
:func:`memory_report` splits an image into payload, metadata and requant parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from model.errors import UserError
from model.export import layout_v3
from model.export.format import (
    CODE_BITS,
    CODE_OF_WIDTH,
    CODES_PER_WORD,
    DESCRIPTOR,
    HEADER,
    LAYER,
    MAGIC,
    MASK_RESERVED,
    MASK_VERSION,
    PARAMS,
    RESERVED_CODES,
    SUPPORTED_VERSIONS,
    VERSION,
    VERTICAL_VERSION,
    WIDTHS,
    WORD_BITS,
)
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN, MAX_SHIFT, IntLinear, IntNetwork, check_layer
from model.export.golden_net import IntConvNetwork
from model.export.records import bit_span, check_reserved, field_error, pack_records, unpack_records
from model.files import (
    current_umask,
    missing_folders,
    name_the_file,
    refuse_non_file,
    refuse_special_file,
    remove_empty,
)

FORMAT = "mpqaccel-image"
HEADER_WORDS = HEADER.words
DESC_WORDS = DESCRIPTOR.words
PARAM_WORDS = PARAMS.words  # M, then B low word, B high word
FILES = ("weights.bin", "weights.hex", "manifest.json")

_CODE_OF_WIDTH = np.zeros(max(WIDTHS) + 1, dtype=np.uint32)
_CODE_OF_WIDTH[list(CODE_OF_WIDTH)] = list(CODE_OF_WIDTH.values())
_WIDTH_OF_CODE = np.array(WIDTHS, dtype=np.int64)
_SHIFTS = np.arange(CODES_PER_WORD, dtype=np.uint32) * CODE_BITS


@dataclasses.dataclass(frozen=True)
class Regions:
    """Word addresses and sizes of one layer's regions inside the image.

    Members
    -------
    param_base, param_words : int
        Requant parameters, :data:`PARAM_WORDS` words per output.
    mask_base, mask_words, mask_words_per_row : int
        Width mask; every row starts on a fresh word.
    payload_base, payload_words, payload_bits : int
        Weight bit stream; ``payload_bits`` is the sum of the layer's widths before word padding.
    """

    param_base: int
    param_words: int
    mask_base: int
    mask_words: int
    mask_words_per_row: int
    payload_base: int
    payload_words: int
    payload_bits: int

    @property
    def end(self) -> int:
        """First word after the layer's regions."""
        return self.payload_base + self.payload_words


def layer_regions(base: int, n_in: int, n_out: int, payload_bits: int) -> Regions:
    """Regions of a layer whose params start at word ``base`` (params, mask, payload, back to back)."""
    per_row = -(-n_in // CODES_PER_WORD)
    mask_base = base + PARAM_WORDS * n_out
    payload_base = mask_base + per_row * n_out
    return Regions(base, PARAM_WORDS * n_out, mask_base, per_row * n_out, per_row,
                   payload_base, -(-payload_bits // 32), payload_bits)


def regions(net: IntNetwork) -> list[Regions]:
    """Regions of every layer of ``net``; the image ends at ``regions(net)[-1].end``."""
    out, base = [], HEADER_WORDS + DESC_WORDS * len(net.layers)
    for layer in net.layers:
        out.append(layer_regions(base, layer.n_in, layer.n_out, int(layer.widths.sum())))
        base = out[-1].end
    return out


def input_features(net: IntNetwork | IntConvNetwork) -> int:
    """Input codes per image: an MLP's fan-in, a conv net's ``C H W``."""
    if isinstance(net, IntConvNetwork):
        return int(np.prod(net.image_shape))
    return net.layers[0].n_in


def image_bytes(words: np.ndarray) -> int:
    """Size of the image in bytes."""
    return 4 * len(words)


def _mask_words(widths: np.ndarray, per_row: int) -> np.ndarray:
    codes = np.zeros((widths.shape[0], per_row * CODES_PER_WORD), dtype=np.uint32)
    codes[:, : widths.shape[1]] = _CODE_OF_WIDTH[widths]
    return (codes.reshape(-1, CODES_PER_WORD) << _SHIFTS).sum(axis=1, dtype=np.uint32)


def _payload_words(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    keep = widths.ravel() > 0
    width = widths.ravel()[keep]
    # Each code as its 32 bits, least significant first; keep the low `width` of them, in order.
    code_bytes = codes.ravel()[keep].astype("<u4").view(np.uint8).reshape(-1, 4)
    bits = np.unpackbits(code_bytes, axis=1, bitorder="little")
    stream = bits[np.arange(32) < width[:, None]]
    stream = np.concatenate([stream, np.zeros(-stream.size % 32, dtype=np.uint8)])
    return np.packbits(stream, bitorder="little").view("<u4").astype(np.uint32)


def pack(net: IntNetwork | IntConvNetwork, version: int = VERSION) -> np.ndarray:
    """Pack ``net`` into image words (``uint32``), exactly as ``docs/image_format.md`` lays them out.

    ``version`` 3 (the default) takes any network; ``version=2`` the mask + payload layout of a fully
    connected ``IntNetwork``, which the core in ``hw/core`` runs.

    Raises
    ------
    UserError
        If a layer breaks :func:`model.export.golden.check_layer` or the layers do not chain, or
        ``version=2`` is asked for a conv network.
    """
    return _pack(net, version)[0]


def _pack(net: IntNetwork | IntConvNetwork, version: int) -> tuple[np.ndarray, tuple | None]:
    """:func:`pack`, plus the version 3 layout (``(specs, regions)`` of :func:`model.export.layout_v3.pack`, None
    for version 2) so that :func:`write_image` describes the image without packing it again."""
    if version not in (MASK_VERSION, layout_v3.VERSION_3):
        raise ValueError(f"pack writes versions {MASK_VERSION} and {layout_v3.VERSION_3}, not {version}")
    if isinstance(net, IntNetwork):
        net.check("network")
    elif version == MASK_VERSION:
        raise UserError(f"image version {MASK_VERSION} holds fully connected networks only; a conv network needs"
                        f" version {layout_v3.VERSION_3}")
    if version == layout_v3.VERSION_3:
        words, specs, regs = layout_v3.pack(net)
        return words, (specs, regs)
    return _pack_mask(net), None


def core_words(net: IntNetwork | IntConvNetwork, where: str = "network") -> np.ndarray:
    """The image words the fully connected core of ``hw/core`` runs: version 2 (mask + payload).

    That core reads the version 2 descriptors at run time (the packed multiplier array, ``hw/array``, reads
    versions 3 and 4). So ``sim``, ``verilog`` and ``synth`` with ``--core fc`` repack an image's network as
    version 2 (the same network, bit for bit: ``unpack`` of both gives equal layers).

    Raises
    ------
    UserError
        For a conv network, naming ``where``: the core runs fully connected networks only.
    """
    if isinstance(net, IntConvNetwork):
        raise UserError(f"{where}: a conv network ({len(net.layers)} weight layers); the fully connected core "
                        "(--core fc, the default of `sim`, `verilog` and `synth`) runs MLPs only: add --core array "
                        "for the packed multiplier array, or run `sim --system` (the Zynq system)")
    return pack(net, MASK_VERSION)


def _pack_mask(net: IntNetwork) -> np.ndarray:
    """The version 2 words of a checked fully connected ``net``."""
    regs = regions(net)
    words = np.zeros(regs[-1].end, dtype=np.uint32)
    words[:HEADER_WORDS] = pack_records(HEADER, {
        "magic": MAGIC, "version": MASK_VERSION, "layers": len(net.layers), "input_bits": net.input_bits,
        "words": len(words), "in_channels": 0, "in_height": 0, "in_width": 0, "fmap_codes": 0})[0]
    layers = net.layers
    descriptors = pack_records(DESCRIPTOR, {
        "n_in": [layer.n_in for layer in layers], "n_out": [layer.n_out for layer in layers],
        "in_bits": [layer.in_bits for layer in layers], "out_bits": [layer.out_bits for layer in layers],
        "shift": [layer.shift for layer in layers], "signed": [int(layer.signed) for layer in layers],
        "mask_base": [reg.mask_base for reg in regs], "payload_base": [reg.payload_base for reg in regs],
        "param_base": [reg.param_base for reg in regs],
        "mask_words_per_row": [reg.mask_words_per_row for reg in regs],
        "nonzero": [int(np.count_nonzero(layer.widths)) for layer in layers]}, count=len(layers))
    words[HEADER_WORDS : HEADER_WORDS + DESC_WORDS * len(layers)] = descriptors.ravel()
    for layer, reg in zip(layers, regs):
        params = pack_records(PARAMS, {"mult": layer.mult, "bias": layer.bias}, count=layer.n_out)
        words[reg.param_base : reg.mask_base] = params.ravel()
        widths = np.asarray(layer.widths)
        words[reg.mask_base : reg.payload_base] = _mask_words(widths, reg.mask_words_per_row)
        words[reg.payload_base : reg.end] = _payload_words(np.asarray(layer.codes), widths)
    return words


def _unpack_layer(words: np.ndarray, index: int, base: int, where: str, version: int
                  ) -> tuple[IntLinear, Regions]:
    d = HEADER_WORDS + DESC_WORDS * index
    name = f"layer {index} "
    check_reserved(words, DESCRIPTOR, d, version, where, name)
    desc = {k: int(v[0]) for k, v in unpack_records(DESCRIPTOR, words[d : d + DESC_WORDS], version).items()}

    def addr(field: str) -> int:
        return d + DESCRIPTOR[field].word

    n_in, n_out = desc["n_in"], desc["n_out"]
    if not 1 <= n_in <= MAX_FAN_IN:
        raise field_error(where, name + "n_in", addr("n_in"), n_in, f"allowed 1..{MAX_FAN_IN}")
    if not 1 <= n_out <= len(words):
        raise field_error(where, name + "n_out", addr("n_out"), n_out, f"allowed 1..{len(words)} (the image size)")
    in_bits, out_bits, shift = desc["in_bits"], desc["out_bits"], desc["shift"]
    signed = bool(desc.get("signed", 0))
    if not 1 <= in_bits <= MAX_ACT_BITS:
        raise field_error(where, name + "in_bits", addr("in_bits"), in_bits, f"allowed 1..{MAX_ACT_BITS}")
    if not 0 <= out_bits <= MAX_ACT_BITS:
        raise field_error(where, name + "out_bits", addr("out_bits"), out_bits, f"allowed 0..{MAX_ACT_BITS}")
    if not 1 <= shift <= MAX_SHIFT:
        raise field_error(where, name + "shift", addr("shift"), shift, f"allowed 1..{MAX_SHIFT}")
    reg = layer_regions(base, n_in, n_out, 0)
    if reg.payload_base > len(words):
        raise field_error(where, name + "n_out", addr("n_out"), n_out,
                     f"its params and mask end at word {reg.payload_base}, past the image end {len(words)}")
    for field, expected in (("param_base", reg.param_base), ("mask_base", reg.mask_base),
                            ("mask_words_per_row", reg.mask_words_per_row)):
        if desc[field] != expected:
            raise field_error(where, name + field, addr(field), desc[field], f"expected {expected} (format layout)")
    per_row = reg.mask_words_per_row

    params = unpack_records(PARAMS, words[reg.param_base : reg.mask_base], version)

    mask = words[reg.mask_base : reg.payload_base]
    if (mask & MASK_RESERVED).any():
        bad = reg.mask_base + int(np.flatnonzero(mask & MASK_RESERVED)[0])
        raise field_error(where, name + "mask", bad, hex(int(words[bad])),
                     f"bits {bit_span(MASK_RESERVED)} are reserved and must be 0")
    codes3 = ((mask[:, None] >> _SHIFTS) & ((1 << CODE_BITS) - 1)).reshape(n_out, per_row * CODES_PER_WORD)
    reserved = np.isin(codes3, RESERVED_CODES)
    if reserved.any():
        j, i = (int(x[0]) for x in np.nonzero(reserved))
        raise field_error(where, name + "mask", reg.mask_base + j * per_row + i // CODES_PER_WORD,
                     f"code {int(codes3[j, i])} for weight ({j}, {i})",
                     f"allowed codes 0..{RESERVED_CODES[0] - 1}; {RESERVED_CODES[0]}-{RESERVED_CODES[-1]} are"
                     " reserved")
    if codes3[:, n_in:].any():
        last = (int(np.flatnonzero(codes3[:, n_in:].any(axis=1))[0]) + 1) * per_row - 1
        raise field_error(where, name + "mask", reg.mask_base + last, hex(int(mask[last])),
                     f"codes past n_in={n_in} at the end of each row must be 0")
    widths = _WIDTH_OF_CODE[codes3[:, :n_in]]
    if desc["nonzero"] != np.count_nonzero(widths):
        raise field_error(where, name + "nonzero", addr("nonzero"), desc["nonzero"],
                     f"the mask holds {np.count_nonzero(widths)}")

    reg = layer_regions(base, n_in, n_out, int(widths.sum()))
    payload_base = desc["payload_base"]
    if payload_base != reg.payload_base:
        raise field_error(where, name + "payload_base", addr("payload_base"), payload_base,
                     f"expected {reg.payload_base} (format layout)")
    if reg.end > len(words):
        raise field_error(where, name + "payload_base", addr("payload_base"), payload_base,
                     f"its {reg.payload_words} payload words end at word {reg.end},"
                     f" past the image end {len(words)}")
    stream = np.unpackbits(words[reg.payload_base : reg.end].astype("<u4").view(np.uint8), bitorder="little")
    if stream[reg.payload_bits :].any():
        raise field_error(where, name + "payload", reg.end - 1, hex(int(words[reg.end - 1])),
                     f"padding after bit {reg.payload_bits} of the stream must be 0")
    flat = widths.ravel()
    keep = flat > 0
    starts = np.cumsum(flat[keep]) - flat[keep]
    padded = np.concatenate([stream, np.zeros(32, dtype=np.uint8)])
    bits = padded[starts[:, None] + np.arange(32)] * (np.arange(32) < flat[keep][:, None])
    codes = np.zeros(flat.size, dtype=np.int64)
    codes[keep] = np.packbits(bits, axis=1, bitorder="little").view("<u4").ravel()
    layer = IntLinear(codes=codes.reshape(n_out, n_in), widths=widths, in_bits=in_bits, out_bits=out_bits,
                      mult=params["mult"], bias=params["bias"], shift=shift, signed=signed)
    check_layer(layer, where=f"{where}: layer {index}")
    return layer, reg


def unpack(words: np.ndarray, where: str = "image") -> IntNetwork | IntConvNetwork:
    """Parse and validate image words; the inverse of :func:`pack`.

    Parameters
    ----------
    words : array of unsigned 32-bit values
    where : str
        Name of the source (usually the file), used in error messages.

    Raises
    ------
    UserError
        Naming ``where``, the field and the allowed values, if the header, a descriptor, a mask code, the
        requant parameters, the weight stream or the region layout break the format. Versions 1 and 2 are
        read as fully connected networks (version 1: every layer DoReFa), version 3 by
        :func:`model.export.layout_v3.unpack` (fully connected or conv).
    """
    words = np.asarray(words)
    if words.ndim != 1 or words.dtype.kind not in "ui":
        raise UserError(f"{where}: expected a 1-D array of integer words, not {words.dtype} {words.shape}")
    if words.size and (words.min() < 0 or words.max() > 0xFFFFFFFF):
        raise UserError(f"{where}: words must lie in [0, 2^32)")
    words = words.astype(np.uint32)
    if len(words) < HEADER_WORDS:
        raise UserError(f"{where}: field 'words' is {len(words)}; an image holds at least {HEADER_WORDS}")
    header = {k: int(v[0]) for k, v in unpack_records(HEADER, words[:HEADER_WORDS]).items()}
    magic, version, n_layers = header["magic"], header["version"], header["layers"]
    if magic != MAGIC:
        raise field_error(where, "magic", HEADER["magic"].word, hex(magic), f"expected {MAGIC:#x} (the bytes 'MPQA')")
    if version not in SUPPORTED_VERSIONS:
        raise field_error(where, "version", HEADER["version"].word, version,
                           f"supported: {', '.join(map(str, SUPPORTED_VERSIONS))}" + (
                               f" (version {VERTICAL_VERSION} is a vertical-layered image: "
                               "model.export.image_v4.read_vertical_image)" if version == VERTICAL_VERSION else ""))
    if header["words"] != len(words):
        raise field_error(where, "words", HEADER["words"].word, header["words"],
                           f"the image holds {len(words)} words (truncated or padded?)")
    if not 1 <= header["input_bits"] <= MAX_ACT_BITS:
        raise field_error(where, "input_bits", HEADER["input_bits"].word, header["input_bits"],
                           f"allowed 1..{MAX_ACT_BITS}")
    if version == layout_v3.VERSION_3:
        return layout_v3.unpack(words, where)
    check_reserved(words, HEADER, 0, version, where)
    max_layers = (len(words) - HEADER_WORDS) // DESC_WORDS
    if not 1 <= n_layers <= max_layers:
        raise field_error(where, "layers", HEADER["layers"].word, n_layers,
                           f"allowed 1..{max_layers} (the descriptors must fit)")
    layers, base = [], HEADER_WORDS + DESC_WORDS * n_layers
    for index in range(n_layers):
        layer, reg = _unpack_layer(words, index, base, where, version)
        layers.append(layer)
        base = reg.end
    if base != len(words):
        raise field_error(where, "words", HEADER["words"].word, header["words"], f"the layers end at word {base}")
    net = IntNetwork(input_bits=header["input_bits"], layers=tuple(layers))
    net.check_chain(where)  # (each layer passed check_layer in _unpack_layer)
    return net


#: The paper's ResNet-20 figures the memory report stands beside (MPQ-tickets Sec. 4.3: the ticket's payload at
#: 2.29 average bits, and the FP32 model).
PAPER_RESNET20 = {"payload_mb_at_2.29_bits": 0.07, "fp32_mb": 1.02}


def width_entropy(widths_per_layer: list[np.ndarray]) -> tuple[float, float]:
    """Empirical entropies of a width map, in bits per weight: ``(order 0 over the whole network, per layer)``.

    The first is ``H(p)`` of the network's width histogram ``p``: no lossless code of the map that treats the
    widths as drawn independently from one distribution can average less. The second conditions on the
    layer (each layer's histogram, weighted by its size), the bound for a code that adapts per layer as the
    version 3 stream does; it is never larger.
    """
    def entropy(counts: np.ndarray) -> float:
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log2(p)).sum())

    per_layer = [np.array([np.count_nonzero(np.asarray(w) == m) for m in WIDTHS]) for w in widths_per_layer]
    total = sum(per_layer)
    weights = int(total.sum())
    return entropy(total), sum(entropy(c) * int(c.sum()) for c in per_layer) / weights


def memory_report(net: IntNetwork | IntConvNetwork, words: np.ndarray | None = None) -> dict:
    """Where the bytes of ``net``'s image go: payload, metadata, requant parameters (``words`` default: ``pack(net)``).

    * ``payload_bits``: the weight codes, exactly the sum of the widths (a pruned weight costs none);
    * ``param_bytes``: the requant records (``M``, ``B``, ``M_r``), 12 or 16 bytes per output channel;
    * ``metadata_bits``: everything else: header, descriptors, the row-pointer tables and the stream's
      counts and position codes (version 3), or the width masks (versions 1-2), and word padding;
    * ``width_entropy_bits`` / ``width_entropy_layer_bits``: the empirical entropy of the width map
      (:func:`width_entropy`), the lower bound that ``metadata_bits_per_weight`` stands beside.
    """
    words = pack(net) if words is None else words
    layers = net.layers
    widths = [np.asarray(layer.widths) for layer in layers]
    weights = sum(w.size for w in widths)
    nonzero = sum(int(np.count_nonzero(w)) for w in widths)
    payload_bits = sum(int(w.sum()) for w in widths)
    version = int(words[1])
    n_layers = int(words[2])
    if version == layout_v3.VERSION_3:
        desc = unpack_records(LAYER, words[HEADER_WORDS : HEADER_WORDS + LAYER.words * n_layers], version)
        param_words = int((desc["row_base"] - desc["param_base"]).sum())
    else:
        desc = unpack_records(DESCRIPTOR, words[HEADER_WORDS : HEADER_WORDS + DESC_WORDS * n_layers], version)
        param_words = int((desc["mask_base"] - desc["param_base"]).sum())
    image_bits = WORD_BITS * len(words)
    param_bits = WORD_BITS * param_words
    metadata_bits = image_bits - param_bits - payload_bits
    order0, per_layer = width_entropy(widths)
    return {
        "version": version, "weights": weights, "nonzero": nonzero, "nonzero_fraction": nonzero / weights,
        "avg_weight_bits": payload_bits / weights,
        "payload_bits": payload_bits, "payload_bytes": payload_bits / 8,
        "metadata_bits": metadata_bits, "metadata_bytes": metadata_bits / 8,
        "param_bytes": param_bits // 8, "image_bytes": image_bits // 8,
        "metadata_bits_per_weight": metadata_bits / weights,
        "width_entropy_bits": order0, "width_entropy_layer_bits": per_layer,
        "fp32_bytes": 4 * weights, "paper_resnet20": PAPER_RESNET20}


def manifest(net: IntNetwork | IntConvNetwork, words: np.ndarray, names=None, extra: dict | None = None,
             data: dict | None = None, layout: tuple | None = None) -> dict:
    """The ``manifest.json`` record of image ``words`` packed from ``net`` (keys as in the format doc).

    ``names`` defaults to each layer's ``name``, or ``fc1``, ``fc2``, ... (``layer1``, ... in a conv net);
    ``extra`` (JSON-serialisable) is stored under the key ``"extra"``; ``data``, the data set the network was
    trained on (``model.data.DataRecord.to_json()``: name, root, input shape and bits, split), under
    ``"data"``; the :func:`memory_report` under ``"memory"``. ``layout``: the version 3 ``(specs, regions)``
    the words were packed with (:func:`_pack`); without it the network is packed again and compared.
    """
    version = int(words[1])
    conv = isinstance(net, IntConvNetwork)
    if names is None:
        names = [layer.name or f"{'layer' if conv else 'fc'}{i + 1}" for i, layer in enumerate(net.layers)]
    if version == layout_v3.VERSION_3:
        if layout is None:
            packed, specs, regs = layout_v3.pack(net)
            if not np.array_equal(packed, words):
                raise ValueError("the words are not the version 3 image of the network")
        else:
            specs, regs = layout
        layers = layout_v3.describe(specs, regs, names)
    else:
        regs = regions(net)
        if regs[-1].end != len(words):
            raise ValueError(f"{len(words)} words do not match the network's layout ({regs[-1].end} words)")
        layers = []
        for name, fields, reg in zip(names, layer_fields(net, version), regs):
            layers.append({
                "name": name, **{k: fields[k] for k in ("n_in", "n_out", "in_bits", "out_bits", "shift", "signed")},
                "mask_base": reg.mask_base, "mask_words": reg.mask_words,
                "payload_base": reg.payload_base, "payload_words": reg.payload_words,
                "param_base": reg.param_base, "param_words": reg.param_words,
                "nonzero": fields["nonzero"], "width_counts": fields["width_counts"]})
    record = {
        "format": FORMAT, "version": version, "words": len(words), "bytes": image_bytes(words),
        "sha256": hashlib.sha256(np.asarray(words, dtype="<u4").tobytes()).hexdigest(),
        "input_bits": net.input_bits, "avg_weight_bits": net.avg_weight_bits, "layers": layers,
        "memory": memory_report(net, words)}
    if conv:
        record["input_shape"] = list(net.image_shape)
    if extra is not None:
        record["extra"] = extra
    if data is not None:
        record["data"] = data
    return record


def layer_fields(net: IntNetwork | IntConvNetwork, version: int) -> list[dict]:
    """Per weight layer, the fields of its manifest entry that the image's words give (all but the name and the
    region addresses): version 3's :func:`model.export.layout_v3.spec_fields`, versions 1 and 2's sizes, widths,
    requant shift and counts."""
    if version == layout_v3.VERSION_3:
        return [layout_v3.spec_fields(spec) for spec in layout_v3.layer_specs(net)[1]]
    return [{"n_in": layer.n_in, "n_out": layer.n_out, "in_bits": layer.in_bits, "out_bits": layer.out_bits,
             "shift": layer.shift, "signed": bool(layer.signed), "nonzero": int(np.count_nonzero(layer.widths)),
             "width_counts": {str(m): int(np.count_nonzero(layer.widths == m)) for m in WIDTHS}}
            for layer in net.layers]


def check_described_fields(record: dict, whole: dict, layers: list[dict], man_path: Path, bin_path: Path) -> None:
    """Refuse a manifest whose description of the image disagrees with ``weights.bin`` (whose checksum the manifest
    holds, so the words are the image): each field of ``whole`` (the image's, e.g. ``words``, ``input_bits``) and of
    ``layers[i]`` (each layer's entry: :func:`layer_fields`) that the manifest has must hold the value given. The
    readers use the words, so such a manifest misleads only its readers (a report, a person), but it is not the
    image's any more. :class:`UserError` names the manifest, the field and the value ``weights.bin`` gives."""
    def differ(given, value) -> bool:  # (JSON's true is not the number 1 here)
        return given != value or isinstance(given, bool) != isinstance(value, bool)

    for key, value in whole.items():
        if key in record and differ(record[key], value):
            raise UserError(f"{man_path}: field '{key}' is {record[key]!r}; {bin_path.name} gives {value!r}")
    for index, (entry, fields) in enumerate(zip(record["layers"], layers)):
        if not isinstance(entry, dict):
            raise UserError(f"{man_path}: field 'layers[{index}]' is {entry!r}; expected an object (the layer's "
                            "description, as `build.py export` writes it)")
        for key, value in fields.items():
            if key in entry and differ(entry[key], value):
                raise UserError(f"{man_path}: field 'layers[{index}].{key}' is {entry[key]!r}; {bin_path.name} "
                                f"gives {value!r}")


def write_image(out_dir, net: IntNetwork | IntConvNetwork, extra: dict | None = None, data: dict | None = None,
                version: int = VERSION) -> dict:
    """Write ``weights.bin``, ``weights.hex`` and ``manifest.json`` for ``net`` into ``out_dir``.

    Everything is packed and serialised first and each file goes through a temporary file in ``out_dir``
    and ``os.replace``; ``manifest.json`` is replaced last, so a reader never sees a half-written file and
    an interrupted write shows up as a checksum mismatch. ``extra`` and ``data`` go into the manifest
    (:func:`manifest`). Returns the manifest.
    """
    words, layout = _pack(net, version)
    record = manifest(net, words, extra=extra, data=data, layout=layout)
    write_image_files(out_dir, words, record)
    return record


def write_image_files(out_dir, words: np.ndarray, record: dict) -> None:
    """Write ``weights.bin``, ``weights.hex`` and ``manifest.json`` (``record``) into ``out_dir``: each to a
    temporary file first, then renamed in :data:`FILES` order (manifest last), so that an interrupted write
    leaves no half-written image that reads as whole."""
    contents = {
        "weights.bin": words.astype("<u4").tobytes(),
        "weights.hex": "".join(f"{w:08x}\n" for w in words.tolist()).encode(),
        "manifest.json": (json.dumps(record, indent=2) + "\n").encode(),
    }
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; an image is a folder (weights.bin, weights.hex, manifest.json)")
    for name in FILES:  # before anything is replaced: a rename that fails half-way would mix two images
        refuse_non_file(out / name, f"the image writes its {name} there")
    made = missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    mode = 0o666 & ~current_umask()  # what a plain open gives (mkstemp makes 0600), as model/files.py atomic_write
    name = FILES[0]
    try:
        for name, content in contents.items():
            fd, temps[name] = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.chmod(temps[name], mode)
        for name in FILES:
            os.replace(temps[name], out / name)
            del temps[name]
    except OSError as exc:  # (a full disk names no file: the one being written is named)
        raise name_the_file(exc, out / name)
    finally:
        for temp in temps.values():
            Path(temp).unlink(missing_ok=True)
        remove_empty(made)  # (a folder made for an image that was not written)


def refuse_data_file(path: Path) -> None:
    """A :class:`UserError` for an image's ``weights.bin`` or ``weights.hex`` given where the image goes (its
    folder, or its ``manifest.json``), naming the folder to give; nothing for any other path."""
    if path.name in ("weights.bin", "weights.hex") and path.is_file():
        raise UserError(f"{path}: an image is given as its folder (or its manifest.json), not as {path.name}: give "
                        f"{path.parent}")


def read_image_files(path, versions, writer: str, hint=lambda version: ""
                     ) -> tuple[dict, np.ndarray, Path, Path]:
    """The checked manifest and words of an image directory (or its ``manifest.json``), any version.

    Checks the manifest's ``format``, ``version`` (one of ``versions``; ``hint(version)`` is added to the
    message otherwise), ``bytes``, ``sha256``, ``layers`` and ``data`` fields and the size and checksum of
    ``weights.bin``. ``writer`` names the function that writes such images. Returns ``(record, words,
    manifest path, weights.bin path)``; raises :class:`UserError` naming the file and the field.
    """
    path = Path(path)
    refuse_data_file(path)
    if not path.exists() and path.suffix != ".json":  # (a folder that is not there, not a manifest it never named)
        raise UserError(f"{path}: no such image folder; give the folder `build.py export --out` wrote (weights.bin, "
                        f"weights.hex, manifest.json) or its manifest.json")
    man_path = path / "manifest.json" if path.is_dir() else path
    bin_path = man_path.parent / "weights.bin"
    for name in (man_path, bin_path):
        refuse_special_file(name, "expected the image's file")
    try:
        record = json.loads(man_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{man_path}: file not found; expected the manifest written by `build.py export` "
                        f"({writer})") from None
    except OSError as e:  # a folder, no permission
        raise UserError(f"{man_path}: cannot read it ({e.strerror}); expected the manifest written by `build.py "
                        f"export` ({writer})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{man_path}: not valid JSON ({e}); expected an image folder or its manifest.json, an "
                        f"object with field 'format' = {FORMAT!r}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{man_path}: field 'format' is {found!r}; expected {FORMAT!r}")
    version = record.get("version")
    if version not in versions or isinstance(version, bool):
        raise UserError(f"{man_path}: field 'version' is {version!r}; supported: {', '.join(map(str, versions))}"
                        + hint(version))
    for field, kind in (("bytes", int), ("sha256", str), ("layers", list)):
        if not isinstance(record.get(field), kind):
            raise UserError(f"{man_path}: field '{field}' is {record.get(field)!r}; expected {kind.__name__}")
    if not isinstance(record.get("data", {}), dict):  # optional: images before data records have none
        raise UserError(f"{man_path}: field 'data' is {record['data']!r}; expected an object (the data set record)")
    try:
        data = bin_path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{bin_path}: file not found; {man_path.name} field 'bytes' expects"
                        f" {record['bytes']} bytes") from None
    except OSError as e:
        raise UserError(f"{bin_path}: cannot read it ({e.strerror}); {man_path.name} field 'bytes' expects"
                        f" {record['bytes']} bytes") from None
    if len(data) != record["bytes"]:
        raise UserError(f"{bin_path}: holds {len(data)} bytes; {man_path.name} field 'bytes' expects"
                        f" {record['bytes']}")
    if len(data) % 4:
        raise UserError(f"{bin_path}: holds {len(data)} bytes, which is no whole number of 32-bit words; "
                        f"allowed a multiple of 4 ({man_path.name} field 'bytes' says the same count)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise UserError(f"{bin_path}: field 'sha256' mismatch: {man_path.name} expects {record['sha256']},"
                        f" the file has {digest}")
    return record, np.frombuffer(data, dtype="<u4"), man_path, bin_path


def read_image(path) -> tuple[IntNetwork | IntConvNetwork, dict]:
    """Read an image directory (or its ``manifest.json``); check size and checksum; return net and manifest.

    Layer names come from the manifest. Raises :class:`UserError` naming the file and the field.
    """
    record, words, man_path, bin_path = read_image_files(path, SUPPORTED_VERSIONS, "write_image", hint=lambda v: (
        f" (version {VERTICAL_VERSION} is a vertical-layered image, which `eval`, `system` and the array's `sim`,"
        " `synth` and `verilog` (--core array) read; model.export.image_v4.read_vertical_image in Python)"
        if v == VERTICAL_VERSION else ""))
    net = unpack(words, where=str(bin_path))
    if int(words[1]) != record["version"]:
        raise UserError(f"{man_path}: field 'version' is {record['version']}; {bin_path.name} is version"
                        f" {int(words[1])}")
    if len(record["layers"]) != len(net.layers):
        raise UserError(f"{man_path}: field 'layers' lists {len(record['layers'])} layers; {bin_path.name} holds"
                        f" {len(net.layers)}")
    whole = {"words": len(words), "input_bits": net.input_bits}
    if isinstance(net, IntConvNetwork):
        whole["input_shape"] = list(net.image_shape)
    check_described_fields(record, whole, layer_fields(net, record["version"]), man_path, bin_path)
    return layout_v3.rename(net, [str(layer.get("name", "")) for layer in record["layers"]]), record
