"""Keras `fit` for in-memory arrays, its epochs run in graph functions: logitlab's `fit` trainer.

Same contract as `model.fit(x, y, batch_size, epochs, validation_split, shuffle=True, callbacks,
verbose)` on a compiled model: the model's own `train_step` and `test_step` (its loss, optimizer
and metrics), the last `validation_split` of the examples held out, the training part shuffled
every epoch, a final partial batch, one optimizer step per batch, the metrics reset each epoch,
`val_` metrics after each epoch, Keras callbacks and progress bar, `stop_training`, a History.

Why not `model.fit` itself: for an array input it builds a tf.data pipeline, makes two iterators per
epoch (~9 ms each on this machine) and feeds each batch through tf.data. For a small model that is
most of an epoch (the blobs model's: see the README's Performance, `make bench`). Here the
arrays are copied once into float32 tensors, each batch is a `tf.gather` of a shuffled index
inside the graph, and a `tf.range` loop runs `steps_per_execution` steps per call (the progress
bar and Ctrl-C are served between calls). With `jit_compile` each step is one XLA cluster: the
784-256 model's steps get ~30% faster, the small models' slower (see `jit_enabled`).
`benchmarks/bench.py` measures it against Keras `fit`, tuned and with its defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from logitlab.model.compiled import graph, results, test_function, traced

# XLA compiles each step into one cluster: worth it once a step's arithmetic outweighs the cluster's
# launch cost. Measured (the lever rows of an earlier benchmark): 784-256-10 at batch 64 (235 MFLOP
# per step) gained ~30%; 25-15-10 at batch 32 (~2.6 MFLOP) lost ~20%, blobs (~0.1 MFLOP) more.
JIT_AUTO_MIN_FLOPS_PER_STEP = 50e6


def dense_flops(model: keras.Model) -> int:
    """Forward-pass FLOPs per example of the model's Dense layers: 2 per kernel weight (a multiply
    and an add), biases and activations left out."""
    return sum(_kernel_flops(model))


def training_flops(model: keras.Model) -> int:
    """FLOPs per example of one training step, as TensorFlow executes it: the forward pass, the
    kernel gradient of every Dense layer (as many FLOPs as its forward product), and the gradient
    with respect to each layer's input, except the first layer's, whose input is the data (a
    constant: TensorFlow does not differentiate with respect to it). Biases, activations, the loss
    and the optimizer left out. For 784-784-256-10: 3.68 MFLOP (tests/test_fast_fit.py checks it
    against TensorFlow's own count of the traced train step)."""
    kernels = _kernel_flops(model)
    return 2 * sum(kernels) + sum(kernels[1:])


def _kernel_flops(model: keras.Model) -> list[int]:
    return [2 * int(np.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def jit_enabled(setting: bool | str, model: keras.Model, batch_size: int) -> bool:
    """`trainer.jit_compile`: true, false, or auto (XLA when a training step costs at least
    JIT_AUTO_MIN_FLOPS_PER_STEP)."""
    if setting == "auto":
        return training_flops(model) * batch_size >= JIT_AUTO_MIN_FLOPS_PER_STEP
    return bool(setting)


def training_examples(n: int, validation_split: float) -> int:
    """How many of n examples Keras's validation_split leaves for training (the first ones)."""
    return int(math.floor(n * (1.0 - validation_split)))


def train_function(model: keras.Model, batch: int, jit_compile: bool):
    """`train(x, y, order, first, last)`: steps first..last-1 of an epoch, step i on the examples
    order[i*batch:(i+1)*batch] of (x, y) (the last step on what is left), in one graph call. Traced
    once per model that the jobs of a process share (logitlab.model.compiled.traced): the data is an
    argument, not captured, so the next job's data uses the same trace."""
    return traced(model, ("fit", batch, bool(jit_compile)), lambda: _train_function(model, batch, jit_compile))


def _train_function(model: keras.Model, batch: int, jit_compile: bool):
    train_step = graph(lambda xb, yb: model.train_step((xb, yb)), jit_compile)

    @graph
    def train(x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, first: tf.Tensor, last: tf.Tensor) -> None:
        for i in tf.range(first, last):
            index = order[i * batch:(i + 1) * batch]
            train_step(tf.gather(x, index), tf.gather(y, index))

    return train


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    epochs: int,
    validation_split: float = 0.0,
    shuffle: bool = True,
    seed: int = 0,
    steps_per_execution: int = 32,
    jit_compile: bool | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    initial_epoch: int = 0,
) -> keras.callbacks.History:
    """Train the compiled `model` on (x, y) as `model.fit` would (see the module's docstring), from
    `initial_epoch` (a resumed run: its earlier epochs are in the model and optimizer already).

    The shuffle of epoch e is a stateless permutation seeded by (seed, e): the same seed trains the
    same way, whatever ran before in the process, and a resumed run as an uninterrupted one. Without
    `shuffle`, the examples go in order."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    n_train = training_examples(len(x), validation_split)
    n_val = len(x) - n_train
    if n_train < 1:
        raise ValueError(f"no training examples left: {len(x)} examples, validation_split={validation_split}")
    x_train = tf.constant(np.asarray(x[:n_train], dtype=np.float32))
    y_train = tf.constant(y[:n_train])
    x_val = tf.constant(np.asarray(x[n_train:], dtype=np.float32)) if n_val else None
    y_val = tf.constant(y[n_train:]) if n_val else None
    steps = math.ceil(n_train / batch_size)
    jit = jit_enabled(jit_compile, model, batch_size)
    train, test = train_function(model, batch_size, jit), test_function(model, batch_size, jit)
    if not model.optimizer.built:  # its variables exist before any graph is traced
        model.optimizer.build(model.trainable_variables)

    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [*callbacks, history], add_progbar=verbose != 0, verbose=verbose, epochs=epochs, steps=steps, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        order = (tf.random.experimental.stateless_shuffle(tf.range(n_train), seed=[seed, epoch]) if shuffle
                 else tf.range(n_train))
        for first in range(0, steps, steps_per_execution):
            last = min(first + steps_per_execution, steps)
            callback_list.on_train_batch_begin(first)
            train(x_train, y_train, order, tf.constant(first), tf.constant(last))
            callback_list.on_train_batch_end(last - 1, results(model) if verbose == 1 else None)
            if model.stop_training:
                break
        epoch_logs = results(model)
        if n_val:
            model.reset_metrics()
            test(x_val, y_val)
            epoch_logs.update(results(model, "val_"))
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    if epochs > initial_epoch:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(epoch_logs)
    return history
