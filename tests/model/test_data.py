"""Data sets (digits, IDX, CIFAR), augmentation, training and evaluation loops."""

import dataclasses
import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.data import (
    CIFAR10_FOLDER,
    CIFAR100_FOLDER,
    FASHION_MNIST_ROOT,
    DataRecord,
    Split,
    augment_batch,
    check_idx_image_shape,
    class_count,
    data_options,
    idx_image_shape,
    idx_spellings,
    image_shape_of,
    load_cifar10_split,
    load_cifar100_split,
    load_dataset,
    load_digits_split,
    load_idx_split,
)
from model.errors import UserError
from model.training.loop import evaluate, train
from tests.idx_files import SPELLINGS, idx_bytes, idx_name, write_idx_folder


def test_digits_split_shapes_ranges_and_stratification():
    split = load_digits_split()
    assert split.name == "digits"
    assert split.x_train.shape == (1437, 64) and split.x_test.shape == (360, 64)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    x = torch.cat([split.x_train, split.x_test])
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert torch.equal(x * 16, torch.round(x * 16))  # pixels are k / 16
    # 1797 images, 10 classes of 174..183: a stratified 20 % leaves 34..37 of each class for testing.
    counts = torch.bincount(split.y_test, minlength=10)
    assert counts.min().item() >= 34 and counts.max().item() <= 37


def test_digits_split_is_deterministic_per_seed():
    a, b, c = load_digits_split(seed=0), load_digits_split(seed=0), load_digits_split(seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction(fraction):
    with pytest.raises(UserError, match="test_fraction"):
        load_digits_split(test_fraction=fraction)


def test_evaluate_counts_correct_argmax_and_keeps_the_mode():
    model = nn.Identity()
    model.train()
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert evaluate(model, x, torch.tensor([0, 1, 1, 0])) == 0.5
    assert model.training


def test_train_is_deterministic_and_learns():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 4, generator=gen)
    y = (x[:, 0] > x[:, 1]).to(torch.int64)
    split = Split(x, y, x, y, name="toy")
    init = nn.Linear(4, 2)
    models = [nn.Linear(4, 2) for _ in range(2)]
    for m in models:
        m.load_state_dict(init.state_dict())
    losses = [train(m, split, epochs=15, lr=0.05, batch_size=16, seed=3, progress=False) for m in models]
    assert losses[0] == losses[1]
    assert torch.equal(models[0].weight, models[1].weight)
    assert losses[0][-1] < losses[0][0]
    assert evaluate(models[0], x, y) > 0.9


# ------------------------------------------------------------------------------------------- CIFAR
def _write_pickle(path, obj, python2_globals=False):
    """Protocol 2 as the official files; ``python2_globals`` names ``numpy.core`` as numpy 1 did."""
    raw = pickle.dumps(obj, protocol=2)
    if python2_globals:
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def _batch(first, n, n_classes, label_key=b"labels"):
    """``n`` images; image ``i`` has pixels ``(first + i + k) % 256``, label ``(first + i) % n_classes``."""
    i = np.arange(first, first + n)[:, None]
    data = ((i + np.arange(3072)[None, :]) % 256).astype(np.uint8)
    return {b"batch_label": b"synthetic", label_key: [int(v) % n_classes for v in i[:, 0]], b"data": data}


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / CIFAR10_FOLDER
    folder.mkdir()
    for b in range(1, 6):
        _write_pickle(folder / f"data_batch_{b}", _batch(3 * (b - 1), 3, 10), python2_globals=b == 1)
    _write_pickle(folder / "test_batch", _batch(100, 2, 10))
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path):
    folder = tmp_path / CIFAR100_FOLDER
    folder.mkdir()
    train = _batch(90, 12, 100, label_key=b"fine_labels")
    train[b"coarse_labels"] = [0] * 12
    _write_pickle(folder / "train", train)
    _write_pickle(folder / "test", _batch(7, 4, 100, label_key=b"fine_labels"))
    return folder  # the folder itself, not its parent


