"""Checkpoints: a model's config, weights and bit-width masks in one ``torch.save`` file.

Layout: ``{"format": "mpqaccel-checkpoint", "version": 1, "config": {...}, "state_dict": {...},
"meta": {...}}``. Loading uses ``torch.load(..., weights_only=True)`` (no pickled code runs) and checks
every field against the rebuilt model, so a wrong file is reported by name, field and allowed values.

A model trained with BMPQ (model/bmpq.py) carries ``"quantizer": "bmpq"``: it is rebuilt from its config
and then converted with :func:`model.bmpq.to_bmpq`, so its layers hold layer-wise ``bits`` instead of
element-wise masks; ``"act_bits"`` maps every PACT module's path to its width (BMPQ sets them per layer).
Files without the key are DoReFa models (``"quantizer": "dorefa"``).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from model.errors import UserError
from model.export.golden import WIDTHS
from model.files import atomic_write
from model.quant.bmpq import BMPQ_LAYERS, LAYER_BITS, to_bmpq
from model.quant.nets import build_model
from model.quant.pact import PACT

FORMAT = "mpqaccel-checkpoint"
VERSION = 1
#: Weight quantizers a checkpoint may name.
QUANTIZERS = ("dorefa", "bmpq")


def quantizer_of(model) -> str:
    """``"bmpq"`` if ``model`` has BMPQ layers, else ``"dorefa"``."""

    return "bmpq" if any(isinstance(m, BMPQ_LAYERS) for m in model.modules()) else "dorefa"


def save_checkpoint(path, model, meta: dict | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)

    payload = {"format": FORMAT, "version": VERSION, "config": model.config, "quantizer": quantizer_of(model),
               "state_dict": model.state_dict(), "meta": meta or {}}
    if payload["quantizer"] == "bmpq":
        payload["act_bits"] = {n: m.bits for n, m in model.named_modules() if isinstance(m, PACT)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path):
    """Rebuild the model stored at ``path``; returns ``(model, meta)``.

    Raises
    ------
    UserError
        If the file is missing, not a checkpoint, or a field does not match the model (shape, mask values).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, KeyError, TypeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:  # what torch.load raises for files that are not checkpoints
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
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
            bad = ~torch.isin(value.to(torch.int64), torch.tensor(WIDTHS))
            if bad.any():
                raise UserError(f"{path}: field 'state_dict.{key}' holds mask value "
                                f"{int(value[bad][0])}; allowed {WIDTHS}")
        if quantizer == "bmpq" and key.endswith(".bits") and int(value) not in LAYER_BITS:
            raise UserError(f"{path}: field 'state_dict.{key}' is {int(value)}; allowed {LAYER_BITS}")
    model.load_state_dict(state)
    if quantizer == "bmpq":
        _load_act_bits(path, model, payload.get("act_bits"))
    meta = payload.get("meta", {})
    return model, meta if isinstance(meta, dict) else {}


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
