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


def test_long_parts_keep_each_rounds_pair_and_its_ratio_in_the_order_run(bench):
    """A machine that slowed down between rounds: the medians' ratio mixes the rounds, each round's own
    ratio does not."""
    row = bench.compare("pipeline: x", [80.0, 120.0], [130.0, 190.0], rounds=bench.rounds([80.0, 120.0], [130.0, 190.0]))
    assert [(r["logitlab_s"], r["baseline_s"]) for r in row["rounds"]] == [(80.0, 130.0), (120.0, 190.0)]
    assert [round(r["ratio"], 4) for r in row["rounds"]] == [1.625, 1.5833]
    assert "80.0 s against 130.0 s (1.62); 120.0 s against 190.0 s (1.58)" in bench.details([row], {"matmul": 1e9,
                                                                                               "attainable": 1e9})


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
    assert [r["name"] for r in again["results"]] == ["training", "tracking", "pictures", "sweep",
                                                     "pipeline, against base", "study"]
    assert again["runs"]["training"] == {"date": "1"} and again["runs"]["pipeline"] == {"date": "2"}
    out.write_text("{not json")
    assert bench.merged(out, ["sweep"], [{"part": "sweep", "name": "s"}], {})["results"] == [{"part": "sweep", "name": "s"}]


def _job(start_s: float, seconds: float, rss_mb: float):
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(start_time=int(start_s * 1000), end_time=int((start_s + seconds) * 1000),
                                                status="FINISHED"),
                           data=SimpleNamespace(metrics={"rss_mb": rss_mb, "peak_rss_mb": rss_mb + 10}))


def test_the_load_row_sets_the_last_ten_jobs_against_those_around_job_10(bench):
    # jobs of 2 s with 0.5 s between them; the last ten take 3 s; memory grows 1 MiB a job from 500
    jobs, start = [], 0.0
    for k in range(1, 101):
        seconds = 3.0 if k > 90 else 2.0
        jobs.append(_job(start, seconds, 499.0 + k))
        start += seconds + 0.5
    row = bench.load(jobs)
    assert row["baseline_s"] == 2.5 and row["logitlab_s"] == 3.5  # run and wait, the last one's wait the median
    assert row["rss_job10_mb"] == 509 and row["rss_job100_mb"] == 599 and row["rss_growth"] == pytest.approx(90 / 509)
    assert row["peak_rss_mb"] == 609 and row["met"] is False  # 3.5 / 2.5 = 1.4x the early jobs' time
    flat = bench.load([_job(2.5 * k, 2.0, 500.0) for k in range(100)])
    assert flat["met"] is True and flat["verdict"] == "no difference" and flat["rss_growth"] == 0
    with pytest.raises(SystemExit, match="needs 100 jobs"):
        bench.load(jobs[:50])


@pytest.mark.parametrize("trainer", ["fit", "gradient_tape"])
def test_the_training_rows_contenders_train_the_same_model_for_the_same_epochs(bench, trainer):
    """logitlab's trainer (as the train stage runs it) and Keras fit, each timed at every epoch's end."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = {"x_train": rng.normal(size=(96, 2)).astype(np.float32), "y_train": np.arange(96) % 4}
    cfg = bench.train_config("blobs", [8], 16, 3, f"trainer={trainer}")
    ours, model = bench.logitlab_fit(cfg, data)
    keras_clock, keras_model = bench.keras_fit(cfg, data)
    assert len(ours.ends) == len(keras_clock.ends) == 3
    assert ours.steady_epoch() > 0 and keras_clock.steady_epoch() > 0
    assert [w.shape for w in model.get_weights()] == [w.shape for w in keras_model.get_weights()]


@pytest.mark.slow  # four train jobs
def test_the_tracking_rows_time_a_tracked_train_job_against_the_same_job_untracked(bench, tmp_path, monkeypatch):
    from helpers import tiny_blobs

    data = tiny_blobs(tmp_path)
    monkeypatch.setattr(bench, "TRACKING", [("tiny blobs", [*data, "trainer.epochs=2"], 0.05, 2)])
    [row] = bench.tracking_overhead(tmp_path / "work", trials=1)
    assert row["trials"] == 2 and row["logitlab_s"] > 0 and row["baseline_s"] > 0, "the row's own rounds, at least"
    assert row["added_min_s"] <= row["added_s"] <= row["added_max_s"]
    assert row["met"] == (row["added_s"] <= bench.TRACKING_ADDED_S and row["overhead_fraction"] <= 0.05)


def test_what_tracking_adds_is_taken_round_by_round(bench):
    """Each round's difference, not the medians': here the rounds add 1.0, -0.5 and 1.0 s (the
    baseline's second job hit a slow moment), the medians are both 2.0 s."""
    added = bench.paired([1.5, 2.0, 3.0], [0.5, 2.5, 2.0])
    assert added["added_s"] == pytest.approx(1.0)
    assert (added["added_min_s"], added["added_max_s"]) == (pytest.approx(-0.5), pytest.approx(1.0))
    assert added["overhead_fraction"] == pytest.approx(0.5)  # the rounds' +200%, -20%, +50%


def test_the_pictures_part_times_both_figures_at_both_sizes(bench):
    rows = bench.pictures(trials=1)
    assert [r["trials"] for r in rows] == [4, 4]
    assert "mnist" in rows[0]["name"] and "blobs" in rows[1]["name"]
    for row in rows:
        assert 0 < row["logitlab_min_s"] <= row["logitlab_s"] <= row["logitlab_max_s"] and row["baseline_s"] > 0
        assert row["met"] == (row["logitlab_s"] <= bench.RUN_FIGURE_TARGET_S)


@pytest.mark.slow  # the loop in a process of its own
def test_the_sweeps_baseline_loop_logs_a_run_per_job_with_autolog(tmp_path):
    """benchmarks/autolog_loop.py, small: a run per seed with autolog's params and per-epoch metrics
    and the test metrics, and no model."""
    import subprocess

    import mlflow
    import numpy as np

    from helpers import PYTHON, subprocess_env

    rng = np.random.default_rng(0)
    data = tmp_path / "blobs.npz"
    np.savez(data, x_train=rng.normal(size=(60, 2)).astype(np.float32), y_train=rng.integers(0, 4, 60),
             x_test=rng.normal(size=(20, 2)).astype(np.float32), y_test=rng.integers(0, 4, 20))
    uri = f"sqlite:///{tmp_path / 'loop.db'}"
    subprocess.run([PYTHON, str(ROOT / "benchmarks" / "autolog_loop.py"), "--jobs", "2", "--epochs", "2",
                    "--data", str(data), "--store", uri], check=True, env=subprocess_env(), timeout=300,
                   cwd=tmp_path)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("autolog-loop")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in found) == ["seed-0", "seed-1"]
    for r in found:
        assert {"epochs", "batch_size"} <= set(r.data.params), "autolog's params"
        assert {"loss", "val_loss", "test_loss", "test_accuracy"} <= set(r.data.metrics)
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 2, "one point per epoch"
        assert not client.search_logged_models([experiment.experiment_id]), "models not logged"
