"""Training on a real GPU: the quantizers' codes against the CPU's, and every training method through ``build.py``.

These tests need CUDA and are skipped without it (CI has no GPU; ``tests/model/training/test_device.py``
checks the device choice and its errors with CUDA simulated); on a GPU machine the suite hides the GPUs unless
``MPQACCEL_GPU_TESTS=1`` (``tests/conftest.py``). They run on a lent GPU machine through
``model/bench/gpu_check.sh`` (README, "Where it trains"), which records what they printed.

What a GPU may change and what it may not: the weight codes export and the golden model see are computed from
the checkpoint on the CPU (checkpoints hold CPU tensors), so a GPU run's ticket exports the same image whichever
device trained it. The fake-quant forward on the GPU rounds the same float32 ``x`` of Eq. 3 the CPU does when
both compute ``tanh`` alike; where the GPU's ``tanh`` differs from the CPU's by an ulp, a code may move by
what one float32 ulp of ``x`` is worth at that width (0 or 1 code at 4 and 8 bits, up to 2^(m-22) codes at 16
and 32 bits). :func:`test_dorefa_codes_on_the_gpu_are_the_cpus_within_an_ulp_of_x` bounds that and prints how
many codes differ per width; the PACT codes (clamp, multiply, divide by the 0-d alpha tensor, round: correctly rounded on both) must
be identical, and their fake-quant value within an ulp (:func:`test_pact_codes_on_the_gpu_are_the_cpus`).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import build
from model.data import load_digits_split
from model.export.convert import golden_accuracy, input_codes, to_golden
from model.export.golden import WIDTHS as HW_WIDTHS
from model.quant.dorefa import dorefa_codes, dorefa_normalize
from model.quant.nets import build_model
from model.quant.pact import PACT
from model.runs.checkpoint import load_checkpoint
from model.training import distributed
from model.training.loop import evaluate, training_tensors

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (MPQACCEL_GPU_TESTS=1 on a GPU machine: model/bench/gpu_check.sh)")

GPU = torch.device("cuda", 0)
WIDTHS = (1, 2, 4, 8, 16, 32)


@pytest.fixture(autouse=True)
def chosen_device():
    """Each test chooses its device itself; the process's choice is restored afterwards."""
    before = distributed._chosen
    yield
    distributed._chosen = before


def resnet20_weights() -> list[torch.Tensor]:
    """ResNet-20's conv and FC weights as initialised (the shapes and scales IMQ ranks and quantizes)."""
    torch.manual_seed(0)
    model = build_model({"arch": "resnet20", "image_shape": [1, 28, 28], "n_classes": 10, "act_bits": 4})
    return [p.detach() for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]


def test_dorefa_codes_on_the_gpu_are_the_cpus_within_an_ulp_of_x(capsys):
    differing = {m: 0 for m in WIDTHS}
    total = 0
    for w in resnet20_weights():
        x_cpu, x_gpu = dorefa_normalize(w), dorefa_normalize(w.to(GPU)).cpu()
        # x = t / (2 max|t|) + 1/2 carries the absolute error of the add (ulps of 1/2, 2^-24), however small x
        ulps = float((x_gpu - x_cpu).abs().max()) / 2.0 ** -24
        assert ulps <= 4.0, f"x of Eq. 3 differs by {ulps:.1f} ulps of 1/2 on the GPU"
        total += w.numel()
        for m in WIDTHS:
            widths = torch.full_like(w, m, dtype=torch.int64)
            q_cpu, q_gpu = dorefa_codes(w, widths), dorefa_codes(w.to(GPU), widths.to(GPU)).cpu()
            slack = max(1, 2 ** (m - 21))  # 4 ulps of 1/2 (2^-22) in codes at width m, and the rounding
            assert int((q_gpu - q_cpu).abs().max()) <= slack, f"{m}-bit codes differ by more than {slack}"
            differing[m] += int((q_gpu != q_cpu).sum())
    with capsys.disabled():
        print(f"\nDoReFa codes differing GPU vs CPU over {total:,} ResNet-20 weights: "
              + ", ".join(f"{m}-bit {n:,}" for m, n in differing.items()))
    assert differing[4] + differing[8] <= total // 1000  # a rounding tie within an ulp is rare at 4 and 8 bits


