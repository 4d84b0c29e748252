"""Input loader: a batch of images' input codes from a stream into an activation buffer."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.core.activations import act_write_signature, check_batch_and_depth
from hw.core.job import job_signature, load_job_layout
from model.export.golden import MAX_ACT_BITS


def step_image_major(m: Module, row: Signal, img: Signal, rows, batch: int):
    """Advance ``(img, row)`` in image-major order (all rows of image 0, then image 1, ...) this cycle.

    Returns a value that is true when this step wraps both counters to zero (the batch is complete).
    """
    last_row = row == rows - 1
    last_img = img == batch - 1
    m.d.sync += row.eq(Mux(last_row, 0, row + 1))
    with m.If(last_row):
        m.d.sync += img.eq(Mux(last_img, 0, img + 1))
    return last_row & last_img


class InputLoader(wiring.Component):
    """Takes ``batch`` images of ``count`` codes each from ``i`` into lanes of an activation buffer.

    Image ``k`` of the batch, code ``r`` goes to lane ``k`` of word ``r`` of buffer ``buf``; the codes
    arrive image after image (image-major), one per transfer, and ``i.ready`` is high exactly while a job
    runs, so the loader takes no code that belongs to the next batch.

    Parameters
    ----------
    batch : int
        Images per job, 1 to 16.
    depth : int
        Words per activation buffer (a power of two >= 2); ``count`` is 1 to ``depth``.

    Members
    -------
    ctl : In(job_signature(load_job_layout(depth)))
        One job per batch: ``count`` codes per image into buffer ``buf``; ``done`` pulses with the last
        write.
    i : In(stream.Signature(unsigned(MAX_ACT_BITS)))
        Input codes.
    write : Out(act_write_signature(batch, addr_width))
        To the activation bank's ``load`` port.

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
            "ctl": In(job_signature(load_job_layout(depth))),
            "i": In(stream.Signature(unsigned(MAX_ACT_BITS))),
            "write": Out(act_write_signature(batch, ceil_log2(depth))),
        })

    def elaborate(self, platform):
        m = Module()
        job = self.ctl.job
        busy = Signal()
        count = Signal.like(job.payload.count)
        buf = Signal()
        row = Signal(range(self._depth))
        img = Signal(range(self._batch))
        m.d.comb += job.ready.eq(~busy)
        with m.If(job.valid & job.ready):
            m.d.sync += [busy.eq(1), count.eq(job.payload.count), buf.eq(job.payload.buf), row.eq(0), img.eq(0)]

        # Every combinational output is a plain expression, outside any `If` (Icarus 11 leaves an `always @*`
        # block at X until one of its inputs changes).
        take = Signal()
        m.d.comb += [
            self.i.ready.eq(busy),
            take.eq(self.i.valid & busy),
            self.write.addr.eq(row),
            self.write.buf.eq(buf),
            self.write.data.eq(self.i.payload),
            self.write.lanes.eq(Mux(take, 1 << img, 0)),
        ]
        with m.If(take):
            wraps = step_image_major(m, row, img, count, self._batch)
        finished = Signal()  # the batch's last code is taken now
        m.d.comb += [finished.eq(take & wraps), self.ctl.done.eq(finished)]
        with m.If(finished):
            m.d.sync += busy.eq(0)
        return m
