"""``bench accel``: the packed multiplier array on ResNet-20, counted in RTL (the paper's Fig. 4 and Sec. 4.3).

Three weight settings of the **same** trained ResNet-20 (the IMQ ticket of ``bench conv``, 28 x 28
Fashion-MNIST; ``bench conv``'s ResNet-20 run is trained first when it is not there), each at PACT-4 and
PACT-8 activations:

* ``ticket``: the ticket's element-wise widths (0, 4, 8, 16, 32; 0 = pruned), as ``bench conv`` exported it;
* ``dense32``: every weight at 32 bits, none pruned (the 32-bit baseline of the paper's speed-up);
* ``qnn4``: every weight at 4 bits, none pruned.

The variants are the same float weights and PACT clips re-quantized by :func:`model.export.convert.to_golden`
after setting every mask (``set_bit_width``) and every activation quantizer's ``bits`` (the input keeps its 8
bits): they are not retrained, so only the ticket's accuracy is a trained network's (``golden_accuracy`` says
what each variant gives on the images it ran). All six images run on **one** RTL build (one bitstream) of
:data:`DEFAULT_ENGINES` x :data:`DEFAULT_LANES` (the issue's floor is 150 DSP48E1 doing products), loaded
one after another through the load port; every image's scores must equal golden's. Cycles are start -> done
of each image, counted by the Verilator simulation (no back-pressure on the score stream: the bench counts
the array's cycles, ``bench fuzz`` and the tests verify under back-pressure).

The simulations run within a wall-time budget (:data:`BUDGET_MINUTES`, ``--minutes``): every row gets one
image first, then the ticket at PACT-4 more up to its count (100), then the others (10 each); a row whose
next chunk would not end in time gets no more, so ``rtl_images`` may fall short of the floors and says so.
At the array's present speed (hundreds of thousands of cycles per image, a few thousand simulated cycles a
second for a 152-lane model) the budget is what limits the image counts.

dense32's weights (271,435 words, 8.7 Mbit) do not fit the XC7Z020's block RAM (140 RAMB36, 4.9 Mbit) at all,
so the simulated build's global buffer is deep enough for them (a buffer's depth changes no cycle count: the
engines read one word a cycle from it either way), and the synthesised configuration is the same engines and
lanes with the buffer the other images need (``synth_config``); on a board dense32 would stream its weights
from DDR, which these cycle counts do not model. Both are :func:`hw.array.sizing.config_for`'s, so neither has the
version 4 (vertical-layered) path these version 3 images do not use (``vertical`` false in both: a plane
decoder an engine, 14 k LUT over four engines; ``build.py synth --core array --vertical`` counts the build
with it).

Resources and the timing estimate come from Yosys ``synth_xilinx -flatten`` of that configuration, the whole
array (about 260 s), with its parts beside it for the breakdown (one engine and the shell with black-box engines,
:mod:`hw.platform.array_synth`), run in a thread beside the simulations; no Vivado here, so the Fmax is an
estimate from DS187 delays (:mod:`hw.platform.timing`).

Rows (``out/bench/accel.json``): ``network``, ``weights``, ``act_bits``, ``avg_weight_bits`` (pruned weights
count 0), ``cycles_per_image``, ``images_per_second_at_100mhz``, ``rtl_images``, ``rtl_mismatches``,
``read_mismatches`` (images whose global-buffer words read, the RTL's ``weight_reads`` and ``reads`` counters,
differ from :func:`sim.reads.words_read`'s for the network; the floor ``read_mismatches == 0`` sums every row,
curve point and the back-pressure run), ``dsp``,
``lut``, ``ff``, ``bram36``, ``fits_xc7z020``, ``fmax_mhz_estimate``, ``image_bytes``, ``speedup_vs_dense32``
(dense32's cycles at the same activation width over this row's), ``dense_macs_per_dsp_cycle`` (the
network's dense MACs / cycles / DSPs), ``sim_cycles_per_second``, then ``golden_accuracy``,
``nonzero_macs``, ``width_counts`` and ``layer_cycles`` (cycles per layer, counted in RTL by the array's
``layer_index`` port: where an image's cycles go) with ``layer_tile_bounds`` (the bounds are ``sim/bounds.py``'s:
:func:`~sim.bounds.layer_tile_bounds`, each layer's tiles' bound; ``accel_layers.png`` draws both,
:func:`plot_layers`), ``lane_bound_cycles`` (:func:`~sim.bounds.lane_bound_cycles`: the fewest cycles the array's
lanes and emitters allow for the row's network, no loads, drains or partly filled tiles) and
``lane_bound_fraction`` (that bound over ``cycles_per_image``), ``tile_bound_cycles`` and
``tile_bound_fraction`` (:func:`tile_bound_cycles`: the same, counting the tiles as the array runs them,
partly filled ones at their cost), ``mac_weighted_weight_bits`` (:func:`mac_weighted_bits`: the average weight
width a MAC sees, each weight counted once per output pixel it meets) and ``bit_proportional_speedup_bound``
(``32 /`` that: the speed-up over dense32 of an array whose time per MAC is proportional to the weight's bits and
that has no other cost; what ``speedup_vs_dense32`` can reach on any such array), and
``xc7z020_dsp_bound_cycles`` (:func:`~sim.bounds.dsp_bound_cycles` by packing, ``lanes`` and ``planner``: the
fewest cycles all 220 DSP48E1 of the chip could take for the row's non-zero MACs, each busy every cycle, at the
array's per-class cost or at the packing planner's densest layouts; what no arrangement of lanes can beat).

``curve``: the paper's Fig. 4 plots the speed-up of tickets at several average bit widths; here every iteration
of the ticket's IMQ run (32 bits at iteration 0 down to about 1.6 at the last) runs :data:`CURVE_IMAGES` image at
PACT-4 and PACT-8 on the same build after the rows (a point whose first image would not end within the budget is
left out). A point has the row keys without the resources (the same bitstream; ``avg_weight_bits`` is the image's,
every weight, the plot's axis), plus ``imq_iteration``, ``is_ticket``, ``conv_avg_bits`` (IMQ's own average, over
the conv weights it quantizes: the paper's axis) and ``fakequant_accuracy`` / ``val_accuracy`` from the run's
history (its test and validation accuracy as trained, on the run's test and validation images: ``bench conv``'s
2,000 and 1,000; ``golden_accuracy`` is the one image's). ``accel.png`` draws the
curve with the rows on it; ``imq_curve_rtl_mismatches == 0`` is one more floor (every point golden's scores).

The curve has a second run too (``ranking`` of a point: ``"global"``, the ticket's run, or ``"layer"``): the same
IMQ schedule of ``bench conv`` with Algorithm 1's line 8 ranked within each layer instead of globally (not the
paper's choice; :func:`layer_run_source` trains it when the bench directory has none), every iteration on the
same build after the ticket's points. The paper's global ranking keeps layer1's weights wide (784 MACs each an
image against layer3's 49), so the ticket's speed-up is capped by its MAC-weighted bits (:func:`mac_weighted_bits`);
the second curve shows the same array on tickets whose wide weights are spread over the layers, at their own
accuracies. No ticket is chosen from it and no floor reads it except ``imq_curve_rtl_mismatches``.

``backpressure``: the rows count cycles without stalls; :data:`STALL_IMAGES` images of the ticket at PACT-4 then
run once more on the same build under random back-pressure on every stream of the top (idle cycles on the load
port and the input stream, the score stream's ``ready`` low at random: the testbench's ``stall``, a seed per
chunk), after the rows (its first image before the curve's, its other chunks beside them); ``rtl_images`` and
``rtl_mismatches`` of them, two more floors (at least :data:`STALL_IMAGES`, 0 mismatches): whole ResNet-20 images
bit-exact under back-pressure.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hw.array.sizing import config_for
from hw.platform.array_synth import start_thread, synthesize_array
from hw.platform.synth import XC7Z020
from hw.platform.verilog import array_verilog, write_text_atomically
from model.bench.conv import IMQ_THREADS, history_json, imq_configs, run_imq_row
from model.bench.floors import floor_entry
from model.errors import UserError
from model.export.convert import to_golden
from model.export.golden_net import mac_counts
from model.export.image import pack
from model.export.layout_v3 import pack as pack_v3
from model.export.vectors import image_vectors
from model.files import save_figure, write_json
from model.progress import progress_bar
from model.quant.layers import QUANT_LAYER_TYPES
from model.quant.pact import PACT
from model.revision import code_revision, revision_part
from model.runs.rundir import load_iteration, read_provenance, run
from model.training.loop import torch_threads
from sim.array_runner import run_array
from sim.bounds import DSP_PACKINGS, dsp_bound_cycles, lane_bound_cycles, layer_tile_bounds, mac_weighted_bits
from sim.reads import read_mismatches, words_read
from sim.runner import SimulationError

#: The array of the bench: 4 engines of 42 pass lanes (84-pixel tiles: three 28-pixel rows of layer1 and
#: the stem, six 14-pixel rows of layer2, all of layer3's 7 x 7), 168 DSP48E1 lanes. 84 pixels is a whole
#: number of ResNet-20's 28-, 14- and 7-pixel rows (38 lanes, 76 pixels, left a quarter of layer1's slots
#: empty: 14 tiles of two rows instead of 10 of three; the ticket at PACT-4 measured 105,069 cycles on 4 x 38,
#: 90,065 on 4 x 42, 78,664 with overlapped layers).
#: Four engines divide ResNet-20's 16, 32 and 64 channels evenly and pay an engine's fixed cost (decoders,
#: requantizer, about 7.6 k LUT of it) fewer times. The other ways to split 168 lanes, by the ticket's
#: ``tile_bound_cycles`` at PACT-4: 6 x 28 (56-pixel tiles, layer1 full, layer2 and layer3 88 % full) 62,702
#: against 72,047, and in RTL 70,753 cycles against 78,664 (dense32 417,379: a speed-up of 5.90, its tiles
#: were the emptier), but six 28-lane engines are 78.8 k LUT against four 42-lane ones' 63.6 k (13,128 and
#: 15,890 LUT each, Yosys) and need a fourth global-buffer copy; 7 x 24 and 8 x 21 93,658 and 81,951 (a
#: 28-pixel row a tile); 12 x 14 59,280 at twice the fixed cost. While the LUTs are what keeps the array off
#: the chip, 10 % fewer cycles for 24 % more engine LUTs is not the trade to make (docs/array_design.md,
#: "Six engines of 28 lanes"); ``--engines 6 --lanes 28`` builds it.
DEFAULT_ENGINES = 4
DEFAULT_LANES = 42
#: Images of the ticket at PACT-4 (the floor's row) and of every other row.
TICKET_IMAGES = 100
OTHER_IMAGES = 10
#: Images of each point of the IMQ curve (every iteration of the ticket's run at its own widths, PACT-4 and PACT-8:
#: the tickets of the paper's Fig. 4 at their average bits); they run after the rows of the floors.
CURVE_IMAGES = 1
#: The second curve's run (module docstring): ``bench conv``'s ResNet-20 IMQ run with Algorithm 1's line 8 ranked
#: within each layer (``scope="layer"``) instead of globally, trained by ``bench accel`` into this folder of the
#: bench directory's ``conv_runs`` when ``LAYER_RUN_JSON`` does not name it; no ticket is chosen from it.
LAYER_RUN = "resnet20_imq_layer"
LAYER_RUN_JSON = "accel_layer_run.json"
#: Curve keys: ``(f"{prefix}{k}", act_bits)`` for iteration ``k`` of the ticket's run (the paper's global ranking)
#: and of the layer-ranked run.
CURVE_PREFIX = {"global": "imq", "layer": "layer"}
#: Images of the ticket at PACT-4 run again under random back-pressure (the testbench's ``stall``: idle cycles on
#: the load port and the input stream, the score stream not ready at random), after the rows; their cycles are
#: not counted (stalls add cycles), their scores must be golden's.
STALL_IMAGES = 10
#: The key of that run (not a row: :data:`WEIGHTS` has no such weights).
STALL_KEY = ("ticket_stalled", 4)
WEIGHTS = ("ticket", "dense32", "qnn4")
ACT_BITS = (4, 8)
CLOCK_HZ = 100e6
#: The floors (issue 11): the ticket at PACT-4.
MAX_TICKET_CYCLES = 40_000
MIN_SPEEDUP = 8.63
MIN_DSP = 150
MAX_LUT_FRACTION = 0.8
MIN_FMAX_MHZ = 100.0
#: Wall-time budget of the simulations (the issue bounds the bench to 45 minutes on 2 cores).
BUDGET_MINUTES = 40.0
#: Bound on each Yosys run of the synthesis (the whole 4 x 42 array: about 5 minutes beside the simulations).
SYNTH_MINUTES = 60.0
#: Seconds a simulator run costs besides its images (start-up, the image load through the load port).
RUN_OVERHEAD_S = 20.0
#: Simulator processes side by side after the build (the machine's 2 cores; Yosys shares them while it runs).
SIM_WORKERS = 2
#: The watchdog of a run: an image of dense32 at PACT-8 on a small array takes a few million cycles.
TIMEOUT_CYCLES = 20_000_000


def ticket_source(bench_dir: Path, *, progress: bool = True) -> dict:
    """``bench conv``'s ResNet-20 IMQ row (``conv.json``): its run directory, ticket iteration and image.

    When ``conv.json`` has no such row, or its run directory is gone, the ResNet-20 IMQ run of ``bench conv``
    is trained (resuming what is there) and its ticket exported, as ``bench conv`` does.
    """
    conv_json = bench_dir / "conv.json"
    if conv_json.is_file():
        try:
            rows = json.loads(conv_json.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{conv_json}: not JSON ({exc}); run `python build.py bench conv` again") from exc
        if not isinstance(rows, list):
            raise UserError(f"{conv_json}: a JSON {type(rows).__name__}, not bench conv's list of rows; run "
                            "`python build.py bench conv --restart`")
        for row in rows:
            if isinstance(row, dict) and row.get("arch") == "resnet20" and row.get("method") == "imq":
                missing = [k for k in ("run", "ticket_iteration", "image", "history") if k not in row]
                if missing:
                    raise UserError(f"{conv_json}: the resnet20/imq row has no field {missing[0]!r}; run "
                                    "`python build.py bench conv --restart`")
                for key, kind, allowed in (("run", str, "a folder path"), ("image", str, "a folder path"),
                                           ("ticket_iteration", int, "an integer >= 0"),
                                           ("history", list, "a list of records with an integer 'iteration'")):
                    value = row[key]
                    bad = not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0) or (
                        kind is list and not all(isinstance(r, dict) and isinstance(r.get("iteration"), int)
                                                 for r in value))
                    if bad:
                        raise UserError(f"{conv_json}: the resnet20/imq row's field {key!r} is {value!r:.80}; allowed "
                                        f"{allowed}; run `python build.py bench conv --restart`")
                if (Path(row["run"]) / "iterations").is_dir() and Path(row["image"]).is_dir():
                    return {"run": Path(row["run"]), "iteration": int(row["ticket_iteration"]),
                            "image": Path(row["image"]), "history": row["history"], "trained_now": False,
                            "training_revision": reused_revision(Path(row["run"]), "the ticket", progress,
                                                                          "run `bench conv --restart`")}

    if progress:
        tqdm.write("bench accel: no ResNet-20 ticket of `bench conv` here; training it (about 8 minutes)")
    row, _ = run_imq_row("resnet20", imq_configs()["resnet20"], bench_dir / "conv_runs", bench_dir / "conv",
                         progress, restart=False)
    return {"run": Path(row["run"]), "iteration": int(row["ticket_iteration"]), "image": Path(row["image"]),
            "history": row["history"], "trained_now": True, "training_revision": training_revision(Path(row["run"]))}


def training_revision(run_dir: Path) -> dict | None:
    """The code revision ``run_dir/run.json`` records of its training (``revision``, ``git_commit``, ``dirty``,
    ``source_sha256``); None for a run written before revisions were recorded, or without ``run.json``."""
    return revision_part(read_provenance(run_dir)) if (run_dir / "run.json").is_file() else None


def reused_revision(run_dir: Path, what: str, progress: bool, retrain: str) -> dict | None:
    """:func:`training_revision` of a run trained earlier and reused here, with a note when other code trained it:
    the RTL figures are this revision's, the accuracies that run's (both revisions go into ``accel.json``)."""
    stored = training_revision(run_dir)
    now = code_revision()
    if progress and (stored or {}).get("source_sha256") != now["source_sha256"]:
        then = (stored or {}).get("revision") or "an unrecorded revision"
        tqdm.write(f"note: {what} ({run_dir}) was trained at {then}, the code now is {now['revision']}; its "
                   f"accuracies are that run's ({retrain} to train it with this code)")
    return stored


def layer_run_source(bench_dir: Path, *, progress: bool = True) -> dict:
    """The layer-ranked IMQ run of the second curve: ``{"run", "history", "trained_now"}``.

    ``LAYER_RUN_JSON`` in ``bench_dir`` names a finished run, its history and its config (written when it was
    trained). When it is missing, names another config than ``bench conv``'s ResNet-20 one with ``scope="layer"``
    (``bench conv``'s schedule changed since: the run would be stale), or its run directory is gone, the run is
    trained afresh (on :data:`~model.bench.conv.IMQ_THREADS` threads, about 3 minutes) and the file written.
    """
    config = dataclasses.replace(imq_configs()["resnet20"], scope="layer")
    wanted = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    marker = bench_dir / LAYER_RUN_JSON
    if marker.is_file():
        try:
            data = json.loads(marker.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{marker}: not JSON ({exc}); delete it to train the layer-ranked run again") from exc
        if not isinstance(data, dict) or not {"run", "history", "config"} <= set(data):
            raise UserError(f"{marker}: needs the fields 'run', 'history' and 'config'; delete it to train the run "
                            "again")
        if data["config"] == wanted and (Path(data["run"]) / "iterations").is_dir():
            return {"run": Path(data["run"]), "history": data["history"], "trained_now": False,
                    "training_revision": reused_revision(Path(data["run"]), "the layer-ranked run", progress,
                                                         f"delete {marker}")}
    if progress:
        tqdm.write("bench accel: training the layer-ranked IMQ run of the second curve (about 3 minutes)")
    run_dir = bench_dir / "conv_runs" / LAYER_RUN
    with torch_threads(IMQ_THREADS):
        result = run(config, run_dir, progress=progress, restart=True)
    history = history_json(result.history)
    write_json(marker, {"run": str(run_dir), "history": history, "config": wanted})
    return {"run": run_dir, "history": history, "trained_now": True, "training_revision": training_revision(run_dir)}


def variant(model, weights: str, act_bits: int):
    """A copy of the quantized ``model`` with every mask at ``weights``'s widths and every activation
    quantizer after the input at ``act_bits`` bits (module docstring); the copy is in eval mode."""


    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r}; allowed {WEIGHTS}")
    m = copy.deepcopy(model).eval()
    if weights != "ticket":
        width = 32 if weights == "dense32" else 4
        for layer in m.modules():
            if isinstance(layer, QUANT_LAYER_TYPES):
                layer.set_bit_width(torch.full_like(layer.bit_width, width))
    for act in m.modules():
        if isinstance(act, PACT):
            act.bits = act_bits
    return m


def networks(source: dict, images: dict[tuple[str, int], int], n_images: int = 0
             ) -> tuple[dict, np.ndarray, np.ndarray]:
    """The six integer networks ``{(weights, act_bits): IntConvNetwork}``, the test images' input codes
    ``[N, C H W]`` (the most any row runs, at least ``n_images``) and their labels."""

    model = load_iteration(source["run"], source["iteration"])
    vectors = image_vectors(source["image"], max(*images.values(), n_images), 0)  # reads the exported image too
    nets = {key: to_golden(variant(model, *key)) for key in images}
    if ("ticket", 4) in nets and not np.array_equal(pack(nets[("ticket", 4)]), pack(vectors.net)):
        raise UserError(f"{source['image']}: the exported ticket differs from iteration {source['iteration']} of "
                        f"{source['run']} converted now; run `python build.py bench conv --restart`")
    return nets, vectors.codes, vectors.labels


def curve_networks(source: dict, acts: tuple[int, ...] = ACT_BITS, prefix: str = CURVE_PREFIX["global"]) -> dict:
    """The IMQ curve's integer networks ``{(f"{prefix}{k}", act_bits): IntConvNetwork}``: every iteration ``k`` of
    the run (``source["history"]``: the ticket's, or the layer-ranked one with ``prefix="layer"``) at its own
    widths, each at every width of ``acts`` (:func:`variant`'s ``"ticket"``: the masks kept, the activations
    set)."""
    nets = {}
    for record in source["history"]:
        k = int(record["iteration"])
        model = load_iteration(source["run"], k)
        for act in acts:
            nets[(f"{prefix}{k}", act)] = to_golden(variant(model, "ticket", act))
    return nets


def _plan(counts: dict, planned: dict, done: dict, wall: dict, left_s: float) -> tuple | None:
    """The next ``(key, images)`` chunk to run within ``left_s`` seconds, or None.

    Every row gets one image first (in :data:`WEIGHTS` x :data:`ACT_BITS` order), then the ticket at PACT-4
    up to its count, then the others, then the keys that are not rows of :data:`WEIGHTS` (the back-pressure
    run, then the IMQ curve's points: each gets its first image only if the slowest image measured so far would
    end in time, and they run side by side with the back-pressure run's later chunks); a chunk is as many
    images as the row's measured simulation seconds per image (``wall`` over ``done``: the simulator's own
    time, not the first run's Verilator build) leave time
    for after :data:`RUN_OVERHEAD_S` (at most a quarter of a row's count, so that the progress bar moves).
    ``planned`` counts the images given out, ``done`` those that came back (chunks run side by side,
    :data:`SIM_WORKERS`): a row whose first image is still out gets no more until its time is known."""
    rows = [k for k in counts if k[0] in WEIGHTS]
    for key in rows:
        if planned[key] == 0:
            return key, 1
    # A key that is not a row starts only if the slowest image measured so far (dense32's: no point of the
    # curve is slower) would end in time, or, with nothing measured, three run overheads are left.
    slowest = max((wall[k] / done[k] for k in rows if done[k]), default=2 * RUN_OVERHEAD_S)
    order = [("ticket", 4)] + [k for k in rows if k != ("ticket", 4)] + [k for k in counts if k not in rows]
    for key in order:
        want = counts[key] - planned[key]
        if want > 0 and planned[key] == 0 and left_s >= RUN_OVERHEAD_S + slowest:
            return key, 1
        if want <= 0 or done[key] == 0:
            continue
        per_image = wall[key] / done[key]
        fit = int((left_s - RUN_OVERHEAD_S) // max(per_image, 1e-3))
        n = min(want, fit, max(1, counts[key] // 4))
        if n >= 1:
            return key, n
    return None


def _run_chunk(vpath: str, words, codes, expected, work_dir: str, simulator: str, stall: bool = False,
               seed: int = 0) -> dict:
    """One chunk's RTL run, in a worker process (:func:`run_accel`): its record, or ``{"failure": message}``
    (an exception object need not survive the trip back)."""
    try:
        return run_array(vpath, words, codes, expected, work_dir=work_dir, simulator=simulator, stall=stall, seed=seed,
                         timeout_cycles=TIMEOUT_CYCLES)
    except SimulationError as exc:
        return {"failure": f"the simulator failed ({exc})"}


def run_accel(out_dir: Path, bench_dir: Path, *, engines: int = DEFAULT_ENGINES, lanes: int = DEFAULT_LANES,
              ticket_images: int = TICKET_IMAGES, other_images: int = OTHER_IMAGES, simulator: str = "verilator",
              minutes: float = BUDGET_MINUTES, synth_minutes: float = SYNTH_MINUTES, synth: bool = True,
              curve: bool = True, stall_images: int = STALL_IMAGES, progress: bool = True) -> dict:
    """Build the array once, run every row's images on it within ``minutes``, synthesise it (module docstring).

    The time budget counts from the call (training a missing ticket included); the simulations stop taking
    new chunks when the next would end after it, so rows may have fewer images than asked (``rtl_images``
    says how many ran; the floors need 100 and 10). The images are the first test images of the ticket's
    recorded data set, in order, for every row.

    With ``curve``, every iteration of the ticket's IMQ run also runs :data:`CURVE_IMAGES` image at PACT-4 and
    PACT-8 after the rows (``curve`` of the result: the Fig. 4 curve, speed-up over dense32 against average
    bits, each point with its iteration's test and validation accuracy from the run's history).

    ``stall_images`` images of the ticket at PACT-4 then run again under random back-pressure on every stream of
    the array's top (``backpressure`` of the result: images, mismatches; their cycles are not counted).

    Each Yosys run of the synthesis is bounded by ``synth_minutes``; a synthesis that fails or runs out is
    recorded (``synthesis_error``, and ``None`` for the resource keys, so those floors fail) instead of
    losing the simulations, whose rows are also written to ``out_dir / "rtl_rows.json"`` before the bench
    waits for Yosys.
    """

    if ticket_images < 1 or other_images < 1:
        raise UserError(f"images per row must be >= 1, not {ticket_images} / {other_images}")
    t0 = time.perf_counter()
    deadline = t0 + 60 * minutes
    source = ticket_source(bench_dir, progress=progress)
    counts = {(w, a): ticket_images if (w, a) == ("ticket", 4) else other_images for w in WEIGHTS for a in ACT_BITS}
    nets, codes, labels = networks(source, counts, stall_images)
    layer_source = layer_run_source(bench_dir, progress=progress) if curve else None
    runs = {"global": source, "layer": layer_source} if curve else {}  # the curve's runs by ranking
    history = {f"{CURVE_PREFIX[ranking]}{int(h['iteration'])}": (ranking, h)
               for ranking, src in runs.items() for h in src["history"]}
    if stall_images:
        nets[STALL_KEY] = nets[("ticket", 4)]
        counts[STALL_KEY] = stall_images
    for ranking, src in runs.items():
        nets.update(curve_networks(src, prefix=CURVE_PREFIX[ranking]))
    counts.update({key: CURVE_IMAGES for key in nets if key not in counts})
    packed = {key: pack_v3(net) for key, net in nets.items()}  # (words, specs, regions): the read model's too
    words = {key: p[0] for key, p in packed.items()}
    # dense32's weights (8.7 Mbit) are more than the XC7Z020's block RAM (4.9 Mbit): the simulated build's
    # global buffer holds them (its depth changes no cycle count), the synthesised one the other images.
    config = config_for(list(words.values()), engines=engines, lanes=lanes)
    synth_config = config_for([w for (weights, _), w in words.items() if weights in ("ticket", "qnn4")],
                              engines=engines, lanes=lanes)
    # the words each image of a network must read (sim/reads.py), against the RTL's counters
    want_reads = {key: words_read(nets[key], config, regions=p[2]) for key, p in packed.items()}
    vpath = write_text_atomically(out_dir / "mpq_array.v", array_verilog(config))
    box: dict = {}
    worker = None
    if synth:
        # (its errors reported after the simulations)
        worker = start_thread(box, "synthesis", lambda: synthesize_array(synth_config, out_dir / "synth",
                                                                         timeout_s=60 * synth_minutes),
                              errors=(RuntimeError, OSError, ValueError, UserError))
    done = dict.fromkeys(counts, 0)
    wall = dict.fromkeys(counts, 0.0)
    spans: dict = {key: [] for key in counts}
    layer_spans: dict = {key: [] for key in counts}
    mismatched = dict.fromkeys(counts, 0)
    read_mismatched = dict.fromkeys(counts, 0)
    sim_cycles = dict.fromkeys(counts, 0)
    sim_wall = dict.fromkeys(counts, 0.0)
    statuses: dict = {key: set() for key in counts}
    timed_out = dict.fromkeys(counts, False)
    expected_all = {key: nets[key].forward(codes[:counts[key]]) for key in counts}
    bar = progress_bar(total=sum(counts.values()), unit="image", disable=not progress, desc="accel RTL")
    planned = dict.fromkeys(counts, 0)
    closed: set = set()  # rows that hung: no more images

    def take(key, n, res) -> None:
        if res.get("failure"):
            raise UserError(f"bench accel: {res['failure']}")
        if res.get("error") and not res["timed_out"]:
            raise UserError(f"bench accel: the testbench stopped ({res['error']}); see {res['log']}")
        wall[key] += float(res["sim_wall_s"])  # the simulation's own seconds (the first run also builds)
        done[key] += n
        spans[key] += res["image_cycles"]
        layer_spans[key] += res.get("layer_cycles", [])
        mismatched[key] += int(res["mismatches"]) + (n - int(res["images"]))  # an image that did not come back
        read_mismatched[key] += read_mismatches(res["image_weight_reads"], res["image_reads"], want_reads[key], n)
        sim_cycles[key] += int(res["sim_cycles"])
        sim_wall[key] += float(res["sim_wall_s"])
        statuses[key] |= set(res["statuses"])
        timed_out[key] |= bool(res["timed_out"])
        bar.update(n)
        if res["timed_out"]:
            closed.add(key)  # a hung row takes no more time; its images count as mismatches

    def next_chunk():
        open_counts = {k: (planned[k] if k in closed else v) for k, v in counts.items()}
        step = _plan(open_counts, planned, done, wall, deadline - time.perf_counter())
        if step is not None:
            key, n = step
            planned[key] += n
            bar.set_postfix_str(f"{key[0]} A{key[1]}")
        return step

    def args(key, n):
        lo = planned[key] - n
        return (str(vpath), words[key], codes[lo:lo + n], expected_all[key][lo:lo + n], str(out_dir / "sim"),
                simulator, key == STALL_KEY, lo)

    # The first image builds the simulator (minutes of C++); then SIM_WORKERS processes run chunks side by
    # side (the testbench reads its case through os.environ, so processes, not threads).
    if (step := next_chunk()) is not None:
        take(*step, _run_chunk(*args(*step)))
    with ProcessPoolExecutor(max_workers=SIM_WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict = {}
        while True:
            while len(running) < SIM_WORKERS and (step := next_chunk()) is not None:
                running[pool.submit(_run_chunk, *args(*step))] = step
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                take(*running.pop(future), future.result())
    bar.close()
    rows, curve_rows = [], []
    measured = [key for key in counts if key != STALL_KEY]
    bound = {key: lane_bound_cycles(nets[key], config.engines, config.lanes) for key in measured}
    layer_tiled = {key: layer_tile_bounds(nets[key], config.engines, config.lanes) for key in measured}
    tiled = {key: int(np.ceil(sum(layer_tiled[key]))) for key in measured}  # tile_bound_cycles
    mac_bits = {key: mac_weighted_bits(nets[key]) for key in measured}
    for key in measured:
        asked = counts[key]
        weights, act = key
        net = nets[key]
        n = done[key]
        dense, nonzero = mac_counts(net)
        widths = np.concatenate([np.asarray(layer.widths).ravel() for layer in net.layers])
        cycles = float(np.mean(spans[key])) if spans[key] else None
        row = {
            "network": "resnet20", "weights": weights if weights in WEIGHTS else "imq", "act_bits": act,
            "avg_weight_bits": float(net.avg_weight_bits),
            "cycles_per_image": cycles,
            "images_per_second_at_100mhz": CLOCK_HZ / cycles if cycles else None,
            "rtl_images": len(spans[key]), "rtl_mismatches": mismatched[key], "images_asked": asked,
            "read_mismatches": read_mismatched[key],
            "image_bytes": 4 * len(words[key]),
            "macs_dense": int(dense), "nonzero_macs": int(nonzero),
            # the lanes' and emitters' bound (lane_bound_cycles) and how close the RTL count comes to it
            "lane_bound_cycles": bound[key], "lane_bound_fraction": bound[key] / cycles if cycles else None,
            # ... and the tiles' bound (tile_bound_cycles: partly filled tiles, the emitters row by row)
            "tile_bound_cycles": tiled[key], "tile_bound_fraction": tiled[key] / cycles if cycles else None,
            # the average bits a MAC sees, and the speed-up over dense32 a bits-proportional array could reach
            "mac_weighted_weight_bits": mac_bits[key], "bit_proportional_speedup_bound": 32 / mac_bits[key],
            # the chip's bound: all 220 DSP48E1 busy every cycle, at the lanes' and at the planner's densest packing
            "xc7z020_dsp_bound_cycles": {packing: dsp_bound_cycles(net, packing) for packing in DSP_PACKINGS},
            "golden_accuracy": float((expected_all[key][:n].argmax(axis=1) == labels[:n]).mean()) if n else None,
            "width_counts": {str(m): int((widths == m).sum()) for m in (0, 4, 8, 16, 32)},
            "sim_cycles_per_second": sim_cycles[key] / sim_wall[key] if sim_wall[key] else None,
            # cycles per layer index, mean over the row's images (the RTL's layer_index port): where they go
            "layer_cycles": [round(float(v), 1) for v in np.mean(layer_spans[key], axis=0)]
            if layer_spans[key] and len({len(x) for x in layer_spans[key]}) == 1 else None,
            # the tiles' bound of each layer (layer_tile_bounds), against which layer_cycles is read
            "layer_tile_bounds": [round(v, 1) for v in layer_tiled[key]],
            "statuses": sorted(statuses[key]), "timed_out": timed_out[key],
        }
        if weights in WEIGHTS:
            rows.append(row)
        else:  # a point of the IMQ curve: its iteration, and that iteration's accuracies from the run's history
            ranking, h = history[weights]
            row.update(ranking=ranking, imq_iteration=int(h["iteration"]),
                       is_ticket=ranking == "global" and int(h["iteration"]) == source["iteration"],
                       conv_avg_bits=h.get("avg_bits"), fakequant_accuracy=h.get("accuracy"),
                       val_accuracy=h.get("val_accuracy"))
            curve_rows.append(row)
    curve_rows.sort(key=lambda r: (list(CURVE_PREFIX).index(r["ranking"]), r["act_bits"], r["imq_iteration"]))
    backpressure = None if not stall_images else {
        "weights": "ticket", "act_bits": 4, "images_asked": stall_images, "rtl_images": len(spans[STALL_KEY]),
        "rtl_mismatches": mismatched[STALL_KEY], "read_mismatches": read_mismatched[STALL_KEY],
        "statuses": sorted(statuses[STALL_KEY]),
        "timed_out": timed_out[STALL_KEY]}
    # the simulations' figures, whatever the synthesis does
    write_json(out_dir / "rtl_rows.json", {"rows": rows, "curve": curve_rows, "backpressure": backpressure})
    if worker is not None:
        if progress and worker.is_alive():
            tqdm.write(f"bench accel: waiting for Yosys (at most {synth_minutes:g} minutes a run)")
        worker.join()
        if "synthesis_error" in box and progress:
            tqdm.write(f"bench accel: synthesis failed ({box['synthesis_error']}); see the logs in {out_dir / 'synth'}")
    syn = box.get("synthesis")
    res = None if syn is None else syn.resources
    resources = dict.fromkeys(("dsp", "lut", "ff", "bram36", "fits_xc7z020", "fmax_mhz_estimate")) if syn is None else {
        "dsp": res.dsp, "lut": res.lut, "ff": res.ff, "bram36": res.bram36, "fits_xc7z020": res.fits(),
        "fmax_mhz_estimate": syn.timing.fmax_mhz}
    for r in rows + curve_rows:
        base = next(b for b in rows if b["weights"] == "dense32" and b["act_bits"] == r["act_bits"])
        r["speedup_vs_dense32"] = (base["cycles_per_image"] / r["cycles_per_image"]
                                   if r["cycles_per_image"] and base["cycles_per_image"] else None)
        r["dense_macs_per_dsp_cycle"] = (r["macs_dense"] / r["cycles_per_image"] / res.dsp
                                         if res is not None and r["cycles_per_image"] else None)
    for r in rows:  # the curve's points are the same bitstream: its resources are the rows'
        r.update(resources)
    return {
        "rows": rows,
        "curve": curve_rows,
        "backpressure": backpressure,
        "config": dataclasses.asdict(config),
        "synth_config": dataclasses.asdict(synth_config),
        "dsp_lanes": config.dsp_lanes,
        "ticket": {"run": str(source["run"]), "iteration": source["iteration"], "image": str(source["image"]),
                   "trained_now": source["trained_now"], "training_revision": source["training_revision"]},
        "layer_run": None if layer_source is None else {"run": str(layer_source["run"]),
                                                        "trained_now": layer_source["trained_now"],
                                                        "training_revision": layer_source["training_revision"]},
        "synthesis": None if syn is None else {**syn.as_dict(), "dsp": res.dsp, "lut": res.lut, "ff": res.ff,
                                               "bram36": res.bram36, "fits_xc7z020": res.fits(),
                                               "lut_fraction": res.lut / 53200},
        "synthesis_error": str(box["synthesis_error"]) if "synthesis_error" in box else None,
        "budget_minutes": minutes, "simulator": simulator, "seconds": round(time.perf_counter() - t0, 1),
    }


def chip_bound_sentence(row: dict, rows: list[dict]) -> str:
    """``row``'s ``xc7z020_dsp_bound_cycles`` in words, against dense32's at the same activation width when ``rows``
    has it: dense32's bound over the row's at the planner's densest layouts, the speed-up an array whose time
    followed its DSP work would measure with them (no bound on a measured speed-up: they make a 16- or 32-bit
    weight cheaper relative to a narrow one than the array's lanes do)."""
    bound = row["xc7z020_dsp_bound_cycles"]
    text = (f"all {XC7Z020['dsp']} DSP48E1 of the XC7Z020, each busy every cycle, would take at least "
            f"{bound['lanes']:,} cycles for its non-zero MACs at the array's cost per weight class and "
            f"{bound['planner']:,} at the packing planner's densest layouts")
    dense = next((r for r in rows if r["weights"] == "dense32" and r["act_bits"] == row["act_bits"]), None)
    if dense is not None and dense is not row:
        planner = dense["xc7z020_dsp_bound_cycles"]["planner"]
        text += (f", where dense32 takes {planner:,}: with those layouts an array whose time followed its DSP work "
                 f"would run the row {planner / bound['planner']:.2f}x faster than dense32")
    return text


def floors(result: dict) -> dict:
    """The issue's floors, on the ticket at PACT-4 (and at least 10 images, 0 mismatches, on every row), 0
    mismatches on the IMQ curve's points (at least one of which ran) and on at least :data:`STALL_IMAGES` images
    of the ticket at PACT-4 under back-pressure; and one not the issue's, 0 read mismatches (:mod:`sim.reads`) over
    every image that ran."""

    rows = result["rows"]
    t = next(r for r in rows if r["weights"] == "ticket" and r["act_bits"] == 4)
    syn = result["synthesis"] or {}
    others = [r for r in rows if r is not t]
    curve = result.get("curve") or []
    ran = [r for r in curve if r["rtl_images"] or r["rtl_mismatches"] or r["timed_out"]]
    stalled = result.get("backpressure") or {}
    return {
        "ticket_a4_cycles_per_image <= 40000": floor_entry(t["cycles_per_image"], MAX_TICKET_CYCLES, "<="),
        "ticket_a4_speedup_vs_dense32 >= 8.63": floor_entry(t["speedup_vs_dense32"], MIN_SPEEDUP),
        "ticket_a4_rtl_images >= 100": floor_entry(t["rtl_images"], 100),
        "ticket_a4_rtl_mismatches == 0": floor_entry(t["rtl_mismatches"], 0, "=="),
        "other_rows_min_rtl_images >= 10": floor_entry(min(r["rtl_images"] for r in others), 10),
        "other_rows_rtl_mismatches == 0": floor_entry(sum(r["rtl_mismatches"] for r in others), 0, "=="),
        "dsp >= 150": floor_entry(t["dsp"], MIN_DSP),
        "fits_xc7z020 (220 DSP, 140 RAMB36)": floor_entry(t["fits_xc7z020"], True, "=="),
        "lut_fraction <= 0.8": floor_entry(syn.get("lut_fraction"), MAX_LUT_FRACTION, "<="),
        "fmax_mhz_estimate >= 100": floor_entry(t["fmax_mhz_estimate"], MIN_FMAX_MHZ),
        # the IMQ curve's points are the same array on the run's other tickets: golden's scores too (None when
        # no point ran: unmeasured fails)
        "imq_curve_rtl_mismatches == 0": floor_entry(sum(r["rtl_mismatches"] for r in curve) if ran else None, 0,
                                                     "=="),
        # whole ResNet-20 images under random back-pressure on every stream of the top (the verification)
        "ticket_a4_backpressure_images >= 10": floor_entry(stalled.get("rtl_images"), STALL_IMAGES),
        "ticket_a4_backpressure_mismatches == 0": floor_entry(
            stalled.get("rtl_mismatches") if stalled.get("rtl_images") else None, 0, "=="),
        # every image of every row, curve point and the back-pressure run read the words sim/reads.py models
        # (a record without the counts, written before they were checked, fails)
        "read_mismatches == 0": floor_entry(
            sum(r.get("read_mismatches", 1) for r in [*rows, *curve, *([stalled] if stalled else [])]), 0, "=="),
    }


def plot_accel(rows: list[dict], png_path: Path, curve: list[dict] | None = None) -> None:
    """Fig. 4 style: speed-up over dense32 against average weight bits, one curve per activation width through
    the IMQ run's iterations (``curve``, :func:`run_accel`), the rows (ticket, dense32, qnn4) marked on it, and
    the iterations' ``bit_proportional_speedup_bound`` (:func:`mac_weighted_bits`) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    labelled = set()  # a point both widths share (dense32 at 1.00x) is labelled once
    styles = {"global": ({"marker": "."}, "IMQ iterations"),
              "layer": ({"marker": "x", "linestyle": "-.", "alpha": 0.6}, "IMQ ranked within each layer (not the paper's)")}
    for act, colour in zip(ACT_BITS, ("tab:blue", "tab:orange")):
        drawn = {}
        for ranking, (style, name) in styles.items():
            line = drawn[ranking] = sorted((r["avg_weight_bits"], r["speedup_vs_dense32"]) for r in curve or ()
                          if r["act_bits"] == act and r["speedup_vs_dense32"] is not None and r["ranking"] == ranking)
            if line:
                ax.plot([p[0] for p in line], [p[1] for p in line], color=colour, label=f"{name}, PACT-{act}", **style)
        pts = sorted((r["avg_weight_bits"], r["speedup_vs_dense32"], r["weights"]) for r in rows
                     if r["act_bits"] == act and r["speedup_vs_dense32"] is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="none" if drawn["global"] else ":",
                color=colour, label=f"ticket, dense32, qnn4, PACT-{act}")
        for b, sp, w in pts:
            if (w, round(b, 3), round(sp, 3)) not in labelled:
                labelled.add((w, round(b, 3), round(sp, 3)))
                ax.annotate(f"{w} {sp:.2f}x", (b, sp), textcoords="offset points", xytext=(4, 4), fontsize=8)
    # The ceiling of any array whose time per MAC is proportional to the weight's bits (mac_weighted_bits): the
    # same for both activation widths, drawn once through the curve's points.
    ceiling = sorted({(round(r["avg_weight_bits"], 6), r["bit_proportional_speedup_bound"]) for r in curve or ()
                      if r["ranking"] == "global"})
    if ceiling:
        ax.plot([p[0] for p in ceiling], [p[1] for p in ceiling], color="grey", linestyle="--", linewidth=1,
                label="bits-proportional ceiling of the ticket's run (32 / MAC-weighted bits)")
    ax.axhline(MIN_SPEEDUP, color="grey", linestyle=":", label=f"paper: {MIN_SPEEDUP}x at PACT-4, 2.29 bits")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("average weight bits (pruned = 0)")
    ax.set_ylabel("speed-up over dense32 (RTL cycles)")
    ax.set_title("ResNet-20 on the packed multiplier array (one bitstream)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: the curves fill them
    fig.tight_layout()
    try:
        save_figure(fig, png_path)
    finally:
        plt.close(fig)


def plot_layers(rows: list[dict], png_path: Path) -> None:
    """Where the cycles go, layer by layer: the RTL's ``layer_cycles`` of the ticket at each activation width
    against each layer's tiles' bound (``layer_tile_bounds``), and every row's cycles over that bound per layer
    (what loads, drains, the engines' imbalance and the global buffer's port cost beyond the tiles). Rows
    without ``layer_cycles`` (a run that hung, or images whose layer counts differ) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if r.get("layer_cycles") and len(r["layer_cycles"]) == len(r["layer_tile_bounds"])]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    tickets = [r for r in drawn if r["weights"] == "ticket"]
    width = 0.8 / max(len(tickets), 1)
    for k, r in enumerate(tickets):
        x = np.arange(len(r["layer_cycles"])) + (k - (len(tickets) - 1) / 2) * width
        top.bar(x, r["layer_cycles"], width=width, alpha=0.7, label=f"ticket PACT-{r['act_bits']}: RTL")
        top.scatter(x, r["layer_tile_bounds"], marker="_", s=120, color="black", zorder=3,
                    label="tiles' bound" if k == 0 else None)
    top.set_ylabel("cycles per image")
    top.set_title("ResNet-20 layer by layer on the packed multiplier array: RTL cycles and the tiles' bound")
    top.grid(True, axis="y", alpha=0.3)
    top.legend(fontsize=8)
    for r in drawn:
        over = np.asarray(r["layer_cycles"]) - np.asarray(r["layer_tile_bounds"])
        bottom.plot(np.arange(len(over)), over, marker=".",
                    label=f"{r['weights']} PACT-{r['act_bits']}: {over.sum():,.0f} in all")
    bottom.axhline(0, color="grey", linewidth=0.8)
    bottom.set_ylabel("RTL cycles over the tiles' bound")
    bottom.set_xlabel("weight layer (0: the stem, last: the classifier)")
    if drawn:
        bottom.set_xticks(np.arange(len(drawn[0]["layer_cycles"])))
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    try:
        save_figure(fig, png_path)
    finally:
        plt.close(fig)
