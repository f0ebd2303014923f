"""The real entry points: a user mistake on the command line, a Hydra multirun, and `dvc repro`."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import PYTHON, ROOT, copy_project, keras_npz_bytes, mnist_arrays, run, sha256_bytes
from logitlab import data

BIN = Path(PYTHON).parent
VARIANTS = {f"{d}-{h}" for d in ("mnist", "blobs") for h in ("softmax", "logit")}
RUN_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy",
               "test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max"}


def subprocess_env():
    """The project's venv first on PATH (DVC stages call `python`), no inherited tracking URI."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


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
def test_multirun_sweep_makes_one_run_per_job(tmp_path):
    """A real `-m` sweep of 4 jobs on tiny blobs, started outside the project directory."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["datasets.blobs.fetch.n_samples=200", f"paths.raw={tmp_path / 'raw'}",
              f"paths.processed={tmp_path / 'processed'}", f"hydra.run.dir={tmp_path / 'prep'}"]
    for stage in ("fetch", "preprocess"):
        run([PYTHON, str(ROOT / "pipelines" / f"{stage}.py"), "dataset=blobs", *common], tmp_path, subprocess_env())
    sweep = tmp_path / "multirun"
    run([PYTHON, str(ROOT / "pipelines" / "train.py"), "-m", "dataset=blobs", "model.head=softmax,logit",
         "seed=0,1", "trainer.epochs=2", f"tracking.uri='{store}'", f"hydra.sweep.dir={sweep}", *common[:3]],
        tmp_path, subprocess_env())

    runs = finished_runs(store)
    assert sorted(r.info.run_name for r in runs) == ["blobs-logit-2", "blobs-logit-3", "blobs-softmax-0", "blobs-softmax-1"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert RUN_METRICS <= set(r.data.metrics), r.info.run_name
        num = r.data.tags["hydra.job.num"]
        assert r.info.run_name.endswith(f"-{num}")
        assert r.data.params["seed"] == str(int(num) % 2)
        assert r.data.tags["head"] == r.data.params["model.head"]
        assert (sweep / num / "model.keras").is_file() and (sweep / num / "metrics.json").is_file()


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
    assert ran == {f"{s}@{d}" for s in ("fetch", "preprocess") for d in ("mnist", "blobs")} | {
        f"{s}@{v}" for s in ("train", "evaluate") for v in VARIANTS}

    runs = finished_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert sorted(r.info.run_name for r in runs) == sorted(VARIANTS)
    for r in runs:
        assert RUN_METRICS <= set(r.data.metrics), r.info.run_name
        assert r.info.run_name == f"{r.data.tags['dataset']}-{r.data.tags['head']}"
        run_file = json.loads((project / "models" / r.info.run_name / "run.json").read_text())
        assert run_file["run_id"] == r.info.run_id

    shown = json.loads(run([dvc, "metrics", "show", "--json"], project, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert {Path(f).stem for f in files} == VARIANTS
    for f, content in files.items():
        assert set(content["data"]) == {"test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max"}

    second = run([dvc, "repro"], project, env)
    assert "Running stage" not in second.stdout, second.stdout

    # Evaluate alone, forced: it logs into the training run again, no new run appears.
    run([dvc, "repro", "--force", "--single-item", "evaluate@blobs-logit"], project, env)
    again = finished_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
