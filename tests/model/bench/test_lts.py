"""``bench lts`` floors (model/bench/lts.py) on hand-written rows."""

import pytest
import torch

from model.bench.lts import floors, run_lts_bench
from model.errors import UserError
from tests.idx_files import write_idx_folder


def _rows(lts_accuracy=0.8820, wgs=0.53, ratio=0.78, total=0.93):
    return [
        {"bits": 2, "mode": "baseline", "accuracy": 0.8804, "avg_wgs": 0.0, "backward_time_ratio": 1.0,
         "total_time_ratio": 1.0},
        {"bits": 2, "mode": "lts", "accuracy": lts_accuracy, "avg_wgs": wgs, "backward_time_ratio": ratio,
         "total_time_ratio": total},
        {"bits": 3, "mode": "baseline", "accuracy": 0.8909, "avg_wgs": 0.0, "backward_time_ratio": 1.0,
         "total_time_ratio": 1.0},
        {"bits": 3, "mode": "lts", "accuracy": 0.8900, "avg_wgs": 0.58, "backward_time_ratio": 0.74,
         "total_time_ratio": 0.9},
    ]


def test_floors_hold_on_the_readme_figures():
    f = floors(_rows())
    assert list(f) == ["accuracy_vs_qat_pp_2bit", "avg_wgs_2bit", "backward_time_ratio_2bit", "total_time_ratio_2bit",
                       "accuracy_vs_qat_pp_3bit", "avg_wgs_3bit", "backward_time_ratio_3bit", "total_time_ratio_3bit"]
    assert f["accuracy_vs_qat_pp_2bit"] == {"value": pytest.approx(0.16), "floor": -0.2, "op": ">=", "holds": True}
    assert f["accuracy_vs_qat_pp_3bit"]["value"] == pytest.approx(-0.09)
    assert f["avg_wgs_3bit"] == {"value": 0.58, "floor": 0.5, "op": ">=", "holds": True}
    assert f["backward_time_ratio_2bit"] == {"value": 0.78, "floor": 0.9, "op": "<=", "holds": True}
    assert f["total_time_ratio_2bit"] == {"value": 0.93, "floor": 1.0, "op": "<", "holds": True}
    assert all(e["holds"] for e in f.values())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"lts_accuracy": 0.8780}, "accuracy_vs_qat_pp_2bit"), ({"wgs": 0.45}, "avg_wgs_2bit"),
     ({"ratio": 0.95}, "backward_time_ratio_2bit"), ({"total": 1.0}, "total_time_ratio_2bit")],
)
def test_each_floor_fails_alone(kwargs, name):
    f = floors(_rows(**kwargs))
    assert [n for n, e in f.items() if not e["holds"]] == [name]


def test_a_width_without_its_plain_qat_row_is_unmeasured():
    f = floors(_rows()[1:])
    assert f["accuracy_vs_qat_pp_2bit"] == {"value": None, "floor": -0.2, "op": ">=", "holds": False}


def test_rows_of_an_older_bench_without_total_time_fail_that_floor_only():
    rows = [{k: v for k, v in r.items() if k != "total_time_ratio"} for r in _rows()]
    f = floors(rows)
    assert f["total_time_ratio_2bit"] == {"value": None, "floor": 1.0, "op": "<", "holds": False}
    assert [n for n, e in f.items() if not e["holds"]] == ["total_time_ratio_2bit", "total_time_ratio_3bit"]



