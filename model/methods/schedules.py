"""The methods the MPQ-tickets paper compares (Sec. 4, Fig. 3, Fig. 8, Table 1), as mask schedules.

Every method is Algorithm 1's loop (:func:`model.methods.imq.iterate`: rewind to ``theta_0`` every iteration,
train, evaluate, update the masks) with its own start mask and update:

======== ============== ===================================================== ======= ==========
method   start mask     update after each iteration                           rate    iterations
======== ============== ===================================================== ======= ==========
imq      all 32         least-``|w|`` ``rho`` of non-zero weights one step     0.3     25
                        down the hierarchy 32/16/8/4/0 (Sec. 3.2)
irq      all 32         the same count chosen at random ("Iterative Random      0.3     25
                        Quantization", Sec. 4)
imp      all 32         least-``|w|`` 20 % of the remaining weights -> 0;       0.2     16
                        kept weights stay 32-bit (IMP, Sec. 3.1 and 4)
irp      all 32         the same count pruned at random (IRP, Sec. 4)           0.2     16
qnn      all ``k``      none: one training run (QNN-k, Sec. 4.2)                --      1
qnn-imp  all ``k``      IMP on a ``k``-bit QNN, kept weights ``k``-bit          0.2     16
                        (QNN-8 IMP for ``k = 8``, Sec. 4.2)
======== ============== ===================================================== ======= ==========

Sec. 4 writes "For IMQ and IRP, we set the quantization rate as 0.3, and repeat for 25 iterations" right
after giving IMP and IRP 0.2 and 16 iterations; IRP there must mean IRQ (IRQ is IMQ "replacing the least weight
magnitude criterion with random choosing"), which is how the defaults here read it. Every method is plotted against the
average weight width with pruned weights counting 0 bits (Fig. 3 and 8): ``32 * density`` for IMP and
IRP, ``k * density`` for QNN-k IMP, ``k`` for QNN-k.

**IMP and IRP are not full precision here.** Sec. 4 runs them "with 32-bit full precision", and its text
on Fig. 5 ("PACT-full IMP") says that its IMP has ReLU activations. Here every method trains the same network, whose
activations are PACT-``k`` (``--act-bits``, PACT-8 in ``bench imq``) and whose kept weights are DoReFa-32.
The reason is that a comparison at the same activation quantizer then measures the mask schedule alone, which the
paper's Fig. 3 / 8 mix with the activations' own cost (Fig. 5 measures that cost apart). A run's full precision
baseline (Table 1's "Full Precision", :func:`model.runs.rundir.float_model`; ReLU for the MLP) is trained beside
them when the run's ``float_baseline`` asks for it, as ``bench imq``'s float MLP is. ``--act-bits 32`` gives IMP
with PACT-32 activations, the paper's "PACT-full IMP".

"Start mask" and "update" are over :func:`model.methods.imq.schedule_layers`: in a conv network its conv layers
("in experiments we only quantize or prune weights of convolutional layers", Fig. 1's caption), the classifier
staying at 32 bits; the rate and the recorded average width are over those weights too. An MLP's layers all take part.

The random methods draw from a ``torch.Generator`` seeded with the run's seed (its state is part of a
run's checkpoint, so a resumed run draws what an uninterrupted one would).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model.data import Split
from model.errors import UserError
from model.export.golden import WIDTHS
from model.methods.imq import (
    HIERARCHIES,
    IterationRecord,
    Progress,
    check_schedule,
    imq_update,
    initial_state,
    iterate,
    prune_update,
    schedule_layers,
)
from model.quant.dorefa import TRAIN_WIDTHS


@dataclass(frozen=True)
class Method:
    """One method of the comparison and its paper defaults.

    Members
    -------
    key : str
        Name on the command line and in run configs (``"imq"``, ...).
    label : str
        Name in plots and tables (``"IMQ"``, ...).
    ticket_name : str
        What Table 1 calls its result (``"MPQ-ticket"``, ``"LTH"``, ...).
    step : {"quantize", "prune", None}
        Mask update: one step down the hierarchy, width -> 0, or none (one training run).
    criterion : {"magnitude", "random", None}
        How the update picks weights (:func:`model.methods.imq.choose`).
    rate : float or None
        Default fraction of the non-zero weights changed per iteration.
    iterations : int
        Default ``N_iter``.
    weight_bits : int or None
        Start width of every weight; ``None``: the user's ``k`` (default :data:`DEFAULT_QNN_BITS`).
    """

    key: str
    label: str
    ticket_name: str
    step: str | None
    criterion: str | None
    rate: float | None
    iterations: int
    weight_bits: int | None


#: Default ``k`` of QNN-k and QNN-k IMP (QNN-8 IMP, Sec. 4.2).
DEFAULT_QNN_BITS = 8

METHODS: dict[str, Method] = {m.key: m for m in (
    Method("imq", "IMQ", "MPQ-ticket", "quantize", "magnitude", 0.3, 25, 32),
    Method("irq", "IRQ", "Random MPQ-ticket", "quantize", "random", 0.3, 25, 32),
    Method("imp", "IMP", "LTH", "prune", "magnitude", 0.2, 16, 32),
    Method("irp", "IRP", "Random LTH", "prune", "random", 0.2, 16, 32),
    Method("qnn", "QNN", "QNN", None, None, None, 1, None),
    Method("qnn-imp", "QNN IMP", "QNN-ticket", "prune", "magnitude", 0.2, 16, None),
)}


def get_method(key: str) -> Method:
    """The :class:`Method` called ``key``; :class:`UserError` naming the allowed keys otherwise."""
    if key not in METHODS:
        raise UserError(f"field 'method' is {key!r}; allowed {tuple(METHODS)}")
    return METHODS[key]


@dataclass(frozen=True)
class Schedule:
    """A method with every hyper-parameter of its mask schedule resolved (see :func:`make_schedule`).

    Members
    -------
    method : str
        Key of :data:`METHODS`.
    rate : float or None
        ``rho`` (quantize) or the pruning rate; ``None`` for ``qnn``.
    iterations : int
        ``N_iter``.
    weight_bits : int
        Start width of every weight.
    hierarchy : str
        ``"paper"`` (32/16/8/4/0) or ``"extended"`` (with 2 and 1, Fig. 6); only IMQ and IRQ use it.
    scope : str
        ``"global"`` or ``"layer"`` ranking (:func:`model.methods.imq.choose`).
    target_avg_bits : float
        Stop at the first iteration whose average width is at most this (0: run all ``iterations``).
    """

    method: str
    rate: float | None
    iterations: int
    weight_bits: int
    hierarchy: str = "paper"
    scope: str = "global"
    target_avg_bits: float = 0.0

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def widths(self) -> tuple[int, ...]:
        """The widths this schedule can produce (the keys of its iterations' width counts)."""
        return tuple(sorted(set(WIDTHS) | set(HIERARCHIES[self.hierarchy]) | {self.weight_bits}))

    @property
    def label(self) -> str:
        """``"IMQ"``, ``"QNN-8"``, ``"QNN-8 IMP"``, ... (with ``k`` for the QNN methods)."""
        if self.method == "qnn":
            return f"QNN-{self.weight_bits}"
        if self.method == "qnn-imp":
            return f"QNN-{self.weight_bits} IMP"
        return self.spec.label + (" (1/2-bit hierarchy)" if self.hierarchy == "extended" else "")


def make_schedule(
    method: str,
    rate: float | None = None,
    iterations: int | None = None,
    weight_bits: int | None = None,
    hierarchy: str = "paper",
    scope: str = "global",
    target_avg_bits: float = 0.0,
) -> Schedule:
    """Resolve a method's defaults (``None`` arguments) and check every value.

    Raises
    ------
    UserError
        Naming the field and its allowed values, if a value is out of range or does not apply to the
        method: ``rate`` for ``qnn``; ``weight_bits`` other than 32 for ``imq``, ``irq``, ``imp``, ``irp``;
        ``iterations`` other than 1 for ``qnn`` (it has no mask update, so more runs would repeat the
        first); ``hierarchy="extended"`` for the pruning methods.
    """
    spec = get_method(method)
    if spec.step is None and rate is not None:
        raise UserError(f"field 'rho' does not apply to method {method!r} (one training run, no mask update)")
    if spec.step is None and iterations not in (None, 1):
        raise UserError(f"field 'iterations' is {iterations!r}; method {method!r} trains once: allowed 1")
    rate = spec.rate if rate is None else rate
    iterations = spec.iterations if iterations is None else iterations
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1):
        raise UserError(f"field 'rho' is {rate!r}; allowed values in (0, 1]")
    check_schedule(iterations, target_avg_bits)
    allowed_bits = tuple(m for m in TRAIN_WIDTHS if m)
    if spec.weight_bits is not None:
        if weight_bits not in (None, spec.weight_bits):
            raise UserError(f"field 'weight_bits' is {weight_bits!r}; method {method!r} starts from "
                            f"{spec.weight_bits}-bit weights (use qnn or qnn-imp for k-bit weights)")
        weight_bits = spec.weight_bits
    elif weight_bits is None:
        weight_bits = DEFAULT_QNN_BITS
    if isinstance(weight_bits, bool) or weight_bits not in allowed_bits:
        raise UserError(f"field 'weight_bits' is {weight_bits!r}; allowed {allowed_bits}")
    if hierarchy not in HIERARCHIES:
        raise UserError(f"field 'hierarchy' is {hierarchy!r}; allowed {tuple(HIERARCHIES)}")
    if hierarchy != "paper" and spec.step != "quantize":
        raise UserError(f"field 'hierarchy' is {hierarchy!r}; method {method!r} does not quantize "
                        f"step by step: allowed 'paper'")
    if scope not in ("global", "layer"):
        raise UserError(f"field 'scope' is {scope!r}; allowed 'global', 'layer'")
    return Schedule(method, None if rate is None else float(rate), iterations, weight_bits, hierarchy, scope,
                    float(target_avg_bits))


