"""Verilog of the accelerators: the fully connected core with a given image in its global buffer, and the packed
multiplier array (images loaded at run time), for simulation and synthesis."""

from pathlib import Path

from amaranth.back import verilog

from hw.accelerator import Accelerator
from hw.array.top import ConvArray

TOP_NAME = "mpq_accel"


def accelerator_verilog(image, *, name: str = TOP_NAME, **kwargs) -> str:
    """Verilog text of :class:`~hw.accelerator.Accelerator` for ``image`` (top module ``name``)."""
    return verilog.convert(Accelerator(image, **kwargs), name=name, emit_src=False)


def write_verilog(image, path, *, name: str = TOP_NAME, **kwargs) -> Path:
    """Write the Verilog atomically (temporary file, then rename) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(accelerator_verilog(image, name=name, **kwargs))
    tmp.replace(path)
    return path


#: Top module name of the packed multiplier array (:class:`hw.array.top.ConvArray`).
ARRAY_TOP_NAME = "mpq_array"


def array_verilog(config, init=(), *, name: str = ARRAY_TOP_NAME) -> str:
    """Verilog text of :class:`~hw.array.top.ConvArray` with ``config`` (global buffer initialised to
    ``init``, optional: images are normally written through the load port)."""
    return verilog.convert(ConvArray(config, init=init), name=name, emit_src=False)


def write_text_atomically(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
