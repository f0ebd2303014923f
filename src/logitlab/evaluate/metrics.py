"""Test-set evaluation of a trained model: loss, accuracy, the min/max of raw outputs and
probabilities, the numerics that tell the heads apart, and the raw outputs themselves. Pure
computation: the train stage sends the result to its files and its MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from logitlab.evaluate.numerics import numerics, predicted_class
from logitlab.evaluate.registry import REGISTRY, Evaluated, compute
from logitlab.model import compiled
from logitlab.model.build import forward
from logitlab.model.heads import Head

GRID_POINTS = 200  # per axis, for the decision regions of a dataset with two features
GRID_BATCH = 8192  # the grid's points per call of the model


@dataclass
class Evaluation:
    metrics: dict[str, float]        # test_loss, test_accuracy, output/prob extremes, numerics
    tags: dict[str, str]             # numerics.train_loss_path, ...
    examples: list[dict[str, Any]]   # the first test examples: outputs, probabilities, argmax, label
    outputs: np.ndarray              # every raw test output
    probabilities: np.ndarray
    labels: np.ndarray
    grid: dict[str, np.ndarray]      # two-feature datasets: the predicted class over the plane

    def arrays(self) -> dict[str, np.ndarray]:
        """What outputs.npz holds (the report draws from it, without TensorFlow); bfloat16, which NumPy
        reads back only with ml_dtypes, as float32 (every bfloat16 value is one)."""
        def portable(a: np.ndarray) -> np.ndarray:
            return a if a.dtype.kind in "fiub" else a.astype(np.float32)

        return {"outputs": portable(self.outputs), "probabilities": portable(self.probabilities),
                "labels": self.labels, **self.grid}


def decision_grid(model: keras.Model, x: np.ndarray, task: str, head: Head, batch: int) -> dict[str, np.ndarray]:
    """For two features: the predicted class at each point of a GRID_POINTS² grid spanning the test
    points plus a margin of 1 (`grid_x0`, `grid_x1`, `grid_class`); nothing for other inputs."""
    if x.ndim != 2 or x.shape[1] != 2 or not len(x):
        return {}
    axes = [np.linspace(x[:, i].min() - 1, x[:, i].max() + 1, GRID_POINTS, dtype=np.float32) for i in (0, 1)]
    g0, g1 = np.meshgrid(*axes)
    points = np.c_[g0.ravel(), g1.ravel()]
    # In big batches: 40 eager calls of the evaluation batch size (1,024) take the 40,000 points
    # 0.15 s here, 5 calls 0.03 s; only each point's predicted class is kept.
    classes = predicted_class(head.probabilities(forward(model, points, max(batch, GRID_BATCH)), task), task)
    return {"grid_x0": axes[0], "grid_x1": axes[1], "grid_class": classes.reshape(g0.shape).astype(np.int16)}


def examples(outputs: np.ndarray, probs: np.ndarray, labels: np.ndarray, task: str, n: int) -> list[dict[str, Any]]:
    """The first `n` test examples: raw output vector, probabilities, predicted category, true label."""
    predicted = predicted_class(probs, task)
    return [
        {
            "index": i,
            "label": int(labels[i]),
            "outputs": [float(v) for v in outputs[i]],
            "probabilities": [float(v) for v in probs[i]],
            "argmax": int(predicted[i]),
        }
        for i in range(min(n, len(outputs)))
    ]


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, task: str, head: Head, batch: int,
             n_examples: int) -> Evaluation:
    """Evaluate `model` on the test set (x, y), labels `y` as the task trains on them."""
    scores = compiled.evaluate(model, x, y, batch)
    outputs = forward(model, x, batch)
    probs = head.probabilities(outputs, task)
    labels = y.reshape(-1).astype(np.int64)
    ev = Evaluated(outputs, probs, labels, head, task, scores,
                   numerics_of=lambda: numerics(model, x, labels, task, head, batch, outputs))
    metrics = compute(ev)  # every metric of the registry (logitlab.evaluate.registry)
    computed, tags = ev.numerics
    unregistered = sorted(set(computed) - set(REGISTRY))
    if unregistered:
        raise RuntimeError(f"numerics computed metrics no registry entry names: {unregistered}")
    return Evaluation(metrics, tags, examples(outputs, probs, labels, task, n_examples), outputs, probs, labels,
                      decision_grid(model, x, task, head, batch))
