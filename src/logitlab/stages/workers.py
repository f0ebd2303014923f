"""A parallel sweep's worker processes, set up before anything else of the sweep: `Workers`, the
first Hydra callback in conf/config.yaml, gives them their share of the cores (`share_cores`) and,
on the joblib launcher, has the app's modules imported for them (`start_workers`: on Linux by the
fork server they are forked from, `fork_server`) while the other callbacks check the sweep
(stages.sweep_check) and open its MLflow run (stages.sweep); then it hands each worker whole runs
of jobs that share their traced graphs (`batch_by_traces`)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from logitlab.errors import UserError
from logitlab.stages.cores import worker_env
from logitlab.stages.forking import fork_server
from logitlab.stages.job import TRACKED_APPS
from logitlab.stages.sweep_check import BASIC_SWEEPER, grid_jobs

log = logging.getLogger(__name__)


def _joblib_workers(config: DictConfig) -> int | None:
    """How many worker processes the sweep's joblib launcher runs; None on another launcher."""
    launcher = config.hydra.launcher
    if "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return None
    from joblib import effective_n_jobs

    return effective_n_jobs(launcher.get("n_jobs"))


SWEEP_PARENT = "LOGITLAB_SWEEP_PARENT"  # the sweep's process id, in its joblib workers' environment
PARENT_POLL_S = 1.0
EXIT_GRACE_S = 10.0
_watching: list[int] = []


def watch_the_sweep() -> None:
    """In a joblib worker of a sweep (SWEEP_PARENT names another process): a daemon thread that sends
    this process SIGTERM once the sweep's process is gone (killed: SIGTERM, SIGKILL, a scheduler's
    time limit), so the job running here ends KILLED, as an interrupted job does, and then ends the
    worker (EXIT_GRACE_S later); a job it takes meanwhile (a batch joblib had queued) does not start.
    Without it the worker ran on through the batch of jobs it holds (jobs of a minute each with MNIST
    in float16), then waited minutes for a task that never came. The sweep's process is watched by
    its id, not as this process's parent: a worker forked by the fork server (`fork_server`) is the
    server's child, and the server outlives the sweep as long as a worker does."""
    import signal
    import threading
    import time

    from logitlab.tracking.reaper import process_alive

    if _watching and not process_alive(str(_watching[0]), None):  # a job taken after the sweep died: not started
        os._exit(128 + signal.SIGTERM)
    parent = os.environ.get(SWEEP_PARENT, "")
    if not parent.isdigit() or int(parent) == os.getpid() or _watching:
        return
    _watching.append(int(parent))

    def watch() -> None:
        while process_alive(parent, None):  # gone, or a zombie its own parent has yet to reap
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(EXIT_GRACE_S)  # the job ends its run KILLED; an idle worker would wait for a task
        os._exit(128 + signal.SIGTERM)  # for minutes: the other processes keep joblib's queue open

    threading.Thread(target=watch, name="logitlab-sweep-parent", daemon=True).start()


def share_cores(config: DictConfig) -> None:
    """On the joblib launcher, each worker process's TensorFlow gets its share of the cores, as
    `make repro`'s workers do (cores.worker_env: cores // n_jobs threads, unless set already). Set in
    this process's environment before its workers start (start_workers), which inherit it; this
    process runs no job then. joblib does the same for OpenMP and BLAS, not for TensorFlow."""
    workers = _joblib_workers(config)
    if workers is not None:
        os.environ.update(worker_env(workers))
        os.environ[SWEEP_PARENT] = str(os.getpid())  # the workers watch it (watch_the_sweep)


# What a train job imports on first use, not with the stage: MLflow's SQL store (~0.5 s, inside the
# store's first-use lock, where the other worker's first job waited for it), the run's picture
# (matplotlib's Figure and Agg canvas), GitPython (MLflow's source-version tag).
FIRST_USE = ("mlflow.store.tracking.sqlalchemy_store", "matplotlib.figure", "matplotlib.backends.backend_agg", "git")


def _import_app(app: str) -> str | None:
    """In a worker: the modules the app's jobs import first, imported as its main imports them
    (pipelines/train.py: Keras without its unused extras, then the stage), then those its jobs
    import on first use (FIRST_USE, those that import here). Returns None, or what failed, never
    raises: joblib answers an exception by stopping the workers the jobs share, and the jobs report
    the failure themselves when they import the same modules."""
    import importlib

    try:
        if app == "train":
            from logitlab.model import import_keras

            import_keras()
            import logitlab.stages.train  # noqa: F401

            for name in FIRST_USE:
                with contextlib.suppress(ImportError):  # a job that needs it says so (GitPython without git)
                    importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def start_workers(config: DictConfig) -> Any:
    """On the joblib launcher, for a tracked app: the launcher's worker processes get the app's modules
    (TensorFlow, Keras, MLflow: ~5 s a process) while this process checks the sweep and opens its
    MLflow run, instead of after: on Linux from the fork server (`fork_server`), elsewhere imported by
    each worker, started now. They are joblib's reusable executor, made with the launcher's own
    settings (as hydra_joblib_launcher's launch makes them), so the launcher's Parallel gets the same
    processes back, and its first jobs start in workers that have imported everything. Returns the
    warm-up's results as a generator, or None.
    Measured on 2 cores: the numerics study's 45-job subset took 30.0 s against 31.5 s with the
    workers started after the sweep check, and 32.6 s before."""
    workers = _joblib_workers(config)
    if workers is None or config.hydra.job.name not in TRACKED_APPS:
        return None
    app = str(config.hydra.job.name)
    if fork_server(app, workers):
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    joblib_cfg = {k: v for k, v in launcher.items() if k != "_target_"}
    joblib_cfg["backend"] = "loky"
    process_joblib_cfg(joblib_cfg)
    return Parallel(return_as="generator_unordered", **joblib_cfg)(delayed(_import_app)(app) for _ in range(workers))


