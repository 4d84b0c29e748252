"""Checkpoints: a model's config, weights and bit-width masks in one ``torch.save`` file.

Layout: ``{"format": "mpqaccel-checkpoint", "version": 1, "config": {...}, "state_dict": {...},
"meta": {...}}``. Loading uses ``torch.load(..., weights_only=True)`` (no pickled code runs) and checks
every field against the rebuilt model, so a wrong file is reported by name, field and allowed values.

A model trained with BMPQ (model/methods/bmpq.py, its layers in model/quant/bmpq.py) carries ``"quantizer":
"bmpq"``: it is rebuilt from its config and then converted with :func:`model.quant.bmpq.to_bmpq`, so its layers
hold layer-wise ``bits`` instead of element-wise masks; ``"act_bits"`` maps every PACT module's path to its width
(BMPQ sets them per layer). Files without the key are DoReFa models (``"quantizer": "dorefa"``).

A vertical-layered net (model/quant/vertical.py, trained by model/methods/vertical.py) carries ``"quantizer":
"vertical"`` and ``"vertical": {"widths": [...], "compensate": bool[, "float_edges": true]}``: it is rebuilt from
its config and converted with :func:`model.quant.vertical.to_vertical` with those choices, then left at its
source (widest) width. Its state holds one weight and one source step per layer, per-width activation steps
and BatchNorms: every width of the net is in the one file.

The meta records the data set the model was trained on under ``"dataset"`` (:class:`model.data.DataRecord`:
name, absolute root, input shape and bits, split seed and subsets), so that ``export`` can copy it into the
image and ``eval`` can find the test images again: :func:`save_checkpoint` takes it as ``data``, or derives
it from a run directory's ``"run"`` config (the checkpoints of :mod:`model.runs.rundir`);
:func:`checkpoint_data` reads it back (or derives it for files written before the record existed).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from model.data import DataRecord, image_shape_of
from model.errors import UserError
from model.export.golden import WIDTHS
from model.files import atomic_write, refuse_special_file
from model.methods.imq import EXTENDED_HIERARCHY
from model.quant.bmpq import BMPQ_LAYERS, LAYER_BITS, to_bmpq
from model.quant.nets import build_model
from model.quant.pact import PACT, InputQuant
from model.quant.vertical import VERTICAL_LAYER_TYPES, check_widths, set_width, to_vertical, widths_of

FORMAT = "mpqaccel-checkpoint"
VERSION = 1
#: Weight quantizers a checkpoint may name.
QUANTIZERS = ("dorefa", "bmpq", "vertical")
#: The meta key of the data record (:class:`model.data.DataRecord`).
DATA_KEY = "dataset"


def quantizer_of(model) -> str:
    """``"vertical"`` if ``model`` has vertical-layered layers, ``"bmpq"`` if it has BMPQ layers, else
    ``"dorefa"``."""
    if any(isinstance(m, VERTICAL_LAYER_TYPES) for m in model.modules()):
        return "vertical"
    return "bmpq" if any(isinstance(m, BMPQ_LAYERS) for m in model.modules()) else "dorefa"


def save_checkpoint(path, model, meta: dict | None = None, data: DataRecord | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same directory, then rename), its tensors on the CPU.

    ``data`` (the data set it was trained on) goes into the meta as ``"dataset"``; without it, a meta with
    a run directory's ``"run"`` config (:meth:`model.runs.rundir.RunConfig.to_json`) gets the record derived
    from that (:func:`run_data_record`), and any other meta is stored as given.
    """
    path = Path(path)
    meta = dict(meta or {})
    if data is None and DATA_KEY not in meta and isinstance(meta.get("run"), dict):
        data = run_data_record(meta["run"], model, str(path))
    if data is not None:
        meta[DATA_KEY] = data.to_json()
    # CPU tensors whatever the device trained on: the file loads anywhere, and export and the golden model
    # compute the codes from exactly these values.
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": model.config, "quantizer": quantizer_of(model),
               "state_dict": state, "meta": meta}
    if payload["quantizer"] == "bmpq":
        payload["act_bits"] = {n: m.bits for n, m in model.named_modules() if isinstance(m, PACT)}
    if payload["quantizer"] == "vertical":
        payload["vertical"] = dict(model.vertical)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


#: The first bytes of a zip archive (a local file header), which ``torch.save`` writes.
ZIP_HEAD = b"PK\x03\x04"


