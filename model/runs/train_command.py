"""``build.py train``: IMQ and its baselines in resumable run directories, LTS, or BMPQ.

The options are one table, :data:`OPTIONS`: each says which methods use it and its default per method, and
``train --help`` shows them in one argument group per method family. Every option is parsed with the
default ``None`` (``False`` for flags), so :func:`resolve` can tell an option given on the command line from
one left out: one the chosen method does not use is an error naming both (even when it equals the default),
and the others get the method's default. With no option but ``--method`` every method runs on its defaults:

* imq, irq, imp, irp, qnn, qnn-imp: digits, MLP 64-10, PACT-4, 20 epochs per iteration, Adam 3e-3, batch 64.
* lts: exactly the 2-bit LTS row of ``bench lts`` (:func:`model.bench.lts.run_lts_bench` with
  :func:`model.methods.lts.train_lts`'s defaults): all of Fashion-MNIST, MLP 784-256-256-10, 10 epochs,
  ``E_wm`` 2, ``m`` 0.99, linear growth, SGD 0.01 with the quantizers' bounds at 1e-3 of it, batch 128, one
  thread (tests/test_cli_train.py checks that the two agree).
* bmpq: digits, MLP 64-64-64-64-10 (BMPQ needs at least three layers), 4x compression (its 16-bit first and
  last layers leave this MLP at most 4.49x; conv nets keep the paper's 10x), 20 epochs, SGD 0.05, batch 64.

LTS and BMPQ always start over: ``lts.json`` and ``bmpq.json`` say ``"resumed": false`` and record the code
revision and environment they ran under (``provenance``, :func:`model.runs.provenance.provenance`, as a run
directory's ``run.json`` does); ``bmpq.pt`` has it in its meta.

Heavy modules (torch and the training code) are imported inside the functions so that ``train --help``
stays fast; see :mod:`model.cli`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from model.cli import (
    ADAM_LR,
    DATA_SETS,
    DEFAULT_OUT,
    DEFAULT_VAL_SIZE,
    SEED,
    SGD_LR,
    act_bits,
    bounded,
    check_val_size,
    device_spec,
    path_text,
    print_table,
    refuse_taken_outputs,
    write_json,
)
from model.errors import UserError

HELP = ("IMQ (float baseline, then Algorithm 1), its baselines, LTS, BMPQ or vertical layering; resumable; writes "
        "results, plots and ticket.pt")

#: The methods of Algorithm 1's loop (model/methods/schedules.py), run in resumable run directories.
ITERATIVE = ("imq", "irq", "imp", "irp", "qnn", "qnn-imp")
METHODS = (*ITERATIVE, "lts", "bmpq", "vertical")
#: Options every method uses.
ALL = METHODS

#: ``bench lts``'s configuration (model/bench/lts.py run_lts_bench and train_lts's defaults), 2-bit row.
LTS_BENCH = {"data": "fashion-mnist", "hidden": [256, 256], "epochs": 10, "lr": 0.01, "batch_size": 128,
             "bits": 2, "lts_mode": "lts", "strategy": "linear", "p": 0.5, "m": 0.99, "warmup": 2, "threads": 1,
             "bounds_lr_ratio": 1e-3}  # bounds_lr_ratio: model.methods.lts.BOUNDS_LR_RATIO (torch-free copy, tested)
#: BMPQ's target compression r_M^32 for an MLP and for the conv nets (the paper's 10x, BMPQ Sec. IV-B and Table I).
BMPQ_MLP_COMPRESSION = 4.0
BMPQ_CONV_COMPRESSION = 10.0

#: Argument groups of ``train --help``: title -> description.
GROUPS = {
    "common": ("common options", "used by every method; defaults differ per method where shown"),
    "iterative": ("imq, irq, imp, irp, qnn, qnn-imp",
                  "Algorithm 1 in a resumable run directory (rewind to theta_0, change the masks, retrain)"),
    "lts": ("lts", "lottery ticket scratcher (LTS paper Eq. 1-8); also --hidden, --epochs, --lr, --batch-size"),
    "bmpq": ("bmpq", ("layer-wise widths from bit gradients and an ILP (BMPQ paper Sec. III); also --warmup "
                      "(its ep_w, default 2; listed under lts)")),
    "vertical": ("vertical", ("one net trained once that runs at 2, 3 or 4 bits (vertical-layering paper Sec. 4); "
                              "also --val-size, --val-seed (listed under imq..qnn-imp)")),
}
#: Options of ``--method vertical`` that apply to the joint training only (not to --baseline).
VERTICAL_JOINT_ONLY = ("moo", "no_compensation", "no_kd", "mixed_points")


def val_size(text: str) -> int | float:
    """``--val-size``: 0, a count >= 1, or a fraction in (0, 1) (:func:`model.cli.check_val_size`)."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_val_size(value)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _per_method(iterative=None, lts=None, bmpq=None, vertical=None) -> dict:
    return {**dict.fromkeys(ITERATIVE, iterative), "lts": lts, "bmpq": bmpq, "vertical": vertical}


