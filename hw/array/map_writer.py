"""From the engines' pixel outputs to the output feature map (with max-pool) or the class scores.

Each engine emits a channel's pixels of the tile in order (``hw/array/engine.py``; a tile holds ``rows``
output rows of ``W_out`` pixels, pixel ``r W_out + x``). A :class:`RowAssembler` per engine collects them into
*output rows*: pixel ``(r, x)`` goes to code ``x`` of its row (a column counter that wraps at ``W_out``), and
each row is offered with its channel, tile and ``r`` as it closes; the :class:`MapWriter` takes one row a cycle
from the engines, round robin, and

* **stores** it at word ``channel H_out + y + r`` of the layer's ``out_buf`` (byte mask: the ``W_out``
  columns); a fully connected layer's output is a ``C x 1 x 1`` map (one code at word ``channel``);
* **max-pools** it (``pool = 2``, floor mode, ``model/export/golden_conv.max_pool_codes``): the row's codes
  pairwise (column ``x'`` is the max of ``2x'`` and ``2x' + 1``), then the even row ``y = 2y'`` is written at
  word ``channel H' + y'`` and the odd row ``2y' + 1`` is read and written back as the bytewise max (two
  cycles); the last row of an odd-height map is dropped, like the last column of an odd width;
* **scores** (``out_buf = SCORE_SINK``): the channel's 32-bit score goes into the score memory, which the
  controller streams out in class order when the network ends.

Max-pool on codes is exact (codes are unsigned and the requant is monotone, ``model/export/golden_net.py``).

A row holds :func:`row_codes_of` codes, ``W_out`` at most (``W_out <= W + pad <= row_codes + MAX_KERNEL - 1``
for a conv, 1 for an FC), not the tile's ``T``: the first version assembled whole tiles and the writer shifted
the held tile down by ``W_out`` codes after each output row, a 672-bit barrel shifter (ResNet-20's 84-pixel
tiles) beside 84-code assemblers, about 4 k LUT of the shell.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.array.engine import output_layout, tile_layout
from hw.array.feature_maps import read_signature, write_signature
from hw.array.patch_loader import DIM_BITS
from model.export.golden import MAX_ACT_BITS
from model.export.golden_conv import MAX_KERNEL


def row_codes_of(pixels: int, row_codes: int) -> int:
    """Codes of an assembled output row: ``W_out`` at most, which the tile (``pixels``) and the map rows bound."""
    return max(1, min(pixels, row_codes + MAX_KERNEL - 1))


def row_layout(channel_bits: int, codes: int) -> data.StructLayout:
    """One output row of a channel's tile (``codes`` codes: :func:`row_codes_of`), or its score (pixel 0's
    value), where its tile lies and which of the tile's rows it is."""
    return data.StructLayout({
        "channel": unsigned(channel_bits),
        "codes": data.ArrayLayout(MAX_ACT_BITS, codes),
        "score": signed(32),
        "tile": tile_layout(),
        "r": unsigned(DIM_BITS),  # the output row in the tile
        "last": unsigned(1),  # the tile's last row (its last pixel)
    })


def writer_layer_layout(addr_width: int) -> data.StructLayout:
    """What the writer needs of a row's layer (each engine's own copy: hold while its rows are written)."""
    return data.StructLayout({
        "scores": unsigned(1),  # out_buf is the score sink
        "buf": unsigned(2),  # out_buf
        "pool": unsigned(1),  # 2 x 2 max-pool
        "height": unsigned(DIM_BITS),  # rows of the stored map (after the pool)
        "width": unsigned(DIM_BITS),  # columns of the stored map (after the pool)
        "w_out": unsigned(DIM_BITS),  # pixels per output row (W_out, 1 for an FC)
        # The layer's parity: the controller's count of layers begun, mod 2. Rows of two layers may be in flight
        # (the next layer's first rows start on the engines that have finished the layer before:
        # hw/array/controller.py, "Early starts"), and each written row reports its layer by it.
        "par": unsigned(1),
    })


