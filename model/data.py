"""Data sets: scikit-learn's 8x8 handwritten digits (bundled, no download) and MNIST-style IDX folders.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (``apt-get install -y
dataset-fashion-mnist``), which installs the four gzipped IDX files under :data:`FASHION_MNIST_ROOT`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .errors import UserError

#: Where the Debian package ``dataset-fashion-mnist`` puts its IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: The four IDX files of an MNIST-style folder (each may also be gzipped, with a ``.gz`` suffix).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one unsigned-byte IDX file (magic ``0x0000 08 ndim``, big-endian int32 sizes) as uint8."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from e
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise UserError(
            f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s); expected magic "
            f"00 00 08 {ndim:02x}, found {raw[:4].hex(' ') or 'nothing'}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if len(raw) - head != int(np.prod(shape)):
        raise UserError(
            f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes of data), file has {len(raw) - head}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    """``root / stem`` if it is a file, else ``root / stem.gz``; :class:`UserError` naming both if neither."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{f}[.gz]" for f in IDX_FILES)
    raise UserError(
        f"IDX folder {str(root)!r}: missing {stem!r} (or {stem}.gz); expected the files {expected}"
        + (" (for Fashion-MNIST: apt-get install -y dataset-fashion-mnist)" if str(root) == FASHION_MNIST_ROOT
           else "")
    )


def load_idx_split(
    root: str | Path = FASHION_MNIST_ROOT,
    name: str = "fashion-mnist",
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Split:
    """An MNIST-style IDX folder (MNIST, Fashion-MNIST, KMNIST) as a :class:`Split`.

    Images are flattened row-major to ``[N, rows * cols]`` (784 for 28x28) float32 ``pixel / 255`` in
    ``[0, 1]``, like every other :class:`Split` (``x.view(-1, 1, 28, 28)`` gives the image back); labels
    are int64. The split is the files' own train / t10k split. Each file may be plain or gzipped
    (``name`` or ``name.gz``; the plain one wins if both exist).

    Parameters
    ----------
    root : str or Path
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
        and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
    name : str
        Stored in :attr:`Split.name`.
    train_subset, test_subset : int, optional
        Keep only the first this many training / test images (for quick runs); ``None`` keeps all.

    Raises
    ------
    UserError
        If the folder or a file is missing, a file is not a valid unsigned-byte IDX file, images and labels
        disagree in count, or a subset size is not a positive integer.
    """
    for field, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"field {field!r} is {value!r}; allowed values: None or an integer >= 1")
    root = Path(root)
    if not root.is_dir():
        expected = ", ".join(f"{f}[.gz]" for f in IDX_FILES)
        hint = ""
        if str(root) == FASHION_MNIST_ROOT:
            hint = " (install it with apt-get install -y dataset-fashion-mnist)"
        raise UserError(f"IDX folder {str(root)!r} does not exist{hint}; expected a folder with {expected}")
    parts = []
    for prefix, subset in (("train", train_subset), ("t10k", test_subset)):
        images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
            )
        images, labels = images[:subset], labels[:subset]
        x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
        parts += [x, torch.from_numpy(labels.astype(np.int64))]
    return Split(parts[0], parts[1], parts[2], parts[3], name=name)
