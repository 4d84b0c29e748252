# amaranth: UnusedElaboratable=no
"""The on-board self-test shell (hw/platform/board.py ``SelfTestTop``) in Amaranth's simulator: its ROMs stream
the test images through the real accelerator, and its LEDs say done / all matched / a mismatch. The shell is
what a board shows instead of a host, so a comparator that lit "pass" on a wrong score would hide a broken
bitstream: every case here runs the golden model's scores, then the same with one score changed."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.platform.board import SelfTestTop
from model.export.image import core_words
from tests.hw.netgen import random_network

CYCLE_LIMIT = 20_000
DONE, PASSED, FAILED = range(3)  # LED 3 is the heartbeat (bit 26 of a counter: not simulated)


def run_shell(net, images, expected, batch: int) -> tuple[int, int, int]:
    """Simulate the shell until LED 0 (done) rises; return LEDs 0-2 (done, passed, failed) as they are then.

    Fails if done never rises within ``CYCLE_LIMIT`` cycles, and if LEDs 0-2 change in the 50 cycles after it rose
    (the run ended: a later score or a glitch must not turn a result around)."""
    dut = SelfTestTop(core_words(net), images, expected, batch=batch)
    seen = {}

    async def bench(ctx):
        for cycle in range(CYCLE_LIMIT):
            leds = ctx.get(dut.leds)
            if leds >> DONE & 1:
                seen["cycle"] = cycle
                seen["leds"] = leds & 0b111
                break
            await ctx.tick()
        else:
            raise AssertionError(f"the self-test did not finish in {CYCLE_LIMIT} cycles")
        for _ in range(50):
            await ctx.tick()
            assert ctx.get(dut.leds) & 0b111 == seen["leds"], "the LEDs changed after the run ended"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    leds = seen["leds"]
    return leds >> DONE & 1, leds >> PASSED & 1, leds >> FAILED & 1


@pytest.mark.parametrize("batch, n_images", [(1, 3), (2, 4)])
def test_the_golden_scores_light_pass_and_one_wrong_score_lights_fail(batch, n_images):
    rng = np.random.default_rng(batch)
    net = random_network(rng, sizes=(13, 7, 4), act_bits=4)
    images = rng.integers(0, 16, size=(n_images, 13))
    expected = net.forward(images)
    assert run_shell(net, images, expected, batch) == (1, 1, 0)
    # The first, the last and one score between, each changed in one bit: the lowest, one in the upper half
    # and the sign (the ROM holds the scores' 32-bit two's complement).
    for index, bit in ((0, 0), (expected.size - 1, 20), (int(rng.integers(1, expected.size - 1)), 31)):
        wrong = expected.copy()
        wrong.flat[index] ^= 1 << bit
        assert run_shell(net, images, wrong, batch) == (1, 0, 1), f"score {index} with bit {bit} flipped passed"