@dataclass(frozen=True)
class Option:
    """One ``train`` option: its flags, the methods that use it, its default per method, argparse's kwargs."""

    flags: tuple[str, ...]
    group: str
    methods: tuple[str, ...]
    help: str
    defaults: dict = field(default_factory=dict)
    kwargs: dict = field(default_factory=dict)
    in_demo: bool = False
    #: ``demo``'s own help where it takes less than ``train`` (``--data``: digits only).
    demo_help: str | None = None

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_")

    @property
    def flag(self) -> str:
        return self.flags[0]

    def default_help(self, methods: tuple[str, ...] | None = None) -> str:
        """``default: X`` or ``default: X for imq.., Y for lts`` from :attr:`defaults` (of ``methods`` only)."""
        values: dict[str, list[str]] = {}
        for method in self.methods if methods is None else methods:
            value = self.defaults.get(method)
            if value is None:
                continue
            text = " ".join(map(str, value)) if isinstance(value, list) else format(value, "g" if isinstance(
                value, float) else "")
            values.setdefault(text, []).append(method)
        if not values:
            return ""
        if len(values) == 1:
            return f" (default: {next(iter(values))})"
        parts = [f"{text} for {_methods_text(methods)}" for text, methods in values.items()]
        return f" (default: {'; '.join(parts)})"


def _methods_text(methods) -> str:
    """``imq, lts`` or, for all six iterative methods, ``imq..qnn-imp``."""
    methods = tuple(methods)
    if set(ITERATIVE) <= set(methods):
        methods = ("imq..qnn-imp", *(m for m in methods if m not in ITERATIVE))
    return ", ".join(methods)


OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------------------------------ common
    Option(("--data",), "common", ALL, "data set: digits (scikit-learn's 8x8 digits), fashion-mnist, idx "
           "(--data-root), cifar10 or cifar100 (--data-root)",
           _per_method("digits", LTS_BENCH["data"], "digits", "digits"), {"choices": DATA_SETS, "metavar": "NAME"},
           in_demo=True, demo_help="data set: digits only (the demo simulates every test image in RTL; the other "
           "data sets train with `train --data NAME`)"),
    Option(("--data-root",), "common", ALL, "data folder for --data idx, cifar10, cifar100 (fashion-mnist: "
           "default Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist)", kwargs={"type": path_text}),
    Option(("--train-subset",), "common", ALL, "use only the first N training images (default: all)",
           kwargs={"type": bounded(int, 1, 10**9)}),
    Option(("--test-subset",), "common", ALL, "use only the first N test images (default: all)",
           kwargs={"type": bounded(int, 1, 10**9)}),
    Option(("--arch",), "common", ALL, "network: mlp (--hidden; the accelerator runs these), resnet20 or vgg "
           "(lts: an MLP with BatchNorm, or these conv nets with LTS weights)", _per_method("mlp", "mlp", "mlp", "mlp"), {"choices": ("mlp", "resnet20", "vgg")}),
    Option(("--hidden",), "common", ALL, "MLP hidden layer sizes",
           _per_method([64], LTS_BENCH["hidden"], [64, 64, 64], [64, 64, 64]), {"type": bounded(int, 1, 4096), "nargs": "+"},
           in_demo=True),
    Option(("--epochs",), "common", ALL, "training epochs (per iteration for the iterative methods)",
           _per_method(20, LTS_BENCH["epochs"], 20, 10), {"type": bounded(int, 1, 100000)}, in_demo=True),
    Option(("--lr",), "common", ALL, "peak learning rate: Adam for imq..qnn-imp; SGD with momentum 0.9 for lts "
           "and bmpq (BMPQ's paper uses 0.1 for 200 epochs); Adam for vertical",
           _per_method(ADAM_LR, LTS_BENCH["lr"], SGD_LR, ADAM_LR), {"type": bounded(float, 1e-8, 10.0)}, in_demo=True),
    Option(("--batch-size",), "common", ALL, "mini-batch size", _per_method(64, LTS_BENCH["batch_size"], 64, 64),
           {"type": bounded(int, 1, 65536)}),
    Option(("--seed",), "common", ALL, "random seed, 0..2^32-1", _per_method(0, 0, 0, 0), {"type": SEED},
           in_demo=True),
    Option(("--device",), "common", ALL, "where to train: auto (CUDA when available, else the CPU), cpu, cuda or "
           "cuda:N; under torchrun auto and cuda mean cuda:LOCAL_RANK (NCCL), cpu means gloo",
           _per_method("auto", "auto", "auto", "auto"), {"type": device_spec, "metavar": "auto|cpu|cuda[:N]"}),
    Option(("--run-dir",), "common", ALL, "output directory, overriding --out; for imq..qnn-imp the run "
           "directory that running again with the same options resumes (lts and bmpq start over)"),
    # ------------------------------------------------------------------------------------------ iterative
    Option(("--act-bits",), "iterative", ITERATIVE, "PACT-k activation bits: 1..8, or 32 for PACT-32 (clip only; "
           "not exportable; --arch resnet20 or vgg only)", _per_method(4), {"type": act_bits}, in_demo=True,
           demo_help="PACT-k activation bits: 1..8, what the accelerator runs"),
    Option(("--rho",), "iterative", tuple(m for m in ITERATIVE if m != "qnn"),
           "fraction of the non-zero weights changed per iteration: IMQ/IRQ quantize ratio (default 0.3), "
           "IMP/IRP/QNN-IMP pruning rate (default 0.2)", kwargs={"type": bounded(float, 0.0, 1.0)}, in_demo=True),
    # qnn trains once (no mask update): no iteration to stop at, nothing to rank per layer. Its config still
    # holds the defaults below (unchanged run directories), but giving these options is an error.
    Option(("--target-bits",), "iterative", tuple(m for m in ITERATIVE if m != "qnn"), "stop at the first "
           "iteration with at most this average weight width; that iteration is the ticket (0 runs every iteration "
           "and picks the ticket by Algorithm 1; not qnn, which trains once)", _per_method(4.0), {"type": bounded(float, 0.0, 32.0)},
           in_demo=True),
    Option(("--iterations", "--max-iterations"), "iterative", tuple(m for m in ITERATIVE if m != "qnn"),
           "iteration limit N_iter (default: 25 for imq/irq, 16 for imp/irp/qnn-imp; qnn trains once)",
           kwargs={"type": bounded(int, 1, 1000), "dest": "max_iterations"}, in_demo=True),
    Option(("--weight-bits",), "iterative", ("qnn", "qnn-imp"), "QNN-k / QNN-k IMP weight width k (the other "
           "methods start from 32 bits)", {"qnn": 8, "qnn-imp": 8}, {"type": int, "choices": (1, 2, 4, 8, 16, 32)}),
    Option(("--hierarchy",), "iterative", ("imq", "irq"), "IMQ/IRQ widths: paper 32/16/8/4/0, or extended with 2 "
           "and 1 (Fig. 6; not exportable)", {"imq": "paper", "irq": "paper"}, {"choices": ("paper", "extended")}),
    Option(("--scope",), "iterative", tuple(m for m in ITERATIVE if m != "qnn"), "magnitude (or random) choice "
           "of the weights each iteration changes: across all layers or per layer (not qnn, which changes none)", _per_method("global"),
           {"choices": ("global", "layer")}, in_demo=True),
    Option(("--no-float-baseline",), "iterative", ITERATIVE, "skip the dense float model",
           kwargs={"action": "store_true"}),
    Option(("--val-size",), "iterative", (*ITERATIVE, "vertical"), "training images held out for validation "
           "(ticket selection, and vertical's epoch selection, rank on them): a fraction in (0, 1), a count >= 1, "
           "or 0 for none", _per_method(DEFAULT_VAL_SIZE, vertical=DEFAULT_VAL_SIZE), {"type": val_size}),
    Option(("--val-seed",), "iterative", (*ITERATIVE, "vertical"), "seed of the validation split, 0..2^32-1",
           _per_method(0, vertical=0), {"type": SEED}),
    Option(("--restart",), "iterative", ITERATIVE, "start the run directory afresh: remove what an earlier run "
           "wrote there (needed after a code change or to change the config in place)",
           kwargs={"action": "store_true"}, in_demo=True),
    # ------------------------------------------------------------------------------------------ lts
    Option(("--bits",), "lts", ("lts",), "LTS weight and activation bits, 2..8", {"lts": LTS_BENCH["bits"]},
           {"type": bounded(int, 2, 8)}),
    Option(("--lts-mode",), "lts", ("lts",), "lts, or plain QAT (no scratcher) for comparison",
           {"lts": LTS_BENCH["lts_mode"]}, {"choices": ("lts", "baseline")}),
    Option(("--strategy",), "lts", ("lts",), "growth of p after the warm-up, Eq. 7-8",
           {"lts": LTS_BENCH["strategy"]}, {"choices": ("fixed", "linear", "sine")}),
    Option(("--p",), "lts", ("lts",), "rate p of --strategy fixed (Eq. 6)", {"lts": LTS_BENCH["p"]},
           {"type": bounded(float, 0.0, 1.0)}),
    Option(("--m",), "lts", ("lts",), "EMA momentum (Eq. 5)", {"lts": LTS_BENCH["m"]},
           {"type": bounded(float, 0.0, 1.0)}),
    Option(("--bounds-lr-ratio",), "lts", ("lts",), "learning rate of the quantizers' bounds l, u over --lr (the "
           "authors' code: 1e-4 / 0.1)", {"lts": LTS_BENCH["bounds_lr_ratio"]}, {"type": bounded(float, 0.0, 1.0)}),
    Option(("--warmup",), "lts", ("lts", "bmpq"), "warm-up epochs: LTS E_wm, BMPQ ep_w",
           {"lts": LTS_BENCH["warmup"], "bmpq": 2}, {"type": bounded(int, 0, 10000)}),
    Option(("--threads",), "lts", ("lts",), "torch CPU threads (the bench's 1 keeps backward timings "
           "undisturbed and results equal to its row; 0: torch's default)", {"lts": LTS_BENCH["threads"]},
           {"type": bounded(int, 0, 1024)}),
    # ------------------------------------------------------------------------------------------ bmpq
    Option(("--compression",), "bmpq", ("bmpq",), "memory budget as a target compression ratio r_M^32, Eq. 12 "
           f"(default: {BMPQ_MLP_COMPRESSION:g} for an MLP, {BMPQ_CONV_COMPRESSION:g} for resnet20 and vgg)",
           kwargs={"type": bounded(float, 1.0, 32.0)}),
    Option(("--budget-mb",), "bmpq", ("bmpq",), "memory budget C in MB of weights, Eq. 11 units (instead of "
           "--compression)", kwargs={"type": bounded(float, 1e-9, 1e6)}),
    Option(("--support",), "bmpq", ("bmpq",), "support widths S_q (2 is ternary)", {"bmpq": [2, 4]},
           {"type": int, "nargs": "+", "choices": (2, 3, 4, 5, 6, 7, 8, 16)}),
    Option(("--edge-bits",), "bmpq", ("bmpq",), "width of the first and the last layer", {"bmpq": 16},
           {"type": int, "choices": (4, 8, 16)}),
    Option(("--interval",), "bmpq", ("bmpq",), "epoch interval ep_int between ILP runs, Def. 2", {"bmpq": 2},
           {"type": bounded(int, 1, 10000)}),
    # ------------------------------------------------------------------------------------------ vertical
    Option(("--widths",), "vertical", ("vertical",), "trained weight and activation widths, consecutive, "
           "comma-separated; the largest is the source width n", {"vertical": "2,3,4"}),
    Option(("--moo",), "vertical", ("vertical",), "combination of the per-width gradients: us (unitary "
           "scalarization, alpha_i = 1/(n+1)) or mgd (min-norm, Eq. 10)", {"vertical": "us"},
           {"choices": ("us", "mgd")}),
    Option(("--no-compensation",), "vertical", ("vertical",), "downsample without the positive compensation "
           "z_i (Eq. 6; the paper's ablation)", kwargs={"action": "store_true"}),
    Option(("--no-kd",), "vertical", ("vertical",), "no cosine self-knowledge distillation from the next wider "
           "width (Eq. 11)", kwargs={"action": "store_true"}),
    Option(("--baseline",), "vertical", ("vertical",), "train a baseline instead of the joint training: lsq "
           "(a separate LSQ net per width, the oracle), downsample (LSQ at the source width, lower widths by "
           "direct floor downsampling), ascending (Sec. 3.3 ascending layer training)",
           kwargs={"choices": ("lsq", "downsample", "ascending")}),
    Option(("--float-edges",), "vertical", ("vertical",), "keep the first and last layers' weights full "
           "precision (the paper's setting; not for the accelerator) instead of 8-bit integers",
           kwargs={"action": "store_true"}),
    Option(("--mixed-points",), "vertical", ("vertical",), "bit budgets of the Eq. 12 mixed-precision curve "
           "(Fig. 8; 0: none)", {"vertical": 5}, {"type": bounded(int, 0, 50)}),
)

