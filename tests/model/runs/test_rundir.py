"""Run directories (model/runs/rundir.py): resume equals an uninterrupted run bit for bit, config checks, tickets,
the recorded revision and environment (a resume under another one is refused), --restart, the validation split."""

import hashlib
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from model.data import load_digits_split
from model.errors import UserError
from model.methods.imq import IterationRecord
from model.methods.schedules import init_masks
from model.quant.nets import build_model
from model.runs import provenance
from model.runs.checkpoint import load_checkpoint, save_checkpoint
from model.runs.rundir import (
    ITERATION_DIR,
    RUN_FILE,
    STATE_FILE,
    THETA_FILE,
    TICKET_FILE,
    _initial_model,
    clear_run,
    iteration_path,
    load_data,
    load_iteration,
    make_run_config,
    open_run,
    pick_ticket,
    read_run_config,
    record_from_json,
    run,
    ticket_json,
)
from model.runs.validation import carve_validation, val_count
from model.training.loop import evaluate, train
from tests.build_main import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")


def small(method="irq", **kwargs):
    settings = {"train_subset": 200, "test_subset": 100, "hidden": (8,), "epochs": 1, "batch_size": 32, "lr": 0.01,
                "iterations": 4, "seed": 1}
    settings.update(kwargs)
    return make_run_config(method, **settings)


class Interrupt(Exception):
    """Stands for Ctrl-C / a killed job between two iterations."""


def _state_dicts(run_dir, n):
    return [torch.load(iteration_path(run_dir, k), weights_only=True)["state_dict"] for k in range(n)]


