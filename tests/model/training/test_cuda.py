"""Training on a real GPU: the quantizers' codes against the CPU's, and every training method through ``build.py``.

These tests need CUDA and are skipped without it (CI has no GPU; ``tests/model/training/test_device.py``
checks the device choice and its errors with CUDA simulated); on a GPU machine the suite hides the GPUs unless
``MPQACCEL_GPU_TESTS=1`` (``tests/conftest.py``). They run on a lent GPU machine through
``model/bench/gpu_check.sh`` (README, "Where it trains"), which records what they printed.

What a GPU may change and what it may not: the weight codes export and the golden model see are computed from
the checkpoint on the CPU (checkpoints hold CPU tensors), so a GPU run's ticket exports the same image whichever
device trained it. The fake-quant forward on the GPU rounds Eq. 3's float32 ``x = tanh(w) / (2 max|tanh|) + 1/2``
computed there; its ``tanh`` need not be the CPU's to the last bit, so ``x`` may differ by a few ulps of 1/2
(checked: at most 4, i.e. ``|dx| <= 2^-22``), and a code at width ``m`` by at most ``2^(m-22)`` plus the rounding:
1 code up to 21 bits, 1,025 at 32 bits (:func:`test_dorefa_codes_on_the_gpu_are_the_cpus_within_4_ulps_of_x`
checks that and prints how many codes differ and by how much per width). The PACT codes (clamp, multiply, divide by
the 0-d alpha tensor, round) must be identical and their fake-quant values within 2 float32 eps relative
(:func:`test_pact_codes_on_the_gpu_are_the_cpus`).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import build
from model.bench.qat import quant_net
from model.data import load_digits_split
from model.export.convert import golden_accuracy, input_codes, to_golden
from model.export.convert_vertical import vertical_input_codes
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


def test_dorefa_codes_on_the_gpu_are_the_cpus_within_4_ulps_of_x(capsys):
    differing = {m: 0 for m in WIDTHS}
    largest = {m: 0 for m in WIDTHS}
    total, worst_ulps = 0, 0.0
    for w in resnet20_weights():
        x_cpu, x_gpu = dorefa_normalize(w), dorefa_normalize(w.to(GPU)).cpu()
        # x = t / (2 max|t|) + 1/2 carries the absolute error of the add (ulps of 1/2, 2^-24), however small x
        ulps = float((x_gpu - x_cpu).abs().max()) / 2.0 ** -24
        assert ulps <= 4.0, f"x of Eq. 3 differs by {ulps:.1f} ulps of 1/2 on the GPU"
        worst_ulps = max(worst_ulps, ulps)
        total += w.numel()
        for m in WIDTHS:
            widths = torch.full_like(w, m, dtype=torch.int64)
            q_cpu, q_gpu = dorefa_codes(w, widths), dorefa_codes(w.to(GPU), widths.to(GPU)).cpu()
            slack = (1 << (m - 22)) + 1 if m >= 22 else 1  # |dx| (2^m - 1) < 2^(m-22), then the rounding
            diff = int((q_gpu - q_cpu).abs().max())
            assert diff <= slack, f"{m}-bit codes differ by {diff}, more than {slack}"
            differing[m] += int((q_gpu != q_cpu).sum())
            largest[m] = max(largest[m], diff)
    with capsys.disabled():
        print(f"\nDoReFa on the GPU vs the CPU over {total:,} ResNet-20 weights: x within {worst_ulps:g} ulps of 1/2; "
              "codes differing (largest difference): "
              + ", ".join(f"{m}-bit {differing[m]:,} ({largest[m]})" for m in WIDTHS))
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


def test_a_resnets_activation_codes_on_the_gpu_are_the_cpus():
    """The PACT codes of every layer of ResNet-20 computed on the GPU after ``use_device`` (IEEE float32, no
    TF32: ``distributed.exact_float32``) against the CPU's. Convolutions sum in another order on each device,
    so a code at a rounding tie may differ; with TF32 (cuDNN's default) 12 % did, in emulation."""
    torch.manual_seed(0)
    model = build_model({"arch": "resnet20", "image_shape": [1, 28, 28], "n_classes": 10, "act_bits": 4}).eval()
    distributed.use_device("cuda")
    on_gpu = copy.deepcopy(model).to(GPU)
    x = torch.rand(32, 1, 28, 28)

    def codes(net, images):
        seen = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(mod.to_codes(inp[0]).cpu()))
                 for m in net.modules() if isinstance(m, PACT)]
        with torch.no_grad():
            net(images)
        for h in hooks:
            h.remove()
        return seen

    cpu, gpu = codes(model, x), codes(on_gpu, x.to(GPU))
    assert len(cpu) == len(gpu) >= 18
    differing = sum(int((a != b).sum()) for a, b in zip(cpu, gpu))
    total = sum(a.numel() for a in cpu)
    assert differing <= total // 1000, f"{differing} of {total} PACT codes differ on the GPU"


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
    assert torch.equal(input_codes(on_gpu, x.to(GPU)), input_codes(model, x))  # images on either device
    vertical = quant_net("mlp", "vertical")  # `bench vertical` reads its trained net's input codes this way
    assert (vertical_input_codes(copy.deepcopy(vertical).to(GPU), x) == vertical_input_codes(vertical, x)).all()


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


#: Settings under which each method learns the digits within seconds (checked on the CPU: 0.91, 0.80, 0.80, 0.93).
METHOD_RUNS = {
    "lts-mlp": ("lts.json", ["--method", "lts", "--data", "digits", "--epochs", "3", "--warmup", "1"]),
    "lts-resnet20": ("lts.json", ["--method", "lts", "--arch", "resnet20", "--data", "digits", "--epochs", "6",
                                  "--warmup", "2", "--batch-size", "32"]),
    "bmpq": ("bmpq.json", ["--method", "bmpq", "--epochs", "3", "--warmup", "1", "--interval", "1",
                           "--compression", "4", "--lr", "0.1", "--batch-size", "32"]),
    "vertical": ("vertical.json", ["--method", "vertical", "--hidden", "64", "64", "--epochs", "8"]),
}


@pytest.mark.parametrize("name", METHOD_RUNS)
def test_every_method_trains_on_the_gpu(tmp_path, capsys, name):
    report, argv = METHOD_RUNS[name]
    run = tmp_path / "run"
    code = build.main(["train", "--device", "cuda", *argv, "--quiet", "--run-dir", str(run)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((run / report).read_text())
    assert result["provenance"]["device"] == "cuda"
    accuracy = min(result["test_accuracy"].values()) if name == "vertical" else result["accuracy"]
    assert accuracy >= 0.5, f"{name} did not learn on the GPU: test accuracy {accuracy}"  # chance is 0.1
