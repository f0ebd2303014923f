"""Faults around a job: its process killed or interrupted, its loss diverging, its tracking store
down or locked. Each test causes the fault in a real process and checks what is left behind."""

import re
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

from helpers import app, runs_of, subprocess_env, tiny_blobs


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return tiny_blobs(tmp_path_factory.mktemp("blobs"))


def start_training(tmp_path, blobs, store, *extra):
    """A long blobs training (it would take minutes) in its own process, logging to `store` (created
    first, so that the test's polling never races the job to create it)."""
    import mlflow

    mlflow.MlflowClient(store).search_experiments()
    cmd = app("train", *blobs, "trainer.epochs=100000", f"tracking.uri='{store}'", f"hydra.run.dir={tmp_path / 'job'}",
              *extra)
    return subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_epochs(store, proc, n=2, timeout=120):
    """The RUNNING run of `proc` once it has logged `n` epochs."""
    import mlflow

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            runs = runs_of(store)
        except (AssertionError, mlflow.exceptions.MlflowException):
            runs = []
        for r in runs:
            if r.info.status == "RUNNING" and len(mlflow.MlflowClient(store).get_metric_history(r.info.run_id, "loss")) >= n:
                return r
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"no run logged {n} epochs within {timeout}s")


@pytest.mark.slow
def test_sigkilled_job_is_marked_killed_by_the_next_stage_start(tmp_path, blobs):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_training(tmp_path, blobs, store)
    victim = wait_for_epochs(store, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    [left] = [r for r in runs_of(store) if r.info.run_id == victim.info.run_id]
    assert left.info.status == "RUNNING", "nothing could close it: the process died at once"
    assert not (tmp_path / "job" / "model.keras").exists()

    # The next stage start (here another training) finds the run's process gone and closes the run.
    done = subprocess.run(app("train", *blobs, "trainer.epochs=1", f"tracking.uri='{store}'",
                              f"hydra.run.dir={tmp_path / 'next'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r.info.run_id: r for r in runs_of(store)}
    killed = runs[victim.info.run_id]
    assert killed.info.status == "KILLED"
    reason = killed.data.tags["logitlab.status_reason"]
    assert f"its process {proc.pid} on {socket.gethostname()} ended without closing the run" in reason
    assert "marked KILLED by the train stage" in reason
    assert killed.info.end_time is not None
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_end_the_run_killed(tmp_path, blobs, sig, code):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_training(tmp_path, blobs, store)
    victim = wait_for_epochs(store, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-3000:]
    assert f"logitlab train: interrupted by {sig.name}" in err.splitlines()
    assert "Traceback" not in err
    [run] = runs_of(store)
    assert run.info.run_id == victim.info.run_id
    assert run.info.status == "KILLED"
    assert run.data.tags["logitlab.status_reason"] == f"interrupted by {sig.name} during train"
    assert not [p.name for p in (tmp_path / "job").iterdir() if p.suffix in (".keras", ".npz", ".json", ".tsv")], \
        "no model, outputs, metrics, history or predictions"


def test_unreachable_tracking_server_fails_within_seconds(tmp_path, blobs):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = subprocess.run(app("train", *blobs, "trainer.epochs=1", f"tracking.uri='http://alice:pw-s3cret@127.0.0.1:{port}'",
                              f"hydra.run.dir={tmp_path / 'job'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logitlab train: error: tracking store http://alice:***@127.0.0.1:{port} failed to "), last
    assert "Traceback" not in proc.stderr and "pw-s3cret" not in proc.stderr + proc.stdout
    assert elapsed < 60, f"took {elapsed:.0f}s: retries must be bounded"
    assert not (tmp_path / "job" / "model.keras").exists()


@pytest.mark.slow  # three runs of the real stage, two of them waiting out SQLite's busy timeout (~50 s)
def test_locked_sqlite_store_is_retried_then_reported(tmp_path, blobs):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = subprocess.run(app("train", *blobs, "trainer.epochs=1", f"tracking.uri='{store}'", f"hydra.run.dir={tmp_path / 'a'}"),
                           cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]

    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=0)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        start = time.monotonic()
        proc = subprocess.run(app("train", *blobs, "trainer.epochs=1", f"tracking.uri='{store}'", "tracking.retries=2",
                                  "tracking.backoff_s=0.5", f"hydra.run.dir={tmp_path / 'b'}"),
                              cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - start
    finally:
        lock.rollback()
        lock.close()
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logitlab train: error: tracking store {store} failed to "), last
    assert "after 3 attempts" in last and "locked" in last
    assert (proc.stdout + proc.stderr).count("tracking store busy") == 2, "two retries, then the error"
    assert "Traceback" not in proc.stderr
    assert elapsed < 60
    assert not (tmp_path / "b" / "model.keras").exists()
    assert [r.info.status for r in runs_of(store)] == ["FINISHED"], "no half-made run"

    again = subprocess.run(app("train", *blobs, "trainer.epochs=1", f"tracking.uri='{store}'", f"hydra.run.dir={tmp_path / 'b'}"),
                           cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, "once the lock is gone the same command works"
    assert [r.info.status for r in runs_of(store)] == ["FINISHED", "FINISHED"]


@pytest.mark.slow  # a run of the real stage each (~14 s)
@pytest.mark.parametrize("lr, reason", [
    ("1e6", r"loss reached \d\.\d\de\+\d\d, above trainer\.max_loss=1e\+06, in epoch 1: training diverged"),
    ("1e10", r"loss became nan in epoch 1: training diverged"),
])
def test_diverging_loss_fails_the_run_and_writes_no_model(tmp_path, blobs, lr, reason):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(app("train", *blobs, "model.head=logit", "trainer.epochs=3", f"optimizer.lr={lr}",
                              f"tracking.uri='{store}'", f"hydra.run.dir={tmp_path / 'job'}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert re.match(f"logitlab train: error: {reason}", proc.stderr.strip().splitlines()[-1]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [run] = runs_of(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["logitlab.failed_epoch"] == "1"
    assert re.match(reason, run.data.tags["logitlab.status_reason"])
    import mlflow

    [loss] = mlflow.MlflowClient(store).get_metric_history(run.info.run_id, "loss")
    assert loss.step == 0, "the diverged epoch's loss is logged, and training stopped there"
    assert not [p.name for p in (tmp_path / "job").iterdir() if p.suffix in (".keras", ".npz", ".json", ".tsv")], \
        "no model, outputs, metrics, history or predictions"
    assert "test_loss" not in run.data.metrics, "a diverged model is not evaluated"
