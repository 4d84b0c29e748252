# amaranth: UnusedElaboratable=no
"""The row assembler: an engine's pixels of a tile -> its output rows, under back-pressure (the writer and the
whole array are checked against golden in ``test_top.py`` and ``bench fuzz``)."""

import numpy as np
import pytest

from hw.array.map_writer import RowAssembler, row_codes_of
from tests.hw.stream_source import pump, simulate

PIXELS, ROW_CODES = 12, 6


def tiles(rng, w_out, n):
    """``n`` tiles of whole output rows (as the controller makes them); each pixel as the engine emits it."""
    items, rows_out = [], []
    for k in range(n):
        rows = int(rng.integers(1, PIXELS // w_out + 1))
        channel, y = int(rng.integers(0, 8)), int(rng.integers(0, 20))
        codes = rng.integers(0, 256, size=rows * w_out)
        for i, code in enumerate(codes):
            items.append({"value": int(code), "channel": channel, "pixel": i, "last": int(i == len(codes) - 1),
                          "tile": {"y": y, "rows": rows}})
        rows_out += [(channel, y, r, int(r == rows - 1), [int(c) for c in codes[r * w_out:(r + 1) * w_out]])
                     for r in range(rows)]
    return items, rows_out


def run(items, n_out, w_out, seed, p_gap=0.3, p_stall=0.4):
    dut = RowAssembler(channel_bits=3, pixels=PIXELS, row_codes=ROW_CODES)
    rng = np.random.default_rng(seed)
    res = {}

    async def bench(ctx):
        ctx.set(dut.w_out, w_out)
        got, _, _ = await pump(ctx, dut, items, n_out, rng, p_gap, p_stall,
                               lambda o: (int(o.channel), int(o.tile.y), int(o.r), int(o.last),
                                          [int(o.codes[x]) for x in range(w_out)]))
        res["got"] = got

    simulate(dut, bench)
    return res["got"]


@pytest.mark.parametrize("w_out", [1, 3, 4, 5, 12])
def test_rows_of_back_to_back_tiles(w_out):
    assert row_codes_of(PIXELS, ROW_CODES) == PIXELS  # W_out up to the tile here
    rng = np.random.default_rng(w_out)
    items, want = tiles(rng, w_out, 6)
    assert run(items, len(want), w_out, seed=w_out) == want


def test_a_tile_left_in_the_middle_does_not_shift_the_next():
    """A run that stopped inside a tile (its last pixel never came): the next tile's pixel 0 starts row 0."""
    rng = np.random.default_rng(5)
    items, want = tiles(rng, 4, 2)
    cut = [dict(it, last=0) for it in items[:6]]  # a tile's first 6 pixels: one row of 4 closes, 2 wait
    got = run(cut + items, 1 + len(want), 4, seed=5)
    assert got[0][2:4] == (0, 0) and got[1:] == want
