"""The hand-written loop of the MNIST reference notebook: tf.data shuffle + batch, tf.GradientTape,
apply_gradients, a running accuracy; it also logs `step_loss` and `step_accuracy` every
`trainer.log_every_n_steps` steps. Its epochs log the same metric names as `fit`'s."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from logitlab.errors import check_interrupted
from logitlab.model.compiled import evaluator, traced
from logitlab.model.heads import Head
from logitlab.schema import Config
from logitlab.train.fast_fit import training_examples
from logitlab.train.loop import MetricSink, diverged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepLog:
    """What the notebook prints every `log_every_n_steps` steps."""

    step: int
    loss: float       # the last step's batch loss
    accuracy: float   # the running accuracy of the epoch so far
    seen: int         # training examples seen so far


def fit_gradient_tape(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, metrics: MetricSink | None, *,
                      head: Head,
                      steps: list[StepLog] | None = None, initial_epoch: int = 0,
                      saver: keras.callbacks.Callback | None = None) -> list[dict[str, float]]:
    """The reference notebook's loop, on the model's compiled loss and optimizer, from
    `initial_epoch`, `saver` called at each epoch's end before its metrics are logged; returns each
    epoch's metrics (and appends each logged step to `steps`), and raises Diverged after the first
    epoch whose loss diverged."""
    trainer = cfg.trainer
    n_train = training_examples(len(x), trainer.validation_split)  # the last fraction is validation, as in Keras
    n_val = len(x) - n_train
    x_train, y_train = x[:n_train], y[:n_train]
    dataset = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(trainer.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    accuracy = head.accuracy(str(cfg.task))
    train_steps, accuracy, mean_loss = traced(
        model, ("gradient_tape", json.dumps(accuracy.get_config(), sort_keys=True)),
        lambda: _train_steps(model, accuracy))

    validate = evaluator(model, cfg.batch_size)
    x_val, y_val = tf.constant(x[n_train:]), tf.constant(y[n_train:])
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    every = trainer.log_every_n_steps
    step = initial_epoch * steps_per_epoch
    history = []
    if saver:
        saver.set_model(model)
    for epoch in range(initial_epoch, trainer.epochs):
        start = time.perf_counter()
        accuracy.reset_state()
        mean_loss.reset_state()
        step_metrics = []
        batches, done = iter(dataset), 0
        while done < steps_per_epoch:  # up to the next step that logs, or the end of the epoch
            n = min(every - step % every, steps_per_epoch - done)
            loss = train_steps(batches, tf.constant(n))
            done, step = done + n, step + n
            if step % every == 0:
                seen = epoch * n_train + min(done * cfg.batch_size, n_train)
                logged = StepLog(step, float(loss), float(accuracy.result()), seen)
                step_metrics.append((step, {"step_loss": logged.loss, "step_accuracy": logged.accuracy}))
                if steps is not None:
                    steps.append(logged)
            check_interrupted()
        logs = {"loss": float(mean_loss.result()), "accuracy": float(accuracy.result())}
        if n_val:
            val = validate(x_val, y_val)
            logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        check_interrupted()
        if saver:
            saver.on_epoch_end(epoch, logs)
        if metrics:
            for logged_step, values in step_metrics:  # sent at the epoch's end, not between steps
                metrics.log(values, step=logged_step)
            metrics.log(logs, step=epoch)
        history.append(logs)
        failure = diverged(epoch, logs, trainer.max_loss)
        if failure:
            raise failure
        if trainer.verbose:
            log.info("epoch %d/%d %.1fs %s", epoch + 1, trainer.epochs, time.perf_counter() - start,
                     " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
    return history


def _train_steps(model: keras.Model, accuracy: keras.metrics.Metric):
    """`train_steps(batches, n)`: the notebook's next `n` steps on `model` in one graph call, and the
    epoch's running `accuracy` and mean loss it updates. Traced once per model that the jobs of a
    process share (logitlab.model.compiled.traced): the batches are an argument."""
    loss_fn, optimizer = model.loss, model.optimizer
    mean_loss = keras.metrics.Mean()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            loss = loss_fn(yb, out)
            scaled = optimizer.scale_loss(loss)  # as Keras's train_step: the loss scale of mixed_float16
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        accuracy.update_state(yb, out)
        mean_loss.update_state(loss, sample_weight=tf.shape(xb)[0])  # weighted by batch size, as fit does
        return loss

    @tf.function
    def train_steps(batches, n):
        """The next `n` steps, in one graph call: the same batches and steps as the notebook's Python
        loop, without a trip to Python per step. Returns the last step's loss."""
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            xb, yb = next(batches)
            loss = tf.cast(train_step(xb, yb), tf.float32)
        return loss

    return train_steps, accuracy, mean_loss
