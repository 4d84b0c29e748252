"""build.py end to end on a small network: train -> export -> sim -> verilog -> synth, and bad input (most refusals
through ``build.main`` in the test's process: :func:`tests.build_main.main`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.revision import code_revision
from tests.build_main import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "train", "eval", "export", "verilog", "sim", "synth")


def cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *map(str, args)], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=900,
                          env=None if env is None else {**os.environ, **env})


def test_help_lists_every_subcommand():
    """The top-level help lists each command on a line of its own; the flow's commands take --out."""
    import build

    top = cli("--help")
    assert top.returncode == 0
    listed = set(re.findall(r"^    ([a-z]+) ", top.stdout, flags=re.MULTILINE))
    assert listed == set(build.COMMANDS) and set(COMMANDS) <= listed, top.stdout
    for name in COMMANDS:
        sub = cli(name, "--help")
        assert sub.returncode == 0 and "--out" in sub.stdout


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A two-layer ticket trained briefly (2 IMQ iterations), exported to an image."""
    tmp = tmp_path_factory.mktemp("flow")
    train = cli("train", "--hidden", 16, "--epochs", 3, "--max-iterations", 2, "--target-bits", 30,
                "--quiet", "--out", tmp / "train")
    assert train.returncode == 0, train.stderr
    export = cli("export", "--checkpoint", tmp / "train" / "ticket.pt", "--out", tmp / "image")
    assert export.returncode == 0, export.stderr
    return tmp


def test_train_and_export_outputs(flow):
    assert (flow / "train" / "imq.png").stat().st_size > 1000
    history = json.loads((flow / "train" / "imq_history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [0, 1]
    assert history[0]["avg_bits"] == 32.0 and history[1]["avg_bits"] < 32.0
    manifest = json.loads((flow / "image" / "manifest.json").read_text())
    assert manifest["words"] * 4 == (flow / "image" / "weights.bin").stat().st_size
    # Which code exported the image and which trained its checkpoint (here the same).
    assert manifest["extra"]["code_revision"] == code_revision()
    assert manifest["extra"]["training_revision"] == code_revision()
    assert len((flow / "image" / "weights.hex").read_text().split()) == manifest["words"]


def test_sim_matches_golden(flow):
    res = cli("sim", "--image", flow / "image", "--images", 6, "--out", flow / "sim")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((flow / "sim" / "sim.json").read_text())
    assert report["images"] == 6 and report["mismatches"] == 0 and report["code_revision"] == code_revision()


def test_verilog_and_build_plan(flow):
    res = cli("verilog", "--image", flow / "image", "--selftest-images", 2, "--out", flow / "verilog")
    assert res.returncode == 0, res.stderr
    assert "module mpq_accel" in (flow / "verilog" / "mpq_accel.v").read_text()
    plan = flow / "verilog" / "vivado"
    xdc = (plan / "mpq_accel_selftest.xdc").read_text()
    assert "create_clock" in xdc and "-period 10.0" in xdc  # the 100 MHz fabric clock
    assert "xc7z020" in (plan / "mpq_accel_selftest.tcl").read_text()


def test_a_self_test_rom_of_a_partial_batch_is_refused(flow):
    """The ROM is read a batch at a time (sim pads a last partial batch; a ROM would need a pad image)."""
    res = cli("verilog", "--image", flow / "image", "--selftest-images", 3, "--out", flow / "verilog3")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--selftest-images 3 must be a multiple of --batch 2 (the self-test ROM is read a batch at a time): " \
           "give 2, for example" in res.stderr, res.stderr
    assert not (flow / "verilog3").exists()
    res = cli("verilog", "--image", flow / "image", "--batch", 6, "--out", flow / "verilog6")  # the default, 16
    assert res.returncode == 0, res.stdout + res.stderr
    assert "a self-test ROM of 12 test images, 2 batches of 6" in res.stdout, res.stdout


def test_synth_maps_multipliers_to_dsp48e1(flow):
    res = cli("synth", "--image", flow / "image", "--out", flow / "synth")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((flow / "synth" / "resources.json").read_text())
    assert report["code_revision"] == code_revision()
    # Default batch 2: four packed lanes (one per 8-bit weight chunk, two images each), two DSP48E1 for
    # the 41 x 17 requant multiply (t < 2^36 plus headroom; widths derived in hw/core/requant.py).
    assert report["dsp"] == 6
    assert report["fits_xc7z020"] is True
    assert "DSP48E1" in res.stdout


def test_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_text("hello")
    code, _, err = main(capsys, "export", "--checkpoint", bad, "--out", tmp_path / "image")
    assert code == 2
    assert "not_a_checkpoint.pt" in err
    assert not (tmp_path / "image").exists()


def test_corrupt_image_is_a_clear_error(flow, tmp_path, capsys):
    image = tmp_path / "image"
    image.mkdir()
    for name in ("manifest.json", "weights.hex"):
        (image / name).write_bytes((flow / "image" / name).read_bytes())
    data = bytearray((flow / "image" / "weights.bin").read_bytes())
    data[40] ^= 1
    (image / "weights.bin").write_bytes(bytes(data))
    code, _, err = main(capsys, "sim", "--image", image, "--images", 2, "--out", tmp_path / "sim")
    assert code == 2
    assert "sha256" in err and "weights.bin" in err
    assert not (tmp_path / "sim" / "sim.json").exists()


@pytest.mark.parametrize(("name", "value", "low"), [("WORLD_SIZE", "two", 1), ("WORLD_SIZE", "0", 1),
                                                     ("RANK", "first", 0), ("LOCAL_RANK", "-1", 0)])
def test_a_torchrun_variable_that_is_not_a_count_is_a_clear_error(tmp_path, name, value, low):
    res = cli("eval", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "eval", env={name: value})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"environment variable {name} is {value!r}; allowed an integer >= {low}" in res.stderr, res.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "1", "RANK": "3"}, "environment variable RANK is '3' with WORLD_SIZE 1; allowed 0 .. 0"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "2"}, "LOCAL_RANK is '2' with WORLD_SIZE 2; allowed 0 .. 1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""},
     "WORLD_SIZE is 2 but MASTER_ADDR and MASTER_PORT are not set"),
    # a rank without LOCAL_RANK: silenced as rank 1 by build.py, a lone process to the training code
    ({"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE is 2 but LOCAL_RANK is not set; torchrun sets WORLD_SIZE, RANK"),
])
def test_torchrun_variables_that_describe_no_group_are_a_clear_error(tmp_path, env, message):
    """A rank past the group (a lone run with a stray RANK printed nothing at all) and a group without torchrun's
    rendezvous address (torch's traceback, a half-made run directory) are refused before anything is written."""
    res = cli("train", "--epochs", 1, "--iterations", 1, "--quiet", "--out", tmp_path / "run", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert message in res.stderr, res.stderr
    rank = int(env["RANK"])  # (each rank prints its errors, a rank other than 0 with its number)
    assert res.stderr.startswith(f"error (rank {rank}): " if rank else "error: "), res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_under_torchrun_is_printed_by_each_rank_a_rank_past_0_naming_itself(tmp_path, rank):
    """The other ranks print no results, but their errors (a failure of one rank alone must be seen); the same
    error on two ranks reads as that, not as one error printed twice."""
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}
    res = cli("eval", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "eval", env=env)
    prefix = "error (rank 1): " if rank else "error: "
    assert res.returncode == 2 and res.stderr.startswith(prefix + "`eval` does not run data-parallel"), res.stderr
    assert not (tmp_path / "eval").exists()


def test_rank_zero_written_otherwise_still_prints(flow, tmp_path):
    """RANK "00" is rank 0 (the check reads it as an integer): a lone run prints its results, not nothing."""
    res = cli("eval", "--image", flow / "image", "--out", tmp_path / "eval", env={"RANK": "00"})
    assert res.returncode == 0 and "golden" in res.stdout, res.stdout + res.stderr


def test_out_of_range_option_is_rejected():
    res = cli("train", "--act-bits", 12)
    assert res.returncode == 2 and "1..8" in res.stderr
    res = cli("sim", "--batch", 3)
    assert res.returncode == 2 and "even" in res.stderr


def test_every_data_option_takes_only_the_data_sets():
    """--data is checked by argparse (torch-free model.cli.DATA_SETS, which mirrors model.data.DATASETS), so a typo
    fails at once, before any command loads torch."""
    import argparse

    import build
    from model.cli import DATA_SETS, MAX_SEED
    from model.data import DATASETS
    from model.data import MAX_SEED as DATA_MAX_SEED

    assert DATA_SETS == DATASETS and MAX_SEED == DATA_MAX_SEED
    sub = next(a for a in build.parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes_data = {name for name, p in sub.choices.items() for a in p._actions if "--data" in a.option_strings}
    assert takes_data == {"demo", "train", "eval", "sim", "verilog"}
    for name in takes_data:
        action = next(a for a in sub.choices[name]._actions if "--data" in a.option_strings)
        assert tuple(action.choices) == DATA_SETS, name
    res = cli("sim", "--data", "foo")
    assert res.returncode == 2 and "invalid choice: 'foo'" in res.stderr and "fashion-mnist" in res.stderr


def test_demo_says_why_it_runs_on_the_digits_only(tmp_path, capsys):
    code, _, err = main(capsys, "demo", "--data", "fashion-mnist", "--out", tmp_path / "demo")
    assert code == 2, err
    assert "simulates every test image in RTL" in err and "10,000" in err and "hours" in err
    assert "feeds the digits" not in err and not (tmp_path / "demo").exists()
    code, _, err = main(capsys, "demo", "--act-bits", 32, "--out", tmp_path / "demo")
    assert code == 2 and "--act-bits 32: the accelerator runs 1..8-bit activations" in err
    assert not (tmp_path / "demo").exists()


def write_idx_folder(root: Path, n_train: int = 256, n_test: int = 64) -> None:
    """A tiny MNIST-style IDX folder of random 28x28 images (big-endian header: magic, then the sizes)."""
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        images = (rng.random((n, 28, 28)) * 64 + labels[:, None, None] * 19).astype(np.uint8)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def test_train_lts_on_an_idx_folder(tmp_path):
    write_idx_folder(tmp_path / "idx")
    # A fast EMA (m = 0.5) so that a few iterations of linear growth freeze weights.
    res = cli("train", "--method", "lts", "--data", "idx", "--data-root", tmp_path / "idx", "--epochs", 4,
              "--warmup", 1, "--m", 0.5, "--bits", 2, "--quiet", "--out", tmp_path / "lts")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "lts" / "lts.json").read_text())
    assert report["mode"] == "lts" and report["bits"] == 2
    assert 0 < report["avg_wgs"] <= 1 and report["bp_flops_reduction"] == pytest.approx(report["avg_wgs"] / 2)
    assert len(report["sparsity_history"]) == 4
    assert (tmp_path / "lts" / "lts_sparsity.png").stat().st_size > 1000


