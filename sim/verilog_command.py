"""``build.py verilog``: an image -> the accelerator's Verilog and a Vivado build plan with a self-test ROM.

The self-test ROM holds the first ``--selftest-images`` test images of the data set the image's manifest
records (``--data`` / ``--data-root`` choose another) and their golden scores. That is the fully connected core
(``--core fc``, the default). ``--core array`` writes the packed multiplier array sized for the image instead
(``mpq_array.v`` and ``array_config.json``; any image that fits loads at run time through its load port); the
array has no board I/O of its own, so its Vivado project is the Zynq system's (``build.py system``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import (
    ARRAY_ENGINES,
    DEFAULT_OUT,
    IMAGE_COUNT,
    SEED,
    add_batch_arg,
    add_core_args,
    add_data_override_args,
    add_image_arg,
    check_core_args,
    refuse_taken_outputs,
    refuse_unused_seed,
    write_json,
)
from model.files import staged_outputs

HELP = "image -> accelerator Verilog and a Vivado build plan (XDC, TCL)"
#: ``--selftest-images`` when not given.
SELFTEST_IMAGES = 16
#: Name of the self-test design in the Vivado build plan: every file of the plan is ``<name>.*`` or
#: ``build_<name>.*`` (Amaranth's Vivado templates), which is how the names are checked before it is written.
SELFTEST_NAME = "mpq_accel_selftest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--board", default="arty_z7_20", choices=("arty_z7_20",), help="XC7Z020 board")
    p.add_argument("--selftest-images", type=IMAGE_COUNT, default=None,
                   help="test images in the on-board self-test ROM, up to the data set's test count and a multiple "
                        f"of --batch (the ROM is read a batch at a time; sim pads a last partial batch, a ROM does "
                        f"not) (default: {SELFTEST_IMAGES}, rounded down to a multiple of --batch)")
    p.add_argument("--seed", type=SEED, default=None,
                   help="digits split seed of an image that records no data set, 0..2^32-1 (default: 0; refused for "
                        "an image that records its data set)")
    add_data_override_args(p, "the image")
    p.add_argument("--out", default=str(DEFAULT_OUT / "verilog"), help="output directory")
    add_batch_arg(p)
    add_core_args(p)


def run(args) -> int:
    from hw.platform.board import write_build_plan
    from hw.platform.verilog import write_verilog
    from model.errors import UserError
    from model.export.image import core_words
    from model.export.image_v4 import refuse_vertical
    from model.export.vectors import image_vectors

    check_core_args(args, fc_only=("selftest_images", "seed", "data", "data_root"))
    if args.core == "array":
        return _array(args)
    # (not its source width in the fc core's ROM)
    refuse_vertical(args.image, "add --core array (or build the Zynq system, `build.py system`)")
    out = Path(args.out)
    vivado = out / "vivado"
    plan = [f"vivado/{p.name}" for pattern in (f"{SELFTEST_NAME}.*", f"build_{SELFTEST_NAME}.*")
            for p in (sorted(vivado.glob(pattern)) if vivado.is_dir() else ())]
    refuse_taken_outputs(out, ["mpq_accel.v", *plan], ["vivado"], what="verilog")
    # (the default, rounded down to a whole number of batches: 12 at --batch 6)
    args.selftest_images = args.selftest_images or SELFTEST_IMAGES // args.batch * args.batch
    # The test vectors first: a data set that is not available here is an error before any file is written.
    v = image_vectors(Path(args.image), args.selftest_images, args.seed or 0, args.data, args.data_root,
                      flag="--selftest-images")
    if "data" in v.manifest:
        refuse_unused_seed(args.seed, f"{args.image} (manifest.json field 'data')")
    u, expected = v.codes, v.expected
    if len(u) % args.batch:
        # (the multiple below is there: the count was read; the one above may pass the data set's test images)
        near = len(u) // args.batch * args.batch or args.batch
        raise UserError(f"--selftest-images {len(u)} must be a multiple of --batch {args.batch} (the self-test ROM is "
                        f"read a batch at a time): give {near}, for example")
    words = core_words(v.net, args.image)
    with staged_outputs(out) as stage:  # (one commit: the Verilog and its plan, or nothing)
        write_verilog(words, stage / "mpq_accel.v", batch=args.batch)
        files = write_build_plan(stage / "vivado", words, u, expected, board=args.board, name=SELFTEST_NAME,
                                 batch=args.batch)
    print(f"wrote {out / 'mpq_accel.v'}")
    print(f"wrote the Vivado build plan for {args.board} ({len(files)} files; a self-test ROM of {len(u)} test images, "
          f"{len(u) // args.batch} batches of {args.batch}) to {vivado}; "
          f"run build_{SELFTEST_NAME}.sh there with Vivado on PATH")
    return 0


def _array(args) -> int:
    """``--core array``: the array sized for the image, its Verilog and configuration."""
    import dataclasses

    from hw.array.sizing import config_for
    from hw.platform.synth import refuse_past_the_dsps
    from hw.platform.verilog import ARRAY_TOP_NAME, array_verilog, write_text_atomically
    from model.export.image_v4 import array_words

    out = Path(args.out)
    refuse_taken_outputs(out, [f"{ARRAY_TOP_NAME}.v", "array_config.json"], what="verilog --core array")
    image = Path(args.image)
    words = array_words(image)  # checked: a corrupt image is named, nothing written
    config = config_for([words], engines=args.engines or ARRAY_ENGINES, lanes=args.lanes, vertical=args.vertical,
                        names=[image])
    refuse_past_the_dsps(config.dsp_lanes, config.engines, config.lanes, "verilog --core array")
    with staged_outputs(out) as stage:  # (one commit: the Verilog and its configuration, or nothing)
        write_text_atomically(stage / f"{ARRAY_TOP_NAME}.v", array_verilog(config))
        write_json(stage / "array_config.json", {"image": str(image), "top": ARRAY_TOP_NAME,
                                                 "dsp_lanes": config.dsp_lanes, "config": dataclasses.asdict(config)})
    path = out / f"{ARRAY_TOP_NAME}.v"
    print(f"wrote {path} ({config.engines} engines x {config.lanes} lanes, {config.dsp_lanes} DSP48E1 lanes) and "
          f"{out / 'array_config.json'}; images load at run time through the load port. The board project is the "
          "Zynq system's: `python build.py system` (a Vivado project; not run here)")
    return 0
