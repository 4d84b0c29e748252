# amaranth: UnusedElaboratable=no
"""ScoreStreamer: scores written by (image, row) come out image by image with ``last``, under back-pressure."""

import numpy as np
import pytest

from hw.core.scores import ScoreStreamer
from tests.hw.stream_source import simulate

DEPTH = 8
INT32 = (-(1 << 31), (1 << 31) - 1)


def run_jobs(batch: int, jobs, seed: int, p_stall: float):
    """For each job (a count): write ``batch x count`` random scores in random order, then stream them out;
    return per job the expected scores, the (score, last) transfers and the done cycles."""
    rng = np.random.default_rng(seed)
    dut = ScoreStreamer(batch=batch, depth=DEPTH)
    results = []

    async def bench(ctx):
        for count in jobs:
            scores = rng.integers(*INT32, size=(batch, count), endpoint=True)
            scores[0, 0], scores[-1, -1] = INT32
            for img, row in rng.permutation([(k, r) for k in range(batch) for r in range(count)]):
                ctx.set(dut.write.img, int(img))
                ctx.set(dut.write.row, int(row))
                ctx.set(dut.write.data, int(scores[img, row]))
                ctx.set(dut.write.en, 1)
                await ctx.tick()
            ctx.set(dut.write.en, 0)
            ctx.set(dut.ctl.job.valid, 1)
            ctx.set(dut.ctl.job.payload.count, count)
            _, _, ready = await ctx.tick().sample(dut.ctl.job.ready)
            assert ready
            ctx.set(dut.ctl.job.valid, 0)
            got, dones, held = [], [], None
            for cycle in range(20 * batch * count + 20):
                ctx.set(dut.o.ready, rng.random() >= p_stall)
                _, _, valid, ready, out, done, job_ready = await ctx.tick().sample(
                    dut.o.valid, dut.o.ready, dut.o.payload, dut.ctl.done, dut.ctl.job.ready)
                if held is not None:
                    assert valid and out == held, "score changed or vanished before its transfer"
                held = out if valid and not ready else None
                if valid and ready:
                    got.append((int(out.score), int(out.last)))
                if done:
                    assert valid and ready, "done without the last transfer"
                    dones.append(len(got))
                    break
                assert not job_ready, "ready for a job while streaming"
            for _ in range(5):
                _, _, valid = await ctx.tick().sample(dut.o.valid)
                assert not valid, "a score after the job"
            results.append((scores, got, dones))

    simulate(dut, bench)
    return results


@pytest.mark.parametrize("batch, seed, p_stall", [(1, 0, 0.0), (2, 1, 0.5), (4, 2, 0.3), (16, 3, 0.6)])
def test_streamer_emits_image_major_with_last(batch, seed, p_stall):
    jobs = [3, DEPTH, 1, 5]
    for count, (scores, got, dones) in zip(jobs, run_jobs(batch, jobs, seed, p_stall)):
        assert got == [(int(scores[k, r]), int(r == count - 1)) for k in range(batch) for r in range(count)]
        assert dones == [batch * count]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 17, "depth": 4}, "batch must be in 1..16, not 17"),
    ({"batch": 1, "depth": 0}, "depth must be a power of two >= 2, not 0"),
])
def test_streamer_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ScoreStreamer(**kwargs)
