"""The conv ops of the integer contract against golden's FC definitions, exact rationals and torch's float ops."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from model.errors import UserError
from model.export.golden import (
    ACC_SHIFT,
    BIAS_MAX,
    BIAS_MIN,
    MAX_FAN_IN,
    MULT_BITS,
    WIDTHS,
    R,
    class_sums,
    combine,
    layer_forward,
    requantize,
)
from model.export.golden_conv import (
    ACT_SUM_BOUND,
    GAP_SUM_BITS,
    RES_ROUND_BOUND,
    IntConv2d,
    check_act_mass,
    check_conv,
    complement_codes,
    conv_accumulator,
    conv_class_sums,
    conv_forward,
    exact_matmul,
    fold_negative_gain,
    global_sum_pool,
    im2col,
    max_pool_codes,
    requantize_residual,
    shortcut_a,
)
from model.quant.nets import BasicBlock

D = 2**32 - 1


def random_codes(rng, widths: np.ndarray, signed: bool, extreme: str | None = None) -> np.ndarray:
    """Random codes of each width (offset binary in [1, 2^m - 1] when signed); ``extreme``: 'low' or 'high'."""
    m = widths.astype(np.int64)
    top = np.where(m == 32, D, (np.int64(1) << np.minimum(m, 31)) - 1)
    low = np.where(m > 0, 1 if signed else 0, 0)
    if extreme == "high":
        q = top
    elif extreme == "low":
        q = low
    else:
        q = low + (rng.random(m.shape) * (top - low + 1)).astype(np.int64)
        q = np.minimum(q, top)
    return np.where(m > 0, q, 0).astype(np.int64)


def make_conv(rng, c_in, c_out, k, stride=1, padding=0, signed=False, in_bits=4, out_bits=4, extreme=None,
              width_choices=WIDTHS, res=False, shift=40):
    widths = rng.choice(np.array(width_choices), size=(c_out, c_in, k, k)).astype(np.int64)
    codes = random_codes(rng, widths, signed, extreme)
    mult = rng.integers(0, 2**MULT_BITS, size=c_out).astype(np.int64)
    bias = rng.integers(-(2**45), 2**45, size=c_out).astype(np.int64)
    res_mult = rng.integers(0, 2**MULT_BITS, size=c_out).astype(np.int64) if res else None
    return IntConv2d(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits, mult=mult, bias=bias,
                     shift=shift, stride=stride, padding=padding, name="test.conv", signed=signed, res_mult=res_mult)


def integer_weights(layer: IntConv2d) -> np.ndarray:
    """``D w`` as Python-exact int64: DoReFa ``2 R_m q - D``, signed ``2 R_m q - R_m 2^m``; 0 where pruned."""
    out = np.zeros(layer.codes.shape, dtype=np.int64)
    for m in (4, 8, 16, 32):
        sel = layer.widths == m
        offset = R[m] * 2**m if layer.signed else D
        out[sel] = 2 * R[m] * layer.codes[sel] - offset
    return out


def torch_acc(layer: IntConv2d, u: np.ndarray) -> np.ndarray:
    """``D`` times torch's float64 conv2d on exact values: integer weights ``D w`` and the codes, all sums < 2^53."""
    y = F.conv2d(torch.from_numpy(u).double(), torch.from_numpy(integer_weights(layer)).double(),
                 stride=layer.stride, padding=layer.padding)
    return y.numpy().astype(np.int64)


conv_shapes = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "k": st.sampled_from([1, 3]),
    "stride": st.sampled_from([1, 2]),
    "pad": st.sampled_from([0, 1]),
    "c_in": st.integers(1, 4),
    "c_out": st.integers(1, 4),
    "h": st.integers(3, 7),
    "w": st.integers(3, 7),
    "n": st.integers(1, 2),
    "signed": st.booleans(),
    "in_bits": st.integers(1, 8),
    "extreme": st.sampled_from([None, None, "low", "high"]),
    "u_extreme": st.booleans(),
})


def build(p):
    rng = np.random.default_rng(p["seed"])
    pad = min(p["pad"], p["k"] - 1)
    layer = make_conv(rng, p["c_in"], p["c_out"], p["k"], p["stride"], pad, p["signed"], p["in_bits"],
                      extreme=p["extreme"])
    top = 2 ** p["in_bits"] - 1
    shape = (p["n"], p["c_in"], p["h"], p["w"])
    u = np.full(shape, top, dtype=np.int64) if p["u_extreme"] else rng.integers(0, top + 1, size=shape)
    return layer, u


