"""Row decoder of a version 4 (vertical-layered) weight region: the codes at the run's width, non-zeros only.

A version 4 layer (``docs/image_format.md``, "Version 4"; the contract is ``model/export/golden_vertical.py``)
stores its weights plane-major: the *base region* holds every weight's basic-layer code (``b = base_bits``
bits, two's complement, weight ``g = j fan_in + i`` of row ``j`` at bit ``b g``), then one *enhance plane* of
one bit per weight after another (bit ``g`` of plane ``p`` at bit ``g`` of its region). The codes at width
``i`` are the base and the first ``P = i - b`` planes, ``c_(k+1) = 2 c_k + b_(k+1)`` (Eq. 3), so a lower width
reads a prefix of the layer's words: **the decoder reads only the planes it uses** (fewer bits, fewer words).

The array runs the layer as the signed layer of the version 1-3 contract that golden materializes
(:meth:`~model.export.golden_vertical.VerticalNetwork.materialize`): effective codes
``e = ±(2^(t+1) c + K_t)`` in class ``m`` (8 for inner layers, 16 for the 8-bit edges), offset binary
``q = e + 2^(m-1)``. The compensation ``K_t`` is the same for every weight of the layer, so it does not go
through the lanes: ``sum_j e_j u_j = 2^(t+1) sum_j c_j u_j + K_t sum_j u_j`` (golden_vertical's
``compensated_dot``) and the engine's requantizer adds ``K_t`` times the pixel's activation sum
(:mod:`hw.array.requant`). What the decoder emits is therefore one entry per weight with ``c != 0``, code
``q = ±(c << code_shift) + 2^(m-1)`` (``code_shift = t + 1`` for an inner layer, 0 for an edge; ``-`` for a
row whose requant group sets ``negate``): **a weight that is zero at the run's width costs no lane cycle**,
and floor downsampling (Eq. 5) makes more of them zero at lower widths.

Datapath: the weights go by *blocks* of 32 (``g`` in ``32 k .. 32 k + 31``): block ``k`` is exactly words
``b k .. b k + b - 1`` of the base region and word ``k`` of each plane, ``b + P`` aligned reads. A loader reads
the next block's words into a register file (one read a cycle, the global buffer's one-cycle latency) while
the scanner works on the current block, which the *transfer* unpacked into 32 codes and a mask of the
row's non-zero weights; the scanner takes the lowest set bit of the mask each cycle (a priority encoder).
Because an entry's ``last`` flag needs to know that no non-zero follows (possibly blocks later), each entry
waits in a *pending* register until the next one is found or the row ends; a row without non-zeros emits
one ``empty`` entry (the array's all-pruned row).

Cost (Yosys ``synth_xilinx``, ``addr_width`` 16, ``fan_in_width`` 10): 3,501 LUT (mostly the transfer's
unpacking: 32 codes from any base width and plane count), 1,008 FF; the timing estimate of
:mod:`hw.platform.timing` 140 MHz (6 LUT levels and 11 carry steps). A first version that found the lowest
non-zero by a chain of 32 priority multiplexers and formed the class code in the scanner's cycle had 26 LUT
levels (73 MHz).

Throughput: one entry a cycle while entries are dense enough (a block's ``b + P + 1`` load and transfer
cycles hide behind the previous block's scan when it has at least that many non-zeros); per row about
``b + P + 4`` cycles from the command to the first entry.

What the hardware checks at each command, so that a bad image cannot hang it (``error``: sticky until reset,
the decoder stops: no more reads, commands or entries): ``1 <= fan_in < 2^fan_in_width``,
``1 <= base_bits <= 8``, ``base_bits + planes <= 8``, ``cls`` 1 or 2 and codes inside their class
(``base_bits + planes - 1 + code_shift <= m - 2``: ``|c << code_shift| <= 2^(m-2)``).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core.global_buffer import buffer_port_signature
from hw.core.stream_decoder import check_decoder_params, entry_layout
from model.export.format import CLASS_WIDTHS, WORD_BITS

#: Widest stored code the decoder composes: base bits plus planes (the version 4 widths are at most 8).
MAX_CODE_BITS = 8
#: Weights per block: one word of each plane.
BLOCK = WORD_BITS


def plane_layer_layout() -> data.StructLayout:
    """The running layer's fields (hold from the layer's first command to its last row's last entry);
    addresses at the image's 32-bit field width (the decoder uses their low ``addr_width`` bits)."""
    return data.StructLayout({
        "fan_in": unsigned(32),
        "base_bits": unsigned(4),  # b, 1..8
        "planes": unsigned(4),  # P, enhance planes to read: the run's width minus b
        "code_shift": unsigned(4),  # e = c << code_shift (t + 1 for an inner layer, 0 for an edge)
        "cls": unsigned(2),  # the signed class of the codes: 1 (8-bit) or 2 (16-bit)
        "base_addr": unsigned(32),  # word address of the base region
        "plane_addr": unsigned(32),  # word address of the first plane
        "plane_words": unsigned(32),  # words of one plane
    })


