"""Resource report: Yosys ``synth_xilinx`` on generated Verilog, counted against the XC7Z020.

Yosys is the Debian package (``yosys``, 0.23 here; the Makefile installs it): its ``synth_xilinx`` maps
to 7-series primitives (DSP48E1, RAMB36E1/RAMB18E1, LUT1-6, LUTRAM, FDRE...) in seconds, where the
WebAssembly build on PyPI takes minutes. The counts are Yosys' mapping, not Vivado's: Vivado packs LUTs
and registers differently, but DSP48E1 and block RAM counts agree for inferred multipliers and memories.

Every run here is :func:`synth_xilinx`, Yosys's default mapping. Not ``-widemux``: in Yosys 0.23 it maps a
21-way case statement wrongly (a netlist simulated against its RTL with Icarus and Yosys's ``cells_sim.v``
differs on 354 of about 2,600 vectors), and it dropped 10 of an array engine's 42 lanes, whose 21-way P-word
selects it had broken, so its lower LUT counts were not a design's (``docs/array_design.md``, "Wide
multiplexers").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from model.errors import ToolError, UserError

#: XC7Z020 programmable-logic capacity (DS190, Zynq-7000 overview, table 1).
XC7Z020 = {"dsp": 220, "lut": 53200, "ff": 106400, "bram36": 140}


def refuse_past_the_dsps(dsp_lanes: int, engines: int, lanes: int, what: str) -> None:
    """Refuse an array whose lanes alone need more DSP48E1 than the XC7Z020 has, before ``what`` (a command
    building Verilog or a Vivado project for it) elaborates it: minutes of work for a design no board holds.
    ``sim`` and ``synth`` take such arrays (a simulation, or a report of how far past the chip it is)."""
    if dsp_lanes > XC7Z020["dsp"]:
        raise UserError(f"{what}: --engines {engines} --lanes {lanes} is {dsp_lanes} DSP48E1 lanes, past the XC7Z020's "
                        f"{XC7Z020['dsp']} DSP48E1 (a lane is one); allowed engines x lanes <= {XC7Z020['dsp']}, and "
                        "the requantizers' DSP48E1 come on top (bench accel's --engines 4 --lanes 42: 168 lanes, 193 "
                        "DSP48E1 in all; `build.py synth --core array` counts them)")


def synth_xilinx(top: str, *, flatten: bool = True) -> str:
    """The Yosys synthesis command of every resource count here (module docstring: why not ``-widemux``)."""
    return f"synth_xilinx -family xc7{' -flatten' if flatten else ''} -top {top}"


# LUTs a LUTRAM primitive occupies (UG474: RAM32M and RAM64M use four SLICEM LUTs, RAM32X1D two...).
_LUTRAM_LUTS = {"RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM32X1S": 1,
                "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "SRL16E": 1, "SRLC32E": 1}


@dataclass(frozen=True)
class Resources:
    dsp: int
    lut: int
    ff: int
    bram36: float
    cells: dict

    def as_dict(self) -> dict:
        return asdict(self)

    def utilisation(self) -> dict:
        """Fraction of the XC7Z020 used, per resource."""
        return {k: getattr(self, k) / cap for k, cap in XC7Z020.items()}

    def fits(self) -> bool:
        return all(getattr(self, k) <= cap for k, cap in XC7Z020.items())


def yosys_binary() -> str:
    path = shutil.which("yosys")
    if path is None:  # a tool not installed: ToolError's exit status 1, as a missing simulator's
        raise ToolError("yosys not found on PATH; install it with `apt-get install yosys` (the Makefile does)")
    return path


def parse_stat(text: str) -> Resources:
    """Cell counts from the flattened design's ``stat`` output."""
    cells: dict[str, int] = {}
    for name, count in re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+(\d+)\s*$", text, flags=re.MULTILINE):
        cells[name] = cells.get(name, 0) + int(count)
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k))
    lut += sum(cells.get(k, 0) * n for k, n in _LUTRAM_LUTS.items())
    ff = sum(v for k, v in cells.items() if re.fullmatch(r"FD[A-Z]*", k))
    bram36 = cells.get("RAMB36E1", 0) + cells.get("RAMB18E1", 0) / 2
    return Resources(dsp=cells.get("DSP48E1", 0), lut=lut, ff=ff, bram36=bram36, cells=cells)


#: An ``initial`` block that sets every word of a memory to zero, one statement a word (Amaranth's Verilog).
_ZERO_INIT = re.compile(r"^[ \t]*initial begin\n((?:[ \t]*[^\n=]+\[\d+\] = \d+'[hdb]0+;\n)+)[ \t]*end\n", re.MULTILINE)
#: Zero-init blocks at least this long are left out of what Yosys reads (:func:`read_command`).
ZERO_INIT_MIN_WORDS = 1024


