"""Feature-map buffers: three on-chip maps of activation codes, stored a map row per word.

A version 3 network reads and writes :data:`~model.export.format.FMAP_BUFFERS` buffers (the layer descriptors
name ``in_buf``, ``out_buf`` and ``res_buf``, the input image is in buffer 0). Each buffer holds one map
``[C, H, W]`` of 8-bit codes as ``C H`` words of ``row_codes`` codes: row ``y`` of channel ``c`` at word
``c H + y``, the code of column ``x`` in byte ``x``. A fully connected layer's vector is a ``C x 1 x 1`` map
(one code per word). A row per word lets the patch loader (:mod:`hw.array.patch_loader`) fill one patch row
(the codes of every pixel of an output row at one weight position) from one read, whatever the stride and
padding, and the map writer write a whole output row of a channel at once.

Ports (the role decides which buffer a port reaches):

* ``rd``: a read port for the patch loader (the layer's ``in_buf``, and a residual layer's ``res_buf`` for its
  shortcut rows);
* ``rmw``: a read port for the writer's read-modify-write (max-pool);
* ``wr``: a write port with a byte mask (the writer);
* ``inp``: a whole-word write into buffer 0 (the controller's input rows, each as its last code arrives).

Reads have a latency of one cycle; a reader takes the data in the cycle after its read (the loader and the
writer do). Each buffer is **one** true-dual-port block RAM copy of ``rows x 8 row_codes`` bits
(read-first): port A reads for ``rd``, port B writes for ``wr`` or reads for ``rmw``, port B's address shared
by its two users (Yosys makes one copy per read port with an address of its own: three copies a buffer
before, 90 RAMB36 for ResNet-20's maps on the bench's array, 30 now). That needs ``wr`` and ``rmw`` not both
in a cycle: the writer reads (``rmw``) and writes in different cycles. Buffer 0's port A also writes for
``inp``, its address shared with ``rd``'s: the loader does not read in a cycle of an input write (the
controller holds it, ``load_hold``), and no layer writes buffer 0 while the input arrives (the controller's
"Streamed input"), so the input rows go in while the first layer already runs and the writer writes its
output on the other buffers' port B. (Until 2026-12-05 the controller wrote each input code through ``wr``,
and the first layer began only once the whole image was in; until 2026-12-04 the dispatcher read the shortcut
rows through a port ``res`` of its own on port A, on a buffer other than ``rd``'s, and placed them into each
row command.)
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from model.export.format import FMAP_BUFFERS
from model.export.golden import MAX_ACT_BITS

BUF_BITS = 2  # buffer index 0..FMAP_BUFFERS - 1


def read_signature(addr_width: int, row_codes: int) -> wiring.Signature:
    return wiring.Signature({
        "buf": Out(BUF_BITS), "addr": Out(addr_width), "en": Out(1), "data": In(MAX_ACT_BITS * row_codes),
    })


def write_signature(addr_width: int, row_codes: int) -> wiring.Signature:
    return wiring.Signature({
        "buf": Out(BUF_BITS), "addr": Out(addr_width), "en": Out(1), "mask": Out(row_codes),
        "data": Out(MAX_ACT_BITS * row_codes),
    })


def input_signature(addr_width: int, row_codes: int) -> wiring.Signature:
    """A whole word into buffer 0 (the input image's rows, written as they arrive)."""
    return wiring.Signature({"addr": Out(addr_width), "en": Out(1), "data": Out(MAX_ACT_BITS * row_codes)})


class FeatureMaps(wiring.Component):
    """:data:`FMAP_BUFFERS` buffers of ``rows`` words of ``row_codes`` codes.

    Parameters
    ----------
    rows : int
        Words per buffer: the largest ``C H`` of a map it holds.
    row_codes : int
        Codes per word: the widest map row.

    Members
    -------
    rd : In(read_signature(addr_width, row_codes))
    rmw : In(read_signature(addr_width, row_codes))
    wr : In(write_signature(addr_width, row_codes))
    inp : In(input_signature(addr_width, row_codes))
        Buffer 0 only, on port A: ``rd`` must not read in the same cycle.
    """

    def __init__(self, *, rows: int, row_codes: int):
        for name, value in (("rows", rows), ("row_codes", row_codes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        self._rows = rows
        self._row_codes = row_codes
        self._addr_width = max(ceil_log2(rows), 1)
        super().__init__({
            "rd": In(read_signature(self._addr_width, row_codes)),
            "rmw": In(read_signature(self._addr_width, row_codes)),
            "wr": In(write_signature(self._addr_width, row_codes)),
            "inp": In(input_signature(self._addr_width, row_codes)),
        })

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def row_codes(self) -> int:
        return self._row_codes

    def elaborate(self, platform):
        m = Module()
        width = MAX_ACT_BITS * self._row_codes
        rd_sel = Signal(BUF_BITS)
        rmw_sel = Signal(BUF_BITS)
        with m.If(self.rd.en):
            m.d.sync += rd_sel.eq(self.rd.buf)
        with m.If(self.rmw.en):
            m.d.sync += rmw_sel.eq(self.rmw.buf)
        for b in range(FMAP_BUFFERS):
            mem = Memory(shape=width, depth=self._rows, init=[])
            m.submodules[f"buf{b}"] = mem
            rd_b = self.rd.en & (self.rd.buf == b)
            wr_b = self.wr.en & (self.wr.buf == b)
            b_addr = Signal(self._addr_width, name=f"buf{b}_b_addr")  # port B: wr or rmw
            m.d.comb += b_addr.eq(Mux(wr_b, self.wr.addr, self.rmw.addr))
            port_a = mem.read_port()
            rmw = mem.read_port()
            wr = mem.write_port(granularity=MAX_ACT_BITS)
            a_addr, a_en = self.rd.addr, rd_b
            if b == 0:  # port A also writes the input rows (enabled on those writes too, as port B)
                a_addr = Signal(self._addr_width, name="buf0_a_addr")
                m.d.comb += a_addr.eq(Mux(self.inp.en, self.inp.addr, self.rd.addr))
                a_en = rd_b | self.inp.en
                inp = mem.write_port()
                m.d.comb += [inp.addr.eq(a_addr), inp.data.eq(self.inp.data), inp.en.eq(self.inp.en)]
            m.d.comb += [
                port_a.addr.eq(a_addr), port_a.en.eq(a_en),
                # enabled on writes too: a block RAM port's output takes the (old) word on a write, so a read
                # port that held its data across the port's writes would need a copy in FFs
                rmw.addr.eq(b_addr), rmw.en.eq((self.rmw.en & (self.rmw.buf == b)) | wr_b),
                wr.addr.eq(b_addr), wr.data.eq(self.wr.data),
                wr.en.eq(self.wr.mask & wr_b.replicate(self._row_codes)),
            ]
            with m.If(rd_sel == b):
                m.d.comb += self.rd.data.eq(port_a.data)
            with m.If(rmw_sel == b):
                m.d.comb += self.rmw.data.eq(rmw.data)
        return m
