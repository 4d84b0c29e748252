"""``build.py sim``: cocotb RTL simulation of an image on its own test images against the golden model.

The test images are those of the data set the image's manifest records (``"data"``; ``--data`` /
``--data-root`` choose another), read by :func:`model.export.vectors.image_vectors`. They run on the fully
connected core (``--core fc``, the default: MLP images), on the packed multiplier array sized for the image
(``--core array``: MLP, conv and vertical-layered images; :func:`sim.image_run.prepare_array`), or through the
Zynq system with the host driver (``--system``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from model.cli import (
    ARRAY_ENGINES,
    DEFAULT_OUT,
    IMAGE_COUNT,
    SEED,
    SIM_DEFAULT_IMAGES,
    add_batch_arg,
    add_core_args,
    add_data_override_args,
    add_image_arg,
    check_core_args,
    print_table,
    refuse_taken_outputs,
    write_result,
)

HELP = "cocotb RTL simulation of the image on the test images of its data set vs the golden model"

#: The DDR model's read latency of `--system` when `--ddr-latency` is not given (cycles of the 100 MHz clock); the
#: same as sim.system.system_run.DEFAULT_DDR_LATENCY (not imported here: it loads Amaranth; a test compares them).
DDR_LATENCY = 24
#: What every run writes under its folder besides its Verilog: the simulator's build folder and the summary.
RUN_FOLDERS = ("sim_build",)
RUN_FILES = ("sim.json",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arg(p)
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="icarus",
                   help="HDL simulator (default: icarus)")
    p.add_argument("--images", type=IMAGE_COUNT, default=None,
                   help="number of test images, 1 up to the data set's test count (default: all of them, at most "
                        f"{SIM_DEFAULT_IMAGES}: the digits' whole test set; Icarus takes hours for Fashion-MNIST's "
                        "10,000)")
    p.add_argument("--no-stall", action="store_true", help="no random back-pressure (cycle measurement)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="stall seed, and the digits split seed of an image that records no data set; 0..2^32-1 "
                        "(default: 0)")
    add_data_override_args(p, "the image")
    p.add_argument("--out", default=str(DEFAULT_OUT / "sim"), help="output directory")
    add_batch_arg(p)
    add_core_args(p)
    p.add_argument("--system", action="store_true",
                   help="run the images through the Zynq system instead (AXI shell + array sized for the image, "
                        "DDR model) with the host driver (driver/), as on a board; reports rtl_mismatches, "
                        "cycles_per_image and ddr_bytes_per_image")
    p.add_argument("--bits", type=int, default=None, metavar="N",
                   help="with --core array or --system, a vertical-layered (version 4) image: run every inner layer "
                        "at N bits (0: the source width, the default), through the precision register")
    p.add_argument("--table-row", type=int, default=None, metavar="R",
                   help="with --core array or --system, a vertical-layered image: run row R of its Eq. 12 width "
                        "table")
    p.add_argument("--ddr-latency", type=int, default=None, metavar="CYCLES",
                   help="with --system: DDR read latency of the model before each burst's first beat, in cycles "
                        f"of the 100 MHz clock, 0-1000 (default: {DDR_LATENCY})")


def vertical_widths(args):
    """``--bits`` / ``--table-row`` as golden's widths (an int or a :class:`TableRow`), None without either."""
    from model.errors import UserError

    bits, row = getattr(args, "bits", None), getattr(args, "table_row", None)
    if bits is None and row is None:
        return None
    if not (args.system or getattr(args, "core", "fc") == "array"):
        raise UserError("--bits / --table-row run a vertical-layered image on the array: add --core array or "
                        "--system")
    if bits is not None and row is not None:
        raise UserError("--bits and --table-row choose the widths two ways: give one")
    if bits is not None and not 0 <= bits <= 8:
        raise UserError(f"--bits must be 0 (the source width) to 8, not {bits}")
    if not bits and row is None:
        return None
    from model.export.golden_vertical import TableRow
    from model.export.image import read_image
    from model.export.image_v4 import is_vertical, read_vertical_image

    if not is_vertical(args.image):
        read_image(Path(args.image))  # (a missing or corrupt image is named as such first)
        given = f"--bits {bits}" if row is None else f"--table-row {row}"
        raise UserError(f"{given} applies to a vertical-layered image (format version 4) only; {args.image} is not "
                        "one (leave the option out: a version 1-3 image runs at its own widths)")
    net, _ = read_vertical_image(Path(args.image))
    if row is None:
        if bits not in net.widths:
            raise UserError(f"--bits {bits}: allowed the stored widths {list(net.widths)} of the image {args.image} "
                            "(or 0, its source width)")
        return bits
    if not 0 <= row < min(len(net.table), 128):
        raise UserError(f"--table-row {row}: the image's Eq. 12 table has {len(net.table)} rows "
                        f"(allowed 0..{min(len(net.table), 128) - 1})")
    return TableRow(row)  # the row's widths, and its own requant records where the image has them