def test_train_lts_names_a_missing_dataset(tmp_path, capsys):
    code, _, err = main(capsys, "train", "--method", "lts", "--data", "idx", "--data-root", tmp_path / "nowhere",
                          "--quiet", "--out", tmp_path / "lts")
    assert code == 2 and "nowhere" in err


def test_demo_batch_is_for_the_fully_connected_core_and_engines_for_the_array(tmp_path, capsys):
    """Each refused before any work: nothing written."""
    for args, said in ((("--batch", 4), "--batch applies to `demo --core fc`"),
                       (("--core", "fc", "--engines", 2), "--engines applies to `demo --core array`")):
        code, _, err = main(capsys, "demo", *args, "--out", tmp_path / "demo")
        assert code == 2 and said in err
        assert not (tmp_path / "demo").exists()


def test_demo_end_to_end_on_a_tiny_budget(tmp_path):
    """The main job, shrunk: IMQ on digits, golden model, image, RTL under back-pressure and without, Yosys. On 1
    engine, not the default 4: the same code, and one of the suite's slowest tests cheaper (the Yosys run of the
    whole array and the Verilator build: 160 s of CPU on 1 engine against 214 s on 2, each alone, 2026-12-07; 180 s
    on 2 against 236 s on 4 the day before). The array of several engines is synthesised in
    tests/hw/platform/test_array_synth.py and run in tests/hw/array/test_top.py."""
    out = tmp_path / "demo"
    res = cli("demo", "--hidden", 8, "--epochs", 2, "--iterations", 2, "--target-bits", 30, "--engines", 1,
              "--simulator", "verilator", "--quiet", "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rtl_images"] == 360 and summary["rtl_mismatches"] == 0 and summary["resumed"] is False
    assert summary["read_mismatches"] == 0
    assert summary["code_revision"] == code_revision()
    assert summary["golden_accuracy"] == summary["rtl_accuracy"]
    assert summary["image_version"] == 3 and summary["core_image_bytes"] % 4 == 0 and summary["core_image_bytes"] > 0
    history = json.loads((out / "imq_history.json").read_text())
    ticket = history["ticket"]
    assert summary["ticket_iteration"] == ticket["iteration"] == 1
    # The ticket's own width counts, every weight counted once (64 x 8 + 8 x 10).
    assert sum(summary["width_counts"].values()) == 64 * 8 + 8 * 10
    assert summary["width_counts"] == {str(k): v for k, v in history["history"][1]["width_counts"].items()}
    # The packed multiplier array: 1 engine of one lane, its lane one DSP48E1 besides the requantizer's.
    assert summary["core"] == "array" and summary["batch"] == 1 and summary["engines"] == 1
    verilog = (out / "rtl" / "mpq_array.v").read_text()
    assert len(re.findall(r"^module \\mpq_array\.engine\d+ \(", verilog, re.MULTILINE)) == 1  # (not the default 4)
    assert summary["resources"]["dsp"] >= 2 and summary["fits_xc7z020"] is True
    assert 10 < summary["fmax_mhz_estimate"] < 1000
    assert summary["core_image_bytes"] == summary["image_bytes"]  # the array loads the version 3 image itself
    # The whole array synthesised alone (synthesize_array's parts=False): no part's Verilog or Yosys run.
    assert "End of script" in (out / "synth" / "yosys_whole.log").read_text()
    assert not any((out / "synth" / n).exists() for n in ("mpq_engine.v", "yosys_engine.log", "yosys_shell.log"))