@settings(max_examples=60, deadline=None)
@given(conv_shapes)
def test_conv_accumulator_is_d_times_torch_conv2d_on_exact_values(p):
    layer, u = build(p)
    acc = conv_accumulator(layer, u)
    ref = torch_acc(layer, u)
    assert acc.shape == ref.shape
    np.testing.assert_array_equal(acc, ref)


@settings(max_examples=30, deadline=None)
@given(conv_shapes)
def test_conv_class_sums_are_golden_class_sums_of_im2col(p):
    layer, u = build(p)
    sums, act_sums = conv_class_sums(layer, u)
    cols = im2col(u, layer.kernel, layer.stride, layer.padding)
    n, ho, wo, f = cols.shape
    ref_s, ref_a = class_sums(layer.as_linear(), cols.reshape(-1, f))
    for m in ref_s:
        np.testing.assert_array_equal(sums[m], ref_s[m].reshape(n, ho, wo, -1).transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(act_sums[m], ref_a[m].reshape(n, ho, wo, -1).transpose(0, 3, 1, 2))
    # and the whole layer is golden's layer_forward at every pixel
    y = conv_forward(layer, u)
    ref_y = layer_forward(layer.as_linear(), cols.reshape(-1, f)).reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(y, ref_y)


def test_im2col_matches_torch_unfold():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, size=(2, 3, 6, 5))
    for k, s, p in ((1, 1, 0), (3, 1, 1), (3, 2, 1), (3, 2, 0), (1, 2, 0)):
        cols = im2col(u, k, s, p)
        ref = F.unfold(torch.from_numpy(u).double(), k, padding=p, stride=s).numpy()  # [N, C k k, L]
        np.testing.assert_array_equal(cols.reshape(2, -1, cols.shape[-1]), ref.transpose(0, 2, 1).astype(np.int64))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("width", [4, 8, 16, 32])
@pytest.mark.parametrize("extreme", ["low", "high"])
def test_extreme_codes_at_max_fan_in_are_exact(signed, width, extreme):
    """C_in k^2 = 4095 <= MAX_FAN_IN, every code and input at its extreme: the float64 sums stay exact."""
    rng = np.random.default_rng(width)
    c_in = MAX_FAN_IN // 9
    layer = make_conv(rng, c_in, 2, 3, padding=1, signed=signed, in_bits=8, extreme=extreme, width_choices=[width])
    u = np.full((1, c_in, 3, 3), 255, dtype=np.int64)
    acc = conv_accumulator(layer, u)
    # the centre pixel sees the whole kernel: Python integers
    dw = integer_weights(layer)
    expected = [sum(int(x) * 255 for x in dw[o].ravel()) for o in range(2)]
    assert [int(a) for a in acc[0, :, 1, 1]] == expected
    # every pixel against golden's int64 matmul
    cols = im2col(u, 3, 1, 1)
    ref = combine(*class_sums(layer.as_linear(), cols.reshape(-1, cols.shape[-1])), signed)
    np.testing.assert_array_equal(acc, ref.reshape(1, 3, 3, 2).transpose(0, 3, 1, 2))


def test_exact_matmul_with_32_bit_weights_and_act_sum_bound_rows():
    rng = np.random.default_rng(1)
    x = np.full((3, 4096), 255, dtype=np.int64)
    x[1] = rng.integers(0, 256, size=4096)
    x[2, :] = 0
    x[2, 0] = ACT_SUM_BOUND  # one wide input carrying the whole bound
    w = np.stack([np.full(4096, D), rng.integers(0, D + 1, size=4096), np.arange(4096) % 2 * D]).astype(np.int64)
    ref = np.array([[sum(int(a) * int(b) for a, b in zip(row, col)) for col in w] for row in x], dtype=object)
    assert (exact_matmul(x, w).astype(object) == ref).all()


def test_padding_contributes_zero_to_a_as_well():
    """A 1x1 input padded to 3x3 with an all-ones kernel: the corner output sees one real input only."""
    widths = np.full((1, 1, 3, 3), 4)
    layer = IntConv2d(codes=np.full((1, 1, 3, 3), 15), widths=widths, in_bits=4, out_bits=4,
                      mult=np.array([1]), bias=np.array([0]), shift=1, padding=1)
    sums, act_sums = conv_class_sums(layer, np.array([[[[7]]]]))
    assert int(act_sums[4][0, 0, 0, 0]) == 7 and int(sums[4][0, 0, 0, 0]) == 15 * 7
    assert int(conv_accumulator(layer, np.array([[[[7]]]]))[0, 0, 0, 0]) == D * 7  # w = 1