def precision_register(args) -> int:
    """The shell's ``precision`` register value for ``--bits`` / ``--table-row`` (0 without either)."""
    if getattr(args, "table_row", None) is not None:
        return 0x80 + args.table_row
    return getattr(args, "bits", None) or 0


def read_vectors(args):
    """The test images to simulate, read once: ``--images``, or left out the data set's test count, at most
    :data:`model.cli.SIM_DEFAULT_IMAGES` (with a note when that leaves images out)."""
    from model.export.vectors import image_vectors

    cap = SIM_DEFAULT_IMAGES if args.images is None else None
    vectors = image_vectors(Path(args.image), args.images, args.seed, args.data, args.data_root, cap=cap,
                            bits=vertical_widths(args))
    available = vectors.available
    if cap is not None and available > cap:
        print(f"note: simulating the first {cap} of the {available} test images of "
              f"{vectors.data.describe()} (the default, to keep the RTL simulation short); --images N runs up to "
              f"{available}", file=sys.stderr)
    return vectors


def run_system_sim(args) -> int:
    """``--system``: the test images through MpqSystem and the host driver (sim/system/system_run.py)."""
    import numpy as np

    from hw.system.zynq_top import SYSTEM_TOP_NAME
    from model.errors import UserError
    from sim.system.system_run import run_system

    if args.simulator != "icarus":
        raise UserError(f"--system runs on Icarus (cocotbext-axi samples handshakes as Icarus schedules them), "
                        f"not --simulator {args.simulator}")
    latency = DDR_LATENCY if args.ddr_latency is None else args.ddr_latency
    if not 0 <= latency <= 1000:
        raise UserError(f"--ddr-latency must be 0 to 1000 cycles, not {latency}")
    out = Path(args.out) / "system"
    refuse_taken_outputs(args.out, [f"system/{name}" for name in (f"{SYSTEM_TOP_NAME}.v", *RUN_FILES)],
                         ["system", *(f"system/{name}" for name in RUN_FOLDERS)], what="sim --system")
    vectors = read_vectors(args)
    codes = np.asarray(vectors.codes).reshape(len(vectors.codes), -1)
    result = run_system(Path(args.image), codes, vectors.expected, out, seed=args.seed, stall=not args.no_stall,
                        ddr_latency=latency, precision=precision_register(args))
    summary = {k: v for k, v in result.items() if k != "scores"}
    if "images" in result:
        scores = np.asarray(result["scores"])
        summary["rtl_accuracy"] = float((scores.argmax(axis=1) == vectors.labels[:len(scores)]).mean())
        summary["golden_accuracy"] = float((vectors.expected.argmax(axis=1) == vectors.labels).mean())
        summary["data"] = vectors.data.to_json()
    write_result(out / "sim.json", summary)
    print_table([(k, summary.get(k)) for k in ("images", "rtl_mismatches", "rtl_accuracy", "golden_accuracy",
                                               "cycles_per_image", "ddr_bytes_per_image", "ddr_latency_cycles",
                                               "load_cycles", "buffer_reads", "weight_reads", "read_mismatches",
                                               "wall_s")]
                + [("throughput " + k, summary.get("throughput", {}).get(k))
                   for k in ("images", "cycles_per_image", "images_per_s")],
                "Zynq system (RTL + host driver) vs golden model")
    print(f"summary: {out / 'sim.json'}")
    ok = result["passed"] and result.get("rtl_mismatches") == 0 and result.get("read_mismatches") == 0
    if not ok:
        why = result.get("error") or (f"{result.get('rtl_mismatches')} mismatches, {result.get('read_mismatches')} "
                                      "read mismatches of the last image against sim/reads.py")
        print(f"error: the system simulation failed ({why}); log: {result.get('log')}", file=sys.stderr)
    return 0 if ok else 1


