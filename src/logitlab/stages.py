"""What each DVC stage (and Hydra app) does with a composed config.

Each function takes the composed config and the project root: paths in the config are relative
to that root, never to the working directory. TensorFlow is imported only by train/evaluate.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from logitlab.config import data_file, dataset_config, under_root, variant
from logitlab.errors import UserError


def _job() -> tuple[bool, int, list[str], Path]:
    """(is multirun, job number, task overrides, job output dir) of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    num = hc.job.num if multirun else 0  # only multirun jobs are numbered
    return multirun, num, list(hc.overrides.task), Path(hc.runtime.output_dir)


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


def train(cfg: DictConfig, root: Path) -> None:
    """Train one head on one dataset (one MLflow run); with evaluate.after_train, evaluate it too."""
    from logitlab.config import validate_training

    validate_training(cfg)  # before TensorFlow's import: bad input fails in a fraction of a second
    from logitlab.training import train as run

    multirun, num, overrides, job_dir = _job()
    name = variant(cfg)
    tags = {"hydra.job.num": str(num), "hydra.overrides": " ".join(overrides)}
    run_dir = _run_dir(cfg, root, job_dir)
    run(cfg, root, run_dir, run_name=f"{name}-{num}" if multirun else name, tags=tags)
    if cfg.evaluate.after_train:
        evaluate(cfg, root)


def evaluate(cfg: DictConfig, root: Path) -> None:
    """Evaluate the model in run_dir on its test set, into the run that trained it."""
    from logitlab.evaluation import evaluate as run

    run_dir = _run_dir(cfg, root, _job()[3])
    metrics = under_root(root, cfg.metrics_file) if cfg.metrics_file else run_dir / "metrics.json"
    predictions = under_root(root, cfg.predictions_file) if cfg.predictions_file else run_dir / "predictions.json"
    run(cfg, root, run_dir, metrics, predictions)


def report(cfg: DictConfig, root: Path) -> None:
    """The comparison table and plots of the runs, logged as a report run."""
    from logitlab.report import report as run

    out_dir = under_root(root, cfg.report.out_dir) if cfg.report.out_dir is not None else _job()[3]
    run(cfg, root, out_dir)


def entry(stage: Callable[[DictConfig, Path], None], root: Path) -> Callable[[DictConfig], None]:
    """The body of a Hydra app: run `stage`, and turn a UserError into one line and exit code 2."""

    @functools.wraps(stage)
    def run(cfg: DictConfig) -> None:
        try:
            stage(cfg, root)
        except UserError as exc:
            print(f"logitlab {stage.__name__}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    return run
