"""A malformed run history is named field by field by `build.py report` (model/runs/report.py), and the report's
output names are checked before anything is written."""

import json
import re

import pytest

import build
from model.errors import UserError
from model.runs.report import load_summary, write_report
from tests.model.runs.test_report import make_run


def set_field(path: list, value):
    """A change to the history JSON: ``path`` (keys and indices) set to ``value``, or removed for ``...``."""

    def change(data):
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if value is ...:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return data

    return change


#: (change to a good history, what the message must say: the field with its record index and what is allowed)
MALFORMED = {
    "avg_bits not a number": (set_field(["history", 0, "avg_bits"], "x"),
                              "history[0]: field 'avg_bits' is 'x'; allowed a number in [0, 32]"),
    "accuracy null": (set_field(["history", 1, "accuracy"], None),
                      "history[1]: field 'accuracy' is null; allowed a number in [0, 1]"),
    "accuracy true": (set_field(["history", 0, "accuracy"], True),
                      "history[0]: field 'accuracy' is true; allowed a number in [0, 1]"),
    "iteration missing": (set_field(["history", 1, "iteration"], ...),
                          "history[1]: field 'iteration' is missing; allowed an integer >= 0"),
    "iteration not an integer": (set_field(["history", 0, "iteration"], 1.5),
                                 "history[0]: field 'iteration' is 1.5; allowed an integer >= 0"),
    "width not an integer": (set_field(["history", 0, "width_counts"], {"a": 1}),
                             "history[0]: field 'width_counts' is {'a': 1}; expected an object {width: count}"),
    "width a superscript digit": (set_field(["history", 0, "width_counts"], {"\u00b2": 1}),
                                  "history[0]: field 'width_counts' is {'\u00b2': 1}; expected an object {width: count}"),
    "record a string": (set_field(["history", 1], "x"), "history[1]: an iteration record is 'x'; expected an object"),
    "history null": (set_field(["history"], None),
                     "field 'history' is null; allowed a non-empty list of iteration records"),
    "history empty": (set_field(["history"], []),
                      "field 'history' is []; allowed a non-empty list of iteration records"),
    "history missing": (set_field(["history"], ...), "field 'history' is missing; allowed a non-empty list"),
    "finished not a bool": (set_field(["finished"], "yes"), "field 'finished' is 'yes'; allowed true or false"),
    "float accuracy a string": (set_field(["float_accuracy"], "x"),
                                "field 'float_accuracy' is 'x'; allowed null or a number in [0, 1]"),
    "a width no hierarchy has": (set_field(["history", 0, "width_counts"], {"3": 5}),
                                 "history[0]: field 'width_counts' names width 3; allowed widths 0, 1, 2, 4, 8, 16, 32"),
    "avg_bits not the counts' mean": (set_field(["history", 0, "width_counts"], {"32": 5, "0": 5}),
                                      "history[0]: field 'avg_bits' is 32.0 but 'width_counts' average 16 bits"),
    "counts of another network": (lambda data: set_field(["history", 1, "width_counts"], {"32": 5, "0": 3})(
        set_field(["history", 0, "width_counts"], {"32": 10})(data)),
        "history[1]: field 'width_counts' counts 8 weights, history[0] 10; every iteration counts the same weights"),
    "iteration repeated": (set_field(["history", 1, "iteration"], 0),
                           "history[1]: field 'iteration' is 0, not after history[0]'s 0"),
    "not an object": (lambda data: "x", "the file holds 'x'; expected a JSON object with 'history'"),
    "an array": (lambda data: [data], "the file holds an array; expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_history_names_the_field(tmp_path, capsys, case):
    change, message = MALFORMED[case]
    run = make_run(tmp_path / "run", "imq", [(32, 0.9), (20, 0.91)], float_accuracy=0.92)
    path = run / "imq_history.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(UserError, match=f"^{re.escape(f'{path}: malformed run history: {message}')}"):
        load_summary(run)
    out = tmp_path / "report"
    assert build.main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: malformed run history: ") and err.count("\n") == 1
    assert not out.exists()


def test_good_history_still_reads(tmp_path):
    run = make_run(tmp_path / "run", "imq", [(32, 0.9), (20, 0.91)], float_accuracy=0.92)
    summary = load_summary(run)
    assert [(r.iteration, r.avg_bits, r.accuracy) for r in summary.history] == [(0, 32.0, 0.9), (1, 20.0, 0.91)]
    assert summary.float_accuracy == 0.92 and summary.finished


@pytest.mark.parametrize("name", ["report.png", "report.md", "report.json"])
def test_report_refuses_a_folder_where_it_writes_a_file(tmp_path, capsys, name):
    run = make_run(tmp_path / "run", "imq", [(32, 0.9), (20, 0.91)])
    out = tmp_path / "report"
    (out / name).mkdir(parents=True)
    with pytest.raises(UserError, match=re.escape(f"{out / name}: is not a file; the report writes its {name} there")):
        write_report([run], out)
    assert build.main(["report", str(run), "--out", str(out)]) == 2
    assert f"error: {out / name}: is not a file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written, no temporary file left
