"""The comparison report: the runs read back from MLflow with pandas, one row per variant (seeds
aggregated as mean ± std), and the plots of the lesson, logged as a report run and written for DVC."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from logitlab import tracking
from logitlab.config import data_file, positive_int, under_root
from logitlab.data import atomic_path, load_processed
from logitlab.errors import UserError

log = logging.getLogger(__name__)

# What identifies a variant (seed aside), as MLflow columns, and its name in the table.
VARIANT = {"tags.dataset": "dataset", "tags.task": "task", "tags.head": "head", "tags.trainer": "trainer",
           "params.model.layers": "layers", "params.trainer.epochs": "epochs", "params.optimizer.lr": "lr"}
METRICS = ["test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max",
           "test_loss_f64", "loss_err_probs_max", "loss_err_logits_max", "loss_err_train_max",
           "prob_clip_band_fraction", "clip_ceiling_fraction", "clip_grad_norm_probs", "clip_grad_norm_logits",
           "probs_sum_max_error"]
KIND_TAG = "logitlab.kind"


def pipeline_run_ids(models_dir: Path) -> list[str]:
    """The run ids the DVC train stages recorded (paths.models/*/run.json)."""
    ids = [json.loads(p.read_text())["run_id"] for p in sorted(models_dir.glob(f"*/{tracking.RUN_FILE}"))]
    if not ids:
        raise UserError(f"no trained runs under {models_dir}; run the pipeline first: dvc repro")
    return ids


def load_runs(experiment: str, run_ids: list[str] | None) -> pd.DataFrame:
    """Finished training runs of the experiment (all of them, or `run_ids`), one row each."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'",
                              output_format="pandas")
    if runs.empty or "tags.logitlab.variant" not in runs:
        raise UserError(f"no finished training runs in MLflow experiment {experiment!r}")
    runs = runs[runs["tags.logitlab.variant"].notna()]
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)]
        missing = set(run_ids) - set(runs["run_id"])
        if missing:
            raise UserError(f"runs {sorted(missing)} are not finished in experiment {experiment!r}; rerun: dvc repro")
    for column in (*VARIANT, "tags.numerics.train_loss_path", *(f"metrics.{m}" for m in METRICS)):
        if column not in runs:
            runs[column] = np.nan
    runs["tags.trainer"] = runs["tags.trainer"].fillna("fit")
    runs["tags.task"] = runs["tags.task"].fillna("multiclass")
    # A variant and seed run twice (a pipeline rerun): keep the latest.
    runs = runs.sort_values("start_time").drop_duplicates([*VARIANT, "params.seed"], keep="last")
    return runs.reset_index(drop=True)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: its identity, seeds, and each metric's mean and std over seeds."""
    renamed = runs.rename(columns={**VARIANT, "params.seed": "seed", "tags.numerics.train_loss_path": "train_loss_path",
                                   **{f"metrics.{m}": m for m in METRICS}})
    keys = list(VARIANT.values())
    grouped = renamed.groupby(keys, sort=False, dropna=False)
    table = grouped.agg(seeds=("seed", lambda s: " ".join(sorted(map(str, s)))), runs=("seed", "size"),
                        train_loss_path=("train_loss_path", "first"))
    means, stds = grouped[METRICS].mean(), grouped[METRICS].std(ddof=1)
    table = table.join(means).join(stds.add_suffix("_std")).reset_index()
    order = {"multiclass": 0, "binary": 1}
    return table.sort_values(["dataset", "task", "trainer", "head"], key=lambda c: c.map(order) if c.name == "task" else c,
                             ignore_index=True)


def _cell(mean: float, std: float) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:.4g}"
    return text if pd.isna(std) else f"{text} ± {std:.2g}"


def to_markdown(table: pd.DataFrame) -> str:
    shown = table[["dataset", "task", "head", "trainer", "seeds", "train_loss_path"]].copy()
    for m in METRICS:
        shown[m] = [_cell(a, b) for a, b in zip(table[m], table[f"{m}_std"])]
    return shown.to_markdown(index=False)


