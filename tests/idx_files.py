"""Small MNIST-style IDX folders for tests: every file spelling the loader accepts, and learnable images."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

#: File-name spellings: the hyphenated names of the MNIST site, the dotted ones of Kaggle and some mirrors.
#: Background noise of :func:`learnable_images`: pixels 0..NOISE-1 (with 60 a 784-8-10 MLP learned little in a few
#: epochs; the lit block adds 180).
NOISE = 20
SPELLINGS = ("hyphen", "dot")


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic ``00 00 08 ndim``, big-endian int32 sizes, then the bytes row-major."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def idx_name(prefix: str, kind: str, spelling: str = "hyphen", gz: bool = False) -> str:
    """``train-images-idx3-ubyte``, ``t10k-labels.idx1-ubyte.gz``, ... (``kind`` is images or labels)."""
    ndim = 3 if kind == "images" else 1
    sep = "-" if spelling == "hyphen" else "."
    return f"{prefix}-{kind}{sep}idx{ndim}-ubyte" + (".gz" if gz else "")


def learnable_images(labels: np.ndarray, rng: np.random.Generator, side: int = 28) -> np.ndarray:
    """``side x side`` uint8 images a tiny MLP can learn: class ``k`` lights block ``k`` of a 4x4 grid of
    blocks (plus :data:`NOISE` everywhere), so the classes are linearly separable."""
    n = len(labels)
    images = rng.integers(0, NOISE, size=(n, side, side), dtype=np.uint8)
    block = side // 4
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        images[i, r * block:(r + 1) * block, c * block:(c + 1) * block] += 180
    return images


def write_idx_folder(root: Path, n_train: int = 200, n_test: int = 40, spelling: str = "hyphen", gz: bool = False,
                     side: int = 28, n_classes: int = 10, seed: int = 0) -> Path:
    """The four files of an IDX folder, in one spelling, gzipped or not, with :func:`learnable_images`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        rng.shuffle(labels)
        for kind, array in (("images", learnable_images(labels, rng, side)), ("labels", labels)):
            data = idx_bytes(array)
            (root / idx_name(prefix, kind, spelling, gz)).write_bytes(gzip.compress(data) if gz else data)
    return root
