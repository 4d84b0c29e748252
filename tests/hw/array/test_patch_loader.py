# amaranth: UnusedElaboratable=no
"""PatchLoader + FeatureMaps against golden's im2col (conv, every kernel, stride 1/2 and padding the loader
supports), shortcut_a (a residual layer's shortcut rows), torch.flatten order (flatten) and global_sum_pool
(pooled)."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.array.feature_maps import FeatureMaps, write_signature
from hw.array.patch_loader import (
    DIM_BITS,
    LOADER_COLUMNS,
    LoadMode,
    PatchLoader,
    geometry_layout,
    patch_write_signature,
)
from model.export.golden_conv import global_sum_pool, im2col, shortcut_a
from tests.hw.stream_source import simulate

ROWS, ROW_CODES, PIXELS, FAN_IN_WIDTH = 64, 8, 6, 9


class LoaderHarness(wiring.Component):
    def __init__(self, columns, row_codes=ROW_CODES, pixels=PIXELS):
        self._maps = FeatureMaps(rows=ROWS, row_codes=row_codes)
        self._loader = PatchLoader(pixels=pixels, row_codes=row_codes, addr_width=self._maps.addr_width,
                                   fan_in_width=FAN_IN_WIDTH, columns=columns)
        super().__init__({
            "geometry": In(geometry_layout(self._maps.addr_width)),
            "start": In(1),
            "done": Out(1),
            "shortcut": Out(1),
            "channels": In(16, init=0xFFFF),
            "done_rows": In(DIM_BITS),
            "rows": In(self._maps.addr_width + 1, init=1 << self._maps.addr_width),
            "hold": In(1),
            "read_en": Out(1),
            "read_addr": Out(self._maps.addr_width),
            "wr": In(write_signature(self._maps.addr_width, row_codes)),
            "patch": Out(patch_write_signature(FAN_IN_WIDTH, pixels)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.maps = maps = self._maps
        m.submodules.loader = ld = self._loader
        wiring.connect(m, ld.fmap, maps.rd)
        wiring.connect(m, wiring.flipped(self.wr), maps.wr)
        wiring.connect(m, ld.patch, wiring.flipped(self.patch))
        m.d.comb += [ld.geometry.eq(self.geometry), ld.start.eq(self.start), self.done.eq(ld.done),
                     self.shortcut.eq(ld.shortcut), ld.channels.eq(self.channels), ld.done_rows.eq(self.done_rows),
                     ld.rows.eq(self.rows), ld.hold.eq(self.hold), self.read_en.eq(ld.fmap.en),
                     self.read_addr.eq(ld.fmap.addr), maps.rmw.en.eq(0)]
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


async def write_map(ctx, dut, u, buf):
    """Write map ``u`` into buffer ``buf`` through the harness's write port, a word a cycle."""
    for addr, word, mask in load_map(u):
        ctx.set(dut.wr.buf, buf)
        ctx.set(dut.wr.addr, addr)
        ctx.set(dut.wr.data, word)
        ctx.set(dut.wr.mask, mask)
        ctx.set(dut.wr.en, 1)
        await ctx.tick()
    ctx.set(dut.wr.en, 0)


def run_loader(u, buf, geometry, fan_in, columns=LOADER_COLUMNS, row_codes=ROW_CODES, pixels=PIXELS,
               shortcut=None):
    """Load one tile; ``(patch rows 0 .. fan_in - 1, cycles from start to done)``. ``shortcut`` (a map and
    its buffer) is written too: its rows are the patch rows after ``fan_in`` (``fan_in`` counts them)."""
    dut = LoaderHarness(columns, row_codes, pixels)
    got = {}
    res = {}
    flagged = set()  # rows written with `shortcut`

    async def bench(ctx):
        await write_map(ctx, dut, u, buf)
        if shortcut is not None:
            await write_map(ctx, dut, *shortcut)
        ctx.set(dut.geometry, geometry)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(4 * fan_in * max(1, u.shape[1]) + 20):
            _, _, en, addr, data, done, short = await ctx.tick().sample(dut.patch.en, dut.patch.addr,
                                                                        dut.patch.data, dut.done, dut.shortcut)
            if en:
                assert int(addr) not in got, f"patch row {int(addr)} written twice"
                got[int(addr)] = [int(v) for v in data]
                if short:
                    flagged.add(int(addr))
            if done:
                res["cycles"] = cycle + 1
                break
        else:
            raise AssertionError("no done")

    simulate(dut, bench)
    assert sorted(got) == list(range(fan_in))
    c_r = 0 if shortcut is None else shortcut[0].shape[0]
    assert flagged == set(range(fan_in - c_r, fan_in)), "the shortcut flag marks the shortcut rows alone"
    return np.array([got[p] for p in range(fan_in)]), res["cycles"]


