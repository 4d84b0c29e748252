"""Weight decoder: walks a layer's bit-width masks and payload bit stream, skipping pruned weights.

It turns the two packed regions of the global buffer (docs/image_format.md) back into one token per
non-zero weight: the input index, the width code and the weight code ``q``. Ten mask codes are looked at
every cycle and the lowest non-zero one is taken (a priority encoder), so pruned weights cost no cycle
unless a whole mask word is empty (ten pruned weights for one cycle). Rows end with a token flagged
``row_end``; an all-pruned row still produces one (with width code ``PRUNED``) so its output is computed.

A reserved width code (5-7, :data:`model.export.format.RESERVED_CODES`) in any position of a layer's mask
words is not a weight: when the priority encoder reaches one, the decoder raises ``error`` instead of
emitting it and stops (no more tokens, no more mask or payload words taken; a token already offered on
``o`` still waits for its transfer) until it is reset. The words are typed by
:data:`~hw.core.image_layout.MASK_WORD_LAYOUT` and the codes by :class:`~hw.core.image_layout.WidthCode`.
"""

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core.image_layout import MASK_WORD_LAYOUT, WidthCode, is_reserved
from model.export.format import CODES_PER_WORD, WIDTH_OF_CODE


def token_layout(index_width: int) -> data.StructLayout:
    """Payload of the decoder's output: one non-zero weight, or an empty end of row (code ``PRUNED``)."""
    return data.StructLayout({
        "index": unsigned(index_width),
        "code": WidthCode,
        "q": unsigned(32),
        "row_end": unsigned(1),
    })


