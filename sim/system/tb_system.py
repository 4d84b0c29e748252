"""cocotb tests of the whole Zynq shell (:class:`hw.system.zynq_top.MpqSystem`), driven by the host driver.

The host is :class:`driver.mpq_driver.MpqDriver` on :class:`~sim.system.sim_backend.SimBackend`: the same
driver code as on a board, its register accesses going through cocotbext-axi's ``AxiLiteMaster`` (random
pauses on every channel when stalling) and its DDR buffers in :class:`~sim.system.axi_models.LatencyAxiRam`
(random latency, back-pressure, SLVERR ranges); :class:`~sim.system.axi_models.AxiProtocolChecker` watches
``m_axi_gmem``. Every test also checks that the bus protocol held and that the core ended idle.

Settings (environment, strings):

``MPQS_CASE``
    ``.npz`` with, per image ``a``, ``b`` (and ``c``, of an odd number of words, for ``bad_checksum``; ``d``,
    ``v``, ``w`` for the tests that name them): ``<x>_words``, ``<x>_inputs`` (``[N, C H W]`` codes),
    ``<x>_expected`` (``[N, n_classes]`` golden scores), ``<x>_input_bits``; optional ``image_dir`` (str
    array: the image folder :meth:`MpqDriver.load` reads), ``images`` (the number of ``driver_run`` images).
``MPQS_RESULT``
    JSON file ``driver_run`` (its record) or ``random_flips`` (its outcomes) writes.
``MPQS_FLIPS``, ``MPQS_FLIP_IMAGES``
    ``random_flips``: flips per image (24) and the images (``a,b,v,w``).
``MPQS_SEED``, ``MPQS_STALL`` (``1``: random latency and back-pressure), ``MPQS_MAX_BATCH``,
``MPQS_DDR_LATENCY`` (cycles before each read burst's first beat), ``MPQS_TIMEOUT_CYCLES`` (the build's
watchdog, for ``watchdog_timeout`` and ``watchdog_states``).

Time limits: the driver gives up on a load or batch after :data:`TEST_TIMEOUT_S` of device time, and cocotb
fails a test after :data:`SIM_LIMIT_MS` of simulated time (more for the watchdog tests), so that an RTL that
hangs fails in about a minute instead of running for hours; ``driver_run`` keeps the driver's own limit only.
"""

from __future__ import annotations

import os
import random
import zlib

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import resume
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from driver.mpq_driver import CoreError, MpqDriver
from driver.pynq_backend import PynqBackend
from hw.system.register_map import StatusCode, field
from model.errors import UserError
from model.export.format import HEADER
from model.export.golden_vertical import VerticalNetwork
from model.export.image_v4 import unpack_any
from model.export.records import unpack_records
from model.files import write_json
from sim.system import pynq_standin
from sim.system.axi_models import AxiProtocolChecker, LatencyAxiRam, pauses
from sim.system.sim_backend import SimBackend, run_driver

CLOCK_NS = 10
MEMORY_BYTES = 1 << 20
#: The driver's limit on one load or batch in the tests (200,000 cycles; their longest takes under 15,000), so
#: that a core that never finishes fails a test in about half a minute of Icarus, not in hours.
TEST_TIMEOUT_S = 2e-3
#: The same for ``driver_run`` (``build.py sim --system``: whole networks, a ResNet-20 batch is about 330,000
#: cycles).
RUN_TIMEOUT_S = 0.05
#: cocotb's limit on a test's simulated time (ms), for a hang outside the driver's polls (a register access
#: that never completes): about ten times the longest test's.
SIM_LIMIT_MS = 3