# --------------------------------------------------------------------------- plots


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


def plot_curves(runs: pd.DataFrame, client, out: Path) -> list[Path]:
    """Loss and accuracy per epoch, training (solid) and validation (dashed), one line pair per head."""
    written = []
    for (dataset, task, trainer), group in runs.groupby(["tags.dataset", "tags.task", "tags.trainer"]):
        plt, fig, axes = _figure(1, 2, 5.0, 3.5)
        for color, (_, run) in enumerate(group.drop_duplicates("tags.head").iterrows()):
            for ax, metric in zip(axes[0], ("loss", "accuracy")):
                for prefix, style in (("", "-"), ("val_", "--")):
                    history = client.get_metric_history(run["run_id"], prefix + metric)
                    ax.plot([m.step + 1 for m in history], [m.value for m in history], style, color=f"C{color}",
                            label=f"{run['tags.head']}{' (val)' if prefix else ''}")
        for ax, metric in zip(axes[0], ("loss", "accuracy")):
            ax.set(title=f"{dataset} {task} {trainer}: {metric}", xlabel="epoch")
            ax.legend(fontsize=7)
        axes[0][0].set_yscale("log")
        written.append(_save(plt, fig, out / f"curves_{dataset}_{task}_{trainer}.png"))
    return written


def _outputs(client, run_id: str, tmp: Path) -> dict[str, np.ndarray]:
    from logitlab.evaluation import OUTPUTS_ARTIFACT

    path = client.download_artifacts(run_id, OUTPUTS_ARTIFACT, str(tmp))
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def plot_histograms(runs: pd.DataFrame, client, out: Path, tmp: Path) -> list[Path]:
    """Histograms of the raw outputs and of the probabilities, one row per head."""
    written = []
    for (dataset, task, trainer), group in runs.groupby(["tags.dataset", "tags.task", "tags.trainer"]):
        group = group.drop_duplicates("tags.head")
        plt, fig, axes = _figure(len(group), 2)
        for row, (_, run) in zip(axes, group.iterrows()):
            arrays = _outputs(client, run["run_id"], tmp / run["run_id"])
            for ax, key, title in zip(row, ("outputs", "probabilities"), ("raw outputs", "probabilities")):
                ax.hist(arrays[key].ravel(), bins=60, log=True)
                ax.set_title(f"{run['tags.head']}: {title}", fontsize=9)
        fig.suptitle(f"{dataset} {task} {trainer}")
        written.append(_save(plt, fig, out / f"histograms_{dataset}_{task}_{trainer}.png"))
    return written


