"""``build.py export``: a checkpoint -> the packed image (weights.bin, weights.hex, manifest.json).

The manifest records the data set the checkpoint was trained on (``"data"``, :class:`model.data.DataRecord`),
so that ``sim``, ``verilog`` and ``eval --image`` feed the image its own test images. Heavy modules (torch)
are imported inside the functions so that ``--help`` stays fast; see :mod:`model.cli`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.cli import DEFAULT_OUT, path_text, print_table
from model.revision import code_revision, revision_part

HELP = ("checkpoint (MLP, ResNet-20 or VGG; any method) -> packed image, format version 3 (weights.bin, weights.hex, "
        "manifest.json with the data set and the memory report); a vertical-layered checkpoint (train --method "
        "vertical; MLP, VGG or ResNet-20) -> format version 4, every width in one image")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=path_text, default=str(DEFAULT_OUT / "train" / "ticket.pt"),
                   help="checkpoint from `train` (default: out/train/ticket.pt)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "image"), help="image directory (default: out/image)")


def run(args) -> int:
    from model.runs.checkpoint import checkpoint_data, load_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    data = checkpoint_data(args.checkpoint, model, meta)
    if data is None:
        print(f"note: {args.checkpoint} does not record its data set (written before checkpoints did); the "
              f"image will not either, and `sim` / `verilog` / `eval` will assume digits unless given --data",
              file=sys.stderr)
    from model.runs.checkpoint import quantizer_of

    if quantizer_of(model) == "vertical":
        return _export_vertical(args, model, meta, data)
    from model.export.convert import export_image

    manifest = export_image(model, Path(args.out), data, where=str(args.checkpoint), revisions=revisions(meta))
    print_table([("arch", model.config.get("arch", "mlp")), ("format version", manifest["version"]),
                 ("words", manifest["words"]), ("avg weight bits", manifest["avg_weight_bits"]),
                 ("sha256", manifest["sha256"][:16]), ("data", "unrecorded" if data is None else data.describe())],
                f"image written to {args.out}")
    print("\n" + format_memory(manifest["memory"]))
    return 0


def _export_vertical(args, model, meta: dict, data) -> int:
    """Version 4 image of a vertical net, with the Eq. 12 rows the training recorded (meta ``eq12_table``) and
    their re-estimated BN statistics (``eq12_bn``; a checkpoint without them, written before they were
    recorded, gets the rows with the per-width BN as trained)."""
    from model.export.convert_vertical import export_vertical_image

    table = meta.get("eq12_table")  # (checked with the net: model.export.convert_vertical.checked_eq12)
    manifest = export_vertical_image(model, Path(args.out), data, table, row_bn=meta.get("eq12_bn"),
                                     revisions=revisions(meta), where=str(args.checkpoint))
    rows = [("arch", model.config.get("arch", "mlp")), ("format version", manifest["version"]),
            ("widths", ",".join(map(str, manifest["widths"]))), ("Eq. 12 table rows", len(manifest["table"])),
            ("words", manifest["words"]), ("sha256", manifest["sha256"][:16]),
            ("data", "unrecorded" if data is None else data.describe())]
    rows += [(f"weight bytes read at {b} bits", n) for b, n in manifest["weight_bytes_read"].items()]
    print_table(rows, f"vertical image written to {args.out}")
    return 0


def revisions(meta: dict) -> dict:
    """What an image's manifest records of where it came from (under ``extra``): ``code_revision``, the code that
    exported it (:mod:`model.revision`), and ``training_revision``, the code revision the checkpoint records of
    its training (its ``meta.provenance``; None where it records none)."""
    return {"code_revision": code_revision(), "training_revision": revision_part(meta.get("provenance"))}


def format_memory(memory: dict) -> str:
    """The manifest's memory report as a table, beside the paper's ResNet-20 figures."""
    paper = memory["paper_resnet20"]
    rows = [("payload", memory["payload_bytes"], f"{memory['avg_weight_bits']:.2f} bits per weight"),
            ("metadata", memory["metadata_bytes"],
             (f"{memory['metadata_bits_per_weight']:.3f} bits per weight; width-map entropy "
             f"{memory['width_entropy_bits']:.3f} (per layer {memory['width_entropy_layer_bits']:.3f})")),
            ("requant params", memory["param_bytes"], ""),
            ("image total", memory["image_bytes"],
             f"{memory['weights']:,} weights, {memory['nonzero_fraction']:.1%} non-zero"),
            ("FP32 weights", memory["fp32_bytes"], "")]
    lines = [f"{'memory':<16}{'bytes':>12}  ", "-" * 60]
    lines += [f"{name:<16}{value:>12,.0f}  {note}" for name, value, note in rows]
    lines.append(f"paper (ResNet-20): payload {paper['payload_mb_at_2.29_bits']} MB at 2.29 bits, FP32 "
                 f"{paper['fp32_mb']} MB")
    return "\n".join(lines)
