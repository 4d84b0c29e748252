# amaranth: UnusedElaboratable=no
"""The host driver on an exported image folder, through the whole system in simulation (what ``build.py sim
--system`` runs), and the driver's and the command's checks of user mistakes (before any register access)."""

import json
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import build
from driver import mpq_driver
from driver.backend import Backend, DeviceBuffer
from driver.mpq_driver import CoreError, MpqDriver, image_crc
from hw.system.register_map import StatusCode, field
from model.errors import UserError
from model.export.format import HEADER, LAYER
from model.export.image import pack, write_image
from model.export.image_v4 import write_vertical_image
from sim.system.system_run import run_system
from tests.driver.test_board_environment import driver_modules
from tests.hw.netgen import random_network
from tests.model.export.test_image_v4 import random_net as random_vertical_net
from tests.test_setup import constraints, pin

ROOT = Path(__file__).resolve().parents[2]
#: What the driver imports outside the standard library and this repository (README, "On a PYNQ-Z2").
BOARD_PACKAGES = {"amaranth", "jschon", "numpy", "rfc3986"}


class NoDevice(Backend):
    """A backend that fails every access: the checks below must refuse before touching the device."""

    clock_hz = 100e6

    def read(self, offset):
        raise AssertionError(f"register read at {offset:#x}")

    def write(self, offset, value):
        raise AssertionError(f"register write at {offset:#x}")

    def allocate(self, size):
        raise AssertionError("allocate")

    def wait(self):
        raise AssertionError("wait")


class HungCore(Backend):
    """A core that never finishes: idle until a load or a run is asked (``load_image``, ``ap_start``), then every
    register reads 0 (ap_idle and ap_done never set, status OK); each wait is 10 ms of device time; host memory
    stands in for DDR. What a stalled AXI bus looks like to the host, which the shell's watchdog is there to
    prevent (the system tests run the real shell); this checks the driver's own bound."""

    clock_hz = 100e6

    class Buffer(DeviceBuffer):
        def __init__(self, size):
            self.address, self.size, self.data = 0x1000_0000, size, bytearray(size)

        def write(self, offset, data):
            self._check(offset, len(data))
            self.data[offset:offset + len(data)] = data

        def read(self, offset, length):
            self._check(offset, length)
            return bytes(self.data[offset:offset + length])

    def __init__(self):
        self.waits, self.busy = 0, False

    def read(self, offset):
        return 0 if self.busy or offset != field("ap_idle").offset else 1 << field("ap_idle").bit

    def write(self, offset, value):
        self.busy |= offset in (field("load_image").offset, field("ap_start").offset)

    def allocate(self, size):
        return self.Buffer(size)

    def wait(self):
        self.waits += 1
        assert self.waits < 1000, "the driver kept polling past its timeout"  # fail, not hang, if it never gives up
        return 0.01


def test_the_driver_gives_up_on_a_core_that_never_finishes():
    """load_staged and run_batch poll at most timeout_s of device time, then raise TimeoutError naming what
    hung, instead of hanging the host."""
    backend = HungCore()
    drv = MpqDriver(backend, timeout_s=0.5)
    words = np.zeros(16, dtype=np.uint32)
    words[5] = 4 | 1 << 16  # 4 channels of 1 x 1
    words[6] = 1
    drv.stage_image(words)
    with pytest.raises(TimeoutError, match=r"image load: the core did not finish within 0\.5 s .*status 0 = OK, the "
                                           r"last operation's\); it may still be running"):
        drv.load_staged(n_classes=3)
    assert 50 <= backend.waits <= 52
    drv.attach(words, n_classes=3)
    with pytest.raises(UserError, match=r"run of 2 images: the core is busy \(control word 0x0: ap_idle 0"):
        drv.run(np.zeros((2, 4), dtype=np.int64))  # (the load given up on still runs)
    backend.waits, backend.busy = 0, False
    with pytest.raises(TimeoutError, match=r"run: the core did not finish within 0\.5 s"):
        drv.run(np.zeros((2, 4), dtype=np.int64))
    assert 50 <= backend.waits <= 52


