"""Keras `fit` of one head on one dataset, tracked as one MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import keras
import mlflow
import numpy as np
from omegaconf import DictConfig

from logitlab import tracking
from logitlab.config import batch_size, data_file, dataset_config, run_params, validate_training
from logitlab.data import atomic_path, load_processed
from logitlab.errors import UserError
from logitlab.models import build_model, compile_model

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's `loss`, `accuracy`, `val_loss`, `val_accuracy` to the active MLflow run.

    Synchronous and unguarded on purpose: a metric that cannot be logged fails the run
    instead of vanishing (mlflow.keras.MlflowCallback swallows such errors).
    """

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if logs:
            mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


def save_model(model: keras.Model, run_dir: Path) -> Path:
    target = run_dir / MODEL_FILE
    with atomic_path(target) as tmp:
        model.save(tmp)
    return target


def train(cfg: DictConfig, root: Path, run_dir: Path, run_name: str, tags: Mapping[str, str]) -> str:
    """Train `cfg.model.head` on `cfg.dataset`; write the model and run.json to `run_dir`; return the run id."""
    validate_training(cfg)
    ds = dataset_config(cfg)
    data = load_processed(data_file(cfg, root, "processed"), cfg.dataset)
    x, y = data["x_train"], data["y_train"]
    if len(y) and (y.min() < 0 or y.max() >= ds.num_classes):
        raise UserError(f"labels of {cfg.dataset} span {y.min()}..{y.max()}, beyond num_classes={ds.num_classes}")

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    head = cfg.model.head
    model = build_model(x.shape[1], ds.num_classes, list(cfg.model.layers), head, cfg.model.activation)
    compile_model(model, head, cfg.optimizer.lr, cfg.trainer.steps_per_execution)

    experiment_id = tracking.setup(cfg.tracking, root)
    with mlflow.start_run(run_name=run_name, tags=dict(tags)) as run:
        mlflow.log_params(run_params(cfg))
        log.info("training %s: %s on %s, %d examples, run %s", run_name, head, cfg.dataset, len(x), run.info.run_id)
        model.fit(
            x, y,
            batch_size=batch_size(cfg),
            epochs=cfg.trainer.epochs,
            validation_split=cfg.trainer.validation_split,
            shuffle=True,
            verbose=cfg.trainer.verbose,
            callbacks=[EpochMetrics()],
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, run_dir)
        tracking.write_run_file(run_dir, {
            "run_id": run.info.run_id, "experiment_id": experiment_id, "run_name": run_name,
            "dataset": cfg.dataset, "head": head,
        })
    log.info("run %s: %s", run.info.run_id, tracking.runs_link(experiment_id))
    return run.info.run_id


def predict_outputs(model: keras.Model, x: np.ndarray, batch: int) -> np.ndarray:
    """What the last layer outputs: probabilities for the softmax head, logits for the logit head."""
    return np.asarray(model.predict(x, batch_size=batch, verbose=0))