@settings(max_examples=40, deadline=None)
@given(conv_shapes)
def test_complemented_codes_negate_the_accumulator(p):
    layer, u = build(p)
    flipped = IntConv2d(**{**layer.__dict__, "codes": complement_codes(layer.codes, layer.widths, layer.signed)})
    check_conv(flipped)  # still in range (signed: still in [1, 2^m - 1])
    np.testing.assert_array_equal(conv_accumulator(flipped, u), -conv_accumulator(layer, u))


def test_fold_negative_gain_keeps_gain_times_acc():
    rng = np.random.default_rng(2)
    for signed in (False, True):
        layer = make_conv(rng, 3, 5, 3, padding=1, signed=signed)
        u = rng.integers(0, 16, size=(2, 3, 5, 5))
        gain = np.array([1.5, -0.25, 0.0, -3.0, 2.0])
        codes, abs_gain = fold_negative_gain(layer.codes, layer.widths, gain, signed)
        folded = IntConv2d(**{**layer.__dict__, "codes": codes})
        acc, acc_f = conv_accumulator(layer, u), conv_accumulator(folded, u)
        assert (abs_gain >= 0).all()
        g = [Fraction(x) for x in gain]
        for o in range(5):
            assert all(g[o] * int(a) == abs(g[o]) * int(b)
                       for a, b in zip(acc[:, o].ravel(), acc_f[:, o].ravel()))
        # untouched channels keep their codes
        np.testing.assert_array_equal(codes[gain >= 0], layer.codes[gain >= 0])


def test_complement_of_extreme_codes():
    w = np.array([0, 4, 4, 8, 16, 32, 32])
    q = np.array([0, 0, 15, 255, 1, 0, D])
    assert complement_codes(q, w, False).tolist() == [0, 15, 0, 0, 65534, D, 0]
    qs = np.array([0, 1, 15, 128, 1, 1, D])
    assert complement_codes(qs, w, True).tolist() == [0, 15, 1, 128, 65535, D, 1]


def residual_reference(acc, r, mult, res_mult, bias, shift, out_bits) -> int:
    t = Fraction(acc, 2**ACC_SHIFT).__floor__()
    y = (Fraction(t * mult + r * res_mult * 2**ACC_SHIFT + bias, 2**shift) + Fraction(1, 2)).__floor__()
    return min(max(y, 0), 2**out_bits - 1)


def test_requantize_residual_matches_fractions():
    rng = np.random.default_rng(3)
    for trial in range(40):
        c = int(rng.integers(1, 5))
        shape = (2, c, 3, 3)
        r = rng.integers(0, 256, size=shape)
        if trial % 2:  # wide: large accumulators and multipliers
            acc = rng.integers(-(2**50), 2**50, size=shape)
            mult = rng.integers(0, 2**MULT_BITS, size=c)
            res_mult = rng.integers(0, 2**MULT_BITS, size=c)
            bias = rng.integers(-(2**40), 2**40, size=c)
            shift, out_bits = int(rng.integers(30, 50)), int(rng.integers(1, 9))
        else:  # narrow: shifts just above ACC_SHIFT, so single units of r M_r and of t M show in y
            acc = rng.integers(-(2**35), 2**35, size=shape)
            mult = rng.integers(0, 4, size=c)
            res_mult = rng.integers(0, 3, size=c)
            shift, out_bits = int(rng.integers(ACC_SHIFT + 1, ACC_SHIFT + 5)), 8
            # half-way offsets make exact ties of the half-up rounding appear
            bias = rng.integers(-64, 64, size=c) + (1 << (shift - 1)) * rng.integers(0, 2, size=c)
        y = requantize_residual(acc, r, mult, res_mult, bias, shift, out_bits)
        for idx in np.ndindex(*shape):
            o = idx[1]
            assert int(y[idx]) == residual_reference(int(acc[idx]), int(r[idx]), int(mult[o]), int(res_mult[o]),
                                                     int(bias[o]), shift, out_bits)


def test_requantize_residual_extremes_do_not_overflow():
    """Bound 8: t M + (r M_r << ACC_SHIFT) + B + 2^(S-1) at its extremes, against Python integers (no clamp: S=62 keeps y small)."""
    top_m = 2**MULT_BITS - 1
    acc = np.array([2**51, -(2**51), 2**51, -(2**51)]).reshape(1, 4, 1, 1)
    bias = np.array([BIAS_MAX, BIAS_MIN, BIAS_MIN, BIAS_MAX])
    r = np.full((1, 4, 1, 1), 255)
    y = requantize_residual(acc, r, np.full(4, top_m), np.full(4, top_m), bias, 62, 8)
    for o in range(4):
        assert int(y[0, o, 0, 0]) == residual_reference(int(acc[0, o, 0, 0]), 255, top_m, top_m, int(bias[o]), 62, 8)
    assert RES_ROUND_BOUND < 2**63
    # with M_r = 0 it is golden's requantize
    y0 = requantize_residual(acc, r, np.full(4, 7), np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64), 20, 8)
    np.testing.assert_array_equal(y0, requantize(acc, 7, 0, 20, 8))


