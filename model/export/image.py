"""Packed weight image (format version 2, ``docs/image_format.md``): packer, unpacker, writer, reader.

An image is a ``uint32`` array: an 8-word header, one 8-word descriptor per layer (with the layer's weight
mode, DoReFa or signed, in bit 24 of its third word), then for each layer its requant parameters, its 3-bit
width mask (ten codes a word, rows word aligned) and its weight payload (a bit stream of weight codes, least
significant bit first, 0-bit weights absent). Version 1 images (no signed layers; the same layout with
bit 24 reserved) still load. :func:`layer_regions` is the one place that decides where each region lies;
:func:`pack` writes it and :func:`unpack` checks every descriptor against it, so the two cannot drift apart.
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
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN, WIDTHS, IntLinear, IntNetwork, check_layer

MAGIC = 0x4151504D  # the bytes "MPQA" read as a little-endian word
VERSION = 2
#: Versions :func:`unpack` and :func:`read_image` accept; version 1 has no signed layers (bit 24 reserved).
SUPPORTED_VERSIONS = (1, 2)
#: Bit of descriptor word 2 that marks a signed (offset-binary) layer, from format version 2 on.
SIGNED_BIT = 24
FORMAT = "mpqaccel-image"
HEADER_WORDS = 8
DESC_WORDS = 8
PARAM_WORDS = 3  # M, then B low word, B high word
CODE_BITS = 3
CODES_PER_WORD = 10
FILES = ("weights.bin", "weights.hex", "manifest.json")

_CODE_OF_WIDTH = np.zeros(max(WIDTHS) + 1, dtype=np.uint32)
_CODE_OF_WIDTH[list(WIDTHS)] = np.arange(len(WIDTHS), dtype=np.uint32)
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


def image_bytes(words: np.ndarray) -> int:
    """Size of the image in bytes."""
    return 4 * len(words)


def _check_network(net: IntNetwork, where: str) -> None:
    """Layers must chain: sizes and code widths of each layer's input match the previous output."""
    if not net.layers:
        raise UserError(f"{where}: field 'layers' is empty; an image needs at least one layer")
    prev_out, prev_bits = None, net.input_bits
    for index, layer in enumerate(net.layers):
        if layer.n_in < 1 or layer.n_out < 1:
            raise UserError(f"{where}: layer {index} fields 'n_in'/'n_out' are {layer.n_in}/{layer.n_out};"
                            " allowed >= 1")
        if prev_out is not None and layer.n_in != prev_out:
            raise UserError(f"{where}: layer {index} field 'n_in' is {layer.n_in}; the previous layer has"
                            f" n_out {prev_out}")
        if layer.in_bits != prev_bits:
            source = "input_bits" if index == 0 else "the previous layer's out_bits"
            raise UserError(f"{where}: layer {index} field 'in_bits' is {layer.in_bits}; {source} is"
                            f" {prev_bits}")
        prev_out, prev_bits = layer.n_out, layer.out_bits


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


def pack(net: IntNetwork) -> np.ndarray:
    """Pack ``net`` into image words (``uint32``), exactly as ``docs/image_format.md`` lays them out.

    Raises
    ------
    UserError
        If a layer breaks :func:`model.export.golden.check_layer` or the layers do not chain.
    """
    for index, layer in enumerate(net.layers):
        check_layer(layer, where=f"layer {index}" + (f" ({layer.name})" if layer.name else ""))
    _check_network(net, "network")
    regs = regions(net)
    words = np.zeros(regs[-1].end, dtype=np.uint32)
    words[:5] = (MAGIC, VERSION, len(net.layers), net.input_bits, len(words))
    for index, (layer, reg) in enumerate(zip(net.layers, regs)):
        d = HEADER_WORDS + DESC_WORDS * index
        words[d : d + DESC_WORDS] = (
            layer.n_in, layer.n_out,
            layer.in_bits | layer.out_bits << 8 | layer.shift << 16 | int(layer.signed) << SIGNED_BIT,
            reg.mask_base, reg.payload_base, reg.param_base, reg.mask_words_per_row,
            int(np.count_nonzero(layer.widths)))
        params = words[reg.param_base : reg.mask_base].reshape(-1, PARAM_WORDS)
        bias = np.asarray(layer.bias, dtype=np.int64).view(np.uint64)
        params[:, 0] = layer.mult
        params[:, 1] = bias & 0xFFFFFFFF
        params[:, 2] = bias >> np.uint64(32)
        widths = np.asarray(layer.widths)
        words[reg.mask_base : reg.payload_base] = _mask_words(widths, reg.mask_words_per_row)
        words[reg.payload_base : reg.end] = _payload_words(np.asarray(layer.codes), widths)
    return words


