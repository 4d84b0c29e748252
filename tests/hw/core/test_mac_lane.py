# amaranth: UnusedElaboratable=no
"""MacLane: per-class row sums (products and activations) against plain Python integers and against
model.export.golden.class_sums, for DoReFa and signed (offset-binary) layers."""

import numpy as np
import pytest
import torch
from amaranth import Shape

from hw.core.mac_lane import ACT_SUM_BITS, SUM_BITS, MacLane
from model.export.golden import CLASSES, MAX_ACT_BITS, MAX_FAN_IN, IntLinear, check_layer, class_sums
from tests.hw.stream_source import pump, simulate

CODE = {4: 1, 8: 2, 16: 3, 32: 4}  # width -> mask code (docs/image_format.md)




def run_lane(operands, n_rows, seed, p_gap, p_stall, batch=1):
    """Feed ``operands`` (dicts of the operand layout); return the row sums and the transfer cycles."""
    rng = np.random.default_rng(seed)
    dut = MacLane(batch)
    got, in_cycles, out_cycles = [], [], []

    def row(sums):
        return [{**{m: int(getattr(sums[k], f"s{m}")) for m in CLASSES},
                 **{f"a{m}": int(getattr(sums[k], f"a{m}")) for m in CLASSES}} for k in range(batch)]

    async def bench(ctx):
        rows, ins, outs = await pump(ctx, dut, operands, n_rows, rng, p_gap, p_stall, row)
        got.extend(rows)
        in_cycles.extend(ins)
        out_cycles.extend(outs)
        for _ in range(5):  # nothing more
            ctx.set(dut.o.ready, 1)
            _, _, ov = await ctx.tick().sample(dut.o.valid)
            assert not ov

    simulate(dut, bench)
    return got, in_cycles, out_cycles


def model_sums(rows, batch=1):
    """Plain Python, per image k: S_m = sum of q * u[k] over the row's code-m operands, A_m = sum of u[k]
    over them."""
    out = []
    for row in rows:
        images = []
        for k in range(batch):
            sums = {m: sum(op["q"] * op["u"][k] for op in row if op["code"] == CODE[m]) for m in CLASSES}
            sums.update({f"a{m}": sum(op["u"][k] for op in row if op["code"] == CODE[m]) for m in CLASSES})
            images.append(sums)
        out.append(images)
    return out


def random_rows(rng, n_rows, batch=1):
    rows = []
    for _ in range(n_rows):
        kind = rng.integers(0, 5)
        length = {0: 0, 1: 1}.get(int(kind), int(rng.integers(1, 25)))
        row = []
        for _ in range(length):
            width = int(rng.choice(CLASSES))
            top = (1 << width) - 1
            q = int(rng.choice([top, 0, int(rng.integers(0, top, endpoint=True))]))
            u = [int(rng.choice([255, 0, int(rng.integers(0, 256))])) for _ in range(batch)]
            row.append({"code": CODE[width], "q": q, "u": u, "row_end": 0})
        if kind == 4 and row:
            row = [{**op, "q": (1 << 32) - 1 if op["code"] == CODE[32] else op["q"], "u": [255] * batch}
                   for op in row]
        if not row or rng.random() < 0.3:
            # An empty row end (the decoder's all-pruned last mask word): q and u must be ignored.
            row.append({"code": 0, "q": int(rng.integers(0, 1 << 32)),
                        "u": [int(rng.integers(0, 256)) for _ in range(batch)], "row_end": 0})
        row[-1]["row_end"] = 1
        rows.append(row)
    return rows


@pytest.mark.parametrize(("seed", "batch"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 4), (5, 6), (6, 16)])
def test_lane_row_sums_match_python_ints(seed, batch):
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, 30, batch)
    p_gap, p_stall = [(0.0, 0.0), (0.3, 0.3), (0.6, 0.2), (0.1, 0.7), (0.5, 0.5), (0.3, 0.5), (0.4, 0.4)][seed]
    got, _, _ = run_lane([op for row in rows for op in row], len(rows), seed, p_gap, p_stall, batch)
    assert got == model_sums(rows, batch)


def test_lane_extremes_fit_the_sum_widths():
    """A long row of 32-bit q = 2^32 - 1 at u = 255, and one of every class at its maximum: exact."""
    big = [{"code": CODE[32], "q": (1 << 32) - 1, "u": [255, 255], "row_end": 0} for _ in range(40)]
    every = [{"code": CODE[m], "q": (1 << m) - 1, "u": [255, 255], "row_end": 0}
             for m in CLASSES for _ in range(3)]
    rows = [big, every, [{"code": 0, "q": (1 << 32) - 1, "u": [255, 255], "row_end": 0}]]
    for row in rows:
        row[-1]["row_end"] = 1
    got, _, _ = run_lane([op for row in rows for op in row], len(rows), 0, 0.2, 0.2, batch=2)
    assert got == model_sums(rows, 2)
    assert got[0][1][32] == 40 * ((1 << 32) - 1) * 255 and got[0][1]["a32"] == 40 * 255
    assert got[1][0]["a4"] == got[1][0]["a16"] == 3 * 255
    assert got[2][0] == {4: 0, 8: 0, 16: 0, 32: 0, "a4": 0, "a8": 0, "a16": 0, "a32": 0}


