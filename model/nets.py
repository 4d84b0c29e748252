"""Networks that the accelerator runs: quantized MLPs (input quantizer, QuantLinear + PACT stacks)."""

from __future__ import annotations

import itertools

from torch import nn

from .errors import UserError
from .golden import MAX_ACT_BITS, MAX_FAN_IN
from .layers import QuantLinear
from .quant import PACT, InputQuant

#: The keys of :attr:`DigitsMLP.config`, which :func:`build_model` accepts.
CONFIG_KEYS = ("n_in", "hidden", "n_classes", "act_bits")


class DigitsMLP(nn.Module):
    """``InputQuant -> [QuantLinear -> PACT] * len(hidden) -> QuantLinear`` (class logits).

    Parameters
    ----------
    n_in : int
        Input features (64 for the 8x8 digits).
    hidden : tuple of int
        Hidden layer sizes; at least one, so the network has at least two quantized layers.
    n_classes : int
        Output classes.
    act_bits : int
        Width of every activation code, input included (1..8).

    Raises
    ------
    ValueError
        If ``hidden`` is empty or ``act_bits`` is outside 1..8.

    Members
    -------
    config : dict
        ``{"n_in", "hidden", "n_classes", "act_bits"}``; :func:`build_model` rebuilds the model from it.
    """

    def __init__(
        self, n_in: int = 64, hidden: tuple[int, ...] = (64,), n_classes: int = 10, act_bits: int = 4
    ):
        super().__init__()
        if not hidden:
            raise ValueError(f"DigitsMLP needs at least one hidden layer, not hidden={hidden!r}")
        self.config = {"n_in": n_in, "hidden": list(hidden), "n_classes": n_classes, "act_bits": act_bits}
        sizes = [n_in, *hidden, n_classes]
        self.input_quant = InputQuant(act_bits)
        self.linears = nn.ModuleList(
            QuantLinear(a, b, name=f"fc{i + 1}") for i, (a, b) in enumerate(itertools.pairwise(sizes))
        )
        self.acts = nn.ModuleList(PACT(act_bits) for _ in hidden)

    def forward(self, x):
        x = self.input_quant(x)
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return x

    def quant_layers(self) -> list[QuantLinear]:
        """The quantized layers, input to output."""
        return list(self.linears)

    def stages(self) -> list[tuple[QuantLinear, PACT | InputQuant, PACT | None]]:
        """``(linear, quantizer of its input, quantizer of its output or None for the last layer)``."""
        ins = [self.input_quant, *self.acts]
        outs = [*self.acts, None]
        return list(zip(self.linears, ins, outs))


def build_model(config: dict) -> DigitsMLP:
    """Rebuild a :class:`DigitsMLP` from its :attr:`~DigitsMLP.config` (e.g. read from a checkpoint).

    Raises
    ------
    UserError
        If a key is missing or unknown, or a value is out of range; the message names the field.
    """
    if not isinstance(config, dict):
        raise UserError(f"model config must be a dict with keys {CONFIG_KEYS}, not {type(config).__name__}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if missing or unknown:
        raise UserError(
            f"model config: missing keys {missing}, unknown keys {unknown}; expected {CONFIG_KEYS}"
        )

    def count(field, value, lo, hi):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise UserError(f"model config: field '{field}' is {value!r}; allowed integers {lo}..{hi}")
        return value

    hidden = config["hidden"]
    if not isinstance(hidden, list | tuple) or not hidden:
        raise UserError(f"model config: field 'hidden' is {hidden!r}; allowed a non-empty list of sizes")
    return DigitsMLP(
        n_in=count("n_in", config["n_in"], 1, MAX_FAN_IN),
        hidden=tuple(count("hidden", h, 1, MAX_FAN_IN) for h in hidden),
        n_classes=count("n_classes", config["n_classes"], 2, MAX_FAN_IN),
        act_bits=count("act_bits", config["act_bits"], 1, MAX_ACT_BITS),
    )


class FloatMLP(nn.Module):
    """The float baseline of :class:`DigitsMLP`: same sizes, ``nn.Linear`` and ReLU, no quantizer."""

    def __init__(self, n_in: int = 64, hidden: tuple[int, ...] = (64,), n_classes: int = 10):
        super().__init__()
        sizes = [n_in, *hidden, n_classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(hidden):
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)