def read_command(path, tmp_dir) -> str:
    """The Yosys command that reads the Verilog at ``path``, with every memory of at least
    :data:`ZERO_INIT_MIN_WORDS` words whose ``initial`` block only sets zeros read without that block (a copy
    in ``tmp_dir``; ``path`` is not touched).

    Amaranth's Verilog initialises a memory one statement a word, zeros included: the 36,864-word global
    buffer of the bench array is 36,864 lines, on which Yosys 0.23's ``read_verilog`` spent 1,152 s of a
    1,682 s synthesis (measured 2026-12-03). Left out, the memory has no initial value in Yosys, and the
    block RAM it maps to powers up with zeros all the same (the RAMB36E1 ``INIT_xx`` default), so the
    netlist counts do not change. (Reading Amaranth's RTLIL instead is as fast, but Yosys then maps the
    engine to 13 % more LUTs and FFs than from the Verilog: the Verilog frontend's expression widths prune
    more.) The Verilog written for Vivado keeps its init.
    """
    path = Path(path)
    text = path.read_text()
    kept = _ZERO_INIT.sub(lambda m: "" if m.group(1).count("\n") >= ZERO_INIT_MIN_WORDS else m.group(0), text)
    if kept == text:
        return f"read_verilog {path}"
    copy = Path(tmp_dir) / path.name
    copy.write_text(kept)
    return f"read_verilog {copy}"


def synth_stat(verilog_path, top: str, *, flatten: bool = True, log_path=None) -> str:
    """Run ``synth_xilinx`` (flattened or keeping the hierarchy) on ``verilog_path``; return its ``stat``.

    Without ``flatten``, the text has one section per module (``=== top.sub ===``, see
    :func:`module_cells`) and a ``design hierarchy`` section with the totals.
    """
    verilog_path = Path(verilog_path)
    if not verilog_path.is_file():
        raise UserError(f"{verilog_path}: no such Verilog file")
    flow = synth_xilinx(top, flatten=flatten)
    with tempfile.TemporaryDirectory() as tmp:
        out = _yosys(verilog_path, f"{read_command(verilog_path, tmp)}; {flow}; stat", log_path)
    return out[out.rfind("Printing statistics"):]


def _yosys(verilog_path, script: str, log_path=None, timeout_s: float | None = None) -> str:
    """Run Yosys on ``script``; its standard output (and, with ``log_path``, both streams into that file).
    With ``timeout_s``, a run that takes longer is killed and raises :class:`RuntimeError` saying so."""
    try:
        proc = subprocess.run([yosys_binary(), "-p", script], check=False, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"yosys on {verilog_path} did not finish in {timeout_s:.0f} s (killed)") from exc
    if log_path is not None:
        Path(log_path).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"yosys failed on {verilog_path} (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def synthesize(verilog_path, top: str, *, log_path=None) -> Resources:
    """Run ``synth_xilinx -flatten`` on ``verilog_path`` and count what it mapped to."""
    return parse_stat(synth_stat(verilog_path, top, log_path=log_path))


def module_cells(text: str) -> dict[str, dict[str, int]]:
    """Cell counts per module of a hierarchical ``stat`` (``synth_stat(..., flatten=False)``); the
    ``design hierarchy`` section (the totals) is left out."""
    sections = re.findall(r"^=== (\S+) ===\n(.*?)(?=^=== |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return {name: parse_stat(body).cells for name, body in sections}


LABELS = {"dsp": "DSP48E1", "lut": "LUT", "ff": "FF", "bram36": "RAMB36"}


def format_table(res: Resources) -> str:
    rows = [f"{'resource':<10}{'used':>10}{'XC7Z020':>10}{'use':>8}"]
    for key, cap in XC7Z020.items():
        used = getattr(res, key)
        rows.append(f"{LABELS[key]:<10}{used:>10g}{cap:>10}{used / cap:>8.1%}")
    return "\n".join(rows)


def dsp_configs(design: dict, top: str) -> dict[str, int]:
    """DSP48E1 cells of a ``write_json`` netlist by register and OPMODE configuration:
    ``{"AREG=0 BREG=0 MREG=1 PREG=1 OPMODE=...": count}`` (``OPMODE`` a constant or ``dynamic``)."""
    out: dict[str, int] = {}
    for cell in design["modules"][top]["cells"].values():
        if cell["type"] != "DSP48E1":
            continue
        params = cell.get("parameters", {})
        regs = " ".join(f"{k}={int(params[k], 2) if isinstance(params.get(k), str) else params.get(k, 1)}"
                        for k in ("AREG", "BREG", "MREG", "PREG"))
        opmode = cell["connections"].get("OPMODE", [])
        mode = "".join(str(b) for b in reversed(opmode)) if all(b in ("0", "1") for b in opmode) else "dynamic"
        key = f"{regs} OPMODE={mode}"
        out[key] = out.get(key, 0) + 1
    return out


def synthesize_netlist(verilog_path, top: str, *, log_path=None, timeout_s: float | None = None
                       ) -> tuple[Resources, dict]:
    """``synth_xilinx -flatten``: the resource counts and the ``write_json`` netlist (for the timing estimate
    and the DSP configuration check), from one synthesis run."""
    verilog_path = Path(verilog_path)
    if not verilog_path.is_file():
        raise UserError(f"{verilog_path}: no such Verilog file")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "netlist.json"
        script = (f"{read_command(verilog_path, tmp)}; {synth_xilinx(top)}; stat; "
                  f"write_json {out}")
        text = _yosys(verilog_path, script, log_path, timeout_s)
        design = json.loads(out.read_text())
    return parse_stat(text[text.rfind("Printing statistics"):]), design
