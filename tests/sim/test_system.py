# amaranth: UnusedElaboratable=no
"""The whole Zynq shell (hw/system/zynq_top.py) under cocotb on Icarus, driven by the host driver's own code.

One small array build runs every test (:mod:`sim.system.tb_system`): an MLP and a conv net loaded in turn on the
same RTL (each image's scores equal its golden model's), batches split by the driver, random AXI latency and
back-pressure on both buses; a vertical-layered image run at every width by the precision register alone;
the board backend (driver/pynq_backend.py) through a stand-in for pynq (on numpy 1.x, as on a board:
``BOARD_CASES``);
corrupted images (single fields at their limits, and random single-bit flips signed with their own CRC),
images that DDR does not hold as the driver checksummed them (BAD_CHECKSUM), bad register values, SLVERR and
DECERR responses and a bus that stops answering in each state that waits on it, ending with the documented
status code and never a hang.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hw.array.top import ArrayConfig
from hw.platform.verilog import system_verilog, write_text_atomically
from hw.system.register_map import StatusCode
from hw.system.zynq_top import SYSTEM_TOP_NAME, MpqSystem
from model.export.golden_net import IntConvNetwork
from model.export.image_v4 import pack_vertical
from model.export.layout_v3 import pack as pack_v3
from sim.system.runner import run_block_test
from tests.hw.array.test_top import random_conv_net
from tests.hw.netgen import calibrated, random_network
from tests.model.export.test_image_v4 import random_net as random_vertical_net
from tests.model.export.test_image_v4 import random_resnet as random_vertical_resnet

CONFIG = ArrayConfig(engines=2, lanes=5, buffer_words=2048, fmap_rows=128, row_codes=12, fan_in_width=9,
                     channel_bits=5)
TEST_MODULE = "sim.system.tb_system"
#: The build's watchdog (the longest stretch without a transfer or ``done`` in these tests, measured on
#: 2026-12-06 by sampling the shell's ``watchdog`` register every cycle: 2,749 cycles in ``random_flips``, under
#: 1,000 in the others).
TIMEOUT_CYCLES = 20_000
#: The watchdog tests' build: the same RTL and images with a shorter watchdog, since their stalls last one to four
#: watchdog periods each (``watchdog_states`` took 124-130 s of the suite's slowest worker at 20,000; 29 s alone
#: at 5,000). Still above every stretch the two tests' runs of images a and b have without a stall.
WATCHDOG_TEST_CYCLES = 5_000
#: Classes of image a (the MLP), the score FIFO depth of the preloaded build.
A_CLASSES = 5
icarus = pytest.mark.usefixtures("icarus")


def image_case(net, n_images: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = net.image_shape if hasattr(net, "image_shape") else (net.layers[0].n_in,)
    inputs = rng.integers(0, 1 << net.input_bits, size=(n_images, *shape))
    if isinstance(net, IntConvNetwork):  # (its codes depend on the image: tests.hw.netgen.calibrated)
        net = calibrated(net, inputs, rng)
    return {"words": pack_v3(net)[0].astype(np.uint32), "inputs": inputs.reshape(n_images, -1),
            "expected": net.forward(inputs).astype(np.int64), "input_bits": np.int64(net.input_bits)}


def corrupt_stream(net) -> np.ndarray:
    """The image of ``net`` with its first layer's weight stream set to ones: its class counts overrun the
    fan-in, which the row decoders flag (BAD_STREAM)."""
    words, _, regions = pack_v3(net)
    bad = words.astype(np.uint32)
    bad[regions[0].stream_base:regions[0].end] = 0xFFFFFFFF
    return bad


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("system")
    verilog = write_text_atomically(work / f"{SYSTEM_TOP_NAME}.v",
                                    system_verilog(CONFIG, timeout_cycles=TIMEOUT_CYCLES))
    mlp = random_network(np.random.default_rng(4), sizes=(23, 17, A_CLASSES), act_bits=4)
    a = image_case(mlp, 7, 1)
    b = image_case(random_conv_net(np.random.default_rng(2001)), 3, 2)
    c = image_case(random_network(np.random.default_rng(5), sizes=(11, 7, 3), act_bits=4), 3, 3)
    assert len(c["words"]) % 2, "image c must have an odd number of words (the DMA's pad word)"
    d = image_case(random_network(np.random.default_rng(6), sizes=(11, 9, A_CLASSES + 1), act_bits=4), 2, 4)
    assert a["expected"].shape[1] == A_CLASSES and b["expected"].shape[1] <= A_CLASSES
    arrays = {f"{k}_{name}": v for k, img in (("a", a), ("b", b), ("c", c), ("d", d)) for name, v in img.items()}
    vnet = random_vertical_net(9, sizes=(23, 14, 12, 5), widths=(2, 3, 4), rows=1)
    vin = np.random.default_rng(9).integers(0, 256, size=(3, 23))
    arrays.update({"v_words": pack_vertical(vnet).astype(np.uint32), "v_inputs": vin, "v_input_bits": np.int64(8),
                   "v_expected": vnet.forward(vin, 4).astype(np.int64),
                   "v_expected_row0": vnet.forward(vin, vnet.table[0]).astype(np.int64),
                   **{f"v_expected_{b}": vnet.forward(vin, b).astype(np.int64) for b in (2, 3, 4)}})
    wnet = random_vertical_resnet(5, rows=2, row_groups=True)  # for random_flips: a vertical conv net
    win = np.random.default_rng(10).integers(0, 256, size=(2, *wnet.image_shape))
    arrays.update({"w_words": pack_vertical(wnet).astype(np.uint32), "w_inputs": win.reshape(2, -1),
                   "w_input_bits": np.int64(8), "w_expected": wnet.forward(win, 4).astype(np.int64)})
    arrays["corrupt_words"] = corrupt_stream(mlp)
    arrays["corrupt_status"] = np.int64(StatusCode.BAD_STREAM)
    path = work / "case.npz"
    np.savez(path, **arrays)
    return verilog, path


@pytest.fixture(scope="module")
def watchdog_case(case, tmp_path_factory) -> tuple[Path, Path]:
    """:func:`case`'s images on a build whose watchdog is :data:`WATCHDOG_TEST_CYCLES`."""
    work = tmp_path_factory.mktemp("system_watchdog")
    verilog = write_text_atomically(work / f"{SYSTEM_TOP_NAME}.v",
                                    system_verilog(CONFIG, timeout_cycles=WATCHDOG_TEST_CYCLES))
    return verilog, case[1]


