"""Score streamer: the last layer's outputs of a batch, held in a score memory and streamed out image by image."""

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.core.activations import check_batch_and_depth
from hw.core.job import emit_job_layout, job_signature

#: One score on the output stream: ``score`` (``2^-SCORE_FRAC_BITS`` units, model/export/golden.py) and
#: ``last`` on the final class of an image.
OUTPUT_LAYOUT = data.StructLayout({"score": signed(32), "last": unsigned(1)})


def score_write_signature(batch: int, depth: int) -> wiring.Signature:
    """A writer's side: score ``data`` of row ``row`` of image ``img`` when ``en``."""
    return wiring.Signature({
        "img": Out(range(batch)),
        "row": Out(range(depth)),
        "data": Out(signed(32)),
        "en": Out(1),
    })


class ScoreStreamer(wiring.Component):
    """Score memory (``batch`` images of ``depth`` rows) and its output stream.

    A job streams rows ``0 .. count - 1`` of image 0, then of image 1, ..., with ``last`` on each image's
    final row; ``done`` pulses with the transfer of the last score. Each score takes two cycles (a memory
    read, then the offer), and a score offered on ``o`` stays unchanged until taken.

    Parameters
    ----------
    batch : int
        Images per job, 1 to 16.
    depth : int
        Rows per image (a power of two >= 2); ``count`` is 1 to ``depth``.

    Members
    -------
    write : In(score_write_signature(batch, depth))
        From the layer engine (the last layer's outputs).
    ctl : In(job_signature(emit_job_layout(depth)))
    o : Out(stream.Signature(OUTPUT_LAYOUT))

    Raises
    ------
    ValueError
        For a ``batch`` outside 1..16 or a ``depth`` that is not a power of two >= 2.
    """

    def __init__(self, *, batch: int, depth: int):
        check_batch_and_depth(batch, depth)
        self._batch = batch
        self._depth = depth
        super().__init__({
            "write": In(score_write_signature(batch, depth)),
            "ctl": In(job_signature(emit_job_layout(depth))),
            "o": Out(stream.Signature(OUTPUT_LAYOUT)),
        })

    def elaborate(self, platform):
        m = Module()
        row_bits = ceil_log2(self._depth)
        m.submodules.memory = memory = Memory(shape=signed(32), depth=self._batch << row_bits, init=[])
        wr = memory.write_port()
        rd = memory.read_port()
        m.d.comb += [
            wr.addr.eq((self.write.img << row_bits) | self.write.row),
            wr.data.eq(self.write.data),
            wr.en.eq(self.write.en),
        ]

        job = self.ctl.job
        count = Signal.like(job.payload.count)
        row = Signal(range(self._depth))
        img = Signal(range(self._batch))
        last_row = Signal()
        last_img = Signal()
        m.d.comb += [last_row.eq(row == count - 1), last_img.eq(img == self._batch - 1)]
        with m.FSM() as fsm:
            with m.State("IDLE"), m.If(job.valid):
                m.d.sync += [count.eq(job.payload.count), row.eq(0), img.eq(0)]
                m.next = "READ"
            with m.State("READ"):
                m.next = "OFFER"
            with m.State("OFFER"), m.If(self.o.ready):
                m.d.sync += row.eq(row + 1)
                m.next = "READ"
                with m.If(last_row):
                    m.d.sync += [row.eq(0), img.eq(img + 1)]
                    with m.If(last_img):
                        m.next = "IDLE"
        # Outputs as plain functions of the state (no combinational logic under the FSM's control flow:
        # Icarus 11 leaves such an `always @*` block at X until one of its inputs changes).
        offer = fsm.ongoing("OFFER")
        m.d.comb += [
            job.ready.eq(fsm.ongoing("IDLE")),
            rd.addr.eq((img << row_bits) | row),
            rd.en.eq(~offer),  # hold the score while it is offered
            self.o.valid.eq(offer),
            self.o.payload.score.eq(rd.data),
            self.o.payload.last.eq(last_row),
            self.ctl.done.eq(offer & self.o.ready & last_row & last_img),
        ]
        return m
