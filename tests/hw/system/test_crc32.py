# amaranth: UnusedElaboratable=no
"""The image checksum's CRC-32 block (hw/system/crc32.py) in the Amaranth simulator against ``zlib.crc32``.

Random byte strings of random lengths go through the block a word a cycle with random idle cycles (``en``
low) between words, ``clear`` between strings; ``crc`` must equal ``zlib.crc32`` of the bytes. The loader
uses the 32-bit step and sees whole 32-bit words only (an image is ``words`` words: lengths are multiples of
4 bytes, odd word counts included, i.e. not always a multiple of 8); the 8-bit step checks every byte length.
"""

import random
import zlib

import pytest
from amaranth.sim import Simulator

from hw.system.crc32 import Crc32, crc32_words, max_terms, step_terms


def words_of(data: bytes, width: int) -> list[int]:
    n = width // 8
    return [int.from_bytes(data[k:k + n], "little") for k in range(0, len(data), n)]


def simulate(width: int, strings: list[bytes], seed: int) -> list[int]:
    """``crc`` after each string, fed a word a cycle with random gaps, ``clear`` before each string."""
    dut = Crc32(data_width=width)
    rng = random.Random(seed)
    got = []

    async def bench(ctx):
        for data in strings:
            ctx.set(dut.clear, 1)
            ctx.set(dut.en, rng.random() < 0.5)  # ignored while clear
            ctx.set(dut.data, rng.getrandbits(width))
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for w in words_of(data, width):
                while rng.random() < 0.3:  # an idle cycle: en low, data changing
                    ctx.set(dut.en, 0)
                    ctx.set(dut.data, rng.getrandbits(width))
                    await ctx.tick()
                ctx.set(dut.en, 1)
                ctx.set(dut.data, w)
                await ctx.tick()
            ctx.set(dut.en, 0)
            ctx.set(dut.data, rng.getrandbits(width))
            got.append(ctx.get(dut.crc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("width,seed", [(32, 1), (32, 2), (64, 3), (8, 4)])
def test_crc_equals_zlib_on_random_strings(width, seed):
    rng = random.Random(seed)
    step = width // 8
    lengths = [0, 1, 2, 3, 257] + [rng.randint(0, 200) for _ in range(20)]
    strings = [rng.randbytes(step * n) for n in lengths]
    if width == 32:
        assert any(len(s) % 8 for s in strings)  # odd word counts: the loader's pad case
    got = simulate(width, strings, seed)
    want = [zlib.crc32(s) for s in strings]
    bad = [(len(s), hex(g), hex(w)) for s, g, w in zip(strings, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(strings)} CRCs differ (bytes, got, zlib): {bad[:3]}"


def test_known_vector_and_one_flipped_bit():
    """The check value of CRC-32 ("123456789" -> 0xCBF43926), and a single flipped bit changes the CRC."""
    assert simulate(8, [b"123456789"], 0) == [0xCBF43926]
    data = random.Random(5).randbytes(64)
    flipped = bytearray(data)
    flipped[37] ^= 0x10
    good, bad = simulate(32, [data, bytes(flipped)], 5)
    assert good == zlib.crc32(data) and bad == zlib.crc32(bytes(flipped)) and good != bad


def test_word_model_and_xor_depth():
    rng = random.Random(6)
    for width in (8, 32, 64):
        data = rng.randbytes(width // 8 * 33)
        assert crc32_words(words_of(data, width), width) == zlib.crc32(data)
    # the 32-bit step: 12 to 17 state ^ data pairs per next-state bit (34 signals: two LUT6 levels)
    assert max_terms(32) == 17 and min(len(t) for t in step_terms(32)) == 12
    assert max_terms(64) == 34


def test_bad_width_names_the_value():
    for width in (0, 12, 72, "32"):
        with pytest.raises(ValueError, match="data_width"):
            Crc32(data_width=width)
