"""Data sets: scikit-learn's 8x8 digits (bundled), MNIST-style IDX folders, CIFAR-10 and CIFAR-100.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (``apt-get install -y
dataset-fashion-mnist``), which installs the four gzipped IDX files under :data:`FASHION_MNIST_ROOT`.
CIFAR-10/100 are in no package registry: the user downloads the official "python version" archives
(https://www.cs.toronto.edu/~kriz/cifar.html) and passes the unpacked folder. :func:`load_dataset` picks
a loader by name. Every :class:`Split` holds flattened images; :func:`augment_batch` is the training-time
augmentation of the CIFAR ResNets.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy._core.multiarray
import numpy._core.numeric
import torch
from torch.nn import functional as F

from model.errors import UserError

#: Largest seed a data record holds: scikit-learn's ``random_state`` range (the digits split), numpy's too.
MAX_SEED = 2**32 - 1

#: Where the Debian package ``dataset-fashion-mnist`` puts its IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: The four IDX files of an MNIST-style folder. Each may also be spelled with a dot before ``idx``
#: (``train-images.idx3-ubyte``, as some mirrors and Kaggle name them) and may be gzipped (``.gz``):
#: :func:`idx_spellings`.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "fashion-mnist", "idx", "cifar10", "cifar100")

#: The folder names of the official CIFAR "python version" archives.
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"

#: ``(C, H, W)`` of a CIFAR image; a row of ``b"data"`` is the R, G, B planes, each row-major 32x32.
CIFAR_IMAGE_SHAPE = (3, 32, 32)

#: Zero pixels added on each side before the random crop of :func:`augment_batch`.
CROP_PADDING = 4


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split of flattened images.

    Members
    -------
    x_train, x_test : torch.Tensor
        float32 ``[N, C*H*W]`` in ``[0, 1]``, each row an image flattened row-major from ``(C, H, W)``.
    y_train, y_test : torch.Tensor
        int64 ``[N]`` labels.
    name : str
        Data set name.
    image_shape : tuple of int
        ``(C, H, W)``; digits ``(1, 8, 8)``, IDX ``(1, rows, cols)``, CIFAR ``(3, 32, 32)``. ``None`` (the
        default, for feature vectors) becomes ``(1, 1, n_features)``.
    augment : bool
        Whether training should pass batches through :func:`augment_batch` (True for CIFAR).

    Raises
    ------
    ValueError
        If ``image_shape`` does not multiply out to the number of features.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    image_shape: tuple[int, int, int] | None = None
    augment: bool = False

    def __post_init__(self):
        n_features = self.x_train.shape[1]
        shape = (1, 1, n_features) if self.image_shape is None else tuple(int(d) for d in self.image_shape)
        if len(shape) != 3 or int(np.prod(shape)) != n_features or self.x_test.shape[1] != n_features:
            raise ValueError(
                f"Split {self.name!r}: image_shape {self.image_shape!r} does not match {n_features} training "
                f"and {self.x_test.shape[1]} test features per image"
            )
        object.__setattr__(self, "image_shape", shape)


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
    # scikit-learn (a second of imports, scipy's among them) only where the digits load: a command on other data,
    # or one that refuses its arguments before it loads any, starts without it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    parts = train_test_split(
        digits.data / 16.0, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    x_train, x_test, y_train, y_test = (
        torch.as_tensor(a, dtype=torch.float32 if a.ndim == 2 else torch.int64) for a in parts
    )
    return Split(x_train, y_train, x_test, y_test, name="digits", image_shape=(1, 8, 8))


def _idx_shape(raw: bytes, path: Path, ndim: int) -> tuple[int, ...]:
    """The sizes in the header of an unsigned-byte IDX file (``raw``: its bytes, or at least its header)."""
    head = 4 + 4 * ndim
    if raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise UserError(
            f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s); expected magic "
            f"00 00 08 {ndim:02x}, found {raw[:4].hex(' ') or 'nothing'}"
        )
    if len(raw) < head:
        raise UserError(f"{path}: header cut short: {len(raw)} bytes, the magic and {ndim} size(s) take {head}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if min(shape) < 1:
        raise UserError(f"{path}: header says shape {shape}; every size must be at least 1 (no images, or empty ones)")
    return shape


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one unsigned-byte IDX file (magic ``0x0000 08 ndim``, big-endian int32 sizes) as uint8."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from e
    shape = _idx_shape(raw, path, ndim)
    head = 4 + 4 * ndim
    size = math.prod(shape)  # Python integers: sizes near 2^31 must not wrap
    if len(raw) - head != size:
        raise UserError(f"{path}: header says shape {shape} ({size} bytes of data), file has {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def idx_spellings(stem: str) -> tuple[str, ...]:
    """The file names that :func:`load_idx_split` accepts for ``stem`` (e.g. ``train-images-idx3-ubyte``),
    in the order it tries them: ``stem``, ``stem.gz``, then the dotted ``train-images.idx3-ubyte`` and
    ``train-images.idx3-ubyte.gz``."""
    dotted = stem.replace("-idx", ".idx")
    return stem, f"{stem}.gz", dotted, f"{dotted}.gz"


def _expected_idx_files() -> str:
    return ", ".join(f"{f}[.gz]" for f in IDX_FILES) + " (or spelled with a dot: train-images.idx3-ubyte[.gz], ...)"


def _find_idx(root: Path, stem: str) -> Path:
    """The first of :func:`idx_spellings` that is a file in ``root``; :class:`UserError` naming them if none."""
    for name in idx_spellings(stem):
        if (root / name).is_file():
            return root / name
    raise UserError(
        f"IDX folder {str(root)!r}: missing {stem!r} (or {', '.join(idx_spellings(stem)[1:])}); expected the "
        f"files {_expected_idx_files()}"
        + (" (for Fashion-MNIST: apt-get install -y dataset-fashion-mnist)" if str(root) == FASHION_MNIST_ROOT
           else "")
    )


def _check_idx_root(root: Path) -> None:
    """:class:`UserError` unless ``root`` is a folder (the messages of :func:`load_idx_split`)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"IDX folder {str(root)!r} is a file; give the folder that holds {_expected_idx_files()}")
    if not root.is_dir():
        expected = _expected_idx_files()
        hint = ""
        if str(root) == FASHION_MNIST_ROOT:
            hint = " (install it with apt-get install -y dataset-fashion-mnist)"
        raise UserError(f"IDX folder {str(root)!r} does not exist{hint}; expected a folder with {expected}")


