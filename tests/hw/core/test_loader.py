# amaranth: UnusedElaboratable=no
"""InputLoader: jobs of random sizes from a gappy stream; every write against the image-major model."""

import numpy as np
import pytest

from hw.core.loader import InputLoader
from tests.hw.stream_source import Source, simulate

DEPTH = 16


def run_jobs(batch: int, jobs, seed: int, p_gap: float, p_job_gap: float = 0.3):
    """Run ``jobs`` ((count, buf) pairs) one after another, with codes offered on ``i`` all the time (more
    than the jobs need); return per job the writes seen, the done cycles, and the codes taken."""
    rng = np.random.default_rng(seed)
    dut = InputLoader(batch=batch, depth=DEPTH)
    total = sum(count * batch for count, _ in jobs)
    codes = [int(x) for x in rng.integers(0, 256, size=total + 20)]
    results = []

    async def bench(ctx):
        src = Source(dut.i, codes, rng, p_gap)
        taken = 0
        for count, buf in jobs:
            while rng.random() < p_job_gap:  # idle between jobs: no code may be taken
                src.drive(ctx)
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                assert not ready, "i.ready while no job runs"
                src.update(False, False)
            ctx.set(dut.ctl.job.valid, 1)
            ctx.set(dut.ctl.job.payload.count, count)
            ctx.set(dut.ctl.job.payload.buf, buf)
            src.drive(ctx)
            _, _, ready, iv, ir = await ctx.tick().sample(dut.ctl.job.ready, dut.i.valid, dut.i.ready)
            assert ready, "the idle loader takes a job at once"
            assert not ir, "no code taken in the cycle a job is taken"
            src.update(iv, ir)
            ctx.set(dut.ctl.job.valid, 0)
            writes, dones = [], []
            for cycle in range(40 * count * batch + 20):
                src.drive(ctx)
                _, _, iv, ir, done, addr, wbuf, lanes, data, jr = await ctx.tick().sample(
                    dut.i.valid, dut.i.ready, dut.ctl.done, dut.write.addr, dut.write.buf, dut.write.lanes,
                    dut.write.data, dut.ctl.job.ready)
                src.update(iv, ir)
                if lanes:
                    assert iv and ir, "a write without a code"
                    writes.append((addr, wbuf, lanes, data))
                if done:
                    dones.append(len(writes))
                    break
                assert not jr, "ready for a job while busy"
            results.append({"writes": writes, "dones": dones, "codes": codes[taken:taken + count * batch]})
            taken = src.pos

    simulate(dut, bench)
    return results


@pytest.mark.parametrize("batch, seed, p_gap", [(1, 0, 0.0), (2, 1, 0.4), (4, 2, 0.2), (16, 3, 0.5)])
def test_loader_writes_image_major(batch, seed, p_gap):
    rng = np.random.default_rng(seed)
    jobs = [(int(rng.integers(1, DEPTH + 1)), int(rng.integers(0, 2))) for _ in range(4)] + [(DEPTH, 1), (1, 0)]
    for (count, buf), res in zip(jobs, run_jobs(batch, jobs, seed, p_gap)):
        # Image k, code r -> lane k of word r of buffer `buf`; done with the last write, once.
        want = [(r, buf, 1 << k, res["codes"][k * count + r]) for k in range(batch) for r in range(count)]
        assert res["writes"] == want
        assert res["dones"] == [len(want)]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0, "depth": 4}, "batch must be in 1..16, not 0"),
    ({"batch": 2, "depth": 3}, "depth must be a power of two >= 2, not 3"),
])
def test_loader_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        InputLoader(**kwargs)
