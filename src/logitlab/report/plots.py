"""The report's pictures, where a picture is the data: MNIST test digits with each head's prediction,
and each blobs head's decision regions. (Per-epoch curves are data: `dvc plots` draws the history
files, and the MLflow UI each run's metrics.)

Each function takes the runs (one row each, as report.table makes them) and `artifact(row, name)`,
which gives the local path of a run's outputs.npz, wherever the run keeps it. Nothing here needs
TensorFlow: the train stage wrote each model's predictions, over the plane too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from logitlab.files import OUTPUTS_FILE, atomic_path, load_arrays

Artifact = Callable[[pd.Series, str], Path]


def _figure(rows: int, cols: int, width: float = 4.0, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


def _remake(row: pd.Series) -> str:
    return f"dvc repro -f {row['stage']}" if isinstance(row.get("stage"), str) else f"rerun the run {row['run_id']}"


def _outputs(row: pd.Series, artifact: Artifact, *extra: str) -> dict[str, np.ndarray]:
    return load_arrays(artifact(row, OUTPUTS_FILE), ("outputs", "probabilities", "labels", *extra), remake=_remake(row))


def _one_per_head(group: pd.DataFrame) -> pd.DataFrame:
    return group.drop_duplicates("tags.head")


def plot_digits(runs: pd.DataFrame, artifact: Artifact, out: Path, images: np.ndarray, n: int) -> list[Path]:
    """The first `n` MNIST test digits with the true label and each head's prediction (red: wrong)."""
    group = runs[(runs["tags.dataset"] == "mnist") & (runs["tags.task"] == "multiclass") & (runs["tags.trainer"] == "fit")]
    group = _one_per_head(group)
    if group.empty:
        return []
    plt, fig, axes = _figure(len(group), n, 1.3, 1.6)
    for row, (_, run) in zip(axes, group.iterrows()):
        arrays = _outputs(run, artifact)
        predicted = arrays["probabilities"].argmax(axis=1)
        for i, ax in enumerate(row):
            ax.imshow(images[i].reshape(28, 28), cmap="gray")
            ax.set_axis_off()
            wrong = predicted[i] != arrays["labels"][i]
            ax.set_title(f"{arrays['labels'][i]}→{predicted[i]}", fontsize=8, color="red" if wrong else "black")
        row[0].text(-0.3, 0.5, run["tags.head"], transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("MNIST test digits: true → predicted")
    return [_save(plt, fig, out / "digits_mnist.png")]


def plot_decision_regions(runs: pd.DataFrame, artifact: Artifact, out: Path, x: np.ndarray, y: np.ndarray,
                          positive_class: int) -> list[Path]:
    """Each blobs head's predicted class over the plane (its outputs.npz's grid), with the test points
    (binary: the configured positive class against the rest)."""
    written = []
    blobs = runs[(runs["tags.dataset"] == "blobs") & (runs["tags.trainer"] == "fit")]
    for task, group in blobs.groupby("tags.task"):
        group = _one_per_head(group)
        plt, fig, axes = _figure(1, len(group), 3.5, 3.2)
        for ax, (_, run) in zip(axes[0], group.iterrows()):
            grid = _outputs(run, artifact, "grid_x0", "grid_x1", "grid_class")
            regions = grid["grid_class"]
            ax.contourf(grid["grid_x0"], grid["grid_x1"], regions, alpha=0.3, levels=np.arange(regions.max() + 2) - 0.5,
                        cmap="tab10", vmin=0, vmax=9)  # the points' colours: class k is tab10's colour k in both
            labels = (y == positive_class).astype(int) if task == "binary" else y
            ax.scatter(x[:, 0], x[:, 1], c=labels, s=6, cmap="tab10", vmin=0, vmax=9)
            ax.set_title(run["tags.head"], fontsize=9)
        fig.suptitle(f"blobs {task}: decision regions" + (f" (class {positive_class} against the rest)"
                                                          if task == "binary" else ""))
        written.append(_save(plt, fig, out / f"decision_regions_blobs_{task}.png"))
    return written
