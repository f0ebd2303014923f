"""The comparison table: one row per variant, seeds aggregated as mean ± std. Its rows come from the
DVC pipeline's own files (`report.runs=pipeline`: the variants of the `pipeline:` matrices) or from
every finished run of the MLflow experiment (`report.runs=experiment`: sweeps included), in one
shape: MLflow's `search_runs` columns (tags.*, params.*, metrics.*)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from logitlab.errors import UserError
from logitlab.files import read_json
from logitlab.schema import Config, Task, TrainerName

log = logging.getLogger(__name__)

# What identifies a variant (seed aside), as MLflow columns, and its name in the table.
VARIANT = {"tags.dataset": "dataset", "tags.task": "task", "tags.head": "head", "tags.trainer": "trainer",
           "params.model.layers": "layers", "params.trainer.epochs": "epochs", "params.optimizer.lr": "lr",
           "params.precision": "precision"}
METRICS = ["test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max",
           "test_loss_f64", "loss_err_probs_max", "loss_err_logits_max", "loss_err_train_max",
           "prob_clip_band_fraction", "clip_ceiling_fraction", "clip_grad_norm_probs", "clip_grad_norm_logits",
           "probs_sum_max_error"]


def pipeline_variants(cfg: Config) -> list[Config]:
    """The config of every variant the DVC pipeline trains (dvc.yaml's train matrices)."""
    from dataclasses import replace

    p = cfg.pipeline
    combos = [(d, Task.multiclass, h, TrainerName.fit) for d in p.datasets for h in p.heads]
    combos += [(d, Task.binary, h, TrainerName.fit) for d in p.datasets for h in p.binary_heads]
    combos += [(d, Task.multiclass, h, TrainerName.gradient_tape) for d in p.gradient_tape.datasets
               for h in p.gradient_tape.heads]
    return [replace(cfg, dataset=d, task=t, model=replace(cfg.model, head=h), trainer=replace(cfg.trainer, name=n))
            for d, t, h, n in combos]


def pipeline_runs(cfg: Config, root: Path) -> pd.DataFrame:
    """One row per variant of the pipeline, from its files (paths.metrics, paths.predictions); each row's
    `artifacts` column is the folder with its model.keras and outputs.npz."""
    rows = []
    for variant in pipeline_variants(cfg):
        name, remake = variant.variant, f"dvc repro -f {variant.stage}"
        metrics = read_json(variant.path(root, "metrics") / f"{name}.json", remake=remake)
        info = read_json(variant.path(root, "predictions") / f"{name}.json", remake=remake)
        row = {"run_id": name, "run_name": name, "stage": variant.stage,
               "artifacts": str(variant.path(root, "models") / name)}
        row.update({f"tags.{k}": info[k] for k in ("dataset", "task", "head", "trainer")})
        row["tags.logitlab.variant"] = name
        row.update({f"tags.{k}": v for k, v in info.get("tags", {}).items()})
        row.update({f"params.{k}": v for k, v in info.get("params", {}).items()})
        row.update({f"metrics.{k}": v for k, v in metrics.items()})
        rows.append(row)
    return _complete(pd.DataFrame(rows))


def experiment_runs(experiment: str) -> pd.DataFrame:
    """Every finished training run of the MLflow experiment, one row each; a variant and seed that
    ran twice keeps its latest run."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'",
                              output_format="pandas")
    if runs.empty or "tags.logitlab.variant" not in runs:
        raise UserError(f"no finished training runs in MLflow experiment {experiment!r}")
    runs = _complete(runs[runs["tags.logitlab.variant"].notna()].copy())
    runs = runs.sort_values("start_time").drop_duplicates([*VARIANT, "params.seed"], keep="last")
    return runs.reset_index(drop=True)


def _complete(runs: pd.DataFrame) -> pd.DataFrame:
    for column in (*VARIANT, "tags.numerics.train_loss_path", *(f"metrics.{m}" for m in METRICS)):
        if column not in runs:
            runs[column] = np.nan
    runs["tags.trainer"] = runs["tags.trainer"].fillna("fit")
    runs["tags.task"] = runs["tags.task"].fillna("multiclass")
    runs["params.precision"] = runs["params.precision"].fillna("float32")  # runs from before the key existed
    return runs


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: its identity, seeds, and each metric's mean and std over seeds."""
    runs = _complete(runs.copy())  # runs logged before a key existed have it at its default
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
    shown = table[["dataset", "task", "head", "trainer", "precision", "seeds", "train_loss_path"]].copy()
    for m in METRICS:
        shown[m] = [_cell(a, b) for a, b in zip(table[m], table[f"{m}_std"])]
    return shown.to_markdown(index=False)