def geometry(mode, buf, c, h, w, kh, kw, stride, pad, y, rows=1, w_out=1, res=None):
    """The loader's geometry; ``res`` = ``(buffer, channels, rows, stride)`` of a residual layer's shortcut."""
    sc = {"res": 0, "res_buf": 0, "res_c": 0, "res_h": 0, "res_stride": 1, "res_p": 0}
    if res is not None:
        sc = {"res": 1, "res_buf": res[0], "res_c": res[1], "res_h": res[2], "res_stride": res[3],
              "res_p": c * kh * kw}
    return {"mode": mode, "buf": buf, "c_in": c, "height": h, "width": w, "kh": kh, "kw": kw, "stride": stride,
            "pad": pad, "y": y, "rows": rows, "w_out": w_out, **sc}


def group_cycles(groups, rows):
    """Cycles from start to done for column groups of ``groups`` columns each, ``rows`` reads a group: a
    group's last read waits until the previous group's queue (its columns after the first) has drained by
    the time it is placed (two cycles after the read)."""
    t = rows - 1  # the first group's last read
    for previous in groups[:-1]:
        t += max(rows, previous)
    return t + groups[-1] + 2  # placed two cycles after its read: column 0, then the queue, one a cycle


def column_groups(channels, kh, kw, columns):
    per_row = [min(columns, kw - x0) for x0 in range(0, kw, columns)]
    return per_row * (channels * kh)


@pytest.mark.parametrize("seed", range(15))
def test_conv_patch_rows_match_im2col(seed):
    check_conv_tile(seed, ROW_CODES, PIXELS)


@pytest.mark.parametrize("seed", range(6))
def test_conv_patch_rows_with_odd_row_codes(seed):
    """An odd word width (a stride-2 word's halves differ in length: the even codes one more) and a tile wider
    than the word."""
    check_conv_tile(100 + seed, 7, 10)


