"""The array top: global buffer, feature maps, patch, engines, writer and controller, wired.

:class:`ConvArray` runs any version 3 image, and any version 4 (vertical-layered) image at a width chosen at
run time (``precision`` or a row of the image's Eq. 12 table), that fits its buffers (``model/export/layout_v3.py``: conv
layers with stride and padding, residual blocks, max-pool, global average pooling, fully connected layers,
and the fully connected MLPs) on one configuration, reading the descriptors at run time
(:mod:`hw.array.controller`). The image is written into the global buffer through ``load`` (one word a
cycle; the Zynq system connects it to DDR) or given as the buffer's initial contents; the input codes of an
image arrive on ``i`` after ``start``, its class scores leave on ``o``, and ``done`` / ``status`` end the run.

Configuration (:class:`ArrayConfig`): ``engines`` x ``lanes`` DSP48E1 lanes of ``LANE_SLOTS`` pixels
(``T = lanes LANE_SLOTS`` pixels a tile), the global buffer's depth, the feature maps' rows and row width,
the patch depth (largest fan-in) and the channel tags. The default test configuration is small; the
ResNet-20 configuration of ``docs/array_design.md`` is a parameter change.

Ports of the global buffer: one copy of the image in true-dual-port block RAM, two read ports (fixed
priority on each): the controller and the first half of the engines' decoders on the first, which shares
its address with the load port (:class:`~hw.core.global_buffer.GlobalBuffer`, ``share_load``), the other
half on the second. A decoder reads at most about a word every four lane cycles (a 32-bit weight; a word
holds about six 4-bit entries), so two or three share a port with little loss; one copy per pair of
requesters (three copies of a 64 k-word image for 4 engines, 171 RAMB36) was more block RAM than the
XC7Z020 has.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hw.array.controller import ArrayController
from hw.array.engine import LANE_SLOTS, ChannelEngine, engine_layer_layout
from hw.array.feature_maps import FeatureMaps
from hw.array.map_writer import MapWriter, RowAssembler, writer_layer_layout
from hw.array.patch_loader import MAX_MAP_SIDE, PatchLoader
from hw.array.requant import A_BITS
from hw.array.status import Status
from hw.core.global_buffer import GlobalBuffer, load_port_signature
from model.export.golden import MAX_ACT_BITS


@dataclass(frozen=True)
class ArrayConfig:
    """Sizes of one array build.

    Members
    -------
    engines : int
        Channel engines (each its own decoder and requantizer).
    lanes : int
        DSP48E1 lanes per engine; a tile has ``lanes * LANE_SLOTS`` pixels (the widest output row).
    buffer_words : int
        Global buffer depth in 32-bit words (any; an image with more ``words`` ends with ``BAD_GEOMETRY``).
    fmap_rows : int
        Rows (``C H``) a feature-map buffer holds.
    row_codes : int
        Codes per feature-map row (the widest map; a tile of several output rows writes each row to a word
        of its own, so a word need not hold the tile: ResNet-20's 28-code rows on 84-pixel tiles).
    fan_in_width : int
        Bits of a weight position: fan-ins up to ``2^fan_in_width - 1`` (the patch depth).
    channel_bits : int
        Output channels up to ``2^channel_bits`` per layer.
    vertical : bool
        Build the version 4 (vertical-layered) path: each engine's plane decoder and the per-pixel activation
        sums (about 3.5 k LUT an engine). Without it version 4 images end with ``BAD_VERSION``.
    """

    engines: int = 2
    lanes: int = 2
    buffer_words: int = 4096
    fmap_rows: int = 256
    row_codes: int = 16
    fan_in_width: int = 10
    channel_bits: int = 6
    vertical: bool = True

    @property
    def pixels(self) -> int:
        return self.lanes * LANE_SLOTS

    @property
    def dsp_lanes(self) -> int:
        return self.engines * self.lanes

    def check(self) -> None:
        for name in ("engines", "lanes", "buffer_words", "fmap_rows", "row_codes", "fan_in_width", "channel_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if self.buffer_words < 2:
            raise ValueError(f"buffer_words must be >= 2, not {self.buffer_words}")
        # A map row of more codes would not fit the geometry fields (the controller's input columns count in
        # DIM_BITS bits: a header of 256 codes a row on such a build would never finish its input rows).
        if self.row_codes > MAX_MAP_SIDE:
            raise ValueError(f"row_codes must be at most {MAX_MAP_SIDE} (the array's maps are at most that "
                             f"wide), not {self.row_codes}")


class ConvArray(wiring.Component):
    """The array (module docstring).

    Members
    -------
    load : In(load_port_signature(addr_width))
        Image words into the global buffer (between runs).
    start : In(1)
    i : In(stream.Signature(MAX_ACT_BITS))
    o : Out(stream.Signature(signed(32)))
    done : Out(1)
    busy : Out(1)
    status : Out(Status)
    precision, use_table, table_row : In
        The widths of a version 4 (vertical) image's run (:class:`~hw.array.controller.ArrayController`).
    layer_index : Out(16)
        The layer the controller runs (0 from ``start`` until the first layer's last row is written, then 1,
        ...): a progress indicator, and what the testbench times each layer by (``layer_cycles``).
    overlaps : Out(16)
        Layers of the run whose first tile loaded while the layer before ran its last tile
        (:class:`~hw.array.controller.ArrayController`, "Overlapped layers").
    early_starts : Out(16)
        Layers of the run whose first rows went to the engines while the layer before still drained (on the
        engines that had finished it: the controller's "Early starts").
    reads, weight_reads : Out(32)
        Global-buffer words read since the last ``start``: all of them (descriptors, requant parameters, row
        pointers and weights), and those of the engines' row decoders (the weights). Four bytes each: what a
        run costs in memory traffic (``build.py bench vertical`` reports it per width).
    """

    def __init__(self, config: ArrayConfig = ArrayConfig(), init=()):
        config.check()
        self._config = config
        self._init = [int(w) for w in init]
        if len(self._init) > config.buffer_words:
            raise ValueError(f"the initial image has {len(self._init)} words; the buffer holds "
                             f"{config.buffer_words}")
        self._addr_width = ceil_log2(config.buffer_words)
        super().__init__({
            "load": In(load_port_signature(self._addr_width)),
            "start": In(1),
            "i": In(stream.Signature(MAX_ACT_BITS)),
            "o": Out(stream.Signature(signed(32))),
            "done": Out(1),
            "busy": Out(1),
            "status": Out(Status),
            "precision": In(4),
            "use_table": In(1),
            "table_row": In(16),
            "layer_index": Out(16),
            "overlaps": Out(16),
            "early_starts": Out(16),
            "reads": Out(32),
            "weight_reads": Out(32),
        })

    @property
    def config(self) -> ArrayConfig:
        return self._config

    def engine(self) -> ChannelEngine:
        """A new engine as the array instantiates ``config.engines`` of (all alike: the parts synthesis of
        :mod:`hw.platform.array_synth` synthesises one and counts it that many times)."""
        return self.engine_for(self._config)

    @staticmethod
    def engine_for(config: ArrayConfig) -> ChannelEngine:
        """:meth:`engine` of an array with ``config``, without building the array."""
        config.check()
        return ChannelEngine(lanes=config.lanes, addr_width=ceil_log2(config.buffer_words),
                             fan_in_width=config.fan_in_width, vertical=config.vertical,
                             channel_bits=config.channel_bits)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        g, t = cfg.engines, cfg.pixels
        names = [f"eng{e}" for e in range(g)]
        ports = [["ctl", *names[:g // 2]], names[g // 2:]]
        m.submodules.buffer = buf = GlobalBuffer(
            MemoryData(shape=32, depth=cfg.buffer_words, init=self._init), ports=ports, writable=True,
            share_load=True)
        wiring.connect(m, wiring.flipped(self.load), buf.load)
        m.submodules.maps = maps = FeatureMaps(rows=cfg.fmap_rows, row_codes=cfg.row_codes)
        faw = maps.addr_width
        m.submodules.loader = loader = PatchLoader(pixels=t, row_codes=cfg.row_codes, addr_width=faw,
                                                   fan_in_width=cfg.fan_in_width)
        m.submodules.ctl = ctl = ArrayController(
            engines=g, pixels=t, row_codes=cfg.row_codes, fmap_rows=cfg.fmap_rows, fmap_addr_width=faw,
            fan_in_width=cfg.fan_in_width, channel_bits=cfg.channel_bits, addr_width=self._addr_width,
            vertical=cfg.vertical, buffer_words=cfg.buffer_words)
        wiring.connect(m, buf.ctl, ctl.bus)
        m.submodules.writer = writer = MapWriter(engines=g, channel_bits=cfg.channel_bits, pixels=t,
                                                 row_codes=cfg.row_codes, addr_width=faw)
        m.d.comb += [
            ctl.start.eq(self.start), self.done.eq(ctl.done), self.busy.eq(ctl.busy), self.status.eq(ctl.status),
            ctl.precision.eq(self.precision), ctl.use_table.eq(self.use_table), ctl.table_row.eq(self.table_row),
            self.layer_index.eq(ctl.layer_index), self.overlaps.eq(ctl.overlaps),
            self.early_starts.eq(ctl.early_starts),
            loader.geometry.eq(ctl.loader), loader.start.eq(ctl.load_start), ctl.load_done.eq(loader.done),
            loader.channels.eq(ctl.load_channels), loader.done_rows.eq(ctl.load_done_rows),
            loader.rows.eq(ctl.load_rows), loader.hold.eq(ctl.load_hold),
            ctl.wrote.eq(writer.wrote), ctl.wrote_channel.eq(writer.wrote_channel), ctl.wrote_y.eq(writer.wrote_y),
            writer.score_addr.eq(ctl.score_addr), ctl.score_data.eq(writer.score_data),
        ]
        wiring.connect(m, wiring.flipped(self.i), ctl.x)
        wiring.connect(m, ctl.o, wiring.flipped(self.o))

        # Feature-map reads: the loader's patch rows and the controller's shortcut rows, each its own port.
        wiring.connect(m, loader.fmap, maps.rd)
        # Feature-map writes: the writer's, and the input rows into buffer 0 (its port A) as they arrive.
        wiring.connect(m, writer.fmap, maps.wr)
        wiring.connect(m, ctl.fmap_in, maps.inp)
        wiring.connect(m, writer.rmw, maps.rmw)

        engines = [self.engine() for _ in range(g)]
        # The patch, double-buffered (the loader fills bank `load_bank` while the engines read the other, and
        # for a while both: an engine reads the bank of the row it runs, `patch_bank`, since tiles overlap),
        # one copy per pair of engines and bank. A copy is written only while its bank loads, and the
        # controller starts a load only when no engine holds a row of that bank (`engine_holds`), so no engine
        # reads a copy while it is written: its write and its first engine's reads share one address, and
        # Yosys maps the copy to true-dual-port block RAM, the write and engine 2i on port A, engine 2i + 1 on
        # port B, instead of one copy per engine (half the RAMB36).
        patch_data = [[None, None] for _ in range(g)]
        for pair in range(-(-g // 2)):
            for bank in range(2):
                mem = Memory(shape=MAX_ACT_BITS * t, depth=1 << cfg.fan_in_width, init=[])
                m.submodules[f"patch{pair}_{bank}"] = mem
                writing = loader.patch.en & (ctl.load_bank == bank)
                first = engines[2 * pair]
                shared = Signal(cfg.fan_in_width, name=f"patch{pair}_{bank}_addr")
                m.d.comb += shared.eq(Mux(writing, loader.patch.addr, first.patch_addr))
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(shared), wp.data.eq(loader.patch.data.as_value()), wp.en.eq(writing)]
                for e in range(2 * pair, min(2 * pair + 2, g)):
                    rp = mem.read_port()
                    addr = shared if e == 2 * pair else engines[e].patch_addr
                    # The port that shares the write's address is enabled on writes too: a block RAM port's
                    # output takes the old word on a write, and a port holding its data across writes would
                    # be a copy of its output in FFs (672 FF and about 780 LUT a copy at 84 pixels, Yosys).
                    # No engine looks at a bank while it loads (above), so nothing needs that hold.
                    en = engines[e].patch_en | writing if e == 2 * pair else engines[e].patch_en
                    m.d.comb += [rp.addr.eq(addr), rp.en.eq(en)]
                    patch_data[e][bank] = rp.data

        # Each pixel's activation sum over the tile's patch, a register per bank beside the patch: the loader
        # writes every position of a tile once, position 0 first (a vertical layer's compensation, Eq. 6).
        # Without the version 4 path they stay 0 (only a compensated vertical layer uses them).
        # The sums run one cycle behind the loader's writes (its write registered first): the loader's pooled
        # sum and this adder in one cycle were the shell's slowest path (9.9 ns, 15 LUT levels). An engine
        # reads a bank's sums at its first pixel's requant, many cycles after the bank's last write.
        usum = [Signal(data.ArrayLayout(A_BITS, t), name=f"usum{bank}") for bank in range(2)]
        if cfg.vertical:
            u_en, u_first, u_bank = Signal(), Signal(), Signal()
            u_data = Signal.like(loader.patch.data)
            # (a residual layer's shortcut rows, written after the im2col rows, are not the patch's activations)
            m.d.sync += [u_en.eq(loader.patch.en & ~loader.shortcut), u_first.eq(loader.patch.addr == 0),
                         u_bank.eq(ctl.load_bank),
                         u_data.eq(loader.patch.data)]
            with m.If(u_en):
                for i in range(t):
                    so_far = Mux(u_first, 0, Mux(u_bank, usum[1][i], usum[0][i]))
                    total = so_far + u_data[i]
                    for bank in range(2):
                        with m.If(u_bank == bank):
                            m.d.sync += usum[bank][i].eq(total)
        usum_comp = Signal(data.ArrayLayout(A_BITS, t))
        m.d.comb += usum_comp.eq(Mux(ctl.comp_bank, usum[1].as_value(), usum[0].as_value()))

        busy_any = []
        errors = []
        on_layer = []  # per engine: its layer is the dispatcher's (it may take the row offered)
        for e, eng in enumerate(engines):
            m.submodules[f"engine{e}"] = eng
            wiring.connect(m, getattr(buf, names[e]), eng.bus)
            # The bank of the engine's last read (its data port holds while patch_en is low).
            read_bank = Signal(name=f"engine{e}_read_bank")
            with m.If(eng.patch_en):
                m.d.sync += read_bank.eq(eng.patch_bank)
            asm = RowAssembler(channel_bits=cfg.channel_bits, pixels=t, row_codes=cfg.row_codes)
            m.submodules[f"assembler{e}"] = asm
            # The engine's own copy of the layer's fields (the engine's, its assembler's and the writer's of its
            # rows), following the controller's while the engine holds no row: an engine that has finished a
            # layer takes the next layer's rows while the others still run the layer before (the controller's
            # "Early starts"). The controller sets a layer's fields at least ten cycles before its first row
            # is offered, so the copy (a cycle behind) has them by then.
            eng_layer = Signal(engine_layer_layout(), name=f"engine{e}_layer")
            eng_writer = Signal(writer_layer_layout(faw), name=f"engine{e}_writer")
            holds_row = eng.busy | asm.busy
            with m.If(~holds_row):
                m.d.sync += [eng_layer.eq(ctl.layer), eng_writer.eq(ctl.writer)]
            on = Signal(name=f"engine{e}_on_layer")
            m.d.comb += on.eq(eng_writer.par == ctl.writer.par)
            on_layer.append(on)
            m.d.comb += [eng.patch_data.as_value().eq(Mux(read_bank, patch_data[e][1], patch_data[e][0])),
                         eng.layer.eq(eng_layer), eng.usum.eq(usum_comp), asm.w_out.eq(eng_writer.w_out),
                         getattr(writer, f"layer{e}").eq(eng_writer)]
            # A row of the dispatcher's layer goes only to an engine on that layer.
            ctl_cmd = getattr(ctl, f"cmd{e}")
            m.d.comb += [eng.cmd.payload.eq(ctl_cmd.payload), eng.cmd.valid.eq(ctl_cmd.valid & on),
                         ctl_cmd.ready.eq(eng.cmd.ready & on)]
            wiring.connect(m, eng.o, asm.i)
            wiring.connect(m, asm.o, getattr(writer, f"row{e}"))
            busy_any.append(holds_row)
            errors.append(eng.error)
        # Read counters (since start): every granted global-buffer read, and the engines' ones.
        granted_eng = [eng.bus.req & getattr(buf, names[e]).grant for e, eng in enumerate(engines)]
        granted_ctl = ctl.bus.req & buf.ctl.grant
        reads = Signal(32)
        weight_reads = Signal(32)
        # The grants are registered before they are counted (the requests come through the engines' and the
        # controller's logic and the arbiter: with the counters' carry chains they were the shell's slowest
        # path); the counts trail the reads by one cycle, and `done` comes many cycles after the last read.
        eng_granted = Signal(len(granted_eng))
        ctl_granted = Signal()
        m.d.sync += [eng_granted.eq(Cat(*granted_eng)), ctl_granted.eq(granted_ctl)]
        eng_count = sum((eng_granted[e] for e in range(1, len(granted_eng))), eng_granted[0])
        with m.If(self.start):
            m.d.sync += [reads.eq(0), weight_reads.eq(0)]
        with m.Else():
            m.d.sync += [reads.eq(reads + eng_count + ctl_granted), weight_reads.eq(weight_reads + eng_count)]
        m.d.comb += [self.reads.eq(reads), self.weight_reads.eq(weight_reads)]

        drained = ~writer.busy
        for b in busy_any:
            drained = drained & ~b
        # No row of the layer before the dispatcher's left: every engine is on the dispatcher's layer (an engine
        # still running the layer before holds its copy), and the writer holds none of that layer's.
        caught_up = ~(writer.busy & (writer.par != ctl.writer.par))
        for on in on_layer:
            caught_up = caught_up & on
        m.d.comb += [ctl.drained.eq(drained), ctl.caught_up.eq(caught_up), ctl.wrote_par.eq(writer.par),
                     ctl.engine_error.eq(Cat(*errors)), ctl.engine_on.eq(Cat(*on_layer)),
                     ctl.engine_holds.eq(Cat(*(Cat(*(eng.holds[b] for eng in engines)).any() for b in range(2))))]
        return m