def test_cifar10_loads_batches_in_order_from_the_parent_or_the_folder(cifar10_root):
    split = load_cifar10_split(cifar10_root)
    assert split.name == "cifar10" and split.image_shape == (3, 32, 32) and split.augment
    assert split.x_train.shape == (15, 3072) and split.x_test.shape == (2, 3072)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.y_train.tolist() == list(range(10)) + list(range(5)) and split.y_test.tolist() == [0, 1]
    # Image i of the training part is batch i // 3, row i % 3, whose first pixel is i (batches in order).
    pixels = torch.round(split.x_train * 255)
    assert torch.equal(split.x_train, pixels / 255)  # exactly pixel / 255
    assert torch.equal(pixels[:, 0], torch.arange(15, dtype=torch.float32))
    image = torch.round(split.x_test[1] * 255).view(3, 32, 32)  # R, G, B planes, each row-major
    assert image[0, 0, 1] == 102 and image[1, 0, 0] == (101 + 1024) % 256
    assert image[2, 1, 0] == (101 + 2048 + 32) % 256
    again = load_cifar10_split(cifar10_root / CIFAR10_FOLDER, train_subset=4, test_subset=1)
    assert torch.equal(again.x_train, split.x_train[:4]) and torch.equal(again.y_test, split.y_test[:1])


def test_cifar100_fine_labels(cifar100_root):
    split = load_cifar100_split(cifar100_root)
    assert split.name == "cifar100" and split.image_shape == (3, 32, 32) and split.augment
    assert split.y_train.tolist() == [90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 0, 1]
    assert split.y_test.tolist() == [7, 8, 9, 10]
    assert load_cifar100_split(cifar100_root.parent, test_subset=2).x_test.shape == (2, 3072)


def test_cifar_missing_folder_and_file(tmp_path, cifar10_root):
    with pytest.raises(UserError, match=r"does not exist; expected 'cifar-10-batches-py'.*or its parent"):
        load_cifar10_split(tmp_path / "nowhere")
    (cifar10_root / CIFAR10_FOLDER / "data_batch_4").unlink()
    with pytest.raises(UserError, match=r"missing 'data_batch_4'.*data_batch_1, .*test_batch"):
        load_cifar10_split(cifar10_root)
    with pytest.raises(UserError, match=r"missing 'train'"):
        load_cifar100_split(cifar10_root / CIFAR10_FOLDER)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop(b"labels"), r"missing key\(s\) \[b'labels'\]"),
        (lambda b: b.update({b"data": b[b"data"][:, :3071]}),
         r"b'data' is uint8 \[3, 3071\]; expected uint8 \[N, 3072\]"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), r"b'data' is float32"),
        (lambda b: b.update({b"data": b[b"data"].tolist()}), r"b'data' is list"),
        (lambda b: b.update({b"labels": [0, 10, 1]}), r"holds label 10; allowed 0\.\.9"),
        (lambda b: b.update({b"labels": [0, -1, 1]}), r"holds label -1; allowed 0\.\.9"),
        (lambda b: b.update({b"labels": [0, 1]}), r"expected 3 integer labels"),
        (lambda b: b.update({b"labels": [0.0, 1.0, 2.0]}), r"float64 \[3\]; expected 3 integer labels"),
    ],
)
def test_cifar_malformed_batch(cifar10_root, change, message):
    batch = _batch(6, 3, 10)
    change(batch)
    path = cifar10_root / CIFAR10_FOLDER / "data_batch_3"
    _write_pickle(path, batch)
    with pytest.raises(UserError, match=message) as info:
        load_cifar10_split(cifar10_root)
    assert str(path) in str(info.value)


def test_cifar100_label_out_of_range(cifar100_root):
    _write_pickle(cifar100_root / "test", _batch(99, 2, 1000, label_key=b"fine_labels"))  # labels 99, 100
    with pytest.raises(UserError, match=r"test: field b'fine_labels' holds label 100; allowed 0\.\.99"):
        load_cifar100_split(cifar100_root)


def test_cifar_not_a_pickle_or_not_a_dict(cifar10_root):
    path = cifar10_root / CIFAR10_FOLDER / "test_batch"
    path.write_bytes(b"\x89PNG not a pickle")
    with pytest.raises(UserError, match="test_batch: not a CIFAR batch"):
        load_cifar10_split(cifar10_root)
    _write_pickle(path, [1, 2, 3])
    with pytest.raises(UserError, match="holds a list"):
        load_cifar10_split(cifar10_root)


