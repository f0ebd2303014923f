"""A compiled model's work as graph functions, traced once and called many times: evaluation
(`evaluate`, `evaluator`: the model's own test_step over in-memory arrays), the graph wrapper the
trainers build their steps with, and the cache that lets the jobs of one process share their traces
(`reuse`, `traced`). Used by the trainers (logitlab.train) and by evaluation (logitlab.evaluate)
alike, so neither imports the other.

Why a cache: tracing is most of a small job. A blobs job of a sweep trains for ~0.2 s and spent
~0.5 s more tracing its train step, its validation step and, in evaluation, its test step again,
all of them identical from one job to the next of a seed sweep. So the graph functions of a model
live on with the model they were traced for, and the next job of the same shape trains that model:

- `reuse(fresh)`: the job builds and compiles its model as before (seeded, so its initial weights
  are its own; building is cheap, tracing is not), and gets back the cached model of the same
  `trace_key` with the fresh model's state loaded into it: weights, and the optimizer's variables as
  the fresh optimizer has them right after it is built (Adam's iteration count, moments and learning
  rate; a LossScaleOptimizer's loss scale and step counter: their initial values, not zeros); its
  metrics reset. The learning rate is a variable of a Keras 3 optimizer, read by the traced step,
  so a job with another learning rate reuses the same graphs. A model with no cached twin is cached
  as it is and returned.
- `traced(model, key, make)`: a graph function of the cached model, made (and traced, on its first
  call) by the first job that asks for it; a trainer passes everything else its function depends
  on in `key` (batch size, XLA). The data is an argument of every function, never captured, so it
  is not part of any key (a new shape is a new trace of the same function, as tf.function does).

The key is everything the traced graphs depend on: the model's config (layers, units, activations,
the head's layers, dtype policies, input shape) and its compile config (the loss and its settings,
the metrics, the optimizer's class and hyperparameters, steps_per_execution), without the learning
rate. What a job changes that outlives it is loaded or reset by the next job that reuses the model:
every weight, every optimizer variable, every metric, `stop_training`. A model with random layers
(a SeedGenerator: dropout, noise) is never cached, since its generator state is not loaded here.

Each job is bit for bit the job alone: the same initial values and the same graphs give the same
floats (tests/test_trace_cache.py runs jobs in one process against each alone in a fresh one). The
cache keeps the CACHE_SIZE models used last: an evicted model and its graphs are freed with the next
job's garbage collection, so memory stays flat over a sweep. It does not fight the trainers' cleanup
(logitlab.train.loop drops TensorFlow's registered custom gradients before each job): those are
needed only to differentiate a traced graph again, and a cached train step is called, never
differentiated. The trainers' `prepare` keeps TensorFlow's eager caches through Keras's
clear_session and the job's seeding, which would otherwise make every reused function be
instantiated again at its first call of each job (logitlab.train.loop._keeping_tensorflow_caches).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

CACHE_SIZE = 4  # models kept, with their graph functions: ~3 MB a blobs model trained by fit, ~13 MB by both trainers


def graph(fn, jit_compile: bool = False):
    """tf.function(fn). TF's frequent-retracing warning counts the traces of every function with the
    same code together, so it would blame a sweep's 5th job for the models of the first four."""
    function = tf.function(fn, jit_compile=jit_compile)
    function._omit_frequent_tracing_warning = True
    return function


