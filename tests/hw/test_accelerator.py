# amaranth: UnusedElaboratable=no
"""The whole Accelerator in Amaranth's simulator against model.export.golden.IntNetwork.forward, bit for bit,
for DoReFa, signed and mixed networks."""

import dataclasses

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from hw.accelerator import Accelerator
from hw.core.job import ErrorCode
from model.errors import UserError
from model.export.format import DESCRIPTOR, HEADER
from model.export.golden import MAX_FAN_IN, IntNetwork, layer_forward
from model.export.image import core_words as pack
from model.export.image import regions, unpack
from tests.hw.netgen import random_network
from tests.hw.stream_source import simulate


def run(dut: Accelerator, images: np.ndarray, seed: int, p_gap: float, p_stall: float):
    """Stream ``images`` in with random gaps, take scores out with random back-pressure.

    Returns the (score, last) pairs of every transfer on ``o``.
    """
    rng = np.random.default_rng(seed)
    n_classes = dut.network.layers[-1].n_out
    n_out = len(images) * n_classes
    inputs = [int(v) for v in np.asarray(images).ravel()]
    got = []

    async def feeder(ctx):
        for v in inputs:
            while rng.random() < p_gap:
                await ctx.tick()
            ctx.set(dut.i.payload, v)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        held = None
        for _ in range(200_000):
            if len(got) == n_out:
                break
            ctx.set(dut.o.ready, rng.random() >= p_stall)
            _, _, valid, ready, out, error = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload,
                                                                     dut.error)
            assert not error, "error raised on a valid image"
            if held is not None:
                assert valid and out == held, "score changed or vanished before its transfer"
            held = out if valid and not ready else None
            if valid and ready:
                got.append((int(out.score), int(out.last)))
        assert len(got) == n_out, f"accelerator stalled after {len(got)} of {n_out} scores"
        # No input left: nothing more may come out.
        ctx.set(dut.o.ready, 1)
        for _ in range(40):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "score without an input image"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feeder, background=True)
    sim.add_testbench(sink)
    sim.run()
    return got


def check(net: IntNetwork, images: np.ndarray, seed: int, p_gap=0.3, p_stall=0.3, **depths):
    dut = Accelerator(pack(net), **depths)
    got = run(dut, images, seed, p_gap, p_stall)
    want = net.forward(images)
    n_classes = want.shape[1]
    scores = np.array([s for s, _ in got], dtype=np.int64).reshape(want.shape)
    assert np.array_equal(scores, want), f"\n{scores}\n!=\n{want}"
    # `last` on the final class of each image and nowhere else.
    assert [last for _, last in got] == [int(k == n_classes - 1) for _ in images for k in range(n_classes)]
    return dut


def images_for(rng, net: IntNetwork, n: int) -> np.ndarray:
    top = (1 << net.input_bits) - 1
    u = rng.integers(0, top + 1, size=(n, net.layers[0].n_in))
    u[0] = top  # the largest activations everywhere
    return u


def prune_layer(net: IntNetwork, index: int) -> IntNetwork:
    layers = list(net.layers)
    layer = layers[index]
    layers[index] = dataclasses.replace(layer, widths=np.zeros_like(layer.widths),
                                        codes=np.zeros_like(layer.codes))
    return dataclasses.replace(net, layers=tuple(layers))


MIXED = (0.4, 0.25, 0.15, 0.1, 0.1)

CASES = {
    # name: (sizes, act_bits, probs, pruned layer or None, p_gap, p_stall)
    "single-layer": ((12, 3), 4, MIXED, None, 0.3, 0.3),
    "two-layer": ((23, 17, 5), 4, MIXED, None, 0.5, 0.2),
    "three-layer-pruned-middle": ((20, 9, 7, 4), 4, MIXED, 1, 0.2, 0.6),
    "all-pruned": ((11, 4), 4, (1, 0, 0, 0, 0), None, 0.0, 0.0),
    "all-32-bit-8-bit-acts": ((9, 6, 3), 8, (0, 0, 0, 0, 1), None, 0.3, 0.5),
    "sparse-4-bit-2-bit-acts": ((31, 8, 4), 2, (0.85, 0.15, 0, 0, 0), None, 0.1, 0.7),
    "four-layer": ((6, 5, 4, 3, 2), 3, (0.2, 0.2, 0.2, 0.2, 0.2), None, 0.4, 0.4),
    "expanding": ((5, 20, 3), 4, MIXED, None, 0.3, 0.3),
    "one-input-one-class": ((1, 10, 1), 5, (0.1, 0.3, 0.2, 0.2, 0.2), None, 0.3, 0.3),
}


