"""Image format version 3 (``docs/image_format.md``): any network of the integer contract, shaped for a
parallel multiplier array.

Version 3 holds a fully connected :class:`~model.export.golden.IntNetwork` or a conv
:class:`~model.export.golden_net.IntConvNetwork` (ResNet-20, VGG) as a list of weight layers, each with a 16-word
descriptor (:data:`~model.export.format.LAYER`: geometry, buffers, residual source, pooling, weight mode, code
widths, region addresses) and three regions: the requant parameters (one record per output channel,
:data:`~model.export.format.PARAMS`, or :data:`~model.export.format.RES_PARAMS` with the shortcut's ``M_r``), the
row-pointer table (one ``ptr_bits``-bit pointer per output channel, packed: the first bit of its row in the stream)
and the weight stream (:mod:`model.export.weight_stream`: each row's non-zeros grouped by width class, positions
Rice-coded). The network's stages are encoded in the descriptors:

* a conv with ``pool > 0`` is a :class:`~model.export.golden_net.ConvStage` with that max-pool;
* a conv with ``residual = 1`` is conv2 of a :class:`~model.export.golden_net.ResidualStage` whose conv1 is
  the layer before it; its ``res_buf`` is the buffer conv1 read (the block input, the shortcut's codes);
* a fully connected layer with ``gap = 1`` is preceded by a :class:`~model.export.golden_net.GlobalSumPool`
  (``FCStage(pooled = in_height in_width)``);
* a first layer that is fully connected makes the network an ``IntNetwork`` (every layer fully connected,
  ``1 x 1`` maps, no pooling).

Feature maps live in :data:`~model.export.format.FMAP_BUFFERS` buffers (the input image in buffer 0); each
layer reads ``in_buf`` and writes ``out_buf`` (after its max-pool), the last layer streams its scores
(``out_buf = SCORE_SINK``). The packer assigns them (:func:`layer_specs`); the reader checks that they chain
and that a shortcut's buffer is neither overwritten by conv1 nor written by conv2. The header's
``fmap_codes`` is the largest map held in one buffer, so a core can refuse an image that does not fit.

The layout is fixed, so a reader recomputes where every region must lie and refuses any other address
(overlapping or misplaced regions name the field and the expected value), as versions 1-2 do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from model.errors import UserError
from model.export.format import (
    CLASS_WIDTHS,
    COUNT_FIELDS,
    FMAP_BUFFERS,
    HEADER,
    KIND_CONV,
    KIND_FC,
    KINDS,
    LAYER,
    MAGIC,
    PARAMS,
    RES_PARAMS,
    RICE_FIELDS,
    SCORE_SINK,
    WORD_BITS,
)
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN, MAX_SHIFT, IntLinear, IntNetwork, check_layer
from model.export.golden_conv import MAX_KERNEL, MAX_STRIDE, IntConv2d
from model.export.golden_net import (
    ConvStage,
    FCStage,
    GlobalSumPool,
    IntConvNetwork,
    ResidualStage,
    check_network,
)
from model.export.records import check_reserved, field_error, pack_records, unpack_records
from model.export.weight_stream import EncodedLayer, count_bits, decode_layer, encode_layer, pos_bits, ptr_bits

VERSION_3 = 3
HEADER_WORDS = HEADER.words
LAYER_WORDS = LAYER.words


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One weight layer as its version 3 descriptor describes it (everything but the region addresses)."""

    layer: IntLinear | IntConv2d
    kind: int
    c_in: int
    in_height: int
    in_width: int
    fan_in: int
    in_buf: int
    out_buf: int
    pool: int = 0
    gap: bool = False
    res_buf: int = 0
    res_stride: int = 0

    @property
    def c_out(self) -> int:
        return int(self.layer.codes.shape[0])

    @property
    def residual(self) -> bool:
        return self.kind == KIND_CONV and self.layer.res_mult is not None

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(kernel, stride, padding)``; ``(1, 1, 0)`` for a fully connected layer."""
        if self.kind == KIND_CONV:
            return self.layer.kernel, self.layer.stride, self.layer.padding
        return 1, 1, 0

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Codes and widths as ``[c_out, fan_in]`` (a conv's weight tensor flattened ``[C_out, C_in k k]``)."""
        return (np.asarray(self.layer.codes).reshape(self.c_out, -1),
                np.asarray(self.layer.widths).reshape(self.c_out, -1))

    def out_map(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the map the layer writes (after its max-pool)."""
        if self.kind == KIND_FC:
            return self.c_out, 1, 1
        h, w = self.layer.out_size(self.in_height, self.in_width)
        if self.pool:
            h, w = h // self.pool, w // self.pool
        return self.c_out, h, w


def _other(*taken: int) -> int:
    """The lowest feature-map buffer not in ``taken``."""
    return min(set(range(FMAP_BUFFERS)) - set(taken))


def layer_specs(net: IntNetwork | IntConvNetwork) -> tuple[tuple[int, int, int], list[LayerSpec], int]:
    """``(input shape (C, H, W), specs, fmap_codes)``: the descriptors of ``net``, buffers assigned.

    Buffers: the input is in 0; a layer writes the lowest buffer it does not read; a residual block's conv1
    writes the lowest buffer other than the block input's, conv2 the remaining one (the block input, the
    shortcut, stays intact until conv2 has read it). ``fmap_codes`` is the largest map held in a buffer, the input map
    in buffer 0 included.
    """
    if isinstance(net, IntNetwork):
        shape = (net.layers[0].n_in, 1, 1)
        specs = []
        for i, layer in enumerate(net.layers):
            last = i == len(net.layers) - 1
            specs.append(LayerSpec(layer, KIND_FC, layer.n_in, 1, 1, layer.n_in, in_buf=i % 2,
                                   out_buf=SCORE_SINK if last else (i + 1) % 2))
        fmap = max([shape[0]] + [layer.n_out for layer in net.layers[:-1]])
        return shape, specs, fmap
    check_network(net)
    shape = tuple(int(s) for s in net.image_shape)
    c, h, w = shape
    cur, gap, specs, fmap = 0, False, [], c * h * w
    for stage in net.stages:
        if isinstance(stage, ConvStage):
            spec = LayerSpec(stage.conv, KIND_CONV, c, h, w, stage.conv.c_in * stage.conv.kernel ** 2, cur,
                             _other(cur), pool=stage.pool)
            specs.append(spec)
        elif isinstance(stage, ResidualStage):
            one, two = stage.conv1, stage.conv2
            mid = _other(cur)
            first = LayerSpec(one, KIND_CONV, c, h, w, one.c_in * one.kernel ** 2, cur, mid)
            ch, hh, wh = first.out_map()
            spec = LayerSpec(two, KIND_CONV, ch, hh, wh, two.c_in * two.kernel ** 2, mid, _other(cur, mid),
                             res_buf=cur, res_stride=stage.stride)
            specs.append(first)
            fmap = max(fmap, ch * hh * wh)
            specs.append(spec)
        elif isinstance(stage, GlobalSumPool):
            gap = True
            continue
        else:
            layer = stage.layer
            specs.append(LayerSpec(layer, KIND_FC, c, h, w, layer.n_in, cur, SCORE_SINK, gap=gap))
            break
        c, h, w = specs[-1].out_map()
        cur = specs[-1].out_buf
        fmap = max(fmap, c * h * w)
    return shape, specs, fmap


def pack_pointers(row_ptr: np.ndarray, width: int) -> np.ndarray:
    """Row pointers as a dense table of ``width``-bit fields (pointer ``j`` at bit ``j width``), in words."""
    n = len(row_ptr)
    bits = ((np.asarray(row_ptr, dtype=np.int64)[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel()
    bits = np.concatenate([bits, np.zeros(-(n * width) % WORD_BITS, dtype=np.uint8)])
    return np.packbits(bits, bitorder="little").view("<u4").astype(np.uint32)


def unpack_pointers(words: np.ndarray, n: int, width: int) -> tuple[np.ndarray, int]:
    """``(pointers, padding)``: the ``n`` pointers of a dense table and the value of its padding bits."""
    bits = np.unpackbits(np.asarray(words, dtype="<u4").view(np.uint8), bitorder="little").astype(np.int64)
    table = bits[: n * width].reshape(n, width)
    return (table << np.arange(width)).sum(axis=1), int(bits[n * width :].any())


def pointer_words(rows: int, width: int) -> int:
    """Words of a row-pointer table."""
    return -(-rows * width // WORD_BITS)


@dataclass(frozen=True)
class LayerRegions:
    """Word addresses of one layer's regions, and its stream (:class:`~model.export.weight_stream.EncodedLayer`)."""

    param_base: int
    param_words: int
    row_base: int
    stream_base: int
    stream: EncodedLayer

    @property
    def stream_words(self) -> int:
        return len(self.stream.words)

    @property
    def end(self) -> int:
        return self.stream_base + self.stream_words