class SystemTB:
    """Clock, active-low reset, the AXI-Lite host, the DDR model, the protocol checker and the driver."""

    def __init__(self, dut, *, timeout_s: float = TEST_TIMEOUT_S):
        self.dut = dut
        self.seed = int(os.environ.get("MPQS_SEED", "0"))
        self.stall = os.environ.get("MPQS_STALL", "1") == "1"
        self.rng = random.Random(self.seed)
        cocotb.start_soon(Clock(dut.ap_clk, CLOCK_NS, unit="ns").start())
        self.ram = LatencyAxiRam(dut, "m_axi_gmem", dut.ap_clk, dut.ap_rst_n, size=MEMORY_BYTES, rng=self.rng,
                                 stall=self.stall, reset_active_level=False,
                                 first_beat_latency=int(os.environ.get("MPQS_DDR_LATENCY", "0")))
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk, dut.ap_rst_n,
                                  reset_active_level=False)
        if self.stall:
            for channel, p in ((self.axil.write_if.aw_channel, 0.3), (self.axil.write_if.w_channel, 0.3),
                               (self.axil.write_if.b_channel, 0.3), (self.axil.read_if.ar_channel, 0.3),
                               (self.axil.read_if.r_channel, 0.3)):
                channel.set_pause_generator(pauses(random.Random(self.rng.random()), p))
        self.checker = AxiProtocolChecker(dut, "m_axi_gmem", dut.ap_clk, reset=dut.ap_rst_n,
                                          reset_active_level=False)
        self.backend = SimBackend(dut.ap_clk, self.ram, self.axil)
        self.driver = MpqDriver(self.backend, max_batch=int(os.environ.get("MPQS_MAX_BATCH", "4")),
                                timeout_s=timeout_s)
        self.case = {}
        if os.environ.get("MPQS_CASE"):
            with np.load(os.environ["MPQS_CASE"]) as case:
                self.case = {k: case[k] for k in case.files}

    async def reset(self):
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, 4)
        self.dut.ap_rst_n.value = 1
        await RisingEdge(self.dut.ap_clk)

    def image(self, key: str):
        c = self.case
        return (c[f"{key}_words"], c[f"{key}_inputs"], c[f"{key}_expected"], int(c[f"{key}_input_bits"]))

    def load(self, key: str, words=None):
        """Load image ``key`` through the driver (read through the reader first), or ``words`` in its place
        unchecked (the corrupt-image tests hand them to the core's own checks)."""
        w, _, expected, bits = self.image(key)
        self.driver.load_words(w if words is None else words, n_classes=expected.shape[1], input_bits=bits,
                               check=words is None)

    def check_run(self, key: str, n: int | None = None):
        _, inputs, expected, _ = self.image(key)
        n = len(inputs) if n is None else n
        scores = self.driver.run(inputs[:n])
        assert scores.tolist() == expected[:n].tolist(), (
            f"image {key}: {int((scores != expected[:n]).any(axis=1).sum())} of {n} images differ from golden")

    def expect_error(self, code: StatusCode, call, *args):
        try:
            call(*args)
        except CoreError as exc:
            assert exc.code == code, f"status {exc.code!r}, expected {code!r} ({exc})"
            return exc
        raise AssertionError(f"no CoreError; expected status {code.name}")

    def check_idle(self):
        drv = self.driver
        assert drv.read_field("ap_idle") == 1, "the core is not idle"
        assert not self.checker.errors, self.checker.errors[:5]


def start_and_wait(drv) -> int:
    """ap_start with whatever the registers hold; wait for ap_done; the status."""
    drv.backend.write(field("ap_start").offset, 1 << field("ap_start").bit)
    drv._poll(lambda: drv.backend.read(field("ap_done").offset) & (1 << field("ap_done").bit), "run")
    return drv.status()


