"""``build.py train``: IMQ and its baselines in resumable run directories, LTS, or BMPQ.

Heavy modules (torch and the training code) are imported inside :func:`run` so that ``train --help`` stays
fast; see :mod:`model.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.cli import ADAM_LR, DEFAULT_OUT, SEED, SGD_LR, act_bits, bounded, print_table, write_json

HELP = "IMQ (float baseline, then Algorithm 1), its baselines, LTS or BMPQ; resumable; writes results, plots and ticket.pt"


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


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args) -> int:
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
