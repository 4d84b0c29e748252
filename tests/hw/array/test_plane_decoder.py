# amaranth: UnusedElaboratable=no
"""PlaneRowDecoder against golden_vertical's codes: random version 4 layers (base region and planes packed by
``model.export.image_v4``) read at every width, rows in random order with negated rows, read-port losses and
output back-pressure; only the planes of the width are read; the error checks stop it."""

import numpy as np
import pytest

from hw.array.plane_decoder import BLOCK, PlaneRowDecoder
from model.export.golden_vertical import compose
from model.export.image_v4 import _pack_bits
from tests.hw.decoder_harness import DecoderHarness, run_decoder

ADDR_WIDTH = 10
FAN_IN_WIDTH = 8


def random_vertical(rng, rows, fan_in, base_bits, planes, p_zero):
    """Base codes (signed ``base_bits``) and planes, with extra zeros at the top width."""
    lo, hi = -(1 << (base_bits - 1)), (1 << (base_bits - 1))
    base = rng.integers(lo, hi, size=(rows, fan_in))
    pl = [rng.integers(0, 2, size=(rows, fan_in)) for _ in range(planes)]
    zero = rng.random((rows, fan_in)) < p_zero
    base = np.where(zero, 0, base)
    pl = [np.where(zero, 0, p) for p in pl]
    if rows > 1:
        base[1] = 0  # a row that is zero at every width
        for p in pl:
            p[1] = 0
    return base, pl


def layout_words(rng, base, planes, base_bits):
    """The layer's regions at a random offset of a buffer of random words: ``(words, base_addr, plane_addr,
    plane_words)``."""
    regions = [_pack_bits(base, base_bits)] + [_pack_bits(p, 1) for p in planes]
    plane_words = len(regions[1]) if planes else 0
    total = sum(len(r) for r in regions)
    words = [int(w) for w in rng.integers(0, 1 << 32, size=1 << ADDR_WIDTH, dtype=np.uint64)]
    at = int(rng.integers(0, (1 << ADDR_WIDTH) - total + 1))
    flat = np.concatenate(regions)
    words[at:at + total] = [int(w) for w in flat]
    return words, at, at + len(regions[0]), plane_words


def expected(c, j, negate, shift, cls):
    offset = 1 << (8 * cls - 1)  # class 1: 8-bit, class 2: 16-bit
    nz = np.flatnonzero(c[j])
    if nz.size == 0:
        return [(0, cls, 0, 1, 1, 1, 0)]
    sign = -1 if negate else 1
    return [(int(p), cls, int(offset + sign * (int(c[j, p]) << shift)), int(k == nz.size - 1), 0,
             int(k == nz.size - 1), 0) for k, p in enumerate(nz)]  # (one class: next_cls 0)


def entry_tuple(entry) -> tuple:
    return (int(entry.position), int(entry.cls), int(entry.code), int(entry.last), int(entry.empty),
            int(entry.seg_end), int(entry.next_cls))


def run(words, fields, commands, n_out, seed, p_gap=0.2, p_stall=0.2, p_other=0.2, limit=None):
    """The decoder's entries and what the run did (:func:`tests.hw.decoder_harness.run_decoder`): until
    ``n_out`` entries, or ``limit`` cycles when ``error`` rises."""
    dut = DecoderHarness(PlaneRowDecoder(addr_width=ADDR_WIDTH, fan_in_width=FAN_IN_WIDTH), words)
    res = run_decoder(dut, fields, commands, n_out, seed, convert=entry_tuple, limit=limit or 400 + 40 * n_out,
                      p_gap=p_gap, p_stall=p_stall, p_other=p_other)
    return res["entries"], res


