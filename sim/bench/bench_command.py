"""``build.py bench``: the benchmarks (dsp in :mod:`sim.bench.dsp`; lts, imq, bmpq, conv, qat, vertical in
:mod:`model.bench`).

Every bench prints its floors (the README's claims against the measured values, :mod:`model.bench.floors`)
and writes them: into ``imq_summary.json`` and ``conv_summary.json`` as ``floors``; beside the list-of-rows JSONs as
``dsp_floors.json``, ``lts_floors.json``, ``bmpq_floors.json``, ``qat_floors.json`` and ``vertical_floors.json``, each with the code revision that measured
them (``provenance``, as ``imq_summary.json`` has). ``--check`` makes a failing floor exit 1
(:func:`model.bench.floors.exit_code`); without it the exit status is what it was (``bench dsp`` exits 1 on a
failed verification or DSP configuration in any case).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.bench.floors import exit_code, floors_path, format_floors, write_floors
from model.cli import DEFAULT_OUT, device_spec, path_text, print_rows, refuse_taken_outputs, write_json
from model.errors import UserError

#: The benches, and those that train on a data set (``--data-root``).
BENCHES = ("dsp", "lts", "bmpq", "imq", "conv", "qat", "export", "vertical", "fuzz", "accel")
DATA_BENCHES = ("lts", "imq", "bmpq", "conv", "vertical")
#: The benches that train (``--device``): on the CPU unless told otherwise, since their floors and the README's
#: figures are CPU results, and ``bench conv``'s ticket (which ``bench accel`` runs) is reproducible only there: a
#: GPU run is not bit-reproducible and picks another ticket (README, "Where it trains").
TRAINING_BENCHES = ("lts", "imq", "bmpq", "conv", "qat", "vertical", "accel")
#: The benches with resumable run directories (``--restart``) and a tiny budget (``--smoke``).
RUN_DIR_BENCHES = ("imq", "conv")
#: ``bench fuzz``'s weight layers when ``--layers`` is not given (the issue's floor: at least 10,000).
FUZZ_LAYERS = 10_000
#: The most ``--layers``: 10,000 layers take about 6 minutes on 2 cores (``bench fuzz``, README), a million about
#: 10 hours; more is a typo, and was taken (a run of 10^12 layers showed an ETA in millions of hours).
MAX_FUZZ_LAYERS = 1_000_000
HELP = ("benchmarks: dsp (packed DSP48E1 lane modes), lts (LTS vs plain QAT), imq (IMQ vs its baselines), bmpq "
        "(BMPQ vs FP-32), conv (ResNet-20 / VGG tickets -> golden model -> image), qat (quantized vs float training "
        "step), export (packing a 10-million-weight image), vertical (vertical layering vs its baselines, and on the "
        "array), fuzz (random layers and networks through the array's RTL), accel (the ResNet-20 ticket on the "
        "array: cycles, resources, speed-up) -> out/bench/<bench>.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=BENCHES, help="what to measure: dsp (packed DSP48E1 lane modes: synthesis, "
                   "bit-exact simulation, density), lts (plain QAT vs LTS at 2-4 bits), imq (float, IMQ, IRQ, IMP, "
                   "QNN-k), bmpq (FP-32 vs BMPQ at three budgets), conv (ResNet-20 and VGG IMQ tickets and a BMPQ "
                   "VGG: fake-quant vs golden accuracy, image bytes, MACs; about 4-7 min), qat (a DoReFa, BMPQ, LTS "
                   "and vertical training step of the MLP, VGG and ResNet-20 against the float step; about 30 s), export (packs a "
                   "10-million-weight network of random widths into a version 3 image: seconds, bytes, metadata "
                   "bits per weight; under a minute), fuzz (random conv and FC layers and small networks through "
                   "the array's RTL against the golden model: --layers of them, 10,000 by default; then random "
                   "vertical-layered networks of a fifth as many layers at their widths and table rows), vertical (the "
                   "vertical-layered net against per-width LSQ, ascending training, no compensation, no KD and MGD, "
                   "MLP and VGG (ResNet-20's joint training alone), at 2, 3 and 4 bits, then each joint-trained net "
                   "on the array's RTL at every width; 30-40 min), accel (bench conv's "
                   "ResNet-20 ticket, dense32 and qnn4 at PACT-4 and PACT-8 on one build of the array: RTL cycles "
                   "per image, resources, Fmax estimate, Fig. 4 plot; trains the ticket first when bench conv has "
                   "not); lts, imq, bmpq, conv and vertical train on Fashion-MNIST")
    p.add_argument("--smoke", action="store_true",
                   help="`bench imq` / `bench conv` / `bench vertical` only: a tiny budget that checks the pipeline "
                        "(imq and conv in under a minute, vertical in about 4 with its RTL on Icarus) and writes "
                        "<bench>_smoke* files beside the full bench's; its figures mean nothing and its floors, "
                        "printed as ever, are not expected to hold (--check then usually exits 1)")
    p.add_argument("--data-root", type=path_text, default=None,
                   help="Fashion-MNIST folder for `bench lts` / `bench imq` / `bench bmpq` / `bench conv` / `bench vertical` "
                        "(default: Debian's "
                        "dataset-fashion-mnist, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "bench"), help="output directory (default: out/bench)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a floor (a README claim the bench measures) fails; the floors are printed and "
                        "written either way")
    p.add_argument("--layers", type=int, default=None,
                   help=f"`bench fuzz` only: weight layers to draw, 1 to {MAX_FUZZ_LAYERS:,} (default: {FUZZ_LAYERS}; "
                        "the vertical part draws a fifth as many)")
    p.add_argument("--simulator", choices=("verilator", "icarus"), default=None,
                   help="`bench fuzz` / `bench accel` only: the RTL simulator (default: verilator)")
    p.add_argument("--engines", type=int, default=None,
                   help="`bench accel` only: the array's engines (default: 4)")
    p.add_argument("--lanes", type=int, default=None,
                   help="`bench accel` only: DSP48E1 lanes per engine (default: 42)")
    p.add_argument("--images", type=int, default=None,
                   help="`bench accel` only: test images of the ticket at PACT-4 (default: 100; every other row "
                        "runs a tenth of them, at least 1)")
    p.add_argument("--minutes", type=float, default=None,
                   help="`bench accel` only: wall-time budget of the RTL simulations in minutes (default: 40); "
                        "rows get fewer images when it runs out (rtl_images says how many ran)")
    p.add_argument("--device", type=device_spec, default=None, metavar="auto|cpu|cuda[:N]",
                   help=f"`bench {'` / `bench '.join(TRAINING_BENCHES)}` only: where they train (default: cpu, "
                        "where their floors and the README's figures were measured; `--device cuda` for GPU figures, "
                        "e.g. `bench qat`'s GPU step)")
    p.add_argument("--restart", action="store_true",
                   help="`bench imq` / `bench conv` only: start every run afresh instead of resuming its run directories "
                        "(needed after a code change: a run made under another revision is refused)")


def run(args) -> int:
    if args.restart and args.target not in RUN_DIR_BENCHES:
        raise UserError(f"--restart applies to `bench imq` and `bench conv` only (their resumable run directories), "
                        f"not `bench {args.target}`")
    if args.smoke and args.target not in (*RUN_DIR_BENCHES, "vertical"):
        raise UserError(f"--smoke applies to `bench imq`, `bench conv` and `bench vertical` only (their tiny budgets), not "
                        f"`bench {args.target}`")
    accel_only = [f for f in ("engines", "lanes", "images", "minutes") if getattr(args, f) is not None]
    if accel_only and args.target != "accel":
        raise UserError(f"--{accel_only[0]} applies to `bench accel` only, not `bench {args.target}`")
    if args.layers is not None and args.target != "fuzz":
        raise UserError(f"--layers applies to `bench fuzz` only, not `bench {args.target}`")
    if args.simulator is not None and args.target not in ("fuzz", "accel"):
        raise UserError(f"--simulator applies to `bench fuzz` and `bench accel` only (the RTL benches), not "
                        f"`bench {args.target}`")
    args.layers = FUZZ_LAYERS if args.layers is None else args.layers
    args.simulator = args.simulator or "verilator"
    if args.data_root is not None and args.target not in DATA_BENCHES:
        raise UserError(f"--data-root applies to `bench {'`, `bench '.join(DATA_BENCHES)}` (they train on "
                        f"Fashion-MNIST), not `bench {args.target}`, which reads no data set")
    if args.device is not None and args.target not in TRAINING_BENCHES:
        raise UserError(f"--device applies to the benches that train (`bench {'`, `bench '.join(TRAINING_BENCHES)}`), "
                        f"not `bench {args.target}`")
    from model.training import distributed

    # UserError for CUDA where there is none. The other benches run nothing on a GPU: the CPU is also what
    # their floors' provenance records.
    distributed.use_device(args.device or "cpu")
    # Each bench's files, checked before it runs (some run for 20 to 40 minutes): a folder at one of those names
    # failed the bench at its last write.
    refuse_taken_outputs(args.out, bench_outputs(args.target, args.smoke), what=f"bench {args.target}")
    runners = {"dsp": bench_dsp, "lts": bench_lts, "bmpq": bench_bmpq, "imq": bench_imq, "conv": bench_conv,
               "qat": bench_qat, "export": bench_export, "vertical": bench_vertical,
               "fuzz": bench_fuzz, "accel": bench_accel}
    return runners[args.target](args, Path(args.out))


def bench_outputs(target: str, smoke: bool = False) -> list[str]:
    """The files ``bench <target>`` writes into ``--out`` (its runners below; ``--smoke`` names imq's, conv's
    and vertical's ``*_smoke*``), checked before it runs."""
    suffix = "_smoke" if smoke else ""
    floors = {name: [f"{name}.json", f"{name}_floors.json"] for name in ("dsp", "lts", "qat", "bmpq")}
    return {
        **floors, "vertical": [f"vertical{suffix}.json", f"vertical{suffix}_floors.json"],
        "dsp": [*floors["dsp"], "dsp.png"], "lts": [*floors["lts"], "lts_sparsity.png"],
        "bmpq": [*floors["bmpq"], "bmpq.png"], "export": ["export.json"], "fuzz": ["fuzz.json"],
        "accel": ["accel.json", "accel.png", "accel_layers.png"],
        "imq": [f"imq{suffix}.json", f"imq{suffix}.png", f"imq{suffix}_summary.json"],
        "conv": [f"conv{suffix}.json", f"conv{suffix}.png", f"conv{suffix}_summary.json"],
    }[target]


def provenance(threads: int = 0) -> dict:
    """The code revision and environment the floors were measured under (:func:`model.runs.provenance.provenance`).

    ``threads``: the ``torch.set_num_threads`` count the bench measured under, where it set one (``bench lts``,
    ``bench qat``; 0: torch's own), so that ``threads`` records that count and not the default restored since."""
    from model.runs.provenance import provenance as current
    from model.training.loop import torch_threads

    with torch_threads(threads):
        return current()


def report_floors(floors: dict[str, dict], written_to: Path, check: bool) -> int:
    """Print the floors and where they were written; return the exit status ``--check`` asks for."""
    print("\n" + format_floors(floors, f"floors (in {written_to})"))
    return exit_code(floors, check)


def bench_dsp(args, out: Path) -> int:
    """Every packed DSP48E1 lane mode: synthesis, bit-exact simulation, density (sim/bench/dsp.py)."""
    from sim.bench.dsp import floors, format_rows, run_bench

    rows = run_bench(progress=not args.quiet)
    write_json(out / "dsp.json", rows)
    plot_dsp(rows, out / "dsp.png")
    print(format_rows(rows))
    result = floors(rows)
    write_floors(out / "dsp.json", result, provenance())
    print(f"\nwrote {out / 'dsp.json'}, {out / 'dsp.png'} and {floors_path(out / 'dsp.json')}")
    code = report_floors(result, floors_path(out / "dsp.json"), args.check)
    verified = all(r["verified"] != "FAILED" and r["dsp_config_matches"] for r in rows)
    return max(code, 0 if verified else 1)


def bench_lts(args, out: Path) -> int:
    """Plain QAT vs LTS on Fashion-MNIST at 2, 3 and 4 bits, four seeds (model/bench/lts.py run_lts_bench, about 8 min)."""
    from model.bench.lts import THREADS, floors, run_lts_bench

    rows = run_lts_bench(out / "lts.json", root=args.data_root, png_path=out / "lts_sparsity.png",
                         threads=THREADS, progress=not args.quiet)
    print_rows(rows, [("bits", ">4", "", "bits"), ("mode", ">8", "", "mode"), ("accuracy", ">9", ".4f", "accuracy"),
                      ("avg WGS", ">8", ".3f", "avg_wgs"), ("BP FLOPs red.", ">13", ".3f", "bp_flops_reduction"),
                      ("bwd time", ">9", ".3f", "backward_time_ratio"),
                      ("total time", ">10", "", lambda r: "-" if r.get("total_time_ratio") is None
                       else f"{r['total_time_ratio']:.3f}"),
                      ("gap pp +- s.e.", ">15", "", lambda r: "-" if "gaps_pp" not in r
                       else f"{sum(r['gaps_pp']) / len(r['gaps_pp']):+.3f} +- "
                       + ("-" if r["gap_stderr_pp"] is None else f"{r['gap_stderr_pp']:.3f}"))])
    result = floors(rows)
    write_floors(out / "lts.json", result, provenance(THREADS))
    print(f"\nwrote {out / 'lts.json'}, {out / 'lts_sparsity.png'} and {floors_path(out / 'lts.json')}")
    return report_floors(result, floors_path(out / "lts.json"), args.check)


def bench_vertical(args, out: Path) -> int:
    """Vertical layering vs per-width LSQ, ascending, no compensation, no KD and MGD on Fashion-MNIST, MLP and
    VGG, and the joint-trained ResNet-20 (model/bench/vertical.py; ``--smoke``: tiny budgets that test the path,
    MLP and VGG), then each trained vertical model's image on the array's RTL at every width on one build
    (:mod:`sim.bench.vertical_hw`)."""
    from model.bench.vertical import DEFAULT_CONFIGS, SMOKE_CONFIGS, compared_archs, floors, run_vertical_bench
    from model.files import write_json
    from sim.bench.vertical_hw import MIN_IMAGES, run_vertical_hardware
    from sim.bench.vertical_hw import floors as hardware_floors

    configs = SMOKE_CONFIGS if args.smoke else DEFAULT_CONFIGS
    # --smoke writes vertical_smoke* (bench_outputs): a smoke run must not replace the full bench's results
    path = out / bench_outputs("vertical", args.smoke)[0]
    hw_dir = path.with_name(f"{path.stem}_hw")
    report = run_vertical_bench(path, root=args.data_root, configs=configs, progress=not args.quiet,
                                hardware_dir=hw_dir, hardware_images=2 if args.smoke else MIN_IMAGES)
    # --smoke: Icarus (no Verilator build: seconds, not minutes) on 2 images a width; the figures mean nothing
    hardware = run_vertical_hardware(report["hardware_exports"], hw_dir, progress=not args.quiet,
                                     simulator="icarus" if args.smoke else "verilator")
    report["hardware"] = hardware["rows"]
    report["hardware_config"] = hardware["config"]
    report["seconds"]["hardware"] = hardware["seconds"]
    write_json(path, report)
    print_rows(report["rows"], [("arch", ">8", "", "arch"), ("method", ">16", "", "method"), ("bits", ">4", "", "bits"),
                                ("accuracy", ">9", ".4f", "accuracy")])
    for c in report["configs"]:
        print(f"\nbudget {c['arch']}: {c['train_images']} training images, {c['test_images']} test images, "
              f"{c['epochs']} epochs, {report['seconds'][c['arch']]['total']:.0f} s")
    print(f"total {report['seconds']['total']:.0f} s of training, {hardware['seconds']:.0f} s of RTL simulation\n")
    print_rows(report["hardware"], [("arch", ">8", "", "arch"), ("bits", ">4", "", "bits"),
                                    ("cycles/img", ">10", ".0f", "cycles_per_image"),
                                    ("bytes/img", ">10", ".0f", "bytes_read_per_image"),
                                    ("weight B/img", ">12", ".0f", "weight_bytes_read_per_image"),
                                    ("images", ">6", "", "rtl_images"), ("mismatches", ">10", "", "rtl_mismatches"),
                                    ("read mism.", ">10", "", "read_mismatches"),
                                    ("golden", ">7", ".4f", "golden_accuracy")])
    result = {**floors(report["rows"], configs[0].widths, compared_archs(configs)),
              **hardware_floors(report["hardware"])}
    write_floors(path, result, provenance())
    print(f"\nwrote {path} and {floors_path(path)}")
    return report_floors(result, floors_path(path), args.check)


def bench_export(args, out: Path) -> int:
    """Pack a 10-million-weight network into a version 3 image (model/bench/export.py run_export_bench)."""
    from model.bench.export import floors, run_export_bench

    result = run_export_bench(progress=not args.quiet)
    result["floors"] = floors(result)
    result["provenance"] = provenance()
    write_json(out / "export.json", result)
    print_rows(result["mixes"], [("mix", "<8", "", "mix"), ("weights", ">11", ",", "weights"),
                                 ("pack s", ">7", ".2f", "seconds"), ("unpack s", ">8", ".2f", "unpack_seconds"),
                                 ("bytes", ">11", ",", "bytes"), ("meta b/w", ">8", ".3f", "metadata_bits_per_weight"),
                                 ("entropy", ">8", ".3f", "width_entropy_bits")])
    print(f"\nwrote {out / 'export.json'}")
    return report_floors(result["floors"], out / "export.json", args.check)


def bench_fuzz(args, out: Path) -> int:
    """Random layers and small networks through two builds of the array's RTL (sim/bench/fuzz.py), then random
    vertical-layered networks (a fifth as many layers) through two builds with the version 4 path
    (sim/bench/fuzz_vertical.py)."""
    from sim.bench import fuzz_vertical
    from sim.bench.fuzz import floors, run_fuzz

    if not 1 <= args.layers <= MAX_FUZZ_LAYERS:
        raise UserError(f"--layers is {args.layers}; allowed 1 to {MAX_FUZZ_LAYERS:,}")
    measured_under = provenance()  # the revision whose RTL runs (recorded before the long run, not after)
    result = run_fuzz(out / "fuzz", layers=args.layers, simulator=args.simulator, progress=not args.quiet)
    result["vertical"] = fuzz_vertical.run_vertical_fuzz(out / "fuzz", layers=max(1, args.layers // 5),
                                                         simulator=args.simulator, progress=not args.quiet)
    result["floors"] = {**floors(result), **fuzz_vertical.floors(result["vertical"])}
    result["provenance"] = measured_under
    write_json(out / "fuzz.json", result)
    columns = [("layers", ">7", ",", "layers"), ("networks", ">9", ",", "networks"), ("images", ">7", ",", "images"),
               ("mismatches", ">11", "", "mismatches"), ("read mism.", ">11", "", "read_mismatches"),
               ("deadlocks", ">10", "", "deadlocks"),
               ("sim cycles", ">12", ",", "sim_cycles"), ("s", ">7", ".0f", "seconds")]
    def builds(part):
        return [{**b, "part": f"  {b['config']['engines']} x {b['config']['lanes']} lanes"} for b in part["builds"]]

    print_rows([{**result, "part": "version 3"}, *builds(result), {**result["vertical"], "part": "vertical (v4)"},
                *builds(result["vertical"])], [("part", "<14", "", "part"), *columns])
    print_rows([result], [("conv", ">6", ",", "conv_layers"), ("fc", ">6", ",", "fc_layers"),
                          ("blocks", ">7", ",", "residual_blocks"), ("pooled", ">7", ",", "pooled"),
                          ("mlps", ">5", ",", "mlps")])
    v = result["vertical"]
    print(f"vertical: {v['cases']:,} network-and-width runs ({v['precisions']['width']:,} at a stored width, "
          f"{v['precisions']['source']:,} at the source width, {v['precisions']['table_row']:,} at a table row); "
          f"{v['input_dependent']:,} of {v['networks']:,} networks score their probe images differently")
    print(f"\nwrote {out / 'fuzz.json'}")
    return report_floors(result["floors"], out / "fuzz.json", args.check)


def bench_accel(args, out: Path) -> int:
    """bench conv's ResNet-20 ticket, dense32 and qnn4 at PACT-4 and PACT-8 on one RTL build of the array
    (sim/bench/accel.py; about 10 min on 2 cores at the default 4 x 42 lanes with bench conv's outputs there, bounded
    to 45)."""
    from hw.platform.synth import refuse_past_the_dsps
    from sim.bench.accel import (
        BUDGET_MINUTES,
        DEFAULT_ENGINES,
        DEFAULT_LANES,
        TICKET_IMAGES,
        chip_bound_sentence,
        floors,
        plot_accel,
        plot_layers,
        run_accel,
    )

    engines = DEFAULT_ENGINES if args.engines is None else args.engines
    lanes = DEFAULT_LANES if args.lanes is None else args.lanes
    images = TICKET_IMAGES if args.images is None else args.images
    for flag, value, top in (("--engines", engines, 64), ("--lanes", lanes, 64), ("--images", images, 10_000)):
        if not 1 <= value <= top:
            raise UserError(f"{flag} is {value}; allowed 1 to {top}")
    # The bench's rows are the XC7Z020's: an array past its DSP48E1 is refused before the ticket trains (as
    # `verilog` and `system` refuse it; `synth --core array` takes one, to report how far past the chip it is).
    refuse_past_the_dsps(engines * lanes, engines, lanes, "bench accel")
    minutes = BUDGET_MINUTES if args.minutes is None else args.minutes
    if not 0 < minutes <= 24 * 60:
        raise UserError(f"--minutes is {minutes:g}; allowed more than 0, up to 1440")
    measured_under = provenance()  # the revision whose RTL runs (recorded before the long run)
    result = run_accel(out / "accel", out, engines=engines, lanes=lanes, ticket_images=images,
                       other_images=max(1, images // 10), simulator=args.simulator, minutes=minutes,
                       progress=not args.quiet)
    result["floors"] = floors(result)
    result["provenance"] = measured_under
    write_json(out / "accel.json", result)
    plot_accel(result["rows"], out / "accel.png", result.get("curve"))
    plot_layers(result["rows"], out / "accel_layers.png")
    def col(key, spec):  # "-" where a row has no value (a run that hung)
        return lambda r: "-" if r.get(key) is None else format(r[key], spec)

    print_rows(result["rows"], [
        ("weights", "<8", "", "weights"), ("A", ">2", "", "act_bits"), ("avg bits", ">8", "", col("avg_weight_bits", ".2f")),
        ("cycles/img", ">11", "", col("cycles_per_image", ",.0f")),
        ("img/s@100", ">10", "", col("images_per_second_at_100mhz", ",.0f")),
        ("speed-up", ">8", "", col("speedup_vs_dense32", ".2f")),
        ("bits-prop.", ">10", "", col("bit_proportional_speedup_bound", ".2f")),
        ("bound", ">9", "", col("lane_bound_cycles", ",.0f")), ("of bound", ">8", "", col("lane_bound_fraction", ".2f")), ("tile bound", ">10", "", col("tile_bound_cycles", ",.0f")),
        ("MAC/DSP/c", ">9", "", col("dense_macs_per_dsp_cycle", ".2f")),
        ("images", ">6", "", "rtl_images"), ("mism.", ">5", "", "rtl_mismatches"),
        ("read mism.", ">10", "", col("read_mismatches", "")),
        ("acc", ">6", "", col("golden_accuracy", ".3f")), ("sim c/s", ">8", "", col("sim_cycles_per_second", ",.0f"))])
    for r in result["rows"]:
        if r["weights"] == "ticket" and r["act_bits"] == 4 and r.get("bit_proportional_speedup_bound"):
            print(f"\nthe ticket's weights average {r['avg_weight_bits']:.2f} bits, {r['mac_weighted_weight_bits']:.2f} "
                  "weighted by the MACs each takes part in: an array whose time per MAC is proportional to the "
                  f"weight's bits, with no other cost, would be {r['bit_proportional_speedup_bound']:.2f}x faster than "
                  f"dense32 (measured here: {col('speedup_vs_dense32', '.2f')(r)}x)")
            print(chip_bound_sentence(r, result["rows"]))
    layered = [r for r in result["rows"] if r.get("layer_cycles")]
    if layered:
        print("\ncycles over the tiles' bound, layer by layer (the RTL's layer_cycles against layer_tile_bounds; "
              "loads, drains, the engines' imbalance and the buffer's port; accel_layers.png):")
        over = {id(r): [c - b for c, b in zip(r["layer_cycles"], r["layer_tile_bounds"])] for r in layered}
        print_rows(layered, [("weights", "<8", "", "weights"), ("A", ">2", "", "act_bits"),
                             ("layers", ">6", "", lambda r: len(over[id(r)])),
                             ("in all", ">8", ",.0f", lambda r: sum(over[id(r)])),
                             ("least", ">7", ",.0f", lambda r: min(over[id(r)])),
                             ("most", ">7", ",.0f", lambda r: max(over[id(r)]))])
    stalled = result.get("backpressure")
    if stalled:
        print(f"\nunder random back-pressure (the ticket at PACT-4, cycles not counted): {stalled['rtl_images']} "
              f"images, {stalled['rtl_mismatches']} mismatches, {stalled.get('read_mismatches')} of words read")
    if result.get("curve"):
        print("\nthe IMQ runs' iterations on the same bitstream (Fig. 4's curve; ranking: global, the ticket's run and "
              "the paper's, or within each layer; accuracies from the runs' histories):")
        print_rows(result["curve"], [
            ("ranking", "<7", "", lambda r: r.get("ranking", "global")),
            ("iter", ">4", "", "imq_iteration"), ("A", ">2", "", "act_bits"),
            ("avg bits", ">8", "", col("avg_weight_bits", ".2f")),
            ("cycles/img", ">11", "", col("cycles_per_image", ",.0f")),
            ("speed-up", ">8", "", col("speedup_vs_dense32", ".2f")),
            ("bits-prop.", ">10", "", col("bit_proportional_speedup_bound", ".2f")),
            ("tile bound", ">10", "", col("tile_bound_cycles", ",.0f")),
            ("test acc", ">8", "", col("fakequant_accuracy", ".3f")), ("val acc", ">7", "", col("val_accuracy", ".3f")),
            ("ticket", ">6", "", lambda r: "yes" if r["is_ticket"] else ""),
            ("images", ">6", "", "rtl_images"), ("mism.", ">5", "", "rtl_mismatches"),
            ("read mism.", ">10", "", col("read_mismatches", ""))])
    syn = result["synthesis"]
    if syn is None:
        print(f"\nno resources: the synthesis did not finish ({result.get('synthesis_error')})")
    else:
        print(f"\narray {result['config']['engines']} engines x {result['config']['lanes']} lanes: {syn['dsp']} "
              f"DSP48E1, {syn['lut']:,} LUT ({100 * syn['lut_fraction']:.0f} % of the XC7Z020), {syn['ff']:,} FF, "
              f"{syn['bram36']} RAMB36; Fmax estimate {syn['timing']['fmax_mhz']} MHz (Yosys synth_xilinx -flatten "
              "of the whole array, DS187 -1 delays; no Vivado here)")
        print(f"by parts: one engine {syn['engine']['lut']:,} LUT, the shell {syn['shell']['lut']:,} LUT; the shell and "
              f"the engines {syn['parts_total']['lut']:,} LUT")
    print(f"wrote {out / 'accel.json'}, {out / 'accel.png'} and {out / 'accel_layers.png'}")
    return report_floors(result["floors"], out / "accel.json", args.check)


def bench_qat(args, out: Path) -> int:
    """A quantized training step against the float step of the same network: MLP, VGG, ResNet-20 at 28x28 in
    every training mode (model/bench/qat.py run_qat_bench, about 30 s on 2 cores)."""
    from model.bench.qat import THREADS, floors, run_qat_bench

    rows = run_qat_bench(out / "qat.json", threads=THREADS, progress=not args.quiet)
    print_rows(rows, [("arch", "<9", "", "arch"), ("mode", "<7", "", "mode"), ("device", "<7", "", "device"),
                      ("step ms", ">9", ".1f", "step_ms"), ("float ms", ">9", ".1f", "float_step_ms"),
                      ("ratio", ">6", ".2f", "ratio")])
    result = floors(rows)
    write_floors(out / "qat.json", result, provenance(THREADS))
    print(f"\nwrote {out / 'qat.json'} and {floors_path(out / 'qat.json')}")
    return report_floors(result, floors_path(out / "qat.json"), args.check)


def bench_imq(args, out: Path) -> int:
    """Float MLP, IMQ, IRQ, IMP, QNN-8/4/2 on Fashion-MNIST (model/bench/imq.py, under 20 min on 2 cores)."""
    from model.bench.imq import FLOAT_GAP_PP, TICKET_BITS, run_imq_bench

    rows, summary = run_imq_bench(out, root=args.data_root, smoke=args.smoke, progress=not args.quiet,
                                  restart=args.restart)
    print_rows(rows, [("method", "<10", "", "label"),
                      ("act", ">5", "", lambda r: "float" if r["act_bits"] is None else str(r["act_bits"])),
                      ("iter", ">4", "", lambda r: "-" if r["iteration"] is None else str(r["iteration"])),
                      ("avg bits", ">8", ".2f", "avg_weight_bits"), ("val acc", ">8", "", _val_accuracy),
                      ("test acc", ">9", ".4f", "accuracy")])
    best, gap = summary["best_imq_at_most_4_bits"], summary["gap_to_float_pp"]
    if best is None:
        print(f"\nno IMQ iteration reached <= {TICKET_BITS:g} average bits")
    else:
        verdict = "within" if summary["ticket_within_0.5pp"] else "NOT within"
        print(f"\nbest IMQ ticket <= {TICKET_BITS:g} bits (chosen on {summary['ticket_selected_on']} accuracy): "
              f"iteration {best['iteration']}, {best['avg_weight_bits']:.2f} bits, test accuracy "
              f"{best['accuracy']:.4f}; {gap:+.2f} pp vs float ({verdict} {FLOAT_GAP_PP} pp)")
    for m in summary["imq_vs_irq"]:
        print(f"IMQ vs IRQ at {m['avg_weight_bits']:.2f} bits: {m['imq_accuracy']:.4f} vs {m['irq_accuracy']:.4f} "
              f"({m['difference_pp']:+.2f} pp)")
    if summary["imq_above_irq"] is None:
        print("IMQ vs IRQ: no IMQ iteration <= 4 bits inside IRQ's range")
    print(f"\nwall time {summary['wall_seconds']:.0f} s" + (" (resumed runs: " + ", ".join(summary["resumed_runs"])
                                                            + ")" if summary["resumed_runs"] else ""))
    suffix = "_smoke" if args.smoke else ""
    print(f"wrote {out / f'imq{suffix}.json'}, {out / f'imq{suffix}.png'}, {out / f'imq{suffix}_summary.json'}")
    return report_floors(summary["floors"], out / f"imq{suffix}_summary.json", args.check)


def _val_accuracy(row: dict) -> str:
    return "-" if row.get("val_accuracy") is None else f"{row['val_accuracy']:.4f}"


def bench_bmpq(args, out: Path) -> int:
    """FP-32 vs BMPQ at 6x, 10x and 13x on Fashion-MNIST (model/bench/bmpq.py run_bmpq_bench, about 10 min on
    2 cores)."""
    from model.bench.bmpq import floors, run_bmpq_bench

    rows = run_bmpq_bench(out / "bmpq.json", root=args.data_root, png_path=out / "bmpq.png",
                          progress=not args.quiet)
    print_rows(rows, [("budget MB", ">9", ".4f", "budget"), ("layer bits", "<28", "", lambda r: str(r["layer_bits"])),
                      ("accuracy", ">9", ".4f", "accuracy"), ("FP-32", ">7", ".4f", "fp_accuracy"),
                      ("drop pp", ">7", ".2f", "accuracy_drop_pp"), ("r_M^32", ">7", ".2f", "compression_ratio")])
    result = floors(rows)
    write_floors(out / "bmpq.json", result, provenance())
    print(f"\nwrote {out / 'bmpq.json'}, {out / 'bmpq.png'} and {floors_path(out / 'bmpq.json')}")
    return report_floors(result, floors_path(out / "bmpq.json"), args.check)


def bench_conv(args, out: Path) -> int:
    """ResNet-20 and VGG IMQ tickets and a BMPQ VGG on Fashion-MNIST, each exported as an image (model/bench/conv.py,
    about 4-7 min on 2 cores alone: 233 s at 4f8eb2e, 389 s at 25da61e; 28 min at 04d0346 beside other jobs)."""
    from model.bench.conv import run_conv_bench

    rows, summary = run_conv_bench(out, root=args.data_root, smoke=args.smoke, progress=not args.quiet,
                                   restart=args.restart)
    print_rows(rows, [("arch", "<8", "", "arch"), ("method", "<6", "", "method"),
                      ("avg bits", ">8", ".2f", "avg_weight_bits"), ("fq acc", ">7", ".4f", "fakequant_accuracy"),
                      ("golden", ">7", ".4f", "golden_accuracy"),
                      ("gap pp", ">6", "", lambda r: f"{r['golden_minus_fakequant_pp']:+.2f}"),
                      ("nonzero", ">7", ".3f", "nonzero_fraction"), ("payload B", ">9", ",.0f", "payload_bytes"),
                      ("meta B", ">7", ",.0f", "metadata_bytes"), ("param B", ">7", ",.0f", "param_bytes"),
                      ("image B", ">8", ",.0f", "image_bytes"), ("meta b/w", ">8", ".3f", "metadata_bits_per_weight"),
                      ("H(w) b", ">6", ".3f", "width_entropy_bits"), ("MACs dense", ">11", ",", "macs_dense"),
                      ("MACs nz", ">11", ",", "macs_nonzero")])
    for r in rows:
        if r["method"] == "imq":
            print(f"{r['arch']} ticket: iteration {r['ticket_iteration']} ({r['ticket_rule']}), validation accuracy "
                  f"{r['ticket_val_accuracy']:.4f}")
    print(f"\nwall time {summary['wall_seconds']:.0f} s" + (" (resumed runs: " + ", ".join(summary["resumed_runs"])
                                                            + ")" if summary["resumed_runs"] else ""))
    suffix = "_smoke" if args.smoke else ""
    print(f"wrote {out / f'conv{suffix}.json'}, {out / f'conv{suffix}_summary.json'}, {out / f'conv{suffix}.png'} "
          f"and the images under {out / f'conv{suffix}'}")
    return report_floors(summary["floors"], out / f"conv{suffix}_summary.json", args.check)


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
