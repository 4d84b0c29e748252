"""Data-parallel runs under ``torchrun``: process group, device, rank-0 output and mask consistency.

The same command runs in one process or under ``torchrun``; nothing else changes::

    python build.py train --method imq ...                                    # one process, no group
    torchrun --standalone --nproc-per-node 2 build.py train --method imq ...  # CPU: 2 processes, gloo
    torchrun --standalone --nproc-per-node 4 build.py train --method imq --data cifar10 \
        --data-root ~/data/cifar-10-batches-py --arch resnet20 --batch-size 128 --out out/r20-imq
                                                                   # 4 GPUs: NCCL, cuda:0..3

``--batch-size`` is the global batch (each of ``N`` ranks computes about ``batch_size / N`` examples per
step); the learning rate means what it means in one process. ``--standalone`` lets the OS pick a free
rendezvous port. On several nodes (``--nnodes``, ``--rdzv-endpoint``) the data and the run directory must
be at the same path on every node (a shared file system): rank 0 writes the run directory, the other
ranks read its checkpoints back. ``CUDA_VISIBLE_DEVICES=`` forces gloo on a GPU machine.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR`` / ``MASTER_PORT``);
:func:`launched` looks for them. Without ``torchrun`` every collective here returns at once without touching
``torch.distributed``: rank 0 of 1, no process group, no communication.

The device is chosen once, in one place: :func:`resolve_device` turns ``--device auto|cpu|cuda[:N]`` into a
``torch.device`` (``auto``: CUDA when available; under ``torchrun`` ``auto`` and ``cuda`` mean
``cuda:LOCAL_RANK``), :func:`use_device` makes it the process's choice (the ``train`` command calls it
before anything else), and :func:`device` returns that choice (``auto`` if none was made) to every training
loop (:mod:`model.training.loop`, LTS, BMPQ). The process group follows the device: :func:`init`
(idempotent; the loops call it) starts NCCL on a CUDA device and gloo on the CPU, so ``--device cpu`` runs
gloo on a GPU machine too.

The data-parallel scheme itself (one seeded shuffle shared by all ranks, contiguous shards of each global
batch, gradient sum weighted by shard size) is in :mod:`model.training.loop`. Every rank holds the same weights and
bit-width masks at all times; :func:`check_masks` verifies the masks (one hash, one all-reduce) and
:func:`broadcast_masks` copies rank 0's masks to the others (e.g. after only rank 0 has read a file).
Output files are written by rank 0 only (:func:`is_main`).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

from model.cli import DEVICE_CHOICES, DEVICE_SPEC
from model.errors import UserError

#: The environment variables ``torchrun`` sets for every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

#: The device :func:`use_device` chose for this process (``None``: none chosen, :func:`device` means ``auto``).
_chosen: torch.device | None = None

#: Name of the bit-width mask buffers (``QuantLinear.bit_width`` and every layer that follows its naming).
MASK_BUFFER = "bit_width"


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` are set)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def active() -> bool:
    """Whether a default process group exists (after :func:`init` under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def backend() -> str:
    """``"nccl"`` when :func:`device` is a CUDA device, else ``"gloo"`` (the backend :func:`init` picks)."""
    return "nccl" if device().type == "cuda" else "gloo"


def local_rank() -> int:
    """``LOCAL_RANK`` under ``torchrun``, else 0."""
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def rank() -> int:
    """Global rank: the process group's, else ``RANK`` from ``torchrun``, else 0."""
    if active():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched() else 0


def world_size() -> int:
    """Number of processes: the process group's, else ``WORLD_SIZE`` from ``torchrun``, else 1."""
    if active():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one process that prints results and writes output files.

    Needs no process group (it reads ``RANK``), so it can gate output before :func:`init`.
    """
    return rank() == 0


def resolve_device(spec: str = "auto") -> torch.device:
    """The ``torch.device`` that ``--device spec`` means in this process (the one place that decides it).

    ``cpu``: the CPU. ``auto``: CUDA when available, else the CPU. ``cuda`` / ``cuda:N``: that GPU (``cuda`` is
    ``cuda:0``). Under ``torchrun`` every process takes its own GPU, so ``auto`` (with CUDA) and ``cuda`` mean
    ``cuda:LOCAL_RANK``, and ``cuda:N`` is refused.

    Raises
    ------
    UserError
        For a malformed ``spec``, ``cuda`` without CUDA, a GPU index that does not exist (also a ``LOCAL_RANK``
        beyond the visible GPUs), or ``cuda:N`` under ``torchrun``.
    """
    text = str(spec).strip().lower()
    match = DEVICE_SPEC.fullmatch(text)
    if match is None:
        raise UserError(f"--device {spec!r} is not a device; allowed {DEVICE_CHOICES}")
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if text == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise UserError(f"--device {text}: CUDA is not available here (torch {torch.__version__}, "
                        f"{torch.cuda.device_count()} CUDA devices); allowed: auto or cpu")
    count = torch.cuda.device_count()
    if launched():
        if match.group(1) is not None:
            raise UserError(f"--device {text} under torchrun: every process takes its own GPU, cuda:LOCAL_RANK; "
                            f"give --device cuda or auto (or restrict the GPUs with CUDA_VISIBLE_DEVICES)")
        index = local_rank()
        if index >= count:
            raise UserError(f"torchrun started local rank {index} but only {count} CUDA device(s) are visible; "
                            f"allowed --nproc-per-node 1..{count}")
    else:
        index = int(match.group(1) or 0)
        if index >= count:
            raise UserError(f"--device {text}: there are {count} CUDA device(s); allowed cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def use_device(spec: str = "auto") -> torch.device:
    """Make :func:`resolve_device` ``(spec)`` this process's device (what :func:`device` returns); returns it.

    Call it before :func:`init`: the process group's backend follows the device. It also makes float32
    arithmetic IEEE on every device (:func:`exact_float32`) and, on a GPU, makes the chosen one the current CUDA
    device, so that ``torch.cuda.synchronize()``, ``pin_memory()`` and new contexts go to ``cuda:N`` and not
    to ``cuda:0`` with ``--device cuda:N`` (under ``torchrun`` :func:`init` does the same for ``LOCAL_RANK``).
    """
    global _chosen
    _chosen = resolve_device(spec)
    exact_float32()
    if _chosen.type == "cuda":
        torch.cuda.set_device(_chosen)
    return _chosen


def exact_float32() -> None:
    """Run float32 convolutions and matrix products in IEEE float32, never TensorFloat-32.

    torch runs cuDNN convolutions in TF32 by default on Ampere and later GPUs (``torch.backends.cudnn.conv.
    fp32_precision`` is ``"tf32"``): a 10-bit mantissa in the products. The quantizers' integer codes come from
    the float forward (a PACT code is ``round(clamp(x) / alpha * (2^k - 1))`` of a conv's output), so TF32
    moves codes across rounding boundaries: emulated on a ResNet-20 at initialisation (conv operands rounded
    to TF32), 12 % of the PACT codes differ from float32 ones, up to 30 % in layer3. The fake-quant forward
    would then not be the network the integer golden model computes, and a GPU run would not reproduce a
    CPU run's codes. Matrix products are set likewise (their default is already IEEE; set so that no
    earlier ``torch.set_float32_matmul_precision`` call of a library changes it). No effect on the CPU,
    where both are IEEE. Autocast is not used anywhere, for the same reason.
    """
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def device() -> torch.device:
    """The device this process trains on: :func:`use_device`'s choice, else :func:`resolve_device` ``("auto")``.

    So without a choice: ``cuda:LOCAL_RANK`` under ``torchrun`` with CUDA, ``cuda:0`` in one process with
    CUDA, the CPU without CUDA. Either way float32 is IEEE (:func:`exact_float32`); without a choice the
    current CUDA device is left as it is (``auto`` means ``cuda:0``, or ``LOCAL_RANK``, which :func:`init` sets).
    """
    exact_float32()
    return _chosen if _chosen is not None else resolve_device("auto")


def init() -> bool:
    """Start the default process group if launched by ``torchrun`` and none exists yet.

    NCCL with :func:`device` (``cuda:LOCAL_RANK``) as this process's current device when that is a GPU, gloo
    otherwise; the rendezvous is ``torchrun``'s (``env://``). :func:`teardown` runs at interpreter exit.

    Returns
    -------
    bool
        Whether a process group is active afterwards (``False`` in a plain single process).

    Raises
    ------
    UserError
        If ``LOCAL_RANK`` has no CUDA device (more processes per node than visible GPUs).
    """
    if active() or not launched():
        return active()
    if backend() == "nccl":
        torch.cuda.set_device(device())
        dist.init_process_group("nccl", device_id=device())
    else:
        dist.init_process_group("gloo")
    atexit.register(teardown)
    return True


def teardown() -> None:
    """Destroy the default process group if there is one (no-op otherwise; safe to call twice)."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items split over ``world_size`` ranks.

    The first ``n % world_size`` ranks get one item more than the others; shards may be empty when
    ``n < world_size``. Concatenating the shards of ranks ``0 .. world_size - 1`` gives ``range(n)``.

    Raises
    ------
    ValueError
        If ``n < 0``, ``world_size < 1`` or ``rank`` is outside ``[0, world_size)``.
    """
    if n < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_bounds needs n >= 0 and 0 <= rank < world_size, not {n=}, {rank=}, {world_size=}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _comm_device() -> torch.device:
    """Where tensors for a collective must live: the CUDA device under NCCL, else the CPU."""
    return device() if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it (no-op without a process group).

    A tensor that is not on the backend's device goes there and back (one copy each way).
    """
    if not active():
        return tensor
    target = _comm_device()
    if tensor.device == target:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
    moved = tensor.to(target)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return tensor.copy_(moved)


def all_reduce_gradients(parameters: list[nn.Parameter], extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sum every parameter's ``.grad`` (and ``extra``) over all ranks with one all-reduce.

    The gradients travel as one flat buffer. A ``None`` gradient counts as zeros; a parameter whose
    gradient is ``None`` on every rank keeps ``None`` (so optimizers skip it exactly as in a single
    process), which is what one extra flag element per parameter in the buffer decides.

    Parameters
    ----------
    parameters : list of nn.Parameter
        The same list, in the same order, on every rank.
    extra : torch.Tensor, optional
        More values to sum in the same message (e.g. the loss); flattened.

    Returns
    -------
    torch.Tensor or None
        ``extra`` summed over the ranks (flat, in the parameters' promoted dtype, on their device), or
        ``None``.
    """
    if not parameters:
        raise ValueError("all_reduce_gradients needs at least one parameter")
    dev = parameters[0].device
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in parameters])
    parts, flags = [], []
    for p in parameters:
        parts.append((p.grad if p.grad is not None else torch.zeros_like(p)).flatten().to(dtype))
        flags.append(float(p.grad is not None))
    n_extra = 0 if extra is None else extra.numel()
    if extra is not None:
        parts.append(extra.detach().flatten().to(dev, dtype))
    parts.append(torch.tensor(flags, dtype=dtype, device=dev))
    flat = all_reduce_sum_(torch.cat(parts))
    grads_end = flat.numel() - len(parameters) - n_extra
    seen = flat[flat.numel() - len(parameters) :].tolist()
    start = 0
    for p, count in zip(parameters, seen, strict=True):
        n = p.numel()
        if count > 0:
            p.grad = flat[start : start + n].view_as(p).to(p.dtype)
        start += n
    return flat[grads_end : grads_end + n_extra] if extra is not None else None


def broadcast_state(model: nn.Module, src: int = 0, include_masks: bool = False) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``model`` in place.

    Bit-width masks are left alone unless ``include_masks`` (use :func:`broadcast_masks` /
    :func:`check_masks` for them). No-op without a process group.
    """
    if not active():
        return
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if include_masks or name.rsplit(".", 1)[-1] != MASK_BUFFER:
                broadcast_(tensor, src)


def broadcast_(tensor: torch.Tensor, src: int = 0) -> None:
    """Copy rank ``src``'s ``tensor`` into every rank's in place (no-op without a process group)."""
    if not active():
        return
    target = _comm_device()
    if tensor.device == target:
        dist.broadcast(tensor, src)
    else:
        moved = tensor.to(target)
        dist.broadcast(moved, src)
        tensor.copy_(moved)


def masks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, buffer)`` of every bit-width mask of ``model`` (buffers named ``bit_width``), in order."""
    return [(name, b) for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] == MASK_BUFFER]


def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s bit-width masks into every rank's ``model`` in place (no-op without a group)."""
    if not active():
        return
    with torch.no_grad():
        for _, mask in masks(model):
            broadcast_(mask, src)


def mask_digest(model: nn.Module) -> bytes:
    """SHA-256 over the names, shapes and int64 values of all bit-width masks of ``model``."""
    h = hashlib.sha256()
    for name, mask in masks(model):
        h.update(f"{name}{tuple(mask.shape)};".encode())
        h.update(mask.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.digest()


def check_masks(model: nn.Module) -> None:
    """Raise unless every rank holds the same bit-width masks (no-op without a process group).

    Cost: one SHA-256 of the masks and one all-reduce of 16 int64 numbers (MIN and MAX of the digest's
    eight 32-bit words).

    Raises
    ------
    RuntimeError
        If the masks differ between ranks; this is a bug (masks follow from weights that every rank
        holds identically), not a user error.
    """
    if not active():
        return
    words = torch.frombuffer(bytearray(mask_digest(model)), dtype=torch.int32).to(torch.int64)
    both = torch.cat([words, -words]).to(_comm_device())
    dist.all_reduce(both, op=dist.ReduceOp.MIN)  # min(w) and -max(w) in one message
    if not torch.equal(both[:8], -both[8:]):
        raise RuntimeError(f"bit-width masks differ between ranks (rank {rank()} of {world_size()})")
