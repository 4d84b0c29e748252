"""Image format version 4 (model/export/image_v4.py): round trips, prefixes, and the reader's errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.errors import UserError
from model.export.format import VERTICAL_VERSION, VHEADER, VLAYER
from model.export.golden import MULT_BITS
from model.export.golden_vertical import (
    EDGE_BITS,
    VerticalLayer,
    VerticalNetwork,
    VerticalRequant,
    needed_pairs,
)
from model.export.image import read_image, unpack
from model.export.image_v4 import (
    HEADER_WORDS,
    bytes_read,
    pack_vertical,
    read_vertical_image,
    refuse_vertical,
    unpack_vertical,
    write_vertical_image,
)
from model.quant.lsq import enhance_layers
from sim.bench.calibrate import calibrated_vertical


def _requant(rng, c_out, pairs):
    return {p: VerticalRequant(p[0], p[1], rng.integers(0, 1 << MULT_BITS, c_out),
                               rng.integers(-(1 << 40), 1 << 40, c_out), int(rng.integers(8, 40)),
                               rng.random(c_out) < 0.3) for p in pairs}


#: Images a random net's records are calibrated on (:func:`sim.bench.calibrate.calibrated_vertical`).
PROBE_IMAGES = 16


def _probed(net: VerticalNetwork, seed: int, n_in: int) -> VerticalNetwork:
    """``net`` calibrated on :data:`PROBE_IMAGES` random 8-bit inputs (``n_in`` codes each) of ``seed``'s own
    generators (the net's draws stay as they were)."""
    shape = net.image_shape or (n_in,)
    probe = np.random.default_rng([seed, 1]).integers(0, 1 << EDGE_BITS, size=(PROBE_IMAGES, *shape))
    return calibrated_vertical(net, probe, np.random.default_rng([seed, 2]))


def random_net(seed: int, sizes, widths=(2, 3, 4), rows: int = 2, compensate: bool = True,
               calibrate: bool = True) -> VerticalNetwork:
    """A vertical MLP of random codes (8-bit edges, inner layers split into a basic layer and enhance planes)
    and ``rows`` random Eq. 12 table rows. ``calibrate``: its requant records calibrated on random inputs, so
    that its codes and scores depend on the input (else random multipliers and biases of +-2^40 at shifts
    8-40, which exercise the image's fields but give every input the same scores)."""
    import torch

    rng = np.random.default_rng(seed)
    top, layers = widths[-1], []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        edge = k in (0, len(sizes) - 2)
        pairs = needed_pairs(len(sizes) - 1, k, widths)
        if edge:
            base = rng.integers(-(1 << (EDGE_BITS - 1)), 1 << (EDGE_BITS - 1), (n_out, n_in))
            layer = VerticalLayer(f"fc{k + 1}", "linear", True, base, (), EDGE_BITS, compensate,
                                  _requant(rng, n_out, pairs))
        else:
            source = torch.from_numpy(rng.integers(-(1 << (top - 1)), 1 << (top - 1), (n_out, n_in)))
            b, planes = enhance_layers(source, top, widths[0])
            layer = VerticalLayer(f"fc{k + 1}", "linear", False, b.numpy(), tuple(p.numpy() for p in planes),
                                  widths[0], compensate, _requant(rng, n_out, pairs))
        layers.append(layer)
    inner = len(sizes) - 3
    table = tuple(tuple(int(x) for x in rng.choice(widths, inner)) for _ in range(rows))
    net = VerticalNetwork(EDGE_BITS, None, tuple(widths), tuple(layers), table)
    return _probed(net, seed, sizes[0]) if calibrate else net


def random_resnet(seed: int, widths=(2, 3, 4), size: int = 6, channels=(3, 3, 5), n_classes: int = 3,
                  rows: int = 1, row_groups: bool = False, calibrate: bool = True) -> VerticalNetwork:
    """A small vertical residual net of random codes and records: an 8-bit edge stem (1 -> C0), a stride-1
    block (C0 -> C1), a stride-2 block (C1 -> C2, option A's zero channels when C2 > C1), the global pool and an
    8-bit FC edge; records of random 17-bit multipliers with shifts that keep the codes mid-range.
    ``row_groups``: every conv also gets, per table row, its own records (other multipliers), as a row whose BN
    statistics were re-estimated does. ``calibrate``: every record then calibrated on random images
    (:func:`_probed`)."""
    import torch

    rng = np.random.default_rng(seed)
    top = widths[-1]

    def records(n_out, keys, residual, shift=32):
        out = {}
        for key in keys:
            res = {"res_bits": key[2], "res_mult": rng.integers(0, 1 << MULT_BITS, n_out)} if residual else {}
            out[key] = VerticalRequant(key[0], key[1], rng.integers(0, 1 << MULT_BITS, n_out),
                                       rng.integers(-(1 << (shift + 2)), 1 << (shift + 2), n_out), shift,
                                       rng.random(n_out) < 0.3, **res)
        return out

    c0, c1, c2 = channels
    shapes = [(c0, 1, 3, 1), (c1, c0, 3, 1), (c1, c1, 3, 1), (c2, c1, 3, 2), (c2, c2, 3, 1)]
    n = len(shapes) + 1
    layers = []
    for k, (c_out, c_in, kernel, stride) in enumerate(shapes):
        residual = k in (2, 4)
        keys = needed_pairs(n, k, widths, residual=residual)
        if k == 0:
            base = rng.integers(-(1 << (EDGE_BITS - 1)), 1 << (EDGE_BITS - 1), (c_out, c_in, kernel, kernel))
            layers.append(VerticalLayer("stem", "conv", True, base, (), EDGE_BITS, True, records(c_out, keys, False, 31),
                                        stride=stride, padding=1))
            continue
        source = torch.from_numpy(rng.integers(-(1 << (top - 1)), 1 << (top - 1), (c_out, c_in, kernel, kernel)))
        b, planes = enhance_layers(source, top, widths[0])
        layers.append(VerticalLayer(f"conv{k}", "conv", False, b.numpy(), tuple(p.numpy() for p in planes),
                                    widths[0], True, records(c_out, keys, residual), stride=stride, padding=1,
                                    residual=residual))
    base = rng.integers(-(1 << (EDGE_BITS - 1)), 1 << (EDGE_BITS - 1), (n_classes, c2))
    layers.append(VerticalLayer("fc", "linear", True, base, (), EDGE_BITS, True,
                                records(n_classes, needed_pairs(n, n - 1, widths), False, 24), gap=True))
    table = tuple(tuple(int(x) for x in rng.choice(widths, n - 2)) for _ in range(rows))
    net = VerticalNetwork(EDGE_BITS, (1, size, size), tuple(widths), tuple(layers), table)
    if row_groups:
        for r, row in enumerate(table):
            for k, layer in enumerate(layers[:-1]):
                key = net.record_key(row, k)
                own = records(layer.n_out, [key], layer.residual, 31 if k == 0 else 32)[key]
                layer.row_requant[(r, *key)] = dataclasses.replace(own, row=r + 1)
    return _probed(net, seed, 0) if calibrate else net


def _same(a: VerticalNetwork, b: VerticalNetwork) -> None:
    assert a.widths == b.widths and a.table == b.table and a.image_shape == b.image_shape
    for x, y in zip(a.layers, b.layers, strict=True):
        assert (x.kind, x.edge, x.base_bits, x.compensate, x.residual, x.gap) == (
            y.kind, y.edge, y.base_bits, y.compensate, y.residual, y.gap)
        assert np.array_equal(x.base, y.base) and len(x.planes) == len(y.planes)
        assert all(np.array_equal(p, q) for p, q in zip(x.planes, y.planes))
        assert sorted(x.requant) == sorted(y.requant) and sorted(x.row_requant) == sorted(y.row_requant)
        for key, r in [*x.requant.items(), *x.row_requant.items()]:
            s = y.requant[key] if key in y.requant else y.row_requant[key]
            assert r.row == s.row
            assert np.array_equal(r.mult, s.mult) and np.array_equal(r.bias, s.bias) and r.shift == s.shift
            assert np.array_equal(np.asarray(r.negate, bool), s.negate)
            assert r.res_bits == s.res_bits and (r.res_mult is None) == (s.res_mult is None)
            assert r.res_mult is None or np.array_equal(r.res_mult, s.res_mult)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), hidden=st.lists(st.integers(1, 40), min_size=2, max_size=4),
       n_in=st.integers(1, 70), n_out=st.integers(1, 12), base=st.integers(2, 4), extra=st.integers(0, 3),
       compensate=st.booleans(), rows=st.integers(0, 3))
