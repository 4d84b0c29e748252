"""`build.py train`: option groups, per-method defaults, options rejected for methods that do not use them,
and `--help` without torch."""

from __future__ import annotations

import inspect
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import build
from model.runs import provenance
from model.runs.checkpoint import load_checkpoint
from model.runs.train_command import (
    BMPQ_CONV_COMPRESSION,
    BMPQ_MLP_COMPRESSION,
    ITERATIVE,
    METHODS,
    OPTIONS,
    resolve,
    train_config,
)
from tests.build_main import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def parse(*argv):
    return build.parser().parse_args(["train", *map(str, argv)])



# ------------------------------------------------------------------------------------------ --help
def test_help_builds_the_parsers_without_torch():
    """--help imports no torch (what keeps it quick; how quick is not a test's to time)."""
    code = ("import sys; import build; build.parser(); "
            "print('torch' in sys.modules, sorted(build.COMMANDS))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    torch_loaded, commands = res.stdout.split(" ", 1)
    assert torch_loaded == "False", "building the parsers imported torch"
    assert "eval" in commands
    for command in ("", *build.COMMANDS):
        res = subprocess.run([sys.executable, str(ROOT / "build.py"), *([command] if command else []), "--help"],
                             cwd=ROOT, capture_output=True, text=True, check=False)
        assert res.returncode == 0 and "usage:" in res.stdout, (command, res.stderr)


def test_train_help_groups_the_options_per_method():
    res = subprocess.run([sys.executable, str(ROOT / "build.py"), "train", "--method", "lts", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    text = res.stdout
    heads = ["common options:", "imq, irq, imp, irp, qnn, qnn-imp:", "lts:", "bmpq:"]
    positions = [text.index("\n" + h) for h in heads]
    assert positions == sorted(positions)
    common, iterative, lts, bmpq = (text[a:b] for a, b in zip(positions, [*positions[1:], len(text)]))
    assert "--hidden" in common and "256 256 for lts" in common and "64 64 64 for bmpq" in common
    assert "--act-bits" in iterative and "--restart" in iterative and "--rho" in iterative
    assert "--bits" in lts and "--strategy" in lts and "--threads" in lts and "--act-bits" not in lts
    assert "--compression" in bmpq and "--support" in bmpq and "4 for an MLP" in bmpq


# ------------------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize("method", METHODS)
def test_every_method_resolves_its_defaults(method):
    args = resolve(parse("--method", method))
    assert args.epochs >= 1 and args.lr > 0 and args.batch_size >= 1 and args.hidden
    if method in ITERATIVE:
        config = train_config(args)  # the run config the method would run: checked by make_run_config
        assert config.method == method and config.data == "digits" and config.hidden == (64,)
        assert config.act_bits == 4 and config.epochs == 20 and config.batch_size == 64
        assert config.weight_bits == (8 if method.startswith("qnn") else 32)
    assert resolve(args) is args  # a second call changes nothing (filled defaults are not "given")
    if method == "bmpq":
        assert (args.data, args.hidden, args.compression, args.support, args.edge_bits) == (
            "digits", [64, 64, 64], BMPQ_MLP_COMPRESSION, [2, 4], 16)
        assert resolve(parse("--method", "bmpq", "--arch", "vgg")).compression == BMPQ_CONV_COMPRESSION


def test_bmpq_default_budget_is_feasible_for_its_default_mlp():
    """The 16-bit first and last layers of 64-64-64-64-10 on digits leave at most 4.49x; 4x fits, 10x would not."""
    from model.methods.bmpq import memory_mb

    args = resolve(parse("--method", "bmpq"))
    sizes = [64, *args.hidden, 10]
    params = [a * b for a, b in itertools.pairwise(sizes)]
    smallest = [args.edge_bits, *[min(args.support)] * (len(params) - 2), args.edge_bits]
    most = memory_mb(params, [32] * len(params)) / memory_mb(params, smallest)
    assert args.compression < most < BMPQ_CONV_COMPRESSION


def test_lts_defaults_are_the_configuration_of_bench_lts():
    """`train --method lts` = the 2-bit LTS row of `bench lts` (model/bench/lts.py, train_lts's defaults)."""
    from model.bench.lts import run_lts_bench
    from model.methods.lts import train_lts
    from model.quant.lts import build_lts_mlp

    args = resolve(parse("--method", "lts"))
    bench = {k: p.default for k, p in inspect.signature(run_lts_bench).parameters.items()}
    trainer = {k: p.default for k, p in inspect.signature(train_lts).parameters.items()}
    assert args.data == "fashion-mnist" and args.data_root is None and bench["root"] is None  # Debian's copy
    assert args.train_subset is bench["train_subset"] is None and args.test_subset is bench["test_subset"] is None
    assert (args.epochs, args.warmup, args.m, args.threads) == (bench["epochs"], bench["warmup"], bench["m"],
                                                               bench["threads"])
    assert args.bits == bench["bits_list"][0] and args.lts_mode == "lts"
    assert (args.strategy, args.p, args.lr, args.batch_size, args.seed, args.bounds_lr_ratio) == (
        trainer["strategy"], trainer["p"], trainer["lr"], trainer["batch_size"], trainer["seed"],
        trainer["bounds_lr_ratio"])
    assert tuple(args.hidden) == inspect.signature(build_lts_mlp).parameters["hidden"].default


# ------------------------------------------------------------------------------------------ rejections
@pytest.mark.parametrize(("method", "argv", "named"), [
    ("lts", ["--act-bits", 4], "--act-bits"),            # equal to the iterative default: still rejected
    ("lts", ["--rho", 0.3], "--rho"),
    ("lts", ["--no-float-baseline"], "--no-float-baseline"),
    ("lts", ["--restart"], "--restart"),
    ("lts", ["--compression", 10], "--compression"),
    ("lts", ["--p", 0.5], "--p"),                       # p is --strategy fixed's
    ("lts", ["--lts-mode", "baseline", "--m", 0.9], "--m"),
    ("bmpq", ["--act-bits", 4], "--act-bits"),
    ("bmpq", ["--bits", 2], "--bits"),
    ("bmpq", ["--target-bits", 4], "--target-bits"),
    ("bmpq", ["--threads", 1], "--threads"),
    ("imq", ["--bits", 2], "--bits"),                   # equal to the LTS default: still rejected
    ("imq", ["--warmup", 2], "--warmup"),
    ("imq", ["--support", 2, 4], "--support"),
    ("imq", ["--weight-bits", 32], "--weight-bits"),
    ("imp", ["--hierarchy", "paper"], "--hierarchy"),
    ("qnn", ["--rho", 0.2], "--rho"),
    ("qnn", ["--iterations", 1], "--iterations"),
    ("qnn", ["--scope", "layer"], "--scope"),            # qnn trains once: no mask update to rank per layer
    ("qnn", ["--target-bits", 2], "--target-bits"),      # ... and no iteration to stop at
    ("qnn", ["--target-bits", 4], "--target-bits"),      # equal to the default: still rejected
    ("irq", ["--edge-bits", 16], "--edge-bits"),
    # Given as 0 (0 == False: such an option counted as not given and was ignored)
    ("imq", ["--mixed-points", 0], "--mixed-points"),
    ("lts", ["--p", 0], "--p"),
    ("qnn", ["--target-bits", 0], "--target-bits"),
    ("imq", ["--warmup", 0], "--warmup"),
])
def test_an_option_the_method_does_not_use_is_rejected(capsys, tmp_path, method, argv, named):
    code, out, err = main(capsys, "train", "--method", method, *argv, "--quiet", "--out", tmp_path / "out")
    assert code == 2, out + err
    assert named in err and method in err
    assert not (tmp_path / "out").exists()


def test_options_that_do_not_fit_together_are_rejected(capsys, tmp_path):
    for argv, words in [
        (["--method", "bmpq", "--compression", 4, "--budget-mb", 1], ("--compression", "--budget-mb")),
        (["--arch", "vgg", "--hidden", 8], ("--hidden", "vgg")),
        (["--data-root", tmp_path], ("--data-root", "digits")),
        (["--val-size", 0, "--val-seed", 3], ("--val-seed", "--val-size 0")),
        (["--val-size", 0, "--val-seed", 0], ("--val-seed", "--val-size 0")),
    ]:
        code, _, err = main(capsys, "train", *argv, "--quiet", "--out", tmp_path / "out")
        assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_pact32_activations_are_refused_for_the_mlp_when_the_arguments_are_checked(capsys, tmp_path):
    """--act-bits 32 is a choice of the conv nets only: for the MLP (the default --arch) it is refused before anything
    is loaded, naming --act-bits, the MLP's 1..8 and the archs that take 32; resnet20 and vgg resolve it."""
    for method in ("imq", "qnn"):
        code, _, err = main(capsys, "train", "--method", method, "--act-bits", 32, "--quiet", "--out", tmp_path / "out")
        assert code == 2, err
        assert "--act-bits 32" in err and "allowed --act-bits 1..8" in err and "--arch resnet20 or --arch vgg" in err
    assert not (tmp_path / "out").exists()
    for arch in ("resnet20", "vgg"):
        assert resolve(parse("--arch", arch, "--act-bits", 32)).act_bits == 32


def test_qnn_keeps_its_schedule_defaults_without_the_options():
    """--scope and --target-bits are refused for qnn, but its run config keeps their defaults (old run directories
    of qnn resume with the same config)."""
    config = train_config(resolve(parse("--method", "qnn")))
    assert (config.scope, config.target_avg_bits, config.iterations) == ("global", 4.0, 1)


@pytest.mark.parametrize(("argv", "words"), [
    # 1 epoch: no room for BMPQ's warm-up and an ILP; the message names --epochs, not the defaulted --warmup
    (["--method", "bmpq", "--epochs", 1], ["BMPQ needs --epochs >= 2", "warm-up of at least 1 epoch",
                                           "raise --epochs"]),
    (["--method", "bmpq", "--epochs", 2], ["--epochs 2", "its default --warmup 2", "give --warmup 1 or --epochs 3"]),
    (["--method", "bmpq", "--epochs", 5, "--warmup", 5], ["--warmup 5", "give --warmup 1..4 or --epochs 6"]),
    (["--method", "bmpq", "--warmup", 0], ["--warmup 0 is too short for --method bmpq"]),
    (["--method", "lts", "--epochs", 1], ["--epochs 1", "its default --warmup 2", "give --warmup 0 or --epochs 3"]),
])
def test_a_warmup_that_leaves_no_epoch_names_the_option_to_change(capsys, tmp_path, argv, words):
    code, out, err = main(capsys, "train", *argv, "--quiet", "--out", tmp_path / "out")
    assert code == 2, out + err
    assert all(w in err for w in words) and "field 'warmup'" not in err and "1..0" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("budget", [["--compression", 1.5], []])
def test_bmpq_refuses_a_net_of_two_weight_layers(capsys, tmp_path, budget):
    """Both layers are edge layers at --edge-bits: nothing for the ILP (with a budget that fits them or not)."""
    code, out, err = main(capsys, "train", "--method", "bmpq", "--hidden", 64, *budget, "--quiet",
                          "--out", tmp_path / "out")
    assert code == 2, out + err
    assert "at least three weight layers" in err and "this one has 2" in err and "--hidden 64 64" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["imq", "bmpq"])  # (through the run directory; a one-shot method)
def test_a_train_subset_past_the_data_set_is_refused_before_training(capsys, tmp_path, method):
    code, out, err = main(capsys, "train", "--method", method, "--train-subset", 5000, "--quiet",
                          "--out", tmp_path / "out")
    assert code == 2, out + err
    assert "--train-subset 5000 (field 'train_subset'): the data set 'digits' has 1437 training images" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["imq", "lts"])  # (through the run directory; a one-shot method)
def test_a_data_folder_that_is_not_there_names_its_options(capsys, tmp_path, method):
    code, out, err = main(capsys, "train", "--method", method, "--data", "idx", "--data-root", tmp_path / "none",
                          "--quiet", "--out", tmp_path / "out")
    assert code == 2, out + err
    assert f"error: --data idx --data-root {tmp_path / 'none'}: IDX folder " in err, err
    assert not (tmp_path / "out").exists()


def test_plain_qat_fits_its_unused_warmup_to_short_trainings():
    args = resolve(parse("--method", "lts", "--lts-mode", "baseline", "--epochs", 1))
    assert args.warmup == 0  # train_lts checks warmup < epochs even with the scratcher off


def test_data_is_one_of_the_data_sets_before_anything_loads():
    for argv in (["train", "--data", "foo"], ["train", "--method", "lts", "--data", "mnist"],
                 ["demo", "--data", "foo"]):
        with pytest.raises(SystemExit) as exc:
            build.parser().parse_args(argv)
        assert exc.value.code == 2


def test_demo_help_offers_only_the_data_set_and_activations_it_runs(capsys):
    """`demo --data` takes the names `train` does (so that `demo --data fashion-mnist` gets the demo's reason), but
    its help offers digits only; `demo --act-bits` offers 1..8, not `train`'s PACT-32, which the demo refuses."""
    def help_text(command):
        with pytest.raises(SystemExit):
            build.main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    demo = help_text("demo")
    assert "--data NAME data set: digits only" in demo and "cifar10" not in demo, demo
    assert "--act-bits ACT_BITS PACT-k activation bits: 1..8, what the accelerator runs" in demo
    assert "PACT-32" not in demo, demo
    train = help_text("train")
    assert "cifar10 or cifar100" in train and "or 32 for PACT-32" in train


def test_every_option_has_a_group_and_methods():
    for option in OPTIONS:
        assert option.group in ("common", "iterative", "lts", "bmpq", "vertical") and set(option.methods) <= set(METHODS)
        if option.group == "lts":
            assert "lts" in option.methods
        if option.group in ("bmpq", "vertical"):
            assert option.methods == (option.group,)


# ------------------------------------------------------------------------------------------ real runs
@pytest.mark.parametrize("method", ITERATIVE)
def test_iterative_methods_run_on_their_defaults_with_tiny_overrides(capsys, tmp_path, method):
    tiny = ["--epochs", 1, "--train-subset", 150, "--test-subset", 60, "--hidden", 8]
    if method != "qnn":
        tiny += ["--iterations", 2]
    code, out, err = main(capsys, "train", "--method", method, *tiny, "--quiet", "--run-dir", tmp_path / "run")
    assert code == 0, err
    assert "resumed: false" in out and (tmp_path / "run" / "ticket.pt").is_file()
    history = json.loads((tmp_path / "run" / f"{method}_history.json").read_text())
    assert history["config"]["epochs"] == 1 and history["config"]["act_bits"] == 4
    code, out, err = main(capsys, "train", "--method", method, *tiny, "--quiet", "--run-dir", tmp_path / "run")
    assert code == 0 and "resumed: true" in out, err
    if method == "imq":
        code, out, err = main(capsys, "train", *tiny, "--restart", "--quiet", "--run-dir", tmp_path / "run")
        assert code == 0 and "resumed: false" in out, err


def test_validation_split_size_and_seed_reach_the_run(capsys, tmp_path):
    tiny = ["--epochs", 1, "--train-subset", 150, "--test-subset", 60, "--hidden", 8, "--iterations", 1, "--quiet"]
    code, _out, err = main(capsys, "train", *tiny, "--val-size", 30, "--val-seed", 7, "--run-dir", tmp_path / "a")
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert config["val_size"] == 30 and config["val_seed"] == 7
    history = json.loads((tmp_path / "a" / "imq_history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [0]  # --iterations 1: iteration 0 only (the unpruned net)
    assert all(h["val_accuracy"] is not None for h in history)
    code, _out, err = main(capsys, "train", *tiny, "--val-size", 0, "--run-dir", tmp_path / "b")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["val_size"] == 0
    for bad in ("1.5", "-3", "x"):
        with pytest.raises(SystemExit):
            parse("--val-size", bad)
    assert "val-size" in main(capsys, "train", "--method", "lts", "--val-size", 0.2)[2]


def test_bmpq_runs_on_its_defaults_with_tiny_overrides(capsys, tmp_path):
    code, _out, err = main(capsys, "train", "--method", "bmpq", "--epochs", 3, "--warmup", 1, "--interval", 1,
                          "--train-subset", 300, "--quiet", "--out", tmp_path / "bmpq")
    assert code == 0, err
    report = json.loads((tmp_path / "bmpq" / "bmpq.json").read_text())
    assert report["compression_ratio"] >= BMPQ_MLP_COMPRESSION and len(report["layer_bits"]) == 4
    # BMPQ always starts over, and says so, with the code revision it ran under (as run.json does)
    revision = provenance.code_revision()["revision"]
    assert report["resumed"] is False and report["provenance"]["revision"] == revision
    _model, meta = load_checkpoint(tmp_path / "bmpq" / "bmpq.pt")
    assert meta["provenance"]["revision"] == revision


def test_lts_uses_hidden_batch_size_run_dir_and_subsets(capsys, tmp_path):
    from tests.idx_files import write_idx_folder

    root = write_idx_folder(tmp_path / "fm", n_train=120, n_test=30, spelling="dot", gz=True)
    code, _out, err = main(capsys, "train", "--method", "lts", "--data-root", root, "--hidden", 16, "--epochs", 2,
                          "--warmup", 1, "--batch-size", 32, "--train-subset", 96, "--test-subset", 20, "--quiet",
                          "--run-dir", tmp_path / "lts")
    assert code == 0, err
    report = json.loads((tmp_path / "lts" / "lts.json").read_text())
    config = report["config"]
    assert (config["data"], config["hidden"], config["batch_size"]) == ("fashion-mnist", [16], 32)
    assert (config["train_images"], config["test_images"], config["threads"]) == (96, 20, 1)
    assert len(report["sparsity_history"]) == 2
    assert report["resumed"] is False and report["provenance"]["revision"] == provenance.code_revision()["revision"]
    assert report["provenance"]["threads"] == 1  # what LTS trained with (--threads), not torch's count after it


def test_lts_trains_the_conv_nets_too(capsys, tmp_path):
    from tests.idx_files import write_idx_folder

    root = write_idx_folder(tmp_path / "fm", n_train=64, n_test=16, spelling="dot", gz=True)
    code, _out, err = main(capsys, "train", "--method", "lts", "--arch", "vgg", "--data-root", root, "--epochs", 2,
                          "--warmup", 1, "--batch-size", 32, "--quiet", "--run-dir", tmp_path / "lts")
    assert code == 0, err
    report = json.loads((tmp_path / "lts" / "lts.json").read_text())
    assert report["config"]["arch"] == "vgg" and len(report["sparsity_history"]) == 2
    assert 0 < report["sparsity_history"][-1] <= 1 and report["train_time_s"] > 0