def run_array_sim(args) -> int:
    """``--core array``: the test images on the packed multiplier array sized for the image."""
    from sim.image_run import prepare_array, simulate_array

    out = Path(args.out)
    refuse_taken_outputs(out, ["mpq_array.v", *RUN_FILES], RUN_FOLDERS, what="sim --core array")  # prepare_array's
    vectors = read_vectors(args)
    prepared = prepare_array(vectors, out, engines=args.engines or ARRAY_ENGINES, lanes=args.lanes,
                             vertical=args.vertical, where=str(args.image))
    config = prepared.config
    print(f"the array: {config.engines} engines x {config.lanes} lanes ({config.dsp_lanes} DSP48E1 lanes), "
          f"{args.simulator}{'' if args.no_stall else ', random back-pressure on every stream'}")
    result = simulate_array(prepared, vectors, args.simulator, args.seed, not args.no_stall, precision_register(args))
    if vectors.words is None:  # a version 1-3 image: golden's network is the one the array runs, at its widths
        from sim.bounds import layer_report

        result["layers"] = layer_report(vectors.net, result.get("layer_cycles", []), config.engines, config.lanes)
    write_result(out / "sim.json", {k: v for k, v in result.items() if k != "scores"})
    print_table([("data", result["data"]["name"])]
                + [(k, result[k]) for k in ("images", "mismatches", "read_mismatches", "rtl_accuracy",
                                            "golden_accuracy", "cycles_per_image", "wall_s")],
                "RTL simulation (packed multiplier array) vs golden model")
    if result.get("layers"):
        stalls = "" if args.no_stall else "; with random back-pressure, which the bound does not count"
        print(f"\ncycles per layer (mean over the images) against the tiles' bound (sim/bounds.py: the rows' lane "
              f"cycles and the emitters only{stalls})")
        print(f"{'layer':>5}  {'name':<16} {'cycles':>10} {'tile bound':>11} {'over':>9}")
        for row in result["layers"]:
            print(f"{row['layer']:>5}  {row['name'][:16]:<16} {row['cycles']:>10,.0f} {row['tile_bound']:>11,.0f} "
                  f"{row['over']:>9,.0f}")
    from hw.array.status import Status

    statuses = sorted({Status(s).name for s in result.get("statuses", []) if s != Status.OK.value})
    ok = (result["mismatches"] == 0 and result.get("passed", True) and result["images"] == len(vectors.codes)
          and result["read_mismatches"] == 0)
    if not ok:
        print(f"error: the testbench failed ({result['images']} of {len(vectors.codes)} images received, "
              f"{result['mismatches']} mismatches, {result['read_mismatches']} images whose words read differ "
              f"from sim/reads.py's{'; status ' + ', '.join(statuses) if statuses else ''}); "
              f"log: {result.get('log')}", file=sys.stderr)
    return 0 if ok else 1


def run(args) -> int:
    """The command; a run that meets a file system error (a full disk) removes ``--out`` when it made it, with
    the Verilog and the simulator's build written into it (a later run builds again: sim.runner.build)."""
    from model.files import missing_folders

    made = missing_folders(Path(args.out))
    try:
        return _run(args)
    except OSError:
        if made:
            shutil.rmtree(made[-1], ignore_errors=True)
        raise


def _run(args) -> int:
    from model.errors import UserError

    if args.system:
        given = [f"--core {args.core}"] * (args.core is not None) + [
            f"--{k}" for k in ("engines", "lanes", "batch") if getattr(args, k) is not None] + (
            ["--vertical"] * args.vertical)
        if given:  # refused rather than ignored
            raise UserError(f"{', '.join(given)}: --system runs the Zynq system, whose array is sized for the image "
                            "(sim/system/system_run.py); leave them out")
        return run_system_sim(args)
    if args.ddr_latency is not None:  # refused rather than ignored
        raise UserError("--ddr-latency sets the DDR model of the Zynq system: add --system")
    check_core_args(args)
    if args.core == "array":
        return run_array_sim(args)
    from model.export.image_v4 import refuse_vertical

    refuse_vertical(args.image, "add --core array or --system (and --bits N or --table-row R)")
    vertical_widths(args)  # --bits / --table-row without --core array or --system: an error naming them
    from sim.image_run import run_rtl

    out = Path(args.out)
    refuse_taken_outputs(out, ["mpq_accel.v", *RUN_FILES], RUN_FOLDERS, what="sim")  # prepare's Verilog
    result = run_rtl(read_vectors(args), out, args.simulator, args.seed, not args.no_stall, args.batch, args.image)
    write_result(out / "sim.json", {k: v for k, v in result.items() if k != "scores"})
    print_table([("data", result["data"]["name"])]
                + [(k, result[k]) for k in ("images", "mismatches", "rtl_accuracy", "golden_accuracy",
                                            "cycles_per_image", "wall_s")], "RTL simulation vs golden model")
    if not result.get("passed", True):
        print(f"error: the testbench failed ({result.get('images')} of {result.get('expected_images')} images "
              f"received{'; ' + str(result['error']) if result.get('error') else ''}); log: {result.get('log')}",
              file=sys.stderr)
    return 0 if result["mismatches"] == 0 and result.get("passed", True) else 1