def load_and_wait(drv) -> int:
    """load_image with whatever ``image_addr`` and ``image_crc`` hold; wait for ap_idle; the status (the
    driver's own load would also size its buffers from the image's header)."""
    drv.write_field("load_image", 1)
    drv._poll(lambda: drv.read_field("ap_idle"), "load")
    return drv.status()


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def reload_and_batches(dut):
    """Image a in batches, images b and d on the same RTL (their golden scores: no stale state), a again; busy
    and load counters; the ap_done interrupt."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver

    async def read_interrupt():
        return int(dut.interrupt.value)

    interrupt = resume(read_interrupt)

    def body():
        tb.load("a")
        # a load's cycles (every load state) count in load_cycles only
        assert drv.read_field("busy_cycles") == 0 and drv.read_field("load_cycles") > 0
        assert drv.read_field("buffer_reads") == 0, "read counts before any image ran"
        tb.check_run("a")
        # the last image's global-buffer words, kept after the run (its drain holds the array in reset)
        a_reads = drv.read_field("buffer_reads"), drv.read_field("weight_reads")
        assert a_reads[0] > a_reads[1] > 0, a_reads
        tb.load("b")
        tb.check_run("b")
        tb.load("d")  # score_overflow's image, whose 6 classes this build's 64-deep score FIFO holds
        tb.check_run("d")
        drv.write_field("gie", 1)
        drv.write_field("ier", 1)
        tb.load("a")
        tb.check_run("a", 1)
        assert (drv.read_field("buffer_reads"), drv.read_field("weight_reads")) == a_reads, "a's reads again"
        assert interrupt() == 1, "no interrupt after a run with gie and ier set"
        drv.backend.write(field("isr").offset, 1)  # toggle on write: clears the ap_done bit
        assert drv.read_field("isr") == 0 and interrupt() == 0, "isr write did not clear the interrupt"
        assert drv.read_field("busy_cycles") > 0 and drv.read_field("load_cycles") > 0
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def corrupt_images(dut):
    """Bad magic, version, word count (past the buffer, below 8), input shape (W = 0, C H W past 2^24 - 1; 2^24 - 1
    itself loads), flipped stream bits: the documented status, no hang; then a good image runs right."""
    tb = SystemTB(dut)
    await tb.reset()
    words = tb.image("a")[0].astype(np.uint32)

    def body():
        bad = words.copy()
        bad[0] ^= 1
        tb.expect_error(StatusCode.BAD_MAGIC, tb.load, "a", bad)
        assert start_and_wait(tb.driver) == StatusCode.NO_IMAGE
        bad = words.copy()
        bad[1] = 2
        tb.expect_error(StatusCode.BAD_VERSION, tb.load, "a", bad)
        bad = words.copy()
        bad[4] = 1 << 20
        tb.expect_error(StatusCode.BAD_GEOMETRY, tb.load, "a", bad)
        in_chw, in_w = HEADER["in_channels"].word, HEADER["in_width"].word
        for name, word, value in (("words < 8", HEADER["words"].word, 7), ("W = 0", in_w, 0),
                                  ("C H W = 2^32 - 2^17 + 1", in_chw, 0xFFFFFFFF),
                                  ("C H W = 2^24", in_chw, 256 | 256 << 16)):
            bad = words.copy()
            bad[word] = value
            if name.endswith("2^24"):
                bad[in_w] = 256
            exc = tb.expect_error(StatusCode.BAD_GEOMETRY, tb.load, "a", bad)
            tb.dut._log.info(f"{name}: {exc}")
        bad = words.copy()  # C H W = 2^24 - 1 = 4095 x 4097 x 1, the most the shell takes: loads (not run)
        bad[in_chw], bad[in_w] = 4095 | 4097 << 16, 1
        tb.driver.stage_image(bad)
        code = load_and_wait(tb.driver)
        assert code == StatusCode.OK, f"C H W = 2^24 - 1 refused: {code!r}"
        # the corrupt stream (words from the case) loads, and its run stops with the array's code
        corrupt = tb.case["corrupt_words"].astype(np.uint32)
        tb.load("a", corrupt)
        exc = tb.expect_error(StatusCode(int(tb.case["corrupt_status"])), tb.check_run, "a", 2)
        tb.dut._log.info(f"corrupt stream: {exc}")
        tb.check_idle()
        tb.load("a")
        tb.check_run("a")
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def bad_checksum(dut):
    """A bit flipped in DDR after the driver computed the image's CRC, and a wrong ``image_crc``: the driver's
    load raises BAD_CHECKSUM (``loaded_crc`` is the CRC of what DDR held), no image is usable, no hang; a flip
    in the pad word past an odd-length image (c) is not covered; then good loads of a and c run right."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver

    def flip(address: int, mask: int):
        tb.ram.write(address, bytes([tb.ram.read(address, 1)[0] ^ mask]))

    def staged_load(key: str):
        _, _, expected, bits = tb.image(key)
        drv.load_staged(n_classes=expected.shape[1], input_bits=bits)

    def body():
        pads = 0
        for key in ("a", "c"):  # c has an odd number of words
            words = tb.image(key)[0].astype(np.uint32)
            good = zlib.crc32(words.astype("<u4").tobytes())
            assert drv.stage_image(words) == good and drv.read_field("image_crc") == good
            base = drv._image_buf.address
            # one bit of the last image word, then one of a word in the middle (header checks still pass)
            for at in (base + 4 * len(words) - 1, base + 4 * (len(words) // 2) + 1):
                mask = 1 << tb.rng.randrange(8)
                flip(at, mask)
                exc = tb.expect_error(StatusCode.BAD_CHECKSUM, staged_load, key)
                read = zlib.crc32(tb.ram.read(base, 4 * len(words)))
                assert drv.read_field("loaded_crc") == read != good, (hex(read), hex(good))
                assert f"{good:#010x}" in str(exc) and f"{read:#010x}" in str(exc), str(exc)
                assert start_and_wait(drv) == StatusCode.NO_IMAGE, "a BAD_CHECKSUM load left an image"
                flip(at, mask)
            # DDR right, the register wrong
            drv.write_field("image_crc", good ^ 0x80000000)
            tb.expect_error(StatusCode.BAD_CHECKSUM, staged_load, key)
            assert drv.read_field("loaded_crc") == good
            if len(words) % 2:  # the DMA reads the pad word of the last beat; the CRC does not cover it
                drv.stage_image(words)
                flip(base + 4 * len(words), 0xFF)
                staged_load(key)
                pads += 1
            tb.load(key)
            assert drv.read_field("loaded_crc") == good
            tb.check_run(key)
        assert pads, "no image with an odd number of words: the pad case did not run"
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def bad_registers(dut):
    """ap_start before a load (NO_IMAGE), image_count 0, misaligned input and output addresses, addresses and
    batches whose inputs reach 4 GiB in whole 8-byte beats (BAD_ADDRESS): ap_done with the code, never a hang; then
    the same registers set right run."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver

    def body():
        assert start_and_wait(drv) == StatusCode.NO_IMAGE
        tb.load("a")
        drv.write_field("image_count", 0)
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        drv.write_field("image_count", 1)
        drv.write_field("input_addr", drv._in_buf.address + 4)
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        drv.write_field("input_addr", 1 << 32)
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        drv.write_field("input_addr", drv._in_buf.address)
        drv.write_field("output_addr", drv._out_buf.address + 4)  # scores are written in 8-byte beats
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        drv.write_field("output_addr", drv._out_buf.address)
        drv.write_field("image_count", 0xFFFFFFFF)  # 4 GiB of inputs and more: past the 32-bit address space
        saved, drv.timeout_s = drv.timeout_s, 1e-3  # refused at once; a shell that ran it would time out here
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        # Image c's 11 codes: 390,451,572 images are 2^32 - 4 bytes, whose read rounded up to 8-byte beats is
        # 2^32 bytes (its 32-bit length 0: such a run waited for inputs that never came and ended with TIMEOUT).
        tb.load("c")
        drv.write_field("image_count", (1 << 32) // 11)
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        drv.timeout_s = saved
        drv.write_field("image_count", 1)
        drv.write_field("image_addr", (1 << 32) | 0x1000)  # an image above 4 GiB
        assert load_and_wait(drv) == StatusCode.BAD_ADDRESS
        tb.load("a")
        drv.write_field("image_addr", 0x1004)
        assert load_and_wait(drv) == StatusCode.BAD_ADDRESS
        assert start_and_wait(drv) == StatusCode.NO_IMAGE, "a refused load must leave no usable image"
        tb.load("a")
        drv.set_precision(4)
        tb.check_run("a")
        assert drv.read_field("buffer_reads") > 0
        drv.write_field("image_count", 0)  # a run refused at its check clears the last image's read counts
        assert start_and_wait(drv) == StatusCode.BAD_ADDRESS
        assert drv.read_field("buffer_reads") == 0 and drv.read_field("weight_reads") == 0
        drv.write_field("image_count", 1)
        tb.check_run("a")
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def busy_core(dut):
    """The driver refuses to stage, load or run while the core is busy, before any register write: a run started
    by another program (a raw ``ap_start``), and a run the driver gave up on (``TimeoutError``) that goes on in
    the core. Before, the core dropped the ``load_image`` it got while busy and the load returned OK (the next run
    ran the old image), and the run after a timeout ended at the old run's ``ap_done`` with the score buffer
    unread (all-zero scores, OK). Once the core is idle, the next run is golden's."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver

    def refused(call, what: str):
        writes = tb.backend.writes
        try:
            call()
        except UserError as exc:
            assert f"{what}: the core is busy" in str(exc), exc
            assert tb.backend.writes == writes, "a register write before the refusal"
            return
        raise AssertionError(f"{what}: not refused while the core is busy")

    def body():
        tb.load("a")
        _, inputs, expected, _ = tb.image("a")
        drv._in_buf.write(0, inputs[:3].astype(np.uint8).tobytes())
        for name, value in (("input_addr", drv._in_buf.address), ("output_addr", drv._out_buf.address),
                            ("image_count", 3)):
            drv.write_field(name, value)
        drv.backend.write(field("ap_start").offset, 1 << field("ap_start").bit)
        refused(lambda: tb.load("b"), "stage an image")
        refused(lambda: drv.load_staged(n_classes=expected.shape[1], input_bits=tb.image("a")[3]), "image load")
        refused(lambda: drv.run(inputs[:1]), "run of 1 images")
        drv._poll(lambda: drv.read_field("ap_idle"), "the raw run")
        tb.check_run("a")
        drv.timeout_s = 1e-7  # the driver gives up at once; the run goes on in the core
        try:
            drv.run(inputs[:3])
        except TimeoutError as exc:
            assert "it may still be running" in str(exc), exc
        else:
            raise AssertionError("no TimeoutError")
        drv.timeout_s = TEST_TIMEOUT_S
        refused(lambda: drv.run(inputs[3:6]), "run of 3 images")
        for _ in range(300):  # the run ends; its ap_done stays set (no read of the control word)
            drv.backend.wait()
        drv._out_buf.write(0, bytes(4 * 3 * expected.shape[1]))
        assert drv.run(inputs[3:6]).tolist() == expected[3:6].tolist()
        tb.load("b")
        tb.check_run("b")
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def vertical_widths(dut):
    """A vertical-layered (version 4) image loaded once, run at 2, 3 and 4 bits and at a row of its Eq. 12
    table by the precision register alone (each width's golden scores: one image, one bitstream, no reload);
    a width it does not store ends the run with BAD_PRECISION, and the next run is right."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver
    c = tb.case

    def body():
        tb.load("v")
        inputs = c["v_inputs"]
        for bits in (2, 3, 4):
            drv.set_precision(bits)
            assert drv.run(inputs).tolist() == c[f"v_expected_{bits}"].tolist(), f"at {bits} bits"
        drv.set_precision(table_row=0)
        assert drv.run(inputs).tolist() == c["v_expected_row0"].tolist(), "at table row 0"
        drv.set_precision(6)
        tb.expect_error(StatusCode.BAD_PRECISION, drv.run, inputs[:1])
        drv.write_field("precision", 0x12)  # a raw write past the widths (not 2 bits)
        tb.expect_error(StatusCode.BAD_PRECISION, drv.run, inputs[:1])
        drv.set_precision(2)
        assert drv.run(inputs).tolist() == c["v_expected_2"].tolist(), "after BAD_PRECISION"
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def axi_errors(dut):
    """SLVERR and DECERR in the image (body and header), the inputs and the scores (the first image's, and the
    last image's of a batch): AXI_ERROR and the response-error bits; no hang; the next run is right."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver
    ram = tb.ram
    n_classes = tb.image("a")[2].shape[1]

    def clear_error_bits():
        drv.backend.write(field("rresp_error").offset, 3)
        assert drv.read_field("rresp_error") == drv.read_field("bresp_error") == 0

    def body():
        tb.load("a")
        image_at = drv._image_buf.address
        ram.error_ranges.append((image_at + 64, image_at + 72))
        tb.expect_error(StatusCode.AXI_ERROR, tb.load, "a")
        ram.error_ranges.clear()
        assert drv.read_field("rresp_error") == 1
        clear_error_bits()
        # the header's magic word answered DECERR (its data zeros): AXI_ERROR, not BAD_MAGIC
        ram.decode_error_ranges.append((image_at, image_at + 8))
        tb.expect_error(StatusCode.AXI_ERROR, tb.load, "a")
        ram.decode_error_ranges.clear()
        assert drv.read_field("rresp_error") == 1 and drv.read_field("bresp_error") == 0
        clear_error_bits()
        tb.load("a")
        for ranges in (ram.error_ranges, ram.decode_error_ranges):
            ranges.append((drv._in_buf.address + 8, drv._in_buf.address + 16))
            tb.expect_error(StatusCode.AXI_ERROR, tb.check_run, "a")
            ranges.clear()
            assert drv.read_field("rresp_error") == 1
            clear_error_bits()
        out = drv._out_buf.address
        ram.error_ranges.append((out, out + 8))
        tb.expect_error(StatusCode.AXI_ERROR, tb.check_run, "a")
        ram.error_ranges.clear()
        assert drv.read_field("bresp_error") == 1 and drv.read_field("rresp_error") == 0
        clear_error_bits()
        # the last image of a batch: its write answered DECERR after the others were written
        last = out + 2 * 4 * n_classes
        ram.decode_error_ranges.append((last, last + 8))
        tb.expect_error(StatusCode.AXI_ERROR, tb.check_run, "a", 3)
        ram.decode_error_ranges.clear()
        assert drv.read_field("bresp_error") == 1
        written = np.frombuffer(drv._out_buf.read(0, 2 * 4 * n_classes), dtype="<i4").reshape(2, n_classes)
        assert written.tolist() == tb.image("a")[2][:2].tolist(), "the batch's first two images' scores"
        assert ram.read_errors == 4 and ram.write_errors == 2, (ram.read_errors, ram.write_errors)
        assert ram.decerr_reads == 2 and ram.decerr_writes == 1, (ram.decerr_reads, ram.decerr_writes)
        tb.check_run("a")
        tb.check_idle()

    await run_driver(body)


@cocotb.test()
async def driver_run(dut):
    """``build.py sim --system``: load the image folder, run its test images, measure; write the record."""
    tb = SystemTB(dut, timeout_s=RUN_TIMEOUT_S)
    await tb.reset()
    drv = tb.driver
    c = tb.case
    record = {}

    def body():
        drv.load(str(c["image_dir"]))
        if "precision" in c:
            drv.write_field("precision", int(c["precision"]))
        inputs, expected = c["a_inputs"], c["a_expected"]
        before = drv.read_field("busy_cycles")
        scores = drv.run(inputs)
        cycles = drv.read_field("busy_cycles") - before
        record.update({
            # the last test image's global-buffer words (sim/reads.py models them: system_run compares)
            "buffer_reads": drv.read_field("buffer_reads"), "weight_reads": drv.read_field("weight_reads"),
            "images": len(scores), "rtl_mismatches": int((scores != expected).any(axis=1).sum()),
            "run_cycles": cycles, "cycles_per_image": cycles / len(scores),
            "scores": scores.tolist(), "image_words": drv.staged_words,
            "load_cycles": drv.read_field("load_cycles"),
            "throughput": drv.throughput_test(int(c["images"])),
            "register_reads": tb.backend.reads, "register_writes": tb.backend.writes})

    try:
        await run_driver(body)
    except Exception as exc:  # the record says why (a CoreError names the status code)
        record["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record["protocol_errors"] = tb.checker.errors[:20]
        record["max_reads_in_flight"] = tb.checker.max_reads_in_flight
        write_json(os.environ["MPQS_RESULT"], record)
    assert not tb.checker.errors, tb.checker.errors[:5]


@cocotb.test(timeout_time=2 * SIM_LIMIT_MS, timeout_unit="ms")
async def watchdog_timeout(dut):
    """A DDR read that stalls past the watchdog (``MPQS_TIMEOUT_CYCLES`` + 1000 cycles): the run ends with
    TIMEOUT, the engines drain once the bus answers, and the next run is right."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver
    limit = int(os.environ["MPQS_TIMEOUT_CYCLES"])
    delays = tb.ram.delays
    normal = delays.cycles

    def one_long_wait():
        delays.cycles = normal
        return limit + 1000

    def body():
        tb.load("a")
        delays.cycles = one_long_wait
        drv.timeout_s = 10 * limit / drv.backend.clock_hz
        tb.expect_error(StatusCode.TIMEOUT, tb.check_run, "a", 1)
        assert delays.cycles == normal, "the long wait was not taken"
        tb.check_run("a")
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=10 * SIM_LIMIT_MS, timeout_unit="ms")
async def watchdog_states(dut):
    """A bus that stops answering in each state that waits on it, once (``read_waits`` / ``write_waits``): the
    header read of a load (LOAD_HEADER), its body (LOAD_BODY), a score write's B (RUN_WDATA): TIMEOUT, and the
    next load (of the other image: the late words of the first must not become its own) or run right. An input
    read that stays away past two watchdog periods (RUN_IMAGE, then DRAIN: the shell gives up with the read
    still due): the next run drops the late words before its own read and is right. One that stays away past
    three: the next run and the next load end with TIMEOUT too (waiting for the engines), the one after is
    right. Never a hang: the driver gives up after ten watchdog periods."""
    tb = SystemTB(dut)
    await tb.reset()
    drv, ram = tb.driver, tb.ram
    limit = int(os.environ["MPQS_TIMEOUT_CYCLES"])

    def stall(waits: dict, address: int, cycles: int, call, *args):
        waits[address] = cycles
        exc = tb.expect_error(StatusCode.TIMEOUT, call, *args)
        assert not waits, f"the long wait at {address:#x} was not taken ({exc})"

    def body():
        drv.timeout_s = 10 * limit / drv.backend.clock_hz
        for key in ("a", "b", "a"):  # each buffer at the larger size: they keep their addresses from here on
            tb.load(key)
            tb.check_run(key, 1)
        image_at, in_at, out_at = drv._image_buf.address, drv._in_buf.address, drv._out_buf.address
        reads, writes = ram.read_waits, ram.write_waits
        stall(reads, image_at, limit + 1000, tb.load, "a")  # LOAD_HEADER
        tb.load("b")
        tb.check_run("b", 1)
        tb.load("a")
        stall(reads, image_at + 64, limit + 1000, tb.load, "a")  # LOAD_BODY
        tb.load("b")
        tb.check_run("b", 1)
        tb.load("a")
        tb.check_run("a", 2)
        stall(writes, out_at, limit + 1000, tb.check_run, "a", 1)  # RUN_WDATA
        tb.check_run("a")
        stall(reads, in_at, 2 * limit + 1000, tb.check_run, "a", 1)  # RUN_IMAGE, DRAIN
        assert drv.read_field("ap_idle") == 1
        tb.check_run("a")
        stall(reads, in_at, 4 * limit, tb.check_run, "a", 1)  # RUN_IMAGE, DRAIN; then the next run's wait
        tb.expect_error(StatusCode.TIMEOUT, tb.check_run, "a", 1)
        tb.check_run("a", 2)
        stall(reads, in_at, 4 * limit, tb.check_run, "a", 1)  # the same, then a load's wait
        tb.expect_error(StatusCode.TIMEOUT, tb.load, "b")
        tb.load("b")
        tb.check_run("b")
        assert (drv._image_buf.address, drv._in_buf.address, drv._out_buf.address) == (image_at, in_at, out_at)
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=10 * SIM_LIMIT_MS, timeout_unit="ms")
async def random_flips(dut):
    """Single-bit flips anywhere in images a (MLP), b (conv net), v (vertical MLP) and w (vertical residual conv
    net; the vertical ones run at a random stored width), or those ``MPQS_FLIP_IMAGES`` names, half of them in the header and the first descriptors, each signed by the driver (``image_crc`` of
    the flipped words, as an exporter bug would write it, so the CRC does not refuse it): every load and run
    ends with a status code, never a hang; a run the core ends OK gives the golden scores of the network the
    reader (:func:`model.export.image_v4.unpack_any`: version 1-3 or 4) decodes from the
    flipped words, on inputs of the flipped header's shape; the clean image runs right after. The core checks
    an image's structure (what it needs to stay in bounds and finish), not every field the reader does: a flip
    the reader refuses may run OK (``ok_reader_refused_``: ``same_scores`` as the clean image on that input,
    ``other_scores``, or ``other_input`` when the flip changed the header's input shape or width); the CRC-32
    of an image as exported refuses every single-bit flip before it runs. Outcomes are logged and written to
    ``MPQS_RESULT`` when set (docs/system.md "Corrupt images")."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver
    rng = np.random.default_rng(tb.seed)
    flips = int(os.environ.get("MPQS_FLIPS", "24"))
    counts: dict[str, int] = {}
    record: list[dict] = []

    def header(words) -> dict[str, int]:
        """The header's fields, reserved bits ignored and nothing checked (as the core reads them)."""
        return {name: int(v[0]) for name, v in unpack_records(HEADER, words[:HEADER.words]).items()}

    def decode(words):
        """The network the reader decodes from ``words`` (version 3 or 4), or None where it refuses them."""
        try:
            return unpack_any(words.astype(np.uint32), where="flipped image")
        except UserError:
            return None

    def forward(net, x, width):
        shape = getattr(net, "image_shape", None)
        u = x.reshape(1, *shape) if shape is not None else x
        return (net.forward(u, width) if isinstance(net, VerticalNetwork) else net.forward(u)).astype(np.int64)

    def outcome(bad, n_classes, clean, clean_head, width):
        net = decode(bad)
        head = header(bad)
        shape = (head["in_channels"], head["in_height"], head["in_width"])
        bits = min(max(head["input_bits"], 1), 8)
        if net is not None:
            n_classes = net.layers[-1].n_out
        drv.stage_image(bad)  # loaded by hand: the driver would size its input buffer from the flipped header
        code = load_and_wait(drv)
        if code != StatusCode.OK:
            return f"load_{StatusCode(code).name}"
        if int(np.prod(shape)) > 4096:  # the shell would stream that many input bytes; the model holds 1 MiB
            return "loaded_not_run"
        drv.attach(bad, n_classes=n_classes, input_bits=bits)
        x = rng.integers(0, 1 << bits, size=(1, int(np.prod(shape))))
        try:
            scores = drv.run(x)
        except CoreError as exc:
            return f"run_{exc.code.name}"
        if net is None:  # did the flip change what the core computed?
            same_input = all(head[f] == clean_head[f] for f in ("in_channels", "in_height", "in_width", "input_bits"))
            if not same_input:
                return "ok_reader_refused_other_input"
            same = scores.tolist() == forward(clean, x, width).tolist()
            return "ok_reader_refused_" + ("same_scores" if same else "other_scores")
        golden = forward(net, x, width)
        assert scores.tolist() == golden.tolist(), "a run ended OK with scores other than golden's"
        return "ok_golden"

    def body():
        for key in os.environ.get("MPQS_FLIP_IMAGES", "a,b,v,w").split(","):
            words, _, expected, _ = tb.image(key)
            words = words.astype(np.int64)
            clean, clean_head = decode(words), header(words)
            for k in range(flips):
                bad = words.copy()
                at = int(rng.integers(0, min(len(words), 24) if k % 2 == 0 else len(words)))
                bit = int(rng.integers(0, 32))
                bad[at] ^= 1 << bit
                width = int(rng.choice(clean.widths)) if isinstance(clean, VerticalNetwork) else 0
                drv.set_precision(width)  # a vertical image's widths (0: its source width); others ignore it
                what = outcome(bad, expected.shape[1], clean, clean_head, width)
                counts[what] = counts.get(what, 0) + 1
                record.append({"image": key, "word": at, "bit": bit, "width": width, "outcome": what})
            drv.set_precision(0)
            tb.load(key)
            tb.check_run(key)
        tb.check_idle()

    await run_driver(body)
    dut._log.info(f"random flips: {dict(sorted(counts.items()))}")
    if os.environ.get("MPQS_RESULT"):
        write_json(os.environ["MPQS_RESULT"], {"counts": counts, "flips": record})
    assert counts.get("ok_golden", 0) > 0 and any(k.startswith(("load_", "run_")) for k in counts), counts


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def pynq_backend(dut):
    """``driver/pynq_backend.py`` on the RTL, through the stand-in for pynq (:mod:`sim.system.pynq_standin`,
    whose buffers keep the CPU's copy apart from DDR, as a cache does): images a and b load and run right
    with the backend's own ``flush`` / ``invalidate`` calls; with ``flush`` doing nothing the core reads stale
    DDR (the load fails), with ``invalidate`` doing nothing the host reads stale scores: the stand-in sees the
    two mistakes a board would punish."""
    tb = SystemTB(dut)
    await tb.reset()
    pynq_standin.install(tb.ram, tb.axil)

    def body():
        backend = PynqBackend("mpq_system.bit")
        assert backend.clock_hz == 100e6 and backend.mmio is getattr(backend.overlay, pynq_standin.IP_NAME).mmio
        drv = MpqDriver(backend, max_batch=3, timeout_s=60.0)  # wall seconds: PynqBackend.wait times the host
        for key in ("a", "b", "a"):
            words, inputs, expected, bits = tb.image(key)
            drv.load_words(words, n_classes=expected.shape[1], input_bits=bits)
            assert drv.run(inputs).tolist() == expected.tolist(), f"image {key} through PynqBackend"
        assert drv._image_buf.buffer.flushes > 0 and drv._out_buf.buffer.invalidates > 0
        words, inputs, expected, bits = tb.image("a")
        flush, invalidate = pynq_standin.CachedBuffer.flush, pynq_standin.CachedBuffer.invalidate
        try:
            pynq_standin.CachedBuffer.flush = lambda self: None
            fresh = MpqDriver(backend, max_batch=3, timeout_s=60.0)  # new buffers: DDR holds the fill pattern
            tb.expect_error(StatusCode.BAD_MAGIC,
                            lambda: fresh.load_words(words, n_classes=expected.shape[1], input_bits=bits))
            pynq_standin.CachedBuffer.flush = flush
            pynq_standin.CachedBuffer.invalidate = lambda self: None
            fresh = MpqDriver(backend, max_batch=3, timeout_s=60.0)
            fresh.load_words(words, n_classes=expected.shape[1], input_bits=bits)
            stale = fresh.run(inputs)
            assert not (stale == expected).all(), "scores read without invalidate() matched: the model is no cache"
        finally:
            pynq_standin.CachedBuffer.flush, pynq_standin.CachedBuffer.invalidate = flush, invalidate
        tb.check_idle()

    try:
        await run_driver(body)
    finally:
        pynq_standin.uninstall()


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def score_overflow(dut):
    """A build whose score FIFO holds exactly image a's classes (``max_classes``): a runs right (the FIFO full,
    not over); image d has one class more: its run ends with BAD_GEOMETRY and writes no score (the output
    buffer keeps what it held), no hang; then a runs right again."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver

    def body():
        words, _, expected, bits = tb.image("a")
        drv.attach(words, n_classes=expected.shape[1], input_bits=bits)  # the build holds a
        tb.check_run("a")
        tb.load("d")
        sentinel = bytes([0xA5]) * drv._out_buf.size
        drv._out_buf.write(0, sentinel)
        tb.expect_error(StatusCode.BAD_GEOMETRY, tb.check_run, "d", 1)
        assert drv._out_buf.read(0, drv._out_buf.size) == sentinel, "a refused image wrote scores"
        tb.load("a")
        tb.check_run("a")
        tb.check_idle()

    await run_driver(body)


@cocotb.test(timeout_time=SIM_LIMIT_MS, timeout_unit="ms")
async def preloaded_image(dut):
    """A build whose global buffer holds image a from configuration (BRAM-initialised): runs right without a
    load; a load of b and back to a still work."""
    tb = SystemTB(dut)
    await tb.reset()
    drv = tb.driver

    def body():
        words, _, expected, bits = tb.image("a")
        drv.attach(words, n_classes=expected.shape[1], input_bits=bits)
        tb.check_run("a")
        tb.load("b")
        tb.check_run("b", 1)
        tb.load("a")
        tb.check_run("a", 2)
        tb.check_idle()

    await run_driver(body)
