"""Verilog of the accelerators: the fully connected core with a given image in its global buffer, the packed
multiplier array (images loaded at run time) and the Zynq system around it, for simulation and synthesis; each design
elaborated once a process (:func:`component_verilog`)."""

import functools
from pathlib import Path

from amaranth.back import verilog

from hw.accelerator import Accelerator
from hw.array.top import ConvArray
from hw.system.zynq_top import SYSTEM_TOP_NAME, MpqSystem
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
    ``init``, optional: images are normally written through the load port); :func:`component_verilog`'s."""
    return component_verilog(ConvArray, config, init=_words(init), name=name)


def engine_verilog(config, *, name: str) -> str:
    """Verilog text of one engine of the array with ``config`` (:meth:`~hw.array.top.ConvArray.engine_for`, the
    parts synthesis of :mod:`hw.platform.array_synth`); :func:`component_verilog`'s."""
    return component_verilog(ConvArray.engine_for, config, name=name)


def system_verilog(config, *, init=(), name: str = SYSTEM_TOP_NAME, **kwargs) -> str:
    """Verilog text of the Zynq system :class:`~hw.system.zynq_top.MpqSystem` with ``config`` and its keyword
    parameters (``init``: a BRAM-initialised build's image); :func:`component_verilog`'s."""
    return component_verilog(MpqSystem, config, init=_words(init), name=name, **kwargs)


@functools.lru_cache(maxsize=8)
def component_verilog(build, *args, name: str, **kwargs) -> str:
    """Verilog text of the component ``build(*args, **kwargs)`` with top module ``name``, elaborated and converted
    once a process for equal arguments (which must be hashable: an image as a tuple of words).

    The elaboration is the costly part of writing a design's Verilog (Amaranth's netlist in Python: 5-8 s for the
    Zynq system with a 1 x 1 array and its version 4 path, 3-5 s for a small array), and flows and tests write one
    design more than once: ``demo`` simulates the array it then synthesises, a vertical image runs at two widths on
    one system build. The text depends on the arguments alone (the same text from one process to another). Eight
    designs are kept (the text of ``bench accel``'s 4 x 42 array is 11 MB)."""
    return verilog.convert(build(*args, **kwargs), name=name, emit_src=False)


def _words(init) -> tuple[int, ...]:
    """An image's words as a hashable key (a list or a numpy array as the callers hold them)."""
    return tuple(int(w) for w in init)


def write_text_atomically(path, text: str) -> Path:
    """Write ``text`` to ``path`` so that it appears whole or not at all, and a failed write (the name taken by a
    folder, a full disk) leaves no temporary file behind: :func:`model.files.atomic_write` (a uniquely named
    temporary file in the same folder, renamed into place, removed on any failure), which the Verilog writers of
    hw/ and sim/ share (the Vivado self-test plan is Amaranth's, ``hw/platform/board.py``). Returns ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
