"""Integer golden model: what the accelerator must compute, bit for bit.

The float network (DoReFa weights with an element-wise bit-width mask, paper Eq. 3 and 7, PACT activations,
Eq. 5-6) is turned into integers as follows. For one fully connected layer with input PACT codes
``u_i`` in ``[0, 2^a - 1]`` and weight codes ``q_ij`` of element-wise widths ``m_ij`` in
``{0, 4, 8, 16, 32}`` (0 = pruned), with ``D = 2^32 - 1`` and ``R_m = D / (2^m - 1)``
(``0x11111111, 0x01010101, 0x00010001, 1``: ``q * R_m`` is ``q``'s bits repeated to fill 32 bits), the
accelerator sums unsigned products per bit-width class and per-class activation sums,

  ``S_m[j] = sum_{i: m_ij = m} q_ij u_i``,  ``A_m[j] = sum_{i: m_ij = m} u_i``,  ``A[j] = sum_m A_m[j]``,

and combines them once per output (:func:`combine`), never per multiply; products stay as narrow as their
weights, and 0-bit weights take no part at all (Eq. 7). Each layer is in one of two modes:

* **DoReFa** (``signed=False``; MPQ-tickets Eq. 3): ``q`` in ``[0, 2^m - 1]``, ``w = 2 q / (2^m - 1) - 1``
  ``= (2 R_m q - D) / D``. So ``D * sum_i w_ij u_i`` is the integer

  ``acc_j = 2 * sum_m R_m S_m[j] - D * A[j]``.

* **signed** (``signed=True``; the symmetric codes ``c`` in ``[-(2^(m-1) - 1), 2^(m-1) - 1]`` of BMPQ
  Eq. 3-5 and LSQ, with the per-layer scale folded into the requantizer): the stored code is offset binary,
  ``q = c + 2^(m-1)`` in ``[1, 2^m - 1]`` (an unsigned ``m``-bit code, so the lanes are unchanged), and
  ``w = 2 c / (2^m - 1)``. DoReFa's levels all have odd numerators ``2q - (2^m - 1)``, so they cannot hold
  an even ``c``; this mode can. ``D w = 2 R_m c = 2 R_m q - R_m 2^m`` and ``R_m 2^m = D + R_m``, so

  ``acc_j = 2 * sum_m R_m S_m[j] - sum_m R_m 2^m A_m[j] = 2 * sum_m R_m S_m[j] - D * A[j] - sum_m R_m A_m[j]``:

  the DoReFa accumulator plus one correction ``- sum_m R_m A_m`` (shift-and-add, like ``R_m S_m``).
  ``c = 0`` weights cost a multiply for nothing: exporters should prune them (zero-skipping).

* Requantization (PACT of the next layer, Eq. 5-6, with the bias folded in) is the same for both modes
  and fixed point:

  ``t_j = acc_j >> ACC_SHIFT`` (arithmetic shift, i.e. floor),
  ``y_j = (t_j * M_j + B_j + 2^(S-1)) >> S`` (round half up, i.e. floor(x + 1/2)),

  then ``clamp(y_j, 0, 2^a' - 1)`` gives the next layer's codes; the last layer returns ``y_j`` itself
  (class scores in units of ``2^-SCORE_FRAC_BITS``), saturated to int32.

Rounding is named once here and nowhere else: **floor** for the accumulator shift, **half up** for the
requantizer. The float model rounds half to even (``torch.round``); the two differ only on exact ties,
which the accuracy test bounds (golden within 0.5 percentage points of fake-quant).

This module imports numpy only, never torch: it is part of the export contract that the hardware side
(``hw/``) reads, and generating Verilog must not load a deep-learning framework. Inputs may be numpy arrays
or anything ``np.asarray`` takes (a CPU torch tensor included); results are int64 numpy arrays.

Every array here is int64, and every intermediate provably fits it. With ``U = 2^MAX_ACT_BITS - 1``
(255), ``N = MAX_FAN_IN`` (2^12) and ``|w| <= 1`` in both modes (DoReFa ``|2q - (2^m - 1)| <= 2^m - 1``; signed
``2|c| <= 2^m - 2``), and the fields :func:`check_layer` enforces:

1. ``S_m < 2^m U N``, so ``2 sum_m R_m S_m <= 2 D U N < 2^53``; ``D A <= D U N < 2^52``;
   ``sum_m R_m A_m <= R_4 U N < 2^49``; every partial sum of :func:`combine` stays below ``2^54``.
2. ``|acc| = D |sum w u| <= ACC_BOUND = D U N < 2^52``.
3. ``t = acc >> ACC_SHIFT``: ``|t| <= T_BOUND = ceil(ACC_BOUND / 2^ACC_SHIFT) < 2^36``.
4. ``0 <= M < 2^MULT_BITS`` (17): ``|t M| <= PRODUCT_BOUND = T_BOUND (2^MULT_BITS - 1) < 2^53``.
5. ``B`` is a signed ``BIAS_BITS``-bit value (``-2^62 <= B < 2^62``) and ``1 <= S <= MAX_SHIFT`` (62), so
   ``|t M + B + 2^(S-1)| <= ROUND_BOUND = PRODUCT_BOUND + 2^62 + 2^61 < 2^63``: no int64 overflow, and
   ``y = (...) >> S`` is exact.

The hardware (``hw/core/requant.py``) derives the widths of its stages from the same named constants
(:data:`ACC_SHIFT`, :data:`MULT_BITS`, :data:`BIAS_BITS`, :data:`MAX_SHIFT`, :data:`MAX_ACT_BITS`,
:data:`MAX_FAN_IN`) and from its row-sum layout; ``tests/hw/core/test_requant.py`` checks that each stage
holds the bound above (``ACC_BOUND`` .. ``ROUND_BOUND``), so golden and RTL compute the same integers for every
layer :func:`check_layer` accepts. :func:`check_layer` rejects any field outside these bounds, naming the
layer, the field and the bound; :func:`requant_params` never produces one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import UserError
from model.export.format import WIDTHS

#: Non-zero widths (:data:`WIDTHS`, the MPQ-tickets hierarchy the image format encodes, 0 = pruned), the
#: classes that get their own accumulator.
CLASSES: tuple[int, ...] = tuple(m for m in WIDTHS if m)
D = (1 << 32) - 1
#: R_m = D / (2^m - 1): the code q of an m-bit weight repeated to fill 32 bits is q * R_m.
R = {m: D // ((1 << m) - 1) for m in CLASSES}
#: Bits dropped from the exact accumulator before the requant multiply (floor).
ACC_SHIFT = 16
#: Width of the unsigned requant multiplier M (fits the DSP48E1 B port as a non-negative 18-bit value).
MULT_BITS = 17
#: Width of the signed requant offset B: ``-2^(BIAS_BITS-1) <= B < 2^(BIAS_BITS-1)`` (bound 5 above).
BIAS_BITS = 63
#: Largest requant shift S (the smallest is 1).
MAX_SHIFT = 62
#: Fractional bits of the last layer's class scores.
SCORE_FRAC_BITS = 8
#: Largest activation code width the integer contract (and the hardware) accepts.
MAX_ACT_BITS = 8
#: Largest fan-in for which every intermediate stays inside int64 (and the hardware's 64-bit sums).
MAX_FAN_IN = 4096
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MAX = (1 << 63) - 1
BIAS_MIN, BIAS_MAX = -(1 << (BIAS_BITS - 1)), (1 << (BIAS_BITS - 1)) - 1

# The bounds of the module docstring, in Python integers (bounds 2 to 5).
ACC_BOUND = D * ((1 << MAX_ACT_BITS) - 1) * MAX_FAN_IN
T_BOUND = -(-ACC_BOUND >> ACC_SHIFT)
PRODUCT_BOUND = T_BOUND * ((1 << MULT_BITS) - 1)
ROUND_BOUND = PRODUCT_BOUND + max(-BIAS_MIN, BIAS_MAX) + (1 << (MAX_SHIFT - 1))
if ROUND_BOUND > INT64_MAX:
    raise AssertionError(f"t*M + B + 2^(S-1) may reach {ROUND_BOUND}, past int64: the named bounds do not fit")


@dataclass(frozen=True, eq=False)
class IntLinear:
    """One fully connected layer of the integer contract.

    Members
    -------
    codes : int64 ``[n_out, n_in]``
        Weight codes ``q``: DoReFa codes in ``[0, 2^width - 1]``, or for a ``signed`` layer offset-binary
        codes ``c + 2^(width-1)`` in ``[1, 2^width - 1]``; 0 wherever ``widths`` is 0.
    widths : int64 ``[n_out, n_in]``
        Element-wise bit widths in :data:`WIDTHS`.
    in_bits : int
        Width of the input activation codes.
    out_bits : int
        Width of the output codes, or 0 for the last layer (signed int32 scores).
    mult : int64 ``[n_out]``
        Requant multiplier ``M`` in ``[0, 2^MULT_BITS)``.
    bias : int64 ``[n_out]``
        Requant offset ``B`` (bias and rounding offset of the float model, in units of ``2^-shift``).
    shift : int
        Requant shift ``S`` >= 1.
    name : str
        Layer name (manifests and messages only).
    signed : bool
        Weight mode of the whole layer: False for DoReFa codes, True for symmetric signed codes stored in
        offset binary (module docstring).
    """

    codes: np.ndarray
    widths: np.ndarray
    in_bits: int
    out_bits: int
    mult: np.ndarray
    bias: np.ndarray
    shift: int
    name: str = ""
    signed: bool = False

    @property
    def n_out(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.codes.shape[1])


@dataclass(frozen=True, eq=False)
class IntNetwork:
    """A stack of :class:`IntLinear` layers; input codes have ``input_bits`` bits."""

    input_bits: int
    layers: tuple[IntLinear, ...]

    def forward(self, u) -> np.ndarray:
        """Integer inference. ``u``: ``[N, n_in]`` input codes. Returns int64 ``[N, n_classes]``.

        Raises
        ------
        UserError
            From :meth:`check` (a layer outside the contract, layers that do not chain: the module docstring's
            bounds hold only for the fields it checks), or if ``u`` is not a 2-D array of integers with ``n_in``
            columns, or holds a code outside ``[0, 2^input_bits - 1]`` (the hardware would read only the low
            bits of such a code).
        """
        self.check()
        x = self.check_inputs(u)
        for layer in self.layers:
            x = layer_forward(layer, x)
        return x

    def check(self, where: str = "network") -> None:
        """Raise :class:`UserError` unless every layer keeps the contract (:func:`check_layer`) and the layers
        chain: each layer's ``n_in`` and ``in_bits`` are the previous layer's ``n_out`` and ``out_bits`` (the
        first's ``in_bits`` is ``input_bits``). What the packers check too, so that a network built in memory
        runs under the same bounds as one read from an image (:class:`~model.export.golden_net.IntConvNetwork`
        checks its stages the same way)."""
        for index, layer in enumerate(self.layers):
            check_layer(layer, where=f"layer {index}" + (f" ({layer.name})" if layer.name else ""))
        self.check_chain(where)

    def check_chain(self, where: str = "network") -> None:
        """The chain part of :meth:`check` alone, for a reader that has checked each layer as it read it."""
        if not self.layers:
            raise UserError(f"{where}: field 'layers' is empty; an image needs at least one layer")
        prev_out, prev_bits = None, self.input_bits
        for index, layer in enumerate(self.layers):
            if layer.n_in < 1 or layer.n_out < 1:
                raise UserError(f"{where}: layer {index} fields 'n_in'/'n_out' are {layer.n_in}/{layer.n_out};"
                                " allowed >= 1")
            if prev_out is not None and layer.n_in != prev_out:
                raise UserError(f"{where}: layer {index} field 'n_in' is {layer.n_in}; the previous layer has"
                                f" n_out {prev_out}")
            if layer.in_bits != prev_bits:
                source = "input_bits" if index == 0 else "the previous layer's out_bits"
                raise UserError(f"{where}: layer {index} field 'in_bits' is {layer.in_bits}; {source} is"
                                f" {prev_bits}")
            prev_out, prev_bits = layer.n_out, layer.out_bits

    def check_inputs(self, u, where: str = "input codes") -> np.ndarray:
        """``u`` as int64 ``[N, n_in]`` after checking shape, type and range (see :meth:`forward`)."""
        x = np.asarray(u)
        n_in = self.layers[0].n_in if self.layers else None
        if x.ndim != 2 or x.shape[1] != n_in:
            raise UserError(f"{where}: shape {x.shape}; expected [N, {n_in}] (N images of layer 0's n_in codes)")
        if x.dtype.kind not in "iu":
            raise UserError(f"{where}: dtype {x.dtype}; expected integer codes")
        top = (1 << self.input_bits) - 1
        outside = (x < 0) | (x > top)
        if outside.any():
            n, i = (int(k[0]) for k in np.nonzero(outside))
            raise UserError(f"{where}: code {int(x[n, i])} of image {n}, input {i} is outside [0, {top}]"
                            f" (input_bits = {self.input_bits})")
        return x.astype(np.int64, copy=False)

    def predict(self, u) -> np.ndarray:
        """Class index of the highest score (lowest index on ties, like ``np.argmax``)."""
        return self.forward(u).argmax(axis=1)

    @property
    def avg_weight_bits(self) -> float:
        total = sum(int(layer.widths.sum()) for layer in self.layers)
        count = sum(layer.widths.size for layer in self.layers)
        return total / count


def check_layer(layer: IntLinear, where: str = "layer") -> None:
    """Raise :class:`UserError` if ``layer`` breaks the contract (mode, widths, code ranges, sizes, requant).

    Every requant field is checked against the bound the module docstring derives from the hardware's
    widths (``M``: :data:`MULT_BITS` unsigned bits; ``B``: :data:`BIAS_BITS` signed bits; ``S``:
    ``1..MAX_SHIFT``), so that no intermediate overflows int64 here or a stage of the requantizer; the message
    names ``where`` (the layer), the field, the offending value and the bound.
    """
    w, q = layer.widths, layer.codes
    if not isinstance(layer.signed, bool | np.bool_):
        raise UserError(f"{where}: field 'signed' is {layer.signed!r}; allowed True or False")
    if w.shape != q.shape or w.ndim != 2:
        raise UserError(f"{where}: codes {q.shape} and widths {w.shape} must be equal 2-D shapes")
    for field in ("codes", "widths", "mult", "bias"):
        kind = np.asarray(getattr(layer, field)).dtype
        if kind.kind not in "iu":
            raise UserError(f"{where}: field '{field}' holds {kind} values; allowed integers")
    bad = ~np.isin(w, WIDTHS)
    if bad.any():
        raise UserError(f"{where}: field 'widths' holds {sorted(set(w[bad].tolist()))[:5]}; allowed {WIDTHS}")
    limit = np.where(w == 32, D, (np.int64(1) << np.minimum(w, 31)) - 1)
    if (q < 0).any() or (q > limit).any():
        raise UserError(f"{where}: field 'codes' outside [0, 2^width - 1]")
    if layer.signed and (q[w != 0] == 0).any():
        # q = 0 would be c = -2^(m-1), outside the symmetric range (and |w| > 1 breaks the bounds above).
        raise UserError(f"{where}: field 'codes' of a signed layer outside [1, 2^width - 1] (offset binary"
                        " of c in [-(2^(width-1) - 1), 2^(width-1) - 1])")
    if layer.n_in > MAX_FAN_IN:
        raise UserError(f"{where}: n_in {layer.n_in} exceeds the supported maximum {MAX_FAN_IN}")
    for field, bits in (("in_bits", layer.in_bits), ("out_bits", layer.out_bits)):
        if not (bits == 0 and field == "out_bits") and not 1 <= bits <= MAX_ACT_BITS:
            raise UserError(f"{where}: field '{field}' is {bits}; allowed 1..{MAX_ACT_BITS}")
    if not isinstance(layer.shift, int | np.integer) or not 1 <= layer.shift <= MAX_SHIFT:
        raise UserError(f"{where}: field 'shift' is {layer.shift!r}; allowed 1..{MAX_SHIFT} (MAX_SHIFT)")
    if layer.mult.shape != (layer.n_out,) or layer.bias.shape != (layer.n_out,):
        raise UserError(f"{where}: fields 'mult'/'bias' must have shape ({layer.n_out},)")
    mult_bound = f"[0, 2^{MULT_BITS} - 1] (MULT_BITS = {MULT_BITS} unsigned bits)"
    bias_bound = (f"[-2^{BIAS_BITS - 1}, 2^{BIAS_BITS - 1} - 1] (BIAS_BITS = {BIAS_BITS} signed bits, so that"
                  " t*M + B + 2^(S-1) fits int64)")
    for field, low, high, bound in (("mult", 0, (1 << MULT_BITS) - 1, mult_bound),
                                    ("bias", BIAS_MIN, BIAS_MAX, bias_bound)):
        values = getattr(layer, field)
        # Compare, never negate: -INT64_MIN overflows (np.abs of it is negative).
        outside = (values < low) | (values > high)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise UserError(f"{where}: field '{field}' of output {j} is {int(values[j])}; allowed {bound}")


def as_codes(u) -> np.ndarray:
    """``u`` as an int64 numpy array (numpy arrays, lists and CPU torch tensors all convert)."""
    return np.asarray(u).astype(np.int64, copy=False)


def class_sums(layer: IntLinear, u) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per-class unsigned sums ``S_m`` and per-class activation sums ``A_m`` (module docstring).

    Parameters
    ----------
    layer : IntLinear
    u : int64 ``[N, n_in]``
        Input activation codes.

    Returns
    -------
    sums, act_sums : dict of int64 ``[N, n_out]``, keyed by the classes :data:`CLASSES`
        ``S_m = sum over class-m weights of q u`` and ``A_m = sum over class-m weights of u``; pruned
        weights take part in neither. The two modes have the same sums; only :func:`combine` differs.
    """
    u = as_codes(u)
    q = np.asarray(layer.codes, dtype=np.int64)
    w = np.asarray(layer.widths, dtype=np.int64)
    sums = {m: u @ np.where(w == m, q, 0).T for m in CLASSES}
    act_sums = {m: u @ (w == m).astype(np.int64).T for m in CLASSES}
    return sums, act_sums


def combine(sums: dict[int, np.ndarray], act_sums: dict[int, np.ndarray], signed: bool = False
            ) -> np.ndarray:
    """``D`` times the exact dot product of the layer's weights with the activations (module docstring).

    DoReFa: ``acc = 2 sum_m R_m S_m - D A``; signed (offset-binary codes): the same minus
    ``sum_m R_m A_m``, i.e. ``2 sum_m R_m S_m - sum_m R_m 2^m A_m``. ``A = sum_m A_m``.
    """
    acc = 0
    for m in CLASSES:
        acc = acc + 2 * R[m] * sums[m] - D * act_sums[m]
        if signed:
            acc = acc - R[m] * act_sums[m]
    return acc


def requantize(acc, mult, bias, shift: int, out_bits: int) -> np.ndarray:
    """Floor shift, fixed-point multiply-add, round half up, then clamp (hidden) or saturate (scores).

    ``shift`` may be a numpy integer of any width (:func:`check_layer` accepts one); it is taken as a Python
    int, since NumPy 2 keeps a narrow dtype in ``1 << (shift - 1)`` and the rounding offset 2^(S-1) would wrap
    (an ``int32`` shift of 40 made it 0: floor instead of round half up)."""
    shift = int(shift)
    t = as_codes(acc) >> ACC_SHIFT
    y = (t * np.asarray(mult, dtype=np.int64) + np.asarray(bias, dtype=np.int64) + (1 << (shift - 1))) >> shift
    if out_bits:
        return np.clip(y, 0, (1 << out_bits) - 1)
    return np.clip(y, INT32_MIN, INT32_MAX)


def layer_forward(layer: IntLinear, u) -> np.ndarray:
    sums, act_sums = class_sums(layer, u)
    return requantize(combine(sums, act_sums, layer.signed), layer.mult, layer.bias, layer.shift, layer.out_bits)


def largest_shift(offset: np.ndarray, *scaled: tuple[np.ndarray, int]
                  ) -> tuple[tuple[np.ndarray, ...], np.ndarray, int] | None:
    """The shift search of :func:`requant_params` (shared with the residual requant of the conv export).

    For each ``(x, e)`` of ``scaled`` the multiplier is ``round(x 2^(S + e))``, and ``B = round(offset 2^S)``.
    Returns ``((M, ...), B, S)`` (int64) for the largest ``S`` in ``MAX_SHIFT..1`` with every multiplier
    below ``2^MULT_BITS`` and every ``B`` inside :data:`BIAS_BITS` signed bits, or None if no shift fits.
    Inputs are float64 arrays, already checked finite (the caller raises its own error for None).
    """
    for shift in range(MAX_SHIFT, 0, -1):
        mults = tuple(np.round(x * 2.0 ** (shift + e)) for x, e in scaled)
        bias = np.round(offset * 2.0**shift)
        # Float comparisons against powers of two are exact; the casts below only see values that fit.
        if (all((m < 2.0**MULT_BITS).all() for m in mults) and (bias >= float(BIAS_MIN)).all()
                and (bias < 2.0**(BIAS_BITS - 1)).all()):
            return tuple(m.astype(np.int64) for m in mults), bias.astype(np.int64), shift
    return None


def requant_params(gain: np.ndarray, offset: np.ndarray, where: str = "requantization"
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Fixed-point ``M``, ``B``, ``S`` so that ``y ~= gain * acc / D + offset`` (per output channel).

    ``gain`` multiplies the exact dot product ``sum w u`` and ``offset`` is added after it, both in units
    of the output code. ``S`` is the largest shift in ``1..MAX_SHIFT`` that keeps every ``M`` below
    ``2^MULT_BITS`` and every ``B = round(offset 2^S)`` inside :data:`BIAS_BITS` signed bits; for the
    largest channel that gives ``M`` 16 to 17 significant bits unless the offset limits ``S`` (a tiny gain
    next to a large offset). Giving up a bit of ``M`` there costs at most ``|t| / 2^(S+1) <= |offset| 2^-26``
    output units (``|t| <= T_BOUND < 2^36``; ``S + 1`` failed, so ``|offset| 2^(S+1) >= 2^62``: ``2^S >= 2^61 /
    |offset|``), far below the rounding step.

    Raises
    ------
    UserError
        Naming ``where``, for a negative or non-finite gain, a non-finite offset, or parameters that no
        shift fits: ``M`` of the largest gain at ``S = 1`` not below ``2^MULT_BITS``, or ``B`` at ``S = 1``
        outside the signed :data:`BIAS_BITS` bits. Nothing is cast unchecked.
    """
    gain, offset = np.broadcast_arrays(np.asarray(gain, dtype=np.float64), np.asarray(offset, dtype=np.float64))
    if (gain < 0).any() or not np.isfinite(gain).all() or not np.isfinite(offset).all():
        raise UserError(f"{where}: requantization gain must be finite and non-negative (PACT alpha > 0), and the"
                        " offset finite")
    c = gain * (1 << ACC_SHIFT) / D
    fit = largest_shift(offset, (c, 0))
    if fit is not None:
        (mult,), bias, shift = fit
        return mult, bias, shift
    if not (np.round(c * 2.0) < 2.0**MULT_BITS).all():
        raise UserError(f"{where}: field 'mult': gain {float(gain.max())!r} needs M >= 2^{MULT_BITS} even at"
                        f" shift 1; allowed gains below {(2**MULT_BITS - 0.5) * D / 2 ** (ACC_SHIFT + 1):.6g}")
    raise UserError(f"{where}: field 'bias': offset {float(np.abs(offset).max())!r} needs |B| >= 2^{BIAS_BITS - 1}"
                    f" even at shift 1 (BIAS_BITS = {BIAS_BITS} signed bits); allowed |offset| below 2^{BIAS_BITS - 2}")