def test_conv_forward_with_residual_and_shortcut_a():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 16, size=(2, 3, 6, 6))
    layer = make_conv(rng, 3, 5, 3, stride=2, padding=1, res=True)
    r = shortcut_a(x, 5, 2)
    y = conv_forward(layer, x, residual=r)
    acc = conv_accumulator(layer, x)
    for idx in np.ndindex(*y.shape):
        o = idx[1]
        assert int(y[idx]) == residual_reference(int(acc[idx]), int(r[idx]), int(layer.mult[o]),
                                                 int(layer.res_mult[o]), int(layer.bias[o]), layer.shift, 4)
    with pytest.raises(UserError, match="res_mult"):
        conv_forward(layer, x)


def test_shortcut_a_is_basic_block_shortcut():
    block = BasicBlock(3, 8, 2, 4, name="b")
    x = np.random.default_rng(5).integers(0, 16, size=(2, 3, 7, 7))
    ref = block.shortcut(torch.from_numpy(x).double()).numpy().astype(np.int64)
    np.testing.assert_array_equal(shortcut_a(x, 8, 2), ref)
    np.testing.assert_array_equal(shortcut_a(x, 3, 1), x)


def test_max_pool_codes_matches_torch():
    rng = np.random.default_rng(6)
    for h, w in ((4, 4), (7, 5), (3, 2)):
        u = rng.integers(0, 256, size=(2, 3, h, w))
        ref = F.max_pool2d(torch.from_numpy(u).double(), 2).numpy().astype(np.int64)
        np.testing.assert_array_equal(max_pool_codes(u), ref)


def test_max_of_codes_is_code_of_max():
    """PACT codes are monotone in the value: pooling codes = pooling values then quantizing."""
    rng = np.random.default_rng(7)
    alpha, bits = 2.5, 4
    v = torch.from_numpy(rng.normal(size=(1, 2, 6, 6)) * 2)
    def code(z):
        return torch.round(z.clamp(0, alpha) * (2**bits - 1) / alpha).to(torch.int64)
    np.testing.assert_array_equal(max_pool_codes(code(v).numpy()), code(F.max_pool2d(v, 2)).numpy())


def test_global_sum_pool_is_hw_times_torch_mean():
    rng = np.random.default_rng(8)
    u = rng.integers(0, 256, size=(3, 4, 7, 7))
    s = global_sum_pool(u, 8)
    mean = torch.from_numpy(u).double().mean(dim=(2, 3)).numpy()
    assert s.dtype == np.int64
    np.testing.assert_array_equal(s, torch.from_numpy(u).sum(dim=(2, 3)).numpy())
    np.testing.assert_allclose(s / 49, mean, rtol=0, atol=1e-12)
    check_act_mass(255 * 49, 64, "fc")  # ResNet-20's FC on a 7x7 map of 8-bit codes fits bound 6


def test_gap_fc_is_exact_with_wide_inputs():
    """The FC after global pooling takes summed codes (wider than 8 bits): golden's combine stays exact."""
    rng = np.random.default_rng(9)
    u = rng.integers(0, 256, size=(2, 64, 7, 7))
    pooled = global_sum_pool(u, 8)
    check_act_mass(int(pooled.max()), 64, "fc")
    widths = rng.choice(np.array(WIDTHS), size=(10, 64))
    codes = random_codes(rng, widths, False)
    fc = make_conv(rng, 64, 10, 1)
    fc = IntConv2d(**{**fc.__dict__, "codes": codes.reshape(10, 64, 1, 1), "widths": widths.reshape(10, 64, 1, 1)})
    acc = combine(*class_sums(fc.as_linear(), pooled), False)
    dw = integer_weights(fc).reshape(10, 64)
    ref = [[sum(int(a) * int(b) for a, b in zip(row, col)) for col in dw] for row in pooled]
    assert acc.tolist() == ref