def read_idx_image_shape(root: str | Path) -> tuple[int, int, int]:
    """``(1, rows, cols)`` from the header of the folder's training images.

    Reads only the 16 header bytes (decompressing no more than that of a ``.gz``), so it is cheap even for
    the 47 MB of Fashion-MNIST.

    Raises
    ------
    UserError
        As :func:`load_idx_split` does, for a missing folder or file or a header that is not an unsigned-byte
        IDX header of 3 dimensions.
    """
    root = Path(root)
    _check_idx_root(root)
    path = _find_idx(root, IDX_FILES[0])
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(16)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from e
    _, rows, cols = _idx_shape(head, path, 3)
    return 1, rows, cols


def idx_image_shape(root: str | Path) -> tuple[int, int, int] | None:
    """:func:`read_idx_image_shape`, or ``None`` if it cannot be read."""
    try:
        return read_idx_image_shape(root)
    except (UserError, OSError):
        return None


def check_idx_image_shape(root: str | Path | None, what: str, why: str, *, pixels: int | None = None,
                          sides: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """Refuse an IDX folder whose images a bench's networks cannot take, before it trains or writes anything.

    Parameters
    ----------
    root : str or Path, optional
        The folder as the benches take it (``--data-root``); ``None`` is :data:`FASHION_MNIST_ROOT`.
    what : str
        Who needs the shape (``"bench lts"``), for the message.
    why : str
        What in it fixes the shape (``"its 784-256-256-10 MLP"``), for the message.
    pixels : int, optional
        The images must have exactly this many pixels (an MLP with a fixed input count).
    sides : (int, int), optional
        Both H and W must lie in ``lo..hi`` (a conv net that halves the image per block).

    Returns
    -------
    tuple of int
        The folder's ``(1, rows, cols)`` (:func:`read_idx_image_shape`, which reads the header only).

    Raises
    ------
    UserError
        Naming ``what``, the folder, the shape found and the shapes allowed; or, for a folder that is missing or
        holds no readable IDX images, the message :func:`load_idx_split` would give after ``what`` and the
        ``--data-root`` that chose the folder.
    """
    folder = Path(root) if root is not None else Path(FASHION_MNIST_ROOT)
    try:
        shape = read_idx_image_shape(folder)
    except UserError as exc:
        raise UserError(f"{what}: {root_option(root, FASHION_MNIST_ROOT)}: {exc}") from None
    _, h, w = shape
    if pixels is not None and h * w != pixels:
        allowed = f"(1, H, W) with H * W = {pixels} pixels, e.g. Fashion-MNIST's (1, 28, 28)"
    elif sides is not None and not (sides[0] <= h <= sides[1] and sides[0] <= w <= sides[1]):
        allowed = f"(1, H, W) with H and W in {sides[0]}..{sides[1]}, e.g. Fashion-MNIST's (1, 28, 28)"
    else:
        return shape
    given = " (--data-root)" if root is not None else " (the default; choose another with --data-root)"
    raise UserError(f"{what}: the data folder {str(folder)!r}{given} holds images of shape {shape}; {why} needs "
                    f"{allowed}")


def load_idx_split(
    root: str | Path = FASHION_MNIST_ROOT,
    name: str = "fashion-mnist",
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Split:
    """An MNIST-style IDX folder (MNIST, Fashion-MNIST, KMNIST) as a :class:`Split`.

    Images are flattened row-major to ``[N, rows * cols]`` (784 for 28x28) float32 ``pixel / 255`` in
    ``[0, 1]``, like every other :class:`Split` (``x.view(-1, 1, 28, 28)`` gives the image back); labels
    are int64. The split is the files' own train / t10k split. Each file may be plain or gzipped, with a
    hyphen or a dot before ``idx`` (:func:`idx_spellings`; the first spelling found wins).

    Parameters
    ----------
    root : str or Path
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
        and ``t10k-labels-idx1-ubyte``, each optionally ``.gz`` and optionally spelled with a dot before
        ``idx`` (``train-images.idx3-ubyte``): :func:`idx_spellings`.
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
    _check_subsets(train_subset, test_subset)
    root = Path(root)
    _check_idx_root(root)
    parts = []
    image_shape = None
    for prefix, subset in (("train", train_subset), ("t10k", test_subset)):
        images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
            )
        if image_shape not in (None, (1, *images.shape[1:])):
            raise UserError(f"{images_path}: images are {images.shape[1:]}, the training images "
                            f"{image_shape[1:]}; both parts must have one image size")
        image_shape = (1, *images.shape[1:])
        images, labels = images[:subset], labels[:subset]
        x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
        parts += [x, torch.from_numpy(labels.astype(np.int64))]
    return Split(parts[0], parts[1], parts[2], parts[3], name=name, image_shape=image_shape)


def _check_subsets(train_subset: int | None, test_subset: int | None) -> None:
    for field, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"field {field!r} is {value!r}; allowed values: None or an integer >= 1")


#: The only globals a CIFAR batch may name: numpy's array reconstructors (under ``numpy.core`` when written
#: by numpy 1, ``numpy._core`` since numpy 2) and ``_codecs.encode`` (bytes in protocol-2 pickles written by
#: Python 3).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): numpy._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): numpy._core.multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): numpy._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): numpy._core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays, and nothing else.

    ``pickle.load`` calls whatever global a file names, so a crafted file runs code; this one resolves
    only :data:`_PICKLE_GLOBALS` and refuses every other global.
    """

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing the global {module}.{name}; a CIFAR batch holds only "
                                         f"numpy arrays, lists, bytes and numbers") from None


def _read_cifar_batch(path: Path, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One official CIFAR pickle: ``b"data"`` uint8 ``[N, 3072]`` and labels ``[N]`` in ``0..n_classes-1``."""
    expected = (f"a pickled dict with b'data' (uint8 [N, 3072]) and {label_key!r} "
                f"(N labels in 0..{n_classes - 1})")
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise UserError(f"{path}: cannot read CIFAR batch ({e})") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError) as e:  # what the unpickler raises for files that are not pickles
        raise UserError(f"{path}: not a CIFAR batch ({type(e).__name__}: {str(e)[:120]}); expected {expected}"
                        ) from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: holds a {type(batch).__name__}; expected {expected}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}  # a Python 3 re-pickle
    missing = [k for k in (b"data", label_key) if k not in batch]
    if missing:
        found = sorted(map(repr, batch))[:6]
        raise UserError(f"{path}: missing key(s) {missing}, found {found}; expected {expected}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: field b'data' is {found}; expected uint8 [N, 3072] (3x32x32 images)")
    labels = np.asarray(batch[label_key])
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise UserError(f"{path}: field {label_key!r} is {labels.dtype} {list(labels.shape)}; expected "
                        f"{data.shape[0]} integer labels, one per image")
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise UserError(f"{path}: field {label_key!r} holds label {int(labels[bad][0])}; "
                        f"allowed 0..{n_classes - 1}")
    return data, labels.astype(np.int64)


def _load_cifar(
    root: str | Path,
    folder: str,
    train_files: tuple[str, ...],
    test_file: str,
    label_key: bytes,
    n_classes: int,
    name: str,
    train_subset: int | None,
    test_subset: int | None,
) -> Split:
    _check_subsets(train_subset, test_subset)
    root = Path(root)
    files = (*train_files, test_file)
    wanted = f"the files {', '.join(files)} of the official python-version archive"
    if not root.is_dir():
        raise UserError(f"{name} folder {str(root)!r} does not exist; expected {folder!r} (holding {wanted}) "
                        f"or its parent")
    base = root / folder if (root / folder).is_dir() else root
    for f in files:
        if not (base / f).is_file():
            raise UserError(f"{name} folder {str(base)!r}: missing {f!r}; expected {wanted}, in "
                            f"{str(root)!r} or in {str(root / folder)!r}")
    parts = []
    for part_files, subset in ((train_files, train_subset), ((test_file,), test_subset)):
        images, labels = [], []
        for f in part_files:  # read batches only as far as the subset needs
            data, y = _read_cifar_batch(base / f, label_key, n_classes)
            images.append(data)
            labels.append(y)
            if subset is not None and sum(len(a) for a in labels) >= subset:
                break
        data, y = np.concatenate(images)[:subset], np.concatenate(labels)[:subset]
        parts += [torch.from_numpy(data.astype(np.float32) / 255.0), torch.from_numpy(y)]
    return Split(parts[0], parts[1], parts[2], parts[3], name=name, image_shape=CIFAR_IMAGE_SHAPE,
                 augment=True)


def load_cifar10_split(
    root: str | Path, train_subset: int | None = None, test_subset: int | None = None
) -> Split:
    """CIFAR-10 from the official ``cifar-10-batches-py`` folder: 50,000 training and 10,000 test images.

    Training images are ``data_batch_1`` .. ``data_batch_5`` in that order, test images ``test_batch``.
    Each image becomes 3072 float32 ``pixel / 255`` in the files' order (R, G, B planes, each row-major
    32x32), so ``x.view(-1, 3, 32, 32)`` gives it back. The split has ``image_shape=(3, 32, 32)`` and
    ``augment=True``. Files are unpickled with ``encoding="bytes"`` by an unpickler that accepts only numpy
    arrays and plain data, then checked for keys, dtypes, shapes and label ranges.

    Parameters
    ----------
    root : str or Path
        The ``cifar-10-batches-py`` folder itself, or the folder that holds it (where the archive was
        unpacked); the subfolder wins if both could apply.
    train_subset, test_subset : int, optional
        Keep only the first this many training / test images; ``None`` keeps all.

    Raises
    ------
    UserError
        If the folder or a file is missing, a file is not a CIFAR batch (or names a global other than
        numpy's array constructors), ``b"data"`` is not uint8 ``[N, 3072]``, ``b"labels"`` is not ``N``
        labels in 0..9, or a subset size is not a positive integer.
    """
    return _load_cifar(root, CIFAR10_FOLDER, tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                       b"labels", 10, "cifar10", train_subset, test_subset)


def load_cifar100_split(
    root: str | Path, train_subset: int | None = None, test_subset: int | None = None
) -> Split:
    """CIFAR-100 from the official ``cifar-100-python`` folder (files ``train`` and ``test``), fine labels.

    Same layout, checks and ``root`` rule as :func:`load_cifar10_split`; labels are ``b"fine_labels"`` in
    0..99 (the 20 coarse labels are not used).

    Raises
    ------
    UserError
        As for :func:`load_cifar10_split`, with labels in 0..99.
    """
    return _load_cifar(root, CIFAR100_FOLDER, ("train",), "test", b"fine_labels", 100, "cifar100",
                       train_subset, test_subset)


def augment_batch(
    x: torch.Tensor,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
    padding: int = CROP_PADDING,
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a flattened batch.

    The MPQ-tickets paper does not state its augmentation; its ResNet-20 CIFAR set-up (Sec. 4) and the
    PACT results it compares with ([3]) follow He et al. (2016, Sec. 4.2): pad 4 pixels on each side, take
    a random crop of the original size, flip it horizontally with probability 1/2. Per image, the crop
    offsets ``(dy, dx)`` are uniform in ``0..2*padding`` and the output pixel ``(i, j)`` is padded pixel
    ``(dy + i, dx + j)``, or ``(dy + i, dx + W - 1 - j)`` when flipped (crop, then flip the crop). Zero is
    black for inputs in ``[0, 1]``.

    Parameters
    ----------
    x : torch.Tensor
        ``[N, C*H*W]`` images flattened row-major from ``(C, H, W)``.
    image_shape : tuple of int
        ``(C, H, W)``, e.g. :attr:`Split.image_shape`.
    generator : torch.Generator
        CPU generator; the only source of randomness, so a given generator state gives the same batch.
        Draws ``N`` row offsets, then ``N`` column offsets, then ``N`` flip bits.
    padding : int
        Pixels of zero padding on each side (the largest shift); 4 in the paper's set-up.

    Returns
    -------
    torch.Tensor
        ``[N, C*H*W]`` augmented images, same dtype and device as ``x``.

    Raises
    ------
    ValueError
        If ``x`` is not ``[N, C*H*W]`` or ``padding`` is negative.
    """
    c, h, w = (int(d) for d in image_shape)
    if x.dim() != 2 or x.shape[1] != c * h * w:
        raise ValueError(f"augment_batch needs [N, {c * h * w}] images for image_shape {tuple(image_shape)}, "
                         f"not {list(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, not {padding!r}")
    n = x.shape[0]
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x.reshape(n, c, h, w), (padding, padding, padding, padding))
    index = (torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :])
    return padded[tuple(i.to(x.device) for i in index)].reshape(n, c * h * w)