class _Touch:
    """Unpickling this calls ``Path.touch(target)``: a stand-in for a malicious payload."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_cifar_unpickler_refuses_other_globals(cifar10_root, tmp_path):
    target = tmp_path / "touched"
    path = cifar10_root / CIFAR10_FOLDER / "data_batch_1"
    batch = _batch(0, 3, 10)
    batch[b"filenames"] = _Touch(target)
    path.write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(UserError, match=r"refusing the global pathlib.*Path\.touch"):
        load_cifar10_split(cifar10_root)
    assert not target.exists()
    pickle.loads(path.read_bytes())  # the payload is real: plain pickle would run it
    assert target.exists()


# ------------------------------------------------------------------------------ Split and load_dataset
def test_split_image_shape_defaults_and_validation():
    x, y = torch.zeros(4, 12), torch.zeros(4, dtype=torch.int64)
    split = Split(x, y, x, y, name="toy")
    assert split.image_shape == (1, 1, 12) and not split.augment
    assert Split(x, y, x, y, "toy", image_shape=[3, 2, 2], augment=True).image_shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"image_shape \(3, 2, 3\) does not match 12"):
        Split(x, y, x, y, "toy", image_shape=(3, 2, 3))
    assert load_digits_split().image_shape == (1, 8, 8)


def test_load_dataset_fashion_mnist_subset():
    split = load_dataset("fashion-mnist", train_subset=50, test_subset=20)
    assert split.x_train.shape == (50, 784) and split.x_test.shape == (20, 784)
    assert split.image_shape == (1, 28, 28) and not split.augment and split.name == "fashion-mnist"


def test_load_dataset_dispatch_and_errors(cifar10_root):
    digits = load_dataset("digits", train_subset=100, test_subset=30, seed=1)
    assert digits.x_train.shape == (100, 64) and digits.x_test.shape == (30, 64)
    assert torch.equal(digits.x_test, load_digits_split(seed=1).x_test[:30])
    cifar = load_dataset("cifar10", root=cifar10_root, train_subset=5)
    assert cifar.name == "cifar10" and cifar.x_train.shape == (5, 3072)
    with pytest.raises(UserError, match=r"'mnist' is unknown; allowed \('digits', 'fashion-mnist', 'idx', "
                                        r"'cifar10', 'cifar100'\)"):
        load_dataset("mnist")
    for name in ("cifar10", "cifar100", "idx"):
        with pytest.raises(UserError, match=f"{name}' needs a root"):
            load_dataset(name)
    with pytest.raises(UserError, match="takes no root"):
        load_dataset("digits", root=cifar10_root)
    with pytest.raises(UserError, match="'train_subset' is 0"):
        load_dataset("digits", train_subset=0)
    with pytest.raises(UserError, match="^IDX folder"):
        load_dataset("idx", root=cifar10_root)


def test_a_folder_train_cannot_read_names_the_options_that_chose_it(tmp_path):
    """``fit`` (the data set a user gave `train`): a folder error starts with the options that chose the folder,
    the default one's included; a data set that needs a root says it is given with --data-root. Subset errors
    name the subset only."""
    with pytest.raises(UserError, match=rf"^--data idx --data-root {re.escape(str(tmp_path))}/nowhere: IDX folder "
                                        r"'.*nowhere' does not exist"):
        load_dataset("idx", root=tmp_path / "nowhere", fit=True)
    with pytest.raises(UserError, match=r"^--data cifar10 --data-root .*nowhere: cifar10 folder"):
        load_dataset("cifar10", root=tmp_path / "nowhere", fit=True)
    with pytest.raises(UserError, match=r"^--data idx: data set 'idx' needs a root: an MNIST-style IDX folder, "
                                        r"given with --data-root DIR$"):
        load_dataset("idx", fit=True)
    with pytest.raises(UserError, match=r"^field 'train_subset' is 0"):
        load_dataset("idx", root=tmp_path / "nowhere", train_subset=0, fit=True)
    assert data_options("fashion-mnist", None) == f"--data fashion-mnist (default --data-root {FASHION_MNIST_ROOT})"
    assert data_options("idx", "/x") == "--data idx --data-root /x"


def test_a_subset_larger_than_its_part_is_refused_where_asked(cifar10_root):
    """``fit`` (what `train` asks for its --train-subset / --test-subset): a run would record 100000 training images
    and use fewer, so it is refused, naming the option and the count; without it (the benches' budgets, a file's
    record read back) a subset takes what there is."""
    n_train, n_test = (len(p) for p in (load_digits_split().y_train, load_digits_split().y_test))
    full = load_dataset("digits", train_subset=n_train, test_subset=n_test, fit=True)  # all of them: fits
    assert full.y_train.shape == (n_train,) and full.y_test.shape == (n_test,)
    with pytest.raises(UserError, match=rf"--train-subset {n_train + 1} .*'digits' has {n_train} training images; "
                                        rf"allowed 1\.\.{n_train}"):
        load_dataset("digits", train_subset=n_train + 1, fit=True)
    with pytest.raises(UserError, match=r"--test-subset 100000 .*'cifar10' in '.*' has \d+ test images"):
        load_dataset("cifar10", root=cifar10_root, test_subset=100000, fit=True)
    assert len(load_dataset("digits", train_subset=n_train + 1, test_subset=100000).y_test) == n_test


# ------------------------------------------------------------------------------------- augmentation
def _candidates(image, padding):
    """Every crop (dy, dx) of the zero-padded image and its mirror, by plain slicing."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, :, ::-1]


