"""The reference notebooks' printouts, made from one run's own numbers, so that a reader can put the
notebook and the run side by side: `notebook.txt`, and for the GradientTape notebook
`notebook_digits.png` (its first three digits).

- The blobs notebooks (and every `fit` run): two output vectors of `model.predict`, their largest and
  smallest value; for a logit head the same after softmax (sigmoid); then the first five output
  vectors with their category.
- The GradientTape notebook (`trainer.name=gradient_tape`): the step log (batch loss, examples seen,
  running accuracy every `log_every_n_steps` steps), `logits_test[0]`, the argmax of the first ten
  examples beside their labels.
Printed on the examples `evaluate.split` names, as NumPy prints them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.data.dataset import Drawing
from logitlab.evaluate.metrics import Evaluation
from logitlab.evaluate.numerics import predicted_class
from logitlab.files import atomic_path, write_text
from logitlab.model.heads import Head

PRINTOUT_FILE, DIGITS_FILE = "notebook.txt", "notebook_digits.png"


def _extremes(values: np.ndarray) -> str:
    return f"largest value {np.max(values)} smallest value {np.min(values)}"


def predict_printout(outputs: np.ndarray, probs: np.ndarray, task: str, head: Head, n: int = 5) -> list[str]:
    """The blobs notebooks' cells after `p = model.predict(X_train)`."""
    lines = [f"two example output vectors:\n {outputs[:2]}", _extremes(outputs)]
    if head.from_logits:
        lines += [f"{head.squash(task)} of the logits, two example output vectors:\n {probs[:2]}", _extremes(probs)]
    predicted = predicted_class(probs, task)
    lines += [f"{outputs[i]}, category: {predicted[i]}" for i in range(min(n, len(outputs)))]
    return lines


def tape_printout(steps: Sequence[Any], outputs: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                  task: str, n: int = 10) -> list[str]:
    """The GradientTape notebook's printout: its step log, then `logits_test[0]` and the predicted
    class of the first `n` examples beside their labels."""
    lines = [f"Training loss (for one batch) at step {s.step}: {s.loss:.4f}\n"
             f"Seen so far: {s.seen} samples, running accuracy: {s.accuracy:.4f}" for s in steps]
    predicted = predicted_class(probs, task)[:n]
    lines += [f"logits_test[0]: {outputs[0]}",
              f"predicted: {np.asarray(predicted).tolist()}", f"labels:    {np.asarray(labels[:n]).tolist()}"]
    return lines


def draw_digits(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, path: Path,
                shape: tuple[int, ...] = (28, 28), n: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.3), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i].reshape(shape), cmap="gray")
        ax.set_title(f"label {labels[i]}, predicted {predicted[i]}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def write_printout(folder: Path, result: Evaluation, x: np.ndarray, cfg: Any, head: Head,
                   steps: Sequence[Any], drawing: Drawing) -> list[Path]:
    """notebook.txt (and the GradientTape notebook's notebook_digits.png) into `folder`; returns the
    files written."""
    task = str(cfg.task)
    header = (f"# {cfg.experiment or cfg.variant}: the {head.name} head on {cfg.dataset} ({task}), "
              f"{len(result.outputs)} {cfg.evaluate.split} examples")
    tape = str(cfg.trainer.name) == "gradient_tape"
    body = (tape_printout(steps, result.outputs, result.probabilities, result.labels, task) if tape
            else predict_printout(result.outputs, result.probabilities, task, head))
    written = [write_text(folder / PRINTOUT_FILE, "\n".join([header, *body]) + "\n")]
    if tape and drawing.kind == "image" and len(x) >= 3:
        predicted = predicted_class(result.probabilities, task)
        written.append(draw_digits(x, result.labels, predicted, folder / DIGITS_FILE, drawing.shape))
    return written
