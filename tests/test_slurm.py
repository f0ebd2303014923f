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
    # 3 learning rates x 2 heads: 6 array tasks; lr 1e9 diverges (2 jobs FAILED), the 4 others finish.
    cmd = app("train", "-m", "hydra/launcher=slurm", "tracking=server", f"tracking.uri={server['url']}",
              f"hydra.launcher.partition={cluster.partition}", "hydra.launcher.cpus_per_task=1",
              "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}", *data,
              "model.head=softmax,logit", "optimizer.lr=0.001,0.01,1e9", "trainer.epochs=2")
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(**cluster.env), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 1, proc.stderr[-4000:] + cluster.logs()
    assert proc.stderr.rstrip().endswith("2 job(s) failed; the others ran to the end"), proc.stderr[-2000:]
    assert "status may be inaccurate" not in proc.stderr, "sacct answers: accounting runs"

    runs = runs_of(server["url"])
    [parent] = [r for r in runs if r.data.tags.get("logitlab.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6 and len(runs) == 7
    assert parent.data.tags["hydra.launcher"].endswith("SlurmLauncher") and parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_finished"] == 4 and parent.data.metrics["jobs_failed"] == 2
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
    assert len(logs) == 6, "submitit's logs are in the sweep directory"
    jobs = {re.sub(r"_\d+$", "", p.parent.name) for p in logs}
    assert len(jobs) == 1, "one SLURM array"
    states = cluster.run("sacct", "-n", "-X", "-j", jobs.pop(), "-o", "State").stdout.split()
    assert states == ["COMPLETED"] * 6, "a failed job is a FAILED run, not a crashed SLURM task"
    assert not cluster.jobs()


def _slurm_cmd(cluster, server, sweep_dir, *overrides):
    return app("train", "-m", "hydra/launcher=slurm", "tracking=server", f"tracking.uri={server['url']}",
               f"hydra.launcher.partition={cluster.partition}", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}",
               "trainer.verbose=0", *overrides)


def _wait_for(what, condition, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"the sweep ended before {what}: {proc.stderr.read()[-3000:]}"
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("how", ["scontrol requeue", "timeout signal"])
def test_a_requeued_job_resumes_its_run_with_every_epoch_once(cluster, server, tmp_path, how):
    """The job is requeued mid-training, by an operator (`scontrol requeue`: SLURM kills it and
    starts it again), or by submitit on SLURM's timeout signal (USR2, sent here with `scancel
    --signal`; within 10 minutes of a 10-minute limit submitit counts it as a timeout, and requeues
    up to max_num_timeout times). Either way the job takes its run up again from its checkpoint
    (that it resumes bit for bit is tests/test_resume.py's)."""
    # ~0.6 s an epoch in batches of 8 on an idle Xeon, so the job is requeued with ~15 s of training to go. With 6
    # epochs of 0.2 s, the job once finished before the requeue reached it, on CI with the other worker busy.
    data = tiny_blobs(tmp_path, n_samples=30000)
    epochs = 30
    experiment = f"requeue-{tmp_path.name}"
    cmd = _slurm_cmd(cluster, server, tmp_path / "sweep", *data, "model.head=softmax", f"trainer.epochs={epochs}",
                     "trainer.batch_size=8", f"tracking.experiment={experiment}")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(**cluster.env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    import mlflow

    client = mlflow.MlflowClient(server["url"])

    def at_epoch_2():
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], "tags.head = 'softmax'") if found else []
        return runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 2 and runs[0]

    run = _wait_for("the job's second epoch", at_epoch_2, proc)
    job_id = run.data.tags["slurm.job_id"]
    if how == "scontrol requeue":
        cluster.run("scontrol", "requeue", job_id)
    else:
        cluster.run("scancel", "--signal=USR2", job_id)
    _wait_for("the run to end KILLED", lambda: client.get_run(run.info.run_id).info.status == "KILLED", proc)
    done = len(client.get_metric_history(run.info.run_id, "loss"))
    assert done < epochs, f"the requeue reached the job after its training ({done} epochs): not a mid-training requeue"
    # SLURM holds a requeued job back (BeginTime, about two minutes): an operator's release, to save the wait.
    _wait_for("the requeued job to be pending", lambda: cluster.run(
        "squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip() == "PENDING", proc)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:] + cluster.logs()

    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [job] = [r for r in runs if "head" in r.data.tags]
    assert len(runs) == 2, "the sweep's parent and one run: none for the restart"
    assert job.info.run_id == run.info.run_id and job.info.status == "FINISHED"
    assert job.data.tags["slurm.restart_count"] == "1"
    assert 1 <= int(job.data.tags["logitlab.resumed_after_epoch"]) < epochs, "requeued mid-training, from a checkpoint"
    assert [m.step for m in client.get_metric_history(job.info.run_id, "loss")] == list(range(epochs)), "each epoch once"
    assert "test_accuracy" in job.data.metrics
    assert not list((tmp_path / "sweep").rglob(".logitlab-checkpoint")), "a finished job drops its checkpoint"
    if how == "timeout signal":
        logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
        assert "Caught signal SIGUSR2" in logs and "this job is timed-out" in logs, logs[-3000:]


def test_a_cluster_sweep_killed_halfway_resumes_with_exactly_the_missing_jobs(cluster, server, tmp_path):
    data = tiny_blobs(tmp_path)
    experiment = f"resume-{tmp_path.name}"
    cmd = _slurm_cmd(cluster, server, tmp_path / "sweep", *data, "model.head=softmax,logit,softmax_strict",
                     "seed=0,1", "trainer.epochs=2", f"tracking.experiment={experiment}")
    env = subprocess_env(**cluster.env)
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import mlflow

    client = mlflow.MlflowClient(server["url"])

    def two_finished():
        found = client.get_experiment_by_name(experiment)
        return found and len(client.search_runs([found.experiment_id], "attributes.status = 'FINISHED' and "
                                                "tags.`logitlab.config_hash` != ''")) >= 2

    _wait_for("two finished jobs", two_finished, first)
    first.kill()  # the launcher dies; its jobs on the cluster are then cancelled (preempted, say)
    first.wait(timeout=60)
    cluster.run("scancel", "--full", "--user=root")
    deadline = time.monotonic() + 120
    while cluster.jobs() and time.monotonic() < deadline:
        time.sleep(1)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    before = {r.data.tags["logitlab.config_hash"] for r in client.search_runs([exp_id], "attributes.status = 'FINISHED'")
              if "logitlab.config_hash" in r.data.tags}
    assert 2 <= len(before) < 6

    again = subprocess.run([*cmd, "sweep.resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:] + cluster.logs()
    runs = client.search_runs([exp_id], max_results=1000)
    [parent] = [r for r in runs if r.data.tags.get("logitlab.kind") == "sweep" and r.info.status == "FINISHED"]
    ran = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.metrics["jobs_skipped"] == len(before) and len(ran) == 6 - len(before)
    assert not {r.data.tags["logitlab.config_hash"] for r in ran} & before, "no finished job ran again"
    finished = [r.data.tags["logitlab.config_hash"] for r in runs
                if r.info.status == "FINISHED" and "logitlab.config_hash" in r.data.tags]
    assert len(finished) == len(set(finished)) == 6, "every config finished once"
