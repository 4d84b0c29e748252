"""``bench fuzz``: random conv and fully connected layers and small networks through the array's RTL.

Every network is drawn at random within what one small array configuration holds (:data:`CONFIG`): conv
stems with kernels 1 to 7, every padding the contract allows, stride 1 or 2, optional 2 x 2 max-pool,
residual blocks of stride 1 or 2, a global pool or a flatten before the FC, and MLPs of one to three layers;
element-wise widths from a random mix over (0, 4, 8, 16, 32) with 0 to 99 % pruned, both weight modes
(DoReFa, signed offset-binary), activation widths 1 to 8. Each layer's requantizer is calibrated on the
network's own activations (golden's ``requant_params`` from the accumulator's 5th and 95th percentiles per
channel), so that its codes spread over their range instead of saturating; one layer in ten keeps random
parameters (extremes of ``M``, ``B``, ``S``).

The networks are packed (image version 3) and run on two RTL builds (:data:`CONFIGS`: two engines of five
lanes, and one engine of seven), in chunks of :data:`CHUNK` networks that take the builds in turn, each
network drawn for its chunk's build; a chunk's networks are loaded one after another through the load port
without a reset (:func:`sim.array_runner.run_array_cases`), under random back-pressure on every stream; each
image's scores must equal golden's, and its global-buffer words read (the RTL's ``weight_reads`` and ``reads``)
the model's (:func:`sim.reads.words_read`). ``mismatches`` counts images whose scores differ,
``read_mismatches`` those whose reads do, ``deadlocks`` runs whose
watchdog fired (no transfer and no ``done`` for :data:`TIMEOUT_CYCLES` cycles), ``not_run`` the images a
deadlocked run left; ``builds`` holds the same counts per build. Every network fits its build (:func:`fits`).

Why two builds: which cycle an engine's stages meet in depends on the engine count and the tile width, and the
one deadlock the array had (docs/array_design.md, "A deadlock on one engine") hung one run in four on one
engine of seven lanes and never on the two of five that the fuzz used alone then.

``bench fuzz`` then runs random vertical-layered (version 4) networks on two more builds:
:mod:`sim.bench.fuzz_vertical`, which shares :func:`run_chunk`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from hw.array.sizing import needs
from hw.array.top import ArrayConfig
from hw.platform.verilog import array_verilog, write_text_atomically
from model.bench.floors import floor_entry
from model.errors import UserError
from model.export.golden import IntLinear, IntNetwork, class_sums, combine, layer_forward
from model.export.golden_conv import IntConv2d, conv_accumulator, conv_forward, max_pool_codes, shortcut_a
from model.export.golden_net import ConvStage, FCStage, GlobalSumPool, IntConvNetwork, ResidualStage
from model.export.layout_v3 import pack as pack_v3
from model.progress import progress_bar
from sim.array_runner import run_array_cases
from sim.bench.calibrate import calibrated_requant
from sim.reads import words_read
from sim.runner import SimulationError

#: The first array the networks run on: 2 engines of 5 lanes (10-pixel tiles), maps up to 12 wide.
CONFIG = ArrayConfig(engines=2, lanes=5, buffer_words=4096, fmap_rows=128, row_codes=12, fan_in_width=9,
                     channel_bits=4, vertical=False)
#: The second: one engine of 7 lanes (14-pixel tiles, so a 12-wide map's tile is one row and a 7-wide one's two).
ONE_ENGINE = dataclasses.replace(CONFIG, engines=1, lanes=7)
#: The version 3 part's builds, taken in turn by the chunks of networks.
CONFIGS = (CONFIG, ONE_ENGINE)
#: The floor on each build's share of the layers (the chunks alternate, so each gets about half).
BUILD_LAYERS = 4_000
#: What a run adds to a build's record and to the whole part's (:func:`run_chunk`).
RUN_COUNTS = ("images", "mismatches", "read_mismatches", "deadlocks", "not_run", "sim_cycles")
TIMEOUT_CYCLES = 200_000
#: Networks per simulator run (one build serves all runs).
CHUNK = 150
WIDTHS = np.array([0, 4, 8, 16, 32])


def _weights(rng, shape, signed: bool):
    """Widths with a random pruned share (0 to 99 %) and a random mix of the others; codes in range."""
    p0 = float(rng.choice([0.0, 0.3, 0.6, 0.9, 0.99, rng.uniform(0, 0.99)]))
    mix = rng.dirichlet(np.ones(4) * rng.choice([0.3, 1.0, 5.0]))
    widths = rng.choice(WIDTHS, size=shape, p=np.concatenate([[p0], (1 - p0) * mix])).astype(np.int64)
    top = np.where(widths == 32, (1 << 32) - 1, (np.int64(1) << np.minimum(widths, 31)) - 1)
    low = np.where(widths > 0, int(signed), 0)
    codes = low + np.floor(rng.random(shape) * (top - low + 1).astype(np.float64)).astype(np.int64)
    extreme = rng.random(shape)
    codes = np.where(extreme < 0.1, low, np.where(extreme > 0.9, top, np.minimum(codes, top)))
    return np.where(widths > 0, codes, 0), widths


def _conv(rng, x, in_bits, c_out, k, stride, pad, out_bits, residual=None):
    """A conv layer on codes ``x`` ``[N, C, H, W]`` of ``in_bits`` bits, requant calibrated on its accumulator;
    ``residual`` (its shortcut codes) makes it conv2 of a block."""
    signed = bool(rng.integers(0, 2))
    codes, widths = _weights(rng, (c_out, x.shape[1], k, k), signed)
    zeros = np.zeros(c_out, np.int64)
    probe = IntConv2d(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits, mult=zeros, bias=zeros,
                      shift=1, stride=stride, padding=pad, signed=signed)
    mult, bias, shift, res = calibrated_requant(rng, conv_accumulator(probe, x), out_bits, residual)
    return IntConv2d(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits, mult=mult, bias=bias,
                     shift=shift, stride=stride, padding=pad, signed=signed, res_mult=res)


def _fc(rng, u, in_bits, n_out, out_bits=0):
    """A fully connected layer on inputs ``u`` ``[N, n_in]`` (codes of ``in_bits`` bits, or their pooled sums)."""
    signed = bool(rng.integers(0, 2))
    codes, widths = _weights(rng, (n_out, u.shape[1]), signed)
    zeros = np.zeros(n_out, np.int64)
    probe = IntLinear(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits, mult=zeros, bias=zeros, shift=1,
                      signed=signed)
    mult, bias, shift, _ = calibrated_requant(rng, combine(*class_sums(probe, u), signed), out_bits)
    return IntLinear(codes=codes, widths=widths, in_bits=in_bits, out_bits=out_bits, mult=mult, bias=bias,
                     shift=shift, signed=signed)


def random_mlp(rng, calib: int = 6) -> IntNetwork:
    """One to three fully connected layers, up to 40 inputs and 16 outputs each."""
    bits = int(rng.integers(1, 9))
    sizes = [int(rng.integers(1, 41))] + [int(rng.integers(1, 17)) for _ in range(int(rng.integers(1, 4)))]
    x = rng.integers(0, 1 << bits, size=(calib, sizes[0]))
    layers = []
    for k in range(len(sizes) - 1):
        last = k == len(sizes) - 2
        out_bits = 0 if last else int(rng.integers(1, 9))
        layer = _fc(rng, x, bits, sizes[k + 1], out_bits)
        layers.append(layer)
        x, bits = layer_forward(layer, x), out_bits
    return IntNetwork(input_bits=int(layers[0].in_bits), layers=tuple(layers))


def random_conv_net(rng, calib: int = 4, config: ArrayConfig = CONFIG) -> IntConvNetwork:
    """A conv stem (kernel 1-7, any padding, stride 1/2, optional max-pool), up to one residual block (stride
    1/2) and one more conv, then a global pool or a flatten and the FC; every map fits ``config``."""
    t, rc = config.pixels, config.row_codes
    c0, bits = int(rng.integers(1, 4)), int(rng.integers(1, 9))
    while True:
        size = int(rng.integers(3, min(rc, 2 * t) + 1))
        k = int(rng.choice([1, 3, 5, 7]))
        pad = int(rng.integers(0, k))
        stride = int(rng.integers(1, 3))
        if size + 2 * pad >= k:
            out = (size + 2 * pad - k) // stride + 1
            if out <= t:
                break
    x = rng.integers(0, 1 << bits, size=(calib, c0, size, size))
    image_shape, input_bits = (c0, size, size), bits
    stages = []
    out_bits = int(rng.integers(1, 9))
    stem = _conv(rng, x, bits, int(rng.integers(1, 9)), k, stride, pad, out_bits)
    x, bits = conv_forward(stem, x), out_bits
    pool = 2 if x.shape[2] >= 2 and rng.random() < 0.4 else 0
    if pool:
        x = max_pool_codes(x, 2, 2)
    stages.append(ConvStage(stem, pool=pool))
    if rng.random() < 0.6:  # a residual block
        s = int(rng.integers(1, 3)) if x.shape[2] >= 2 else 1
        c_out = int(rng.integers(x.shape[1], min(x.shape[1] + 4, 16) + 1))
        mid_bits, end_bits = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        one = _conv(rng, x, bits, c_out, 3, s, 1, mid_bits)
        h = conv_forward(one, x)
        short = shortcut_a(x, c_out, s)
        two = _conv(rng, h, mid_bits, c_out, 3, 1, 1, end_bits, residual=short)
        stages.append(ResidualStage(one, two, stride=s))
        x, bits = conv_forward(two, h, residual=short), end_bits
    if rng.random() < 0.3:  # one more plain conv
        out_bits = int(rng.integers(1, 9))
        more = _conv(rng, x, bits, int(rng.integers(1, 9)), int(rng.choice([1, 3])), 1, int(rng.integers(0, 2)),
                     out_bits)
        if more.padding >= more.kernel:
            more = _conv(rng, x, bits, more.c_out, 3, 1, 1, out_bits)
        x, bits = conv_forward(more, x), out_bits
        stages.append(ConvStage(more))
    n_out = int(rng.integers(1, 17))
    if rng.random() < 0.5 or x.shape[1] * x.shape[2] * x.shape[3] >= 1 << config.fan_in_width:
        pooled = x.sum(axis=(2, 3))
        stages += [GlobalSumPool(), FCStage(_fc(rng, pooled, bits, n_out), pooled=x.shape[2] * x.shape[3])]
    else:
        stages.append(FCStage(_fc(rng, x.reshape(len(x), -1), bits, n_out)))
    return IntConvNetwork(input_bits=input_bits, image_shape=image_shape, stages=tuple(stages))


def fits(words, config: ArrayConfig = CONFIG) -> bool:
    """The image runs on ``config``: the sizes its descriptors need (:func:`hw.array.sizing.needs`)."""
    n = needs(words)
    return (n["buffer_words"] <= config.buffer_words and n["fmap_rows"] <= config.fmap_rows
            and n["row_codes"] <= config.row_codes and n["fan_in"] < 1 << config.fan_in_width
            and n["channels"] <= 1 << config.channel_bits and n["out_width"] <= config.pixels)


def random_network(rng, config: ArrayConfig = CONFIG) -> IntNetwork | IntConvNetwork:
    """A conv net four times in five, else an MLP; redrawn until it packs (bounds of the contract) and fits
    ``config``."""
    while True:
        try:
            net = random_conv_net(rng, config=config) if rng.random() < 0.8 else random_mlp(rng)
            if fits(pack_v3(net)[0], config):
                return net
        except UserError:
            continue


def weight_layers(net) -> int:
    return len(net.layers)


def run_chunk(vpath, cases: list, work_dir: Path, simulator: str, seed: int, run: int, total: dict,
              reads: list[tuple[int, int]]) -> None:
    """Run ``cases`` (:func:`sim.array_runner.run_array_cases`, back-pressure on every stream) and add to
    ``total``'s ``images``, ``mismatches`` (images whose scores differ from the case's), ``read_mismatches``
    (images whose ``weight_reads`` and ``reads`` counters differ from the case's ``reads`` entry,
    :func:`sim.reads.words_read`), ``not_run`` (images a run did not reach), ``deadlocks`` (watchdog),
    ``sim_cycles`` and ``failed_runs`` (one entry a run that failed or read otherwise than the model).

    Raises
    ------
    UserError
        The simulator failing, or the testbench stopping other than by its watchdog.
    """
    try:
        res = run_array_cases(vpath, cases, work_dir=work_dir, simulator=simulator, stall=True, seed=seed,
                              timeout_cycles=TIMEOUT_CYCLES)
    except SimulationError as exc:
        raise UserError(f"bench fuzz: the simulator failed ({exc})") from exc
    if res.get("error") and not res["timed_out"]:
        raise UserError(f"bench fuzz: the testbench stopped ({res['error']}); see {res['log']}")
    expected = [row for case in cases for row in case[2].tolist()]
    want_reads = [pair for case, pair in zip(cases, reads, strict=True) for _ in range(len(case[2]))]
    got = res["scores"]
    got_reads = list(zip(res["image_weight_reads"], res["image_reads"]))
    read_mismatched = [k for k, pair in enumerate(want_reads) if k < len(got_reads) and got_reads[k] != pair]
    total["mismatches"] += sum(1 for k, row in enumerate(expected) if k < len(got) and got[k] != row)
    total["read_mismatches"] += len(read_mismatched)
    total["not_run"] += max(0, len(expected) - len(got))
    total["deadlocks"] += int(bool(res["timed_out"]))
    total["images"] += len(expected)
    total["sim_cycles"] += int(res["sim_cycles"])
    if not res["passed"] or read_mismatched:  # one entry a run, whatever failed in it
        total["failed_runs"].append({
            "run": run, "log": res["log"], "mismatched_images": res["mismatched_images"],
            "statuses": [s for s in res["statuses"] if s][:10],
            "read_mismatched_images": [{"image": k, "rtl": dict(zip(("weight_reads", "reads"), got_reads[k])),
                                        "model": dict(zip(("weight_reads", "reads"), want_reads[k]))}
                                       for k in read_mismatched[:10]]})


def config_record(config: ArrayConfig) -> dict:
    """The sizes of a build that a result records."""
    return {k: getattr(config, k) for k in ("engines", "lanes", "buffer_words", "fmap_rows", "row_codes",
                                            "fan_in_width", "channel_bits")}


def run_fuzz(out_dir: Path, *, layers: int = 10_000, seed: int = 0, simulator: str = "verilator",
             progress: bool = True, configs: tuple[ArrayConfig, ...] = CONFIGS) -> dict:
    """Draw networks until they hold ``layers`` weight layers, chunk by chunk, and run each chunk on the build
    of ``configs`` whose turn it is; the result record (the counts over every build, and per build in
    ``builds``)."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    vpaths = [write_text_atomically(out_dir / f"mpq_array_{c.engines}x{c.lanes}.v", array_verilog(c)) for c in configs]
    t0 = time.perf_counter()
    total = {"layers": 0, "networks": 0, "images": 0, "mismatches": 0, "read_mismatches": 0, "deadlocks": 0,
             "not_run": 0,
             "sim_cycles": 0, "conv_layers": 0, "fc_layers": 0, "residual_blocks": 0, "pooled": 0, "flattened": 0, "mlps": 0,
             "failed_runs": []}
    builds = [{"config": config_record(c), "layers": 0, "networks": 0, "runs": 0, **dict.fromkeys(RUN_COUNTS, 0),
               "failed_runs": [], "seconds": 0.0} for c in configs]
    bar = progress_bar(total=layers, unit="layer", disable=not progress, desc="fuzz")
    run = 0
    while total["layers"] < layers:
        b = run % len(configs)
        cases, nets, reads = [], [], []
        while len(cases) < CHUNK and total["layers"] + sum(weight_layers(n) for n in nets) < layers:
            net = random_network(rng, configs[b])
            shape = net.image_shape if isinstance(net, IntConvNetwork) else (net.layers[0].n_in,)
            n_img = int(rng.integers(1, 3))
            x = rng.integers(0, 1 << net.input_bits, size=(n_img, *shape))
            words, _, regions = pack_v3(net)
            cases.append((words, x.reshape(n_img, -1), net.forward(x)))
            reads.append(words_read(net, configs[b], regions=regions))
            nets.append(net)
        t_run = time.perf_counter()
        run_chunk(vpaths[b], cases, out_dir / "sim", simulator, seed * 1000 + run, run, builds[b], reads)
        builds[b]["runs"] += 1
        builds[b]["seconds"] += time.perf_counter() - t_run  # its simulator's build and runs, not the drawing
        for net in nets:
            for record in (total, builds[b]):
                record["networks"] += 1
                record["layers"] += weight_layers(net)
            if isinstance(net, IntNetwork):
                total["mlps"] += 1
                total["fc_layers"] += len(net.layers)
                continue
            for st in net.stages:
                if isinstance(st, ConvStage):
                    total["conv_layers"] += 1
                elif isinstance(st, ResidualStage):
                    total["conv_layers"] += 2
                    total["residual_blocks"] += 1
                elif isinstance(st, FCStage):
                    total["fc_layers"] += 1
                    total["pooled" if st.pooled > 1 or any(isinstance(s, GlobalSumPool) for s in net.stages)
                          else "flattened"] += 1
        bar.update(sum(weight_layers(n) for n in nets))
        run += 1
    bar.close()
    gather_builds(total, builds)
    total.update(seconds=round(time.perf_counter() - t0, 1), simulator=simulator, runs=run)
    return total