def plot_digits(runs: pd.DataFrame, client, out: Path, tmp: Path, images: np.ndarray, n: int) -> list[Path]:
    """The first `n` MNIST test digits with the true label and each head's prediction (red: wrong)."""
    group = runs[(runs["tags.dataset"] == "mnist") & (runs["tags.task"] == "multiclass") & (runs["tags.trainer"] == "fit")]
    group = group.drop_duplicates("tags.head")
    if group.empty:
        return []
    plt, fig, axes = _figure(len(group), n, 1.3, 1.6)
    for row, (_, run) in zip(axes, group.iterrows()):
        arrays = _outputs(client, run["run_id"], tmp / run["run_id"])
        predicted = arrays["probabilities"].argmax(axis=1)
        for i, ax in enumerate(row):
            ax.imshow(images[i].reshape(28, 28), cmap="gray")
            ax.set_axis_off()
            wrong = predicted[i] != arrays["labels"][i]
            ax.set_title(f"{arrays['labels'][i]}→{predicted[i]}", fontsize=8, color="red" if wrong else "black")
        row[0].text(-0.3, 0.5, run["tags.head"], transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("MNIST test digits: true → predicted")
    return [_save(plt, fig, out / "digits_mnist.png")]


def plot_decision_regions(runs: pd.DataFrame, client, out: Path, tmp: Path, x: np.ndarray, y: np.ndarray) -> list[Path]:
    """Each blobs head's predicted class over the plane, with the test points."""
    import keras

    from logitlab.numerics import predicted_class, probabilities
    from logitlab.training import MODEL_FILE

    written = []
    blobs = runs[(runs["tags.dataset"] == "blobs") & (runs["tags.trainer"] == "fit")]
    (x0, x1), (y0, y1) = (x[:, 0].min() - 1, x[:, 0].max() + 1), (x[:, 1].min() - 1, x[:, 1].max() + 1)
    gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    grid = np.c_[gx.ravel(), gy.ravel()].astype(np.float32)
    for task, group in blobs.groupby("tags.task"):
        group = group.drop_duplicates("tags.head")
        plt, fig, axes = _figure(1, len(group), 3.5, 3.2)
        for ax, (_, run) in zip(axes[0], group.iterrows()):
            model = keras.models.load_model(client.download_artifacts(run["run_id"], MODEL_FILE, str(tmp / run["run_id"])))
            probs = probabilities(np.asarray(model(grid, training=False)), task, run["tags.head"])
            regions = predicted_class(probs, task).reshape(gx.shape)
            ax.contourf(gx, gy, regions, alpha=0.3, levels=np.arange(regions.max() + 2) - 0.5, cmap="tab10")
            labels = (y == 0).astype(int) if task == "binary" else y
            ax.scatter(x[:, 0], x[:, 1], c=labels, s=6, cmap="tab10", vmin=0, vmax=9)
            ax.set_title(run["tags.head"], fontsize=9)
        fig.suptitle(f"blobs {task}: decision regions")
        written.append(_save(plt, fig, out / f"decision_regions_blobs_{task}.png"))
    return written


# --------------------------------------------------------------------------- the stage


def report(cfg: DictConfig, root: Path, out_dir: Path) -> pd.DataFrame:
    """Write summary.csv, summary.md and plots/ to `out_dir`, and log them as a report run."""
    import os
    import tempfile

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking.setup(cfg.tracking, root)
    choice = cfg.report.runs
    if choice not in ("pipeline", "experiment"):
        raise UserError(f"unknown report.runs {choice!r}; valid: pipeline, experiment")
    digits = positive_int(cfg.report.digits, "report.digits")
    run_ids = pipeline_run_ids(under_root(root, cfg.paths.models)) if choice == "pipeline" else None
    runs = load_runs(cfg.tracking.experiment, run_ids)
    table = summarize(runs)

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.png"):
        stale.unlink()
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        written = plot_curves(runs, client, plots) + plot_histograms(runs, client, plots, tmp)
        if (runs["tags.dataset"] == "mnist").any():
            mnist = load_processed(data_file(cfg, root, "processed", "mnist"), "mnist")
            written += plot_digits(runs, client, plots, tmp, mnist["x_test"], min(digits, len(mnist["x_test"])))
        if (runs["tags.dataset"] == "blobs").any():
            blobs = load_processed(data_file(cfg, root, "processed", "blobs"), "blobs")
            written += plot_decision_regions(runs, client, plots, tmp, blobs["x_test"], blobs["y_test"])

    with atomic_path(out_dir / "summary.csv") as tmp_csv:
        table.to_csv(tmp_csv, index=False)
    with atomic_path(out_dir / "summary.md") as tmp_md:
        tmp_md.write_text(to_markdown(table) + "\n")
    with tracking.tracked_run(cfg.tracking, root, found_by="report", run_name="report",
                              tags={KIND_TAG: "report", "report.runs": choice}):
        mlflow.log_metric("report_variants", len(table))
        mlflow.log_artifact(str(out_dir / "summary.csv"))
        mlflow.log_artifact(str(out_dir / "summary.md"))
        mlflow.log_artifacts(str(plots), artifact_path="plots")
    log.info("report of %d runs, %d variants, %d plots -> %s", len(runs), len(table), len(written), out_dir)
    return table
