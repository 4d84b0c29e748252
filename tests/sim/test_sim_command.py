"""``build.py sim`` / ``verilog`` with ``--core array``: an exported image on the packed multiplier array sized for
it (a conv net, a vertical-layered MLP at a width and at a table row), bit for bit against golden under random
back-pressure (Icarus), and the options of one core refused with the other."""

import json
from pathlib import Path

import numpy as np
import pytest

import build
from model.export.image import write_image
from model.export.image_v4 import write_vertical_image
from sim import image_run
from sim.reads import array_words_read
from tests.hw.netgen import calibrated
from tests.model.export.test_image_v4 import random_net as random_vertical_net
from tests.model.export.test_layout_v3 import resnet_like

needs_icarus = pytest.mark.usefixtures("icarus")


@pytest.fixture(scope="module")
def conv_image(tmp_path_factory) -> Path:
    """A small residual conv net (stem, two blocks, global pool, FC) on the digits' 8 x 8 4-bit codes, its convs
    calibrated on 32 digits (``tests.hw.netgen.calibrated``: uncalibrated, it scores every image the same)."""
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("conv") / "image"
    digits = np.round(load_digits().data[:32] * 15 / 16).astype(np.int64).reshape(-1, 1, 8, 8)
    write_image(path, calibrated(resnet_like(np.random.default_rng(3)), digits, np.random.default_rng(3)))
    return path


@needs_icarus
def test_a_conv_image_runs_on_the_array_and_not_on_the_fc_core(conv_image, tmp_path, capsys, monkeypatch):
    """The fully connected core (the default) refuses the conv image, naming it and ``--core array``; on the array
    (2 engines, lanes for its 8-pixel rows) 3 test images match golden under back-pressure, and read the words
    sim/reads.py models (a model that differs fails the command)."""
    assert build.main(["sim", "--image", str(conv_image), "--images", "3", "--out", str(tmp_path / "fc")]) == 2
    err = capsys.readouterr().err
    assert str(conv_image) in err and "a conv network" in err and "add --core array" in err
    assert not (tmp_path / "fc").exists()

    out = tmp_path / "array"
    assert build.main(["sim", "--image", str(conv_image), "--core", "array", "--engines", "2", "--images", "3",
                       "--out", str(out)]) == 0
    report = json.loads((out / "sim.json").read_text())
    assert report["images"] == 3 and report["mismatches"] == 0 and report["passed"]
    assert report["read_mismatches"] == 0  # every image read the words sim/reads.py models
    assert report["array_config"]["engines"] == 2 and report["array_config"]["lanes"] == 4
    assert report["cycles_per_image"] > 0 and report["data"]["name"] == "digits"
    # each of its 6 weight layers' cycles against its tiles' bound (sim/bounds.py), summing to the image's cycles
    layers = report["layers"]
    assert [row["layer"] for row in layers] == list(range(6)) and all(row["tile_bound"] > 0 for row in layers)
    assert abs(sum(row["cycles"] for row in layers) - report["cycles_per_image"]) <= len(layers)
    assert all(row["over"] == pytest.approx(row["cycles"] - row["tile_bound"], abs=0.11) for row in layers)
    printed = capsys.readouterr().out
    assert "RTL simulation (packed multiplier array)" in printed and "cycles per layer" in printed

    # a model one word short of what the RTL reads: the same run fails, naming the read mismatches
    def one_word_short(*args):
        weight_reads, reads = array_words_read(*args)
        return weight_reads, reads - 1

    monkeypatch.setattr(image_run, "array_words_read", one_word_short)
    assert build.main(["sim", "--image", str(conv_image), "--core", "array", "--engines", "2", "--images", "3",
                       "--out", str(tmp_path / "short")]) == 1
    assert "0 mismatches, 3 images whose words read differ from sim/reads.py's" in capsys.readouterr().err
    assert json.loads((tmp_path / "short" / "sim.json").read_text())["read_mismatches"] == 3


@needs_icarus
def test_a_vertical_image_runs_on_the_array_at_a_width_and_a_table_row(tmp_path):
    """A version 4 image loaded as stored and run through the precision register at 2 bits and at row 1 of its
    Eq. 12 table (what ``--system`` does through the driver), each against golden at those widths; the image
    named by its folder, then by its manifest."""
    net = random_vertical_net(11, sizes=(64, 12, 10, 6), widths=(2, 3, 4), rows=2)
    write_vertical_image(tmp_path / "v", net)
    for image, args in ((tmp_path / "v", ["--bits", "2"]), (tmp_path / "v" / "manifest.json", ["--table-row", "1"])):
        out = tmp_path / args[0].strip("-")
        assert build.main(["sim", "--image", str(image), "--core", "array", "--engines", "2", "--images", "3",
                           "--out", str(out), *args]) == 0, args
        report = json.loads((out / "sim.json").read_text())
        assert report["images"] == 3 and report["mismatches"] == 0 and report["array_config"]["vertical"], args
        assert report["read_mismatches"] == 0, args


