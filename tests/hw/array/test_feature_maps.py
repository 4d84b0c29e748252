# amaranth: UnusedElaboratable=no
"""FeatureMaps: random reads, byte-masked writes and buffer 0's whole-word input writes against a Python model of
the three buffers, under the port contract of the module (``wr`` and ``rmw`` not both in a cycle, no ``rd`` read
in a cycle of an ``inp`` write): each read's row comes back the next cycle as the buffer stood before that cycle's
writes."""

import numpy as np
import pytest

from hw.array.feature_maps import FeatureMaps
from model.export.format import FMAP_BUFFERS
from tests.hw.stream_source import simulate

ROWS, CODES = 12, 5


def _word(codes) -> int:
    return sum(int(c) << (8 * x) for x, c in enumerate(codes))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reads_return_the_rows_written_before_them(seed):
    rng = np.random.default_rng(seed)
    dut = FeatureMaps(rows=ROWS, row_codes=CODES)
    model = np.zeros((FMAP_BUFFERS, ROWS, CODES), dtype=np.int64)
    seen = {"reads": 0, "same_buffer_rw": 0, "masked": 0, "inputs": 0, "input_and_wr": 0}

    async def bench(ctx):
        pending = []  # (port, expected row) read last cycle
        for _ in range(600):
            inputting = rng.random() < 0.2
            ops = {"rd": not inputting and rng.random() < 0.6}
            writing = rng.random() < 0.5
            ops["rmw"] = not writing and rng.random() < 0.6
            addrs = {name: int(rng.integers(0, ROWS)) for name in ("rd", "rmw", "wr", "inp")}
            bufs = {name: int(rng.integers(0, FMAP_BUFFERS)) for name in ("rd", "rmw", "wr")}
            codes = rng.integers(0, 256, size=CODES)
            mask = rng.integers(0, 2, size=CODES)
            for name in ("rd", "rmw"):
                port = getattr(dut, name)
                ctx.set(port.en, ops[name])
                ctx.set(port.buf, bufs[name])
                ctx.set(port.addr, addrs[name])
            ctx.set(dut.wr.en, writing)
            ctx.set(dut.wr.buf, bufs["wr"])
            ctx.set(dut.wr.addr, addrs["wr"])
            ctx.set(dut.wr.data, _word(codes))
            ctx.set(dut.wr.mask, sum(int(b) << x for x, b in enumerate(mask)))
            in_codes = rng.integers(0, 256, size=CODES)
            ctx.set(dut.inp.en, inputting)
            ctx.set(dut.inp.addr, addrs["inp"])
            ctx.set(dut.inp.data, _word(in_codes))
            for name, row in pending:
                assert ctx.get(getattr(dut, name).data) == _word(row), name
                seen["reads"] += 1
            pending = [(name, model[bufs[name], addrs[name]].copy()) for name in ("rd", "rmw") if ops[name]]
            if writing:
                seen["same_buffer_rw"] += ops["rd"] and bufs["wr"] == bufs["rd"]
                seen["masked"] += int(0 < mask.sum() < CODES)
                row = model[bufs["wr"], addrs["wr"]]
                row[mask == 1] = codes[mask == 1]
            if inputting:  # (a different row of buffer 0 than a write of wr's in the same cycle, in the array)
                if not (writing and bufs["wr"] == 0 and addrs["wr"] == addrs["inp"]):
                    model[0, addrs["inp"]] = in_codes
                    seen["inputs"] += 1
                    seen["input_and_wr"] += writing and bufs["wr"] == 0
                else:
                    ctx.set(dut.inp.en, 0)
            await ctx.tick()

    simulate(dut, bench)
    assert seen["reads"] > 350 and seen["same_buffer_rw"] > 30 and seen["masked"] > 100
    assert seen["inputs"] > 80 and seen["input_and_wr"] > 10
