"""The study view: how each head fares across learning rates, with error bars over seeds, and where
the logit head is measurably better or worse than another.

Drawn wherever the runs of a dataset and task vary in `optimizer.lr`, whatever the sweep
(experiment=numerics_study does, over heads, precisions and seeds):
- `plots/study_<dataset>_<task>.png`: the registry's study metrics (names(study=True): test
  accuracy, the honest float64 test loss, the fraction at the clip ceiling, the training loss's
  error against float64) against the learning rate, one row each; one column per precision; the
  heads as colours, each the mean over seeds with its 95% confidence band.
- `study.md` / `study.csv`: logit − other head, paired by seed (same data, same initial weights),
  per dataset, precision and learning rate: the mean difference, its 95% interval, and whether the
  interval excludes zero.
Runs that differ in anything else (model size, epochs, ...) are kept apart, by their config label
without the learning rate (in the picture: line styles, named in short words)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from logitlab.evaluate.registry import REGISTRY, names
from logitlab.report.plots import (
    IDENTICAL,
    TEXT_SIZE,
    TITLE_SIZE,
    Styles,
    Twins,
    draw_lines,
    figure,
    save_figure,
    wrap,
)
from logitlab.report.table import interval, short_labels
from logitlab.schema import Precision

LR = "params.optimizer.lr"
BASE_HEAD = "logit"
# metric: its axis label, and whether it is a fraction (its band clipped to [0, 1]): the registry's
# study metrics (logitlab.evaluate.registry), and those whose logit − other head difference is tabled
STUDY_METRICS = {name: (REGISTRY[name].label, REGISTRY[name].fraction) for name in names(study=True)}
DIFF_METRICS = tuple(names(compare=True))
SHOWN = ("tags.head", "params.precision", LR)  # what the study view shows as colours, columns and x axis


def study_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a numeric `lr`, `seed`, and `rest`: their config label without the learning rate
    (what else sets them apart); only dataset-task groups that vary in the learning rate."""
    if LR not in runs:
        return runs.iloc[0:0]
    runs = runs.assign(lr=pd.to_numeric(runs[LR], errors="coerce"), seed=pd.to_numeric(runs["params.seed"]),
                       rest=[" ".join(p for p in str(c).split() if not p.startswith("optimizer.lr="))
                             for c in runs["config"]])
    varies = runs.groupby(["tags.dataset", "tags.task"])["lr"].transform("nunique") > 1
    return runs[varies & runs["lr"].notna()]