def _head(path) -> bytes | None:
    """The file's first four bytes, or None where it cannot be opened (a folder, no permission: torch's reason
    then says which)."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return None


def unreadable_checkpoint(path, exc: Exception, what: str = "checkpoint") -> UserError:
    """The error for a file ``torch.load`` cannot read (``what`` it should be): a file that is not a zip archive
    (what ``torch.save`` writes) said so, else torch's reason, its first line whole (its messages run to
    paragraphs)."""
    head = _head(path)
    if head not in (None, ZIP_HEAD):
        return UserError(f"{path}: not a {what}: torch.save writes a zip archive, and this file starts with {head!r}")
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    refused = next((line for line in lines if line.startswith("WeightsUnpickler error:")), None)
    if refused is not None:  # torch's weights-only loader met a Python object: not what train writes
        reason = refused.removeprefix("WeightsUnpickler error:").strip().split(" was not an allowed global")[0]
        return UserError(f"{path}: not a {what}: it holds Python objects, not only tensors and plain data ({reason}; "
                         "a whole torch.save(model)?); train writes state dicts with their config")
    return UserError(f"{path}: not a readable {what} ({type(exc).__name__}: {lines[0] if lines else ''})")


def _zip_damage(path) -> str | None:
    """Why a file that starts as a zip archive is not a whole one (cut short, or a member that fails its CRC), or
    None when :mod:`zipfile` finds nothing wrong with it (torch's reason then stands).

    A member whose recorded CRC is 0 is not checked: ``torch.serialization.set_crc32_options(False)`` makes
    ``torch.save`` write 0 for every member, and such a file is whole (a real CRC of 0 is one in 2^32)."""
    member = None
    try:
        size = Path(path).stat().st_size
        if not zipfile.is_zipfile(path):
            return (f"the zip archive that torch.save writes is cut short or damaged: it starts as one, but its "
                    f"{size:,} bytes hold no end-of-archive record (an interrupted copy or download?)")
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:
                    continue
                member = info.filename
                with archive.open(info) as f:  # (zipfile checks the CRC at the member's end: BadZipFile)
                    while f.read(1 << 20):
                        pass
    except zipfile.BadZipFile as exc:
        if member is not None and "CRC" in str(exc):
            return f"the zip archive that torch.save writes is damaged: its member {member!r} fails its CRC check"
        return f"the zip archive that torch.save writes is damaged (BadZipFile: {exc})"
    except (OSError, EOFError, ValueError) as exc:
        return f"the zip archive that torch.save writes is damaged ({type(exc).__name__}: {exc})"
    return None


def torch_load(path, what: str = "checkpoint"):
    """``torch.load`` of ``path`` (CPU, weights only), a file that is no such ``what`` refused as
    :func:`unreadable_checkpoint` says (the checkpoints here, and a run directory's own files).

    A zip archive is checked whole first (:func:`_zip_damage`): ``torch.load`` reads a file cut short with a
    reason that names no cause, and one whose bytes changed without a word (it checks no CRC), so a flipped
    bit in a weight would load as another weight."""
    damage = _zip_damage(path) if _head(path) == ZIP_HEAD else None
    if damage is not None:
        raise UserError(f"{path}: not a readable {what}: {damage}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, KeyError, TypeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:  # what torch.load raises for files that are not checkpoints
        raise unreadable_checkpoint(path, exc, what) from None


def load_checkpoint(path):
    """Rebuild the model stored at ``path``; returns ``(model, meta)``.

    Raises
    ------
    UserError
        If the file is missing, not a checkpoint, a field does not match the model (shape, mask values), or its
        ``meta`` (or ``meta.run``) is not an object.
    """
    path = Path(path)
    if path.is_dir():
        # The checkpoints in it (not a run's state.pt and theta_0.pt, which are no model checkpoints), the ticket
        # and the one-shot methods' files first.
        first = ("ticket.pt", "bmpq.pt", "vertical.pt")
        found = sorted((p.relative_to(path).as_posix() for pattern in ("*.pt", "iterations/*.pt")
                        for p in path.glob(pattern) if p.name not in ("state.pt", "theta_0.pt")),
                       key=lambda name: (name not in first, name))
        inside = (f"; it holds {', '.join(found[:4])}{', ...' if len(found) > 4 else ''}: give one of those, e.g. "
                  f"{path / found[0]}") if found else (
            "; give the checkpoint file itself (ticket.pt of a `train` run directory, iterations/iter_NNN.pt, "
            "or bmpq.pt)")
        raise UserError(f"{path}: is a directory, not a checkpoint file{inside}")
    refuse_special_file(path, "give a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    payload = torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: field 'format' is not {FORMAT!r}; this is not an mpqaccel checkpoint")
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: field 'version' is {payload.get('version')!r}; supported: {VERSION}")
    try:
        model = build_model(payload.get("config"))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    quantizer = payload.get("quantizer", "dorefa")
    if quantizer not in QUANTIZERS:
        raise UserError(f"{path}: field 'quantizer' is {quantizer!r}; allowed {QUANTIZERS}")
    if quantizer == "bmpq":
        to_bmpq(model)
    if quantizer == "vertical":
        model = _to_vertical(path, model, payload.get("vertical"))
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise UserError(f"{path}: field 'state_dict' is missing")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        raise UserError(f"{path}: field 'state_dict' lacks {missing[:4]} / has unknown {unknown[:4]}")
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(f"{path}: field 'state_dict.{key}' has shape {shape}; the model needs "
                            f"{tuple(ref.shape)}")
        if key.endswith("bit_width"):
            bad = _not_in(value, MASK_WIDTHS)
            if bad.any():
                raise UserError(f"{path}: field 'state_dict.{key}' holds mask value "
                                f"{_shown(value[bad][0])}; allowed {MASK_WIDTHS}")
        if quantizer == "bmpq" and key.endswith(".bits") and _not_in(value, LAYER_BITS).any():
            raise UserError(f"{path}: field 'state_dict.{key}' is {_shown(value.flatten()[0])}; allowed {LAYER_BITS}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path}: field 'state_dict.{key}' holds NaN or infinite values; a trained model's "
                            "parameters are finite")
        if key.endswith(".alpha") and not (value > 0).all():  # PACT's clip (Eq. 5): the step alpha / s divides
            raise UserError(f"{path}: field 'state_dict.{key}' is {value.flatten()[0].item():g}; a PACT clip "
                            "alpha must be > 0")
    model.load_state_dict(state)
    if quantizer == "vertical":
        set_width(model, widths_of(model)[-1])
    if quantizer == "bmpq":
        _load_act_bits(path, model, payload.get("act_bits"))
    meta = payload.get("meta", {})
    if not isinstance(meta, dict):  # (it was read as empty: a note then said the file records no data set)
        raise UserError(f"{path}: field 'meta' is {meta!r:.60}; expected an object (what `build.py train` records: "
                        f"'{DATA_KEY}', 'run', ...)")
    if "run" in meta and not isinstance(meta["run"], dict):
        raise UserError(f"{path}: field 'meta.run' is {meta['run']!r:.60}; expected an object (the run's config)")
    if DATA_KEY in meta:
        _check_data(DataRecord.from_json(meta[DATA_KEY], f"{path}: field 'meta.{DATA_KEY}'"), model, path)
    return model, meta


#: The mask widths a checkpoint may hold: the image format's (:data:`~model.export.golden.WIDTHS`) and the 2 and 1
#: bits of ``train --hierarchy extended`` (:data:`~model.methods.imq.EXTENDED_HIERARCHY`, Fig. 6). `eval` runs such a
#: ticket in float and fake-quant (golden null, with the reason); `export` refuses it, naming its widths
#: (:func:`model.export.convert.to_golden`).
MASK_WIDTHS: tuple[int, ...] = tuple(sorted(set(WIDTHS) | set(EXTENDED_HIERARCHY)))


def _not_in(value: torch.Tensor, allowed: tuple[int, ...]) -> torch.Tensor:
    """Where ``value`` holds none of the integers ``allowed``, compared in its own dtype: a float 4.9 is not 4 (a cast
    to an integer type first would truncate it), and NaN is nothing allowed."""
    if value.is_floating_point():
        return ~torch.isin(value, torch.tensor(allowed, dtype=value.dtype))
    return ~torch.isin(value.to(torch.int64), torch.tensor(allowed))


def _shown(element: torch.Tensor) -> str:
    """One element as the file holds it: ``7`` for an integer, ``7.9`` for a float."""
    number = element.item()
    return f"{number:g}" if isinstance(number, float) else str(number)


def input_bits_of(model) -> int:
    """Width of the model's input codes (its :class:`model.quant.pact.InputQuant`)."""
    return next(m.bits for m in model.modules() if isinstance(m, InputQuant))


def _input_shape(model, name: str, root, image_shape=None) -> tuple[int, int, int]:
    """The model's ``(C, H, W)``: a conv net's ``image_shape``; for an MLP the data set's image shape
    (``image_shape`` if the caller knows it, else read from the data set) when it has ``n_in`` pixels, else
    ``(1, 1, n_in)``."""
    if "image_shape" in model.config:
        return tuple(model.config["image_shape"])
    n_in = int(model.config["n_in"])
    shape = image_shape_of(name, root) if image_shape is None else tuple(int(d) for d in image_shape)
    return shape if shape is not None and shape[0] * shape[1] * shape[2] == n_in else (1, 1, n_in)


def _model_features(model) -> int:
    """Inputs per image the model takes, from its config: ``C*H*W`` of a conv net's ``image_shape``, or ``n_in``."""
    if "image_shape" in model.config:
        c, h, w = model.config["image_shape"]
        return int(c) * int(h) * int(w)
    return int(model.config["n_in"])


def run_data_record(run: dict, model, where: str, image_shape=None) -> DataRecord:
    """The data record of a run config (:meth:`model.runs.rundir.RunConfig.to_json`: ``data``, ``data_root``,
    ``seed``, ``train_subset``, ``test_subset``) and the model trained in it.

    ``image_shape`` is the data set's ``(C, H, W)`` (:attr:`model.data.Split.image_shape`) when the caller has
    loaded it; without it, an MLP's input shape is read from the data set's files.

    Raises
    ------
    UserError
        If a field is missing or not allowed (``where`` names the file).
    """
    try:
        name, root = run["data"], run.get("data_root")
        if root is not None and not isinstance(root, str):  # (read for an MLP's image shape before the record checks it)
            raise UserError(f"{where}: field 'meta.run.data_root' is {root!r}; allowed a folder path or null")
        return DataRecord.of(name, root, _input_shape(model, name, root, image_shape), input_bits_of(model),
                             run["seed"], run.get("train_subset"), run.get("test_subset"),
                             where=f"{where}: field 'meta.run'")
    except KeyError as exc:
        raise UserError(f"{where}: field 'meta.run' lacks {exc.args[0]!r}") from None


def _check_data(record: DataRecord, model, path) -> DataRecord:
    features = _model_features(model)
    shape = tuple(model.config["image_shape"]) if "image_shape" in model.config else None
    if record.features != features or (shape is not None and record.input_shape != shape):
        raise UserError(f"{path}: field 'meta.{DATA_KEY}.input_shape' is {list(record.input_shape)}; the model "
                        f"takes {list(shape) if 'image_shape' in model.config else features} inputs")
    if record.input_bits != input_bits_of(model):
        raise UserError(f"{path}: field 'meta.{DATA_KEY}.input_bits' is {record.input_bits}; the model's input "
                        f"quantizer has {input_bits_of(model)} bits")
    return record


def checkpoint_data(path, model, meta: dict) -> DataRecord | None:
    """The data set the checkpoint at ``path`` was trained on (``model, meta = load_checkpoint(path)``).

    From the meta's ``"dataset"``; for a run directory's checkpoint written before that existed, derived
    from its ``"run"`` config; ``None`` if the file records neither (callers then say what they assume).

    Raises
    ------
    UserError
        If the record is malformed or does not fit the model (input shape, input bits).
    """
    if DATA_KEY in meta:
        return DataRecord.from_json(meta[DATA_KEY], f"{path}: field 'meta.{DATA_KEY}'")
    if isinstance(meta.get("run"), dict):
        return _check_data(run_data_record(meta["run"], model, str(path)), model, path)
    return None


def _load_act_bits(path: Path, model, act_bits) -> None:

    acts = {n: m for n, m in model.named_modules() if isinstance(m, PACT)}
    if not isinstance(act_bits, dict) or set(act_bits) != set(acts):
        raise UserError(f"{path}: field 'act_bits' must map exactly the PACT modules {sorted(acts)[:4]}...")
    for name, bits in act_bits.items():
        try:
            PACT(bits)
        except ValueError as exc:
            raise UserError(f"{path}: field 'act_bits.{name}': {exc}") from None
        acts[name].bits = bits


def _to_vertical(path: Path, model, vertical):
    """``model`` converted by :func:`to_vertical` with the checkpoint's ``"vertical"`` choices (checked)."""
    if not isinstance(vertical, dict) or "widths" not in vertical:
        raise UserError(f"{path}: field 'vertical' must be a dict with 'widths' (and 'compensate'), not {vertical!r}")
    try:
        widths = check_widths(vertical["widths"], "vertical.widths")
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    for key in ("compensate", "float_edges"):
        if not isinstance(vertical.get(key, False), bool):
            raise UserError(f"{path}: field 'vertical.{key}' is {vertical[key]!r}; allowed true or false")
    try:
        return to_vertical(model, widths, vertical.get("compensate", True), vertical.get("float_edges", False))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def save_vertical_checkpoint(path, model, meta: dict | None = None) -> Path:
    """Write a vertical net (:mod:`model.methods.vertical`): :func:`save_checkpoint` (``"quantizer":
    "vertical"``); :func:`load_checkpoint` and :func:`load_vertical_checkpoint` read it back."""
    if quantizer_of(model) != "vertical":
        raise UserError("save_vertical_checkpoint: the model has no vertical-layered layer")
    return save_checkpoint(path, model, meta)


def load_vertical_checkpoint(path):
    """:func:`load_checkpoint` for a file that must hold a vertical net; returns ``(model, meta)``.

    Raises
    ------
    UserError
        From :func:`load_checkpoint`, or naming the field ``quantizer`` if the file holds another net.
    """
    model, meta = load_checkpoint(path)
    if quantizer_of(model) != "vertical":
        raise UserError(f"{path}: field 'quantizer' is {quantizer_of(model)!r}, not 'vertical'; this is not a "
                        f"vertical-layered checkpoint")
    return model, meta
