"""Verilog of the accelerators: the fully connected core with a given image in its global buffer, and the packed
multiplier array (images loaded at run time), for simulation and synthesis."""

from pathlib import Path

from amaranth.back import verilog

from hw.accelerator import Accelerator
from hw.array.top import ConvArray
from model.files import atomic_write

TOP_NAME = "mpq_accel"


def accelerator_verilog(image, *, name: str = TOP_NAME, **kwargs) -> str:
    """Verilog text of :class:`~hw.accelerator.Accelerator` for ``image`` (top module ``name``)."""
    return verilog.convert(Accelerator(image, **kwargs), name=name, emit_src=False)


def write_verilog(image, path, *, name: str = TOP_NAME, **kwargs) -> Path:
    """Write the Verilog atomically (:func:`write_text_atomically`) and return its path."""
    return write_text_atomically(path, accelerator_verilog(image, name=name, **kwargs))


#: Top module name of the packed multiplier array (:class:`hw.array.top.ConvArray`).
ARRAY_TOP_NAME = "mpq_array"


def array_verilog(config, init=(), *, name: str = ARRAY_TOP_NAME) -> str:
    """Verilog text of :class:`~hw.array.top.ConvArray` with ``config`` (global buffer initialised to
    ``init``, optional: images are normally written through the load port)."""
    return verilog.convert(ConvArray(config, init=init), name=name, emit_src=False)


def write_text_atomically(path, text: str) -> Path:
    """Write ``text`` to ``path`` so that it appears whole or not at all, and a failed write (the name taken by a
    folder, a full disk) leaves no temporary file behind: :func:`model.files.atomic_write` (a uniquely named
    temporary file in the same folder, renamed into place, removed on any failure), which the Verilog writers of
    hw/ and sim/ share (the Vivado self-test plan is Amaranth's, ``hw/platform/board.py``). Returns ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
