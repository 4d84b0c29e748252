"""Data-parallel training under ``torchrun`` (2 gloo processes on CPU) against a single-process run.

Tolerance for weights: ``atol = 1e-6`` (``rtol = 0``). Both runs compute the gradient of the same mean loss
over the same global batch, but the sum over the batch is formed in another order (two shard sums, then
the all-reduce), so gradients differ by a few float32 ulps and the weights (``|w| < 1``, ulp <= 6e-8) by
about 3e-8 after a short run. 1e-6 leaves a factor of 30 and is still 1/3000 of one Adam step
(``lr = 3e-3``): a wrong shard weighting on the uneven last batch, a lost step or an unsummed gradient
moves weights by far more. Masks and accuracies must be identical, and all ranks bit-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.model.training import distributed_worker

ROOT = Path(__file__).resolve().parents[3]

ATOL = 1e-6


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (rendezvous on a free port the OS picks) with ``nproc`` CPU workers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"torchrun exit status {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def assert_states_match(ref: dict, got: dict) -> None:
    assert ref.keys() == got.keys()
    for key, a in ref.items():
        b = got[key]
        if key.endswith("bit_width"):
            assert torch.equal(a, b), f"{key}: {int((a != b).sum())} mask elements differ"
        else:
            torch.testing.assert_close(b, a, rtol=0, atol=ATOL, msg=lambda m, k=key: f"{k}: {m}")


#: Tiny IMQ through the command line: 2 iterations of 1 epoch on a 16-unit digits MLP, global batch 64.
CLI_TRAIN = ["train", "--method", "imq", "--hidden", "16", "--epochs", "1", "--iterations", "2",
             "--target-bits", "0", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``torchrun`` of tests/model/training/distributed_worker.py: the folder with ``records`` and ``cli``,
    the process."""
    base = tmp_path_factory.mktemp("torchrun")
    (base / "records").mkdir()
    worker = ROOT / "tests" / "model" / "training" / "distributed_worker.py"
    return base, torchrun([str(worker), str(base / "records"), str(base / "cli"), *CLI_TRAIN], cwd=base)


@pytest.fixture(scope="module")
def two_ranks(launch) -> list[dict]:
    base, proc = launch
    paths = [base / "records" / f"rank{r}.pt" for r in range(2)]
    assert all(p.is_file() for p in paths), explain(proc)
    return [torch.load(p, weights_only=True) for p in paths]


@pytest.fixture(scope="module")
def single() -> dict:
    threads = torch.get_num_threads()
    try:
        return distributed_worker.run()
    finally:
        torch.set_num_threads(threads)


def test_every_rank_holds_the_same_model(two_ranks):
    r0, r1 = two_ranks
    assert r0["world_size"] == r1["world_size"] == 2
    for key in ("imq_state", "uneven_state", "augment_state"):
        for name, value in r0[key].items():
            assert torch.equal(value, r1[key][name]), f"{key}.{name} differs between ranks"
    assert r0["imq_history"] == r1["imq_history"]
    assert r0["uneven_losses"] == r1["uneven_losses"]


def test_imq_under_torchrun_matches_one_process(two_ranks, single):
    got = two_ranks[0]
    assert single["world_size"] == 1
    assert_states_match(single["imq_state"], got["imq_state"])
    # Same masks at every iteration, hence the same widths; the accuracies are exact counts.
    assert [h[0] for h in got["imq_history"]] == [0, 1, 2]
    assert got["imq_history"] == single["imq_history"]
    assert got["imq_history"][-1][1] < got["imq_history"][1][1] < 32  # two mask updates happened


def test_uneven_last_batch_and_an_empty_shard(two_ranks, single):
    # 129 examples, batch 64: the last global batch (1 example) is rank 0's alone; rank 1 sends zeros.
    got = two_ranks[0]
    assert_states_match(single["uneven_state"], got["uneven_state"])
    assert got["uneven_losses"] == pytest.approx(single["uneven_losses"], rel=1e-6, abs=0)
    assert got["uneven_accuracy"] == single["uneven_accuracy"]


def test_augmentation_is_drawn_once_for_the_global_batch(two_ranks, single):
    # Every rank augments the whole global batch from the shared generator, then takes its shard.
    assert_states_match(single["augment_state"], two_ranks[0]["augment_state"])


