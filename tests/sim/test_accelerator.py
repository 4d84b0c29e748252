"""The accelerator's Verilog under cocotb (Icarus): scores equal the golden model's, image by image."""

import dataclasses
import errno
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from hw.platform.verilog import write_verilog
from model.export.golden import IntNetwork
from model.export.image import core_words as pack
from sim.runner import build, run_accelerator, simulators_available
from tests.hw.netgen import random_network

N_IMAGES = 6


def _case(net: IntNetwork, rng: np.random.Generator, n: int = N_IMAGES):
    inputs = rng.integers(0, 1 << net.input_bits, size=(n, net.layers[0].n_in), dtype=np.int64)
    return inputs, net.forward(inputs)


def _prune_rows(net: IntNetwork, rows: dict[int, list[int]]) -> IntNetwork:
    """``net`` with every weight of the given output rows (per layer index) pruned to 0 bits."""
    layers = list(net.layers)
    for k, pruned in rows.items():
        widths, codes = layers[k].widths.copy(), layers[k].codes.copy()
        widths[pruned], codes[pruned] = 0, 0
        layers[k] = dataclasses.replace(layers[k], widths=widths, codes=codes)
    return IntNetwork(input_bits=net.input_bits, layers=tuple(layers))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim")


@pytest.fixture(scope="module")
def small(work_dir):
    """A (23, 17, 5) network, its Verilog and a few images."""
    rng = np.random.default_rng(7)
    net = random_network(rng, sizes=(23, 17, 5))
    inputs, expected = _case(net, rng)
    return write_verilog(pack(net), work_dir / "small.v"), inputs, expected


def _assert_matches(result: dict, expected: np.ndarray) -> None:
    assert result["passed"], result
    assert result["images"] == len(expected)
    assert result["mismatches"] == 0 and result["mismatched_images"] == []
    assert result["protocol_errors"] == [] and not result["timed_out"]
    assert result["scores"] == expected.tolist()


def test_icarus_is_available():
    assert "icarus" in simulators_available()


def test_stalled_run_matches_golden(small, work_dir):
    verilog, inputs, expected = small
    result = run_accelerator(verilog, inputs, expected, work_dir=work_dir, stall=True, seed=3)
    _assert_matches(result, expected)
    assert result["stall"] is True and result["log"] is None  # a passing run leaves no run folder
    # The stalls really happened: input gaps, and scores held while o.ready was low.
    assert result["valid_gap_cycles"] > 0 and result["ready_stall_cycles"] > 0


def test_unstalled_run_counts_cycles_and_reuses_the_build(small, work_dir):
    verilog, inputs, expected = small
    first = run_accelerator(verilog, inputs[:2], expected[:2], work_dir=work_dir, stall=False)
    vvp = Path(first["build_dir"]) / "sim.vvp"
    built_at = vvp.stat().st_mtime_ns
    result = run_accelerator(verilog, inputs, expected, work_dir=work_dir, stall=False)
    _assert_matches(result, expected)
    assert result["valid_gap_cycles"] == result["ready_stall_cycles"] == 0
    assert result["build_dir"] == first["build_dir"] and vvp.stat().st_mtime_ns == built_at
    # Each image at least loads its n_in codes and streams its n_out scores; completion cycles grow.
    n_in, n_out = inputs.shape[1], expected.shape[1]
    done = result["image_done_cycles"]
    assert result["cycles_per_image"] > n_in + n_out
    # The counts agree with what bounds them independently: the input port takes one code a cycle, and the
    # last image's scores follow its last code; the whole simulation (reset, tail) is longer than the stream.
    assert len(inputs) * n_in + n_out <= result["cycles_total"] < result["sim_cycles"]
    assert result["first_image_latency_cycles"] >= n_in + n_out
    assert all(b > a for a, b in itertools.pairwise(done))
    # Without stalls the timing is deterministic: the 2-image run is a prefix of the 6-image run.
    assert first["image_done_cycles"] == done[:2]


def full_disk_at_the_marker(monkeypatch):
    """The disk fills up as a build's marker is written (the system's ENOSPC, which names no file)."""
    import sim.runner

    real = sim.runner.atomic_write

    def full(path, write):
        def partial(tmp):
            Path(tmp).write_text("")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, partial)

    monkeypatch.setattr(sim.runner, "atomic_write", full)


