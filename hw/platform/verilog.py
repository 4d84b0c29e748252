"""Verilog of the accelerator with a given image in its global buffer (for simulation and synthesis)."""

from pathlib import Path

from amaranth.back import verilog

from hw.accelerator import Accelerator

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
