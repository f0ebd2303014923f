"""The real entry points: a user mistake on the command line, a Hydra multirun, and `dvc repro`."""

import json
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import PYTHON, ROOT, copy_project, keras_npz_bytes, mnist_arrays, run, sha256_bytes, subprocess_env
from logitlab import data

BIN = Path(PYTHON).parent
# The matrix the end-to-end test shrinks the pipeline to: every stage family, few variants.
TINY_PIPELINE = {"datasets": ["mnist", "blobs"], "heads": ["softmax", "logit"], "binary_heads": ["logit"],
                 "gradient_tape": {"datasets": ["blobs"], "heads": ["logit"]}}
TRAIN_STAGES = {f"train@{d}-{h}" for d in ("mnist", "blobs") for h in ("softmax", "logit")} | {
    "train_binary@mnist-logit", "train_binary@blobs-logit", "train_tape@blobs-logit"}
VARIANTS = {f"{d}-{h}" for d in ("mnist", "blobs") for h in ("softmax", "logit")} | {
    "mnist-binary-logit", "blobs-binary-logit", "blobs-logit-gradient_tape"}
RUN_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy",
               "test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max"}
NUMERICS = {"test_loss_f64", "loss_err_probs_max", "loss_err_logits_max", "loss_err_train_max",
            "prob_clip_band_fraction", "clip_ceiling_fraction", "probs_sum_max_error"}