@pytest.mark.parametrize("name", CASES)
def test_accelerator_matches_golden(name):
    sizes, act_bits, probs, pruned, p_gap, p_stall = CASES[name]
    seed = list(CASES).index(name)
    rng = np.random.default_rng(seed)
    net = random_network(rng, sizes=sizes, act_bits=act_bits, probs=probs)
    if pruned is not None:
        net = prune_layer(net, pruned)
    check(net, images_for(rng, net, 3), seed, p_gap, p_stall)


@pytest.mark.parametrize("seed", range(3))
def test_accelerator_random_shapes(seed):
    """Random depth (1-3 layers), sizes, activation width and width distribution, two images each."""
    rng = np.random.default_rng(100 + seed)
    n_layers = int(rng.integers(1, 4))
    sizes = tuple(int(x) for x in rng.integers(1, 25, size=n_layers + 1))
    probs = rng.dirichlet(np.ones(5) * 0.7)
    net = random_network(rng, sizes=sizes, act_bits=int(rng.integers(1, 9)), probs=probs)
    check(net, images_for(rng, net, 2), seed, float(rng.uniform(0, 0.6)), float(rng.uniform(0, 0.8)))


def test_accelerator_with_larger_memories():
    """The same bitstream runs an image smaller than its buffer and activation memories (prefetchers run
    past the image into zero words)."""
    rng = np.random.default_rng(42)
    net = random_network(rng, sizes=(14, 10, 3))
    dut = check(net, images_for(rng, net, 2), 42, buffer_depth=1024, act_depth=64)
    assert (dut.buffer_depth, dut.act_depth) == (1024, 64)


def test_accelerator_default_depths():
    rng = np.random.default_rng(0)
    net = random_network(rng, sizes=(23, 17, 5))
    words = pack(net)
    dut = Accelerator(words)
    assert dut.act_depth == 32
    assert dut.buffer_depth == 1 << (len(words) - 1).bit_length()


@pytest.mark.parametrize("name, bad", [
    ("act_depth", lambda n: 24),  # not a power of two
    ("act_depth", lambda n: 16),  # smaller than the widest layer (23)
    ("act_depth", lambda n: 2 * MAX_FAN_IN),
    ("act_depth", lambda n: 0),
    ("buffer_depth", lambda n: (1 << n.bit_length()) + 1),  # not a power of two
    ("buffer_depth", lambda n: 1 << (n.bit_length() - 2)),  # a power of two, too small for the image
])
def test_accelerator_rejects_bad_depths(name, bad):
    rng = np.random.default_rng(0)
    words = pack(random_network(rng, sizes=(23, 17, 5)))
    value = bad(len(words))
    with pytest.raises(ValueError, match=rf"^{name} .*not {value!r}$"):
        Accelerator(words, **{name: value})


@pytest.mark.parametrize(("name", "batch"), [("two-layer", 2), ("three-layer-pruned-middle", 2),
                                             ("all-32-bit-8-bit-acts", 4), ("sparse-4-bit-2-bit-acts", 4),
                                             ("one-input-one-class", 2), ("two-layer", 6),
                                             ("sparse-4-bit-2-bit-acts", 16)])
def test_batched_accelerator_matches_golden(name, batch):
    """``batch`` images share every decoded weight (packed DSP lanes); scores still leave image by image."""
    sizes, act_bits, probs, pruned, p_gap, p_stall = CASES[name]
    seed = 50 + list(CASES).index(name)
    rng = np.random.default_rng(seed)
    net = random_network(rng, sizes=sizes, act_bits=act_bits, probs=probs)
    if pruned is not None:
        net = prune_layer(net, pruned)
    dut = check(net, images_for(rng, net, 2 * batch), seed, p_gap, p_stall, batch=batch)
    assert dut.batch == batch


