"""``bench lts`` floors (model/bench/lts.py) on hand-written rows."""

import pytest

from model.bench.lts import floors


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
