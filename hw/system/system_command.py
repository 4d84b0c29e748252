"""``build.py system``: a Vivado project for the Zynq system on a PYNQ-Z2 or Arty Z7-20 (hw/system/vivado.py).

The array is sized for ``--image`` (:func:`hw.array.sizing.config_for`, with ``--engines`` and ``--lanes``, as
``sim``, ``synth`` and ``verilog`` size it: ``--engines 4 --lanes 42`` is ``bench accel``'s array): any image that
fits it loads at run time (``MpqDriver.load``) without a new bitstream (version 4 images too when
``--image`` is one or ``--vertical`` builds their path); ``--bram-image`` also puts that image
into the global buffer's BRAMs (the core starts with it) and writes ``weights.mem`` and the ``updatemem``
scripts. Nothing here runs Vivado (none is installed): the folder's ``build.sh`` does, on a machine with it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import DEFAULT_OUT, add_image_arg, bounded, print_table

HELP = "Vivado project (Verilog, block design TCL, XDC, build script) of the Zynq system for a PYNQ board"
BOARD_NAMES = ("pynq_z2", "arty_z7_20")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", choices=BOARD_NAMES, default="pynq_z2", help="target board (default: pynq_z2)")
    add_image_arg(p)
    p.add_argument("--engines", type=bounded(int, 1, 64), default=2, help="array engines (default: 2)")
    p.add_argument("--lanes", type=bounded(int, 1, 64), default=None,
                   help="DSP48E1 lanes per engine (default: the fewest whose tile holds the image's widest output row; "
                        "bench accel's ResNet-20 array: --engines 4 --lanes 42)")
    p.add_argument("--vertical", action="store_true",
                   help="build the version 4 (vertical-layered) path even for a version 3 --image (a plane decoder "
                        "an engine), so that vertical images load on the same bitstream")
    p.add_argument("--bram-image", action="store_true",
                   help="initialise the global buffer with --image (BRAM contents, replaceable with updatemem)")
    p.add_argument("--out", default=None, help="output folder (default: out/system/BOARD)")


def run(args) -> int:
    import numpy as np

    from hw.array.sizing import config_for
    from hw.platform.synth import refuse_past_the_dsps
    from hw.system.vivado import BOARDS, IP_NAME, check_project_folder, write_project
    from hw.system.zynq_top import MpqSystem
    from model.export.image import read_image
    from model.export.image_v4 import is_vertical, read_vertical_image

    out = Path(args.out) if args.out else DEFAULT_OUT / "system" / args.board
    check_project_folder(out, bram_image=args.bram_image)  # before any work: a name taken by a folder
    image = Path(args.image)
    # Checks the folder (UserError naming the file and field); a vertical-layered (version 4) image runs at
    # the width the precision register gives, on the same bitstream.
    (read_vertical_image if is_vertical(image) else read_image)(image)
    bin_path = (image if image.is_dir() else image.parent) / "weights.bin"  # (or its manifest)
    words = np.fromfile(bin_path, dtype="<u4")
    config = config_for([words], engines=args.engines, lanes=args.lanes, vertical=args.vertical, names=[bin_path])
    refuse_past_the_dsps(config.dsp_lanes, config.engines, config.lanes, f"system --board {args.board}")
    system = MpqSystem(config, init=words.tolist() if args.bram_image else ())
    paths = write_project(out, args.board, system)
    print_table([("board", BOARDS[args.board].title), ("part", BOARDS[args.board].part),
                 ("array", f"{config.engines} engines x {config.lanes} lanes, {config.buffer_words}-word buffer"
                           + (", version 4 path" if config.vertical else "")),
                 ("image in BRAM", bool(args.bram_image)), ("accelerator cell", IP_NAME),
                 ("files", ", ".join(sorted(paths)))], f"Vivado project in {out}")
    print(f"next: {out / 'build.sh'} (needs Vivado; not run here) -> mpq_system.bit + mpq_system.hwh")
    return 0
