"""Hydra sweeps as MLflow parent and child runs, under every launcher we ship a config for: jobs in
parallel processes writing to one store, failing jobs that leave the others running, submitit,
and optuna's search over the learning rate."""

import contextlib
import re
import subprocess

import pytest

from helpers import PYTHON, ROOT, app, parents_and_children, poll_store, subprocess_env, tiny_blobs
from logitlab.schema import compose_params
from logitlab.stages.cores import THREAD_VARIABLES


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return tiny_blobs(tmp_path_factory.mktemp("blobs"))


def sweep(tmp_path, store, sweep_dir, *overrides, check=True):
    proc = subprocess.run(app("train", "-m", *overrides, f"tracking.uri='{store}'", f"hydra.sweep.dir={sweep_dir}"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_parallel_launcher_loses_no_run_and_a_relaunch_is_a_new_parent(tmp_path, blobs):
    """8 jobs (heads x trainers x seeds) in 2 processes writing to one SQLite store at once; then the
    report over the whole experiment, and the same sweep directory launched again."""
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    sweep(tmp_path, store, sweep_dir, "hydra/launcher=parallel", *blobs, "model.head=softmax,logit",
          "trainer=fit,gradient_tape", "seed=0,1", "trainer.epochs=3", "trainer.log_every_n_steps=2")

    parents, children = parents_and_children(store)
    [(parent_id, parent)] = parents.items()
    jobs = children[parent_id]
    assert len(jobs) == 8 and parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs_finished"] == 8
    assert "model.head=softmax,logit trainer=fit,gradient_tape seed=0,1" in parent.data.tags["hydra.overrides"]
    assert parent.data.tags["hydra.launcher"].endswith("JoblibLauncher")
    combos = {(r.data.tags["head"], r.data.tags["trainer"], r.data.params["seed"]) for r in jobs}
    assert combos == {(h, t, s) for h in ("softmax", "logit") for t in ("fit", "gradient_tape") for s in ("0", "1")}
    client = mlflow.MlflowClient(store)
    pids = set()
    for run in jobs:
        tags = run.data.tags
        assert run.info.status == "FINISHED", run.info.run_name
        assert tags["logitlab.sweep_id"] == parent.data.tags["logitlab.sweep_id"]
        num = tags["hydra.job.num"]
        assert run.info.run_name == f"{tags['logitlab.variant']}-{num}"
        assert f"seed={run.data.params['seed']}" in tags["hydra.overrides"]
        assert f"model.head={tags['head']}" in tags["hydra.overrides"]
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0, 1, 2], (num, name)
        assert {"test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max"} <= set(run.data.metrics)
        assert ("step_loss" in run.data.metrics) == (tags["trainer"] == "gradient_tape")
        assert (sweep_dir / num / "model.keras").is_file() and (sweep_dir / num / "metrics.json").is_file()
        pids.add(tags["logitlab.pid"])
    assert len(pids) == 2, "two worker processes, each running job after job"
    by_shape = {}
    for run in jobs:
        by_shape.setdefault((run.data.tags["head"], run.data.tags["trainer"]), set()).add(run.data.tags["logitlab.pid"])
    assert all(len(p) == 1 for p in by_shape.values()), f"a head and trainer's seeds in one worker: {by_shape}"
    assert sorted(int(r.data.tags["hydra.job.num"]) for r in jobs) == list(range(8))

    # The report over the experiment: seeds aggregate as mean, std and a 95% interval.
    report_dir = tmp_path / "report"
    done = subprocess.run(app("report", "report.runs=experiment", f"tracking.uri='{store}'", f"hydra.run.dir={report_dir}",
                              *blobs), cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(report_dir / "summary.csv")
    assert len(table) == 4 and set(table["seeds"].astype(str)) == {"0 1"} and set(table["runs"]) == {2}
    assert table["test_accuracy_std"].notna().all() and table["test_accuracy_ci95"].notna().all()
    assert "±" in (report_dir / "summary.md").read_text()
    plots = {p.name for p in (report_dir / "plots").glob("*.png")}
    # the decision regions from the models' logged outputs, the curves from the runs' metric histories
    assert plots == {"decision_regions_blobs_multiclass.png", "curves_blobs_multiclass.png"}

    # The same sweep directory again: a second parent with its own id, not a merge into the first.
    sweep(tmp_path, store, sweep_dir, *blobs, "seed=7", "trainer.epochs=1")
    parents, children = parents_and_children(store)
    assert len(parents) == 2
    [second] = [p for p in parents if p != parent_id]
    assert len(children[second]) == 1 and len(children[parent_id]) == 8
    assert parents[second].data.tags["logitlab.sweep_id"] != parent.data.tags["logitlab.sweep_id"]


def _running_jobs(db) -> list[int]:
    """The process ids of the child runs RUNNING in the SQLite store `db` (each run's logitlab.pid)."""
    return [int(pid) for (pid,) in poll_store(
        db, "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'logitlab.pid' "
            "WHERE r.status = 'RUNNING' AND r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')")]


@pytest.mark.slow
def test_a_killed_parallel_sweeps_workers_end_with_it(tmp_path, blobs):
    """SIGTERM to a parallel sweep's process while its workers hold batches of long jobs (three heads'
    two seeds: a batch each, a third one queued): each worker ends its job KILLED and exits within
    seconds (stages/workers.watch_the_sweep), instead of running the rest of its batch, or the queued
    one, for its dead parent."""
    import signal
    import time

    import psutil

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(app("train", "-m", "hydra/launcher=parallel", *blobs, "model.head=softmax,logit,sigmoid",
                                "seed=0,1", "trainer.epochs=1000000", "trainer.verbose=0",
                                f"tracking.uri='{store}'", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    children: list = []
    try:
        deadline, running = time.monotonic() + 240, []
        while time.monotonic() < deadline and proc.poll() is None and len(running) < 2:
            time.sleep(1)
            running = _running_jobs(tmp_path / "mlflow.db")
        assert proc.poll() is None and len(running) == 2, "two jobs training, one in each worker"
        # the workers (by the running runs' pids: on Linux they are the fork server's children), the
        # fork server and the resource trackers, all stopped in the end
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = [psutil.Process(pid) for pid in running]
        assert all(w in children for w in workers)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=45)
        assert not alive, f"workers left running after their sweep was killed: {[p.pid for p in alive]}"
        _, jobs = parents_and_children(store)
        statuses = sorted(r.info.status for runs in jobs.values() for r in runs)
        assert statuses == ["KILLED", "KILLED"], "the two jobs in progress ended KILLED, no other job started"
    finally:
        for process in [*children, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if process is not None and process.is_running():
                process.kill()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_failing_jobs_do_not_stop_the_sweep(tmp_path, blobs):
    """A diverged job, and jobs that fail before their run (MNIST was never preprocessed here): the
    other job runs to the end. (A bad value fails the whole sweep before any job: test_sweep_check.)"""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    data = [o for o in blobs if not o.startswith("dataset=")]
    proc = sweep(tmp_path, store, sweep_dir, "optimizer.lr=1e10,0.001", *data, "dataset=blobs,mnist",
                 "trainer.epochs=2", check=False)

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("logitlab sweep")]
    assert len(lines) == 4 and lines[-1].endswith("3 job(s) failed; the others ran to the end")
    assert "job 0 (" in lines[0] and "failed: loss became nan in epoch 1: training diverged" in lines[0]
    missing = "mnist.npz does not exist; run its stage first: dvc repro preprocess@mnist"
    assert "job 1 (" in lines[1] and lines[1].endswith(missing)
    assert "job 3 (" in lines[2] and lines[2].endswith(missing)

    parents, children = parents_and_children(store)
    [(parent_id, parent)] = parents.items()
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_finished"] == 1 and parent.data.metrics["jobs_failed"] == 1
    assert parent.data.metrics["jobs_failed_before_run"] == 2
    by_num = {r.data.tags["hydra.job.num"]: r for r in children[parent_id]}
    assert set(by_num) == {"0", "2"}, "the jobs without data never started a run"
    assert by_num["0"].info.status == "FAILED" and by_num["0"].data.tags["logitlab.failed_epoch"] == "1"
    assert by_num["2"].info.status == "FINISHED" and "test_accuracy" in by_num["2"].data.metrics
    assert not (sweep_dir / "0" / "model.keras").exists() and (sweep_dir / "2" / "model.keras").is_file()


@pytest.mark.slow
def test_submitit_local_executor_runs_the_jobs_as_child_runs(tmp_path, blobs):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep(tmp_path, store, tmp_path / "sweep", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
          *blobs, "model.head=softmax,logit", "trainer.epochs=2")
    parents, children = parents_and_children(store)
    [(parent_id, parent)] = parents.items()
    assert parent.data.tags["hydra.launcher"].endswith("LocalLauncher") and parent.info.status == "FINISHED"
    jobs = children[parent_id]
    assert sorted(r.data.tags["head"] for r in jobs) == ["logit", "softmax"]
    assert all(r.info.status == "FINISHED" and "test_loss" in r.data.metrics for r in jobs)
    assert len({r.data.tags["logitlab.pid"] for r in jobs} | {parent.data.tags["logitlab.pid"]}) == 3, \
        "each job in its own process"


@pytest.mark.slow
def test_optuna_searches_the_learning_rate_on_validation_loss(tmp_path, blobs):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    sweep(tmp_path, store, sweep_dir, "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1",
          *blobs, "trainer.epochs=2")
    parents, children = parents_and_children(store)
    [(parent_id, parent)] = parents.items()
    jobs = children[parent_id]
    rates = [float(r.data.params["optimizer.lr"]) for r in jobs]
    assert len(jobs) == 3 and len(set(rates)) == 3 and all(1e-4 <= lr <= 1e-1 for lr in rates)
    assert parent.data.tags["hydra.sweeper"].endswith("OptunaSweeper")
    import yaml

    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = min(jobs, key=lambda r: r.data.metrics["val_loss"])
    assert result["best_value"] == pytest.approx(best.data.metrics["val_loss"], rel=1e-6)
    assert result["best_params"]["optimizer.lr"] == pytest.approx(float(best.data.params["optimizer.lr"]))


def test_slurm_launcher_config_composes_for_submitit():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.sweep.dir=/shared/sweep"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.submitit_folder == "/shared/sweep/.submitit/%j"
    assert launcher.cpus_per_task == 2 and launcher.timeout_min == 60
    assert compose_params(ROOT)["tracking"]["uri"] is None, "launcher choice leaves the job config alone"


def test_server_tracking_config_defaults_to_the_environment_then_loopback(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_params(ROOT, ["tracking=server"]).tracking.uri == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    server = compose_params(ROOT, ["tracking=server"]).tracking
    assert server.uri == "http://mlflow.team:5000" and server.retries == 3 and server.experiment == "logitlab"


@pytest.mark.slow
def test_optuna_counts_a_diverged_trial_as_failed_and_goes_on(tmp_path, blobs):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, store, sweep_dir, "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1",
                 "optimizer.lr=choice(0.001,0.003,1e10)", *blobs, "trainer.epochs=2", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    parents, children = parents_and_children(store)
    [(parent_id, _)] = parents.items()
    statuses = {(r.data.params["optimizer.lr"], r.info.status) for r in children[parent_id]}
    assert ("10000000000.0", "FAILED") in statuses and any(s == "FINISHED" for _, s in statuses)
    import yaml

    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_params"]["optimizer.lr"] in (0.001, 0.003), "the search finished on the trials that did"


# A script's first lines: `config`, conf/ composed with the command line's overrides and Hydra's node.
COMPOSED = """
import sys
from hydra import compose, initialize_config_dir
from logitlab.schema.compose import register

register()
with initialize_config_dir(sys.argv[1], version_base=None):
    config = compose(config_name="config", overrides=sys.argv[2:], return_hydra_config=True)
"""

JOBLIB_WORKER_THREADS = COMPOSED + """
import os
from joblib import Parallel, delayed
from logitlab.stages.workers import share_cores

share_cores(config)
print(Parallel(n_jobs=2)(delayed(os.getenv)(name) for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")))
"""


# (overrides, exit code, the last line of stderr as a regular expression)
REFUSED_BY_THE_CHECK = (["optimizer.lr=0.01,-1"], 2, re.escape(
    "logitlab train: error: sweep job 1 (optimizer.lr=-1): optimizer.lr must be a positive number, got -1.0"))
# the sweep's MLflow run cannot start: its store does not answer (port 9, discard: nothing listens); the
# line ends with the HTTP client's own words
STORE_DOWN = (["optimizer.lr=0.01,0.02", "tracking.uri=http://127.0.0.1:9", "tracking.retries=0",
               "tracking.timeout_s=1"], 1, re.escape("logitlab sweep: error: tracking store http://127.0.0.1:9 failed "
                                                     "to open experiment 'logitlab': ") + ".+")


@pytest.mark.parametrize("overrides, code, error", [REFUSED_BY_THE_CHECK, STORE_DOWN], ids=["check", "store"])
def test_a_parallel_sweep_that_ends_before_its_launch_leaves_no_process_behind(tmp_path, overrides, code, error):
    """A parallel train sweep starts its fork server before its check (stages/forking.fork_server);
    when the check refuses a job, or the sweep's store does not answer, the command ends with its one
    error line, and the server, which would have gone on importing TensorFlow for seconds and
    printing after it, is stopped with it."""
    import os

    import psutil

    store = [] if any(o.startswith("tracking.uri=") for o in overrides) else [f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'"]
    proc = subprocess.Popen(app("train", "-m", "hydra/launcher=parallel", *overrides, *store,
                                f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                            cwd=tmp_path, env=subprocess_env(), stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, stderr = proc.communicate(timeout=120)  # the pipe closes when every process holding it has gone
    session = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(process.pid) == proc.pid and process.status() != psutil.STATUS_ZOMBIE:
                session.append(process)
    # one may still be exiting (its files closed, its memory going: multiprocessing's resource
    # tracker, after the sweep's end closed its pipe); a fork server left importing takes seconds
    _, left = psutil.wait_procs(session, timeout=2) if session else ([], [])
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert proc.returncode == code
    assert re.fullmatch(error, stderr.strip().splitlines()[-1]), stderr[-3000:]
    assert not left, [p.cmdline() for p in left]


STOPPED_SERVER = """
import sys
from multiprocessing import forkserver

import psutil
from logitlab.stages.forking import fork_server, stop_fork_server

if sys.argv[1] == "before-exec":  # the server forked but not yet exec'd: its command line is still this process's
    psutil.Process.cmdline = lambda self, own=psutil.Process().cmdline(): own
assert fork_server("train", 2)
server = forkserver._forkserver._forkserver_pid  # the server, as multiprocessing knows it
stop_fork_server()  # what a sweep that ends before its launch does before its error line
print(psutil.pid_exists(server))
"""


@pytest.mark.parametrize("server", ["exec'd", "before-exec"])
def test_a_sweep_that_ends_before_its_launch_stops_its_fork_server_before_its_error_line(server):
    """The fork server is gone (stopped and reaped) when stop_fork_server returns, so nothing it
    imports can print after the error line the sweep prints next (stages/sweep_check.py,
    stages/sweep.py); also when it had not exec'd yet as fork_server returned, where its command line
    does not say what it is (under load, one `make test-fast` ended a refused sweep with the server's
    TensorFlow line)."""
    proc = subprocess.run([PYTHON, "-c", STOPPED_SERVER, server], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_without_a_fork_server_the_workers_import_for_themselves(monkeypatch, caplog):
    """Where multiprocessing cannot start its fork server (no Unix socket, say), the sweep goes on:
    loky starts its workers as before, each importing the app (start_workers' warm-up), with one
    warning, and this process's environment is left as it was."""
    import os
    from multiprocessing import forkserver

    from joblib.externals.loky.backend.context import get_start_method

    from logitlab.stages.forking import fork_server

    def refused() -> None:
        raise OSError("AF_UNIX path too long")

    monkeypatch.setattr(forkserver, "ensure_running", refused)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    assert fork_server("train", 2) is False
    assert get_start_method() is None and dict(os.environ) == before
    assert "no fork server for the sweep's workers (AF_UNIX path too long)" in caplog.text


@pytest.mark.parametrize(("launcher", "preset", "expected"), [
    ("hydra/launcher=parallel", {}, "share"),
    ("hydra/launcher=parallel", {"TF_NUM_INTRAOP_THREADS": "3"}, "3 and share"),
    ("hydra/launcher=basic", {}, "unset"),
])
def test_joblib_workers_get_their_share_of_the_cores(launcher, preset, expected):
    """A sweep on the parallel launcher (two joblib processes) gives each worker's TensorFlow its share
    of the cores, as make repro does its stages; a thread count the user set is kept; an in-process
    sweep is left alone. The workers are joblib's own, started after the sweep's callback ran."""
    import os

    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    env = {k: v for k, v in subprocess_env().items() if k not in THREAD_VARIABLES} | preset
    proc = subprocess.run([PYTHON, "-c", JOBLIB_WORKER_THREADS, str(ROOT / "conf"), launcher], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = proc.stdout.strip().splitlines()[-1]
    assert seen == {"share": str([share, share]), "3 and share": str(["3", share]),
                    "unset": str([None, None])}[expected]


WARM_WORKERS = COMPOSED + """
import json, os, pickle
from hydra.utils import instantiate
from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
from joblib import Parallel, delayed
from logitlab.stages.workers import Workers


def probe():
    import os
    return os.getpid(), sorted(m for m in ("tensorflow", "mlflow", "logitlab.stages.train", "matplotlib.figure",
                                           "mlflow.store.tracking.sqlalchemy_store") if m in sys.modules), [
        os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")]


workers = Workers()
workers.on_multirun_start(config)
assert pickle.loads(pickle.dumps(workers))._warm is None, "a job's copy of the callback carries no warm-up"
launcher = instantiate(config.hydra.launcher)  # then its jobs' Parallel, as hydra_joblib_launcher launches them
joblib_cfg = dict(launcher.joblib, backend="loky")
process_joblib_cfg(joblib_cfg)
seen = Parallel(**joblib_cfg)(delayed(probe)() for _ in range(4))
workers.on_multirun_end(config)
print(json.dumps([seen, os.environ.get("OMP_NUM_THREADS")]))
"""


@pytest.mark.parametrize(("app_name", "warm"), [("train", True), ("report", False)])
def test_a_parallel_sweeps_workers_have_imported_the_app_before_its_first_job(app_name, warm):
    """Workers, the first callback, starts the joblib launcher's workers, each importing the train
    app's modules and those its jobs import on first use (MLflow's SQL store, matplotlib's Figure),
    before the sweep is checked; the launcher's jobs then run in those same processes (joblib's
    reusable executor, made with the launcher's settings), which have imported everything before
    the first job starts (on Linux, forked from a server that imported them). Another app's sweep
    starts no worker early. Either way each worker has joblib's limits on OpenMP and BLAS threads and
    its share of TensorFlow's, and the sweep's own process keeps its environment."""
    import json
    import os

    env = {k: v for k, v in subprocess_env().items() if k not in (*THREAD_VARIABLES, "OMP_NUM_THREADS",
                                                                   "OPENBLAS_NUM_THREADS")}
    proc = subprocess.run([PYTHON, "-c", WARM_WORKERS, str(ROOT / "conf"), "hydra/launcher=parallel",
                           f"hydra.job.name={app_name}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen, parent_omp = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len({pid for pid, _, _ in seen}) <= 2
    imported = [modules for _, modules, _ in seen]
    expected = ["logitlab.stages.train", "matplotlib.figure", "mlflow", "mlflow.store.tracking.sqlalchemy_store",
                "tensorflow"] if warm else []
    assert imported == [expected] * 4, imported
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert [threads for _, _, threads in seen] == [[share, share, share]] * 4
    assert parent_omp is None


@pytest.mark.parametrize(("jobs", "runs"), [
    ([["model.head=logit", "seed=0"], ["model.head=logit", "seed=1"], ["model.head=softmax", "seed=0"],
      ["model.head=softmax", "seed=1"]], [2, 2]),
    ([["seed=0", "model.head=logit"], ["seed=0", "model.head=softmax"], ["seed=1", "model.head=logit"]], [1, 1, 1]),
    ([["precision=float32", "optimizer.lr=0.1", "+seed=0"], ["precision=float32", "optimizer.lr=0.3", "+seed=0"],
      ["precision=mixed_float16", "optimizer.lr=0.1", "+seed=0"]], [2, 1]),
    ([["trainer.epochs=1"], ["trainer.epochs=2"]], [1, 1]),
])
def test_trace_runs_are_consecutive_jobs_that_differ_only_in_seed_or_learning_rate(jobs, runs):
    from logitlab.stages.workers import trace_runs

    assert trace_runs(jobs) == runs


def _batching(*overrides):
    """conf/ composed as a multirun of the train app with `overrides`, and what batch_by_traces set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from logitlab.stages.workers import batch_by_traces

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        config = compose("config", ["hydra.job.name=train", *overrides], return_hydra_config=True)
        return batch_by_traces(config, GlobalHydra.instance().config_loader()), config.hydra.launcher


@pytest.mark.parametrize(("overrides", "batch", "settings"), [
    # the study's subset: 9 heads x precisions, each 5 seeds in a row
    (["hydra/launcher=parallel", "optimizer.lr=0.01", "study=blobs"], 5, ("5", "all")),
    # the whole study on blobs: the learning rates and seeds of a head and precision in a row (6 x 5)
    (["hydra/launcher=parallel", "study=blobs"], 30, ("30", "all")),
    (["hydra/launcher=parallel", "study=blobs", "hydra.launcher.batch_size=2"], None, ("2", "2*n_jobs")),
    (["hydra/launcher=parallel", "study=blobs", "model.head=logit", "precision=float32"], None, ("auto", "2*n_jobs")),
    (["hydra/launcher=parallel", "study=blobs", "optimizer.lr=0.01", "seed=0"], None, ("auto", "2*n_jobs")),
    (["hydra/launcher=basic", "study=blobs"], None, None),
])
def test_a_parallel_sweep_hands_each_worker_whole_runs_of_jobs_that_share_their_traces(overrides, batch, settings):
    """On the joblib launcher, the numerics study's jobs go to the workers in batches of the jobs of
    one head and precision, all dispatched at once (so joblib keeps them together); not when the
    user set joblib's batching, each run is one job or there is only one run, nor on another launcher."""
    found, launcher = _batching("experiment=numerics_study", *overrides)
    assert found == batch
    if settings is not None:
        assert (str(launcher.batch_size), str(launcher.pre_dispatch)) == settings
