"""Training of one head on one dataset and task, tracked as one MLflow run.

Two trainers log the same metric names (`loss`, `accuracy`, `val_loss`, `val_accuracy` per epoch),
so their runs compare side by side:
- `fit`: Keras `fit`;
- `gradient_tape`: the hand-written loop of the MNIST reference (tf.data shuffle + batch,
  tf.GradientTape, apply_gradients, a running accuracy), which also logs `step_loss` and
  `step_accuracy` every `log_every_n_steps` steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import mlflow
import numpy as np
from omegaconf import DictConfig

from logitlab import tracking
from logitlab.config import batch_size, data_file, dataset_config, run_params, validate_training, variant
from logitlab.data import atomic_path, load_processed
from logitlab.errors import UserError
from logitlab.models import accuracy_for, build_model, compile_model

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


def task_labels(y: np.ndarray, task: str, positive_class: int) -> np.ndarray:
    """Multi-class labels as they are; binary ones as float32 (N, 1): 1 for `positive_class`, else 0."""
    if task == "binary":
        return (y == positive_class).astype(np.float32).reshape(-1, 1)
    return y


def log_epoch(epoch: int, logs: Mapping[str, float]) -> None:
    """Synchronous and unguarded on purpose: a metric that cannot be logged fails the run
    instead of vanishing (mlflow.keras.MlflowCallback swallows such errors)."""
    mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's `loss`, `accuracy`, `val_loss`, `val_accuracy` to the active MLflow run."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        if logs:
            log_epoch(epoch, logs)


def fit_keras(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: DictConfig) -> None:
    model.fit(
        x, y,
        batch_size=batch_size(cfg),
        epochs=cfg.trainer.epochs,
        validation_split=cfg.trainer.validation_split,
        shuffle=True,
        verbose=cfg.trainer.verbose,
        callbacks=[EpochMetrics()],
    )


def fit_gradient_tape(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: DictConfig) -> None:
    """The reference notebook's loop, on the model's compiled loss and optimizer."""
    import tensorflow as tf
    from mlflow.entities import Metric

    trainer = cfg.trainer
    n_val = int(len(x) * trainer.validation_split)  # the last fraction, as Keras's validation_split
    x_train, y_train = x[: len(x) - n_val], y[: len(y) - n_val]
    dataset = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(trainer.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(batch_size(cfg))
        .prefetch(tf.data.AUTOTUNE)
    )
    loss_fn, optimizer = model.loss, model.optimizer
    accuracy = accuracy_for(cfg.model.head, cfg.task)
    mean_loss = keras.metrics.Mean()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            loss = loss_fn(yb, out)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        accuracy.update_state(yb, out)
        mean_loss.update_state(loss, sample_weight=tf.shape(xb)[0])  # weighted by batch size, as fit does
        return loss

    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    step = 0
    for epoch in range(trainer.epochs):
        start = time.perf_counter()
        accuracy.reset_state()
        mean_loss.reset_state()
        step_metrics = []
        for xb, yb in dataset:
            loss = train_step(xb, yb)
            step += 1
            if step % trainer.log_every_n_steps == 0:
                now = int(time.time() * 1000)
                step_metrics += [Metric("step_loss", float(loss), now, step),
                                 Metric("step_accuracy", float(accuracy.result()), now, step)]
        logs = {"loss": float(mean_loss.result()), "accuracy": float(accuracy.result())}
        if n_val:
            val = model.evaluate(x[-n_val:], y[-n_val:], batch_size=batch_size(cfg), verbose=0, return_dict=True)
            logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        if step_metrics:
            client.log_batch(run_id, metrics=step_metrics)  # one call per epoch, not one per step
        log_epoch(epoch, logs)
        if trainer.verbose:
            log.info("epoch %d/%d %.1fs %s", epoch + 1, trainer.epochs, time.perf_counter() - start,
                     " ".join(f"{k}={v:.4f}" for k, v in logs.items()))


TRAINERS = {"fit": fit_keras, "gradient_tape": fit_gradient_tape}


def save_model(model: keras.Model, run_dir: Path) -> Path:
    target = run_dir / MODEL_FILE
    with atomic_path(target) as tmp:
        model.save(tmp)
    return target


def train(cfg: DictConfig, root: Path, run_dir: Path, run_name: str, tags: Mapping[str, str] | None = None) -> str:
    """Train `cfg.model.head` on `cfg.dataset` for `cfg.task`; write model.keras and run.json to `run_dir`.

    The run is tagged with what identifies its variant (dataset, task, head, trainer), plus `tags`."""
    validate_training(cfg)
    ds = dataset_config(cfg)
    data = load_processed(data_file(cfg, root, "processed"), cfg.dataset)
    x, labels = data["x_train"], data["y_train"]
    if len(labels) and (labels.min() < 0 or labels.max() >= ds.num_classes):
        raise UserError(f"labels of {cfg.dataset} span {labels.min()}..{labels.max()}, beyond num_classes={ds.num_classes}")
    y = task_labels(labels, cfg.task, ds.binary.positive_class)

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    head = cfg.model.head
    model = build_model(x.shape[1], ds.num_classes, list(cfg.model.layers), head, cfg.model.activation, cfg.task)
    compile_model(model, head, cfg.optimizer.lr, cfg.trainer.steps_per_execution, cfg.task)

    experiment_id = tracking.setup(cfg.tracking, root)
    identity = {"dataset": cfg.dataset, "task": cfg.task, "head": head, "trainer": cfg.trainer.name,
                "logitlab.variant": variant(cfg)}
    with mlflow.start_run(run_name=run_name, tags={**identity, **(tags or {})}) as run:
        mlflow.log_params(run_params(cfg))
        log.info("training %s: %s head, %s %s, %s trainer, %d examples, run %s", run_name, head, cfg.dataset,
                 cfg.task, cfg.trainer.name, len(x), run.info.run_id)
        TRAINERS[cfg.trainer.name](model, x, y, cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        mlflow.log_artifact(str(save_model(model, run_dir)))
        tracking.write_run_file(run_dir, {
            "run_id": run.info.run_id, "experiment_id": experiment_id, "run_name": run_name,
            "dataset": cfg.dataset, "task": cfg.task, "head": head, "trainer": cfg.trainer.name,
        })
    log.info("run %s: %s", run.info.run_id, tracking.runs_link(experiment_id))
    return run.info.run_id
