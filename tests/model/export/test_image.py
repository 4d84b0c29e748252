"""Packed weight image, versions 1-2 (the mask + payload layout of fully connected nets): round trips, a
hand-computed image, sizes, every rejection path; and the reader and writer common to all versions.

Version 3 (conv nets, class-grouped streams) is tested in test_layout_v3.py and test_weight_stream.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.errors import UserError
from model.export.golden import WIDTHS, D, IntLinear, IntNetwork
from model.export.image import MAGIC, MASK_VERSION, pack, read_image, regions, unpack, write_image

FIELDS = ("codes", "widths", "mult", "bias")


def random_layer(rng: np.random.Generator, n_in: int, n_out: int, in_bits: int, out_bits: int,
                 probs: np.ndarray, zero_rows: float, signed: bool = False) -> IntLinear:
    widths = rng.choice(WIDTHS, size=(n_out, n_in), p=probs)
    widths[rng.random(n_out) < zero_rows] = 0
    limit = np.where(widths == 32, D, (np.int64(1) << np.minimum(widths, 31)) - 1)
    # Each code is 0, the largest code of its width (2^32 - 1 for 32 bits), or uniform in between; a signed
    # layer's offset-binary codes start at 1 (c = -(2^(m-1) - 1)).
    low = np.minimum(int(signed), limit)
    uniform = np.minimum((rng.random(widths.shape) * (limit + 1.0)).astype(np.int64), limit)
    codes = np.choose(rng.integers(0, 3, size=widths.shape), [low, limit, np.maximum(uniform, low)])
    mult = rng.choice([0, (1 << 17) - 1, *rng.integers(0, 1 << 17, size=4)], size=n_out)
    big = (1 << 62) - 1
    bias = rng.choice([-big, -1, 0, big, *rng.integers(-big, big + 1, size=4)], size=n_out)
    return IntLinear(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits,
                     mult=mult, bias=bias, shift=int(rng.integers(1, 63)), signed=signed)


@st.composite
def networks(draw) -> IntNetwork:
    n_layers = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 40))] + [draw(st.integers(1, 12)) for _ in range(n_layers)]
    bits = [draw(st.integers(1, 8)) for _ in range(n_layers)] + [0]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers = []
    for index in range(n_layers):
        raw = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 1.0, 5.0]), min_size=5, max_size=5)))
        probs = raw / raw.sum() if raw.sum() else np.eye(5)[0]  # all weights pruned
        zero_rows = draw(st.sampled_from([0.0, 0.3, 1.0]))
        layers.append(random_layer(rng, sizes[index], sizes[index + 1], bits[index], bits[index + 1],
                                   probs, zero_rows, signed=draw(st.booleans())))
    return IntNetwork(input_bits=bits[0], layers=tuple(layers))


def assert_same(a: IntNetwork, b: IntNetwork) -> None:
    assert a.input_bits == b.input_bits and len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert (x.in_bits, x.out_bits, x.shift, x.signed) == (y.in_bits, y.out_bits, y.shift, y.signed)
        assert type(y.signed) is bool
        for field in FIELDS:
            u, v = getattr(x, field), getattr(y, field)
            assert u.shape == v.shape and v.dtype == np.int64 and np.array_equal(u, v), field


@settings(max_examples=150, deadline=None)
@given(networks())
def test_pack_unpack_roundtrip(net):
    words = pack(net, MASK_VERSION)
    assert words.dtype == np.uint32 and words[1] == MASK_VERSION == 2 and words[4] == len(words)
    assert_same(net, unpack(words))
    for index, layer in enumerate(net.layers):  # the mode is bit 24 of descriptor word 2, nothing else
        assert words[8 + 8 * index + 2] >> 24 == int(layer.signed)


@settings(max_examples=100, deadline=None)
@given(networks())
def test_payload_costs_exactly_the_weight_bits(net):
    words = pack(net, MASK_VERSION)
    for layer, reg in zip(net.layers, regions(net)):
        bits = int(layer.widths.sum())  # 0-bit weights cost nothing
        assert reg.payload_bits == bits and reg.payload_words == -(-bits // 32)
        stream = np.unpackbits(words[reg.payload_base : reg.end].view(np.uint8), bitorder="little")
        assert not stream[bits:].any()  # padding is zero
        assert reg.mask_words == layer.n_out * -(-layer.n_in // 10) and reg.param_words == 3 * layer.n_out
    assert regions(net)[-1].end == len(words)


def tiny_net() -> IntNetwork:
    layer = IntLinear(codes=np.array([[0xA, 0, 0xC3], [0xDEADBEEF, 0x1234, 0]]),
                      widths=np.array([[4, 0, 8], [32, 16, 0]]), in_bits=4, out_bits=0,
                      mult=np.array([5, 0x1FFFF]), bias=np.array([-3, (1 << 40) + 7]), shift=20, name="fc1")
    return IntNetwork(input_bits=4, layers=(layer,))


TINY_WORDS = [
    0x4151504D, 2, 1, 4, 26, 0, 0, 0,  # header: magic, version, layers, input bits, words
    3, 2, 0x00140004, 22, 24, 16, 1, 4,  # n_in, n_out, in|out<<8|shift<<16, mask, payload, params, 1/row, nnz
    5, 0xFFFFFFFD, 0xFFFFFFFF,  # M=5, B=-3 (two's complement, low word first)
    0x1FFFF, 7, 0x100,  # M=2^17-1, B=2^40+7
    0x81,  # row 0 codes 1, 0, 2
    0x1C,  # row 1 codes 4, 3, 0
    0xDBEEFC3A,  # 0xA (bits 0-3), 0xC3 (4-11), low 20 bits of 0xDEADBEEF (12-31)
    0x01234DEA,  # top 12 bits of 0xDEADBEEF (32-43), 0x1234 (44-59), zero padding
]


def test_tiny_image_by_hand():
    words = pack(tiny_net(), MASK_VERSION)
    assert words.tolist() == TINY_WORDS
    assert_same(tiny_net(), unpack(np.array(TINY_WORDS, dtype=np.uint32)))


def signed_tiny_net() -> IntNetwork:
    return dataclasses.replace(tiny_net(), layers=(dataclasses.replace(tiny_net().layers[0], signed=True),))


def test_signed_tiny_image_by_hand():
    """A signed layer differs from the DoReFa one in bit 24 of descriptor word 2 only (codes are all >= 1)."""
    words = pack(signed_tiny_net(), MASK_VERSION)
    assert words.tolist() == [w | 1 << 24 if k == 10 else w for k, w in enumerate(TINY_WORDS)]
    back = unpack(words)
    assert_same(signed_tiny_net(), back)
    assert back.layers[0].signed is True


def test_version_1_images_still_load():
    """Version 1 (no mode bit) loads as all-DoReFa; a version 1 image with bit 24 set is rejected."""
    old = corrupt(1, 1)
    assert_same(tiny_net(), unpack(old))
    old[10] |= 1 << 24
    with pytest.raises(UserError, match=r"'layer 0 bits/shift' \(word 10\).*reserved.*version 1.*version 2"):
        unpack(old, where="old.bin")


def test_signed_zero_code_is_rejected():
    """q = 0 is c = -2^(m-1), outside the symmetric range: packing and unpacking name the field."""
    layer = dataclasses.replace(tiny_net().layers[0], codes=np.array([[0, 0, 0xC3], [0xDEADBEEF, 0x1234, 0]]))
    words = pack(IntNetwork(input_bits=4, layers=(layer,)), MASK_VERSION)  # fine as DoReFa
    with pytest.raises(UserError, match="'codes' of a signed layer"):
        pack(IntNetwork(input_bits=4, layers=(dataclasses.replace(layer, signed=True),)))
    words[10] |= 1 << 24
    with pytest.raises(UserError, match=r"bad\.bin: layer 0.*'codes' of a signed layer"):
        unpack(words, where="bad.bin")


def test_write_read_roundtrip(tmp_path):
    net = tiny_net()
    record = write_image(tmp_path / "img", net, extra={"scales": [0.5, 0.25]}, version=MASK_VERSION)
    out = tmp_path / "img"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "weights.bin", "weights.hex"]
    assert out.joinpath("weights.bin").read_bytes()[:4] == b"MPQA"
    assert out.joinpath("weights.hex").read_text().splitlines() == [f"{w:08x}" for w in TINY_WORDS]
    assert json.loads(out.joinpath("manifest.json").read_text()) == record
    assert record["words"] == 26 and record["bytes"] == 104 and record["extra"] == {"scales": [0.5, 0.25]}
    assert record["avg_weight_bits"] == 60 / 6 and record["input_bits"] == 4
    assert record["version"] == 2
    assert record["layers"] == [{
        "name": "fc1", "n_in": 3, "n_out": 2, "in_bits": 4, "out_bits": 0, "shift": 20, "signed": False,
        "mask_base": 22, "mask_words": 2, "payload_base": 24, "payload_words": 2,
        "param_base": 16, "param_words": 6, "nonzero": 4,
        "width_counts": {"0": 2, "4": 1, "8": 1, "16": 1, "32": 1}}]
    # The memory report: 60 payload bits, 6 param words, the rest (header, descriptor, mask, padding) metadata.
    memory = record["memory"]
    assert (memory["payload_bits"], memory["param_bytes"], memory["image_bytes"]) == (60, 24, 104)
    assert memory["metadata_bits"] == 8 * 104 - 8 * 24 - 60 and memory["weights"] == 6
    for path in (out, out / "manifest.json"):
        back, man = read_image(path)
        assert_same(net, back)
        assert back.layers[0].name == "fc1" and man == record
    # A signed network: the manifest says so per layer, and the flag survives the round trip.
    record = write_image(tmp_path / "signed", signed_tiny_net(), version=MASK_VERSION)
    assert record["layers"][0]["signed"] is True
    back, _ = read_image(tmp_path / "signed")
    assert_same(signed_tiny_net(), back)
    assert back.layers[0].signed is True and back.layers[0].name == "fc1"


def test_read_version_1_image(tmp_path):
    """An image directory written by version 1 (its manifest has no 'signed' keys) still reads."""
    words = corrupt(1, 1)
    (tmp_path / "weights.bin").write_bytes(words.astype("<u4").tobytes())
    record = {"format": "mpqaccel-image", "version": 1, "words": len(words), "bytes": 4 * len(words),
              "sha256": hashlib.sha256(words.astype("<u4").tobytes()).hexdigest(), "layers": [{"name": "old"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(record))
    net, man = read_image(tmp_path)
    assert_same(tiny_net(), net)
    assert net.layers[0].name == "old" and man["version"] == 1
    # Manifest and weights.bin must agree on the version.
    (tmp_path / "manifest.json").write_text(json.dumps({**record, "version": 2}))
    with pytest.raises(UserError, match=r"manifest\.json: field 'version' is 2; weights\.bin is version 1"):
        read_image(tmp_path)


def test_large_layer_round_trips():
    """A 1024 x 300 layer of every width packs and unpacks to itself (how fast: `bench export`'s floor)."""
    rng = np.random.default_rng(1)
    net = IntNetwork(4, (random_layer(rng, 1024, 300, 4, 0, np.full(5, 0.2), 0.0),))
    for version in (MASK_VERSION, 3):
        assert_same(net, unpack(pack(net, version)))


def corrupt(index: int, value: int) -> np.ndarray:
    words = np.array(TINY_WORDS, dtype=np.uint32)
    words[index] = value
    return words


@pytest.mark.parametrize("words, field", [
    (corrupt(0, MAGIC ^ 1), "'magic'"),
    (corrupt(1, 4), "'version'"),
    (corrupt(1, 0), "'version'"),
    (np.array(TINY_WORDS[:-1], dtype=np.uint32), "'words'"),
    (corrupt(4, 27), "'words'"),
    (corrupt(2, 0), "'layers'"),
    (corrupt(3, 9), "'input_bits'"),
    (corrupt(6, 1), "'in_width' needs version 3"),  # reserved in version 2
    (corrupt(8, 0), "'layer 0 n_in'"),
    (corrupt(8, 4097), "'layer 0 n_in'"),
    (corrupt(9, 10**6), "'layer 0 n_out'"),
    (corrupt(9, 5), "'layer 0 n_out'"),  # params and mask would end past the image
    (corrupt(10, 0x00140009), "'layer 0 in_bits'"),
    (corrupt(10, 0x00000004), "'layer 0 shift'"),
    (corrupt(10, 0x00400004), "'layer 0 shift'"),
    (corrupt(10, 0x02140004), "'layer 0 bits/shift'"),  # bit 25: reserved
    (corrupt(10, 0x80140004), "'layer 0 bits/shift'"),
    (corrupt(11, 23), "'layer 0 mask_base'"),
    (corrupt(12, 25), "'layer 0 payload_base'"),
    (corrupt(13, 8), "'layer 0 param_base'"),
    (corrupt(14, 2), "'layer 0 mask_words_per_row'"),
    (corrupt(15, 5), "'layer 0 nonzero'"),
    (corrupt(22, 0x81 | 5 << 3), "'layer 0 mask'"),  # reserved code 5
    (corrupt(22, 0x81 | 1 << 9), "'layer 0 mask'"),  # code past n_in
    (corrupt(22, 0x81 | 1 << 30), "'layer 0 mask'"),  # bits 30-31
    (corrupt(22, 0xC1), "'layer 0 payload_base'"),  # 8 more payload bits: a third word, past the end
    (corrupt(22, 0x41), "'layer 0 payload'"),  # 4 fewer: 0x1234's top bits land in the padding
    (corrupt(25, 0x11234DEA), "'layer 0 payload'"),  # non-zero padding
    (corrupt(16, 1 << 17), "'mult'"),
    (corrupt(18, 0x40000000), "'bias'"),
])
def test_unpack_rejects(words, field):
    with pytest.raises(UserError) as info:
        unpack(words, where="bad.bin")
    assert "bad.bin" in str(info.value) and field in str(info.value)


def test_unpack_rejects_trailing_words_and_a_manifest_of_another_layer_count(tmp_path):
    """A version 2 image one word longer than its layers (the header's 'words' updated to match) is refused;
    a manifest that lists another number of layers than the image holds is refused."""
    longer = np.array([*TINY_WORDS, 0], dtype=np.uint32)
    longer[4] += 1
    with pytest.raises(UserError, match=r"^bad\.bin: .*'words'.*the layers end at word 26"):
        unpack(longer, where="bad.bin")
    write_image(tmp_path, tiny_net())
    record = json.loads((tmp_path / "manifest.json").read_text())
    record["layers"] = record["layers"] * 2
    (tmp_path / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"manifest\.json: field 'layers' lists 2 layers; weights\.bin holds 1"):
        read_image(tmp_path)


def test_reserved_code_names_allowed_values():
    with pytest.raises(UserError, match=r"code 5 for weight \(0, 1\).*allowed codes 0\.\.4"):
        unpack(corrupt(22, 0x81 | 5 << 3), where="bad.bin")


def test_pack_rejects_unchained_layers():
    layer = tiny_net().layers[0]
    with pytest.raises(UserError, match="'in_bits'"):
        pack(IntNetwork(input_bits=3, layers=(layer,)))
    with pytest.raises(UserError, match="'n_in'"):
        pack(IntNetwork(input_bits=4, layers=(dataclasses.replace(layer, out_bits=4), layer)))


@pytest.fixture
def image_dir(tmp_path):
    write_image(tmp_path, tiny_net())
    return tmp_path


def test_read_rejects_checksum_mismatch(image_dir):
    data = bytearray((image_dir / "weights.bin").read_bytes())
    data[50] ^= 0x01
    (image_dir / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"weights\.bin.*'sha256'.*expects [0-9a-f]{64}.*has [0-9a-f]{64}"):
        read_image(image_dir)


@pytest.mark.parametrize("name", ["manifest.json", "weights.bin"])
def test_read_refuses_a_pipe_for_a_file_instead_of_waiting_on_it(image_dir, name):
    """A named pipe (a FIFO) where a file of the image goes: refused, naming it; reading it waited for a writer
    that never came (2026-12-06). The read runs in a thread so that a regression fails instead of hanging."""
    (image_dir / name).unlink()
    os.mkfifo(image_dir / name)
    caught = []

    def read():
        try:
            read_image(image_dir)
        except UserError as exc:
            caught.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "read_image waits on the pipe"
    assert caught == [f"{image_dir / name}: is not a regular file (a device or a pipe); expected the image's file"]


def test_read_rejects_wrong_size(image_dir):
    whole = (image_dir / "weights.bin").read_bytes()
    (image_dir / "weights.bin").write_bytes(whole[:-4])
    with pytest.raises(UserError, match=rf"weights\.bin: holds {len(whole) - 4} bytes; manifest\.json field 'bytes' "
                                        rf"expects {len(whole)}$"):
        read_image(image_dir)
    # A count the manifest agrees with that is no whole number of words: said as such (it read as a mismatch).
    manifest = json.loads((image_dir / "manifest.json").read_text())
    (image_dir / "manifest.json").write_text(json.dumps({**manifest, "bytes": len(whole) - 2}))
    (image_dir / "weights.bin").write_bytes(whole[:-2])
    with pytest.raises(UserError, match=rf"holds {len(whole) - 2} bytes, which is no whole number of 32-bit words"):
        read_image(image_dir)


@pytest.mark.parametrize("text, field", [
    ("{", "'format'"), ("[]", "'format'"), ('{"format": "other", "version": 1}', "'format'"),
    ('{"format": "mpqaccel-image", "version": 4}', "'version'"),
    ('{"format": "mpqaccel-image", "version": true}', "'version'"),
])
def test_read_rejects_bad_manifest(image_dir, text, field):
    (image_dir / "manifest.json").write_text(text)
    with pytest.raises(UserError) as info:
        read_image(image_dir)
    assert "manifest.json" in str(info.value) and field in str(info.value)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("n_in", -1, "field 'layers[0].n_in' is -1; weights.bin gives 3"),
    ("n_out", "2", "field 'layers[0].n_out' is '2'; weights.bin gives 2"),
    ("signed", 0, "field 'layers[0].signed' is 0; weights.bin gives False"),
    ("width_counts", {"0": 6}, "field 'layers[0].width_counts' is {'0': 6}; weights.bin gives {'0': 2, "),
    (None, [1], "field 'layers[0]' is 1; expected an object"),
    ("input_bits", 99, "field 'input_bits' is 99; weights.bin gives 4"),
    ("words", 5, "field 'words' is 5; weights.bin gives "),
])
def test_a_manifest_that_describes_another_image_is_refused(image_dir, key, value, message):
    """The manifest's description (sizes, widths, buffers, counts) is the words' or the image is refused, naming the
    field and what weights.bin gives: the readers use the words, but a report would print the manifest's."""
    path = image_dir / "manifest.json"
    record = json.loads(path.read_text())
    assert read_image(image_dir)[1] == record  # as written, it reads
    if key is None:
        record["layers"] = value
    elif key in ("input_bits", "words"):
        record[key] = value
    else:
        record["layers"][0][key] = value
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=re.escape(f"manifest.json: {message}")):
        read_image(image_dir)