SIGNED_CASES = {
    # name: (sizes, act_bits, probs, per-layer signed, batch, p_gap, p_stall)
    "signed-one-layer": ((12, 3), 4, MIXED, (True,), 1, 0.3, 0.3),
    "signed-two-layer": ((23, 17, 5), 4, MIXED, (True, True), 1, 0.4, 0.4),
    "dorefa-then-signed": ((20, 9, 4), 4, MIXED, (False, True), 1, 0.2, 0.5),
    "signed-then-dorefa-batched": ((20, 9, 4), 4, MIXED, (True, False), 2, 0.5, 0.2),
    "signed-all-32-bit-8-bit-acts": ((9, 6, 3), 8, (0, 0, 0, 0, 1), (True, True), 2, 0.3, 0.5),
    "signed-4-bit-2-bit-acts-batch-4": ((31, 8, 4), 2, (0.5, 0.5, 0, 0, 0), (True, True), 4, 0.1, 0.7),
    "alternating-four-layer": ((6, 5, 4, 3, 2), 3, (0.2, 0.2, 0.2, 0.2, 0.2), (True, False, True, False), 2,
                               0.4, 0.4),
}


@pytest.mark.parametrize("name", SIGNED_CASES)
def test_signed_accelerator_matches_golden(name):
    """Signed (offset-binary) layers, alone and mixed with DoReFa ones in one image: the controller reads
    each layer's mode from its descriptor, so one bitstream runs both, bit for bit with the golden model."""
    sizes, act_bits, probs, signed, batch, p_gap, p_stall = SIGNED_CASES[name]
    seed = 200 + list(SIGNED_CASES).index(name)
    rng = np.random.default_rng(seed)
    net = random_network(rng, sizes=sizes, act_bits=act_bits, probs=probs, signed=signed)
    assert [layer.signed for layer in net.layers] == list(signed)
    images = images_for(rng, net, 2 * batch)
    dut = check(net, images, seed, p_gap, p_stall, batch=batch)
    assert dut.batch == batch
    # The mode matters: some signed layer's outputs change when it is read as DoReFa (unless every signed
    # weight is 32-bit: then the correction is A_32, below the accumulator's dropped ACC_SHIFT bits).
    x, changed = torch.as_tensor(images), 0
    for layer in net.layers:
        y = layer_forward(layer, x)
        changed += int((y != layer_forward(dataclasses.replace(layer, signed=False), x)).sum())
        x = y
    narrow = any(((lay.widths > 0) & (lay.widths < 32)).any() for lay in net.layers if lay.signed)
    assert (changed > 0) == narrow


@pytest.mark.parametrize("seed", range(3))
def test_accelerator_random_modes(seed):
    """Random depth, sizes, activation width, width distribution and per-layer mode, batch 1 or 2."""
    rng = np.random.default_rng(300 + seed)
    n_layers = int(rng.integers(1, 4))
    sizes = tuple(int(x) for x in rng.integers(1, 25, size=n_layers + 1))
    probs = rng.dirichlet(np.ones(5) * 0.7)
    signed = tuple(bool(x) for x in rng.integers(0, 2, size=n_layers))
    net = random_network(rng, sizes=sizes, act_bits=int(rng.integers(1, 9)), probs=probs, signed=signed)
    batch = int(rng.choice([1, 2]))
    check(net, images_for(rng, net, 2 * batch), seed, float(rng.uniform(0, 0.6)), float(rng.uniform(0, 0.8)),
          batch=batch)


@pytest.mark.parametrize("bad", [3, 0, 18])
def test_accelerator_rejects_bad_batch(bad):
    words = pack(random_network(np.random.default_rng(0), sizes=(4, 2)))
    with pytest.raises(ValueError, match=f"batch must be 1 or an even number in 2..16, not {bad}"):
        Accelerator(words, batch=bad)


