"""The heads each task offers: pure data, importable without TensorFlow (the schema checks against it).

Multi-class (`task=multiclass`, labels 0..k-1, k outputs):
- `softmax`: softmax outputs, `SparseCategoricalCrossentropy()`;
- `logit`: linear outputs, `SparseCategoricalCrossentropy(from_logits=True)`;
- `softmax_strict`: the softmax head with Keras's attached logits cut off, so the loss sees
  probabilities (clipped to [1e-7, 1 - 1e-7]) as any loss computed from probabilities alone does;
- `sigmoid`: one sigmoid per class with the multi-class loss, the mismatched head of one reference
  notebook; its outputs do not sum to 1.

Binary (`task=binary`, labels 0/1, one output):
- `sigmoid`: sigmoid output, `BinaryCrossentropy()`;
- `logit`: linear output, `BinaryCrossentropy(from_logits=True)`;
- `sigmoid_strict`: the sigmoid head with the attached logits cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from logitlab.errors import UserError


@dataclass(frozen=True)
class Head:
    activation: str | None  # of the last Dense layer: softmax, sigmoid, or None (linear)
    detached: bool          # Keras's attached logits are cut off: the loss sees probabilities
    from_logits: bool       # what the loss is told


HEADS: dict[str, dict[str, Head]] = {
    "multiclass": {
        "softmax": Head("softmax", detached=False, from_logits=False),
        "logit": Head(None, detached=False, from_logits=True),
        "softmax_strict": Head("softmax", detached=True, from_logits=False),
        "sigmoid": Head("sigmoid", detached=False, from_logits=False),
    },
    "binary": {
        "sigmoid": Head("sigmoid", detached=False, from_logits=False),
        "logit": Head(None, detached=False, from_logits=True),
        "sigmoid_strict": Head("sigmoid", detached=True, from_logits=False),
    },
}


def check_head(task: Any, head: Any) -> Head:
    """The head `head` of `task`, or a UserError naming the heads the task has."""
    if task not in HEADS:
        raise UserError(f"unknown task {task!r}; valid: {', '.join(HEADS)}")
    heads = HEADS[task]
    if head not in heads:
        raise UserError(f"unknown model.head {head!r} for task {task}; valid: {', '.join(heads)}")
    return heads[head]


def head_spec(task: str, head: str) -> Head:
    """The head of a checked config (logitlab.schema.check has refused any other)."""
    return HEADS[task][head]
