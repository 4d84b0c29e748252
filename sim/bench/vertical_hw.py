"""The hardware rows of ``build.py bench vertical``: one vertical-layered image on the array's RTL at every width.

The trained vertical model of the bench (``model/bench/vertical.py``, exported by its
:func:`~model.bench.vertical.export_for_hardware` as a version 4 image and the test images' 8-bit codes) runs
on **one** build of the array (:class:`~hw.array.top.ConvArray`, Verilator), loaded once per width through the
load port and run with the width on the array's ``precision`` input (the Zynq shell's ``precision``
register): the same bitstream, the same image words, every trained width. Per width a row

``{arch, bits, cycles_per_image, bytes_read_per_image, weight_bytes_read_per_image, rtl_images,
rtl_mismatches, read_mismatches, golden_accuracy}``

with the cycles from ``start`` to ``done`` (the input codes' transfer included) and the bytes the array read
from its global buffer during the run (``reads`` / ``weight_reads`` counters of the RTL, 4 bytes a word:
descriptors, requant groups and weights / the weights alone). Every image's scores are compared with golden
(:meth:`~model.export.golden_vertical.VerticalNetwork.forward` at that width), and its two counters with the
words the image's schedule reads (:func:`sim.reads.words_read`): ``read_mismatches`` counts the images whose
counters differ, so the bytes a row reports are the words the controller's schedule reads, no more and no fewer.

The array configuration is the smallest that runs the image (:func:`hw.array.sizing.config_for`) with
:data:`ENGINES` engines and the fewest lanes whose tile holds the widest output row: the MLP has one pixel a
tile (its cycles come from the engines, rows in parallel), the VGG 28-pixel rows (14 lanes).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hw.array.sizing import config_for
from hw.platform.verilog import array_verilog, write_text_atomically
from model.bench.floors import floor_entry
from model.errors import UserError
from model.export.image_v4 import read_vertical_image
from sim.array_runner import run_array_cases
from sim.reads import read_mismatches as count_read_mismatches
from sim.reads import words_read
from sim.runner import SimulationError

ENGINES = 4
#: Lanes per engine: None, the fewest whose tile holds the widest output row (1 for the MLP, 14 for the
#: VGG's 28-pixel rows).
LANES = None
#: Images per width the floors need.
MIN_IMAGES = 100
#: ... per architecture where fewer: ResNet-20 runs 10 a width (about 13 s an image on Verilator at 28x28; the
#: MLP and the VGG carry the issue's 100).
MIN_IMAGES_BY_ARCH = {"resnet20": 10}


def run_vertical_hardware(exports: dict, out_dir, *, simulator: str = "verilator", engines: int = ENGINES,
                          lanes: int | None = LANES, progress: bool = True) -> dict:
    """Run each exported architecture's image at each of its stored widths (module docstring).

    Returns ``{"rows": [...], "config": {arch: ArrayConfig fields}, "seconds": ...}``.

    Raises
    ------
    UserError
        A missing export, or the simulator failing.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    rows, configs = [], {}
    for arch, ex in exports.items():
        image_dir = Path(ex["image"])
        net, _ = read_vertical_image(image_dir)
        words = np.fromfile(image_dir / "weights.bin", dtype="<u4").astype(np.int64)
        with np.load(ex["inputs"]) as data:
            codes, labels = data["codes"].astype(np.int64), data["labels"].astype(np.int64)
        config = config_for([words], engines=engines, lanes=lanes)
        configs[arch] = {k: getattr(config, k) for k in ("engines", "lanes", "buffer_words", "fmap_rows", "row_codes",
                                                          "fan_in_width", "channel_bits")}
        vpath = write_text_atomically(out_dir / arch / "mpq_array.v", array_verilog(config))
        widths = list(net.widths)
        expected = {b: net.forward(codes.reshape(len(codes), *(net.image_shape or (-1,))), b) for b in widths}
        cases = [(words, codes, expected[b].astype(np.int64), int(b)) for b in widths]
        if progress:
            print(f"bench vertical: {arch} on the RTL ({simulator}), {len(codes)} images at each of {widths} bits")
        try:
            res = run_array_cases(vpath, cases, work_dir=out_dir / arch / "sim", simulator=simulator, stall=False)
        except SimulationError as exc:
            raise UserError(f"bench vertical: the simulator failed ({exc})") from exc
        if res.get("error") and not res.get("timed_out"):
            raise UserError(f"bench vertical: the testbench stopped ({res['error']}); see {res['log']}")
        n = len(codes)
        scores = res["scores"]
        for k, b in enumerate(widths):
            got = scores[k * n:(k + 1) * n]
            span = res["image_cycles"][k * n:(k + 1) * n]
            reads = res["image_reads"][k * n:(k + 1) * n]
            weight_reads = res["image_weight_reads"][k * n:(k + 1) * n]
            mismatches = sum(g != e for g, e in zip(got, expected[b].tolist())) + (n - len(got))
            want_reads = words_read(net, config, int(b), words=words)
            read_mismatches = count_read_mismatches(weight_reads, reads, want_reads, n)
            rows.append({
                "arch": arch, "bits": int(b),
                "cycles_per_image": float(np.mean(span)) if span else None,
                "bytes_read_per_image": 4 * float(np.mean(reads)) if reads else None,
                "weight_bytes_read_per_image": 4 * float(np.mean(weight_reads)) if weight_reads else None,
                "rtl_images": len(got), "rtl_mismatches": int(mismatches), "read_mismatches": int(read_mismatches),
                "statuses": sorted(set(res["statuses"][k * n:(k + 1) * n])),
                "golden_accuracy": float((expected[b].argmax(axis=1) == labels).mean()),
            })
    return {"rows": rows, "config": configs, "simulator": simulator, "seconds": round(time.perf_counter() - t0, 1)}


def floors(rows: list[dict]) -> dict[str, dict]:
    """0 mismatches of scores and of words read over at least :data:`MIN_IMAGES` images (:data:`MIN_IMAGES_BY_ARCH`)
    at every width; cycles and bytes read at the lowest width below those at the highest (per architecture)."""
    out = {}
    for arch in sorted({r["arch"] for r in rows}):
        mine = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["bits"])
        for r in mine:
            out[f"{arch}_rtl_images_{r['bits']}bit"] = floor_entry(r["rtl_images"],
                                                                   MIN_IMAGES_BY_ARCH.get(arch, MIN_IMAGES), ">=")
            out[f"{arch}_rtl_mismatches_{r['bits']}bit"] = floor_entry(r["rtl_mismatches"], 0, "<=")
            out[f"{arch}_read_mismatches_{r['bits']}bit"] = floor_entry(r.get("read_mismatches"), 0, "<=")
        lo, hi = mine[0], mine[-1]
        for key in ("cycles_per_image", "bytes_read_per_image"):
            ratio = lo[key] / hi[key] if lo[key] and hi[key] else None
            out[f"{arch}_{key}_{lo['bits']}bit_over_{hi['bits']}bit"] = floor_entry(ratio, 1.0, "<")
    return out
