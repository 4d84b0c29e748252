"""The integer golden model: exact dot products, named rounding, and agreement with the fake-quant model."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from model.convert import input_codes, to_golden
from model.data import load_digits_split
from model.errors import UserError
from model.golden import (
    ACC_SHIFT,
    CLASSES,
    MULT_BITS,
    IntLinear,
    check_layer,
    class_sums,
    combine,
    requant_params,
    requantize,
)
from model.nets import DigitsMLP
from model.train import evaluate, train

D = 2**32 - 1


def dorefa_value(q: int, m: int) -> Fraction:
    """Eq. 3 with exact rationals: 2 q / (2^m - 1) - 1."""
    return Fraction(2 * q, 2**m - 1) - 1 if m else Fraction(0)


def layer(codes, widths, mult=None, bias=None, shift=20, out_bits=4):
    codes = np.asarray(codes, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    n_out = codes.shape[0]
    return IntLinear(codes=codes, widths=widths, in_bits=4, out_bits=out_bits,
                     mult=np.full(n_out, 1 if mult is None else mult, dtype=np.int64),
                     bias=np.full(n_out, 0 if bias is None else bias, dtype=np.int64), shift=shift)


def test_class_constants_repeat_the_code():
    # R_m * q is q's bits repeated to fill 32 bits (ARCHITECTURE.md, integer semantics).
    from model.golden import R

    assert R == {4: 0x11111111, 8: 0x01010101, 16: 0x00010001, 32: 1}
    assert 0xA * R[4] == 0xAAAAAAAA and 0x5C * R[8] == 0x5C5C5C5C


def test_hand_computed_dot_product():
    # widths 4, 8, 0, 32 and 16; codes 15 (w = 1), 0 (w = -1), pruned, 2^31 and 0x8000 (near 0).
    lay = layer([[15, 0, 0, 2**31, 0x8000]], [[4, 8, 0, 32, 16]])
    u = torch.tensor([[3, 5, 9, 2, 7]])
    sums, act_sum = class_sums(lay, u)
    assert {m: int(sums[m]) for m in CLASSES} == {4: 45, 8: 0, 16: 7 * 0x8000, 32: 2 * 2**31}
    assert int(act_sum) == 3 + 5 + 2 + 7  # the pruned weight's activation does not count
    # w = 1, -1, (2*2^31 - D)/D = 1/D, (2*0x8000 - 65535)/65535 = 1/65535
    exact = 3 * 1 + 5 * -1 + 2 * Fraction(1, D) + 7 * Fraction(1, 65535)
    assert int(combine(sums, act_sum)) == exact * D


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


def test_requantize_rounds_floor_then_half_up():
    # acc >> 16 is a floor: -1 -> -1, and -65536 -> -1, -65537 -> -2.
    acc = torch.tensor([-1, -65536, -65537, 65535])
    t = acc >> ACC_SHIFT
    assert t.tolist() == [-1, -1, -2, 0]
    # y = (t * M + B + 2^(S-1)) >> S with S = 1, M = 1: t/2 rounded half up: 5/2 -> 3, -5/2 -> -2.
    acc = torch.tensor([5 << 16, -5 << 16, 4 << 16, -3 << 16])
    y = requantize(acc, 1, 0, 1, out_bits=0)
    assert y.tolist() == [3, -2, 2, -1]
    # Hidden layers clamp to [0, 2^bits - 1].
    y = requantize(torch.tensor([100 << 16, -100 << 16]), 1, 0, 1, out_bits=4)
    assert y.tolist() == [15, 0]
    # The last layer saturates to int32.
    y = requantize(torch.tensor([1 << 57, -(1 << 57)]), (1 << 17) - 1, 0, 1, out_bits=0)
    assert y.tolist() == [2**31 - 1, -(2**31)]


def test_requant_params_precision():
    gain = np.array([0.5, 1.3, 0.02, 7.0])
    offset = np.array([-3.25, 0.0, 11.5, 2.0])
    mult, bias, shift = requant_params(gain, offset)
    assert mult.max() < 2**MULT_BITS and mult.max() >= 2 ** (MULT_BITS - 1)
    # gain * sum(wu) + offset for sum(wu) = 20: acc = 20 * D.
    acc = torch.full((4,), 20 * D)
    y = requantize(acc, mult, bias, shift, out_bits=0)
    np.testing.assert_allclose(y.numpy(), np.floor(gain * 20 + offset + 0.5), atol=1)


def test_check_layer_rejects_bad_widths_and_codes():
    with pytest.raises(UserError, match=r"'widths'.*allowed \(0, 4, 8, 16, 32\)"):
        check_layer(layer([[1]], [[3]]))
    with pytest.raises(UserError, match="'codes'"):
        check_layer(layer([[16]], [[4]]))
    with pytest.raises(UserError, match="'shift'"):
        check_layer(layer([[1]], [[4]], shift=0))


def test_golden_accuracy_matches_fake_quant():
    """The acceptance test of the conversion: within 0.5 percentage points on the digits test set."""
    split = load_digits_split()
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(32,), act_bits=4)
    gen = torch.Generator().manual_seed(1)
    for lin in model.quant_layers():  # a mixed element-wise mask like an IMQ ticket
        idx = torch.randint(0, 5, lin.weight.shape, generator=gen)
        lin.set_bit_width(torch.tensor([0, 4, 8, 16, 32])[idx])
    train(model, split, epochs=6, progress=False)
    fq = evaluate(model, split.x_test, split.y_test)
    net = to_golden(model)
    golden = float((net.predict(input_codes(model, split.x_test)) == split.y_test).double().mean())
    assert fq > 0.85
    assert abs(golden - fq) <= 0.005
    # And the scores themselves agree with the float logits to the score resolution.
    with torch.no_grad():
        logits = model(split.x_test).double()
    scores = net.forward(input_codes(model, split.x_test)).double() / 256
    assert (logits - scores).abs().max() < 0.05
