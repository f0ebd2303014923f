"""The comparison table: one row per variant, seeds aggregated as mean ± std. Its rows come from the
DVC pipeline's own files (`report.runs=pipeline`: the variants of the `pipeline:` matrices) or from
every finished run of the MLflow experiment (`report.runs=experiment`: sweeps included), in one
shape: MLflow's `search_runs` columns (tags.*, params.*, metrics.*)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from logitlab.errors import UserError
from logitlab.evaluate.registry import names
from logitlab.files import read_json
from logitlab.schema import Config, Task, TrainerName
from logitlab.tracking.store import store_call

log = logging.getLogger(__name__)

# What names a variant, as MLflow columns, and its name in the table. Runs are kept apart further by
# every other config value that differs between runs of one dataset and task (`config_labels`).
VARIANT = {"tags.dataset": "dataset", "tags.task": "task", "tags.head": "head", "tags.trainer": "trainer",
           "params.precision": "precision"}
# Config keys that cannot change a run's numbers (the seed is aggregated over), and the ones VARIANT names.
NOT_CONFIG = ("params.seed", "params.paths.", "params.tracking.", "params.report.", "params.pipeline.",
              "params.layout", "params.trainer.verbose", "params.evaluate.n_examples", "params.dataset.name",
              "params.task", "params.model.head", "params.trainer.name", "params.precision")
CONFIG = "config"  # the column of those values, `key=value ...`
METRICS = names(table=True)  # the table's columns: logitlab.evaluate.registry
CONFIDENCE = 0.95


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
        row["history"] = str(variant.path(root, "history") / f"{name}.tsv")
        rows.append(row)
    return with_config(complete(pd.DataFrame(rows)))


def experiment_runs(experiment: str, experiment_id: str | None) -> pd.DataFrame:
    """Every finished training run of the MLflow experiment, one row each; a variant and seed that
    ran twice keeps its latest run. `experiment_id` None: the store has no such experiment (the
    same error, without asking the store)."""
    import mlflow

    runs = None if experiment_id is None else store_call(
        "read the experiment's runs", mlflow.search_runs, experiment_ids=[experiment_id],
        filter_string="attributes.status = 'FINISHED'", output_format="pandas")
    if runs is None or runs.empty or "tags.logitlab.variant" not in runs:
        raise UserError(f"no finished training runs in MLflow experiment {experiment!r}")
    runs = with_config(complete(runs[runs["tags.logitlab.variant"].notna()].copy()))
    runs = runs.sort_values("start_time").drop_duplicates([*VARIANT, CONFIG, "params.seed"], keep="last")
    return with_config(runs.reset_index(drop=True))  # a value that only a replaced run had sets nothing apart


def _config_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c.startswith("params.") and not c.startswith(NOT_CONFIG)]


def config_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, the config values that differ between it and other runs of its dataset and task, as
    `key=value` pairs (learning rate, model, trainer settings, ...; VARIANT's columns, the seed and
    bookkeeping aside); empty where every run of its dataset and task agrees. A key a run lacks
    (logged before the key existed) shows as nan."""
    columns = _config_columns(runs)
    labels = pd.Series("", index=runs.index, dtype=object)
    for _, group in runs.groupby(["tags.dataset", "tags.task"], dropna=False, sort=False):
        values = group[columns].astype(str)
        varying = [c for c in columns if values[c].nunique() > 1]
        if varying:
            labels[group.index] = [" ".join(f"{c.removeprefix('params.')}={v}" for c, v in zip(varying, row))
                                   for row in values[varying].itertuples(index=False)]
    return labels


def with_config(runs: pd.DataFrame) -> pd.DataFrame:
    runs[CONFIG] = config_labels(runs)
    return runs


# How a value reads in a picture: a short name put before it, or a function of it. A config key not
# here reads as its last dotted part and its value (`steps_per_execution 32`).
SHORT: dict[str, str | Callable[[str], str]] = {
    "tags.head": str,
    "tags.trainer": lambda v: {"fit": "fit", "gradient_tape": "GradientTape"}.get(v, v),
    "params.precision": lambda v: v.removeprefix("mixed_"),  # mixed_float16: float16
    "params.optimizer.lr": "lr",
    "params.optimizer.name": str,
    "params.model.name": str,
    "params.model.layers": lambda v: "-".join(re.findall(r"\d+", v)) or v,  # [784, 256]: 784-256
    "params.model.activation": str,
    "params.trainer.epochs": lambda v: f"{v} epoch{'' if v == '1' else 's'}",
    "params.trainer.validation_split": lambda v: "no val" if v in ("0", "0.0") else f"val {v}",
    "params.trainer.batch_size": "batch",
    "params.dataset.batch_size": "batch",
    "params.experiment": str,
}


def short(column: str, value: Any) -> str:
    """A column's value in short words: `lr 0.01`, `784-256`, `1 epoch`, `float16`."""
    value = str(value)
    name = SHORT.get(column, column.removeprefix("params.").rsplit(".", 1)[-1])
    return name(value) if callable(name) else f"{name} {value}"


