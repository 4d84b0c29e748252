"""An array configuration sized for images: the buffers, widths and tags their descriptors need.

The array reads any version 3 or 4 image that fits its buffers (``hw/array/controller.py`` refuses the others
with ``BAD_GEOMETRY``). :func:`needs` reads an image's header and layer descriptors with the format's field
table (the same fields the controller reads) and gives the smallest sizes that run it;
:func:`config_for` turns those of one or more images into an :class:`~hw.array.top.ArrayConfig` with the
given numbers of engines and lanes (the lanes set the tile width ``T``, which must hold the widest output
row).
"""

from __future__ import annotations

import numpy as np

from hw.array.controller import ARRAY_MAX_POOL, ARRAY_STRIDES, MAX_VERTICAL_TOP
from hw.array.engine import LANE_SLOTS
from hw.array.patch_loader import MAX_MAP_SIDE
from hw.array.top import ArrayConfig
from model.errors import UserError
from model.export.format import HEADER, KIND_CONV, LAYER, MAGIC, VERTICAL_VERSION, VHEADER, VLAYER, WORD_BITS


def _field(words: np.ndarray, base: int, record, name: str) -> int:
    f = record[name]
    value = 0
    for k, w in enumerate(f.words):
        value |= int(words[base + w]) << (WORD_BITS * k)
    return (value >> f.bit) & ((1 << f.width) - 1)


def _check_map(k: int, shape_in: tuple[int, int], shape_out: tuple[int, int], where: str) -> None:
    """:class:`UserError` if layer ``k``'s input or output map has a side past :data:`~hw.array.patch_loader.MAX_MAP_SIDE`."""
    if max(*shape_in, *shape_out) > MAX_MAP_SIDE:
        raise UserError(f"{where}: layer {k} maps a {shape_in[0]} x {shape_in[1]} input to a {shape_out[0]} x "
                        f"{shape_out[1]} output; the array holds maps of up to {MAX_MAP_SIDE} x {MAX_MAP_SIDE}")


def _check_ops(k: int, g: dict, where: str) -> None:
    """:class:`UserError` if conv layer ``k`` (descriptor fields ``g``) has a stride or a pool window the array
    does not run (which it would refuse with ``BAD_GEOMETRY``)."""
    if g["kind"] == KIND_CONV and (g["stride"] not in ARRAY_STRIDES or g["pool"] > ARRAY_MAX_POOL):
        raise UserError(f"{where}: layer {k} fields 'stride', 'pool' are {g['stride']}, {g['pool']}; the array runs "
                        f"strides {' and '.join(map(str, ARRAY_STRIDES))} and max-pool windows up to "
                        f"{ARRAY_MAX_POOL} (0: none)")


def needs(words, where: str = "image") -> dict:
    """``{buffer_words, fmap_rows, row_codes, fan_in, patch_rows, channels, out_width, vertical}`` of a version 3
    or 4 image (``vertical``: a version 4 image, which needs the array's plane decoders; ``patch_rows``: the
    patch positions a tile uses, ``fan_in`` plus a residual layer's shortcut rows, one per channel of the
    previous layer's input: :mod:`hw.array.patch_loader`).

    Raises
    ------
    UserError
        Not a version 3 or 4 image, a descriptor past its words, a vertical layer wider than the array's, a
        map with a side past ``MAX_MAP_SIDE``, or a stride or pool window the array does not run (which the
        array would refuse with ``BAD_GEOMETRY``).
    """
    words = np.asarray(words, dtype=np.int64)
    if len(words) < HEADER.words or _field(words, 0, HEADER, "magic") != MAGIC:
        raise UserError(f"{where}: not an image (field 'magic')")
    version = _field(words, 0, HEADER, "version")
    if version not in (3, VERTICAL_VERSION):
        raise UserError(f"{where}: field 'version' is {version}; the array runs version 3 and 4 images "
                        "(build.py export writes them)")
    layers = _field(words, 0, HEADER, "layers")
    c, h, w = (_field(words, 0, HEADER, n) for n in ("in_channels", "in_height", "in_width"))
    out = {"buffer_words": len(words), "fmap_rows": c * h, "row_codes": w, "fan_in": 1, "patch_rows": 1,
           "channels": 1, "out_width": 1, "vertical": version == VERTICAL_VERSION}
    if version == VERTICAL_VERSION:
        return _needs_vertical(words, layers, (c, h, w), out, where)
    prev_c = 0  # the previous layer's input channels: a residual layer's shortcut rows
    for k in range(layers):
        base = HEADER.words + LAYER.words * k
        if base + LAYER.words > len(words):
            raise UserError(f"{where}: layer {k}'s descriptor runs past the image's {len(words)} words")
        g = {n: _field(words, base, LAYER, n) for n in ("kind", "c_in", "c_out", "in_height", "in_width", "kernel",
                                                         "stride", "padding", "pool", "fan_in", "residual")}
        if g["kind"] == KIND_CONV:
            ho = (g["in_height"] + 2 * g["padding"] - g["kernel"]) // max(g["stride"], 1) + 1
            wo = (g["in_width"] + 2 * g["padding"] - g["kernel"]) // max(g["stride"], 1) + 1
        else:
            ho = wo = 1
        _check_map(k, (g["in_height"], g["in_width"]), (ho, wo), where)
        _check_ops(k, g, where)
        hs = ho // 2 if g["pool"] == 2 else ho
        out["fmap_rows"] = max(out["fmap_rows"], g["c_in"] * g["in_height"], g["c_out"] * hs)
        out["row_codes"] = max(out["row_codes"], g["in_width"], wo)
        out["fan_in"] = max(out["fan_in"], g["fan_in"])
        out["patch_rows"] = max(out["patch_rows"], g["fan_in"] + (prev_c if g["residual"] else 0))
        out["channels"] = max(out["channels"], g["c_out"])
        out["out_width"] = max(out["out_width"], wo)
        prev_c = g["c_in"]
    return out