def test_a_board_backends_timeout_counts_the_register_reads(monkeypatch):
    """On a board (``wall_clock``) the poll's bound is the host's clock, which counts the MMIO reads: a backend
    whose reads take 100 us and whose busy-poll waits return 1 us gives up after about 0.02 s of reads at
    ``timeout_s=0.02`` (about 200 polls). Before, only the waits counted: 20,000 polls, 2 s (100 times the
    limit; 10 s would have been 15-20 minutes on a board)."""
    clock = [0.0]
    monkeypatch.setattr(mpq_driver, "_now", lambda: clock[0])

    class SlowReads(HungCore):
        wall_clock = True

        def read(self, offset):
            clock[0] += 1e-4
            return super().read(offset)

        def wait(self):
            super().wait()
            clock[0] += 1e-6
            return 1e-6

    backend = SlowReads()
    drv = MpqDriver(backend, timeout_s=0.02)
    words = np.zeros(16, dtype=np.uint32)
    words[5], words[6] = 4 | 1 << 16, 1
    drv.stage_image(words)
    with pytest.raises(TimeoutError, match=r"image load: the core did not finish within 0\.02 s"):
        drv.load_staged(n_classes=3)
    assert 190 <= backend.waits <= 202


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "1", True])
def test_the_driver_refuses_a_timeout_that_is_no_finite_time(timeout):
    with pytest.raises(ValueError, match=r"timeout_s must be a finite number of seconds > 0"):
        MpqDriver(NoDevice(), timeout_s=timeout)


@pytest.mark.parametrize(("call", "message"), [
    (lambda drv: drv.attach([1, 2, 3], n_classes=3), r"an image is a vector of at least 8 words, not shape \(3,\)"),
    (lambda drv: drv.attach(np.zeros(16, np.uint32), n_classes="x"), "n_classes must be an integer >= 1, not 'x'"),
    (lambda drv: drv.attach(np.zeros(16, np.uint32), n_classes=3, input_bits=9), "input_bits must be an integer"),
    (lambda drv: drv.stage_image(-np.ones(8, np.int64)), r"integers in \[0, 2\^32\), not int64 values in \[-1, -1\]"),
    (lambda drv: drv.stage_image(np.full(8, 0.5)), r"integers in \[0, 2\^32\), not float64"),
])
def test_the_driver_names_bad_words_and_counts(call, message):
    """Before any register access, naming the value (before: numpy's IndexError, int()'s ValueError, or the
    words wrapped to uint32 and loaded)."""
    with pytest.raises(UserError, match=message):
        call(MpqDriver(NoDevice()))


def test_the_driver_refuses_a_register_value_that_is_no_integer():
    with pytest.raises(ValueError, match="register image_count holds a 32-bit integer; 1.5 is not one"):
        MpqDriver(NoDevice()).write_field("image_count", 1.5)
    with pytest.raises(ValueError, match="max_batch must be an integer from 1 to 65536, not True"):
        MpqDriver(NoDevice(), max_batch=True)