def _subset(split: Split, train_subset: int | None, test_subset: int | None) -> Split:
    return dataclasses.replace(split, x_train=split.x_train[:train_subset],
                               y_train=split.y_train[:train_subset], x_test=split.x_test[:test_subset],
                               y_test=split.y_test[:test_subset])


def largest_label(split: Split) -> int:
    """The largest label of the split's training and test parts."""
    return int(max(split.y_train.max(), split.y_test.max()))


def class_count(name: str, split: Split) -> int:
    """Number of classes of data set ``name``: 100 for CIFAR-100, 10 for digits and CIFAR-10, for an IDX folder the
    largest label seen plus one (at least 2), and for Fashion-MNIST 10, or that count where it is more (a
    ``--data-root`` of another IDX set, such as EMNIST's 26 letters, which the benches read as Fashion-MNIST's
    folder: their networks then get an output a label instead of an index error in the loss)."""
    if name == "cifar100":
        return 100
    if name in ("idx", "fashion-mnist"):
        return max(2 if name == "idx" else 10, largest_label(split) + 1)
    return 10


def load_dataset(
    name: str,
    root: str | Path | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    fit: bool = False,
) -> Split:
    """Load a data set by name: one of :data:`DATASETS`.

    Parameters
    ----------
    name : str
        ``"digits"`` (bundled with scikit-learn; takes no ``root``), ``"fashion-mnist"`` (``root`` defaults
        to :data:`FASHION_MNIST_ROOT`), ``"idx"`` (any MNIST-style folder; needs ``root``), ``"cifar10"``,
        ``"cifar100"`` (need ``root``: see :func:`load_cifar10_split`).
    root : str or Path, optional
        The data folder.
    train_subset, test_subset : int, optional
        Keep only the first this many training / test images.
    seed : int
        Seed of the digits' random train/test split (the other sets come split).
    fit : bool
        Refuse a subset larger than its part of the data set, naming ``--train-subset`` / ``--test-subset``: for
        the subsets a user gave ``train`` (what its run would record is then not what it used). Without it (the
        benches' fixed budgets on a smaller ``--data-root``, a file's record read back) a subset takes what
        there is. With it, a data folder that cannot be read is also blamed on the options that chose it
        (``--data idx --data-root /x: IDX folder '/x' does not exist; ...``); a record read back names them
        itself (:meth:`DataRecord.load_test`).

    Raises
    ------
    UserError
        If ``name`` is unknown, ``root`` is missing where needed or given for digits, a subset does not fit
        (``fit``), or the loader fails.
    """
    _check_subsets(train_subset, test_subset)  # its messages name the subsets, not the data set's options
    try:
        split = _load_dataset(name, root, train_subset, test_subset, seed)
    except UserError as exc:
        if not fit:
            raise
        raise UserError(f"{data_options(name, root)}: {exc}") from None
    parts = (("train", "training", train_subset, len(split.y_train)), ("test", "test", test_subset, len(split.y_test)))
    for part, images, subset, have in parts:
        if fit and subset is not None and subset > have:
            where = "" if root is None else f" in {str(root)!r}"
            raise UserError(f"--{part}-subset {subset} (field '{part}_subset'): the data set {name!r}{where} has "
                            f"{have} {images} images; allowed 1..{have}, or leave it out for all of them")
    return split