def test_an_output_folder_no_file_can_be_written_into_is_refused_before_any_work(tmp_path):
    """A file, or a path under a file, as --out / --run-dir: exit 2 naming the option and the path, before
    training starts (LTS writes only at the end, so its minutes of training would be lost)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    for args in (("train", "--method", "lts", "--data", "digits", "--epochs", 50, "--run-dir", afile),
                 ("train", "--method", "bmpq", "--epochs", 50, "--out", afile / "sub"),
                 ("export", "--checkpoint", tmp_path / "none.pt", "--out", afile)):
        res = cli(*args)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and str(afile) in res.stderr and "is a file" in res.stderr
        assert ("--run-dir" if "--run-dir" in args else "--out") in res.stderr
        assert "train:" not in res.stderr  # refused before the device line that starts the training


def test_a_refused_write_names_the_file(flow, tmp_path):
    """eval.json where a folder is: exit 2 naming the file and why, no traceback (refused before the evaluation
    since 2026-12-05; before, at the write, with the system's reason)."""
    (tmp_path / "eval" / "eval.json").mkdir(parents=True)
    res = cli("eval", "--image", flow / "image", "--out", tmp_path / "eval")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{tmp_path / 'eval' / 'eval.json'}: is not a file; eval writes the file eval.json there" in res.stderr


def test_export_leaves_an_image_whole_when_a_file_of_it_is_a_folder(flow, tmp_path):
    """An image folder whose weights.hex is a folder: export refuses before it replaces any file, so the old
    image still reads (its weights.bin matches its manifest); a new image's files get the umask's permissions."""
    image = tmp_path / "image"
    image.mkdir()
    for name in ("manifest.json", "weights.bin"):
        (image / name).write_bytes((flow / "image" / name).read_bytes())
    (image / "weights.hex").mkdir()
    before = (image / "weights.bin").read_bytes()
    res = cli("export", "--checkpoint", flow / "train" / "ticket.pt", "--out", image)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "weights.hex" in res.stderr
    assert (image / "weights.bin").read_bytes() == before
    assert cli("eval", "--image", image, "--out", tmp_path / "eval").returncode == 0
    fresh = tmp_path / "fresh"
    assert cli("export", "--checkpoint", flow / "train" / "ticket.pt", "--out", fresh).returncode == 0
    mask = os.umask(0)
    os.umask(mask)
    assert {(fresh / n).stat().st_mode & 0o777 for n in ("manifest.json", "weights.bin", "weights.hex")} == {
        0o666 & ~mask}


def test_an_image_whose_manifest_is_a_folder_is_named(tmp_path):
    (tmp_path / "image" / "manifest.json").mkdir(parents=True)
    res = cli("eval", "--image", tmp_path / "image", "--out", tmp_path / "eval")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "manifest.json: cannot read it" in res.stderr


@pytest.mark.parametrize(("change", "message"), [
    ("alpha0", r"state_dict\.\S*alpha' is 0; a PACT clip alpha must be > 0"),
    ("nan", r"state_dict\.\S*weight' holds NaN or infinite values"),
])
def test_a_checkpoint_with_impossible_parameters_is_named(flow, tmp_path, change, message):
    import torch  # here: the module's other tests run build.py in a subprocess and need no torch

    payload = torch.load(flow / "train" / "ticket.pt", weights_only=False)
    state = payload["state_dict"]
    key = next(k for k in state if k.endswith("alpha" if change == "alpha0" else "weight"))
    state[key] = torch.zeros_like(state[key]) if change == "alpha0" else torch.full_like(state[key], float("nan"))
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    for args in (("export", "--checkpoint", bad, "--out", tmp_path / "image"),
                 ("eval", "--checkpoint", bad, "--out", tmp_path / "eval")):
        res = cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "bad.pt" in res.stderr and re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "image").exists()


