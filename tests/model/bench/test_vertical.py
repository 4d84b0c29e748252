"""``bench vertical`` (model/bench/vertical.py): floors on hand-written rows, the whole path on a tiny IDX folder,
and ``build.py bench vertical --smoke --check``."""

from __future__ import annotations

import json

import pytest

import build
from model.bench import vertical as vertical_bench
from model.bench.vertical import (
    DEFAULT_CONFIGS,
    HARDWARE_NOTE,
    METHODS,
    SMOKE_CONFIGS,
    BenchConfig,
    compared_archs,
    floors,
    run_vertical_bench,
)
from model.errors import UserError
from tests.idx_files import write_idx_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(vertical, lsq, no_comp, arch="mlp"):
    return ([{"arch": arch, "method": "vertical", "bits": b, "accuracy": a} for b, a in zip((2, 3, 4), vertical)]
            + [{"arch": arch, "method": "lsq", "bits": b, "accuracy": a} for b, a in zip((2, 3, 4), lsq)]
            + [{"arch": arch, "method": "no-compensation", "bits": 2, "accuracy": no_comp}])


def test_floors_hold_within_one_point_and_with_a_compensation_gain():
    f = floors(_rows((0.80, 0.84, 0.85), (0.805, 0.845, 0.855), 0.70))
    assert all(e["holds"] for e in f.values()), f
    assert f["mlp_vertical_gap_to_lsq_pp_2bit"]["value"] == pytest.approx(0.5)
    assert f["mlp_compensation_gain_pp_2bit"]["value"] == pytest.approx(10.0)


def test_a_gap_of_exactly_one_point_holds():
    """LSQ 4,155 and vertical 4,105 right of 5,000 (``bench vertical`` at 6fc07b0): 1 point, the floor itself, although
    ``100 * (0.831 - 0.821)`` is 1.0000000000000009 in floats (``model.bench.floors.points``)."""
    f = floors(_rows((0.80, 0.84, 4105 / 5000), (0.805, 0.845, 4155 / 5000), 0.70))
    assert f["mlp_vertical_gap_to_lsq_pp_4bit"] == {"value": 1.0, "floor": 1.0, "op": "<=", "holds": True}


def test_floors_fail_on_a_gap_a_loss_or_a_missing_row():
    f = floors(_rows((0.80, 0.84, 0.83), (0.805, 0.845, 0.855), 0.81))
    assert [n for n, e in f.items() if not e["holds"]] == ["mlp_vertical_gap_to_lsq_pp_4bit",
                                                          "mlp_compensation_gain_pp_2bit"]
    rows = [r for r in _rows((0.8,) * 3, (0.8,) * 3, 0.7) if r["method"] != "lsq" or r["bits"] != 3]
    assert floors(rows)["mlp_vertical_gap_to_lsq_pp_3bit"] == {"value": None, "floor": 1.0, "op": "<=",
                                                                "holds": False}
    # the MLP is always judged: VGG rows alone leave the MLP floors unmeasured
    f = floors(_rows((0.8,) * 3, (0.8,) * 3, 0.7, arch="vgg"))
    assert f["vgg_compensation_gain_pp_2bit"]["holds"] and not f["mlp_compensation_gain_pp_2bit"]["holds"]


