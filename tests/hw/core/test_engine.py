# amaranth: UnusedElaboratable=no
"""LayerEngine on a real global buffer and activation bank: every write of every layer, bit for bit against
model.export.golden.layer_forward, with a higher-priority requester stealing the buffer port at random."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import MemoryData
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.utils import ceil_log2

from hw.core.activations import ActivationBank, act_write_signature
from hw.core.engine import LayerEngine
from hw.core.global_buffer import GlobalBuffer, buffer_port_signature
from hw.core.job import LAYER_JOB_LAYOUT, ErrorCode, job_signature
from hw.core.scores import score_write_signature
from model.export.format import DESCRIPTOR, HEADER
from model.export.golden import layer_forward
from model.export.image import core_words as pack
from model.export.image import regions
from tests.hw.netgen import random_network
from tests.hw.stream_source import simulate

ACT_DEPTH = 32


class EngineHarness(wiring.Component):
    """The engine with a GlobalBuffer (a ``noise`` requester ahead of its fetchers on port A) and an
    ActivationBank (``load`` preloads it); the engine's writes are mirrored out for the testbench."""

    def __init__(self, words, batch):
        depth = 1 << ceil_log2(max(len(words), 2))
        self._data = MemoryData(shape=32, depth=depth, init=[int(w) for w in words])
        self._batch = batch
        act_addr = ceil_log2(ACT_DEPTH)
        super().__init__({
            "ctl": In(job_signature(LAYER_JOB_LAYOUT, error=True)),
            "noise": In(buffer_port_signature(ceil_log2(depth))),
            "load": In(act_write_signature(batch, act_addr)),
            "act_write": Out(act_write_signature(batch, act_addr)),
            "scores": Out(score_write_signature(batch, ACT_DEPTH)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = GlobalBuffer(self._data, ports=(("noise", "params", "mask"), ("payload",)))
        m.submodules.acts = acts = ActivationBank(batch=self._batch, depth=ACT_DEPTH)
        m.submodules.engine = engine = LayerEngine(batch=self._batch, addr_width=buffer.addr_width,
                                                   act_depth=ACT_DEPTH)
        connect(m, flipped(self.ctl), engine.ctl)
        connect(m, flipped(self.noise), buffer.noise)
        connect(m, flipped(self.load), acts.load)
        connect(m, engine.param_bus, buffer.params)
        connect(m, engine.mask_bus, buffer.mask)
        connect(m, engine.payload_bus, buffer.payload)
        connect(m, engine.acts, acts.read)
        connect(m, engine.act_write, acts.write)
        connect(m, engine.scores, flipped(self.scores))
        for name in ("addr", "buf", "lanes", "data"):
            m.d.comb += getattr(self.act_write, name).eq(getattr(engine.act_write, name))
        return m


def descriptor_bits(words, index: int) -> int:
    d = HEADER.words + DESCRIPTOR.words * index
    return sum(int(w) << (32 * k) for k, w in enumerate(words[d:d + DESCRIPTOR.words]))


def run_layers(words, net, images, batch, seed, p_noise, max_cycles=20_000):
    """Preload the batch's input codes into buffer 0, run every layer as one job (source buffer l mod 2,
    the last one flagged), and return per layer the writes (hidden: (row, image, code); last: (row, image,
    score)), whether ``done`` came, and the error code seen."""
    rng = np.random.default_rng(seed)
    dut = EngineHarness(words, batch)
    out = []

    async def bench(ctx):
        for i in range(images.shape[1]):
            for k in range(batch):
                ctx.set(dut.load.addr, i)
                ctx.set(dut.load.buf, 0)
                ctx.set(dut.load.lanes, 1 << k)
                ctx.set(dut.load.data, int(images[k, i]))
                await ctx.tick()
        ctx.set(dut.load.lanes, 0)
        for index in range(len(net.layers)):
            last = index == len(net.layers) - 1
            ctx.set(dut.ctl.job.valid, 1)
            ctx.set(dut.ctl.job.payload.desc.as_value(), descriptor_bits(words, index))
            ctx.set(dut.ctl.job.payload.src, index % 2)
            ctx.set(dut.ctl.job.payload.last, last)
            _, _, ready = await ctx.tick().sample(dut.ctl.job.ready)
            assert ready
            ctx.set(dut.ctl.job.valid, 0)
            writes, done, error = [], False, ErrorCode.NONE
            for _ in range(max_cycles):
                ctx.set(dut.noise.req, rng.random() < p_noise)
                ctx.set(dut.noise.addr, int(rng.integers(0, 1 << 6)))
                _, _, lanes, buf, addr, code, sen, simg, srow, score, done, error = await ctx.tick().sample(
                    dut.act_write.lanes, dut.act_write.buf, dut.act_write.addr, dut.act_write.data,
                    dut.scores.en, dut.scores.img, dut.scores.row, dut.scores.data, dut.ctl.done, dut.ctl.error)
                assert not (lanes and last) and not (sen and not last), "wrote to the wrong memory"
                if lanes:
                    assert buf == 1 - index % 2 and lanes & (lanes - 1) == 0, "one lane of the other buffer"
                    writes.append((addr, lanes.bit_length() - 1, code))
                if sen:
                    writes.append((srow, simg, score))
                if done or error != ErrorCode.NONE:
                    break
            for _ in range(10):  # quiet after the job
                _, _, lanes, sen, again = await ctx.tick().sample(dut.act_write.lanes, dut.scores.en, dut.ctl.done)
                assert not (lanes or sen or again) or error != ErrorCode.NONE
            out.append({"writes": writes, "done": bool(done), "error": error})
            if error != ErrorCode.NONE:
                break

    simulate(dut, bench)
    return out


def expected_writes(net, images):
    """Row by row, image by image: what each layer writes, from the golden model."""
    x, out = images, []
    for layer in net.layers:
        y = layer_forward(layer, x)
        out.append([(j, k, int(y[k, j])) for j in range(layer.n_out) for k in range(len(images))])
        x = y
    return out


CASES = [
    # sizes, act_bits, probs, signed, batch, p_noise
    ((12, 5), 4, (0.4, 0.25, 0.15, 0.1, 0.1), False, 1, 0.0),
    ((23, 17, 5), 4, (0.4, 0.25, 0.15, 0.1, 0.1), (False, True), 2, 0.5),
    ((9, 6, 7, 3), 8, (0.1, 0.1, 0.1, 0.2, 0.5), True, 4, 0.3),
    ((30, 8, 4), 2, (0.85, 0.15, 0, 0, 0), False, 2, 0.7),
    ((5, 31, 2), 5, (1.0, 0, 0, 0, 0), (True, False), 1, 0.2),  # every weight pruned: bias only
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_engine_layers_match_golden(case):
    sizes, act_bits, probs, signed, batch, p_noise = CASES[case]
    rng = np.random.default_rng(500 + case)
    net = random_network(rng, sizes=sizes, act_bits=act_bits, probs=probs, signed=signed)
    images = rng.integers(0, 1 << act_bits, size=(batch, sizes[0]))
    images[0] = (1 << act_bits) - 1
    words = pack(net)
    got = run_layers(words, net, images, batch, case, p_noise)
    for index, (res, want) in enumerate(zip(got, expected_writes(net, images))):
        assert res["error"] == ErrorCode.NONE and res["done"], f"layer {index} did not finish"
        assert res["writes"] == want, f"layer {index}"


def test_engine_reports_a_reserved_width_code():
    """A reserved code in the second layer's mask: the first layer runs, the second reports
    RESERVED_WIDTH_CODE and never signals done (rows before the bad code may still be written)."""
    rng = np.random.default_rng(9)
    net = random_network(rng, sizes=(14, 9, 3), probs=(0.2, 0.2, 0.2, 0.2, 0.2))
    images = rng.integers(0, 16, size=(2, 14))
    words = pack(net).copy()
    reg = regions(net)[1]
    bad = reg.mask_base + 1 * reg.mask_words_per_row  # row 1 of layer 1
    words[bad] = (int(words[bad]) & ~(7 << 6)) | 6 << 6  # its weight 2 gets code 6
    got = run_layers(words, net, images, 2, 1, 0.3, max_cycles=600)
    want = expected_writes(net, images)
    assert got[0]["done"] and got[0]["writes"] == want[0]
    assert got[1]["error"] == ErrorCode.RESERVED_WIDTH_CODE and not got[1]["done"]
    assert got[1]["writes"] == want[1][:len(got[1]["writes"])] and len(got[1]["writes"]) <= 1 * 2


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 3, "addr_width": 8, "act_depth": 32}, "batch must be 1 or an even number in 2..16, not 3"),
    ({"batch": 1, "addr_width": 0, "act_depth": 32}, "addr_width must be >= 1, not 0"),
    ({"batch": 1, "addr_width": 8, "act_depth": 24}, "act_depth must be a power of two in 2..4096, not 24"),
    ({"batch": 1, "addr_width": 8, "act_depth": 8192}, "act_depth must be a power of two in 2..4096, not 8192"),
])
def test_engine_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        LayerEngine(**kwargs)
