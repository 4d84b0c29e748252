# amaranth: UnusedElaboratable=no
"""LayerSequencer against a model of its job sequence: the testbench plays the loader, the engine and the
streamer (random accept and finish delays), a higher-priority requester steals the buffer port, and
corrupt headers, descriptors and engine errors stop it with the right error code."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import MemoryData
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.utils import ceil_log2

from hw.core.global_buffer import GlobalBuffer, buffer_port_signature
from hw.core.job import LAYER_JOB_LAYOUT, ErrorCode, emit_job_layout, job_signature, load_job_layout
from hw.core.sequencer import LayerSequencer
from model.export.format import DESCRIPTOR, HEADER
from model.export.golden import MAX_SHIFT
from model.export.image import core_words as pack
from tests.hw.netgen import random_network
from tests.hw.stream_source import simulate

ACT_DEPTH = 32


class SequencerHarness(wiring.Component):
    """The sequencer reading a GlobalBuffer behind a ``noise`` requester; its job ports come out."""

    def __init__(self, words):
        depth = 1 << ceil_log2(max(len(words), 2))
        self._data = MemoryData(shape=32, depth=depth, init=[int(w) for w in words])
        super().__init__({
            "noise": In(buffer_port_signature(ceil_log2(depth))),
            "load": Out(job_signature(load_job_layout(ACT_DEPTH))),
            "run": Out(job_signature(LAYER_JOB_LAYOUT, error=True)),
            "emit": Out(job_signature(emit_job_layout(ACT_DEPTH))),
            "error": Out(1),
            "error_code": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = GlobalBuffer(self._data, ports=(("noise", "sequencer"),))
        m.submodules.sequencer = seq = LayerSequencer(addr_width=buffer.addr_width, act_depth=ACT_DEPTH)
        connect(m, flipped(self.noise), buffer.noise)
        connect(m, seq.bus, buffer.sequencer)
        for name in ("load", "run", "emit"):
            connect(m, getattr(seq, name), flipped(getattr(self, name)))
        m.d.comb += [self.error.eq(seq.error), self.error_code.eq(seq.error_code)]
        return m


def descriptor_bits(words, index: int) -> int:
    d = HEADER.words + DESCRIPTOR.words * index
    return sum(int(w) << (32 * k) for k, w in enumerate(words[d:d + DESCRIPTOR.words]))


def run(words, n_jobs: int, seed: int, p_noise: float, engine_error_at: int | None = None, cycles=3000):
    """Play the three units for ``cycles`` (or until ``n_jobs`` jobs); return the jobs taken, in order, the
    error seen at the end and the cycle ``error`` rose."""
    rng = np.random.default_rng(seed)
    dut = SequencerHarness(words)
    log = {"jobs": [], "error_cycle": None}

    async def bench(ctx):
        busy = None  # (unit, cycles left) of the job in progress
        for cycle in range(cycles):
            ctx.set(dut.noise.req, rng.random() < p_noise)
            ctx.set(dut.noise.addr, int(rng.integers(0, 8)))
            for name in ("load", "run", "emit"):
                port = getattr(dut, name)
                ctx.set(port.done, busy is not None and busy[0] == name and busy[1] == 0)
                ctx.set(port.job.ready, busy is None and rng.random() < 0.6)
            failing = busy is not None and busy[0] == "run" and len(log["jobs"]) - 1 == engine_error_at
            ctx.set(dut.run.error, ErrorCode.RESERVED_WIDTH_CODE if failing and busy[1] == 0 else ErrorCode.NONE)
            sampled = await ctx.tick().sample(
                dut.load.job.valid, dut.load.job.ready, dut.load.job.payload,
                dut.run.job.valid, dut.run.job.ready, dut.run.job.payload,
                dut.emit.job.valid, dut.emit.job.ready, dut.emit.job.payload, dut.error)
            (lv, lr, lp, rv, rr, rp, ev, er, ep, error) = sampled[2:]
            if busy is not None:
                assert not (lv or rv or ev), "a job offered while another runs"
                busy = None if busy[1] == 0 else (busy[0], busy[1] - 1)
            taken = [(name, payload) for name, v, r, payload in (("load", lv, lr, lp), ("run", rv, rr, rp),
                                                                 ("emit", ev, er, ep)) if v and r]
            assert len(taken) <= 1
            for name, payload in taken:
                if name == "load":
                    log["jobs"].append(("load", int(payload.count), int(payload.buf)))
                elif name == "run":
                    log["jobs"].append(("run", payload.desc.as_value().value, int(payload.src), int(payload.last)))
                else:
                    log["jobs"].append(("emit", int(payload.count)))
                busy = (name, int(rng.integers(0, 6)))
            if error and log["error_cycle"] is None:
                log["error_cycle"] = cycle
            if log["error_cycle"] is not None:  # once raised, the error stays and no job is offered
                assert error, f"error dropped at cycle {cycle} after rising at {log['error_cycle']}"
                assert not (lv or rv or ev), f"a job offered at cycle {cycle} after the error"
            if len(log["jobs"]) == n_jobs and busy is None:
                break
        log["error"] = error
        log["error_code"] = ctx.get(dut.error_code)

    simulate(dut, bench)
    return log


def model_jobs(words, net, batches: int):
    """load(n_in of layer 0, buffer 0), run(descriptor l, source l mod 2, last) for each layer, emit(n_out)."""
    jobs = []
    for _ in range(batches):
        jobs.append(("load", net.layers[0].n_in, 0))
        for index in range(len(net.layers)):
            jobs.append(("run", descriptor_bits(words, index), index % 2, int(index == len(net.layers) - 1)))
        jobs.append(("emit", net.layers[-1].n_out))
    return jobs


@pytest.mark.parametrize("seed, sizes, p_noise", [(0, (12, 5), 0.0), (1, (23, 17, 5), 0.5),
                                                  (2, (6, 5, 4, 3, 2), 0.3), (3, (32, 1, 32, 7), 0.8)])
def test_sequencer_issues_the_jobs_of_every_batch(seed, sizes, p_noise):
    net = random_network(np.random.default_rng(seed), sizes=sizes, signed=bool(seed % 2))
    words = pack(net)
    want = model_jobs(words, net, 3)
    log = run(words, len(want), seed, p_noise)
    assert log["jobs"] == want
    assert not log["error"] and log["error_code"] == ErrorCode.NONE


def corrupt(words, index, value):
    words = words.copy()
    words[index] = value
    return words


def descriptor_word(layer: int, field: str) -> int:
    return HEADER.words + DESCRIPTOR.words * layer + DESCRIPTOR[field].word


def with_fields(words, layer: int, **values):
    """``words`` with descriptor ``layer``'s fields set to ``values`` (each within its word), the rest kept."""
    words = words.copy()
    for name, value in values.items():
        field, index = DESCRIPTOR[name], descriptor_word(layer, name)
        assert field.bit + field.width <= 32 and 0 <= value < 1 << field.width
        mask = ((1 << field.width) - 1) << field.bit
        words[index] = int(words[index]) & ~mask | value << field.bit
    return words


