"""Patch loader: the im2col rows of one tile, one weight position a cycle, from the row-per-word feature maps.

A tile of the array is one output row ``y`` of a conv layer (its ``W_out <= T`` pixels), or the single
"pixel" of a fully connected layer. The loader writes ``patch[p][i]``, the input code that weight position
``p`` of the layer's rows meets at pixel ``i`` (0 on the zero padding), for every ``p < fan_in``:

* **conv** (``kh = kw = k``): ``p = (c k + ky) k + kx`` (the order of golden's ``im2col`` and of the weight
  rows), the code at row ``y_in = y s + ky - pad`` and column ``x_in = i s + kx - pad`` of channel ``c``;
* **flatten** (a fully connected layer on a ``C x H x W`` map, ``torch.flatten`` order): the same loop with
  ``kh = H``, ``kw = W``, stride 1, no padding and ``y = 0``: ``p = (c H + y_in) W + x_in`` in pixel 0;
* **pooled** (a fully connected layer after a global pool, ``gap``): ``p = c``, the 16-bit sum of channel
  ``c``'s ``H W`` codes (golden's ``global_sum_pool``; bound 9 keeps it below ``2^16``) split over pixel slots
  0 (low byte) and 1 (high byte), which the engine recombines exactly (:mod:`hw.array.engine`).

**Multi-row tiles** (conv): a tile of ``rows`` output rows of ``w_out`` pixels (``rows w_out <= T``; maps
narrower than half a tile fill it with several rows) puts pixel ``(r, x)`` in slot ``r w_out + x``; each
patch row then takes ``rows`` reads (one per output row) and is written after the last: ``F rows`` cycles
a tile, ``F`` per output row as with one-row tiles.

Datapath, two stages and one read per cycle in conv and flatten modes: the counters ``(c, ky, kx)`` give
the word ``c H + y_in`` (a zero row outside ``0 <= y_in < H``); the next cycle the word's codes at columns
``>= W`` are zeroed, the row is placed at a fixed offset in a zero-extended vector and shifted by
``kx - pad`` (``-6..6``: the contract's ``pad < k <= MAX_KERNEL``), and pixel ``i`` takes code ``i s`` of
the result (``s`` 1 or 2: a 2-input multiplexer per pixel); in flatten mode pixel 0 takes code ``kx``. In pooled mode each cycle reads one row of a channel and adds its ``W`` codes (an adder tree) to the
channel's sum, which goes into the patch after the channel's last row: ``H`` cycles per channel.

The controller checks the geometry before it starts the loader (``W <= row_codes``, ``W_out <= T``, stride
1 or 2, the maps inside the buffers); the loader trusts it.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from hw.array.feature_maps import read_signature
from model.export.golden import MAX_ACT_BITS
from model.export.golden_conv import GAP_SUM_BITS, MAX_KERNEL

#: Bits of the geometry fields (maps up to 255 x 255, kernels up to 255: the descriptor's 8-bit fields).
DIM_BITS = 8


class LoadMode(enum.Enum, shape=2):
    CONV = 0
    FLATTEN = 1
    POOLED = 2


def geometry_layout(addr_width: int) -> data.StructLayout:
    """The tile the loader builds (hold from ``start`` to ``done``)."""
    return data.StructLayout({
        "mode": LoadMode,
        "buf": unsigned(2),  # the layer's in_buf
        "c_in": unsigned(16),
        "height": unsigned(DIM_BITS),
        "width": unsigned(DIM_BITS),
        "kh": unsigned(DIM_BITS),  # kernel rows (conv: k; flatten: H)
        "kw": unsigned(DIM_BITS),  # kernel columns (conv: k; flatten: W)
        "stride": unsigned(2),  # 1 or 2
        "pad": unsigned(DIM_BITS),
        "y": unsigned(DIM_BITS),  # the tile's first output row
        "rows": unsigned(DIM_BITS),  # output rows in the tile (conv; 1 otherwise)
        "w_out": unsigned(DIM_BITS),  # pixels per output row (conv; 1 otherwise): pixel i = (i div w_out, i mod w_out)
    })


def patch_write_signature(fan_in_width: int, pixels: int) -> wiring.Signature:
    return wiring.Signature({
        "addr": Out(fan_in_width), "en": Out(1), "data": Out(data.ArrayLayout(MAX_ACT_BITS, pixels)),
    })


class PatchLoader(wiring.Component):
    """Builds one tile's patch; ``start`` (a pulse) begins, ``done`` pulses after the last patch row is written.

    Parameters
    ----------
    pixels : int
        ``T``, pixel slots of a patch row.
    row_codes : int
        Codes per feature-map word (the widest map row).
    addr_width : int
        Word-address width of the feature maps.
    fan_in_width : int
        Patch address width (positions up to ``2^fan_in_width - 1``).

    Members
    -------
    geometry : In(geometry_layout(addr_width))
    start : In(1)
    done : Out(1)
    busy : Out(1)
    fmap : Out(read_signature(addr_width, row_codes))
    patch : Out(patch_write_signature(fan_in_width, pixels))
    """

    def __init__(self, *, pixels: int, row_codes: int, addr_width: int, fan_in_width: int):
        for name, value, lo in (("pixels", pixels, 2), ("row_codes", row_codes, 1), ("addr_width", addr_width, 1),
                                ("fan_in_width", fan_in_width, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {value!r}")
        self._pixels = pixels
        self._row_codes = row_codes
        self._addr_width = addr_width
        self._fan_in_width = fan_in_width
        super().__init__({
            "geometry": In(geometry_layout(addr_width)),
            "start": In(1),
            "done": Out(1),
            "busy": Out(1),
            "fmap": Out(read_signature(addr_width, row_codes)),
            "patch": Out(patch_write_signature(fan_in_width, pixels)),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        t, rc = self._pixels, self._row_codes

        # -- Stage 1: counters and the read ------------------------------------------------------------
        running = Signal()
        c = Signal(16)
        ky = Signal(DIM_BITS)
        kx = Signal(DIM_BITS)
        p = Signal(self._fan_in_width)
        base = Signal(self._addr_width + DIM_BITS)  # c H
        r = Signal(DIM_BITS)  # the tile's output row being read (conv)
        off = Signal(range(t + 1))  # r w_out: its first pixel
        y_in = Signal(signed(DIM_BITS + 3))
        pooled = g.mode == LoadMode.POOLED
        conv = g.mode == LoadMode.CONV
        y_out = Signal(DIM_BITS + 1)
        m.d.comb += [y_out.eq(g.y + r),
                     y_in.eq(Mux(pooled, ky, Mux(g.stride == 2, y_out << 1, y_out) + ky - g.pad))]
        row_ok = (y_in >= 0) & (y_in < g.height)
        last_r = ~conv | (r == g.rows - 1)
        last_kx = Mux(pooled, 1, kx == g.kw - 1)
        last_ky = ky == Mux(pooled, g.height, g.kh) - 1
        last_c = c == g.c_in - 1
        m.d.comb += [self.fmap.buf.eq(g.buf), self.fmap.addr.eq(base + y_in[:DIM_BITS]),
                     self.fmap.en.eq(running & row_ok), self.busy.eq(running | self.start)]
        with m.If(self.start):
            m.d.sync += [running.eq(1), c.eq(0), ky.eq(0), kx.eq(0), p.eq(0), base.eq(0), r.eq(0), off.eq(0)]
        with m.Elif(running & ~last_r):
            m.d.sync += [r.eq(r + 1), off.eq(off + g.w_out)]
        with m.Elif(running):
            m.d.sync += [p.eq(p + 1), r.eq(0), off.eq(0)]
            with m.If(last_kx):
                m.d.sync += kx.eq(0)
                with m.If(last_ky):
                    m.d.sync += [ky.eq(0), c.eq(c + 1), base.eq(base + g.height)]
                    with m.If(last_c):
                        m.d.sync += running.eq(0)
                with m.Else():
                    m.d.sync += ky.eq(ky + 1)
            with m.Else():
                m.d.sync += kx.eq(kx + 1)

        # -- Stage 2: place the word's codes into the pixels ------------------------------------------
        v2 = Signal()
        ok2 = Signal()
        p2 = Signal(self._fan_in_width)
        c2 = Signal(16)
        kx2 = Signal(DIM_BITS)
        first2 = Signal()  # the channel's first row (pooled)
        last2 = Signal()  # the channel's last row (pooled) / the tile's last position
        end2 = Signal()
        off2 = Signal.like(off)
        last_r2 = Signal()
        m.d.sync += [v2.eq(running), ok2.eq(row_ok), p2.eq(p), c2.eq(c), kx2.eq(kx), first2.eq(ky == 0),
                     last2.eq(last_ky), end2.eq(running & last_r & last_kx & last_ky & last_c), off2.eq(off),
                     last_r2.eq(last_r)]
        m.d.comb += self.done.eq(v2 & end2)
        codes = [Mux(ok2 & (x < g.width), self.fmap.data[MAX_ACT_BITS * x:MAX_ACT_BITS * (x + 1)], 0)
                 for x in range(rc)]

        # Conv: the codes at offset MAX_KERNEL - 1 of a zero vector, shifted by kx - pad (-6..6: pad < k <= 7),
        # pixel i takes code i s of the result. Flatten: pixel 0 takes code kx (a row_codes-input multiplexer).
        off = MAX_KERNEL - 1
        vector = Cat(Const(0, MAX_ACT_BITS * off), *codes, Const(0, MAX_ACT_BITS * 2 * t))
        amount = Signal(range(2 * off + 1))
        m.d.comb += amount.eq(off + kx2 - g.pad)
        shifted = Signal(MAX_ACT_BITS * 2 * t)
        m.d.comb += shifted.eq(vector >> (amount * MAX_ACT_BITS))
        row_vals = []
        for i in range(t):
            one = shifted[MAX_ACT_BITS * i:MAX_ACT_BITS * (i + 1)]
            two = shifted[MAX_ACT_BITS * 2 * i:MAX_ACT_BITS * (2 * i + 1)]
            row_vals.append(Mux(i < g.w_out, Mux(g.stride == 2, two, one), 0))
        # A multi-row tile: output row r's pixels go to slots r w_out .. (r + 1) w_out - 1 of the patch row,
        # which collects the tile's rows (one read each) before it is written.
        placed = Signal(MAX_ACT_BITS * t)
        m.d.comb += placed.eq(Cat(*row_vals) << (off2 * MAX_ACT_BITS))
        keep = Signal(t)  # the slots of this output row
        m.d.comb += keep.eq(Cat(*(i < g.w_out for i in range(t))) << off2)
        collected = Signal(MAX_ACT_BITS * t)
        merged = Signal(MAX_ACT_BITS * t)
        for i in range(t):
            sl = slice(MAX_ACT_BITS * i, MAX_ACT_BITS * (i + 1))
            m.d.comb += merged[sl].eq(Mux(keep[i], placed[sl], collected[sl]))
        with m.If(v2):
            m.d.sync += collected.eq(Mux(last_r2, 0, merged))
        m.d.comb += self.patch.data.as_value().eq(merged)
        column = Signal(MAX_ACT_BITS)
        with m.Switch(kx2):
            for x in range(rc):
                with m.Case(x):
                    m.d.comb += column.eq(codes[x])
        with m.If(g.mode == LoadMode.FLATTEN):
            m.d.comb += self.patch.data[0].eq(column)

        # Pooled: the channel's running sum.
        row_sum = Signal(GAP_SUM_BITS)
        total = codes[0]
        for code in codes[1:]:
            total = total + code
        m.d.comb += row_sum.eq(total)
        acc = Signal(GAP_SUM_BITS)
        acc_next = Signal(GAP_SUM_BITS)
        m.d.comb += acc_next.eq(Mux(first2, 0, acc) + row_sum)
        with m.If(v2 & pooled):
            m.d.sync += acc.eq(acc_next)
            m.d.comb += [self.patch.data[0].eq(acc_next[:8]), self.patch.data[1].eq(acc_next[8:])]

        m.d.comb += [self.patch.addr.eq(Mux(pooled, c2, p2)),
                     self.patch.en.eq(v2 & Mux(pooled, last2, last_r2))]
        return m
