"""How many exact unsigned products fit one DSP48E1 multiply: the packing planner.

The MPQ-tickets paper's hardware (Sec. 1: "configure a single DSP slices onchip to be a multiple channel multiplier
for processing multiple data simultaneously"; Sec. 3.3): this module computes which operand widths pack how.

A DSP48E1 multiplies a 25-bit signed A (after the pre-adder) by an 18-bit signed B into a 48-bit P
(UG479, ch. 2). Kept non-negative, A carries 24 unsigned bits and B 17. Unsigned codes (DoReFa weight
codes, PACT activation codes) need no sign handling, so packing is plain positional arithmetic:

    A = sum_i x_i 2^(i * n_B * s),   B = sum_j y_j 2^(j * s)
    A * B = sum_(i, j) x_i y_j 2^((i * n_B + j) * s)

Every product ``x_i y_j`` lands in its own ``s``-bit slot of P. A slot holds one product when
``s >= bits(x) + bits(y)``; the ``g = s - bits(x) - bits(y)`` guard bits let P accumulate up to
``max_accumulation = floor((2^s - 1) / ((2^bx - 1)(2^by - 1)))`` products before the slot could carry
into its neighbour. The lane then *drains*: it copies P's slots into wide LUT accumulators and restarts P
from the next product in the same cycle, so accumulation is exact for any length at no cycle cost.
The top slot has the rest of P's 48 bits and never limits the drain interval unless it is narrow.

Operands wider than 16 bits are cut into 16-bit chunks (``x = sum_c x_c 2^(16 c)``) and multiplied chunk
by chunk over several cycles, each chunk pair accumulating in its own slot set; the chunk sums are
shifted into place when they are drained.

Which operand is packed how many times is a search over ``(n_A, n_B)`` and the port assignment: the
plan with most products per cycle wins; ties go to the plan that broadcasts one weight against several
activations, because a pruned weight then idles nothing (it is skipped for all lanes at once), whereas
a weight grid idles a lane whenever one of its weights is pruned (element-wise sparsity); then to more
guard bits (fewer drains; a drain costs no cycle, only toggles the LUT accumulators).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

#: Weight and activation code widths a lane accepts (narrower codes run in the next wider mode).
WEIGHT_BITS = (2, 3, 4, 8, 16, 32)
ACT_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
A_BITS = 24  # unsigned bits of the 25-bit signed A / AD multiplier input
B_BITS = 17  # unsigned bits of the 18-bit signed B input
P_BITS = 48
CHUNK_BITS = 16  # operands wider than this are split into chunks of this width


def supported_pairs() -> list[tuple[int, int]]:
    return [(w, a) for w in WEIGHT_BITS for a in ACT_BITS]


@dataclass(frozen=True)
class PackingPlan:
    """One lane mode: what goes into A and B and where each product lands in P.

    Members
    -------
    weight_bits, act_bits : int
        The mode.
    weight_chunk, act_chunk : int
        Bits of the operand chunks that enter the multiplier (the operand itself when <= 16 bits).
    weights, acts : int
        Weights and activations entering the multiplier each cycle (``weights * acts`` products).
    weight_port : str
        ``"A"`` or ``"B"``: the port that carries the weights.
    slot : int
        Slot width ``s`` in P.
    """

    weight_bits: int
    act_bits: int
    weight_chunk: int
    act_chunk: int
    weights: int
    acts: int
    weight_port: str
    slot: int

    @property
    def chunks(self) -> int:
        """Cycles per operand set: chunk pairs of a multi-chunk multiply."""
        return math.ceil(self.weight_bits / self.weight_chunk) * math.ceil(self.act_bits / self.act_chunk)

    @property
    def products(self) -> int:
        return self.weights * self.acts

    @property
    def macs_per_cycle(self) -> float:
        """Exact multiply-accumulates per DSP per cycle, sustained (draining costs no cycle)."""
        return self.products / self.chunks

    @property
    def product_bits(self) -> int:
        return self.weight_chunk + self.act_chunk

    @property
    def guard_bits(self) -> int:
        return self.slot - self.product_bits

    @property
    def n_a(self) -> int:
        return self.weights if self.weight_port == "A" else self.acts

    @property
    def n_b(self) -> int:
        return self.acts if self.weight_port == "A" else self.weights

    def offset(self, w: int, a: int) -> int:
        """Bit offset in P of the product of weight ``w`` and activation ``a`` of a cycle."""
        i, j = (w, a) if self.weight_port == "A" else (a, w)
        return (i * self.n_b + j) * self.slot

    def slot_width(self, w: int, a: int) -> int:
        """Bits of P a product's slot owns (the top slot owns the rest of P)."""
        off = self.offset(w, a)
        return P_BITS - off if off == (self.products - 1) * self.slot else self.slot

    @property
    def max_accumulation(self) -> int:
        """Products a slot can sum in P before it must drain."""
        top = ((1 << self.weight_chunk) - 1) * ((1 << self.act_chunk) - 1)
        width = min(self.slot_width(w, a) for w in range(self.weights) for a in range(self.acts))
        return ((1 << width) - 1) // top

    def a_layout(self) -> list[int]:
        """Offsets of the values packed into A."""
        return [i * self.n_b * self.slot for i in range(self.n_a)]

    def b_layout(self) -> list[int]:
        return [j * self.slot for j in range(self.n_b)]


