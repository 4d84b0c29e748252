"""``--device``: one function decides the device (:func:`model.training.distributed.resolve_device`), the
process group follows it, and the ``train`` command refuses CUDA where there is none.

CUDA is simulated where its answer is all that matters (``torch.cuda.is_available`` / ``device_count``
patched); nothing here allocates on a GPU, so the tests run on this CPU-only machine.
"""

from __future__ import annotations

import json

import pytest
import torch

import build
from model.errors import UserError
from model.training import distributed
from model.training.loop import batch_of, synchronizer


@pytest.fixture(autouse=True)
def no_choice(monkeypatch):
    """Every test starts with no device chosen and none chosen after it."""
    monkeypatch.setattr(distributed, "_chosen", None)
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def fake_cuda(monkeypatch, count: int) -> None:
    """CUDA as far as choosing a device goes: ``count`` GPUs, and ``set_device`` (which ``use_device`` calls)
    a no-op."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)


def fake_torchrun(monkeypatch, local_rank: int, world: int = 2) -> None:
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_one_process_with_two_gpus(monkeypatch):
    fake_cuda(monkeypatch, 2)
    resolve = distributed.resolve_device
    assert resolve("auto") == resolve("cuda") == resolve("CUDA:0") == torch.device("cuda", 0)
    assert resolve("cuda:1") == torch.device("cuda", 1)
    assert resolve("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"cuda:2: there are 2 CUDA device\(s\); allowed cuda:0..cuda:1"):
        resolve("cuda:2")
    assert distributed.device() == torch.device("cuda", 0)  # nothing chosen: auto
    assert distributed.backend() == "nccl"
    assert distributed.use_device("cpu") == distributed.device() == torch.device("cpu")
    assert distributed.backend() == "gloo"  # --device cpu runs gloo on a GPU machine


def test_under_torchrun_each_process_takes_its_local_rank(monkeypatch):
    fake_cuda(monkeypatch, 2)
    fake_torchrun(monkeypatch, 1)
    assert distributed.resolve_device("auto") == distributed.resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(UserError, match="every process takes its own GPU"):
        distributed.resolve_device("cuda:0")
    fake_torchrun(monkeypatch, 2, world=3)
    with pytest.raises(UserError, match="local rank 2 but only 2 CUDA device"):
        distributed.resolve_device("auto")
    assert distributed.resolve_device("cpu") == torch.device("cpu")


def test_without_cuda_auto_is_the_cpu_and_cuda_is_an_error(monkeypatch):
    fake_cuda(monkeypatch, 0)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match=f"--device {spec}: CUDA is not available here.*allowed: auto or cpu"):
            distributed.resolve_device(spec)
    with pytest.raises(UserError, match="'gpu' is not a device; allowed auto, cpu, cuda or cuda:N"):
        distributed.resolve_device("gpu")


@pytest.mark.parametrize("method", ["imq", "lts", "bmpq"])
def test_train_refuses_cuda_without_it_for_every_method(monkeypatch, capsys, tmp_path, method):
    fake_cuda(monkeypatch, 0)
    code = build.main(["train", "--method", method, "--device", "cuda:1", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "error: --device cuda:1: CUDA is not available here" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_malformed_device_is_a_usage_error():
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0"):
        with pytest.raises(SystemExit) as exc:
            build.parser().parse_args(["train", "--device", bad])
        assert exc.value.code == 2
    assert build.parser().parse_args(["train", "--device", "CUDA:3"]).device == "cuda:3"


def test_train_on_the_cpu_records_the_device(capsys, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    try:
        code = build.main(["train", "--device", "cpu", "--epochs", "1", "--train-subset", "150", "--test-subset",
                           "60", "--hidden", "8", "--iterations", "1", "--quiet", "--run-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    assert distributed.device() == torch.device("cpu")
    assert json.loads((tmp_path / "run.json").read_text())["provenance"]["device"] == "cpu"
    payload = torch.load(tmp_path / "ticket.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())


def test_train_says_where_it_trains_unless_quiet(capsys, tmp_path):
    argv = ["train", "--method", "lts", "--device", "cpu", "--data", "digits", "--hidden", "8", "--epochs", "2",
            "--warmup", "1", "--run-dir"]
    threads = torch.get_num_threads()
    try:
        assert build.main([*argv, str(tmp_path / "a")]) == 0
        assert "train: lts on cpu\n" in capsys.readouterr().err
        assert build.main([*argv, str(tmp_path / "b"), "--quiet"]) == 0
        assert "train:" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)



@pytest.fixture
def float32_flags():
    """Restore torch's TF32 flags after a test that sets them."""
    before = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


def test_choosing_a_device_makes_float32_ieee_and_the_gpu_current(monkeypatch, float32_flags):
    """TF32 would move PACT codes (distributed.exact_float32); cuda:N must be the current device, so that a
    bare synchronize / pin_memory goes to it."""
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
    distributed.use_device("cpu")
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert distributed.device() == torch.device("cpu")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"  # whichever way the device was chosen
    fake_cuda(monkeypatch, 2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert distributed.use_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    distributed.use_device("cpu")
    assert current == [torch.device("cuda", 1)]  # the CPU sets no CUDA device


def test_timings_wait_for_the_training_gpu(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: waited.append(a))
    synchronizer(torch.device("cpu"))()
    assert waited == []
    synchronizer(torch.device("cuda", 1))()
    assert waited == [(torch.device("cuda", 1),)]


def test_host_batches_for_a_gpu_are_gathered_into_pinned_memory(monkeypatch):
    """A gather of a pinned tensor is pageable, so batch_of pins each gathered batch (its copy then runs
    asynchronously); on the CPU, or with the set on the device, it is the plain gather."""
    pinned = []

    def pin(t):
        pinned.append(t)
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    xs, ys, idx = torch.arange(20.0).reshape(10, 2), torch.arange(10), torch.tensor([3, 1, 7])
    x, y = batch_of(xs, ys, idx, torch.device("cpu"))
    assert torch.equal(x, xs[idx]) and torch.equal(y, ys[idx]) and pinned == []
    x, y = batch_of(xs, ys, idx, torch.device("cuda", 0))
    assert torch.equal(x, xs[idx]) and torch.equal(y, ys[idx])
    assert len(pinned) == 2 and torch.equal(pinned[0], xs[idx]) and torch.equal(pinned[1], ys[idx])
    pinned.clear()  # augmented images are pinned after the augmentation (which returns new, pageable memory)
    x, y = batch_of(xs, ys, idx, torch.device("cuda", 0), augment=lambda b: b.flip(1))
    assert torch.equal(x, xs[idx].flip(1)) and torch.equal(pinned[0], xs[idx].flip(1))
