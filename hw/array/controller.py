"""Array controller: reads the image's header and layer descriptors at run time and sequences the array.

One run (``start`` to ``done``) infers one image:

1. **Header** (8 words at address 0): magic, version 3 or 4, the layer count, the input shape; refused with a
   :class:`~hw.array.status.Status` code when the array cannot hold it. A version 4 (vertical-layered) image
   has a vertical header next (its stored widths, the Eq. 12 table): see "Version 4" below.
2. **Input**: the image's ``C H W`` input codes arrive on ``x`` in ``(c, y, x)`` order, up to one a cycle,
   and go into feature-map buffer 0 a row at a time while the layers below already run ("Streamed input").
3. For each layer: its 16-word **descriptor** (``model/export/format.py``, ``LAYER``), the derived geometry
   (output map, pooled map, the loader's mode) and the checks of :class:`~hw.array.status.Status`
   ``BAD_GEOMETRY`` (among them: a layer must read the codes the previous layer wrote, the header's input for
   layer 0: its ``in_bits`` must be that layer's ``out_bits`` (the header's ``input_bits``), its ``in_buf``,
   ``c_in``, ``in_height`` and ``in_width`` the buffer and the map as stored that layer wrote (buffer 0 and the
   header's map); the input map and the conv's output map at most ``2^DIM_BITS - 1`` (255) rows
   and columns, what the loader's, the writer's and the tile counters' fields hold; the fan-in at most
   ``MAX_FAN_IN``; a pooled FC within golden's bounds 9 and 6,
   :data:`POOL_AREA_LIMIT` and :data:`POOL_MASS_LIMIT`; a version 3 layer's regions where the format puts them,
   ``misplaced``); then for each **tile** (an output row of a conv
   layer, the one "pixel" of a fully connected layer) the patch loader builds the tile's patch, the
   **dispatcher** reads each output channel's row end (row pointer ``j + 1``, ``ptr_bits`` bits at bit
   ``(j + 1) ptr_bits`` of the row table; ``stream_bits`` for the last row; the row's start is the row before's
   end, 0 for the first: each row's engine fetches no weight word past its end), its requant parameter
   record (a residual layer's shortcut multiplier ``M_r`` zero for the channels past the block input's
   ``C_r``: option A's zero channels; an ``M`` or ``M_r`` past ``MULT_BITS`` bits ends the run with
   ``BAD_STREAM``, since the command holds 17 bits), and hands the row command to the first engine that takes
   one; a residual layer's shortcut codes are patch rows (the loader's "Shortcut rows", at positions past the
   im2col rows), which the engine reads itself. Tiles overlap: once a tile's last command is taken and
   the next tile's patch is loaded, that tile's commands follow (each command names its patch bank and its
   tile, so an engine finishes the last rows of one tile while it starts the next, and the writer places
   each row by its own tile); the tile after that loads into the first bank when no engine holds a row of
   it any more. A layer with a max-pool (the writer's read-modify-write pairs rows that two tiles may
   share) or a vertical compensation (one activation-sum register per bank, read by the running tile)
   waits instead until every engine and the writer have drained, as does the end of such a layer and of
   every version 4 layer; other layers overlap the next (below).
4. **Scores**: the last layer's outputs (``out_buf = SCORE_SINK``) leave on ``o`` in class order.

**Streamed input.** Once the header is accepted the controller takes input codes (``x.ready``) until the
image's last one, whatever else it does: a row's codes gather in a register and the cycle after its last code
the row goes into buffer 0 as one word (port A, ``fmap_in``; the loader holds that cycle, ``load_hold``). The
rows arrive in address order (row ``y`` of channel ``c`` is word ``c H + y``), so the loader may read a
channel of a tile once the word of the last row the tile reads of it lies below the count of rows in
(``load_rows``), and the first layer's descriptor, checks and tiles go on meanwhile: ResNet-20's stem starts
after its first four input rows instead of after all 784 codes. While the input arrives only layer 0 runs, which
reads buffer 0 and writes another (the checks refuse any other layer 0); every other layer's dispatch waits for
the input's end (the layer after layer 0 writes buffer 0, and a late input row would land on its output: a
stride-2 stem does not read the last row).
A run that ends before the input is in (a refused layer, a fault) raises ``done`` once it is, so the host's
stream stays aligned to runs: every run takes exactly its image's codes, except a run refused at its header,
which takes none (its input shape is not trusted; the Zynq shell ends a batch on any error status). A code of
more than the header's ``input_bits`` bits is taken modulo ``2^input_bits`` (its high bits dropped: the passes'
P bounds assume codes below it; the driver refuses such a code before a run, as golden does). (Before
2026-12-05 the controller took the whole input first, one code a cycle through the writer's port.)

**Overlapped layers.** When a version 3 layer that is not the last and does not max-pool starts its last
tile, the controller sets up the next layer at once (``pending``): it reads the next descriptor, checks it,
and has the next layer's first tile loaded into the patch bank the last tile does not read (``load_wait``:
once no engine holds a row of the tile before), then goes on dispatching the running layer's last tile from
its own copy of that layer's fields (``dd``: the dispatcher's, set with the engines' and the writer's when a
layer's first tile starts, so a new descriptor changes nothing of a running layer). The loader reads input
channel ``c`` only once channel ``c`` of the running layer is written in full (``load_channels``): every row
of the tiles before the last (commands taken and rows the writer reports written, counted) and channel
``c`` of the last tile (a bit per channel, set by the writer's ``wrote``). The engines take channels in
order, so they are written roughly in order and the load follows the writes through the whole last tile;
ResNet-20's layer3 (one tile a layer) used to load 1,344 cycles after each layer's last write. Beside the
channel gate, a row gate (``load_done_rows``, 2026-12-05): once every row of the tiles before the last is
written, the rows above the last tile's first row are complete in every channel, and a tile of the next layer
that reads none of the rows below (the first tile of a layer after one of several tiles: ResNet-20's layer1
and layer2) loads at once instead of one channel behind the last tile's writes. A next layer's input is the
running layer's output map as stored (buffer, channels, height, width: the checks refuse any other); one the
checks refuse ends the run once the running layer's queued rows have drained. ``layer_index`` moves on
when a layer has drained, as without the overlap; ``overlaps`` counts a run's overlapped layers. Without
the channel gate the loader would read rows the writer has not written yet (the tests of
``tests/hw/array/test_top.py`` fail without it).

**Early starts** (2026-12-05). Once the running layer's last row is taken and the next layer's first tile is
loaded, the next layer's rows begin (unless it max-pools) without waiting for the drain: each engine has its own
copy of the layer's fields (``hw/array/top.py``), which follows ``layer`` and ``writer`` while the engine holds
no row, and a row is offered only to the engines whose copy is the dispatcher's layer (its parity, ``writer.par``,
the other one each layer). So the engines that finish the layer before first start the next one's rows at
once, instead of idling until the slowest has drained and then taking their first rows one dispatch (9 cycles)
after another. The writer writes each engine's rows with that engine's copy, so rows of both layers may come
one after the other. While the layer before drains (``draining``, until ``caught_up``): the counts of the
channel and row gates take only the dispatcher's layer's writes (``wrote_par``); the next tiles of the
dispatcher's layer load only once the layer before is written in full (``load_channels`` 0: its gates follow one
layer's writes); and the set-up of the layer after (``pending``) waits (``want_next``, between two rows of the
last tile; if the tile ends first, the layer drains as without the overlap), so that rows of at most two layers
are in flight. ``early_starts`` counts a run's early starts. A fault while the layer before drains leaves
``layer_index`` on the layer it belongs to: the dispatcher's for a bad row record or an error of an engine on that
layer, the one before for an error of an engine still running it.

The patch is double-buffered: while the engines work on a tile, the loader fills the other bank with the
next tile (the loader reads ``in_buf``, and a residual layer's shortcut rows of ``res_buf``, through the
feature maps' ``rd`` port), so a layer's loads hide behind its compute except the first.

**Version 4** (``docs/image_format.md``; ``docs/array_design.md``, "Vertical-layered images"): the run's
widths come from ``precision`` (every inner layer; 0: the source width) or from row ``table_row`` of the
image's Eq. 12 table (``use_table``), sampled at ``start`` and checked against the stored widths
(``BAD_PRECISION``). Per layer the controller reads the 10-word vertical descriptor and the table bytes of
this layer's and the next layer's widths, derives ``(in_bits, out_bits)`` as golden's ``code_widths`` does,
finds that pair's requant group (heads searched in order, at most :data:`MAX_REQUANT_GROUPS`; running a table
row, the row's own group comes first where the image has one: BN re-estimated for the row) and builds the
version 3 view of the layer in ``desc`` (a signed layer; the feature-map buffers assigned as a residual
network needs them: a layer writes the lowest buffer other than its input, a residual layer the third one; the
input map from the header or the previous layer's stored map; for a residual layer, conv2 of a block, the
shortcut is the previous layer's input at its stride, and its group is found by ``(in_bits, out_bits,
res_bits)``), so that the checks, the loader, the
dispatcher and the writer run unchanged. The engines get the plane decoder's fields (planes of the width,
code shift ``t + 1``, class 8, or the 8-bit edge in class 16) and ``comp_shift``; a row command carries
``j fan_in`` and the row's ``negate`` bit, read from the group's negate words where version 3 reads a row
pointer.

The residual map's shape is the previous layer's input (a residual layer is conv2 of a block whose conv1 is
the layer before it, ``model/export/layout_v3.py``). The dispatcher reads 3 to 6 words per row command in 5 to 7
cycles (the row pointer's second word only when the pointer reaches into it, no pointer for a layer's last row,
the shortcut multiplier only in a residual layer; a word not read costs no cycle): each word it does not read
leaves the global buffer's first read port to the engines behind it (``docs/array_design.md``, "The global
buffer's read ports"); caching the commands' words is a next step.
"""

