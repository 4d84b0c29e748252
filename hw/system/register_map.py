"""The accelerator's AXI4-Lite register map: one table, from which the slave, the driver and the docs come.

The map follows the convention of Vivado HLS cores as PYNQ users know them (``ap_ctrl_hs`` at 0x00, global
and per-event interrupt enables at 0x04 / 0x08, the interrupt status at 0x0C, arguments from 0x10). Each row
of :data:`REGISTER_MAP` is one *field*: several fields may share a word (the control bits at 0x00), and a
field wider than 32 bits occupies consecutive words, low word first (``image_addr`` at 0x10 and 0x14).

:class:`~hw.system.axi_lite.AxiLiteSlave` is generated from the table; :func:`c_header`,
:func:`python_map` and :func:`markdown_table` render it for the driver and the docs; :func:`check_map`
checks that no two fields overlap and that every field lies in word-aligned words.

Access kinds (:class:`Access`) as seen from the host:

``RW``   read/write storage, driven to the core.
``RO``   read-only, driven by the core. A 64-bit ``RO`` field is read atomically: reading its low word
         latches the high word, which the next read of the high word returns.
``COH``  ``ap_start``: writing 1 sets it, the core's ``ap_ready`` clears it unless ``auto_restart`` is set
         (clear on handshake); writing 0 does nothing.
``COR``  sticky bit set by a core event, cleared by a read (``ap_done``, ``ap_ready``).
``TOW``  toggle on write (``ISR``): set by an enabled event, a written 1 toggles the bit.
``W1C``  sticky bits set by hardware events, a written 1 clears the bit.
``SC``   command: a written 1 gives a one-cycle pulse to the core; reads 0 (``load_image``).

Image checksum. ``image_crc`` holds the CRC-32 the host computed over the image it put in DDR: zlib's
``crc32`` (reflected polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF) of the image's bytes
from ``image_addr``, in DDR byte order, exactly ``4 * words`` of them (``words``: the header field, the whole
image, header included; the image is a whole number of 32-bit words, so the length is a multiple of 4, not
necessarily of 8; a pad word the DMA reads to fill its last 8-byte beat is not covered). The core computes
the same CRC of the words it writes into its global buffer and, at the end of the load, compares: a
mismatch ends the load with BAD_CHECKSUM (no usable image), and ``loaded_crc`` shows what the core read.
The header checks come first (a load refused for BAD_MAGIC, BAD_VERSION or BAD_GEOMETRY is not checksummed);
an error response (AXI_ERROR) takes precedence over BAD_CHECKSUM. A BRAM-initialised image
(``MpqSystem(init=...)``) is not checksummed: it is not loaded.

Nothing here has run on a board (no Zynq here); the slave built from this table runs under cocotb
(tests/sim/test_axi_lite.py).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from hw.array.status import Status as ArrayStatus

#: AXI4-Lite data width of the control port (bits).
WORD_BITS = 32
WORD_BYTES = WORD_BITS // 8


class Access(enum.Enum):
    """How the host sees a field (module docstring); the value is the name the docs and the C header use."""

    RW = "RW"
    RO = "RO"
    COH = "COH"
    COR = "COR"
    TOW = "TOW"
    W1C = "W1C"
    SC = "SC"


#: First status code of the system shell; codes below it are the array's (:class:`hw.array.status.Status`).
SHELL_CODES_FROM = 16
#: The shell's own codes: what goes wrong around the array (image load, DMA, registers).
_SHELL_CODES = (
    ("BAD_CHECKSUM", "the image's checksum does not match the words loaded (image_crc != loaded_crc)"),
    ("AXI_ERROR", ("SLVERR or DECERR on a read (RRESP) or write (BRESP) response, or a response that answers no "
                   "request")),
    ("TIMEOUT", "an AXI transfer or the array made no progress within its limit"),
    ("BAD_ADDRESS", ("an address register is not 8-byte aligned or is 4 GiB or above, image_count is 0, or the "
                     "batch's inputs, in whole 8-byte beats, reach 4 GiB")),
    ("NO_IMAGE", "ap_start before any image was loaded"),
)

if max(s.value for s in ArrayStatus) >= SHELL_CODES_FROM:
    raise ValueError(f"the array's status codes must stay below {SHELL_CODES_FROM}, not up to "
                     f"{max(s.value for s in ArrayStatus)}")

#: The ``status`` register's codes: the array's :class:`~hw.array.status.Status` (same names and values:
#: OK, BAD_MAGIC, BAD_VERSION, BAD_GEOMETRY, BAD_STREAM, BAD_PRECISION), then the shell's from
#: :data:`SHELL_CODES_FROM` (BAD_CHECKSUM, AXI_ERROR, TIMEOUT, BAD_ADDRESS, NO_IMAGE).
#: The core stops with one of these instead of hanging; ``OK`` after a run or load that completed.
StatusCode = enum.IntEnum("StatusCode", [(s.name, s.value) for s in ArrayStatus] +
                          [(name, SHELL_CODES_FROM + k) for k, (name, _) in enumerate(_SHELL_CODES)],
                          module=__name__)
#: One line on each shell code (the array's are documented in hw/array/status.py).
SHELL_CODE_DESCRIPTIONS = {StatusCode[name]: text for name, text in _SHELL_CODES}


@dataclass(frozen=True)
class Field:
    """One row of the register map.

    Members
    -------
    name : str
        Python identifier; the port name on :class:`~hw.system.axi_lite.AxiLiteSlave` and, upper-cased,
        the C macro.
    offset : int
        Byte offset of the field's (first) word.
    width : int
        Bits, 1 to 64; a field over 32 bits takes ``ceil(width / 32)`` words and starts at bit 0.
    access : Access
    reset : int
        Value after reset (of the storage for ``RW`` and sticky kinds; what the core drives after its reset
        for ``RO``).
    description : str
    bit : int
        Lowest bit of the field inside its word (fields of at most 32 bits).
    """

    name: str
    offset: int
    width: int
    access: Access
    reset: int
    description: str
    bit: int = 0

    @property
    def words(self) -> int:
        return -(-self.width // WORD_BITS)

    @property
    def mask(self) -> int:
        """Bits of the field inside its word (fields of at most 32 bits)."""
        return ((1 << self.width) - 1) << self.bit

    def word_offsets(self) -> tuple[int, ...]:
        return tuple(self.offset + WORD_BYTES * k for k in range(self.words))


_A = Access
#: The register map: one row per field (see :class:`Field`), in address order.
REGISTER_MAP: tuple[Field, ...] = (
    Field("ap_start", 0x00, 1, _A.COH, 0, "Start the core (ap_ctrl_hs); cleared by ap_ready unless auto_restart",
          bit=0),
    Field("ap_done", 0x00, 1, _A.COR, 0, "The core finished a run (clear on read)", bit=1),
    Field("ap_idle", 0x00, 1, _A.RO, 1, "The core is idle", bit=2),
    Field("ap_ready", 0x00, 1, _A.COR, 0, "The core took ap_start and can take the next (clear on read)", bit=3),
    Field("auto_restart", 0x00, 1, _A.RW, 0, "Keep ap_start set after ap_ready: runs back to back", bit=7),
    Field("gie", 0x04, 1, _A.RW, 0, "Global interrupt enable"),
    Field("ier", 0x08, 2, _A.RW, 0, "Interrupt enable: bit 0 ap_done, bit 1 ap_ready"),
    Field("isr", 0x0C, 2, _A.TOW, 0, "Interrupt status (toggle on write): bit 0 ap_done, bit 1 ap_ready"),
    Field("image_addr", 0x10, 64, _A.RW, 0, "DDR byte address of the packed image (8-byte aligned)"),
    Field("input_addr", 0x18, 64, _A.RW, 0, "DDR byte address of the input images (8-byte aligned)"),
    Field("output_addr", 0x20, 64, _A.RW, 0, "DDR byte address of the output scores (8-byte aligned)"),
    Field("image_count", 0x28, 32, _A.RW, 1, "Input images per run (a batch)"),
    Field("precision", 0x2C, 8, _A.RW, 0, "Widths of a vertical (version 4) image: 0 its source width, 1-8 "
          "that width for every inner layer, 0x80 + r row r of its Eq. 12 table (ignored for version 3)"),
    Field("load_image", 0x30, 1, _A.SC, 0, "Write 1: reload the global buffer from image_addr (taken when idle only)"),
    Field("status", 0x34, 8, _A.RO, 0, "Error code of the last run or load (StatusCode; 0 OK)"),
    Field("rresp_error", 0x38, 1, _A.W1C, 0, "A read response was SLVERR or DECERR or answered no request (write 1 "
          "to clear)", bit=0),
    Field("bresp_error", 0x38, 1, _A.W1C, 0, "A write response was SLVERR or DECERR or answered no request (write 1 "
          "to clear)", bit=1),
    Field("image_crc", 0x3C, 32, _A.RW, 0, "zlib CRC-32 of the image at image_addr (its 4 * words bytes); a "
          "load that reads other bytes ends with BAD_CHECKSUM"),
    Field("busy_cycles", 0x40, 64, _A.RO, 0, "Clock cycles with the core busy (runs), since reset"),
    Field("load_cycles", 0x48, 64, _A.RO, 0, "Clock cycles spent loading images, since reset"),
    Field("loaded_crc", 0x50, 32, _A.RO, 0, "CRC-32 the core computed over the image words of the last load "
          "(0: the load ended before the end of its body)"),
    Field("buffer_reads", 0x58, 32, _A.RO, 0, "Global-buffer words the last image that finished read: header, "
          "descriptors, control and weight words (0 from a run's start until its first image is done)"),
    Field("weight_reads", 0x5C, 32, _A.RO, 0, "Of buffer_reads, the weight words (the engines' row or plane "
          "decoders)"),
)

#: ISR / IER bit of each interrupt event.
INTERRUPT_EVENTS = ("ap_done", "ap_ready")


def check_map(fields=REGISTER_MAP) -> None:
    """Check a register map: unique identifier names, word-aligned offsets, sane widths, no overlap.

    Raises
    ------
    TypeError
        A row that is not a :class:`Field`, or an access that is not an :class:`Access`.
    ValueError
        Naming the first offending field and value.
    """
    fields = tuple(fields)
    if not fields:
        raise ValueError("a register map needs at least one field, not ()")
    names = set()
    taken: dict[int, tuple[int, str]] = {}  # word offset -> (bits taken, first field name)
    for f in fields:
        if not isinstance(f, Field):
            raise TypeError(f"register map rows must be Field, not {f!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", f.name) or f.name in names:
            raise ValueError(f"field names must be unique lower-case identifiers, not {f.name!r}")
        names.add(f.name)
        if not isinstance(f.access, Access):
            raise TypeError(f"{f.name}: access must be an Access, not {f.access!r}")
        if f.offset < 0 or f.offset % WORD_BYTES:
            raise ValueError(f"{f.name}: offset must be a non-negative multiple of {WORD_BYTES}, not {f.offset:#x}")
        if not 1 <= f.width <= 64:
            raise ValueError(f"{f.name}: width must be 1 to 64, not {f.width!r}")
        if f.width > WORD_BITS and f.bit != 0:
            raise ValueError(f"{f.name}: a field over {WORD_BITS} bits must start at bit 0, not {f.bit!r}")
        if f.width <= WORD_BITS and not 0 <= f.bit <= WORD_BITS - f.width:
            raise ValueError(f"{f.name}: bit {f.bit!r} + width {f.width} does not fit a {WORD_BITS}-bit word")
        if f.width > WORD_BITS and f.access not in (Access.RW, Access.RO):
            raise ValueError(f"{f.name}: only RW and RO fields may be wider than {WORD_BITS} bits, "
                             f"not {f.access.value} with width {f.width}")
        if f.access in (Access.COH, Access.COR, Access.SC) and f.width != 1:
            raise ValueError(f"{f.name}: a {f.access.value} field is one bit wide, not {f.width!r}")
        if not 0 <= f.reset < (1 << f.width):
            raise ValueError(f"{f.name}: reset {f.reset!r} does not fit {f.width} bits")
        for k, offset in enumerate(f.word_offsets()):
            bits = (1 << WORD_BITS) - 1 if f.width > WORD_BITS else f.mask
            if k == f.words - 1 and f.width > WORD_BITS:
                bits = (1 << (f.width - WORD_BITS * k)) - 1
            used, first = taken.get(offset, (0, None))
            if used & bits:
                raise ValueError(f"{f.name}: bits {bits & used:#x} of the word at {offset:#x} overlap {first!r}")
            taken[offset] = (used | bits, first or f.name)


def field(name: str, fields=REGISTER_MAP) -> Field:
    """The row named ``name``.

    Raises
    ------
    KeyError
        No such field.
    """
    for f in fields:
        if f.name == name:
            return f
    raise KeyError(f"no register field {name!r}")


def address_width(fields=REGISTER_MAP) -> int:
    """AXI4-Lite address bits that reach every word of the map (at least 4, as HLS cores have)."""
    end = max(f.word_offsets()[-1] for f in fields) + WORD_BYTES
    return max(4, (end - 1).bit_length())


def python_map(fields=REGISTER_MAP) -> dict[str, dict]:
    """``{name: {"offset", "width", "bit", "access", "reset", "description"}}`` for a driver."""
    return {f.name: {"offset": f.offset, "width": f.width, "bit": f.bit, "access": f.access.value,
                     "reset": f.reset, "description": f.description} for f in fields}


def markdown_table(fields=REGISTER_MAP) -> str:
    """The map as a Markdown table (one row per field), then the status codes."""
    lines = ["| offset | bits | name | access | reset | description |", "|---|---|---|---|---|---|"]
    for f in fields:
        if f.width > WORD_BITS:
            where = " / ".join(f"{o:#04x}" for o in f.word_offsets())
            bits = f"{f.width - 1}:0"
        else:
            where = f"{f.offset:#04x}"
            bits = f"{f.bit}" if f.width == 1 else f"{f.bit + f.width - 1}:{f.bit}"
        lines.append(f"| {where} | {bits} | {f.name} | {f.access.value} | {f.reset:#x} | {f.description} |")
    lines += ["", "| status | name |", "|---|---|"]
    lines += [f"| {code.value} | {code.name} |" for code in StatusCode]
    return "\n".join(lines) + "\n"


def c_header(fields=REGISTER_MAP, *, prefix: str = "MPQ") -> str:
    """A C header: ``<PREFIX>_<NAME>_OFFSET`` (and ``_HI_OFFSET``), ``_SHIFT``, ``_MASK``, status codes.

    Raises
    ------
    ValueError
        ``prefix`` is not an upper-case C identifier.
    """
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", prefix):
        raise ValueError(f"prefix must be an upper-case C identifier, not {prefix!r}")
    guard = f"{prefix}_REGISTER_MAP_H"
    lines = ["/* Generated from hw/system/register_map.py: do not edit. */", f"#ifndef {guard}", f"#define {guard}",
             ""]
    for f in fields:
        base = f"{prefix}_{f.name.upper()}"
        lines.append(f"/* {f.description} ({f.access.value}, reset {f.reset:#x}) */")
        if f.width > WORD_BITS:
            lines.append(f"#define {base}_OFFSET 0x{f.offset:02X}u")
            lines.append(f"#define {base}_HI_OFFSET 0x{f.offset + WORD_BYTES:02X}u")
        else:
            lines.append(f"#define {base}_OFFSET 0x{f.offset:02X}u")
            lines.append(f"#define {base}_SHIFT {f.bit}u")
            lines.append(f"#define {base}_MASK 0x{f.mask:08X}u")
    lines.append("")
    for code in StatusCode:
        lines.append(f"#define {prefix}_STATUS_{code.name} {code.value}u")
    lines += ["", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


check_map()
