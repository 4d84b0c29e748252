"""Vivado build plan for XC7Z020 boards: the accelerator in an on-board self-test shell.

Until the PS/AXI memory interface exists, the bitstream checks itself: a ROM holds test images and the
golden model's scores for them; the shell streams the images through the accelerator, compares every
score and lights the board's LEDs (LED 0: done, LED 1: all scores matched, LED 2: a mismatch,
LED 3: heartbeat). Button 0 (active high) restarts the run. An MMCME2 derives the papers' 100 MHz fabric
clock from the board's 125 MHz oscillator (VCO 1000 MHz = 125 MHz x 8, divided by 10).

``platform.build(..., do_build=False)`` returns the plan (Verilog, XDC, TCL, build script) without running
Vivado; :func:`write_build_plan` extracts it into a directory.
"""

from __future__ import annotations

from pathlib import Path

from amaranth import Cat, ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from hw.accelerator import Accelerator
from model.errors import UserError

# amaranth-boards' MicroZed 7020 has no PL clock, LEDs or buttons (its clocks come from the PS), so the
# self-test shell targets the Arty Z7-20 only until the PS interface exists.
BOARDS = ("arty_z7_20",)
FABRIC_HZ = 100e6


def board_platform(board: str):
    """The amaranth-boards platform of an XC7Z020 board."""
    if board == "arty_z7_20":
        from amaranth_boards.arty_z7 import ArtyZ720Platform

        return ArtyZ720Platform()
    raise UserError(f"board {board!r} is not supported; choose one of {', '.join(BOARDS)}")


class SelfTestTop(Elaboratable):
    """The accelerator, a test-vector ROM and a scoreboard with LED results.

    Parameters
    ----------
    image : sequence of int
        Packed weight image.
    inputs : int array ``[N, n_in]`` and expected : int array ``[N, n_out]``
        Test images and the golden model's scores for them.

    Members
    -------
    leds : Signal(4)
        The four LEDs' values (done, all matched, a mismatch, heartbeat); on a board they drive its LED pins,
        without a platform (simulation, ``tests/hw/platform/test_board.py``) they are the results to read.
    """

    def __init__(self, image, inputs, expected, *, batch: int = 1):
        self._image = [int(w) for w in image]
        self._inputs = [int(v) for v in inputs.reshape(-1)]
        self._expected = [int(v) & 0xFFFFFFFF for v in expected.reshape(-1)]
        self.accelerator = Accelerator(self._image, batch=batch)
        self.leds = Signal(4)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        if platform is not None:
            clk125 = platform.request(platform.default_clk, dir="-")
            feedback = Signal(name="mmcm_feedback")
            clk100 = Signal(name="clk100")
            locked = Signal(name="mmcm_locked")
            m.submodules.mmcm = Instance(
                "MMCME2_BASE",
                p_CLKIN1_PERIOD=8.0, p_CLKFBOUT_MULT_F=8.0, p_DIVCLK_DIVIDE=1, p_CLKOUT0_DIVIDE_F=10.0,
                i_CLKIN1=clk125.io, i_CLKFBIN=feedback, o_CLKFBOUT=feedback, o_CLKOUT0=clk100,
                o_LOCKED=locked, i_RST=0, i_PWRDWN=0,
            )
            m.submodules.bufg = Instance("BUFG", i_I=clk100, o_O=ClockSignal("sync"))
            platform.add_clock_constraint(clk100, FABRIC_HZ)
            restart = Signal()
            if _has(platform, "button"):  # (the pins' buffers are io.Buffer's: a request without dir="-" is
                m.submodules.button = button = io.Buffer("i", platform.request("button", 0, dir="-"))  # deprecated)
                m.d.comb += restart.eq(button.i)
            m.d.comb += sync.rst.eq(~locked | restart)
            for k in range(4):
                m.submodules[f"led{k}"] = led = io.Buffer("o", platform.request("led", k, dir="-"))
                m.d.comb += led.o.eq(self.leds[k])

        m.submodules.accelerator = acc = self.accelerator
        m.submodules.inputs = in_rom = Memory(shape=8, depth=len(self._inputs), init=self._inputs)
        m.submodules.expected = exp_rom = Memory(shape=32, depth=len(self._expected), init=self._expected)
        in_rd = in_rom.read_port(domain="comb")
        exp_rd = exp_rom.read_port(domain="comb")
        in_addr = Signal(ceil_log2(len(self._inputs) + 1))
        out_addr = Signal(ceil_log2(len(self._expected) + 1))
        done, failed = Signal(), Signal()
        beat = Signal(27)
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += [
            in_rd.addr.eq(in_addr),
            acc.i.payload.eq(in_rd.data),
            acc.i.valid.eq(in_addr != len(self._inputs)),
            exp_rd.addr.eq(out_addr),
            acc.o.ready.eq(~done),
        ]
        with m.If(acc.i.valid & acc.i.ready):
            m.d.sync += in_addr.eq(in_addr + 1)
        with m.If(acc.o.valid & acc.o.ready):
            m.d.sync += out_addr.eq(out_addr + 1)
            with m.If(acc.o.payload.score.as_unsigned() != exp_rd.data):
                m.d.sync += failed.eq(1)
            with m.If(out_addr == len(self._expected) - 1):
                m.d.sync += done.eq(1)
        m.d.comb += self.leds.eq(Cat(done, done & ~failed, failed, beat[-1]))
        return m


def _has(platform, name: str) -> bool:
    return any(res.name == name for res in platform.resources.values())


def write_build_plan(out_dir, image, inputs, expected, *, board: str = "arty_z7_20",
                     name: str = "mpq_accel_selftest", batch: int = 1) -> list[Path]:
    """Extract the Vivado build plan (Verilog, XDC, TCL, build script) into ``out_dir``; return the files."""
    platform = board_platform(board)
    plan = platform.build(SelfTestTop(image, inputs, expected, batch=batch), name=name, do_build=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan.extract(str(out_dir))
    return sorted(p for p in out_dir.rglob("*") if p.is_file())
