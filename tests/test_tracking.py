"""One variant, one process, one MLflow run: training, evaluation and the stage's files together."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from types import SimpleNamespace

from helpers import ROOT
from logitlab.stages.data import fetch, preprocess
from logitlab.schema import TrackingConf, compose
from logitlab.stages.job import Job
from logitlab.errors import redact_text
from logitlab.tracking.store import setup, tracking_uri

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
TEST_METRICS = ("test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max")


def tiny_blobs_cfg(tmp, *extra):
    return compose(ROOT, [
        "dataset=blobs", "model.head=logit", "trainer.epochs=3", "datasets.blobs.fetch.n_samples=200",
        "evaluate.n_examples=3", f"paths.raw={tmp / 'raw'}", f"paths.processed={tmp / 'processed'}",
        f"tracking.uri='sqlite:///{tmp / 'store' / 'mlflow.db'}'", *extra,
    ])


def job(directory: Path, **kw) -> Job:
    return Job(multirun=kw.get("multirun", False), num=kw.get("num", 0), overrides=kw.get("overrides", []),
               dir=directory, sweep_dir=directory.parent)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import mlflow

    from logitlab.stages.train import Files, train

    tmp = tmp_path_factory.mktemp("tracking")
    (tmp / "store").mkdir()
    cfg = tiny_blobs_cfg(tmp)
    fetch(cfg, ROOT)
    preprocess(cfg, ROOT)
    objective = train(cfg, ROOT, job(tmp / "job"))
    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, ROOT))
    [run] = client.search_runs([client.get_experiment_by_name("logitlab").experiment_id])
    files = Files.of(cfg, ROOT, tmp / "job")
    return SimpleNamespace(cfg=cfg, tmp=tmp, run_id=run.info.run_id, objective=objective, files=files,
                           metrics=json.loads(files.metrics.read_text()), client=client)


def test_every_epoch_metric_is_logged_per_epoch(trained):
    for name in EPOCH_METRICS:
        history = trained.client.get_metric_history(trained.run_id, name)
        assert [m.step for m in history] == [0, 1, 2], name
    losses = [m.value for m in trained.client.get_metric_history(trained.run_id, "loss")]
    assert losses[-1] < losses[0]
    [val] = trained.client.get_metric_history(trained.run_id, "val_loss")[-1:]
    assert trained.objective == pytest.approx(val.value), "train returns the last epoch's validation loss"
    [seconds] = trained.client.get_metric_history(trained.run_id, "train_seconds")
    assert 0 < seconds.value < 120, "the training's own time, for sweeps to weigh their overhead against"


def test_config_is_logged_as_params_with_dataset_and_head_tags(trained):
    run = trained.client.get_run(trained.run_id)
    assert run.data.params["dataset.name"] == "blobs"
    assert run.data.params["optimizer.lr"] == "0.001"
    assert run.data.params["trainer.epochs"] == "3"
    assert run.data.params["model.layers"] == "[25, 15]"
    assert run.data.tags["dataset"] == "blobs" and run.data.tags["head"] == "logit"
    assert run.data.tags["task"] == "multiclass" and run.data.tags["trainer"] == "fit"
    assert run.data.tags["logitlab.variant"] == "blobs-logit"
    assert run.info.run_name == "blobs-logit" and run.info.status == "FINISHED"


def test_evaluation_lands_in_the_training_run(trained):
    run = trained.client.get_run(trained.run_id)
    for name in TEST_METRICS:
        assert run.data.metrics[name] == pytest.approx(trained.metrics[name]), name
    m = trained.metrics
    assert 0.0 <= m["prob_min"] <= m["prob_max"] <= 1.0
    assert m["output_min"] < 0 < m["output_max"], "a logit head outputs raw logits, not probabilities"
    assert 0.25 < m["test_accuracy"] <= 1.0
    assert run.data.tags["numerics.train_loss_path"] == "logits"


def test_the_run_is_opened_once_and_lasts_as_long_as_the_variant(trained):
    [run] = trained.client.search_runs([trained.client.get_experiment_by_name("logitlab").experiment_id])
    assert run.info.run_id == trained.run_id
    [seconds] = trained.client.get_metric_history(trained.run_id, "train_seconds")
    duration = (run.info.end_time - run.info.start_time) / 1000
    assert seconds.value <= duration < seconds.value + 60, "start to end: training, evaluation and files, no wait"


def test_the_run_records_the_memory_its_process_used(trained):
    """rss_mb and peak_rss_mb, in MiB: what a SLURM job's mem_gb must cover. The stage ran in this
    process, whose high-water mark can only have risen since. Linux counts a process's resident pages
    per thread and folds them in every 64 pages, so two readings of one high-water mark may differ by
    a little: seen here, the run's VmHWM 0.16 MiB above a later getrusage (TensorFlow's threads)."""
    import resource

    metrics = trained.client.get_run(trained.run_id).data.metrics
    peak_now_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert 0 < metrics["rss_mb"] <= metrics["peak_rss_mb"] <= peak_now_mb + 4
    assert metrics["peak_rss_mb"] > 0.5 * peak_now_mb, "MiB, not KiB or bytes"


def test_a_process_that_exits_mid_run_ends_it_killed(tmp_path):
    """submitit leaves a job with sys.exit once it has requeued it (SLURM's timeout or preemption
    signal): the run is KILLED, to be resumed, not FAILED."""
    import mlflow

    from logitlab.tracking.runs import tracked_run

    (tmp_path / "store").mkdir()
    cfg = tiny_blobs_cfg(tmp_path)
    with pytest.raises(SystemExit), tracked_run(cfg.tracking, ROOT, found_by="train", run_name="requeued") as run:
        raise SystemExit(-1)
    ended = mlflow.MlflowClient(tracking_uri(cfg.tracking, ROOT)).get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["logitlab.status_reason"] == "the process exited (code -1) during train"


@pytest.mark.parametrize("value", ["0.5", "-1", "soon"])
def test_a_buffering_time_mlflow_cannot_use_fails_before_the_run_starts(tmp_path, monkeypatch, value):
    """MLflow's writer thread reads MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS as an int: "0.5" killed
    the thread and the run's first flush then waited forever; -1 spins it. One line naming the value
    and the valid ones, before any run exists."""
    import mlflow

    from logitlab.errors import UserError
    from logitlab.tracking.runs import tracked_run

    (tmp_path / "store").mkdir()
    cfg = tiny_blobs_cfg(tmp_path)
    setup(cfg.tracking, ROOT)  # the store and experiment exist: only the run is at stake
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", value)
    with pytest.raises(UserError) as error, tracked_run(cfg.tracking, ROOT, found_by="train", run_name="never"):
        pass
    assert str(error.value).startswith(f"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS={value!r} is not a whole number")
    assert "0, 1, 2" in str(error.value) and "\n" not in str(error.value)
    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, ROOT))
    assert client.search_runs([client.get_experiment_by_name("logitlab").experiment_id]) == []


def test_whole_seconds_of_buffering_are_the_users_choice(monkeypatch):
    from logitlab.tracking.runs import async_buffering

    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")
    assert async_buffering() == 2 and os.environ["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] == "2"
    monkeypatch.delenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS")
    assert async_buffering() == 1, "unset: logitlab's default, which spares the writer's 1 s queue timeout"


def test_the_stage_files_hold_what_the_run_holds(trained, tmp_path):
    files = trained.files
    local = trained.client.download_artifacts(trained.run_id, "predictions.json", str(tmp_path))
    logged = json.loads(open(local).read())
    assert logged == json.loads(files.predictions.read_text())
    assert logged["head"] == "logit" and logged["variant"] == "blobs-logit" and len(logged["examples"]) == 3
    assert logged["stage"] == "train@blobs-logit" and logged["params"]["optimizer.lr"] == "0.001"
    for ex in logged["examples"]:
        assert len(ex["outputs"]) == 4 and ex["argmax"] == max(range(4), key=ex["outputs"].__getitem__)
        assert sum(ex["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    rows = [line.split("\t") for line in files.history.read_text().splitlines()]
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    losses = [m.value for m in trained.client.get_metric_history(trained.run_id, "loss")]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(losses), "the history file is the run's epoch metrics"
    with np.load(files.model_dir / "outputs.npz") as npz:
        assert npz["outputs"].shape == (40, 4) and npz["labels"].shape == (40,)
    artifacts = {a.path for a in trained.client.list_artifacts(trained.run_id)}
    assert {"outputs.npz", "predictions.json"} <= artifacts, "the model is the run's logged model, not an artifact"
    artifact_uri = trained.client.get_run(trained.run_id).info.artifact_uri
    assert artifact_uri.startswith((trained.tmp / "store" / "mlartifacts").as_uri()), "artifacts live beside the store"


def test_pipeline_layout_names_the_files_after_the_variant(tmp_path):
    from logitlab.stages.train import Files

    cfg = compose(ROOT, ["dataset=blobs", "task=binary", "model.head=sigmoid", "layout=pipeline",
                         f"paths.models={tmp_path / 'm'}"])
    files = Files.of(cfg, ROOT, tmp_path / "job")
    assert files.model_dir == tmp_path / "m" / "blobs-binary-sigmoid"
    assert files.metrics == ROOT / "metrics" / "blobs-binary-sigmoid.json"
    assert files.history == ROOT / "history" / "blobs-binary-sigmoid.tsv"


def test_default_store_is_at_the_project_root_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(TrackingConf(uri=None), ROOT) == f"sqlite:///{ROOT / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(TrackingConf(uri=None), ROOT) == "http://127.0.0.1:5999"
    assert tracking_uri(TrackingConf(uri="sqlite:////x/y.db"), ROOT) == "sqlite:////x/y.db"


def test_redact_hides_passwords():
    assert redact_text("postgresql://bob:s3cret@db:5432/ml") == "postgresql://bob:***@db:5432/ml"
    assert redact_text("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_setup_leaves_the_users_environment_alone(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    setup(TrackingConf(uri=f"sqlite:///{tmp_path / 'a.db'}"), ROOT)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    setup(TrackingConf(uri=f"sqlite:///{tmp_path / 'a.db'}"), ROOT)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"


def test_outputs_hold_the_decision_grid_the_report_draws(trained):
    import keras

    with np.load(trained.files.model_dir / "outputs.npz") as npz:
        g0, g1, classes = npz["grid_x0"], npz["grid_x1"], npz["grid_class"]
    assert classes.shape == (len(g1), len(g0)) == (200, 200)
    model = keras.models.load_model(trained.files.model_dir / "model.keras")
    for i, j in ((10, 20), (100, 100), (190, 150), (37, 180)):
        point = np.array([[g0[j], g1[i]]], np.float32)
        assert classes[i, j] == model.predict(point, verbose=0).argmax(), (i, j)
    assert set(np.unique(classes)) == {0, 1, 2, 3}, "every blob's class has its region"


def test_the_model_is_a_logged_model_with_the_test_metrics_on_the_test_set(trained):
    import hashlib

    run = trained.client.get_run(trained.run_id)
    [output] = run.outputs.model_outputs
    model = trained.client.get_logged_model(output.model_id)
    assert model.source_run_id == trained.run_id and model.name == "blobs-logit"
    assert model.tags["head"] == "logit" and model.tags["logitlab.variant"] == "blobs-logit"
    assert output.step == 2, "the model after the last (third) epoch"
    linked = {m.key: m for m in model.metrics}
    for name in TEST_METRICS:
        assert linked[name].value == pytest.approx(trained.metrics[name]), name
        assert linked[name].dataset_name == "blobs-test", name
    assert linked["loss"].value == pytest.approx(trained.client.get_metric_history(trained.run_id, "loss")[-1].value)
    processed = trained.cfg.path(ROOT, "processed")
    md5 = hashlib.md5(processed.read_bytes()).hexdigest()  # what DVC records for the processed file
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["blobs-test", "blobs-train"]
    for name, context in (("blobs-train", "training"), ("blobs-test", "evaluation")):
        dataset = inputs[name].dataset
        assert dataset.digest == md5 and json.loads(dataset.source)["uri"] == processed.resolve().as_uri()
        assert [t.value for t in inputs[name].tags if t.key == "mlflow.data.context"] == [context]
    assert linked["test_loss"].dataset_digest == md5
    found = trained.client.search_logged_models(experiment_ids=[run.info.experiment_id], order_by=[
        {"field_name": "metrics.test_loss", "ascending": True}])
    assert [m.model_id for m in found] == [model.model_id]
    assert not trained.client.search_registered_models(), "a run outside the pipeline registers nothing by default"


def test_an_insert_that_lost_a_race_is_asked_again(monkeypatch):
    """Concurrent jobs logging one dataset to a server on PostgreSQL: one of them loses the insert
    (seen on the SLURM sweep); asked again, the row is there."""
    from mlflow.exceptions import MlflowException

    from logitlab.tracking import store

    monkeypatch.setitem(store._limits, "retries", 3)
    monkeypatch.setitem(store._limits, "backoff", 0.01)
    calls = []

    def log_inputs():
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates '
                                  'unique constraint "dataset_pk"')
        return "linked"

    assert store.store_call("log the datasets", log_inputs) == "linked" and len(calls) == 2

    def refused():
        raise MlflowException("INVALID_PARAMETER_VALUE: Changing param values is not allowed")

    with pytest.raises(store.StoreUnavailable, match="Changing param values"):
        store.store_call("log params", refused)  # not a race: reported at once
