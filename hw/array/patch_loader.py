"""Patch loader: the im2col rows of one tile from the row-per-word feature maps, one map word read a cycle.

A tile of the array is one output row ``y`` of a conv layer (its ``W_out <= T`` pixels), or the single
"pixel" of a fully connected layer. The loader writes ``patch[p][i]``, the input code that weight position
``p`` of the layer's rows meets at pixel ``i`` (0 on the zero padding), for every ``p < fan_in``:

* **conv** (``kh = kw = k``): ``p = (c k + ky) k + kx`` (the order of golden's ``im2col`` and of the weight
  rows), the code at row ``y_in = y s + ky - pad`` and column ``x_in = i s + kx - pad`` of channel ``c``;
* **flatten** (a fully connected layer on a ``C x H x W`` map, ``torch.flatten`` order): the same loop with
  ``kh = H``, ``kw = W``, stride 1, no padding and ``y = 0``: ``p = (c H + y_in) W + x_in`` in pixel 0;
* **pooled** (a fully connected layer after a global pool, ``gap``): ``p = c``, the 16-bit sum of channel
  ``c``'s ``H W`` codes (golden's ``global_sum_pool``; bound 9 keeps it below ``2^16``) split over pixel slots
  0 (low byte) and 1 (high byte), which the engine recombines exactly (:mod:`hw.array.engine`); its other
  slots are left undefined (a pooled FC runs lane 0 alone, on an edge layer without the vertical compensation).

**Multi-row tiles** (conv): a tile of ``rows`` output rows of ``w_out`` pixels (``rows w_out <= T``; maps
narrower than half a tile fill it with several rows) puts pixel ``(r, x)`` in slot ``r w_out + x``; each
patch row then takes ``rows`` reads (one per output row) and is written after the last (``F rows`` cycles
a tile with one column a read; the column groups below cut that to about ``F rows / 3`` for 3 x 3 kernels).

**Several kernel columns a read** (conv and flatten): the ``k`` patch rows ``(c, ky, kx)`` of one ``(c, ky)``
read the same map words, so the loader places each word it reads into ``columns`` patch rows at once (kernel
columns ``kx0 .. kx0 + columns - 1``, a *group*); a group of ``n`` columns costs ``max(rows, n)`` cycles instead
of ``n rows``: ResNet-20's 3 x 3 layer3 tile (7 rows of 7 pixels) loads in ``7 C 3`` cycles instead of
``21 C 3``. The group's first column is written when its last word is placed, the others queue in registers
and are written one a cycle while the next group reads (a group's last read waits until the queue has drained).
Patch rows are written in increasing position order, position 0 first (after a residual layer's shortcut
rows, below).

Datapath, three stages and one read per cycle: the counters ``(c, ky, kx0, r)`` give the word ``c H + y_in``
(a zero row outside ``0 <= y_in < H``); the next cycle the word's codes at columns ``>= W`` are zeroed into a
register (the block RAM's output comes late in its cycle); the cycle after, the row, at a fixed offset in a
zero-extended vector, is shifted by one amount, ``kx0 - pad - s r w_out`` codes, after which slot ``q`` of
column ``j`` is code ``s q + j`` of the result (a 2-input multiplexer a slot for the stride) in the slots of
output row ``r`` (a mask of ``T`` bits, :mod:`hw.array.slot_mask`, registered beside the word). A flatten
layer is the same with ``w_out = 1``. Measured at ``T = 84``, 28-code words (Yosys): 8.0 k LUT, 3.8 k FF
(11.8 k LUT with the mask as a shifted thermometer, the written row a three-way multiplexer with zeros, the
queue shifting between its registers and the clear folded into the data). In pooled
mode each cycle reads one row of a channel and adds its ``W`` codes (an adder tree) to the
channel's sum, which goes into the patch after the channel's last row: ``H`` cycles per channel.

**Shortcut rows** (a residual conv layer, ``res``): besides the ``fan_in`` im2col rows the loader writes one
patch row per channel ``c < C_r`` of the shortcut's map (``res_buf``, ``C_r`` channels of ``H_r`` rows), at
position ``fan_in + c`` (``res_p + c``), before the im2col rows (the shortcut map is complete when the layer
starts, so these load while the channel gate may still hold the im2col rows of an overlapped layer): the code at ``(y s_r, x s_r)`` for pixel ``(y, x)``, golden's ``shortcut_a``: the same
loop as a 1 x 1 kernel on that map at stride ``s_r`` without padding (``rows`` cycles a channel). The engine
reads its row's shortcut codes there (:mod:`hw.array.engine`), so no shortcut codes travel with the row
commands (they did, 672 bits a command at ``T = 84``: the controller's placement network and 536 LUT of LUT RAM
an engine for the command queue). The channel gate (``channels``) does not hold these reads: the shortcut map
is the block's input, complete before the layer starts. (The row gate, ``rows``, holds every read while the
input image streams in; only the first layer runs then, and it has no shortcut.)

The controller checks the geometry before it starts the loader (``W <= row_codes``, ``W_out <= T``, stride
1 or 2, the maps inside the buffers); the loader trusts it.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from hw.array.feature_maps import read_signature
from hw.array.slot_mask import at_least, row_slot_mask
from model.export.golden import MAX_ACT_BITS
from model.export.golden_conv import GAP_SUM_BITS, MAX_KERNEL

#: Bits of the geometry fields: maps up to 255 x 255 (the controller refuses a larger input or output map with
#: ``BAD_GEOMETRY``; :func:`hw.array.sizing.needs` refuses such an image before a build), kernels up to 255.
DIM_BITS = 8
#: The largest map side those fields hold.
MAX_MAP_SIDE = (1 << DIM_BITS) - 1
#: Kernel columns placed from one map read: 3, the kernel of ResNet-20 and VGG (a wider group would cost a
#: column's placement registers and multiplexers, ~T bytes each, for 5 x 5 and 7 x 7 kernels only).
LOADER_COLUMNS = 3


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
        # A residual conv layer's shortcut (the module docstring's "Shortcut rows"): its map's buffer, channels
        # and rows, and its subsampling.
        "res": unsigned(1),
        "res_buf": unsigned(2),
        "res_c": unsigned(16),
        "res_h": unsigned(DIM_BITS),
        "res_stride": unsigned(2),  # 1 or 2
        "res_p": unsigned(16),  # the first shortcut row's position: the layer's fan_in
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
    channels : In(16)
        Input channels the loader may read: a read of channel ``c >= channels`` waits (the controller raises
        it as the layer before writes its output channels, so that a layer's first tile loads while that
        layer drains; all ones otherwise).
    done_rows : In(DIM_BITS)
        Map rows written in every channel (the layer before's rows above its last tile, while it drains): a
        tile that reads no row at or below ``done_rows`` loads whatever ``channels`` says (0: no such rows).
    rows : In(addr_width + 1)
        Feature-map words written so far (the input image's rows as they arrive, the controller's "Streamed
        input"; ``2^addr_width`` once all are): a channel's reads wait until the word of the last map row the
        tile reads of it lies below ``rows``.
    hold : In(1)
        No read in this cycle (buffer 0's port A writes an input row).
    done : Out(1)
    busy : Out(1)
    shortcut : Out(1)
        The patch row written in this cycle is a shortcut row (not one of the patch's activations).
    fmap : Out(read_signature(addr_width, row_codes))
    patch : Out(patch_write_signature(fan_in_width, pixels))
    """

    def __init__(self, *, pixels: int, row_codes: int, addr_width: int, fan_in_width: int,
                 columns: int = LOADER_COLUMNS):
        for name, value, lo in (("pixels", pixels, 2), ("row_codes", row_codes, 1), ("addr_width", addr_width, 1),
                                ("fan_in_width", fan_in_width, 1), ("columns", columns, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {value!r}")
        self._pixels = pixels
        self._row_codes = row_codes
        self._addr_width = addr_width
        self._fan_in_width = fan_in_width
        self._columns = columns
        super().__init__({
            "geometry": In(geometry_layout(addr_width)),
            "start": In(1),
            "channels": In(16, init=0xFFFF),
            "done_rows": In(DIM_BITS),
            "rows": In(addr_width + 1, init=1 << addr_width),
            "hold": In(1),
            "done": Out(1),
            "busy": Out(1),
            "shortcut": Out(1),
            "fmap": Out(read_signature(addr_width, row_codes)),
            "patch": Out(patch_write_signature(fan_in_width, pixels)),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        t, rc, cols = self._pixels, self._row_codes, self._columns
        pooled = g.mode == LoadMode.POOLED
        conv = g.mode == LoadMode.CONV
        # The shortcut phase (first, in a residual conv layer: its map is complete, so it loads while the channel
        # gate may still hold the im2col rows): a 1 x 1 "kernel" on the shortcut's map at its stride, no
        # padding, its channels' rows at positions fan_in + c.
        sc = Signal()
        with_sc = conv & g.res
        buf_e = Mux(sc, g.res_buf, g.buf)
        c_in_e = Mux(sc, g.res_c, g.c_in)
        height_e = Mux(sc, g.res_h, g.height)
        kh_e = Mux(sc, 1, g.kh)
        kw_e = Mux(sc, 1, g.kw)
        stride_e = Mux(sc, g.res_stride, g.stride)
        pad_e = Mux(sc, 0, g.pad)

        # -- The queue of a group's later columns (written one a cycle after the group's last placement) ----
        queued = Signal(range(cols))
        queued_next = Signal(range(cols))
        place_last = Signal()  # stage 3 places a group's last word this cycle (it writes the group's column 0)
        group_n3 = Signal(range(cols + 1))  # columns of that group
        queued_ahead = Signal(range(cols))  # the queue two cycles on (when a read issued now is placed)

        done = Signal()  # the tile's last patch row is written (not reported in a restart's cycle)
        write = Signal()  # a patch row is written (not in a restart's cycle)

        # -- Stage 1: counters and the read ------------------------------------------------------------
        running = Signal()
        c = Signal(16)
        ky = Signal(DIM_BITS)
        kx0 = Signal(DIM_BITS)  # the group's first kernel column
        p = Signal(self._fan_in_width)  # the group's first position
        base = Signal(self._addr_width + DIM_BITS)  # c H
        r = Signal(DIM_BITS)  # the tile's output row being read (conv)
        off = Signal(range(t + 1))  # r w_out: its first pixel
        y_in = Signal(signed(DIM_BITS + 3))
        y_out = Signal(DIM_BITS + 1)
        m.d.comb += [y_out.eq(g.y + r),
                     y_in.eq(Mux(pooled, ky, Mux(stride_e == 2, y_out << 1, y_out) + ky - pad_e))]
        left = Signal(DIM_BITS)  # kernel columns from kx0 on
        m.d.comb += left.eq(kw_e - kx0)
        group_n = Signal(range(cols + 1))
        m.d.comb += group_n.eq(Mux(pooled, 1, Mux(left < cols, left, cols)))
        row_ok = (y_in >= 0) & (y_in < height_e)
        last_r = ~conv | (r == g.rows - 1)
        last_kx = Mux(pooled, 1, left <= cols)
        last_ky = ky == Mux(pooled, g.height, kh_e) - 1
        last_c = c == c_in_e - 1
        last_phase = ~sc
        # A group's last read waits until the previous group's queue is empty when it is placed (two cycles on).
        # (`start` restarts the loader even in the middle of a tile, e.g. a new run after a fault: nothing of
        # the old tile is read, placed or written after it; see the end of elaborate.)
        # The row gate (``rows``), per channel and between registers: a channel's reads wait until the last map
        # row the tile reads of it is in (`y_hi`, `y_last`, then `allowed`: three register
        # stages, since the compare in `go` on each read's own address made the shell's slowest path, 92.7 MHz,
        # and with the row in one stage the geometry's adders did, 90.8 MHz). (`y_last` is not clipped to the
        # map: a tile that reaches into the bottom padding waits for the next word, one row later, or for the
        # input's end.) They are stale for three cycles after the counters move (a new channel, phase or tile:
        # `moved`), so while a limit applies (the input streams in) the loader reads at most every fourth
        # cycle. `rows` only grows.
        limited = ~self.rows[self._addr_width]
        y_hi = Signal(DIM_BITS + 3)  # the tile's last output row, at the stride
        y_last = Signal(DIM_BITS + 4)  # the last map row the tile reads: y_hi + kh - 1 - pad (conv)
        m.d.sync += [y_hi.eq(Mux(stride_e == 2, (g.y + g.rows - 1) << 1, g.y + g.rows - 1)),
                     y_last.eq(Mux(pooled, height_e - 1, y_hi + kh_e - 1 - pad_e))]
        allowed = Signal()
        m.d.sync += allowed.eq(base + y_last < self.rows)
        moved = Signal(3)
        # The channel gate's row twin (``done_rows``): the tile's rows are written in every channel. `y_last`
        # depends on the tile and the layer only, so the compare is stale only in the two cycles after a start.
        rows_done = Signal()
        fresh = Signal(2)
        m.d.sync += [rows_done.eq(y_last < self.done_rows), fresh.eq(Cat(self.start, fresh[0]))]
        go = (running & ~self.start & ~self.hold & ~(last_r & (queued_ahead != 0))
              & (sc | (c < self.channels) | (rows_done & (fresh == 0)))
              & (~limited | (allowed & (moved == 0))))
        m.d.sync += moved.eq(Cat(go | self.start, moved[:2]))
        in_flight = Signal()  # a word or queued columns not yet written
        m.d.comb += [self.fmap.buf.eq(buf_e), self.fmap.addr.eq(base + y_in[:DIM_BITS]),
                     self.fmap.en.eq(go & row_ok), self.busy.eq(running | self.start | in_flight)]
        with m.If(self.start):
            m.d.sync += [running.eq(1), c.eq(0), ky.eq(0), kx0.eq(0), p.eq(Mux(with_sc, g.res_p, 0)), base.eq(0),
                         r.eq(0), off.eq(0), sc.eq(with_sc)]
        with m.Elif(go & ~last_r):
            m.d.sync += [r.eq(r + 1), off.eq(off + g.w_out)]
        with m.Elif(go):
            m.d.sync += [p.eq(p + group_n), r.eq(0), off.eq(0)]
            with m.If(last_kx):
                m.d.sync += kx0.eq(0)
                with m.If(last_ky):
                    m.d.sync += [ky.eq(0), c.eq(c + 1), base.eq(base + height_e)]
                    with m.If(last_c & last_phase):
                        m.d.sync += running.eq(0)
                    with m.Elif(last_c):  # the im2col rows follow the shortcut rows
                        m.d.sync += [sc.eq(0), c.eq(0), base.eq(0), p.eq(0)]
                with m.Else():
                    m.d.sync += ky.eq(ky + 1)
            with m.Else():
                m.d.sync += kx0.eq(kx0 + cols)

        # One shift places the word for every column of the group: slot q of column j takes code
        # s q + j of the word shifted right by kx0 - pad - s off codes, at offset `zero` of a zero vector.
        # (kx0 < row_codes: a flatten layer's groups run along the whole row.)
        zero = 2 * t + MAX_KERNEL
        amount = Signal(range(zero + max(rc, MAX_KERNEL)))
        amount1 = Signal.like(amount)
        m.d.comb += amount1.eq(zero + kx0 - pad_e - Mux(stride_e == 2, off << 1, off))

        # -- Stage 2: the word arrives; its codes past the map's width (and a padding row's) are zeroed into a
        # register (the block RAM's output is late in the cycle: the placement and the pooled sum run from
        # the register, stage 3).
        v2 = Signal()
        ok2 = Signal()
        r2 = {name: Signal(shape, name=f"{name}2") for name, shape in (
            ("p", self._fan_in_width), ("c", 16), ("first", 1), ("last", 1), ("end", 1), ("off", off.shape()),
            ("last_r", 1), ("group_n", group_n.shape()), ("amount", amount.shape()), ("sc", 1), ("two", 1))}
        m.d.sync += [v2.eq(go), ok2.eq(row_ok), r2["p"].eq(p), r2["c"].eq(c), r2["first"].eq(ky == 0),
                     r2["last"].eq(last_ky), r2["end"].eq(last_kx & last_ky & last_c & last_phase), r2["off"].eq(off),
                     r2["last_r"].eq(last_r), r2["group_n"].eq(group_n), r2["amount"].eq(amount1),
                     r2["sc"].eq(sc), r2["two"].eq(stride_e == 2)]
        codes3 = Signal(MAX_ACT_BITS * rc)
        # (a shortcut row keeps every code: its pixels x s_r lie on its map)
        inside = at_least(Mux(r2["sc"], (1 << DIM_BITS) - 1, g.width), rc + 1)  # width >= x + 1: code x is on the map
        m.d.sync += codes3.eq(Cat(*(Mux(ok2 & inside[x + 1], self.fmap.data[MAX_ACT_BITS * x:MAX_ACT_BITS * (x + 1)], 0)
                                    for x in range(rc))))
        place_ahead = v2 & r2["last_r"] & ~pooled  # stage 3 places a group's last word next cycle
        m.d.comb += queued_ahead.eq(Mux(place_ahead, r2["group_n"] - 1, Mux(queued_next != 0, queued_next - 1, 0)))

        # -- Stage 3: place the word's codes into the pixels ------------------------------------------
        v3 = Signal()
        p3 = Signal(self._fan_in_width)
        c3 = Signal(16)
        first3 = Signal()  # the channel's first row (pooled)
        last3 = Signal()  # the channel's last row (pooled)
        end3 = Signal()  # the tile's last group
        last_r3 = Signal()
        two3 = Signal()  # the word's stride is 2
        sc3 = Signal()  # the word is a shortcut row's
        m.d.sync += [v3.eq(v2), two3.eq(r2["two"]), sc3.eq(r2["sc"]), p3.eq(r2["p"]), c3.eq(r2["c"]), first3.eq(r2["first"]),
                     last3.eq(r2["last"]),
                     end3.eq(r2["end"]), last_r3.eq(r2["last_r"]), group_n3.eq(r2["group_n"]),
                     amount.eq(r2["amount"])]
        codes = [codes3[MAX_ACT_BITS * x:MAX_ACT_BITS * (x + 1)] for x in range(rc)]
        span = 2 * t + cols  # codes the columns read: up to s (T - 1) + cols - 1
        vector = Cat(Const(0, MAX_ACT_BITS * zero), *codes, Const(0, MAX_ACT_BITS * span))
        shifted = Signal(MAX_ACT_BITS * span)
        m.d.comb += shifted.eq(vector >> (amount * MAX_ACT_BITS))
        keep = Signal(t)  # the slots of output row r: off .. off + w_out - 1 (registered from stage 2)
        m.d.sync += keep.eq(row_slot_mask(r2["off"], g.w_out, t))
        merged = []  # per column: this word's codes in its output row's slots, the rows placed before elsewhere
        for j in range(cols):
            col = Signal(MAX_ACT_BITS * t, name=f"merged{j}")
            kept = Signal(MAX_ACT_BITS * t, name=f"collected{j}")
            for q in range(t):
                one = shifted[MAX_ACT_BITS * (q + j):MAX_ACT_BITS * (q + j + 1)]
                two = shifted[MAX_ACT_BITS * (2 * q + j):MAX_ACT_BITS * (2 * q + j + 1)]
                sl = slice(MAX_ACT_BITS * q, MAX_ACT_BITS * (q + 1))
                m.d.comb += col[sl].eq(Mux(keep[q], Mux(two3, two, one), kept[sl]))
            # One clear (a group's last word, or a restart: the old tile's rows are dropped), the FFs' synchronous
            # reset; a word placed otherwise. (A clear folded into the data as Mux(last, 0, col) cost a LUT a bit.)
            with m.If(self.start | (v3 & last_r3)):
                m.d.sync += kept.eq(0)
            with m.Elif(v3):
                m.d.sync += kept.eq(col)
            merged.append(col)

        # The queue: columns 1 .. n - 1 of the group placed last, written in order after its column 0.
        ready = [Signal(MAX_ACT_BITS * t, name=f"ready{j}") for j in range(cols - 1)]
        q_addr = Signal(self._fan_in_width)
        final = Signal()  # the queue holds the tile's last rows
        writing_queue = ~place_last & (queued != 0)
        m.d.comb += [place_last.eq(v3 & last_r3 & ~pooled),
                     queued_next.eq(Mux(place_last, group_n3 - 1, Mux(queued != 0, queued - 1, 0)))]
        m.d.sync += queued.eq(queued_next)
        # Each queued column keeps its register until the next group's last word; `head` says which is written
        # (a register's input is then its column's merge alone, no shift between the registers).
        head = Signal(range(max(cols - 1, 1)))
        with m.If(place_last):
            m.d.sync += [q_addr.eq(p3 + 1), final.eq(end3), head.eq(0)]
            m.d.sync += [ready[j - 1].eq(merged[j]) for j in range(1, cols)]
        with m.Elif(writing_queue):
            m.d.sync += [q_addr.eq(q_addr + 1), head.eq(head + 1)]

        # Pooled: the channel's running sum.
        row_sum = Signal(GAP_SUM_BITS)
        total = codes[0]
        for code in codes[1:]:
            total = total + code
        m.d.comb += row_sum.eq(total)
        acc = Signal(GAP_SUM_BITS)
        acc_next = Signal(GAP_SUM_BITS)
        m.d.comb += acc_next.eq(Mux(first3, 0, acc) + row_sum)
        with m.If(v3 & pooled):
            m.d.sync += acc.eq(acc_next)

        # The row written: a group's column 0 as it is placed, else the queue's head (a pooled sum overrides the
        # low slots below). The data matter only with `en`, so no cycle drives zeros: one 2:1 a bit.
        queue_head = Signal(MAX_ACT_BITS * t)
        if ready:
            m.d.comb += queue_head.eq(Array(ready)[head] if len(ready) > 1 else ready[0])
        m.d.comb += self.patch.data.as_value().eq(Mux(place_last, merged[0], queue_head))
        with m.If(v3 & pooled):
            m.d.comb += [self.patch.addr.eq(c3), write.eq(last3),
                         self.patch.data[0].eq(acc_next[:8]), self.patch.data[1].eq(acc_next[8:]),
                         done.eq(last3 & end3)]
        with m.Elif(place_last):
            m.d.comb += [self.patch.addr.eq(p3), write.eq(1), done.eq(end3 & (group_n3 == 1)),
                         self.shortcut.eq(sc3)]
        with m.Elif(writing_queue):
            m.d.comb += [self.patch.addr.eq(q_addr), write.eq(1), done.eq(final & (queued == 1))]
        m.d.comb += [in_flight.eq(v2 | v3 | (queued != 0)), self.done.eq(done & ~self.start),
                     self.patch.en.eq(write & ~self.start)]
        # A restart drops what the old tile had in flight (these assignments win over the ones above).
        with m.If(self.start):
            m.d.sync += [v3.eq(0), queued.eq(0), final.eq(0)]
        return m