def _field(where: str, field: str, addr: int, value: object, allowed: str) -> UserError:
    return UserError(f"{where}: field '{field}' (word {addr}) is {value}; {allowed}")


def _unpack_layer(words: np.ndarray, index: int, base: int, where: str, version: int
                  ) -> tuple[IntLinear, Regions]:
    d = HEADER_WORDS + DESC_WORDS * index
    desc = [int(x) for x in words[d : d + DESC_WORDS]]
    n_in, n_out, packed, mask_base, payload_base, param_base, per_row, nonzero = desc
    name = f"layer {index} "
    if not 1 <= n_in <= MAX_FAN_IN:
        raise _field(where, name + "n_in", d, n_in, f"allowed 1..{MAX_FAN_IN}")
    if not 1 <= n_out <= len(words):
        raise _field(where, name + "n_out", d + 1, n_out, f"allowed 1..{len(words)} (the image size)")
    in_bits, out_bits, shift = packed & 0xFF, packed >> 8 & 0xFF, packed >> 16 & 0xFF
    signed = bool(packed >> SIGNED_BIT & 1)
    if version == 1 and packed >> SIGNED_BIT:
        raise _field(where, name + "bits/shift", d + 2, hex(packed),
                     "bits 24-31 are reserved and must be 0 in format version 1 (signed layers need version 2)")
    if packed >> (SIGNED_BIT + 1):
        raise _field(where, name + "bits/shift", d + 2, hex(packed), "bits 25-31 are reserved and must be 0")
    if not 1 <= in_bits <= MAX_ACT_BITS:
        raise _field(where, name + "in_bits", d + 2, in_bits, f"allowed 1..{MAX_ACT_BITS}")
    if not 0 <= out_bits <= MAX_ACT_BITS:
        raise _field(where, name + "out_bits", d + 2, out_bits, f"allowed 0..{MAX_ACT_BITS}")
    if not 1 <= shift <= 62:
        raise _field(where, name + "shift", d + 2, shift, "allowed 1..62")
    reg = layer_regions(base, n_in, n_out, 0)
    if reg.payload_base > len(words):
        raise _field(where, name + "n_out", d + 1, n_out,
                     f"its params and mask end at word {reg.payload_base}, past the image end {len(words)}")
    for field, offset, value, expected in (("param_base", 5, param_base, reg.param_base),
                                           ("mask_base", 3, mask_base, reg.mask_base),
                                           ("mask_words_per_row", 6, per_row, reg.mask_words_per_row)):
        if value != expected:
            raise _field(where, name + field, d + offset, value, f"expected {expected} (format layout)")

    params = words[reg.param_base : reg.mask_base].reshape(n_out, PARAM_WORDS).astype(np.uint64)
    mult = params[:, 0].astype(np.int64)
    bias = (params[:, 1] | params[:, 2] << np.uint64(32)).view(np.int64)

    mask = words[reg.mask_base : reg.payload_base]
    if (mask >> 30).any():
        bad = reg.mask_base + int(np.flatnonzero(mask >> 30)[0])
        raise _field(where, name + "mask", bad, hex(int(words[bad])), "bits 30-31 are reserved and must be 0")
    codes3 = ((mask[:, None] >> _SHIFTS) & 7).reshape(n_out, per_row * CODES_PER_WORD)
    if (codes3 > len(WIDTHS) - 1).any():
        j, i = (int(x[0]) for x in np.nonzero(codes3 > len(WIDTHS) - 1))
        raise _field(where, name + "mask", reg.mask_base + j * per_row + i // CODES_PER_WORD,
                     f"code {int(codes3[j, i])} for weight ({j}, {i})",
                     "allowed codes 0..4; 5-7 are reserved")
    if codes3[:, n_in:].any():
        last = (int(np.flatnonzero(codes3[:, n_in:].any(axis=1))[0]) + 1) * per_row - 1
        raise _field(where, name + "mask", reg.mask_base + last, hex(int(mask[last])),
                     f"codes past n_in={n_in} at the end of each row must be 0")
    widths = _WIDTH_OF_CODE[codes3[:, :n_in]]
    if nonzero != np.count_nonzero(widths):
        raise _field(where, name + "nonzero", d + 7, nonzero, f"the mask holds {np.count_nonzero(widths)}")

    reg = layer_regions(base, n_in, n_out, int(widths.sum()))
    if payload_base != reg.payload_base:
        raise _field(where, name + "payload_base", d + 4, payload_base,
                     f"expected {reg.payload_base} (format layout)")
    if reg.end > len(words):
        raise _field(where, name + "payload_base", d + 4, payload_base,
                     f"its {reg.payload_words} payload words end at word {reg.end},"
                     f" past the image end {len(words)}")
    stream = np.unpackbits(words[reg.payload_base : reg.end].astype("<u4").view(np.uint8), bitorder="little")
    if stream[reg.payload_bits :].any():
        raise _field(where, name + "payload", reg.end - 1, hex(int(words[reg.end - 1])),
                     f"padding after bit {reg.payload_bits} of the stream must be 0")
    flat = widths.ravel()
    keep = flat > 0
    starts = np.cumsum(flat[keep]) - flat[keep]
    padded = np.concatenate([stream, np.zeros(32, dtype=np.uint8)])
    bits = padded[starts[:, None] + np.arange(32)] * (np.arange(32) < flat[keep][:, None])
    codes = np.zeros(flat.size, dtype=np.int64)
    codes[keep] = np.packbits(bits, axis=1, bitorder="little").view("<u4").ravel()
    layer = IntLinear(codes=codes.reshape(n_out, n_in), widths=widths, in_bits=in_bits, out_bits=out_bits,
                      mult=mult, bias=bias.copy(), shift=shift, signed=signed)
    check_layer(layer, where=f"{where}: layer {index}")
    return layer, reg


