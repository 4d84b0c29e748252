"""What every command of ``build.py`` shares: argument types, default paths and table printing.

Torch-free on purpose: ``build.py --help`` and every ``<command> --help`` build their parsers from the
command modules (``*_command.py`` beside the code each command drives), which import only this module and
the standard library at import time; each command's ``run`` imports the heavy code it drives.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from model.errors import UserError
from model.files import refuse_non_file, refuse_non_folder, write_json
from model.revision import code_revision

DEFAULT_OUT = Path("out")
DEFAULT_BATCH = 2
#: Default learning rates: Adam for IMQ, its baselines and LTS; SGD with momentum for BMPQ (its Sec. IV-A gives
#: a learning rate of 0.1 with step decay and batch 128 but names no optimizer: SGD with momentum is our choice).
ADAM_LR = 3e-3
SGD_LR = 0.05

#: The data sets ``--data`` accepts: :data:`model.data.DATASETS`, repeated here so that the parsers stay torch-free
#: (tests/test_cli.py checks that the two agree).
DATA_SETS = ("digits", "fashion-mnist", "idx", "cifar10", "cifar100")
#: Test images ``sim`` runs through the RTL by default: the digits' whole test set (360), and at most that many
#: of a larger one (Fashion-MNIST's 10,000 would take hours in Icarus); ``--images N`` asks for more.
SIM_DEFAULT_IMAGES = 360

__all__ = [
    "ADAM_LR",
    "DATA_SETS",
    "DEFAULT_BATCH",
    "DEFAULT_OUT",
    "IMAGE_COUNT",
    "MAX_SEED",
    "SEED",
    "SGD_LR",
    "SIM_DEFAULT_IMAGES",
    "act_bits",
    "add_batch_arg",
    "add_data_override_args",
    "add_image_arg",
    "batch_size",
    "bounded",
    "path_text",
    "print_rows",
    "print_table",
    "refuse_taken_outputs",
    "write_json",
    "write_result",
]


def write_result(path, record: dict) -> Path:
    """A command's result file: ``record`` as JSON (:func:`model.files.write_json`, atomic) with the code revision it
    was made with, ``code_revision`` (:mod:`model.revision`, taken before the command's work)."""
    return write_json(path, {**record, "code_revision": code_revision()})


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


def path_text(text: str) -> str:
    """An argparse type of a file or folder option: an empty value (a shell variable that was not set) is refused,
    not taken as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder")
    return text


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


#: The validation size a run holds out unless told otherwise: a tenth of its training images.
DEFAULT_VAL_SIZE = 0.1


def check_val_size(size) -> int | float:
    """``size`` if it is 0, an int >= 1 or a float in (0, 1); :class:`UserError` naming ``val_size`` otherwise."""
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise UserError(f"field 'val_size' is {size!r}; allowed 0 (none), an integer count >= 1, or a fraction "
                        f"in (0, 1)")
    if isinstance(size, int) and size >= 0:
        return size
    if isinstance(size, float) and 0 < size < 1:
        return size
    raise UserError(f"field 'val_size' is {size!r}; allowed 0 (none), an integer count >= 1, or a fraction in (0, 1)")


#: Largest seed: the range numpy's and scikit-learn's generators take (the digits split, the validation split);
#: every seed a run, an image or a checkpoint records is checked against it. Mirrors model.data.MAX_SEED (this
#: module imports no other of its layer; tests/test_cli.py keeps the two equal).
MAX_SEED = 2**32 - 1
#: Seeds: what numpy and scikit-learn accept.
SEED = bounded(int, 0, MAX_SEED)

#: A number of test images; the upper bound is the data set's test count, checked once it is loaded.
IMAGE_COUNT = bounded(int, 1, 10**9)


def act_bits(text: str) -> int:
    """PACT-k activation width: 1..8 (integer codes), or 32 (PACT-32, full precision)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if not (1 <= value <= 8 or value == 32):
        raise argparse.ArgumentTypeError(f"{value} is outside the allowed range 1..8 (or 32 for PACT-32)")
    return value


#: ``--device`` of the training commands: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``;
#: :func:`model.training.distributed.resolve_device` decides what it means in a process.
DEVICE_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def device_spec(text: str) -> str:
    """``--device``: the spelling checked here (torch-free), normalised to lower case; CUDA is checked later."""
    value = text.strip().lower()
    if DEVICE_SPEC.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; allowed {DEVICE_CHOICES}")
    return value


def batch_size(text: str) -> int:
    value = bounded(int, 1, 16)(text)
    if value != 1 and value % 2:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use 1 or an even number up to 16")
    return value


def add_image_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=path_text, default=str(DEFAULT_OUT / "image"),
                   help="image directory (default: out/image)")


