"""Activation bank: two ping-pong activation buffers, one code lane per image of the batch.

Each buffer holds one word per input index; a word holds the ``MAX_ACT_BITS``-bit codes of every image of
the batch at that index (image ``k`` in lane ``k``), so one read gives the operand of a weight for the whole
batch. A layer reads one buffer and writes the other (``buf`` selects per port); the input loader writes
the buffer the first layer reads. Writes address single lanes (``lanes``), so the images of a batch are
written one after the other.
"""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN

BUFFERS = 2


def check_batch_and_depth(batch: int, depth: int) -> None:
    """Raise ``ValueError`` unless ``batch`` is 1..16 and ``depth`` a power of two >= 2.

    The parameters every per-image buffer shares (activation bank, input loader, score streamer).
    """
    if not 1 <= batch <= 16:
        raise ValueError(f"batch must be in 1..16, not {batch!r}")
    if depth < 2 or depth & (depth - 1):
        raise ValueError(f"depth must be a power of two >= 2, not {depth!r}")


def check_act_depth(act_depth: int) -> None:
    """Raise ``ValueError`` unless ``act_depth`` is a power of two in 2..MAX_FAN_IN (a layer's widest vector)."""
    if act_depth < 2 or act_depth & (act_depth - 1) or act_depth > MAX_FAN_IN:
        raise ValueError(f"act_depth must be a power of two in 2..{MAX_FAN_IN}, not {act_depth!r}")


def act_read_signature(batch: int, addr_width: int) -> wiring.Signature:
    """A reader's side: ``addr``, ``buf`` and ``en`` out; ``data`` (every image's code at ``addr``) in, one
    cycle after ``en``, held while ``en`` is low."""
    return wiring.Signature({
        "addr": Out(addr_width),
        "buf": Out(1),
        "en": Out(1),
        "data": In(data.ArrayLayout(MAX_ACT_BITS, batch)),
    })


def act_write_signature(batch: int, addr_width: int) -> wiring.Signature:
    """A writer's side: code ``data`` into the lanes set in ``lanes`` of word ``addr`` of buffer ``buf``."""
    return wiring.Signature({
        "addr": Out(addr_width),
        "buf": Out(1),
        "lanes": Out(batch),
        "data": Out(unsigned(MAX_ACT_BITS)),
    })


class ActivationBank(wiring.Component):
    """Two activation buffers of ``depth`` words with one read port and two write ports.

    Parameters
    ----------
    batch : int
        Images per word (lanes), 1 to 16.
    depth : int
        Words per buffer, a power of two >= 2.

    Members
    -------
    read : In(act_read_signature(batch, addr_width))
        Synchronous read (:attr:`latency` cycles), of buffer ``buf`` as it was when ``en`` was high.
    write, load : In(act_write_signature(batch, addr_width))
        Two writers (the layer engine and the input loader). When both write the same buffer in the same
        cycle, ``load`` wins; writing different buffers at once is fine.

    Raises
    ------
    ValueError
        For a ``batch`` outside 1..16 or a ``depth`` that is not a power of two >= 2.
    """

    #: Cycles from ``read.en`` to ``read.data``.
    latency = 1

    def __init__(self, *, batch: int, depth: int):
        check_batch_and_depth(batch, depth)
        self._batch = batch
        self._depth = depth
        addr_width = ceil_log2(depth)
        super().__init__({
            "read": In(act_read_signature(batch, addr_width)),
            "write": In(act_write_signature(batch, addr_width)),
            "load": In(act_write_signature(batch, addr_width)),
        })

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        batch = self._batch
        read, write, load = self.read, self.write, self.load
        buf_q = Signal()  # buffer of the word now on the read ports
        with m.If(read.en):
            m.d.sync += buf_q.eq(read.buf)
        words = []
        for b in range(BUFFERS):
            memory = Memory(shape=MAX_ACT_BITS * batch, depth=self._depth, init=[])
            m.submodules[f"buffer{b}"] = memory
            rd = memory.read_port()
            wr = memory.write_port(granularity=MAX_ACT_BITS)
            loading = Signal(name=f"loading{b}")
            m.d.comb += [
                rd.addr.eq(read.addr),
                rd.en.eq(read.en),
                loading.eq(load.lanes.any() & (load.buf == b)),
                wr.addr.eq(Mux(loading, load.addr, write.addr)),
                wr.data.eq(Mux(loading, load.data, write.data).replicate(batch)),
                wr.en.eq(Mux(loading, load.lanes, Mux(write.buf == b, write.lanes, 0))),
            ]
            words.append(rd.data)
        m.d.comb += read.data.eq(Mux(buf_q, words[1], words[0]))
        return m