#: The board backend's case: collected on numpy 1.x only, the numpy of the boards it runs on, where
#: tests/driver/test_board_environment.py runs it (on the suite's numpy 2 it would be the same run a second time).
BOARD_CASES = [("pynq_backend", 14, 1)] if np.__version__.startswith("1.") else []


@icarus
@pytest.mark.parametrize("test,seed,stall", [
    ("reload_and_batches", 1, 1), ("reload_and_batches", 2, 0), ("corrupt_images", 3, 1),
    ("bad_registers", 4, 1), ("axi_errors", 5, 1), ("bad_checksum", 8, 1),
    ("vertical_widths", 10, 1), ("busy_core", 15, 1), *BOARD_CASES])
def test_system(case, test, seed, stall):
    run_tb_test(case, test, seed, stall)


@icarus
@pytest.mark.parametrize("test,seed", [("watchdog_timeout", 6), ("watchdog_states", 11)])
def test_watchdog(watchdog_case, test, seed):
    """A bus that stops answering past the watchdog, in each state that waits on it (``tb_system``)."""
    run_tb_test(watchdog_case, test, seed, 0, env={"MPQS_TIMEOUT_CYCLES": WATCHDOG_TEST_CYCLES})


def run_tb_test(case, test: str, seed: int, stall: int, env: dict | None = None) -> None:
    """One cocotb test of tb_system on the default build, with the case's images and ``env`` on top."""
    verilog, npz = case
    env = {"MPQS_CASE": npz, "MPQS_SEED": seed, "MPQS_STALL": stall, "MPQS_MAX_BATCH": 3,
           "MPQS_TIMEOUT_CYCLES": TIMEOUT_CYCLES} | (env or {})
    result = run_block_test(verilog, toplevel=SYSTEM_TOP_NAME, test_module=TEST_MODULE, test=test,
                            work_dir=verilog.parent, seed=seed, env=env)
    assert result["passed"], result["log"]


@icarus
def test_random_flips(case, tmp_path):
    """``random_flips`` (8 flips an image by default: 24 until 2026-12-06 and 16 until 2026-12-07, each cut when the
    suite neared its 20 minutes; 900-flip runs in docs/system.md); ``MPQ_FLIPS=150 MPQ_SEED=21 [MPQ_FLIP_IMAGES=w]
    pytest -k random_flips -s`` runs a longer one and prints its outcome counts (docs/system.md "Corrupt images")."""
    seed = int(os.environ.get("MPQ_SEED", "13"))
    run_tb_test(case, "random_flips", seed, 1, env={
        "MPQS_FLIPS": os.environ.get("MPQ_FLIPS", "8"), "MPQS_RESULT": tmp_path / "flips.json",
        "MPQS_FLIP_IMAGES": os.environ.get("MPQ_FLIP_IMAGES", "a,b,v,w")})
    print(json.dumps(json.loads((tmp_path / "flips.json").read_text())["counts"], sort_keys=True))


@icarus
@pytest.mark.parametrize("test,seed", [("preloaded_image", 7), ("score_overflow", 12)])
def test_preloaded_image(case, test, seed):
    """MpqSystem(init=image a, max_classes=a's classes): the BRAM-initialised build runs a without a load; an
    image with more classes than the score FIFO holds ends with BAD_GEOMETRY."""
    verilog, npz = case
    with np.load(npz) as arrays:
        words = arrays["a_words"]
    path = write_text_atomically(verilog.parent / "preloaded" / f"{SYSTEM_TOP_NAME}.v",
                                 system_verilog(CONFIG, init=words, max_classes=A_CLASSES))
    result = run_block_test(path, toplevel=SYSTEM_TOP_NAME, test_module=TEST_MODULE, test=test,
                            work_dir=path.parent, seed=seed,
                            env={"MPQS_CASE": npz, "MPQS_SEED": seed, "MPQS_STALL": 1})
    assert result["passed"], result["log"]


def test_bad_parameters_name_the_value():
    for kwargs, text in (({"max_classes": 0}, "max_classes"), ({"timeout_cycles": 3}, "timeout_cycles")):
        with pytest.raises(ValueError, match=text):
            MpqSystem(CONFIG, **kwargs)
    with pytest.raises(TypeError, match="ArrayConfig"):
        MpqSystem({"engines": 2})
    words = pack_v3(random_network(np.random.default_rng(4), sizes=(23, 17, 5), act_bits=4))[0]
    bad = words.copy()
    bad[0] ^= 1
    with pytest.raises(ValueError, match="version 3 or 4 image"):
        MpqSystem(CONFIG, init=bad)
    with pytest.raises(ValueError, match="header field 'words'"):
        MpqSystem(CONFIG, init=words[:-1])