@pytest.mark.parametrize("args", [("--engines", 4), ("--lanes", 2), ("--vertical",)])
def test_array_options_of_synth_are_refused_for_the_fc_core(flow, tmp_path, args):
    """--engines, --lanes and --vertical size the array: with the fully connected core (the default) they are
    refused before Yosys runs, not ignored."""
    res = cli("synth", "--image", flow / "image", "--out", tmp_path / "synth", *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{args[0]}: options of `--core array`" in res.stderr and not (tmp_path / "synth").exists()


def test_synth_refuses_batch_for_the_array(flow, tmp_path):
    res = cli("synth", "--core", "array", "--batch", 4, "--image", flow / "image", "--out", tmp_path / "synth")
    assert res.returncode == 2 and "--batch: an option of the fully connected core" in res.stderr


def test_run_dir_replaces_out_and_only_it_is_checked(tmp_path):
    """`train --run-dir` writes only there: a default --out (out/train under the working folder) that could not
    be written does not stop it."""
    (tmp_path / "out").write_text("a file where the default output folder would be\n")
    res = cli("train", "--method", "qnn", "--hidden", 4, "--epochs", 1, "--train-subset", 100, "--test-subset", 50,
              "--no-float-baseline", "--quiet", "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "ticket.pt").is_file()


@pytest.mark.parametrize(("blocked", "prefix", "words"), [
    ("torch", "/usr", ["the Python package 'torch' is not installed", "make setup",
                       f"{ROOT / '.venv' / 'bin' / 'python'} build.py train ..."]),
    ("amaranth", "/usr", ["the Python package 'amaranth' is not installed", "build.py sim ..."]),
    ("torch", None, ["the Python package 'torch' is not installed", "the .venv lacks it: run `make setup`"]),
    ("model.runs.rundir", None, ["Traceback"]),  # mpqaccel's own module: a bug
    ("torch.nn", None, ["Traceback"]),  # a submodule of an installed package: a bug in an import, not an install
])
def test_a_python_without_the_packages_is_told_to_use_the_venv(tmp_path, blocked, prefix, words):
    """build.py run by a Python that lacks a pinned package (here blocked in sys.modules; ``prefix``: another
    Python than the .venv's, or the .venv's own): one line naming the package and what to run, exit 1, nothing
    written; a module of mpqaccel's own or a submodule that does not import is a bug and keeps its traceback."""
    script = (f"import sys; sys.modules[{blocked!r}] = None; sys.path.insert(0, {str(ROOT)!r}); import build; "
              + (f"sys.prefix = {prefix!r}; " if prefix else f"sys.prefix = {str(ROOT / '.venv')!r}; ")
              + "sys.exit(build.main(sys.argv[1:]))")
    command = "sim" if blocked == "amaranth" else "train"
    argv = ["sim", "--image", tmp_path / "image"] if command == "sim" else ["train", "--epochs", 1, "--quiet"]
    res = subprocess.run([sys.executable, "-c", script, *map(str, argv), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 1 and all(w in res.stderr for w in words), res.stderr
    assert ("Traceback" in res.stderr) == (words == ["Traceback"]), res.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_tool_is_named_not_a_traceback(flow, tmp_path):
    """Yosys or the simulator missing from PATH: an error line naming the tool, exit 1 (a tool not installed, not
    the user's input; for the simulator, the build that failed and its log), not a traceback."""
    env = {**os.environ, "PATH": str(tmp_path / "empty")}

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "build.py"), *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=600, check=False)

    res = run("synth", "--image", flow / "image", "--out", tmp_path / "synth")
    assert res.returncode == 1 and "Traceback" not in res.stderr and "yosys not found on PATH" in res.stderr
    res = run("sim", "--image", flow / "image", "--images", 1, "--simulator", "icarus", "--out", tmp_path / "sim")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "icarus build" in res.stderr and "iverilog executable not found" in res.stderr and "build.log" in res.stderr


@pytest.mark.parametrize(("argv", "taken"), [
    (["synth"], "resources.json"),
    (["synth", "--core", "array"], "yosys_whole.log"),
    (["eval"], "eval.json"),
    (["bench", "export"], "export.json"),
    (["bench", "accel"], "accel_layers.png"),  # (written last, after 40 minutes)
    (["train", "--method", "lts", "--epochs", 3], "lts.json"),
    (["train", "--epochs", 1, "--iterations", 1], "imq.png"),
    (["train", "--method", "vertical", "--epochs", 1], "vertical_hist.png"),
    (["train", "--method", "vertical", "--baseline", "lsq", "--epochs", 1], "lsq_4bit.pt"),
    (["demo", "--epochs", 1], "summary.json"),
])
def test_an_output_name_taken_by_a_folder_is_refused_before_the_work(flow, tmp_path, capsys, argv, taken):
    """A folder where a command writes a file: refused at once, naming it, with nothing written (these commands
    found it at their last write: after the synthesis, the evaluation, the bench or the training, with a message
    naming a temporary file and, for train, the other outputs already rewritten)."""
    out = tmp_path / "out"
    (out / taken).mkdir(parents=True)
    image = ["--image", flow / "image"] if argv[0] in ("synth", "eval") else []
    code, _, err = main(capsys, *argv, *image, "--out", out)
    assert code == 2, err
    assert f"{out / taken}: is not a file;" in err and ".tmp" not in err, err
    assert sorted(p.name for p in out.iterdir()) == [taken]  # refused before the work wrote anything


@pytest.mark.parametrize(("argv", "flag"), [
    (["eval", "--image", ""], "--image"), (["sim", "--image", ""], "--image"),
    (["export", "--checkpoint", ""], "--checkpoint"), (["eval", "--checkpoint", " "], "--checkpoint"),
    (["report", ""], "RUN_DIR"),  # (an empty --run-dir or --out: tests/test_cli_empty_out.py)
    (["train", "--data", "idx", "--data-root", ""], "--data-root"), (["bench", "lts", "--data-root", ""], "--data-root"),
])
def test_an_empty_path_is_refused_naming_its_option(tmp_path, capsys, argv, flag):
    """An empty value (an unset shell variable) was taken as the current folder, and the message then blamed a
    file in it ('manifest.json: file not found')."""
    code, _, err = main(capsys, *argv, "--out", tmp_path / "out")
    assert code == 2 and f"argument {flag}: an empty path; give a file or folder" in err, err
    assert not (tmp_path / "out").exists()


def test_the_code_revision_is_taken_before_a_command_runs(monkeypatch, tmp_path):
    """build.py computes the code revision before the command's work (the audit of 2026-12-06: `train --method
    bmpq` and several benches took it after minutes of training, so that an edit meanwhile relabelled the run)."""
    import build
    import model.export.eval_command as command

    code_revision.cache_clear()
    seen = []
    monkeypatch.setattr(command, "run", lambda args: seen.append(code_revision.cache_info().currsize) or 0)
    assert build.main(["eval", "--image", str(tmp_path / "image"), "--out", str(tmp_path / "eval")]) == 0
    assert seen == [1]