def test_resume_gives_the_uninterrupted_result_bit_for_bit(tmp_path):
    # IRQ: the random choice exercises the generator state; the float baseline the RNG state.
    config = small("irq")
    whole = run(config, tmp_path / "whole", progress=False)
    assert whole.finished and not whole.resumed and len(whole.history) == 4

    def stop_after_two(progress, model):
        if progress.next_iteration == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(config, tmp_path / "cut", progress=False, on_step=stop_after_two)
    state = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert len(state["history"]) == 2 and not state["finished"]
    assert not (tmp_path / "cut" / TICKET_FILE).exists()
    resumed = run(config, tmp_path / "cut", progress=False)
    assert resumed.resumed and resumed.finished

    assert resumed.history == whole.history
    assert resumed.float_accuracy == whole.float_accuracy
    for a, b in zip(_state_dicts(tmp_path / "whole", 4), _state_dicts(tmp_path / "cut", 4), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    ticket_a = torch.load(tmp_path / "whole" / TICKET_FILE, weights_only=True)
    ticket_b = torch.load(tmp_path / "cut" / TICKET_FILE, weights_only=True)
    assert all(torch.equal(v, ticket_b["state_dict"][k]) for k, v in ticket_a["state_dict"].items())
    # Masks really changed between iterations (otherwise the comparison would be weak).
    first, last = _state_dicts(tmp_path / "whole", 4)[0], _state_dicts(tmp_path / "whole", 4)[3]
    assert not torch.equal(first["linears.0.bit_width"], last["linears.0.bit_width"])

    # A finished run re-reads its results without training again.
    again = run(config, tmp_path / "whole", progress=False)
    assert again.resumed and again.history == whole.history and again.ticket == whole.ticket


def test_run_directory_layout_and_weights_only_checkpoints(tmp_path):
    config = small("imp", iterations=2, float_baseline=False)
    result = run(config, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [RUN_FILE, THETA_FILE, STATE_FILE, ITERATION_DIR, TICKET_FILE, "imp_history.json", "imp.png"])
    for path in [tmp_path / THETA_FILE, tmp_path / STATE_FILE, tmp_path / TICKET_FILE,
                 *sorted((tmp_path / ITERATION_DIR).iterdir())]:
        assert isinstance(torch.load(path, weights_only=True), dict), path
    assert not list(tmp_path.rglob("*.tmp"))
    assert read_run_config(tmp_path) == config
    history = json.loads((tmp_path / "imp_history.json").read_text())
    assert history["finished"] and [h["iteration"] for h in history["history"]] == [0, 1]
    assert history["ticket"]["iteration"] == result.ticket.iteration
    # The ticket is an ordinary checkpoint: `export` reads it, and it is its iteration's trained model.
    model, meta = load_checkpoint(tmp_path / TICKET_FILE)
    assert meta["ticket_iteration"] == result.ticket.iteration and meta["method"] == "imp"
    trained = torch.load(iteration_path(tmp_path, result.ticket.iteration), weights_only=True)["state_dict"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    theta_0 = torch.load(tmp_path / THETA_FILE, weights_only=True)["theta_0"]
    assert not torch.equal(theta_0["linears.0.weight"], trained["linears.0.weight"])


def test_config_mismatch_names_the_fields(tmp_path):
    open_run(tmp_path, small("imq"))
    assert open_run(tmp_path, small("imq")) is True
    with pytest.raises(UserError, match=r"rho: stored 0.3, asked 0.5, epochs: stored 1, asked 2"):
        open_run(tmp_path, small("imq", epochs=2, rho=0.5))
    with pytest.raises(UserError, match="method: stored 'imq', asked 'irq'"):
        open_run(tmp_path, small("irq"))


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        read_run_config(tmp_path / "missing")
    with pytest.raises(UserError, match="not a run directory.*run.json"):
        read_run_config(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file: is a file, not a run directory"):
        read_run_config(tmp_path / "a_file")
    (tmp_path / "folder" / RUN_FILE).mkdir(parents=True)
    with pytest.raises(UserError, match="run.json: is not a file; a run directory's run.json is the file"):
        read_run_config(tmp_path / "folder")
    (tmp_path / RUN_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="format"):
        read_run_config(tmp_path)
    (tmp_path / RUN_FILE).write_text('{"format": "mpqaccel-run", "version": 1, "config": {"method": "imq"}}')
    with pytest.raises(UserError, match="config.*keys"):
        read_run_config(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": "mnist"}, "data.*allowed"),
        ({"arch": "resnet56"}, "arch.*allowed"),
        ({"act_bits": 12}, "act_bits.*1..8 or 32"),
        ({"epochs": 0}, "epochs"),
        ({"hidden": ()}, "hidden"),
        ({"train_subset": 0}, "train_subset"),
        ({"val_size": 1.5}, "val_size.*fraction in \\(0, 1\\)"),
        ({"val_seed": "1"}, "val_seed.*integers"),
    ],
)
def test_make_run_config_names_the_field(kwargs, match):
    with pytest.raises(UserError, match=match):
        make_run_config("imq", **kwargs)


def test_make_run_config_resolves_defaults():
    a = make_run_config("imp")
    assert (a.rho, a.iterations, a.weight_bits) == (0.2, 16, 32)
    assert make_run_config("imp", rho=0.2, iterations=16) == a
    assert make_run_config("imq", arch="resnet20", hidden=(5,)).hidden is None
    assert make_run_config("imq", data="fashion-mnist").data_root == "/usr/share/datasets/fashion-mnist"


def test_pick_ticket_rules():
    history = [_record(0, 32.0, 0.90), _record(1, 20.0, 0.92), _record(2, 10.0, 0.91), _record(3, 5.0, 0.85)]
    assert pick_ticket(history, reached_target=True) == (history[3], "target")
    assert pick_ticket(history, reached_target=False) == (history[2], "algorithm-1")
    worse = [_record(0, 32.0, 0.9), _record(1, 20.0, 0.8)]
    assert pick_ticket(worse, reached_target=False) == (worse[1], "last")
    assert pick_ticket(worse[:1], reached_target=False) == (worse[0], "last")


def test_train_cli_resumes_and_refuses_another_config(tmp_path, capsys):
    common = ["train", "--method", "qnn-imp", "--weight-bits", 4, "--hidden", 8, "--epochs", 1, "--iterations", 2,
              "--train-subset", 200, "--test-subset", 100, "--target-bits", 0, "--no-float-baseline", "--quiet",
              "--run-dir", tmp_path / "run"]
    code, out, err = cli(capsys, *common)
    assert code == 0, err
    assert "QNN-4 IMP, PACT-4" in out and "ticket: iteration" in out
    assert json.loads((tmp_path / "run" / "qnn-imp_history.json").read_text())["history"][1]["avg_bits"] == 4 * 474 / 592
    code, out, err = cli(capsys, *common)
    assert code == 0 and "resumed the run" in err
    state = tmp_path / "run" / "state.pt"  # a folder where the state is: refused, not retrained then lost
    saved = state.read_bytes()
    state.unlink()
    state.mkdir()
    code, out, err = cli(capsys, *common)
    assert code == 2 and "state.pt: is not a file; remove it" in err
    state.rmdir()
    state.write_bytes(saved)
    code, out, err = cli(capsys, *common[:-2], "--epochs", 2, "--run-dir", tmp_path / "run")
    assert code == 2 and "epochs: stored 1, asked 2" in err
    code, out, err = cli(capsys, "train", "--method", "imq", "--weight-bits", 8, "--quiet", "--run-dir", tmp_path / "x")
    assert code == 2 and "weight_bits" in err and "qnn" in err
    code, out, err = cli(capsys, "train", "--method", "lth")
    assert code == 2 and "invalid choice" in err


def test_export_refuses_1_and_2_bit_tickets_that_eval_runs(tmp_path, capsys):
    """rho = 1 halves every weight each iteration: 32, 16, 8, 4, 2 bits; the target stops at 2. `export` refuses the
    2-bit ticket naming its widths; `eval` gives its float and fake-quant accuracy, golden null with the reason."""
    code, _out, err = cli(capsys, "train", "--method", "imq", "--hierarchy", "extended", "--rho", 1.0, "--hidden", 4,
                         "--epochs", 1, "--iterations", 6, "--target-bits", 2, "--train-subset", 100, "--test-subset",
                         50, "--no-float-baseline", "--quiet", "--run-dir", tmp_path / "run")
    assert code == 0, err
    assert "refuses it" in err
    history = json.loads((tmp_path / "run" / "imq_history.json").read_text())
    assert [h["avg_bits"] for h in history["history"]] == [32.0, 16.0, 8.0, 4.0, 2.0]
    assert history["ticket"]["rule"] == "target"
    code, _out, err = cli(capsys, "export", "--checkpoint", tmp_path / "run" / TICKET_FILE, "--out", tmp_path / "img")
    assert code == 2 and "weight widths [2] cannot be exported" in err and "(0, 4, 8, 16, 32)" in err
    assert str(tmp_path / "run" / TICKET_FILE) in err and not (tmp_path / "img").exists()
    code, _out, err = cli(capsys, "eval", "--checkpoint", tmp_path / "run" / TICKET_FILE, "--out", tmp_path / "ev")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["golden_accuracy"] is None and 0 <= report["fakequant_accuracy"] <= 1
    assert "weight widths [2] cannot be exported" in json.dumps(report)


def test_export_and_eval_conv_nets(tmp_path, capsys):
    """A VGG checkpoint exports to a version 3 image with its memory report, and `eval --image` gives the golden
    accuracy the checkpoint's own `eval` gives (both on the digits test split: the checkpoint records no data)."""
    torch.manual_seed(0)  # (the net's initial weights: the same draw whichever tests ran before in this worker)
    model = build_model({"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 4, "channels": [4]})
    save_checkpoint(tmp_path / "vgg.pt", model)
    code, out, err = cli(capsys, "export", "--checkpoint", tmp_path / "vgg.pt", "--out", tmp_path / "img")
    assert code == 0, err
    manifest = json.loads((tmp_path / "img" / "manifest.json").read_text())
    assert manifest["version"] == 3 and manifest["input_shape"] == [1, 8, 8]
    assert [layer["kind"] for layer in manifest["layers"]] == ["conv", "fc"] and manifest["layers"][0]["pool"] == 2
    assert "metadata" in out and "width-map entropy" in out and "paper (ResNet-20)" in out
    code, _out, err = cli(capsys, "eval", "--image", tmp_path / "img", "--out", tmp_path / "ev_img")
    assert code == 0, err
    code, _out, err = cli(capsys, "eval", "--checkpoint", tmp_path / "vgg.pt", "--out", tmp_path / "ev_ckpt")
    assert code == 0, err
    by_image = json.loads((tmp_path / "ev_img" / "eval.json").read_text())
    by_checkpoint = json.loads((tmp_path / "ev_ckpt" / "eval.json").read_text())
    assert by_image["test_images"] == by_checkpoint["test_images"] > 0
    assert by_image["golden_accuracy"] == by_checkpoint["golden_accuracy"] is not None
    # The fully connected core of `sim` runs MLP images only: a conv image is a clear error.
    code, _out, err = cli(capsys, "sim", "--image", tmp_path / "img", "--images", 2, "--out", tmp_path / "rtl")
    assert code == 2 and "conv network" in err and "MLP" in err


def test_iteration_file_that_does_not_fit_its_model_is_a_clear_error(tmp_path):
    from model.quant.nets import DigitsMLP
    from model.runs.rundir import _checkpoint_model

    path = save_checkpoint(tmp_path / "iter_000.pt", DigitsMLP(hidden=(8,)))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["linears.0.weight"] = torch.zeros(3, 3)
    torch.save(payload, path)
    with pytest.raises(UserError, match="field 'state_dict' does not fit the model"):
        _checkpoint_model(path)


# ------------------------------------------------------------------------------------------ provenance
def test_run_json_records_the_revision_and_environment(tmp_path):
    config = small("qnn", iterations=1, float_baseline=False)
    result = run(config, tmp_path, progress=False)
    stored = json.loads((tmp_path / RUN_FILE).read_text())["provenance"]
    current = provenance.code_revision()
    assert stored == {**current, "torch": torch.__version__, "numpy": np.__version__, "threads": 1, "processes": 1,
                      "device": "cpu"}
    assert stored["revision"].startswith(("git:", "src:")) and len(stored["source_sha256"]) == 64
    if stored["git_commit"] is not None:
        assert re.fullmatch(r"git:[0-9a-f]{40}(\+dirty:[0-9a-f]{16})?", stored["revision"])
        assert ("+dirty:" + stored["source_sha256"][:16] in stored["revision"]) == stored["dirty"]
    assert result.provenance == stored and not result.resumed
    assert result.split.x_train.shape[0] == 180 and result.split.image_shape == (1, 8, 8)  # 200 less 10 % val
    assert torch.load(tmp_path / TICKET_FILE, weights_only=True)["meta"]["dataset"]["input_shape"] == [1, 8, 8]
    history = json.loads((tmp_path / "qnn_history.json").read_text())
    assert history["resumed"] is False and "provenance" not in history  # equal under torchrun and alone
    assert torch.load(tmp_path / TICKET_FILE, weights_only=True)["meta"]["provenance"] == stored
    again = run(config, tmp_path, progress=False)
    assert again.resumed and json.loads((tmp_path / "qnn_history.json").read_text())["resumed"] is True


def test_revision_of_git_and_plain_source_trees(tmp_path, monkeypatch):
    """``src:<hash>`` outside git; ``git:<commit>`` when clean; ``+dirty:<hash>`` for uncommitted package changes."""
    # (git looks no further up than tmp_path's parent: a TMPDIR inside some checkout would otherwise make it git)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert shutil.which("git") is not None, "git is needed here (the revision a run records comes from it)"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.py").write_text("A = 1\n")
    (tmp_path / "model" / "__pycache__").mkdir()
    (tmp_path / "model" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"ignored")
    (tmp_path / "build.py").write_text("print()\n")
    plain = provenance.revision_of(tmp_path)
    digest = hashlib.sha256(b"build.py\0print()\n\0model/a.py\0A = 1\n\0").hexdigest()
    assert plain == {"revision": f"src:{digest[:16]}", "git_commit": None, "dirty": None, "source_sha256": digest}

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                        "commit.gpgsign=false", *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "model/a.py", "build.py")
    git("commit", "-q", "-m", "x")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    (tmp_path / "README.md").write_text("not a package source\n")  # untracked, outside the packages: still clean
    clean = provenance.revision_of(tmp_path)
    assert clean["revision"] == f"git:{commit}" and clean["source_sha256"] == digest
    # Files git ignores (build artefacts) change neither the dirty check nor the hash.
    (tmp_path / ".gitignore").write_text("sim_build/\n*.vcd\n")
    (tmp_path / "model" / "sim_build").mkdir()
    (tmp_path / "model" / "sim_build" / "out.bin").write_bytes(b"artefact")
    (tmp_path / "model" / "wave.vcd").write_text("$end\n")
    assert provenance.revision_of(tmp_path) == clean
    (tmp_path / "model" / "b.py").write_text("B = 2\n")  # an untracked package file is a change
    dirty = provenance.revision_of(tmp_path)
    assert dirty["dirty"] and dirty["revision"] == f"git:{commit}+dirty:{dirty['source_sha256'][:16]}"
    (tmp_path / "model" / "b.py").write_text("B = 3\n")
    assert provenance.revision_of(tmp_path)["revision"] not in (dirty["revision"], f"git:{commit}")


def test_resume_under_another_revision_or_thread_count_is_refused(tmp_path, monkeypatch):
    config = small("imq", iterations=2)
    first = run(config, tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("mine")  # not written by the run: --restart must keep it
    real = provenance.code_revision()
    # Another commit with the same package sources (a README-only commit) resumes: the code that runs is the same.
    monkeypatch.setattr(provenance, "code_revision", lambda: {**real, "revision": "git:" + "2" * 40})
    assert run(config, tmp_path, progress=False).resumed
    monkeypatch.setattr(provenance, "code_revision", lambda: {**real, "revision": "git:" + "0" * 40,
                                                              "source_sha256": "0" * 64})
    with pytest.raises(UserError, match=r"run.json: this run was made under another code revision.*"
                                        r"source_sha256: stored '.*', now '0{64}'.*--restart"):
        run(config, tmp_path, progress=False)
    monkeypatch.setattr(provenance, "code_revision", lambda: real)
    torch.set_num_threads(2)
    try:
        with pytest.raises(UserError, match="threads: stored 1, now 2.*--restart"):
            run(config, tmp_path, progress=False)
    finally:
        torch.set_num_threads(1)
    # --restart: the old state goes, the run starts afresh under the new revision and gives a fresh run's result.
    monkeypatch.setattr(provenance, "code_revision", lambda: {**real, "revision": "git:" + "1" * 40,
                                                              "source_sha256": "1" * 64})
    fresh = run(config, tmp_path, progress=False, restart=True)
    assert not fresh.resumed and fresh.finished
    assert fresh.history == first.history and fresh.float_accuracy == first.float_accuracy
    assert json.loads((tmp_path / RUN_FILE).read_text())["provenance"]["revision"] == "git:" + "1" * 40
    assert json.loads((tmp_path / "imq_history.json").read_text())["resumed"] is False
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert run(config, tmp_path, progress=False).resumed


def test_run_json_without_provenance_is_refused(tmp_path):
    config = small("qnn", iterations=1, float_baseline=False)
    open_run(tmp_path, config)
    payload = json.loads((tmp_path / RUN_FILE).read_text())
    del payload["provenance"]
    (tmp_path / RUN_FILE).write_text(json.dumps(payload))
    assert read_run_config(tmp_path) == config  # reports still read it
    with pytest.raises(UserError, match="field 'provenance' is missing.*--restart"):
        open_run(tmp_path, config)
    payload["provenance"] = "x"
    (tmp_path / RUN_FILE).write_text(json.dumps(payload))
    with pytest.raises(UserError, match="field 'provenance' is 'x', not an object"):
        open_run(tmp_path, config)


@pytest.mark.parametrize("hidden", ["64", 64, [64, "x"]])
def test_run_json_hidden_sizes_must_be_a_list_of_integers(tmp_path, hidden):
    config = small("qnn", iterations=1, float_baseline=False)
    open_run(tmp_path, config)
    payload = json.loads((tmp_path / RUN_FILE).read_text())
    payload["config"]["hidden"] = hidden
    (tmp_path / RUN_FILE).write_text(json.dumps(payload))
    with pytest.raises(UserError, match=rf"run.json: field 'config.hidden' is {re.escape(repr(hidden))}; expected"):
        read_run_config(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: {}, r"field 'config' lacks the keys \['act_bits', .*'weight_bits'\]; expected the keys"),
    (lambda c: "x", r"field 'config' is a str; expected an object with the keys \['act_bits'"),
    (lambda c: {**c, "colour": "red"}, r"field 'config' has unknown keys \['colour'\]; expected the keys"),
    (lambda c: {**{k: v for k, v in c.items() if k != "seed"}, "colour": "red"},
     r"field 'config' lacks the keys \['seed'\]; has unknown keys \['colour'\]; expected"),
])
def test_run_json_config_keys_are_named_as_the_file_has_them(tmp_path, change, message):
    """The keys the file lacks and the ones it should not have, without the legacy defaults (val_size, val_seed)
    that the reader adds to an older file: an empty config named those two as its keys."""
    open_run(tmp_path, small("qnn", iterations=1, float_baseline=False))
    payload = json.loads((tmp_path / RUN_FILE).read_text())
    payload["config"] = change(payload["config"])
    (tmp_path / RUN_FILE).write_text(json.dumps(payload))
    with pytest.raises(UserError, match=message) as caught:
        read_run_config(tmp_path)
    assert "val_size" not in str(caught.value).split("expected")[0]


def test_clear_run_removes_only_what_the_run_wrote(tmp_path):
    config = small("imp", iterations=2, float_baseline=False)
    run(config, tmp_path, progress=False)
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "weights.bin").write_bytes(b"\0")
    (tmp_path / ITERATION_DIR / "keep.txt").write_text("x")
    (tmp_path / "irq_history.json").write_text("{}")  # another method's name: not this run's
    removed = clear_run(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == sorted(
        [RUN_FILE, THETA_FILE, STATE_FILE, TICKET_FILE, "imp_history.json", "imp.png", f"{ITERATION_DIR}/iter_000.pt",
         f"{ITERATION_DIR}/iter_001.pt"])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "image/weights.bin", "irq_history.json", f"{ITERATION_DIR}/keep.txt"]
    assert removed[-1] == tmp_path / RUN_FILE  # last: a removal cut short still says which run it was
    assert clear_run(tmp_path) == []  # no run.json and no run files
    # Run files without run.json (deleted by hand): refused, since nothing says which revision made them.
    (tmp_path / STATE_FILE).write_bytes(b"old")
    (tmp_path / "imp.png").write_bytes(b"old")
    with pytest.raises(UserError, match="holds state.pt but no run.json.*--restart"):
        open_run(tmp_path, config)
    assert sorted(p.name for p in clear_run(tmp_path, "imp")) == ["imp.png", STATE_FILE]
    (tmp_path / RUN_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="format"):
        clear_run(tmp_path)
    assert (tmp_path / RUN_FILE).exists()


# ------------------------------------------------------------------------------------------ validation
def test_carve_validation_is_seeded_disjoint_and_checked():
    split = load_digits_split()
    n = split.x_train.shape[0]
    train_part, val = carve_validation(split, 0.1, seed=3)
    assert val.size == math.floor(0.1 * n + 0.5) and train_part.x_train.shape[0] == n - val.size
    rest = sorted(set(range(n)) - set(val.indices.tolist()))
    assert torch.equal(train_part.x_train, split.x_train[rest]) and torch.equal(val.x, split.x_train[val.indices])
    assert torch.equal(val.y, split.y_train[val.indices]) and train_part.x_test is split.x_test
    assert torch.equal(carve_validation(split, 0.1, seed=3)[1].indices, val.indices)
    assert not torch.equal(carve_validation(split, 0.1, seed=4)[1].indices, val.indices)
    assert carve_validation(split, 100, seed=3)[1].size == 100
    assert carve_validation(split, 0, seed=3) == (split, None)
    for bad in (1.0, -1, True, "5"):
        with pytest.raises(UserError, match="val_size.*allowed"):
            carve_validation(split, bad, seed=0)
    with pytest.raises(UserError, match=f"val_size.*allowed 1 .. {n - 1} images"):
        carve_validation(split, n, seed=0)
    with pytest.raises(UserError, match="val_seed"):
        carve_validation(split, 0.1, seed=0.5)
    with pytest.raises(UserError, match=r"1 training image\(s\) cannot be split .* \(--val-size 0\)"):
        val_count(0.1, 1)  # (it said 'allowed 1 .. 0 images')


def test_run_trains_without_the_validation_images_and_records_both_accuracies(tmp_path):
    config = small("imq", iterations=2, val_size=40, val_seed=7)
    result = run(config, tmp_path, progress=False)
    split, val = load_data(config)
    assert val.size == 40 and split.x_train.shape[0] == 160
    assert result.validation == {"size": 40, "seed": 7, "requested": 40, "train_images": 160}
    history = json.loads((tmp_path / "imq_history.json").read_text())
    assert history["validation"] == result.validation and history["config"]["val_size"] == 40
    for k, record in enumerate(history["history"]):
        trained = load_iteration(tmp_path, k)
        assert record["accuracy"] == evaluate(trained, split.x_test, split.y_test)
        assert record["val_accuracy"] == evaluate(trained, val.x, val.y)
    # Iteration 0 is theta_0 trained on the 160 remaining training images, bit for bit.
    model, _ = _initial_model(tmp_path, config, split)
    init_masks(model, config.schedule)
    train(model, split, config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed, progress=False)
    assert all(torch.equal(v, load_iteration(tmp_path, 0).state_dict()[k]) for k, v in model.state_dict().items())
    assert history["ticket"]["selected_on"] == "validation"


def _record(iteration, bits, accuracy, val_accuracy=None):
    return IterationRecord(iteration, bits, accuracy, {}, val_accuracy)


def test_pick_ticket_ranks_by_validation_accuracy():
    # By test accuracy Algorithm 1 would take iteration 2 (10 bits); by validation accuracy only 1 beats 0.
    history = [_record(0, 32.0, 0.90, 0.80), _record(1, 20.0, 0.92, 0.85), _record(2, 10.0, 0.91, 0.79)]
    assert pick_ticket(history, reached_target=False) == (history[1], "algorithm-1")
    assert ticket_json(history, history[1], "algorithm-1")["selected_on"] == "validation"
    assert ticket_json(history, history[2], "target")["selected_on"] is None
    worse = [_record(0, 32.0, 0.90, 0.9), _record(1, 20.0, 0.95, 0.8)]
    assert pick_ticket(worse, reached_target=False) == (worse[1], "last")


def test_old_configs_and_histories_read_without_validation_fields(tmp_path):
    config = small("qnn", iterations=1, float_baseline=False)
    open_run(tmp_path, config)
    payload = json.loads((tmp_path / RUN_FILE).read_text())
    for key in ("val_size", "val_seed"):
        del payload["config"][key]
    (tmp_path / RUN_FILE).write_text(json.dumps(payload))
    assert read_run_config(tmp_path) == small("qnn", iterations=1, float_baseline=False, val_size=0)
    assert record_from_json({"iteration": 0, "avg_bits": 8.0, "accuracy": 0.5, "width_counts": {}}).val_accuracy is None


@pytest.mark.parametrize("name", provenance.CHECKED_FIELDS)
def test_every_checked_provenance_field_refuses_a_resume(name):
    """Each field of CHECKED_FIELDS, changed alone, is a difference (and named); the others are not checked."""
    now = provenance.provenance()
    stored = {**now, name: "something else"}
    assert provenance.differences(stored, now) == [f"{name}: stored 'something else', now {now[name]!r}"]
    assert provenance.differences({**now, "revision": "git:" + "3" * 40, "git_commit": "x"}, now) == []
    assert set(provenance.CHECKED_FIELDS) == {"source_sha256", "torch", "numpy", "threads", "processes", "device"}


@pytest.mark.parametrize(("target", "change", "message"), [
    (STATE_FILE, "config", "state.pt: field 'config' differs from"),
    (STATE_FILE, "masks", "state.pt: field 'masks' does not match the run's model"),
    (THETA_FILE, "config", "theta_0.pt: field 'config' is"),
    (THETA_FILE, "theta_0", "theta_0.pt: field 'theta_0' does not match the model"),
    (STATE_FILE, ("rng_state", None), "state.pt: field 'rng_state' is None; allowed a uint8 tensor of shape"),
    (STATE_FILE, ("generator_state", "abc"), "state.pt: field 'generator_state' is 'abc'; allowed a uint8 tensor"),
    (STATE_FILE, ("generator_state", torch.zeros(3, dtype=torch.uint8)),
     r"field 'generator_state' is a torch.uint8 tensor of shape \(3,\); allowed a uint8 tensor of shape \(5056,\)"),
    (STATE_FILE, ("reached_target", None), "state.pt: field 'reached_target' is None; allowed true, false"),
    (STATE_FILE, ("finished", 0), "state.pt: field 'finished' is 0; allowed true, false"),
    (STATE_FILE, ("float_accuracy", "x"), "state.pt: field 'float_accuracy' is 'x'; allowed null or a number in"),
    (STATE_FILE, ("float_val_accuracy", 7.0), "state.pt: field 'float_val_accuracy' is 7.0; allowed null or a number"),
])
def test_a_run_directory_whose_state_or_theta_0_does_not_match_is_refused(tmp_path, target, change, message):
    """A state or theta_0 file that disagrees with run.json (its config, the masks' or tensors' shapes) is
    refused on resume, naming the file and the field, rather than loaded into a model it does not fit."""
    config = small("imq", iterations=3)

    def stop_after_one(progress, model):
        if progress.next_iteration == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(config, tmp_path, progress=False, on_step=stop_after_one)
    path = tmp_path / target
    payload = torch.load(path, weights_only=True)
    if isinstance(change, tuple):  # a field replaced by a value of the wrong kind
        payload[change[0]] = change[1]
    elif change == "config":
        payload["config"] = {**payload["config"], "seed": 99} if isinstance(payload["config"], dict) else {}
    else:
        key = next(iter(payload[change]))
        payload[change][key] = torch.zeros(3, 3)
    torch.save(payload, path)
    with pytest.raises(UserError, match=message):
        run(config, tmp_path, progress=False)


def test_a_file_where_the_iterations_go_is_refused_before_the_run(tmp_path):
    """iterations/ holds each iteration's checkpoint: a file there failed the run after its first iteration."""
    (tmp_path / "iterations").write_text("x")
    with pytest.raises(UserError, match="iterations: is not a folder; the run writes each iteration's checkpoint"):
        open_run(tmp_path, small("imq"))
    assert not (tmp_path / RUN_FILE).exists()


def test_theta_0_without_run_json_is_refused(tmp_path):
    (tmp_path / THETA_FILE).write_bytes(b"old")
    with pytest.raises(UserError, match="holds theta_0.pt but no run.json.*--restart"):
        open_run(tmp_path, small("imp"))
    # A folder there survives --restart (which removes files only): named as what to remove, not --restart again.
    (tmp_path / THETA_FILE).unlink()
    (tmp_path / THETA_FILE).mkdir()
    clear_run(tmp_path, "imp")
    with pytest.raises(UserError, match="theta_0.pt: is not a file; remove it to start the run over"):
        open_run(tmp_path, small("imp"))
