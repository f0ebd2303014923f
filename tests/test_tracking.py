"""Training and evaluation of one variant land in one MLflow run, with every metric."""

import json
import os
from types import SimpleNamespace

import pytest

from helpers import ROOT
from logitlab import stages, tracking
from logitlab.config import compose_params
from logitlab.errors import UserError

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
TEST_METRICS = ("test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max")


def tiny_blobs_cfg(tmp, *extra):
    return compose_params(ROOT, [
        "dataset=blobs", "model.head=logit", "trainer.epochs=3", "datasets.blobs.fetch.n_samples=200",
        "evaluate.n_examples=3", f"paths.raw={tmp / 'raw'}", f"paths.processed={tmp / 'processed'}",
        f"tracking.uri='sqlite:///{tmp / 'store' / 'mlflow.db'}'", *extra,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from logitlab.evaluation import evaluate
    from logitlab.training import train

    tmp = tmp_path_factory.mktemp("tracking")
    (tmp / "store").mkdir()
    cfg = tiny_blobs_cfg(tmp)
    stages.fetch(cfg, ROOT)
    stages.preprocess(cfg, ROOT)
    run_dir = tmp / "run"
    run_id, last = train(cfg, ROOT, run_dir, "blobs-logit", {"extra": "tag"})
    files = SimpleNamespace(metrics=tmp / "metrics.json", predictions=tmp / "predictions.json")
    metrics = evaluate(cfg, ROOT, run_dir, files.metrics, files.predictions)

    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri(cfg.tracking, ROOT))
    return SimpleNamespace(cfg=cfg, tmp=tmp, run_dir=run_dir, run_id=run_id, last=last, metrics=metrics, files=files,
                           client=client)


def test_every_epoch_metric_is_logged_per_epoch(trained):
    for name in EPOCH_METRICS:
        history = trained.client.get_metric_history(trained.run_id, name)
        assert [m.step for m in history] == [0, 1, 2], name
    losses = [m.value for m in trained.client.get_metric_history(trained.run_id, "loss")]
    assert losses[-1] < losses[0]
    assert trained.last["loss"] == pytest.approx(losses[-1]), "train returns the last epoch's metrics"
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
    assert run.data.tags["logitlab.variant"] == "blobs-logit" and run.data.tags["extra"] == "tag"
    assert run.info.run_name == "blobs-logit" and run.info.status == "FINISHED"


def test_evaluation_lands_in_the_training_run(trained):
    run = trained.client.get_run(trained.run_id)
    for name in TEST_METRICS:
        assert run.data.metrics[name] == pytest.approx(trained.metrics[name]), name
    m = trained.metrics
    assert 0.0 <= m["prob_min"] <= m["prob_max"] <= 1.0
    assert m["output_min"] < 0 < m["output_max"], "a logit head outputs raw logits, not probabilities"
    assert 0.25 < m["test_accuracy"] <= 1.0
    assert json.loads(trained.files.metrics.read_text()) == pytest.approx(m)


def test_predictions_artifact_has_outputs_and_argmax(trained, tmp_path):
    local = trained.client.download_artifacts(trained.run_id, "predictions.json", str(tmp_path))
    logged = json.loads(open(local).read())
    assert logged == json.loads(trained.files.predictions.read_text())
    assert logged["head"] == "logit" and len(logged["examples"]) == 3
    for ex in logged["examples"]:
        assert len(ex["outputs"]) == 4 and ex["argmax"] == max(range(4), key=ex["outputs"].__getitem__)
        assert sum(ex["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    artifact_uri = trained.client.get_run(trained.run_id).info.artifact_uri
    assert artifact_uri.startswith((trained.tmp / "store" / "mlartifacts").as_uri()), "artifacts live beside the store"


def test_rerunning_evaluation_adds_no_run(trained):
    from logitlab.evaluation import evaluate

    evaluate(trained.cfg, ROOT, trained.run_dir, trained.files.metrics, trained.files.predictions)
    experiment = trained.client.get_experiment_by_name("logitlab")
    runs = trained.client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [trained.run_id]
    assert len(trained.client.get_metric_history(trained.run_id, "test_loss")) == 2
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_evaluating_a_run_missing_from_the_store_names_the_fix(trained, tmp_path):
    from logitlab.evaluation import evaluate

    info = json.loads((trained.run_dir / "run.json").read_text())
    orphan = tmp_path / "run"
    orphan.mkdir()
    (orphan / "model.keras").write_bytes((trained.run_dir / "model.keras").read_bytes())
    (orphan / "run.json").write_text(json.dumps(dict(info, run_id="0" * 32)))
    with pytest.raises(UserError, match=f"run {'0' * 32} is not in the tracking store .*dvc repro -f the train stage of blobs-logit"):
        evaluate(trained.cfg, ROOT, orphan, tmp_path / "m.json", tmp_path / "p.json")
    assert not (tmp_path / "m.json").exists()


def test_default_store_is_at_the_project_root_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri({"uri": None}, ROOT) == f"sqlite:///{ROOT / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri({"uri": None}, ROOT) == "http://127.0.0.1:5999"
    assert tracking.tracking_uri({"uri": "sqlite:////x/y.db"}, ROOT) == "sqlite:////x/y.db"


def test_redact_hides_passwords():
    assert tracking.redact("postgresql://bob:s3cret@db:5432/ml") == "postgresql://bob:***@db:5432/ml"
    assert tracking.redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_setup_leaves_the_users_environment_alone(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.setup({"uri": f"sqlite:///{tmp_path / 'a.db'}", "experiment": "logitlab"}, ROOT)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    tracking.setup({"uri": f"sqlite:///{tmp_path / 'a.db'}", "experiment": "logitlab"}, ROOT)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
