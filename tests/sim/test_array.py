"""The array's Verilog under cocotb: small conv nets (residual blocks, max-pool, global pool or flatten) and an
MLP on one build, images loaded through the load port, with back-pressure; scores equal golden's."""

from pathlib import Path

import numpy as np
import pytest

from hw.array.top import ArrayConfig
from hw.platform.verilog import array_verilog, write_text_atomically
from model.export.golden_net import IntConvNetwork
from model.export.layout_v3 import pack as pack_v3
from sim.array_runner import run_array, run_array_cases
from tests.hw.array.test_top import random_conv_net
from tests.hw.netgen import calibrated, random_network
from tests.model.export.test_layout_v3 import resnet_like

CONFIG = ArrayConfig(engines=2, lanes=5, buffer_words=2048, fmap_rows=128, row_codes=12, fan_in_width=9,
                     channel_bits=5, vertical=False)


@pytest.fixture(scope="module")
def verilog(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("array")
    return write_text_atomically(work / "mpq_array.v", array_verilog(CONFIG)), work


def check(verilog, net, n_images, seed, stall=True):
    path, work = verilog
    rng = np.random.default_rng(seed)
    shape = net.image_shape if hasattr(net, "image_shape") else (net.layers[0].n_in,)
    inputs = rng.integers(0, 1 << net.input_bits, size=(n_images, *shape))
    if isinstance(net, IntConvNetwork):  # (its codes depend on the image: tests.hw.netgen.calibrated)
        net = calibrated(net, inputs, rng)
    expected = net.forward(inputs)
    res = run_array(path, pack_v3(net)[0], inputs.reshape(n_images, -1), expected, work_dir=work, stall=stall,
                    seed=seed)
    assert res["passed"], {k: v for k, v in res.items() if k != "scores"}
    assert res["scores"] == expected.tolist() and res["statuses"] == [0] * n_images
    return res


def test_resnet_like_net_under_backpressure(verilog):
    net = resnet_like(np.random.default_rng(3))
    res = check(verilog, net, 3, 3)
    assert res["ready_stall_cycles"] > 0 and res["valid_gap_cycles"] > 0
    # The layer_index port times every layer of every image: the spans add up to the image's cycles.
    assert [len(c) for c in res["layer_cycles"]] == [len(net.layers)] * 3
    assert [sum(c) for c in res["layer_cycles"]] == res["image_cycles"]
    assert all(min(c) > 0 for c in res["layer_cycles"])


@pytest.mark.parametrize("seed", range(4))
def test_random_conv_nets_on_one_build(verilog, seed):
    check(verilog, random_conv_net(np.random.default_rng(2000 + seed)), 2, seed)


def test_mlp_on_the_same_build(verilog):
    check(verilog, random_network(np.random.default_rng(4), sizes=(23, 17, 5), act_bits=4), 3, 4)


def test_images_loaded_one_after_another_on_one_run(verilog):
    """Three networks through the load port in one simulation, no reset: each gives its own golden scores."""
    path, work = verilog
    cases = []
    for k, net in enumerate((resnet_like(np.random.default_rng(5)), random_conv_net(np.random.default_rng(6)),
                             random_network(np.random.default_rng(7), sizes=(23, 17, 5), act_bits=4))):
        shape = net.image_shape if hasattr(net, "image_shape") else (net.layers[0].n_in,)
        x = np.random.default_rng(k).integers(0, 1 << net.input_bits, size=(2, *shape))
        if hasattr(net, "image_shape"):  # the conv nets calibrated (tests.hw.netgen.calibrated), as check's are
            net = calibrated(net, x, np.random.default_rng(k))
        cases.append((pack_v3(net)[0], x.reshape(2, -1), net.forward(x)))
    res = run_array_cases(path, cases, work_dir=work, seed=1)
    assert res["passed"], {k: v for k, v in res.items() if k != "scores"}
    assert res["scores"] == [row for _, _, e in cases for row in e.tolist()] and len(res["load_cycles"]) == 3


def test_a_bad_image_ends_with_its_status_at_done(verilog):
    """Bad magic: the run ends (done) with BAD_MAGIC readable in the same cycle, and no score comes."""
    path, work = verilog
    net = resnet_like(np.random.default_rng(3))
    words = pack_v3(net)[0].copy()
    words[0] ^= 1
    x = np.zeros((1, 64), dtype=np.int64)
    res = run_array(path, words, x, net.forward(x.reshape(1, 1, 8, 8)), work_dir=work, stall=False,
                    timeout_cycles=3000)
    assert not res["passed"] and res["statuses"] == [1] and res["images"] == 0
