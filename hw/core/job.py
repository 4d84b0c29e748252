"""Job ports: how the layer sequencer hands work to the units it drives, and the core's error codes.

A unit (input loader, layer engine, score streamer) takes one job at a time from a stream: ``job.ready`` is
high while the unit is idle, the job's parameters travel as the stream payload, and the unit pulses
``done`` for one cycle when it has finished (its last write lands at the same clock edge). A unit that can
find the image corrupt also reports an :class:`ErrorCode` (held, ``NONE`` otherwise); it then never pulses
``done`` for that job. The sequencer (:class:`~hw.core.sequencer.LayerSequencer`) issues jobs one after the
other, so the units never run at the same time, and a different datapath (another engine behind the same
job port) reuses the sequencer and the buffers unchanged.
"""

from amaranth import unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.core.image_layout import DESCRIPTOR_LAYOUT


class ErrorCode(enum.Enum, shape=4):
    """Why the core stopped (``error_code``; sticky until reset).

    ``BAD_HEADER``: the image's magic is wrong or its layer count is 0 or more than the buffer can hold.
    ``BAD_DESCRIPTOR``: a layer's ``n_in`` or ``n_out`` is 0 or larger than the activation buffers,
    ``mask_words_per_row`` is not ``ceil(n_in / 10)``, ``out_bits`` is wider than the hardware's activation
    codes, or ``shift`` is outside ``1..MAX_SHIFT``. ``RESERVED_WIDTH_CODE``: a layer's mask holds a
    reserved width code (5-7).
    """

    NONE = 0
    BAD_HEADER = 1
    BAD_DESCRIPTOR = 2
    RESERVED_WIDTH_CODE = 3


def job_signature(layout, *, error: bool = False) -> wiring.Signature:
    """The issuer's side of a job port: ``job`` stream of ``layout`` out, ``done`` pulse in, and with
    ``error`` an :class:`ErrorCode` in."""
    members = {"job": Out(stream.Signature(layout)), "done": In(1)}
    if error:
        members["error"] = In(ErrorCode)
    return wiring.Signature(members)


def count_width(depth: int) -> int:
    """Bits of a count from 0 to ``depth`` (codes per image, rows of a layer)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, not {depth!r}")
    return bits_for(depth)


def load_job_layout(depth: int) -> data.StructLayout:
    """Input loader job: ``count`` codes per image into activation buffer ``buf``."""
    return data.StructLayout({"count": unsigned(count_width(depth)), "buf": unsigned(1)})


def emit_job_layout(depth: int) -> data.StructLayout:
    """Score streamer job: ``count`` scores per image of the batch."""
    return data.StructLayout({"count": unsigned(count_width(depth))})


#: Layer job: the layer's descriptor as read from the image, the activation buffer it reads (``src``; it
#: writes the other one), and whether it is the last layer (its outputs go to the scores).
LAYER_JOB_LAYOUT = data.StructLayout({"desc": DESCRIPTOR_LAYOUT, "src": unsigned(1), "last": unsigned(1)})
