"""Training of one head on one dataset and task: the compiled, seeded model and its data
(`prepare`), the `fit` trainer (Keras fit's contract, `logitlab.train.fast_fit`), and the check that
ends training when the loss diverges. Both trainers (`fit`, and `gradient_tape` in
`logitlab.train.tape`) log the same metric names per epoch: `loss`, `accuracy`, `val_loss`,
`val_accuracy`, so their runs compare side by side."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import keras
import numpy as np

from logitlab.data.preprocess import labels_in_range, task_labels
from logitlab.errors import Diverged, check_interrupted
from logitlab.model.build import build_model, compile_model
from logitlab.model.compiled import reuse
from logitlab.model.heads import Head
from logitlab.schema import Config
from logitlab.train import fast_fit

log = logging.getLogger(__name__)


class MetricSink(Protocol):
    """Where a trainer sends each epoch's (and step's) metrics: the stage hands in its MLflow run's
    log (logitlab.tracking.runs.RunLog), or None. Training never talks to the store itself."""

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None: ...


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
    pays for it). A SIGTERM or Ctrl-C that Python dropped is raised here (logitlab.errors.check_interrupted)."""

    def __init__(self, max_loss: float | None, metrics: MetricSink | None) -> None:
        super().__init__()
        self.max_loss = max_loss
        self.metrics = metrics
        self.diverged: Diverged | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        check_interrupted()
        if logs:
            if self.metrics:
                self.metrics.log(logs, step=epoch)
            self.diverged = diverged(epoch, logs, self.max_loss)
            if self.diverged:
                self.model.stop_training = True


def fit_compiled(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, metrics: MetricSink | None, *,
                 initial_epoch: int = 0, saver: keras.callbacks.Callback | None = None) -> list[dict[str, float]]:
    """Keras fit's contract with the epochs in graph functions (`logitlab.train.fast_fit`), from
    `initial_epoch`, `saver` called at each epoch's end before its metrics are logged; returns each
    epoch's metrics, and raises Diverged after the first epoch whose loss diverged."""
    epochs = EpochMetrics(cfg.trainer.max_loss, metrics)
    history = fast_fit.fit(
        model, x, y,
        batch_size=cfg.batch_size,
        epochs=cfg.trainer.epochs,
        validation_split=cfg.trainer.validation_split,
        seed=cfg.seed,
        steps_per_execution=cfg.trainer.steps_per_execution,
        jit_compile=cfg.trainer.jit_compile,
        verbose=cfg.trainer.verbose,
        callbacks=[saver, epochs] if saver else [epochs],
        initial_epoch=initial_epoch,
    )
    if epochs.diverged:
        raise epochs.diverged
    return [{k: float(v[i]) for k, v in history.history.items()} for i in range(len(history.epoch))]


def _clear_session() -> None:
    """Keras's clear_session, and a garbage collection that frees the previous job's model (Keras
    models hold reference cycles, and through them a trainer's data tensors: ~200 MB per MNIST job
    otherwise). The previous job's custom gradients go first (see below).

    What survives a collection is frozen (gc.freeze()) once there is much of it, FREEZE_ABOVE objects:
    the imports (the first call freezes them without collecting: there is no job before it), the
    traced functions of logitlab.model.compiled's cache, the sweep's state. Frozen objects are out of
    every later collection, which then looks only at what was made since: 4-10 ms a blobs job, where
    a collection of everything took 60-130 ms, more with every job of a sweep (Keras's clear_session
    collects everything). Fewer survivors stay where they are and are looked at again by the next
    job's collection: they are mostly the running job's own state (its config; in a joblib worker
    Hydra's state, unpickled for every job: 14,000-28,000 objects), which dies with the job. Frozen,
    it would be garbage only a full collection finds: one runs, gc.unfreeze() first, when
    FULL_COLLECTION_AFTER objects have been frozen since the last (~0.3 s for the ~650,000 objects of
    a process that imported TensorFlow and MLflow). Freezing every job's survivors made that every
    ~6 jobs in a joblib worker."""
    global _frozen_since_full
    _drop_custom_gradients()
    keras.backend.clear_session(free_memory=False)
    if _frozen_since_full is None:
        _frozen_since_full = 0
    elif _frozen_since_full >= FULL_COLLECTION_AFTER:
        gc.unfreeze()
        gc.collect()
        _frozen_since_full = 0
    else:
        gc.collect()
        survivors = len(gc.get_objects())
        if survivors < FREEZE_ABOVE:
            return
        _frozen_since_full += survivors
    gc.freeze()


