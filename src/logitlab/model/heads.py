"""A classifier head as one object: what its last layer is, what its loss is told, and how its
outputs become probabilities. Heads are plug-ins: conf/heads/<name>.yaml names the class
(`_target_`, this one or a subclass) and its settings, and `head_of` instantiates the one a job
trains. Everything that needs to know about the head (building and compiling the model, the
numerics, the printout, serving) takes this object and asks it: nothing compares head names.

The heads the lesson compares (conf/heads/):
- multiclass `softmax`: softmax outputs, `SparseCategoricalCrossentropy()`;
- `logit` (multiclass and binary): linear outputs, the cross-entropy told `from_logits=True`;
- multiclass `softmax_strict` / binary `sigmoid_strict`: the probability head with Keras's attached
  logits cut off, so the loss sees probabilities (clipped to [1e-7, 1 - 1e-7]);
- `sigmoid`: binary, sigmoid output with `BinaryCrossentropy()`; multiclass, one sigmoid per class
  with the multi-class loss (the mismatched head of one reference notebook: its outputs do not sum to 1).

Importing this module imports NumPy and SciPy only; Keras is imported by the methods that build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_expit, logsumexp

from logitlab.schema.plugins import instantiate_plugin

BINARY, MULTICLASS = "binary", "multiclass"


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: shifting by the max keeps exp() from overflowing."""
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, in z's dtype."""
    z = np.asarray(z)
    return np.exp(log_expit(z)).astype(z.dtype, copy=False)


@dataclass(frozen=True)
class Head:
    """One head. `activation`: the last Dense layer's Keras activation (None: linear); `from_logits`:
    what the loss is told; `detached`: Keras's attached logits are cut off, so the loss sees
    probabilities; `tasks`: the tasks it serves; `options`: a subclass's own settings."""

    name: str = "head"
    activation: str | None = None
    from_logits: bool = False
    detached: bool = False
    tasks: Sequence[str] = (MULTICLASS,)
    options: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ what its outputs mean

    def squash(self, task: str) -> str:
        """The function that turns this head's logits into its probabilities: `sigmoid` for a binary
        head and for one sigmoid per class, `softmax` otherwise."""
        return "sigmoid" if task == BINARY or self.activation == "sigmoid" else "softmax"

    def softmax_of_logits(self, task: str) -> bool:
        """Whether the head's probabilities are softmax (binary: sigmoid) of its logits, so that a
        cross-entropy "from logits" of them is this head's own loss. Not so for one sigmoid per class."""
        return task == BINARY or self.squash(task) == "softmax"

    def probabilities(self, outputs: np.ndarray, task: str) -> np.ndarray:
        """What the model says the probabilities are: its outputs, or softmax/sigmoid of a logit head's,
        in the outputs' dtype (computed in float32 at least: NumPy has no bfloat16 exp of its own)."""
        if not self.from_logits:
            return outputs
        z = np.asarray(outputs)
        wide = z.astype(np.promote_types(np.float32, z.dtype) if z.dtype.kind == "f" else np.float32)
        squashed = sigmoid(wide) if self.squash(task) == "sigmoid" else softmax(wide)
        return squashed.astype(z.dtype, copy=False)

    def class_probabilities(self, outputs: np.ndarray, task: str) -> np.ndarray:
        """One column per class. A binary head's p becomes [P(rest), p] without `1 - p` in float32,
        which turns every p < 3e-8 into exactly 1.0: a logit head's P(rest) is sigmoid(-z), a
        probability head's 1 - p is taken in float64."""
        if task != BINARY:
            return self.probabilities(outputs, task)
        if self.from_logits:
            z = np.asarray(outputs)
            return np.concatenate([self.probabilities(-z, task), self.probabilities(z, task)], axis=1)
        p = np.asarray(outputs, dtype=np.float64)
        return np.concatenate([1 - p, p], axis=1)

    def reference_loss(self, z: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
        """Per-example cross-entropy of the head's own probabilities, in float64 from its logits `z`."""
        z64 = np.asarray(z, dtype=np.float64)
        if task == BINARY:
            t = y.reshape(-1).astype(np.float64)
            z1 = z64.reshape(-1)
            return -(t * log_expit(z1) + (1 - t) * log_expit(-z1))
        rows = np.arange(len(y))
        if self.squash(task) == "sigmoid":  # independent sigmoids, renormalized by the multi-class loss
            log_p = log_expit(z64)
            return logsumexp(log_p, axis=1) - log_p[rows, y]
        return logsumexp(z64, axis=1) - z64[rows, y]

    # ------------------------------------------------------------------ Keras

    def loss(self, task: str) -> Any:
        """The task's Keras cross-entropy, told whether the outputs are logits."""
        import keras

        if task == BINARY:
            return keras.losses.BinaryCrossentropy(from_logits=self.from_logits)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits)

    def accuracy(self, task: str) -> Any:
        """Accuracy under the name `accuracy`: argmax for multi-class; binary, p >= 0.5 (logit >= 0)."""
        import keras

        if task == BINARY:
            return keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0 if self.from_logits else 0.5)
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def spec(self) -> dict[str, Any]:
        """What rebuilds this head without its config (a logged model keeps it)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name,
                "activation": self.activation, "from_logits": self.from_logits, "detached": self.detached,
                "tasks": [str(t) for t in self.tasks], "options": dict(self.options)}


def instantiate(spec: Mapping[str, Any], name: str) -> Head:
    """The head a spec names (`_target_` and its settings: a conf/heads/ entry, or Head.spec()); a
    class that cannot be found or built is one UserError line."""
    node = {k: (list(v) if k == "tasks" else v) for k, v in spec.items() if k != "name"}
    return instantiate_plugin(node, Head, f"heads.{name}", name=name)


def head_of(cfg: Any) -> Head:
    """The head a checked config trains (`heads[model.head]`)."""
    from dataclasses import asdict

    return instantiate(asdict(cfg.heads[cfg.model.head]), cfg.model.head)
