"""BMPQ: quantizers (Eq. 3-4, TWN), bit gradients (Eq. 5-7), NBG, the ILP (Eq. 8-9), Eq. 10-12, training."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from model.data import load_digits_split
from model.errors import UserError
from model.methods.bmpq import (
    BMPQConfig,
    assign_bits,
    bit_gradients,
    compression_ratio,
    memory_mb,
    nbg,
    train_bmpq,
)
from model.quant import bmpq
from model.quant.bmpq import BMPQLinear, bmpq_weight, set_bits, to_bmpq, to_int, trace
from model.quant.nets import DigitsMLP
from model.quant.pact import PACT


def test_symmetric_quantizer_hand_computed():
    # Eq. 3: S = 0.7 / (2^2 - 1); Eq. 4: w / S = [3, -1.5, 0.4286, 0, -3] -> round half to even.
    w = torch.tensor([0.7, -0.35, 0.1, 0.0, -0.7])
    codes, scale = to_int(w, 3)
    assert scale == pytest.approx(0.7 / 3)
    assert codes.tolist() == [3, -2, 0, 0, -3]
    assert torch.equal(bmpq_weight(w, 3), (codes.double() * scale).float())


def test_ternary_quantizer_hand_computed():
    # TWN: mean|w| = 0.65, Delta = 0.455; |w| > Delta for 1.0, 0.5, -0.9 -> alpha = 0.8.
    w = torch.tensor([1.0, -0.2, 0.5, -0.9])
    codes, alpha = to_int(w, 2)
    assert codes.tolist() == [1, 0, 1, -1]
    assert alpha == pytest.approx(0.8)
    assert torch.allclose(bmpq_weight(w, 2), torch.tensor([0.8, 0.0, 0.8, -0.8]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_codes_in_range_and_ste(bits):
    w = torch.randn(200, generator=torch.Generator().manual_seed(bits), requires_grad=True)
    codes, _ = to_int(w, bits)
    limit = 1 if bits == 2 else (1 << (bits - 1)) - 1
    assert int(codes.abs().max()) == limit  # the largest |w| maps to the end of the range
    g = torch.randn(200)
    (bmpq_weight(w, bits) * g).sum().backward()
    assert torch.equal(w.grad, g)  # straight-through estimator


def test_fp32_layer_is_not_quantized():
    w = torch.randn(10)
    assert bmpq_weight(w, 32) is w
    with pytest.raises(UserError, match="FP-32"):
        to_int(w, 32)
    with pytest.raises(UserError, match="allowed"):
        to_int(w, 9)


def test_twos_complement_decomposition_eq5():
    # Eq. 5: c = -2^(q-1) b_(q-1) + sum 2^i b_i for the two's complement bits of every code c.
    q = 4
    for c in range(-(1 << (q - 1)), 1 << (q - 1)):
        b = [((c & ((1 << q) - 1)) >> i) & 1 for i in range(q)]
        assert -(1 << (q - 1)) * b[q - 1] + sum((1 << i) * b[i] for i in range(q - 1)) == c


def test_bit_gradients_hand_computed_and_nbg_closed_form():
    # S = 0.7 / 7 = 0.1 at q_max = 4; dL/db = grad * S * [-8, 4, 2, 1] (Eq. 6-7, MSB first).
    weight = torch.tensor([0.7, -0.2])
    grad = torch.tensor([0.5, -1.0])
    m = bit_gradients(grad, 0.1, 4)
    assert torch.allclose(m, torch.tensor([[-0.4, 0.2, 0.1, 0.05], [0.8, -0.4, -0.2, -0.1]], dtype=torch.float64))
    expected = float(m.abs().sum(dim=1).mean())  # row sums, then the mean over the layer's weights
    assert nbg(weight, grad, 4) == pytest.approx(expected)
    big = torch.randn(300)
    g = torch.randn(300)
    s = float(bmpq.symmetric_scale(big, 4))
    assert nbg(big, g, 4) == pytest.approx(float(bit_gradients(g, s, 4).abs().sum(1).mean()))


def test_memory_and_compression_eq10_12():
    params, bits = [100, 1000], [16, 2]
    assert memory_mb(params, [32, 32]) == pytest.approx(4 * 1100 / 2**20)  # Eq. 10
    assert memory_mb(params, bits) == pytest.approx(4 / 32 * 3600 / 2**20)  # Eq. 11
    assert compression_ratio(params, bits) == pytest.approx(35200 / 3600)  # Eq. 12


def test_ilp_hand_computed():
    params = [10, 100, 100, 10]
    fixed = {0: 16, 3: 16}
    budget = 16 * 20 + 100 * 4 + 100 * 2  # room for exactly one free layer at 4 bits
    assert assign_bits([0, 5, 1, 0], params, budget, (2, 4), fixed) == [16, 4, 2, 16]
    assert assign_bits([0, 1, 5, 0], params, budget, (2, 4), fixed) == [16, 2, 4, 16]
    assert assign_bits([0, 1, 5, 0], params, budget + 200, (2, 4), fixed) == [16, 4, 4, 16]
    # Tied layers share a width; the budget then allows only both at 2 bits.
    assert assign_bits([0, 1, 5, 0], params, budget, (2, 4), fixed, ties=[[1, 2]]) == [16, 2, 2, 16]
    with pytest.raises(UserError, match="smallest assignment"):
        assign_bits([0, 1, 5, 0], params, budget - 300, (2, 4), fixed)
    # A layer tied to a fixed layer takes the fixed width.
    assert assign_bits([0, 1, 5, 0], params, 16 * 120 + 200, (2, 4), fixed, ties=[[0, 1]]) == [16, 16, 2, 16]
    # Malformed arguments are named: a tie across two different fixed widths, 32 bits (the float reference)
    # or nothing in the support, a params list of another length.
    with pytest.raises(UserError, match=r"tied layers \[0, 3\] hold different fixed widths \[8, 16\]"):
        assign_bits([0, 1, 5, 0], params, budget, (2, 4), {0: 8, 3: 16}, ties=[[0, 3]])
    for support in ((2, 32), ()):
        with pytest.raises(UserError, match="field 'support'"):
            assign_bits([0, 1, 5, 0], params, budget, support, fixed)
    with pytest.raises(UserError, match="field 'params' has 3 entries for 4 layers"):
        assign_bits([0, 1, 5, 0], params[:3], budget, (2, 4), fixed)


def test_ilp_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        n = 6
        enbg = torch.rand(n, generator=gen).tolist()
        params = torch.randint(5, 200, (n,), generator=gen).tolist()
        support = (2, 4, 8)
        budget = float(torch.randint(2 * sum(params), 8 * sum(params), (1,), generator=gen))
        bits = assign_bits(enbg, params, budget, support)
        assert sum(p * b for p, b in zip(params, bits)) <= budget
        best = max(
            sum(g * b for g, b in zip(enbg, combo))
            for combo in itertools.product(support, repeat=n)
            if sum(p * b for p, b in zip(params, combo)) <= budget
        )
        assert sum(g * b for g, b in zip(enbg, bits)) == pytest.approx(best), trial


def test_to_bmpq_keeps_weights_and_finds_activations():
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(16, 12))
    before = [layer.weight.detach().clone() for layer in model.linears]
    to_bmpq(model)
    assert all(isinstance(layer, BMPQLinear) for layer in model.linears)
    assert all(torch.equal(a, b.weight) for a, b in zip(before, model.linears))
    graph = trace(model, torch.rand(2, 64))
    assert graph.names == ["linears.0", "linears.1", "linears.2"]
    # Each layer's input activation A_l (Sec. III-A): the PACT between it and the previous layer.
    assert [[id(a) for a in acts] for acts in graph.acts] == [[], [id(model.acts[0])], [id(model.acts[1])]]
    assert graph.ties == []
    set_bits(graph, [16, 2, 16])
    assert [int(layer.bits) for layer in model.linears] == [16, 2, 16]
    assert [a.bits for a in model.acts] == [2, 8]  # a layer's input takes its width, capped at 8 bits
    assert model.input_quant.bits == 4  # the image input keeps its own width (DigitsMLP's act_bits)


class _Fork(nn.Module):
    """Two layers read the same tensor (like a ResNet block's conv1 and its downsampling conv)."""

    def __init__(self):
        super().__init__()
        self.first = BMPQLinear(4, 6)
        self.main = BMPQLinear(6, 6)
        self.down = BMPQLinear(6, 6)
        self.act = PACT(4)
        self.last = BMPQLinear(6, 3)

    def forward(self, x):
        h = self.act(self.first(x))
        return self.last(self.main(h) + self.down(h))


def test_trace_ties_layers_reading_the_same_input():
    graph = trace(_Fork(), torch.rand(2, 4))
    assert graph.names == ["first", "main", "down", "last"]
    assert graph.ties == [[1, 2]]


def test_config_errors():
    with pytest.raises(UserError, match="'epochs'"):
        BMPQConfig(epochs=0).check()
    with pytest.raises(UserError, match="'compression'"):
        BMPQConfig(compression=0.5).check()
    with pytest.raises(UserError, match=r"'warmup' is 3 with 3 epochs; .* allowed 1\.\.2"):
        BMPQConfig(warmup=3, epochs=3).check()
    split = load_digits_split()
    with pytest.raises(UserError, match="smallest assignment"):
        train_bmpq(DigitsMLP(hidden=(32, 32)), split, BMPQConfig(compression=30.0, epochs=3), progress=False)
    with pytest.raises(UserError, match="at least three weight layers"):  # the ILP would have no layer to choose
        train_bmpq(DigitsMLP(hidden=(32,)), split, BMPQConfig(compression=1.5, epochs=3), progress=False)


@pytest.fixture(scope="module")
def trained_bmpq_mlp():
    """A BMPQ MLP on digits with a 2-bit (ternary) and a 4-bit hidden layer between the 16-bit edges."""
    torch.manual_seed(0)
    split = load_digits_split()
    model = DigitsMLP(hidden=(64, 64, 64), act_bits=8)
    config = BMPQConfig(compression=4.0, epochs=5, warmup=2, interval=1, lr=0.1, batch_size=32)
    result = train_bmpq(model, split, config, progress=False)
    return model, split, result


def test_train_bmpq_on_digits_meets_budget(trained_bmpq_mlp):
    _, _, result = trained_bmpq_mlp
    n = len(result.layer_bits)
    assert result.layer_bits[0] == result.layer_bits[-1] == 16
    assert set(result.layer_bits[1:-1]) <= {2, 4}
    assert 32 * sum(result.params) / 4.0 >= sum(p * b for p, b in zip(result.params, result.layer_bits))
    assert result.compression_ratio >= 4.0
    assert [a["after_epoch"] for a in result.assignments] == [2, 3, 4]  # ep_w = 2, then every ep_int = 1
    assert [r.ilp for r in result.history] == [False, True, True, True, False]
    # Fixed layers get no NBG; a free layer whose activations all round to 0 would get 0, here none does.
    assert all(len(r.nbg) == n and r.nbg[0] == r.nbg[-1] == 0 for r in result.history)
    assert all(all(v > 0 for v in r.nbg[1:-1]) for r in result.history)
    assert result.history[0].bits == [16, 4, 4, 16]  # warm-up at max(S_q)
    assert result.accuracy > 0.8
    data = result.to_json()
    assert data["compression_ratio"] == pytest.approx(result.compression_ratio)


def test_bmpq_layers_export_as_signed_golden_layers(trained_bmpq_mlp):
    from model.export.convert import golden_accuracy, input_codes, to_golden
    from model.export.golden import R, class_sums, combine, layer_forward

    model, split, result = trained_bmpq_mlp
    assert sorted(result.layer_bits[1:3]) == [2, 4]
    net = to_golden(model)
    assert all(layer.signed for layer in net.layers)
    u = input_codes(model, split.x_test[:50])
    for layer, linear in zip(net.layers, model.linears):
        c, _ = to_int(linear.weight, int(linear.bits))
        m = {2: 4, 4: 4, 16: 16}[int(linear.bits)]
        assert set(layer.widths.flatten().tolist()) <= {0, m}
        assert ((layer.widths == 0) == (c.numpy() == 0)).all()  # zero codes are pruned
        # acc is exactly 2 R_m sum c u (D times the dot product with w = 2c / (2^m - 1)).
        sums, act_sums = class_sums(layer, u)
        c = c.numpy().astype(np.int64)
        assert np.array_equal(combine(sums, act_sums, signed=True), 2 * R[m] * (np.asarray(u) @ c.T))
        u = layer_forward(layer, u)
    fake = float((model(split.x_test).argmax(1) == split.y_test).double().mean())
    golden = golden_accuracy(net, model, split.x_test, split.y_test)
    assert fake > 0.8
    assert abs(golden - fake) <= 0.005


def test_bmpq_checkpoint_round_trip_and_bad_bits(trained_bmpq_mlp, tmp_path):
    from model.runs.checkpoint import load_checkpoint, save_checkpoint

    model, split, _ = trained_bmpq_mlp
    path = save_checkpoint(tmp_path / "bmpq.pt", model, meta={"method": "bmpq"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"method": "bmpq"}
    assert [int(layer.bits) for layer in loaded.linears] == [int(layer.bits) for layer in model.linears]
    assert torch.equal(loaded(split.x_test), model(split.x_test))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["linears.1.bits"] = torch.tensor(9)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"'state_dict.linears.1.bits' is 9; allowed"):
        load_checkpoint(tmp_path / "bad.pt")
    payload["quantizer"] = "lsq"
    torch.save(payload, tmp_path / "bad2.pt")
    with pytest.raises(UserError, match="'quantizer' is 'lsq'"):
        load_checkpoint(tmp_path / "bad2.pt")


def test_cli_train_export_and_rtl_sim(tmp_path):
    """`train --method bmpq` -> `export` (signed layers) -> `sim`: the RTL matches the golden model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]

    def cli(*args):
        return subprocess.run([sys.executable, str(root / "build.py"), *map(str, args)], check=False, cwd=root,
                              capture_output=True, text=True, timeout=900)

    train = cli("train", "--method", "bmpq", "--hidden", 64, 64, 64, "--epochs", 3, "--warmup", 1, "--interval", 1,
                "--compression", 4, "--lr", 0.1, "--batch-size", 32, "--quiet", "--out", tmp_path / "train")
    assert train.returncode == 0, train.stderr
    report = json.loads((tmp_path / "train" / "bmpq.json").read_text())
    assert report["layer_bits"][0] == report["layer_bits"][-1] == 16
    assert report["compression_ratio"] >= 4
    assert (tmp_path / "train" / "bmpq.png").stat().st_size > 1000
    export = cli("export", "--checkpoint", tmp_path / "train" / "bmpq.pt", "--out", tmp_path / "image")
    assert export.returncode == 0, export.stderr
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    assert manifest["words"] * 4 == (tmp_path / "image" / "weights.bin").stat().st_size
    sim = cli("sim", "--image", tmp_path / "image", "--images", 6, "--out", tmp_path / "sim")
    assert sim.returncode == 0, sim.stdout + sim.stderr
    assert json.loads((tmp_path / "sim" / "sim.json").read_text())["mismatches"] == 0
    bad = cli("train", "--method", "bmpq", "--hidden", 32, 32, "--compression", 30, "--epochs", 3, "--quiet",
              "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "smallest assignment" in bad.stderr


def test_nbg_hand_computed_at_q_max():
    # S at q_max = 4: 0.7 / (2^3 - 1) = 0.1; row sums |g| S (2^4 - 1): 0.5 * 1.5 and 1.0 * 1.5; mean 1.125.
    weight, grad = torch.tensor([0.7, -0.2]), torch.tensor([0.5, -1.0])
    assert nbg(weight, grad, 4) == pytest.approx(1.125)
    # At 2 bits S would be 0.7 / 1 and the rows 3 S |g|: another value, so the width matters.
    assert nbg(weight, grad, 2) == pytest.approx(0.75 * 0.7 * 3)


#: Layers 64x16, 16x16, 16x10: the edges at 16 bits take 18,944 bits; the middle layer's 256 weights fit this
#: budget only at 2 bits (4 bits would need 19,968), so every ILP gives [16, 2, 16].
_NBG_BUDGET = 19500


@pytest.fixture(scope="module")
def one_batch_bmpq():
    """BMPQ with one full batch per epoch (64 images), ILP after epochs 2 and 4; a copy of the model after each
    epoch (the weights the next epoch's single gradient is taken at)."""
    torch.manual_seed(0)
    full = load_digits_split()
    split = type(full)(full.x_train[:64], full.y_train[:64], full.x_test[:64], full.y_test[:64], "digits64")
    model = DigitsMLP(hidden=(16, 16), act_bits=8)
    with torch.no_grad():
        for act in model.acts:  # with the default clip 6, 2-bit activations (levels 0, 2, 4, 6) are all 0 here
            act.alpha.fill_(1.0)
    config = BMPQConfig(budget_bits=_NBG_BUDGET, support=(2, 4), warmup=2, interval=2, epochs=5, lr=0.05,
                        batch_size=64)
    copies = []
    result = train_bmpq(model, split, config, progress=False, on_epoch=lambda r: copies.append(copy.deepcopy(model)))
    return split, result, copies


def test_nbg_during_training_uses_the_scale_at_q_max_for_narrower_layers(one_batch_bmpq):
    """Sec. III-B: a layer's bit gradients are taken over the q_max bits of the support, also once the ILP has
    given it fewer (here 2): NBG = mean|dL/dw_q| * S(q_max) * (2^q_max - 1), S(q) = max|W| / (2^(q-1) - 1)."""
    split, result, copies = one_batch_bmpq
    assert [r.bits for r in result.history] == [[16, 4, 16], [16, 4, 16], [16, 2, 16], [16, 2, 16], [16, 2, 16]]
    for epoch in (2, 3):  # epochs 3 and 4 (0-based 2, 3) train the middle layer at 2 bits
        model = copy.deepcopy(copies[epoch - 1])  # the weights at the start of that epoch
        model.train()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(split.x_train), split.y_train).backward()
        middle = model.linears[1]
        assert int(middle.bits) == 2
        w, g = middle.weight.detach().double(), middle.weight.grad.double()
        assert float(g.abs().mean()) > 0
        expected = float(g.abs().mean() * (w.abs().max() / 7) * 15)
        assert result.history[epoch].nbg[1] == pytest.approx(expected, rel=1e-4)
        at_two_bits = float(g.abs().mean() * w.abs().max() * 3)
        assert abs(at_two_bits - expected) > 0.1 * expected  # what S at the layer's own width would give


def test_enbg_is_the_mean_nbg_over_every_epoch_of_the_interval(one_batch_bmpq):
    """Def. 2 / Sec. III-B: the ILP after an interval sees the mean of the NBGs of all the interval's epochs."""
    _, result, _ = one_batch_bmpq
    nbgs = [r.nbg for r in result.history]
    assert [a["after_epoch"] for a in result.assignments] == [2, 4]
    for assignment, epochs in zip(result.assignments, ([0, 1], [2, 3]), strict=True):
        expected = [float(np.mean([nbgs[e][i] for e in epochs])) for i in range(3)]
        assert assignment["enbg"] == pytest.approx(expected, rel=1e-12)
    # The epochs differ, so the last epoch alone, or an average that runs on across intervals, gives other values.
    assert abs(nbgs[1][1] - nbgs[0][1]) > 0.01 * nbgs[1][1]
    assert abs(nbgs[3][1] - nbgs[2][1]) > 0.01 * nbgs[3][1]
    assert abs(np.mean([n[1] for n in nbgs[:4]]) - result.assignments[1]["enbg"][1]) > 0.01 * nbgs[3][1]