def unpack(words: np.ndarray, where: str = "image") -> IntNetwork:
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
        requant parameters or the region layout break the format. Versions 1 and 2 are read (version 1:
        every layer DoReFa).
    """
    words = np.asarray(words)
    if words.ndim != 1 or words.dtype.kind not in "ui":
        raise UserError(f"{where}: expected a 1-D array of integer words, not {words.dtype} {words.shape}")
    if words.size and (words.min() < 0 or words.max() > 0xFFFFFFFF):
        raise UserError(f"{where}: words must lie in [0, 2^32)")
    words = words.astype(np.uint32)
    if len(words) < HEADER_WORDS:
        raise UserError(f"{where}: field 'words' is {len(words)}; an image holds at least {HEADER_WORDS}")
    magic, version, n_layers, input_bits, total = (int(x) for x in words[:5])
    if magic != MAGIC:
        raise _field(where, "magic", 0, hex(magic), f"expected {MAGIC:#x} (the bytes 'MPQA')")
    if version not in SUPPORTED_VERSIONS:
        raise _field(where, "version", 1, version, f"supported: {', '.join(map(str, SUPPORTED_VERSIONS))}")
    if total != len(words):
        raise _field(where, "words", 4, total, f"the image holds {len(words)} words (truncated or padded?)")
    if not 1 <= input_bits <= MAX_ACT_BITS:
        raise _field(where, "input_bits", 3, input_bits, f"allowed 1..{MAX_ACT_BITS}")
    if words[5:HEADER_WORDS].any():
        raise _field(where, "reserved", 5, words[5:HEADER_WORDS].tolist(), "words 5-7 must be 0")
    max_layers = (len(words) - HEADER_WORDS) // DESC_WORDS
    if not 1 <= n_layers <= max_layers:
        raise _field(where, "layers", 2, n_layers, f"allowed 1..{max_layers} (the descriptors must fit)")
    layers, base = [], HEADER_WORDS + DESC_WORDS * n_layers
    for index in range(n_layers):
        layer, reg = _unpack_layer(words, index, base, where, version)
        layers.append(layer)
        base = reg.end
    if base != len(words):
        raise _field(where, "words", 4, total, f"the layers end at word {base}")
    net = IntNetwork(input_bits=input_bits, layers=tuple(layers))
    _check_network(net, where)
    return net


def manifest(net: IntNetwork, words: np.ndarray, names=None, extra: dict | None = None) -> dict:
    """The ``manifest.json`` record of image ``words`` packed from ``net`` (keys as in the format doc).

    ``names`` defaults to each layer's ``name``, or ``fc1``, ``fc2``, ...; ``extra`` (JSON-serialisable)
    is stored under the key ``"extra"``.
    """
    regs = regions(net)
    if regs[-1].end != len(words):
        raise ValueError(f"{len(words)} words do not match the network's layout ({regs[-1].end} words)")
    if names is None:
        names = [layer.name or f"fc{i + 1}" for i, layer in enumerate(net.layers)]
    layers = []
    for name, layer, reg in zip(names, net.layers, regs):
        counts = {str(m): int(np.count_nonzero(layer.widths == m)) for m in WIDTHS}
        layers.append({
            "name": name, "n_in": layer.n_in, "n_out": layer.n_out, "in_bits": layer.in_bits,
            "out_bits": layer.out_bits, "shift": layer.shift, "signed": bool(layer.signed),
            "mask_base": reg.mask_base, "mask_words": reg.mask_words,
            "payload_base": reg.payload_base, "payload_words": reg.payload_words,
            "param_base": reg.param_base, "param_words": reg.param_words,
            "nonzero": int(np.count_nonzero(layer.widths)), "width_counts": counts})
    record = {
        "format": FORMAT, "version": int(words[1]), "words": len(words), "bytes": image_bytes(words),
        "sha256": hashlib.sha256(np.asarray(words, dtype="<u4").tobytes()).hexdigest(),
        "input_bits": net.input_bits, "avg_weight_bits": net.avg_weight_bits, "layers": layers}
    if extra is not None:
        record["extra"] = extra
    return record


def write_image(out_dir, net: IntNetwork, extra: dict | None = None) -> dict:
    """Write ``weights.bin``, ``weights.hex`` and ``manifest.json`` for ``net`` into ``out_dir``.

    Everything is packed and serialised first and each file goes through a temporary file in ``out_dir``
    and ``os.replace``; ``manifest.json`` is replaced last, so a reader never sees a half-written file and
    an interrupted write shows up as a checksum mismatch. Returns the manifest.
    """
    words = pack(net)
    record = manifest(net, words, extra=extra)
    contents = {
        "weights.bin": words.astype("<u4").tobytes(),
        "weights.hex": "".join(f"{w:08x}\n" for w in words.tolist()).encode(),
        "manifest.json": (json.dumps(record, indent=2) + "\n").encode(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for name, data in contents.items():
            fd, temps[name] = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for name in FILES:
            os.replace(temps[name], out / name)
            del temps[name]
    finally:
        for temp in temps.values():
            Path(temp).unlink(missing_ok=True)
    return record


def read_image(path) -> tuple[IntNetwork, dict]:
    """Read an image directory (or its ``manifest.json``); check size and checksum; return net and manifest.

    Layer names come from the manifest. Raises :class:`UserError` naming the file and the field.
    """
    path = Path(path)
    man_path = path / "manifest.json" if path.is_dir() else path
    try:
        record = json.loads(man_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{man_path}: file not found; expected the manifest written by write_image") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{man_path}: not valid JSON ({e}); expected an object with field 'format'"
                        f" = {FORMAT!r}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{man_path}: field 'format' is {found!r}; expected {FORMAT!r}")
    if record.get("version") not in SUPPORTED_VERSIONS or isinstance(record.get("version"), bool):
        raise UserError(f"{man_path}: field 'version' is {record.get('version')!r}; supported:"
                        f" {', '.join(map(str, SUPPORTED_VERSIONS))}")
    for field, kind in (("bytes", int), ("sha256", str), ("layers", list)):
        if not isinstance(record.get(field), kind):
            raise UserError(f"{man_path}: field '{field}' is {record.get(field)!r}; expected {kind.__name__}")
    bin_path = man_path.parent / "weights.bin"
    try:
        data = bin_path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{bin_path}: file not found; {man_path.name} field 'bytes' expects"
                        f" {record['bytes']} bytes") from None
    if len(data) != record["bytes"] or len(data) % 4:
        raise UserError(f"{bin_path}: holds {len(data)} bytes; {man_path.name} field 'bytes' expects"
                        f" {record['bytes']} (a multiple of 4)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise UserError(f"{bin_path}: field 'sha256' mismatch: {man_path.name} expects {record['sha256']},"
                        f" the file has {digest}")
    words = np.frombuffer(data, dtype="<u4")
    net = unpack(words, where=str(bin_path))
    if int(words[1]) != record["version"]:
        raise UserError(f"{man_path}: field 'version' is {record['version']}; {bin_path.name} is version"
                        f" {int(words[1])}")
    names = [layer.get("name", "") if isinstance(layer, dict) else "" for layer in record["layers"]]
    if len(names) != len(net.layers):
        raise UserError(f"{man_path}: field 'layers' lists {len(names)} layers; {bin_path.name} holds"
                        f" {len(net.layers)}")
    layers = tuple(dataclasses.replace(layer, name=str(name)) for layer, name in zip(net.layers, names))
    return IntNetwork(input_bits=net.input_bits, layers=layers), record
