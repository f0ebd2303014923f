"""The study view: how each head fares across learning rates, with error bars over seeds, and where
the logit head is measurably better or worse than another.

Drawn wherever the runs of a dataset and task vary in `optimizer.lr` (experiment=numerics_study
does, over heads, precisions and seeds):
- `plots/study_<dataset>_<task>.png`: test accuracy, the honest (float64) test loss, the fraction of
  test examples at the clip ceiling and the training loss's mean error against float64, against the
  learning rate; one line per head and precision, the mean over seeds with its 95% confidence band.
- `study.md` / `study.csv`: logit − other head, paired by seed (same data, same initial weights),
  per dataset, precision and learning rate: the mean difference, its 95% interval, and whether the
  interval excludes zero.
Runs that differ in anything else (model size, epochs, ...) are kept apart, by their config label
without the learning rate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from logitlab.evaluate.registry import REGISTRY, names
from logitlab.report.plots import draw_lines, figure, save_figure
from logitlab.report.table import interval

LR = "params.optimizer.lr"
BASE_HEAD = "logit"
# metric: its axis label, and whether it is a fraction (its band clipped to [0, 1]): the registry's
# study metrics (logitlab.evaluate.registry), and those whose logit − other head difference is tabled
STUDY_METRICS = {name: (REGISTRY[name].label, REGISTRY[name].fraction) for name in names(study=True)}
DIFF_METRICS = tuple(names(compare=True))


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


def _line(run: pd.Series) -> str:
    parts = [run["tags.head"], run["params.precision"], None if run["tags.trainer"] == "fit" else run["tags.trainer"],
             run["rest"] or None]
    return " ".join(str(p) for p in parts if p)


def curves(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per line (head, precision, ...) and learning rate: the metric's mean, its 95% half-width, n."""
    frame = runs.assign(line=[_line(r) for _, r in runs.iterrows()], value=runs[f"metrics.{metric}"])
    grouped = frame.groupby(["line", "lr"])["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    out["ci95"] = interval(out["std"], out["n"])
    return out


def plot_study(runs: pd.DataFrame, out: Path) -> list[Path]:
    written = []
    for (dataset, task), group in study_runs(runs).groupby(["tags.dataset", "tags.task"], sort=True):
        plt, fig, axes = figure(2, 2, 5.6, 4.0)
        for ax, (metric, (label, fraction)) in zip(axes.flat, STUDY_METRICS.items()):
            if f"metrics.{metric}" not in group or group[f"metrics.{metric}"].isna().all():
                ax.set_axis_off()
                continue
            table = curves(group, metric)
            lines = {name: (t["lr"].to_numpy(), t["mean"].to_numpy()) for name, t in table.groupby("line", sort=True)}
            draw_lines(ax, lines)  # a line identical to others says so in the legend
            log_y = not fraction and (table["mean"] > 0).all()
            low, high = table["mean"].min(), table["mean"].max()
            for line_obj, (_, t) in zip(ax.lines, table.groupby("line", sort=True)):
                half = t["ci95"].fillna(0)
                bottom, top = t["mean"] - half, t["mean"] + half
                if fraction:
                    bottom, top = bottom.clip(0, 1), top.clip(0, 1)
                elif log_y:
                    bottom = bottom.clip(lower=low / 10)
                ax.fill_between(t["lr"], bottom, top, color=line_obj.get_color(), alpha=0.12, linewidth=0)
            ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
                ax.set_ylim(low / 2, high * 2)  # the means set the scale; a band may run off it
            elif fraction:
                ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.05) + 0.01)
            ax.set_xlabel("learning rate")
            ax.set_ylabel(label)
        seeds = group.groupby(["tags.head", "params.precision", "lr", "rest"])["seed"].nunique()
        count = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        fig.suptitle(f"{dataset} {task}: mean over {count} seeds per point with its 95% confidence band; "
                     "(= ...) marks identical lines", fontsize=9)
        written.append(save_figure(plt, fig, out / f"study_{dataset}_{task}.png"))
    return written


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