class RowAssembler(wiring.Component):
    """Collects an engine's pixels into output rows: pixel ``(r, x)`` of a tile into code ``x`` of row ``r``;
    a row closes on its ``W_out``-th pixel or on the tile's last pixel (marked ``last``: rows of two tiles may
    follow each other, a tile's rows carry where it lies; a tile's pixel 0 always starts row 0). A closed row
    waits in the output register while the next one collects; the pixel that closes the next one waits until
    the register is free.

    The closing pixel is written into the collecting codes like any other, and the codes are copied into the
    output register in the next cycle (a plain register copy, no multiplexer: placing the closing pixel's
    code into the copy cost a LUT a code bit, 272 LUT of an assembler's 351 at ``T = 84``); a row is offered
    one cycle after its last pixel, and a closing pixel that follows a closing pixel at once waits a cycle.

    Members
    -------
    w_out : In(DIM_BITS)
        Pixels per output row of the running layer (1 for an FC; hold while its pixels come).
    i : In(stream.Signature(output_layout(channel_bits, T)))
    o : Out(stream.Signature(row_layout(channel_bits, row_codes_of(T, row_codes))))
    busy : Out(1)
        A closed row is not yet taken (offered on ``o``, or its codes on their way into the output register).
    """

    def __init__(self, *, channel_bits: int, pixels: int, row_codes: int):
        self._codes = row_codes_of(pixels, row_codes)
        super().__init__({
            "busy": Out(1),
            "w_out": In(DIM_BITS),
            "i": In(stream.Signature(output_layout(channel_bits, pixels))),
            "o": Out(stream.Signature(row_layout(channel_bits, self._codes))),
        })

    def elaborate(self, platform):
        m = Module()
        codes = Signal(data.ArrayLayout(MAX_ACT_BITS, self._codes))
        x_next = Signal(DIM_BITS)  # the next pixel's column, as counted
        r_next = Signal(DIM_BITS)  # its output row in the tile
        p = self.i.payload
        # A tile's pixel 0 starts at column 0 of row 0 whatever the counters say (they resynchronise on every
        # tile, should a run have stopped in the middle of one).
        first = p.pixel == 0
        x = Mux(first, 0, x_next)
        r = Mux(first, 0, r_next)
        closes = p.last | (x == self.w_out - 1)
        copy = Signal()  # a row closed in the cycle before: its codes go into the output register now
        m.d.comb += [self.i.ready.eq(~closes | (~copy & (~self.o.valid | self.o.ready))),
                     self.busy.eq(copy | self.o.valid)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += copy.eq(0)
        with m.If(copy):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.codes.eq(codes)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += codes[x].eq(p.value[:MAX_ACT_BITS])
            with m.If(closes):
                # (the output register is free or taken in this cycle, so its other fields may change now)
                m.d.sync += [copy.eq(1), self.o.payload.channel.eq(p.channel),
                             self.o.payload.score.eq(p.value),
                             self.o.payload.tile.eq(p.tile), self.o.payload.r.eq(r), self.o.payload.last.eq(p.last),
                             x_next.eq(0), r_next.eq(Mux(p.last, 0, r + 1))]
            with m.Else():
                m.d.sync += [x_next.eq(x + 1), r_next.eq(r)]
        return m


class MapWriter(wiring.Component):
    """Writes the assembled output rows of ``engines`` engines, one a cycle (an odd pooled row two, the
    read-modify-write); a score one cycle. The next row is taken in the cycle the held one is written.

    Each engine's rows are written with that engine's layer fields (``layer<e>``): the engines that have
    finished a layer take the next layer's rows while the others still run the layer before, so the rows of two
    layers (two buffers, heights, widths) may come one after the other. What the held row's write needs of its
    layer is registered when the row is taken.

    Members
    -------
    layer<e> : In(writer_layer_layout(addr_width)), one per engine
        The layer of engine ``e``'s rows (hold while they are offered).
    rows : In(stream.Signature(row_layout(channel_bits, row_codes_of(T, row_codes)))) array of ``engines``
    fmap : Out(write_signature(addr_width, row_codes))
    rmw : Out(read_signature(addr_width, row_codes))
    score_addr : In(channel_bits)
    score_data : Out(signed(32))
        The score of class ``score_addr``, the cycle after.
    busy : Out(1)
        An output row is held (taken, not yet written).
    par : Out(1)
        The held row's layer parity (``writer_layer_layout``'s ``par``; ``wrote``'s with ``wrote``).
    wrote : Out(1)
        A channel's tile has been written: one cycle, with its last output row's write (the cycle its store
        enables the feature-map write; a dropped last row of a pooled map counts too), ``wrote_channel`` and
        ``wrote_y`` (the tile's first output row) naming it. The controller tracks a layer's progress by it:
        the next layer's first tile loads channel by channel as its input channels are complete
        (:mod:`hw.array.controller`).
    wrote_channel : Out(channel_bits)
    wrote_y : Out(DIM_BITS)
    """

    def __init__(self, *, engines: int, channel_bits: int, pixels: int, row_codes: int, addr_width: int):
        self._engines = engines
        self._channel_bits = channel_bits
        self._row_codes = row_codes
        self._codes = row_codes_of(pixels, row_codes)
        self._addr_width = addr_width
        members = {
            "fmap": Out(write_signature(addr_width, row_codes)),
            "rmw": Out(read_signature(addr_width, row_codes)),
            "score_addr": In(channel_bits),
            "score_data": Out(signed(32)),
            "busy": Out(1),
            "par": Out(1),
            "wrote": Out(1),
            "wrote_channel": Out(channel_bits),
            "wrote_y": Out(DIM_BITS),
        }
        for e in range(engines):
            members[f"row{e}"] = In(stream.Signature(row_layout(channel_bits, self._codes)))
            members[f"layer{e}"] = In(writer_layer_layout(addr_width))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        rc, n = self._row_codes, self._codes
        rows = [getattr(self, f"row{e}") for e in range(self._engines)]

        m.submodules.scores = scores = Memory(shape=signed(32), depth=1 << self._channel_bits, init=[])
        s_wr = scores.write_port()
        s_rd = scores.read_port()
        m.d.comb += [s_rd.addr.eq(self.score_addr), self.score_data.eq(s_rd.data)]

        # Round robin: the first engine at or after `turn` with a row.
        turn = Signal(range(max(self._engines, 2)))
        pick = Signal(range(max(self._engines, 2)))
        found = Signal()
        for off in reversed(range(self._engines)):
            for e in range(self._engines):
                with m.If((turn == e) & rows[(e + off) % self._engines].valid):
                    m.d.comb += [pick.eq((e + off) % self._engines), found.eq(1)]
        row = Signal(row_layout(self._channel_bits, n))
        lay = Signal(writer_layer_layout(self._addr_width))  # the picked row's layer
        with m.Switch(pick):
            for e in range(self._engines):
                with m.Case(e):
                    m.d.comb += [row.eq(rows[e].payload), lay.eq(getattr(self, f"layer{e}"))]

        # The held row: one output row of a channel's tile, written the cycle after it is taken (an odd pooled
        # row read the cycle after and written the one after that). Where it goes is worked out as it is
        # taken, into registers, so that the write cycle's `done_row`, and the next take by it, come from
        # registers (the take drives the assemblers' and so the engines' ready).
        held = Signal()
        codes = Signal(MAX_ACT_BITS * n)
        base = Signal(self._addr_width + DIM_BITS)  # channel H (registered product)
        y_st = Signal(DIM_BITS + 1)  # the stored row (y + r, halved under a pool)
        odd = Signal()  # a pool's odd row: read-modify-write
        dropped = Signal()  # the last row of an odd-height map under a pool
        last = Signal()  # the tile's last row
        tile_y = Signal(DIM_BITS)  # the held row's tile's first output row
        channel = Signal(self._channel_bits)  # the held row's channel
        second = Signal()  # the write cycle of a read-modify-write
        h_buf = Signal(2)  # the held row's layer: its buffer, pool, columns (a byte mask), parity
        h_pool = Signal()
        mask = Signal(rc)
        done_row = Signal()
        take = Signal()
        m.d.comb += [take.eq(found & (~held | done_row)), self.busy.eq(held)]
        for e in range(self._engines):
            m.d.comb += rows[e].ready.eq(take & (pick == e))
        y_row = Signal(DIM_BITS + 1)
        m.d.comb += y_row.eq(row.tile.y + row.r)
        y_in = Mux(lay.pool, y_row >> 1, y_row)
        with m.If(done_row):
            m.d.sync += held.eq(0)
        with m.If(take):
            m.d.sync += turn.eq(Mux(pick == self._engines - 1, 0, pick + 1))
            with m.If(lay.scores):
                m.d.comb += [s_wr.addr.eq(row.channel), s_wr.data.eq(row.score), s_wr.en.eq(1)]
            with m.Else():
                m.d.sync += [held.eq(1), codes.eq(row.codes.as_value()), base.eq(row.channel * lay.height),
                             y_st.eq(y_in), odd.eq(lay.pool & y_row[0]), dropped.eq(y_in >= lay.height),
                             last.eq(row.last), tile_y.eq(row.tile.y), channel.eq(row.channel), second.eq(0),
                             h_buf.eq(lay.buf), h_pool.eq(lay.pool), self.par.eq(lay.par),
                             mask.eq(Cat(*(x < lay.width for x in range(rc))))]

        # The row's codes, pooled pairwise when pooling (x' = max(2x', 2x' + 1)).
        stored = Signal(MAX_ACT_BITS * rc)
        for x in range(rc):
            a = codes[MAX_ACT_BITS * x:MAX_ACT_BITS * (x + 1)] if x < n else 0
            lo = codes[MAX_ACT_BITS * 2 * x:MAX_ACT_BITS * (2 * x + 1)] if 2 * x < n else 0
            hi = codes[MAX_ACT_BITS * (2 * x + 1):MAX_ACT_BITS * (2 * x + 2)] if 2 * x + 1 < n else 0
            m.d.comb += stored[MAX_ACT_BITS * x:MAX_ACT_BITS * (x + 1)].eq(Mux(h_pool, Mux(lo > hi, lo, hi), a))
        addr = Signal(self._addr_width + DIM_BITS)
        m.d.comb += addr.eq(base + y_st)
        merged = Signal.like(stored)
        for x in range(rc):
            sl = slice(MAX_ACT_BITS * x, MAX_ACT_BITS * (x + 1))
            m.d.comb += merged[sl].eq(Mux(stored[sl] > self.rmw.data[sl], stored[sl], self.rmw.data[sl]))

        # (the data matter only with `en`: a 2:1 a bit, no zero default)
        m.d.comb += [self.fmap.buf.eq(h_buf), self.rmw.buf.eq(h_buf), self.rmw.addr.eq(addr),
                     self.fmap.addr.eq(addr), self.fmap.mask.eq(mask), self.fmap.data.eq(Mux(odd, merged, stored))]
        with m.If(held):
            with m.If(dropped):
                m.d.comb += done_row.eq(1)
            with m.Elif(odd & ~second):
                m.d.comb += self.rmw.en.eq(1)
                m.d.sync += second.eq(1)
            with m.Elif(odd):
                m.d.comb += [self.fmap.en.eq(1), done_row.eq(1)]
            with m.Else():
                m.d.comb += [self.fmap.en.eq(1), done_row.eq(1)]
        m.d.comb += [self.wrote_channel.eq(channel), self.wrote_y.eq(tile_y), self.wrote.eq(done_row & last)]
        return m
