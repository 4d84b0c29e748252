# amaranth: UnusedElaboratable=no
"""WeightDecoder against an independent encoder of docs/image_format.md and a token model of the decoder."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.hdl import ResetInserter
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core.weight_decoder import WeightDecoder, token_layout
from tests.hw.stream_source import Source, simulate

INDEX_WIDTH = 6  # n_in <= 45 -> input indices <= 49, words_per_row <= 5, rows <= 6
WIDTHS = (0, 4, 8, 16, 32)  # mask code = position in this tuple (docs/image_format.md)


class DecoderHarness(wiring.Component):
    """The decoder with a synchronous reset the testbench pulses between layers (as the accelerator does)."""

    rst: In(1)
    words_per_row: In(INDEX_WIDTH)
    rows: In(INDEX_WIDTH)
    mask: In(stream.Signature(32))
    payload: In(stream.Signature(32))
    o: Out(stream.Signature(token_layout(INDEX_WIDTH)))
    error: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = ResetInserter(self.rst)(WeightDecoder(index_width=INDEX_WIDTH))
        m.d.comb += [dec.words_per_row.eq(self.words_per_row), dec.rows.eq(self.rows), self.error.eq(dec.error)]
        wiring.connect(m, mask=wiring.flipped(self.mask), dec=dec.mask)
        wiring.connect(m, payload=wiring.flipped(self.payload), dec=dec.payload)
        wiring.connect(m, dec=dec.o, out=wiring.flipped(self.o))
        return m


# -- Independent reference, written from docs/image_format.md ---------------------------------------------

def encode(widths: np.ndarray, codes: np.ndarray) -> tuple[list[int], list[int]]:
    """Mask words (ten 3-bit codes a word, rows word aligned) and payload words (LSB-first bit stream)."""
    n_out, n_in = widths.shape
    per_row = -(-n_in // 10)
    mask = []
    for j in range(n_out):
        for w in range(per_row):
            word = 0
            for p in range(10):
                i = 10 * w + p
                if i < n_in:
                    word |= WIDTHS.index(int(widths[j, i])) << (3 * p)
            mask.append(word)
    stream_bits, n_bits = 0, 0
    for j in range(n_out):
        for i in range(n_in):
            if widths[j, i]:
                stream_bits |= int(codes[j, i]) << n_bits
                n_bits += int(widths[j, i])
    payload = [(stream_bits >> (32 * k)) & 0xFFFFFFFF for k in range(-(-n_bits // 32))]
    return mask, payload


def expected_tokens(widths: np.ndarray, codes: np.ndarray) -> list[tuple]:
    """(index, code, q, row_end) per non-zero weight; an all-pruned last mask word of a row gives one empty
    row-end token (code 0, q 0) after the weights of the row's earlier words. Empty tokens carry index None:
    their index is not part of the contract."""
    n_out, n_in = widths.shape
    per_row = -(-n_in // 10)
    out = []
    for j in range(n_out):
        for w in range(per_row):
            nz = [i for i in range(10 * w, min(10 * w + 10, n_in)) if widths[j, i]]
            last = w == per_row - 1
            out += [(i, WIDTHS.index(int(widths[j, i])), int(codes[j, i]), int(last and i == nz[-1]))
                    for i in nz]
            if last and not nz:
                out.append((None, 0, 0, 1))
    return out


def random_layer(rng: np.random.Generator, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of several kinds: mixed widths, all pruned, all 32-bit, sparse (empty words), single width."""
    widths = np.zeros((n_out, n_in), dtype=np.int64)
    for j in range(n_out):
        kind = rng.integers(0, 6)
        if kind == 0:
            widths[j] = rng.choice(WIDTHS, size=n_in)
        elif kind == 1:
            pass  # all pruned
        elif kind == 2:
            widths[j] = 32
        elif kind == 3:
            widths[j] = rng.choice(WIDTHS, size=n_in, p=(0.9, 0.025, 0.025, 0.025, 0.025))
        elif kind == 4:
            widths[j] = rng.choice(WIDTHS[1:])
        else:
            widths[j] = rng.choice(WIDTHS, size=n_in, p=(0.5, 0.2, 0.1, 0.1, 0.1))
    top = np.array([(1 << int(w)) - 1 for w in widths.ravel()], dtype=np.uint64).reshape(widths.shape)
    pick = rng.integers(0, 3, size=widths.shape)  # 0, the largest code, or uniform in between
    uniform = (rng.random(widths.shape) * (top.astype(np.float64) + 1)).astype(np.uint64)
    codes = np.where(pick == 0, 0, np.where(pick == 1, top, np.minimum(uniform, top)))
    return widths, codes.astype(np.uint64)


