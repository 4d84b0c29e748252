"""Run directories (model/runs/rundir.py): resume equals an uninterrupted run bit for bit, config checks, tickets."""

import json

import pytest
import torch

import build
from model.errors import UserError
from model.methods.imq import IterationRecord
from model.quant.nets import build_model
from model.runs.checkpoint import load_checkpoint, save_checkpoint
from model.runs.rundir import (
    ITERATION_DIR,
    RUN_FILE,
    STATE_FILE,
    THETA_FILE,
    TICKET_FILE,
    iteration_path,
    make_run_config,
    open_run,
    pick_ticket,
    read_run_config,
    run,
)

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


def _record(iteration, bits, accuracy):
    return IterationRecord(iteration, bits, accuracy, {})


def test_pick_ticket_rules():
    history = [_record(0, 32.0, 0.90), _record(1, 20.0, 0.92), _record(2, 10.0, 0.91), _record(3, 5.0, 0.85)]
    assert pick_ticket(history, reached_target=True) == (history[3], "target")
    assert pick_ticket(history, reached_target=False) == (history[2], "algorithm-1")
    worse = [_record(0, 32.0, 0.9), _record(1, 20.0, 0.8)]
    assert pick_ticket(worse, reached_target=False) == (worse[1], "last")
    assert pick_ticket(worse[:1], reached_target=False) == (worse[0], "last")


def cli(capsys, *args):
    code = build.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


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
    code, out, err = cli(capsys, *common[:-2], "--epochs", 2, "--run-dir", tmp_path / "run")
    assert code == 2 and "epochs: stored 1, asked 2" in err
    code, out, err = cli(capsys, "train", "--method", "imq", "--weight-bits", 8, "--quiet", "--run-dir", tmp_path / "x")
    assert code == 2 and "weight_bits" in err and "qnn" in err
    with pytest.raises(SystemExit) as exc:
        cli(capsys, "train", "--method", "lth")
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_export_refuses_1_and_2_bit_tickets(tmp_path, capsys):
    # rho = 1 halves every weight each iteration: 32, 16, 8, 4, 2 bits; the target stops at 2.
    code, _out, err = cli(capsys, "train", "--method", "imq", "--hierarchy", "extended", "--rho", 1.0, "--hidden", 4,
                         "--epochs", 1, "--iterations", 6, "--target-bits", 2, "--train-subset", 100, "--test-subset",
                         50, "--no-float-baseline", "--quiet", "--run-dir", tmp_path / "run")
    assert code == 0, err
    assert "refuses it" in err
    history = json.loads((tmp_path / "run" / "imq_history.json").read_text())
    assert [h["avg_bits"] for h in history["history"]] == [32.0, 16.0, 8.0, 4.0, 2.0]
    assert history["ticket"]["rule"] == "target"
    code, _out, err = cli(capsys, "export", "--checkpoint", tmp_path / "run" / TICKET_FILE, "--out", tmp_path / "img")
    assert code == 2 and "mask value 2" in err and "(0, 4, 8, 16, 32)" in err
    assert not (tmp_path / "img").exists()


def test_export_refuses_conv_nets(tmp_path, capsys):
    model = build_model({"arch": "vgg", "image_shape": [1, 8, 8], "n_classes": 10, "act_bits": 4, "channels": [4]})
    save_checkpoint(tmp_path / "vgg.pt", model)
    code, _out, err = cli(capsys, "export", "--checkpoint", tmp_path / "vgg.pt", "--out", tmp_path / "img")
    assert code == 2 and "'vgg'" in err and "only MLPs" in err and "Traceback" not in err
    assert not (tmp_path / "img").exists()


def test_iteration_file_that_does_not_fit_its_model_is_a_clear_error(tmp_path):
    from model.quant.nets import DigitsMLP
    from model.runs.rundir import _checkpoint_model

    path = save_checkpoint(tmp_path / "iter_000.pt", DigitsMLP(hidden=(8,)))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["linears.0.weight"] = torch.zeros(3, 3)
    torch.save(payload, path)
    with pytest.raises(UserError, match="field 'state_dict' does not fit the model"):
        _checkpoint_model(path)