def plane_command_layout(addr_width: int) -> data.StructLayout:
    """A row command: the row's first weight ``j fan_in`` in the layer, and whether its codes are negated."""
    return data.StructLayout({"first": unsigned(addr_width + 5), "negate": unsigned(1)})


class PlaneRowDecoder(wiring.Component):
    """Decoder of one row of a version 4 layer at a time (module docstring).

    Parameters
    ----------
    addr_width : int
        Width of the global buffer's word address.
    fan_in_width : int
        Rows of up to ``2^fan_in_width - 1`` weights.

    Members
    -------
    layer : In(plane_layer_layout())
    cmd : In(stream.Signature(plane_command_layout(addr_width)))
        Taken when the previous row's last entry is in ``o``.
    bus : Out(buffer_port_signature(addr_width))
    o : Out(stream.Signature(entry_layout(fan_in_width)))
        One entry per weight with a non-zero code at the run's width, ascending position, all of class
        ``layer.cls`` (one segment: ``seg_end`` with ``last``); an all-zero row gives one ``empty`` entry
        (also of class ``layer.cls``, code 0: it adds nothing; unlike the version 3 decoder's class 0, so an
        all-zero edge row runs the class-16 single passes, a few cycles).
    error : Out(1)
        A layer field failed its check (module docstring); sticky, the decoder has stopped.
    """

    def __init__(self, *, addr_width: int, fan_in_width: int):
        check_decoder_params(addr_width, fan_in_width)
        self._aw = addr_width
        self._fw = fan_in_width
        super().__init__({
            "layer": In(plane_layer_layout()),
            "cmd": In(stream.Signature(plane_command_layout(addr_width))),
            "bus": Out(buffer_port_signature(addr_width)),
            "o": Out(stream.Signature(entry_layout(fan_in_width))),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        aw, fw = self._aw, self._fw
        layer = self.layer
        b = layer.base_bits
        nwords = b + layer.planes  # words per block

        # -- Checks (module docstring) ----------------------------------------------------------------
        room = Mux(layer.cls == 1, CLASS_WIDTHS[1] - 2, CLASS_WIDTHS[2] - 2)
        layer_ok = Signal()
        m.d.comb += layer_ok.eq(
            (layer.fan_in != 0) & (layer.fan_in < (1 << fw)) & (b >= 1) & (b <= MAX_CODE_BITS)
            & (nwords <= MAX_CODE_BITS) & ((layer.cls == 1) | (layer.cls == 2))
            & (nwords - 1 + layer.code_shift <= room))

        # -- Row state ---------------------------------------------------------------------------------
        g_bits = aw + 5
        busy = Signal()  # a row is being decoded
        g0 = Signal(g_bits)
        gend = Signal(g_bits + 1)  # one past the row's last weight
        negate = Signal()
        k_last = Signal(g_bits + 1 - 5)
        take_cmd = Signal()
        m.d.comb += [self.cmd.ready.eq(~busy & ~self.error), take_cmd.eq(self.cmd.valid & self.cmd.ready)]
        with m.If(take_cmd):
            with m.If(~layer_ok):
                m.d.sync += self.error.eq(1)
            with m.Else():
                first = self.cmd.payload.first
                end = first + layer.fan_in[:fw]
                m.d.sync += [busy.eq(1), g0.eq(first), gend.eq(end), negate.eq(self.cmd.payload.negate),
                             k_last.eq((end - 1) >> 5)]

        # -- Loader: the next block's words into `nxt` (base words 0..7, planes 8..15) ------------------
        nxt = Signal(data.ArrayLayout(WORD_BITS, 2 * MAX_CODE_BITS))
        nxt_full = Signal()
        nxt_k = Signal(g_bits + 1 - 5)  # the block being loaded (or held in nxt)
        loading = Signal()  # reads of block nxt_k under way
        widx = Signal(range(2 * MAX_CODE_BITS + 1))  # its next word
        base_word = Signal(aw + 1)  # base region word of block nxt_k: base_addr + b nxt_k
        plane_word = Signal(aw + 1)  # the next plane word: plane_addr + p plane_words + nxt_k
        arrived = Signal(range(2 * MAX_CODE_BITS + 1))  # words of the block that have arrived
        rd_valid = Signal()
        rd_slot = Signal(range(2 * MAX_CODE_BITS))
        transfer = Signal()

        is_base = widx < b
        m.d.comb += [self.bus.req.eq(loading & (widx < nwords) & ~self.error),
                     self.bus.addr.eq(Mux(is_base, base_word + widx, plane_word))]
        granted = self.bus.req & self.bus.grant
        m.d.sync += rd_valid.eq(granted)
        with m.If(granted):
            m.d.sync += [widx.eq(widx + 1), rd_slot.eq(Mux(is_base, widx, MAX_CODE_BITS + widx - b))]
            with m.If(~is_base):
                m.d.sync += plane_word.eq(plane_word + layer.plane_words)
        with m.If(rd_valid), m.Switch(rd_slot):
            for s in range(2 * MAX_CODE_BITS):
                with m.Case(s):
                    m.d.sync += nxt[s].eq(self.bus.data)
        got = arrived + rd_valid
        with m.If(loading & (got == nwords) & (widx == nwords)):
            m.d.sync += [loading.eq(0), nxt_full.eq(1), arrived.eq(0)]
        with m.Elif(loading):
            m.d.sync += arrived.eq(got)

        k_first = g0 >> 5
        b_times_k = Signal(aw + 1)  # b k_first, by shift-adds of the (at most 4-bit) b
        m.d.comb += b_times_k.eq(sum(Mux(b[i], k_first << i, 0) for i in range(4)))
        start_row = Signal()  # the cycle after a command: the first block's reads begin
        m.d.sync += start_row.eq(take_cmd & layer_ok)
        next_block = Signal()  # the block in nxt moved on: load the one after, if the row has it
        with m.If(start_row):
            m.d.sync += [loading.eq(1), widx.eq(0), arrived.eq(0), nxt_k.eq(k_first),
                         base_word.eq(layer.base_addr + b_times_k), plane_word.eq(layer.plane_addr + k_first)]
        with m.Elif(next_block):
            k_next = nxt_k + 1
            m.d.sync += [nxt_k.eq(k_next), widx.eq(0), arrived.eq(0), base_word.eq(base_word + b),
                         plane_word.eq(layer.plane_addr + k_next), loading.eq(nxt_k != k_last)]

        # -- Transfer: nxt -> the scanner's 32 codes and its mask of non-zeros in the row -------------------
        vec = Cat(*(nxt[w] for w in range(MAX_CODE_BITS)))
        codes = [Signal(signed(MAX_CODE_BITS + 1), name=f"u{i}") for i in range(BLOCK)]
        for i in range(BLOCK):
            cb = Signal(signed(MAX_CODE_BITS), name=f"cb{i}")
            with m.Switch(b):
                for bb in range(1, MAX_CODE_BITS + 1):
                    with m.Case(bb):
                        m.d.comb += cb.eq(vec[bb * i:bb * (i + 1)].as_signed())
            low = [nxt[MAX_CODE_BITS + p][i] for p in range(MAX_CODE_BITS)]  # plane p's bit of weight i
            with m.Switch(layer.planes):
                for pp in range(MAX_CODE_BITS + 1):
                    with m.Case(pp):
                        m.d.comb += codes[i].eq(Cat(*reversed(low[:pp]), cb) if pp else cb)
        lo = Mux(nxt_k == k_first, g0[:5], 0)  # first weight of the row in the block
        hi = Mux(nxt_k == k_last, ((gend - 1) & (BLOCK - 1)) + 1, BLOCK)  # one past its last
        cur_mask = Signal(BLOCK)
        cur_codes = Signal(data.ArrayLayout(signed(MAX_CODE_BITS + 1), BLOCK))
        cur_pos = Signal(signed(g_bits + 2))  # position of the block's weight 0 in the row: 32 k - g0
        cur_last = Signal()  # the block is the row's last
        scanned = Signal()  # the row's last block has been transferred and scanned: nothing more to find
        m.d.comb += [transfer.eq(nxt_full & (cur_mask == 0) & busy & ~self.error),
                     next_block.eq(transfer)]
        with m.If(transfer):
            m.d.sync += [nxt_full.eq(0), cur_last.eq(nxt_k == k_last),
                         cur_pos.eq((nxt_k << 5) - g0),
                         cur_mask.eq(Cat(*((codes[i] != 0) & (i >= lo) & (i < hi) for i in range(BLOCK))))]
            for i in range(BLOCK):
                m.d.sync += cur_codes[i].eq(codes[i])

        # -- Scanner, pending entry and output ------------------------------------------------------------
        out = self.o.payload
        out_free = ~self.o.valid | self.o.ready
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        found = cur_mask != 0
        # The lowest non-zero weight: its one-hot bit by a carry chain (mask & -mask), its index and code by
        # OR trees over that bit (a priority chain of 32 multiplexers would be 30 LUT levels).
        lowbit = Signal(BLOCK)
        m.d.comb += lowbit.eq(cur_mask & (~cur_mask + 1)[:BLOCK])
        idx = Signal(range(BLOCK))
        m.d.comb += idx.eq(Cat(*(Cat(*(lowbit[i] for i in range(BLOCK) if i >> b & 1)).any()
                                 for b in range(idx.shape().width))))
        c_sel = Signal(signed(MAX_CODE_BITS + 1))
        m.d.comb += c_sel.eq(Cat(*(Cat(*(cur_codes[i][bit] & lowbit[i] for i in range(BLOCK))).any()
                                   for bit in range(MAX_CODE_BITS + 1))))

        # The pending entry holds its position and its composed code c; the class code is formed on the way
        # out (a shift by code_shift and an offset: off the scanner's path).
        pend_valid = Signal()
        pend_pos = Signal(fw)
        pend_c = Signal(signed(MAX_CODE_BITS + 1))
        shifted = Signal(signed(16 + 2))
        m.d.comb += shifted.eq(pend_c << layer.code_shift[:4])
        offset = Mux(layer.cls == 1, 1 << (CLASS_WIDTHS[1] - 1), 1 << (CLASS_WIDTHS[2] - 1))
        pend_code = Signal(unsigned(16 + 1))
        m.d.comb += pend_code.eq(Mux(negate, offset - shifted, offset + shifted))

        def emit(position, code_value, last, empty):
            m.d.sync += [self.o.valid.eq(1), out.position.eq(position), out.code.eq(code_value),
                         out.cls.eq(layer.cls), out.last.eq(last), out.empty.eq(empty), out.seg_end.eq(last),
                         out.next_cls.eq(0)]

        step = found & (~pend_valid | out_free) & ~self.error
        with m.If(step):
            m.d.sync += [cur_mask.eq(cur_mask & ~lowbit), pend_valid.eq(1),
                         pend_pos.eq((cur_pos + idx)[:fw]), pend_c.eq(c_sel)]
            with m.If(pend_valid):
                emit(pend_pos, pend_code, 0, 0)
        # The row ends when its last block has been transferred and its mask is empty.
        m.d.comb += scanned.eq(busy & ~nxt_full & ~loading & ~start_row & cur_last & ~found)
        with m.If(scanned & out_free & ~self.error & ~transfer):
            emit(Mux(pend_valid, pend_pos, 0), Mux(pend_valid, pend_code, 0), 1, ~pend_valid)
            m.d.sync += [pend_valid.eq(0), busy.eq(0), cur_last.eq(0)]
        return m
