"""Iterative Magnitude Quantization (IMQ) with weight rewinding: paper Sec. 3.2 and Algorithm 1.

Each iteration rewinds every parameter (weights, biases, BatchNorm, PACT ``alpha``) to the initial
``theta_0`` but keeps the bit-width masks, trains to a fixed budget, evaluates, and then moves the ``rho``
fraction of non-zero-width weights with the least latent ``|w|`` one step down the hierarchy
(32 -> 16 -> 8 -> 4 -> 0).

``rho`` is a fraction of the weights that are *currently* non-zero, following the text's "choose a
portion of weights with least magnitude and not equal to 0"; Algorithm 1 line 8 writes ``rho |theta|``,
which would exhaust the network after a handful of iterations and leave the paper's 25-iteration schedule
at ``rho = 0.3`` meaningless. IMP's pruning rate is taken as a fraction of the remaining weights too (Sec. 3.1
prunes "the rho percent smallest magnitude weights in |W_t|", the weights of iteration ``t``; the usual reading
of IMP, and the one that keeps 16 iterations at ``rho = 0.2`` meaningful).

The loop itself (:func:`iterate`) takes the mask update (lines 8-9) as an argument, so the baselines of
Sec. 4 (IRQ, IMP, IRP, QNN-8 IMP; :mod:`model.methods.schedules`) run through the same code, and it can start from
a saved :class:`Progress` (:mod:`model.runs.rundir` resumes interrupted runs with it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from model.data import Split
from model.errors import UserError
from model.export.golden import WIDTHS
from model.progress import progress_bar
from model.quant.dorefa import check_widths
from model.quant.layers import QUANT_LAYER_TYPES, QuantConv2d
from model.training.loop import evaluate, train

#: The quantization hierarchy of Sec. 3.2; one IMQ step moves a weight one place to the right.
HIERARCHY: tuple[int, ...] = (32, 16, 8, 4, 0)
#: The hierarchy with 2 and 1 bits that Sec. 3.2 tried first and Fig. 6 compares (worse in the paper).
#: DoReFa trains at these widths; the exporter and the accelerator accept only :data:`model.export.golden.WIDTHS`.
EXTENDED_HIERARCHY: tuple[int, ...] = (32, 16, 8, 4, 2, 1, 0)
#: The two hierarchies by the name the command line and run configs use.
HIERARCHIES: dict[str, tuple[int, ...]] = {"paper": HIERARCHY, "extended": EXTENDED_HIERARCHY}
#: How :func:`choose` picks weights: least latent ``|w|`` (IMQ, IMP) or uniformly at random (IRQ, IRP).
CRITERIA = ("magnitude", "random")
SCOPES = ("global", "layer")


def _next_table(hierarchy: tuple[int, ...]) -> torch.Tensor:
    """``table[m]`` = the width after ``m`` in ``hierarchy`` (0 stays 0); -1 for widths not in it."""
    table = torch.full((33,), -1, dtype=torch.int64)
    for a, b in itertools.pairwise(hierarchy):
        table[a] = b
    table[0] = 0
    return table


_NEXT = {hierarchy: _next_table(hierarchy) for hierarchy in HIERARCHIES.values()}


def halve(widths: torch.Tensor, hierarchy: tuple[int, ...] = HIERARCHY) -> torch.Tensor:
    """Next width down ``hierarchy`` for every element (0 stays 0): Sec. 3.2's "halve the bitwidth".

    Parameters
    ----------
    widths : torch.Tensor
        Integer bit widths, each one of ``hierarchy``.
    hierarchy : tuple of int
        :data:`HIERARCHY` (32, 16, 8, 4, 0) or :data:`EXTENDED_HIERARCHY` (32, 16, 8, 4, 2, 1, 0).

    Raises
    ------
    UserError
        If an element is not in ``hierarchy``, or ``hierarchy`` is neither of the two.
    """
    if hierarchy not in _NEXT:
        raise UserError(f"field 'hierarchy' is {hierarchy!r}; allowed {HIERARCHY} or {EXTENDED_HIERARCHY}")
    check_widths(widths, "bit widths", hierarchy)
    return _NEXT[hierarchy].to(widths.device)[widths.to(torch.int64)]


def average_bits(layers: list[nn.Module]) -> float:
    """Mean bit width over all weights of all ``layers``, pruned weights counting 0 (Fig. 3 and 8's x-axis)."""
    total = sum(int(layer.bit_width.sum()) for layer in layers)
    return total / sum(layer.bit_width.numel() for layer in layers)


def width_counts(layers: list[nn.Module], widths: tuple[int, ...] = WIDTHS) -> dict[int, int]:
    """Number of weights of each width in ``widths``, summed over ``layers``."""
    return {m: sum(int((layer.bit_width == m).sum()) for layer in layers) for m in widths}


def schedule_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose masks Algorithm 1 and its baselines move: a network's conv layers when it has any, else
    every quantized layer (an MLP).

    Fig. 1's caption (Sec. 3.1): "although we demonstrate the example using MLP, in experiments we only quantize
    or prune weights of convolutional layers". So a conv network's fully connected classifier keeps 32 bits (a
    32-bit DoReFa weight, Eq. 3 and 7, where the paper leaves it float: the accelerator has no float)
    (QNN-k's start width too: :func:`model.methods.schedules.init_masks`) through every iteration, and the rate ``rho``
    is a fraction of the conv weights. :attr:`IterationRecord.avg_bits` and ``width_counts`` are over these
    layers too (the average bit-width of the weights the paper quantizes). The whole network's average is
    higher: ResNet-20's 640 classifier weights at 32 bits add about 0.07 bits to a 2.35-bit ticket, the 28 x 28
    SmallVGG's 5,760 (a fifth of its weights) take a 3.36-bit ticket to 9.06.
    """
    layers = model.quant_layers()
    convs = [layer for layer in layers if isinstance(layer, QuantConv2d)]
    return convs or layers


def _check_rate(rate: float, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise UserError(f"field {name!r} is {rate!r}; allowed values in (0, 1]")


def _check_update(rho: float, scope: str) -> None:
    _check_rate(rho, "rho")
    if scope not in SCOPES:
        raise UserError(f"field 'scope' is {scope!r}; allowed 'global', 'layer'")


def choose(
    layers: list[nn.Module],
    rate: float,
    scope: str = "global",
    criterion: str = "magnitude",
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Which weights one iterative step changes: Algorithm 1 line 8 and its random variant (Sec. 4).

    Candidates are the weights whose width is not 0. Their count ``n`` is taken over all layers
    (``scope="global"``, the paper's choice, Fig. 1) or within each layer (``"layer"``); the step picks
    ``k = min(n, max(1, floor(rate * n + 1/2)))`` of them (rounded half up, at least 1 while any remain):

    * ``"magnitude"``: the ``k`` with the least latent full-precision ``|w|``; ties go to the earlier weight
      (layer order, then row-major), as a stable sort gives.
    * ``"random"``: the first ``k`` of ``torch.randperm(n, generator=generator)`` applied to the candidates
      in that same order, so a seeded generator makes the choice reproducible.

    Parameters
    ----------
    layers : list of nn.Module
        Layers with ``weight`` and ``bit_width`` (``QuantLinear``, ``QuantConv2d``).
    rate : float
        Fraction in ``(0, 1]`` of the candidates (``rho`` for IMQ/IRQ, the pruning rate for IMP/IRP).
    scope : {"global", "layer"}
        Rank across all layers or within each.
    criterion : {"magnitude", "random"}
        How to pick.
    generator : torch.Generator, optional
        Required for ``"random"`` (a CPU generator).

    Returns
    -------
    list of torch.Tensor
        One bool tensor per layer, shaped like its weight: ``True`` where the weight was chosen.

    Raises
    ------
    UserError
        If ``rate``, ``scope`` or ``criterion`` is out of range.
    ValueError
        If ``criterion="random"`` and no ``generator`` is given.
    """
    _check_update(rate, scope)
    if criterion not in CRITERIA:
        raise UserError(f"field 'criterion' is {criterion!r}; allowed {CRITERIA}")
    if criterion == "random" and generator is None:
        raise ValueError("criterion 'random' needs a seeded torch.Generator")
    picks = [torch.zeros_like(layer.bit_width, dtype=torch.bool) for layer in layers]
    groups = [list(range(len(layers)))] if scope == "global" else [[i] for i in range(len(layers))]
    with torch.no_grad():
        for group in groups:
            alive = torch.cat([layers[i].bit_width.flatten() != 0 for i in group]).nonzero().flatten()
            n = alive.numel()
            if n == 0:
                continue
            k = min(n, max(1, math.floor(rate * n + 0.5)))
            if criterion == "magnitude":
                magnitude = torch.cat([layers[i].weight.detach().abs().flatten() for i in group])
                order = torch.sort(magnitude[alive], stable=True).indices
            else:
                order = torch.randperm(n, generator=generator).to(alive.device)
            chosen = torch.zeros(sum(layers[i].bit_width.numel() for i in group), dtype=torch.bool,
                                 device=alive.device)
            chosen[alive[order[:k]]] = True
            start = 0
            for i in group:
                size = layers[i].bit_width.numel()
                picks[i] = chosen[start : start + size].view_as(layers[i].bit_width)
                start += size
    return picks


def imq_update(
    layers: list[nn.Module],
    rho: float,
    scope: str = "global",
    hierarchy: tuple[int, ...] = HIERARCHY,
    criterion: str = "magnitude",
    generator: torch.Generator | None = None,
) -> int:
    """Move the chosen ``rho`` fraction of non-zero-width weights one step down ``hierarchy`` (lines 8-9).

    ``criterion="magnitude"`` is IMQ; ``"random"`` with a seeded ``generator`` is IRQ (Sec. 4). See
    :func:`choose` for the count, ``scope`` and the tie rule.

    Returns
    -------
    int
        Number of weights whose width changed. Width-0 weights are never touched.

    Raises
    ------
    UserError
        If ``rho``, ``scope`` or ``criterion`` is out of range, or a width is not in ``hierarchy``.
    """
    picks = choose(layers, rho, scope, criterion, generator)
    with torch.no_grad():
        for layer, pick in zip(layers, picks):
            layer.bit_width.copy_(torch.where(pick, halve(layer.bit_width, hierarchy), layer.bit_width))
    return sum(int(p.sum()) for p in picks)


def prune_update(
    layers: list[nn.Module],
    rate: float,
    scope: str = "global",
    criterion: str = "magnitude",
    generator: torch.Generator | None = None,
) -> int:
    """Set the width of the chosen ``rate`` fraction of the remaining weights to 0 (IMP / IRP, Sec. 3.1, 4).

    The other weights keep their width (32 for IMP and IRP, ``k`` for QNN-k IMP). See :func:`choose`.

    Returns
    -------
    int
        Number of weights pruned.
    """
    _check_rate(rate, "rate")
    picks = choose(layers, rate, scope, criterion, generator)
    with torch.no_grad():
        for layer, pick in zip(layers, picks):
            layer.bit_width.masked_fill_(pick, 0)
    return sum(int(p.sum()) for p in picks)


@dataclass(frozen=True)
class IterationRecord:
    """One iteration after training: its index, mask statistics and accuracies.

    Members
    -------
    iteration : int
    avg_bits : float
        Mean weight width over the weights the schedule quantizes (:func:`schedule_layers`: a conv network's
        conv layers, the paper's average bit-width; every layer of an MLP), pruned weights counting 0. An
        exported image's ``avg_weight_bits`` counts every weight (a conv network's 32-bit classifier too).
    accuracy : float
        Test accuracy: what results report.
    width_counts : dict of int to int
        Weights per width, over the same weights.
    val_accuracy : float or None
        Accuracy on the validation images held out of the training data (:mod:`model.runs.validation`);
        what ticket selection ranks by when every record has one (:func:`selection_accuracies`). ``None``
        without a validation split.
    """

    iteration: int
    avg_bits: float
    accuracy: float
    width_counts: dict[int, int]
    val_accuracy: float | None = None


@dataclass(frozen=True, eq=False)
class IMQResult:
    """Outcome of :func:`run_imq`.

    Members
    -------
    history : list of IterationRecord
        One record per iteration; the last is the returned model.
    state_dict : dict
        The final trained model, masks included (a copy).
    reached_target : bool
        Whether the final model's average width is at most the target.
    """

    history: list[IterationRecord]
    state_dict: dict[str, torch.Tensor]
    reached_target: bool


def selection_split(history: list[IterationRecord]) -> str:
    """Which accuracy ranks ``history``: ``"validation"`` if every record has one, else ``"test"``.

    (A history is all one or all the other; ranking a mix would compare two data sets.)
    """
    return "validation" if history and all(r.val_accuracy is not None for r in history) else "test"


def selection_accuracies(history: list[IterationRecord]) -> dict[int, float]:
    """The accuracy every ranking of ``history`` uses, by iteration (:func:`selection_split`'s).

    Selecting on validation accuracy and reporting test accuracy keeps the reported figure an unbiased
    estimate; selecting on test accuracy (the fallback for runs without a validation split) does not.
    """
    on_validation = selection_split(history) == "validation"
    return {r.iteration: r.val_accuracy if on_validation else r.accuracy for r in history}


def select_ticket(history: list[IterationRecord]) -> IterationRecord | None:
    """Algorithm 1 line 12's set (the iterations more accurate than iteration 0), and from it the one with fewest
    bits: line 12 defines the set and does not say which of it is the ticket; the narrowest is this project's rule
    (the paper's aim: the most compressed ticket that still beats the dense network).

    "More accurate" compares :func:`selection_accuracies` (validation accuracy when the run has a validation
    split). Ties in bits go to the earlier iteration. Returns ``None`` if no later iteration beats iteration 0.
    """
    if not history:
        return None
    score = selection_accuracies(history)
    better = [r for r in history[1:] if score[r.iteration] > score[history[0].iteration]]
    return min(better, key=lambda r: r.avg_bits, default=None)


def best_within(history: list[IterationRecord], max_avg_bits: float) -> IterationRecord | None:
    """Table 1's "(PACT-k, q-bit)" ticket: the most accurate iteration with average width at most ``q``.

    The paper writes "average weight bitwidth below q-bit"; at most (``<=``) here, so that a network exactly at ``q``
    bits (QNN-4 has every weight at 4 bits, 4.0 on average) is in its row, not only in the next wider one.

    Ranked by :func:`selection_accuracies`; ties go to the earlier iteration; ``None`` if no iteration is
    that narrow.
    """
    score = selection_accuracies(history)
    within = [r for r in history if r.avg_bits <= max_avg_bits]
    return max(within, key=lambda r: score[r.iteration], default=None)


def best_of(history: list[IterationRecord]) -> IterationRecord | None:
    """The most accurate iteration by :func:`selection_accuracies` (ties to the earlier one); ``None`` if empty."""
    return best_within(history, math.inf)


def _mask_keys(model: nn.Module) -> set[str]:
    return {f"{name}.bit_width" for name, m in model.named_modules() if isinstance(m, QUANT_LAYER_TYPES)}


def initial_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``theta_0``: a copy of every parameter and buffer of ``model`` except the bit-width masks."""
    masks = _mask_keys(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in masks}


def rewind(model: nn.Module, theta_0: dict[str, torch.Tensor]) -> None:
    """Copy ``theta_0`` back into ``model`` in place, keeping its current masks (Algorithm 1 lines 5-6)."""
    state = model.state_dict()
    if set(theta_0) != set(state) - _mask_keys(model):
        raise ValueError("theta_0 does not match the model's parameters")
    with torch.no_grad():
        for k, v in theta_0.items():
            state[k].copy_(v)


@dataclass
class Progress:
    """Where an iterative run stands: everything :func:`iterate` needs to go on, apart from the model.

    Members
    -------
    history : list of IterationRecord
        The finished iterations; the next one is ``len(history)``.
    finished : bool
        Whether the loop has ended (target reached or last iteration done); the model's masks are then
        those of the last iteration, else those of the next one.
    reached_target : bool
        Whether the last finished iteration's average width is at most the target.
    """

    history: list[IterationRecord] = field(default_factory=list)
    finished: bool = False
    reached_target: bool = False

    @property
    def next_iteration(self) -> int:
        return len(self.history)


def iterate(
    model: nn.Module,
    split: Split,
    update: Callable[[list[nn.Module]], object],
    theta_0: dict[str, torch.Tensor],
    iterations: int,
    target_avg_bits: float,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    widths: tuple[int, ...] = WIDTHS,
    start: Progress | None = None,
    progress: bool = True,
    desc: str = "IMQ",
    on_iteration: Callable[[IterationRecord, nn.Module], None] | None = None,
    on_step: Callable[[Progress, nn.Module], None] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Progress:
    """Algorithm 1's loop with the mask update (lines 8-9) as the argument ``update``.

    Iteration ``k``: rewind to ``theta_0`` keeping the masks (lines 5-6), train ``epochs`` on the training
    images with :func:`model.training.loop.train` (same ``seed`` every iteration, so only the masks differ;
    line 7), record the test accuracy (and the validation accuracy if ``val`` is given), then call
    ``on_iteration(record, model)`` (the model then holds the trained network
    and the masks it was trained with); stop if ``avg_bits <= target_avg_bits`` or ``k`` is the last
    iteration, else ``update(layers)`` on :func:`schedule_layers` (a conv network's conv layers); then call
    ``on_step(progress, model)``, where the model's masks are the ones the next iteration will use. ``model``
    is left holding the last trained network with the masks it was trained with.

    Algorithm 1 read literally records ``m_q^k`` after line 9's update (line 10) and returns
    ``f(x; theta_k* . m_q^k)`` (line 12): the trained weights under the next, narrower masks, a network never
    trained with them. Here each record, and so each ticket, is the trained network with the masks it was trained
    with (the network whose accuracy is recorded), the reading under which the recorded accuracy is the ticket's.

    Parameters
    ----------
    model : nn.Module
        Has a ``quant_layers()`` method; its masks are the current iteration's.
    split : Split
        Training and test data.
    update : callable
        ``update(layers)`` changes the masks in place (e.g. a partial :func:`imq_update`).
    theta_0 : dict
        From :func:`initial_state`.
    iterations : int
        ``N_iter``: the last iteration is ``iterations - 1``.
    target_avg_bits : float
        Stop at the first trained model whose average weight width is at most this.
    epochs, lr, batch_size, seed
        Passed to :func:`model.training.loop.train` in every iteration.
    widths : tuple of int
        The widths :attr:`IterationRecord.width_counts` counts.
    start : Progress, optional
        Go on from here (the model must hold ``start``'s next masks); ``None``: from iteration 0.
    progress : bool
        Show tqdm bars.
    desc : str
        Label of the iteration bar.
    on_iteration, on_step : callable, optional
        Called after each iteration's evaluation and after its mask update.
    val : (x, y), optional
        Validation images held out of ``split``'s training images (:mod:`model.runs.validation`); their
        accuracy goes to :attr:`IterationRecord.val_accuracy`.

    Returns
    -------
    Progress
        ``start`` (updated in place) or a new one.
    """
    state = start if start is not None else Progress()
    moving = schedule_layers(model)  # what the update moves and the records count
    with progress_bar(total=iterations, initial=state.next_iteration, desc=desc, disable=not progress) as bar:
        for k in range(state.next_iteration, iterations):
            if state.finished:
                break
            rewind(model, theta_0)
            train(model, split, epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
            accuracy = evaluate(model, split.x_test, split.y_test)
            val_accuracy = None if val is None else evaluate(model, val[0], val[1])
            record = IterationRecord(k, average_bits(moving), accuracy, width_counts(moving, widths), val_accuracy)
            state.history.append(record)
            bar.update(1)
            bar.set_postfix(avg_bits=f"{record.avg_bits:.2f}", acc=f"{accuracy:.4f}")
            if on_iteration is not None:
                on_iteration(record, model)
            state.reached_target = record.avg_bits <= target_avg_bits
            state.finished = state.reached_target or k == iterations - 1
            if not state.finished:
                update(moving)
            if on_step is not None:
                on_step(state, model)
    return state


def check_schedule(iterations: int, target_avg_bits: float) -> None:
    """Raise :class:`UserError` unless ``iterations >= 1`` and ``0 <= target_avg_bits <= 32``."""
    if isinstance(target_avg_bits, bool) or not isinstance(target_avg_bits, int | float) or not (
        0 <= target_avg_bits <= 32
    ):
        raise UserError(f"field 'target_avg_bits' is {target_avg_bits!r}; allowed values in [0, 32]")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise UserError(f"field 'max_iterations' is {iterations!r}; allowed integers >= 1")


def run_imq(
    model: nn.Module,
    split: Split,
    rho: float = 0.3,
    target_avg_bits: float = 4.0,
    max_iterations: int = 25,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    scope: str = "global",
    hierarchy: tuple[int, ...] = HIERARCHY,
    progress: bool = True,
    on_iteration: Callable[[IterationRecord, nn.Module], None] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> IMQResult:
    """Find an MPQ-ticket with IMQ (Algorithm 1), stopping once the average width is at most the target.

    ``theta_0`` is taken from ``model`` before any training; the masks start as they are in ``model``
    (all 32 for a fresh one). See :func:`iterate` for one iteration; the mask update is
    :func:`imq_update`. For checkpointed, resumable runs of IMQ and the baselines use :mod:`model.runs.rundir`.

    Parameters
    ----------
    model : nn.Module
        Holds quantized layers; it must have a ``quant_layers()`` method.
    split : Split
        Training and test data.
    rho, scope, hierarchy
        See :func:`imq_update`.
    target_avg_bits : float
        Stop at the first trained model whose average weight width is at most this.
    max_iterations : int
        Upper bound on the number of training runs (``N_iter``).
    epochs, lr, batch_size, seed
        Passed to :func:`model.training.loop.train` in every iteration.
    progress : bool
        Show tqdm bars.
    on_iteration : callable, optional
        Called after each iteration's evaluation.
    val : (x, y), optional
        Validation images (see :func:`iterate`).

    Raises
    ------
    UserError
        If ``rho``, ``scope``, ``target_avg_bits`` or ``max_iterations`` is out of range.
    """
    check_schedule(max_iterations, target_avg_bits)
    _check_update(rho, scope)
    widths = tuple(sorted(set(WIDTHS) | set(hierarchy)))
    state = iterate(model, split, lambda layers: imq_update(layers, rho, scope, hierarchy), initial_state(model),
                    max_iterations, target_avg_bits, epochs, lr=lr, batch_size=batch_size, seed=seed,
                    widths=widths, progress=progress, on_iteration=on_iteration, val=val)
    result_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return IMQResult(state.history, result_state, state.reached_target)