def test_pack_unpack_round_trip(seed, hidden, n_in, n_out, base, extra, compensate, rows):
    widths = tuple(range(base, base + extra + 1))
    net = random_net(seed, [n_in, *hidden, n_out], widths, rows, compensate, calibrate=False)
    words = pack_vertical(net)
    back = unpack_vertical(words)
    _same(net, back)
    assert np.array_equal(pack_vertical(back), words)
    u = np.random.default_rng(seed).integers(0, 256, (3, n_in))
    for bits in widths:
        assert np.array_equal(back.forward(u, bits), net.forward(u, bits))


def test_a_lower_width_reads_a_prefix_of_each_weight_region():
    net = random_net(3, [20, 16, 16, 10])
    words = pack_vertical(net)
    layer = net.layers[1]
    desc = HEADER_WORDS + VHEADER.words + VLAYER.words  # layer 1's descriptor
    start, base_words, plane_words = int(words[desc + 4]), int(words[desc + 5]), int(words[desc + 6])
    # zero everything past the 2-bit prefix: the layer's 2-bit codes are unchanged
    cut = words.copy()
    cut[start + base_words:start + base_words + 2 * plane_words] = 0
    # (that breaks the higher widths only; rebuild the 2-bit codes from the prefix by hand)
    prefix = cut[start:start + base_words]
    bits = np.unpackbits(prefix.astype("<u4").view(np.uint8), bitorder="little")[:2 * layer.base.size]
    codes = bits.reshape(-1, 2) @ np.array([1, 2])
    codes = np.where(codes >= 2, codes - 4, codes)
    assert np.array_equal(codes.reshape(layer.base.shape), layer.base)
    read = {b: bytes_read(net, b) for b in (2, 3, 4)}
    assert read[2] < read[3] < read[4]
    assert read[4] - read[3] == read[3] - read[2] == 4 * plane_words * len(net.inner)


