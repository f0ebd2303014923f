"""The report's pictures, each chosen by what a dataset's plug-in says an example is (an image, a
point in the plane): image datasets' test examples with each variant's prediction, two-feature
datasets' decision regions per variant, and the loss curves of every variant side by side (`dvc
plots` and the MLflow UI draw each run's own).

Each function takes the runs (one row each, as report.table makes them) and `artifact(row, name)`,
which gives the local path of a run's outputs.npz, wherever the run keeps it, or `history(row)`, its
epochs. Every picture shows one run per variant and config (report.table.one_per_group), labelled by
what sets it apart, so a sweep's learning rates or model sizes never share a name. Nothing here needs
TensorFlow: the train stage wrote each model's predictions, over the plane too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from logitlab.files import OUTPUTS_FILE, atomic_path, load_arrays
from logitlab.report.table import one_per_group

Artifact = Callable[[pd.Series, str], Path]
Examples = Callable[[pd.Series], tuple[np.ndarray, np.ndarray]]  # the examples a run was evaluated on, x and y
History = Callable[[pd.Series], pd.DataFrame]   # a run's epochs: `epoch` (from 1), `loss`, `val_loss`, ...
# Each line's (linestyle, marker): lines that coincide still show one another.
STYLES = [("-", None), ("--", "o"), (":", "s"), ("-.", "^"), ((0, (5, 1)), "x"), ((0, (1, 2)), "D")]


def figure(rows: int, cols: int, width: float = 4.0, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return plt, fig, axes


def save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


def _remake(row: pd.Series) -> str:
    return f"dvc repro -f {row['stage']}" if isinstance(row.get("stage"), str) else f"rerun the run {row['run_id']}"


def _outputs(row: pd.Series, artifact: Artifact, *extra: str) -> dict[str, np.ndarray]:
    return load_arrays(artifact(row, OUTPUTS_FILE), ("outputs", "probabilities", "labels", *extra), remake=_remake(row))


def plot_digits(runs: pd.DataFrame, artifact: Artifact, out: Path, examples: Examples, n: int,
                dataset: str, shape: tuple[int, ...]) -> list[Path]:
    """The first `n` images (H x W: `shape`) each multi-class run of `dataset` was evaluated on, with
    the true label and the run's prediction (red: wrong)."""
    group = one_per_group(runs[(runs["tags.dataset"] == dataset) & (runs["tags.task"] == "multiclass")])
    if group.empty:
        return []
    plt, fig, axes = figure(len(group), n, 1.3, 1.6)
    for row, (_, run) in zip(axes, group.iterrows()):
        arrays = _outputs(run, artifact)
        predicted = arrays["probabilities"].argmax(axis=1)
        images, _ = examples(run)
        for ax in row[len(images):]:
            ax.set_axis_off()
        for i, ax in enumerate(row[:len(images)]):
            ax.imshow(images[i].reshape(shape), cmap="gray")
            ax.set_axis_off()
            wrong = predicted[i] != arrays["labels"][i]
            ax.set_title(f"{arrays['labels'][i]}→{predicted[i]}", fontsize=8, color="red" if wrong else "black")
        row[0].text(-0.3, 0.5, run["label"], transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{dataset} examples: true → predicted")
    return [save_figure(plt, fig, out / f"digits_{dataset}.png")]


def plot_decision_regions(runs: pd.DataFrame, artifact: Artifact, out: Path, examples: Examples,
                          positive_class: int, dataset: str) -> list[Path]:
    """Each variant of `dataset` (two features): its predicted class over the plane (its outputs.npz's grid), with the points
    it was evaluated on. Class k is tab10's colour k in regions and points alike; binary: the configured positive
    class in its own colour, the rest grey."""
    written = []
    for task, group in runs[runs["tags.dataset"] == dataset].groupby("tags.task"):
        group = one_per_group(group)
        cols = min(len(group), 4)
        plt, fig, axes = figure(-(-len(group) // cols), cols, 3.5, 3.2)
        for ax, (_, run) in zip(axes.flat, group.iterrows()):
            grid = _outputs(run, artifact, "grid_x0", "grid_x1", "grid_class")
            regions = grid["grid_class"]
            x, y = examples(run)
            if task == "binary":
                ax.contourf(grid["grid_x0"], grid["grid_x1"], regions, levels=[-0.5, 0.5, 1.5],
                            colors=binary_colours(positive_class), alpha=0.3)
                ax.scatter(x[:, 0], x[:, 1], c=point_colours(y, positive_class), s=6)
            else:
                ax.contourf(grid["grid_x0"], grid["grid_x1"], regions, alpha=0.3,
                            levels=np.arange(regions.max() + 2) - 0.5, cmap="tab10", vmin=0, vmax=9)
                ax.scatter(x[:, 0], x[:, 1], c=y, s=6, cmap="tab10", vmin=0, vmax=9)
            ax.set_title(run["label"], fontsize=8)
        for ax in list(axes.flat)[len(group):]:
            ax.set_axis_off()
        fig.suptitle(f"{dataset} {task}: decision regions" + (f" (class {positive_class} against the rest)"
                                                          if task == "binary" else ""))
        written.append(save_figure(plt, fig, out / f"decision_regions_{dataset}_{task}.png"))
    return written


def binary_colours(positive_class: int) -> list[str]:
    """[the rest, the positive class]: grey, and the positive class's tab10 colour (as in the
    multi-class picture)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return ["#9e9e9e", to_hex(colormaps["tab10"](positive_class % 10))]


def point_colours(y: np.ndarray, positive_class: int) -> list[str]:
    """Each point's colour in a binary picture: its class is the positive one, or the rest."""
    rest, positive = binary_colours(positive_class)
    return [positive if label == positive_class else rest for label in np.asarray(y).reshape(-1)]


def identical(series: dict[str, np.ndarray]) -> list[list[str]]:
    """The labels whose values coincide exactly, in sets of two or more, in order."""
    sets: dict[bytes, list[str]] = {}
    for label, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        sets.setdefault(values.shape.__repr__().encode() + values.tobytes(), []).append(label)
    return [labels for labels in sets.values() if len(labels) > 1]


def draw_lines(ax, lines: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[list[str]]:
    """One line per label, each its own linestyle and marker, so that lines that coincide stay
    visible; a line identical to others says so in the legend. Returns the identical sets."""
    same = identical({label: np.concatenate([np.asarray(x, float), np.asarray(y, float)])
                      for label, (x, y) in lines.items()})
    twins = {label: [o for o in labels if o != label] for labels in same for label in labels}
    for i, (label, (x, y)) in enumerate(lines.items()):
        linestyle, marker = STYLES[i % len(STYLES)]
        name = label + (f" (= {', '.join(twins[label])})" if label in twins else "")
        ax.plot(x, y, linestyle=linestyle, marker=marker, markevery=max(1, len(x) // 8) if marker else None,
                markersize=4, label=name, alpha=0.9)
    ax.legend(fontsize=5 if len(lines) > 6 else 6)
    return same


def plot_curves(runs: pd.DataFrame, history: History, out: Path) -> list[Path]:
    """Per dataset and task: the training and validation loss per epoch of every variant and config;
    curves that coincide are drawn so that both show, and named in the figure."""
    written = []
    for (dataset, task), group in runs.groupby(["tags.dataset", "tags.task"], sort=True):
        group = one_per_group(group)
        epochs = {run["label"]: history(run) for _, run in group.iterrows()}
        keys = [k for k in ("loss", "val_loss") if any(k in e for e in epochs.values())]
        plt, fig, axes = figure(1, len(keys), 5.0, 3.6)
        notes = []
        for ax, key in zip(axes[0], keys):
            lines = {label: (e["epoch"].to_numpy(), e[key].to_numpy()) for label, e in epochs.items() if key in e}
            notes += [f"{key}: " + " = ".join(labels) for labels in draw_lines(ax, lines)]
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.set_yscale("log")
        title = f"{dataset} {task}: loss per epoch"
        if notes:
            title += "\nidentical curves: " + "; ".join(notes)
        fig.suptitle(title, fontsize=9)
        written.append(save_figure(plt, fig, out / f"curves_{dataset}_{task}.png"))
    return written
