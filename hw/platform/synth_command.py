"""``build.py synth``: Yosys ``synth_xilinx`` of the accelerator for an image, against the XC7Z020.

``--core fc`` (the default for now) synthesises the fully connected core with the image in its ROM;
``--core array`` the packed multiplier array sized for the image (:func:`hw.array.sizing.config_for`; the
array loads images at run time, so any image that fits runs on it), with the DSP48E1 configurations Yosys
mapped and the timing estimate of :mod:`hw.platform.timing` (the slowest register-to-register path, LUT
levels, carry steps and the estimated Fmax on the -1 speed grade; no Vivado here, so an estimate). The array
is synthesised whole (flattened: the figures of record) and, beside it, by parts, one engine and the shell with
black-box engines, for the breakdown (:mod:`hw.platform.array_synth`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from model.cli import (
    ARRAY_ENGINES,
    DEFAULT_OUT,
    add_batch_arg,
    add_core_args,
    add_image_arg,
    check_core_args,
    refuse_taken_outputs,
    write_result,
)

#: ``--engines`` of ``--core array`` when not given (shared with ``sim`` and ``verilog``).
DEFAULT_ENGINES = ARRAY_ENGINES

HELP = "Yosys synth_xilinx resource report (and, for the array, a timing estimate) against the XC7Z020"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--out", default=str(DEFAULT_OUT / "synth"), help="output directory")
    add_batch_arg(p)
    add_core_args(p)


def run(args) -> int:
    from hw.platform.synth import format_table, synthesize
    from hw.platform.verilog import TOP_NAME, write_verilog
    from model.export.image import core_words, read_image
    from model.export.image_v4 import refuse_vertical

    out = Path(args.out)
    check_core_args(args)
    if args.core == "array":
        return _array(args, out)
    refuse_taken_outputs(out, ["mpq_accel.v", "yosys.log", "resources.json"], what="synth")  # before minutes of Yosys
    refuse_vertical(args.image, "add --core array")
    net, _ = read_image(args.image)
    vpath = write_verilog(core_words(net, args.image), out / "mpq_accel.v", batch=args.batch)
    res = synthesize(vpath, TOP_NAME, log_path=out / "yosys.log")
    write_result(out / "resources.json", {**res.as_dict(), "fits_xc7z020": res.fits()})
    print("\nYosys synth_xilinx, XC7Z020\n" + format_table(res))
    return _fits(res)


def _fits(res) -> int:
    if not res.fits():
        over = [k for k, v in res.utilisation().items() if v > 1]
        print(f"error: the design does not fit the XC7Z020 ({', '.join(over)} over capacity)", file=sys.stderr)
        return 1
    return 0


def _array(args, out: Path) -> int:
    from hw.array.sizing import config_for
    from hw.platform.array_synth import ENGINE_TOP_NAME, synthesize_array
    from hw.platform.synth import format_table
    from hw.platform.verilog import ARRAY_TOP_NAME
    from model.export.image_v4 import array_words

    refuse_taken_outputs(out, [f"{ARRAY_TOP_NAME}.v", f"{ENGINE_TOP_NAME}.v", "resources.json",
                               *(f"yosys_{run}.log" for run in ("whole", "engine", "shell"))], what="synth --core array")

    # The version 4 path is built when the image needs it (a vertical image's words as stored) or --vertical asks
    # (hw/array/sizing.py config_for).
    config = config_for([array_words(args.image)], engines=args.engines or DEFAULT_ENGINES, lanes=args.lanes,
                        vertical=args.vertical, names=[args.image])
    print(f"synthesising the array ({config.engines} engines x {config.lanes} lanes) whole and by parts (one engine, "
          f"the shell) into {out}: minutes")
    syn = synthesize_array(config, out, progress=True)
    res, timing, dsps = syn.resources, syn.timing, syn.dsp_configs
    record = {**res.as_dict(), "fits_xc7z020": res.fits(), "config": dataclasses.asdict(config),
        "dsp_lanes": config.dsp_lanes, "dsp_configs": dsps, "timing": timing.as_dict(),
        "fmax_mhz_estimate": timing.fmax_mhz, "synthesis": syn.as_dict()}
    write_result(out / "resources.json", record)
    parts = syn.parts_total
    print("\nYosys synth_xilinx -flatten of the whole array, XC7Z020\n" + format_table(res))
    print(f"by parts: one engine {syn.engine.lut:,} LUT, {syn.engine.ff:,} FF, {syn.engine.dsp} DSP48E1; the shell "
          f"{syn.shell.lut:,} LUT, {syn.shell.ff:,} FF, {syn.shell.dsp} DSP48E1, {syn.shell.bram36} RAMB36; the shell and "
          f"{config.engines} engines {parts.lut:,} LUT ({parts.lut - res.lut:+,} against the whole run)")
    print("\nDSP48E1 configurations: " + ", ".join(f"{n} x {k}" for k, n in dsps.items()))
    print(f"slowest path (estimate, -1 speed grade): {timing.delay_ns} ns, {timing.lut_levels} LUT levels, "
          f"{timing.carry_steps} CARRY4 steps: Fmax about {timing.fmax_mhz} MHz")
    for part, paths in (("whole array", syn.paths), ("engine", syn.engine_paths), ("shell", syn.shell_paths)):
        print(f"slowest end points of the {part}: " + "; ".join(
            f"{p.end} <- {p.start} {p.delay_ns} ns ({p.lut_levels} LUT, {p.carry_steps} carry)" for p in paths[:5]))
    return _fits(res)