def _param_record(residual: bool):
    return RES_PARAMS if residual else PARAMS


def pack(net: IntNetwork | IntConvNetwork) -> tuple[np.ndarray, list[LayerSpec], list[LayerRegions]]:
    """Version 3 image words of ``net``, with the specs and regions of its layers.

    Raises
    ------
    UserError
        If a layer breaks the contract (``check_layer`` / ``check_network``) or an MLP's layers do not chain.
    """
    shape, specs, fmap = layer_specs(net)
    regions, base = [], HEADER_WORDS + LAYER_WORDS * len(specs)
    for spec in specs:
        if spec.kind == KIND_FC:
            check_layer(spec.layer, where=spec.layer.name or "layer")
        codes, widths = spec.rows()
        stream = encode_layer(codes, widths)
        record = _param_record(spec.residual)
        param_words = record.words * spec.c_out
        row_base = base + param_words
        stream_base = row_base + pointer_words(spec.c_out, ptr_bits(stream.bits))
        regions.append(LayerRegions(base, param_words, row_base, stream_base, stream))
        base = regions[-1].end
    words = np.zeros(base, dtype=np.uint32)
    words[:HEADER_WORDS] = pack_records(HEADER, {
        "magic": MAGIC, "version": VERSION_3, "layers": len(specs), "input_bits": net.input_bits,
        "words": len(words), "in_channels": shape[0], "in_height": shape[1], "in_width": shape[2],
        "fmap_codes": fmap})[0]
    for index, (spec, reg) in enumerate(zip(specs, regions)):
        layer = spec.layer
        kernel, stride, padding = spec.geometry
        values = {
            "kind": spec.kind, "signed": int(layer.signed), "residual": int(spec.residual), "gap": int(spec.gap),
            "pool": spec.pool, "in_bits": layer.in_bits, "out_bits": layer.out_bits, "c_in": spec.c_in,
            "c_out": spec.c_out, "in_height": spec.in_height, "in_width": spec.in_width, "kernel": kernel,
            "stride": stride, "padding": padding, "shift": layer.shift, "in_buf": spec.in_buf,
            "out_buf": spec.out_buf, "res_buf": spec.res_buf, "res_stride": spec.res_stride,
            "fan_in": spec.fan_in, "param_base": reg.param_base, "row_base": reg.row_base,
            "stream_base": reg.stream_base, "stream_bits": reg.stream.bits,
            "nonzero": int(np.count_nonzero(layer.widths)), "classes": reg.stream.classes,
            "pos_bits": pos_bits(spec.fan_in), "ptr_bits": ptr_bits(reg.stream.bits),
            "payload_bits": reg.stream.payload_bits,
            **dict(zip(RICE_FIELDS, reg.stream.rice_k)), **dict(zip(COUNT_FIELDS, reg.stream.count_bits))}
        d = HEADER_WORDS + LAYER_WORDS * index
        words[d : d + LAYER_WORDS] = pack_records(LAYER, values)[0]
        params = {"mult": layer.mult, "bias": layer.bias}
        if spec.residual:
            params["res_mult"] = layer.res_mult
        words[reg.param_base : reg.row_base] = pack_records(_param_record(spec.residual), params,
                                                            count=spec.c_out).ravel()
        words[reg.row_base : reg.stream_base] = pack_pointers(reg.stream.row_ptr, ptr_bits(reg.stream.bits))
        words[reg.stream_base : reg.end] = reg.stream.words
    return words, specs, regions


