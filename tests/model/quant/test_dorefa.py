"""Quantizers against hand-computed values of the paper's Eq. 1-7."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.errors import UserError
from model.quant.dorefa import check_widths, dorefa_codes, dorefa_normalize, dorefa_weight, round_ste
from model.quant.layers import QuantConv2d
from model.quant.pact import PACT, InputQuant

# w = [0.5, -1, 0, 1]: max|tanh| = tanh(1) = 0.7615941559557649 and
# x(0.5) = tanh(0.5) / (2 tanh(1)) + 1/2 = 0.8033880667585181 (math module); x(-1) = 0, x(0) = 1/2, x(1) = 1.
W = [0.5, -1.0, 0.0, 1.0]
X = [0.8033880667585181, 0.0, 0.5, 1.0]


def test_round_ste_rounds_half_to_even_and_passes_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 1.2, -1.7], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, 1.0, -2.0]
    (y * torch.arange(6.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_dorefa_normalize_by_hand():
    assert dorefa_normalize(torch.tensor(W)).tolist() == pytest.approx(X, abs=1e-7)


def test_dorefa_normalize_all_zero_is_half_without_nan():
    w = torch.zeros(3, requires_grad=True)
    x = dorefa_normalize(w)
    x.sum().backward()
    assert x.tolist() == [0.5, 0.5, 0.5]
    assert torch.isfinite(w.grad).all()


@pytest.mark.parametrize(
    ("width", "code", "value"),
    # round(15 x) = round(12.0508) = 12, round(255 x) = round(204.864) = 205, round(65535 x) = round(52650.037)
    [(4, 12, 2 * 12 / 15 - 1), (8, 205, 2 * 205 / 255 - 1), (16, 52650, 2 * 52650 / 65535 - 1)],
)
def test_dorefa_code_and_weight_of_one_element_by_hand(width, code, value):
    widths = torch.tensor([width, 32, 32, 32])
    assert dorefa_codes(torch.tensor(W), widths)[0].item() == code
    assert dorefa_weight(torch.tensor(W), widths)[0].item() == pytest.approx(value, abs=1e-7)


def test_dorefa_32_bit_codes_and_ties_by_hand():
    widths = torch.tensor([4, 8, 32, 32])
    # 4294967295 / 2 = 2147483647.5 rounds half to even: 2147483648.
    assert dorefa_codes(torch.tensor(W), widths).tolist() == [12, 0, 2147483648, 4294967295]
    w_q = dorefa_weight(torch.tensor(W), widths)
    assert w_q.dtype == torch.float32
    assert w_q.tolist() == [
        pytest.approx(0.6, abs=1e-7),
        -1.0,
        torch.tensor(1 / 4294967295, dtype=torch.float32).item(),
        1.0,
    ]
    # 255 / 2 = 127.5 rounds half to even too: 128.
    assert dorefa_codes(torch.tensor(W), torch.tensor([4, 8, 8, 4])).tolist() == [12, 0, 128, 15]


def test_zero_width_gives_zero_weight_and_zero_code():
    # x(-0.2) = tanh(-0.2) / (2 tanh(0.9)) + 1/2 = 0.36223; round(15 x) = round(5.433) = 5; x(0.9) = 1.
    w = torch.tensor([[0.3, -0.2], [0.9, -0.05]])
    widths = torch.tensor([[0, 4], [4, 0]])
    assert dorefa_codes(w, widths).tolist() == [[0, 5], [15, 0]]
    assert dorefa_weight(w, widths).tolist() == [[0.0, pytest.approx(2 * 5 / 15 - 1, abs=1e-7)], [1.0, 0.0]]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=24),
    st.lists(st.sampled_from([0, 4, 8, 16, 32]), min_size=24, max_size=24),
)
def test_fake_quant_weight_is_exactly_the_dequantized_codes(values, width_list):
    w = torch.tensor(values)
    widths = torch.tensor(width_list[: len(values)])
    q = dorefa_codes(w, widths)
    levels = torch.tensor([(1 << m) - 1 for m in widths.tolist()], dtype=torch.int64)
    assert ((q >= 0) & (q <= levels)).all()
    expected = torch.where(widths == 0, 0.0, 2 * q.double() / levels.clamp_min(1).double() - 1).float()
    assert torch.equal(dorefa_weight(w, widths), expected)


def test_dorefa_gradient_is_that_of_the_unrounded_expression_and_zero_at_width_0():
    # Eq. 4: d w_q / d w of the element 0.5 is d/dw [tanh(w) / tanh(1)] = (1 - tanh(0.5)^2) / tanh(1) (the kept
    # 1 holds the maximum).
    w = torch.tensor(W, requires_grad=True)
    dorefa_weight(w, torch.tensor([4, 0, 0, 4]))[0].backward()
    assert w.grad[0].item() == pytest.approx(1.0326336235852185, rel=1e-6)
    w.grad = None
    dorefa_weight(w, torch.tensor([0, 8, 0, 0])).sum().backward()
    assert w.grad[0].item() == 0.0 and w.grad[2].item() == 0.0

    widths = torch.tensor([16, 0, 4, 32])
    w_ref = torch.tensor(W, requires_grad=True)
    (2 * dorefa_normalize(w_ref, widths != 0) - 1)[widths != 0].sum().backward()
    w.grad = None
    dorefa_weight(w, widths).sum().backward()
    assert torch.equal(w.grad, w_ref.grad)
    # Eq. 3's maximum carries gradient too (DoReFa differentiates through max |tanh w|): an independent
    # reference, written out here rather than through dorefa_normalize, the maximum over the kept elements
    # (W's -1 at index 1 ties with the kept 1 at index 3, but is pruned), the argmax included.
    w_in = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    t = torch.tanh(w_in)
    ((t / (2 * t[widths != 0].abs().max()) + 0.5) * 2 - 1)[widths != 0].sum().backward()
    w.grad = None
    dorefa_weight(w, widths).sum().backward()
    assert torch.allclose(w.grad.double(), w_in.grad, rtol=1e-5, atol=1e-7)
    assert w_in.grad[3].item() != 0.0  # the kept argmax's own gradient is checked
    assert w.grad[1].item() == 0.0


def test_a_pruned_weight_sets_no_scale_and_takes_no_gradient():
    # Eq. 7: a 0-bit weight is pruned as in IMP, so the network is that of the kept weights alone. Here the
    # pruned 3.0 exceeds every kept weight: with it in Eq. 3's maximum the kept 0.9 would take code
    # round(15 (tanh(0.9) / (2 tanh(3)) + 1/2)) = 13, not 15, and the 3.0 would take a gradient.
    widths = torch.tensor([4, 4, 0, 8])
    w = torch.tensor([0.9, -0.3, 3.0, 0.2], requires_grad=True)
    assert dorefa_codes(w, widths).tolist() == dorefa_codes(w.detach() * torch.tensor([1, 1, 0, 1]), widths).tolist()
    assert dorefa_codes(w, widths)[0].item() == 15
    value = dorefa_weight(w, widths)
    assert value[0].item() == 1.0
    assert torch.equal(value, dorefa_weight(torch.tensor([0.9, -0.3, -7.0, 0.2]), widths))
    value.sum().backward()
    assert w.grad[2].item() == 0.0 and w.grad[0].item() != 0.0
    # A pruned weight's x is 1/2; nothing kept: every x is 1/2 and every code 0.
    assert dorefa_codes(w, torch.zeros(4, dtype=torch.int64)).tolist() == [0, 0, 0, 0]
    assert dorefa_normalize(w, torch.zeros(4, dtype=torch.bool)).eq(0.5).all()
    assert dorefa_normalize(w, widths != 0)[2].item() == 0.5


def test_check_widths_names_field_and_allowed_values():
    check_widths(torch.tensor([0, 4, 8, 16, 32]), "fc1.bit_width")
    with pytest.raises(UserError, match=r"fc1\.bit_width.*\[2, 7\].*\(0, 4, 8, 16, 32\)"):
        check_widths(torch.tensor([2, 4, 7]), "fc1.bit_width")
    with pytest.raises(UserError, match="integer"):
        check_widths(torch.tensor([4.0]), "fc1.bit_width")
    with pytest.raises(UserError):
        dorefa_codes(torch.zeros(2), torch.tensor([4, 3]))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_pact_refuses_a_clip_level_that_is_not_positive(alpha):
    with pytest.raises(ValueError, match="PACT alpha must be positive"):
        PACT(4, alpha=alpha)


def test_pact_forward_and_codes_by_hand():
    # 2 bits, alpha = 3: s = 3, step 1; Eq. 5 clips to [0, 3], Eq. 6 rounds half to even.
    pact = PACT(2, alpha=3.0)
    x = torch.tensor([-1.0, 0.4, 0.5, 1.5, 2.6, 9.0])
    assert pact.to_codes(x).tolist() == [0, 0, 0, 2, 3, 3]
    assert pact(x).tolist() == [0.0, 0.0, 0.0, 2.0, 3.0, 3.0]
    assert pact.step == 1.0 and pact.levels == 3


def test_pact_gradients_follow_the_pact_paper():
    pact = PACT(4, alpha=6.0)
    x = torch.tensor([-1.0, 0.0, 0.5, 5.9, 6.0, 7.0], requires_grad=True)
    y = pact(x)
    (y * torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])).sum().backward()
    # d y / d alpha = 1 where x >= alpha, else 0; d y / d x = 1 inside (0, alpha), else 0 (STE on round).
    assert pact.alpha.grad.item() == 16.0 + 32.0
    assert x.grad.tolist() == [0.0, 0.0, 4.0, 8.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_pact_codes_reproduce_forward_exactly(bits):
    pact = PACT(bits, alpha=2.7)
    x = torch.linspace(-1, 4, 2001)
    codes = pact.to_codes(x)
    assert codes.dtype == torch.int64
    assert codes.min().item() == 0 and codes.max().item() == (1 << bits) - 1
    assert torch.equal(pact(x), codes.float() * pact.alpha.detach() / ((1 << bits) - 1))
    assert torch.equal(pact(x), pact.dequantize(codes))
    assert pact.step == pytest.approx(2.7 / ((1 << bits) - 1), rel=1e-7)


@pytest.mark.parametrize("bits", [0, 9, -1, 4.0, True])
def test_bad_activation_bits_raise_value_error_naming_the_value(bits):
    with pytest.raises(ValueError, match=repr(bits)):
        PACT(bits)
    with pytest.raises(ValueError, match=repr(bits)):
        InputQuant(bits)


def test_input_quant_has_fixed_alpha_one():
    iq = InputQuant(4)
    assert [n for n, _ in iq.named_parameters()] == []
    assert [n for n, _ in iq.named_buffers()] == ["alpha"]
    # Digits pixels k / 16 with 15 levels: round(15 k / 16), k = 0..16, by hand (8 -> 7.5 -> 8, half to even).
    x = torch.arange(17) / 16.0
    expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15]
    assert iq.to_codes(x).tolist() == expected
    assert torch.equal(iq(x), torch.tensor(expected) / 15.0)


# ---------------------------------------------------------------------------------------------------------
# The training fast paths against the reference quantizers, bit for bit (what export and the golden model
# compute from the codes must be what training saw).


def _reference_dorefa_weight(w, widths):
    """The straightforward form: codes through int64, the value from them, the STE on 2 x - 1."""
    q = dorefa_codes(w, widths).to(torch.float64)
    levels = ((torch.ones_like(widths) << widths) - 1).to(torch.float64)
    value = torch.where(levels > 0, 2 * q / levels.clamp_min(1) - 1, 0.0).to(w.dtype)
    y = 2 * dorefa_normalize(w, widths != 0) - 1
    return torch.where(widths != 0, value + (y - y.detach()), torch.zeros_like(y))


def _reference_pact(pact, x):
    y = torch.where(x >= pact.alpha, pact.alpha.to(x.dtype), torch.relu(x))
    return pact.dequantize(pact.to_codes(x)) + (y - y.detach())


def _bits(t):
    return t.detach().view(torch.int32)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([1e-3, 0.05, 1.0, 30.0]), st.integers(1, 300))
def test_dorefa_fast_path_equals_the_reference_bit_for_bit(seed, scale, n):
    gen = torch.Generator().manual_seed(seed)
    w_ref = (torch.randn(n, generator=gen) * scale).requires_grad_(True)
    w = w_ref.detach().clone().requires_grad_(True)
    widths = torch.tensor([0, 1, 2, 4, 8, 16, 32])[torch.randint(0, 7, (n,), generator=gen)]
    ref, got = _reference_dorefa_weight(w_ref, widths), dorefa_weight(w, widths)
    assert torch.equal(_bits(got), _bits(ref))
    upstream = torch.randn(n, generator=gen)
    (ref * upstream).sum().backward()
    (got * upstream).sum().backward()
    assert torch.equal(w.grad, w_ref.grad)


def test_quant_layer_caches_its_mask_levels_until_the_mask_changes():
    gen = torch.Generator().manual_seed(3)
    conv = QuantConv2d(2, 3, 3)
    w = conv.weight.detach()
    assert torch.equal(conv.quantized_weight(), dorefa_weight(w, conv.bit_width))
    widths = torch.tensor([0, 4, 8, 16, 32])[torch.randint(0, 5, tuple(w.shape), generator=gen)]
    conv.set_bit_width(widths)
    assert torch.equal(_bits(conv.quantized_weight()), _bits(_reference_dorefa_weight(w, widths)))
    with torch.no_grad():
        conv.bit_width[0, 0, 0, 0] = 0 if int(conv.bit_width[0, 0, 0, 0]) else 4  # in place, as IMQ writes
    assert torch.equal(conv.quantized_weight(), _reference_dorefa_weight(w, conv.bit_width))


def test_a_moved_layer_forgets_its_cached_mask_levels():
    """A move replaces the mask buffer with a new tensor (version counter 0) that may sit at the old address
    (CUDA's caching allocator reuses blocks): emulated here by a move whose new buffer shares the old memory,
    written with other widths, so key (version, device, address) is the cached one."""
    conv = QuantConv2d(2, 3, 3)
    w = conv.weight.detach()
    assert conv.bit_width._version == 0
    conv.quantized_weight()  # caches the levels of all-32 widths under version 0
    widths = torch.tensor([0, 4, 8, 16, 32]).repeat(11)[: w.numel()].reshape(w.shape)

    def move(t):
        if t.dtype != torch.int64:
            return t
        t.numpy()[...] = widths.numpy()  # the moved copy's contents, at the same address
        return torch.from_numpy(t.numpy())  # a new tensor there, version 0

    conv._apply(move)
    assert conv.bit_width._version == 0 and torch.equal(conv.bit_width, widths)
    assert torch.equal(_bits(conv.quantized_weight()), _bits(_reference_dorefa_weight(w, widths)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 8), st.floats(0.125, 8.0, width=32))
def test_pact_fast_path_equals_the_reference_bit_for_bit(seed, bits, alpha):
    gen = torch.Generator().manual_seed(seed)
    pact, ref_pact = PACT(bits, alpha=alpha), PACT(bits, alpha=alpha)
    s = (1 << bits) - 1
    # Random values around [0, alpha], exact ties (k + 1/2) alpha / s, 0 and alpha themselves.
    ties = (torch.arange(s + 1) + 0.5) * pact.alpha.detach() / s
    x_ref = torch.cat([torch.randn(200, generator=gen) * alpha + alpha / 2, ties, torch.tensor([0.0, alpha, -0.0])])
    x_ref.requires_grad_(True)
    x = x_ref.detach().clone().requires_grad_(True)
    ref, got = _reference_pact(ref_pact, x_ref), pact(x)
    assert torch.equal(got, ref)
    # The codes against Eq. 5-6 in float64, away from the ties (where float32's rounding of x s / alpha decides;
    # the tie values are checked through the fast path above): it compared to_codes with itself before.
    alpha64, x64 = pact.alpha.detach().double(), x.detach().double()
    exact = torch.clamp(x64, min=0.0, max=alpha64.item()) * s / alpha64
    away = (exact - exact.floor() - 0.5).abs() > 1e-4
    assert torch.equal(pact.to_codes(x)[away], torch.round(exact[away]).to(torch.int64))
    upstream = torch.randn(got.shape, generator=gen)
    (ref * upstream).sum().backward()
    (got * upstream).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    assert pact.alpha.grad.item() == pytest.approx(ref_pact.alpha.grad.item(), rel=1e-5, abs=1e-6)
