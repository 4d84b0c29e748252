# amaranth: UnusedElaboratable=no
"""The Vivado project of ``build.py system`` (no Vivado here): files, the ports and address map the TCL uses,
and the BRAM image (``weights.mem``) word for word."""

import os
import re
import subprocess

import numpy as np
import pytest

import build
from hw.array.top import ArrayConfig
from hw.system import vivado
from hw.system.register_map import address_width
from hw.system.vivado import BOARDS, CONTROL_BASE, CONTROL_RANGE, IP_NAME, mem_file, parse_mem, write_project
from hw.system.zynq_top import SYSTEM_TOP_NAME, MpqSystem
from model.export.image import write_image
from model.export.layout_v3 import pack as pack_v3
from tests.hw.netgen import random_network

CONFIG = ArrayConfig(engines=1, lanes=1, buffer_words=512, fmap_rows=32, row_codes=3, fan_in_width=6,
                     channel_bits=5)


@pytest.fixture(scope="module")
def net():
    return random_network(np.random.default_rng(3), sizes=(23, 17, 5), act_bits=4)


def verilog_ports(text: str) -> set[str]:
    header = text[text.index(f"module {SYSTEM_TOP_NAME}("):]
    return {p.strip() for p in header[header.index("(") + 1:header.index(");")].split(",")}


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_project_with_bram_image(tmp_path, net, board):
    words = pack_v3(net)[0]
    paths = write_project(tmp_path, board, MpqSystem(CONFIG, init=words.tolist()))
    assert set(paths) == {"mpq_system.v", "block_design.tcl", "mpq_system.xdc", "build.tcl", "build.sh",
                          "weights.mem", "write_mmi.tcl", "update_image.sh"}
    # the .mem is the packed image word for word
    assert parse_mem(paths["weights.mem"].read_text()) == words.tolist()
    verilog = paths["mpq_system.v"].read_text()
    ports = verilog_ports(verilog)
    tcl = paths["block_design.tcl"].read_text()
    # every accelerator pin the TCL connects is a port of the Verilog top
    pins = set(re.findall(rf"{IP_NAME}/(\w+)", tcl))
    assert pins == {"ap_clk", "ap_rst_n", "interrupt", "s_axi_control", "m_axi_gmem"}
    assert {"ap_clk", "ap_rst_n", "interrupt"} <= ports and "clk" not in ports and "rst" not in ports
    for bus, channels in (("s_axi_control", ("awaddr awvalid awready wdata wstrb wvalid wready bresp bvalid bready "
                                            "araddr arvalid arready rdata rresp rvalid rready")),
                          ("m_axi_gmem", ("awaddr awlen awsize awburst awvalid awready wdata wstrb wlast wvalid "
                                         "wready bresp bvalid bready araddr arlen arsize arburst arvalid arready "
                                         "rdata rresp rlast rvalid rready"))):
        missing = [c for c in channels.split() if f"{bus}_{c}" not in ports]
        assert not missing, f"{bus} lacks {missing}: IP integrator would not infer the interface"
    # address map: the control window holds the register map; GP0/HP0 wiring; FCLK0 at 100 MHz
    assert f"-offset 0x{CONTROL_BASE:08X} -range 0x{CONTROL_RANGE:X}" in tcl
    assert 1 << address_width() <= CONTROL_RANGE
    assert "PCW_FPGA0_PERIPHERAL_FREQMHZ {100}" in tcl and "PCW_S_AXI_HP0_DATA_WIDTH {64}" in tcl
    assert "processing_system7_0/M_AXI_GP0" in tcl and "processing_system7_0/S_AXI_HP0]" in tcl
    assert "processing_system7_0/IRQ_F2P" in tcl
    assert BOARDS[board].part in paths["build.tcl"].read_text()
    assert "write_mmi" in paths["build.tcl"].read_text()
    # the BRAM initial contents in the Verilog are the image
    assert f"memory[0] = 32'd{int(words[0])};" in verilog and f"memory[{len(words) - 1}] = 32'd{int(words[-1])};" in verilog


