"""cocotb testbench of the packed multiplier array ``mpq_array`` (hw/array/top.py).

The test runs one or more *cases* on the same RTL, one after the other, without a reset between them: a
case is a version 3 image and its input images. For each case it loads the image through the load port
(one word a cycle, with random idle cycles when stalling), then runs every input image: a ``start`` pulse
when the array is idle, the image's input codes on ``i`` (one code per beat, ``C H W`` beats, accepted while
the array takes its input), the class scores from ``o`` and ``done`` with ``status``. The scoreboard compares
every image's scores with the golden model's, in order; a case loaded after another must give its own
golden scores (no state survives from the previous image). Transactors, timing discipline and stall
patterns are :mod:`sim.tb.stream`'s.

Configured by environment variables (set by :func:`sim.array_runner.run_array` / ``run_array_cases``):

``MPQA_CASE``
    ``.npz`` with ``n_cases`` and, per case ``k``, ``words_k`` (the image, uint32), ``inputs_k`` (int64
    ``[N, C H W]``), ``expected_k`` (int64 ``[N, n_classes]``) and optionally ``precision_k`` (a version 4
    image's widths, as the shell's ``precision`` register: :meth:`ArrayTB.set_precision`).
``MPQA_RESULT``, ``MPQA_STALL``, ``MPQA_SEED``, ``MPQA_TIMEOUT_CYCLES``
    As :mod:`sim.tb.accelerator`'s ``MPQ_*`` (:class:`sim.tb.stream.RunSettings`).
"""

from __future__ import annotations

import random
import time

import cocotb
import numpy as np
from amaranth.hdl import signed, unsigned
from cocotb.simtime import get_sim_time
from cocotb.triggers import First, ReadOnly, RisingEdge, ValueChange

from sim.scoreboard import Scoreboard
from sim.tb.stream import CLOCK_NS, RunSettings, StreamTB

DEFAULT_TIMEOUT_CYCLES = 2_000_000
INPUT_SHAPE = unsigned(8)
OUTPUT_SHAPE = signed(32)