def test_verilog_writes_the_array_sized_for_the_image(conv_image, tmp_path):
    out = tmp_path / "verilog"
    assert build.main(["verilog", "--image", str(conv_image), "--core", "array", "--engines", "3",
                       "--out", str(out)]) == 0
    assert "module mpq_array" in (out / "mpq_array.v").read_text()
    record = json.loads((out / "array_config.json").read_text())
    assert record["config"]["engines"] == 3 and record["dsp_lanes"] == 3 * record["config"]["lanes"]
    assert record["top"] == "mpq_array" and not (out / "vivado").exists()


def test_every_command_of_the_fc_core_refuses_a_vertical_image(tmp_path, capsys):
    """`sim`, `verilog` and `synth` without --core array refuse a version 4 image alike, naming it and --core array,
    before writing anything (`verilog` used to build the fc core's self-test of its source width)."""
    write_vertical_image(tmp_path / "v", random_vertical_net(11, sizes=(64, 12, 10, 6), widths=(2, 3, 4), rows=2))
    for command in ("sim", "verilog", "synth"):
        out = tmp_path / command
        assert build.main([command, "--image", str(tmp_path / "v"), "--out", str(out)]) == 2, command
        err = capsys.readouterr().err
        assert str(tmp_path / "v") in err and "--core array" in err and not out.exists(), (command, err)


@pytest.mark.parametrize("argv, text", [
    (["sim", "--core", "array", "--batch", "2"], "--batch: an option of the fully connected core"),
    (["sim", "--engines", "2"], "--engines: options of `--core array`"),
    (["sim", "--vertical"], "--vertical: options of `--core array`"),
    (["sim", "--system", "--lanes", "2"], "--lanes: --system runs the Zynq system"),
    (["sim", "--system", "--core", "array"], "--core array: --system runs the Zynq system"),
    (["verilog", "--core", "array", "--selftest-images", "3"], "--selftest-images: an option of the fully"),
    (["verilog", "--lanes", "2"], "--lanes: options of `--core array`"),
    (["verilog", "--core", "array", "--data", "digits"], "--data: an option of the fully connected core"),
    (["verilog", "--core", "array", "--seed", "3"], "--seed: an option of the fully connected core"),
])
def test_the_options_of_one_core_are_refused_with_the_other(conv_image, tmp_path, capsys, argv, text):
    """Refused before anything is read or written, not ignored."""
    out = tmp_path / "out"
    assert build.main([*argv, "--image", str(conv_image), "--out", str(out)]) == 2
    assert text in capsys.readouterr().err and not out.exists()


def test_an_image_the_array_cannot_run_is_named_by_its_path(tmp_path, capsys):
    """A stride-3 conv on the digits' 8 x 8 codes (in the integer contract, not on the array): `verilog`, `synth`
    and `sim` with --core array refuse it naming the image's path, not "image 0", before writing anything."""
    from model.export.golden_net import ConvStage, FCStage, GlobalSumPool, IntConvNetwork
    from tests.model.export.test_layout_v3 import fc_layer, make_conv

    rng = np.random.default_rng(3)
    stem = ConvStage(make_conv(rng, 1, 2, 3, stride=3, padding=1, width_choices=(0, 4)))
    fc = FCStage(fc_layer(rng, 2, 3, 4, [0.5, 0.5, 0, 0, 0]), pooled=9)
    net = IntConvNetwork(4, (1, 8, 8), (stem, GlobalSumPool(), fc))
    write_image(tmp_path / "s3", net)
    for command in ("verilog", "synth", "sim"):
        out = tmp_path / command
        assert build.main([command, "--core", "array", "--image", str(tmp_path / "s3"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: {tmp_path / 's3'}: layer 0 fields 'stride', 'pool' are 3, 0" in err, (command, err)
        assert not out.exists(), command


def test_bits_or_a_table_row_for_a_version_3_image_names_the_option(conv_image, tmp_path, capsys):
    """--bits / --table-row choose a vertical-layered image's widths: for a version 3 image the error names the
    option and the image (it used to name the image's version field alone); a missing image is named as such."""
    for option in (["--bits", "3"], ["--table-row", "0"]):
        out = tmp_path / "out"
        assert build.main(["sim", "--core", "array", *option, "--image", str(conv_image), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{' '.join(option)} applies to a vertical-layered image (format version 4) only; {conv_image}" in err
        assert not out.exists()
    assert build.main(["sim", "--core", "array", "--bits", "3", "--image", str(tmp_path / "gone"), "--out",
                       str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "gone") in err and "applies to" not in err, err


def test_verilog_refuses_a_seed_for_an_image_that_records_its_data_set(tmp_path, capsys):
    """--seed chooses the digits split of an image that records none; refused (not ignored) for one that does."""
    from model.data import DataRecord
    from tests.idx_files import write_idx_folder

    net = resnet_like(np.random.default_rng(3))  # 3 classes: an IDX folder of 8 x 8 images labelled 0..2
    root = write_idx_folder(tmp_path / "idx", n_train=6, n_test=30, side=8, n_classes=3)
    write_image(tmp_path / "image", net, data=DataRecord.of("idx", root, (1, 8, 8), 4, seed=2).to_json())
    out = tmp_path / "verilog"
    assert build.main(["verilog", "--image", str(tmp_path / "image"), "--core", "fc", "--seed", "5",
                       "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--seed 5:" in err and "records its data set" in err and not out.exists()
