"""The test images an exported image runs on: its recorded data set, quantized to input codes, with golden scores.

``sim``, ``verilog`` (the self-test ROM) and ``eval --image`` all read them here, so the three agree on which
images and which codes.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data import DataRecord
from model.errors import UserError
from model.export.image import input_features, read_image
from model.export.image_v4 import is_vertical, read_vertical_words
from model.quant.pact import InputQuant


def default_record(input_shape, input_bits: int, seed: int, where: str):
    """What a file without a data record is read on: digits (the only data set before records existed)."""
    print(f"note: {where} records no data set (written before files recorded it): using the digits test "
          f"split of seed {seed}; choose another with --data / --data-root", file=sys.stderr)
    return dataclasses.replace(DataRecord.of("digits", None, input_shape, input_bits, seed), assumed=True)


def check_record(record: DataRecord, net, where: str) -> DataRecord:
    """``record`` (an image's ``data``) when its inputs are the network's: as many, of as many bits; UserError
    naming ``where`` otherwise. Returns ``record``."""
    n_in = input_features(net)
    if record.features != n_in or record.input_bits != net.input_bits:
        raise UserError(f"{where} records {record.features} inputs of {record.input_bits} bits; the network "
                        f"takes {n_in} inputs of {net.input_bits} bits")
    return record


def check_count(count: int | None, available: int, flag: str, record) -> None:
    """:class:`UserError` if ``flag`` asks for more test images than the data set has."""
    if count is not None and count > available:
        raise UserError(f"{flag} {count} is more than the {available} test images of {record.describe()}; "
                        f"allowed 1..{available}")


@dataclass(frozen=True, eq=False)
class ImageVectors:
    """An image and its recorded test images: integer input codes, golden scores, labels.

    Members
    -------
    net : model.export.golden.IntNetwork or model.export.golden_net.IntConvNetwork
    manifest : dict
    data : model.data.DataRecord
        The data set read (recorded, overridden, or digits by default).
    codes : numpy.ndarray
        int64 ``[N, n_in]`` input codes of ``net.input_bits`` bits (a conv net's ``[N, C H W]``, flattened in
        ``(C, H, W)`` order; ``IntConvNetwork.forward`` takes them as they are).
    expected : numpy.ndarray
        int64 ``[N, n_classes]`` golden scores.
    labels : numpy.ndarray
        int64 ``[N]``.
    available : int
        Test images the data set has (``N`` is at most this).
    words : numpy.ndarray or None
        A version 4 (vertical) image's words as stored (what a loader sends, every width); None for versions
        1-3, whose network packs to the version 3 words (:func:`model.export.image.pack`).
    """

    net: object
    manifest: dict
    data: object
    codes: object
    expected: object
    labels: object
    available: int
    words: object = None


def image_vectors(image_dir, count: int | None, seed: int, data: str | None = None, data_root: str | None = None,
                  flag: str = "--images", cap: int | None = None, bits=None) -> ImageVectors:
    """The first ``count`` (default all, at most ``cap``) test images of the image's recorded data set, with golden
    scores.

    Parameters
    ----------
    image_dir : path
        Image directory (or its ``manifest.json``).
    count : int or None
        Test images to take; more than the data set has is an error naming ``flag``.
    seed : int
        Digits split seed of an image that records no data set.
    data, data_root : str, optional
        ``--data`` / ``--data-root``: another data set or another copy of it.
    cap : int, optional
        At most this many images: ``min(count or all, cap)``.
    bits : int, sequence of int or TableRow, optional
        A version 4 (vertical) image's widths: one for every inner layer (None or 0: its source width), a
        row of widths, or a row of its table (:class:`~model.export.golden_vertical.TableRow`, with the row's
        own requant records); ``net`` is then the version 1-3 network it computes at them
        (:meth:`~model.export.golden_vertical.VerticalNetwork.materialize`).

    Raises
    ------
    UserError
        If the image is broken, its data set is not available here or does not fit the network (its image size,
        or a test label that is not one of the network's classes: :meth:`model.data.DataRecord.load_test`).
    """
    path = Path(image_dir)
    words = None
    if is_vertical(path):
        vnet, manifest, words = read_vertical_words(image_dir)
        net = vnet.materialize(bits or vnet.widths[-1])
    else:
        if bits is not None:
            raise UserError(f"{path}: a width (--bits / --table-row) applies to vertical-layered (version 4) "
                            "images; this one has its own widths")
        net, manifest = read_image(image_dir)
    man_path = path / "manifest.json" if path.is_dir() else path
    n_in = input_features(net)
    if "data" in manifest:
        where = f"{man_path}: field 'data'"
        record = check_record(DataRecord.from_json(manifest["data"], where), net, where)
    else:
        where = str(man_path)
        shape = tuple(manifest.get("input_shape") or ((1, 8, 8) if n_in == 64 else (1, 1, n_in)))
        record = default_record(shape, net.input_bits, seed, where)
    record = record.override(data, data_root)
    split = record.load_test(where, n_classes=net.layers[-1].n_out, network=f"the image {path}")
    available = len(split.y_test)
    check_count(count, available, flag, record)
    take = available if count is None else count
    if cap is not None:
        take = min(take, cap)
    x, y = split.x_test[:take], split.y_test[:take]
    codes = InputQuant(net.input_bits).to_codes(x).numpy().astype(np.int64)
    return ImageVectors(net, manifest, record, codes, net.forward(codes), y.numpy(), available, words)