class _Entry:
    """A cached model, its graph functions by key, and its optimizer's variables as a fresh
    optimizer of its key has them right after build (taken when the model is first reused)."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.functions: dict[Hashable, Any] = {}
        self.built: list[np.ndarray] | None = None


_cache: OrderedDict[str, _Entry] = OrderedDict()


def trace_key(model: keras.Model) -> str | None:
    """What the graphs traced for the compiled `model` depend on, as a string; None: not cacheable
    (not compiled, a learning-rate schedule, or random layers)."""
    if not model.compiled or getattr(model, "_compile_config", None) is None:
        return None
    if any(getattr(layer, "_seed_generators", None) for layer in model._flatten_layers()):
        return None
    compile_config = model.get_compile_config()
    optimizer = json.loads(json.dumps(compile_config.get("optimizer"), default=repr))
    if not _drop_learning_rate(optimizer):
        return None
    return json.dumps([model.get_config(), {**compile_config, "optimizer": optimizer}], sort_keys=True, default=repr)


def _drop_learning_rate(node: Any) -> bool:
    """Remove every numeric `learning_rate` of a serialized optimizer (a variable the graphs read);
    False if one is a schedule (traced into the graphs: it stays, and the model is not cached)."""
    if isinstance(node, dict):
        rate = node.pop("learning_rate", None)
        if rate is not None and not isinstance(rate, (int, float)):
            return False
        return all(_drop_learning_rate(value) for value in node.values())
    if isinstance(node, list):
        return all(_drop_learning_rate(value) for value in node)
    return True


def reuse(fresh: keras.Model) -> keras.Model:
    """The model a job trains: the cached model traced for `fresh`'s key with `fresh`'s weights and
    initial optimizer state, or `fresh` itself, cached for the next job (see the module's docstring)."""
    key = trace_key(fresh)
    if key is None:
        return fresh
    entry = _cache.get(key)
    if entry is None:
        _cache[key] = _Entry(fresh)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return fresh
    _cache.move_to_end(key)
    _load_initial_state(entry, fresh)
    return entry.model


def _load_initial_state(entry: _Entry, fresh: keras.Model) -> None:
    """Make the entry's model what `fresh` is, a model of the same key just built and compiled: its
    weights; its optimizer's variables as they are right after build: the ones `fresh`'s optimizer
    has before build (the iteration count, the learning rate) from it, by path (the optimizer's
    name is part of the key), the ones build makes (Adam's moments, a loss scale and its step
    counter) as build makes them (their initial values depend on nothing outside the key: the first
    job to reuse the model builds its own optimizer once to take them); no metric state; not stopped.

    A cached optimizer that was never built (its job failed before a step) is built by the trainer,
    as a fresh one would be."""
    model, optimizer = entry.model, entry.model.optimizer
    model.set_weights(fresh.get_weights())
    if entry.built is None and optimizer.built:
        fresh.optimizer.build(fresh.trainable_variables)
        entry.built = [v.numpy() for v in fresh.optimizer.variables]
    own = {v.path: v for v in fresh.optimizer.variables}
    if optimizer.built:
        variables = optimizer.variables
        if [(tuple(v.shape), v.dtype) for v in variables] != [(a.shape, a.dtype) for a in entry.built]:
            raise RuntimeError(f"the cached optimizer {optimizer.name} has other variables than the job's own")
        for variable, initial in zip(variables, entry.built):
            variable.assign(own[variable.path] if variable.path in own else initial)
    else:
        for variable in optimizer.variables:
            variable.assign(own[variable.path])
    model.reset_metrics()
    model.stop_training = False


def traced(model: keras.Model, key: Hashable, make: Callable[[], Any]) -> Any:
    """`make()`, once per cached model and `key` (a graph function, or a tuple of them with the
    metrics they update); for a model that is not cached, made anew on every call."""
    entry = next((e for e in _cache.values() if e.model is model), None)
    if entry is None:
        return make()
    if key not in entry.functions:
        entry.functions[key] = make()
    return entry.functions[key]


def clear_cache() -> None:
    """Forget every cached model and graph function."""
    _cache.clear()


def tracing_count() -> int:
    """How many times the cached graph functions have been traced, in all (tf.function's own count)."""
    return sum(_traces(fn) for entry in _cache.values() for fn in entry.functions.values())


def _traces(value: Any) -> int:
    if isinstance(value, tuple):
        return sum(_traces(v) for v in value)
    count = getattr(value, "experimental_get_tracing_count", None)
    return count() if count else 0


def test_function(model: keras.Model, batch: int, jit_compile: bool):
    """`test(x, y)`: the model's test_step over (x, y) in batches, in one graph call (cached with the
    model: see `traced`)."""
    return traced(model, ("test", batch, bool(jit_compile)), lambda: _test_function(model, batch, jit_compile))


def _test_function(model: keras.Model, batch: int, jit_compile: bool):
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
