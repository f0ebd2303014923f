"""What each DVC stage (and Hydra app) does with a composed config.

Each function takes the composed config and the project root: paths in the config are relative
to that root, never to the working directory. TensorFlow is imported only by train/evaluate.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from logitlab.config import data_file, dataset_config, under_root, variant
from logitlab.errors import RunFailed, UserError, first_line

log = logging.getLogger(__name__)


def _job() -> tuple[bool, int, list[str], Path]:
    """(is multirun, job number, task overrides, job output dir) of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    num = hc.job.num if multirun else 0  # only multirun jobs are numbered
    return multirun, num, list(hc.overrides.task), Path(hc.runtime.output_dir)


def _sweep_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(str(HydraConfig.get().sweep.dir)).resolve()


def fetch(cfg: DictConfig, root: Path) -> None:
    """Fetch (MNIST) or generate (blobs) the raw data of `cfg.dataset`."""
    from logitlab.data import FETCHERS

    ds = dataset_config(cfg)
    if cfg.dataset not in FETCHERS:
        raise UserError(f"no fetcher for dataset {cfg.dataset!r}; valid: {', '.join(FETCHERS)}")
    FETCHERS[cfg.dataset](OmegaConf.to_container(ds.fetch, resolve=True), data_file(cfg, root, "raw"))


def preprocess(cfg: DictConfig, root: Path) -> None:
    """Raw data of `cfg.dataset` to float32 train/test arrays."""
    from logitlab.data import PREPROCESSORS
    from logitlab.data import preprocess as run

    ds = dataset_config(cfg)
    if cfg.dataset not in PREPROCESSORS:
        raise UserError(f"no preprocessing for dataset {cfg.dataset!r}; valid: {', '.join(PREPROCESSORS)}")
    run(cfg.dataset, OmegaConf.to_container(ds.preprocess, resolve=True),
        data_file(cfg, root, "raw"), data_file(cfg, root, "processed"))


def _run_dir(cfg: DictConfig, root: Path, job_dir: Path) -> Path:
    return under_root(root, cfg.run_dir) if cfg.run_dir is not None else job_dir


def train(cfg: DictConfig, root: Path) -> float:
    """Train one head on one dataset (one MLflow run); with evaluate.after_train, evaluate it too.

    Returns the last epoch's validation loss (training loss without validation): the objective a
    sweeper such as optuna minimizes."""
    import os

    from logitlab.config import validate_training
    from logitlab.tracking import redact_text

    validate_training(cfg)  # before TensorFlow's import: bad input fails in a fraction of a second
    from logitlab.data import processed_hint, require
    from logitlab.sweep import SWEEP_TAG, read_sweep
    from logitlab.tracking import open_store

    require(data_file(cfg, root, "processed"), processed_hint(cfg.dataset))  # before the store is touched
    open_store(cfg.tracking, root, "the train stage")  # and a store that does not answer fails now
    from logitlab.training import train as run

    multirun, num, overrides, job_dir = _job()
    name = variant(cfg)
    tags = {"hydra.job.num": str(num), "hydra.overrides": redact_text(" ".join(overrides))}
    parent = None
    if multirun:
        sweep = read_sweep(_sweep_dir()) or {}
        parent = sweep.get("parent_run_id")
        tags[SWEEP_TAG] = sweep.get("sweep_id", "")
    if os.environ.get("DVC_EXP_NAME"):  # a `dvc exp run`: name the experiment its runs belong to
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    run_dir = _run_dir(cfg, root, job_dir)
    _, last = run(cfg, root, run_dir, run_name=f"{name}-{num}" if multirun else name, tags=tags, parent_run_id=parent)
    if cfg.evaluate.after_train:
        _evaluate(cfg, root)  # the store is open, its stale runs reaped
    return float(last.get("val_loss", last["loss"]))


def evaluate(cfg: DictConfig, root: Path) -> None:
    """Evaluate the model in run_dir on its test set, into the run that trained it."""
    from logitlab.tracking import open_store

    open_store(cfg.tracking, root, "the evaluate stage")
    _evaluate(cfg, root)


def _evaluate(cfg: DictConfig, root: Path) -> None:
    from logitlab.evaluation import evaluate as run

    run_dir = _run_dir(cfg, root, _job()[3])
    metrics = under_root(root, cfg.metrics_file) if cfg.metrics_file else run_dir / "metrics.json"
    predictions = under_root(root, cfg.predictions_file) if cfg.predictions_file else run_dir / "predictions.json"
    run(cfg, root, run_dir, metrics, predictions)


def report(cfg: DictConfig, root: Path) -> None:
    """The comparison table and plots of the runs, logged as a report run."""
    from logitlab.report import report as run
    from logitlab.tracking import open_store

    open_store(cfg.tracking, root, "the report stage")
    out_dir = under_root(root, cfg.report.out_dir) if cfg.report.out_dir is not None else _job()[3]
    run(cfg, root, out_dir)


def _fail(stage: str, exc: BaseException, exit_code: int) -> None:
    """One line for the user; in a sweep, the job is recorded as failed and the sweep goes on."""
    from logitlab.tracking import redact_text

    message = redact_text(first_line(exc))
    print(f"logitlab {stage}: error: {message}", file=sys.stderr)
    multirun, num, overrides, _ = _job()
    if not multirun:
        sys.exit(exit_code)
    from logitlab.sweep import record_failure

    record_failure(_sweep_dir(), num, [redact_text(o) for o in overrides], message)


def _is_store_error(exc: BaseException) -> bool:
    """An MLflow or SQL error that escaped store_call's wrapping: still a store failure, not a bug."""
    return type(exc).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "requests", "urllib3")


def entry(stage: Callable[[DictConfig, Path], Any], root: Path) -> Callable[[DictConfig], Any]:
    """The body of a Hydra app: run `stage`, and turn a failure into one line on stderr.

    A user mistake exits 2, a job that could not complete (diverged, tracking store down) exits 1; in
    a multirun the failed job is recorded and the other jobs go on (sweep.MlflowSweep reports them
    and exits 1 at the end), whatever the failure. Ctrl-C and SIGTERM always end the process."""

    @functools.wraps(stage)
    def run(cfg: DictConfig) -> Any:
        from logitlab.tracking import redact_logs

        redact_logs()
        try:
            return stage(cfg, root)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Interrupted): the run is KILLED
            name = getattr(exc, "signal_name", "SIGINT")
            print(f"logitlab {stage.__name__}: interrupted by {name}", file=sys.stderr)
            sys.exit(128 + getattr(signal, name))
        except (UserError, RunFailed) as exc:
            _fail(stage.__name__, exc, exc.exit_code)
        except Exception as exc:
            if _is_store_error(exc):
                _fail(stage.__name__, exc, 1)
            elif _job()[0]:  # a bug, in one job of a sweep: its traceback in the job's log, the sweep goes on
                log.exception("job failed")
                _fail(stage.__name__, exc, 1)
            else:
                raise
        return None  # a failed job has no objective: optuna records a failed trial and goes on

    return run