def test_resnet20_rows_are_judged_on_the_hardware_only():
    """The default trains ResNet-20's vertical net alone (no baselines to compare): its training floors are not
    judged, its hardware floors are, on 10 images a width."""
    from sim.bench.vertical_hw import floors as hardware_floors

    assert compared_archs(DEFAULT_CONFIGS) == ["mlp", "vgg"]
    resnet = next(c for c in DEFAULT_CONFIGS if c.arch == "resnet20")
    assert resnet.methods == ("vertical",) and resnet.rtl_images == 10
    assert not any(k.startswith("resnet20") for k in floors(_rows((0.8,) * 3, (0.8,) * 3, 0.7) + [
        {"arch": "resnet20", "method": "vertical", "bits": b, "accuracy": 0.8} for b in (2, 3, 4)],
        archs=compared_archs(DEFAULT_CONFIGS)))
    rows = [{"arch": "resnet20", "bits": b, "rtl_images": 10, "rtl_mismatches": 0, "read_mismatches": 0,
             "cycles_per_image": 1000.0 * b,
             "bytes_read_per_image": 100.0 * b} for b in (2, 3, 4)]
    f = hardware_floors(rows)
    assert all(e["holds"] for e in f.values()) and f["resnet20_rtl_images_2bit"]["floor"] == 10
    rows[0]["rtl_images"] = 9
    assert not hardware_floors(rows)["resnet20_rtl_images_2bit"]["holds"]
    rows[0]["rtl_images"], rows[1]["rtl_mismatches"] = 10, 1
    f = hardware_floors(rows)
    assert not f["resnet20_rtl_mismatches_3bit"]["holds"] and f["resnet20_rtl_mismatches_2bit"]["holds"]
    rows[1]["rtl_mismatches"], rows[2]["read_mismatches"] = 0, 1
    f = hardware_floors(rows)
    assert [k for k, e in f.items() if not e["holds"]] == ["resnet20_read_mismatches_4bit"]


def test_hardware_rows_count_wrong_and_missing_scores(tmp_path, monkeypatch):
    """run_vertical_hardware's bookkeeping with the simulator replaced (the RTL run is the bench command test's):
    a wrong score at 3 bits and an image that did not come back at 4 bits count as mismatches of their width, and
    a weight word fewer than :func:`sim.reads.words_read` models at 3 bits, and the image missing at 4, as read
    mismatches."""
    import numpy as np

    from hw.array.sizing import config_for
    from model.export.image_v4 import write_vertical_image
    from sim.bench import vertical_hw
    from sim.reads import words_read
    from tests.model.export.test_image_v4 import random_net

    net = random_net(8, sizes=(12, 8, 8, 4), widths=(2, 3, 4), rows=1)
    write_vertical_image(tmp_path / "image", net)
    codes = np.random.default_rng(0).integers(0, 1 << net.input_bits, size=(3, 12))
    np.savez(tmp_path / "inputs.npz", codes=codes, labels=np.zeros(3, dtype=np.int64))

    def fake(vpath, cases, **kwargs):
        scores, weight_reads, reads = [], [], []
        for words, _, expected, bits in cases:
            rows = [r.tolist() for r in expected]
            want = words_read(net, config_for([words], engines=vertical_hw.ENGINES, lanes=None), bits, words=words)
            pairs = [list(want) for _ in rows]
            if bits == 3:
                rows[1] = [v + 1 for v in rows[1]]
                pairs[2][0] -= 1  # a weight word fewer than the schedule reads
            if bits == 4:
                rows, pairs = rows[:-1], pairs[:-1]
            scores += rows
            weight_reads += [p[0] for p in pairs]
            reads += [p[1] for p in pairs]
        n = len(scores)
        return {"scores": scores, "image_cycles": [100.0] * n, "image_reads": reads,
                "image_weight_reads": weight_reads, "statuses": [0] * n, "error": None, "timed_out": False}

    monkeypatch.setattr(vertical_hw, "run_array_cases", fake)
    monkeypatch.setattr(vertical_hw, "array_verilog", lambda config: "module mpq_array; endmodule\n")
    result = vertical_hw.run_vertical_hardware({"mlp": {"image": tmp_path / "image", "inputs": tmp_path / "inputs.npz"}},
                                               tmp_path / "hw", progress=False)
    got = {r["bits"]: (r["rtl_images"], r["rtl_mismatches"], r["read_mismatches"]) for r in result["rows"]}
    assert got == {2: (3, 0, 0), 3: (3, 1, 1), 4: (2, 1, 1)}
    f = vertical_hw.floors(result["rows"])
    assert [f[f"mlp_rtl_mismatches_{b}bit"]["holds"] for b in (2, 3, 4)] == [True, False, False]
    assert [f[f"mlp_read_mismatches_{b}bit"]["holds"] for b in (2, 3, 4)] == [True, False, False]