def test_pact_codes_on_the_gpu_are_the_cpus():
    torch.manual_seed(1)
    for bits in (2, 4, 8):
        pact = PACT(bits, alpha=3.7)
        x = torch.randn(1 << 20) * 3
        codes_cpu = pact.to_codes(x)
        pact_gpu = PACT(bits, alpha=3.7).to(GPU)
        assert torch.equal(pact_gpu.to_codes(x.to(GPU)).cpu(), codes_cpu)
        # The value code * alpha / s: CUDA divides by a Python scalar as a multiply by its reciprocal (not
        # correctly rounded), so the value may differ from the CPU's by an ulp; on each device it is
        # dequantize(to_codes(x)) bit for bit.
        value = pact_gpu(x.to(GPU)).detach()
        assert torch.equal(value, pact_gpu.dequantize(pact_gpu.to_codes(x.to(GPU))))
        torch.testing.assert_close(value.cpu(), pact(x).detach(), rtol=2 * torch.finfo(torch.float32).eps, atol=0)


def test_a_model_on_the_gpu_converts_to_the_golden_model_of_its_cpu_copy():
    torch.manual_seed(2)
    model = build_model({"arch": "resnet20", "image_shape": [1, 28, 28], "n_classes": 10, "act_bits": 4})
    gen = torch.Generator().manual_seed(3)
    for layer in model.quant_layers():  # a mixed mask, like an IMQ ticket
        layer.set_bit_width(torch.tensor(HW_WIDTHS)[torch.randint(0, len(HW_WIDTHS), layer.weight.shape,
                                                                   generator=gen)])
    model.eval()
    on_gpu = copy.deepcopy(model).to(GPU)
    x, y = torch.rand(64, 784, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    ref, got = to_golden(model), to_golden(on_gpu)
    assert next(on_gpu.parameters()).device == GPU  # converted from a copy; the model stays on the GPU
    codes = input_codes(model, x).numpy()
    assert (got.forward(codes) == ref.forward(codes)).all()
    assert golden_accuracy(got, on_gpu, x, y) == golden_accuracy(ref, model, x, y)


def test_a_small_training_set_is_gathered_on_the_gpu():
    split = load_digits_split(seed=0)
    x, y = training_tensors(split.x_train, split.y_train, GPU)
    assert x.device.type == y.device.type == "cuda"
    assert torch.equal(x.cpu(), split.x_train) and torch.equal(y.cpu(), split.y_train)


def test_imq_on_the_gpu_exports_the_ticket_the_golden_model_computes(tmp_path, capsys):
    run = tmp_path / "run"
    code = build.main(["train", "--device", "cuda", "--epochs", "2", "--hidden", "32", "--iterations", "3",
                       "--quiet", "--run-dir", str(run)])
    assert code == 0, capsys.readouterr().err
    assert distributed.device() == GPU
    assert json.loads((run / "run.json").read_text())["provenance"]["device"] == "cuda"
    payload = torch.load(run / "ticket.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    # On the CPU, as `build.py eval` does: the golden model of the exported codes against fake-quant.
    distributed.use_device("cpu")
    model = load_checkpoint(run / "ticket.pt")[0]
    split = load_digits_split(seed=0)
    fq = evaluate(model, split.x_test, split.y_test)
    golden = golden_accuracy(to_golden(model), model, split.x_test, split.y_test)
    assert abs(fq - golden) <= 0.01, (fq, golden)
    code = build.main(["eval", "--checkpoint", str(run / "ticket.pt"), "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["golden_accuracy"] == golden and report["fakequant_accuracy"] == fq


@pytest.mark.parametrize(("report", "argv"), [
    ("lts.json", ["--method", "lts", "--data", "digits", "--epochs", "3", "--warmup", "1"]),
    ("lts.json", ["--method", "lts", "--arch", "resnet20", "--data", "digits", "--epochs", "2", "--warmup", "1"]),
    ("bmpq.json", ["--method", "bmpq", "--hidden", "64", "64", "64", "--epochs", "3", "--warmup", "1", "--interval", "1",
     "--compression", "4"]),
    ("vertical.json", ["--method", "vertical", "--hidden", "32", "32", "--epochs", "1", "--train-subset", "400"]),
], ids=["lts-mlp", "lts-resnet20", "bmpq", "vertical"])
def test_every_method_trains_on_the_gpu(tmp_path, capsys, report, argv):
    run = tmp_path / "run"
    code = build.main(["train", "--device", "cuda", *argv, "--quiet", "--run-dir", str(run)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / report).read_text())["provenance"]["device"] == "cuda"
