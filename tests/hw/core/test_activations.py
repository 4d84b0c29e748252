# amaranth: UnusedElaboratable=no
"""ActivationBank against a Python model of two buffers of lanes: random reads and writes on all ports."""

import numpy as np
import pytest

from hw.core.activations import ActivationBank
from tests.hw.stream_source import simulate

DEPTH = 16


def run_random(batch: int, seed: int, cycles: int = 400):
    assert ActivationBank.latency == 1  # the model below reads one cycle after `en`
    rng = np.random.default_rng(seed)
    dut = ActivationBank(batch=batch, depth=DEPTH)
    model = np.zeros((2, DEPTH, batch), dtype=np.int64)  # buffers start cleared (init=[])
    log = {"reads": 0, "both": 0}

    def lanes():
        kind = rng.integers(0, 4)
        if kind == 0:
            return 0
        if kind == 1:
            return 1 << int(rng.integers(0, batch))
        return int(rng.integers(0, 1 << batch))  # several lanes at once

    async def bench(ctx):
        expected = None
        for _ in range(cycles):
            writes = {}
            for name in ("write", "load"):
                port = getattr(dut, name)
                writes[name] = addr, buf, en, value = (int(rng.integers(0, DEPTH)), int(rng.integers(0, 2)),
                                                       lanes(), int(rng.integers(0, 256)))
                ctx.set(port.addr, addr)
                ctx.set(port.buf, buf)
                ctx.set(port.lanes, en)
                ctx.set(port.data, value)
            read_en = bool(rng.random() < 0.7)
            read_addr, read_buf = int(rng.integers(0, DEPTH)), int(rng.integers(0, 2))
            ctx.set(dut.read.en, read_en)
            ctx.set(dut.read.addr, read_addr)
            ctx.set(dut.read.buf, read_buf)
            await ctx.tick()
            # The read sees the words as they were before this cycle's writes, and holds while disabled.
            if read_en:
                expected = model[read_buf, read_addr].copy()
            if expected is not None:
                assert [int(x) for x in ctx.get(dut.read.data)] == expected.tolist(), "read data"
                log["reads"] += 1
            # A `write` to the buffer that `load` writes this cycle is dropped: that buffer's port is the load's.
            load, write = writes["load"], writes["write"]
            if load[2] and write[2] and load[1] == write[1]:
                log["both"] += 1
            for name, (addr, buf, en, value) in writes.items():
                if name == "write" and load[2] and load[1] == buf:
                    continue
                for k in range(batch):
                    if en >> k & 1:
                        model[buf, addr, k] = value

    simulate(dut, bench)
    return log


@pytest.mark.parametrize("batch, seed", [(1, 0), (2, 1), (4, 2), (3, 3)])
def test_bank_matches_model(batch, seed):
    log = run_random(batch, seed)
    assert log["reads"] > 300 and log["both"] > 10


def test_bank_holds_read_data_while_disabled():
    dut = ActivationBank(batch=2, depth=4)

    async def bench(ctx):
        ctx.set(dut.load.lanes, 0b11)
        ctx.set(dut.load.buf, 1)
        ctx.set(dut.load.addr, 2)
        ctx.set(dut.load.data, 77)
        await ctx.tick()
        ctx.set(dut.load.lanes, 0)
        ctx.set(dut.read.addr, 2)
        ctx.set(dut.read.buf, 1)
        ctx.set(dut.read.en, 1)
        await ctx.tick()
        assert [int(x) for x in ctx.get(dut.read.data)] == [77, 77]
        ctx.set(dut.read.en, 0)
        ctx.set(dut.read.addr, 0)
        ctx.set(dut.read.buf, 0)  # neither the address nor the buffer select changes the held word
        for _ in range(3):
            await ctx.tick()
            assert [int(x) for x in ctx.get(dut.read.data)] == [77, 77]

    simulate(dut, bench)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0, "depth": 4}, "batch must be in 1..16, not 0"),
    ({"batch": 17, "depth": 4}, "batch must be in 1..16, not 17"),
    ({"batch": 2, "depth": 12}, "depth must be a power of two >= 2, not 12"),
    ({"batch": 2, "depth": 1}, "depth must be a power of two >= 2, not 1"),
])
def test_bank_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ActivationBank(**kwargs)
