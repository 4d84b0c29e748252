"""The host driver of the Zynq accelerator (:class:`hw.system.zynq_top.MpqSystem`), in the style of PYNQ drivers.

::

    drv = MpqDriver(backend)              # PynqBackend("mpq_system.bit") on a board, SimBackend(...) in cocotb
    drv.load("out/demo/image")            # weights.bin + manifest.json of `build.py export`: no new bitstream
    scores = drv.run(codes)               # [N, C, H, W] or [N, C H W] input codes -> [N, n_classes] int32
    drv.throughput_test()                 # {"images_per_s", "cycles_per_image", "ddr_bytes_per_image", ...}

Every register access goes through the offsets of :data:`hw.system.register_map.REGISTER_MAP` (the table the
slave is generated from), and the same code runs on both backends: only :class:`~driver.backend.Backend`
differs. A run that the core ends with a non-OK ``status`` raises :class:`CoreError` carrying the code.

A load writes the image's CRC-32 (``zlib.crc32`` of the bytes put in DDR: :func:`image_crc`) to
``image_crc``; the core computes the same CRC over the words it reads and ends the load with BAD_CHECKSUM
when they differ (on a board: DDR not holding what the driver wrote, e.g. a cache not flushed, or a corrupted
transfer).

The driver has run only against the RTL in simulation (:mod:`sim.system.sim_backend`); see
:mod:`driver.pynq_backend` for what has not run on a board.
"""

from __future__ import annotations

import math
import operator
import time
import zlib
from pathlib import Path

import numpy as np

from driver.backend import Backend
from hw.system.register_map import REGISTER_MAP, SHELL_CODE_DESCRIPTIONS, StatusCode, field
from model.errors import UserError
from model.export.format import HEADER, VERSION, VERTICAL_VERSION
from model.export.image import read_image
from model.export.image_v4 import is_vertical, read_vertical_words, unpack_any

#: Default device time allowed for one load or run before the driver gives up (the core's own watchdog
#: normally ends a run with TIMEOUT long before).
DEFAULT_TIMEOUT_S = 10.0
#: Images per DMA batch (the input and score buffers are sized for it).
DEFAULT_MAX_BATCH = 64
#: Precision register values: 0 (the image's own widths) or a weight width in bits; a table row is
#: ``TABLE_ROW_FLAG + row`` (rows below ``TABLE_ROWS``).
PRECISIONS = range(9)
TABLE_ROW_FLAG = 0x80
TABLE_ROWS = 0x80


class CoreError(RuntimeError):
    """The core ended a load or run with a non-OK status.

    Members
    -------
    code : StatusCode or int
        The ``status`` register (:class:`~hw.system.register_map.StatusCode` when known).
    """

    def __init__(self, code: int, what: str):
        try:
            self.code = StatusCode(code)
            name = self.code.name
        except ValueError:
            self.code, name = code, "unknown code"
        detail = SHELL_CODE_DESCRIPTIONS.get(self.code, "")
        super().__init__(f"{what}: the core stopped with status {int(code)} ({name})" +
                         (f": {detail}" if detail else ""))


def image_crc(words) -> int:
    """The ``image_crc`` register value of a packed image: ``zlib.crc32`` of its words as little-endian
    bytes, the bytes the driver puts in DDR and the core loads (:mod:`hw.system.register_map`)."""
    return zlib.crc32(np.asarray(words, dtype=np.uint32).astype("<u4").tobytes()) & 0xFFFFFFFF


def _integer(value) -> int | None:
    """``value`` as an int when it is an integer (numpy's too), not a bool; None otherwise."""
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


#: The host's clock for a wall-clock backend's polls (a name of its own, so that a test can stand in for it).
_now = time.monotonic


def _code_name(code: int) -> str:
    """The name of a ``status`` value (:class:`~hw.system.register_map.StatusCode`), or "unknown code"."""
    try:
        return StatusCode(code).name
    except ValueError:
        return "unknown code"


def _image_vector(words, where: str = "") -> np.ndarray:
    """``words`` as an array, refused (``where`` before the message) unless a vector of at least the header's
    words."""
    array = np.asarray(words)
    if array.ndim != 1 or len(array) < HEADER.words:
        raise UserError(f"{where}an image is a vector of at least {HEADER.words} words, not shape {array.shape}")
    return array


def _image_words(words) -> np.ndarray:
    """``words`` as the uint32 vector of a packed image: a 1-D sequence of at least the header's words, each an
    integer in ``[0, 2^32)`` (a negative or wider value would be wrapped by the conversion)."""
    array = _image_vector(words)
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 0xFFFFFFFF:
        raise UserError(f"an image's words are integers in [0, 2^32), not {array.dtype} values in "
                        f"[{array.min()}, {array.max()}]")
    return array.astype(np.uint32)