def test_bmpq_under_torchrun_assigns_the_widths_of_one_process(two_ranks, single):
    r0, r1 = two_ranks
    # Every rank: the same weights, NBGs and ILP inputs bit for bit (so the same widths).
    for name, value in r0["bmpq_state"].items():
        assert torch.equal(value, r1["bmpq_state"][name]), f"bmpq_state.{name} differs between ranks"
    assert r0["bmpq_assignments"] == r1["bmpq_assignments"] and r0["bmpq_history"] == r1["bmpq_history"]
    # Against one process: the same widths after every ILP; the ENBGs of the global gradient up to float
    # summation order (a per-rank NBG of the shard's gradient would be off by far more than 1e-4).
    got, ref = r0["bmpq_assignments"], single["bmpq_assignments"]
    assert [a["bits"] for a in got] == [a["bits"] for a in ref] and len(got) == 2
    assert sorted(got[0]["bits"][1:3]) == [2, 4]  # the budget leaves 4 bits for one free layer: ENBG decides
    for a, b in zip(got, ref, strict=True):
        assert a["enbg"] == pytest.approx(b["enbg"], rel=1e-4)
    assert [h[:3] for h in r0["bmpq_history"]] == [h[:3] for h in single["bmpq_history"]]
    assert_states_match(single["bmpq_state"], r0["bmpq_state"])


def test_mask_check_catches_a_difference_and_broadcast_repairs_it(two_ranks):
    """Both ranks see the check fail; after the broadcast both hold rank 0's mask, which rank 1's was not."""
    r0, r1 = (result["mask_check"] for result in two_ranks)
    assert r0["raised"] and r1["raised"]
    assert torch.equal(r0["before"], r1["before"])  # the same seed: one mask before rank 1's change
    assert torch.equal(r0["after"], r0["before"]) and torch.equal(r1["after"], r0["before"])



def test_cli_train_under_torchrun_writes_on_rank_0_only_and_matches_one_process(launch, tmp_path):
    import build
    from model.runs.checkpoint import load_checkpoint

    base, proc = launch
    assert proc.returncode == 0, explain(proc)
    dist_out, single_out = base / "cli", tmp_path / "single"
    ranks = [json.loads((base / "records" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["status"] for r in ranks] == [0, 0]
    assert ranks[1]["events"] == [], f"rank 1 wrote below the output directory: {ranks[1]['events'][:5]}"
    assert proc.stdout.count("ticket: iteration") == 1  # rank 1 prints nothing
    # The audit hook saw rank 0 write the results (so it would have seen rank 1 write too).
    renamed = {Path(e[2]).name for e in ranks[0]["events"] if e[0] == "os.rename"}
    assert {"ticket.pt", "imq_history.json", "state.pt"} <= renamed

    threads = torch.get_num_threads()
    try:
        assert build.main([*CLI_TRAIN, "--out", str(single_out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.relative_to(dist_out) for p in dist_out.rglob("*")) == sorted(
        p.relative_to(single_out) for p in single_out.rglob("*"))
    ticket_dist, meta_dist = load_checkpoint(dist_out / "ticket.pt")
    ticket_single, meta_single = load_checkpoint(single_out / "ticket.pt")
    assert_states_match(ticket_single.state_dict(), ticket_dist.state_dict())
    assert meta_dist["history"] == meta_single["history"]
    hist_dist = json.loads((dist_out / "imq_history.json").read_text())
    hist_single = json.loads((single_out / "imq_history.json").read_text())
    # Config, float baseline accuracy, per-iteration widths and accuracies, ticket: all identical.
    assert hist_dist == hist_single and len(hist_dist["history"]) == 2


@pytest.mark.parametrize("argv", [["train", "--method", "lts"], ["export"],
                                  ["report", "somewhere"]])
def test_cli_refuses_commands_that_are_not_data_parallel(argv, monkeypatch, capsys):
    import build

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)  # (what torchrun sets; no MASTER_ADDR: the refusal comes first)
    assert build.main(argv) == 2
    assert "does not run data-parallel" in capsys.readouterr().err
