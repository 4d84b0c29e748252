"""The integer golden model: exact dot products, named rounding, and agreement with the fake-quant model."""

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch

from model.data import load_digits_split
from model.errors import UserError
from model.export.convert import GOLDEN_BATCH, golden_accuracy, input_codes, to_golden
from model.export.golden import (
    ACC_BOUND,
    ACC_SHIFT,
    BIAS_MAX,
    BIAS_MIN,
    CLASSES,
    MAX_FAN_IN,
    MAX_SHIFT,
    MULT_BITS,
    PRODUCT_BOUND,
    ROUND_BOUND,
    T_BOUND,
    IntLinear,
    IntNetwork,
    R,
    check_layer,
    class_sums,
    combine,
    largest_shift,
    layer_forward,
    requant_params,
    requantize,
)
from model.quant.nets import DigitsMLP
from model.training.loop import evaluate, train

D = 2**32 - 1


def dorefa_value(q: int, m: int) -> Fraction:
    """Eq. 3 with exact rationals: 2 q / (2^m - 1) - 1."""
    return Fraction(2 * q, 2**m - 1) - 1 if m else Fraction(0)


def signed_value(c: int, m: int) -> Fraction:
    """The signed mode's weight, exactly: 2 c / (2^m - 1)."""
    return Fraction(2 * c, 2**m - 1) if m else Fraction(0)


