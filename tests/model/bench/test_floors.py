"""Bench floors (model/bench/floors.py): entries, the --check exit code, printing and the sibling file."""

import json
import math

import pytest

from model.bench.floors import exit_code, failed, floor_entry, floors_path, format_floors, points, write_floors


@pytest.mark.parametrize(
    ("value", "bound", "op", "holds"),
    [
        (0.5, 0.5, ">=", True), (0.49, 0.5, ">=", False), (0.5, 0.5, ">", False), (0.51, 0.5, ">", True),
        (0.9, 0.9, "<=", True), (0.91, 0.9, "<=", False), (0.9, 0.9, "<", False), (0, 0, "==", True),
        (1, 0, "==", False), (None, 0.5, ">=", False), (math.nan, 0.5, "<=", False),
    ],
)
def test_floor_entry(value, bound, op, holds):
    assert floor_entry(value, bound, op) == {"value": value, "floor": bound, "op": op, "holds": holds}


@pytest.mark.parametrize(("right_a", "right_b", "n", "want"), [(4155, 4105, 5000, 1.0), (8613, 8641, 10000, -0.28),
                                                             (7665, 7655, 2000, 0.5), (100, 100, 360, 0.0)])
def test_points_are_whole_images_in_percentage_points(right_a, right_b, n, want):
    """Accuracy differences as the benches' floors read them: exact to the test set's resolution, so that a
    difference of exactly a floor meets it (``100 * (0.831 - 0.821)`` alone is 1.0000000000000009)."""
    assert points(right_a / n, right_b / n) == want
    assert floor_entry(points(right_a / n, right_b / n), want, "<=")["holds"]
    assert floor_entry(points(right_a / n, right_b / n), want, ">=")["holds"]


def test_floor_entry_rejects_an_unknown_comparison():
    with pytest.raises(ValueError, match="op '=>'"):
        floor_entry(1.0, 0.0, "=>")


def test_exit_code_and_failed():
    good = {"a": floor_entry(1.0, 0.0), "b": floor_entry(0.2, 0.9, "<=")}
    bad = {**good, "c": floor_entry(None, 4.0, "<=")}
    assert failed(good) == [] and failed(bad) == ["c"]
    assert exit_code(good, check=True) == 0
    assert exit_code(bad, check=True) == 1
    assert exit_code(bad, check=False) == 0


def test_format_floors_names_the_failing_ones():
    text = format_floors({"ticket_minus_float_pp": floor_entry(-0.7, -0.5), "avg_wgs_2bit": floor_entry(0.6, 0.5)})
    lines = text.splitlines()
    assert lines[1].split() == ["ticket_minus_float_pp", "-0.7", ">=", "-0.5", "FAILS"]
    assert lines[2].split() == ["avg_wgs_2bit", "0.6", ">=", "0.5", "ok"]
    assert lines[3].strip() == "1 of 2 floors hold; failing: ticket_minus_float_pp"
    assert "not measured" in format_floors({"x": floor_entry(None, 1)})


def test_floors_go_beside_a_list_of_rows(tmp_path):
    assert floors_path(tmp_path / "dsp.json") == tmp_path / "dsp_floors.json"
    entries = {"x": floor_entry(1, 0)}
    recorded = {"revision": "git:abc", "torch": "2.x"}
    assert write_floors(tmp_path / "lts.json", entries, recorded) == tmp_path / "lts_floors.json"
    assert json.loads((tmp_path / "lts_floors.json").read_text()) == {"floors": entries, "provenance": recorded}