# Jobs whose overrides differ only in these share their traced graphs in a worker: the trace cache's
# key leaves out the learning rate, a variable the graphs read (logitlab.model.compiled), and the seed
# sets initial values only.
TRACE_NEUTRAL = frozenset({"seed", "optimizer.lr"})
JOBLIB_BATCHING = {"batch_size": "auto", "pre_dispatch": "2*n_jobs"}  # joblib's own, as Hydra's config has them


def trace_runs(jobs: list[list[str]]) -> list[int]:
    """The lengths of the runs of consecutive jobs (lists of overrides) that share their traces: the
    same overrides but for the TRACE_NEUTRAL keys."""
    runs: list[int] = []
    last: tuple[str, ...] | None = None
    for job in jobs:
        shape = tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") not in TRACE_NEUTRAL)
        if runs and shape == last:
            runs[-1] += 1
        else:
            runs.append(1)
        last = shape
    return runs


def batch_by_traces(config: DictConfig, loader: Any = None) -> int | None:
    """On the joblib launcher with joblib's own batching, for a grid sweep of a tracked app whose jobs
    come in runs of one length that share their traces (a seed sweep of several heads or precisions:
    Hydra's grid varies the last key fastest): joblib's batches are made those runs, all dispatched
    at once (batch_size, pre_dispatch=all), so that a worker takes whole runs and traces each once.
    Otherwise each run's first jobs went to both workers, and each traced it: the numerics study's
    45-job subset traced 18 times, where 10 do now (joblib splits the last runs into single jobs,
    for an even end), and took 26.1 s against 29.8 s on 2 cores (two alternating runs each).
    Returns the batch size set, or None: another launcher or sweeper, batching the user set, runs
    of one job, one run (its traces are made once a worker anyway), or a sweep the check refuses."""
    launcher = config.hydra.launcher
    if (_joblib_workers(config) is None or config.hydra.job.name not in TRACKED_APPS
            or str(config.hydra.sweeper.get("_target_", "")) != BASIC_SWEEPER
            or any(str(launcher.get(key)) != value for key, value in JOBLIB_BATCHING.items())):
        return None
    if loader is None:
        from hydra.core.global_hydra import GlobalHydra

        if not GlobalHydra.instance().is_initialized():
            return None
        loader = GlobalHydra.instance().config_loader()
    try:
        jobs, _ = grid_jobs(config, loader)
    except UserError:
        return None  # the sweep check says why
    runs = trace_runs(jobs)
    if len(runs) < 2 or len(set(runs)) > 1 or runs[0] < 2:
        return None
    from omegaconf import read_write

    with read_write(launcher):
        launcher.batch_size, launcher.pre_dispatch = str(runs[0]), "all"
    return runs[0]


class Workers(Callback):
    """A sweep's worker processes, set up first (hydra.callbacks in conf/config.yaml): their share of
    the cores (share_cores), then, on the joblib launcher, started and importing (start_workers);
    each job in them ends with the sweep's process (watch_the_sweep).

    The warm-up's generator is kept until the sweep ends. If the sweep ends early instead (refused
    by its check, or its store does not answer), the generator goes with the callbacks as Hydra
    exits, and joblib then stops the workers at once: what should happen, so joblib's warning about
    the tasks it dropped is not shown (the user sees the one line that says why the sweep stopped).
    The batching is set after the warm-up has started, whose one task per worker is not batched."""

    def __init__(self) -> None:
        self._warm: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into every job with Hydra's context: the warm-up stays in this process."""
        return {"_warm": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        share_cores(config)
        self._warm = start_workers(config)
        if self._warm is not None:
            warnings.filterwarnings("ignore", message=r".*You could benefit from adjusting the input task iterator",
                                    category=UserWarning, module=r"joblib\.")
        batch_by_traces(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        watch_the_sweep()  # in a joblib worker: end with the sweep

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        warm, self._warm = self._warm, None
        for error in warm or ():
            if error:
                log.warning("a sweep worker could not import the app's modules: %s", error)