def _fits(n_a: int, x_bits: int, n_b: int, y_bits: int, slot: int) -> bool:
    top_a = (n_a - 1) * n_b * slot + x_bits
    top_b = (n_b - 1) * slot + y_bits
    return top_a <= A_BITS and top_b <= B_BITS and (n_a * n_b - 1) * slot + x_bits + y_bits <= P_BITS


@functools.cache
def plan(weight_bits: int, act_bits: int, *, weights: int | None = None) -> PackingPlan:
    """The densest exact packing for a weight/activation width pair.

    Kept per argument set (the plan is frozen): the search takes about 24 ms, and a bound such as
    :func:`sim.bounds.dsp_bound_cycles` asks for the same few rates on every layer of every network.

    Parameters
    ----------
    weights : int or None
        Force the number of weights per cycle (1 = weight broadcast, as the accelerator's dataflow needs).

    Raises
    ------
    ValueError
        For an unsupported width pair or a forced count that does not fit, naming the supported set.
    """
    if weight_bits not in WEIGHT_BITS or act_bits not in ACT_BITS:
        raise ValueError(f"unsupported width pair (weight {weight_bits!r}, activation {act_bits!r}); "
                         f"supported weight bits {WEIGHT_BITS} x activation bits {ACT_BITS}")
    wc, ac = min(weight_bits, CHUNK_BITS), min(act_bits, CHUNK_BITS)
    best = None
    for weight_port in ("B", "A"):
        x_bits, y_bits = (wc, ac) if weight_port == "A" else (ac, wc)  # x goes to A, y to B
        for n_a in range(1, A_BITS + 1):
            for n_b in range(1, B_BITS + 1):
                n_w = n_a if weight_port == "A" else n_b
                if weights is not None and n_w != weights:
                    continue
                # The widest slot that fits: more guard bits, fewer drains.
                for slot in range(P_BITS, wc + ac - 1, -1):
                    if _fits(n_a, x_bits, n_b, y_bits, slot):
                        break
                else:
                    continue
                candidate = PackingPlan(weight_bits, act_bits, wc, ac, n_w, n_a * n_b // n_w, weight_port,
                                        slot)
                key = (candidate.products, n_w == 1, candidate.guard_bits)
                if best is None or key > best[0]:
                    best = (key, candidate)
    if best is None:
        raise ValueError(f"width pair (weight {weight_bits}, activation {act_bits}) with {weights} weights "
                         f"per cycle does not fit the DSP48E1 ports (A {A_BITS}, B {B_BITS} unsigned bits)")
    return best[1]
