"""``build.py eval``: float / fake-quant / golden accuracy of a checkpoint, or golden accuracy of an image.

Both read the test images of the data set that the checkpoint's meta or the image's manifest records
(:class:`model.data.DataRecord`), or another one given with ``--data`` / ``--data-root``; a file that
records none (written before files recorded it) is read on digits, with a note
(:mod:`model.export.vectors`, which ``sim`` and ``verilog`` read too). Heavy modules (torch) are imported inside the
functions so that ``--help`` stays fast; see :mod:`model.cli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import (
    DEFAULT_OUT,
    SEED,
    add_data_override_args,
    path_text,
    print_table,
    refuse_taken_outputs,
    refuse_unused_seed,
    write_result,
)

HELP = "accuracy of a checkpoint (float, fake-quant, golden) or of an exported image (golden) on its own data set"

#: Images classified per forward pass in the fake-quant and float evaluations (bounds memory of conv nets).
EVAL_BATCH = 500


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=path_text, default=None,
                      help="checkpoint from `train` (ticket.pt, iterations/iter_NNN.pt, bmpq.pt): float, fake-quant "
                           "and golden accuracy")
    what.add_argument("--image", type=path_text, default=None, help="image directory from `export`: golden accuracy")
    add_data_override_args(p, "the checkpoint or image")
    p.add_argument("--seed", type=SEED, default=None,
                   help="digits split seed for a file that records no data set (default: 0; refused for a file "
                        "that records its data set, whose split it keeps)")
    p.add_argument("--bits", type=int, default=None,
                   help="vertical-layered image (format version 4): evaluate this stored width only (default: every "
                        "stored width and every Eq. 12 row of its table)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "eval"),
                   help="output directory for eval.json (default: out/eval)")


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

    if any(isinstance(m, PACT | InputQuant) and m.full_precision for m in model.modules()):
        return None, f"{path}: PACT-32 activations have no integer codes (act_bits 1..8 export)"
    from model.runs.checkpoint import quantizer_of

    try:
        if quantizer_of(model) == "vertical":  # at the width the checkpoint loads at (its source width)
            from model.export.convert_vertical import to_golden_vertical

            net = to_golden_vertical(model)
            return net.materialize(net.widths[-1]), None
        return to_golden(model), None
    except UserError as exc:  # (either path: named by the checkpoint)
        return None, f"{path}: {exc}"


def eval_checkpoint(path, data: str | None, data_root: str | None, seed: int | None) -> dict:
    """Float, fake-quant and golden accuracy of the checkpoint at ``path`` on its recorded test images
    (``seed``: the digits split of a checkpoint that records no data set; None for the default, 0)."""
    from model.export.convert import golden_accuracy
    from model.export.vectors import default_record
    from model.runs.checkpoint import checkpoint_data, input_bits_of, load_checkpoint
    from model.training.loop import evaluate

    model, meta = load_checkpoint(path)
    record = checkpoint_data(path, model, meta)
    where = f"{path}: field 'meta.dataset'"
    if record is None:
        where = str(path)
        shape = model.config.get("image_shape") or ((1, 8, 8) if model.config["n_in"] == 64
                                                    else (1, 1, model.config["n_in"]))
        record = default_record(shape, input_bits_of(model), seed or 0, where)
    else:
        refuse_unused_seed(seed, f"{path} (field 'meta.dataset')")
    record = record.override(data, data_root)
    split = record.load_test(where, n_classes=int(model.config["n_classes"]), network=f"the checkpoint {path}")
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
            "float_baseline_accuracy": recorded_accuracy(meta, path), "notes": notes}


def recorded_accuracy(meta: dict, path) -> float | None:
    """The float baseline's accuracy a checkpoint records (``meta.float_accuracy``), None when it records none;
    UserError naming the field when it is not a number in [0, 1] (it went into eval.json as written)."""
    from model.errors import UserError

    value = meta.get("float_accuracy")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"{path}: field 'meta.float_accuracy' is {value!r}; allowed a number in [0, 1] or none")
    return float(value)


def eval_image(image_dir, data: str | None, data_root: str | None, seed: int | None) -> dict:
    """Golden accuracy of the image in ``image_dir`` on its recorded test images (``seed`` as for
    :func:`eval_checkpoint`)."""
    from model.export.vectors import image_vectors

    vectors = image_vectors(image_dir, None, seed or 0, data, data_root)
    if "data" in vectors.manifest:
        refuse_unused_seed(seed, f"{image_dir} (manifest.json field 'data')")
    golden = float((vectors.expected.argmax(axis=1) == vectors.labels).mean())
    why = "an image holds integer codes only; `eval --checkpoint` gives the float and fake-quant accuracy"
    return {"image": str(image_dir), "data": vectors.data.to_json(), "test_images": len(vectors.labels),
            "float_accuracy": None, "fakequant_accuracy": None, "golden_accuracy": golden,
            "avg_weight_bits": vectors.net.avg_weight_bits,  # the network's (the manifest's went in unchecked)
            "notes": {"float_accuracy": why, "fakequant_accuracy": why}}


def eval_vertical_image(image_dir, bits: int | None, data: str | None, data_root: str | None) -> dict:
    """Golden accuracy of a version 4 (vertical-layered) image at ``bits`` (default every stored width, and
    every Eq. 12 row of its table), on the test images its manifest records."""
    import numpy as np

    from model.data import DataRecord
    from model.errors import UserError
    from model.export.golden_vertical import TableRow
    from model.export.image_v4 import bytes_read, read_vertical_image
    from model.export.vectors import check_record
    from model.quant.pact import InputQuant

    net, manifest = read_vertical_image(image_dir)
    path = Path(image_dir)
    man_path = path / "manifest.json" if path.is_dir() else path
    if "data" not in manifest:
        raise UserError(f"{man_path}: field 'data' is missing; a vertical image records its data set")
    where = f"{man_path}: field 'data'"
    record = check_record(DataRecord.from_json(manifest["data"], where), net.materialize(net.widths[-1]), where)
    split = record.override(data, data_root).load_test(where, n_classes=net.layers[-1].n_out,
                                                       network=f"the image {path}")
    if bits is not None and bits not in net.widths:
        raise UserError(f"--bits {bits}: allowed the image's stored widths {list(net.widths)}")
    x = split.x_test
    if net.image_shape is not None:
        x = x.reshape(x.shape[0], *net.image_shape)
    u = InputQuant(net.input_bits).to_codes(x).numpy()
    y = split.y_test.numpy()
    # A table row runs as that row (TableRow): with its own requant records where the image has them.
    assignments = [bits] if bits is not None else [*net.widths, *(TableRow(r) for r in range(len(net.table)))]
    rows = []
    for a in assignments:
        golden = net.materialize(a)
        pred = np.concatenate([golden.predict(u[i:i + EVAL_BATCH]) for i in range(0, len(u), EVAL_BATCH)])
        rows.append({"bits": a if isinstance(a, int) else list(net.assignment(a)),
                     "golden_accuracy": float((pred == y).mean()), "weight_bytes_read": bytes_read(net, a)})
        if isinstance(a, TableRow):
            rows[-1]["table_row"] = a.index
    why = "an image holds integer codes only; `eval --checkpoint` gives the float and fake-quant accuracy"
    top = rows[0]["golden_accuracy"] if bits is not None else rows[len(net.widths) - 1]["golden_accuracy"]
    return {"image": str(image_dir), "data": record.to_json(), "test_images": len(y), "format_version": 4,
            "widths": list(net.widths), "per_width": rows, "float_accuracy": None, "fakequant_accuracy": None,
            "golden_accuracy": top, "notes": {"float_accuracy": why, "fakequant_accuracy": why}}


def _image_version(image_dir) -> int | None:
    import json

    path = Path(image_dir)
    man_path = path / "manifest.json" if path.is_dir() else path
    try:
        return json.loads(man_path.read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None  # the ordinary reader reports what is wrong


def run(args) -> int:
    from model.data import DataRecord
    from model.errors import UserError

    refuse_taken_outputs(args.out, ["eval.json"], what="eval")  # before a conv net's evaluation, not after it
    vertical = args.image is not None and _image_version(args.image) == 4
    if args.bits is not None and not vertical:
        raise UserError("--bits applies to a vertical-layered image (format version 4) only")
    if vertical:
        refuse_unused_seed(args.seed, f"{args.image} (a vertical-layered image)")
        report = eval_vertical_image(Path(args.image), args.bits, args.data, args.data_root)
    elif args.checkpoint is not None:
        report = eval_checkpoint(Path(args.checkpoint), args.data, args.data_root, args.seed)
    else:
        report = eval_image(Path(args.image), args.data, args.data_root, args.seed)
    out = Path(args.out) / "eval.json"
    write_result(out, report)
    record = DataRecord.from_json(report["data"], "eval")
    rows = [("data", record.describe()), ("test images", report["test_images"])]
    for key, title in (("float_accuracy", "float (rounding off)"), ("fakequant_accuracy", "fake-quant"),
                       ("golden_accuracy", "golden (integer)")):
        rows.append((title, "n/a" if report[key] is None else report[key]))
    for row in report.get("per_width", []):
        label = row["bits"] if isinstance(row["bits"], int) else (
            f"Eq. 12 row {row['table_row']}: " if "table_row" in row else "Eq. 12 ") + ",".join(map(str, row["bits"]))
        rows.append((f"golden at {label} bits ({row['weight_bytes_read']} weight bytes)", row["golden_accuracy"]))
    print_table(rows, f"accuracy of {report.get('checkpoint') or report.get('image')}")
    missing: dict[str, list[str]] = {}
    for key, why in report["notes"].items():
        if report[key] is None:
            missing.setdefault(why, []).append(key)
    for why, keys in missing.items():
        print(f"{' and '.join(keys)} n/a: {why}")
    print(f"\nwrote {out}")
    return 0