from __future__ import annotations

import functools
import operator

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.array.engine import engine_layer_layout, row_command_layout
from hw.array.feature_maps import input_signature
from hw.array.map_writer import writer_layer_layout
from hw.array.patch_loader import DIM_BITS, MAX_MAP_SIDE, LoadMode, geometry_layout
from hw.array.status import Status
from hw.core.global_buffer import buffer_port_signature
from hw.core.image_layout import record_layout
from model.export.format import (
    FMAP_BUFFERS,
    HEADER,
    KIND_CONV,
    LAYER,
    MAGIC,
    PARAMS,
    RES_PARAMS,
    SCORE_SINK,
    VERTICAL_VERSION,
    VHEADER,
    VLAYER,
    VREQUANT,
    WORD_BITS,
)
from model.export.golden import MAX_ACT_BITS, MAX_FAN_IN, MAX_SHIFT, MULT_BITS
from model.export.golden_conv import ACT_SUM_BOUND, GAP_SUM_BITS, MAX_KERNEL

HEADER_LAYOUT = record_layout(HEADER)
LAYER_LAYOUT = record_layout(LAYER)
VHEADER_LAYOUT = record_layout(VHEADER, VERTICAL_VERSION)
VLAYER_LAYOUT = record_layout(VLAYER, VERTICAL_VERSION)
VREQUANT_LAYOUT = record_layout(VREQUANT, VERTICAL_VERSION)
VERSION_3 = 3
#: Per input width ``b`` (1..MAX_ACT_BITS): the largest pooled area ``H W`` whose sum of ``b``-bit codes stays
#: below ``2^GAP_SUM_BITS`` (golden's bound 9, ``(2^b - 1) H W < 2^16``: the loader's pooled sum holds 16 bits).
POOL_AREA_LIMIT = tuple(((1 << GAP_SUM_BITS) - 1) // ((1 << b) - 1) for b in range(1, MAX_ACT_BITS + 1))
#: ... and the largest ``C H W`` whose pooled FC stays within bound 6 (``(2^b - 1) H W`` times the fan-in ``C`` at
#: most ``ACT_SUM_BOUND``: the requantizer's ``X`` and the lanes' pass sums are sized for it).
POOL_MASS_LIMIT = tuple(ACT_SUM_BOUND // ((1 << b) - 1) for b in range(1, MAX_ACT_BITS + 1))
#: Largest source width of a vertical image's inner layers the array runs: their effective codes must fit
#: class 8 (``model.export.golden_vertical.inner_class``), as the plane decoder emits them.
MAX_VERTICAL_TOP = 6
#: Widest edge codes the plane decoder composes (``hw.array.plane_decoder.MAX_CODE_BITS``).
MAX_EDGE_BITS = 8
#: The strides and max-pool windows the loader and the writer run (a conv layer with others is BAD_GEOMETRY; the
#: integer contract allows strides 1-4 and any pool window: hw.array.sizing.needs names them before a build).
#: A constant, not a parameter: the output map's halving below (``>> (stride == 2)``), the loader's stride
#: multiplexers (``stride_e == 2``) and the shortcut's subsampling are built for exactly these two.
ARRAY_STRIDES = (1, 2)
ARRAY_MAX_POOL = 2
#: Most requant groups a vertical layer may have, so that the group search of a corrupt image ends: one per
#: triple of input, output and shortcut widths (at most 5^3 = 125 with widths 2..MAX_VERTICAL_TOP) and one per
#: table row (at most 128, the rows ``precision`` can name).
MAX_REQUANT_GROUPS = 256


class ArrayController(wiring.Component):
    """The run's sequence (module docstring).

    Parameters
    ----------
    engines, pixels, row_codes, fmap_rows, fmap_addr_width, fan_in_width, channel_bits, addr_width : int
        The array's configuration (:class:`~hw.array.top.ConvArray`).
    buffer_words : int or None
        Words the global buffer holds (``2^addr_width`` when None): a header whose ``words`` is more ends
        the run with ``BAD_GEOMETRY`` (the image cannot have been loaded whole).
    vertical : bool
        Whether the engines have the version 4 path; without it version 4 images end with ``BAD_VERSION``.

    Members
    -------
    start : In(1)
    done : Out(1)
        One cycle, at the end of a run, with ``status`` already saying how it ended.
    busy : Out(1)
    status : Out(Status)
        Held from ``done`` until the next ``start``.
    precision, use_table, table_row : In
        A version 4 (vertical) image's widths: every inner layer at ``precision`` bits (0: the source
        width, the largest stored), or with
        ``use_table`` the widths of row ``table_row`` of the image's Eq. 12 table (sampled at ``start``;
        ignored for version 3 images).
    layer_index : Out(16)
        The running layer (it moves on when a layer's last output is written).
    overlaps : Out(16)
        Layers of this run set up while the layer before ran its last tile, with an input the loader may read
        as that layer writes it ("Overlapped layers"); cleared at ``start``.
    early_starts : Out(16)
        Layers of this run whose rows began while the layer before still drained ("Early starts"); cleared at
        ``start``.
    x : In(stream.Signature(MAX_ACT_BITS))
        Input codes.
    o : Out(stream.Signature(signed(32)))
        Class scores.
    bus : Out(buffer_port_signature(addr_width))
    loader : Out(geometry_layout), load_start : Out(1), load_done : In(1)
    load_channels : Out(16)
        The input channels the loader may read (all while no layer drains; see "Overlapped layers" above).
    load_done_rows : Out(DIM_BITS)
        While a layer drains: the running layer's output rows below this are written in every channel (the
        rows of the tiles before its last), so the loader may read them whatever ``load_channels`` says; 0
        otherwise ("Overlapped layers" above).
    load_bank, comp_bank : Out(1)
        The patch bank the loader writes and the one the engines read (a double-buffered patch).
    layer : Out(engine_layer_layout())
    cmd<e> : Out(stream.Signature(row_command_layout(...))), one per engine
    engine_error : In(engines)
    engine_on : In(engines)
        Per engine: its copy of the layer's fields is the dispatcher's layer (``caught_up``); a fault of an engine
        that is not, while the layer before drains, is that layer's.
    writer : Out(writer_layer_layout(fmap_addr_width))
    drained : In(1)
        No row in any engine, assembler or the writer.
    caught_up : In(1)
        No row of the layer before the one the engines and the writer were last given (``writer.par``) in any
        engine, assembler or the writer: each engine follows ``layer`` and ``writer`` once it holds no row
        (:class:`~hw.array.top.ConvArray`), and is offered the rows only when its copy is this layer's.
    wrote, wrote_channel, wrote_y, wrote_par : In
        The writer has written channel ``wrote_channel``'s outputs of the tile whose first output row is
        ``wrote_y`` (all its rows; :class:`~hw.array.map_writer.MapWriter`).
    engine_holds : In(2)
        Per patch bank: some engine holds a row of that bank whose patch reads may not be over
        (:class:`~hw.array.engine.ChannelEngine` ``holds``); the loader refills a bank only when none does.
    score_addr : Out(channel_bits), score_data : In(signed(32))
    fmap_in : Out(input_signature)
        The input image's rows, into buffer 0 (``"Streamed input"``).
    load_rows, load_hold : Out
        The input rows in buffer 0 so far (the loader's row gate; ``2^fmap_addr_width`` once the input is in)
        and a cycle in which the loader may not read (buffer 0's port A writes a row).
    """

    def __init__(self, *, engines: int, pixels: int, row_codes: int, fmap_rows: int, fmap_addr_width: int,
                 fan_in_width: int, channel_bits: int, addr_width: int, vertical: bool = True,
                 buffer_words: int | None = None):
        self._g = engines
        self._t = pixels
        self._rc = row_codes
        self._rows = fmap_rows
        self._faw = fmap_addr_width
        self._fw = fan_in_width
        self._cb = channel_bits
        self._aw = addr_width
        self._words = (1 << addr_width) if buffer_words is None else buffer_words
        if not 2 <= self._words <= 1 << addr_width:
            raise ValueError(f"buffer_words must be 2 to 2^addr_width = {1 << addr_width}, not {buffer_words}")
        self._vertical = bool(vertical)  # version 4 images run (else BAD_VERSION)
        members = {
            "start": In(1),
            "done": Out(1),
            "busy": Out(1),
            "status": Out(Status),
            "precision": In(4),
            "use_table": In(1),
            "table_row": In(16),
            "layer_index": Out(16),
            "overlaps": Out(16),
            "early_starts": Out(16),
            "x": In(stream.Signature(MAX_ACT_BITS)),
            "o": Out(stream.Signature(signed(32))),
            "bus": Out(buffer_port_signature(addr_width)),
            "loader": Out(geometry_layout(fmap_addr_width)),
            "load_start": Out(1),
            "load_done": In(1),
            "load_channels": Out(16),
            "load_done_rows": Out(DIM_BITS),
            "load_bank": Out(1),
            "comp_bank": Out(1),
            "layer": Out(engine_layer_layout()),
            "engine_error": In(engines),
            "engine_on": In(engines),
            "writer": Out(writer_layer_layout(fmap_addr_width)),
            "drained": In(1),
            "caught_up": In(1),
            "wrote": In(1),
            "wrote_par": In(1),
            "wrote_channel": In(channel_bits),
            "wrote_y": In(DIM_BITS),
            "engine_holds": In(2),
            "score_addr": Out(channel_bits),
            "score_data": In(signed(32)),
            "fmap_in": Out(input_signature(fmap_addr_width, row_codes)),
            "load_rows": Out(fmap_addr_width + 1),
            "load_hold": Out(1),
        }
        for e in range(engines):
            members[f"cmd{e}"] = Out(stream.Signature(row_command_layout(addr_width, channel_bits, pixels)))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        t, rc = self._t, self._rc

        # -- Registers -------------------------------------------------------------------------------
        header = Signal(HEADER_LAYOUT)
        desc = Signal(LAYER_LAYOUT)
        k = Signal(range(LAYER.words + 2))  # word counter of a record read
        k_prev = Signal.like(k)  # the word whose data arrives now
        k_read = Signal(range(6))  # the dispatcher's word requested in the cycle before (READ)
        m.d.comb += k_prev.eq(k - 1)
        layer_idx = Signal(16)
        pending = Signal()  # the layer before still drains while this one's descriptor and first tile load
        draining = Signal()  # this layer's rows have begun, and the layer before still drains
        want_next = Signal()  # the next layer's set-up waits for the layer before this one to drain
        cmd_fault = Signal()  # the run ends on a row record of the dispatcher's layer (COMMAND)
        m.d.comb += self.layer_index.eq(layer_idx - (pending | draining))
        overlaps = Signal(16)
        early_starts = Signal(16)
        m.d.comb += [self.overlaps.eq(overlaps), self.early_starts.eq(early_starts)]
        desc_base = Signal(self._aw + 1)
        # Derived geometry of the running layer.
        h_out = Signal(DIM_BITS + 2)
        w_out = Signal(DIM_BITS + 2)
        h_st = Signal(DIM_BITS + 2)  # stored map (after the pool)
        w_st = Signal(DIM_BITS + 2)
        y = Signal(DIM_BITS)  # the tile's first output row
        full_rows = Signal(DIM_BITS)  # output rows of a full tile: T // w_out (conv), 1 (FC)
        tile_rows = Signal(DIM_BITS)  # output rows of this tile
        tile_px = Signal(range(t + 1))  # its pixels, tile_rows w_out
        ly = Signal(DIM_BITS)  # the tile being loaded (double buffer): its first row and rows
        l_rows = Signal(DIM_BITS)
        load_bank = Signal()  # the patch bank the loader writes
        comp_bank = Signal()  # the patch bank the engines read
        loading = Signal()  # the next tile's load is under way (or waits for its bank: load_wait)
        loaded = Signal()  # ... and finished
        load_wait = Signal()  # the next tile's load waits until no engine holds a row of its bank
        prev_c = Signal(16)  # the previous layer's input: the shortcut's map
        prev_h = Signal(16)
        prev_w = Signal(16)
        last_layer = Signal()
        # Dispatcher.
        j = Signal(16)
        ptr_bit = Signal(32)  # (j + 1) ptr_bits: row j's end pointer, the pointer the dispatcher reads
        # Row j's first bit in the global buffer: row j - 1's end (the stream's first bit for the first row).
        row_start = Signal(self._aw + 5)
        param_addr = Signal(32)
        words = Signal(6 * WORD_BITS)  # row pointer (2 words), params (3, or 4 with a shortcut)
        cmd_valid = Signal()
        cmd = Signal(row_command_layout(self._aw, self._cb, t))
        status = Signal(Status)
        m.d.comb += self.status.eq(status)
        # Version 4 (vertical) images.
        v4 = Signal()
        vhdr = Signal(VHEADER_LAYOUT)
        vdesc = Signal(VLAYER_LAYOUT)
        prec = Signal(4)  # the run's precision inputs, sampled at start
        use_table = Signal()
        trow = Signal(16)
        table_row_base = Signal(32)  # first word of the table row
        twords = Signal(2 * WORD_BITS)  # the table words of this layer's and the next layer's widths
        w_cur = Signal(8)  # this inner layer's width (a table byte: checked against the stored widths)
        w_next = Signal(8)  # the next inner layer's width
        prev_out = Signal(8)  # the previous layer's output width: this layer's input width
        prev_cout = Signal(16)
        prev_in = Signal(8)  # the previous layer's input width: a residual layer's shortcut width
        prev_stride = Signal(8)  # ... its stride: the shortcut's subsampling
        prev_res = Signal()  # ... whether it added a shortcut itself (a block's conv1 does not)
        prev_pool = Signal()  # ... whether it max-pooled (a block's conv1 does not)
        cur_buf = Signal(2)  # the feature-map buffer holding this layer's input
        prev_buf = Signal(2)  # ... and the previous layer's (the block input, for a residual layer)
        net_fc = Signal()  # layer 0 is an FC: the network is an MLP
        grp = Signal(32)  # requant group being looked at, and its address
        grp_addr = Signal(32)
        head = Signal(VREQUANT_LAYOUT)
        neg_base = Signal(32)  # the group's negate bits
        row_first = Signal(32)  # j fan_in: the row's first weight
        # A version 4 group's records: c_out (M, B), or (M, B, M_r) for a residual layer.
        rec_words = Mux(vdesc.residual, vdesc.c_out << 2, (vdesc.c_out << 1) + vdesc.c_out)
        group_words = Signal(32)  # a group's words, registered in VWIDTH_PICK
        next_inner = Signal()  # the next layer is an inner one, likewise

        d = desc
        is_conv = d.kind == KIND_CONV
        # The dispatcher's copy of the running layer (set when its first tile starts, with the engines' and the
        # writer's): the next layer's descriptor, geometry and first load may come into `desc` while the running
        # layer's last tile is dispatched ("Overlapped layers").
        dd = Signal(LAYER_LAYOUT)
        dw_out = Signal.like(w_out)
        dprev_c = Signal.like(prev_c)
        # The engines' and the writer's view of the layer in `desc`, and the registers they take it from, set
        # when the layer's first tile starts (the next layer's descriptor may come into `desc` while this one
        # drains: "Overlapped layers" in the module docstring).
        layer_view = Signal(engine_layer_layout())
        writer_view = Signal(writer_layer_layout(self._faw))
        run_layer = Signal(engine_layer_layout())
        run_writer = Signal(writer_layer_layout(self._faw))
        m.d.comb += [self.layer.eq(run_layer), self.writer.eq(run_writer)]
        m.d.comb += [
            # The engines' view of the layer.
            layer_view.stream.fan_in.eq(d.fan_in), layer_view.stream.classes.eq(d.classes),
            layer_view.stream.pos_bits.eq(d.pos_bits),
            layer_view.act_bits.eq(Mux(d.gap, MAX_ACT_BITS, d.in_bits)), layer_view.signed.eq(d.signed),
            layer_view.residual.eq(d.residual), layer_view.gap.eq(d.gap), layer_view.shift.eq(d.shift),
            layer_view.out_bits.eq(d.out_bits),
            # A vertical layer's planes at the run's width (module docstring).
            layer_view.vertical.eq(v4),
            layer_view.planes.fan_in.eq(vdesc.fan_in), layer_view.planes.base_bits.eq(vdesc.base_bits),
            layer_view.planes.planes.eq(Mux(vdesc.edge, 0, w_cur - vdesc.base_bits)),
            layer_view.planes.code_shift.eq(Mux(vdesc.edge, 0, vdesc.top_bits - w_cur + 1)),
            layer_view.planes.cls.eq(Mux(vdesc.edge, 2, 1)),
            layer_view.planes.base_addr.eq(vdesc.weight_base),
            layer_view.planes.plane_addr.eq(vdesc.weight_base + vdesc.base_words),
            layer_view.planes.plane_words.eq(vdesc.plane_words),
            layer_view.comp_shift.eq(Mux(v4 & vdesc.compensate & ~vdesc.edge, vdesc.top_bits - w_cur, 0)),
            # The loader's tile.
            self.loader.mode.eq(Mux(is_conv, LoadMode.CONV, Mux(d.gap, LoadMode.POOLED, LoadMode.FLATTEN))),
            self.loader.buf.eq(d.in_buf), self.loader.c_in.eq(d.c_in), self.loader.height.eq(d.in_height),
            self.loader.width.eq(d.in_width),
            self.loader.kh.eq(Mux(is_conv, d.kernel, d.in_height)),
            self.loader.kw.eq(Mux(is_conv, d.kernel, d.in_width)),
            self.loader.stride.eq(Mux(is_conv, d.stride, 1)), self.loader.pad.eq(Mux(is_conv, d.padding, 0)),
            self.loader.y.eq(ly), self.loader.rows.eq(Mux(is_conv, l_rows, 1)),
            self.loader.w_out.eq(Mux(is_conv, w_out, 1)),
            # A residual layer's shortcut rows, at positions fan_in + c (the shortcut map: the previous layer's
            # input; the loader builds them for a conv tile only).
            self.loader.res.eq(d.residual), self.loader.res_buf.eq(d.res_buf),
            self.loader.res_c.eq(prev_c), self.loader.res_h.eq(prev_h), self.loader.res_stride.eq(d.res_stride),
            self.loader.res_p.eq(d.fan_in),
            # The writer's.
            writer_view.scores.eq(d.out_buf == SCORE_SINK), writer_view.buf.eq(d.out_buf),
            writer_view.pool.eq(d.pool == 2), writer_view.height.eq(h_st), writer_view.width.eq(w_st),
            writer_view.w_out.eq(w_out),
            writer_view.par.eq(~run_writer.par),  # taken at a layer's start: each layer the other parity
        ]
        for c, (cb, rk) in enumerate(zip(("count_bits4", "count_bits8", "count_bits16", "count_bits32"),
                                         ("rice_k4", "rice_k8", "rice_k16", "rice_k32"))):
            m.d.comb += [layer_view.stream.count_bits[c].eq(getattr(d, cb)),
                         layer_view.stream.rice_k[c].eq(getattr(d, rk))]

        # Geometry checks of the descriptor in `desc` (combinational, registered into `bad`).
        k_ok = (d.kernel >= 1) & (d.kernel <= MAX_KERNEL) & (d.padding < d.kernel)
        stride_ok = functools.reduce(operator.or_, (d.stride == s for s in ARRAY_STRIDES))
        fits_in = ((d.in_height + 2 * d.padding) >= d.kernel) & ((d.in_width + 2 * d.padding) >= d.kernel)
        conv_h = ((d.in_height + 2 * d.padding - d.kernel) >> (d.stride == 2)) + 1
        conv_w = ((d.in_width + 2 * d.padding - d.kernel) >> (d.stride == 2)) + 1
        # The output map's size, registered in the MEASURE state (its adders were the head of the shell's slowest
        # path, into the checks and the state register); the checks and the tiles use the registers.
        g_hout = Signal(DIM_BITS + 2)
        g_wout = Signal(DIM_BITS + 2)
        pool2 = is_conv & (d.pool == 2)
        g_hst = Mux(pool2, g_hout >> 1, g_hout)
        g_wst = Mux(pool2, g_wout >> 1, g_wout)
        scores = d.out_buf == SCORE_SINK
        # The layer kinds in the order the format allows (layout_v3's reader; golden_net.check_network): an MLP
        # (layer 0 an FC) is FCs on 1 x 1 maps without the global pool; a conv net is convs, then one FC, its last
        # layer. A conv scoring layer ran to OK with each class's last output pixel as its score.
        mlp = Mux(layer_idx == 0, ~is_conv, net_fc)
        out_of_order = Mux(mlp, is_conv | d.gap | (d.in_height != 1) | (d.in_width != 1), is_conv == scores)
        # The products the checks need, registered in the MEASURE and MEASURE_OUT states (a multiplier each, then
        # a register).
        in_rows = Signal(32)
        out_rows = Signal(32)
        res_rows = Signal(32)
        res_end = Signal(17)  # fan_in + C_r: a residual layer's shortcut rows end there in the patch
        fan = Signal(32)
        # H W of a pooled FC's input map (bound 9) and C H W (bound 6): exact for every layer the other checks
        # pass (H, W < 2^DIM_BITS, C H <= fmap_rows); a wider one is refused by those.
        gap_area = Signal(2 * DIM_BITS)
        gap_mass = Signal(32)
        # The fan-in's checks (against the geometry, the patch and bound 7) and a pooled FC's bounds 9 and 6,
        # compared in MEASURE_LIMITS and registered: from the descriptor through the limit table and the
        # comparators into `bad` they were the shell's slowest path (106.7 MHz against 108.7).
        fan_bad = Signal()
        # The chain (registered in MEASURE_LIMITS with `fan_bad`): the layer reads the buffer and the map as stored
        # that the layer before wrote (`cur_buf`, `prev_cout`, `h_st`, `w_st`; the header's map and buffer 0 for
        # layer 0, set in HEADER_CHECK). Without it a layer could read codes wider than its `in_bits` (e.g. the
        # 8-bit input read as 1-bit codes): its passes, sized for `in_bits`, wrapped the lanes' 48-bit P with
        # status OK (docs/array_design.md, "The controller's contract checks"). A version 4 layer's view chains
        # by construction (TRANSLATE).
        unchained = Signal()
        # A residual layer's block (registered in MEASURE_LIMITS): it follows the block's conv1 (a layer that is not
        # itself residual and does not max-pool), neither pooled; its shortcut is the block input (conv1's input
        # buffer, `prev_buf`), of at most its channels, subsampled by `res_stride` to its own output map, and it
        # runs at stride 1 (golden_net's `_check_residual`; the reader refuses the same). Without it a shortcut read
        # from a stale buffer or of another map, or a pooled block conv, ran to OK with other scores than the
        # reader's golden (docs/array_design.md, "A residual layer's block").
        unblocked = Signal()
        # A version 3 layer's regions where the format puts them (layout_v3's reader: the requant records, the row
        # pointers and the stream follow the descriptors and each other, and the last layer's stream ends at the
        # header's `words`): `region_next` is where this layer's records must start (the descriptors' end for
        # layer 0, the layer before's stream end after it), and the spans are registered in MEASURE and
        # MEASURE_OUT, compared in MEASURE_LIMITS (`misplaced`). Without it a flipped `param_base` ran to OK with
        # other scores (another layer's records read as this one's), as did a `row_base` or `stream_base` whose
        # rows happened to decode (docs/array_design.md, "Row ends and regions").
        region_next = Signal(33)
        param_span = Signal(19)  # c_out records of 3 words (4 with a shortcut)
        ptr_span = Signal(24)  # c_out pointers of ptr_bits bits
        row_exp = Signal(33)
        stream_exp = Signal(33)
        region_end = Signal(33)  # the word after the layer's stream
        misplaced = Signal()
        area_limit = Signal(range(POOL_AREA_LIMIT[0] + 1))
        mass_limit = Signal(range(POOL_MASS_LIMIT[0] + 1))
        with m.Switch(d.in_bits):  # (in_bits outside 1..MAX_ACT_BITS is refused by its own check)
            for b in range(1, MAX_ACT_BITS + 1):
                with m.Case(b):
                    m.d.comb += [area_limit.eq(POOL_AREA_LIMIT[b - 1]), mass_limit.eq(POOL_MASS_LIMIT[b - 1])]
        hdr_rows = Signal(32)
        descs_end = Signal(40)  # the word after the last descriptor (registered in HEADER_MEASURE; 32-bit count)
        bad = Signal()
        m.d.comb += bad.eq(
            (d.kind > KIND_CONV) | (d.in_buf >= FMAP_BUFFERS)
            | (d.in_height == 0) | (d.in_width == 0) | (d.c_in == 0) | (d.c_out == 0)
            | (d.in_height >= 1 << DIM_BITS) | (d.in_width > rc) | (in_rows > self._rows)
            # (The output map: H + 2p - k + 1 reaches 255 + k - 1 for p = k - 1, and its 8-bit tile rows would
            # wrap, so the tile loop never ended: refused. Its width is refused past the tile, `g_wout > t`,
            # which on a build of fewer than 128 lanes is the same check; an input row past 255 codes is past
            # `row_codes`, which ArrayConfig keeps below 256.)
            | (g_hout > MAX_MAP_SIDE) | ((g_wout > MAX_MAP_SIDE) if t > MAX_MAP_SIDE else 0)
            | (d.c_out > 1 << self._cb) | fan_bad | unchained | unblocked | misplaced
            | (d.in_bits == 0) | (d.in_bits > MAX_ACT_BITS) | (d.shift == 0) | (d.shift > MAX_SHIFT)
            | (d.in_bits != prev_out)  # the codes this layer reads are the previous layer's (the header's input)
            | (scores != last_layer) | out_of_order
            | Mux(scores, (d.out_bits != 0) | d.residual,
                  (d.out_bits == 0) | (d.out_bits > MAX_ACT_BITS) | (d.out_buf >= FMAP_BUFFERS)
                  | (d.out_buf == d.in_buf) | (out_rows > self._rows) | (g_wst > rc))
            | Mux(is_conv, ~k_ok | ~stride_ok | ~fits_in | (g_wout > t) | d.gap | (d.pool > ARRAY_MAX_POOL),
                  (d.pool != 0) | d.residual | (d.kernel != 1) | (d.stride != 1) | (d.padding != 0))
            | (d.residual & ((d.res_buf >= FMAP_BUFFERS) | (d.res_buf == d.out_buf) | (d.res_buf == d.in_buf)
                             | ((d.res_stride != 1) & (d.res_stride != 2)) | (res_rows > self._rows)
                             | (res_end >= 1 << self._fw)))
        )

        # -- Dispatcher reads: up to 6 words in up to 7 cycles ---------------------------------------
        rec = Mux(dd.residual, RES_PARAMS.words, PARAMS.words)
        ptr_word = dd.row_base + (ptr_bit >> 5)
        last_row = j == dd.c_out - 1
        # Row j's end in the stream: pointer j + 1, or the stream's length for the last row (no pointer read).
        row_end = Signal(self._aw + 5)  # (relative to the stream)
        read_addr = Signal(self._aw)
        with m.Switch(k):
            with m.Case(0):  # version 4: the word of the group's negate bits holding row j's
                m.d.comb += read_addr.eq(Mux(v4, neg_base + (j >> 5), ptr_word))
            with m.Case(1):
                m.d.comb += read_addr.eq(ptr_word + 1)
            for n in range(4):
                with m.Case(2 + n):
                    m.d.comb += read_addr.eq(param_addr + n)
        pair = Signal(2 * WORD_BITS)
        m.d.comb += pair.eq(words[:2 * WORD_BITS] >> ptr_bit[:5])
        ptr = Signal(WORD_BITS)
        m.d.comb += ptr.eq(pair[:WORD_BITS] & ((Const(1, WORD_BITS + 1) << dd.ptr_bits[:6]) - 1))
        one_word = Signal()  # row j's end pointer lies in the first of its two words
        m.d.comb += one_word.eq(ptr_bit[:5] + dd.ptr_bits[:6] <= WORD_BITS)
        m.d.comb += row_end.eq(Mux(last_row, dd.stream_bits, ptr))

        res_live = Signal()  # the channel has a shortcut input (j < C_r; option A's other channels add zero)

        # Rows of a full tile, T // w_out, from a table (w_out <= T after the geometry check), at most 255 (the
        # field's; a tile of more rows than the map's 255 would not be full anyway).
        table_rows = Signal(DIM_BITS)
        with m.Switch(g_wout):
            for w in range(1, t + 1):
                with m.Case(w):
                    m.d.comb += table_rows.eq(min(t // w, MAX_MAP_SIDE))
        rows_left = Signal(DIM_BITS + 2)  # output rows after the tile being loaded
        m.d.comb += [self.load_bank.eq(load_bank), self.comp_bank.eq(comp_bank)]
        with m.If(self.load_done):
            m.d.sync += loaded.eq(1)
        # A deferred load starts once no engine holds a row of the bank it fills (the previous tile's).
        with m.If(load_wait & ~self.engine_holds.bit_select(load_bank, 1)):
            m.d.comb += self.load_start.eq(1)
            m.d.sync += load_wait.eq(0)

        # -- Engines' command ports ------------------------------------------------------------------
        cmds = [getattr(self, f"cmd{e}") for e in range(self._g)]
        chosen = Signal(range(max(self._g, 2)))
        any_ready = Signal()
        for e in reversed(range(self._g)):
            with m.If(cmds[e].ready):
                m.d.comb += [chosen.eq(e), any_ready.eq(1)]
        for e in range(self._g):
            m.d.comb += [cmds[e].payload.eq(cmd), cmds[e].valid.eq(cmd_valid & (chosen == e) & any_ready)]
        taken = cmd_valid & any_ready

        # -- The running layer's written channels (overlapped layers, module docstring) -----------------
        # Rows of the tiles before the last: commands taken and rows written (complete when equal, once the
        # last tile's rows are dispatched); the last tile's (output row `y`) channels written, one bit each;
        # `avail`: channels 0 .. avail - 1 complete, so the next layer's loader may read them. (The count of
        # earlier rows matters only when a channel's row of the last tile is written before its row of an
        # earlier tile, on another engine; the engines take rows in order and at most two tiles run, so that
        # is rare: no test net nor `bench fuzz`'s 3,000 layers met it with the check removed, 2026-12-02.
        # It stays, since nothing in the order of the writes rules it out.)
        last_tile = ~loading  # the dispatch is in the layer's last tile (`loading` is set at each tile's PREP)
        early_cmds = Signal(32)
        early_wrote = Signal(32)
        chans = 1 << self._cb
        ch_done = Signal(chans)
        avail = Signal(range(chans + 1))
        late = last_tile & (self.wrote_y == y)
        wrote = self.wrote & (self.wrote_par == run_writer.par)  # (not a row of the layer before, draining)
        with m.If(taken & ~last_tile):
            m.d.sync += early_cmds.eq(early_cmds + 1)
        with m.If(wrote & ~late):
            m.d.sync += early_wrote.eq(early_wrote + 1)
        with m.If(wrote & late):
            m.d.sync += ch_done.bit_select(self.wrote_channel, 1).eq(1)
        early_done = early_wrote == early_cmds
        with m.If(early_done & (avail < chans) & ch_done.bit_select(avail[:self._cb], 1)):
            m.d.sync += avail.eq(avail + 1)
        # (The next layer's input is the running layer's output map as stored: the checks refuse any other. While
        # the layer before the dispatcher's drains, the dispatcher's next tiles read that layer's output: they load
        # once it is written in full.)
        m.d.comb += self.load_channels.eq(Mux(draining, 0, Mux(pending, avail, 0xFFFF)))
        with m.If(draining & self.caught_up):
            m.d.sync += draining.eq(0)
        # The row gate beside it: once every row of the tiles before the last is written, the rows above the last
        # tile's first one are complete in every channel, and a next-layer tile that reads no row below them
        # (a layer of several tiles: its first tile reads the map's first rows) loads without waiting for the
        # last tile's channels (the loader's `done_rows`).
        m.d.comb += self.load_done_rows.eq(Mux(pending & last_tile & early_done, y, 0))

        # -- Input codes -----------------------------------------------------------------------------
        # (Streamed input, module docstring.) The codes of a row gather in `in_row`; the cycle after its last
        # one, the word is written into buffer 0 (port A; the loader holds) and the loader may read it.
        # ``x.ready`` and ``o.valid`` come from registers, not from the state decode: a simulator that evaluates
        # combinational blocks only on a change (Icarus) would otherwise leave them undefined until the state
        # first changes.
        taking = Signal()  # codes of this run's input are still to come
        xin_x = Signal(DIM_BITS)  # the column of the next code
        in_next = Signal(self._faw + 1)  # input rows complete (the word address of the row arriving)
        in_row = Signal(MAX_ACT_BITS * rc)
        in_wr = Signal()  # the last complete row's word is written now
        # The codes' low `input_bits` bits: the passes' P bounds hold for codes below 2^input_bits only (merged
        # passes of 1-bit codes: 4,096 products of up to 2^32 - 1 each), and nothing but the host stands between
        # the stream and the header's input_bits (the driver and golden refuse a wider code; the array takes it
        # modulo 2^input_bits, a defined result, instead of letting P wrap).
        in_mask = Signal(MAX_ACT_BITS)
        in_addr = Signal(self._faw)  # its address (in_next - 1 then: registered, no subtractor on the RAM's address)
        inputting = taking | in_wr
        m.d.comb += [self.x.ready.eq(taking), self.fmap_in.en.eq(in_wr), self.fmap_in.addr.eq(in_addr),
                     self.fmap_in.data.eq(in_row), self.load_hold.eq(in_wr),
                     self.load_rows.eq(Mux(inputting, in_next, 1 << self._faw))]
        m.d.sync += in_wr.eq(0)
        with m.If(taking & self.x.valid):
            m.d.sync += in_row.word_select(xin_x[:max(rc - 1, 1).bit_length()], MAX_ACT_BITS).eq(
                self.x.payload & in_mask)
            with m.If(xin_x == header.in_width - 1):
                m.d.sync += [xin_x.eq(0), in_wr.eq(1), in_addr.eq(in_next), in_next.eq(in_next + 1)]
                with m.If(in_next + 1 == hdr_rows):
                    m.d.sync += taking.eq(0)
            with m.Else():
                m.d.sync += xin_x.eq(xin_x + 1)
        scoring = Signal()  # o.valid, likewise
        m.d.comb += [self.o.valid.eq(scoring), self.o.payload.eq(self.score_data)]

        engine_fault = self.engine_error.any()
        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        # ``done`` is a register set with ``status``: both change in the same cycle.
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += self.done.eq(done)

        def read_record(record, base, words):
            """Read ``words`` words from ``base`` into ``record``, one a cycle (``k`` counts from 0; a word lands
            the cycle after its request); the condition that the last has landed."""
            m.d.comb += [self.bus.req.eq(k < words), self.bus.addr.eq(base + k)]
            m.d.sync += k.eq(k + 1)
            with m.If(k > 0):
                m.d.sync += record.as_value().word_select(k_prev, WORD_BITS).eq(self.bus.data)
            return k == words

        end_code = Signal(Status)

        def finish(code):
            """End the run with ``code`` (state END: once the input is in)."""
            m.d.sync += [end_code.eq(code), pending.eq(0), draining.eq(0), want_next.eq(0)]
            m.next = "END"

        def next_layer():
            """The running layer's facts the next one needs, and the next descriptor's address."""
            m.d.sync += [layer_idx.eq(layer_idx + 1), k.eq(0), prev_c.eq(d.c_in), prev_h.eq(d.in_height),
                         prev_w.eq(d.in_width),
                         desc_base.eq(desc_base + Mux(v4, VLAYER.words, LAYER.words)),
                         prev_out.eq(d.out_bits), prev_cout.eq(d.c_out), prev_in.eq(d.in_bits),
                         prev_stride.eq(d.stride), prev_res.eq(d.residual), prev_buf.eq(d.in_buf),
                         prev_pool.eq(d.pool != 0), net_fc.eq(mlp),
                         cur_buf.eq(d.out_buf)]
            with m.If(v4):
                m.next = "VDESC"
            with m.Else():
                m.next = "DESC"

        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [busy.eq(1), k.eq(0), status.eq(Status.OK), prec.eq(self.precision), overlaps.eq(0),
                             early_starts.eq(0), cmd_fault.eq(0),
                             use_table.eq(self.use_table), trow.eq(self.table_row)]
                m.next = "HEADER"

            with m.State("HEADER"), m.If(read_record(header, 0, HEADER.words)):
                m.next = "HEADER_MEASURE"

            with m.State("HEADER_MEASURE"):
                # The products the checks compare, registered (a product, its carry chain and the checks in
                # one cycle were the shell's slowest path: 66 MHz).
                vert_m = (header.version == VERTICAL_VERSION) & self._vertical
                m.d.sync += [hdr_rows.eq(header.in_channels * header.in_height),
                             descs_end.eq(Mux(vert_m, HEADER.words + VHEADER.words + VLAYER.words * header.layers,
                                              HEADER.words + LAYER.words * header.layers))]
                m.next = "HEADER_CHECK"

            with m.State("HEADER_CHECK"):
                hd = header
                vert = (hd.version == VERTICAL_VERSION) & self._vertical
                with m.If(hd.magic != MAGIC):
                    finish(Status.BAD_MAGIC)
                with m.Elif((hd.version != VERSION_3) & ~vert):
                    finish(Status.BAD_VERSION)
                with m.Elif((hd.layers == 0) | (hd.input_bits == 0) | (hd.input_bits > MAX_ACT_BITS)
                            | (hd.in_channels == 0) | (hd.in_height == 0) | (hd.in_width == 0)
                            | (hd.in_height >= 1 << DIM_BITS) | (hd.in_width > rc) | (hdr_rows > self._rows)
                            | (hd.words > self._words) | (descs_end > hd.words)):
                    finish(Status.BAD_GEOMETRY)
                with m.Else():
                    m.d.sync += [xin_x.eq(0), in_next.eq(0), v4.eq(vert), in_mask.eq((1 << hd.input_bits[:4]) - 1),
                                 layer_idx.eq(0), prev_out.eq(hd.input_bits), k.eq(0), prev_res.eq(0), prev_pool.eq(0),
                                 cur_buf.eq(0), prev_buf.eq(0), region_next.eq(descs_end),
                                 # Layer 0's chain: the header's map (its height and width within h_st's and
                                 # w_st's bits: checked above).
                                 prev_cout.eq(hd.in_channels), h_st.eq(hd.in_height), w_st.eq(hd.in_width),
                                 desc_base.eq(Mux(vert, HEADER.words + VHEADER.words, HEADER.words))]
                    with m.If(vert):
                        m.next = "VHEADER"
                    with m.Else():
                        m.d.sync += taking.eq(1)
                        m.next = "DESC"

            with m.State("VHEADER"), m.If(read_record(vhdr, HEADER.words, VHEADER.words)):
                m.next = "VHEADER_MEASURE"

            with m.State("VHEADER_MEASURE"):
                m.d.sync += table_row_base.eq(vhdr.table_base + trow * ((vhdr.inner + 3) >> 2))
                m.next = "VHEADER_CHECK"

            with m.State("VHEADER_CHECK"):
                vh = vhdr
                with m.If((vh.inner == 0) | (vh.inner + 2 != header.layers) | (vh.base_bits == 0)
                          | (vh.top_bits < vh.base_bits) | (vh.top_bits > MAX_VERTICAL_TOP)
                          | (vh.edge_bits == 0) | (vh.edge_bits > MAX_EDGE_BITS)):
                    finish(Status.BAD_GEOMETRY)
                with m.Elif(Mux(use_table, trow >= vh.table_rows,
                                (prec != 0) & ((prec < vh.base_bits) | (prec > vh.top_bits)))):
                    finish(Status.BAD_PRECISION)
                with m.Else():
                    m.d.sync += [taking.eq(1), k.eq(0),
                                 prec.eq(Mux(prec == 0, vh.top_bits, prec))]  # 0: the source width
                    m.next = "VDESC"

            with m.State("DESC"), m.If(read_record(desc, desc_base, LAYER.words)):
                m.d.sync += last_layer.eq(layer_idx == header.layers - 1)
                m.next = "MEASURE"

            # -- Version 4: the vertical descriptor, the widths, the requant group, then a version 3 view --
            with m.State("VDESC"), m.If(read_record(vdesc, desc_base, VLAYER.words)):
                m.d.sync += [k.eq(0), last_layer.eq(layer_idx == header.layers - 1)]
                m.next = "VWIDTH"

            with m.State("VWIDTH"):
                # Table words of inner layers layer_idx - 1 (this one) and layer_idx (the next one).
                # (No read for the first edge's own width, nor for the next layer's when it is the last edge. The
                # last edge does read the word of "inner layer" layers - 2, past the inner layers, and never uses
                # it: one word a run at a table row; where the inner count is a multiple of 4 it is past the row,
                # at the table's last row one word past the image (seen 2026-12-07 by the read count's model,
                # sim/reads.py LAST_EDGE_TABLE_READ; left, as the fix would change the measured array's
                # RTL for one word.)
                m_cur = (layer_idx - 1)[:16]
                wanted = Mux(k == 0, layer_idx != 0, layer_idx + 1 < header.layers - 1)
                m.d.comb += [self.bus.req.eq(use_table & (k < 2) & wanted),
                             self.bus.addr.eq(table_row_base + (Mux(k == 0, m_cur, layer_idx) >> 2))]
                m.d.sync += k.eq(k + 1)
                with m.If((k > 0) & (k < 3)):
                    m.d.sync += twords.word_select(k_prev[:1], WORD_BITS).eq(self.bus.data)
                with m.If(k == 2):
                    m.next = "VWIDTH_PICK"

            with m.State("VWIDTH_PICK"):
                m_cur = (layer_idx - 1)[:2]
                m_nxt = layer_idx[:2]
                cur_byte = twords.word_select(0, WORD_BITS).word_select(m_cur, 8)
                nxt_byte = twords.word_select(1, WORD_BITS).word_select(m_nxt, 8)
                m.d.sync += [w_cur.eq(Mux(use_table, cur_byte, prec)), w_next.eq(Mux(use_table, nxt_byte, prec)),
                             # A group: its head, c_out (M, B) records ((M, B, M_r) for a residual layer), the
                             # negate words (docs/image_format.md); registered for the checks' timing.
                             group_words.eq(VREQUANT.words + rec_words + ((vdesc.c_out + WORD_BITS - 1) >> 5)),
                             next_inner.eq(layer_idx + 1 < header.layers - 1)]
                m.next = "VWIDTH_CHECK"

            with m.State("VWIDTH_CHECK"):
                vd = vdesc
                edge_should = (layer_idx == 0) | last_layer
                # Widths: an edge holds edge_bits codes and no planes; an inner layer the header's widths.
                widths_bad = Mux(vd.edge, (vd.base_bits != vhdr.edge_bits) | (vd.top_bits != vhdr.edge_bits),
                                 (vd.base_bits != vhdr.base_bits) | (vd.top_bits != vhdr.top_bits))
                # A residual layer is an inner conv after a block's conv1 (an inner layer without a shortcut),
                # neither of them pooled;
                # the global pool belongs to the last layer (the geometry checks refuse it on a conv).
                block_bad = ((vd.residual & (vd.edge | (layer_idx < 2) | prev_res | (vd.kind != KIND_CONV)
                                             | (vd.pool != 0) | prev_pool))
                             | (vd.gap & ~last_layer))
                with m.If((vd.edge != edge_should) | widths_bad | block_bad
                          | (vd.requant_count == 0) | (vd.requant_count > MAX_REQUANT_GROUPS)
                          | (vd.group_words != group_words)):
                    finish(Status.BAD_GEOMETRY)
                with m.Elif((~vd.edge & ((w_cur < vd.base_bits) | (w_cur > vd.top_bits)))
                            | (next_inner & ((w_next < vhdr.base_bits) | (w_next > vhdr.top_bits)))):
                    finish(Status.BAD_PRECISION)
                with m.Else():
                    out_b = Mux(last_layer, 0, Mux(next_inner, w_next, w_cur))
                    m.d.sync += [desc.out_bits.eq(out_b), grp.eq(0), grp_addr.eq(vd.requant_base), k.eq(0)]
                    m.next = "GROUP"

            with m.State("GROUP"), m.If(read_record(head, grp_addr, VREQUANT.words)):
                # Requant group heads (two words, then a compare): the first for this layer's (in_bits,
                # out_bits[, res_bits]) whose row is 0 or, running table row r, r + 1 (a row's own groups come
                # first in the image).
                m.next = "GROUP_CHECK"

            with m.State("GROUP_CHECK"):
                res_bits = Mux(vdesc.residual, prev_in, 0)
                row_ok = (head.row == 0) | (use_table & (head.row == trow + 1))
                with m.If((head.in_bits == prev_out) & (head.out_bits == desc.out_bits) & (head.res_bits == res_bits)
                          & row_ok):
                    m.next = "TRANSLATE"
                with m.Elif(grp + 1 >= vdesc.requant_count):
                    finish(Status.BAD_PRECISION)
                with m.Else():
                    m.d.sync += [grp.eq(grp + 1), grp_addr.eq(grp_addr + vdesc.group_words), k.eq(0)]
                    m.next = "GROUP"

            with m.State("TRANSLATE"):
                # The version 3 view of the layer, for the geometry checks, the loader, the dispatcher and the
                # writer: a signed layer; the input map is the header's for the first layer, the previous
                # layer's stored map after it. Buffers: a layer writes the lowest buffer other than its input,
                # a residual layer the one that is neither its input nor its shortcut's (the block input), so
                # that the block input outlives conv1 (three buffers in all, FMAP_BUFFERS).
                vd = vdesc
                first_layer = layer_idx == 0
                out_b = desc.out_bits
                third = Signal(2)  # {0, 1, 2} minus the two distinct buffers in use
                m.d.comb += third.eq(3 - cur_buf - prev_buf)
                out_buf = Mux(vd.residual, third, Mux(cur_buf == 0, 1, 0))
                m.d.sync += [
                    desc.eq(0), desc.out_bits.eq(out_b),
                    desc.kind.eq(vd.kind), desc.signed.eq(1), desc.pool.eq(vd.pool), desc.in_bits.eq(prev_out),
                    desc.c_in.eq(Mux(first_layer, header.in_channels, prev_cout)), desc.c_out.eq(vd.c_out),
                    desc.in_height.eq(Mux(first_layer, header.in_height, h_st)),
                    desc.in_width.eq(Mux(first_layer, header.in_width, w_st)),
                    desc.kernel.eq(vd.kernel), desc.stride.eq(vd.stride), desc.padding.eq(vd.padding),
                    desc.shift.eq(head.shift), desc.in_buf.eq(cur_buf),
                    desc.out_buf.eq(Mux(last_layer, SCORE_SINK, out_buf)),
                    desc.residual.eq(vd.residual), desc.gap.eq(vd.gap),
                    desc.res_buf.eq(Mux(vd.residual, prev_buf, 0)), desc.res_stride.eq(Mux(vd.residual, prev_stride, 0)),
                    desc.fan_in.eq(vd.fan_in), desc.param_base.eq(grp_addr + VREQUANT.words),
                    neg_base.eq(grp_addr + VREQUANT.words + rec_words),
                ]
                m.next = "MEASURE"

            with m.State("MEASURE"):
                m.d.sync += [in_rows.eq(d.c_in * d.in_height), res_rows.eq(prev_c * prev_h),
                             res_end.eq(d.fan_in + prev_c),
                             fan.eq(Mux(is_conv, d.c_in * d.kernel * d.kernel,
                                        Mux(d.gap, d.c_in, d.c_in * d.in_height * d.in_width))),
                             g_hout.eq(Mux(is_conv, conv_h, 1)), g_wout.eq(Mux(is_conv, conv_w, 1)),
                             gap_area.eq(d.in_height * d.in_width),
                             param_span.eq((d.c_out << 1) + d.c_out + Mux(d.residual, d.c_out, 0)),
                             ptr_span.eq(d.c_out * d.ptr_bits)]
                m.next = "MEASURE_OUT"

            with m.State("MEASURE_OUT"):
                m.d.sync += [out_rows.eq(d.c_out * g_hst), gap_mass.eq(in_rows * d.in_width),
                             row_exp.eq(d.param_base + param_span),
                             stream_exp.eq(d.row_base + ((ptr_span + (WORD_BITS - 1)) >> 5)),
                             region_end.eq(d.stream_base + ((d.stream_bits + (WORD_BITS - 1)) >> 5))]
                m.next = "MEASURE_LIMITS"

            with m.State("MEASURE_LIMITS"):
                # Bound 7 (golden's check_layer: `usum` and the requantizer's X are sized for it); a pooled FC's
                # input sums within 16 bits (bound 9), its activation mass within bound 6.
                m.d.sync += fan_bad.eq((d.fan_in != fan) | (d.fan_in >= 1 << self._fw) | (d.fan_in > MAX_FAN_IN)
                                       | (d.gap & ((gap_area > area_limit) | (gap_mass > mass_limit))))
                m.d.sync += unchained.eq((d.in_buf != cur_buf) | (d.c_in != prev_cout) | (d.in_height != h_st)
                                         | (d.in_width != w_st))
                m.d.sync += misplaced.eq(~v4 & ((d.param_base != region_next) | (d.row_base != row_exp)
                                                | (d.stream_base != stream_exp)
                                                | (last_layer & (region_end != header.words))))
                two = d.res_stride == 2  # (a res_stride other than 1 or 2 is refused in `bad`)
                m.d.sync += unblocked.eq(d.residual & (
                    (layer_idx == 0) | prev_res | prev_pool | (d.pool != 0) | (d.stride != 1) | (d.res_buf != prev_buf)
                    | (prev_c > d.c_out) | (g_hout != Mux(two, (prev_h + 1) >> 1, prev_h))
                    | (g_wout != Mux(two, (prev_w + 1) >> 1, prev_w))))
                m.next = "GEOMETRY"

            with m.State("GEOMETRY"):
                # Set up while the layer before runs its last tile (`pending`): the load starts once no engine
                # holds a row of its bank (`load_wait`), reading the running layer's output channels as they
                # are written (`load_channels`), and the running layer's dispatch goes on. A refusal waits for the
                # running layer's queued rows to drain before it ends the run.
                with m.If(bad):
                    with m.If(~pending | self.drained):
                        finish(Status.BAD_GEOMETRY)
                    with m.If(engine_fault):
                        m.next = "FAULT"
                with m.Else():
                    rows = Mux(is_conv, table_rows, 1)
                    # The bank the running tile does not read.
                    m.d.sync += [h_out.eq(g_hout), w_out.eq(g_wout), h_st.eq(g_hst), w_st.eq(g_wst), ly.eq(0),
                                 region_next.eq(region_end),
                                 full_rows.eq(rows), l_rows.eq(Mux(rows < g_hout, rows, g_hout)),
                                 load_bank.eq(~comp_bank), loaded.eq(0)]
                    with m.If(pending):
                        m.d.sync += [load_wait.eq(1), overlaps.eq(overlaps + 1), k.eq(0)]
                        m.next = "READ"
                    with m.Else():
                        m.next = "LOAD"

            with m.State("LOAD"):  # the layer's first tile (no engine runs a row)
                m.d.comb += self.load_start.eq(1)
                m.next = "LOADING"

            with m.State("LOADING"):
                # (After an overlapped setup: the layer before is dispatched; it drains, then this one begins.)
                with m.If(pending & self.drained):
                    m.d.sync += pending.eq(0)
                # While the input arrives only the first layer runs (module docstring, "Streamed input"); it reads
                # buffer 0 and writes another (the checks refuse any other layer 0), so its output never meets
                # the input rows' writes.
                alone = ~inputting | (layer_idx == 0)
                # A layer without a max-pool begins while the layer before drains, on the engines that have
                # finished it (module docstring, "Early starts").
                early = pending & (d.pool == 0)
                behind = pending & ~self.drained  # the layer before has rows left: this one starts early
                with m.If(loaded & (~pending | early) & alone):
                    # The layer's dispatch begins: the engines (each once it holds no row), the writer and the
                    # dispatcher take its fields now.
                    m.d.sync += [run_layer.eq(layer_view), run_writer.eq(writer_view), dd.eq(desc),
                                 dw_out.eq(w_out), dprev_c.eq(prev_c),
                                 early_cmds.eq(0), early_wrote.eq(0),
                                 pending.eq(0), draining.eq(behind), early_starts.eq(early_starts + behind)]
                    m.next = "PREP"
                with m.If(engine_fault):
                    m.next = "FAULT"

            with m.State("PREP"):
                # The loaded tile becomes the engines'; the next one (if any) starts loading into the other bank
                # while the engines work (a double-buffered patch).
                more = ly + l_rows < h_out
                with m.If(~more):
                    m.d.sync += [ch_done.eq(0), avail.eq(0)]
                m.d.sync += [y.eq(ly), tile_rows.eq(l_rows), comp_bank.eq(load_bank), loaded.eq(0),
                             loading.eq(more), j.eq(0), ptr_bit.eq(dd.ptr_bits), row_start.eq(dd.stream_base << 5),
                             param_addr.eq(dd.param_base), k.eq(0),
                             row_first.eq(0)]
                with m.If(more):
                    m.d.sync += [ly.eq(ly + l_rows), l_rows.eq(Mux(full_rows < rows_left, full_rows, rows_left)),
                                 load_bank.eq(~load_bank)]
                m.next = "PREFETCH"

            with m.State("PREFETCH"):
                m.d.sync += [tile_px.eq(tile_rows * dw_out), load_wait.eq(loading)]
                # The layer's last tile (no more loads of it): a version 3 layer that is not the last and does
                # not max-pool (the writer's read-modify-write pairs rows of two tiles) sets up the next
                # layer now, which loads its first tile while this one runs (module docstring).
                # (While the layer before still drains, the set-up waits for it: between two of this tile's rows,
                # OFFER. At most two layers' rows are in flight, and the loader's gates follow one layer's writes.)
                sets_up_next = ~loading & ~v4 & ~last_layer & (dd.pool == 0)
                with m.If(sets_up_next & ~draining):
                    m.d.sync += pending.eq(1)
                    next_layer()
                with m.Else():
                    m.d.sync += want_next.eq(sets_up_next)
                    m.next = "READ"

            with m.State("READ"):
                # k = 0..5: row j's end pointer (2 words), params (4; the 4th unused without a shortcut); words
                # land one cycle later.
                # (Version 4 has no row pointer's second word, nor has a pointer that ends in its first word (its
                # high bits are masked off); without a shortcut the 4th record word is not read. A read not made
                # leaves the port's cycle to the engines behind the controller on it: their row decoders read
                # the weights there, `hw/array/top.py`.)
                # A word not read costs no cycle either: ``k`` steps over it (the row pointer's second word after
                # the first, the shortcut multiplier after B; ``k_read``: the word requested the cycle before). The
                # last row reads no pointer (its end is the stream's length): its first cycle requests nothing.
                # So a command takes 5 to 7 cycles here, the last word's landing included.
                m.d.comb += [self.bus.req.eq((k < 6) & ~((k == 0) & last_row & ~v4)),
                             self.bus.addr.eq(read_addr)]
                m.d.sync += [k.eq(Mux((k == 0) & (v4 | one_word | last_row), 2,
                                      Mux((k == 4) & ~dd.residual, 6, k + 1))),
                             k_read.eq(k)]
                with m.If(k > 0):
                    m.d.sync += words.word_select(k_read, WORD_BITS).eq(self.bus.data)
                with m.If(k == 6):
                    m.next = "COMMAND"
                with m.If(engine_fault):
                    m.next = "FAULT"

            with m.State("COMMAND"):
                # The record's last word has landed: the command. (A residual layer's shortcut codes are patch
                # rows fan_in + j, which the engine reads; M_r is zero for a channel past C_r.)
                m.d.sync += [
                    cmd.start_bit.eq(Mux(v4, row_first, row_start)),
                    cmd.end_bit.eq((dd.stream_base << 5) + row_end),
                    cmd.negate.eq(v4 & words.word_select(0, WORD_BITS).bit_select(j[:5], 1)),
                    cmd.channel.eq(j), cmd.pixels.eq(tile_px), cmd.bank.eq(comp_bank),
                    cmd.tile.y.eq(y), cmd.tile.rows.eq(tile_rows),
                    cmd.mult.eq(words.word_select(2, WORD_BITS)),
                    cmd.bias.eq(Cat(words.word_select(3, WORD_BITS), words.word_select(4, WORD_BITS))),
                    cmd.res_mult.eq(Mux(dd.residual & res_live, words.word_select(5, WORD_BITS), 0)),
                ]
                # The record's fields the command holds in fewer bits than the image: M and M_r in MULT_BITS
                # (B keeps all 64). A multiplier past them (outside the integer contract) would run truncated
                # to OK with other scores, so it ends the run as a corrupt stream does (no command).
                params_bad = (words.word_select(2, WORD_BITS)[MULT_BITS:].any()
                              | (dd.residual & res_live & words.word_select(5, WORD_BITS)[MULT_BITS:].any()))
                with m.If(params_bad):
                    m.d.sync += cmd_fault.eq(1)
                    m.next = "FAULT"
                with m.Else():
                    m.d.sync += cmd_valid.eq(1)
                    m.next = "OFFER"
                with m.If(engine_fault):
                    m.next = "FAULT"

            with m.State("OFFER"):
                with m.If(taken):
                    m.d.sync += [cmd_valid.eq(0), j.eq(j + 1), ptr_bit.eq(ptr_bit + dd.ptr_bits),
                                 row_start.eq(cmd.end_bit),
                                 row_first.eq(row_first + dd.fan_in),
                                 param_addr.eq(param_addr + rec), k.eq(0)]
                    with m.If(last_row):
                        m.d.sync += want_next.eq(0)  # (not set up by now: the drain, then the next layer)
                        with m.If(pending):
                            m.next = "LOADING"  # the next layer is set up and loads: it follows the drain
                        with m.Elif(loading & (dd.pool == 0) & (run_layer.comp_shift == 0)):
                            m.next = "NEXT"  # the next tile's rows may follow at once (tiles overlap)
                        with m.Else():
                            m.next = "DRAIN"
                    with m.Elif(want_next & ~draining):
                        # The layer before has drained: the next layer's set-up (as PREFETCH does at the start of
                        # the last tile), then this tile's other rows (GEOMETRY goes on to READ).
                        m.d.sync += [want_next.eq(0), pending.eq(1)]
                        next_layer()
                    with m.Else():
                        m.next = "READ"
                with m.If(engine_fault):
                    m.next = "FAULT"

            with m.State("NEXT"):
                with m.If(loaded & ~load_wait):
                    m.next = "PREP"
                with m.If(engine_fault):
                    m.next = "FAULT"

            with m.State("DRAIN"):
                with m.If(self.drained & (~loading | loaded)):
                    with m.If(loading):
                        m.next = "PREP"
                    with m.Elif(last_layer):
                        m.d.sync += j.eq(0)
                        m.next = "SCORES"
                    with m.Else():
                        next_layer()
                with m.If(engine_fault):
                    m.next = "FAULT"

            with m.State("SCORES"):
                m.d.comb += self.score_addr.eq(j)
                m.d.sync += scoring.eq(1)
                m.next = "SCORE_OUT"

            with m.State("SCORE_OUT"):
                m.d.comb += self.score_addr.eq(j)
                with m.If(self.o.ready):
                    m.d.sync += scoring.eq(0)
                    with m.If(j == d.c_out - 1):
                        finish(Status.OK)
                    with m.Else():
                        m.d.sync += j.eq(j + 1)
                        m.next = "SCORES"

            # A decoder error ends the run (the engines have stopped; every state below watches for it), as does a
            # row record's multiplier past MULT_BITS (COMMAND; no command is issued, the other engines' queued rows
            # are left to the reset that follows every error). A fault in an overlapped layer's last tile leaves
            # `layer_index` on that layer, as without the overlap.
            with m.State("FAULT"):
                # (the faulting layer: the one before while it drains, unless the fault is a row record of the
                # dispatcher's layer or an engine on that layer's)
                late_fault = draining & ~cmd_fault & (self.engine_error & ~self.engine_on).any()
                m.d.sync += layer_idx.eq(layer_idx - (pending | late_fault))
                finish(Status.BAD_STREAM)

            # The run's end: `done` and `status` (at once, or once the input is in where the run ended while it
            # still arrived).
            with m.State("END"), m.If(~inputting):
                m.d.sync += [status.eq(end_code), busy.eq(0), done.eq(1)]
                m.next = "IDLE"
        m.d.comb += [res_live.eq(j < dprev_c), rows_left.eq(h_out - ly - l_rows)]
        return m
