"""The benchmark's protocol (benchmarks/bench.py): interleaved rounds, medians with their spreads, and
"no difference" where the spreads overlap; its results file keeps the rows of the parts not rerun."""

import importlib.util
import json

import pytest

from helpers import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_interleave_with_the_order_rotated_and_the_warm_up_dropped(bench):
    calls = []
    contenders = {name: (lambda name=name: calls.append(name) or float(len(calls))) for name in "abc"}
    samples = bench.interleaved(contenders, trials=3)
    assert calls == list("abc" "bca" "cab" "abc")  # round 0 is the warm-up
    assert samples == {"a": [6.0, 8.0, 10.0], "b": [4.0, 9.0, 11.0], "c": [5.0, 7.0, 12.0]}


@pytest.mark.parametrize("ours, baseline, expected", [
    ([1.0, 1.1, 1.2], [2.0, 2.5, 3.0], "logitlab faster"),
    ([2.0, 2.5, 3.0], [1.0, 1.1, 1.2], "baseline faster"),
    ([1.0, 1.1, 2.1], [2.0, 2.5, 3.0], "no difference"),  # one slow trial of ours reaches the baseline's fastest
])
def test_overlapping_spreads_are_no_difference(bench, ours, baseline, expected):
    assert bench.verdict(ours, baseline) == expected


def test_a_row_gives_the_medians_their_spreads_and_their_ratio(bench):
    row = bench.compare("x", [3.0, 1.0, 2.0, 9.0, 2.5], [4.0, 6.0, 5.0, 5.5, 4.5], gflop=1.5)
    assert (row["logitlab_s"], row["logitlab_min_s"], row["logitlab_max_s"]) == (2.5, 1.0, 9.0)
    assert (row["baseline_s"], row["baseline_min_s"], row["baseline_max_s"]) == (5.0, 4.0, 6.0)
    assert row["ratio"] == 2.0 and row["trials"] == 5 and row["gflop"] == 1.5
    assert row["verdict"] == "no difference"  # 9.0 s, one of ours, is slower than the baseline's slowest
    for field in ("name", "logitlab_s", "baseline_s", "ratio", "trials", "logitlab_min_s", "logitlab_max_s",
                  "baseline_min_s", "baseline_max_s", "gflop", "peak_fraction"):
        assert field in row, field
    alone = bench.compare("y", [1.0], None)
    assert alone["ratio"] is None and alone["verdict"] is None and alone["trials"] == 1


def test_rerunning_some_parts_keeps_the_others_rows(bench, tmp_path):
    out = tmp_path / "results.json"
    first = bench.merged(out, bench.PARTS, [{"part": p, "name": p} for p in bench.PARTS], {"date": "1"})
    out.write_text(json.dumps(first))
    again = bench.merged(out, ["pipeline"], [{"part": "pipeline", "name": "pipeline, against base"}], {"date": "2"})
    assert [r["name"] for r in again["results"]] == ["training", "tracking", "sweep", "pipeline, against base"]
    assert again["runs"]["training"] == {"date": "1"} and again["runs"]["pipeline"] == {"date": "2"}
    out.write_text("{not json")
    assert bench.merged(out, ["sweep"], [{"part": "sweep", "name": "s"}], {})["results"] == [{"part": "sweep", "name": "s"}]