class ArrayTB(StreamTB):
    """Clock, reset, load port, start/done, input source, score sink, watchdog and scoreboard of ``mpq_array``.

    Members
    -------
    starts_ns, dones_ns : list of float
        Time of each image's ``start`` pulse and ``done``.
    statuses : list of int
        ``status`` at each ``done``.
    load_cycles : list of int
        Cycles each case's image load took.
    """

    def __init__(self, dut, expected, *, stall: bool, seed: int = 0, timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES):
        super().__init__(dut, input_shape=INPUT_SHAPE, output_shape=OUTPUT_SHAPE,
                         scoreboard=Scoreboard(expected, name="image"), stall=stall, seed=seed,
                         timeout_cycles=timeout_cycles)
        self.n_classes = 0
        self.pending: list[int] = []
        self.starts_ns: list[float] = []
        self.dones_ns: list[float] = []
        self.statuses: list[int] = []
        self.load_cycles: list[int] = []
        self.rng = random.Random(f"load-{seed}")
        dut.start.value = 0  # defined before the reset: the state machine samples them through it
        dut.load__en.value = 0
        self.set_precision(0)
        self.reads: list[int] = []
        self.weight_reads: list[int] = []
        self.layer_marks: list[tuple[float, int]] = []  # (time, layer_index) at each change of layer_index

    def set_precision(self, value: int) -> None:
        """A version 4 image's widths, encoded as the Zynq shell's ``precision`` register: a width (0: the
        image's source width), or ``0x80 + r`` for row ``r`` of its Eq. 12 table."""
        self.dut.precision.value = 0 if value & 0x80 else value & 0xF
        self.dut.use_table.value = value >> 7 & 1
        self.dut.table_row.value = value & 0x7F

    def receive(self, value: int) -> None:
        self.pending.append(value)
        if len(self.pending) == self.n_classes:
            scores, self.pending = self.pending, []
            self.scoreboard.check(scores)

    def progress(self) -> int:
        return super().progress() + len(self.dones_ns) + sum(self.load_cycles)

    async def load(self, words) -> None:
        """Write the image words through the load port."""
        dut = self.dut
        t0 = get_sim_time("ns")
        for addr, word in enumerate(words):
            while self.stall and self.rng.random() < 0.2:
                dut.load__en.value = 0
                await RisingEdge(dut.clk)
            dut.load__en.value = 1
            dut.load__addr.value = addr
            dut.load__data.value = int(word)
            await RisingEdge(dut.clk)
        dut.load__en.value = 0
        self.load_cycles.append(round((get_sim_time("ns") - t0) / CLOCK_NS))

    async def run_image(self) -> bool:
        """A ``start`` pulse, then wait for ``done``; False when the watchdog fired first."""
        dut = self.dut
        dut.start.value = 1
        await RisingEdge(dut.clk)
        self.starts_ns.append(get_sim_time("ns"))
        dut.start.value = 0
        # ``done`` is a one-cycle pulse from a register: sleep until it rises instead of waking every cycle
        # (a ResNet-20 image is hundreds of thousands of cycles; Verilator then runs without Python between).
        await First(RisingEdge(dut.done), self.hung.wait())
        if self.hung.is_set():
            return False
        await ReadOnly()
        self.dones_ns.append(get_sim_time("ns"))
        self.statuses.append(int(dut.status.value))
        self.reads.append(int(dut.reads.value))
        self.weight_reads.append(int(dut.weight_reads.value))
        await RisingEdge(dut.clk)
        return True

    async def watch_layers(self) -> None:
        """Record the time of every change of ``layer_index`` (a few per image: cheap under Verilator)."""
        while True:
            await ValueChange(self.dut.layer_index)
            self.layer_marks.append((get_sim_time("ns"), int(self.dut.layer_index.value)))

    def layer_cycles(self) -> list[list[int]]:
        """Each image's cycles per layer index (the run starts at layer 0; the header and descriptor reads
        count to the layer they are read for, the class scores' read-out to the last one)."""
        out = []
        for s, d in zip(self.starts_ns, self.dones_ns):
            spans: dict[int, float] = {}
            t, value = s, 0
            for when, idx in self.layer_marks:
                if s < when < d:
                    spans[value] = spans.get(value, 0.0) + when - t
                    t, value = when, idx
            spans[value] = spans.get(value, 0.0) + d - t
            out.append([round(spans.get(k, 0.0) / CLOCK_NS) for k in range(max(spans) + 1)])
        return out

    async def run(self, cases) -> None:
        """Each case: load its image, run its input images; stop at the first hang (after
        :meth:`~sim.tb.stream.StreamTB.reset`, which :meth:`~sim.tb.stream.StreamTB.run_and_record` does)."""
        self.source.start()
        self.sink.start()
        cocotb.start_soon(self.watchdog())
        cocotb.start_soon(self.watch_layers())
        received = 0
        for words, inputs, expected, precision in cases:
            self.n_classes = expected.shape[1]
            self.set_precision(precision)
            await self.load(words)
            self.source.send_all_nowait(int(v) for v in inputs.reshape(-1))
            for _ in range(len(inputs)):
                if not await self.run_image():
                    return
            received += len(inputs)
            while len(self.scoreboard.received) < received and not self.hung.is_set():
                await First(RisingEdge(self.dut.clk), self.hung.wait())
            if self.hung.is_set():
                return

    def result(self, wall_s: float) -> dict:
        """The record: ``images``, ``expected_images``, ``mismatches``, ``mismatched_images``, ``scores``,
        ``statuses``, ``cycles_per_image`` (mean of start -> done), ``image_cycles`` (each), ``load_cycles``
        (per case), and :meth:`~sim.tb.stream.StreamTB.stream_record`'s keys."""
        board = self.scoreboard
        spans = [round((d - s) / CLOCK_NS) for s, d in zip(self.starts_ns, self.dones_ns)]
        return {
            "images": len(board.received),
            "expected_images": len(board.expected),
            "mismatches": len(board.mismatched),
            "mismatched_images": board.mismatched[:20],
            "scores": board.received,
            "statuses": self.statuses,
            "image_cycles": spans,
            "cycles_per_image": float(np.mean(spans)) if spans else 0.0,
            "load_cycles": self.load_cycles,
            "layer_cycles": self.layer_cycles(),
            "image_reads": self.reads,
            "image_weight_reads": self.weight_reads,
            "partial_beats": len(self.pending),
            **self.stream_record(wall_s),
        }


def read_cases(path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    with np.load(path) as case:
        return [(case[f"words_{k}"].astype(np.int64), case[f"inputs_{k}"].astype(np.int64),
                 case[f"expected_{k}"].astype(np.int64),
                 int(case[f"precision_{k}"]) if f"precision_{k}" in case.files else 0)
                for k in range(int(case["n_cases"]))]


@cocotb.test()
async def run_images(dut):
    """Every case of ``MPQA_CASE`` on the same RTL; every image's scores equal golden's, status OK."""
    t0 = time.perf_counter()
    settings = RunSettings.from_env("MPQA", default_timeout_cycles=DEFAULT_TIMEOUT_CYCLES)
    cases = read_cases(settings.case)
    expected = [row for _, _, exp, _ in cases for row in exp.tolist()]
    tb = ArrayTB(dut, expected, stall=settings.stall, seed=settings.seed, timeout_cycles=settings.timeout_cycles)
    record = await tb.run_and_record(cases, settings.result, t0)

    assert not record["timed_out"], f"no progress for {tb.timeout_cycles} cycles after {record['images']} images"
    assert not record["protocol_errors"], f"stream protocol violated: {record['protocol_errors']}"
    assert record["images"] == len(expected), f"received {record['images']} images, expected {len(expected)}"
    assert record["statuses"] == [0] * len(expected), f"status codes {record['statuses']} on valid images"
    assert record["partial_beats"] == 0
    assert record["mismatches"] == 0, (f"{record['mismatches']} of {len(expected)} images differ from the golden "
                                       f"model: {record['mismatched_images']}")