def gather_builds(total: dict, builds: list[dict]) -> None:
    """Into ``total``: the builds' run counts (:data:`RUN_COUNTS`) summed, their failed runs in run order, each
    naming its build, and ``builds`` itself (each build's ``seconds`` rounded)."""
    for build in builds:
        build["seconds"] = round(build["seconds"], 1)
    for key in RUN_COUNTS:
        total[key] = sum(build[key] for build in builds)
    total["failed_runs"] = sorted((dict(f, build=k) for k, build in enumerate(builds) for f in build["failed_runs"]),
                                  key=lambda f: f["run"])
    total["builds"] = builds


def floors(result: dict) -> dict:
    """The issue's floors (10,000 layers, no mismatch, no deadlock), and that every image ran and every run
    passed: an image whose scores never came back, or a run that ended with an error status, is a failure
    too, not a pass by omission; and that each build ran its share (:data:`BUILD_LAYERS`)."""
    return part_floors(result, 10_000, BUILD_LAYERS)


def part_floors(result: dict, layers: int, build_layers: int, prefix: str = "") -> dict:
    """A fuzz part's floors, each name after ``prefix``: at least ``layers`` layers, ``build_layers`` of them on each
    build, no mismatch, no deadlock, every image run and every run passed."""
    return {
        f"{prefix}layers >= {layers}": floor_entry(result["layers"], layers),
        f"{prefix}layers on each build >= {build_layers}": floor_entry(min(b["layers"] for b in result["builds"]),
                                                                       build_layers),
        **{f"{prefix}{key} == 0": floor_entry(result[key], 0, "==")
           for key in ("mismatches", "read_mismatches", "deadlocks", "not_run")},
        f"{prefix}failed_runs == 0": floor_entry(len(result["failed_runs"]), 0, "=="),
    }
