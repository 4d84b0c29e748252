"""Row decoder of a version 3 weight stream: one row's non-zero weights, one entry a cycle.

A version 3 row (docs/image_format.md, "Regions and streams, version 3"; the reference coder is
``model/export/weight_stream.py``) is its class counts, then per present class its entries in ascending
position: a Rice-coded position gap and the weight code in the class's 4, 8, 16 or 32 bits. The
:class:`RowStreamDecoder` takes one row command (the row's absolute first bit in the global buffer,
``32 stream_base + row_ptr[j]``), reads the row's words through its own :class:`~hw.core.fetcher.WordFetcher`
and emits one entry per non-zero weight in stream order (class by class, ascending position); an all-pruned
row emits one entry flagged ``empty`` so that its output is still computed. The command also gives the bit
after the row's last (``32 stream_base + row_ptr[j + 1]``): the fetcher reads no word past the row, so a
row's port cycles are its own words' and no more (it used to read up to its FIFO's depth past every row's end,
and drop those words at the next command).

It is the first block of the packed multiplier array that will run version 3 images (each engine owns one
and gets rows by row pointer); the accelerator (``hw/accelerator.py``) does not use it yet.

Datapath (parameters ``fan_in_width`` = ``FW``; ``E = RICE_ESCAPE + FW + 32`` bits, the longest entry):

* A bit window of ``window_bits`` = ``32 ceil((32 + E) / 32)`` bits (96 for ``FW <= 24``), next bit in bit 0,
  with a count of valid bits. A word is appended (at bit ``nbits``, from the registered count: off the
  critical loop) whenever ``nbits <= window_bits - 32``, so the window always has room for the longest entry
  and never waits on itself.
* The loop: a priority encoder finds the first zero among the window's first ``RICE_ESCAPE`` bits (``q``, or
  the escape); the entry length (``q + 1 + k`` or ``RICE_ESCAPE + pos_bits``, plus the class width; the
  width alone in a dense class) is the table word that first zero selects (below), and the window shifts
  right by it when the whole entry is in the window and the output's skid register is empty.
* Beside it, into the output register and ``error`` only: the gap (``(q << k) | remainder``: a shift by
  ``q + 1`` <= 8, or the raw escaped gap), ``position = previous + 1 + gap`` (``gap`` for a class's first
  entry), and the code (a shift by the gap code's length). The position check compares the gap with a
  register holding what is left of the row (``fan_in - 1 - previous``), so no adder precedes the comparator:
  window bit -> priority encoder -> remainder shift -> comparator -> ``error`` / ``o.valid``.

  For timing (the array's engines, 100 MHz), the loop holds no adder before its comparison: an entry's code
  offset and length for each gap prefix come from per-class tables registered from the layer fields, the
  current class's row of them registered with the class, so the loop is window bit -> priority select of a
  table word -> comparison with the valid bits -> the shifter and the enables of the row-state registers
  (whose next values are formed beside it). The output is a register and a skid register, so the
  consumer's ``ready`` is not on the loop either. Measured (``fan_in_width`` 10, ``synth_xilinx``,
  :mod:`hw.platform.timing`): 106.7 MHz estimated on its own (15 LUT levels), 1,856 LUT, 624 FF (it was
  79.4 MHz, 17 LUT levels and 5 carry steps, with the adders in the loop and ``ready`` through it).

Throughput: one entry a cycle while ``o`` is ready and the entry is in the window; refills bring 32 bits a
cycle, so entries up to 32 bits (every 4-bit entry with its gap code, every 8-bit one up to ``FW`` 16, nearly
every 16-bit one, dense 32-bit classes) run at one a cycle and sparse 32-bit entries (33 bits or more) at about ``32 / length`` a
cycle (measured 0.86 at 30 % density, 35 bits an entry). Per row: 6 cycles from the command to the first
entry with one class present, one more per further class (the fetcher's restart, 3 cycles to the first
word; the skip of the first word's leading bits; one cycle per present class for the counts; the output
register). The next command is taken in the cycle after the row's last entry is parsed.

What the hardware checks, so that a corrupt image cannot hang it (``error`` rises, sticky until reset, and
the decoder stops: no more commands, no more entries parsed, no more reads from the next cycle on; the entries
already parsed (the one offered on ``o`` and one in the skid register) wait for their transfer, the faulty one
is not emitted):

* at each command, the layer fields it depends on for termination: ``1 <= fan_in < 2^FW``,
  ``1 <= pos_bits <= FW``, ``rice_k_c <= pos_bits`` and ``count_bits_c <= FW`` for every class;
* counts summing past ``fan_in`` (so a row has at most ``fan_in`` entries), found as each count is read;
* a position at or past ``fan_in`` (a gap that runs past the row); the entry is not emitted;
* (since 2026-12-07) a row that does not end exactly at its command's ``end_bit``: the bits its counts and
  entries take must be ``end_bit - start_bit``, checked the cycle after the row's last entry has been parsed
  (``error`` rises then, before the row's outputs can leave the array's lanes). So a row pointer that
  disagrees with the stream, a flipped Rice parameter or a flipped stream bit that changes an entry's length,
  each of which used to decode on (through stale words past the row's end, or short of it) and could end a run
  OK with other scores, ends it with ``BAD_STREAM``. A flip that keeps every entry's length (in a code, in a
  remainder) still decodes: only the image's CRC on the Zynq path sees those.

Only the Python reader (``model.export.weight_stream.decode_layer``, ``model.export.layout_v3``) checks what
needs the whole layer or a position map: ``pos_bits`` and ``count_bits_c`` equal to what ``fan_in`` and the
counts imply, a position two classes claim, zero padding, ``nonzero`` and ``payload_bits``.
"""

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from hw.core.fetcher import WORD_SHIFT, WordFetcher
from hw.core.global_buffer import buffer_port_signature
from model.export.format import CLASS_WIDTHS, COUNT_FIELDS, LAYER, RICE_ESCAPE, RICE_FIELDS, WORD_BITS