def mask_generator(seed: int) -> torch.Generator:
    """The CPU generator the random methods draw from, seeded with the run's ``seed``."""
    return torch.Generator().manual_seed(seed)


def init_masks(model: nn.Module, schedule: Schedule) -> None:
    """Set the schedule's start width (``m_q = {32}^|theta|``, or ``k`` for QNN-k) on the weights of
    :func:`~model.methods.imq.schedule_layers` (a conv network's conv layers), 32 bits on the other quantized
    layers (a conv network's classifier, which the paper's masks never move: it stays a 32-bit DoReFa weight,
    Eq. 3's ``tanh(w) / max|tanh(w)|`` and Eq. 7 at 32 bits, because the accelerator has no float; the paper
    leaves it unquantized, a float layer)."""
    moving = schedule_layers(model)
    with torch.no_grad():
        for layer in model.quant_layers():
            layer.bit_width.fill_(schedule.weight_bits if any(layer is x for x in moving) else 32)


def mask_update(schedule: Schedule, generator: torch.Generator | None = None) -> Callable[[list[nn.Module]], int]:
    """The update of lines 8-9 for ``schedule``'s method, as ``update(layers) -> changed count``.

    ``generator`` is needed by IRQ and IRP (``mask_generator(seed)``; it advances with every draw).

    Raises
    ------
    ValueError
        If the method is ``qnn`` (no update) or a random method gets no generator.
    """
    spec = schedule.spec
    if spec.step is None:
        raise ValueError(f"method {spec.key!r} has no mask update")
    if spec.criterion == "random" and generator is None:
        raise ValueError(f"method {spec.key!r} chooses at random and needs a generator")
    gen = generator if spec.criterion == "random" else None
    if spec.step == "quantize":
        return functools.partial(imq_update, rho=schedule.rate, scope=schedule.scope,
                                 hierarchy=HIERARCHIES[schedule.hierarchy], criterion=spec.criterion,
                                 generator=gen)
    return functools.partial(prune_update, rate=schedule.rate, scope=schedule.scope, criterion=spec.criterion,
                             generator=gen)


