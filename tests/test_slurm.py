"""Sweeps on a real SLURM cluster (tests/slurm.py: munged, slurmdbd on MariaDB, slurmctld and slurmd
on this host), logging to an MLflow server on PostgreSQL, run as the README tells users to."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from helpers import app, mlflow_server, postgres_database, runs_of, subprocess_env, tiny_blobs
from slurm import slurm_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with postgres_database() as backend, mlflow_server(backend, folder) as running:
        yield running


def test_the_cluster_runs_a_batch_job_with_accounting_and_stops_every_daemon():
    with slurm_cluster() as c:
        out = c.folder / "hello.out"
        job = c.run("sbatch", "--parsable", "-o", str(out), "--wrap", "echo hello from $SLURM_JOB_ID").stdout.strip()
        deadline = time.monotonic() + 60
        while c.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert out.read_text().strip() == f"hello from {job}"
        accounted = c.run("sacct", "-n", "-X", "-j", job, "-o", "State").stdout.split()
        assert accounted == ["COMPLETED"], "slurmdbd keeps the accounting submitit reads"
        daemons = dict(c.procs)
    assert all(p.poll() is not None for p in daemons.values()), "every daemon stopped, by its pid"
    assert not c.folder.exists()


def test_a_sweep_on_the_cluster_lands_every_job_as_a_child_run_and_a_failure_as_failed(cluster, server, tmp_path):
    data = tiny_blobs(tmp_path)
    sweep_dir = tmp_path / "sweep"
    # 4 learning rates x 2 heads: 8 array tasks; lr 1e9 diverges (2 jobs FAILED), the 6 others finish.
    cmd = app("train", "-m", "hydra/launcher=slurm", "tracking=server", f"tracking.uri={server['url']}",
              f"hydra.launcher.partition={cluster.partition}", "hydra.launcher.cpus_per_task=1",
              "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}", *data,
              "model.head=softmax,logit", "optimizer.lr=0.001,0.003,0.01,1e9", "trainer.epochs=2")
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(**cluster.env), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 1, proc.stderr[-4000:] + cluster.logs()
    assert proc.stderr.rstrip().endswith("2 job(s) failed; the others ran to the end"), proc.stderr[-2000:]
    assert "status may be inaccurate" not in proc.stderr, "sacct answers: accounting runs"

    runs = runs_of(server["url"])
    [parent] = [r for r in runs if r.data.tags.get("logitlab.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8 and len(runs) == 9
    assert parent.data.tags["hydra.launcher"].endswith("SlurmLauncher") and parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_finished"] == 6 and parent.data.metrics["jobs_failed"] == 2
    import mlflow

    client = mlflow.MlflowClient(server["url"])
    for run in children:
        lr = float(run.data.params["optimizer.lr"])
        assert run.info.status == ("FAILED" if lr == 1e9 else "FINISHED"), (lr, run.info.status)
        if lr != 1e9:
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
            assert "test_accuracy" in run.data.metrics

    logs = sorted((sweep_dir / ".submitit").rglob("*_log.out"))
    assert len(logs) == 8, "submitit's logs are in the sweep directory"
    jobs = {re.sub(r"_\d+$", "", p.parent.name) for p in logs}
    assert len(jobs) == 1, "one SLURM array"
    states = cluster.run("sacct", "-n", "-X", "-j", jobs.pop(), "-o", "State").stdout.split()
    assert states == ["COMPLETED"] * 8, "a failed job is a FAILED run, not a crashed SLURM task"
    assert not cluster.jobs()