def curves(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per precision, head, line (what else sets runs apart: short words, learning rate aside) and
    learning rate: the metric's mean, its 95% half-width, n."""
    frame = runs.assign(line=short_labels(runs, without=SHOWN),
                        value=runs[f"metrics.{metric}"])
    frame = frame.rename(columns={"params.precision": "precision", "tags.head": "head"})
    grouped = frame.groupby(["precision", "head", "line", "lr"])["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    out["ci95"] = interval(out["std"], out["n"])
    return out


def _precisions(values: pd.Series) -> list[str]:
    """The precisions, in the schema's order (float32 first: where Keras rescues the softmax head)."""
    order = [str(p) for p in Precision]
    return sorted(values.unique(), key=lambda p: (order.index(p) if p in order else len(order), p))


def summary_curves(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`curves` of a summary's rows (study_from_summary): each row's mean and 95% half-width as the
    summary has them."""
    frame = runs.assign(line=short_labels(runs, without=SHOWN), mean=runs[f"metrics.{metric}"],
                        ci95=runs.get(f"{metric}_ci95"), n=runs["runs"])
    frame = frame.rename(columns={"params.precision": "precision", "tags.head": "head"})
    return frame[["precision", "head", "line", "lr", "mean", "ci95", "n"]].sort_values(["precision", "head", "line", "lr"])


def study_from_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A report's summary.csv (report.table.summarize: one row per variant and config, each metric's
    mean over the seeds, its std and 95% half-width) as the rows the study view draws, so that a
    study's committed summary redraws its figure without its runs (`make docs-images`)."""
    config = summary["config"].fillna("").astype(str)
    params = pd.DataFrame([dict(part.split("=", 1) for part in c.split() if "=" in part) for c in config],
                          index=summary.index).add_prefix("params.")
    rows = pd.DataFrame({"tags.dataset": summary["dataset"], "tags.task": summary["task"], "tags.head": summary["head"],
                         "tags.trainer": summary["trainer"], "params.precision": summary["precision"],
                         "params.seed": 0, "config": config, "runs": summary["runs"]}).join(params)
    for metric in STUDY_METRICS:
        if metric in summary:
            rows[f"metrics.{metric}"] = summary[metric]
            rows[f"{metric}_ci95"] = summary[f"{metric}_ci95"]
    return rows


def plot_study(runs: pd.DataFrame, out: Path, summarized: bool = False) -> list[Path]:
    """Per dataset and task whose runs vary in the learning rate: one column per precision, one row
    per study metric, the heads as colours with each one's mean over seeds and its 95% band, and
    whatever else sets runs apart (model, trainer, ...) as line styles. A row shares its y axis, so
    the columns read side by side: where the softmax head stops tracking the logit head.
    `summarized`: the rows are a summary's (study_from_summary), each a config's mean already."""
    tabulate = summary_curves if summarized else curves
    written = []
    for (dataset, task), group in study_runs(runs).groupby(["tags.dataset", "tags.task"], sort=True):
        metrics = [m for m in STUDY_METRICS if f"metrics.{m}" in group and group[f"metrics.{m}"].notna().any()]
        if not metrics:
            continue
        precisions = _precisions(group["params.precision"])
        styles = Styles(group["tags.head"], short_labels(group, without=SHOWN))
        plt, fig, axes = figure(len(metrics), len(precisions), 3.0, 2.3, sharex=True, sharey="row")
        twins = {precision: Twins(styles) for precision in precisions}
        for row, metric in zip(axes, metrics):
            _study_row(fig, row, tabulate(group, metric), precisions, *STUDY_METRICS[metric], styles, twins)
        for ax, precision in zip(axes[0], precisions):
            ax.set_title(precision, fontsize=TITLE_SIZE)
        for ax in axes[-1]:
            ax.set_xlabel("learning rate")
        seeds = (group["runs"] if summarized else
                 group.groupby(["tags.head", "params.precision", "lr", "rest"])["seed"].nunique())
        count = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        title = (f"{dataset} {task}: where the logit head matters (each head's mean over {count} seeds and its 95% "
                 "confidence band)")
        written.append(save_figure(plt, fig, out / f"study_{dataset}_{task}.png", title, styles.keys(),
                                   _twins_note(twins)))
    return written


def _study_row(fig, row, table: pd.DataFrame, precisions: list[str], label: str, fraction: bool, styles: Styles,
               twins: dict[str, Twins]) -> None:
    """One metric across the precisions: a line and its band per head and line style; the scale set
    by the means of the whole row (a band may run off it)."""
    log_y = not fraction and (table["mean"] > 0).all()
    low, high = table["mean"].min(), table["mean"].max()
    for ax, precision in zip(row, precisions):
        shown = table[table["precision"] == precision]
        lines = {key: (t["lr"].to_numpy(), t["mean"].to_numpy()) for key, t in shown.groupby(["head", "line"])}
        twins[precision].add(label, lines, draw_lines(ax, lines, styles, points=True))
        for key, t in shown.groupby(["head", "line"]):
            half = t["ci95"].fillna(0)
            bottom, top = t["mean"] - half, t["mean"] + half
            if fraction:
                bottom, top = bottom.clip(0, 1), top.clip(0, 1)
            elif log_y:
                bottom = bottom.clip(lower=low / 10)
            ax.fill_between(t["lr"], bottom, top, color=styles.line(*key)["color"], alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
            ax.set_ylim(low / 2, high * 2)
        elif fraction:
            ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.05) + 0.01)
    row[0].set_ylabel(wrap(fig, label, 2.0, TEXT_SIZE + 1), fontsize=TEXT_SIZE + 1)


def _twins_note(twins: dict[str, Twins]) -> str:
    """The identical lines once per precision ("float32: softmax = logit"), precisions with the same
    identities said together."""
    said: dict[str, list[str]] = {}
    for precision, found in twins.items():
        if note := "; ".join(found.note()):
            said.setdefault(note, []).append(precision)
    return IDENTICAL + "; ".join(f"{', '.join(where)}: {note}" for note, where in said.items()) + "." if said else ""


def differences(runs: pd.DataFrame, base: str = BASE_HEAD) -> pd.DataFrame:
    """logit − other head per dataset, task, precision, trainer, config and learning rate, paired by
    seed: mean, 95% half-width, the seeds paired, and whether the interval excludes zero."""
    runs = study_runs(runs)
    keys = ["tags.dataset", "tags.task", "params.precision", "tags.trainer", "rest", "lr"]
    rows = []
    for key, group in runs.groupby(keys, sort=True):
        by_head = {h: g.set_index("seed") for h, g in group.groupby("tags.head")}
        if base not in by_head:
            continue
        for other, g in sorted(by_head.items()):
            if other == base:
                continue
            seeds = by_head[base].index.intersection(g.index)
            row = dict(zip(["dataset", "task", "precision", "trainer", "config", "lr"], key), other=other,
                       seeds=len(seeds))
            for metric in DIFF_METRICS:
                d = (by_head[base].loc[seeds, f"metrics.{metric}"] - g.loc[seeds, f"metrics.{metric}"]).astype(float)
                half = interval(d.std(ddof=1), d.count())
                row.update({f"{metric}_diff": d.mean(), f"{metric}_ci95": half,
                            f"{metric}_excludes_0": bool(pd.notna(half) and abs(d.mean()) > half)})
            rows.append(row)
    return pd.DataFrame(rows)


def _diff_cell(mean: float, half: float, excludes: bool) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:+.3g}" if pd.isna(half) else f"{mean:+.3g} ± {half:.2g}"
    return f"**{text}**" if excludes else text


def differences_markdown(table: pd.DataFrame) -> str:
    shown = table[["dataset", "precision", "lr", "other", "seeds"]].copy()
    if table["config"].astype(bool).any():
        shown.insert(1, "config", table["config"])
    for metric in DIFF_METRICS:
        shown[f"Δ {metric}"] = [_diff_cell(m, h, e) for m, h, e in zip(
            table[f"{metric}_diff"], table[f"{metric}_ci95"], table[f"{metric}_excludes_0"])]
    favours = " or ".join(f"a {'positive' if REGISTRY[m].higher_is_better else 'negative'} Δ {m}" for m in DIFF_METRICS)
    caption = (f"{BASE_HEAD} − other head, paired by seed: mean ± the half-width of its 95% confidence "
               f"interval (Student's t); **bold** where the interval excludes zero. {favours} favours the "
               f"{BASE_HEAD} head.")
    return caption + "\n\n" + shown.to_markdown(index=False)

