"""Iterative Magnitude Quantization (IMQ) with weight rewinding: paper Sec. 3.2 and Algorithm 1.

Each iteration rewinds every parameter (weights, biases, PACT ``alpha``) to the initial ``theta_0`` but
keeps the bit-width masks, trains to a fixed budget, evaluates, and then halves the widths
(32 -> 16 -> 8 -> 4 -> 0) of the ``rho`` fraction of non-zero-width weights with the least latent ``|w|``.

``rho`` is a fraction of the weights that are *currently* non-zero, following the text's "choose a
portion of weights with least magnitude and not equal to 0"; Algorithm 1 line 8 writes ``rho |theta|``,
which would exhaust the network after a handful of iterations and leave the paper's 25-iteration schedule
at ``rho = 0.3`` meaningless.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from .data import Split
from .errors import UserError
from .golden import WIDTHS
from .layers import QUANT_LAYER_TYPES, QuantLinear
from .quant import check_widths
from .train import evaluate, train

#: The quantization hierarchy of Sec. 3.2; one IMQ step moves a weight one place to the right.
HIERARCHY: tuple[int, ...] = (32, 16, 8, 4, 0)
_NEXT = torch.zeros(33, dtype=torch.int64)
for _a, _b in itertools.pairwise(HIERARCHY):
    _NEXT[_a] = _b


def halve(widths: torch.Tensor) -> torch.Tensor:
    """Next width down the :data:`HIERARCHY` for every element (0 stays 0).

    Raises
    ------
    UserError
        If an element is not one of ``{0, 4, 8, 16, 32}``.
    """
    check_widths(widths, "bit widths")
    return _NEXT[widths.to(torch.int64)]


def average_bits(layers: list[QuantLinear]) -> float:
    """Mean bit width over all weights of all ``layers`` (each weight counts once)."""
    total = sum(int(layer.bit_width.sum()) for layer in layers)
    return total / sum(layer.bit_width.numel() for layer in layers)


def width_counts(layers: list[QuantLinear]) -> dict[int, int]:
    """Number of weights of each width in :data:`model.golden.WIDTHS`, summed over ``layers``."""
    return {m: sum(int((layer.bit_width == m).sum()) for layer in layers) for m in WIDTHS}


def _check_update(rho: float, scope: str) -> None:
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0 < rho <= 1:
        raise UserError(f"field 'rho' is {rho!r}; allowed values in (0, 1]")
    if scope not in ("global", "layer"):
        raise UserError(f"field 'scope' is {scope!r}; allowed 'global', 'layer'")


def imq_update(layers: list[QuantLinear], rho: float, scope: str = "global") -> int:
    """Halve the widths of the ``rho`` fraction of non-zero-width weights with the least ``|w|`` (lines 8-9).

    Parameters
    ----------
    layers : list of QuantLinear
        Layers whose masks are updated in place.
    rho : float
        Quantize ratio in ``(0, 1]``, a fraction of the weights whose width is not 0 (within each layer
        for ``scope="layer"``). The count is rounded half up and is at least 1 while any remain.
    scope : {"global", "layer"}
        Rank the latent full-precision ``|w|`` across all layers (the paper's choice) or within each.

    Returns
    -------
    int
        Number of weights whose width changed. Width-0 weights are never touched; ties in ``|w|`` go to
        the earlier weight (layer order, then row-major), as a stable sort gives.

    Raises
    ------
    UserError
        If ``rho`` or ``scope`` is out of range.
    """
    _check_update(rho, scope)
    groups = [layers] if scope == "global" else [[layer] for layer in layers]
    changed = 0
    with torch.no_grad():
        for group in groups:
            magnitude = torch.cat([layer.weight.detach().abs().flatten() for layer in group])
            alive = torch.cat([layer.bit_width.flatten() != 0 for layer in group]).nonzero().flatten()
            if alive.numel() == 0:
                continue
            k = min(alive.numel(), max(1, math.floor(rho * alive.numel() + 0.5)))
            order = torch.sort(magnitude[alive], stable=True).indices
            chosen = torch.zeros_like(magnitude, dtype=torch.bool)
            chosen[alive[order[:k]]] = True
            start = 0
            for layer in group:
                n = layer.bit_width.numel()
                pick = chosen[start : start + n].view_as(layer.bit_width)
                layer.bit_width.copy_(torch.where(pick, halve(layer.bit_width), layer.bit_width))
                start += n
            changed += k
    return changed


@dataclass(frozen=True)
class IterationRecord:
    """One IMQ iteration after training: its index, mask statistics and test accuracy."""

    iteration: int
    avg_bits: float
    accuracy: float
    width_counts: dict[int, int]


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


def select_ticket(history: list[IterationRecord]) -> IterationRecord | None:
    """Algorithm 1 line 12: among iterations more accurate than iteration 0, the one with fewest bits.

    Returns ``None`` if no later iteration beats iteration 0.
    """
    if not history:
        return None
    better = [r for r in history[1:] if r.accuracy > history[0].accuracy]
    return min(better, key=lambda r: r.avg_bits, default=None)


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
    progress: bool = True,
    on_iteration: Callable[[IterationRecord, nn.Module], None] | None = None,
) -> IMQResult:
    """Find an MPQ-ticket with IMQ (Algorithm 1), stopping once the average width is at most the target.

    ``theta_0`` is taken from ``model`` before any training; the masks start as they are in ``model``
    (all 32 for a fresh one). Iteration ``k``: rewind to ``theta_0`` keeping the masks, train ``epochs``
    with :func:`model.train.train` (same ``seed`` every iteration, so only the masks differ), record the
    test accuracy, call ``on_iteration(record, model)``, stop if ``avg_bits <= target_avg_bits`` (this
    model is the ticket), else :func:`imq_update` (except after the last iteration). ``model`` is left
    holding the last trained network with the masks it was trained with.

    Parameters
    ----------
    model : nn.Module
        Holds :class:`~model.layers.QuantLinear` layers; it must have a ``quant_layers()`` method.
    split : Split
        Training and test data.
    rho, scope
        See :func:`imq_update`.
    target_avg_bits : float
        Stop at the first trained model whose average weight width is at most this.
    max_iterations : int
        Upper bound on the number of training runs (``N_iter``).
    epochs, lr, batch_size, seed
        Passed to :func:`model.train.train` in every iteration.
    progress : bool
        Show tqdm bars.
    on_iteration : callable, optional
        Called after each iteration's evaluation.

    Raises
    ------
    UserError
        If ``rho``, ``scope``, ``target_avg_bits`` or ``max_iterations`` is out of range.
    """
    if not 0 <= target_avg_bits <= 32:
        raise UserError(f"field 'target_avg_bits' is {target_avg_bits!r}; allowed values in [0, 32]")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise UserError(f"field 'max_iterations' is {max_iterations!r}; allowed integers >= 1")
    _check_update(rho, scope)
    layers = model.quant_layers()
    theta_0 = initial_state(model)
    history: list[IterationRecord] = []
    with tqdm(total=max_iterations, desc="IMQ", disable=not progress) as bar:
        for k in range(max_iterations):
            rewind(model, theta_0)
            train(model, split, epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
            accuracy = evaluate(model, split.x_test, split.y_test)
            record = IterationRecord(k, average_bits(layers), accuracy, width_counts(layers))
            history.append(record)
            bar.update(1)
            bar.set_postfix(avg_bits=f"{record.avg_bits:.2f}", acc=f"{accuracy:.4f}")
            if on_iteration is not None:
                on_iteration(record, model)
            reached = record.avg_bits <= target_avg_bits
            if reached or k == max_iterations - 1:
                break  # the model keeps the masks it was trained with
            imq_update(layers, rho, scope)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return IMQResult(history, state, reached)