def _drop_custom_gradients() -> int:
    """Drop every graph-mode `tf.custom_gradient` from TensorFlow's global gradient registry; returns
    how many there were.

    TensorFlow registers the gradient of each custom_gradient it traces in graph mode under a new
    name, for good, and the registered closure holds the traced graph (tensorflow/tensorflow#97697,
    #27492). Keras's optimizer traces one in every train step (its all_reduce of the gradients under
    the default distribution strategy), so each job of an in-process sweep left its whole training
    graph behind: ~1.9 MB a blobs job, +21% resident memory from job 10 to job 100. The entries are
    needed only to differentiate those graphs again, which nothing does once their model is cleared:
    this runs just before Keras's clear_session, as keras-team/tf-keras#898 proposes for it."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if not isinstance(registry, dict):  # a TensorFlow whose registry moved: nothing to drop
        return 0
    names = [name for name in registry if isinstance(name, str) and name.startswith("CustomGradient-")]
    for name in names:
        del registry[name]
    return len(names)


FREEZE_ABOVE = 50_000  # a job's collection freezes its survivors when there are this many (see _clear_session)
FULL_COLLECTION_AFTER = 100_000  # objects frozen since the last full collection
_frozen_since_full: int | None = None  # None: nothing frozen yet


@contextlib.contextmanager
def _keeping_tensorflow_caches() -> Iterator[None]:
    """TensorFlow's eager caches stay as they are inside: Keras's clear_session and TensorFlow's
    set_seed (through keras.utils.set_random_seed) each empty them (TFE_ContextClearCaches: every
    cached kernel, function instantiations included, the device cache, the step container).

    Emptied, every graph function a job reuses (logitlab.model.compiled.reuse) is instantiated
    again at its first call, Grappler's rewrites included: ~50 ms per function, and each eager op
    builds its kernel again. A blobs job of a sweep trained for 0.27 s instead of 0.10 s.
    set_seed empties them so that a stateful random kernel (tf.random.uniform without a seed, run
    eagerly or in a graph) starts its sequence again: a job here runs none (Keras draws its
    initial weights with stateless ops, fit shuffles with stateless_shuffle, and the GradientTape
    loop's tf.data shuffle takes its seeds as inputs), so the seeds are set as before and every
    job is bit for bit the job alone (tests/test_trace_cache.py). Memory stays bounded: a deleted
    graph function takes its cached kernels with it (TensorFlow's RemoveFunction), and the eager
    kernels are keyed by op and shape, the same ones from job to job. A TensorFlow without
    pywrap_tfe.TFE_ContextClearCaches where context.py calls it: the caches are emptied as before."""
    from tensorflow.python.eager import context

    pywrap = getattr(context, "pywrap_tfe", None)
    clear = getattr(pywrap, "TFE_ContextClearCaches", None)
    if clear is None:
        yield
        return
    pywrap.TFE_ContextClearCaches = lambda handle: None
    try:
        yield
    finally:
        pywrap.TFE_ContextClearCaches = clear


def prepare(cfg: Config, head: Head, data: Mapping[str, np.ndarray]) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """The compiled model of `cfg` with `head`, seeded, and its training examples and labels for `cfg.task`
    (`data`: a processed file, or `splits` of one). The model is built afresh from the seed; an earlier
    job's model of the same shape, with its traced graph functions, takes its weights and initial
    optimizer state and is returned instead (logitlab.model.compiled.reuse): the same floats, no retrace."""
    x, labels = data["x_train"], data["y_train"]
    labels_in_range(labels, cfg)
    y = task_labels(labels, cfg.task, cfg.ds.binary.positive_class)

    with _keeping_tensorflow_caches():
        _clear_session()
        keras.utils.set_random_seed(cfg.seed)
    precision = str(cfg.precision)
    model = build_model(x.shape[1], cfg.ds.num_classes, cfg.model.layers, head, cfg.model.activation, cfg.task,
                        precision)
    compile_model(model, head, cfg.optimizer.lr, cfg.trainer.steps_per_execution, cfg.task, precision)
    return reuse(model), x, y
