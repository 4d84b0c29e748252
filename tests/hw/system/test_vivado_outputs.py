# amaranth: UnusedElaboratable=no
"""`build.py system` / :func:`hw.system.vivado.write_project` check every name of the project before writing any:
a folder where a file goes is an error naming it, with nothing written and no temporary file left."""

import re

import numpy as np
import pytest

import build
from hw.array.top import ArrayConfig
from hw.system.vivado import check_project_folder, project_files, write_project
from hw.system.zynq_top import SYSTEM_TOP_NAME, MpqSystem
from model.errors import UserError
from model.export.image import write_image
from model.export.layout_v3 import pack as pack_v3
from tests.hw.netgen import random_network

CONFIG = ArrayConfig(engines=1, lanes=1, buffer_words=512, fmap_rows=32, row_codes=3, fan_in_width=6,
                     channel_bits=5)


@pytest.fixture(scope="module")
def net():
    return random_network(np.random.default_rng(3), sizes=(23, 17, 5), act_bits=4)


@pytest.mark.parametrize("name", ["build.sh", f"{SYSTEM_TOP_NAME}.v", "weights.mem"])
def test_write_project_refuses_a_folder_where_a_file_goes(tmp_path, net, name):
    (tmp_path / name).mkdir()
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / name}: is not a file; the Vivado project writes")):
        write_project(tmp_path, "pynq_z2", MpqSystem(CONFIG, init=pack_v3(net)[0].tolist()))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing written, no temporary file
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / name}: is not a file")):
        check_project_folder(tmp_path, bram_image=True)
    if name == "weights.mem":  # written only with a BRAM image
        check_project_folder(tmp_path, bram_image=False)


def test_project_files_are_the_files_written(tmp_path, net):
    paths = write_project(tmp_path, "arty_z7_20", MpqSystem(CONFIG, init=pack_v3(net)[0].tolist()))
    assert sorted(paths) == sorted(project_files(True)) == sorted(p.name for p in tmp_path.iterdir())


def test_cli_system_refuses_a_folder_where_a_file_goes(tmp_path, net, capsys):
    write_image(tmp_path / "image", net)
    out = tmp_path / "project"
    (out / "build.tcl").mkdir(parents=True)
    assert build.main(["system", "--image", str(tmp_path / "image"), "--engines", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out / 'build.tcl'}: is not a file")
    assert [p.name for p in out.iterdir()] == ["build.tcl"]


def test_cli_system_and_sim_system_name_the_words_of_an_image_they_do_not_run(tmp_path, capsys):
    """A version 2 image (the fully connected core's; on the digits' 64 inputs, which `sim` reads first): exit 2
    naming its weights.bin (it said "image 0"), with nothing written."""
    write_image(tmp_path / "image", random_network(np.random.default_rng(4), sizes=(64, 9, 10), act_bits=4),
                version=2)
    said = f"error: {tmp_path / 'image' / 'weights.bin'}: field 'version' is 2; the array runs version 3 and 4"
    for argv in (["system", "--engines", "1"], ["sim", "--system", "--images", "2"]):
        out = tmp_path / argv[0]
        assert build.main([*argv, "--image", str(tmp_path / "image"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err, err
        assert not out.exists()
