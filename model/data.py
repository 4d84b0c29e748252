"""Data sets: scikit-learn's 8x8 handwritten digits (bundled with scikit-learn, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .errors import UserError


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split. ``x_*``: float32 ``[N, n_in]`` in ``[0, 1]``; ``y_*``: int64 ``[N]`` labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The 1797 digits as 64 pixels ``/ 16`` in ``[0, 1]``, split stratified by class.

    Parameters
    ----------
    test_fraction : float
        Fraction of the images held out for testing, in ``(0, 1)``; 0.2 gives 360 test images.
    seed : int
        Seed of the split.

    Raises
    ------
    UserError
        If ``test_fraction`` is outside ``(0, 1)``.
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"field 'test_fraction' is {test_fraction!r}; allowed values in (0, 1)")
    digits = load_digits()
    parts = train_test_split(
        digits.data / 16.0, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    x_train, x_test, y_train, y_test = (
        torch.as_tensor(a, dtype=torch.float32 if a.ndim == 2 else torch.int64) for a in parts
    )
    return Split(x_train, y_train, x_test, y_test, name="digits")
