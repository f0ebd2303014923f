"""A compiled model's work as graph functions, traced once and called many times: evaluation
(`evaluate`, `evaluator`: the model's own test_step over in-memory arrays) and the graph wrapper the
trainers build their steps with. Used by the trainers (logitlab.train) and by evaluation
(logitlab.evaluate) alike, so neither imports the other."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def graph(fn, jit_compile: bool = False):
    """tf.function(fn). Each job builds its own, traced once; TF's frequent-retracing warning counts
    the traces of every function with the same code together, so it would blame a sweep's 5th job."""
    function = tf.function(fn, jit_compile=jit_compile)
    function._omit_frequent_tracing_warning = True
    return function


def test_function(model: keras.Model, batch: int, jit_compile: bool):
    """`test(x, y)`: the model's test_step over (x, y) in batches, in one graph call."""
    test_step = graph(lambda xb, yb: model.test_step((xb, yb)), jit_compile)

    @graph
    def test(x: tf.Tensor, y: tf.Tensor) -> None:
        for i in tf.range((tf.shape(x)[0] + batch - 1) // batch):
            test_step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])

    return test


def evaluator(model: keras.Model, batch_size: int):
    """`evaluate` as a function of (x, y) tensors, traced once, to call every epoch."""
    test = test_function(model, batch_size, jit_compile=False)

    def run(x: tf.Tensor, y: tf.Tensor) -> dict[str, float]:
        model.reset_metrics()
        test(x, y)
        return results(model)

    return run


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
    """`model.evaluate(x, y, batch_size, return_dict=True)`: the same test_step, batches and metrics,
    without the tf.data pipeline and iterator Keras builds for each call."""
    return evaluator(model, batch_size)(tf.constant(np.asarray(x, dtype=np.float32)), tf.constant(y))


def results(model: keras.Model, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in model.get_metrics_result().items()}