@pytest.mark.parametrize("change, field", [
    ({"stride": 0}, "stride"),
    ({"stride": 5}, "stride"),
    ({"padding": 3}, "padding"),
    ({"out_bits": 0}, "out_bits"),
    ({"in_bits": 9}, "in_bits"),
    ({"shift": 0}, "shift"),
    ({"mult": np.array([2**MULT_BITS, 0])}, "mult"),
    ({"res_mult": np.array([2**MULT_BITS, 0])}, "res_mult"),
    ({"res_mult": np.array([-1, 0])}, "res_mult"),
    ({"codes": np.full((2, 2, 3, 3), 16)}, "codes"),
    ({"widths": np.full((2, 2, 3, 3), 5)}, "widths"),
])
def test_bad_conv_fields_are_refused_by_name(change, field):
    rng = np.random.default_rng(10)
    layer = make_conv(rng, 2, 2, 3, padding=1, width_choices=[4])
    bad = IntConv2d(**{**layer.__dict__, **change})
    with pytest.raises(UserError, match=f"test.conv.*'{field}'"):
        check_conv(bad)


def test_bound_violations_are_refused():
    rng = np.random.default_rng(11)
    big = make_conv(rng, MAX_FAN_IN // 9 + 1, 1, 3, width_choices=[4])
    with pytest.raises(UserError, match="n_in .* exceeds"):
        check_conv(big)
    layer = make_conv(rng, 2, 2, 3, padding=1, in_bits=4)
    with pytest.raises(UserError, match="test.conv.*'input codes'.*16.*\\[0, 15\\]"):
        conv_forward(layer, np.full((1, 2, 4, 4), 16))
    with pytest.raises(UserError, match="'input codes'.*shape"):
        conv_forward(layer, np.zeros((1, 3, 4, 4), dtype=np.int64))
    with pytest.raises(UserError, match="smaller than the kernel"):
        conv_forward(IntConv2d(**{**layer.__dict__, "padding": 0}), np.zeros((1, 2, 2, 2), dtype=np.int64))
    acc = np.zeros((1, 2, 2, 2), dtype=np.int64)
    with pytest.raises(UserError, match="'residual'.*256"):
        requantize_residual(acc, np.full((1, 2, 2, 2), 256), [1, 1], [1, 1], [0, 0], 10, 4)
    with pytest.raises(UserError, match="'residual' has shape"):
        requantize_residual(acc, np.zeros((1, 2, 1, 1), dtype=np.int64), [1, 1], [1, 1], [0, 0], 10, 4)
    with pytest.raises(UserError, match="'res_mult'"):
        requantize_residual(acc, acc, [1, 1], [2**MULT_BITS, 1], [0, 0], 10, 4)
    with pytest.raises(UserError, match="'pool sum'.*GAP_SUM_BITS"):
        global_sum_pool(np.zeros((1, 1, 16, 17), dtype=np.int64), 8)
    assert global_sum_pool(np.full((1, 1, 16, 16), 255), 8).item() == 255 * 256 < 2**GAP_SUM_BITS
    with pytest.raises(UserError, match="fc.*'input codes'.*ACT_SUM_BOUND"):
        check_act_mass(2**16, 64, "fc")
    with pytest.raises(UserError, match="max-pool"):
        max_pool_codes(np.zeros((1, 1, 1, 1), dtype=np.int64))
    with pytest.raises(UserError, match="shortcut"):
        shortcut_a(np.zeros((1, 4, 2, 2), dtype=np.int64), 2, 2)
    with pytest.raises(UserError, match="'gain'"):
        fold_negative_gain(np.zeros((2, 1, 1, 1), dtype=np.int64), np.zeros((2, 1, 1, 1), dtype=np.int64), [1.0], False)


def test_resnet20_sized_layers_are_exact():
    """A 64->64 3x3 conv on 8 images of 7x7 and 16->16 on 28x28 (ResNet-20's sizes at 28 x 28): the accumulator is
    torch's float64 conv2d on exact values, and conv_forward keeps the shape (how fast: the benches')."""
    rng = np.random.default_rng(12)
    for c, hw in ((64, 7), (16, 28)):
        layer = make_conv(rng, c, c, 3, padding=1)
        u = rng.integers(0, 16, size=(8, c, hw, hw))
        np.testing.assert_array_equal(conv_accumulator(layer, u), torch_acc(layer, u))
        assert conv_forward(layer, u).shape == (8, c, hw, hw)


def test_exact_matmul_refuses_sums_past_2_53():
    x = np.array([[ACT_SUM_BOUND, 2 * ACT_SUM_BOUND]], dtype=np.int64)
    with pytest.raises(UserError, match="FLOAT_SUM_BOUND"):
        exact_matmul(x, np.array([[D, D]], dtype=np.int64))
    assert exact_matmul(x[:, :1], np.array([[D]], dtype=np.int64)).item() == D * ACT_SUM_BOUND