def finished_runs(uri):
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("logitlab")
    assert experiment is not None, f"no logitlab experiment in {uri}"
    return client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.head=tanh"], "unknown model.head 'tanh' for task multiclass; valid: softmax, logit, softmax_strict, sigmoid"),
        (["dataset=cifar"], "unknown dataset 'cifar'; valid: blobs, mnist"),
        (["trainer.epochs=-1"], "trainer.epochs must be a positive whole number, got -1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = subprocess.run([PYTHON, str(ROOT / "pipelines" / "train.py"), *args, f"hydra.run.dir={tmp_path}"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"logitlab train: error: {message}" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_multirun_sweep_makes_one_run_per_job_and_the_report_aggregates_seeds(tmp_path):
    """A real `-m` sweep of 8 jobs on tiny blobs (heads x trainers x seeds), started outside the
    project directory; then the report over the whole experiment."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = ["datasets.blobs.fetch.n_samples=200", f"paths.raw={tmp_path / 'raw'}",
            f"paths.processed={tmp_path / 'processed'}"]
    for stage in ("fetch", "preprocess"):
        run([PYTHON, str(ROOT / "pipelines" / f"{stage}.py"), "dataset=blobs", *data,
             f"hydra.run.dir={tmp_path / stage}"], tmp_path, subprocess_env())
    sweep = tmp_path / "multirun"
    run([PYTHON, str(ROOT / "pipelines" / "train.py"), "-m", "dataset=blobs", "model.head=softmax,logit",
         "trainer=fit,gradient_tape", "seed=0,1", "trainer.epochs=2", "trainer.log_every_n_steps=2",
         f"tracking.uri='{store}'", f"hydra.sweep.dir={sweep}", *data], tmp_path, subprocess_env())

    runs = [r for r in finished_runs(store) if "logitlab.variant" in r.data.tags]
    assert len(runs) == 8
    combos = {(r.data.tags["head"], r.data.tags["trainer"], r.data.params["seed"]) for r in runs}
    assert combos == {(h, t, s) for h in ("softmax", "logit") for t in ("fit", "gradient_tape") for s in ("0", "1")}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert RUN_METRICS <= set(r.data.metrics), r.info.run_name
        num = r.data.tags["hydra.job.num"]
        assert r.info.run_name == f"{r.data.tags['logitlab.variant']}-{num}"
        assert r.data.tags["head"] == r.data.params["model.head"]
        assert (sweep / num / "model.keras").is_file() and (sweep / num / "metrics.json").is_file()
        assert ("step_loss" in r.data.metrics) == (r.data.tags["trainer"] == "gradient_tape")

    report_dir = tmp_path / "report"
    run([PYTHON, str(ROOT / "pipelines" / "report.py"), "report.runs=experiment", f"tracking.uri='{store}'",
         f"hydra.run.dir={report_dir}", *data], tmp_path, subprocess_env())
    import pandas as pd

    table = pd.read_csv(report_dir / "summary.csv")
    assert len(table) == 4 and set(table["seeds"].astype(str)) == {"0 1"} and set(table["runs"]) == {2}
    assert table["test_accuracy_std"].notna().all()
    assert "±" in (report_dir / "summary.md").read_text()
    plots = {p.name for p in (report_dir / "plots").glob("*.png")}
    assert plots == {"curves_blobs_multiclass_fit.png", "curves_blobs_multiclass_gradient_tape.png",
                     "histograms_blobs_multiclass_fit.png", "histograms_blobs_multiclass_gradient_tape.png",
                     "decision_regions_blobs_multiclass.png"}
    reports = [r for r in finished_runs(store) if r.data.tags.get("logitlab.kind") == "report"]
    assert len(reports) == 1


def shrink_to_tiny_data(project: Path, tmp_path: Path) -> None:
    """In the copy: MNIST from a small local file (its own hashes), 200 blobs, 1 epoch; then `make params`."""
    arrays = mnist_arrays(n_train=200, n_test=50)
    body = keras_npz_bytes(arrays)
    local = tmp_path / "tiny-mnist.npz"
    local.write_bytes(body)
    mnist = project / "conf" / "datasets" / "mnist.yaml"
    cfg = OmegaConf.load(mnist)
    cfg.fetch.sources = [{"name": "local", "type": "file", "path": str(local), "sha256": sha256_bytes(body),
                          "format": "keras_npz"}]
    cfg.fetch.array_sha256 = data.array_digests(arrays)
    OmegaConf.save(cfg, mnist)
    blobs = project / "conf" / "datasets" / "blobs.yaml"
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(blobs), {"fetch": {"n_samples": 200}}), blobs)
    trainer = project / "conf" / "trainer" / "fit.yaml"
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(trainer), {"epochs": 1}), trainer)
    config = project / "conf" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.pipeline = TINY_PIPELINE
    OmegaConf.save(cfg, config)
    run([PYTHON, "-m", "logitlab", "params"], project)


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path):
    project = copy_project(tmp_path / "project")
    shrink_to_tiny_data(project, tmp_path)
    env = subprocess_env()
    run(["git", "init", "-q"], project)
    dvc = str(BIN / "dvc")

    first = run([dvc, "repro"], project, env, timeout=900)
    ran = {line.split("'")[1] for line in first.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {f"{s}@{d}" for s in ("fetch", "preprocess") for d in ("mnist", "blobs")} | TRAIN_STAGES | {
        s.replace("train", "evaluate") for s in TRAIN_STAGES} | {"report"}

    everything = finished_runs(f"sqlite:///{project / 'mlflow.db'}")
    runs = [r for r in everything if "logitlab.variant" in r.data.tags]
    assert sorted(r.info.run_name for r in runs) == sorted(VARIANTS)
    for r in runs:
        assert RUN_METRICS | NUMERICS <= set(r.data.metrics), r.info.run_name
        assert r.info.run_name == r.data.tags["logitlab.variant"]
        assert r.data.tags["numerics.train_loss_path"] == "logits"
        run_file = json.loads((project / "models" / r.info.run_name / "run.json").read_text())
        assert run_file["run_id"] == r.info.run_id
    assert [r.data.tags.get("logitlab.kind") for r in everything if r not in runs] == ["report"]
    summary = (project / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(VARIANTS)
    plots = json.loads(run([dvc, "plots", "show", "--json"], project, env).stdout)
    assert "report/plots/digits_mnist.png" in plots["data"], sorted(plots["data"])

    shown = json.loads(run([dvc, "metrics", "show", "--json"], project, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert {Path(f).stem for f in files} == VARIANTS
    for f, content in files.items():
        assert RUN_METRICS - {"loss", "accuracy", "val_loss", "val_accuracy"} | NUMERICS <= set(content["data"]), f

    second = run([dvc, "repro"], project, env)
    assert "Running stage" not in second.stdout, second.stdout

    # Evaluate alone, forced: it logs into the training run again, no new run appears.
    run([dvc, "repro", "--force", "--single-item", "evaluate@blobs-logit"], project, env)
    again = finished_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in everything)