# -- Cycle-by-cycle driver ------------------------------------------------------------------------------



def run_layers(layers, seed, p_gap, p_stall, extra_words=6, tail=30):
    """Decode several layers in one simulation (reset between them); return per layer the tokens, the
    numbers of mask and payload words taken, and the cycles at which tokens left."""
    rng = np.random.default_rng(seed)
    dut = DecoderHarness()
    results = []

    async def bench(ctx):
        for widths, codes in layers:
            mask, payload = encode(widths, codes)
            n_tokens = len(expected_tokens(widths, codes))
            # Words past the layer's regions, as the prefetchers deliver them: they must produce nothing.
            extra = [int(x) for x in rng.integers(1, 1 << 30, size=extra_words)]
            ctx.set(dut.rst, 1)
            ctx.set(dut.mask.valid, 0)
            ctx.set(dut.payload.valid, 0)
            await ctx.tick()
            ctx.set(dut.rst, 0)
            ctx.set(dut.words_per_row, -(-widths.shape[1] // 10))
            ctx.set(dut.rows, widths.shape[0])
            src_mask = Source(dut.mask, mask + extra, rng, p_gap)
            src_payload = Source(dut.payload, payload + extra, rng, p_gap)
            tokens, cycles, held = [], [], None
            for cycle in range(100 + 20 * len(mask) + 4 * n_tokens + 30 * len(payload)):
                if len(tokens) == n_tokens:
                    break
                src_mask.drive(ctx)
                src_payload.drive(ctx)
                ctx.set(dut.o.ready, rng.random() >= p_stall)
                _, _, mv, mr, pv, pr, ov, orr, tok = await ctx.tick().sample(
                    dut.mask.valid, dut.mask.ready, dut.payload.valid, dut.payload.ready,
                    dut.o.valid, dut.o.ready, dut.o.payload)
                src_mask.update(mv, mr)
                src_payload.update(pv, pr)
                if held is not None:
                    assert ov and tok == held, "token changed or vanished before its transfer"
                held = tok if ov and not orr else None
                if ov and orr:
                    tokens.append((int(tok.index), tok.code.value, int(tok.q), int(tok.row_end)))
                    cycles.append(cycle)
            assert len(tokens) == n_tokens, f"decoder stalled after {len(tokens)} of {n_tokens} tokens"
            # Keep offering the extra words with the consumer ready: nothing may come out.
            for _ in range(tail):
                src_mask.drive(ctx)
                src_payload.drive(ctx)
                ctx.set(dut.o.ready, 1)
                _, _, mv, mr, pv, pr, ov, tok = await ctx.tick().sample(
                    dut.mask.valid, dut.mask.ready, dut.payload.valid, dut.payload.ready,
                    dut.o.valid, dut.o.payload)
                src_mask.update(mv, mr)
                src_payload.update(pv, pr)
                assert not ov, f"token after the last row end: {tok}"
            results.append({"tokens": tokens, "cycles": cycles, "mask_taken": src_mask.pos,
                            "payload_taken": src_payload.pos, "n_mask": len(mask),
                            "n_payload": len(payload)})

    simulate(dut, bench)
    return results


def check(layers, results):
    for (widths, codes), res in zip(layers, results):
        want = expected_tokens(widths, codes)
        got = [(None if code == 0 else index, code, q, end) for index, code, q, end in res["tokens"]]
        assert got == want, f"layer {widths.shape}"
        # Every mask word of the layer is taken; past the last row end at most the one mask word loaded in
        # the same cycle, and at most the two payload words its 64-bit bit buffer has room for (harmless:
        # the accelerator resets the decoder and restarts the prefetchers between layers).
        assert res["n_mask"] <= res["mask_taken"] <= res["n_mask"] + 1
        assert res["payload_taken"] <= res["n_payload"] + 2


@pytest.mark.parametrize("seed", range(6))
def test_decoder_tokens_match_reference(seed):
    rng = np.random.default_rng(1000 + seed)
    layers = [random_layer(rng, int(rng.integers(1, 46)), int(rng.integers(1, 7))) for _ in range(3)]
    p_gap, p_stall = [(0.0, 0.0), (0.3, 0.3), (0.6, 0.1), (0.1, 0.6), (0.5, 0.5), (0.2, 0.8)][seed]
    check(layers, run_layers(layers, seed, p_gap, p_stall))


def test_decoder_edge_rows():
    """Hand-picked rows: all pruned (one and five words), all 32-bit at the maximum code, weights only in
    an earlier word so the last word is empty, a single weight at index 44, n_in = 1."""
    w32 = np.full((2, 45), 32)
    last_empty = np.zeros((3, 25), dtype=np.int64)
    last_empty[0, [0, 9, 13]] = (4, 32, 16)
    last_empty[1, 19] = 8
    single = np.zeros((2, 45), dtype=np.int64)
    single[0, 44] = 4
    single[1, 0] = 32
    layers = [
        (np.zeros((3, 7), dtype=np.int64), None),
        (np.zeros((2, 45), dtype=np.int64), None),
        (w32, None),
        (last_empty, None),
        (single, None),
        (np.array([[32], [0], [4]]), None),
    ]
    rng = np.random.default_rng(7)
    full = []
    for widths, _ in layers:
        top = np.array([(1 << int(w)) - 1 for w in widths.ravel()], dtype=np.uint64).reshape(widths.shape)
        codes = np.where(rng.random(widths.shape) < 0.5, top,
                         np.minimum((rng.random(widths.shape) * (top + 1.0)).astype(np.uint64), top))
        full.append((widths, codes.astype(np.uint64)))
    check(full, run_layers(full, 11, 0.3, 0.3))


def test_decoder_one_token_per_cycle():
    """No gaps, no stalls: the tokens of consecutive one-word rows leave on consecutive cycles, whatever
    their widths (32-bit weights included); an empty non-last mask word costs exactly one cycle."""
    rng = np.random.default_rng(3)
    dense = np.array([[4, 8, 0, 16, 32, 0, 4, 4, 0, 8],
                      [32] * 10,
                      [0, 0, 0, 0, 0, 0, 0, 0, 0, 16],
                      [16, 0, 32, 0, 32, 0, 32, 0, 32, 32]])
    gappy = np.zeros((2, 30), dtype=np.int64)
    gappy[:, 0:3] = 8  # word 0: three weights, word 1: empty (one idle cycle), word 2: two weights
    gappy[:, 25:27] = 32
    layers = []
    for widths in (dense, gappy):
        top = np.array([(1 << int(w)) - 1 for w in widths.ravel()], dtype=np.uint64).reshape(widths.shape)
        codes = np.minimum((rng.random(widths.shape) * (top + 1.0)).astype(np.uint64), top)
        layers.append((widths, codes))
    results = run_layers(layers, 5, 0.0, 0.0, tail=0)
    check(layers, results)
    dense_cycles, gappy_cycles = results[0]["cycles"], results[1]["cycles"]
    # Measured: the first token leaves two cycles after the decoder sees its first words.
    assert dense_cycles[0] == 2
    assert dense_cycles == list(range(dense_cycles[0], dense_cycles[0] + int((dense != 0).sum())))
    # Per row: 3 tokens, one idle cycle for the empty middle word, 2 tokens; rows follow without a bubble.
    start = gappy_cycles[0]
    assert gappy_cycles == [start + c for c in (0, 1, 2, 4, 5, 6, 7, 8, 10, 11)]


def run_until_error(widths, codes, bad, seed, p_gap=0.3, p_stall=0.3):
    """Decode one layer whose mask holds reserved code ``bad[2]`` at weight ``(bad[0], bad[1])``; return the
    tokens that left, the cycle ``error`` rose, and the mask and payload words taken (at the error and
    30 cycles later)."""
    rng = np.random.default_rng(seed)
    mask, payload = encode(widths, codes)
    per_row = -(-widths.shape[1] // 10)
    j, i, code = bad
    word = j * per_row + i // 10
    mask[word] = mask[word] & ~(7 << 3 * (i % 10)) | code << 3 * (i % 10)
    dut = DecoderHarness()
    out = {"tokens": [], "error_cycle": None}

    async def bench(ctx):
        ctx.set(dut.rst, 1)
        await ctx.tick()
        ctx.set(dut.rst, 0)
        ctx.set(dut.words_per_row, per_row)
        ctx.set(dut.rows, widths.shape[0])
        src_mask = Source(dut.mask, mask, rng, p_gap)
        src_payload = Source(dut.payload, payload, rng, p_gap)
        for cycle in range(40 * len(mask) + 40 * len(payload) + 100):
            src_mask.drive(ctx)
            src_payload.drive(ctx)
            ctx.set(dut.o.ready, rng.random() >= p_stall)
            _, _, mv, mr, pv, pr, ov, orr, tok, err = await ctx.tick().sample(
                dut.mask.valid, dut.mask.ready, dut.payload.valid, dut.payload.ready,
                dut.o.valid, dut.o.ready, dut.o.payload, dut.error)
            src_mask.update(mv, mr)
            src_payload.update(pv, pr)
            if ov and orr:
                out["tokens"].append((int(tok.index), tok.code.value, int(tok.q), int(tok.row_end)))
            if err and out["error_cycle"] is None:
                out["error_cycle"] = cycle
                out["taken_at_error"] = (src_mask.pos, src_payload.pos)
            if out["error_cycle"] is not None:
                assert err, "error is sticky until reset"
                if cycle == out["error_cycle"] + 30:
                    break
        out["taken_after"] = (src_mask.pos, src_payload.pos)
        out["word"] = word
        # A reset clears the error.
        ctx.set(dut.rst, 1)
        await ctx.tick()
        ctx.set(dut.rst, 0)
        _, _, err = await ctx.tick().sample(dut.error)
        out["error_after_reset"] = err

    simulate(dut, bench)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_decoder_stops_at_a_reserved_code(seed):
    """A reserved width code (5-7) is an error, not a weight: every weight before it (in the decoder's
    order: rows, then input indices) leaves as a token, then ``error`` rises and stays, and no token leaves
    and no mask or payload word is taken any more, whatever stalls the streams had."""
    rng = np.random.default_rng(2000 + seed)
    widths, codes = random_layer(rng, int(rng.integers(12, 46)), int(rng.integers(2, 6)))
    widths[:, 0] = 8  # every row has a weight before the bad code when it sits past index 0
    codes[:, 0] = 0xA5
    bad = (int(rng.integers(0, widths.shape[0])), int(rng.integers(0, widths.shape[1])), 5 + seed % 3)
    out = run_until_error(widths, codes, bad, seed)
    assert out["error_cycle"] is not None, "no error for a reserved code"
    j, i, _ = bad
    before = expected_tokens(widths[:j], codes[:j])  # the rows before the bad one, complete
    row = [(k, WIDTHS.index(int(widths[j, k])), int(codes[j, k])) for k in range(i) if widths[j, k]]
    got = [(None if code == 0 else index, code, q, end) for index, code, q, end in out["tokens"]]
    assert got[:len(before)] == before
    # The bad row's weights before the code, none of them a row end (the row never ends).
    assert [t[:3] for t in got[len(before):]] == row
    assert not any(t[3] for t in got[len(before):])
    assert out["taken_after"] == out["taken_at_error"], "words taken after the error"
    assert out["taken_at_error"][0] <= out["word"] + 1  # nothing past the bad mask word
    assert not out["error_after_reset"]


def test_decoder_rejects_small_index_width():
    with pytest.raises(ValueError, match="^index_width must be >= 4, not 3$"):
        WeightDecoder(index_width=3)
