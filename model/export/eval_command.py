"""``build.py eval``: float / fake-quant / golden accuracy of a checkpoint, or golden accuracy of an image.

Both read the test images of the data set that the checkpoint's meta or the image's manifest records
(:class:`model.data.DataRecord`), or another one given with ``--data`` / ``--data-root``; a file that
records none (written before files recorded it) is read on digits, with a note. :func:`image_vectors` is
also what ``sim`` and ``verilog`` feed the accelerator. Heavy modules (torch) are imported inside the
functions so that ``--help`` stays fast; see :mod:`model.cli`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from model.cli import DEFAULT_OUT, SEED, add_data_override_args, print_table, write_json

HELP = "accuracy of a checkpoint (float, fake-quant, golden) or of an exported image (golden) on its own data set"

#: Images classified per forward pass in the fake-quant and float evaluations (bounds memory of conv nets).
EVAL_BATCH = 500


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", default=None,
                      help="checkpoint from `train` (ticket.pt, iterations/iter_NNN.pt, bmpq.pt): float, fake-quant "
                           "and golden accuracy")
    what.add_argument("--image", default=None, help="image directory from `export`: golden accuracy")
    add_data_override_args(p, "the checkpoint or image")
    p.add_argument("--seed", type=SEED, default=0,
                   help="digits split seed for a file that records no data set (default: 0)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "eval"),
                   help="output directory for eval.json (default: out/eval)")


# ------------------------------------------------------------------------------------------ test images
def default_record(input_shape, input_bits: int, seed: int, where: str):
    """What a file without a data record is read on: digits (the only data set before records existed)."""
    from model.data import DataRecord

    print(f"note: {where} records no data set (written before files recorded it): using the digits test "
          f"split of seed {seed}; choose another with --data / --data-root", file=sys.stderr)
    return DataRecord.of("digits", None, input_shape, input_bits, seed)


def check_count(count: int | None, available: int, flag: str, record) -> None:
    """:class:`UserError` if ``flag`` asks for more test images than the data set has."""
    from model.errors import UserError

    if count is not None and count > available:
        raise UserError(f"{flag} {count} is more than the {available} test images of {record.describe()}; "
                        f"allowed 1..{available}")


@dataclass(frozen=True, eq=False)
class ImageVectors:
    """An image and its recorded test images: integer input codes, golden scores, labels.

    Members
    -------
    net : model.export.golden.IntNetwork
    manifest : dict
    data : model.data.DataRecord
        The data set read (recorded, overridden, or digits by default).
    codes : numpy.ndarray
        int64 ``[N, n_in]`` input codes of ``net.input_bits`` bits.
    expected : numpy.ndarray
        int64 ``[N, n_classes]`` golden scores.
    labels : numpy.ndarray
        int64 ``[N]``.
    """

    net: object
    manifest: dict
    data: object
    codes: object
    expected: object
    labels: object


def image_vectors(image_dir, count: int | None, seed: int, data: str | None = None, data_root: str | None = None,
                  flag: str = "--images") -> ImageVectors:
    """The first ``count`` (default all) test images of the image's recorded data set, with golden scores.

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

    Raises
    ------
    UserError
        If the image is broken, its data set is not available here or does not fit the network.
    """
    import numpy as np

    from model.data import DataRecord
    from model.errors import UserError
    from model.export.image import read_image
    from model.quant.pact import InputQuant

    net, manifest = read_image(image_dir)
    path = Path(image_dir)
    man_path = path / "manifest.json" if path.is_dir() else path
    n_in = net.layers[0].n_in
    if "data" in manifest:
        where = f"{man_path}: field 'data'"
        record = DataRecord.from_json(manifest["data"], where)
        if record.features != n_in or record.input_bits != net.input_bits:
            raise UserError(f"{where} records {record.features} inputs of {record.input_bits} bits; the network "
                            f"takes {n_in} inputs of {net.input_bits} bits")
    else:
        where = str(man_path)
        record = default_record((1, 8, 8) if n_in == 64 else (1, 1, n_in), net.input_bits, seed, where)
    record = record.override(data, data_root)
    split = record.load_test(where)
    check_count(count, len(split.y_test), flag, record)
    x, y = split.x_test[:count], split.y_test[:count]
    codes = InputQuant(net.input_bits).to_codes(x).numpy().astype(np.int64)
    return ImageVectors(net, manifest, record, codes, net.forward(codes), y.numpy())


# ------------------------------------------------------------------------------------------ checkpoints
def float_twin(model):
    """A copy of ``model`` with the quantizers' rounding off: every non-zero DoReFa width and every BMPQ layer
    at 32 bits (pruned weights stay pruned: a 0 in the mask is structure, not rounding), every activation
    and the input PACT-32 (clip only)."""
    import copy

    import torch

    from model.quant.bmpq import BMPQ_LAYERS
    from model.quant.layers import QUANT_LAYER_TYPES
    from model.quant.pact import FULL_PRECISION_BITS, PACT, InputQuant

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, QUANT_LAYER_TYPES):
                module.bit_width.copy_(torch.where(module.bit_width != 0, 32, 0))
            elif isinstance(module, BMPQ_LAYERS):
                module.bits.fill_(32)
            elif isinstance(module, PACT | InputQuant):
                module.bits = FULL_PRECISION_BITS
    return twin


FLOAT_MODEL = ("the checkpoint's weights with rounding off: non-zero weights at 32 bits (pruned ones stay "
               "pruned), activations and input PACT-32 (clip only)")


def golden_of(model, path) -> tuple[object | None, str | None]:
    """``(golden network, None)``, or ``(None, why there is none)`` for a net the accelerator cannot run."""
    from model.errors import UserError
    from model.export.convert import to_golden
    from model.quant.pact import PACT, InputQuant

    arch = model.config.get("arch", "mlp")
    if arch != "mlp":
        return None, (f"{path}: a {arch} conv net has no integer golden model yet (the accelerator and `export` "
                      f"run MLPs only)")
    if any(isinstance(m, PACT | InputQuant) and m.full_precision for m in model.modules()):
        return None, f"{path}: PACT-32 activations have no integer codes (act_bits 1..8 export)"
    try:
        return to_golden(model), None
    except UserError as exc:
        return None, str(exc)


def eval_checkpoint(path, data: str | None, data_root: str | None, seed: int) -> dict:
    """Float, fake-quant and golden accuracy of the checkpoint at ``path`` on its recorded test images."""
    from model.export.convert import golden_accuracy
    from model.runs.checkpoint import checkpoint_data, input_bits_of, load_checkpoint
    from model.training.loop import evaluate

    model, meta = load_checkpoint(path)
    record = checkpoint_data(path, model, meta)
    where = f"{path}: field 'meta.dataset'"
    if record is None:
        where = str(path)
        shape = model.config.get("image_shape") or ((1, 8, 8) if model.config["n_in"] == 64
                                                    else (1, 1, model.config["n_in"]))
        record = default_record(shape, input_bits_of(model), seed, where)
    record = record.override(data, data_root)
    split = record.load_test(where)
    x, y = split.x_test, split.y_test
    notes = {"float_accuracy": FLOAT_MODEL}
    fakequant = evaluate(model, x, y, batch_size=EVAL_BATCH)
    float_acc = evaluate(float_twin(model), x, y, batch_size=EVAL_BATCH)
    net, why = golden_of(model, path)
    golden = None if net is None else golden_accuracy(net, model, x, y)
    if why is not None:
        notes["golden_accuracy"] = why
    return {"checkpoint": str(path), "data": record.to_json(), "test_images": len(y), "float_accuracy": float_acc,
            "fakequant_accuracy": fakequant, "golden_accuracy": golden,
            "float_baseline_accuracy": meta.get("float_accuracy"), "notes": notes}


def eval_image(image_dir, data: str | None, data_root: str | None, seed: int) -> dict:
    """Golden accuracy of the image in ``image_dir`` on its recorded test images."""
    vectors = image_vectors(image_dir, None, seed, data, data_root)
    golden = float((vectors.expected.argmax(axis=1) == vectors.labels).mean())
    why = "an image holds integer codes only; `eval --checkpoint` gives the float and fake-quant accuracy"
    return {"image": str(image_dir), "data": vectors.data.to_json(), "test_images": len(vectors.labels),
            "float_accuracy": None, "fakequant_accuracy": None, "golden_accuracy": golden,
            "avg_weight_bits": vectors.manifest.get("avg_weight_bits"),
            "notes": {"float_accuracy": why, "fakequant_accuracy": why}}


def run(args) -> int:
    from model.data import DataRecord

    if args.checkpoint is not None:
        report = eval_checkpoint(Path(args.checkpoint), args.data, args.data_root, args.seed)
    else:
        report = eval_image(Path(args.image), args.data, args.data_root, args.seed)
    out = Path(args.out) / "eval.json"
    write_json(out, report)
    record = DataRecord.from_json(report["data"], "eval")
    rows = [("data", record.describe()), ("test images", report["test_images"])]
    for key, title in (("float_accuracy", "float (rounding off)"), ("fakequant_accuracy", "fake-quant"),
                       ("golden_accuracy", "golden (integer)")):
        rows.append((title, "n/a" if report[key] is None else report[key]))
    print_table(rows, f"accuracy of {report.get('checkpoint') or report.get('image')}")
    missing: dict[str, list[str]] = {}
    for key, why in report["notes"].items():
        if report[key] is None:
            missing.setdefault(why, []).append(key)
    for why, keys in missing.items():
        print(f"{' and '.join(keys)} n/a: {why}")
    print(f"\nwrote {out}")
    return 0