def _needs_vertical(words, layers: int, shape, out: dict, where: str) -> dict:
    """:func:`needs` of a version 4 image: its descriptors hold no map sizes, so they follow the layers from
    the header's input shape, as the controller derives them."""
    c, h, w = shape
    prev_c = 0
    for k in range(layers):
        base = HEADER.words + VHEADER.words + VLAYER.words * k
        if base + VLAYER.words > len(words):
            raise UserError(f"{where}: layer {k}'s descriptor runs past the image's {len(words)} words")
        g = {n: _field(words, base, VLAYER, n) for n in ("kind", "edge", "top_bits", "c_out", "kernel", "stride",
                                                          "padding", "pool", "fan_in", "residual")}
        if not g["edge"] and g["top_bits"] > MAX_VERTICAL_TOP:
            raise UserError(f"{where}: layer {k}'s source width is {g['top_bits']} bits; the array runs vertical "
                            f"layers of up to {MAX_VERTICAL_TOP} bits (their codes in class 8)")
        if g["kind"] == KIND_CONV:
            ho = (h + 2 * g["padding"] - g["kernel"]) // max(g["stride"], 1) + 1
            wo = (w + 2 * g["padding"] - g["kernel"]) // max(g["stride"], 1) + 1
        else:
            ho = wo = 1
        _check_map(k, (h, w), (ho, wo), where)
        _check_ops(k, g, where)
        hs, ws = (ho // 2, wo // 2) if g["pool"] == 2 else (ho, wo)
        out["fmap_rows"] = max(out["fmap_rows"], c * h, g["c_out"] * hs)
        out["row_codes"] = max(out["row_codes"], w, wo)
        out["fan_in"] = max(out["fan_in"], g["fan_in"])
        out["patch_rows"] = max(out["patch_rows"], g["fan_in"] + (prev_c if g["residual"] else 0))
        out["channels"] = max(out["channels"], g["c_out"])
        out["out_width"] = max(out["out_width"], wo)
        prev_c = c
        c, h, w = g["c_out"], hs, ws
    return out


#: The global buffer's depth is a whole number of these words: a RAMB36 holds 1,024 of them (1K x 32 of its
#: 1K x 36), so a deeper buffer costs block RAM in these steps and no finer rounding saves any. A power of
#: two would waste up to half of it (the ResNet-20 ticket's 42,888 words: 43,008 words in 42 RAMB36, not
#: 65,536 in 64); the controller checks an image's ``words`` against the depth instead of relying on the
#: address wrapping.
BUFFER_QUANTUM = 1024


def config_for(images, *, engines: int, lanes: int | None = None, vertical: bool = False,
               names=None, **overrides) -> ArrayConfig:
    """The smallest :class:`ArrayConfig` with ``engines`` engines that runs every image of ``images``.

    ``lanes`` defaults to the fewest whose tile holds the widest output row; ``overrides`` set any other
    field (e.g. a larger ``buffer_words`` so that bigger images load later); ``vertical`` builds the version 4
    path even when no image needs it.

    The version 4 path (``ArrayConfig.vertical``: a plane decoder in every engine, about 4 k LUT each, and the
    loader's activation sums) is built only when one of ``images`` is version 4, like every other size here:
    a build for version 3 images (an MPQ ticket's) refuses version 4 ones with ``BAD_VERSION``. ``names``
    (one per image, e.g. its ``weights.bin``) name an image in an error; else ``image k``.
    """
    names = [f"image {k}" for k in range(len(images))] if names is None else [str(n) for n in names]
    need = [needs(w, where=name) for w, name in zip(images, names, strict=True)]
    top = {key: max(n[key] for n in need) for key in need[0]}
    if lanes is None:
        lanes = -(-top["out_width"] // LANE_SLOTS)
    pixels = lanes * LANE_SLOTS
    if pixels < top["out_width"]:
        raise UserError(f"--lanes {lanes}: {lanes} lanes give {pixels}-pixel tiles; the images have output rows of "
                        f"{top['out_width']} pixels: allowed --lanes >= {-(-top['out_width'] // LANE_SLOTS)}")
    fields = {
        "engines": engines, "lanes": lanes,
        "buffer_words": -(-top["buffer_words"] // BUFFER_QUANTUM) * BUFFER_QUANTUM,
        "fmap_rows": top["fmap_rows"], "row_codes": top["row_codes"],
        # fan_in < 2^width and fan_in + C_r < 2^width (the decoder's and the controller's checks)
        "fan_in_width": max(top["fan_in"], top["patch_rows"]).bit_length(),
        "channel_bits": max(1, (top["channels"] - 1).bit_length()),
        "vertical": bool(vertical or top["vertical"]),
    }
    fields.update(overrides)
    return ArrayConfig(**fields)
