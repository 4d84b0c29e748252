# amaranth: UnusedElaboratable=no
"""PatchLoader + FeatureMaps against golden's im2col (conv, every kernel, stride 1/2 and padding the loader
supports), torch.flatten order (flatten) and global_sum_pool (pooled)."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.array.feature_maps import FeatureMaps, write_signature
from hw.array.patch_loader import LoadMode, PatchLoader, geometry_layout, patch_write_signature
from model.export.golden_conv import global_sum_pool, im2col
from tests.hw.stream_source import simulate

ROWS, ROW_CODES, PIXELS, FAN_IN_WIDTH = 64, 8, 6, 9


class LoaderHarness(wiring.Component):
    def __init__(self):
        self._maps = FeatureMaps(rows=ROWS, row_codes=ROW_CODES)
        self._loader = PatchLoader(pixels=PIXELS, row_codes=ROW_CODES, addr_width=self._maps.addr_width,
                                   fan_in_width=FAN_IN_WIDTH)
        super().__init__({
            "geometry": In(geometry_layout(self._maps.addr_width)),
            "start": In(1),
            "done": Out(1),
            "wr": In(write_signature(self._maps.addr_width, ROW_CODES)),
            "patch": Out(patch_write_signature(FAN_IN_WIDTH, PIXELS)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.maps = maps = self._maps
        m.submodules.loader = ld = self._loader
        wiring.connect(m, ld.fmap, maps.rd)
        wiring.connect(m, wiring.flipped(self.wr), maps.wr)
        wiring.connect(m, ld.patch, wiring.flipped(self.patch))
        m.d.comb += [ld.geometry.eq(self.geometry), ld.start.eq(self.start), self.done.eq(ld.done),
                     maps.rmw.en.eq(0)]
        return m


def load_map(u):
    """The ``(address, word, byte mask)`` writes of map ``u [C, H, W]``, a row per word."""
    c, h, w = u.shape
    writes = []
    for ch in range(c):
        for y in range(h):
            word = sum(int(u[ch, y, x]) << (8 * x) for x in range(w))
            writes.append((ch * h + y, word, (1 << w) - 1))
    return writes


def run_loader(u, buf, geometry, fan_in):
    dut = LoaderHarness()
    got = {}
    res = {}

    async def bench(ctx):
        for addr, word, mask in load_map(u):
            ctx.set(dut.wr.buf, buf)
            ctx.set(dut.wr.addr, addr)
            ctx.set(dut.wr.data, word)
            ctx.set(dut.wr.mask, mask)
            ctx.set(dut.wr.en, 1)
            await ctx.tick()
        ctx.set(dut.wr.en, 0)
        ctx.set(dut.geometry, geometry)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(4 * fan_in * max(1, u.shape[1]) + 20):
            _, _, en, addr, data, done = await ctx.tick().sample(dut.patch.en, dut.patch.addr, dut.patch.data,
                                                                 dut.done)
            if en:
                assert int(addr) not in got, f"patch row {int(addr)} written twice"
                got[int(addr)] = [int(v) for v in data]
            if done:
                res["cycles"] = cycle + 1
                break
        else:
            raise AssertionError("no done")

    simulate(dut, bench)
    assert sorted(got) == list(range(fan_in))
    return np.array([got[p] for p in range(fan_in)]), res["cycles"]


def geometry(mode, buf, c, h, w, kh, kw, stride, pad, y, rows=1, w_out=1):
    return {"mode": mode, "buf": buf, "c_in": c, "height": h, "width": w, "kh": kh, "kw": kw, "stride": stride,
            "pad": pad, "y": y, "rows": rows, "w_out": w_out}


@pytest.mark.parametrize("seed", range(12))
def test_conv_patch_rows_match_im2col(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 4))
    while True:  # a geometry whose output rows fit a tile
        k = int(rng.choice([1, 3, 5, 7]))
        pad = int(rng.integers(0, k))
        stride = int(rng.integers(1, 3))
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, ROW_CODES + 1))
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if h + 2 * pad >= k and w + 2 * pad >= k and wo <= PIXELS and c * h <= ROWS:
            break
    u = rng.integers(0, 256, size=(c, h, w))
    buf = int(rng.integers(0, 3))
    want = im2col(u[None], k, stride, pad)[0]  # [ho, wo, c k k]
    y = int(rng.integers(0, ho))
    rows = int(rng.integers(1, min(PIXELS // wo, ho - y) + 1))  # a multi-row tile when the rows fit
    patch, cycles = run_loader(u, buf, geometry(LoadMode.CONV, buf, c, h, w, k, k, stride, pad, y, rows, wo),
                               c * k * k)
    for r in range(rows):
        assert (patch[:, r * wo:(r + 1) * wo] == want[y + r].T).all(), f"output row {y + r}"
    assert cycles == c * k * k * rows + 1  # one read a cycle, one cycle of latency


@pytest.mark.parametrize("seed", range(3))
def test_flatten_takes_torch_flatten_order(seed):
    rng = np.random.default_rng(10 + seed)
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, ROW_CODES + 1))
    u = rng.integers(0, 256, size=(c, h, w))
    patch, _ = run_loader(u, 1, geometry(LoadMode.FLATTEN, 1, c, h, w, h, w, 1, 0, 0), c * h * w)
    assert (patch[:, 0] == u.reshape(-1)).all()


@pytest.mark.parametrize("seed", range(3))
def test_pooled_sums_split_over_two_slots(seed):
    rng = np.random.default_rng(20 + seed)
    c, h, w = int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(1, ROW_CODES + 1))
    u = rng.integers(0, 256, size=(c, h, w))
    u[0] = 255  # the largest sum
    patch, cycles = run_loader(u, 2, geometry(LoadMode.POOLED, 2, c, h, w, 1, 1, 1, 0, 0), c)
    sums = global_sum_pool(u[None], 8)[0]
    assert (patch[:, 0] + 256 * patch[:, 1] == sums).all()
    assert cycles == c * h + 1
