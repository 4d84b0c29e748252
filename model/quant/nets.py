"""Quantized networks, each rebuilt from its JSON-able ``config`` by :func:`build_model`.

* ``"mlp"``: :class:`DigitsMLP`, ``InputQuant -> [QuantLinear -> PACT]* -> QuantLinear``.
* ``"resnet20"``: :class:`ResNet20`, the CIFAR ResNet-20 of He et al. (2016, Sec. 4.2) that the MPQ-tickets
  paper benchmarks (Sec. 4, "ResNet20s"), for any ``(C, H, W)`` input (CIFAR 3x32x32, Fashion-MNIST 1x28x28).
* ``"vgg"``: :class:`SmallVGG`, a few ``conv-BN-PACT-maxpool`` blocks and one FC, small enough to train
  on Fashion-MNIST on 2 CPU cores.

The exporter takes all three (model/export/convert.py: the MLP by its :meth:`DigitsMLP.stages`, the conv nets
stage by stage, into the version 3 image); the accelerator core in hw/ runs the MLP. PACT-32 networks have
no integer activation codes at all and are refused.

Every weight layer, the first and the last included, is a :class:`~model.quant.layers.QuantLinear` or
:class:`~model.quant.layers.QuantConv2d` with an element-wise mask: Algorithm 1 masks all of ``theta``
(``m_q = {32}^|theta|``, Sec. 3.2), and which layers a method's masks move is the method's choice: IMQ and its
baselines move the conv layers' only, as the paper's experiments do (Fig. 1's caption: "in experiments we only
quantize or prune weights of convolutional layers"; :func:`model.methods.imq.schedule_layers`), so a conv
net's classifier stays at 32 bits (a 32-bit DoReFa weight, Eq. 3 and 7: normalised by ``tanh`` and its maximum,
where the paper leaves a float layer; the accelerator has no float), and the MLP (the paper's Fig. 1 example) has
every layer's mask moved. BatchNorm parameters and biases stay full precision (they fold into the per-channel
requantization). Every ReLU is a :class:`~model.quant.pact.PACT` with ``act_bits`` (1..8, or 32 for the paper's
PACT-32, Sec. 4).

Inputs arrive flattened, ``[N, C*H*W]`` in ``[0, 1]`` (as every :class:`~model.data.Split` holds them); the
conv nets reshape them with their ``image_shape`` and quantize them with an ``InputQuant`` of
``input_bits`` (default 8, which is lossless for 8-bit pixels ``p / 255``).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from model.errors import UserError
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN
from model.quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLinear
from model.quant.pact import FULL_PRECISION_BITS, PACT, InputQuant

#: The keys of :attr:`DigitsMLP.config`, which :func:`build_model` accepts (plus an optional
#: ``"arch": "mlp"``).
CONFIG_KEYS = ("n_in", "hidden", "n_classes", "act_bits")

#: The values of a config's ``"arch"`` field; a config without one is an ``"mlp"`` (older checkpoints).
ARCHS = ("mlp", "resnet20", "vgg")

#: Allowed activation widths of the conv nets: integer codes of 1..8 bits, or 32 (PACT-32, full precision).
ACT_BITS_ALLOWED = (*range(1, MAX_ACT_BITS + 1), FULL_PRECISION_BITS)

#: Required keys of :attr:`ResNet20.config` and :attr:`SmallVGG.config`; ``input_bits`` (and the VGG's
#: ``channels``) are optional in :func:`build_model` and default to the constructors' defaults.
CONV_CONFIG_KEYS = ("arch", "image_shape", "n_classes", "act_bits")

#: Channels of the three ResNet-20 stages and basic blocks per stage (He et al. 2016, Sec. 4.2: 6n + 2 = 20).
RESNET20_STAGES = ((16, 3), (32, 3), (64, 3))

#: Default output channels of the :class:`SmallVGG` blocks.
VGG_CHANNELS = (16, 32, 64)


#: The largest image side (H and W) the conv nets take.
MAX_IMAGE_SIDE = 1024


def min_image_side(arch: str, channels: tuple[int, ...] = VGG_CHANNELS) -> int:
    """The smallest image side (H and W) a conv net takes: 4 for ResNet-20 (two stride-2 stages), ``2^len(channels)``
    for the VGG (a 2x2 max-pool per block)."""
    return 4 if arch == "resnet20" else 2 ** len(channels)


def _check_image_shape(image_shape, min_side: int) -> tuple[int, int, int]:
    """``(C, H, W)`` as a tuple of ints, or ``ValueError`` naming the value."""
    shape = tuple(image_shape)
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
        raise ValueError(f"image_shape must be three integers (C, H, W), not {image_shape!r}")
    c, h, w = shape
    if not 1 <= c <= 64 or not min_side <= h <= MAX_IMAGE_SIDE or not min_side <= w <= MAX_IMAGE_SIDE:
        raise ValueError(f"image_shape {shape} out of range: C in 1..64, H and W in {min_side}..{MAX_IMAGE_SIDE}")
    return shape


def _quant_layers(model: nn.Module) -> list[QuantLinear | QuantConv2d]:
    """The quantized layers of ``model`` in registration order (input to output for the nets here)."""
    return [m for m in model.modules() if isinstance(m, QUANT_LAYER_TYPES)]


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


class BasicBlock(nn.Module):
    """ResNet basic block ``conv3x3-BN-PACT-conv3x3-BN (+ shortcut) -> PACT`` (He et al. Fig. 2).

    PACT takes the place of every ReLU.

    The shortcut is He et al.'s option A, parameter-free: identity, and where the block downsamples, the
    input subsampled with stride 2 (``x[:, :, ::2, ::2]``) with zero channels appended up to
    ``out_channels``. That keeps ResNet-20 at the 0.27 M parameters of He et al. Table 6 (the paper's
    1.02 MB at 32 bits) and adds no quantized layer or multiply for the accelerator.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block's input and output (``out_channels >= in_channels``).
    stride : int
        1, or 2 to halve the feature map (first block of stages 2 and 3).
    act_bits : int
        Width of both PACT activations.
    name : str
        Prefix of the conv layers' names (``"{name}.conv1"``, ``"{name}.conv2"``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, act_bits: int, name: str):
        super().__init__()
        if out_channels < in_channels or stride not in (1, 2):
            raise ValueError(f"BasicBlock needs out_channels >= in_channels and stride 1 or 2, not "
                             f"{in_channels}->{out_channels}, stride {stride}")
        self.conv1 = QuantConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                                 name=f"{name}.conv1")
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = PACT(act_bits)
        self.conv2 = QuantConv2d(out_channels, out_channels, 3, padding=1, bias=False, name=f"{name}.conv2")
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = PACT(act_bits)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: identity, subsampled by ``stride``, zero-padded with ``extra_channels`` channels."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 (He et al. 2016, Sec. 4.2) with element-wise quantized weights and PACT.

    ``InputQuant -> conv3x3(16)-BN-PACT -> 3 stages x 3 BasicBlock (16, 32, 64 channels; stages 2 and 3
    start with stride 2) -> global average pooling -> QuantLinear(64 -> n_classes)``. 19 conv layers and
    one FC: 20 quantized layers. For 3x32x32 and 10 classes: 269,722 parameters (267,696 conv weights,
    650 FC weights and biases, 1,376 BatchNorm) plus one PACT ``alpha`` per activation (19). A 1x28x28
    input gives 7x7 maps in the last stage.

    The FC's input is the mean of the last PACT's outputs: an integer pipeline feeds it the per-channel
    sum of the codes and folds ``1 / (H W)`` into the output scale, so no extra quantizer sits there.
    Conv weights start from He (Kaiming) normal initialization (fan-out, as for ReLU), the FC from PyTorch's
    default.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the (flattened) input images; H and W at least 4.
    n_classes : int
        Output classes.
    act_bits : int
        Width of every PACT activation: 1..8, or 32 for full precision (PACT-32).
    input_bits : int
        Width of the input quantizer: 1..8 or 32; 8 keeps 8-bit pixels exact.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Members
    -------
    config : dict
        ``{"arch": "resnet20", "image_shape", "n_classes", "act_bits", "input_bits"}``; :func:`build_model`
        rebuilds the model from it.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        n_classes: int = 10,
        act_bits: int = 4,
        input_bits: int = 8,
    ):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape, min_image_side("resnet20"))
        self.config = {"arch": "resnet20", "image_shape": list(self.image_shape), "n_classes": n_classes,
                       "act_bits": act_bits, "input_bits": input_bits}
        self.input_quant = InputQuant(input_bits)
        first = RESNET20_STAGES[0][0]
        self.conv1 = QuantConv2d(self.image_shape[0], first, 3, padding=1, bias=False, name="conv1")
        self.bn1 = nn.BatchNorm2d(first)
        self.act1 = PACT(act_bits)
        stages = []
        channels = first
        for s, (width, blocks) in enumerate(RESNET20_STAGES, start=1):
            stage = []
            for b in range(blocks):
                stride = 2 if b == 0 and s > 1 else 1
                stage.append(BasicBlock(channels, width, stride, act_bits, name=f"layer{s}.{b}"))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = QuantLinear(channels, n_classes, name="fc")
        for m in self.modules():
            if isinstance(m, QuantConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, n_classes]`` of ``x`` ``[N, C*H*W]`` (or ``[N, C, H, W]``) in ``[0, 1]``."""
        x = self.input_quant(x.reshape(x.shape[0], *self.image_shape))
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))

    def quant_layers(self) -> list[QuantLinear | QuantConv2d]:
        """The 20 quantized layers, input to output (``conv1``, ``layer1.0.conv1``, ..., ``fc``)."""
        return _quant_layers(self)


class SmallVGG(nn.Module):
    """``InputQuant -> [QuantConv2d 3x3 -> BN -> PACT -> MaxPool 2x2] * len(channels) -> QuantLinear``.

    A VGG-style net small enough to train on CPU. Convs keep the map size (padding 1), each max-pool
    halves it (floor), the last map is flattened into the one FC. Max-pooling after PACT picks a code,
    so pooled activations stay on the code grid. With the default ``channels=(16, 32, 64)`` on
    Fashion-MNIST (1x28x28 -> 14 -> 7 -> 3): 23,184 conv weights, 5,760 FC weights and 10 biases,
    224 BatchNorm parameters (29,178 in all) and 1.92 M multiply-accumulates per image. One training
    epoch over the 60,000 images (batch 64, Adam) took about 46 s on 2 CPU cores, 70 s on one (torch 2.13);
    ``(32, 64, 128)`` would be 7.5 M MACs and about 3.5x slower.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the (flattened) input; H and W at least ``2 ** len(channels)``.
    n_classes : int
        Output classes.
    act_bits : int
        Width of every PACT activation: 1..8, or 32 (PACT-32).
    input_bits : int
        Width of the input quantizer: 1..8 or 32.
    channels : tuple of int
        Output channels of each block; 1 to 6 blocks.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Members
    -------
    config : dict
        ``{"arch": "vgg", "image_shape", "n_classes", "act_bits", "input_bits", "channels"}``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        n_classes: int = 10,
        act_bits: int = 4,
        input_bits: int = 8,
        channels: tuple[int, ...] = VGG_CHANNELS,
    ):
        super().__init__()
        channels = tuple(channels)
        if not 1 <= len(channels) <= 6 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                              for c in channels):
            raise ValueError(f"SmallVGG channels must be 1 to 6 positive integers, not {channels!r}")
        self.image_shape = _check_image_shape(image_shape, min_image_side("vgg", channels))
        self.config = {"arch": "vgg", "image_shape": list(self.image_shape), "n_classes": n_classes,
                       "act_bits": act_bits, "input_bits": input_bits, "channels": list(channels)}
        self.input_quant = InputQuant(input_bits)
        blocks = []
        c_in, (_, h, w) = self.image_shape[0], self.image_shape
        for i, c_out in enumerate(channels, start=1):
            blocks += [QuantConv2d(c_in, c_out, 3, padding=1, bias=False, name=f"conv{i}"),
                       nn.BatchNorm2d(c_out), PACT(act_bits), nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.fc = QuantLinear(c_in * h * w, n_classes, name="fc")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, n_classes]`` of ``x`` ``[N, C*H*W]`` (or ``[N, C, H, W]``) in ``[0, 1]``."""
        x = self.features(self.input_quant(x.reshape(x.shape[0], *self.image_shape)))
        return self.fc(x.flatten(1))

    def quant_layers(self) -> list[QuantLinear | QuantConv2d]:
        """The quantized layers, input to output (``conv1``, ..., ``fc``)."""
        return _quant_layers(self)


def _check_keys(config: dict, required: tuple[str, ...], optional: tuple[str, ...], arch: str) -> None:
    missing = [k for k in required if k not in config]
    unknown = sorted(set(config) - set(required) - set(optional))
    if missing or unknown:
        allowed = f"{required}" + (f" and optionally {optional}" if optional else "")
        raise UserError(
            f"model config ({arch}): missing keys {missing}, unknown keys {unknown}; expected {allowed}"
        )


def _count(field, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"model config: field '{field}' is {value!r}; allowed integers {lo}..{hi}")
    return value


def _bits(field, value):
    if isinstance(value, bool) or value not in ACT_BITS_ALLOWED:
        raise UserError(
            f"model config: field '{field}' is {value!r}; allowed 1..{MAX_ACT_BITS} or {FULL_PRECISION_BITS}"
        )
    return value


def _build_mlp(config: dict) -> DigitsMLP:
    _check_keys(config, CONFIG_KEYS, ("arch",), "mlp")
    hidden = config["hidden"]
    if not isinstance(hidden, list | tuple) or not hidden:
        raise UserError(f"model config: field 'hidden' is {hidden!r}; allowed a non-empty list of sizes")
    return DigitsMLP(
        n_in=_count("n_in", config["n_in"], 1, MAX_FAN_IN),
        hidden=tuple(_count("hidden", h, 1, MAX_FAN_IN) for h in hidden),
        n_classes=_count("n_classes", config["n_classes"], 2, MAX_FAN_IN),
        act_bits=_count("act_bits", config["act_bits"], 1, MAX_ACT_BITS),
    )


def _build_conv(config: dict) -> ResNet20 | SmallVGG:
    arch = config["arch"]
    optional = ("input_bits", "channels") if arch == "vgg" else ("input_bits",)
    _check_keys(config, CONV_CONFIG_KEYS, optional, arch)
    kwargs = {
        "n_classes": _count("n_classes", config["n_classes"], 2, MAX_FAN_IN),
        "act_bits": _bits("act_bits", config["act_bits"]),
        "input_bits": _bits("input_bits", config.get("input_bits", 8)),
    }
    min_side = min_image_side("resnet20")
    if arch == "vgg":
        channels = config.get("channels", list(VGG_CHANNELS))
        if not isinstance(channels, list | tuple) or not 1 <= len(channels) <= 6:
            raise UserError(f"model config: field 'channels' is {channels!r}; allowed a list of 1 to 6 sizes")
        kwargs["channels"] = tuple(_count("channels", c, 1, 1024) for c in channels)
        min_side = min_image_side("vgg", kwargs["channels"])
    shape = config["image_shape"]
    if not isinstance(shape, list | tuple) or len(shape) != 3:
        raise UserError(f"model config: field 'image_shape' is {shape!r}; allowed [C, H, W]")
    kwargs["image_shape"] = (_count("image_shape", shape[0], 1, 64),
                             *(_count("image_shape", d, min_side, MAX_IMAGE_SIDE) for d in shape[1:]))
    return ResNet20(**kwargs) if arch == "resnet20" else SmallVGG(**kwargs)


def model_config(arch: str, split, hidden, n_classes: int, act_bits: int) -> dict:
    """The :func:`build_model` config of ``arch`` for the data of ``split`` (its features or image shape).

    ``hidden`` is used by the MLP only; the MLP config carries no ``"arch"`` key, like older checkpoints.
    """
    if arch == "mlp":
        return {"n_in": int(split.x_train.shape[1]), "hidden": list(hidden), "n_classes": n_classes,
                "act_bits": act_bits}
    return {"arch": arch, "image_shape": list(split.image_shape), "n_classes": n_classes, "act_bits": act_bits}


def build_model(config: dict) -> DigitsMLP | ResNet20 | SmallVGG:
    """Rebuild a network from its ``config`` (e.g. read from a checkpoint).

    ``config["arch"]`` picks the class: ``"mlp"`` (:class:`DigitsMLP`, also when there is no ``"arch"``
    key, as in older checkpoints), ``"resnet20"`` (:class:`ResNet20`) or ``"vgg"`` (:class:`SmallVGG`).

    Raises
    ------
    UserError
        If ``arch`` is unknown, a key is missing or unknown, or a value is out of range; the message names
        the field and the allowed values.
    """
    if not isinstance(config, dict):
        raise UserError(f"model config must be a dict with keys {CONFIG_KEYS} (mlp) or {CONV_CONFIG_KEYS}, "
                        f"not {type(config).__name__}")
    arch = config.get("arch", "mlp")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise UserError(f"model config: field 'arch' is {arch!r}; allowed {ARCHS}")
    return _build_mlp(config) if arch == "mlp" else _build_conv(config)


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