def test_a_build_that_meets_a_full_disk_leaves_nothing_a_later_run_reuses(small, tmp_path, monkeypatch):
    """An OSError naming the marker and no build folder left; the next build builds again and runs right."""
    verilog, inputs, expected = small
    full_disk_at_the_marker(monkeypatch)
    with pytest.raises(OSError) as caught:
        build(verilog, work_dir=tmp_path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("/.built")
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    monkeypatch.undo()
    _assert_matches(run_accelerator(verilog, inputs, expected, work_dir=tmp_path, stall=False), expected)


def test_a_build_whose_marker_is_not_whole_is_built_again(small, tmp_path):
    """An empty marker beside a truncated ``sim.vvp`` (what a full disk left before 2026-12-06) is not a build."""
    verilog, inputs, expected = small
    vvp = build(verilog, work_dir=tmp_path) / "sim.vvp"
    truncated = vvp.stat().st_size // 9
    vvp.write_bytes(vvp.read_bytes()[:truncated])
    (vvp.parent / ".built").write_text("")
    result = run_accelerator(verilog, inputs, expected, work_dir=tmp_path, stall=False)
    _assert_matches(result, expected)
    assert Path(result["build_dir"]) == vvp.parent and vvp.stat().st_size > truncated


def test_scoreboard_reports_the_wrong_image(small, work_dir):
    verilog, inputs, expected = small
    wrong = expected.copy()
    wrong[2, 1] += 1
    result = run_accelerator(verilog, inputs, wrong, work_dir=work_dir, stall=True, seed=1)
    assert not result["passed"]
    assert result["images"] == len(inputs)
    assert result["mismatches"] == 1 and result["mismatched_images"] == [2]
    assert result["scores"] == expected.tolist()  # the DUT was right, the reference was not
    assert Path(result["log"]).is_file()  # a failing run keeps its log


def test_watchdog_fails_a_run_without_progress(small, work_dir):
    verilog, inputs, expected = small
    # 20 cycles without a beat is shorter than one image's computation: the run must end as hung.
    result = run_accelerator(verilog, inputs, expected, work_dir=work_dir, stall=False, timeout_cycles=20)
    assert not result["passed"] and result["timed_out"]
    assert result["images"] < len(inputs)


def test_pruned_rows(work_dir):
    rng = np.random.default_rng(11)
    net = random_network(rng, sizes=(23, 17, 5))
    # Whole hidden rows and a whole class row without any weight: their sums are 0, only the bias remains.
    net = _prune_rows(net, {0: [0, 5, 6, 16], 1: [3]})
    assert not net.layers[1].widths[3].any()
    inputs, expected = _case(net, rng)
    verilog = write_verilog(pack(net), work_dir / "pruned.v")
    result = run_accelerator(verilog, inputs, expected, work_dir=work_dir, stall=True, seed=2)
    _assert_matches(result, expected)


def test_mostly_32_bit_weights(work_dir):
    rng = np.random.default_rng(12)
    net = random_network(rng, sizes=(19, 11, 4), probs=(0.05, 0.05, 0.05, 0.05, 0.8))
    assert (net.layers[0].widths == 32).mean() > 0.6
    inputs, expected = _case(net, rng)
    verilog = write_verilog(pack(net), work_dir / "wide.v")
    result = run_accelerator(verilog, inputs, expected, work_dir=work_dir, stall=True, seed=4)
    _assert_matches(result, expected)


@pytest.mark.parametrize(("name", "signed", "seed", "batch"),
                         [("signed", (True, True), 13, 1), ("mixed", (False, True), 14, 2)],
                         ids=["signed", "dorefa-then-signed-batch-2"])
def test_signed_layers(work_dir, name, signed, seed, batch):
    """Signed (offset-binary) layers alone, and a DoReFa layer feeding a signed one (two images sharing
    each weight on the packed lanes), through the Verilog."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, sizes=(21, 13, 5), probs=(0.3, 0.3, 0.2, 0.1, 0.1), signed=signed)
    assert [layer.signed for layer in net.layers] == list(signed)
    inputs, expected = _case(net, rng)
    # Hardware that ran every layer as DoReFa would fail: those scores differ.
    dorefa = IntNetwork(net.input_bits, tuple(dataclasses.replace(x, signed=False) for x in net.layers))
    assert not np.array_equal(dorefa.forward(inputs), expected)
    verilog = write_verilog(pack(net), work_dir / f"{name}.v", batch=batch)
    result = run_accelerator(verilog, inputs, expected, work_dir=work_dir, stall=True, seed=5)
    _assert_matches(result, expected)