def test_project_without_bram_image_has_no_mem(tmp_path):
    """Nor does its folder keep the BRAM image files of an earlier `--bram-image` project there (a weights.mem
    beside a design that loads its image at run time); a file the project does not own stays."""
    for name in ("weights.mem", "write_mmi.tcl", "update_image.sh", "notes.txt"):
        (tmp_path / name).write_text("from before\n")
    paths = write_project(tmp_path, "pynq_z2", MpqSystem(CONFIG))
    assert "weights.mem" not in paths and "write_mmi" not in paths["build.tcl"].read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*paths, "notes.txt"])
    assert all(p.parent == tmp_path and p.is_file() for p in paths.values())


def test_mem_format_errors_and_round_trip():
    assert parse_mem(mem_file([0, 0xFFFFFFFF, 5])) == [0, 0xFFFFFFFF, 5]
    with pytest.raises(ValueError, match="line 2"):
        parse_mem("@0\nXYZ\n")
    with pytest.raises(ValueError, match="board must be one of pynq_z2, arty_z7_20"):
        write_project("/nonexistent", "zybo", MpqSystem(CONFIG))


def test_cli_system(tmp_path, net, capsys):
    write_image(tmp_path / "image", net)
    out = tmp_path / "project"
    assert build.main(["system", "--board", "pynq_z2", "--image", str(tmp_path / "image"), "--bram-image",
                       "--engines", "1", "--out", str(out)]) == 0
    words = np.fromfile(tmp_path / "image" / "weights.bin", dtype="<u4")
    assert parse_mem((out / "weights.mem").read_text()) == words.tolist()
    assert "version 4 path" not in capsys.readouterr().out  # a version 3 image: config_for leaves it out
    assert build.main(["system", "--image", str(tmp_path / "image"), "--engines", "1", "--vertical",
                       "--out", str(tmp_path / "v4")]) == 0
    assert "version 4 path" in capsys.readouterr().out
    assert build.main(["system", "--image", str(tmp_path / "missing")]) == 2
    assert "missing: no such image folder" in capsys.readouterr().err
    # --lanes as sim, synth and verilog take it (bench accel's array is --engines 4 --lanes 42)
    assert build.main(["system", "--image", str(tmp_path / "image"), "--engines", "1", "--lanes", "3",
                       "--out", str(tmp_path / "lanes")]) == 0
    assert "1 engines x 3 lanes" in capsys.readouterr().out
    lanes = re.findall(r"^module \S*\.engine0\.lane(\d+)\b", (tmp_path / "lanes" / f"{SYSTEM_TOP_NAME}.v").read_text(),
                       re.MULTILINE)
    assert sorted(lanes) == ["0", "1", "2"]