def _no_update(layers: list[nn.Module]) -> int:
    return 0


def run_method(
    model: nn.Module,
    split: Split,
    schedule: Schedule,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    theta_0: dict[str, torch.Tensor] | None = None,
    start: Progress | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    on_iteration: Callable[[IterationRecord, nn.Module], None] | None = None,
    on_step: Callable[[Progress, nn.Module], None] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Progress:
    """Run ``schedule`` on ``model`` (Algorithm 1 with the method's start mask and update).

    Parameters
    ----------
    model : nn.Module
        With ``quant_layers()``. For a fresh run (``start is None``) its masks are set to the start width
        here and ``theta_0`` defaults to its current parameters; to resume, pass the saved ``theta_0``,
        ``start`` and ``generator`` state with the model holding ``start``'s next masks.
    split : Split
        Training and test data (the test images give :attr:`IterationRecord.accuracy`).
    schedule : Schedule
        From :func:`make_schedule`.
    epochs, lr, batch_size, seed
        Training of every iteration (:func:`model.training.loop.train`).
    theta_0 : dict, optional
        Rewind point (:func:`model.methods.imq.initial_state`).
    start : Progress, optional
        Where to go on from.
    generator : torch.Generator, optional
        For IRQ / IRP; default :func:`mask_generator` of ``seed``.
    progress : bool
        tqdm bars.
    on_iteration, on_step : callable, optional
        See :func:`model.methods.imq.iterate`.
    val : (x, y), optional
        Validation images held out of the training data; see :func:`model.methods.imq.iterate`.

    Returns
    -------
    Progress
        History and whether the target was reached; the model holds the last trained network.
    """
    if start is None:
        init_masks(model, schedule)
    if theta_0 is None:
        theta_0 = initial_state(model)
    if schedule.spec.step is None:
        update = _no_update  # one iteration: the loop ends before any update
    else:
        update = mask_update(schedule, generator if generator is not None else mask_generator(seed))
    return iterate(model, split, update, theta_0, schedule.iterations, schedule.target_avg_bits, epochs, lr=lr,
                   batch_size=batch_size, seed=seed, widths=schedule.widths, start=start, progress=progress,
                   desc=schedule.label, on_iteration=on_iteration, on_step=on_step, val=val)