@pytest.mark.parametrize("name, change, code, jobs_before", [
    ("magic", lambda w: corrupt(w, HEADER["magic"].word, 0x41515050), ErrorCode.BAD_HEADER, 0),
    ("no layers", lambda w: corrupt(w, HEADER["layers"].word, 0), ErrorCode.BAD_HEADER, 0),
    ("too many layers", lambda w: corrupt(w, HEADER["layers"].word, 1 << 20), ErrorCode.BAD_HEADER, 0),
    ("n_in 0", lambda w: corrupt(w, descriptor_word(0, "n_in"), 0), ErrorCode.BAD_DESCRIPTOR, 0),
    ("n_out past the buffers", lambda w: corrupt(w, descriptor_word(1, "n_out"), ACT_DEPTH + 1),
     ErrorCode.BAD_DESCRIPTOR, 2),
    ("mask words per row", lambda w: corrupt(w, descriptor_word(1, "mask_words_per_row"), 3),
     ErrorCode.BAD_DESCRIPTOR, 2),
    ("shift 0", lambda w: corrupt(w, descriptor_word(1, "shift"), int(w[descriptor_word(1, "shift")]) & ~(0xFF << 16)),
     ErrorCode.BAD_DESCRIPTOR, 2),
    ("out_bits 9", lambda w: corrupt(w, descriptor_word(0, "out_bits"),
                                     int(w[descriptor_word(0, "out_bits")]) & ~(0xFF << 8) | 9 << 8),
     ErrorCode.BAD_DESCRIPTOR, 0),
    # Each of the next five passes only the one check it names (the net's layers are 15 -> 9 -> 4).
    ("n_in 0 without mask words", lambda w: with_fields(w, 0, n_in=0, mask_words_per_row=0),
     ErrorCode.BAD_DESCRIPTOR, 0),
    ("n_in past the buffers", lambda w: with_fields(w, 1, n_in=ACT_DEPTH + 1, mask_words_per_row=4),
     ErrorCode.BAD_DESCRIPTOR, 2),
    ("n_out 0", lambda w: with_fields(w, 1, n_out=0), ErrorCode.BAD_DESCRIPTOR, 2),
    ("too few mask words per row", lambda w: with_fields(w, 0, mask_words_per_row=1), ErrorCode.BAD_DESCRIPTOR, 0),
    ("shift past MAX_SHIFT", lambda w: with_fields(w, 1, shift=MAX_SHIFT + 1), ErrorCode.BAD_DESCRIPTOR, 2),
])
def test_sequencer_stops_on_a_corrupt_image(name, change, code, jobs_before):
    """The error rises, stays, and no job is offered after it; the jobs before the bad descriptor ran."""
    net = random_network(np.random.default_rng(7), sizes=(15, 9, 4))
    words = pack(net)
    log = run(change(words), 99, 7, 0.3, cycles=400)
    assert log["error"] and log["error_code"] == code, name
    assert log["jobs"] == model_jobs(words, net, 1)[:jobs_before]


def test_sequencer_stops_on_an_engine_error():
    net = random_network(np.random.default_rng(8), sizes=(15, 9, 4))
    words = pack(net)
    log = run(words, 99, 8, 0.2, engine_error_at=2, cycles=400)  # the second layer's job fails
    assert log["error"] and log["error_code"] == ErrorCode.RESERVED_WIDTH_CODE
    assert log["jobs"] == model_jobs(words, net, 1)[:3]


@pytest.mark.parametrize("kwargs, message", [
    ({"addr_width": 3, "act_depth": 32}, "addr_width must be >= 4, not 3"),
    ({"addr_width": 8, "act_depth": 48}, "act_depth must be a power of two in 2..4096, not 48"),
])
def test_sequencer_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        LayerSequencer(**kwargs)