TINY = (BenchConfig(hidden=(16, 16, 16), epochs=1, batch_size=32, train_subset=None, test_subset=None),)


def test_run_writes_every_method_and_width(tmp_path):
    root = write_idx_folder(tmp_path / "idx", n_train=120, n_test=40)
    report = run_vertical_bench(tmp_path / "vertical.json", root=root, configs=TINY)
    assert sorted({(r["method"], r["bits"]) for r in report["rows"]}) == sorted(
        (m, b) for m in METHODS for b in (2, 3, 4))
    assert all(0 <= r["accuracy"] <= 1 and r["arch"] == "mlp" for r in report["rows"])
    on_disk = json.loads((tmp_path / "vertical.json").read_text())
    assert on_disk["hardware"] == HARDWARE_NOTE and on_disk["hardware_exports"] == {}
    assert "git" in json.dumps(on_disk["provenance"])
    assert on_disk["configs"][0]["train_images"] == 120 and on_disk["configs"][0]["epochs"] == 1
    assert set(on_disk["seconds"]["mlp"]) == {*METHODS, "total"}
    with pytest.raises(UserError, match="field 'methods'"):
        run_vertical_bench(tmp_path / "x.json", root=root, configs=BenchConfig(methods=("vertical", "bogus")))
    assert not (tmp_path / "x.json").exists()


def test_images_the_vgg_cannot_take_are_refused_before_training(tmp_path):
    """4x4 images fit the MLP but not the VGG (8 pixels at least): refused before the MLP trains."""
    root = write_idx_folder(tmp_path / "idx", n_train=40, n_test=10, side=4)
    with pytest.raises(UserError, match=r"bench vertical: the data folder '.*idx' \(--data-root\) holds images of "
                                        r"shape \(1, 4, 4\); each of its conv nets \(vgg\) needs \(1, H, W\) with H "
                                        r"and W in 8\.\.1024"):
        run_vertical_bench(tmp_path / "out" / "vertical.json", root=root, configs=SMOKE_CONFIGS)
    assert not (tmp_path / "out").exists()


def test_bench_command_prints_rows_budget_and_floors(tmp_path, capsys, monkeypatch):
    root = write_idx_folder(tmp_path / "idx", n_train=120, n_test=40)
    monkeypatch.setattr(vertical_bench, "SMOKE_CONFIGS", TINY)
    (tmp_path / "out").mkdir()
    for name in ("vertical.json", "vertical_floors.json"):  # the full bench's: --smoke writes vertical_smoke*
        (tmp_path / "out" / name).write_text("the full bench's\n")
    code = build.main(["bench", "vertical", "--smoke", "--quiet", "--check", "--data-root", str(root),
                       "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert all((tmp_path / "out" / name).read_text() == "the full bench's\n"
               for name in ("vertical.json", "vertical_floors.json"))
    assert (tmp_path / "out" / "vertical_smoke_hw" / "mlp").is_dir()
    floors_file = json.loads((tmp_path / "out" / "vertical_smoke_floors.json").read_text())
    holds = all(e["holds"] for e in floors_file["floors"].values())
    assert code == (0 if holds else 1)
    assert "no-compensation" in out and "budget mlp: 120 training images" in out
    # The hardware rows: the trained vertical MLP on the array's RTL (Icarus under --smoke) at every width.
    assert "cycles/img" in out and "mlp_rtl_mismatches_2bit" in floors_file["floors"]
    report = json.loads((tmp_path / "out" / "vertical_smoke.json").read_text())
    assert [(r["arch"], r["bits"], r["rtl_images"], r["rtl_mismatches"], r["read_mismatches"])
            for r in report["hardware"]] == [("mlp", b, 2, 0, 0) for b in (2, 3, 4)]
    assert "git" in json.dumps(floors_file)
