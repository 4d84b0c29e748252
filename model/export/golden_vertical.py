"""Integer contract of a vertical-layered network (``../shared/papers/vertical-layering-quantized-networks.txt``):
one stored network that runs, bit for bit defined here, at every trained width and at any per-layer width
assignment (the mixed precision of Eq. 12).

What is stored (:class:`VerticalNetwork`, image format version 4 in :mod:`model.export.image_v4`):

* Per inner (switchable) layer the **basic layer** ``c_b`` (signed ``b``-bit codes, ``b = widths[0]``, Eq. 5
  applied ``n - b`` times to the source codes ``w_bar_n = Q(w, s_w)`` of Eq. 1) and the **enhance layers**
  ``b_(b+1) .. b_n`` (0/1 bit planes, Eq. 3-4). The codes at width ``i`` are the basic layer and the first
  ``i - b`` planes: ``c_(k+1) = 2 c_k + b_(k+1)`` (:func:`compose`), so a lower precision reads a prefix.
* The **first and last layers** (edges) hold :data:`EDGE_BITS`-bit signed LSQ codes, shared by every width.
* Per layer, one **requant record** per pair ``(in_bits, out_bits)`` of its input and output code widths
  (:class:`VerticalRequant`): the per-width BatchNorm (Sec. 4.2.2; "individual BN" in Sec. 6.3.1) and the per-width
  activation steps of the input and of the output are folded into ``M``, ``B``, ``S`` there (the integer
  requantizer of :mod:`model.export.golden`), plus per-output ``negate`` flags for a negative BN gain.
* An optional table of Eq. 12 assignments (one width per inner layer per row).

**Where the compensation enters (Eq. 6).** At width ``i`` with ``t = n - i`` downsamplings the paper's
weight is ``(c_i + z_i) s_i`` with ``s_i = 2^t s_w`` and the preset ``z_i = (1 - 2^-t) / 2`` (Sec. 6.1; the
training side's :func:`model.quant.lsq.compensation`). In units of ``s_w / 2`` this is the integer

  ``e_i = 2^(t+1) c_i + K_t``,  ``K_t = 2^t - 1`` (0 without compensation),

odd for every ``t >= 1`` with compensation (the compensated code sits half-way between the grid of the
uncompensated one). ``e_i`` is the *effective code* of the layer at width ``i``; its unit ``s_w / 2`` is
the same at every width, so the requant scale differs between widths only by the per-width BN and
activation steps. The accumulator a layer needs is ``sum_j e_ij u_j``, which the hardware may compute from
the planes it read as

  ``sum_j e_ij u_j = 2^(t+1) sum_j c_ij u_j + K_t sum_j u_j``   (:func:`compensated_dot`):

the compensation enters once per output, as ``K_t`` times the sum of the input codes that output reads
(the activation sum the signed mode of :mod:`model.export.golden` forms anyway), never per weight.

**Residual networks** (ResNet-20). An inner conv with ``residual`` set is conv2 of a basic block whose conv1
is the layer before it: its requantizer adds the option-A shortcut of the block's input (conv1's input,
subsampled by conv1's stride, zero channels appended), with its own per-channel multiplier ``M_r`` as the
version 3 contract does (:func:`~model.export.golden_conv.requantize_residual`). The shortcut's codes have the
width of conv1's input, which an Eq. 12 row may set apart from conv2's input width, so a residual layer's
requant record is keyed by three widths ``(in_bits, out_bits, res_bits)`` (:meth:`VerticalNetwork.record_key`);
every other layer's by ``(in_bits, out_bits)``. A negative BN gain negates conv2's effective codes only: the
shortcut's gain ``s_x / s_out`` is positive whatever BN2's sign (the version 3 argument of
:mod:`model.export.convert`). A last (fully connected) layer with ``gap`` set reads the per-channel sums of
the last map (global average pooling; its ``1 / (H W)`` is in the record's gain), as
:class:`~model.export.golden_net.GlobalSumPool` then :class:`~model.export.golden_net.FCStage` do.

**Eq. 12 rows and their BatchNorm** (Sec. 6.4). The paper re-estimates the BN statistics of a sampled
mixed-precision network; a layer's requant for table row ``r`` then differs from the per-width one of the same
widths. Such a record is stored per row (``VerticalLayer.row_requant``, keyed by ``(r, *key)``, the record's
``row`` = ``r + 1``) and used when the network runs *as table row* ``r`` (:class:`TableRow`); the width-keyed
record serves every other case (a layer without BN, an assignment given as a plain sequence of widths).

**Running it** (:meth:`VerticalNetwork.materialize`): for an assignment the network becomes a plain integer
network of the version 1-3 contract (:class:`~model.export.golden.IntNetwork` for an MLP,
:class:`~model.export.golden_net.IntConvNetwork` for a VGG-style conv net) whose layers are *signed* layers
(offset binary) holding the effective codes: an inner layer's ``e_i`` in the class :func:`inner_class`
``(n)``, an edge's codes in :func:`edge_class`. Its golden weight is ``2 e / (2^m - 1)`` (signed mode), so
the converter puts ``(2^m - 1) / 2`` times the unit (``s_w / 2``, or the edge's step) into the requant gain.
A channel whose gain (BN's gamma) is negative has ``negate`` set: its effective codes are negated
(``e -> -e``, exact in the symmetric signed range), so ``M >= 0``. Every bound of the version 1-3 contract
(:func:`~model.export.golden.check_layer`, :func:`~model.export.golden_net.check_network`) holds for the
materialized network, which :meth:`materialize` checks.

**Bounds** (named, and checked by :func:`check_vertical`):

1. ``c_i`` in ``[-2^(i-1), 2^(i-1) - 1]`` (Eq. 5's floor keeps a signed range: ``floor`` of a value in
   ``[-2^i, 2^i - 1]`` over 2 is in ``[-2^(i-1), 2^(i-1) - 1]``); the planes are 0 or 1.
2. ``|e_i| <= E_BOUND(n) = 2^n``: ``2^(t+1) c_i >= -2^(t+i) = -2^(n)`` and
   ``2^(t+1) (2^(i-1) - 1) + 2^t - 1 = 2^n - 2^t - 1 < 2^n``, with ``K_t >= 0``. So the effective codes fit
   the symmetric signed range ``2^(m-1) - 1`` of the class :func:`inner_class` picks (``m = 8`` up to
   ``n = 6``, ``m = 16`` for 7 and 8 bits).
3. Edge codes in ``[-2^(E-1), 2^(E-1) - 1]`` (``E`` = :data:`EDGE_BITS`); ``-2^(E-1)`` is outside the
   symmetric ``E``-bit range, so the edges are carried in the next class (:func:`edge_class`, 16 for 8-bit
   edges) and negating them stays in range.
4. :func:`compensated_dot`: with ``U = 2^MAX_ACT_BITS - 1`` and ``N = MAX_FAN_IN``,
   ``|sum c u| <= 2^(i-1) U N`` (``DOT_BOUND``), ``0 <= sum u <= U N`` (``SUM_BOUND``), the result
   ``|sum e u| <= 2^n U N`` (``COMP_BOUND``) < 2^29 for ``n <= 8``: int64 throughout.

Rounding: none beyond the version 1-3 requantizer (floor shift, round half up).

Torch-free (numpy only), like the rest of the contract that ``hw/`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.errors import UserError
from model.export.golden import (
    BIAS_MAX,
    BIAS_MIN,
    MAX_ACT_BITS,
    MAX_FAN_IN,
    MAX_SHIFT,
    MULT_BITS,
    IntLinear,
    IntNetwork,
    check_layer,
)
from model.export.golden_conv import IntConv2d
from model.export.golden_net import (
    ConvStage,
    FCStage,
    GlobalSumPool,
    IntConvNetwork,
    ResidualStage,
    check_network,
)

#: Width of the first and last layers' signed codes, shared by every precision (issue 12).
EDGE_BITS = 8
#: Smallest and largest trained width of an inner layer (the paper's 2-bit basic layer; the activation width).
MIN_BITS, MAX_BITS = 2, 8
#: Signed accelerator classes (symmetric ranges ``2^(m-1) - 1``) an effective code may be stored in.
SIGNED_CLASSES = (4, 8, 16)
#: The classes of an inner layer's effective codes. Not class 4, although a network whose source width is 2 bits
#: (``|e| <= 4``) would fit it: the array's plane decoders emit every inner layer's codes in class 8 (16 past 6
#: bits), and the class is part of what the layer computes (golden's ``R_m``, the converter's gain), so a 2-bit
#: network in class 4 scored other than the array (found by ``bench fuzz``'s vertical networks, 2026-12-05).
INNER_CLASSES = (8, 16)
#: Layer kinds.
KINDS = ("linear", "conv")
#: Most Eq. 12 table rows (the array's ``precision`` register names row ``r`` as ``0x80 + r``, 7 bits).
MAX_TABLE_ROWS = 128


def E_BOUND(top: int) -> int:
    """Bound 2: ``|e_i| <= 2^n`` for source width ``n = top``."""
    return 1 << top


def DOT_BOUND(bits: int) -> int:
    """Bound 4: ``|sum_j c_j u_j| <= 2^(bits-1) U N``."""
    return (1 << (bits - 1)) * ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN


SUM_BOUND = ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN


def COMP_BOUND(top: int) -> int:
    """Bound 4: ``|sum_j e_j u_j| <= 2^n U N``."""
    return E_BOUND(top) * SUM_BOUND


def _class_for(bound: int, classes=SIGNED_CLASSES, what: str = "signed") -> int:
    for m in classes:
        if bound <= (1 << (m - 1)) - 1:
            return m
    raise UserError(f"codes of magnitude {bound} fit no {what} class {classes}")


def inner_class(top: int) -> int:
    """The signed class holding an inner layer's effective codes at every width (bound 2: ``|e| <= 2^top``): 8
    for a source width up to 6, 16 for 7 and 8 (:data:`INNER_CLASSES`)."""
    return _class_for(E_BOUND(top), INNER_CLASSES, "inner")


def edge_class(edge_bits: int = EDGE_BITS) -> int:
    """The signed class holding an edge layer's codes (bound 3: ``|c| <= 2^(E-1)``)."""
    return _class_for(1 << (edge_bits - 1))