CLASSES = len(CLASS_WIDTHS)


def layer_fields_layout() -> data.StructLayout:
    """The descriptor fields the decoder reads, at their descriptor widths (``model.export.format.LAYER``)."""
    return data.StructLayout({
        "fan_in": unsigned(LAYER["fan_in"].width),
        "classes": unsigned(LAYER["classes"].width),
        "pos_bits": unsigned(LAYER["pos_bits"].width),
        "count_bits": data.ArrayLayout(unsigned(LAYER[COUNT_FIELDS[0]].width), CLASSES),
        "rice_k": data.ArrayLayout(unsigned(LAYER[RICE_FIELDS[0]].width), CLASSES),
    })


def command_layout(addr_width: int) -> data.StructLayout:
    """A row command: the row's first bit in the global buffer, ``32 stream_base + row_ptr[j]``, and the bit
    after its last, ``32 stream_base + row_ptr[j + 1]`` (``stream_bits`` for the layer's last row): the fetcher
    reads no word past it, and a row that does not end exactly there is an error."""
    return data.StructLayout({"start_bit": unsigned(addr_width + WORD_SHIFT),
                              "end_bit": unsigned(addr_width + WORD_SHIFT)})


def entry_layout(fan_in_width: int) -> data.StructLayout:
    """One decoded entry: a non-zero weight, or (``empty``) the single entry of an all-pruned row."""
    return data.StructLayout({
        "position": unsigned(fan_in_width),
        "cls": unsigned(ceil_log2(CLASSES)),  # class c: CLASS_WIDTHS[c] bits
        "code": unsigned(max(CLASS_WIDTHS)),
        "last": unsigned(1),
        "empty": unsigned(1),
        "seg_end": unsigned(1),  # the last entry of its width-class segment (set with ``last`` and ``empty``)
        "next_cls": unsigned(ceil_log2(CLASSES)),  # the row's next class with entries after this entry's, 0 when
                                                   # none (on every entry): lets the array merge 4- and 8-bit passes
    })


class _Phase(enum.Enum, shape=3):
    IDLE = 0  # waiting for a command
    SKIP = 1  # dropping the first word's bits before the row's first bit
    COUNT = 2  # reading one present class's count a cycle
    ENTRY = 3  # decoding entries
    EMPTY = 4  # emitting an all-pruned row's single entry


