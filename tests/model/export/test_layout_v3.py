"""Image format version 3: round trips of random conv and fully connected networks, buffer assignment, the
memory report, and the rejection of bad images (regions, chaining, residual sources, corrupted words)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.errors import UserError
from model.export.format import HEADER, LAYER, SCORE_SINK
from model.export.golden import IntLinear, IntNetwork
from model.export.golden_net import ConvStage, FCStage, GlobalSumPool, IntConvNetwork, ResidualStage
from model.export.image import memory_report, pack, read_image, unpack, write_image
from model.export.layout_v3 import layer_specs, pack_pointers, unpack_pointers
from tests.model.export.test_golden_conv import make_conv
from tests.model.export.test_image import assert_same, networks

D_WORDS = LAYER.words


def fc_layer(rng, n_in, n_out, in_bits, probs, signed=False):
    widths = rng.choice(np.array([0, 4, 8, 16, 32]), size=(n_out, n_in), p=probs).astype(np.int64)
    top = np.where(widths == 32, 2**32 - 1, (np.int64(1) << np.minimum(widths, 31)) - 1)
    low = np.where(widths > 0, int(signed), 0)
    codes = np.where(widths > 0, low + (rng.random(widths.shape) * (top - low + 1)).astype(np.int64), 0)
    return IntLinear(codes=np.minimum(codes, top), widths=widths, in_bits=in_bits, out_bits=0,
                     mult=rng.integers(0, 2**17, n_out), bias=rng.integers(-(2**40), 2**40, n_out), shift=30,
                     signed=signed)


@st.composite
def conv_networks(draw) -> IntConvNetwork:
    """Random conv nets: a stem (optional max-pool), 0-2 residual blocks (stride 1 or 2), then an FC on the
    global sum or on the flattened map; random widths, modes, kernel 1 or 3, code widths."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c, size = draw(st.integers(1, 3)), draw(st.integers(4, 9))
    bits = draw(st.integers(1, 8))
    raw = np.array(draw(st.lists(st.sampled_from([0.0, 0.05, 1.0, 5.0]), min_size=5, max_size=5)))
    probs = raw / raw.sum() if raw.sum() else np.eye(5)[0]
    choices = [w for w, p in zip((0, 4, 8, 16, 32), probs) if p > 0]

    def conv(c_in, c_out, k, stride, in_bits, out_bits, res=False):
        return make_conv(rng, c_in, c_out, k, stride=stride, padding=k // 2, signed=draw(st.booleans()),
                         in_bits=in_bits, out_bits=out_bits, width_choices=choices, res=res)

    out_bits = draw(st.integers(1, 8))
    k = draw(st.sampled_from([1, 3]))
    stem = conv(c, draw(st.integers(1, 4)), k, draw(st.sampled_from([1, 2])), bits, out_bits)
    h = stem.out_size(size, size)[0]
    pool = draw(st.sampled_from([0, 2])) if h >= 2 else 0
    stages = [ConvStage(stem, pool=pool)]
    ch, h = stem.c_out, h // pool if pool else h
    for _ in range(draw(st.integers(0, 2))):
        stride = draw(st.sampled_from([1, 2])) if h >= 2 else 1
        c_out = draw(st.integers(ch, ch + 3))
        mid_bits, end_bits = draw(st.integers(1, 8)), draw(st.integers(1, 8))
        one = conv(ch, c_out, 3, stride, out_bits, mid_bits)
        two = conv(c_out, c_out, 3, 1, mid_bits, end_bits, res=True)
        stages.append(ResidualStage(one, two, stride=stride, name="blk"))
        ch, h, out_bits = c_out, -(-h // stride), end_bits
    if draw(st.booleans()):
        fc = fc_layer(rng, ch, draw(st.integers(1, 5)), out_bits, probs)
        stages += [GlobalSumPool(), FCStage(fc, pooled=h * h)]
    else:
        stages.append(FCStage(fc_layer(rng, ch * h * h, draw(st.integers(1, 5)), out_bits, probs)))
    return IntConvNetwork(input_bits=bits, image_shape=(c, size, size), stages=tuple(stages))


def same_conv_net(a: IntConvNetwork, b: IntConvNetwork) -> None:
    assert (a.input_bits, tuple(a.image_shape)) == (b.input_bits, tuple(b.image_shape))
    assert [type(s) for s in a.stages] == [type(s) for s in b.stages]
    for x, y in zip(a.stages, b.stages):
        if isinstance(x, ConvStage):
            assert x.pool == y.pool
        if isinstance(x, ResidualStage):
            assert x.stride == y.stride
        if isinstance(x, FCStage):
            assert x.pooled == y.pooled
    for x, y in zip(a.layers, b.layers):
        for field in ("codes", "widths", "mult", "bias"):
            u, v = np.asarray(getattr(x, field)), getattr(y, field)
            assert v.dtype == np.int64 and np.array_equal(u, v), field
        assert (x.in_bits, x.out_bits, x.shift, bool(x.signed)) == (y.in_bits, y.out_bits, y.shift, y.signed)
        if hasattr(x, "stride"):
            assert (x.stride, x.padding) == (y.stride, y.padding)
            assert (x.res_mult is None) == (y.res_mult is None)
            assert x.res_mult is None or np.array_equal(x.res_mult, y.res_mult)


@settings(max_examples=80, deadline=None)
@given(conv_networks())
def test_conv_network_round_trip(net):
    words = pack(net)
    assert words[1] == 3 and words[4] == len(words)
    back = unpack(words)
    same_conv_net(net, back)
    u = np.random.default_rng(0).integers(0, 1 << net.input_bits, size=(2, *net.image_shape))
    assert np.array_equal(net.forward(u), back.forward(u))
    report = memory_report(net, words)
    assert report["payload_bits"] == sum(int(layer.widths.sum()) for layer in net.layers)
    assert report["image_bytes"] == 4 * len(words)


@settings(max_examples=80, deadline=None)
@given(networks())
def test_mlp_round_trip_in_version_3(net):
    words = pack(net)
    assert words[1] == 3 and tuple(words[5:7]) == (net.layers[0].n_in | 1 << 16, 1)
    assert_same(net, unpack(words))


def resnet_like(rng) -> IntConvNetwork:
    stem = make_conv(rng, 1, 2, 3, padding=1, width_choices=(0, 4))
    blocks = [ResidualStage(make_conv(rng, 2, 2, 3, padding=1, width_choices=(0, 4)),
                            make_conv(rng, 2, 2, 3, padding=1, width_choices=(0, 4), res=True), stride=1),
              ResidualStage(make_conv(rng, 2, 4, 3, stride=2, padding=1, width_choices=(0, 4, 8)),
                            make_conv(rng, 4, 4, 3, padding=1, width_choices=(0, 4, 8), res=True), stride=2)]
    fc = fc_layer(rng, 4, 3, 4, [0.5, 0.5, 0, 0, 0])
    return IntConvNetwork(4, (1, 8, 8), (ConvStage(stem), *blocks, GlobalSumPool(), FCStage(fc, pooled=16)))


def test_buffers_follow_the_blocks():
    """The input in 0; stem 0 -> 1; a block reads x, conv1 writes the lowest other buffer, conv2 the third with
    the shortcut read from x; the FC streams the scores. fmap_codes is the largest map."""
    shape, specs, fmap = layer_specs(resnet_like(np.random.default_rng(0)))
    assert shape == (1, 8, 8)
    assert [(s.in_buf, s.out_buf, s.res_buf if s.residual else None) for s in specs] == [
        (0, 1, None), (1, 0, None), (0, 2, 1), (2, 0, None), (0, 1, 2), (1, SCORE_SINK, None)]
    assert [s.res_stride for s in specs] == [0, 0, 1, 0, 2, 0] and specs[-1].gap and specs[-1].fan_in == 4
    assert fmap == 2 * 8 * 8


def test_pointer_table_round_trip():
    ptr = np.array([0, 5, 17, 1000, 1023])
    words = pack_pointers(ptr, 10)
    assert len(words) == 2 and words[0] == (0 | 5 << 10 | 17 << 20 | (1000 & 3) << 30)
    back, padding = unpack_pointers(words, 5, 10)
    assert back.tolist() == ptr.tolist() and padding == 0


def test_memory_report_of_a_ticket_like_resnet20_is_near_its_entropy():
    """ResNet-20 shapes (28x28) with a width map drawn like an IMQ ticket at about 2.2 bits: the metadata
    stays under the 1.6 bits per weight of issue 10 and above the map's entropy (the bound for any lossless
    code of an i.i.d. map)."""
    rng = np.random.default_rng(3)
    p = [0.6, 0.33, 0.05, 0.01, 0.01]
    stages, c = [ConvStage(make_conv(rng, 1, 16, 3, padding=1, width_choices=(0, 4, 8, 16, 32)))], 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for b in range(3):
            s = stride if b == 0 else 1
            one = make_conv(rng, c, width, 3, stride=s, padding=1)
            two = make_conv(rng, width, width, 3, padding=1, res=True)
            for layer in (one, two):  # ticket-like widths
                w = rng.choice(np.array([0, 4, 8, 16, 32]), size=layer.widths.shape, p=p)
                layer.widths[...] = w
                layer.codes[...] = np.where(w > 0, rng.integers(0, 16, size=w.shape), 0)
            stages.append(ResidualStage(one, two, stride=s))
            c = width
    net = IntConvNetwork(4, (1, 28, 28), (*stages, GlobalSumPool(),
                                          FCStage(fc_layer(rng, 64, 10, 4, p), pooled=49)))
    report = memory_report(net)
    assert report["weights"] == 268_048 - 10 * 64 + 640
    assert report["width_entropy_layer_bits"] < report["metadata_bits_per_weight"] < 1.6
    assert report["payload_bytes"] == report["payload_bits"] / 8 and report["fp32_bytes"] == 4 * report["weights"]


@pytest.fixture
def image():
    return resnet_like(np.random.default_rng(1)), pack(resnet_like(np.random.default_rng(1)))


def desc_word(layer: int, field: str) -> int:
    return HEADER.words + D_WORDS * layer + LAYER[field].word


def set_field(words, layer, field, value):
    out = words.copy()
    f = LAYER[field]
    w = desc_word(layer, field)
    mask = ((1 << f.width) - 1) << f.bit
    out[w] = (int(out[w]) & ~mask & 0xFFFFFFFF) | (value << f.bit)
    return out


@pytest.mark.parametrize("layer, field, value, message", [
    (0, "kind", 3, "'layer 0 kind'.*allowed 0 \\(fc\\), 1 \\(conv\\)"),
    (1, "param_base", 1, "'layer 1 param_base'.*regions may not overlap"),
    (1, "row_base", 0, "'layer 1 row_base'"),
    (2, "stream_base", 9, "'layer 2 stream_base'"),
    (1, "c_in", 3, "'layer 1 fan_in'"),  # C_in k k no longer matches
    (1, "in_height", 9, "layer 1 fields 'c_in', 'in_height'.*shapes must chain"),
    (2, "res_buf", 0, "layer 2 field 'res_buf' is 0; the residual source must be the buffer"),
    (4, "res_buf", 1, "layer 4 field 'res_buf' is 1"),
    # (pool 1 keeps the maps chained: what refuses it is the block; before, the reader dropped it)
    (2, "pool", 1, "layer 2 field 'pool' is 1, and 0 on conv1 of its block; allowed 0"),
    (3, "pool", 1, "layer 4 field 'pool' is 0, and 1 on conv1 of its block; allowed 0"),
    (2, "residual", 0, "'layer 2 res_stride'.*without residual"),
    (1, "out_buf", 2, "layer 2 field 'in_buf' is 0; the previous layer wrote buffer 2"),
    (5, "out_buf", 2, "'out_buf', 'out_bits' are 2, 0; allowed 7 and 0 for the last layer only"),
    (0, "pool", 9, "field 'pool' is 9"),
    (5, "gap", 0, "'layer 5 fan_in'"),
    (3, "nonzero", 0, "'layer 3 nonzero'.*the stream holds"),
    (3, "payload_bits", 1, "'layer 3 payload_bits'"),
    (0, "pos_bits", 9, "'layer 0 pos_bits'.*expected 4"),
    (0, "rice_k16", 1, "'layer 0 rice_k16'.*class 16 absent"),
    (0, "count_bits4", 0, "'layer 0 count_bits4'"),
    (0, "in_bits", 9, "'layer 0 in_bits'"),
])
def test_unpack_rejects_bad_descriptors(image, layer, field, value, message):
    _, words = image
    with pytest.raises(UserError, match=message) as info:
        unpack(set_field(words, layer, field, value), where="bad.bin")
    assert str(info.value).startswith("bad.bin")


def test_unpack_rejects_reserved_bits_and_header_fields(image):
    _, words = image
    bad = words.copy()
    bad[desc_word(0, "kind")] |= 1 << 5
    with pytest.raises(UserError, match="'layer 0 kind/flags/bits'.*bits 5-7 are reserved"):
        unpack(bad, where="bad.bin")
    # Word 11's reserved bits lie on both sides of pos_bits and ptr_bits: the message names the two ranges only.
    bad = words.copy()
    bad[desc_word(0, "pos_bits")] |= 1 << 30
    with pytest.raises(UserError, match=r"'layer 0 classes/pos_bits/ptr_bits'.*bits 4-7, 24-31 are reserved"):
        unpack(bad, where="bad.bin")
    bad = words.copy()
    bad[HEADER["fmap_codes"].word] += 1
    with pytest.raises(UserError, match="'fmap_codes'.*expected 128"):
        unpack(bad, where="bad.bin")
    bad = words.copy()
    bad[HEADER["in_channels"].word] = 2 | 8 << 16
    with pytest.raises(UserError, match="layer 0 fields 'c_in'.*shapes must chain"):
        unpack(bad, where="bad.bin")


def test_random_corruption_is_refused_or_harmless(image):
    """Flip random bits anywhere: the reader either refuses with a UserError naming the file, or returns a
    network (a flip inside a weight code or a requant value is a different but valid network); it never fails
    any other way."""
    _, words = image
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(300):
        bad = words.copy()
        at = int(rng.integers(0, len(words)))
        bad[at] ^= np.uint32(1 << int(rng.integers(0, 32)))
        try:
            unpack(bad, where="bad.bin")
        except UserError as exc:
            assert str(exc).startswith("bad.bin")
            refused += 1
    assert refused > 100


def test_write_read_conv_image(tmp_path, image):
    net, words = image
    record = write_image(tmp_path, net, extra={"note": 1})
    assert record["version"] == 3 and record["input_shape"] == [1, 8, 8]
    assert [layer["kind"] for layer in record["layers"]] == ["conv"] * 5 + ["fc"]
    assert record["layers"][2]["residual"] and record["layers"][2]["res_buf"] == 1 and record["layers"][5]["gap"]
    assert record["memory"] == memory_report(net, words)
    back, man = read_image(tmp_path)
    same_conv_net(net, back)
    assert [layer.name for layer in back.layers] == ["test.conv"] * 5 + ["layer6"] and man == record


def test_version_2_refuses_conv_networks(image):
    net, _ = image
    with pytest.raises(UserError, match="version 2 holds fully connected networks only"):
        pack(net, 2)


def test_version_3_layer_reads_like_version_2():
    """An MLP's version 2 and version 3 images hold the same network."""
    rng = np.random.default_rng(5)
    first = dataclasses.replace(fc_layer(rng, 20, 6, 8, [0.5, 0.2, 0.2, 0.05, 0.05]), out_bits=4)
    net = IntNetwork(8, (first, fc_layer(rng, 6, 3, 4, [0.2, 0.8, 0, 0, 0], signed=True)))
    assert_same(unpack(pack(net, 2)), unpack(pack(net, 3)))


def test_bmpq_and_resnet20_checkpoints_round_trip_through_the_image(tmp_path):
    """Networks the training side produces: a BMPQ VGG (signed layer-wise codes, ternary in the 4-bit class)
    and a ResNet-20 with element-wise DoReFa widths, through write_image / read_image: the same scores."""
    import torch

    from model.export.convert import to_golden
    from model.quant.bmpq import to_bmpq
    from model.quant.nets import ResNet20, SmallVGG
    from tests.model.export.test_golden_resnet import random_mask

    torch.manual_seed(0)
    vgg = to_bmpq(SmallVGG(image_shape=(1, 16, 16), act_bits=4, channels=(8, 16)))
    with torch.no_grad():
        for layer, bits in ((vgg.features[0], 8), (vgg.features[4], 2), (vgg.fc, 4)):
            layer.bits.fill_(bits)
    resnet = ResNet20(image_shape=(1, 12, 12))
    random_mask(resnet, 1)
    rng = np.random.default_rng(0)
    for name, model in (("vgg", vgg), ("resnet", resnet)):
        net = to_golden(model.eval())
        record = write_image(tmp_path / name, net)
        back, _ = read_image(tmp_path / name)
        u = rng.integers(0, 256, size=(3, *net.image_shape))
        assert np.array_equal(net.forward(u), back.forward(u)), name
        assert record["memory"]["payload_bits"] == sum(int(layer.widths.sum()) for layer in net.layers)
    assert all(layer.signed for layer in back.layers) is False and any(layer["signed"] for layer in
                                                                       read_image(tmp_path / "vgg")[1]["layers"])


def test_unpack_refuses_requant_fields_past_the_contract_in_an_mlp():
    """An MLP image whose first layer's ``mult`` word is past ``MULT_BITS``: refused when the image is read
    (as ``pack`` refuses it), naming the file, the layer and the field, not only when it is packed again."""
    rng = np.random.default_rng(0)
    net = IntNetwork(input_bits=4, layers=(fc_layer(rng, 6, 3, 4, [0.5, 0.5, 0, 0, 0]),))
    words = pack(net).copy()
    base = HEADER.words + LAYER.words  # layer 0's requant records, output 0's mult first
    assert words[base] == net.layers[0].mult[0]
    words[base] = 0x7F00_0000
    with pytest.raises(UserError, match=r"^bad\.bin: layer 0: field 'mult' of output 0 is 2130706432"):
        unpack(words, where="bad.bin")