def _bit(name: str) -> int:
    f = field(name)
    return 1 << f.bit


class MpqDriver:
    """One accelerator instance behind ``backend`` (module docstring).

    Parameters
    ----------
    backend : Backend
    max_batch : int
        Images per DMA batch, 1 to 65536; ``run`` splits larger inputs.
    timeout_s : float
        Device seconds a load or batch may take before :class:`TimeoutError`.

    Raises
    ------
    ValueError
        A parameter out of range, naming it and its value.
    """

    def __init__(self, backend: Backend, *, max_batch: int = DEFAULT_MAX_BATCH, timeout_s: float = DEFAULT_TIMEOUT_S):
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be a driver.backend.Backend, not {backend!r}")
        if _integer(max_batch) is None or not 1 <= max_batch <= 1 << 16:
            raise ValueError(f"max_batch must be an integer from 1 to 65536, not {max_batch!r}")
        if (isinstance(timeout_s, bool | np.bool_) or not isinstance(timeout_s, int | float | np.integer | np.floating)
                or not 0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a finite number of seconds > 0, not {timeout_s!r}")
        self.backend, self.max_batch, self.timeout_s = backend, max_batch, timeout_s
        self.words: np.ndarray | None = None
        self.input_shape: tuple[int, ...] = ()
        self.n_codes = self.n_classes = self.input_bits = 0
        self._image_buf = self._in_buf = self._out_buf = None
        self._staged: np.ndarray | None = None

    # --- registers -------------------------------------------------------------------------------------
    def read_field(self, name: str) -> int:
        """A field of the register map (64-bit fields: low word first, which latches the high word)."""
        f = field(name)
        if f.width > 32:
            lo = self.backend.read(f.offset)
            return lo | self.backend.read(f.offset + 4) << 32
        return (self.backend.read(f.offset) & f.mask) >> f.bit

    def write_field(self, name: str, value: int) -> None:
        """Write a field that has its word to itself (the address, count and command registers)."""
        f = field(name)
        if _integer(value) is None or not 0 <= value < 1 << f.width:
            raise ValueError(f"register {name} holds a {f.width}-bit integer; {value!r} is not one")
        if sum(g.offset == f.offset for g in REGISTER_MAP) > 1:
            raise ValueError(f"register {name} shares its word; write the word with backend.write")
        self.backend.write(f.offset, value & 0xFFFFFFFF)
        if f.width > 32:
            self.backend.write(f.offset + 4, value >> 32)

    def status(self) -> int:
        return self.read_field("status")

    def _poll(self, done, what: str) -> None:
        """Poll ``done()`` until it is true, for at most ``timeout_s`` of device time: the sum of the backend's
        waits, or the host's clock for a backend whose device runs in real time (``Backend.wall_clock``: a
        board, where the register reads themselves take time that the waits do not count)."""
        start, waited = _now(), 0.0
        while not done():
            if (_now() - start if self.backend.wall_clock else waited) > self.timeout_s:
                code = self.status()
                raise TimeoutError(f"{what}: the core did not finish within {self.timeout_s} s of device time "
                                   f"(status {code} = {_code_name(code)}, the last operation's); it may "
                                   "still be running: the driver refuses the next load or run until it is idle")
            waited += self.backend.wait()

    def _require_idle(self, what: str) -> None:
        """Refuse to start ``what`` unless the core is idle with no start pending (a load or run the driver gave up
        on, or one started by another program, may still be running: the core takes ``load_image`` only when
        idle, and ``ap_done`` of an earlier run would end the next poll at once). Reading the control word also
        clears a stale ``ap_done`` and ``ap_ready`` (clear on read)."""
        word = self.backend.read(field("ap_idle").offset)
        if not word & _bit("ap_idle") or word & _bit("ap_start"):
            idle, start = word >> field("ap_idle").bit & 1, word >> field("ap_start").bit & 1
            raise UserError(f"{what}: the core is busy (control word {word:#x}: ap_idle {idle}, ap_start {start}); "
                            "wait until ap_idle reads 1 (the core's watchdog ends a stalled run with TIMEOUT), or "
                            "reload the bitstream")

    # --- API -------------------------------------------------------------------------------------------
    def load(self, image_dir) -> dict:
        """Load the image of ``image_dir`` (``weights.bin`` and ``manifest.json`` of ``build.py export``)
        into the core's global buffer through DDR; return its manifest.

        Raises
        ------
        UserError
            A missing or corrupt image (read by :func:`model.export.image.read_image`) or one that is not
            format version 3 or 4 (a vertical-layered model: every width in one image, see :meth:`set_precision`).
        CoreError
            The core refused the image (its status: BAD_MAGIC, BAD_GEOMETRY, AXI_ERROR, ...).
        """
        path = Path(image_dir)
        bin_path = (path if path.is_dir() else path.parent) / "weights.bin"
        if is_vertical(path):  # (from the header's first two words)
            # A vertical-layered model: every width in one image; set_precision picks the run's.
            net, manifest, words = read_vertical_words(path)
            self.load_words(words, n_classes=net.layers[-1].n_out, input_bits=net.input_bits, check=False)
            return manifest
        net, manifest = read_image(path)  # names a missing or corrupt file
        words = np.frombuffer(bin_path.read_bytes(), dtype="<u4")
        if int(words[1]) != VERSION:
            raise UserError(f"{bin_path}: header field 'version' is {int(words[1])}; the array runs version "
                            f"{VERSION} and {VERTICAL_VERSION} images (`build.py export` of its checkpoint writes "
                            f"version {VERSION})")
        # The class count and input width from the network the reader checked (which also holds the manifest's
        # description to the words since 2026-12-06, model.export.image.check_described_fields; the driver read them
        # from the manifest once, and a wrong one ran the image, then failed).
        self.load_words(words, n_classes=net.layers[-1].n_out, input_bits=net.input_bits, check=False)
        return manifest

    def load_words(self, words, *, n_classes: int, input_bits: int = 8, check: bool = True) -> None:
        """Load a packed version 3 or 4 image given as words (what :meth:`load` does after reading the files):
        :meth:`check_words` (unless ``check`` is false), :meth:`stage_image`, then :meth:`load_staged`.

        The core checks what it needs to stay within its buffers and to finish, not every field of the integer
        contract (docs/system.md, "Corrupt images": a requant multiplier past 17 bits, a layer's input width
        other than the previous layer's output width or a global pool whose sum passes 16 bits would run to
        OK with other scores), so words are read through the image reader first, as :meth:`load` reads a
        folder. ``check=False`` hands unchecked words to the core (the system tests do, to test the core's
        own checks; :meth:`load` has already read them).

        Raises
        ------
        UserError
            ``check`` and the reader refuses the words, or they disagree with ``n_classes`` / ``input_bits``.
        CoreError
            The core refused the image.
        """
        if check:
            self.check_words(words, n_classes=n_classes, input_bits=input_bits)
        self.stage_image(words)
        self.load_staged(n_classes=n_classes, input_bits=input_bits)

    @staticmethod
    def check_words(words, *, n_classes: int, input_bits: int) -> None:
        """Read ``words`` through the image reader of their version (:func:`model.export.image_v4.unpack_any`:
        3 by :func:`model.export.image.unpack`, 4 by :func:`model.export.image_v4.unpack_vertical`), which checks every field of the integer contract, and
        check ``n_classes`` and ``input_bits`` against the network they hold.

        Raises
        ------
        UserError
            Naming the field and the allowed values.
        """
        words = _image_vector(words, "image words: ")
        version = int(words[HEADER["version"].word])
        if version not in (VERSION, VERTICAL_VERSION):
            raise UserError(f"image words: header field 'version' is {version}; the array runs version {VERSION} "
                            f"and {VERTICAL_VERSION} images")
        net = unpack_any(words, "image words")
        if n_classes != net.layers[-1].n_out:
            raise UserError(f"image words: n_classes is {n_classes!r} but the image's last layer has "
                            f"{net.layers[-1].n_out} outputs")
        if input_bits != net.input_bits:
            raise UserError(f"image words: input_bits is {input_bits!r} but the image's input codes are "
                            f"{net.input_bits} bits")

    def stage_image(self, words) -> int:
        """Put a packed image in DDR and point the core at it (``image_addr``, ``image_crc``), without
        loading it; return its CRC (:func:`image_crc`). The words are not read through the reader (see
        :meth:`load_words`, :meth:`check_words`)."""
        words = _image_words(words)
        self._require_idle("stage an image")  # (a load under way reads image_addr's region)
        data = words.astype("<u4").tobytes()
        crc = image_crc(words)
        buf = self._buffer("_image_buf", len(data))
        buf.write(0, data)
        self.write_field("image_addr", buf.address)
        self.write_field("image_crc", crc)
        self._staged = words
        return crc

    @property
    def staged_words(self) -> int:
        """Words of the image last staged in DDR (:meth:`stage_image`, :meth:`load`), 0 before any."""
        return 0 if self._staged is None else len(self._staged)

    def load_staged(self, *, n_classes: int, input_bits: int = 8) -> None:
        """``load_image`` of the image :meth:`stage_image` put in DDR; wait for the core to finish.

        Raises
        ------
        CoreError
            The core refused the image (BAD_CHECKSUM: the words it read are not those staged; the message
            gives ``image_crc`` and the core's ``loaded_crc``).
        """
        if self._staged is None:
            raise UserError("no image staged: call stage_image(words) first")
        words = self._staged
        self._require_idle("image load")  # (the core takes load_image only when idle: it would be dropped)
        self.words = None
        self.write_field("load_image", 1)
        self._poll(lambda: self.read_field("ap_idle"), "image load")
        code = self.status()
        if code != StatusCode.OK:
            what = "image load"
            if code == StatusCode.BAD_CHECKSUM:
                what += (f" (image_crc {self.read_field('image_crc'):#010x}, the core read "
                         f"{self.read_field('loaded_crc'):#010x})")
            raise CoreError(code, what)
        self.attach(words, n_classes=n_classes, input_bits=input_bits)

    def attach(self, words, *, n_classes: int, input_bits: int = 8) -> None:
        """Use the image the core already holds (``words``: the packed image, for its input shape), without
        loading it: a bitstream whose global buffer was initialised with it (``build.py system
        --bram-image``), or one loaded before."""
        words = _image_words(words)
        classes, bits = _integer(n_classes), _integer(input_bits)
        if classes is None or classes < 1:
            raise UserError(f"n_classes must be an integer >= 1, not {n_classes!r}")
        if bits is None or not 1 <= bits <= 8:
            raise UserError(f"input_bits must be an integer from 1 to 8, not {input_bits!r}")
        c = int(words[HEADER["in_channels"].word]) >> HEADER["in_channels"].bit & 0xFFFF
        h = int(words[HEADER["in_height"].word]) >> HEADER["in_height"].bit & 0xFFFF
        w = int(words[HEADER["in_width"].word]) >> HEADER["in_width"].bit & 0xFFFF
        self.words = words
        self.input_shape = (c, h, w)
        self.n_codes, self.n_classes, self.input_bits = c * h * w, classes, bits
        self._buffer("_in_buf", self.max_batch * self.n_codes)
        self._buffer("_out_buf", 4 * self.max_batch * self.n_classes)

    def _buffer(self, name: str, size: int):
        """The DDR buffer ``name``, allocated again only when it is smaller than ``size`` bytes (so that
        reloading images does not use up the board's contiguous memory)."""
        buf = getattr(self, name)
        if buf is None or buf.size < size:
            buf = self.backend.allocate(size)
            setattr(self, name, buf)
        return buf

    def set_precision(self, bits: int = 0, *, table_row: int | None = None) -> None:
        """Choose the widths a vertical-layered (version 4) image runs at, from the next run on: ``bits`` for
        every inner layer (0: its source width, the largest it stores), or row ``table_row`` of its Eq. 12
        table (``precision`` register: ``0x80 + row``). One image serves every width: no reload. A width the
        loaded image does not store ends the next run with the core's BAD_PRECISION. Version 3 images
        ignore the register.
        """
        if table_row is not None:
            row = _integer(table_row)
            if bits:
                raise UserError(f"give bits or table_row, not both (bits {bits!r}, table_row {table_row!r}): a table "
                                "row sets every inner layer's width")
            if row is None or not 0 <= row < TABLE_ROWS:
                raise UserError(f"table_row must be an integer from 0 to {TABLE_ROWS - 1}, not {table_row!r}")
            self.write_field("precision", TABLE_ROW_FLAG + row)
            return
        width = _integer(bits)
        if width is None or width not in PRECISIONS:
            raise UserError(f"precision must be an integer from {PRECISIONS.start} to {PRECISIONS.stop - 1} "
                            f"(0: the image's own widths), not {bits!r}")
        self.write_field("precision", width)

    def _codes(self, x) -> np.ndarray:
        if self.words is None:
            raise UserError("no image loaded: call load(image_dir) first")
        x = np.asarray(x)
        if x.ndim >= 1 and x.shape[1:] == self.input_shape or (x.ndim == 2 and x.shape[1] == self.n_codes):
            pass
        else:
            raise UserError(f"inputs must have shape [N, {', '.join(map(str, self.input_shape))}] or "
                            f"[N, {self.n_codes}], not {list(x.shape)}")
        if len(x) == 0:
            raise UserError("inputs hold no image (N = 0)")
        if not np.issubdtype(x.dtype, np.integer):
            raise UserError(f"inputs must be integer input codes, not {x.dtype}")
        top = (1 << self.input_bits) - 1
        if x.min() < 0 or x.max() > top:
            raise UserError(f"input codes must lie in [0, {top}] ({self.input_bits}-bit inputs), not "
                            f"[{x.min()}, {x.max()}]")
        return x.reshape(len(x), self.n_codes).astype(np.uint8)

    def run_batch(self, codes: np.ndarray) -> np.ndarray:
        """One DMA batch (at most ``max_batch`` images of ``n_codes`` byte codes): scores ``[N, n_classes]``."""
        n = len(codes)
        self._require_idle(f"run of {n} images")
        self._in_buf.write(0, codes.tobytes())
        self.write_field("input_addr", self._in_buf.address)
        self.write_field("output_addr", self._out_buf.address)
        self.write_field("image_count", n)
        self.backend.write(field("ap_start").offset, _bit("ap_start"))
        ap_done = _bit("ap_done")
        self._poll(lambda: self.backend.read(field("ap_done").offset) & ap_done, "run")
        code = self.status()
        if code != StatusCode.OK:
            raise CoreError(code, f"run of {n} images")
        data = self._out_buf.read(0, 4 * n * self.n_classes)
        return np.frombuffer(data, dtype="<i4").reshape(n, self.n_classes).astype(np.int64)

    def run(self, x) -> np.ndarray:
        """Class scores ``[N, n_classes]`` (int64 of the core's int32) of input codes ``x`` ``[N, C, H, W]``
        or ``[N, C H W]``, in batches of ``max_batch``.

        Raises
        ------
        UserError
            No image loaded, or inputs of the wrong shape, type or range (naming the allowed ones).
        CoreError
            The core ended a batch with a non-OK status.
        """
        codes = self._codes(x)
        return np.concatenate([self.run_batch(codes[k:k + self.max_batch])
                               for k in range(0, len(codes), self.max_batch)])

    def throughput_test(self, images: int | None = None, seed: int = 0) -> dict:
        """Run ``images`` random input images (default: one batch) and measure.

        Returns
        -------
        dict
            ``images``, ``batches``, ``cycles`` (``busy_cycles`` of the runs: DMA included),
            ``cycles_per_image``, ``clock_hz``, ``images_per_s`` (from the cycles at ``clock_hz``),
            ``wall_s`` and ``wall_images_per_s`` (host time around the runs: on a board the real rate with the
            driver's overhead; in simulation meaningless), ``ddr_bytes`` (inputs read, padded to 8-byte
            beats, and scores written) and ``ddr_bytes_per_image``, ``image_bytes`` (one load), ``load_cycles``,
            ``buffer_bytes_per_image`` and ``weight_bytes_per_image`` (the core's ``buffer_reads`` and
            ``weight_reads`` of the last image, 4 bytes a word: what an image reads from the on-chip global buffer,
            all of it and the weights; every image of a network reads the same words).
        """
        if self.words is None:
            raise UserError("no image loaded: call load(image_dir) first")
        images = self.max_batch if images is None else images
        if not isinstance(images, int) or images < 1:
            raise UserError(f"images must be an integer >= 1, not {images!r}")
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 1 << self.input_bits, size=(images, self.n_codes))
        before = self.read_field("busy_cycles")
        t0 = time.perf_counter()
        self.run(x)
        wall = time.perf_counter() - t0
        cycles = self.read_field("busy_cycles") - before
        batches = [min(self.max_batch, images - k) for k in range(0, images, self.max_batch)]
        ddr = sum(-(-b * self.n_codes // 8) * 8 + 4 * b * self.n_classes for b in batches)
        clock = float(self.backend.clock_hz)
        return {"images": images, "batches": len(batches), "cycles": cycles, "cycles_per_image": cycles / images,
                "clock_hz": clock, "images_per_s": images * clock / cycles if cycles else 0.0,
                "wall_s": wall, "wall_images_per_s": images / wall if wall else 0.0,
                "ddr_bytes": ddr, "ddr_bytes_per_image": ddr / images, "image_bytes": 4 * len(self.words),
                "load_cycles": self.read_field("load_cycles"),
                "buffer_bytes_per_image": 4 * self.read_field("buffer_reads"),
                "weight_bytes_per_image": 4 * self.read_field("weight_reads")}