class WeightDecoder(wiring.Component):
    """Mask walker and payload bit reader for one layer at a time.

    Parameters
    ----------
    index_width : int
        Width of the input index (fan-in up to ``2**index_width``).

    Members
    -------
    words_per_row, rows : In
        ``ceil(n_in / 10)`` and ``n_out`` of the layer; hold them stable while the layer runs (the decoder
        is reset between layers). After ``rows`` row ends the decoder emits no more tokens (it may
        still take one more mask word and fill its payload buffer), so the prefetchers may run past the
        layer's regions.
    mask, payload : In(stream.Signature(32))
        The layer's mask words and payload words, in address order.
    o : Out(stream.Signature(token_layout(index_width)))
        One token per non-zero weight; ``row_end`` marks the last of a row.
    error : Out(1)
        A reserved width code was reached (sticky until reset; the decoder has stopped).

    Raises
    ------
    ValueError
        For ``index_width`` < 4.
    """

    def __init__(self, *, index_width: int):
        if index_width < 4:
            raise ValueError(f"index_width must be >= 4, not {index_width!r}")
        self._index_width = index_width
        super().__init__({
            "words_per_row": In(index_width),
            "rows": In(index_width),
            "mask": In(stream.Signature(32)),
            "payload": In(stream.Signature(32)),
            "o": Out(stream.Signature(token_layout(index_width))),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = CODES_PER_WORD

        codes = Signal(data.ArrayLayout(WidthCode, n))  # the current mask word's codes
        pending = Signal(n)  # non-zero codes of `codes` not yet emitted
        have = Signal()  # `codes` holds a mask word
        widx = Signal(self._index_width)  # word index inside the row
        ibase = Signal(self._index_width)  # widx * 10, the input index of code 0
        bitbuf = Signal(64)  # payload bits, next weight in the LSBs
        nbits = Signal(range(65))

        # Lowest pending position (priority encoder); `pick` is one-hot.
        pos = Signal(range(n))
        for p in reversed(range(n)):
            with m.If(pending[p]):
                m.d.comb += pos.eq(p)
        any_pending = pending.any()
        pick = Signal(n)
        m.d.comb += pick.eq(Mux(any_pending, Const(1, n) << pos, 0))
        rest = Signal(n)
        m.d.comb += rest.eq(pending & ~pick)

        code = Signal(WidthCode)
        m.d.comb += code.eq(codes[pos])
        width = Signal(range(max(WIDTH_OF_CODE.values()) + 1))
        with m.Switch(code.as_value()):
            for member in WidthCode:
                with m.Case(member):
                    m.d.comb += width.eq(WIDTH_OF_CODE[member.value])
        reserved = Signal()  # the next code is reserved: an error, not a weight
        m.d.comb += reserved.eq(is_reserved(code))

        last_word = Signal()
        m.d.comb += last_word.eq(widx == self.words_per_row - 1)

        row = Signal(self._index_width)  # rows finished
        active = Signal()
        m.d.comb += active.eq((row != self.rows) & ~self.error)

        out_free = Signal()
        m.d.comb += out_free.eq(active & (~self.o.valid | self.o.ready))

        # What happens to the current word this cycle.
        emit_weight = Signal()  # a non-zero weight leaves
        emit_empty_end = Signal()  # an all-pruned tail of a row leaves as an empty row end
        word_done = Signal()  # the current word has nothing left after this cycle
        m.d.comb += [
            emit_weight.eq(have & any_pending & ~reserved & out_free & (nbits >= width)),
            emit_empty_end.eq(have & ~any_pending & last_word & out_free),
            word_done.eq((emit_weight & (rest == 0)) | emit_empty_end | (have & ~any_pending & ~last_word)),
        ]

        with m.If(have & any_pending & reserved & active):
            m.d.sync += self.error.eq(1)
        with m.If(~self.o.valid | self.o.ready):
            m.d.sync += self.o.valid.eq(emit_weight | emit_empty_end)
        with m.If(emit_weight | emit_empty_end):
            m.d.sync += [
                self.o.payload.index.eq(ibase + pos),
                self.o.payload.code.eq(Mux(emit_weight, code.as_value(), WidthCode.PRUNED)),
                self.o.payload.q.eq(bitbuf[:32] & ((Const(1, 33) << width) - 1)),
                self.o.payload.row_end.eq(last_word & (emit_empty_end | (rest == 0))),
            ]
        with m.If(emit_weight):
            m.d.sync += pending.eq(rest)

        # Next mask word: loaded as soon as the current one is done, without a bubble.
        load = Signal()
        m.d.comb += [
            load.eq(active & self.mask.valid & (~have | word_done)),
            self.mask.ready.eq(load),
        ]
        incoming = data.View(MASK_WORD_LAYOUT, self.mask.payload)
        with m.If(load):
            m.d.sync += [
                codes.eq(incoming.codes),
                pending.eq(Cat(*(c != WidthCode.PRUNED for c in incoming.codes))),
                have.eq(1),
            ]
        with m.Elif(word_done):
            m.d.sync += have.eq(0)
        with m.If(word_done):
            with m.If(last_word):
                m.d.sync += [widx.eq(0), ibase.eq(0), row.eq(row + 1)]
            with m.Else():
                m.d.sync += [widx.eq(widx + 1), ibase.eq(ibase + n)]

        # Payload bit reader: drop the consumed bits, append a word whenever 32 bits are free.
        consumed = Signal(range(33))
        m.d.comb += consumed.eq(Mux(emit_weight, width, 0))
        left = Signal(range(65))
        m.d.comb += left.eq(nbits - consumed)
        refill = Signal()
        m.d.comb += [
            refill.eq(self.payload.valid & (left <= 32) & ~self.error),
            self.payload.ready.eq(refill),
        ]
        kept = Signal(64)
        m.d.comb += kept.eq(bitbuf >> consumed)
        with m.If(refill):
            m.d.sync += [
                bitbuf.eq(kept | (self.payload.payload.as_unsigned() << left)[:64]),
                nbits.eq(left + 32),
            ]
        with m.Else():
            m.d.sync += [bitbuf.eq(kept), nbits.eq(left)]
        return m