CASES = [  # (base_bits, planes stored, width read, p_zero, cls)
    (2, 2, 2, 0.2, 1), (2, 2, 3, 0.2, 1), (2, 2, 4, 0.0, 1), (2, 4, 6, 0.3, 1), (3, 1, 3, 0.5, 1),
    (8, 0, 8, 0.4, 2), (1, 3, 2, 0.1, 1),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_rows_match_golden_codes(case):
    base_bits, stored, width, p_zero, cls = CASES[case]
    rng = np.random.default_rng(10 + case)
    rows, fan_in = int(rng.integers(2, 7)), int(rng.integers(1, 100))
    base, planes = random_vertical(rng, rows, fan_in, base_bits, stored, p_zero)
    use = width - base_bits
    c = compose(base, planes, use)
    top = base_bits + stored
    shift = 0 if cls == 2 else top - width + 1
    words, base_addr, plane_addr, plane_words = layout_words(rng, base, planes, base_bits)
    fields = {"fan_in": fan_in, "base_bits": base_bits, "planes": use, "code_shift": shift, "cls": cls,
              "base_addr": base_addr, "plane_addr": plane_addr, "plane_words": plane_words}
    order = [int(j) for j in rng.permutation(rows)] + [int(rng.integers(0, rows))]
    negs = [bool(rng.integers(0, 2)) for _ in order]
    commands = [{"first": j * fan_in, "negate": int(n)} for j, n in zip(order, negs)]
    want = [expected(c, j, n, shift, cls) for j, n in zip(order, negs)]
    n_out = sum(len(w) for w in want)
    got, info = run(words, fields, commands, n_out, seed=case)
    assert info["error_cycle"] is None
    at = 0
    for j, w in zip(order, want):
        assert got[at:at + len(w)] == w, f"row {j}"
        at += len(w)
    assert at == len(got)
    # Only the width's planes are read: per row, its blocks times (base_bits + planes used).
    blocks = sum((j * fan_in + fan_in - 1) // BLOCK - (j * fan_in) // BLOCK + 1 for j in order)
    assert info["reads"] == blocks * (base_bits + use)


def test_throughput_dense_rows_one_entry_a_cycle():
    """A 2-bit layer with no zeros at 4 bits: after the first block one entry a cycle (no back-pressure)."""
    rng = np.random.default_rng(5)
    rows, fan_in = 4, 200
    base = rng.integers(1, 2, size=(rows, fan_in))  # all ones: never zero
    planes = [rng.integers(0, 2, size=(rows, fan_in)) for _ in range(2)]
    words, base_addr, plane_addr, plane_words = layout_words(rng, base, planes, 2)
    fields = {"fan_in": fan_in, "base_bits": 2, "planes": 2, "code_shift": 1, "cls": 1,
              "base_addr": base_addr, "plane_addr": plane_addr, "plane_words": plane_words}
    commands = [{"first": j * fan_in, "negate": 0} for j in range(rows)]
    got, info = run(words, fields, commands, rows * fan_in, seed=1, p_gap=0, p_stall=0, p_other=0)
    assert len(got) == rows * fan_in
    # One entry a cycle, one bubble per block for its transfer, and a few cycles per row.
    assert info["last_cycle"] <= rows * fan_in * (1 + 1 / BLOCK) + rows * 10, info["last_cycle"]


@pytest.mark.parametrize("bad", [{"base_bits": 0}, {"base_bits": 9}, {"planes": 7, "base_bits": 2},
                                 {"cls": 0}, {"cls": 3}, {"fan_in": 0}, {"fan_in": 1 << FAN_IN_WIDTH},
                                 {"code_shift": 6},
                                 # more than 8 words a block, with room in the class for its codes
                                 {"planes": 7, "base_bits": 2, "cls": 2, "code_shift": 0}])
def test_bad_fields_stop_the_decoder(bad):
    rng = np.random.default_rng(3)
    base, planes = random_vertical(rng, 2, 40, 2, 2, 0.0)
    words, base_addr, plane_addr, plane_words = layout_words(rng, base, planes, 2)
    fields = {"fan_in": 40, "base_bits": 2, "planes": 2, "code_shift": 1, "cls": 1,
              "base_addr": base_addr, "plane_addr": plane_addr, "plane_words": plane_words, **bad}
    got, info = run(words, fields, [{"first": 0, "negate": 0}, {"first": 40, "negate": 0}], 1, seed=2,
                    limit=200)
    assert info["error_cycle"] is not None and got == [] and info["commands_taken"] == 1
    assert info["moved_after_error"] == []  # no command taken, no read requested after it


@pytest.mark.parametrize("kwargs, message", [
    ({"addr_width": 0, "fan_in_width": 8}, "addr_width must be >= 1, not 0"),
    ({"addr_width": 8, "fan_in_width": 0}, "fan_in_width must be 1..24, not 0"),
    ({"addr_width": 8, "fan_in_width": 25}, "fan_in_width must be 1..24, not 25"),
])
def test_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        PlaneRowDecoder(**kwargs)
