"""A parallel sweep's worker processes, set up before anything else of the sweep: `Workers`, the
first Hydra callback in conf/config.yaml, gives them their share of the cores (`share_cores`) and,
on the joblib launcher, starts them importing the app's modules (`start_workers`) while the other
callbacks check the sweep (stages.sweep_check) and open its MLflow run (stages.sweep)."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from logitlab.stages.cores import worker_env
from logitlab.stages.job import TRACKED_APPS

log = logging.getLogger(__name__)


def _joblib_workers(config: DictConfig) -> int | None:
    """How many worker processes the sweep's joblib launcher runs; None on another launcher."""
    launcher = config.hydra.launcher
    if "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return None
    from joblib import effective_n_jobs

    return effective_n_jobs(launcher.get("n_jobs"))


def share_cores(config: DictConfig) -> None:
    """On the joblib launcher, each worker process's TensorFlow gets its share of the cores, as
    `make repro`'s workers do (cores.worker_env: cores // n_jobs threads, unless set already). Set in
    this process's environment before its workers start (start_workers), which inherit it; this
    process runs no job then. joblib does the same for OpenMP and BLAS, not for TensorFlow."""
    workers = _joblib_workers(config)
    if workers is not None:
        os.environ.update(worker_env(workers))


def _import_app(app: str) -> str | None:
    """In a worker: the modules the app's jobs import first, imported as its main imports them
    (pipelines/train.py: Keras without its unused extras, then the stage). Returns None, or what
    failed, never raises: joblib answers an exception by stopping the workers the jobs share, and
    the jobs report the failure themselves when they import the same modules."""
    try:
        if app == "train":
            from logitlab.model import import_keras

            import_keras()
            import logitlab.stages.train  # noqa: F401
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def start_workers(config: DictConfig) -> Any:
    """On the joblib launcher, for a tracked app: the launcher's worker processes started now, each
    importing the app's modules (TensorFlow, Keras, MLflow: ~5 s a process) while this process
    checks the sweep and opens its MLflow run, instead of after. They are joblib's reusable
    executor, made with the launcher's own settings (as hydra_joblib_launcher's launch makes them),
    so the launcher's Parallel gets the same processes back, and its first jobs start in workers
    that have imported everything. Returns the warm-up's results as a generator, or None.
    Measured on 2 cores: the numerics study's 45-job subset took 30.0 s against 31.5 s with the
    workers started after the sweep check, and 32.6 s before."""
    workers = _joblib_workers(config)
    if workers is None or config.hydra.job.name not in TRACKED_APPS:
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    joblib_cfg = {k: v for k, v in launcher.items() if k != "_target_"}
    joblib_cfg["backend"] = "loky"
    process_joblib_cfg(joblib_cfg)
    app = str(config.hydra.job.name)
    return Parallel(return_as="generator_unordered", **joblib_cfg)(delayed(_import_app)(app) for _ in range(workers))


class Workers(Callback):
    """A sweep's worker processes, set up first (hydra.callbacks in conf/config.yaml): their share of
    the cores (share_cores), then, on the joblib launcher, started and importing (start_workers).

    The warm-up's generator is kept until the sweep ends. If the sweep ends early instead (refused
    by its check, or its store does not answer), the generator goes with the callbacks as Hydra
    exits, and joblib then stops the workers at once: what should happen, so joblib's warning about
    the tasks it dropped is not shown (the user sees the one line that says why the sweep stopped)."""

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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        warm, self._warm = self._warm, None
        for error in warm or ():
            if error:
                log.warning("a sweep worker could not import the app's modules: %s", error)