def test_augment_batch_is_a_shifted_or_mirrored_copy_with_zero_padding():
    shape = (3, 6, 5)  # not square: a swapped H and W would show
    n = 200
    x = (torch.arange(n * 90, dtype=torch.float32).view(n, 90) + 1) / (n * 90)  # every pixel distinct, > 0
    out = augment_batch(x, shape, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for image, augmented in zip(x.view(n, *shape).numpy(), out.view(n, *shape).numpy()):
        matches = [key for key, crop in _candidates(image, 4) if np.array_equal(crop, augmented)]
        assert len(matches) == 1  # exactly one crop offset and flip explains the output
        seen.add(matches[0])
    assert {dy for dy, _, _ in seen} == set(range(9)) and {dx for _, dx, _ in seen} == set(range(9))
    assert {f for _, _, f in seen} == {False, True}


def test_augment_batch_is_deterministic_per_generator():
    x = torch.rand(16, 3 * 32 * 32, generator=torch.Generator().manual_seed(0))
    a = augment_batch(x, (3, 32, 32), torch.Generator().manual_seed(3))
    b = augment_batch(x, (3, 32, 32), torch.Generator().manual_seed(3))
    c = augment_batch(x, (3, 32, 32), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    first, second = augment_batch(x, (3, 32, 32), gen), augment_batch(x, (3, 32, 32), gen)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances
    zero = augment_batch(x, (3, 32, 32), torch.Generator().manual_seed(3), padding=0)
    images = x.view(16, 3, 32, 32)
    assert all(torch.equal(z.view(3, 32, 32), i) or torch.equal(z.view(3, 32, 32), i.flip(2))
               for z, i in zip(zero, images))
    with pytest.raises(ValueError, match=r"\[N, 3072\]"):
        augment_batch(x[:, :100], (3, 32, 32), gen)


# ------------------------------------------------------------------------------------- IDX spellings
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_in_every_common_spelling(tmp_path, spelling, gz):
    """MNIST's site: train-images-idx3-ubyte[.gz]; Kaggle and some mirrors: train-images.idx3-ubyte[.gz]."""
    root = write_idx_folder(tmp_path / "d", n_train=12, n_test=5, spelling=spelling, gz=gz, side=8)
    reference = write_idx_folder(tmp_path / "ref", n_train=12, n_test=5, side=8)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        idx_name(prefix, kind, spelling, gz) for prefix in ("train", "t10k") for kind in ("images", "labels"))
    split, ref = load_idx_split(root, name="idx"), load_idx_split(reference, name="idx")
    assert split.x_train.shape == (12, 64) and split.x_test.shape == (5, 64) and split.image_shape == (1, 8, 8)
    for a, b in ((split.x_train, ref.x_train), (split.y_train, ref.y_train), (split.x_test, ref.x_test),
                 (split.y_test, ref.y_test)):
        assert torch.equal(a, b)
    assert idx_image_shape(root) == (1, 8, 8)


def test_idx_spellings_mixed_in_one_folder_and_the_order_they_are_tried(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    labels = np.array([3, 1, 4], dtype=np.uint8)
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    (root / "train-images.idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    (root / "t10k-images.idx3-ubyte").write_bytes(idx_bytes(images[:2]))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[:2])))
    split = load_dataset("idx", root)
    assert split.y_train.tolist() == [3, 1, 4] and split.y_test.tolist() == [3, 1]
    assert split.x_train[2].tolist() == pytest.approx([8 / 255, 9 / 255, 10 / 255, 11 / 255])
    assert idx_spellings("t10k-labels-idx1-ubyte") == (
        "t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz", "t10k-labels.idx1-ubyte", "t10k-labels.idx1-ubyte.gz")
    # The hyphenated plain file wins over the others when several are there.
    (root / "train-labels.idx1-ubyte").write_bytes(idx_bytes(np.array([0, 0, 0], dtype=np.uint8)))
    assert load_dataset("idx", root).y_train.tolist() == [3, 1, 4]
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"missing 't10k-labels-idx1-ubyte' \(or t10k-labels-idx1-ubyte.gz, "
                                        r"t10k-labels.idx1-ubyte, t10k-labels.idx1-ubyte.gz\)"):
        load_dataset("idx", root)
    assert idx_image_shape(tmp_path / "nowhere") is None


# ------------------------------------------------------------------------------------- data records
def test_data_record_round_trip_and_absolute_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = DataRecord.of("idx", "rel/idx", (1, 28, 28), 8, seed=3, train_subset=100, test_subset=None)
    assert record.root == str(tmp_path / "rel" / "idx") and record.features == 784
    assert record.to_json() == {"name": "idx", "root": str(tmp_path / "rel" / "idx"), "input_shape": [1, 28, 28],
                                "input_bits": 8, "seed": 3, "train_subset": 100, "test_subset": None}
    assert DataRecord.from_json(record.to_json(), "x") == record
    assert DataRecord.of("digits", "/ignored", (1, 8, 8), 4).root is None


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "mnist"}, r"m.json: field 'name' is 'mnist'; allowed \('digits'"),
    ({"root": "relative/path"}, "field 'root' is 'relative/path'; allowed an absolute folder path or null"),
    ({"input_shape": [28, 28]}, r"field 'input_shape' is \[28, 28\]; allowed \[C, H, W\]"),
    ({"input_bits": 9}, "field 'input_bits' is 9; allowed 1..8 or 32"),
    ({"seed": -1}, r"field 'seed' is -1; allowed integers 0 \.\. 4294967295"),
    ({"seed": 2**40}, r"field 'seed' is 1099511627776; allowed integers 0 \.\. 4294967295"),  # (sklearn's range)
    ({"test_subset": 0}, "field 'test_subset' is 0"),
])
def test_data_record_fields_are_checked(change, message):
    good = DataRecord.of("digits", None, (1, 8, 8), 4).to_json()
    with pytest.raises(UserError, match=message):
        DataRecord.from_json({**good, **change}, "m.json")
    with pytest.raises(UserError, match=r"m.json: missing key\(s\) \['seed'\]"):
        DataRecord.from_json({k: v for k, v in good.items() if k != "seed"}, "m.json")
    with pytest.raises(UserError, match="m.json is a list"):
        DataRecord.from_json([], "m.json")


