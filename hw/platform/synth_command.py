"""``build.py synth``: Yosys ``synth_xilinx`` of the accelerator for an image, against the XC7Z020."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.cli import DEFAULT_OUT, add_batch_arg, add_image_arg, write_json

HELP = "Yosys synth_xilinx resource report against the XC7Z020"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--out", default=str(DEFAULT_OUT / "synth"), help="output directory")
    add_batch_arg(p)


def run(args) -> int:
    from hw.platform.synth import format_table, synthesize
    from hw.platform.verilog import TOP_NAME, write_verilog
    from model.export.image import core_words, read_image

    out = Path(args.out)
    net, _ = read_image(args.image)
    vpath = write_verilog(core_words(net, args.image), out / "mpq_accel.v", batch=args.batch)
    res = synthesize(vpath, TOP_NAME, log_path=out / "yosys.log")
    write_json(out / "resources.json", {**res.as_dict(), "fits_xc7z020": res.fits()})
    print("\nYosys synth_xilinx, XC7Z020\n" + format_table(res))
    if not res.fits():
        over = [k for k, v in res.utilisation().items() if v > 1]
        print(f"error: the design does not fit the XC7Z020 ({', '.join(over)} over capacity)", file=sys.stderr)
        return 1
    return 0