def layer(codes, widths, mult=None, bias=None, shift=20, out_bits=4, signed=False, in_bits=4):
    codes = np.asarray(codes, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    n_out = codes.shape[0]
    return IntLinear(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits,
                     mult=np.full(n_out, 1 if mult is None else mult, dtype=np.int64),
                     bias=np.full(n_out, 0 if bias is None else bias, dtype=np.int64), shift=shift,
                     signed=signed)


def offset_codes(c: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Offset binary: q = c + 2^(m-1) where m > 0, 0 where pruned."""
    return np.where(widths > 0, c + (np.int64(1) << np.maximum(widths - 1, 0)), 0).astype(np.int64)


def exact_acc(values, u) -> int:
    """D * sum_i w_i u_i for exact rational weights; asserts that it is an integer."""
    total = D * sum(w * int(x) for w, x in zip(values, u))
    assert total.denominator == 1
    return int(total)


def test_class_constants_repeat_the_code():
    # R_m * q is q's bits repeated to fill 32 bits (ARCHITECTURE.md, integer semantics).
    assert R == {4: 0x11111111, 8: 0x01010101, 16: 0x00010001, 32: 1}
    assert 0xA * R[4] == 0xAAAAAAAA and 0x5C * R[8] == 0x5C5C5C5C


def test_hand_computed_dot_product():
    # widths 4, 8, 0, 32 and 16; codes 15 (w = 1), 0 (w = -1), pruned, 2^31 and 0x8000 (near 0).
    lay = layer([[15, 0, 0, 2**31, 0x8000]], [[4, 8, 0, 32, 16]])
    u = np.array([[3, 5, 9, 2, 7]])
    sums, act_sums = class_sums(lay, u)
    assert {m: int(sums[m].item()) for m in CLASSES} == {4: 45, 8: 0, 16: 7 * 0x8000, 32: 2 * 2**31}
    # Per-class activation sums; the pruned weight's activation counts nowhere.
    assert {m: int(act_sums[m].item()) for m in CLASSES} == {4: 3, 8: 5, 16: 7, 32: 2}
    # w = 1, -1, (2*2^31 - D)/D = 1/D, (2*0x8000 - 65535)/65535 = 1/65535
    exact = 3 * 1 + 5 * -1 + 2 * Fraction(1, D) + 7 * Fraction(1, 65535)
    assert int(combine(sums, act_sums).item()) == exact * D
    # The same codes read as a signed layer: c = q - 2^(m-1) = 7, -128, 2^31 - 2^31 = 0, 0x8000 - 0x8000 = 0.
    exact = 3 * Fraction(14, 15) + 5 * Fraction(-256, 255)
    assert int(combine(sums, act_sums, signed=True).item()) == exact * D


def test_combine_is_exact_for_random_layers():
    rng = np.random.default_rng(3)
    widths = rng.choice([0, 4, 8, 16, 32], size=(6, 40))
    top = np.where(widths == 32, D, (1 << np.minimum(widths, 31)) - 1)
    codes = (rng.random(widths.shape) * (top + 1.0)).astype(np.int64).clip(0, top) * (widths != 0)
    codes[0, :] = top[0, :]  # extreme codes, 2^32 - 1 included
    u = rng.integers(0, 256, size=(3, 40))
    u[0, :] = 255
    lay = layer(codes, widths)
    acc = combine(*class_sums(lay, torch.as_tensor(u)))
    for n in range(3):
        for j in range(6):
            exact = sum(dorefa_value(int(codes[j, i]), int(widths[j, i])) * int(u[n, i]) for i in range(40))
            assert int(acc[n, j]) == exact * D


def test_signed_hand_computed_dot_product():
    # c = 7 (4 bit), -127 (8 bit), pruned, -1 (32 bit), 2 (16 bit): an even c, which DoReFa cannot hold.
    c = np.array([[7, -127, 0, -1, 2]])
    widths = np.array([[4, 8, 0, 32, 16]])
    q = offset_codes(c, widths)
    assert q.tolist() == [[15, 1, 0, 2**31 - 1, 0x8002]]
    lay = layer(q, widths, signed=True)
    check_layer(lay)
    u = np.array([[3, 5, 9, 2, 7]])
    sums, act_sums = class_sums(lay, u)
    exact = 3 * Fraction(14, 15) + 5 * Fraction(-254, 255) + 2 * Fraction(-2, D) + 7 * Fraction(4, 65535)
    assert int(combine(sums, act_sums, signed=True).item()) == exact * D
    # The correction is -sum_m R_m A_m on top of the DoReFa accumulator of the same codes.
    r_a = 0x11111111 * 3 + 0x01010101 * 5 + 0x00010001 * 7 + 1 * 2
    assert int(combine(sums, act_sums, signed=True).item()) == int(combine(sums, act_sums).item()) - r_a


def random_signed(rng, widths):
    """Symmetric signed codes: 0 where pruned, else the extremes +-(2^(m-1) - 1), +-1, 0 or uniform."""
    top = np.where(widths > 0, (np.int64(1) << np.maximum(widths - 1, 0)) - 1, 0)
    uniform = np.floor(rng.random(widths.shape) * (2.0 * top + 1)).astype(np.int64) - top
    pick = rng.integers(0, 6, size=widths.shape)
    c = np.choose(pick, [top, -top, np.ones_like(top), -np.ones_like(top), np.zeros_like(top), uniform])
    return np.clip(c, -top, top) * (widths > 0)


def test_signed_combine_is_exact_for_random_mixed_layers():
    """Mixed-width signed layers (every class, pruned weights, c = 0 kept) against exact rationals."""
    rng = np.random.default_rng(5)
    for n_in in (1, 7, 40):
        widths = rng.choice([0, 4, 8, 16, 32], size=(8, n_in))
        widths[0] = rng.choice([4, 8, 16, 32], size=n_in)  # no pruned weight
        widths[1] = 0  # all pruned
        c = random_signed(rng, widths)
        lay = layer(offset_codes(c, widths), widths, signed=True, in_bits=8)
        check_layer(lay)
        u = rng.integers(0, 256, size=(3, n_in))
        u[0] = 255
        acc = combine(*class_sums(lay, torch.as_tensor(u)), signed=True)
        for n in range(3):
            for j in range(8):
                values = [signed_value(int(c[j, i]), int(widths[j, i])) for i in range(n_in)]
                assert int(acc[n, j]) == exact_acc(values, u[n])
        assert not acc[:, 1].any()


def test_signed_extremes_at_max_fan_in():
    """c = +-(2^(m-1) - 1) for every width (32 included) over MAX_FAN_IN inputs at u = 255: exact in int64."""
    rows, signs = [], []
    for m in CLASSES:
        for sign in (1, -1):
            rows.append(np.full(MAX_FAN_IN, m))
            signs.append(sign)
    widths = np.array(rows + [np.resize([4, 8, 16, 32], MAX_FAN_IN)] * 2)  # and two rows mixing all widths
    signs += [1, -1]
    top = (np.int64(1) << (widths - 1)) - 1
    c = top * np.array(signs)[:, None]
    lay = layer(offset_codes(c, widths), widths, signed=True, in_bits=8)
    check_layer(lay)
    u = np.full((1, MAX_FAN_IN), 255)
    acc = combine(*class_sums(lay, torch.as_tensor(u)), signed=True)[0]
    for j in range(len(widths)):
        values = {m: signed_value(int(signs[j]) * (2 ** (m - 1) - 1), m) for m in CLASSES}
        assert int(acc[j]) == exact_acc([values[int(m)] for m in widths[j]], u[0])
    # |acc| <= D * 255 * 4096 < 2^52 (module docstring), the 32-bit rows nearly reach it.
    assert int(np.abs(acc).max()) < 2**52 and int(acc[6]) == 2 * (2**31 - 1) * 255 * MAX_FAN_IN


def test_signed_zero_codes_equal_pruning():
    """An unpruned c = 0 weight adds exactly nothing, so pruning it (zero-skipping) changes no result."""
    rng = np.random.default_rng(8)
    widths = rng.choice([4, 8, 16, 32], size=(5, 30))
    c = random_signed(rng, widths)
    u = torch.as_tensor(rng.integers(0, 256, size=(4, 30)))
    kept = layer(offset_codes(c, widths), widths, signed=True, in_bits=8)
    pruned_widths = np.where(c == 0, 0, widths)
    pruned = layer(offset_codes(c, pruned_widths), pruned_widths, signed=True, in_bits=8)
    assert (c == 0).any() and not (c[widths == 0] != 0).any()
    assert np.array_equal(layer_forward(kept, u), layer_forward(pruned, u))
    assert np.array_equal(combine(*class_sums(kept, u), signed=True), combine(*class_sums(pruned, u), signed=True))


def test_signed_flag_only_changes_the_correction():
    """The same codes run as DoReFa and as signed differ by exactly sum_m R_m A_m in acc."""
    rng = np.random.default_rng(2)
    widths = rng.choice([0, 4, 8, 16, 32], size=(6, 25))
    codes = offset_codes(random_signed(rng, widths), widths)
    u = torch.as_tensor(rng.integers(0, 256, size=(2, 25)))
    sums, act_sums = class_sums(layer(codes, widths, in_bits=8), u)
    correction = sum(R[m] * act_sums[m] for m in CLASSES)
    assert np.array_equal(combine(sums, act_sums) - combine(sums, act_sums, signed=True), correction)


def test_requantize_rounds_floor_then_half_up():
    # acc >> 16 is a floor: -1 -> -1, and -65536 -> -1, -65537 -> -2 (with M = 2, B = 0, S = 1, y = t).
    acc = np.array([-1, -65536, -65537, 65535])
    assert requantize(acc, 2, 0, 1, out_bits=0).tolist() == [-1, -1, -2, 0]
    # y = (t * M + B + 2^(S-1)) >> S with S = 1, M = 1: t/2 rounded half up: 5/2 -> 3, -5/2 -> -2.
    acc = np.array([5 << 16, -5 << 16, 4 << 16, -3 << 16])
    y = requantize(acc, 1, 0, 1, out_bits=0)
    assert y.tolist() == [3, -2, 2, -1]
    # Hidden layers clamp to [0, 2^bits - 1].
    y = requantize(np.array([100 << 16, -100 << 16]), 1, 0, 1, out_bits=4)
    assert y.tolist() == [15, 0]
    # The last layer saturates to int32.
    y = requantize(np.array([1 << 57, -(1 << 57)]), (1 << 17) - 1, 0, 1, out_bits=0)
    assert y.tolist() == [2**31 - 1, -(2**31)]


def test_requant_params_precision():
    gain = np.array([0.5, 1.3, 0.02, 7.0])
    offset = np.array([-3.25, 0.0, 11.5, 2.0])
    mult, bias, shift = requant_params(gain, offset)
    assert mult.max() < 2**MULT_BITS and mult.max() >= 2 ** (MULT_BITS - 1)
    # gain * sum(wu) + offset for sum(wu) = 20: acc = 20 * D.
    acc = np.full((4,), 20 * D)
    y = requantize(acc, mult, bias, shift, out_bits=0)
    assert y.tolist() == [7, 26, 12, 142]  # round half up of 6.75, 26, 11.9, 142: exact, no tolerance
    # Random channels whose gains are within a factor 2 (every M keeps 16-17 significant bits: a relative error
    # below 2^-16, so at most 0.005 output units at |v| <= 300): every result away from a rounding tie is
    # exactly round half up of gain * s + offset.
    rng = np.random.default_rng(3)
    gain = rng.uniform(0.5, 1.0, size=64)
    offset = rng.uniform(-20.0, 20.0, size=64)
    mult, bias, shift = requant_params(gain, offset)
    sums = rng.integers(-250, 251, size=(200, 64))
    v = gain * sums + offset
    y = requantize(sums * D, mult, bias, shift, out_bits=0)
    away = np.abs(v - np.floor(v) - 0.5) > 0.01
    assert away.mean() > 0.9
    assert np.array_equal(y[away], np.floor(v[away] + 0.5).astype(np.int64))


def test_check_layer_rejects_bad_widths_and_codes():
    with pytest.raises(UserError, match=r"'widths'.*allowed \(0, 4, 8, 16, 32\)"):
        check_layer(layer([[1]], [[3]]))
    with pytest.raises(UserError, match="'codes'"):
        check_layer(layer([[16]], [[4]]))
    with pytest.raises(UserError, match="'shift'"):
        check_layer(layer([[1]], [[4]], shift=0))
    # Signed layers: q = 0 would be c = -2^(m-1), outside the symmetric range.
    check_layer(layer([[1, 15, 0]], [[4, 4, 0]], signed=True))
    check_layer(layer([[0]], [[4]]))  # the same code is fine for DoReFa
    with pytest.raises(UserError, match=r"'codes' of a signed layer outside \[1, 2\^width - 1\]"):
        check_layer(layer([[1, 0]], [[4, 8]], signed=True))
    with pytest.raises(UserError, match="'signed' is 1; allowed True or False"):
        check_layer(layer([[1]], [[4]], signed=1))
    with pytest.raises(UserError, match="'codes'"):
        check_layer(layer([[-1]], [[4]]))  # a negative code
    check_layer(layer([[D]], [[32]]))
    with pytest.raises(UserError, match="'codes'"):
        check_layer(layer([[D + 1]], [[32]]))  # 2^32: the image's 32-bit word would wrap it to 0
    check_layer(layer(np.ones((1, MAX_FAN_IN), dtype=np.int64), np.full((1, MAX_FAN_IN), 4)))
    with pytest.raises(UserError, match="n_in|fan"):
        check_layer(layer(np.ones((1, MAX_FAN_IN + 1), dtype=np.int64), np.full((1, MAX_FAN_IN + 1), 4)))


def test_forward_refuses_a_network_the_packer_would_refuse():
    """A network built in memory runs under the same checks as one read from an image: a bias past BIAS_BITS
    (``t M + B`` would wrap int64 and saturate to the wrong end: 2^63 - 1 gave -2^31 before the check) and layers
    that do not chain (a hidden layer's int32 scores fed on as codes) raise, naming the field."""
    u = np.array([[15]])
    ok = IntNetwork(input_bits=4, layers=(layer([[15]], [[4]], out_bits=0),))
    assert ok.forward(u).shape == (1, 1)
    with pytest.raises(UserError, match="'bias' of output 0 is 9223372036854775807"):
        IntNetwork(input_bits=4, layers=(layer([[15]], [[4]], bias=(1 << 63) - 1, shift=1, out_bits=0),)).forward(u)
    with pytest.raises(UserError, match="'in_bits' is 4; the previous layer's out_bits is 0"):
        IntNetwork(input_bits=4, layers=(layer([[15]], [[4]], out_bits=0), layer([[15]], [[4]], out_bits=0))).forward(u)
    with pytest.raises(UserError, match="'n_in' is 2; the previous layer has n_out 1"):
        IntNetwork(input_bits=4, layers=(layer([[15]], [[4]]), layer([[1, 2]], [[4, 4]], out_bits=0))).forward(u)
    with pytest.raises(UserError, match="layer 0 field 'in_bits' is 4; input_bits is 8"):
        IntNetwork(input_bits=8, layers=(layer([[15]], [[4]], out_bits=0),)).forward(u)


def test_golden_accuracy_matches_fake_quant():
    """The acceptance test of the conversion: within 0.5 percentage points on the digits test set."""
    split = load_digits_split()
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(32,), act_bits=4)
    gen = torch.Generator().manual_seed(1)
    for lin in model.quant_layers():  # a mixed element-wise mask like an IMQ ticket
        idx = torch.randint(0, 5, lin.weight.shape, generator=gen)
        lin.set_bit_width(np.array([0, 4, 8, 16, 32])[idx])
    train(model, split, epochs=6, progress=False)
    fq = evaluate(model, split.x_test, split.y_test)
    net = to_golden(model)
    raw = net.forward(input_codes(model, split.x_test))  # the scores, computed once
    golden = float((raw.argmax(axis=1) == split.y_test.numpy()).mean())
    assert golden == golden_accuracy(net, model, split.x_test, split.y_test)  # cheap for an MLP
    assert fq > 0.85
    assert abs(golden - fq) <= 0.005
    # And the scores themselves agree with the float logits to the score resolution.
    with torch.no_grad():
        logits = model(split.x_test).double()
    scores = torch.as_tensor(raw).double() / 256
    assert (logits - scores).abs().max() < 0.05


def test_golden_accuracy_evaluates_in_slices():
    """More images than one slice (GOLDEN_BATCH): the accuracy of the concatenated predictions, in order."""
    split = load_digits_split()
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(16,), act_bits=4)
    net = to_golden(model)
    x = torch.cat([split.x_test] * (GOLDEN_BATCH // len(split.x_test) + 2))
    y = torch.cat([split.y_test] * (GOLDEN_BATCH // len(split.y_test) + 2))
    assert len(x) > GOLDEN_BATCH and len(x) % GOLDEN_BATCH
    y[::7] = (y[::7] + 1) % 10  # labels that differ along the set, so that misordered slices would show
    pred = net.forward(input_codes(model, x)).argmax(axis=1)
    assert golden_accuracy(net, model, x, y) == float((pred == y.numpy()).mean())


# -- bounds: requant parameters, check_layer, input codes ---------------------------------------------------

def test_largest_shift_takes_the_largest_that_fits_up_to_max_shift():
    """S = MAX_SHIFT itself when everything fits there; the largest S below it whose M stays under 2^17 (M =
    2^17 exactly does not fit: the next shift down is taken); None when no shift fits."""
    (m,), b, s = largest_shift(np.array([0.0]), (np.array([2.0**-70]), 0))
    assert s == MAX_SHIFT and m.tolist() == [round(2.0**-70 * 2.0**MAX_SHIFT)] and b.tolist() == [0]
    (m,), _, s = largest_shift(np.array([0.0]), (np.array([1.0]), 0))  # M = 2^S: at S = 17 it is 2^17
    assert s == MULT_BITS - 1 and m.tolist() == [(1 << MULT_BITS) - (1 << (MULT_BITS - 1))]
    assert largest_shift(np.array([0.0]), (np.array([2.0**MULT_BITS]), 0)) is None


def test_requant_params_fits_a_tiny_gain_with_an_offset():
    """gain 1e-9 next to offset 3: the shift that maximises M (62) would make B = 3 * 2^62, which int64 cannot
    hold (an unchecked cast gave -2^63); the shift is lowered until B fits, and the layer stays exact."""
    gain, offset = np.array([1e-9, 0.0]), np.array([3.0, -2.5])
    mult, bias, shift = requant_params(gain, offset)
    assert shift < 62 and bias[0] == 3 << shift and bias[1] == -5 << (shift - 1)
    assert BIAS_MIN <= bias.min() and bias.max() <= BIAS_MAX and mult[0] > 0
    check_layer(IntLinear(codes=np.array([[1], [1]]), widths=np.array([[4], [4]]), in_bits=4, out_bits=0,
                          mult=mult, bias=bias, shift=shift))
    acc = np.array([[1000 * D, -1000 * D]])  # sum w u = +-1000: gain * 1000 = 1e-6, far below a step
    assert requantize(acc, mult, bias, shift, out_bits=0).tolist() == [[3, -2]]


@pytest.mark.parametrize("gain, offset, field", [
    (1e10, 0.0, "field 'mult'"),  # M >= 2^17 even at S = 1
    (0.5, 2.0**61, "field 'bias'"),  # B = 2^62 at S = 1
    (0.5, -(2.0**62), "field 'bias'"),
    (-0.5, 0.0, "requantization gain must be finite and non-negative"),  # M is unsigned
    (0.5, float("nan"), "requantization gain .* and the offset finite"),
    (0.5, float("inf"), "requantization gain .* and the offset finite"),
])
def test_requant_params_refuses_what_no_shift_fits(gain, offset, field):
    with pytest.raises(UserError, match=rf"^fc3: {field}"):
        requant_params(np.array([gain]), np.array([offset]), where="fc3")


@pytest.mark.parametrize("field, value, bound", [
    ("bias", -(1 << 63), r"\[-2\^62, 2\^62 - 1\]"),  # np.abs(INT64_MIN) < 0 let this through before
    ("bias", 1 << 62, r"\[-2\^62, 2\^62 - 1\]"),
    ("bias", -(1 << 62) - 1, r"\[-2\^62, 2\^62 - 1\]"),
    ("mult", 1 << MULT_BITS, r"\[0, 2\^17 - 1\]"),
    ("mult", -1, r"\[0, 2\^17 - 1\]"),
])
def test_check_layer_names_layer_field_and_bound(field, value, bound):
    good = layer([[1, 2], [3, 4]], [[4, 4], [4, 4]])
    values = getattr(good, field).copy()
    values[1] = value
    bad = dataclasses.replace(good, **{field: values})
    with pytest.raises(UserError, match=rf"^layer 2 \(fc3\): field '{field}' of output 1 is {value}; allowed {bound}"):
        check_layer(bad, where="layer 2 (fc3)")


def test_check_layer_accepts_the_bounds_themselves():
    lay = layer([[1, 2], [3, 4]], [[4, 4], [4, 4]], shift=MAX_SHIFT)
    extreme = dataclasses.replace(lay, bias=np.array([BIAS_MIN, BIAS_MAX]), mult=np.array([0, (1 << MULT_BITS) - 1]))
    check_layer(extreme)
    with pytest.raises(UserError, match=rf"'shift' is {MAX_SHIFT + 1}; allowed 1\.\.{MAX_SHIFT}"):
        check_layer(dataclasses.replace(extreme, shift=MAX_SHIFT + 1))
    with pytest.raises(UserError, match="'bias' holds float64 values; allowed integers"):
        check_layer(dataclasses.replace(extreme, bias=np.array([0.5, 1.0])))


def test_golden_is_exact_at_the_extremes():
    """MAX_FAN_IN inputs of 255 on all-ones 32-bit codes (the largest acc) and on zero codes (the most
    negative), with M = 2^17 - 1, B at both ends of its range and S = 1 or MAX_SHIFT: forward equals the
    formula in Python integers, so no int64 intermediate overflowed (module docstring, bounds 1-5)."""
    widths = np.full((2, MAX_FAN_IN), 32)
    codes = np.stack([np.full(MAX_FAN_IN, D), np.zeros(MAX_FAN_IN, dtype=np.int64)])
    u = np.full((1, MAX_FAN_IN), 255)
    for shift in (1, MAX_SHIFT):
        for bias in (BIAS_MIN, BIAS_MAX):
            lay = layer(codes, widths, mult=(1 << MULT_BITS) - 1, bias=bias, shift=shift, out_bits=0, in_bits=8)
            check_layer(lay)
            got = layer_forward(lay, u)[0].tolist()
            want = []
            for acc in (D * 255 * MAX_FAN_IN, -D * 255 * MAX_FAN_IN):
                y = ((acc >> ACC_SHIFT) * ((1 << MULT_BITS) - 1) + bias + (1 << (shift - 1))) >> shift
                want.append(min(max(y, -(1 << 31)), (1 << 31) - 1))
            assert got == want
    assert ROUND_BOUND <= (1 << 63) - 1


def test_golden_is_exact_and_unsaturated_at_the_largest_accumulators():
    """The extremes above saturate (S = 1) or keep only B's sign (S = 62), which would hide a narrow ``t`` or a
    float product: at S = 40 (and 24) with M = 2^17 - 1 the largest and most negative accumulators give scores
    of about +-2^13 +- B / 2^40 (+-2^29), inside int32 and different for the two signs. They equal the formula in Python integers,
    and the named bounds are the ones reached: |acc| = ACC_BOUND, t = +-T_BOUND (a ceiling for the negative
    one: the floor shift), |t M| <= PRODUCT_BOUND."""
    widths = np.full((2, MAX_FAN_IN), 32)
    codes = np.stack([np.full(MAX_FAN_IN, D), np.zeros(MAX_FAN_IN, dtype=np.int64)])
    u = np.full((1, MAX_FAN_IN), 255)
    mult = (1 << MULT_BITS) - 1
    accs = (D * 255 * MAX_FAN_IN, -D * 255 * MAX_FAN_IN)
    assert [abs(a) for a in accs] == [ACC_BOUND, ACC_BOUND]
    ts = [a >> ACC_SHIFT for a in accs]
    assert max(ts) <= T_BOUND and min(ts) == -T_BOUND and max(abs(t * mult) for t in ts) <= PRODUCT_BOUND
    # S = 40: B at both ends of its range; S = 24: every bit of t M above 2^23 reaches the score (a float
    # product, exact to 24 bits, would not).
    for shift, bias in ((40, BIAS_MIN), (40, 0), (40, BIAS_MAX), (24, -(1 << 40)), (24, 0), (24, 1 << 40)):
        lay = layer(codes, widths, mult=mult, bias=bias, shift=shift, out_bits=0, in_bits=8)
        check_layer(lay)
        got = layer_forward(lay, u)[0].tolist()
        want = [(t * mult + bias + (1 << (shift - 1))) >> shift for t in ts]
        assert all(abs(y) < (1 << 30) for y in want) and want[0] != want[1]
        assert got == want


@pytest.mark.parametrize("inputs, message", [
    (np.array([[0, 15, 16]]), r"code 16 of image 0, input 2 is outside \[0, 15\] \(input_bits = 4\)"),
    (np.array([[0, 3, 1], [2, -1, 0]]), r"code -1 of image 1, input 1 is outside \[0, 15\]"),
    (np.array([0, 3, 1]), r"shape \(3,\); expected \[N, 3\]"),
    (np.zeros((2, 4), dtype=np.int64), r"shape \(2, 4\); expected \[N, 3\]"),
    (np.zeros((2, 3)), "dtype float64; expected integer codes"),
])
def test_forward_rejects_bad_input_codes(inputs, message):
    lay = layer(np.ones((2, 3), dtype=np.int64), np.full((2, 3), 4), out_bits=0)
    net = IntNetwork(input_bits=4, layers=(lay,))
    with pytest.raises(UserError, match=message):
        net.forward(inputs)
    assert net.forward(np.array([[0, 15, 7]])).shape == (1, 2)  # the extremes of the range are fine


@pytest.mark.parametrize("dtype", [int, np.int64, np.int32, np.int16, np.uint8])
def test_a_numpy_shift_of_any_width_rounds_half_up(dtype):
    """check_layer accepts a numpy integer shift; the rounding offset 2^(S-1) must not wrap in its dtype (an
    int32 shift of 40 made it 0 under NumPy 2: 99 here instead of 100)."""
    layer = IntLinear(codes=np.array([[15]]), widths=np.array([[4]]), in_bits=8, out_bits=0, mult=np.array([0]),
                      bias=np.array([(1 << 40) * 100 - 1]), shift=dtype(40))
    check_layer(layer)
    assert int(IntNetwork(input_bits=8, layers=(layer,)).forward(np.array([[0]]))[0, 0]) == 100