def test_write_read_and_the_v1_3_reader_refuses_by_name(tmp_path):
    net = random_net(5, [12, 8, 8, 4])
    record = write_vertical_image(tmp_path / "img", net)
    back, manifest = read_vertical_image(tmp_path / "img")
    _same(net, back)
    assert [layer.name for layer in back.layers] == ["fc1", "fc2", "fc3"]
    assert manifest["version"] == VERTICAL_VERSION and record["weight_bytes_read"]["2"] < record["weight_bytes_read"]["4"]
    with pytest.raises(UserError, match="version 4 is a vertical-layered image"):
        read_image(tmp_path / "img")
    with pytest.raises(UserError, match="version 4 is a vertical-layered image"):
        unpack(pack_vertical(net))
    for name in ("weights.bin", "weights.hex"):  # the fc core's commands: told the folder, before "--core array"
        with pytest.raises(UserError, match=f"not as {name}: give "):
            refuse_vertical(tmp_path / "img" / name, "add --core array")
    with pytest.raises(UserError, match="a vertical-layered .version 4. image runs on the array"):
        refuse_vertical(tmp_path / "img", "add --core array")
    data = (tmp_path / "img" / "weights.bin").read_bytes()
    (tmp_path / "img" / "weights.bin").write_bytes(data[:-4] + b"\1\0\0\0")
    with pytest.raises(UserError, match="field 'sha256'"):
        read_vertical_image(tmp_path / "img")
    man = json.loads((tmp_path / "img" / "manifest.json").read_text())
    man["version"] = 3
    (tmp_path / "img" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match="field 'version' is 3"):
        read_vertical_image(tmp_path / "img")


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["layers"][1].update(shape=[8, 7]), "field 'layers[1].shape' is [8, 7]; weights.bin gives [8, 8]"),
    (lambda m: m["layers"][0].update(compensate=1), "field 'layers[0].compensate' is 1; weights.bin gives True"),
    (lambda m: m.update(widths=[2, 4]), "field 'widths' is [2, 4]; weights.bin gives [2, 3, 4]"),
    (lambda m: m["weight_bytes_read"].update({"2": 1}), "field 'weight_bytes_read' is {'2': 1, "),
    (lambda m: m.update(layers=["fc1", "fc2", "fc3"]), "field 'layers[0]' is 'fc1'; expected an object"),
])
def test_a_vertical_manifest_that_describes_another_image_is_refused(tmp_path, change, message):
    write_vertical_image(tmp_path / "img", random_net(5, [12, 8, 8, 4]))
    path = tmp_path / "img" / "manifest.json"
    man = json.loads(path.read_text())
    change(man)
    path.write_text(json.dumps(man))
    with pytest.raises(UserError, match=re.escape(f"manifest.json: {message}")):
        read_vertical_image(tmp_path / "img")