def short_labels(runs: pd.DataFrame, without: tuple[str, ...] = ()) -> pd.Series:
    """Per run, what sets it apart from the other runs given, in short words (`softmax, lr 0.01,
    GradientTape`): each of its head, trainer, precision and config values that differs between them;
    empty where they all agree. `without`: columns a picture shows otherwise (the heads as colours,
    the precisions as panels). The runs are the ones a picture shows, so a label names only what
    tells its line or panel from the others there."""
    columns = [c for c in ("tags.head", "tags.trainer", "params.precision", *_config_columns(runs)) if c not in without]
    values = runs[columns].astype(str)
    varying = [c for c in columns if values[c].nunique() > 1]
    labels = [", ".join(short(c, v) for c, v in zip(varying, row)) for row in values[varying].itertuples(index=False)]
    return pd.Series(labels, index=runs.index, dtype=object)


def one_per_group(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per variant and config, the lowest seed's, with `label` (its short label among the runs
    given, or its head where nothing else sets it apart) and `seeds` (how many runs its group has): a
    picture never shows two configs under one name, nor hides that seeds exist."""
    keys = [*VARIANT, CONFIG]
    runs = _prepared(runs)
    runs = runs.assign(_seed=pd.to_numeric(runs["params.seed"], errors="coerce"))
    counts = runs.groupby(keys, dropna=False, sort=False)["run_id"].transform("size")
    runs = runs.assign(seeds=counts).sort_values("_seed", kind="stable")
    first = runs.drop_duplicates(keys).sort_index().drop(columns="_seed")
    labels = short_labels(first)
    return first.assign(label=labels.where(labels != "", first["tags.head"].astype(str)))


def _prepared(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy with every column complete (runs logged before a key existed have it at its default)
    and the config labels, unless the caller made them already."""
    runs = complete(runs.copy())
    return runs if CONFIG in runs else with_config(runs)


def complete(runs: pd.DataFrame) -> pd.DataFrame:
    """Every column the report reads, NaN where no run has it; the keys that came later at their defaults."""
    for column in (*VARIANT, "tags.numerics.train_loss_path", *(f"metrics.{m}" for m in METRICS)):
        if column not in runs:
            runs[column] = np.nan
    runs["tags.trainer"] = runs["tags.trainer"].fillna("fit")
    runs["tags.task"] = runs["tags.task"].fillna("multiclass")
    runs["params.precision"] = runs["params.precision"].astype(object).fillna("float32")  # runs from before the key existed
    return runs


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant and config: its identity, seeds, and each metric's mean, std and the
    half-width of its 95% confidence interval over seeds (Student's t; NaN for one seed)."""
    runs = _prepared(runs)
    renamed = runs.rename(columns={**VARIANT, "params.seed": "seed", "tags.numerics.train_loss_path": "train_loss_path",
                                   **{f"metrics.{m}": m for m in METRICS}})
    keys = [*VARIANT.values(), CONFIG]
    grouped = renamed.groupby(keys, sort=False, dropna=False)
    table = grouped.agg(seeds=("seed", lambda s: " ".join(sorted(map(str, s)))), runs=("seed", "size"),
                        train_loss_path=("train_loss_path", "first"))
    means, stds, counts = grouped[METRICS].mean(), grouped[METRICS].std(ddof=1), grouped[METRICS].count()
    ci = interval(stds, counts)
    table = table.join(means).join(stds.add_suffix("_std")).join(ci.add_suffix("_ci95")).reset_index()
    order = {"multiclass": 0, "binary": 1}
    return table.sort_values(["dataset", "task", "trainer", "precision", "head", CONFIG],
                             key=lambda c: c.map(order) if c.name == "task" else c, ignore_index=True)


def interval(std: Any, n: Any) -> Any:
    """The half-width of the 95% confidence interval of a mean of `n` values with sample std `std`
    (Student's t); NaN below two values. Elementwise over Series and DataFrames."""
    from scipy import stats

    n = n.where(n > 1) if hasattr(n, "where") else (n if n > 1 else np.nan)
    return std * stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) / np.sqrt(n)


def _cell(mean: float, half_width: float) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:.4g}"
    return text if pd.isna(half_width) else f"{text} ± {half_width:.2g}"


CAPTION = ("Each cell: the mean over the seeds ± the half-width of its 95% confidence interval (Student's t; "
           "summary.csv also has each std). `config`: the settings that set a row apart from the other rows "
           "of its dataset and task.")


def to_markdown(table: pd.DataFrame) -> str:
    columns = ["dataset", "task", "head", "trainer", "precision"]
    columns += [CONFIG] * bool(table[CONFIG].astype(bool).any()) + ["seeds", "train_loss_path"]
    shown = table[columns].copy()
    for m in METRICS:
        shown[m] = [_cell(a, b) for a, b in zip(table[m], table[f"{m}_ci95"])]
    return shown.to_markdown(index=False)