def comp_offset(top: int, bits: int, compensate: bool) -> int:
    """``K_t = 2^t - 1`` with ``t = top - bits`` (0 without compensation): ``z_i`` in units of ``s_w / 2``,
    times ``2^(t+1)`` (module docstring)."""
    return (1 << (top - bits)) - 1 if compensate else 0


def compose(base: np.ndarray, planes: Sequence[np.ndarray], use: int) -> np.ndarray:
    """Codes from the basic layer and the first ``use`` enhance planes: ``c_(k+1) = 2 c_k + b_(k+1)`` (Eq. 3;
    Eq. 4 unrolled)."""
    out = np.asarray(base, dtype=np.int64)
    for plane in planes[:use]:
        out = 2 * out + np.asarray(plane, dtype=np.int64)
    return out


def effective_codes(base: np.ndarray, planes: Sequence[np.ndarray], base_bits: int, bits: int,
                    compensate: bool) -> np.ndarray:
    """``e_i = 2^(t+1) c_i + K_t`` at width ``bits`` (module docstring; ``t = top - bits``)."""
    top = base_bits + len(planes)
    if not base_bits <= bits <= top:
        raise UserError(f"width {bits} is outside the stored widths {base_bits}..{top}")
    c = compose(base, planes, bits - base_bits)
    t = top - bits
    return (c << (t + 1)) + comp_offset(top, bits, compensate)


