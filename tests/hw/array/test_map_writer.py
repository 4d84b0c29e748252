# amaranth: UnusedElaboratable=no
"""The row assembler (an engine's pixels of a tile -> its output rows) and the map writer (the engines' rows ->
the feature maps, max-pooled or not, or the score memory), under back-pressure; the whole array is checked
against golden in ``test_top.py`` and ``bench fuzz``."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.array.feature_maps import FeatureMaps, read_signature
from hw.array.map_writer import MapWriter, RowAssembler, row_codes_of, row_layout, writer_layer_layout
from hw.array.patch_loader import DIM_BITS
from model.export.golden_conv import max_pool_codes
from tests.hw.stream_source import Source, pump, simulate

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


# --- MapWriter -----------------------------------------------------------------------------------------------

CHANNEL_BITS, MAP_ROWS = 4, 64
ROW_LEN = row_codes_of(PIXELS, ROW_CODES)  # codes of an assembled row: W_out up to 12 (a pooled map's 6 columns)


class WriterHarness(wiring.Component):
    """A MapWriter of ``engines`` row inputs writing real feature maps; ``rd`` reads them back."""

    def __init__(self, engines: int):
        self._engines = engines
        self._maps = FeatureMaps(rows=MAP_ROWS, row_codes=ROW_CODES)
        aw = self._maps.addr_width
        self._writer = MapWriter(engines=engines, channel_bits=CHANNEL_BITS, pixels=PIXELS, row_codes=ROW_CODES,
                                 addr_width=aw)
        members = {"rd": In(read_signature(aw, ROW_CODES)), "score_addr": In(CHANNEL_BITS),
                   "score_data": Out(32), "busy": Out(1), "par": Out(1), "wrote": Out(1),
                   "wrote_channel": Out(CHANNEL_BITS), "wrote_y": Out(DIM_BITS)}
        for e in range(engines):
            members[f"row{e}"] = In(stream.Signature(row_layout(CHANNEL_BITS, ROW_LEN)))
            members[f"layer{e}"] = In(writer_layer_layout(aw))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.maps = maps = self._maps
        m.submodules.writer = w = self._writer
        wiring.connect(m, w.fmap, maps.wr)
        wiring.connect(m, w.rmw, maps.rmw)
        wiring.connect(m, wiring.flipped(self.rd), maps.rd)
        m.d.comb += [maps.inp.en.eq(0), w.score_addr.eq(self.score_addr), self.score_data.eq(w.score_data),
                     self.busy.eq(w.busy), self.par.eq(w.par), self.wrote.eq(w.wrote),
                     self.wrote_channel.eq(w.wrote_channel), self.wrote_y.eq(w.wrote_y)]
        for e in range(self._engines):
            wiring.connect(m, wiring.flipped(getattr(self, f"row{e}")), getattr(w, f"row{e}"))
            m.d.comb += getattr(w, f"layer{e}").eq(getattr(self, f"layer{e}"))
        return m


def random_layer(rng, buf: int, par: int, pool: bool) -> dict:
    """A layer's output map ``[C, H_out, W_out]`` of random codes, cut into tiles of whole output rows (the
    controller's tiles: ``rows`` rows of ``W_out`` pixels, at most ``PIXELS`` pixels)."""
    w_out = int(rng.integers(2, ROW_LEN + 1)) if pool else int(rng.integers(1, ROW_CODES + 1))
    h_out = int(rng.integers(2 if pool else 1, 10))
    c = int(rng.integers(1, 5))
    rows = int(rng.integers(1, PIXELS // w_out + 1))
    fmap = rng.integers(0, 256, size=(c, h_out, w_out))
    fmap[0, 0] = 255  # the codes' largest
    stored = max_pool_codes(fmap[None])[0] if pool else fmap
    return {"buf": buf, "par": par, "pool": pool, "map": fmap, "stored": stored, "rows": rows,
            "fields": {"scores": 0, "buf": buf, "pool": int(pool), "height": stored.shape[1],
                       "width": stored.shape[2], "w_out": w_out, "par": par}}


def engine_rows(layer: dict, engines: list[int], rng) -> dict[int, list[dict]]:
    """Each engine's rows of ``layer`` in the array's order: tile by tile, its channels (channel ``c`` on
    ``engines[c % len(engines)]``) one after another, each channel's output rows in order. A row's codes past
    ``W_out`` are random (the assembler leaves stale codes there): the writer's mask must keep them out."""
    c, h_out, w_out = layer["map"].shape
    out = {e: [] for e in engines}
    for y in range(0, h_out, layer["rows"]):
        rows = min(layer["rows"], h_out - y)
        for ch in range(c):
            for r in range(rows):
                codes = [int(v) for v in layer["map"][ch, y + r]] + [int(v) for v in rng.integers(1, 256,
                                                                                                  ROW_LEN - w_out)]
                out[engines[ch % len(engines)]].append({
                    "channel": ch, "codes": codes, "score": 0, "tile": {"y": y, "rows": rows}, "r": r,
                    "last": int(r == rows - 1)})
    return out


def run_writer(engines: int, layers: list[tuple[dict, list[int]]], seed: int, p_gap: float = 0.4):
    """Offer every engine's rows with random gaps; return the buffers read back and the ``wrote`` pulses."""
    rng = np.random.default_rng(seed)
    dut = WriterHarness(engines)
    per_engine = {e: [] for e in range(engines)}
    fields = {}
    for layer, owners in layers:
        for e, rows in engine_rows(layer, owners, rng).items():
            per_engine[e] += rows
            fields[e] = layer["fields"]
    res = {"wrote": [], "maps": {}}

    async def bench(ctx):
        for e in range(engines):
            ctx.set(getattr(dut, f"layer{e}"), fields.get(e, layers[0][0]["fields"]))
        sources = [Source(getattr(dut, f"row{e}"), per_engine[e], rng, p_gap) for e in range(engines)]
        idle = 0
        for _ in range(20 * sum(len(r) for r in per_engine.values()) + 100):
            for src in sources:
                src.drive(ctx)
            sampled = await ctx.tick().sample(*(getattr(dut, f"row{e}").valid for e in range(engines)),
                                              *(getattr(dut, f"row{e}").ready for e in range(engines)),
                                              dut.wrote, dut.wrote_channel, dut.wrote_y, dut.par, dut.busy)
            valid, ready = sampled[2:2 + engines], sampled[2 + engines:2 + 2 * engines]
            wrote, channel, y, par, busy = sampled[2 + 2 * engines:]
            for src, v, r in zip(sources, valid, ready, strict=True):
                src.update(v, r)
            if wrote:
                res["wrote"].append((int(par), int(channel), int(y)))
            done = all(src.pos == len(src.items) for src in sources) and not busy
            idle = idle + 1 if done else 0
            if idle == 4:
                break
        else:
            raise AssertionError("the writer did not take every row")
        for layer, _ in layers:
            c, h, _ = layer["stored"].shape
            words = []
            for addr in range(c * h):
                ctx.set(dut.rd.buf, layer["buf"])
                ctx.set(dut.rd.addr, addr)
                ctx.set(dut.rd.en, 1)
                await ctx.tick()
                word = ctx.get(dut.rd.data)
                words.append([word >> (8 * x) & 0xFF for x in range(ROW_CODES)])
            res["maps"][layer["buf"]] = np.array(words).reshape(c, h, ROW_CODES)

    simulate(dut, bench)
    return res


def expected_wrote(layer: dict) -> list[tuple[int, int, int]]:
    """One pulse a channel's tile (with its last row's write), naming the layer's parity, the channel and the
    tile's first output row."""
    c, h_out, _ = layer["map"].shape
    return [(layer["par"], ch, y) for y in range(0, h_out, layer["rows"]) for ch in range(c)]


@pytest.mark.parametrize("engines, pool, seed", [(1, False, 0), (3, False, 1), (1, True, 2), (3, True, 3),
                                                 (2, True, 4), (3, False, 5)])
def test_writer_stores_and_pools_the_engines_rows(engines, pool, seed):
    """One layer's rows from ``engines`` engines, round robin under random gaps: the buffer holds the map (every
    column past ``W`` untouched, 0), max-pooled by golden's ``max_pool_codes`` (odd last rows and columns
    dropped, odd rows read-modify-written), and ``wrote`` pulses once a channel's tile."""
    rng = np.random.default_rng(seed)
    layer = random_layer(rng, buf=1 + seed % 2, par=seed % 2, pool=pool)
    res = run_writer(engines, [(layer, list(range(engines)))], seed)
    got = res["maps"][layer["buf"]]
    w = layer["stored"].shape[2]
    assert (got[:, :, :w] == layer["stored"]).all()
    assert (got[:, :, w:] == 0).all()
    assert sorted(res["wrote"]) == sorted(expected_wrote(layer))


@pytest.mark.parametrize("seed", range(3))
def test_writer_takes_two_layers_at_once(seed):
    """The early start: engine 0 writes the next layer (its own fields: another buffer, pool and width) while
    engines 1 and 2 still write the layer before; each map is whole and each ``wrote`` names its layer."""
    rng = np.random.default_rng(10 + seed)
    before = random_layer(rng, buf=1, par=0, pool=bool(seed % 2))
    after = random_layer(rng, buf=2, par=1, pool=not seed % 2)
    res = run_writer(3, [(before, [1, 2]), (after, [0])], 10 + seed, p_gap=0.3)
    for layer in (before, after):
        w = layer["stored"].shape[2]
        assert (res["maps"][layer["buf"]][:, :, :w] == layer["stored"]).all()
        assert (res["maps"][layer["buf"]][:, :, w:] == 0).all()
    assert sorted(res["wrote"]) == sorted(expected_wrote(before) + expected_wrote(after))


def test_writer_scores_go_to_the_score_memory():
    """A classifier's rows (``scores``): each channel's 32-bit score, of either sign, read back by class."""
    rng = np.random.default_rng(20)
    engines, n_classes = 3, 1 << CHANNEL_BITS
    scores = [int(v) for v in rng.integers(-(1 << 31), 1 << 31, size=n_classes)]
    scores[0], scores[1] = -(1 << 31), (1 << 31) - 1
    fields = {"scores": 1, "buf": 0, "pool": 0, "height": 1, "width": 1, "w_out": 1, "par": 0}
    per_engine = {e: [] for e in range(engines)}
    for ch, score in enumerate(scores):
        per_engine[ch % engines].append({"channel": ch, "codes": [0] * ROW_LEN, "score": score,
                                         "tile": {"y": 0, "rows": 1}, "r": 0, "last": 1})
    dut = WriterHarness(engines)
    got = []

    async def bench(ctx):
        for e in range(engines):
            ctx.set(getattr(dut, f"layer{e}"), fields)
        sources = [Source(getattr(dut, f"row{e}"), per_engine[e], rng, 0.5) for e in range(engines)]
        for _ in range(200):
            for src in sources:
                src.drive(ctx)
            sampled = await ctx.tick().sample(*(getattr(dut, f"row{e}").valid for e in range(engines)),
                                              *(getattr(dut, f"row{e}").ready for e in range(engines)))
            for e, src in enumerate(sources):
                src.update(sampled[2 + e], sampled[2 + engines + e])
            if all(src.pos == len(src.items) for src in sources):
                break
        for ch in range(n_classes):
            ctx.set(dut.score_addr, ch)
            await ctx.tick()
            got.append(ctx.get(dut.score_data))

    simulate(dut, bench)
    assert [v - (1 << 32) if v >= 1 << 31 else v for v in got] == scores