@pytest.mark.parametrize("name", ["manifest.json", "weights.bin"])
def test_read_rejects_missing_file(image_dir, name):
    (image_dir / name).unlink()
    with pytest.raises(UserError, match=rf"{name}: file not found"):
        read_image(image_dir)


@pytest.mark.parametrize("name", ["weights.bin", "weights.hex"])
def test_an_images_data_file_given_for_the_image_names_its_folder(image_dir, name):
    """`--image out/x/weights.bin`: told to give the folder (was a JSON decode error about field 'format')."""
    with pytest.raises(UserError) as info:
        read_image(image_dir / name)
    assert f"not as {name}: give {image_dir}" in str(info.value)
    assert read_image(image_dir / "manifest.json")[1] == read_image(image_dir)[1]  # the manifest itself still reads


def test_a_missing_image_folder_is_named_as_a_folder(tmp_path):
    """(was "<folder>: file not found; expected the manifest written by write_image"); a missing manifest.json
    named as a path is a missing file, not a folder."""
    with pytest.raises(UserError, match=r"missing: no such image folder; give the folder `build\.py export --out`"):
        read_image(tmp_path / "missing")
    with pytest.raises(UserError, match=r"manifest\.json: file not found; expected the manifest written by `build"):
        read_image(tmp_path / "manifest.json")


def test_another_file_than_a_manifest_says_what_an_image_is(image_dir):
    (image_dir / "notes.txt").write_bytes(b"\xe8 not json")
    with pytest.raises(UserError, match=r"notes\.txt: not valid JSON .*expected an image folder or its manifest"):
        read_image(image_dir / "notes.txt")


def test_write_leaves_no_partial_files(tmp_path):
    good = tiny_net()
    bad_layer = dataclasses.replace(good.layers[0], widths=np.array([[4, 0, 3], [32, 16, 0]]))
    bad = IntNetwork(input_bits=4, layers=(bad_layer,))
    with pytest.raises(UserError, match="'widths'"):
        write_image(tmp_path / "new", bad)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    # A failed write over an existing image keeps the old one intact and leaves no temporaries.
    record = write_image(tmp_path / "old", good)
    with pytest.raises(UserError, match="'widths'"):
        write_image(tmp_path / "old", bad)
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["manifest.json", "weights.bin",
                                                                     "weights.hex"]
    assert read_image(tmp_path / "old")[1] == record


def test_write_cleans_up_when_a_file_fails(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("model.export.image.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path, tiny_net())
    assert list(tmp_path.iterdir()) == []
