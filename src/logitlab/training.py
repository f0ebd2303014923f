"""Training of one head on one dataset and task, tracked as one MLflow run.

Two trainers log the same metric names (`loss`, `accuracy`, `val_loss`, `val_accuracy` per epoch),
so their runs compare side by side:
- `fit`: Keras `fit`;
- `gradient_tape`: the hand-written loop of the MNIST reference (tf.data shuffle + batch,
  tf.GradientTape, apply_gradients, a running accuracy), which also logs `step_loss` and
  `step_accuracy` every `log_every_n_steps` steps.
"""

from __future__ import annotations

import gc
import logging
import math
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
from logitlab.errors import Diverged, UserError
from logitlab.models import accuracy_for, build_model, compile_model

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


def task_labels(y: np.ndarray, task: str, positive_class: int) -> np.ndarray:
    """Multi-class labels as they are; binary ones as float32 (N, 1): 1 for `positive_class`, else 0."""
    if task == "binary":
        return (y == positive_class).astype(np.float32).reshape(-1, 1)
    return y


def diverged(epoch: int, logs: Mapping[str, float], max_loss: float | None) -> Diverged | None:
    """A Diverged for the first loss of an epoch's logs that is NaN, infinite or above `max_loss`
    (epochs counted from 1)."""
    for key in ("loss", "val_loss"):
        value = float(logs.get(key, 0.0))
        if not math.isfinite(value):
            return Diverged(epoch + 1, key, value)
        if max_loss is not None and value > max_loss:
            return Diverged(epoch + 1, key, value, max_loss)
    return None


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's `loss`, `accuracy`, `val_loss`, `val_accuracy` to the run (through `metrics`; None:
    not logged); a diverged loss stops training and is kept in `diverged` (checked per epoch: no step
    pays for it). A SIGTERM or Ctrl-C that Python dropped is raised here (tracking.check_interrupted)."""

    def __init__(self, max_loss: float | None, metrics: tracking.RunLog | None) -> None:
        super().__init__()
        self.max_loss = max_loss
        self.metrics = metrics
        self.diverged: Diverged | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        tracking.check_interrupted()
        if logs:
            if self.metrics:
                self.metrics.log(logs, step=epoch)
            self.diverged = diverged(epoch, logs, self.max_loss)
            if self.diverged:
                self.model.stop_training = True


def fit_compiled(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: DictConfig,
                 metrics: tracking.RunLog | None) -> dict[str, float]:
    """Keras fit's contract with the epochs in graph functions (`logitlab.compiled`); raises Diverged
    after the first epoch whose loss diverged."""
    from logitlab import compiled

    epochs = EpochMetrics(cfg.trainer.max_loss, metrics)
    history = compiled.fit(
        model, x, y,
        batch_size=batch_size(cfg),
        epochs=cfg.trainer.epochs,
        validation_split=cfg.trainer.validation_split,
        seed=cfg.seed,
        steps_per_execution=cfg.trainer.steps_per_execution,
        jit_compile=cfg.trainer.get("jit_compile", "auto"),
        verbose=cfg.trainer.verbose,
        callbacks=[epochs],
    )
    if epochs.diverged:
        raise epochs.diverged
    return {k: float(v[-1]) for k, v in history.history.items()}


def fit_gradient_tape(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: DictConfig,
                      metrics: tracking.RunLog | None) -> dict[str, float]:
    """The reference notebook's loop, on the model's compiled loss and optimizer; raises Diverged after
    the first epoch whose loss diverged."""
    import tensorflow as tf
    from mlflow.entities import Metric

    from logitlab.compiled import training_examples

    trainer = cfg.trainer
    n_train = training_examples(len(x), trainer.validation_split)  # the last fraction is validation, as in Keras
    n_val = len(x) - n_train
    x_train, y_train = x[:n_train], y[:n_train]
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
        tracking.check_interrupted()
        if metrics:
            if step_metrics:  # one call per epoch, not one per step
                metrics.log_batch(f"log epoch {epoch} step metrics", step_metrics)
            metrics.log(logs, step=epoch)
        failure = diverged(epoch, logs, trainer.max_loss)
        if failure:
            raise failure
        if trainer.verbose:
            log.info("epoch %d/%d %.1fs %s", epoch + 1, trainer.epochs, time.perf_counter() - start,
                     " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
    return logs


TRAINERS = {"fit": fit_compiled, "gradient_tape": fit_gradient_tape}


def save_model(model: keras.Model, run_dir: Path) -> Path:
    target = run_dir / MODEL_FILE
    with atomic_path(target) as tmp:
        model.save(tmp)
    return target


def _clear_session() -> None:
    """Keras's clear_session, whose gc.collect() frees the previous job's model (Keras models hold
    reference cycles, and through them a trainer's data tensors: ~200 MB per MNIST job otherwise).
    The process's imports are frozen out of every collection first (gc.freeze): a collection then
    takes ~7 ms instead of ~0.3 s."""
    global _gc_frozen
    if not _gc_frozen:
        gc.freeze()
        _gc_frozen = True
    keras.backend.clear_session()


_gc_frozen = False


def prepare(cfg: DictConfig, root: Path) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """The compiled model of `cfg`, seeded, and its training examples and labels for `cfg.task`."""
    validate_training(cfg)
    ds = dataset_config(cfg)
    data = load_processed(data_file(cfg, root, "processed"), cfg.dataset)
    x, labels = data["x_train"], data["y_train"]
    if len(labels) and (labels.min() < 0 or labels.max() >= ds.num_classes):
        raise UserError(f"labels of {cfg.dataset} span {labels.min()}..{labels.max()}, beyond num_classes={ds.num_classes}")
    y = task_labels(labels, cfg.task, ds.binary.positive_class)

    _clear_session()
    keras.utils.set_random_seed(cfg.seed)
    head = cfg.model.head
    model = build_model(x.shape[1], ds.num_classes, list(cfg.model.layers), head, cfg.model.activation, cfg.task)
    compile_model(model, head, cfg.optimizer.lr, cfg.trainer.steps_per_execution, cfg.task)
    return model, x, y


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: DictConfig,
        metrics: tracking.RunLog | None = None) -> dict[str, float]:
    """Train with `cfg.trainer`; each epoch's metrics go to `metrics` (None: nowhere). Returns the last
    epoch's metrics; raises Diverged after an epoch whose loss diverged."""
    return TRAINERS[cfg.trainer.name](model, x, y, cfg, metrics)


def train(cfg: DictConfig, root: Path, run_dir: Path, run_name: str, tags: Mapping[str, str] | None = None,
          parent_run_id: str | None = None) -> tuple[str, dict[str, float]]:
    """Train `cfg.model.head` on `cfg.dataset` for `cfg.task`; write model.keras and run.json to `run_dir`.

    The run is tagged with what identifies its variant (dataset, task, head, trainer), plus `tags`,
    and nested under `parent_run_id` (a sweep's run) if given. Besides each epoch's metrics it gets
    `train_seconds`, the time of the training itself. Returns the run id and the last epoch's metrics.
    A diverged loss ends the run FAILED and writes neither model nor run.json."""
    model, x, y = prepare(cfg, root)
    head = cfg.model.head
    identity = {"dataset": cfg.dataset, "task": cfg.task, "head": head, "trainer": cfg.trainer.name,
                "logitlab.variant": variant(cfg)}
    with tracking.tracked_run(cfg.tracking, root, found_by="train", run_name=run_name,
                              tags={**identity, **(tags or {})}, parent_run_id=parent_run_id) as run:
        run_log = tracking.RunLog(run.info.run_id)
        run_log.log_params(run_params(cfg))
        log.info("training %s: %s head, %s %s, %s trainer, %d examples, run %s", run_name, head, cfg.dataset,
                 cfg.task, cfg.trainer.name, len(x), run.info.run_id)
        start = time.perf_counter()
        try:
            last = fit(model, x, y, cfg, run_log)
        except BaseException:
            _flush_after_error(run_log)  # the epochs before the failure still reach the run
            raise
        run_log.log({"train_seconds": time.perf_counter() - start})
        run_log.flush()
        run_dir.mkdir(parents=True, exist_ok=True)
        tracking.store_call("log the model", mlflow.log_artifact, str(save_model(model, run_dir)))
        tracking.write_run_file(run_dir, {
            "run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "run_name": run_name,
            "dataset": cfg.dataset, "task": cfg.task, "head": head, "trainer": cfg.trainer.name,
        })
    log.info("run %s: %s", run.info.run_id, tracking.runs_link(run.info.experiment_id))
    return run.info.run_id, last


def _flush_after_error(run_log: tracking.RunLog) -> None:
    """Flush while another exception is on its way: a store failing now is logged, not raised over it."""
    try:
        run_log.flush()
    except (tracking.StoreUnavailable, KeyboardInterrupt) as exc:
        log.error("could not log the last metrics: %s", exc)
