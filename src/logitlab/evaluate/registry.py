"""Every metric of an evaluated model, one function each, in one registry. The train stage computes
them all (`compute`) into metrics.json and the MLflow run; the report's table, the study view and
the stage's log line take their lists from here (`names`), so a new metric is one decorated
function:

    @metric(label="top-2 accuracy", fraction=True, higher_is_better=True)
    def top2_accuracy(ev: Evaluated) -> float:
        top2 = np.argsort(ev.probs, axis=1)[:, -2:]
        return float((top2 == ev.labels[:, None]).any(axis=1).mean())

A function returns None where its metric does not apply (a multi-class metric of a binary head):
the run then has no such metric, and the table leaves its cell empty. Importing this module needs
NumPy and SciPy only (the report reads the lists without TensorFlow).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from logitlab.model.heads import Head


@dataclass
class Evaluated:
    """What the metrics see of a model evaluated on a set of examples: its raw outputs and
    probabilities, the labels (int, one per example), the head and the task, Keras's own test loss
    and accuracy, and the numerics (logitlab.evaluate.numerics: computed once, when a metric first
    asks for them)."""

    outputs: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    head: Head
    task: str
    scores: Mapping[str, float]                        # Keras's evaluate: loss, accuracy
    numerics_of: Callable[[], tuple[dict[str, float], dict[str, str]]] = lambda: ({}, {})
    _numerics: tuple[dict[str, float], dict[str, str]] | None = field(default=None, repr=False)

    @property
    def numerics(self) -> tuple[dict[str, float], dict[str, str]]:
        """The numerics' metrics and tags."""
        if self._numerics is None:
            self._numerics = self.numerics_of()
        return self._numerics


@dataclass(frozen=True)
class Metric:
    """One metric: its function, and where it is shown."""

    name: str
    fn: Callable[[Evaluated], float | None]
    label: str                      # what an axis or a reader calls it
    table: bool = True              # a column of the report's table (summary.csv, summary.md)
    study: bool = False             # a panel of the study view (against the learning rate)
    compare: bool = False           # the study's logit − other head difference, with its interval
    fraction: bool = False          # a value in [0, 1]: intervals clipped to it
    summary: bool = False           # in the train stage's log line
    higher_is_better: bool = False


REGISTRY: dict[str, Metric] = {}


def metric(name: str | None = None, *, label: str | None = None, **flags: Any) -> Callable:
    """Register the decorated function `fn(ev: Evaluated) -> float | None` as a metric (named after it)."""
    def register(fn: Callable[[Evaluated], float | None]) -> Callable[[Evaluated], float | None]:
        key = name or fn.__name__
        if key in REGISTRY:
            raise ValueError(f"metric {key!r} is registered twice")
        REGISTRY[key] = Metric(key, fn, label or key.replace("_", " "), **flags)
        return fn

    return register


def compute(ev: Evaluated) -> dict[str, float]:
    """Every registered metric that applies, in the order they were registered."""
    values = {name: m.fn(ev) for name, m in REGISTRY.items()}
    return {name: float(v) for name, v in values.items() if v is not None}


def names(**flags: bool) -> list[str]:
    """The metrics whose flags are all as given, in order: names(table=True), names(study=True), ..."""
    return [name for name, m in REGISTRY.items() if all(getattr(m, k) == v for k, v in flags.items())]


# --------------------------------------------------------------------------- the metrics


@metric(label="test loss", summary=True)
def test_loss(ev: Evaluated) -> float:
    """Keras's own loss on the test set: the head's compiled cross-entropy."""
    return float(ev.scores["loss"])


@metric(label="test accuracy", study=True, compare=True, fraction=True, summary=True, higher_is_better=True)
def test_accuracy(ev: Evaluated) -> float:
    return float(ev.scores["accuracy"])


@metric(label="smallest raw output", summary=True)
def output_min(ev: Evaluated) -> float:
    return float(ev.outputs.min())


@metric(label="largest raw output", summary=True)
def output_max(ev: Evaluated) -> float:
    return float(ev.outputs.max())


@metric(label="smallest probability", summary=True)
def prob_min(ev: Evaluated) -> float:
    return float(ev.probs.min())


@metric(label="largest probability", summary=True)
def prob_max(ev: Evaluated) -> float:
    return float(ev.probs.max())


def _numeric(name: str, **flags: Any) -> None:
    """A metric the numerics compute (logitlab.evaluate.numerics), registered under its own name."""
    metric(name, **flags)(lambda ev: ev.numerics[0].get(name))


# In the order numerics() computes them (metrics.json keeps that order).
_numeric("test_loss_f64", label="test loss, float64", study=True, compare=True)
for _path in ("probs", "logits", "train"):
    _numeric(f"loss_err_{_path}_mean", label=f"{'training' if _path == 'train' else _path} loss: mean error vs "
             "float64", table=False, study=_path == "train")
    _numeric(f"loss_err_{_path}_max", label=f"{'training' if _path == 'train' else _path} loss: largest error vs "
             "float64")
for _kind in ("exact0", "exact1", "clip_band"):
    _numeric(f"prob_{_kind}_count", table=False)
    _numeric(f"prob_{_kind}_fraction", fraction=True, table=_kind == "clip_band")
_numeric("probs_sum_max_error", label="largest |sum of probabilities - 1|")
_numeric("argmax_tie_count", table=False)
_numeric("argmax_tie_fraction", fraction=True)
_numeric("clip_ceiling_count", table=False)
_numeric("clip_ceiling_fraction", label="fraction at the clip ceiling", study=True, fraction=True)
_numeric("clip_grad_norm_probs", label="last layer's gradient at the ceiling, from probabilities")
_numeric("clip_grad_norm_logits", label="last layer's gradient at the ceiling, from logits")