def compensated_dot(codes: np.ndarray, u: np.ndarray, top: int, bits: int, compensate: bool) -> np.ndarray:
    """``sum_j e_ij u_j`` computed as the hardware may: ``2^(t+1) sum_j c_ij u_j + K_t sum_j u_j`` (bound 4).

    ``codes``: ``[n_out, n_in]`` codes ``c_i`` at ``bits``; ``u``: ``[N, n_in]`` unsigned input codes.
    Returns int64 ``[N, n_out]``.
    """
    c = np.asarray(codes, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    t = top - bits
    dot = u @ c.T
    total = u.sum(axis=1, keepdims=True)
    if np.abs(dot).max(initial=0) > DOT_BOUND(bits) or total.max(initial=0) > SUM_BOUND:
        raise UserError("compensated_dot: inputs break DOT_BOUND / SUM_BOUND (fan-in or code range)")
    return (dot << (t + 1)) + comp_offset(top, bits, compensate) * total


@dataclass(frozen=True)
class TableRow:
    """Row ``index`` of a network's Eq. 12 table, as the widths a network runs at: its assignment, and its own
    requant records where the row has them (BN re-estimated for the row, module docstring)."""

    index: int


@dataclass(frozen=True, eq=False)
class VerticalRequant:
    """The requantizer of one layer for one pair of code widths.

    Members
    -------
    in_bits, out_bits : int
        Width of the layer's input codes and of its output codes (0: class scores).
    mult, bias : int64 ``[n_out]``; shift : int
        ``M``, ``B``, ``S`` of :func:`model.export.golden.requantize` (per-width BN and steps folded in).
    negate : bool ``[n_out]``
        Outputs whose effective codes are negated (a negative gain made non-negative, exactly).
    res_bits : int
        Width of the shortcut's codes (a residual layer; 0 otherwise).
    res_mult : int64 ``[n_out]`` or None
        The shortcut's ``M_r`` (a residual layer only).
    row : int
        0: the record of its widths; ``r + 1``: table row ``r``'s own record (BN re-estimated for the row).
    """

    in_bits: int
    out_bits: int
    mult: np.ndarray
    bias: np.ndarray
    shift: int
    negate: np.ndarray
    res_bits: int = 0
    res_mult: np.ndarray | None = None
    row: int = 0

    @property
    def key(self) -> tuple[int, ...]:
        """``(in_bits, out_bits)``, or ``(in_bits, out_bits, res_bits)`` for a residual layer's record."""
        return (self.in_bits, self.out_bits, self.res_bits) if self.res_bits else (self.in_bits, self.out_bits)


@dataclass(frozen=True, eq=False)
class VerticalLayer:
    """One weight layer of a vertical network.

    Members
    -------
    name : str
    kind : str
        ``"linear"`` (codes ``[n_out, n_in]``) or ``"conv"`` (``[C_out, C_in, k, k]``).
    edge : bool
        First or last layer: ``base`` holds :data:`EDGE_BITS`-bit codes, no planes.
    base : int64 array
        Basic layer codes (``base_bits`` signed bits) or the edge's codes.
    planes : tuple of int64 arrays (0/1)
        Enhance layers ``b_(base_bits+1) .. b_top``, shape of ``base``.
    base_bits : int
        Width of ``base``.
    compensate : bool
        Whether the lower widths carry Eq. 6's ``K_t``.
    requant : dict ``key -> VerticalRequant``
        Keyed by :attr:`VerticalRequant.key`.
    row_requant : dict ``(r, *key) -> VerticalRequant``
        Table row ``r``'s own records (``row = r + 1``), where the row re-estimated the layer's BN.
    stride, padding, pool : int
        Conv geometry and the max-pool after it (0: none).
    residual : bool
        conv2 of a basic block: the requant adds the shortcut of the previous layer's input (module docstring).
    gap : bool
        The last (fully connected) layer reads the per-channel sums of the last map (global average pooling).
    """

    name: str
    kind: str
    edge: bool
    base: np.ndarray
    planes: tuple[np.ndarray, ...]
    base_bits: int
    compensate: bool
    requant: dict = field(default_factory=dict)
    stride: int = 1
    padding: int = 0
    pool: int = 0
    residual: bool = False
    gap: bool = False
    row_requant: dict = field(default_factory=dict)

    @property
    def top(self) -> int:
        return self.base_bits + len(self.planes)

    @property
    def n_out(self) -> int:
        return int(self.base.shape[0])

    @property
    def weight_class(self) -> int:
        return edge_class(self.base_bits) if self.edge else inner_class(self.top)

    def codes_at(self, bits: int) -> np.ndarray:
        """The effective codes (units of the requant scale) at ``bits`` (the edge's codes for an edge)."""
        if self.edge:
            return np.asarray(self.base, dtype=np.int64)
        e = effective_codes(self.base, self.planes, self.base_bits, bits, self.compensate)
        if e.size and np.abs(e).max() > E_BOUND(self.top):  # bound 2 (holds whenever bound 1 does)
            raise UserError(f"{self.name}: effective codes at {bits} bits reach {int(np.abs(e).max())}; bound "
                            f"E_BOUND = 2^{self.top}")
        return e


@dataclass(frozen=True, eq=False)
class VerticalNetwork:
    """A whole vertical-layered network (module docstring).

    Members
    -------
    input_bits : int
        Width of the input codes (:data:`EDGE_BITS`: the first layer reads 8-bit pixels at every width).
    image_shape : tuple of int or None
        ``(C, H, W)`` of a conv net's input, None for an MLP.
    widths : tuple of int
        Trained widths (consecutive; the source width is the largest).
    layers : tuple of VerticalLayer
        Input to output; the first and the last are edges.
    table : tuple of tuple of int
        Eq. 12 assignments: one width per inner layer per row (may be empty).
    """

    input_bits: int
    image_shape: tuple[int, int, int] | None
    widths: tuple[int, ...]
    layers: tuple[VerticalLayer, ...]
    table: tuple[tuple[int, ...], ...] = ()

    @property
    def inner(self) -> list[VerticalLayer]:
        return [layer for layer in self.layers if not layer.edge]

    def assignment(self, bits) -> tuple[int, ...]:
        """One width per inner layer from ``bits``: an int (uniform), a sequence (an Eq. 12 assignment) or a
        :class:`TableRow` (that row of the table).

        Raises
        ------
        UserError
            For a width that was not trained, a sequence of the wrong length or a row past the table.
        """
        n = len(self.inner)
        if isinstance(bits, TableRow):
            if not 0 <= bits.index < len(self.table):
                raise UserError(f"table row {bits.index}: the Eq. 12 table has {len(self.table)} rows")
            bits = self.table[bits.index]
        if isinstance(bits, int | np.integer):
            bits = (int(bits),) * n
        bits = tuple(int(b) for b in bits)
        if len(bits) != n:
            raise UserError(f"field 'layer_bits' has {len(bits)} entries for {n} inner layers")
        bad = [b for b in bits if b not in self.widths]
        if bad:
            raise UserError(f"field 'bits' is {bad[0]}; allowed the stored widths {list(self.widths)}")
        return bits

    def code_widths(self, bits) -> list[tuple[int, int]]:
        """``(in_bits, out_bits)`` of every layer under an assignment (the rule of
        :func:`model.quant.vertical.set_layer_widths`): an inner layer reads codes of its own width, the first
        edge reads ``input_bits``; every hidden output has the width of the layer it feeds (the last inner
        layer's own width before the last edge); the last edge emits scores (0)."""
        assigned = iter(self.assignment(bits))
        per_layer = [None if layer.edge else next(assigned) for layer in self.layers]
        ins = []
        for k, layer in enumerate(self.layers):
            if k == 0:
                ins.append(self.input_bits)
            elif per_layer[k] is not None:
                ins.append(per_layer[k])
            else:
                ins.append(next(b for b in reversed(per_layer[:k]) if b is not None))
        outs = [*ins[1:], 0]
        return list(zip(ins, outs))

    def record_key(self, bits, k: int) -> tuple[int, ...]:
        """The requant record layer ``k`` uses under ``bits``: ``(in_bits, out_bits)``, and for a residual layer
        also ``res_bits``, the width of its shortcut's codes (the input of the block's conv1, layer ``k - 1``)."""
        pairs = self.code_widths(bits)
        return (*pairs[k], pairs[k - 1][0]) if self.layers[k].residual else pairs[k]

    def materialize(self, bits) -> IntNetwork | IntConvNetwork:
        """The version 1-3 integer network this one computes under ``bits`` (module docstring), checked.

        Raises
        ------
        UserError
            For an unknown width or a missing requant record (naming the layer and the widths).
        """
        assigned = iter(self.assignment(bits))
        out = []
        for k, (layer, (in_bits, out_bits)) in enumerate(zip(self.layers, self.code_widths(bits))):
            own = None if layer.edge else next(assigned)
            key = self.record_key(bits, k)
            record = layer.row_requant.get((bits.index, *key)) if isinstance(bits, TableRow) else None
            record = record or layer.requant.get(key)
            if record is None:
                raise UserError(f"{layer.name}: no requant record for widths {key} (input, output"
                                f"{', shortcut' if layer.residual else ''}); stored {sorted(layer.requant)}")
            e = layer.codes_at(own if own is not None else layer.base_bits)
            sign = np.where(np.asarray(record.negate, dtype=bool), -1, 1).reshape((-1,) + (1,) * (e.ndim - 1))
            e = e * sign
            m = layer.weight_class
            widths = np.where(e != 0, m, 0).astype(np.int64)
            codes = np.where(e != 0, e + (1 << (m - 1)), 0).astype(np.int64)
            common = {"codes": codes, "widths": widths, "in_bits": in_bits, "out_bits": out_bits,
                      "mult": record.mult, "bias": record.bias, "shift": int(record.shift), "name": layer.name,
                      "signed": True}
            if layer.kind == "conv":
                res_mult = np.asarray(record.res_mult, dtype=np.int64) if layer.residual else None
                out.append((IntConv2d(**common, stride=layer.stride, padding=layer.padding, res_mult=res_mult),
                            layer))
            else:
                out.append((IntLinear(**common), layer))
        if self.image_shape is None:
            for layer, _ in out:
                check_layer(layer, where=layer.name)
            return IntNetwork(input_bits=self.input_bits, layers=tuple(layer for layer, _ in out))
        net = IntConvNetwork(input_bits=self.input_bits, image_shape=tuple(self.image_shape),
                             stages=tuple(self._stages(out)))
        check_network(net)
        return net

    def _stages(self, out: list) -> list:
        """The version 3 stages of the materialized layers ``out`` (``(int layer, vertical layer)`` pairs):
        a residual layer and the layer before it form a :class:`ResidualStage`; a ``gap`` FC gets a
        :class:`GlobalSumPool` before it, with ``pooled`` the area of the map it sums."""
        stages: list = []
        _, h, w = self.image_shape
        k = 0
        while k < len(out):
            layer, vl = out[k]
            if k + 1 < len(out) and out[k + 1][1].residual:
                conv2, v2 = out[k + 1]
                if vl.kind != "conv" or vl.residual or vl.edge:
                    raise UserError(f"{v2.name}: field 'residual' needs an inner conv before it (the block's "
                                    "conv1)")
                stages.append(ResidualStage(layer, conv2, stride=vl.stride, name=v2.name))
                h, w = conv2.out_size(*layer.out_size(h, w))
                k += 2
                continue
            if vl.residual:
                raise UserError(f"{vl.name}: field 'residual' needs an inner conv before it (the block's conv1)")
            if isinstance(layer, IntConv2d):
                stages.append(ConvStage(layer, pool=vl.pool))
                h, w = layer.out_size(h, w)
                if vl.pool:
                    h, w = h // vl.pool, w // vl.pool
            else:
                pooled = 1
                if vl.gap:
                    stages.append(GlobalSumPool())
                    pooled = h * w
                stages.append(FCStage(layer, pooled=pooled))
            k += 1
        return stages

    def forward(self, u, bits) -> np.ndarray:
        """Integer class scores of input codes ``u`` under ``bits`` (an int or one width per inner layer)."""
        return self.materialize(bits).forward(u)

    def predict(self, u, bits) -> np.ndarray:
        return self.materialize(bits).predict(u)

    def weight_bits(self, bits) -> int:
        """Weight bits read under ``bits``: edges at :data:`EDGE_BITS`, inner layers at their width."""
        assigned = iter(self.assignment(bits))
        return sum(int(layer.base.size) * (layer.base_bits if layer.edge else next(assigned))
                   for layer in self.layers)


def check_vertical(net: VerticalNetwork, where: str = "vertical network") -> None:
    """Raise :class:`UserError` (naming the layer and field) if ``net`` breaks a bound of the module docstring
    or its structure (edges first and last, widths consecutive and equal to every inner layer's, records
    present for every width pair an assignment can need). Every assignment's materialized network is then
    checked by :meth:`VerticalNetwork.materialize` against the version 1-3 bounds."""
    widths = tuple(net.widths)
    if (not widths or widths != tuple(range(widths[0], widths[-1] + 1)) or widths[0] < MIN_BITS
            or widths[-1] > MAX_BITS):
        raise UserError(f"{where}: field 'widths' is {list(widths)}; allowed consecutive widths in "
                        f"{MIN_BITS}..{MAX_BITS}")
    if net.input_bits != EDGE_BITS:
        raise UserError(f"{where}: field 'input_bits' is {net.input_bits}; allowed {EDGE_BITS}")
    if len(net.layers) < 3 or not net.layers[0].edge or not net.layers[-1].edge or any(
            layer.edge for layer in net.layers[1:-1]):
        raise UserError(f"{where}: field 'layers' must be an edge, one or more inner layers, an edge")
    if len(net.table) > MAX_TABLE_ROWS:
        raise UserError(f"{where}: field 'table' has {len(net.table)} rows; allowed at most {MAX_TABLE_ROWS} (the "
                        "rows the precision register can name)")
    for k, layer in enumerate(net.layers):
        name = f"{where}: {layer.name}"
        if layer.kind not in KINDS:
            raise UserError(f"{name}: field 'kind' is {layer.kind!r}; allowed {KINDS}")
        in_block = layer.residual or (k + 1 < len(net.layers) and net.layers[k + 1].residual)
        if layer.pool and (layer.kind != "conv" or in_block):
            raise UserError(f"{name}: field 'pool' is {layer.pool}; allowed 0 on a fully connected layer and on a "
                            "residual block's convs (the block's output map is the shortcut's)")
        base = np.asarray(layer.base)
        if base.dtype.kind not in "iu":
            raise UserError(f"{name}: field 'base' holds {base.dtype}; allowed integers")
        if layer.edge:
            if layer.base_bits != EDGE_BITS or layer.planes:
                raise UserError(f"{name}: an edge has {EDGE_BITS}-bit codes and no planes")
        elif layer.base_bits != widths[0] or layer.top != widths[-1]:
            raise UserError(f"{name}: fields 'base_bits'/'planes' give widths {layer.base_bits}..{layer.top}; "
                            f"the network's are {widths[0]}..{widths[-1]}")
        low, high = -(1 << (layer.base_bits - 1)), (1 << (layer.base_bits - 1)) - 1
        if base.size and (base.min() < low or base.max() > high):  # bound 1 / 3
            raise UserError(f"{name}: field 'base' outside [{low}, {high}] ({layer.base_bits}-bit signed)")
        for k, plane in enumerate(layer.planes):
            plane = np.asarray(plane)
            if plane.shape != base.shape or (plane.size and (plane.min() < 0 or plane.max() > 1)):
                raise UserError(f"{name}: field 'planes[{k}]' must be 0/1 with the shape of 'base' {base.shape}")
        if layer.residual and (layer.kind != "conv" or layer.edge):
            raise UserError(f"{name}: field 'residual' is set; allowed on inner conv layers only")
        if layer.gap and (layer is not net.layers[-1] or layer.kind != "linear" or net.image_shape is None):
            raise UserError(f"{name}: field 'gap' is set; allowed on the last (fully connected) layer of a conv net")
        for key, record in layer.requant.items():
            if key != record.key or record.row:
                raise UserError(f"{name}: requant record {list(key)} holds widths {list(record.key)} (row "
                                f"{record.row}); a residual layer's records name (in_bits, out_bits, res_bits), every "
                                "other layer's (in_bits, out_bits); row records belong in 'row_requant'")
            _check_record(name, layer, key, record)
    for k, layer in enumerate(net.layers):
        for rkey, record in layer.row_requant.items():
            r = rkey[0]
            if not 0 <= r < len(net.table) or record.row != r + 1 or rkey[1:] != net.record_key(net.table[r], k):
                raise UserError(f"{where}: {layer.name}: field 'row_requant{list(rkey)}' (row {record.row}) does not "
                                f"serve table row {r}'s widths; allowed rows 0..{len(net.table) - 1}, the key "
                                "the row's widths give")
            _check_record(f"{where}: {layer.name}", layer, rkey, record)
        if layer.residual and (k < 2 or net.layers[k - 1].residual or net.layers[k - 1].kind != "conv"):
            raise UserError(f"{where}: {layer.name}: field 'residual' needs an inner conv without a residual "
                            "before it (the block's conv1)")
    for row in [*widths, *net.table]:  # uniform widths and every Eq. 12 row have their records
        for k in range(len(net.layers)):
            key = net.record_key(row, k)
            if key not in net.layers[k].requant:
                raise UserError(f"{where}: {net.layers[k].name}: field 'requant' lacks the record for widths "
                                f"{key}")


def _check_record(name: str, layer: VerticalLayer, key, record: VerticalRequant) -> None:
    """One record's fields: the shortcut's width and ``M_r`` exactly on a residual layer, per-output arrays, and
    each value in the range the image holds and the reader checks (``S`` in ``1..MAX_SHIFT``, ``M`` and ``M_r``
    in :data:`~model.export.golden.MULT_BITS` unsigned bits, ``B`` in the signed ``BIAS_BITS``): every record, not
    only those of the widths the net is materialised at, so that the writer never packs an image its reader
    refuses."""
    if bool(record.res_bits) != layer.residual or tuple(key[-len(record.key):]) != record.key:
        raise UserError(f"{name}: requant record {list(key)} holds widths {list(record.key)}; a residual layer's "
                        "records name (in_bits, out_bits, res_bits), every other layer's (in_bits, out_bits)")
    if layer.residual:
        r = np.asarray(record.res_mult)
        if r.shape != (layer.n_out,) or r.dtype.kind not in "iu":
            raise UserError(f"{name}: field 'requant{list(key)}.res_mult' has shape {r.shape}; allowed "
                            f"({layer.n_out},) integers")
    for part in ("mult", "bias", "negate"):
        value = np.asarray(getattr(record, part))
        if value.shape != (layer.n_out,) or value.dtype.kind not in ("b" if part == "negate" else "iu"):
            raise UserError(f"{name}: field 'requant{list(key)}.{part}' has shape {value.shape} and dtype "
                            f"{value.dtype}; allowed ({layer.n_out},) {'booleans' if part == 'negate' else 'integers'}")
    if not isinstance(record.shift, int | np.integer) or not 1 <= record.shift <= MAX_SHIFT:
        raise UserError(f"{name}: field 'requant{list(key)}.shift' is {record.shift!r}; allowed 1..{MAX_SHIFT}")
    top = (1 << MULT_BITS) - 1
    for part, low, high in (("mult", 0, top), ("bias", BIAS_MIN, BIAS_MAX),
                            *((("res_mult", 0, top),) if layer.residual else ())):
        values = np.asarray(getattr(record, part))
        outside = (values < low) | (values > high)  # (compared, never negated: -INT64_MIN overflows)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise UserError(f"{name}: field 'requant{list(key)}.{part}' of output {j} is {int(values[j])}; allowed "
                            f"{low}..{high}")


def needed_pairs(net_layers: int, k: int, widths: Sequence[int], input_bits: int = EDGE_BITS,
                 residual: bool = False) -> list[tuple[int, ...]]:
    """Every record key layer ``k`` of ``net_layers`` (edges first and last) can need under some assignment of
    ``widths`` (:meth:`VerticalNetwork.record_key`): what an exporter stores. ``(in_bits, out_bits)``, with
    ``res_bits`` (any stored width: the block's conv1 is an inner layer) for a ``residual`` layer."""
    last = net_layers - 1
    if k == 0:
        pairs = [(input_bits, b) for b in widths]
    elif k == last:
        pairs = [(b, 0) for b in widths]
    elif k == last - 1:
        pairs = [(b, b) for b in widths]
    else:
        pairs = [(a, b) for a in widths for b in widths]
    return [(*p, r) for p in pairs for r in widths] if residual else pairs