def add_batch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=batch_size, default=DEFAULT_BATCH,
                   help="images computed together, sharing each decoded weight on packed DSP48E1 lanes: "
                        f"1 or even up to 16 (default: {DEFAULT_BATCH})")


#: ``--engines`` of the packed multiplier array (``--core array`` of ``synth``, ``sim`` and ``verilog``) when not given.
ARRAY_ENGINES = 16
CORES = ("fc", "array")


def add_core_args(p: argparse.ArgumentParser) -> None:
    """``--core`` and the array's ``--engines``, ``--lanes`` and ``--vertical`` (``synth``, ``sim``, ``verilog``); with
    :func:`add_batch_arg`, whose default becomes None (:func:`check_core_args` resolves it for the fc core)."""
    p.set_defaults(batch=None)
    p.add_argument("--core", choices=CORES, default=None,  # None: not given (sim --system refuses a given one)
                   help="fc: the fully connected core (MLP images); array: the packed multiplier array sized for the "
                        "image (MLP, conv and vertical-layered images) (default: fc)")
    p.add_argument("--engines", type=bounded(int, 1, 64), default=None,
                   help=f"array engines (default: {ARRAY_ENGINES})")
    p.add_argument("--lanes", type=bounded(int, 1, 64), default=None,
                   help="DSP48E1 lanes per engine (default: the fewest whose tile holds the widest output row)")
    p.add_argument("--vertical", action="store_true",
                   help="array: build the version 4 (vertical-layered) path too, which a version 3 image does not "
                        "need (a plane decoder an engine)")


def check_core_args(args, fc_only: tuple[str, ...] = ()) -> None:
    """Refuse the options of one core given with the other (rather than ignore them); resolve ``--batch``.

    ``fc_only`` names further options of the fully connected core (attributes of ``args``, None when not given).
    ``--core`` not given becomes ``fc``.
    """
    args.core = args.core or "fc"
    if args.core == "array":
        given = [f"--{k.replace('_', '-')}" for k in ("batch", *fc_only) if getattr(args, k, None) is not None]
        if given:
            raise UserError(f"{', '.join(given)}: {'an option' if len(given) == 1 else 'options'} of the fully "
                            "connected core (--core fc), not of the array (--core array: one input at a time, "
                            "images loaded at run time, no self-test ROM)")
        return
    given = [f"--{k}" for k in ("engines", "lanes") if getattr(args, k) is not None] + (
        ["--vertical"] if args.vertical else [])
    if given:  # refused rather than ignored: the user meant to size an array
        raise UserError(f"{', '.join(given)}: options of `--core array`; the fully connected core (--core fc, the "
                        "default) has none")
    args.batch = DEFAULT_BATCH if args.batch is None else args.batch


def refuse_taken_outputs(out, files=(), folders=(), *, what: str) -> None:
    """Refuse, before a command writes anything, an output name under ``out`` taken by the wrong kind of entry:
    a folder (or anything else) where ``what`` writes a file (:func:`model.files.refuse_non_file`, as ``export``
    checks its image files), a file where it writes into a folder. Otherwise the command would fail at that
    write, with its first outputs already written and, for ``sim``, only after the whole simulation.
    ``files`` and ``folders`` are names relative to ``out``; the message names the path and what goes there."""
    out = Path(out)
    for name in files:
        refuse_non_file(out / name, f"{what} writes the file {name} there (remove it or choose another output "
                                    "folder)")
    for name in folders:
        refuse_non_folder(out / name, f"{what} writes into the folder {name} there (remove it or choose another "
                                      "output folder)")


def refuse_unused_seed(seed: int | None, where: str) -> None:
    """``--seed`` (a digits split seed, None when not given) for a file that records its data set: refused, not
    ignored (the record keeps its own split). ``where`` names the file."""
    if seed is not None:
        raise UserError(f"--seed {seed}: {where} records its data set, whose split it keeps; --seed chooses the "
                        "digits split of a file that records none (--data / --data-root choose other test images)")


def add_data_override_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--data`` / ``--data-root``: read ``what``'s test images from another data set or folder than recorded."""
    p.add_argument("--data", default=None, choices=DATA_SETS, metavar="NAME",
                   help=f"data set of the test images: {', '.join(DATA_SETS[:-1])} or {DATA_SETS[-1]} (default: "
                        f"the one {what} records, or digits if it records none)")
    p.add_argument("--data-root", type=path_text, default=None,
                   help=f"folder of that data set (default: the one {what} records; Fashion-MNIST's default "
                        f"is /usr/share/datasets/fashion-mnist)")
