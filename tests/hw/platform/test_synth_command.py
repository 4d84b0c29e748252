"""``build.py synth --core array`` reads every image the array runs: a vertical-layered (version 4) image as
stored, sized with the plane decoders, as ``sim`` and ``verilog`` with ``--core array`` do."""

import os

import numpy as np

import build
from model.export.image import pack, write_image
from model.export.image_v4 import array_words, pack_vertical, write_vertical_image
from tests.model.export.test_image_v4 import random_net as random_vertical_net
from tests.model.export.test_layout_v3 import resnet_like


def test_array_words_are_a_vertical_images_as_stored_and_a_version_3_pack_otherwise(tmp_path):
    vnet = random_vertical_net(11, sizes=(64, 12, 10, 6), widths=(2, 3, 4), rows=2)
    write_vertical_image(tmp_path / "v", vnet)
    assert np.array_equal(array_words(tmp_path / "v"), pack_vertical(vnet))
    net = resnet_like(np.random.default_rng(3))
    write_image(tmp_path / "c", net)
    assert np.array_equal(array_words(tmp_path / "c" / "manifest.json"), pack(net))


def test_synth_sizes_the_array_for_a_vertical_image(tmp_path, capsys, monkeypatch):
    """The image is read and the array's Verilog written with the version 4 path (Yosys then is not on PATH here:
    the run ends at it, exit 1, naming it; before, the image was refused as 'version 4'). The engine's Yosys run,
    in a thread of its own, fails the same way and is re-raised in the caller: no thread traceback (pytest fails
    a test on one)."""
    write_vertical_image(tmp_path / "v", random_vertical_net(11, sizes=(64, 12, 10, 6), widths=(2, 3, 4), rows=2))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "synth"
    assert build.main(["synth", "--core", "array", "--engines", "2", "--image", str(tmp_path / "v"),
                       "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "yosys not found on PATH" in err and "version" not in err, err
    engine = (out / "mpq_engine.v").read_text()
    assert "module \\mpq_engine.planes " in engine, "the engine was built without the plane decoder"
    assert os.path.isfile(out / "mpq_array.v")