def _read_layer(words: np.ndarray, index: int, base: int, where: str) -> tuple[LayerSpec, int]:
    """Unpack and check layer ``index``'s descriptor and regions (regions start at ``base``); its spec and end."""
    d = HEADER_WORDS + LAYER_WORDS * index
    name = f"layer {index} "
    check_reserved(words, LAYER, d, VERSION_3, where, name)
    desc = {k: int(v[0]) for k, v in unpack_records(LAYER, words[d : d + LAYER_WORDS], VERSION_3).items()}

    def fail(field: str, value, allowed: str) -> UserError:
        return field_error(where, name + field, d + LAYER[field].word, value, allowed)

    def need(field: str, low: int, high: int, why: str = "") -> int:
        value = desc[field]
        if not low <= value <= high:
            raise fail(field, value, f"allowed {low}..{high}{why}")
        return value

    kind = desc["kind"]
    if kind not in KINDS:
        raise fail("kind", kind, f"allowed {', '.join(f'{k} ({v})' for k, v in KINDS.items())}")
    conv = kind == KIND_CONV
    need("in_bits", 1, MAX_ACT_BITS)
    need("out_bits", 0, MAX_ACT_BITS)
    need("shift", 1, MAX_SHIFT)
    c_out = need("c_out", 1, len(words), " (the image size)")
    need("c_in", 1, (1 << 16) - 1)
    h, w = need("in_height", 1, (1 << 16) - 1), need("in_width", 1, (1 << 16) - 1)
    if conv:
        kernel = need("kernel", 1, MAX_KERNEL)
        need("stride", 1, MAX_STRIDE)
        need("padding", 0, kernel - 1)
        fan_in = desc["c_in"] * kernel * kernel
        if desc["gap"]:
            raise fail("gap", 1, "allowed 0 for a conv (global pooling feeds the fully connected layer)")
        if desc["residual"]:
            need("res_stride", 1, 2, " (option-A shortcut)")
            need("res_buf", 0, FMAP_BUFFERS - 1)
        else:
            need("res_stride", 0, 0, " without residual")
            need("res_buf", 0, 0, " without residual")
    else:
        for field in ("kernel", "stride"):
            need(field, 1, 1, " for a fully connected layer")
        for field in ("padding", "pool", "residual", "res_buf", "res_stride"):
            need(field, 0, 0, " for a fully connected layer")
        fan_in = desc["c_in"] * (1 if desc["gap"] else h * w)
    if desc["fan_in"] != fan_in or not 1 <= fan_in <= MAX_FAN_IN:
        raise fail("fan_in", desc["fan_in"], f"expected {fan_in} (c_in k k, c_in H W, or c_in after a global pool),"
                   f" at most {MAX_FAN_IN}")
    need("in_buf", 0, FMAP_BUFFERS - 1)
    if desc["out_buf"] != SCORE_SINK:
        need("out_buf", 0, FMAP_BUFFERS - 1, f" or {SCORE_SINK} (scores)")
    bits = desc["stream_bits"]
    for field, expected in (("pos_bits", pos_bits(fan_in)), ("ptr_bits", ptr_bits(bits))):
        if desc[field] != expected:
            raise fail(field, desc[field], f"expected {expected} (from fan_in {fan_in} and stream_bits {bits})")
    classes = desc["classes"]
    for c in range(len(CLASS_WIDTHS)):
        here = classes >> c & 1
        need(RICE_FIELDS[c], 0, pos_bits(fan_in) if here else 0,
             " (pos_bits)" if here else f" (class {CLASS_WIDTHS[c]} absent)")
        need(COUNT_FIELDS[c], 1 if here else 0, count_bits(fan_in) if here else 0,
             " (bit length of fan_in)" if here else f" (class {CLASS_WIDTHS[c]} absent)")
    residual = bool(desc["residual"])
    record = _param_record(residual)
    expected = {"param_base": base, "row_base": base + record.words * c_out}
    expected["stream_base"] = expected["row_base"] + pointer_words(c_out, desc["ptr_bits"])
    for field, value in expected.items():
        if desc[field] != value:
            raise fail(field, desc[field], f"expected {value} (format layout: params, row pointers, stream follow"
                       " the descriptors and each other; regions may not overlap)")
    stream_base = expected["stream_base"]
    end = stream_base + -(-bits // WORD_BITS)
    if end > len(words):
        raise fail("stream_bits", bits, f"the layer's regions end at word {end}, past the image end {len(words)}")
    row_ptr, padding = unpack_pointers(words[expected["row_base"] : stream_base], c_out, desc["ptr_bits"])
    if row_ptr[0] != 0 or (np.diff(row_ptr) < 0).any() or row_ptr[-1] > bits or padding:
        raise field_error(where, name + "row pointers", expected["row_base"], row_ptr[:4].tolist(),
                          f"allowed: starting at 0, non-decreasing, at most stream_bits {bits}, padding 0")
    codes, widths = decode_layer(words[stream_base:end], bits, row_ptr, fan_in, classes,
                                 tuple(desc[f] for f in COUNT_FIELDS), tuple(desc[f] for f in RICE_FIELDS),
                                 f"{where}: {name}stream")
    for field, value in (("nonzero", int(np.count_nonzero(widths))), ("payload_bits", int(widths.sum()))):
        if desc[field] != value:
            raise fail(field, desc[field], f"the stream holds {value}")
    present = sum(1 << c for c, m in enumerate(CLASS_WIDTHS) if (widths == m).any())
    if present != classes:
        raise fail("classes", hex(classes), f"the stream's rows hold classes {hex(present)} (each listed class must"
                   " occur)")
    params = unpack_records(record, words[base : expected["row_base"]], VERSION_3)
    signed = bool(desc["signed"])
    if conv:
        k = desc["kernel"]
        layer = IntConv2d(codes=codes.reshape(c_out, desc["c_in"], k, k), widths=widths.reshape(c_out, desc["c_in"], k, k),
                          in_bits=desc["in_bits"], out_bits=desc["out_bits"], mult=params["mult"],
                          bias=params["bias"], shift=desc["shift"], stride=desc["stride"], padding=desc["padding"],
                          signed=signed, res_mult=params["res_mult"] if residual else None)
    else:
        layer = IntLinear(codes=codes, widths=widths, in_bits=desc["in_bits"], out_bits=desc["out_bits"],
                          mult=params["mult"], bias=params["bias"], shift=desc["shift"], signed=signed)
        check_layer(layer, where=f"{where}: {name.strip()}")  # as pack does: the requant fields' bounds
    spec = LayerSpec(layer, kind, desc["c_in"], h, w, fan_in, desc["in_buf"], desc["out_buf"], pool=desc["pool"],
                     gap=bool(desc["gap"]), res_buf=desc["res_buf"], res_stride=desc["res_stride"])
    return spec, end


def unpack(words: np.ndarray, where: str) -> IntNetwork | IntConvNetwork:
    """The network of version 3 image ``words`` (header magic, version and size already checked by the caller).

    Raises
    ------
    UserError
        Naming ``where``, the layer and the field: a descriptor or region that breaks the format, a stream
        that does not decode exactly, buffers or shapes that do not chain, a residual source that is not the
        block input, or a network the integer contract refuses (:func:`~model.export.golden_net.check_network`).
    """
    check_reserved(words, HEADER, 0, VERSION_3, where)
    header = {k: int(v[0]) for k, v in unpack_records(HEADER, words[:HEADER_WORDS], VERSION_3).items()}
    n_layers = header["layers"]
    max_layers = (len(words) - HEADER_WORDS) // LAYER_WORDS
    if not 1 <= n_layers <= max_layers:
        raise field_error(where, "layers", HEADER["layers"].word, n_layers,
                          f"allowed 1..{max_layers} (the descriptors must fit)")
    for field in ("in_channels", "in_height", "in_width"):
        if header[field] < 1:
            raise field_error(where, field, HEADER[field].word, header[field], "allowed >= 1")
    specs, base = [], HEADER_WORDS + LAYER_WORDS * n_layers
    for index in range(n_layers):
        spec, base = _read_layer(words, index, base, where)
        specs.append(spec)
    if base != len(words):
        raise field_error(where, "words", HEADER["words"].word, header["words"], f"the layers end at word {base}")
    shape = (header["in_channels"], header["in_height"], header["in_width"])
    net = _network(specs, header["input_bits"], shape, where)
    _, packed_specs, fmap = layer_specs(net)
    if header["fmap_codes"] != fmap:
        raise field_error(where, "fmap_codes", HEADER["fmap_codes"].word, header["fmap_codes"],
                          f"expected {fmap} (the largest map a buffer holds)")
    for index, (spec, ref) in enumerate(zip(specs, packed_specs)):
        for field in ("in_buf", "out_buf", "res_buf"):
            if getattr(spec, field) != getattr(ref, field):
                raise field_error(where, f"layer {index} {field}", HEADER_WORDS + LAYER_WORDS * index + LAYER[field].word,
                                  getattr(spec, field), f"expected {getattr(ref, field)} (buffer assignment of the"
                                  " format: the input in 0, each layer writes the lowest buffer it may)")
    return net


def _network(specs: list[LayerSpec], input_bits: int, shape: tuple[int, int, int], where: str
             ) -> IntNetwork | IntConvNetwork:
    """Rebuild the network from its checked layer specs; check chaining, buffers and the residual sources."""
    c, h, w = shape
    buf, bits = 0, input_bits
    for index, spec in enumerate(specs):
        name = f"{where}: layer {index}"
        last = index == len(specs) - 1
        if spec.in_buf != buf:
            raise UserError(f"{name} field 'in_buf' is {spec.in_buf}; the previous layer wrote buffer {buf}")
        if (spec.c_in, spec.in_height, spec.in_width) != (c, h, w) or spec.layer.in_bits != bits:
            raise UserError(f"{name} fields 'c_in', 'in_height', 'in_width', 'in_bits' are {spec.c_in}, "
                            f"{spec.in_height}, {spec.in_width}, {spec.layer.in_bits}; the previous layer gives a "
                            f"{c}x{h}x{w} map of {bits}-bit codes (shapes must chain)")
        if last != (spec.out_buf == SCORE_SINK) or (spec.layer.out_bits == 0) != last:
            raise UserError(f"{name} fields 'out_buf', 'out_bits' are {spec.out_buf}, {spec.layer.out_bits}; "
                            f"allowed {SCORE_SINK} and 0 for the last layer only (it streams the scores)")
        if not last and spec.out_buf == spec.in_buf:
            raise UserError(f"{name} field 'out_buf' is {spec.out_buf}, the buffer it reads")
        if spec.residual:
            one = specs[index - 1] if index else None
            if one is None or one.kind != KIND_CONV or one.residual or spec.res_buf != one.in_buf:
                raise UserError(f"{name} field 'res_buf' is {spec.res_buf}; the residual source must be the buffer the"
                                " previous layer (a conv without residual, conv1 of the block) read")
            if spec.out_buf == spec.res_buf or one.out_buf == spec.res_buf:
                raise UserError(f"{name} field 'res_buf' is {spec.res_buf}, overwritten by conv1 or conv2 of its block")
            if spec.pool or one.pool:  # (a ResidualStage has no pool: the block's convs are never max-pooled)
                raise UserError(f"{name} field 'pool' is {spec.pool}, and {one.pool} on conv1 of its block; allowed 0 "
                                "(a residual block's convs are not max-pooled)")
        if spec.pool:
            size = min(spec.layer.out_size(spec.in_height, spec.in_width))
            if not 1 <= spec.pool <= size:
                raise UserError(f"{name} field 'pool' is {spec.pool}; allowed 0 (none) or 1..{size} (the conv's"
                                " output map)")
        c, h, w = spec.out_map()
        buf, bits = spec.out_buf, spec.layer.out_bits
    names = [s.layer for s in specs]
    if specs[0].kind == KIND_FC:
        if any(s.kind != KIND_FC or s.gap or s.in_height != 1 or s.in_width != 1 for s in specs):
            raise UserError(f"{where}: layer 0 is fully connected, so every layer must be (an MLP: fields 'kind' 0, "
                            "'gap' 0, 1x1 maps)")
        return IntNetwork(input_bits=input_bits, layers=tuple(names))
    stages, index = [], 0
    while index < len(specs):
        spec, layer = specs[index], names[index]
        if spec.kind == KIND_FC:
            if index != len(specs) - 1:
                raise UserError(f"{where}: layer {index} field 'kind' is {KIND_FC} (fully connected); allowed only"
                                " for the last layer of a conv net")
            pooled = spec.in_height * spec.in_width if spec.gap else 1
            stages += [GlobalSumPool()] if spec.gap else []
            stages.append(FCStage(layer, pooled=pooled))
        elif index + 1 < len(specs) and specs[index + 1].residual:
            stages.append(ResidualStage(layer, names[index + 1], stride=specs[index + 1].res_stride,
                                        name=f"block{index}"))
            index += 1
        else:
            stages.append(ConvStage(layer, pool=spec.pool))
        index += 1
    net = IntConvNetwork(input_bits=input_bits, image_shape=shape, stages=tuple(stages))
    try:
        check_network(net)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return net


def rename(net: IntNetwork | IntConvNetwork, names: list[str]) -> IntNetwork | IntConvNetwork:
    """``net`` with its weight layers (image order) named ``names``."""
    if isinstance(net, IntNetwork):
        return IntNetwork(input_bits=net.input_bits,
                          layers=tuple(dataclasses.replace(layer, name=n) for layer, n in zip(net.layers, names)))
    it = iter(names)
    stages = []
    for stage in net.stages:
        if isinstance(stage, ConvStage):
            stages.append(dataclasses.replace(stage, conv=dataclasses.replace(stage.conv, name=next(it))))
        elif isinstance(stage, ResidualStage):
            one = dataclasses.replace(stage.conv1, name=next(it))
            two = dataclasses.replace(stage.conv2, name=next(it))
            stages.append(dataclasses.replace(stage, conv1=one, conv2=two, name=one.name.rsplit(".", 1)[0]))
        elif isinstance(stage, FCStage):
            stages.append(dataclasses.replace(stage, layer=dataclasses.replace(stage.layer, name=next(it))))
        else:
            stages.append(stage)
    return IntConvNetwork(input_bits=net.input_bits, image_shape=net.image_shape, stages=tuple(stages))


def spec_fields(spec: LayerSpec) -> dict:
    """The fields of a version 3 manifest's ``layers`` entry that the layer's descriptor and weights give (all but
    the name and the region addresses): what :func:`describe` writes and ``model.export.image.read_image``
    checks a manifest against."""
    layer = spec.layer
    widths = np.asarray(layer.widths)
    kernel, stride, padding = spec.geometry
    return {
        "kind": KINDS[spec.kind], "n_in": spec.fan_in, "n_out": spec.c_out,
        "c_in": spec.c_in, "c_out": spec.c_out, "in_height": spec.in_height, "in_width": spec.in_width,
        "kernel": kernel, "stride": stride, "padding": padding, "pool": spec.pool, "gap": spec.gap,
        "residual": spec.residual, "res_stride": spec.res_stride, "in_buf": spec.in_buf, "out_buf": spec.out_buf,
        "res_buf": spec.res_buf, "in_bits": layer.in_bits, "out_bits": layer.out_bits, "shift": layer.shift,
        "signed": bool(layer.signed), "fan_in": spec.fan_in, "nonzero": int(np.count_nonzero(widths)),
        "width_counts": {str(m): int(np.count_nonzero(widths == m)) for m in (0, *CLASS_WIDTHS)}}


def describe(specs: list[LayerSpec], regions: list[LayerRegions], names: list[str]) -> list[dict]:
    """The manifest's ``layers`` entries of a version 3 image."""
    out = []
    for name, spec, reg in zip(names, specs, regions):
        fields = spec_fields(spec)
        counts = fields.pop("width_counts")
        nonzero = fields.pop("nonzero")
        out.append({
            "name": name, **fields,
            "param_base": reg.param_base, "param_words": reg.param_words, "row_base": reg.row_base,
            "stream_base": reg.stream_base, "stream_words": reg.stream_words, "stream_bits": reg.stream.bits,
            "payload_bits": reg.stream.payload_bits, "rice_k": list(reg.stream.rice_k),
            "count_bits": list(reg.stream.count_bits), "ptr_bits": ptr_bits(reg.stream.bits),
            "nonzero": nonzero, "width_counts": counts})
    return out