def check_decoder_params(addr_width: int, fan_in_width: int) -> None:
    """The parameter checks the row decoders share (this module's and
    :class:`~hw.array.plane_decoder.PlaneRowDecoder`): ``ValueError`` for ``addr_width`` < 1 or
    ``fan_in_width`` outside 1..24."""
    if addr_width < 1:
        raise ValueError(f"addr_width must be >= 1, not {addr_width!r}")
    if not 1 <= fan_in_width <= 24:
        raise ValueError(f"fan_in_width must be 1..24, not {fan_in_width!r}")


def _lowest(m: Module, mask, after=None):
    """``(found, index)``: the lowest set bit of the 4-bit ``mask`` (above class ``after`` when given)."""
    found = Signal()
    index = Signal(range(CLASSES))
    for c in reversed(range(CLASSES)):
        hit = mask[c] if after is None else mask[c] & (after < c)
        with m.If(hit):
            m.d.comb += [found.eq(1), index.eq(c)]
    return found, index


def _thermometer(n, width: int):
    """``width`` bits, bit ``i`` set where ``i < n``: the mask of an ``n``-bit field."""
    return Cat(*(n > i for i in range(width)))


class RowStreamDecoder(wiring.Component):
    """Decoder of one row of a version 3 weight stream at a time.

    Parameters
    ----------
    addr_width : int
        Width of the global buffer's word address.
    fan_in_width : int
        Rows of up to ``2^fan_in_width - 1`` weights (sizes positions, counts and gaps).
    fetch_depth : int
        Depth of the word fetcher's FIFO (2 keeps one word a cycle coming, see ``tests/hw/core/test_fetcher.py``).
        8 by default: the fetcher reads ahead while the array's sequencer replays a segment and the decoder
        waits, which smooths what the engines sharing a global-buffer port ask of it (the bench's ResNet-20
        ticket, one image: 77,863 cycles at 8, 78,624 at 4; ``docs/array_design.md``, "Row ends for the
        fetchers"). The FIFO is distributed RAM of 32 words at any depth up to 32, so the depth costs only its
        counters; 16 gave 77,522 cycles, but a flattened synthesis of the small array of
        ``tests/hw/platform/test_array_synth.py`` then came out 6 % larger than its parts (unexplained), which
        would make the parts' count no longer an upper bound.

    Members
    -------
    layer : In(layer_fields_layout())
        The layer's descriptor fields ``fan_in``, ``classes``, ``pos_bits``, ``count_bits4..32`` and
        ``rice_k4..32``. Hold them stable from the layer's first command until its last row's last entry has
        left ``o``.
    cmd : In(stream.Signature(command_layout(addr_width)))
        Row commands; one is taken once the previous row's last entry is parsed (it may still wait in
        ``o`` or the skid register for its transfer). Taking one restarts the fetcher at ``start_bit // 32``;
        it reads up to the word of bit ``end_bit - 1`` (:class:`~hw.core.fetcher.WordFetcher`), and the row
        must end exactly at ``end_bit`` (else ``error``).
    bus : Out(buffer_port_signature(addr_width))
        The fetcher's requests to a :class:`~hw.core.global_buffer.GlobalBuffer` port.
    o : Out(stream.Signature(entry_layout(fan_in_width)))
        One entry per non-zero weight of the row, in stream order; ``last`` marks the row's final one. An
        all-pruned row gives one entry with ``empty`` and ``last`` set (position, class and code 0).
        ``seg_end`` marks the last entry of each width class (the array's lanes close a segment there).
    error : Out(1)
        A check failed (see the module docstring); sticky until reset, the decoder has stopped.

    Raises
    ------
    ValueError
        For ``addr_width`` < 1, ``fan_in_width`` outside 1..24 or ``fetch_depth`` < 2.
    """

    def __init__(self, *, addr_width: int, fan_in_width: int, fetch_depth: int = 8):
        check_decoder_params(addr_width, fan_in_width)
        if fetch_depth < 2:
            raise ValueError(f"fetch_depth must be >= 2, not {fetch_depth!r}")
        self._addr_width = addr_width
        self._fan_in_width = fan_in_width
        self._fetch_depth = fetch_depth
        super().__init__({
            "layer": In(layer_fields_layout()),
            "cmd": In(stream.Signature(command_layout(addr_width))),
            "bus": Out(buffer_port_signature(addr_width)),
            "o": Out(stream.Signature(entry_layout(fan_in_width))),
            "error": Out(1),
        })

    @property
    def max_entry_bits(self) -> int:
        """The longest entry: an escaped gap (``RICE_ESCAPE + pos_bits`` bits) and a 32-bit code."""
        return RICE_ESCAPE + self._fan_in_width + max(CLASS_WIDTHS)

    @property
    def window_bits(self) -> int:
        """Bit window: room for the longest entry plus the word that refills it."""
        return WORD_BITS * -(-(WORD_BITS + self.max_entry_bits) // WORD_BITS)

    def elaborate(self, platform):
        m = Module()
        fw = self._fan_in_width
        wbits = self.window_bits
        small = bits_for(fw)  # layer fields once checked: 0..fw
        gap_bits = fw + ceil_log2(RICE_ESCAPE)  # (q << k) | r < 2^(k + 3) <= 2^(fw + 3)
        layer = self.layer

        m.submodules.fetcher = fetcher = WordFetcher(addr_width=self._addr_width, depth=self._fetch_depth)
        m.d.comb += [
            self.bus.req.eq(fetcher.bus.req & ~self.error),
            self.bus.addr.eq(fetcher.bus.addr),
            fetcher.bus.grant.eq(self.bus.grant & ~self.error),
            fetcher.bus.data.eq(self.bus.data),
        ]
        words = fetcher.o

        # -- Parser state ----------------------------------------------------------------------------------
        phase = Signal(_Phase)
        win = Signal(wbits)
        nbits = Signal(range(wbits + 1))
        skip = Signal(WORD_SHIFT)
        cls = Signal(range(CLASSES))
        cls_next = Signal(range(CLASSES))  # the class of the next cycle (the FSM below sets it)
        m.d.comb += cls_next.eq(cls)
        m.d.sync += cls.eq(cls_next)
        left = Signal(fw)  # entries of class `cls` still to parse
        first = Signal()  # the next entry is its class's first
        counts = Signal(data.ArrayLayout(unsigned(fw), CLASSES))
        nonzero = Signal(CLASSES)
        dense = Signal(CLASSES)
        total = Signal(fw + ceil_log2(CLASSES) + 1)

        prev = Signal(fw)  # position of the entry before, in its class
        room = Signal(fw)  # fan_in - 1 - prev: the gaps that keep the next entry in the row are 0 .. room - 1

        # Layer fields the decoder depends on for termination (see the module docstring).
        pos_bits = layer.pos_bits[:small]
        layer_ok = Signal()
        m.d.comb += layer_ok.eq(
            (layer.fan_in != 0) & (layer.fan_in < (1 << fw))
            & (layer.pos_bits != 0) & (layer.pos_bits <= fw)
            & Cat(*(layer.rice_k[c] <= layer.pos_bits for c in range(CLASSES))).all()
            & Cat(*(layer.count_bits[c] <= fw for c in range(CLASSES))).all())
        fan_in = layer.fan_in[:fw]

        # -- Commands --------------------------------------------------------------------------------------
        take_cmd = Signal()
        m.d.comb += [
            self.cmd.ready.eq((phase == _Phase.IDLE) & ~self.error),
            take_cmd.eq(self.cmd.valid & self.cmd.ready),
            fetcher.start.eq(take_cmd),
            fetcher.base.eq(self.cmd.payload.start_bit[WORD_SHIFT:]),
            fetcher.end_bit.eq(self.cmd.payload.end_bit),
        ]

        # -- Window refill: at bit `nbits`, decided from registers only ------------------------------------
        take = Signal()
        m.d.comb += [
            take.eq(words.valid & ~self.error & (nbits <= wbits - WORD_BITS)
                    & phase.as_value().matches(_Phase.SKIP, _Phase.COUNT, _Phase.ENTRY)),
            words.ready.eq(take),
        ]
        merged = Signal(wbits)
        m.d.comb += merged.eq(win | Mux(take, (words.payload << nbits)[:wbits], 0))

        # -- Entry decode (from the registered window) -----------------------------------------------------
        q = Signal(range(RICE_ESCAPE + 1))  # leading one bits, RICE_ESCAPE for an escape
        m.d.comb += q.eq(RICE_ESCAPE)
        for i in reversed(range(RICE_ESCAPE)):
            with m.If(~win[i]):
                m.d.comb += q.eq(i)
        escaped = q == RICE_ESCAPE
        k = layer.rice_k[cls][:small]
        is_dense = dense.bit_select(cls, 1)
        # Timing: an entry's code offset and length for each gap prefix come from tables registered from the
        # layer fields (stable through a layer; the first entry comes cycles after a command), so the loop
        # is the priority select of a table word, not the two adders that used to follow the encoder.
        off_bits = range(RICE_ESCAPE + fw + 2)
        off_q = [[Signal(off_bits, name=f"off_q{c}_{i}") for i in range(RICE_ESCAPE)] for c in range(CLASSES)]
        len_q = [[Signal(range(self.max_entry_bits + 1), name=f"len_q{c}_{i}") for i in range(RICE_ESCAPE)]
                 for c in range(CLASSES)]
        off_esc = Signal(off_bits)
        len_esc = [Signal(range(self.max_entry_bits + 1), name=f"len_esc{c}") for c in range(CLASSES)]
        m.d.sync += off_esc.eq(RICE_ESCAPE + pos_bits)
        for c, width in enumerate(CLASS_WIDTHS):
            kc = layer.rice_k[c][:small]
            m.d.sync += len_esc[c].eq(RICE_ESCAPE + pos_bits + width)
            for i in range(RICE_ESCAPE):
                m.d.sync += [off_q[c][i].eq(i + 1 + kc), len_q[c][i].eq(i + 1 + kc + width)]
        class_width = Signal(range(max(CLASS_WIDTHS) + 1))
        with m.Switch(cls):
            for c, width in enumerate(CLASS_WIDTHS):
                with m.Case(c):
                    m.d.comb += class_width.eq(width)
        # The current class's rows of the tables, registered with the class (selected by `cls_next`).
        cur_off = [Signal(off_bits, name=f"cur_off{i}") for i in range(RICE_ESCAPE)]
        cur_len = [Signal(range(self.max_entry_bits + 1), name=f"cur_len{i}") for i in range(RICE_ESCAPE)]
        cur_len_esc = Signal(range(self.max_entry_bits + 1))
        with m.Switch(cls_next):
            for c in range(CLASSES):
                with m.Case(c):
                    m.d.sync += cur_len_esc.eq(len_esc[c])
                    m.d.sync += [cur_off[i].eq(off_q[c][i]) for i in range(RICE_ESCAPE)]
                    m.d.sync += [cur_len[i].eq(len_q[c][i]) for i in range(RICE_ESCAPE)]
        prefix = Signal(range(RICE_ESCAPE + 1))
        suffix = Signal(range(fw + 1))
        m.d.comb += [
            prefix.eq(Mux(is_dense, 0, Mux(escaped, RICE_ESCAPE, q + 1))),
            suffix.eq(Mux(is_dense, 0, Mux(escaped, pos_bits, k))),
        ]
        remainder = Signal(fw)
        m.d.comb += remainder.eq((win >> prefix)[:fw] & _thermometer(suffix, fw))
        gap = Signal(gap_bits)
        m.d.comb += gap.eq(Mux(is_dense | escaped, remainder, ((q << k)[:gap_bits]) | remainder))
        # offset = prefix + suffix and entry_bits = offset + class width, selected by the first zero bit.
        sel_off = Signal(off_bits)
        sel_len = Signal(range(self.max_entry_bits + 1))
        m.d.comb += [sel_off.eq(off_esc), sel_len.eq(cur_len_esc)]
        for i in reversed(range(RICE_ESCAPE)):
            with m.If(~win[i]):
                m.d.comb += [sel_off.eq(cur_off[i]), sel_len.eq(cur_len[i])]
        offset = Signal(off_bits)
        m.d.comb += offset.eq(Mux(is_dense, 0, sel_off))
        code = Signal(max(CLASS_WIDTHS))
        at_code = (win >> offset)[:max(CLASS_WIDTHS)]
        with m.Switch(cls):
            for c, width in enumerate(CLASS_WIDTHS):
                with m.Case(c):
                    m.d.comb += code.eq(at_code[:width])
        entry_bits = Signal(range(self.max_entry_bits + 1))
        m.d.comb += entry_bits.eq(Mux(is_dense, class_width, sel_len))
        more_found, more_cls = _lowest(m, nonzero, after=cls)  # a later class with entries

        # -- Count decode ----------------------------------------------------------------------------------
        count_bits = layer.count_bits[cls][:small]
        count = Signal(fw)
        m.d.comb += count.eq(win[:fw] & _thermometer(count_bits, fw))
        total_next = Signal.like(total)
        m.d.comb += total_next.eq(total + count)
        next_present, next_present_cls = _lowest(m, layer.classes, after=cls)
        nonzero_next = Signal(CLASSES)
        m.d.comb += nonzero_next.eq(nonzero | ((count != 0) << cls)[:CLASSES])
        any_nonzero, first_nonzero = _lowest(m, nonzero_next)
        any_present, first_present = _lowest(m, layer.classes)

        # Position and its check: off the window loop (they only load the output register and `error`). The
        # check compares the gap with what is left of the row (a register) instead of adding first.
        position = Signal(fw + ceil_log2(RICE_ESCAPE) + 1)
        m.d.comb += position.eq(Mux(first, 0, prev + 1) + gap)
        past_row = Signal()
        m.d.comb += past_row.eq(gap >= Mux(first, fan_in, room))
        # The output is a register and a skid register: the loop takes an entry while the skid is empty (a
        # register), so the consumer's `ready`, which comes through the array's sequencer and lanes, is not
        # on the window loop's path.
        skid = Signal(entry_layout(fw))
        skid_valid = Signal()
        o_free = ~skid_valid

        # -- What the window gives this cycle --------------------------------------------------------------
        consume = Signal()  # drop `amount` bits of `merged`
        amount = Signal(range(self.max_entry_bits + 1))
        emit = Signal()  # load the output register
        active = ~self.error
        with m.Switch(phase):
            with m.Case(_Phase.SKIP):
                m.d.comb += [consume.eq(take), amount.eq(skip)]
            with m.Case(_Phase.COUNT):
                m.d.comb += [consume.eq(active & (nbits >= count_bits)), amount.eq(count_bits)]
            with m.Case(_Phase.ENTRY):
                m.d.comb += [consume.eq(active & o_free & (nbits >= entry_bits)), amount.eq(entry_bits),
                             emit.eq(consume & ~past_row)]
                with m.If(consume & past_row):
                    m.d.sync += self.error.eq(1)
            with m.Case(_Phase.EMPTY):
                m.d.comb += emit.eq(active & o_free)

        # The row's length: the bits its count and entry phases consume must be exactly ``end_bit - start_bit``
        # (the reader's check that each row ends where the next row pointer, or ``stream_bits``, says). The
        # amount consumed is registered first (``amt_r``) and subtracted the cycle after, so no wide adder
        # follows the window loop; the check compares two registers in the cycle after the row's last phase.
        # Bound: a row consumes at most CLASSES fw count bits and fan_in <= 2^fw - 1 entries of at most
        # max_entry_bits (the count check stops a row whose counts sum past fan_in), below 2^row_bits; the
        # difference is taken in rest_bits > max(addr bits, row_bits) bits, so an end before the start reads
        # as at least 2^row_bits and cannot equal what a row consumes (docs/array_design.md, "Row ends and
        # regions").
        row_bits = bits_for(CLASSES * fw + ((1 << fw) - 1) * self.max_entry_bits)
        rest_bits = max(self._addr_width + WORD_SHIFT, row_bits) + 1
        rest = Signal(rest_bits)  # bits of the row not consumed yet, before amt_r
        amt_r = Signal(range(self.max_entry_bits + 1))
        row_ends = Signal()  # this cycle's consume or emit is the row's last
        ended = Signal()  # registered: the row ended last cycle
        m.d.comb += row_ends.eq(((phase == _Phase.ENTRY) & consume & (left == 1) & ~more_found)
                                | ((phase == _Phase.EMPTY) & emit))
        m.d.sync += [amt_r.eq(Mux(consume & phase.as_value().matches(_Phase.COUNT, _Phase.ENTRY), amount, 0)),
                     ended.eq(row_ends)]
        with m.If(take_cmd):
            m.d.sync += rest.eq(self.cmd.payload.end_bit.as_unsigned() - self.cmd.payload.start_bit)
        with m.Else():
            m.d.sync += rest.eq(rest - amt_r)
        with m.If(ended & (rest != amt_r)):
            m.d.sync += self.error.eq(1)

        with m.If(take_cmd):
            m.d.sync += [win.eq(0), nbits.eq(0)]
        with m.Elif(consume):
            m.d.sync += [win.eq(merged >> amount), nbits.eq(nbits + Mux(take, WORD_BITS, 0) - amount)]
        with m.Else():
            m.d.sync += [win.eq(merged), nbits.eq(nbits + Mux(take, WORD_BITS, 0))]

        empty = phase == _Phase.EMPTY
        new = Signal(entry_layout(fw))
        m.d.comb += [
            new.position.eq(Mux(empty, 0, position[:fw])),
            new.cls.eq(Mux(empty, 0, cls)),
            new.code.eq(Mux(empty, 0, code)),
            new.last.eq(empty | ((left == 1) & ~more_found)),
            new.empty.eq(empty),
            new.seg_end.eq(empty | (left == 1)),
            new.next_cls.eq(more_cls),
        ]
        # Timing: `emit` comes at the end of the window loop (the gap's check against the row), so it drives only
        # the two valid bits; the wide payload and skid registers load whenever they are free (an emitted entry
        # needs ~skid_valid, so the output register takes the skid's entry or the new one, never both).
        with m.If(emit):
            m.d.sync += [prev.eq(position[:fw]), room.eq(Mux(first, fan_in - 1, room - 1) - gap)]
        stalled = self.o.valid & ~self.o.ready
        with m.If(~skid_valid):
            m.d.sync += skid.eq(new)
        with m.If(~stalled):
            m.d.sync += [self.o.payload.eq(Mux(skid_valid, skid.as_value(), new.as_value())),
                         self.o.valid.eq(skid_valid | emit), skid_valid.eq(0)]
        with m.Elif(emit):
            m.d.sync += skid_valid.eq(1)

        # `left`: its next value is formed beside the window loop, `consume` only enables the register (a
        # class's first count on entering ENTRY, one less per entry, the next class's count at a class's end;
        # after a row's last class it holds a count nothing reads: the next row loads it before its entries).
        left_d = Signal(fw)
        load_left = Signal()
        m.d.comb += [
            left_d.eq(Mux(phase == _Phase.COUNT, Mux(first_nonzero == cls, count, counts[first_nonzero]),
                          Mux(left == 1, counts[more_cls], left - 1))),
            load_left.eq(consume & ((phase == _Phase.ENTRY)
                                    | ((phase == _Phase.COUNT) & ~next_present & any_nonzero))),
        ]
        with m.If(load_left):
            m.d.sync += left.eq(left_d)

        with m.Switch(phase):
            with m.Case(_Phase.IDLE), m.If(take_cmd):
                with m.If(layer_ok):
                    m.d.sync += [
                        phase.eq(_Phase.SKIP),
                        skip.eq(self.cmd.payload.start_bit[:WORD_SHIFT]),
                        counts.eq(0), nonzero.eq(0), dense.eq(0), total.eq(0),
                    ]
                with m.Else():
                    m.d.sync += self.error.eq(1)
            with m.Case(_Phase.SKIP), m.If(consume):
                m.d.sync += phase.eq(Mux(any_present, _Phase.COUNT, _Phase.EMPTY))
                m.d.comb += cls_next.eq(first_present)
            with m.Case(_Phase.COUNT), m.If(consume):
                m.d.sync += [
                    counts[cls].eq(count),
                    nonzero.eq(nonzero_next),
                    dense.bit_select(cls, 1).eq(count == fan_in),
                    total.eq(total_next),
                ]
                with m.If(total_next > fan_in):
                    m.d.sync += self.error.eq(1)
                with m.If(next_present):
                    m.d.comb += cls_next.eq(next_present_cls)
                with m.Elif(any_nonzero):
                    m.d.comb += cls_next.eq(first_nonzero)
                    m.d.sync += [phase.eq(_Phase.ENTRY), first.eq(1)]
                with m.Else():
                    m.d.sync += phase.eq(_Phase.EMPTY)
            with m.Case(_Phase.ENTRY), m.If(consume):
                m.d.sync += first.eq(0)
                with m.If(left == 1):
                    with m.If(more_found):
                        m.d.comb += cls_next.eq(more_cls)
                        m.d.sync += first.eq(1)
                    with m.Else():
                        m.d.sync += phase.eq(_Phase.IDLE)
            with m.Case(_Phase.EMPTY), m.If(emit):
                m.d.sync += phase.eq(_Phase.IDLE)
        return m
