"""Worker for tests/model/training/test_distributed.py: short runs through the library and through ``build.py``.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/model/training/distributed_worker.py
RECORDS OUT COMMAND ARGS...`` (one launch, since starting torch costs seconds per process) does on every rank:

1. :func:`run` (IMQ, an uneven last batch, augmentation, BMPQ; the same computation as in one process) and
   the mask check, saved to ``RECORDS/rank{r}.pt``;
2. ``build.main([COMMAND, ARGS..., "--out", OUT])`` under a Python audit hook (PEP 578) that notes every
   file opened for writing, created, renamed or removed below ``OUT`` (what ``open``, ``os.open``,
   ``tempfile``, ``torch.save``, ``os.replace`` and ``savefig`` all go through); the exit status and those
   events (``[event, path]``, or ``[event, source, destination]`` for renames) go to
   ``RECORDS/rank{r}.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from model.data import Split, load_digits_split
from model.methods.bmpq import BMPQConfig, train_bmpq
from model.methods.imq import run_imq
from model.quant.nets import DigitsMLP
from model.training import distributed
from model.training.loop import evaluate, train

#: Settings of the IMQ run: digits MLP, 3 iterations of 1 epoch, global batch 64.
IMQ_SETTINGS = {"rho": 0.3, "target_avg_bits": 0.0, "max_iterations": 3, "epochs": 1, "batch_size": 64,
                "seed": 0, "progress": False}
#: 129 training examples in batches of 64: the last global batch has 1 example, so one rank's shard is empty.
UNEVEN_TRAIN = 129
#: Training examples of the run with augmentation (random crop and flip of the 8x8 digits).
AUGMENT_TRAIN = 200
#: BMPQ on a 64-32-32-32-10 MLP: ILPs after epochs 1 and 2. At 3.1x compression the two free 32x32 layers
#: cannot both take 4 bits, so the ENBGs decide which one does.
BMPQ_CONFIG = BMPQConfig(compression=3.1, warmup=1, interval=1, epochs=3, lr=0.05, batch_size=64, seed=6)


def run() -> dict:
    """The IMQ run, the uneven-batch run, a run with augmentation and BMPQ; identical code in one process and under ``torchrun``."""
    torch.set_num_threads(1)
    split = load_digits_split()
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(32,))
    result = run_imq(model, split, **IMQ_SETTINGS)
    small = Split(split.x_train[:UNEVEN_TRAIN], split.y_train[:UNEVEN_TRAIN], split.x_test, split.y_test, "small")
    torch.manual_seed(1)
    uneven = DigitsMLP(hidden=(16,))
    losses = train(uneven, small, epochs=2, batch_size=64, seed=3, progress=False)
    augmented = dataclasses.replace(split, x_train=split.x_train[:AUGMENT_TRAIN],
                                    y_train=split.y_train[:AUGMENT_TRAIN], augment=True)
    torch.manual_seed(2)
    aug_model = DigitsMLP(hidden=(16,))
    train(aug_model, augmented, epochs=1, batch_size=64, seed=4, progress=False)
    torch.manual_seed(5)
    bmpq_model = DigitsMLP(hidden=(32, 32, 32), act_bits=8)
    bmpq = train_bmpq(bmpq_model, split, BMPQ_CONFIG, progress=False)
    return {
        "imq_state": result.state_dict,
        "imq_history": [(r.iteration, r.avg_bits, r.accuracy, r.width_counts) for r in result.history],
        "uneven_state": {k: v.detach().clone() for k, v in uneven.state_dict().items()},
        "uneven_losses": losses,
        "uneven_accuracy": evaluate(uneven, small.x_test, small.y_test, batch_size=50),
        "augment_state": {k: v.detach().clone() for k, v in aug_model.state_dict().items()},
        "bmpq_state": {k: v.detach().clone() for k, v in bmpq_model.state_dict().items()},
        "bmpq_assignments": bmpq.assignments,
        "bmpq_history": [(r.epoch, r.bits, r.accuracy, r.nbg) for r in bmpq.history],
        "world_size": distributed.world_size(),
    }


def mask_check_detects_a_difference(model: torch.nn.Module) -> dict:
    """Under ``torchrun``: change one mask element on rank 1, then whether the check raised, and the first layer's
    mask before the change and after :func:`~model.training.distributed.broadcast_masks` (which
    :func:`~model.training.distributed.check_masks` then passes, or this raises)."""
    before = model.linears[0].bit_width.detach().clone()
    if distributed.rank() == 1:
        with torch.no_grad():
            model.linears[0].bit_width[0, 0] = 0 if int(model.linears[0].bit_width[0, 0]) else 4
    try:
        distributed.check_masks(model)
        raised = False
    except RuntimeError:
        raised = True
    distributed.broadcast_masks(model)
    distributed.check_masks(model)
    return {"raised": raised, "before": before, "after": model.linears[0].bit_width.detach().clone()}


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = ("os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree")


def _watch(out: Path, events: list[list[str]]):
    root = str(out.resolve())

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(root)
        except TypeError:  # file descriptors, not paths
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and inside(args[0]):
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if writing:
                events.append([event, os.fsdecode(args[0])])
        elif event == "os.rename" and (inside(args[0]) or inside(args[1])):
            events.append([event, os.fsdecode(args[0]), os.fsdecode(args[1])])
        elif event in _PATH_EVENTS and args and inside(args[0]):
            events.append([event, os.fsdecode(args[0])])

    return hook


def main(records: Path, out: Path, argv: list[str]) -> int:
    result = run()
    model = DigitsMLP(hidden=(32,))
    model.load_state_dict(result["imq_state"])
    result["mask_check"] = mask_check_detects_a_difference(model)
    torch.save(result, records / f"rank{distributed.rank()}.pt")
    distributed.barrier()  # both records are on disk before a failing command could stop the other rank

    import build

    events: list[list[str]] = []
    sys.addaudithook(_watch(out, events))
    status = build.main([*argv, "--out", str(out)])
    (records / f"rank{distributed.rank()}.json").write_text(json.dumps({"status": status, "events": events}))
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
