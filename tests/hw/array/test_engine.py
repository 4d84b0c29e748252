# amaranth: UnusedElaboratable=no
"""ChannelEngine against golden (class sums, combine, requantize / requantize_residual) on random rows and
patches, every weight mode, activation width, residual and global-pool mode, under back-pressure."""

from types import SimpleNamespace

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out

from hw.array.engine import LANE_SLOTS, ChannelEngine, engine_layer_layout, output_layout, row_command_layout
from hw.array.requant import ACT_SUM_BOUND
from hw.core.global_buffer import GlobalBuffer
from model.export.golden import class_sums, combine, requantize
from model.export.golden_conv import requantize_residual
from model.export.weight_stream import encode_layer, pos_bits
from tests.hw.core.test_stream_decoder import place, random_layer
from tests.hw.stream_source import Source, simulate

ADDR_WIDTH = 10
FAN_IN_WIDTH = 7
CHANNEL_BITS = 4


class EngineHarness(wiring.Component):
    """The engine with its global buffer (the weight stream) and a patch memory (the tile's codes)."""

    def __init__(self, lanes, words, patch, fan_in_width=FAN_IN_WIDTH, addr_width=ADDR_WIDTH):
        self._engine = ChannelEngine(lanes=lanes, addr_width=addr_width, fan_in_width=fan_in_width,
                                     channel_bits=CHANNEL_BITS)
        self._faw, self._aw = fan_in_width, addr_width
        t = self._engine.pixels
        self._words = [int(w) for w in words]
        self._patch = [sum(int(code) << (8 * i) for i, code in enumerate(row)) for row in patch]
        super().__init__({
            "layer": In(engine_layer_layout()),
            "cmd": In(stream.Signature(row_command_layout(addr_width, CHANNEL_BITS, t))),
            "o": Out(stream.Signature(output_layout(CHANNEL_BITS, t))),
            "error": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        eng = self._engine
        t = eng.pixels
        m.submodules.engine = eng
        m.submodules.buffer = buf = GlobalBuffer(MemoryData(shape=32, depth=1 << self._aw, init=self._words),
                                                 ports=[["eng"]])
        m.submodules.patch = patch = Memory(shape=8 * t, depth=1 << self._faw, init=self._patch)
        port = patch.read_port()
        wiring.connect(m, buf.eng, eng.bus)
        m.d.comb += [port.addr.eq(eng.patch_addr), port.en.eq(eng.patch_en), eng.patch_data.as_value().eq(port.data),
                     eng.layer.eq(self.layer), self.error.eq(eng.error), self.busy.eq(eng.busy)]
        wiring.connect(m, cmd=wiring.flipped(self.cmd), eng=eng.cmd)
        wiring.connect(m, eng=eng.o, out=wiring.flipped(self.o))
        return m


def golden_outputs(codes, widths, u, signed, mult, bias, res_mult, r, shift, out_bits, residual):
    """``[pixels, rows]`` of golden: class sums of each row over the pixels' inputs ``u [pixels, fan_in]``."""
    sums, acts = class_sums(SimpleNamespace(codes=codes, widths=widths), u)
    acc = combine(sums, acts, signed)  # [pixels, rows]
    if residual:
        out = requantize_residual(acc.T[None, :, :, None], r.T[None, :, :, None], mult, res_mult, bias, shift,
                                  out_bits)
        return out[0, :, :, 0].T
    return requantize(acc, mult, bias, shift, out_bits)


def run_engine(seed, lanes, gap=False, p_gap=0.3, p_stall=0.3):
    rng = np.random.default_rng(seed)
    t = lanes * LANE_SLOTS
    rows = int(rng.integers(1, 1 << CHANNEL_BITS))
    fan_in = int(rng.integers(1, 40))
    codes, widths = random_layer(rng, rows, fan_in)
    signed = bool(rng.integers(0, 2))
    residual = bool(rng.integers(0, 2)) and not gap
    out_bits = int(rng.integers(1, 9)) if residual or rng.random() < 0.7 else 0
    shift = int(rng.integers(1, 50))
    mult = rng.integers(0, 1 << 17, size=rows)
    bias = rng.integers(-(1 << 40), 1 << 40, size=rows)
    res_mult = rng.integers(0, 1 << 17, size=rows) if residual else np.zeros(rows, dtype=np.int64)
    if gap:
        act_bits, pixels = 8, 1
        top = min((1 << 16) - 1, ACT_SUM_BOUND // fan_in)
        v = rng.integers(0, top + 1, size=fan_in)
        v[rng.random(fan_in) < 0.2] = top
        u = v[None, :]
        patch = np.zeros((fan_in, t), dtype=np.int64)
        patch[:, 0], patch[:, 1] = v & 0xFF, v >> 8
        r = np.zeros((1, rows), dtype=np.int64)
    else:
        act_bits = int(rng.integers(1, 9))
        pixels = int(rng.integers(1, t + 1))
        patch = rng.integers(0, 1 << act_bits, size=(fan_in, t))
        patch[rng.random(patch.shape) < 0.1] = (1 << act_bits) - 1
        u = patch[:, :pixels].T
        r = rng.integers(0, 256, size=(pixels, rows)) if residual else np.zeros((pixels, rows), dtype=np.int64)
    want = golden_outputs(codes, widths, u, signed, mult, bias, res_mult, r, shift, out_bits, residual)

    enc = encode_layer(codes, widths)
    words, base = place(rng, enc.words)
    order = list(rng.permutation(rows))
    cmds = []
    for j in order:
        rr = np.zeros(t, dtype=np.int64)
        rr[:r.shape[0]] = r[:, j]
        cmds.append({"start_bit": 32 * base + int(enc.row_ptr[j]), "channel": int(j), "pixels": pixels,
                     "mult": int(mult[j]), "res_mult": int(res_mult[j]), "bias": int(bias[j]) & ((1 << 64) - 1),
                     "r": [int(x) for x in rr]})
    layer = {"stream": {"fan_in": fan_in, "classes": enc.classes, "pos_bits": pos_bits(fan_in),
                        "count_bits": list(enc.count_bits), "rice_k": list(enc.rice_k)},
             "act_bits": act_bits, "signed": int(signed), "residual": int(residual), "gap": int(gap),
             "shift": shift, "out_bits": out_bits}
    dut = EngineHarness(lanes, words, patch.tolist() + [[0] * t] * ((1 << FAN_IN_WIDTH) - fan_in))
    n_out = rows * (1 if gap else pixels)
    got = {}
    res = {"cycles": 0}

    async def bench(ctx):
        ctx.set(dut.layer, layer)
        src = Source(dut.cmd, cmds, rng, p_gap)
        held = None
        for cycle in range(400 + 60 * n_out + 30 * fan_in * rows):
            if len(got) == n_out and not ctx.get(dut.busy):
                break
            src.drive(ctx)
            ctx.set(dut.o.ready, rng.random() >= p_stall)
            _, _, cv, cr, ov, orr, out, err = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.ready, dut.o.valid, dut.o.ready, dut.o.payload, dut.error)
            assert not err, "the decoder flagged a good stream"
            src.update(cv, cr)
            if held is not None:
                assert ov and out == held, "output changed or vanished before its transfer"
            held = out if ov and not orr else None
            if ov and orr:
                key = (int(out.channel), int(out.pixel))
                assert key not in got, f"output {key} twice"
                got[key] = int(out.value)
            res["cycles"] = cycle
        assert len(got) == n_out, f"stalled after {len(got)} of {n_out} outputs"
        assert not ctx.get(dut.busy), "busy after the last output"

    simulate(dut, bench)
    bad = [((j, i), got[(j, i)], int(want[i, j])) for j in range(rows) for i in range(1 if gap else pixels)
           if got[(j, i)] != int(want[i, j])]
    assert not bad, f"{len(bad)} of {n_out} outputs differ ((channel, pixel), got, want): {bad[:8]}"
    return res


@pytest.mark.parametrize("seed", range(10))
def test_rows_match_golden(seed):
    run_engine(seed, lanes=1 + seed % 3)


@pytest.mark.parametrize("seed", range(4))
def test_pooled_fc_matches_golden(seed):
    run_engine(100 + seed, lanes=1 + seed % 2, gap=True)


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="lanes"):
        ChannelEngine(lanes=0, addr_width=8, fan_in_width=4, channel_bits=2)


def test_dense_four_bit_rows_run_near_one_entry_a_cycle():
    """Back to back rows of 4-bit weights at 4-bit activations: one entry a cycle, plus the decoder's row start
    (about 8 cycles a row: its 6 cycles from a command to the first entry, measured 1,302 cycles here)."""
    rng = np.random.default_rng(5)
    rows, fan_in, lanes = 12, 100, 2
    t = lanes * LANE_SLOTS
    widths = np.full((rows, fan_in), 4)
    codes = rng.integers(0, 16, size=(rows, fan_in))
    patch = rng.integers(0, 16, size=(fan_in, t))
    want = golden_outputs(codes, widths, patch.T, False, np.full(rows, 1000), np.zeros(rows, dtype=np.int64),
                          None, None, 20, 4, False)
    enc = encode_layer(codes, widths)
    words, base = place(rng, enc.words)
    cmds = [{"start_bit": 32 * base + int(enc.row_ptr[j]), "channel": j, "pixels": t, "mult": 1000,
             "res_mult": 0, "bias": 0, "r": [0] * t} for j in range(rows)]
    layer = {"stream": {"fan_in": fan_in, "classes": enc.classes, "pos_bits": pos_bits(fan_in),
                        "count_bits": list(enc.count_bits), "rice_k": list(enc.rice_k)},
             "act_bits": 4, "signed": 0, "residual": 0, "gap": 0, "shift": 20, "out_bits": 4}
    dut = EngineHarness(lanes, words, patch.tolist() + [[0] * t] * ((1 << FAN_IN_WIDTH) - fan_in))
    got, first = {}, None

    async def bench(ctx):
        nonlocal first
        ctx.set(dut.layer, layer)
        src = Source(dut.cmd, cmds, rng, 0.0)
        ctx.set(dut.o.ready, 1)
        for cycle in range(5000):
            src.drive(ctx)
            _, _, cv, cr, ov, out = await ctx.tick().sample(dut.cmd.valid, dut.cmd.ready, dut.o.valid, dut.o.payload)
            src.update(cv, cr)
            if ov:
                got[(int(out.channel), int(out.pixel))] = (int(out.value), cycle)
            if len(got) == rows * t:
                break

    simulate(dut, bench)
    assert all(got[(j, i)][0] == want[i, j] for j in range(rows) for i in range(t))
    last = max(c for _, c in got.values())
    assert last <= rows * (fan_in + 9) + 40, f"{last} cycles for {rows} rows of {fan_in} entries"


@pytest.mark.parametrize("width,act_bits", [(8, 4), (4, 4), (16, 4), (32, 8)])
def test_long_rows_at_their_largest_codes(width, act_bits):
    """Rows of 600 weights of one width with every code and input at its largest, and a few random ones: an
    8-bit pair pass holds 274 entries (``pass_capacity``), so the sequencer cuts these rows' segments into
    sub-passes; the others run whole (4-bit pairs up to 4,660; single passes of any length, replayed)."""
    rng = np.random.default_rng(width + act_bits)
    rows, fan_in, lanes, faw, aw = 3, 600, 2, 10, 14
    t = lanes * LANE_SLOTS
    widths = np.full((rows, fan_in), width)
    codes = np.full((rows, fan_in), (1 << width) - 1, dtype=np.int64)
    codes[1] = rng.integers(0, 1 << width, size=fan_in, dtype=np.uint64).astype(np.int64) if width < 32 else \
        rng.integers(0, 1 << 31, size=fan_in)
    widths[2, ::3] = 0
    codes[2, ::3] = 0
    patch = np.full((fan_in, t), (1 << act_bits) - 1)
    patch[:, 1] = rng.integers(0, 1 << act_bits, size=fan_in)
    mult = np.full(rows, 1)
    want = golden_outputs(codes, widths, patch.T, False, mult, np.zeros(rows, dtype=np.int64), None, None, 1, 0,
                          False)
    enc = encode_layer(codes, widths)
    words, base = place(rng, enc.words, size=1 << aw)
    cmds = [{"start_bit": 32 * base + int(enc.row_ptr[j]), "channel": j, "pixels": t, "mult": 1,
             "res_mult": 0, "bias": 0, "r": [0] * t} for j in range(rows)]
    layer = {"stream": {"fan_in": fan_in, "classes": enc.classes, "pos_bits": pos_bits(fan_in),
                        "count_bits": list(enc.count_bits), "rice_k": list(enc.rice_k)},
             "act_bits": act_bits, "signed": 0, "residual": 0, "gap": 0, "shift": 1, "out_bits": 0}
    dut = EngineHarness(lanes, words, patch.tolist() + [[0] * t] * ((1 << faw) - fan_in), fan_in_width=faw,
                        addr_width=aw)
    got = {}

    async def bench(ctx):
        ctx.set(dut.layer, layer)
        src = Source(dut.cmd, cmds, rng, 0.2)
        for _ in range(30 * rows * fan_in):
            if len(got) == rows * t:
                break
            src.drive(ctx)
            ctx.set(dut.o.ready, rng.random() >= 0.3)
            _, _, cv, cr, ov, orr, out = await ctx.tick().sample(dut.cmd.valid, dut.cmd.ready, dut.o.valid,
                                                                dut.o.ready, dut.o.payload)
            src.update(cv, cr)
            if ov and orr:
                got[(int(out.channel), int(out.pixel))] = int(out.value)

    simulate(dut, bench)
    assert len(got) == rows * t, f"stalled after {len(got)} of {rows * t} outputs"
    bad = [(key, got[key], int(want[key[1], key[0]])) for key in sorted(got) if got[key] != want[key[1], key[0]]]
    assert not bad, f"differ ((channel, pixel), got, want): {bad[:8]}"