def test_a_data_record_counts_its_inputs_exactly():
    """C H W as Python's integers: numpy's product wrapped ``[1, 2^62 + 1, 64]`` to 64 inputs (2026-12-06)."""
    record = DataRecord.from_json({**DataRecord.of("digits", None, (1, 8, 8), 4).to_json(),
                                   "input_shape": [1, 2**62 + 1, 64]}, "m.json")
    assert record.features == 2**68 + 64


def test_data_record_loads_its_own_test_images(tmp_path):
    digits = DataRecord.of("digits", None, (1, 8, 8), 4, seed=1, test_subset=30)
    assert torch.equal(digits.load_test("here").x_test, load_digits_split(seed=1).x_test[:30])
    root = write_idx_folder(tmp_path / "idx", n_train=20, n_test=7, spelling="dot", gz=True)
    record = DataRecord.of("idx", root, (1, 28, 28), 8)
    split = record.load_test("m.json: field 'data'")
    assert split.x_test.shape == (7, 784) and torch.equal(split.y_test, load_idx_split(root).y_test)
    # another copy of the same set, and another set
    copy = write_idx_folder(tmp_path / "copy", n_train=20, n_test=7)
    assert record.override(root=copy).root == str(copy)
    assert record.override(name="fashion-mnist").root is None
    with pytest.raises(UserError, match="'digits' is bundled with scikit-learn and takes no root"):
        record.override(name="digits", root=copy)
    with pytest.raises(UserError, match=r"--data / --data-root: field 'name' is 'mnist'"):
        record.override(name="mnist")