def test_lane_holds_the_largest_rows_the_contract_allows():
    """A row of ``MAX_FAN_IN`` weights of one class, every code and activation at its maximum, for each class:
    the sums reach the top bits of ``SUM_BITS[m]`` and ``ACT_SUM_BITS`` (the accumulators' declared widths,
    read from the elaborated lane's output layout) and are exact."""
    top_act = (1 << MAX_ACT_BITS) - 1
    rows = [[{"code": CODE[m], "q": (1 << m) - 1, "u": [top_act], "row_end": 0} for _ in range(MAX_FAN_IN)]
            for m in CLASSES]
    for row in rows:
        row[-1]["row_end"] = 1
    got, _, _ = run_lane([op for row in rows for op in row], len(rows), 5, 0.0, 0.1)
    assert got == model_sums(rows)
    fields = {name: Shape.cast(shape) for name, shape in MacLane(1).o.payload.shape().elem_shape.members.items()}
    for m, row in zip(CLASSES, got, strict=True):
        assert row[0][m] == MAX_FAN_IN * ((1 << m) - 1) * top_act
        assert row[0][m].bit_length() == SUM_BITS[m] == fields[f"s{m}"].width
        assert row[0][f"a{m}"] == MAX_FAN_IN * top_act
        assert row[0][f"a{m}"].bit_length() == ACT_SUM_BITS == fields[f"a{m}"].width


def test_lane_latency_and_throughput():
    """No gaps, no stalls: one operand a cycle, and a row's sums leave ``latency`` cycles after its end."""
    rng = np.random.default_rng(9)
    rows = random_rows(rng, 12)
    ops = [op for row in rows for op in row]
    got, in_cycles, out_cycles = run_lane(ops, len(rows), 1, 0.0, 0.0)
    assert got == model_sums(rows)
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + len(ops)))
    ends = [c for c, op in zip(in_cycles, ops) if op["row_end"]]
    assert out_cycles == [c + MacLane().latency for c in ends]


@pytest.mark.parametrize(("signed", "batch"), [(False, 1), (True, 1), (True, 2)])
def test_lane_matches_golden_class_sums(signed, batch):
    """Operands built as the decoder emits them for an IntLinear, against model.export.golden.class_sums.

    A signed layer's offset-binary codes run through the same lane: its sums are what the requantizer's
    correction needs (``A_m`` per class), so they must match the golden model's too.
    """
    rng = np.random.default_rng(21 + signed + batch)
    n_out, n_in = 6, 17
    widths = rng.choice([0, 4, 8, 16, 32], size=(n_out, n_in), p=(0.3, 0.2, 0.2, 0.15, 0.15))
    widths[2] = 0  # an all-pruned row
    widths[4] = 32
    top = np.where(widths == 32, (1 << 32) - 1, (1 << np.minimum(widths, 31)) - 1)
    low = np.minimum(int(signed), top)  # signed codes are >= 1 (c >= -(2^(m-1) - 1))
    codes = np.maximum(np.minimum((rng.random(widths.shape) * (top + 1.0)).astype(np.int64), top), low)
    codes = codes * (widths != 0)
    codes[4, :3] = (1 << 32) - 1
    codes[4, 3:5] = 1 if signed else 0  # c = -(2^31 - 1): the most negative signed 32-bit code
    layer = IntLinear(codes=codes, widths=widths.astype(np.int64), in_bits=8, out_bits=8,
                      mult=np.ones(n_out, dtype=np.int64), bias=np.zeros(n_out, dtype=np.int64), shift=1,
                      signed=signed)
    check_layer(layer)
    u = rng.integers(0, 256, size=(batch, n_in))
    u[:, :5] = 255
    ops = []
    for j in range(n_out):
        row = [{"code": CODE[int(widths[j, i])], "q": int(codes[j, i]), "u": [int(x) for x in u[:, i]],
                "row_end": 0} for i in range(n_in) if widths[j, i]]
        row = row or [{"code": 0, "q": 0, "u": [int(x) for x in u[:, 0]], "row_end": 0}]
        row[-1]["row_end"] = 1
        ops += row
    got, _, _ = run_lane(ops, n_out, 4, 0.3, 0.3, batch)
    sums, act_sums = class_sums(layer, torch.as_tensor(u, dtype=torch.int64))
    for j in range(n_out):
        assert got[j] == [{**{m: int(sums[m][k, j]) for m in CLASSES},
                           **{f"a{m}": int(act_sums[m][k, j]) for m in CLASSES}} for k in range(batch)]
