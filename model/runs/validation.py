"""A validation split carved from the training data, for choosing among trained models without the test set.

Ticket selection (Algorithm 1 line 12, Table 1's "best within q bits", the bench's best ticket) ranks
iterations by accuracy; ranking them by test accuracy and then reporting that accuracy is selection on
the test set (the reported figure is the maximum of noisy estimates, biased upwards). Runs therefore hold
out part of the training images (:func:`carve_validation`), rank on it, and report the test accuracy of
the chosen iteration.

The carve is a seeded permutation of the loaded training images (after ``train_subset``): the first
``n_val`` indices of ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` are the
validation images, the rest stay for training; both keep their original order. ``size`` is a count
(an int >= 1), a fraction of the training images (a float in (0, 1), rounded half up), or 0 for none.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from model.cli import DEFAULT_VAL_SIZE, MAX_SEED, check_val_size
from model.data import Split
from model.errors import UserError

__all__ = ["DEFAULT_VAL_SIZE", "Validation", "carve_validation", "check_val_seed", "check_val_size", "val_count"]


@dataclass(frozen=True, eq=False)
class Validation:
    """Held-out training images.

    Members
    -------
    x, y : torch.Tensor
        Images (flattened like :class:`model.data.Split`'s) and int64 labels.
    indices : torch.Tensor
        Their positions in the loaded training set (ascending).
    seed : int
        Seed of the carve.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    seed: int

    @property
    def size(self) -> int:
        return int(self.y.shape[0])


def check_val_seed(seed) -> int:
    """``seed`` if it is an integer in ``0 .. MAX_SEED``; :class:`UserError` naming ``val_seed`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"field 'val_seed' is {seed!r}; allowed integers 0 .. {MAX_SEED}")
    return seed


def val_count(size: float, n_train: int) -> int:
    """Number of validation images ``size`` asks for out of ``n_train`` (module docstring).

    Raises
    ------
    UserError
        If the count is not in ``1 .. n_train - 1`` (a validation split needs images, and so does training).
    """
    size = check_val_size(size)
    if size == 0:
        return 0
    n_val = size if isinstance(size, int) else math.floor(size * n_train + 0.5)
    if n_train < 2:  # no count works: say so, not "allowed 1 .. 0"
        raise UserError(f"{n_train} training image(s) cannot be split into training and validation images (field "
                        f"'val_size' is {size!r}); use more training images (--train-subset) or no validation split "
                        "(--val-size 0)")
    if not 1 <= n_val <= n_train - 1:
        raise UserError(f"field 'val_size' is {size!r}: {n_val} validation images out of {n_train} training "
                        f"images; allowed 1 .. {n_train - 1} images (or 0 for no validation split)")
    return n_val


def carve_validation(split: Split, size: float, seed: int) -> tuple[Split, Validation | None]:
    """Split ``split``'s training images into training and validation images (module docstring).

    Parameters
    ----------
    split : Split
        The loaded data; its test part is kept as it is.
    size : int or float
        Validation images: a count, a fraction of the training images, or 0 for none.
    seed : int
        Seed of the permutation.

    Returns
    -------
    split, validation
        ``split`` with the validation images removed from its training part (``split`` itself when
        ``size`` is 0), and the :class:`Validation` (``None`` when ``size`` is 0).

    Raises
    ------
    UserError
        From :func:`val_count` and :func:`check_val_seed`.
    """
    seed = check_val_seed(seed)
    n = int(split.x_train.shape[0])
    n_val = val_count(size, n)
    if n_val == 0:
        return split, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    train = dataclasses.replace(split, x_train=split.x_train[train_idx], y_train=split.y_train[train_idx])
    return train, Validation(split.x_train[val_idx], split.y_train[val_idx], val_idx, seed)