def root_option(root: str | Path | None, default: str | None) -> str:
    """``--data-root /x`` for a folder given, ``(default --data-root /y)`` for ``None`` with a default folder,
    ``""`` without one: how the messages name the folder a data set was read from."""
    if root is not None:
        return f"--data-root {root}"
    return f"(default --data-root {default})" if default is not None else ""


def data_options(name: str, root: str | Path | None) -> str:
    """The options that choose data set ``name`` in folder ``root``, for messages: ``--data idx --data-root /x``,
    or ``--data fashion-mnist (default --data-root /usr/share/datasets/fashion-mnist)``."""
    default = FASHION_MNIST_ROOT if name == "fashion-mnist" else None
    return " ".join(filter(None, (f"--data {name}", root_option(root, default))))


def _load_dataset(name: str, root, train_subset: int | None, test_subset: int | None, seed: int) -> Split:
    """:func:`load_dataset`'s loading, its subsets checked already."""
    if name not in DATASETS:
        raise UserError(f"data set {name!r} is unknown; allowed {DATASETS}")
    if name == "digits":
        if root is not None:
            raise UserError(f"data set 'digits' is bundled with scikit-learn and takes no root, "
                            f"not {str(root)!r}")
        return _subset(load_digits_split(seed=seed), train_subset, test_subset)
    if name == "fashion-mnist":
        return load_idx_split(root or FASHION_MNIST_ROOT, name, train_subset, test_subset)
    if root is None:
        what = {"idx": "an MNIST-style IDX folder", "cifar10": f"the {CIFAR10_FOLDER} folder or its parent",
                "cifar100": f"the {CIFAR100_FOLDER} folder or its parent"}[name]
        raise UserError(f"data set {name!r} needs a root: {what}, given with --data-root DIR")
    if name == "idx":
        return load_idx_split(root, "idx", train_subset, test_subset)
    loader = load_cifar10_split if name == "cifar10" else load_cifar100_split
    return loader(root, train_subset, test_subset)