OPTION_BY_DEST = {o.dest: o for o in OPTIONS}


def _add(p, option: Option, methods: tuple[str, ...] | None = None, text: str | None = None) -> None:
    kwargs = dict(option.kwargs)
    if kwargs.get("action") != "store_true":
        kwargs["default"] = None  # None: not given (resolve() fills the method's default)
    p.add_argument(*option.flags, help=(text or option.help) + option.default_help(methods), **kwargs)


def add_train_args(p: argparse.ArgumentParser, out: Path) -> None:
    """The options ``demo`` shares with ``train`` (IMQ on digits); resolve them with ``resolve(args, "imq")``."""
    for option in OPTIONS:
        if option.in_demo:
            _add(p, option, ("imq",), option.demo_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=str(out), help=f"output directory (default: {out})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    groups = {key: p.add_argument_group(title, description) for key, (title, description) in GROUPS.items()}
    groups["common"].add_argument(
        "--method", choices=METHODS, default="imq",
        help="imq: MPQ-tickets (default); irq: random instead of magnitude choice; imp / irp: iterative magnitude "
             "/ random pruning at 32 bits; qnn: all weights --weight-bits, one run; qnn-imp: IMP on a "
             "--weight-bits QNN; lts: lottery ticket scratcher; bmpq: layer-wise widths from bit gradients and an "
             "ILP; vertical: one vertical-layered net for every width of --widths")
    for option in OPTIONS:
        _add(groups[option.group], option)
    out = DEFAULT_OUT / "train"
    groups["common"].add_argument("--quiet", action="store_true", help="no progress bars")
    groups["common"].add_argument("--out", default=str(out), help=f"output directory (default: {out})")


def given_options(args) -> list[Option]:
    """The options of :data:`OPTIONS` given on the command line (parsed values other than None / False; by identity:
    ``0 == False``, and ``--p 0`` is given)."""
    return [o for o in OPTIONS if (value := getattr(args, o.dest, None)) is not None and value is not False]


def resolve(args, method: str | None = None):
    """Check the options given for the method and fill in the method's defaults (in place; returns ``args``).

    Raises
    ------
    UserError
        For an option the method does not use, naming the method and the option, or a combination that
        does not apply (LTS: ``--arch`` other than mlp, ``--p`` without ``--strategy fixed``, scratcher
        options with ``--lts-mode baseline``; BMPQ: ``--compression`` with ``--budget-mb``; ``--act-bits 32``
        with the MLP, whose activations are 1..8 bits: PACT-32 is for ResNet-20 and the VGG).
    """
    from model.errors import UserError

    if getattr(args, "resolved", False):  # defaults filled in look like given options: check only once
        return args
    method = method or args.method
    given = given_options(args)
    for option in given:
        if method not in option.methods:
            users = _methods_text(option.methods)
            raise UserError(f"{option.flag} (field '{option.dest}') does not apply to --method {method}; it is "
                            f"used by {users}" + (" (see `train --help`)" if hasattr(args, "method") else ""))
    names = {o.dest for o in given}
    if method == "lts":
        if "p" in names and args.strategy != "fixed":
            raise UserError(f"--p does not apply to --method lts with --strategy {args.strategy or 'linear'}: "
                            f"p is the rate of --strategy fixed (linear and sine grow it from 0 to 1)")
        scratcher = sorted({"strategy", "p", "m", "warmup"} & names)
        if args.lts_mode == "baseline" and scratcher:
            raise UserError(f"--{scratcher[0]} does not apply to --method lts with --lts-mode baseline: plain QAT "
                            f"has no scratcher")
    if method == "bmpq" and "compression" in names and "budget_mb" in names:
        raise UserError("--compression and --budget-mb both set the BMPQ memory budget: give one of them")
    if method == "vertical" and args.baseline:
        joint = sorted(set(VERTICAL_JOINT_ONLY) & names)
        if joint:
            raise UserError(f"{OPTION_BY_DEST[joint[0]].flag} does not apply to --method vertical --baseline "
                            f"{args.baseline}: it is an option of the joint training")
    if "val_seed" in names and args.val_size == 0:
        raise UserError("--val-seed does not apply with --val-size 0: there is no validation split to seed")
    if (hasattr(args, "method") and method in ITERATIVE and args.act_bits == 32
            and (getattr(args, "arch", None) or "mlp") == "mlp"):
        raise UserError("--act-bits 32 (PACT-32) does not apply to --arch mlp: the MLP's activations are 1..8 bits "
                        "(allowed --act-bits 1..8); PACT-32 needs --arch resnet20 or --arch vgg")
    if "hidden" in names and (getattr(args, "arch", None) or "mlp") != "mlp":
        raise UserError(f"--hidden does not apply to --arch {args.arch}: it sizes the MLP (--arch mlp)")
    if "data_root" in names and (args.data or OPTION_BY_DEST["data"].defaults[method]) == "digits":
        raise UserError(f"--data-root {args.data_root!r} does not apply to --data digits: the digits are bundled "
                        f"with scikit-learn")
    for option in OPTIONS:
        if getattr(args, option.dest, None) is None and hasattr(args, option.dest):
            value = option.defaults.get(method)
            setattr(args, option.dest, list(value) if isinstance(value, list) else value)
    if method == "bmpq" and args.compression is None and args.budget_mb is None:
        args.compression = BMPQ_MLP_COMPRESSION if args.arch == "mlp" else BMPQ_CONV_COMPRESSION
    check_warmup(args, method, names)
    args.resolved = True
    return args


def _warmups(lo: int, hi: int) -> str:
    return f"--warmup {lo}" if lo == hi else f"--warmup {lo}..{hi}"


def check_warmup(args, method: str, names: set[str]) -> None:
    """The warm-up must leave epochs to train after it (``args`` with the method's defaults filled in).

    BMPQ runs its first ILP after at least one warm-up epoch (``1 <= --warmup < --epochs``); LTS starts freezing
    after ``--warmup`` epochs (``0 <= --warmup < --epochs``). The message names the option to change, also when
    ``--warmup`` was left at its default. Plain QAT (``--lts-mode baseline``) has no warm-up: its unused
    default is cut to fit short trainings.

    Raises
    ------
    UserError
        Naming ``--warmup`` / ``--epochs`` and the values that work.
    """
    from model.errors import UserError

    if method not in ("bmpq", "lts"):
        return
    warmup, epochs = args.warmup, args.epochs
    given = "warmup" in names
    default = f"its default --warmup {warmup}" if not given else f"--warmup {warmup}"
    if method == "bmpq":
        if warmup < 1:
            raise UserError(f"--warmup {warmup} is too short for --method bmpq: BMPQ trains at least 1 warm-up "
                            f"epoch (ep_w) at the widest support width before its first ILP; give --warmup 1 or "
                            f"more (less than --epochs)")
        if epochs < 2:
            raise UserError(f"--method bmpq with --epochs {epochs}: BMPQ needs --epochs >= 2 (a warm-up of at least "
                            f"1 epoch, --warmup, before the first ILP, then at least 1 epoch at the widths it "
                            f"assigns); raise --epochs")
        if warmup >= epochs:
            raise UserError(f"--method bmpq with --epochs {epochs} and {default}: the first ILP runs after the "
                            f"warm-up, so --warmup must be less than --epochs; give {_warmups(1, epochs - 1)} or "
                            f"--epochs {warmup + 1} or more")
    elif method == "lts" and warmup >= epochs:
        if args.lts_mode == "baseline":
            args.warmup = epochs - 1  # unused by plain QAT; train_lts still checks it against the epochs
            return
        raise UserError(f"--method lts with --epochs {epochs} and {default}: LTS freezes weights only after the "
                        f"warm-up (E_wm), so --warmup must be less than --epochs; give {_warmups(0, epochs - 1)} "
                        f"or --epochs {warmup + 1} or more")


def train_config(args):
    """The :class:`model.runs.rundir.RunConfig` that ``train`` (imq..qnn-imp) or ``demo`` (IMQ) asks for.

    ``args`` is resolved (:func:`resolve`).
    """
    from model.runs.rundir import make_run_config

    return make_run_config(
        getattr(args, "method", "imq"), data=args.data, data_root=getattr(args, "data_root", None),
        train_subset=getattr(args, "train_subset", None), test_subset=getattr(args, "test_subset", None),
        arch=getattr(args, "arch", "mlp"), hidden=tuple(args.hidden), act_bits=args.act_bits, rho=args.rho,
        iterations=args.max_iterations, weight_bits=getattr(args, "weight_bits", None),
        hierarchy=getattr(args, "hierarchy", None) or "paper", scope=args.scope, target_avg_bits=args.target_bits,
        epochs=args.epochs, lr=args.lr, batch_size=getattr(args, "batch_size", None) or 64, seed=args.seed,
        float_baseline=not getattr(args, "no_float_baseline", False),
        val_size=getattr(args, "val_size", None) if getattr(args, "val_size", None) is not None else DEFAULT_VAL_SIZE,
        val_seed=getattr(args, "val_seed", None) or 0)


def train_ticket(args, out: Path):
    """Float baseline, then the method (IMQ for ``demo``) in the run directory ``out`` (resumable).

    ``args`` is resolved (:func:`resolve`); ``--restart`` starts the run directory afresh. Returns
    ``(result, split)``: the
    :class:`model.runs.rundir.RunResult` (``resumed`` says whether the directory held the run already) and
    the run's data.
    """
    from model.runs.rundir import run

    config = train_config(args)
    result = run(config, out, progress=not args.quiet, restart=getattr(args, "restart", False), fit_subsets=True)
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
    return result, result.split


def cmd_train_lts(args) -> int:
    """LTS (lottery ticket scratcher) or plain QAT at ``--bits`` on any data set (an LTS MLP of its size)."""
    import torch

    from model.bench.lts import plot_sparsity
    from model.data import class_count, load_dataset
    from model.methods.lts import train_lts
    from model.quant.lts import LTSMLP, to_lts
    from model.quant.nets import build_model, model_config
    from model.runs.provenance import provenance
    from model.training.loop import torch_threads

    out = Path(args.run_dir or args.out)
    refuse_taken_outputs(out, ["lts.json", "lts_sparsity.png"], what="train --method lts")  # before it trains
    split = load_dataset(args.data, args.data_root, train_subset=args.train_subset, test_subset=args.test_subset,
                         seed=args.seed, fit=True)
    with torch_threads(args.threads):
        recorded = provenance()  # the thread count LTS trains with (torch's is restored after the block)
        # As model.quant.lts.build_lts_mlp (which fixes 784 inputs and 10 classes): seeded, global RNG untouched.
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            if args.arch == "mlp":
                model = LTSMLP(args.bits, n_in=int(split.x_train.shape[1]), hidden=tuple(args.hidden),
                               n_classes=class_count(args.data, split))
            else:  # ResNet-20 / the VGG of model.quant.nets with LTS conv and FC layers
                model = to_lts(build_model(model_config(args.arch, split, None, class_count(args.data, split),
                                                        act_bits=args.bits)), args.bits)
        torch.manual_seed(args.seed)
        result = train_lts(model, split, args.epochs, args.bits, mode=args.lts_mode, strategy=args.strategy,
                           p=args.p, m=args.m, warmup=args.warmup, lr=args.lr, batch_size=args.batch_size,
                           seed=args.seed, progress=not args.quiet, bounds_lr_ratio=args.bounds_lr_ratio)
    report = {"method": "lts", "resumed": False, "provenance": recorded,
              "mode": args.lts_mode, "bits": args.bits, "accuracy": result.accuracy,
              "avg_wgs": result.avg_wgs, "bp_flops_reduction": result.bp_flops_reduction,
              "backward_time_s": result.backward_time, "train_time_s": result.train_time,
              "sparsity_history": result.sparsity_history,
              "config": {"data": args.data, "data_root": args.data_root, "arch": args.arch,
                         "train_images": len(split.y_train),
                         "test_images": len(split.y_test), "hidden": list(args.hidden), "epochs": args.epochs,
                         "warmup": args.warmup, "strategy": args.strategy, "p": args.p, "m": args.m, "lr": args.lr,
                         "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
                         "bounds_lr_ratio": args.bounds_lr_ratio}}
    write_json(out / "lts.json", report)
    plot_sparsity(result.sparsity_history, out / "lts_sparsity.png")
    print_table([(k, report[k]) for k in ("mode", "bits", "accuracy", "avg_wgs", "bp_flops_reduction",
                                          "backward_time_s", "train_time_s")], f"LTS training ({args.data})")
    print("\nresumed: false (lts always starts over)")
    print(f"wrote {out / 'lts.json'} and {out / 'lts_sparsity.png'}")
    return 0


def cmd_train_bmpq(args) -> int:
    """BMPQ (model/methods/bmpq.py): warm-up, then the bit-gradient ILP every ``--interval`` epochs."""
    import torch

    from model.bench.bmpq import plot_bench
    from model.data import DataRecord, class_count, load_dataset
    from model.errors import UserError
    from model.methods.bmpq import BMPQConfig, train_bmpq
    from model.quant.bmpq import to_bmpq
    from model.quant.nets import build_model, model_config
    from model.runs.checkpoint import input_bits_of, save_checkpoint
    from model.runs.provenance import provenance
    from model.training import distributed

    out = Path(args.run_dir or args.out)
    refuse_taken_outputs(out, ["bmpq.json", "bmpq.png", "bmpq.pt"], what="train --method bmpq")  # before it trains
    split = load_dataset(args.data, args.data_root, train_subset=args.train_subset, test_subset=args.test_subset,
                         seed=args.seed, fit=True)
    # The activations' widths follow the layers (set_bits); 8 bits until the first assignment.
    config = model_config(args.arch, split, args.hidden, class_count(args.data, split), act_bits=8)
    torch.manual_seed(args.seed)
    model = to_bmpq(build_model(config))
    budget_bits = None if args.budget_mb is None else args.budget_mb * 8 * 2**20
    try:
        bmpq_config = BMPQConfig(budget_bits=budget_bits, compression=args.compression,
                                 support=tuple(sorted(set(args.support))), edge_bits=args.edge_bits,
                                 warmup=args.warmup, interval=args.interval, epochs=args.epochs,
                                 lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    except TypeError as exc:  # pragma: no cover - argparse already typed every field
        raise UserError(str(exc)) from None
    result = train_bmpq(model, split, bmpq_config, progress=not args.quiet)
    recorded = provenance()
    if not distributed.is_main():  # under torchrun every rank holds the same result; rank 0 writes it
        return 0
    report = {"method": "bmpq", "resumed": False, "provenance": recorded, **result.to_json(),
              "target_compression": args.compression,
              "budget": None if result.budget_bits is None else result.budget_bits / 8 / 2**20}
    write_json(out / "bmpq.json", report)
    row = {"layer_bits": result.layer_bits, "layer_names": result.layer_names, "accuracy": result.accuracy,
           "compression_ratio": result.compression_ratio, "fp_accuracy": float("nan")}
    plot_bench([row], out / "bmpq.png")
    data = DataRecord.of(args.data, args.data_root, split.image_shape, input_bits_of(model), args.seed,
                         args.train_subset, args.test_subset)
    save_checkpoint(out / "bmpq.pt", model, meta={"method": "bmpq", "accuracy": result.accuracy,
                                                  "layer_bits": result.layer_bits, "provenance": recorded},
                    data=data)
    print_table([(f"{name} ({p} weights)", f"{b} bits") for name, p, b in
                 zip(result.layer_names, result.params, result.layer_bits)]
                + [("test accuracy", result.accuracy), ("compression r_M^32 (Eq. 12)", result.compression_ratio),
                   ("weights MB (Eq. 11)", result.memory_mb)], f"BMPQ ({args.data})")
    print("\nresumed: false (bmpq always starts over)")
    print(f"wrote {out / 'bmpq.json'}, {out / 'bmpq.png'} and {out / 'bmpq.pt'}")
    return 0


def cmd_train_vertical(args) -> int:
    """Vertical layering (model/methods/vertical.py): the joint training, or a baseline (``--baseline``).

    Writes ``vertical.json`` (per-width validation and test accuracies, the history, the Eq. 12 rows),
    ``vertical.pt`` (the net; ``lsq_<b>bit.pt`` per width for ``--baseline lsq``, none for ascending),
    ``vertical_hist.png`` (Fig. 5) and, for the joint training, ``vertical_mixed.png`` (Fig. 8).
    """
    import torch

    from model.data import DataRecord, class_count, load_dataset
    from model.methods.vertical import (
        VerticalConfig,
        mixed_precision_curve,
        model_bits,
        plot_histograms,
        plot_mixed_precision,
        train_ascending,
        train_downsample,
        train_lsq_oracle,
        train_vertical,
    )
    from model.quant.nets import build_model, model_config
    from model.quant.vertical import parse_widths, set_width, to_vertical
    from model.runs.checkpoint import save_vertical_checkpoint
    from model.runs.provenance import provenance
    from model.runs.validation import carve_validation

    widths = parse_widths(args.widths)
    out = Path(args.run_dir or args.out)
    split = load_dataset(args.data, args.data_root, train_subset=args.train_subset, test_subset=args.test_subset,
                         seed=args.seed, fit=True)
    split, validation = carve_validation(split, args.val_size, args.val_seed)
    n_classes = class_count(args.data, split)
    config = model_config(args.arch, split, args.hidden, n_classes, act_bits=max(widths))
    scheme = args.baseline or "joint"
    compensate = scheme == "joint" and not args.no_compensation
    # The files this scheme writes (below), checked before it trains.
    taken = ["vertical.json", *([f"lsq_{b}bit.pt" for b in widths] if scheme == "lsq" else []),
             *(["vertical_hist.png"] if scheme != "ascending" else []),
             *(["vertical.pt"] if scheme not in ("lsq", "ascending") else []),
             *(["vertical_mixed.png"] if scheme == "joint" and args.mixed_points else [])]
    refuse_taken_outputs(out, taken, what=f"train --method vertical ({scheme})")

    def build(net_widths):
        torch.manual_seed(args.seed)  # the same initial weights for every net of the comparison
        return to_vertical(build_model(config), net_widths, compensate, args.float_edges)

    vconfig = VerticalConfig(widths=widths, moo=args.moo, compensate=compensate, kd=not args.no_kd,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    progress = not args.quiet
    mixed: list[dict] = []
    model = None
    if scheme == "lsq":
        per_width = train_lsq_oracle(build, split, vconfig, validation, progress=progress)
        test = {b: r.test_accuracy[b] for b, r in per_width.items()}
        val = {b: r.val_accuracy.get(b) for b, r in per_width.items()}
        history = {str(b): r.history for b, r in per_width.items()}
        selected = {str(b): r.selected_epoch for b, r in per_width.items()}
    else:
        model = build(widths)
        trainer = {"joint": train_vertical, "downsample": train_downsample, "ascending": train_ascending}[scheme]
        result = trainer(model, split, vconfig, validation, progress=progress)
        test, val, history, selected = result.test_accuracy, result.val_accuracy, result.history, result.selected_epoch
        if scheme == "joint" and args.mixed_points:
            mixed = mixed_precision_curve(model, split, points=args.mixed_points, seed=args.seed)
    # The rows' re-estimated BN statistics go into the checkpoint (export folds them into each row's own
    # requant records), not into the JSON.
    row_bn = [r.pop("bn_state") for r in mixed if r["kind"] == "mixed"]
    sizes = {}
    if model is not None:
        for b in widths:
            set_width(model, b)
            sizes[str(b)] = model_bits(model)
        set_width(model, widths[-1])
    recorded = provenance()
    report = {"method": "vertical", "scheme": scheme, "resumed": False, "provenance": recorded,
              "widths": list(widths), "moo": args.moo if scheme == "joint" else None,
              "compensation": compensate, "kd": scheme == "joint" and not args.no_kd,
              "edge_bits": 32 if args.float_edges else 8,
              "test_accuracy": {str(b): a for b, a in test.items()},
              "val_accuracy": {str(b): a for b, a in val.items()},
              "selected_epoch": selected, "model_bits": sizes, "mixed_precision": mixed, "history": history,
              "config": {"data": args.data, "data_root": args.data_root, "arch": args.arch,
                         "train_images": len(split.y_train), "val_images": 0 if validation is None else validation.size,
                         "test_images": len(split.y_test), "hidden": list(args.hidden) if args.arch == "mlp" else None,
                         "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
                         "val_size": args.val_size, "val_seed": args.val_seed, "model": config}}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "vertical.json", report)
    written = [out / "vertical.json"]
    data = DataRecord.of(args.data, args.data_root, split.image_shape, 8, args.seed, args.train_subset,
                         args.test_subset)
    meta = {"method": "vertical", "scheme": scheme, "test_accuracy": report["test_accuracy"],
            "provenance": recorded, "dataset": data.to_json(),
            "eq12_table": [list(r["layer_bits"]) for r in mixed if r["kind"] == "mixed"], "eq12_bn": row_bn}
    if scheme == "lsq":
        for b, r in per_width.items():
            written.append(save_vertical_checkpoint(out / f"lsq_{b}bit.pt", r.model, meta))
        nets = {b: r.model for b, r in per_width.items()}
    else:
        nets = model
    if scheme != "ascending":  # the ascending net's codes live in its stages, not in weight and s_w
        if model is not None:
            written.append(save_vertical_checkpoint(out / "vertical.pt", model, meta))
        written.append(plot_histograms(nets, out / "vertical_hist.png", f"{scheme}, {args.arch}, {args.data}"))
    if mixed:
        written.append(plot_mixed_precision(mixed, out / "vertical_mixed.png"))
    rows = [(f"{b}-bit test accuracy" + (f" (val {val[b]:.4f})" if val.get(b) is not None else ""), test[b])
            for b in widths]
    rows += [(f"Eq. 12 {r['avg_inner_bits']:.2f} inner bits, {r['model_bits'] / 8 / 1024:.1f} KB", r["accuracy"])
             for r in mixed if r["kind"] == "mixed"]
    print_table(rows, f"vertical ({scheme}, {args.arch}, {args.data})")
    print("\nresumed: false (vertical always starts over)")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run(args) -> int:
    """``train --method imq|irq|imp|irp|qnn|qnn-imp`` in a resumable run directory, or LTS, or BMPQ."""
    resolve(args)
    from model.training import distributed

    dev = distributed.use_device(args.device)  # the one choice every loop below trains on (UserError without CUDA)
    if not args.quiet and distributed.is_main():  # where it trains, before anything long starts
        import torch

        name = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
        world = distributed.world_size()
        ranks = f", {world} processes" if world > 1 else ""
        print(f"train: {args.method} on {dev}{name}{ranks}", file=sys.stderr)
    if args.method == "lts":
        return cmd_train_lts(args)
    if args.method == "bmpq":
        return cmd_train_bmpq(args)
    if args.method == "vertical":
        return cmd_train_vertical(args)
    from model.runs.rundir import history_file, plot_file, ticket_widths_supported

    out = Path(args.run_dir or args.out)
    result, _ = train_ticket(args, out)
    model, history, config = result.ticket_model, result.history, result.config
    rows = [(f"iter {r.iteration}: {r.avg_bits:6.2f} bits", r.accuracy) for r in history]
    title = f"{config.schedule.label}, PACT-{config.act_bits} (test accuracy)"
    float_acc = result.float_accuracy
    print_table(([("float", float_acc)] if float_acc is not None else []) + rows, title)
    ticket = result.ticket
    print(f"\nticket: iteration {ticket.iteration} ({result.ticket_rule}), {ticket.avg_bits:.2f} average "
          f"weight bits, test accuracy {ticket.accuracy:.4f}")
    print(f"resumed: {'true' if result.resumed else 'false'}")
    if not ticket_widths_supported(model):
        print("note: the ticket has 1- or 2-bit weights; `build.py export` refuses it (the accelerator runs "
              "0/4/8/16/32-bit weights)", file=sys.stderr)
    print(f"wrote {out / 'ticket.pt'}, {out / history_file(config)}, {out / plot_file(config)} "
          f"(run directory {out})")
    return 0