def check_conv_tile(seed, row_codes, pixels):
    """A random conv geometry (kernel, padding, stride, map, multi-row tile), the loader's patch against
    im2col and its cycles against :func:`group_cycles`."""
    rng = np.random.default_rng(seed)
    columns = [LOADER_COLUMNS, 1, 2][seed % 3]
    c = int(rng.integers(1, 4))
    while True:  # a geometry whose output rows fit a tile
        k = int(rng.choice([1, 3, 5, 7]))
        pad = int(rng.integers(0, k))
        stride = int(rng.integers(1, 3))
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, row_codes + 1))
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if h + 2 * pad >= k and w + 2 * pad >= k and wo <= pixels and c * h <= ROWS:
            break
    u = rng.integers(0, 256, size=(c, h, w))
    buf = int(rng.integers(0, 3))
    want = im2col(u[None], k, stride, pad)[0]  # [ho, wo, c k k]
    y = int(rng.integers(0, ho))
    rows = int(rng.integers(1, min(pixels // wo, ho - y) + 1))  # a multi-row tile when the rows fit
    patch, cycles = run_loader(u, buf, geometry(LoadMode.CONV, buf, c, h, w, k, k, stride, pad, y, rows, wo),
                               c * k * k, columns, row_codes, pixels)
    for r in range(rows):
        assert (patch[:, r * wo:(r + 1) * wo] == want[y + r].T).all(), f"output row {y + r}"
    assert (patch[:, rows * wo:] == 0).all()  # slots past the tile's rows
    assert cycles == group_cycles(column_groups(c, k, k, columns), rows)


@pytest.mark.parametrize("seed", range(8))
def test_shortcut_rows_follow_the_im2col_rows(seed):
    """A residual layer's tile: besides its ``fan_in`` im2col rows (and first), one patch row per shortcut
    channel ``c`` (position ``fan_in + c``) holding the shortcut codes of the tile's pixels (golden's ``shortcut_a``: code
    ``(y s_r, x s_r)`` of the shortcut map's channel ``c``), at one read per output row."""
    rng = np.random.default_rng(300 + seed)
    stride = 1 + seed % 2
    c, k, pad = int(rng.integers(1, 3)), 3, 1
    h = w = int(rng.integers(3, PIXELS + 1)) if stride == 1 else 2 * int(rng.integers(2, ROW_CODES // 2 + 1))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    c_r = int(rng.integers(1, 4))
    u = rng.integers(0, 256, size=(c, h, w))
    x = rng.integers(0, 256, size=(c_r, h, w))  # the block input: the conv's input map's size
    buf, res_buf = [(0, 1), (2, 0), (1, 2)][seed % 3]
    y = int(rng.integers(0, ho))
    rows = int(rng.integers(1, min(PIXELS // wo, ho - y) + 1))
    fan_in = c * k * k
    geo = geometry(LoadMode.CONV, buf, c, h, w, k, k, stride, pad, y, rows, wo, res=(res_buf, c_r, h, stride))
    patch, cycles = run_loader(u, buf, geo, fan_in + c_r, shortcut=(x, res_buf))
    want = im2col(u[None], k, stride, pad)[0]
    short = shortcut_a(x[None], c_r, stride)[0]  # [c_r, ho, wo]
    for r in range(rows):
        assert (patch[:fan_in, r * wo:(r + 1) * wo] == want[y + r].T).all(), f"output row {y + r}"
        assert (patch[fan_in:, r * wo:(r + 1) * wo] == short[:, y + r, :wo]).all(), f"shortcut row {y + r}"
    assert (patch[:, rows * wo:] == 0).all()
    assert cycles == group_cycles([1] * c_r + column_groups(c, k, k, LOADER_COLUMNS), rows)


def test_the_channel_gate_holds_the_im2col_rows_not_the_shortcut_rows():
    """An overlapped layer's tile starts loading while the layer before still writes its input: with no input
    channel released, the shortcut rows (the block input, complete) load and nothing else; released, the rest."""
    rng = np.random.default_rng(7)
    c, h, w, c_r = 2, 4, 4, 3
    u = rng.integers(0, 256, size=(c, h, w))
    x = rng.integers(0, 256, size=(c_r, h, w))
    dut = LoaderHarness(LOADER_COLUMNS)
    geo = geometry(LoadMode.CONV, 0, c, h, w, 3, 3, 1, 1, 0, 1, w, res=(1, c_r, h, 1))
    held, got = [], {}

    async def bench(ctx):
        await write_map(ctx, dut, u, 0)
        await write_map(ctx, dut, x, 1)
        ctx.set(dut.channels, 0)
        ctx.set(dut.geometry, geo)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(200):
            if cycle == 100:
                ctx.set(dut.channels, 0xFFFF)
            _, _, en, addr, data, done = await ctx.tick().sample(dut.patch.en, dut.patch.addr, dut.patch.data,
                                                                 dut.done)
            if en:
                (held if cycle < 100 else []).append(int(addr))
                got[int(addr)] = [int(v) for v in data]
            if done:
                break

    simulate(dut, bench)
    assert held == [c * 9 + k for k in range(c_r)]
    assert sorted(got) == list(range(c * 9 + c_r))
    assert (np.array([got[c * 9 + k] for k in range(c_r)])[:, :w] == x[:, 0, :]).all()


def gated_load(u, geo, done_rows, release=200, before=None):
    """Load a tile with no input channel released until cycle ``release`` and ``done_rows`` given (``before``: the
    geometry the loader saw until the start); the patch rows and the cycles they were written in."""
    dut = LoaderHarness(LOADER_COLUMNS)
    got, when = {}, []

    async def bench(ctx):
        if before is not None:
            ctx.set(dut.geometry, before)
            ctx.set(dut.done_rows, done_rows)
        await write_map(ctx, dut, u, 0)
        ctx.set(dut.channels, 0)
        ctx.set(dut.done_rows, done_rows)
        ctx.set(dut.geometry, geo)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(2 * release):
            if cycle == release:
                ctx.set(dut.channels, 0xFFFF)
            _, _, en, addr, data, done = await ctx.tick().sample(dut.patch.en, dut.patch.addr, dut.patch.data,
                                                                 dut.done)
            if en:
                got[int(addr)] = [int(v) for v in data]
                when.append(cycle)
            if done:
                break

    simulate(dut, bench)
    return np.array([got[p] for p in sorted(got)]), when


@pytest.mark.parametrize("stride", [1, 2])
def test_the_row_gate_lets_a_tile_load_rows_written_in_every_channel(stride):
    """With no input channel released (the layer before still writes its last tile), a tile whose rows lie above
    ``done_rows`` (written in every channel) loads at once, the same patch as ungated; with ``done_rows`` at its
    last row it waits for the channels, and loads once they are released, even when the geometry before its
    start was a tile that ``done_rows`` lets through (the compare is stale in the cycles after a start)."""
    rng = np.random.default_rng(8 + stride)
    c, h, w = 3, 10, 5
    u = rng.integers(0, 256, size=(c, h, w))
    pad, rows = 1, 2
    last = (rows - 1) * stride + 3 - 1 - pad  # the last map row the tile (output rows 0 and 1) reads
    geo = geometry(LoadMode.CONV, 0, c, h, w, 3, 3, stride, pad, 0, rows, (w + 2 * pad - 3) // stride + 1)
    want, _ = run_loader(u, 0, geo, c * 9)
    early, when = gated_load(u, geo, last + 1)
    assert np.array_equal(early, want) and max(when) < 200
    late, when = gated_load(u, geo, last)
    assert np.array_equal(late, want) and min(when) >= 200
    first_row = geometry(LoadMode.CONV, 0, c, h, w, 3, 3, stride, pad, 0, 1, geo["w_out"])
    late, when = gated_load(u, geo, last, before=first_row)
    assert np.array_equal(late, want) and min(when) >= 200


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 1), (1, 0)])
def test_streamed_rows_and_held_cycles_gate_the_reads(stride, pad):
    """The input streaming in (``rows``: buffer 0's words written so far, one more every third cycle, then all)
    and buffer 0's port taken by an input row's write (``hold``, a third of the cycles at random): no read while
    held, none of a word at or past ``rows``, and the same patch as an ungated load (the array's streamed input,
    otherwise covered only end to end)."""
    rng = np.random.default_rng(30 + stride + pad)
    c, h, w = 2, 9, 6
    u = rng.integers(0, 256, size=(c, h, w))
    rows = 3
    geo = geometry(LoadMode.CONV, 0, c, h, w, 3, 3, stride, pad, 0, rows, (w + 2 * pad - 3) // stride + 1)
    want, _ = run_loader(u, 0, geo, c * 9)
    dut = LoaderHarness(LOADER_COLUMNS)
    got, reads = {}, []

    async def bench(ctx):
        await write_map(ctx, dut, u, 0)  # (the words are there; `rows` says how many the loader may read)
        ctx.set(dut.rows, 0)
        ctx.set(dut.geometry, geo)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        written = 0
        for cycle in range(2000):
            written = min(written + (cycle % 3 == 2), c * h)
            limit = written if written < c * h else 1 << dut.read_addr.shape().width
            hold = rng.random() < 1 / 3
            ctx.set(dut.rows, limit)
            ctx.set(dut.hold, hold)
            _, _, en, addr, p_en, p_addr, data, done = await ctx.tick().sample(
                dut.read_en, dut.read_addr, dut.patch.en, dut.patch.addr, dut.patch.data, dut.done)
            if en:
                assert not hold, f"a read at cycle {cycle} while held"
                assert addr < limit, f"word {addr} read at cycle {cycle} with {limit} written"
                reads.append(cycle)
            if p_en:
                got[int(p_addr)] = [int(v) for v in data]
            if done:
                break
        else:
            raise AssertionError("no done")

    simulate(dut, bench)
    assert sorted(got) == list(range(c * 9))
    assert np.array_equal(np.array([got[p] for p in range(c * 9)]), want)
    assert min(reads) > 3, "the first read did not wait for the rows"


def test_three_by_three_tile_reads_each_word_once():
    """A 3 x 3 tile of 6 one-pixel rows (the harness's 6 slots; ResNet-20's layer3 tile is 7 rows of 7 pixels):
    6 cycles per (c, ky), not 18 (one read per row and kernel column)."""
    rng = np.random.default_rng(99)
    c, h, w, k = 2, 7, 7, 3
    u = rng.integers(0, 256, size=(c, h, w))
    patch, cycles = run_loader(u, 0, geometry(LoadMode.CONV, 0, c, h, w, k, k, 1, 1, 0, 6, 1), c * k * k)
    want = im2col(u[None], k, 1, 1)[0]
    for r in range(6):
        assert (patch[:, r:r + 1] == want[r, :1].T).all()
    assert cycles == 6 * c * k + 2 + 2  # the last group's queued columns, the placement's latency


def run_restart(u, old, new, restart_after):
    """Start the loader on tile ``old`` of map ``u`` (buffer 0), restart it on ``new`` ``restart_after`` cycles
    later and run 200 cycles: the patch writes ``[(addr, codes)]`` and the cycles of ``done`` after the restart."""
    dut = LoaderHarness(LOADER_COLUMNS)
    writes, dones = [], []

    async def bench(ctx):
        await write_map(ctx, dut, u, 0)
        ctx.set(dut.geometry, old)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(restart_after):
            await ctx.tick()
        ctx.set(dut.geometry, new)
        ctx.set(dut.start, 1)
        for cycle in range(200):
            _, _, en, addr, data, done = await ctx.tick().sample(dut.patch.en, dut.patch.addr, dut.patch.data,
                                                                 dut.done)
            ctx.set(dut.start, 0)
            if en:
                writes.append((int(addr), [int(v) for v in data]))
            if done:
                dones.append(cycle)

    simulate(dut, bench)
    return writes, dones


@pytest.mark.parametrize("restart_after", [1, 2, 3, 7, 20])
def test_a_start_in_the_middle_of_a_tile_restarts_cleanly(restart_after):
    """A new run may start the loader while an old tile is in flight (after a fault): from the restart on,
    only the new tile's patch rows are written, each once, and ``done`` comes once, for the new tile."""
    rng = np.random.default_rng(restart_after)
    u = rng.integers(0, 256, size=(2, 6, 6))
    old = geometry(LoadMode.CONV, 0, 2, 6, 6, 3, 3, 1, 1, 0, 1, 6)  # one 6-pixel row: every read is a last read
    new = geometry(LoadMode.CONV, 0, 2, 6, 6, 3, 3, 1, 1, 2, 1, 6)
    writes, dones = run_restart(u, old, new, restart_after)
    got = {}
    for addr, data in writes:
        assert addr not in got, f"patch row {addr} written twice after the restart"
        got[addr] = data
    assert len(dones) == 1 and sorted(got) == list(range(18))
    want = im2col(u[None], 3, 1, 1)[0][2]  # output row 2: [6 pixels, 18 positions]
    assert (np.array([got[p] for p in range(18)])[:, :6] == want.T).all()


@pytest.mark.parametrize("restart_after", range(1, 13))
def test_a_restart_drops_a_multi_row_tiles_partial_rows(restart_after):
    """The old tile has three 2-pixel rows a patch row, so between its rows the placed columns hold slots
    0-3; the new tile has one row (slots 0-1): its patch rows must hold zeros in slots 2-5, whatever the old
    tile had placed when the restart came."""
    rng = np.random.default_rng(50 + restart_after)
    u = rng.integers(1, 256, size=(2, 6, 2))
    old = geometry(LoadMode.CONV, 0, 2, 6, 2, 3, 3, 1, 1, 0, 3, 2)
    new = geometry(LoadMode.CONV, 0, 2, 6, 2, 3, 3, 1, 1, 3, 1, 2)
    writes, dones = run_restart(u, old, new, restart_after)
    assert dones, "no done"
    got = dict(writes)
    patch = np.array([got[p] for p in range(18)])
    assert (patch[:, :2] == im2col(u[None], 3, 1, 1)[0][3].T).all()
    assert (patch[:, 2:] == 0).all()


@pytest.mark.parametrize("k,stride", [(5, 1), (5, 2), (7, 1)])
def test_groups_of_fewer_columns_write_their_queue_in_order(k, stride):
    """Kernels of 5 and 7 columns run groups of 3 and 2 (3, 3 and 1) columns: each group's queue is written
    from its first queued column on, whatever the group before left."""
    rng = np.random.default_rng(k + stride)
    c, h, w, pad = 2, 8, 2 if stride == 1 else 4, k // 2  # two-pixel rows: a multi-row tile
    u = rng.integers(1, 256, size=(c, h, w))
    wo = (w + 2 * pad - k) // stride + 1
    rows = min(PIXELS // wo, 2)
    patch, cycles = run_loader(u, 0, geometry(LoadMode.CONV, 0, c, h, w, k, k, stride, pad, 1, rows, wo),
                               c * k * k)
    want = im2col(u[None], k, stride, pad)[0]
    for r in range(rows):
        assert (patch[:, r * wo:(r + 1) * wo] == want[1 + r].T).all(), f"output row {1 + r}"
    assert cycles == group_cycles(column_groups(c, k, k, LOADER_COLUMNS), rows)


@pytest.mark.parametrize("seed", range(4))
def test_flatten_takes_torch_flatten_order(seed):
    rng = np.random.default_rng(10 + seed)
    columns = [LOADER_COLUMNS, 1, 2, 4][seed]
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, ROW_CODES + 1))
    u = rng.integers(0, 256, size=(c, h, w))
    patch, cycles = run_loader(u, 1, geometry(LoadMode.FLATTEN, 1, c, h, w, h, w, 1, 0, 0), c * h * w, columns)
    assert (patch[:, 0] == u.reshape(-1)).all()
    assert (patch[:, 1:] == 0).all()
    assert cycles == group_cycles(column_groups(c, h, w, columns), 1)


@pytest.mark.parametrize("seed", range(3))
def test_pooled_sums_split_over_two_slots(seed):
    rng = np.random.default_rng(20 + seed)
    c, h, w = int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(1, ROW_CODES + 1))
    u = rng.integers(0, 256, size=(c, h, w))
    u[0] = 255  # the largest sum
    patch, cycles = run_loader(u, 2, geometry(LoadMode.POOLED, 2, c, h, w, 1, 1, 1, 0, 0), c)
    sums = global_sum_pool(u[None], 8)[0]
    assert (patch[:, 0] + 256 * patch[:, 1] == sums).all()
    assert cycles == c * h + 2


@pytest.mark.parametrize("seed", range(2))
def test_pooled_sums_at_the_top_of_bound_9(seed):
    """Maps of 200 to 256 codes a channel (bound 9 allows ``H W <= 257`` at 8-bit codes: a sum below 2^16):
    channel 0 every code 255 (65,280 at 32 x 8), channel 1 random codes near it; the sums' upper slot reaches
    its top bits and both are exact."""
    rng = np.random.default_rng(30 + seed)
    h, w = (32, ROW_CODES) if seed == 0 else (int(rng.integers(25, 33)), ROW_CODES)
    u = rng.integers(200, 256, size=(2, h, w))
    u[0] = 255
    patch, cycles = run_loader(u, 0, geometry(LoadMode.POOLED, 0, 2, h, w, 1, 1, 1, 0, 0), 2)
    sums = global_sum_pool(u[None], 8)[0]
    assert sums[0] == 255 * h * w and sums.max() >= 1 << 15
    assert (patch[:, 0] + 256 * patch[:, 1] == sums).all()
    assert cycles == 2 * h + 2