def test_bench_averages_one_pair_per_seed(tmp_path, monkeypatch):
    """Each width trains a plain-QAT / LTS pair per seed (same seed for both modes); accuracy is the mean of
    the seeds' accuracies (kept in the row), the time ratios are ratios of the summed times."""
    import gzip

    import model.bench.lts as bench
    from model.errors import UserError
    from model.methods.lts import LTSTraining

    assert bench.SEEDS == (0, 1, 2, 3)
    root = tmp_path / "d"
    root.mkdir()
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        header = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        pixels = torch.randint(0, 256, (n * 784,), generator=gen, dtype=torch.uint8).numpy().tobytes()
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + pixels))
        labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    made = []

    def spy(*args, **kwargs):
        run = LTSTraining(*args, **kwargs)
        made.append((args[3], kwargs["mode"], kwargs["seed"], run))
        return run

    monkeypatch.setattr(bench, "LTSTraining", spy)
    rows = bench.run_lts_bench(tmp_path / "lts.json", epochs=3, warmup=1, bits_list=(2,), root=root,
                               progress=False, seeds=(0, 1))
    assert [m[:3] for m in made] == [(2, "baseline", 0), (2, "lts", 0), (2, "baseline", 1), (2, "lts", 1)]
    runs = {(mode, seed): run.result for _, mode, seed, run in made}
    lts = rows[1]
    assert lts["seeds"] == [0, 1] and lts["accuracies"] == [runs["lts", 0].accuracy, runs["lts", 1].accuracy]
    assert lts["accuracy"] == pytest.approx(sum(lts["accuracies"]) / 2)
    assert lts["avg_wgs"] == pytest.approx((runs["lts", 0].avg_wgs + runs["lts", 1].avg_wgs) / 2)
    base_total = runs["baseline", 0].train_time + runs["baseline", 1].train_time
    assert lts["total_time_ratio"] == pytest.approx((runs["lts", 0].train_time + runs["lts", 1].train_time)
                                                    / base_total)
    assert rows[0]["total_time_ratio"] == pytest.approx(1.0)
    gaps = [100 * (runs["lts", s].accuracy - runs["baseline", s].accuracy) for s in (0, 1)]
    assert lts["gaps_pp"] == pytest.approx(gaps)
    assert lts["gap_stderr_pp"] == pytest.approx(abs(gaps[0] - gaps[1]) / 2)
    assert "gaps_pp" not in rows[0]
    assert bench._stderr([0.1]) is None
    assert bench._stderr([1.0, 2.0, 4.0, 5.0]) == pytest.approx((10 / 3 / 4) ** 0.5)
    with pytest.raises(UserError, match="'seeds'"):
        bench.run_lts_bench(tmp_path / "x.json", seeds=(), bits_list=(2,), root=root, progress=False)


def _refused_before_training(tmp_path, root, match: str) -> None:
    """``run_lts_bench`` on ``root`` raises a UserError matching ``match`` and writes nothing."""
    with pytest.raises(UserError, match=match):
        run_lts_bench(tmp_path / "out" / "lts.json", epochs=1, warmup=0, bits_list=(2,), seeds=(0,), root=root,
                      progress=False)
    assert not (tmp_path / "out").exists()


def test_images_the_mlp_cannot_take_are_refused_before_training(tmp_path):
    """8x8 images (64 pixels) for the 784-input MLP: a UserError naming the folder, the shape found and the shapes
    allowed, before anything trains or is written (not torch's shape error from the first forward pass)."""
    root = write_idx_folder(tmp_path / "idx", n_train=20, n_test=10, side=8)
    _refused_before_training(tmp_path, root, r"bench lts: the data folder '.*idx' \(--data-root\) holds images of "
                                             r"shape \(1, 8, 8\); its 784-256-256-10 MLP needs \(1, H, W\) with H \* W "
                                             r"= 784")


def test_labels_past_the_mlps_ten_classes_are_refused_before_training(tmp_path):
    """12 classes of 28 x 28 images (an EMNIST-like folder) for the 10-output MLP: a UserError naming the folder and
    the allowed labels, before anything trains or is written (not torch's index error from the first batch)."""
    root = write_idx_folder(tmp_path / "idx", n_train=24, n_test=12, n_classes=12)
    _refused_before_training(tmp_path, root, r"bench lts: --data-root .*idx: its labels reach 11; the bench's "
                                             r"784-256-256-10 MLP has 10 classes: allowed labels 0\.\.9")
