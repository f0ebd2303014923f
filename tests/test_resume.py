"""Jobs that resume where they stopped: a checkpoint after every epoch (weights, optimizer state, the
epochs so far, the run's id); a job started again in its folder continues the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import ROOT, app, poll_store, runs_of, subprocess_env
from helpers import build_model, compile_model
from logitlab.train.checkpoint import CHECKPOINT_DIR, Checkpoint, enabled, restore


def _model(precision="float32"):
    keras.utils.set_random_seed(0)
    model = build_model(2, 3, [4], "logit", precision=precision)
    return compile_model(model, "logit", 0.01, precision=precision)


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_a_checkpoint_restores_weights_and_optimizer_state(tmp_path, precision):
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = np.arange(64) % 3
    trained = _model(precision)
    trained.fit(x, y, epochs=2, verbose=0)
    Checkpoint(tmp_path, "k").save(trained, "run-1", [{"loss": 1.0}, {"loss": 0.5}])

    fresh = _model(precision)
    state, arrays = Checkpoint(tmp_path, "k").load()
    assert state.run_id == "run-1" and state.history == [{"loss": 1.0}, {"loss": 0.5}]
    restore(fresh, arrays)
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [np.asarray(v).tolist() for v in trained.optimizer.variables] == \
        [np.asarray(v).tolist() for v in fresh.optimizer.variables], "Adam's moments and step count (and a loss scale)"
    trained.fit(x, y, epochs=1, verbose=0, shuffle=False)
    fresh.fit(x, y, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)  # the next epoch is the same epoch


def test_a_checkpoint_of_another_config_or_a_damaged_one_is_not_resumed(tmp_path):
    Checkpoint(tmp_path, "k").save(_model(), "run-1", [])
    assert Checkpoint(tmp_path, "other").load() is None
    (tmp_path / CHECKPOINT_DIR / "state.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert Checkpoint(tmp_path, "k").load() is None
    for state in ({"key": "k", "history": []}, ["k", "run-1"]):  # a whole archive, but not the state save() writes
        np.savez(tmp_path / CHECKPOINT_DIR / "state.npz", weight_0=np.zeros(2), state=np.array(json.dumps(state)))
        assert Checkpoint(tmp_path, "k").load() is None
    assert Checkpoint(tmp_path / "nowhere", "k").load() is None


def test_checkpointing_is_on_inside_a_slurm_job_by_default(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not enabled("auto") and enabled(True) and not enabled(False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert enabled("auto") and not enabled(False)


def _epochs_logged(db: Path) -> list[int]:
    return [r[0] for r in poll_store(db, "SELECT step FROM metrics WHERE key = 'loss' ORDER BY step")]


@pytest.mark.slow
def test_a_job_killed_mid_training_resumes_its_run_and_ends_as_an_uninterrupted_one(tmp_path):
    from helpers import tiny_blobs

    big = tiny_blobs(tmp_path, n_samples=12000)  # ~0.6 s an epoch in batches of 8: time to be killed
    db = tmp_path / "mlflow.db"
    common = [*big, "model.head=logit", "trainer.epochs=10", "trainer.batch_size=8", "trainer.verbose=0",
              f"tracking.uri='sqlite:///{db}'"]
    job = [*common, "trainer.checkpoint=true", f"hydra.run.dir={tmp_path / 'job'}"]
    env = subprocess_env()

    first = subprocess.Popen(app("train", *job), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(_epochs_logged(db)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the job ended before it could be killed: " + first.stderr.read()[-2000:]
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    [killed] = runs_of(f"sqlite:///{db}")
    assert killed.info.status == "KILLED" and (tmp_path / "job" / CHECKPOINT_DIR / "state.npz").is_file()
    done = len(_epochs_logged(db))
    assert 2 <= done < 10

    again = subprocess.run(app("train", *job), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    [run] = runs_of(f"sqlite:///{db}")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert "logitlab.status_reason" not in run.data.tags
    resumed = int(run.data.tags["logitlab.resumed_after_epoch"])
    assert done - 1 <= resumed <= done  # the epoch in flight when killed may have been saved or not
    assert _epochs_logged(db) == list(range(10)), "every epoch once"
    assert not (tmp_path / "job" / CHECKPOINT_DIR).exists(), "a finished job deletes its checkpoint"
    history = (tmp_path / "job" / "history.tsv").read_text().splitlines()
    assert len(history) == 1 + 10

    straight_db = tmp_path / "straight.db"
    straight = subprocess.run(app("train", *common[:-1], f"tracking.uri='sqlite:///{straight_db}'",
                                  "trainer.checkpoint=false", f"hydra.run.dir={tmp_path / 'straight'}"),
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    [uninterrupted] = runs_of(f"sqlite:///{straight_db}")
    for key in ("test_loss", "test_accuracy", "output_max"):
        assert run.data.metrics[key] == uninterrupted.data.metrics[key], f"{key}: resumed bit for bit"
    assert run.data.tags["logitlab.config_hash"] == uninterrupted.data.tags["logitlab.config_hash"]


def _finished(db: Path) -> int:
    return len(poll_store(db, "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                              "WHERE t.key = 'logitlab.config_hash' AND r.status = 'FINISHED'"))


def _complete_trials(db: Path) -> int:
    return len(poll_store(db, "SELECT trial_id FROM trials WHERE state = 'COMPLETE'"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_a_sweep_killed_halfway_and_relaunched_with_resume_runs_exactly_the_missing_jobs(tmp_path, launcher):
    from helpers import tiny_blobs

    db = tmp_path / "mlflow.db"
    sweep_dir = tmp_path / "sweep"
    cmd = app("train", "-m", f"hydra/launcher={launcher}", *tiny_blobs(tmp_path), "model.head=softmax,logit,softmax_strict",
              "seed=0,1", "trainer.epochs=3", "trainer.verbose=0", f"tracking.uri='sqlite:///{db}'",
              f"hydra.sweep.dir={sweep_dir}")
    env = subprocess_env()
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while _finished(db) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, "the sweep ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and whatever worker processes it started
    first.wait(timeout=60)
    before = {r.data.tags["logitlab.config_hash"]: r.info.run_id for r in runs_of(f"sqlite:///{db}")
              if r.info.status == "FINISHED" and "logitlab.config_hash" in r.data.tags}
    assert 2 <= len(before) < 6

    again = subprocess.run([*cmd, "sweep.resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before)} job(s) skipped, finished before (sweep.resume=true)" in again.stderr
    runs = runs_of(f"sqlite:///{db}")
    [parent] = [r for r in runs if r.data.tags.get("logitlab.kind") == "sweep" and r.info.status == "FINISHED"]
    ran = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.metrics["jobs_skipped"] == len(before) and parent.data.metrics["jobs_finished"] == len(ran)
    assert len(ran) == 6 - len(before), "exactly the missing jobs ran"
    assert not {r.data.tags["logitlab.config_hash"] for r in ran} & set(before), "no finished job ran again"
    finished = [r.data.tags["logitlab.config_hash"] for r in runs
                if r.info.status == "FINISHED" and "logitlab.config_hash" in r.data.tags]
    assert len(finished) == len(set(finished)) == 6, "every config finished once"
    assert not any(r.info.status == "RUNNING" for r in runs), "the killed sweep's runs were reaped"


@pytest.mark.slow
def test_a_killed_optuna_search_resumes_its_study_with_the_trials_still_missing(tmp_path):
    import optuna

    from helpers import tiny_blobs

    db = tmp_path / "mlflow.db"
    sweep_dir = tmp_path / "sweep"
    cmd = app("train", "-m", "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1",
              *tiny_blobs(tmp_path), "trainer.epochs=2", "trainer.verbose=0", f"tracking.uri='sqlite:///{db}'",
              f"hydra.sweep.dir={sweep_dir}")
    env = subprocess_env()
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    # optuna's own count: a trial is complete once the sweeper has told the study, after its run ended
    while _complete_trials(sweep_dir / "optuna.db") < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, "the search ended before it could be killed"
    first.kill()
    first.wait(timeout=60)
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    complete = optuna.trial.TrialState.COMPLETE
    done = sum(t.state == complete for t in optuna.load_study(study_name="logitlab-lr", storage=storage).trials)
    assert 2 <= done < 4

    again = subprocess.run([*cmd, "sweep.resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} trial(s) complete, {4 - done} to go" in again.stdout + again.stderr
    study = optuna.load_study(study_name="logitlab-lr", storage=storage)
    assert sum(t.state == complete for t in study.trials) == 4, "the study picked up where it stopped"
    rates = [t.params["optimizer.lr"] for t in study.trials if t.state == complete]
    assert len(set(rates)) == 4, "the resumed trials are new points"
    assert "skipped" not in again.stderr
    assert (sweep_dir / "optimization_results.yaml").is_file()
    runs = runs_of(f"sqlite:///{db}")
    [parent] = [r for r in runs if r.data.tags.get("logitlab.kind") == "sweep" and r.info.status == "FINISHED"]
    assert parent.data.metrics["jobs_finished"] == 4 - done


@pytest.mark.slow
def test_a_checkpoint_of_a_run_this_store_lacks_starts_afresh(tmp_path):
    """The job folder's checkpoint belongs to a run in another store (tracking.uri changed): the job
    trains from epoch 1 in a new run rather than fail."""
    import mlflow

    from helpers import tiny_blobs
    from logitlab.schema import compose, config_hash
    from logitlab.stages.job import Job
    from logitlab.stages.train import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(ROOT, [*tiny_blobs(tmp_path), "trainer.epochs=2", "trainer.checkpoint=true", "trainer.verbose=0",
                         f"tracking.uri='{uri}'"])
    Checkpoint(tmp_path / "job", config_hash(cfg)).save(_model(), "0" * 32, [{"loss": 1.0}])
    train(cfg, ROOT, Job(multirun=False, num=0, overrides=[], dir=tmp_path / "job", sweep_dir=tmp_path))
    [run] = runs_of(uri)
    assert run.info.status == "FINISHED" and "logitlab.resumed_after_epoch" not in run.data.tags
    assert [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "loss")] == [0, 1]
