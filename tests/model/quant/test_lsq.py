"""LSQ (Eq. 1) and vertical-layer downsampling (Eq. 5): codes, gradients and bit planes against the equations."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.quant.lsq import (
    compensation,
    compose,
    downsample,
    enhance_layers,
    init_step,
    lsq_codes,
    lsq_quantize,
    q_range,
    vertical_quantize,
)


def test_q_range_is_eq1():
    assert q_range(4, signed=True) == (8, 7) and q_range(4, signed=False) == (0, 15) and q_range(2, True) == (2, 1)
    with pytest.raises(ValueError, match="bits"):
        q_range(1, signed=True)


@pytest.mark.parametrize("bits, signed", [(2, True), (3, True), (4, True), (4, False), (8, False)])
def test_forward_is_eq1(bits, signed):
    torch.manual_seed(bits)
    v = torch.randn(1000) * 3
    s = torch.tensor(0.37)
    q_n, q_p = q_range(bits, signed)
    expected = torch.clamp(torch.round(v / s), -q_n, q_p)
    assert torch.equal(lsq_codes(v, s, bits, signed), expected)
    assert torch.allclose(lsq_quantize(v, s, bits, signed), expected * s)


def test_gradients_are_lsq():
    """d v_hat / d v = 1 inside the range, 0 outside; d v_hat / d s = g (round(v/s) - v/s) inside, g (-Q_N) or
    g Q_P outside, g = 1 / sqrt(N Q_P) (Esser et al. 2020, the paper's Eq. 7-8 with LSQ's scale)."""
    v = torch.tensor([-5.0, -0.3, 0.26, 0.74, 1.1, 9.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    bits, q_n, q_p = 3, 4, 3
    lsq_quantize(v, s, bits, signed=True).sum().backward()
    x = v.detach() / 0.5
    inside = (x > -q_n) & (x < q_p)
    assert torch.equal(v.grad, inside.float())
    g = 1 / math.sqrt(6 * q_p)
    per = torch.where(inside, torch.round(x) - x, torch.where(x <= -q_n, torch.tensor(-q_n * 1.0), torch.tensor(q_p * 1.0)))
    assert torch.allclose(s.grad, g * per.sum())


def test_init_step():
    v = torch.tensor([1.0, -3.0])
    assert init_step(v, 4) == pytest.approx(2 * 2.0 / math.sqrt(7))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.integers(0, 2), st.lists(st.integers(-128, 127), min_size=1, max_size=40))
def test_downsampling_and_bit_planes(base, extra, values):
    top = base + extra
    q_n, q_p = q_range(top, signed=True)
    codes = torch.tensor([min(max(v, -q_n), q_p) for v in values])
    basic, planes = enhance_layers(codes, top, base)
    assert len(planes) == extra and all(set(p.tolist()) <= {0, 1} for p in planes)
    # Eq. 5: each lower precision is the floor of half the next, and stays in its signed range.
    for k in range(base, top + 1):
        lower = compose(basic, planes, k - base)
        assert torch.equal(lower, torch.tensor([v // (1 << (top - k)) for v in codes.tolist()]))
        lo_n, lo_p = q_range(k, signed=True)
        assert int(lower.min()) >= -lo_n and int(lower.max()) <= lo_p
    assert torch.equal(compose(basic, planes), codes) and torch.equal(downsample(codes, extra), basic)


def test_compensation_is_the_papers_preset():
    """Sec. 6.1: z_i = 2^-1 (1 - 2^(i-2)) for widths 2/3/4 (i = 0, 1, 2); the mean floor error."""
    assert [compensation(2 - i) for i in range(3)] == [0.375, 0.25, 0.0]
    x = torch.arange(-64, 64)
    for times in range(4):
        assert float((x / 2**times - downsample(x, times)).mean()) == compensation(times)


@pytest.mark.parametrize("bits, compensate", [(2, True), (3, True), (4, True), (2, False)])
def test_vertical_quantize_forward_and_gradients(bits, compensate):
    """Forward: (floor(Q(w, s_w) / 2^d) + z) 2^d s_w (Eq. 1, 5, 6). Gradients: Eq. 7-8 as autograd of the STE,
    checked against the formulas element by element."""
    torch.manual_seed(bits)
    w = (torch.randn(200) * 0.8).requires_grad_()
    s = torch.tensor(0.2, requires_grad=True)
    top, d = 4, 4 - bits
    out = vertical_quantize(w, s, top, bits, compensate)
    codes = torch.clamp(torch.round(w.detach() / 0.2), -8, 7)
    low = torch.div(codes, 2**d, rounding_mode="floor")
    z = compensation(d) if compensate else 0.0
    assert torch.allclose(out.detach(), (low + z) * 2**d * 0.2)
    weights = torch.randn(200)
    (out * weights).sum().backward()
    x = w.detach() / 0.2
    inside = (x >= -8) & (x <= 7)
    assert torch.allclose(w.grad, weights * inside.float())  # d/dw of (x/2^d) 2^d s = 1 inside
    g = 1 / math.sqrt(200 * 7)
    clamped = torch.clamp(x, -8, 7) / 2**d
    per = torch.where(inside, low + z - clamped, low + z) * 2**d
    assert torch.allclose(s.grad, g * (weights * per).sum(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="bits"):
        vertical_quantize(w, s, 4, 5)