def image_shape_of(name: str, root: str | Path | None = None) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of data set ``name`` without loading it: digits ``(1, 8, 8)``, CIFAR ``(3, 32, 32)``, an
    IDX folder from its header (:func:`idx_image_shape`; ``None`` if it cannot be read)."""
    if name == "digits":
        return 1, 8, 8
    if name in ("cifar10", "cifar100"):
        return CIFAR_IMAGE_SHAPE
    if name in ("fashion-mnist", "idx") and (root is not None or name == "fashion-mnist"):
        return idx_image_shape(root or FASHION_MNIST_ROOT)
    return None


# ------------------------------------------------------------------------------------------ data record
@dataclass(frozen=True)
class DataRecord:
    """The data set a network was trained on, as checkpoints and images record it.

    A checkpoint keeps it in its meta (``"dataset"``, :mod:`model.runs.checkpoint`), an image in
    ``manifest.json`` (``"data"``, :mod:`model.export.image`), so that ``build.py sim``, ``verilog`` and
    ``eval`` feed the network its own test images: :meth:`load_test` gives them back exactly (same files,
    digits split seed and test subset).

    Members
    -------
    name : str
        One of :data:`DATASETS`.
    root : str or None
        The data folder, absolute; ``None`` for digits and where none was given (Fashion-MNIST then reads
        :data:`FASHION_MNIST_ROOT`).
    input_shape : tuple of int
        ``(C, H, W)`` of an image (:attr:`Split.image_shape`); the network takes ``C*H*W`` inputs.
    input_bits : int
        Width of the network's input codes (its ``InputQuant``): 1..8, or 32.
    seed : int
        Seed of the digits' train/test split (the other sets come split; recorded anyway).
    train_subset, test_subset : int or None
        The first this many training / test images were used; ``None``: all.
    via : str or None
        Set by :meth:`override`: the options that chose this record (``"--data idx --data-root /x"``), so that
        :meth:`load_test` blames them rather than the file; ``None`` for the record a file holds.
    recorded : DataRecord or None
        Set by :meth:`override`: the record it replaced (what the file records).
    assumed : bool
        The file records no data set and this record is the default assumed for it (digits).

    ``via``, ``recorded`` and ``assumed`` say where the record came from: they are not part of the JSON or of
    equality.
    """

    name: str
    root: str | None
    input_shape: tuple[int, int, int]
    input_bits: int
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    via: str | None = dataclasses.field(default=None, compare=False, repr=False)
    recorded: DataRecord | None = dataclasses.field(default=None, compare=False, repr=False)
    assumed: bool = dataclasses.field(default=False, compare=False, repr=False)

    #: The JSON keys, in :meth:`to_json` order.
    KEYS = ("name", "root", "input_shape", "input_bits", "seed", "train_subset", "test_subset")

    @classmethod
    def of(cls, name: str, root: str | Path | None, input_shape, input_bits: int, seed: int = 0,
           train_subset: int | None = None, test_subset: int | None = None, where: str = "data record"
           ) -> DataRecord:
        """A checked record; ``root`` becomes absolute (digits keeps ``None``); ``where`` prefixes errors.

        Raises
        ------
        UserError
            Naming the field and the allowed values.
        """
        if root is not None and name != "digits":
            root = str(Path(root).expanduser().resolve())
        return cls.from_json({"name": name, "root": None if name == "digits" else root,
                              "input_shape": list(input_shape), "input_bits": input_bits, "seed": seed,
                              "train_subset": train_subset, "test_subset": test_subset}, where)

    @classmethod
    def from_json(cls, data, where: str) -> DataRecord:
        """Rebuild from :meth:`to_json`'s dict, checking every field.

        Raises
        ------
        UserError
            ``"{where}: field '<key>' is ...; allowed ..."``; keys beyond :attr:`KEYS` are ignored.
        """
        if not isinstance(data, dict):
            raise UserError(f"{where} is a {type(data).__name__}; expected an object with keys {list(cls.KEYS)}")
        missing = [k for k in cls.KEYS if k not in data]
        if missing:
            raise UserError(f"{where}: missing key(s) {missing}; expected {list(cls.KEYS)}")
        name, root, shape, bits = data["name"], data["root"], data["input_shape"], data["input_bits"]
        if name not in DATASETS:
            raise UserError(f"{where}: field 'name' is {name!r}; allowed {DATASETS}")
        if root is not None and (not isinstance(root, str) or not Path(root).is_absolute()):
            raise UserError(f"{where}: field 'root' is {root!r}; allowed an absolute folder path or null")
        if (not isinstance(shape, list | tuple) or len(shape) != 3
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
            raise UserError(f"{where}: field 'input_shape' is {shape!r}; allowed [C, H, W], integers >= 1")
        if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 8 or bits == 32):
            raise UserError(f"{where}: field 'input_bits' is {bits!r}; allowed 1..8 or 32")
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int) or not 0 <= data["seed"] <= MAX_SEED:
            raise UserError(f"{where}: field 'seed' is {data['seed']!r}; allowed integers 0 .. {MAX_SEED}")
        try:
            _check_subsets(data["train_subset"], data["test_subset"])
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        return cls(name, root, tuple(shape), bits, data["seed"], data["train_subset"], data["test_subset"])

    def to_json(self) -> dict:
        return {"name": self.name, "root": self.root, "input_shape": list(self.input_shape),
                "input_bits": self.input_bits, "seed": self.seed, "train_subset": self.train_subset,
                "test_subset": self.test_subset}

    @property
    def features(self) -> int:
        """Inputs per image, ``C*H*W``, exact (``np.prod`` wrapped at 2^63: ``[1, 2^62 + 1, 64]`` gave 64)."""
        return math.prod(self.input_shape)

    def override(self, name: str | None = None, root: str | Path | None = None) -> DataRecord:
        """The same record read from another data set (``name``) and/or another copy of it (``root``).

        The network's side (input shape and bits) and the split (seed, subsets) stay; another ``name``
        without a ``root`` uses that set's default (none, or Fashion-MNIST's :data:`FASHION_MNIST_ROOT`).

        Raises
        ------
        UserError
            For an unknown ``name``, or a ``root`` for digits.
        """
        if name is None and root is None:
            return self
        new_name = self.name if name is None else name
        if new_name == "digits" and root is not None:
            raise UserError(f"--data-root {str(root)!r}: the data set 'digits' is bundled with scikit-learn and "
                            f"takes no root")
        new_root = root if root is not None else (self.root if new_name == self.name else None)
        record = DataRecord.of(new_name, new_root, self.input_shape, self.input_bits, self.seed,
                               self.train_subset, self.test_subset, where="--data / --data-root")
        via = " ".join(f"{flag} {value}" for flag, value in (("--data", name), ("--data-root", root))
                       if value is not None)
        return dataclasses.replace(record, via=via, recorded=self.recorded or self)

    def describe(self) -> str:
        """``name`` with its folder, e.g. ``fashion-mnist (/usr/share/datasets/fashion-mnist)``."""
        root = self.root or (FASHION_MNIST_ROOT if self.name == "fashion-mnist" else None)
        return self.name if root is None else f"{self.name} ({root})"

    def load_test(self, where: str, n_classes: int | None = None, network: str = "the network") -> Split:
        """The recorded test images: the split :func:`load_dataset` gives for this record.

        Only the test part is meant to be used: the training part is cut to one image (CIFAR then reads
        one training batch instead of five); the digits' test split does not depend on it.

        Parameters
        ----------
        where : str
            What holds the record (``"out/image/manifest.json: field 'data'"``), for the messages. A record
            from :meth:`override` blames its options (:attr:`via`) and says what ``where`` records.
        n_classes : int, optional
            Classes of the network the images are for: every test label must be in ``0..n_classes-1``.
        network : str
            The network, for that message (``"the network of out/train/ticket.pt"``).

        Raises
        ------
        UserError
            If the data set is not available here (missing folder or file: the message says to pass
            ``--data`` / ``--data-root``), its images do not have :attr:`features` inputs, or a test label is
            not one of the network's ``n_classes`` classes (naming the labels file; for a record that is only
            :attr:`assumed`, without ``--data`` / ``--data-root``, that is a note on stderr instead).
        """
        via = f"{self.via}: " if self.via else ""
        try:
            split = load_dataset(self.name, self.root, train_subset=1, test_subset=self.test_subset, seed=self.seed)
        except UserError as exc:
            if self.via:
                raise UserError(f"{via}the data set {self.describe()} cannot be read here: {exc}; give its folder "
                                f"with --data-root DIR, or another set with --data NAME ({self._recorded(where)})"
                                ) from None
            raise UserError(f"{where} records the data set {self.describe()}, which cannot be read here: {exc}; "
                            f"install or copy it, or choose another copy with --data-root DIR (or another "
                            f"set with --data NAME)") from None
        if split.x_test.shape[1] != self.features:
            raise UserError(f"{via}{where}: field 'input_shape' is {list(self.input_shape)} ({self.features} inputs), "
                            f"but the data set {self.describe()} has {split.x_test.shape[1]} inputs per image "
                            f"(shape {list(split.image_shape)}); choose the data set the network was trained on "
                            f"with --data / --data-root")
        if n_classes is not None:
            bad = (split.y_test < 0) | (split.y_test >= n_classes)
            if bad.any():
                labels = (f"{label_source(self.name, self.root)}: holds test label {int(split.y_test[bad][0])} "
                          f"({int(bad.sum())} of {len(bad)} test labels out of range); allowed 0..{n_classes - 1}, "
                          f"the {n_classes} classes of {network}")
                if self.assumed and not self.via:
                    # A file that records no data set is read on the digits by assumption only (its note says so):
                    # said, not refused, so that such an image still runs against golden.
                    print(f"note: {labels}: its accuracy means nothing; give its data set with --data / --data-root",
                          file=sys.stderr)
                else:
                    raise UserError(f"{via}{labels}; choose the data set it was trained on with --data / --data-root")
        return split

    def _recorded(self, where: str) -> str:
        """What the file ``where`` records, for the messages of an overridden record."""
        recorded = self.recorded or self
        if recorded.assumed:
            return f"{where} records no data set; {recorded.describe()} is assumed without --data / --data-root"
        return f"{where} records the data set {recorded.describe()}"


def label_source(name: str, root: str | Path | None) -> str:
    """Where the test labels of data set ``name`` are, for messages: an IDX folder's ``t10k-labels-idx1-ubyte``
    (as spelled there), CIFAR's ``test_batch`` / ``test``; the digits are scikit-learn's."""
    if name == "digits":
        return "the digits data set (scikit-learn)"
    if name in ("idx", "fashion-mnist"):
        folder = Path(root or FASHION_MNIST_ROOT)
        try:
            return str(_find_idx(folder, IDX_FILES[3]))
        except UserError:
            return f"IDX folder {str(folder)!r}"
    folder, test = (CIFAR10_FOLDER, "test_batch") if name == "cifar10" else (CIFAR100_FOLDER, "test")
    base = Path(root) / folder if (Path(root) / folder).is_dir() else Path(root)
    return str(base / test)