def test_last_layer_with_output_codes_streams_its_codes():
    """A last layer with ``out_bits`` > 0 returns clamped codes in the golden model; the hardware streams
    those codes (the sequencer marks the last layer, not ``out_bits == 0``)."""
    rng = np.random.default_rng(77)
    net = random_network(rng, sizes=(13, 7, 5), act_bits=3)
    last = dataclasses.replace(net.layers[-1], out_bits=3)
    net = dataclasses.replace(net, layers=(*net.layers[:-1], last))
    images = images_for(rng, net, 4)
    assert net.forward(images).max() <= 7
    check(net, images, 77, batch=2)


def run_corrupt(words, good_words, n_images, cycles=3000, **kwargs):
    """Run ``words`` (bypassing ``unpack``: set as the buffer contents of an accelerator built for
    ``good_words``), feeding codes and taking scores all the time; return what happened."""
    dut = Accelerator(good_words, **kwargs)
    dut.image.init = [int(w) for w in words]
    n_in = dut.network.layers[0].n_in
    log = {"taken": 0, "scores": 0, "error_cycle": None, "codes": []}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for cycle in range(cycles):
            ctx.set(dut.i.payload, log["taken"] % 7)
            _, _, iv, ir, ov, error, code = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.error, dut.error_code)
            log["taken"] += int(iv and ir)
            log["scores"] += int(ov)
            log["codes"].append(code)
            if error and log["error_cycle"] is None:
                log["error_cycle"], log["taken_at_error"] = cycle, log["taken"]
            if log["error_cycle"] is not None:
                assert error and not ov, "no score after the error, and the error stays"
                assert code == log["codes"][log["error_cycle"]]
                if cycle > log["error_cycle"] + 200:
                    break
        log["code"] = code
        assert log["taken"] <= n_images * n_in

    simulate(dut, bench)
    return log


def corrupt_words(words, index, value):
    words = np.array(words, dtype=np.uint32)
    words[index] = value
    return words


def test_reserved_width_code_stops_the_core_with_an_error():
    """A mask with a reserved width code (which ``unpack`` rejects, so the words are built by hand): the
    first batch's scores never come, ``error`` rises with RESERVED_WIDTH_CODE and stays, the input stream
    stops (it took only the first batch's codes), and the core sits idle instead of hanging."""
    rng = np.random.default_rng(31)
    net = random_network(rng, sizes=(14, 9, 3), probs=(0.2, 0.2, 0.2, 0.2, 0.2))
    words = pack(net)
    reg = regions(net)[1]
    bad = reg.mask_base + 2 * reg.mask_words_per_row  # layer 1, row 2
    corrupted = corrupt_words(words, bad, (int(words[bad]) & ~(7 << 9)) | 7 << 9)  # its weight 3: code 7
    with pytest.raises(UserError, match="reserved"):
        unpack(corrupted)
    log = run_corrupt(corrupted, words, n_images=2, batch=2)
    assert log["error_cycle"] is not None and log["code"] == ErrorCode.RESERVED_WIDTH_CODE
    assert log["scores"] == 0 and log["taken_at_error"] == log["taken"] == 2 * 14
    assert all(c == ErrorCode.NONE for c in log["codes"][:log["error_cycle"]])


@pytest.mark.parametrize("name, index, value, code", [
    ("magic", HEADER["magic"].word, 0x4151504E, ErrorCode.BAD_HEADER),
    ("layers", HEADER["layers"].word, 0, ErrorCode.BAD_HEADER),
    ("n_out of layer 0", HEADER.words + DESCRIPTOR["n_out"].word, 1000, ErrorCode.BAD_DESCRIPTOR),
])
def test_corrupt_header_or_descriptor_stops_the_core(name, index, value, code):
    """The core checks what it reads: a bad header or descriptor raises ``error`` before any code is taken."""
    net = random_network(np.random.default_rng(32), sizes=(10, 6, 3))
    words = pack(net)
    log = run_corrupt(corrupt_words(words, index, value), words, n_images=1, cycles=400)
    assert log["error_cycle"] is not None and log["code"] == code, name
    assert log["taken"] == 0 and log["scores"] == 0
