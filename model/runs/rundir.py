"""Resumable run directories for the methods of :mod:`model.methods.schedules` (IMQ, IRQ, IMP, IRP, QNN-k, QNN-k IMP).

A run directory holds everything a run needs to go on after an interruption, and its results::

    run.json                  {"format": "mpqaccel-run", "version": 1, "config": {...}, "provenance": {...}}:
                              the config (method, data, arch, every hyper-parameter with defaults resolved, the
                              validation split's size and seed, as RunConfig.to_json() gives them) and the code
                              revision and environment it was started under (model.runs.provenance)
    theta_0.pt                the model config and theta_0, the initial parameters (Algorithm 1 line 1)
    state.pt                  after every iteration: the masks of the next iteration, the history so far,
                              the float baseline's accuracy, the random methods' generator state, the
                              global torch RNG state, and whether the run has finished
    iterations/iter_NNN.pt    the trained model of iteration NNN with its masks (model.runs.checkpoint format)
    {method}_history.json     config, validation split, whether this invocation resumed (``resumed``), float
                              accuracy, history (per iteration: test ``accuracy`` and ``val_accuracy``), ticket
                              (with ``selected_on``): rewritten after every iteration
    {method}.png              accuracy against average weight bits (Fig. 3 / Fig. 8 axes), at the end
    ticket.pt                 the selected ticket (:func:`pick_ticket`), which ``build.py export`` reads

Every file is written atomically (temporary file in the same directory, then ``os.replace``), so an
interruption leaves either the old or the new version. :func:`run` with the same config on the same
directory resumes at the next iteration: every iteration rewinds to the stored ``theta_0`` and trains with
the same seed, and the masks and generator state come from ``state.pt``, so the result equals that of an
uninterrupted run bit for bit. Checkpoints load with ``torch.load(..., weights_only=True)``.

Refusals (:class:`UserError`): a directory whose ``run.json`` holds another config (the message names the
differing fields), or another code revision, torch / numpy version, thread count or process count
(:func:`model.runs.provenance.differences`; a ``run.json`` without ``provenance``, written before revisions
were recorded, counts as another revision): results of two code versions would be mixed and printed as if
fresh. ``run(..., restart=True)`` (``--restart`` on the command line) first removes what a run wrote there
(:func:`clear_run`: the files above and nothing else) and starts afresh.

Validation: the run holds out ``val_size`` of its training images (:mod:`model.runs.validation`, seeded with
``val_seed``), trains on the rest, and records every iteration's validation accuracy next to its test
accuracy; ticket selection ranks by the validation accuracy and the results report the test accuracy.

Under ``torchrun`` every rank runs the same loop (the masks stay equal: same seeds, same updates) and only
rank 0 writes files (:func:`model.training.distributed.is_main`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from model.cli import MAX_SEED
from model.data import DATASETS, FASHION_MNIST_ROOT, Split, class_count, load_dataset
from model.errors import UserError
from model.export.golden import MAX_ACT_BITS, WIDTHS
from model.files import atomic_write, refuse_non_file, refuse_non_folder, write_json
from model.methods.imq import IterationRecord, Progress, initial_state, select_ticket, selection_split
from model.methods.schedules import Schedule, init_masks, make_schedule, mask_generator, run_method
from model.quant import nets
from model.quant.nets import ARCHS, FloatMLP, build_model
from model.quant.pact import FULL_PRECISION_BITS
from model.runs import provenance
from model.runs.checkpoint import run_data_record, save_checkpoint, torch_load
from model.runs.validation import DEFAULT_VAL_SIZE, Validation, carve_validation, check_val_seed, check_val_size
from model.training import distributed
from model.training.loop import evaluate, train

RUN_FORMAT = "mpqaccel-run"
STATE_FORMAT = "mpqaccel-run-state"
THETA_FORMAT = "mpqaccel-run-theta0"
VERSION = 1
RUN_FILE = "run.json"
THETA_FILE = "theta_0.pt"
STATE_FILE = "state.pt"
ITERATION_DIR = "iterations"
TICKET_FILE = "ticket.pt"
#: ``iterations/iter_NNN.pt``: what :func:`clear_run` removes from the iteration folder.
ITERATION_PATTERN = re.compile(r"iter_\d{3,}\.pt")
#: Config fields added after the first run directories were written, with the value those runs had.
LEGACY_CONFIG_DEFAULTS = {"val_size": 0, "val_seed": 0}
#: Activation widths a run may use: integer PACT codes of 1..8 bits, or 32 (PACT-32, clip only).
ACT_BITS = (*range(1, MAX_ACT_BITS + 1), FULL_PRECISION_BITS)


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (and nothing else: progress bars are not here).

    Members
    -------
    method : str
        Key of :data:`model.methods.schedules.METHODS`.
    data : str
        One of :data:`model.data.DATASETS`.
    data_root : str or None
        Data folder (absolute); Fashion-MNIST's defaults to :data:`model.data.FASHION_MNIST_ROOT`.
    train_subset, test_subset : int or None
        Keep only the first this many training / test images.
    arch : str
        ``"mlp"``, ``"resnet20"`` or ``"vgg"`` (:func:`model.quant.nets.build_model`).
    hidden : tuple of int or None
        MLP hidden sizes (``None`` for the conv nets).
    act_bits : int
        PACT-k activation width: 1..8 or 32.
    rho, iterations, weight_bits, hierarchy, scope, target_avg_bits
        The mask schedule (:class:`model.methods.schedules.Schedule`), defaults resolved; ``rho`` is the pruning rate
        for the pruning methods.
    epochs, lr, batch_size, seed
        Training of every iteration (:func:`model.training.loop.train`); ``seed`` also seeds ``theta_0``, the
        digits split and the random methods' generator.
    float_baseline : bool
        Also train the dense float network once (FloatMLP for the MLP; see :func:`float_model`).
    val_size : int or float
        Validation images held out of the training images (:mod:`model.runs.validation`): a count, a
        fraction in (0, 1), or 0 for none (ticket selection then ranks by test accuracy).
    val_seed : int
        Seed of the validation carve.
    """

    method: str
    data: str = "digits"
    data_root: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    arch: str = "mlp"
    hidden: tuple[int, ...] | None = (64,)
    act_bits: int = 4
    rho: float | None = None
    iterations: int = 1
    weight_bits: int = 32
    hierarchy: str = "paper"
    scope: str = "global"
    target_avg_bits: float = 0.0
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    float_baseline: bool = True
    val_size: int | float = DEFAULT_VAL_SIZE
    val_seed: int = 0

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.method, self.rho, self.iterations, self.weight_bits, self.hierarchy, self.scope,
                        self.target_avg_bits)

    def to_json(self) -> dict:
        data = asdict(self)
        data["hidden"] = None if self.hidden is None else list(self.hidden)
        return data

    @classmethod
    def from_json(cls, data: dict, where: str) -> RunConfig:
        """Rebuild from :meth:`to_json`'s dict and check it with :func:`make_run_config`.

        Fields of :data:`LEGACY_CONFIG_DEFAULTS` missing from an older file take the value those runs had.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise UserError(f"{where}: field 'config' is a {type(data).__name__}; expected an object with the keys "
                            f"{sorted(names)}")
        # (the keys are named as the file has them: a legacy default is not one the file gave)
        missing = sorted(names - set(data) - set(LEGACY_CONFIG_DEFAULTS))
        unknown = sorted(set(data) - names)
        wrong = [f"{what} {keys}" for what, keys in (("lacks the keys", missing), ("has unknown keys", unknown))
                 if keys]
        if wrong:
            raise UserError(f"{where}: field 'config' {'; '.join(wrong)}; expected the keys {sorted(names)}")
        data = {**{k: v for k, v in LEGACY_CONFIG_DEFAULTS.items() if k not in data}, **data}
        hidden = data.pop("hidden")
        if hidden is not None and (not isinstance(hidden, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hidden)):
            raise UserError(f"{where}: field 'config.hidden' is {hidden!r}; expected null or a list of integers "
                            "(the MLP's hidden sizes)")
        try:
            return make_run_config(**data, hidden=None if hidden is None else tuple(hidden))
        except (UserError, TypeError) as exc:
            raise UserError(f"{where}: {exc}") from None


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"field {name!r} is {value!r}; allowed integers >= 1" + (" or none" if allow_none else ""))
    return value


def make_run_config(
    method: str,
    data: str = "digits",
    data_root: str | os.PathLike | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    arch: str = "mlp",
    hidden: tuple[int, ...] | None = (64,),
    act_bits: int = 4,
    rho: float | None = None,
    iterations: int | None = None,
    weight_bits: int | None = None,
    hierarchy: str = "paper",
    scope: str = "global",
    target_avg_bits: float = 0.0,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    float_baseline: bool = True,
    val_size: float = DEFAULT_VAL_SIZE,
    val_seed: int = 0,
) -> RunConfig:
    """A checked :class:`RunConfig` with the method's defaults filled in (:func:`model.methods.schedules.make_schedule`).

    ``data_root`` becomes an absolute path (Fashion-MNIST's default is filled in), ``hidden`` is dropped
    for the conv nets, so that the same run asked for in two ways has one config. ``val_size`` (default a
    tenth of the training images) and ``val_seed`` define the validation split
    (:mod:`model.runs.validation`); whether it fits the training images is checked when the data is loaded.

    Raises
    ------
    UserError
        Naming the field and the allowed values.
    """
    schedule = make_schedule(method, rate=rho, iterations=iterations, weight_bits=weight_bits,
                             hierarchy=hierarchy, scope=scope, target_avg_bits=target_avg_bits)
    if data not in DATASETS:
        raise UserError(f"field 'data' is {data!r}; allowed {DATASETS}")
    if data == "fashion-mnist" and data_root is None:
        data_root = FASHION_MNIST_ROOT
    if data_root is not None:
        data_root = str(Path(data_root).expanduser().resolve())
    if arch not in ARCHS:
        raise UserError(f"field 'arch' is {arch!r}; allowed {ARCHS}")
    if arch == "mlp":
        if not isinstance(hidden, list | tuple) or not hidden:
            raise UserError(f"field 'hidden' is {hidden!r}; allowed a non-empty list of sizes for the MLP")
        hidden = tuple(_positive_int("hidden", h) for h in hidden)
    else:
        hidden = None
    if isinstance(act_bits, bool) or act_bits not in ACT_BITS:
        raise UserError(f"field 'act_bits' is {act_bits!r}; allowed 1..{MAX_ACT_BITS} or {FULL_PRECISION_BITS}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise UserError(f"field 'lr' is {lr!r}; allowed numbers > 0")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"field 'seed' is {seed!r}; allowed integers 0 .. {MAX_SEED}")
    if not isinstance(float_baseline, bool):
        raise UserError(f"field 'float_baseline' is {float_baseline!r}; allowed true, false")
    return RunConfig(
        method=schedule.method, data=data, data_root=data_root,
        train_subset=_positive_int("train_subset", train_subset, allow_none=True),
        test_subset=_positive_int("test_subset", test_subset, allow_none=True),
        arch=arch, hidden=hidden, act_bits=act_bits, rho=schedule.rate, iterations=schedule.iterations,
        weight_bits=schedule.weight_bits, hierarchy=schedule.hierarchy, scope=schedule.scope,
        target_avg_bits=schedule.target_avg_bits, epochs=_positive_int("epochs", epochs), lr=float(lr),
        batch_size=_positive_int("batch_size", batch_size), seed=seed, float_baseline=float_baseline,
        val_size=check_val_size(val_size), val_seed=check_val_seed(val_seed),
    )


# ------------------------------------------------------------------------------------------ files
def _torch_save(path: Path, payload: dict) -> Path:
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def _torch_load(path: Path, expected_format: str) -> dict:
    payload = torch_load(path, f"{expected_format} file")
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise UserError(f"{path}: field 'format' is not {expected_format!r}")
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: field 'version' is {payload.get('version')!r}; supported: {VERSION}")
    return payload


def _read_run_file(run_dir: str | os.PathLike) -> tuple[dict, RunConfig]:
    """``run_dir/run.json`` as a dict and its checked :class:`RunConfig` (errors as :func:`read_run_config`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: {'is a file, not a' if run_dir.exists() else 'no such'} run directory (runs are "
                        "made by `build.py train --method imq|irq|imp|irp|qnn|qnn-imp --run-dir DIR`)")
    path = run_dir / RUN_FILE
    refuse_non_file(path, "a run directory's run.json is the file `train` writes there")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory: it has no {RUN_FILE} (runs are made by "
                        f"`build.py train --method imq|irq|imp|irp|qnn|qnn-imp --run-dir DIR`)")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != RUN_FORMAT:
        raise UserError(f"{path}: field 'format' is not {RUN_FORMAT!r}; this is not an mpqaccel run")
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: field 'version' is {payload.get('version')!r}; supported: {VERSION}")
    return payload, RunConfig.from_json(payload.get("config"), str(path))


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The :class:`RunConfig` stored in ``run_dir/run.json``.

    Raises
    ------
    UserError
        If ``run_dir`` is not a directory, has no ``run.json``, or the file is not a run config.
    """
    return _read_run_file(run_dir)[1]


def read_provenance(run_dir: str | os.PathLike) -> dict | None:
    """The ``provenance`` stored in ``run_dir/run.json`` (:func:`model.runs.provenance.provenance`); ``None`` for
    a run written before revisions were recorded. Errors as :func:`read_run_config`."""
    stored = _read_run_file(run_dir)[0].get("provenance")
    return stored if isinstance(stored, dict) else None


#: How every refusal to resume says how to start afresh.
RESTART_HINT = ("start it afresh with --restart (`build.py train`, `demo`, `bench imq` and `bench conv` take it; "
                "`restart=True` from Python), which removes what the run wrote there, or choose another run directory "
                "(--run-dir, or --out)")


def open_run(run_dir: str | os.PathLike, config: RunConfig) -> bool:
    """Make ``run_dir`` a run of ``config`` under the current provenance, or check that it already is one.

    A new run's ``run.json`` records the config and :func:`model.runs.provenance.provenance`.

    Returns
    -------
    bool
        Whether the directory already held this run (so it is resumed).

    Raises
    ------
    UserError
        If the stored config differs (the message names every differing field with both values), or the
        stored provenance does (another code revision, torch / numpy version, thread or process count, or
        none recorded), or there is no ``run.json`` but ``theta_0.pt`` or ``state.pt`` is there; the
        message says how to start afresh (:data:`RESTART_HINT`).
    """
    run_dir = Path(run_dir)
    # Every file the run writes, checked before it trains: a folder at one of those names would end a run (or
    # a resumed run's last iteration) at its write, the other files already rewritten.
    for name in (TICKET_FILE, history_file(config), plot_file(config)):
        refuse_non_file(run_dir / name, f"the run writes its {name} there (remove it or choose another run directory)")
    refuse_non_folder(run_dir / ITERATION_DIR, "the run writes each iteration's checkpoint into it (remove it or "
                      "choose another run directory)")
    if (run_dir / RUN_FILE).exists():
        payload, stored = _read_run_file(run_dir)
        old, new = stored.to_json(), config.to_json()
        diff = [k for k in new if old[k] != new[k]]
        if diff:
            pairs = ", ".join(f"{k}: stored {old[k]!r}, asked {new[k]!r}" for k in diff)
            raise UserError(f"{run_dir / RUN_FILE}: this run directory holds another run ({pairs}); resume it "
                            f"with the stored values, or {RESTART_HINT}")
        stored_provenance = payload.get("provenance")
        changed = provenance.differences(stored_provenance, provenance.provenance())
        if changed:
            if stored_provenance is None:
                what = "field 'provenance' is missing (the run predates revision records)"
            elif not isinstance(stored_provenance, dict):
                what = f"field 'provenance' is {stored_provenance!r}, not an object"
            else:
                what = "; ".join(changed)
            raise UserError(f"{run_dir / RUN_FILE}: this run was made under another code revision or environment "
                            f"({what}); resuming it would mix results of two versions: {RESTART_HINT}")
        return True
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory")
    for name in (THETA_FILE, STATE_FILE):  # --restart removes files only: a folder there would refuse forever
        refuse_non_file(run_dir / name, "remove it to start the run over")
    orphans = [n for n in (THETA_FILE, STATE_FILE) if (run_dir / n).exists()]
    if orphans and distributed.is_main():  # rank 0 writes run.json before anything else, so no race there
        raise UserError(f"{run_dir}: holds {', '.join(orphans)} but no {RUN_FILE}, so nothing says which run or "
                        f"code revision made them; {RESTART_HINT}")
    if distributed.is_main():
        write_json(run_dir / RUN_FILE, {"format": RUN_FORMAT, "version": VERSION, "config": config.to_json(),
                                        "provenance": provenance.provenance()})
    return False


def run_files(run_dir: str | os.PathLike, method: str | None) -> list[Path]:
    """The files a run of ``method`` writes in ``run_dir`` that exist now (the module docstring's list, plus
    temporary files an interrupted atomic write left behind), ``run.json`` last; ``method`` ``None``: only the
    files whose names do not depend on the method."""
    run_dir = Path(run_dir)
    names = [THETA_FILE, STATE_FILE, TICKET_FILE, *([f"{method}_history.json", f"{method}.png"] if method else [])]
    found = [run_dir / n for n in names if (run_dir / n).is_file()]
    found += sorted(p for n in [*names, RUN_FILE] for p in run_dir.glob(f".{n}.*.tmp") if p.is_file())
    iterations = run_dir / ITERATION_DIR
    if iterations.is_dir():
        found += sorted(p for p in iterations.iterdir() if p.is_file() and (
            ITERATION_PATTERN.fullmatch(p.name) or (p.name.startswith(".iter_") and p.name.endswith(".tmp"))))
    # run.json goes last: a removal cut short leaves a directory that still says which run it holds.
    return found + ([run_dir / RUN_FILE] if (run_dir / RUN_FILE).is_file() else [])


def clear_run(run_dir: str | os.PathLike, method: str | None = None) -> list[Path]:
    """Remove what a run wrote in ``run_dir`` (:func:`run_files`) so that a run can start afresh there.

    The method whose history and plot go is the one ``run.json`` names, or ``method`` if there is no
    ``run.json`` (left-over run files without it). Nothing else is touched: other files (a demo's image,
    notes) stay, and so does the folder. Only rank 0 removes files under ``torchrun``.

    Returns
    -------
    list of Path
        The files removed.

    Raises
    ------
    UserError
        If ``run.json`` exists but is not an mpqaccel run (then nothing is removed: the folder may belong
        to something else).
    """
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).exists():
        method = read_run_config(run_dir).method
    removed = run_files(run_dir, method)
    if distributed.is_main():
        for path in removed:
            path.unlink(missing_ok=True)
        iterations = run_dir / ITERATION_DIR
        if iterations.is_dir() and not any(iterations.iterdir()):
            iterations.rmdir()
    return removed


# ------------------------------------------------------------------------------------------ model, data
def load_data(config: RunConfig, fit: bool = False) -> tuple[Split, Validation | None]:
    """The run's data: what it trains and tests on, and its validation images (``fit``: subsets larger than the
    data set are refused, as :func:`model.data.load_dataset` says; ``train`` asks for it, the benches do not).

    :func:`model.data.load_dataset` (the digits' split is seeded with the run's seed), then
    :func:`model.runs.validation.carve_validation` takes ``val_size`` of the training images out (seeded
    with ``val_seed``).

    Raises
    ------
    UserError
        If the data cannot be loaded or ``val_size`` does not fit the training images.
    """
    root = None if config.data == "digits" else config.data_root
    split = load_dataset(config.data, root, config.train_subset, config.test_subset, seed=config.seed, fit=fit)
    return carve_validation(split, config.val_size, config.val_seed)


def validation_json(config: RunConfig, split: Split, val: Validation | None) -> dict | None:
    """What the results record about the validation split: images, seed, the requested size, training images."""
    if val is None:
        return None
    return {"size": val.size, "seed": val.seed, "requested": config.val_size,
            "train_images": int(split.x_train.shape[0])}


def n_classes_of(config: RunConfig, split: Split) -> int:
    """:func:`model.data.class_count` of the run's data set."""
    return class_count(config.data, split)


def model_config(config: RunConfig, split: Split) -> dict:
    """The :func:`model.quant.nets.build_model` config of the run's quantized network."""
    return nets.model_config(config.arch, split, config.hidden, n_classes_of(config, split), config.act_bits)


def float_model(config: RunConfig, split: Split) -> tuple[nn.Module, str]:
    """The dense full-precision baseline and its description (Table 1's "Full Precision").

    The MLP's is :class:`model.quant.nets.FloatMLP` (``nn.Linear`` and ReLU). The conv nets have no float twin
    in :mod:`model.quant.nets`, so theirs is the same net with 32-bit weights everywhere and PACT-32 activations
    and input: full precision, but with PACT's learnable clip instead of ReLU (the paper's "PACT-full",
    Fig. 5, which it finds significantly below ReLU).
    """
    n_classes = n_classes_of(config, split)
    if config.arch == "mlp":
        model = FloatMLP(int(split.x_train.shape[1]), tuple(config.hidden), n_classes)
        return model, "FloatMLP (nn.Linear + ReLU)"
    model = build_model({**model_config(config, split), "act_bits": FULL_PRECISION_BITS,
                         "input_bits": FULL_PRECISION_BITS})
    return model, f"{config.arch} with 32-bit weights and PACT-32 (PACT-full)"


def _checkpoint_model(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`model.runs.checkpoint.save_checkpoint` without the hardware's width check.

    (It reads the iterations of any run; :func:`model.runs.checkpoint.load_checkpoint` also checks a checkpoint
    that a user names, including the extended hierarchy's 1- and 2-bit widths, which `export` then refuses.)
    """
    payload = torch_load(path)
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise UserError(f"{path}: not an mpqaccel checkpoint (fields 'config', 'state_dict')")
    try:
        model = build_model(payload["config"])
        model.load_state_dict(payload["state_dict"])
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, AttributeError) as exc:  # what load_state_dict raises on a mismatch
        raise UserError(f"{path}: field 'state_dict' does not fit the model ({str(exc)[:160]})") from None
    return model, payload.get("meta", {})


def iteration_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    """``run_dir/iterations/iter_NNN.pt``: the trained model of one iteration."""
    return Path(run_dir) / ITERATION_DIR / f"iter_{iteration:03d}.pt"


def load_iteration(run_dir: str | os.PathLike, iteration: int) -> nn.Module:
    """The trained model of ``iteration`` with its masks (widths 1 and 2 included)."""
    path = iteration_path(run_dir, iteration)
    if not path.is_file():
        raise UserError(f"{path}: no such iteration checkpoint")
    return _checkpoint_model(path)[0]


# ------------------------------------------------------------------------------------------ state
def record_json(record: IterationRecord) -> dict:
    """An iteration as the history JSON holds it: ``accuracy`` is the test accuracy, ``val_accuracy`` the
    validation accuracy (``null`` without a validation split)."""
    return {"iteration": record.iteration, "avg_bits": record.avg_bits, "accuracy": record.accuracy,
            "val_accuracy": record.val_accuracy, "width_counts": {str(k): v for k, v in record.width_counts.items()}}


def record_from_json(data: dict) -> IterationRecord:
    """Inverse of :func:`record_json` (histories written before validation splits have no ``val_accuracy``).

    Raises ``TypeError`` for a record that is not an object and ``ValueError`` naming the field for a value out
    of its range (iteration >= 0, average bits in [0, 32], accuracies in [0, 1]); the callers name the file.
    """
    if not isinstance(data, dict):
        raise TypeError(f"an iteration record is {data!r}; expected an object with 'iteration', 'avg_bits', ...")
    if not isinstance(data.get("width_counts"), dict):
        raise TypeError(f"iteration record field 'width_counts' is {data.get('width_counts')!r}; expected an object "
                        "{width: count}")
    val = data.get("val_accuracy")
    record = IterationRecord(int(data["iteration"]), float(data["avg_bits"]), float(data["accuracy"]),
                             {int(k): int(v) for k, v in data["width_counts"].items()},
                             None if val is None else float(val))
    for field, value, lo, hi in (("iteration", record.iteration, 0, math.inf), ("avg_bits", record.avg_bits, 0, 32),
                                 ("accuracy", record.accuracy, 0, 1), ("val_accuracy", record.val_accuracy, 0, 1)):
        if value is not None and not lo <= value <= hi:  # NaN fails too
            raise ValueError(f"iteration record field {field!r} is {value!r}; allowed [{lo}, {hi}]")
    return record


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.endswith("bit_width")}


@dataclass
class _State:
    progress: Progress
    float_accuracy: float | None
    masks: dict[str, torch.Tensor]
    generator_state: torch.Tensor
    rng_state: torch.Tensor
    float_val_accuracy: float | None = None


def _save_state(run_dir: Path, config: RunConfig, state: _State) -> None:
    if not distributed.is_main():
        return
    _torch_save(run_dir / STATE_FILE, {
        "format": STATE_FORMAT, "version": VERSION, "config": config.to_json(),
        "history": [record_json(r) for r in state.progress.history], "finished": state.progress.finished,
        "reached_target": state.progress.reached_target, "float_accuracy": state.float_accuracy,
        "float_val_accuracy": state.float_val_accuracy, "masks": state.masks, "generator_state": state.generator_state, "rng_state": state.rng_state,
    })


def _load_state(run_dir: Path, config: RunConfig, model: nn.Module) -> _State | None:
    path = run_dir / STATE_FILE
    refuse_non_file(path, "remove it to start the run over")  # else the run would train again, then fail to save it
    if not path.is_file():
        return None
    payload = _torch_load(path, STATE_FORMAT)
    if payload.get("config") != config.to_json():
        raise UserError(f"{path}: field 'config' differs from {run_dir / RUN_FILE}; the run directory is "
                        f"inconsistent (remove {STATE_FILE} to start the run over)")
    masks = payload.get("masks")
    expected = _masks(model)
    if not isinstance(masks, dict) or set(masks) != set(expected) or any(
            not isinstance(masks[k], torch.Tensor) or masks[k].shape != v.shape for k, v in expected.items()):
        raise UserError(f"{path}: field 'masks' does not match the run's model")
    try:
        history = [record_from_json(r) for r in payload["history"]]
        for key in ("finished", "reached_target"):
            if not isinstance(payload[key], bool):
                raise UserError(f"{path}: field {key!r} is {payload[key]!r}; allowed true, false")
        progress = Progress(history, payload["finished"], payload["reached_target"])
        float_accuracy = payload["float_accuracy"]
        float_val_accuracy = payload.get("float_val_accuracy")
        for key, value in (("float_accuracy", float_accuracy), ("float_val_accuracy", float_val_accuracy)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 <= value <= 1):
                raise UserError(f"{path}: field {key!r} is {value!r}; allowed null or a number in [0, 1]")
        generator_state, rng_state = payload["generator_state"], payload["rng_state"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: malformed run state ({type(exc).__name__}: {exc})") from None
    # The generators' states as torch saves them: uint8 tensors of the size this torch's CPU generator has.
    like = torch.get_rng_state()
    for key, value in (("generator_state", generator_state), ("rng_state", rng_state)):
        if not isinstance(value, torch.Tensor) or value.dtype != like.dtype or value.shape != like.shape:
            got = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(
                value)[:60]
            raise UserError(f"{path}: field {key!r} is {got}; allowed a uint8 tensor of shape {tuple(like.shape)} "
                            f"(a CPU generator's state; remove {STATE_FILE} to start the run over)")
    return _State(progress, None if float_accuracy is None else float(float_accuracy), masks, generator_state,
                  rng_state, None if float_val_accuracy is None else float(float_val_accuracy))


def _initial_model(run_dir: Path, config: RunConfig, split: Split) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The run's model holding ``theta_0`` (read from ``theta_0.pt``, or made with the run's seed and saved)."""
    mconfig = model_config(config, split)
    path = run_dir / THETA_FILE
    if path.is_file():
        payload = _torch_load(path, THETA_FORMAT)
        if payload.get("config") != mconfig:
            raise UserError(f"{path}: field 'config' is {payload.get('config')!r}; this run's model is {mconfig!r}")
        model = build_model(mconfig)
        theta_0 = initial_state(model)
        stored = payload.get("theta_0")
        if not isinstance(stored, dict) or set(stored) != set(theta_0) or any(
                not isinstance(stored[k], torch.Tensor) or stored[k].shape != v.shape for k, v in theta_0.items()):
            raise UserError(f"{path}: field 'theta_0' does not match the model {mconfig!r}")
        model.load_state_dict(stored, strict=False)
        return model, initial_state(model)
    torch.manual_seed(config.seed)
    model = build_model(mconfig)
    theta_0 = initial_state(model)
    if distributed.is_main():
        _torch_save(path, {"format": THETA_FORMAT, "version": VERSION, "config": mconfig,
                           "theta_0": {k: v.cpu() for k, v in theta_0.items()}})
    return model, theta_0


# ------------------------------------------------------------------------------------------ results
def pick_ticket(history: list[IterationRecord], reached_target: bool) -> tuple[IterationRecord, str]:
    """The ticket a run hands on (``ticket.pt``) and the rule that chose it.

    * ``"target"``: the run stopped at the first iteration at most ``target_avg_bits`` wide; that one
      (the "(PACT-k, q-bit)" ticket of Table 1 with ``q`` the target, as bits only fall).
    * ``"algorithm-1"``: otherwise Algorithm 1 line 12's set (:func:`model.methods.imq.select_ticket`): of the
      iterations more accurate than iteration 0 the narrowest (the project's rule), on the validation images when
      the run has them (:func:`model.methods.imq.selection_split`).
    * ``"last"``: if no iteration beats iteration 0 (or there is only one, as for QNN-k), the last one.
    """
    if not history:
        raise ValueError("no finished iteration")
    if reached_target:
        return history[-1], "target"
    ticket = select_ticket(history)
    return (ticket, "algorithm-1") if ticket is not None else (history[-1], "last")


def history_file(config: RunConfig) -> str:
    return f"{config.method}_history.json"


def plot_file(config: RunConfig) -> str:
    return f"{config.method}.png"


def ticket_json(history: list[IterationRecord], ticket: IterationRecord, rule: str) -> dict:
    """The history JSON's ``ticket``: the record, the rule, and the accuracy the rule ranked by
    (``selected_on``: ``"validation"``, ``"test"``, or ``None`` for the ``"target"`` rule, which ranks nothing)."""
    return {**record_json(ticket), "rule": rule, "selected_on": None if rule == "target" else selection_split(history)}


def results_json(config: RunConfig, state: _State, float_description: str | None,
                 ticket: tuple[IterationRecord, str] | None, context: dict | None = None) -> dict:
    """The history JSON (module docstring); ``context`` adds ``resumed`` and ``validation``."""
    history = state.progress.history
    return {
        "method": config.method, "label": config.schedule.label, "act_bits": config.act_bits,
        "config": config.to_json(), **(context or {}), "float_accuracy": state.float_accuracy,
        "float_val_accuracy": state.float_val_accuracy, "float_model": float_description,
        "history": [record_json(r) for r in history], "finished": state.progress.finished,
        "reached_target": state.progress.reached_target,
        "ticket": None if ticket is None else ticket_json(history, *ticket),
    }


def plot_history(history: list[IterationRecord], path: Path, label: str, float_accuracy: float | None = None,
                 ticket: IterationRecord | None = None) -> Path:
    """Accuracy against average weight width over the iterations (Fig. 3 / Fig. 8 axes), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([max(r.avg_bits, 2 ** -4) for r in history], [100 * r.accuracy for r in history], "o-",
            label=f"{label} iterations")
    if ticket is not None:
        ax.plot([max(ticket.avg_bits, 2 ** -4)], [100 * ticket.accuracy], "r*", ms=12,
                label=f"ticket (iteration {ticket.iteration})")
    if float_accuracy is not None:
        ax.axhline(100 * float_accuracy, color="gray", ls="--", label="float model")
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()
    ax.set_xlabel("average weight bit width (pruned = 0)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, dpi=120, format="png")

    try:
        return atomic_write(Path(path), write)
    finally:
        plt.close(fig)


@dataclass(frozen=True, eq=False)
class RunResult:
    """What :func:`run` returns.

    Members
    -------
    config : RunConfig
    history : list of IterationRecord
    float_accuracy : float or None
        The dense float baseline's test accuracy (if the config asks for one).
    finished, reached_target : bool
    ticket : IterationRecord or None
        The chosen iteration (:func:`pick_ticket`), ``None`` until the run has finished.
    ticket_rule : str or None
    ticket_model : nn.Module or None
        The ticket's trained model with its masks.
    resumed : bool
        Whether the run directory already held (part of) this run.
    float_val_accuracy : float or None
        The float baseline's accuracy on the validation images.
    validation : dict or None
        :func:`validation_json`: the validation split's size and seed (``None`` without one).
    provenance : dict or None
        What ``run.json`` records (:func:`model.runs.provenance.provenance`).
    split : Split or None
        The data the run trained and tested on (:func:`load_data` without the validation images).
    """

    config: RunConfig
    history: list[IterationRecord]
    float_accuracy: float | None
    finished: bool
    reached_target: bool
    ticket: IterationRecord | None
    ticket_rule: str | None
    ticket_model: nn.Module | None
    resumed: bool
    float_val_accuracy: float | None = None
    validation: dict | None = None
    provenance: dict | None = None
    split: Split | None = None


def run(
    config: RunConfig,
    run_dir: str | os.PathLike,
    progress: bool = True,
    on_step=None,
    restart: bool = False,
    fit_subsets: bool = False,
) -> RunResult:
    """Run (or resume, or just re-read) the run ``config`` in ``run_dir``; see the module docstring.

    Order: the validation carve, ``theta_0`` (seeded with ``config.seed``), the float baseline (if asked
    for), then the iterations of :func:`model.methods.schedules.run_method`. After each iteration its trained model goes to
    ``iterations/iter_NNN.pt``, then ``state.pt`` and the history JSON are rewritten; at the end the ticket
    (:func:`pick_ticket`) is copied to ``ticket.pt`` and the plot drawn.

    Parameters
    ----------
    config : RunConfig
        From :func:`make_run_config`.
    run_dir : path
        The run directory (created if missing).
    progress : bool
        tqdm bars.
    on_step : callable, optional
        ``on_step(progress, model)`` after each iteration's checkpoint is written (for callers that watch).
    restart : bool
        Start afresh: :func:`clear_run` first removes what a run wrote in ``run_dir`` (whatever its config
        and provenance), so nothing is resumed.
    fit_subsets : bool
        Refuse subsets larger than the data set (:func:`load_data`'s ``fit``): for the subsets a user gave.

    Raises
    ------
    UserError
        If the directory holds another run or was made under another revision or environment (unless
        ``restart``), a stored file is broken, or the data cannot be loaded.
    """
    run_dir = Path(run_dir)
    split, val = load_data(config, fit=fit_subsets)
    build_model(model_config(config, split))  # a bad model config is an error before run.json is written
    if restart:
        distributed.init()
        clear_run(run_dir, config.method)
        distributed.barrier()  # under torchrun: no rank reads the old run.json after rank 0 removed it
    resumed = open_run(run_dir, config)
    recorded = read_provenance(run_dir) if distributed.is_main() else provenance.provenance()
    # The history JSON says whether this invocation resumed and how the data was split; the provenance stays
    # in run.json and ticket.pt (a data-parallel run's history then equals a single process's).
    context = {"resumed": resumed, "validation": validation_json(config, split, val)}
    val_xy = None if val is None else (val.x, val.y)
    model, theta_0 = _initial_model(run_dir, config, split)
    # Every checkpoint of the run records this data set (the shape from the loaded split, not its files).
    data_record = run_data_record(config.to_json(), model, str(run_dir), image_shape=split.image_shape)
    saved = _load_state(run_dir, config, model)
    if saved is None:
        init_masks(model, config.schedule)
        state = _State(Progress(), None, _masks(model), mask_generator(config.seed).get_state(),
                       torch.get_rng_state())
    else:
        state = saved
        model.load_state_dict(state.masks, strict=False)
        torch.set_rng_state(state.rng_state)
    generator = torch.Generator()
    generator.set_state(state.generator_state)
    float_description = None
    if config.float_baseline:
        float_description = float_model(config, split)[1]
        if state.float_accuracy is None:
            torch.manual_seed(config.seed)
            baseline = float_model(config, split)[0]
            train(baseline, split, config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                  progress=progress)
            state.float_accuracy = evaluate(baseline, split.x_test, split.y_test)
            if val is not None:
                state.float_val_accuracy = evaluate(baseline, val.x, val.y)
            state.rng_state = torch.get_rng_state()
            _save_state(run_dir, config, state)
            if progress and distributed.is_main():
                print(f"float model: test accuracy {state.float_accuracy:.4f}", file=sys.stderr)

    def on_iteration(record: IterationRecord, trained: nn.Module) -> None:
        if distributed.is_main():
            save_checkpoint(iteration_path(run_dir, record.iteration), trained,
                            {"run": config.to_json(), **record_json(record)}, data=data_record)

    def step(prog: Progress, stepped: nn.Module) -> None:
        state.progress = prog
        state.masks = _masks(stepped)
        state.generator_state = generator.get_state()
        state.rng_state = torch.get_rng_state()
        _save_state(run_dir, config, state)
        if distributed.is_main():
            write_json(run_dir / history_file(config), results_json(config, state, float_description, None, context))
        if on_step is not None:
            on_step(prog, stepped)

    schedule = config.schedule
    state.progress = run_method(model, split, schedule, config.epochs, lr=config.lr, batch_size=config.batch_size,
                                seed=config.seed, theta_0=theta_0, start=state.progress, generator=generator,
                                progress=progress, on_iteration=on_iteration, on_step=step, val=val_xy)
    prog = state.progress
    ticket = ticket_model = None
    rule = None
    if prog.finished:
        ticket, rule = pick_ticket(prog.history, prog.reached_target)
        distributed.barrier()  # under torchrun: rank 0 has written iterations/iter_NNN.pt
        ticket_model, _ = _checkpoint_model(iteration_path(run_dir, ticket.iteration))
        if distributed.is_main():
            meta = {"float_accuracy": state.float_accuracy, "history": [record_json(r) for r in prog.history],
                    "data": config.data, "seed": config.seed, "method": config.method,
                    "ticket_iteration": ticket.iteration, "ticket_rule": rule,
                    "ticket_selected_on": ticket_json(prog.history, ticket, rule)["selected_on"],
                    "run": config.to_json(), "provenance": recorded, "validation": context["validation"]}
            save_checkpoint(run_dir / TICKET_FILE, ticket_model, meta, data=data_record)
            write_json(run_dir / history_file(config), results_json(config, state, float_description,
                                                                    (ticket, rule), context))
            plot_history(prog.history, run_dir / plot_file(config), schedule.label, state.float_accuracy, ticket)
    distributed.barrier()  # ticket.pt and the history JSON exist before any rank returns
    return RunResult(config, list(prog.history), state.float_accuracy, prog.finished, prog.reached_target,
                     ticket, rule, ticket_model, resumed, state.float_val_accuracy, context["validation"], recorded,
                     split)


def ticket_widths_supported(model: nn.Module) -> bool:
    """Whether every mask of ``model`` is one of the accelerator's :data:`model.export.golden.WIDTHS`."""
    allowed = torch.tensor(WIDTHS)
    return all(bool(torch.isin(layer.bit_width.cpu(), allowed).all()) for layer in model.quant_layers())