def test_data_record_says_when_its_data_is_not_here_or_does_not_fit(tmp_path):
    root = write_idx_folder(tmp_path / "idx", n_train=20, n_test=7)
    record = DataRecord.of("idx", root, (1, 28, 28), 8)
    for path in root.iterdir():
        path.unlink()
    root.rmdir()
    with pytest.raises(UserError, match=r"m.json: field 'data' records the data set idx \(.*idx\), which cannot be "
                                        r"read here: IDX folder .* does not exist.*--data-root DIR"):
        record.load_test("m.json: field 'data'")
    with pytest.raises(UserError, match=r"field 'input_shape' is \[1, 28, 28\] \(784 inputs\), but the data set "
                                        r"digits has 64 inputs per image"):
        record.override(name="digits").load_test("m.json: field 'data'")


def test_an_override_that_cannot_be_read_names_the_option_and_what_the_file_records(tmp_path):
    """--data / --data-root chose the data set, not the file: the message blames the option and says what the file
    records (digits here), instead of claiming the file records the data set the option named."""
    record = DataRecord.of("digits", None, (1, 8, 8), 4)
    with pytest.raises(UserError) as raised:
        record.override(name="idx").load_test("m.json: field 'data'")
    message = str(raised.value)
    assert message.startswith("--data idx: the data set idx cannot be read here: data set 'idx' needs a root"), message
    assert "(m.json: field 'data' records the data set digits)" in message and "records the data set idx" not in message
    gone = tmp_path / "gone"
    idx = DataRecord.of("idx", tmp_path / "idx", (1, 8, 8), 4)
    with pytest.raises(UserError, match=rf"^--data-root {re.escape(str(gone))}: the data set idx \({re.escape(str(gone))}\) "
                                        rf"cannot be read here: IDX folder .* does not exist.*\(t.pt: field 'meta.dataset' "
                                        rf"records the data set idx \({re.escape(str(tmp_path / 'idx'))}\)\)$"):
        idx.override(root=gone).load_test("t.pt: field 'meta.dataset'")
    # a file without a record: the option still takes the blame, and the digits are said to be assumed
    assumed = dataclasses.replace(record, assumed=True)
    with pytest.raises(UserError, match=r"^--data idx: .*\(old.pt records no data set; digits is assumed"):
        assumed.override(name="idx").load_test("old.pt")
    # the record the file holds keeps its wording
    with pytest.raises(UserError, match=r"^t.pt: field 'meta.dataset' records the data set idx"):
        DataRecord.of("idx", gone, (1, 8, 8), 4).load_test("t.pt: field 'meta.dataset'")


def test_test_labels_outside_the_network_classes_are_refused(tmp_path, capsys):
    """Test labels 50..59 for a 10-class network: a UserError naming the labels file and 0..9, not a silent 0 %."""
    root = write_idx_folder(tmp_path / "idx", n_train=20, n_test=10, side=8, n_classes=10)
    labels = root / idx_name("t10k", "labels")
    labels.write_bytes(idx_bytes(np.arange(10) % 10 + 50))
    record = DataRecord.of("idx", root, (1, 8, 8), 4)
    assert record.load_test("t.pt").y_test.min() == 50  # without a class count nothing is checked
    with pytest.raises(UserError, match=rf"^{re.escape(str(labels))}: holds test label 50 \(10 of 10 test labels out "
                                        r"of range\); allowed 0\.\.9, the 10 classes of the network of t.pt"):
        record.load_test("t.pt: field 'meta.dataset'", n_classes=10, network="the network of t.pt")
    with pytest.raises(UserError, match=rf"^--data-root {re.escape(str(root))}: {re.escape(str(labels))}: holds test "
                                        r"label 50"):
        DataRecord.of("idx", tmp_path, (1, 8, 8), 4).override(root=root).load_test("t.pt", n_classes=10)
    # a file that records no data set is read on an assumed one: a note, not a refusal (the image still runs)
    assumed = dataclasses.replace(record, assumed=True)
    assert assumed.load_test("old.pt", n_classes=10).y_test.min() == 50
    assert "note: " in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^--data-root .*holds test label 50"):
        assumed.override(root=root).load_test("old.pt", n_classes=10)
    labels.write_bytes(idx_bytes(np.arange(10) % 10))
    assert len(record.load_test("t.pt", n_classes=10).y_test) == 10
    with pytest.raises(UserError, match=r"the digits data set \(scikit-learn\): holds test label [2-9].*allowed 0\.\.1"):
        DataRecord.of("digits", None, (1, 8, 8), 4).load_test("t.pt", n_classes=2)