@pytest.mark.parametrize(("change", "message"), [
    ({"layers": [1, 2]}, "field 'layers[0]' is 1; expected an object"),
    ({"input_bits": "x"}, "field 'input_bits' is 'x'; weights.bin gives 4"),
    ({"words": "x"}, "field 'words' is 'x'; weights.bin gives "),
])
def test_the_driver_refuses_a_manifest_that_describes_another_image(tmp_path, change, message):
    """Before any register access, naming the field and what the words give (model.export.image
    check_described_fields). Until 2026-12-06 the reader held only weights.bin to the manifest's sha256, and the
    driver had once read the class count and input width from such fields, and failed after the run."""
    write_image(tmp_path / "image", random_network(np.random.default_rng(7), sizes=(19, 13, 6), act_bits=4))
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    (tmp_path / "image" / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(UserError, match=re.escape(f"manifest.json: {message}")):
        MpqDriver(NoDevice()).load(tmp_path / "image")


@pytest.mark.usefixtures("icarus")
def test_exported_image_through_system_and_driver(tmp_path, monkeypatch):
    """Relative image and output folders, as `build.py sim --system` gets them by default (the simulator runs
    in its build folder, so every path it reads must be made absolute)."""
    net = random_network(np.random.default_rng(7), sizes=(19, 13, 6), act_bits=4)
    monkeypatch.chdir(tmp_path)
    write_image(Path("image"), net)
    inputs = np.random.default_rng(8).integers(0, 16, size=(5, 19))
    expected = net.forward(inputs)
    res = run_system(Path("image"), inputs, expected, Path("out"), ddr_latency=24, max_batch=2,
                     throughput_images=3)
    assert res["passed"], res["log"]
    assert res["rtl_mismatches"] == 0 and res["scores"] == expected.tolist()
    # 3 batches (2, 2, 1): inputs padded to 8-byte beats, 6 scores of 4 bytes each
    assert res["ddr_bytes_per_image"] == ((40 + 40 + 24) + 4 * 6 * 5) / 5
    assert res["cycles_per_image"] > 0 and res["load_cycles"] > 0
    assert res["image_words"] == Path("image/weights.bin").stat().st_size // 4
    # the core's read counters of the last image, as sim/reads.py models them
    assert res["read_mismatches"] == 0 and res["buffer_reads"] > res["weight_reads"] > 0
    t = res["throughput"]
    assert t["images"] == 3 and t["batches"] == 2 and t["ddr_bytes"] == 40 + 24 + 4 * 6 * 3
    assert t["images_per_s"] == pytest.approx(3 * 100e6 / t["cycles"])
    assert (t["buffer_bytes_per_image"], t["weight_bytes_per_image"]) == (4 * res["buffer_reads"],
                                                                           4 * res["weight_reads"])
    assert not res["protocol_errors"]


@pytest.mark.usefixtures("icarus")
def test_vertical_image_folder_at_a_width_through_system_and_driver(tmp_path):
    """A version 4 image folder loaded by the driver (MpqDriver.load) and run at 2 bits and at a table row
    through the precision register (run_system's ``precision``: what ``sim --system --bits`` /
    ``--table-row`` write): golden's scores at those widths."""
    net = random_vertical_net(11, sizes=(19, 12, 10, 6), widths=(2, 3, 4), rows=2)
    write_vertical_image(tmp_path / "image", net)
    inputs = np.random.default_rng(12).integers(0, 256, size=(3, 19))
    for precision, bits in ((2, 2), (0x81, net.table[1])):
        res = run_system(tmp_path / "image", inputs, net.forward(inputs, bits), tmp_path / f"out{precision}",
                         max_batch=2, precision=precision)
        assert res["passed"], res["log"]
        assert res["rtl_mismatches"] == 0 and res["scores"] == net.forward(inputs, bits).tolist()
        assert res["read_mismatches"] == 0, (precision, res["buffer_reads"], res["weight_reads"])


def test_cli_vertical_widths_user_errors(tmp_path, capsys):
    net = random_vertical_net(11, sizes=(19, 12, 10, 6), widths=(2, 3, 4), rows=2)
    write_vertical_image(tmp_path / "v", net)
    for argv, text in ((["--image", str(tmp_path / "v")], "add --core array or --system"),
                       (["--image", str(tmp_path / "v"), "--bits", "2"], "add --core array or --system"),
                       (["--image", str(tmp_path / "v"), "--system", "--table-row", "2"],
                        "--table-row 2: the image's Eq. 12 table has 2 rows"),
                       (["--image", str(tmp_path / "v"), "--system", "--bits", "9"], "--bits must be 0"),
                       (["--image", str(tmp_path / "v"), "--core", "array", "--bits", "5"],
                        (f"--bits 5: allowed the stored widths [2, 3, 4] of the image {tmp_path / 'v'} (or 0, its "
                         "source width)")),
                       (["--image", str(tmp_path / "v"), "--system", "--bits", "2", "--table-row", "0"],
                        "give one")):
        assert build.main(["sim", *argv]) == 2, argv
        assert text in capsys.readouterr().err, argv


def test_driver_refuses_bad_input_before_touching_the_device(tmp_path):
    drv = MpqDriver(NoDevice())
    with pytest.raises(UserError, match="no image loaded"):
        drv.run(np.zeros((1, 4), np.int64))
    with pytest.raises(UserError, match="manifest.json: file not found"):
        drv.load(tmp_path)
    with pytest.raises(UserError, match="precision must be an integer from 0 to 8"):
        drv.set_precision(9)
    with pytest.raises(UserError, match="table_row must be an integer from 0 to 127"):
        drv.set_precision(table_row=128)
    with pytest.raises(UserError, match="table_row"):
        drv.set_precision(3, table_row=1)
    with pytest.raises(UserError, match="table_row"):
        drv.set_precision(table_row=True)
    with pytest.raises(UserError, match="precision must be an integer from 0 to 8 .*, not True"):
        drv.set_precision(True)  # (a bool is no width: it was taken as 1)
    for width, row in ((np.int64(2), None), (0, np.uint8(5))):  # numpy's integers pass the check (np.int64(2) was
        with pytest.raises(AssertionError, match="register write"):  # refused) and reach the register
            drv.set_precision(width, table_row=row)
    drv.words, drv.input_shape, drv.n_codes, drv.input_bits = np.zeros(8, np.uint32), (4, 1, 1), 4, 4
    with pytest.raises(UserError, match=r"shape \[N, 4, 1, 1\] or \[N, 4\], not \[2, 5\]"):
        drv.run(np.zeros((2, 5), np.int64))
    with pytest.raises(UserError, match=r"lie in \[0, 15\]"):
        drv.run(np.full((2, 4), 16))
    with pytest.raises(ValueError, match="max_batch"):
        MpqDriver(NoDevice(), max_batch=0)


def test_raw_words_are_read_through_the_reader_before_the_core():
    """load_words reads the words through the image reader first: fields the core refuses only in the run (a
    requant multiplier past 17 bits, a layer's input width other than the previous layer's output width) and a
    wrong n_classes / input_bits are refused before any register access; check=False hands them on."""
    net = random_network(np.random.default_rng(3))
    words = pack(net)
    n_classes, bits = net.layers[-1].n_out, net.input_bits
    MpqDriver.check_words(words, n_classes=n_classes, input_bits=bits)
    drv = MpqDriver(NoDevice())
    layer0, layer1 = HEADER.words, HEADER.words + LAYER.words  # the version 3 descriptors follow the header
    mult = words.copy()
    mult[int(words[layer0 + LAYER["param_base"].word])] |= 1 << 20  # layer 0, row 0: M past MULT_BITS
    in_bits = words.copy()
    in_bits[layer1 + LAYER["in_bits"].word] ^= 1 << LAYER["in_bits"].bit  # layer 1 reads other codes
    for bad, name in ((mult, "mult"), (in_bits, "in_bits")):
        with pytest.raises(UserError, match=f"image words: .*{name}"):
            drv.load_words(bad, n_classes=n_classes, input_bits=bits)
    with pytest.raises(UserError, match=f"n_classes is {n_classes + 1} but the image's last layer has {n_classes}"):
        drv.load_words(words, n_classes=n_classes + 1, input_bits=bits)
    with pytest.raises(UserError, match=f"input_bits is 3 but the image's input codes are {bits} bits"):
        drv.load_words(words, n_classes=n_classes, input_bits=3)
    version = words.copy()
    version[1] = 2
    with pytest.raises(UserError, match="header field 'version' is 2"):
        drv.load_words(version, n_classes=n_classes, input_bits=bits)
    with pytest.raises(AssertionError, match="register read at 0x0"):  # unchecked, the words go to the device (its
        # first access: is the core idle?)
        drv.load_words(mult, n_classes=n_classes, input_bits=bits, check=False)


def test_image_crc_is_zlib_of_the_little_endian_bytes():
    """What the driver writes to image_crc: zlib.crc32 of the words as DDR holds them (byte 0 = low byte)."""
    assert image_crc([0x64636261, 0x68676665]) == zlib.crc32(b"abcdefgh") == 0xAEEF2A50
    words = np.random.default_rng(9).integers(0, 1 << 32, size=77, dtype=np.uint64).astype(np.uint32)
    assert image_crc(words) == zlib.crc32(words.astype("<u4").tobytes())
    assert image_crc(words.byteswap()) != image_crc(words)
    exc = CoreError(StatusCode.BAD_CHECKSUM, "image load")
    assert exc.code is StatusCode.BAD_CHECKSUM and "status 16 (BAD_CHECKSUM)" in str(exc)


def test_core_error_names_the_code():
    exc = CoreError(StatusCode.AXI_ERROR, "run of 3 images")
    assert exc.code is StatusCode.AXI_ERROR
    assert "status 17 (AXI_ERROR): SLVERR or DECERR" in str(exc)
    assert "unknown code" in str(CoreError(99, "load"))


@pytest.mark.parametrize("argv,text", [(["--simulator", "verilator"], "--system runs on Icarus"),
                                       (["--ddr-latency", "-1"], "--ddr-latency must be 0 to 1000"),
                                       (["--core", "fc"], "--core fc: --system runs the Zynq system"),
                                       (["--core", "array"], "--core array: --system runs the Zynq system")])
def test_cli_system_user_errors(argv, text, capsys):
    assert build.main(["sim", "--system", *argv]) == 2
    assert text in capsys.readouterr().err


def test_cli_system_options_without_system_are_refused(capsys):
    """Options that only the Zynq system reads are refused without --system, not ignored; the command's
    default latency is the system run's."""
    from sim import sim_command
    from sim.system import system_run

    assert sim_command.DDR_LATENCY == system_run.DEFAULT_DDR_LATENCY
    assert build.main(["sim", "--ddr-latency", "10"]) == 2
    assert "--ddr-latency sets the DDR model of the Zynq system: add --system" in capsys.readouterr().err


def test_the_driver_imports_only_what_the_readme_lists_for_the_board():
    """README, "On a PYNQ-Z2": the driver and its pynq backend import numpy, amaranth, jschon and rfc3986 (pynq
    itself only when the backend is made), nothing else outside the standard library and this repository: no
    torch on the board."""
    names = {name.split(".")[0] for name in driver_modules()} - set(sys.stdlib_module_names)
    found = {name for name in names if name not in {"driver", "hw", "model", "__main__"}
             and not name.startswith(("_distutils_hack", "__editable__"))}
    assert found == BOARD_PACKAGES, found


def test_the_readmes_board_install_pins_what_constraints_pins():
    """README, "On a PYNQ-Z2": the ``pip install`` for the board names every package the driver imports but numpy
    (the board's own: pynq needs numpy < 2), each at constraints.txt's version."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    line = re.search(r"`pip install (amaranth==[^`]*)`", readme)
    assert line, "the README's board install line is gone"
    asked = dict(pin(item, "README.md") for item in line.group(1).split())
    assert set(asked) == BOARD_PACKAGES - {"numpy"}
    pins = constraints()
    assert {name: pins[name] for name in asked} == asked