def test_cli_system_takes_the_manifest_path_and_refuses_arrays_past_the_chip(tmp_path, net, capsys):
    """``--image DIR/manifest.json``, as every other command takes it (it read ``manifest.json/weights.bin``); an
    array whose lanes alone need more DSP48E1 than the XC7Z020 has is refused before it is elaborated (64 x 64
    lanes ran for minutes), as by ``verilog --core array``; nothing written."""
    write_image(tmp_path / "image", net)
    assert build.main(["system", "--image", str(tmp_path / "image" / "manifest.json"), "--engines", "1",
                       "--out", str(tmp_path / "by_manifest")]) == 0
    capsys.readouterr()
    for argv in (["system", "--engines", "8", "--lanes", "28"], ["verilog", "--core", "array", "--engines", "64",
                                                                  "--lanes", "64"]):
        out = tmp_path / argv[0]
        assert build.main([*argv, "--image", str(tmp_path / "image"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--lanes {argv[-1]} is {int(argv[-3]) * int(argv[-1])} DSP48E1 lanes, past the XC7Z020's 220 DSP48E1" in err, err
        assert not out.exists() or not any(out.iterdir())


#: Vivado's commands as far as ``build.tcl``'s own logic reads them, for tclsh (no Vivado here): every other command
#: is logged and returns nothing; the board parts installed, and the worst setup and hold slacks, come from the
#: environment. What this runs is the scripts' Tcl (their syntax, which file they copy when), not Vivado.
VIVADO_STAND_IN = r"""
set log [open [file join [pwd] vivado.log] w]
proc unknown {args} { global log; puts $log $args; return "" }
proc get_board_parts {args} { global env; return [lsearch -all -inline -glob $env(MPQ_BOARD_PARTS) [lindex $args end]] }
proc current_project {} { return project }
proc set_property {args} {
    global log props
    puts $log [concat set_property $args]
    if {[lindex $args 0] eq "board_part"} { set props(board_part) [lindex $args 1] }
}
proc get_property {name args} {
    global props
    switch -- $name {
        board_part { if {[info exists props(board_part)]} { return $props(board_part) } else { return "" } }
        PROGRESS { return "100%" }
        SLACK { return [lindex $args 0] }
    }
    return ""
}
proc get_timing_paths {args} {
    global env
    if {"-hold" in $args} { return $env(MPQ_WHS) } else { return $env(MPQ_WNS) }
}
proc make_wrapper {args} { return wrapper.v }
source build.tcl
"""


def run_build_tcl(folder, board, parts, wns, whs):
    """``build.tcl`` and ``block_design.tcl`` of ``board`` run by tclsh in ``folder`` beside an implementation's
    bitstream and hand-off file; the process and the logged Vivado commands."""
    (folder / "build.tcl").write_text(vivado.build_tcl(BOARDS[board], bram_image=False))
    (folder / "block_design.tcl").write_text(vivado.block_design_tcl(BOARDS[board]))
    (folder / "stand_in.tcl").write_text(VIVADO_STAND_IN)
    runs = folder / "vivado" / "mpq_vivado.runs" / "impl_1"
    handoff = folder / "vivado" / "mpq_vivado.gen" / "sources_1" / "bd" / "mpq_bd" / "hw_handoff"
    for path, text in ((runs / "mpq_bd_wrapper.bit", "the bitstream"), (handoff / "mpq_bd.hwh", "the hand-off")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {**os.environ, "MPQ_BOARD_PARTS": " ".join(parts), "MPQ_WNS": str(wns), "MPQ_WHS": str(whs)}
    proc = subprocess.run(["tclsh", "stand_in.tcl"], cwd=folder, env=env, capture_output=True, text=True,
                          check=False)
    return proc, (folder / "vivado.log").read_text()


INSTALLED = ("tul.com.tw:pynq-z2:part0:1.0", "digilentinc.com:arty-z7-20:part0:1.0",
             "digilentinc.com:arty-z7-20:part0:1.1")


@pytest.mark.usefixtures("tclsh")
@pytest.mark.parametrize("board,newest", [("pynq_z2", "tul.com.tw:pynq-z2:part0:1.0"),
                                          ("arty_z7_20", "digilentinc.com:arty-z7-20:part0:1.1")])
def test_build_tcl_takes_the_newest_board_files_and_copies_a_bitstream_that_meets_timing(tmp_path, board, newest):
    """The board's newest installed files (Digilent's Arty Z7-20 files are at 1.1; a fixed 1.0 found none) and the
    PS7's board preset; the bitstream and the hand-off file copied out."""
    proc, log = run_build_tcl(tmp_path, board, INSTALLED, 0.3, 0.05)
    assert proc.returncode == 0, proc.stderr
    assert f"set_property board_part {newest} project" in log and 'apply_board_preset "1"' in log
    assert (tmp_path / "mpq_system.bit").read_text() == "the bitstream"
    assert (tmp_path / "mpq_system.hwh").read_text() == "the hand-off"


@pytest.mark.usefixtures("tclsh")
def test_build_tcl_without_board_files_configures_the_ps_by_hand(tmp_path):
    proc, log = run_build_tcl(tmp_path, "arty_z7_20", INSTALLED[:1], 0.0, 0.0)
    assert proc.returncode == 0, proc.stderr
    assert "board_part" not in log and 'apply_board_preset "0"' in log and "PCW_UIPARAM_DDR_PARTNO" in log


@pytest.mark.usefixtures("tclsh")
@pytest.mark.parametrize("wns,whs", [(-0.2, 0.05), (0.3, -0.01)])
def test_build_tcl_stops_on_failed_timing_and_leaves_no_bitstream(tmp_path, wns, whs):
    """Vivado writes a bitstream that misses timing; build.tcl stops before it copies one out, and a bitstream an
    earlier build left is gone too."""
    (tmp_path / "mpq_system.bit").write_text("an earlier build's")
    proc, _ = run_build_tcl(tmp_path, "pynq_z2", INSTALLED, wns, whs)
    assert proc.returncode != 0
    assert f"timing not met at 100 MHz (setup slack {wns} ns, hold slack {whs} ns): see timing.rpt" in proc.stderr
    assert not (tmp_path / "mpq_system.bit").exists() and not (tmp_path / "mpq_system.hwh").exists()