def _corrupt(words, index, value):
    out = words.copy()
    out[index] = value
    return out


def test_reader_errors_name_the_field():
    net = random_net(7, [12, 8, 8, 4])
    words = pack_vertical(net)
    desc = HEADER_WORDS + VHEADER.words
    cases = [
        (_corrupt(words, 1, 3), "field 'version'"),
        (_corrupt(words, 3, 4), "field 'input_bits'"),
        (_corrupt(words, HEADER_WORDS, int(words[HEADER_WORDS]) & ~0xFF | 1), "field 'base_bits'"),
        (_corrupt(words, desc, int(words[desc]) | 0x40), r"layer 0 .*reserved"),
        (_corrupt(words, desc, int(words[desc]) & ~0x4), "field 'layer 0 edge'"),
        (_corrupt(words, desc + VLAYER.words + 4, int(words[desc + VLAYER.words + 4]) + 1),
         "field 'layer 1 weight_base'"),
        (_corrupt(words, len(words) - 1, int(words[-1]) | 0x7), "field 'table row"),
        (words[:-1], "field 'words'"),
        # an MLP's input shape, which its reader used to ignore (the array takes layer 0's input map from it)
        (_corrupt(words, 5, 0), "field 'in_channels' .* is 0; expected 12"),
        (_corrupt(words, 5, 12 | 2 << 16), "field 'in_height' .* is 2; expected 1"),
        (_corrupt(words, 6, 0), "field 'in_width' .* is 0; expected 1"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message):
            unpack_vertical(bad, where="img.bin")
    layer1 = desc + VLAYER.words
    group = int(words[layer1 + 7])
    with pytest.raises(UserError, match="requant group 0 shift"):
        unpack_vertical(_corrupt(words, group, int(words[group]) & ~(0xFF << 16)), where="img.bin")


def test_a_conv_net_round_trips_with_its_geometry_and_negate_flags():
    import torch

    from model.export.convert_vertical import to_golden_vertical, vertical_input_codes
    from model.quant.nets import build_model
    from model.quant.vertical import inner_layers, to_vertical

    torch.manual_seed(2)
    model = to_vertical(build_model({"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 4}))
    x = torch.rand(16, 64)
    model.train()
    with torch.no_grad():
        model(x.reshape(16, 1, 8, 8))  # initialise the 4-bit activation steps
        model.features[1].bns[2].weight[1] = -0.5  # a negative gamma at 4 bits
    model.eval()
    inner = len(inner_layers(model))
    net = to_golden_vertical(model, table=(tuple([4] * (inner - 1) + [3]),))
    back = unpack_vertical(pack_vertical(net))
    _same(net, back)
    assert back.image_shape == (1, 8, 8) and [layer.kind for layer in back.layers][:-1] == ["conv"] * (inner + 1)
    assert [(layer.stride, layer.padding, layer.pool) for layer in back.layers] == [
        (layer.stride, layer.padding, layer.pool) for layer in net.layers]
    assert any(r.negate.any() for layer in back.layers for r in layer.requant.values())
    u = vertical_input_codes(model, x)
    assert np.array_equal(back.forward(u, 4), net.forward(u, 4))
    assert np.array_equal(back.forward(u, back.table[0]), net.forward(u, net.table[0]))


def test_a_resnet_round_trips_with_residual_records_and_the_global_pool():
    import torch

    from model.export.convert_vertical import to_golden_vertical, vertical_input_codes
    from model.quant.nets import build_model
    from model.quant.vertical import to_vertical

    torch.manual_seed(4)
    model = to_vertical(build_model({"arch": "resnet20", "image_shape": [1, 8, 8], "n_classes": 10,
                                     "act_bits": 4}))
    x = torch.rand(8, 64)
    model.train()
    with torch.no_grad():
        model(x.reshape(8, 1, 8, 8))  # initialise the 4-bit activation steps
    model.eval()
    net = to_golden_vertical(model, table=((2, 3, 4) * 6,))
    words = pack_vertical(net)
    back = unpack_vertical(words)
    _same(net, back)
    assert [layer.residual for layer in back.layers] == [False] + [False, True] * 9 + [False]
    assert back.layers[-1].gap and not any(layer.gap for layer in back.layers[:-1])
    u = vertical_input_codes(model, x)
    for bits in (3, back.table[0]):
        assert np.array_equal(back.forward(u, bits), net.forward(u, bits))
    desc = HEADER_WORDS + VHEADER.words
    conv1 = desc + VLAYER.words  # layer 1: a block's conv1, not residual
    with pytest.raises(UserError, match="field 'layer 1 group_words'"):
        unpack_vertical(_corrupt(words, conv1, int(words[conv1]) | 0x10), where="img.bin")
    with pytest.raises(UserError, match="field 'layer 1 gap'"):
        unpack_vertical(_corrupt(words, conv1, int(words[conv1]) | 0x20), where="img.bin")
    conv2 = desc + 2 * VLAYER.words
    group = int(words[conv2 + 7])
    with pytest.raises(UserError, match="requant group 0 res_bits"):
        unpack_vertical(_corrupt(words, group, int(words[group]) & 0xFFFFFF), where="img.bin")


def test_a_random_residual_net_round_trips():
    net = random_resnet(5, rows=2, row_groups=True)
    back = unpack_vertical(pack_vertical(net))
    _same(net, back)
    u = np.random.default_rng(0).integers(0, 256, size=(3, 1, 6, 6))
    from model.export.golden_vertical import TableRow

    for bits in (2, 4, *net.table, TableRow(0), TableRow(1)):
        scores = net.forward(u, bits)
        assert np.array_equal(back.forward(u, bits), scores) and len(np.unique(scores)) > 3
    assert not np.array_equal(net.forward(u, TableRow(1)), net.forward(u, net.table[1]))
    # max-pooling inside a residual block is refused (the block's output map is the shortcut's)
    from model.export.golden_vertical import check_vertical

    for k in (1, 2):
        layers = list(net.layers)
        layers[k] = dataclasses.replace(layers[k], pool=2)
        with pytest.raises(UserError, match="field 'pool' is 2"):
            check_vertical(dataclasses.replace(net, layers=tuple(layers)))


def test_row_groups_round_trip_and_come_before_the_width_groups():
    net = random_net(3, [12, 8, 8, 4], rows=2)
    layer = net.layers[1]
    key = net.record_key(net.table[1], 1)
    generic = layer.requant[key]
    own = dataclasses.replace(generic, mult=generic.mult // 2 + 1, row=2)
    net = dataclasses.replace(net, layers=(net.layers[0], dataclasses.replace(layer, row_requant={(1, *key): own}),
                                           *net.layers[2:]))
    words = pack_vertical(net)
    back = unpack_vertical(words)
    _same(net, back)
    assert back.layers[1].row_requant[(1, *key)].row == 2
    u = np.random.default_rng(1).integers(0, 256, size=(4, 12))
    from model.export.golden_vertical import TableRow

    assert np.array_equal(back.forward(u, TableRow(1)), net.forward(u, TableRow(1)))
    # the row's group is layer 1's first; a width group moved before it is refused
    desc = HEADER_WORDS + VHEADER.words + VLAYER.words
    first = int(words[desc + 7])
    swapped = words.copy()
    size = int(words[desc + 9])
    swapped[first:first + size], swapped[first + size:first + 2 * size] = (words[first + size:first + 2 * size],
                                                                           words[first:first + size])
    with pytest.raises(UserError, match="row' .*before the width groups"):
        unpack_vertical(swapped, where="img.bin")


@pytest.mark.parametrize("seed", [0, 1])
def test_random_corruption_is_refused_or_runs_at_every_width(seed):
    """Flip random bits anywhere: the reader refuses with a UserError naming the file, or returns a network
    that materialises at every width and table row (whose requant fields keep the integer contract); it never
    hands back a network that fails later (a requant multiplier past 2^17 once did)."""
    net = random_net(9 + seed, sizes=(23, 14, 12, 5), widths=(2, 3, 4), rows=1)
    words = pack_vertical(net)
    rng = np.random.default_rng(seed)
    refused = 0
    for _ in range(400):
        bad = words.copy()
        bad[int(rng.integers(0, len(words)))] ^= np.uint32(1 << int(rng.integers(0, 32)))
        try:
            back = unpack_vertical(bad, where="bad.bin")
        except UserError as exc:
            assert str(exc).startswith("bad.bin"), str(exc)
            refused += 1
            continue
        for bits in (*back.widths, *back.table):
            back.materialize(bits)
    assert refused > 100


def test_a_requant_multiplier_past_17_bits_is_refused_by_name():
    net = random_net(9, sizes=(23, 14, 12, 5), widths=(2, 3, 4), rows=1)
    words = pack_vertical(net)
    for at in range(len(words)):  # a mult word with bit 25 set is past 17 bits; other words fail otherwise
        bad = words.copy()
        bad[at] ^= np.uint32(1 << 25)
        try:
            unpack_vertical(bad, where="bad.bin")
        except UserError as exc:
            if "mult of output" in str(exc):
                assert f"allowed [0, {(1 << MULT_BITS) - 1}]" in str(exc)
                return
    raise AssertionError("no word of the image holds a requant multiplier")


@pytest.mark.parametrize(("part", "value"), [("mult", 1 << MULT_BITS), ("bias", -1), ("shift", 0),
                                             ("res_mult", 1 << MULT_BITS)])
def test_the_writer_refuses_a_record_of_a_lower_width_its_reader_would(part, value):
    """A record of a width below the top one (which packing never materialises) with ``M`` or ``M_r`` past 17 bits
    or ``S`` 0: pack_vertical refuses it naming the record, as unpack_vertical would refuse the image (before, it
    packed it). A bias inside its 63 bits packs and round-trips."""
    net = random_resnet(4)
    layer = next(layer for layer in net.layers if layer.residual)
    key = min(layer.requant)  # the narrowest widths' record
    record = layer.requant[key]
    array = np.asarray(getattr(record, part)).copy() if part != "shift" else None
    if array is not None:
        array[0] = value
    layer.requant[key] = dataclasses.replace(record, **{part: value if array is None else array})
    if part == "bias":
        assert np.array_equal(unpack_vertical(pack_vertical(net)).layers[net.layers.index(layer)].requant[key].bias,
                              layer.requant[key].bias)
        return
    with pytest.raises(UserError, match=re.escape(f"field 'requant{list(key)}.{part}'")):
        pack_vertical(net)