def test_a_bench_folder_of_the_wrong_image_shape_is_named(tmp_path):
    root = write_idx_folder(tmp_path / "idx", n_train=4, n_test=2, side=8)
    assert check_idx_image_shape(root, "bench x", "its MLP", pixels=64) == (1, 8, 8)
    assert check_idx_image_shape(root, "bench x", "its VGG", sides=(8, 1024)) == (1, 8, 8)
    with pytest.raises(UserError, match=r"^bench x: the data folder '.*idx' \(--data-root\) holds images of shape "
                                        r"\(1, 8, 8\); its MLP needs \(1, H, W\) with H \* W = 784 pixels"):
        check_idx_image_shape(root, "bench x", "its MLP", pixels=784)
    with pytest.raises(UserError, match=r"its VGG needs \(1, H, W\) with H and W in 16\.\.1024"):
        check_idx_image_shape(root, "bench x", "its VGG", sides=(16, 1024))
    with pytest.raises(UserError, match=r"^bench x: --data-root .*nowhere: IDX folder '.*nowhere' does not exist"):
        check_idx_image_shape(tmp_path / "nowhere", "bench x", "its MLP", pixels=784)
    (root / idx_name("train", "images")).write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: not an unsigned-byte IDX file with 3 dimension"):
        check_idx_image_shape(root, "bench x", "its MLP", pixels=784)


def test_image_shape_of_each_data_set(tmp_path):
    assert image_shape_of("digits") == (1, 8, 8) and image_shape_of("cifar10") == (3, 32, 32)
    assert image_shape_of("idx", write_idx_folder(tmp_path / "i", n_train=2, n_test=1, side=12)) == (1, 12, 12)
    assert image_shape_of("idx") is None


def test_idx_headers_that_lie_are_named(tmp_path):
    """Sizes whose product wraps int64 (2^30 each), no images, a header cut short, and a file given as the
    folder: each a UserError naming the file, not numpy's reshape error."""
    root = write_idx_folder(tmp_path / "d", n_train=12, n_test=5, side=8)
    images = root / idx_name("train", "images")
    images.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3i", 1 << 30, 1 << 30, 1 << 30))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: header says shape \(1073741824, .*file has 0"):
        load_idx_split(root)
    images.write_bytes(idx_bytes(np.zeros((0, 8, 8))))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: header says shape \(0, 8, 8\); every size"):
        load_idx_split(root)
    images.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: header cut short: 6 bytes"):
        load_idx_split(root)
    with pytest.raises(UserError, match=r"IDX folder .*train-images-idx3-ubyte' is a file"):
        load_idx_split(images)


def test_class_count_follows_the_labels_of_idx_folders():
    """An IDX folder's classes are its labels; a folder read as Fashion-MNIST's (a bench's --data-root) has at least
    Fashion-MNIST's 10, more when its labels go past them (EMNIST-like 12 here), so a network gets an output a label."""
    def split(top: int) -> Split:
        y = torch.arange(top + 1) % (top + 1)
        return Split(torch.zeros(len(y), 4), y, torch.zeros(2, 4), torch.tensor([0, 1]), name="t", image_shape=(1, 2, 2))

    assert class_count("idx", split(1)) == 2 and class_count("idx", split(11)) == 12
    assert class_count("fashion-mnist", split(9)) == 10 and class_count("fashion-mnist", split(3)) == 10
    assert class_count("fashion-mnist", split(11)) == 12
    assert class_count("cifar100", split(3)) == 100 and class_count("digits", split(3)) == 10
