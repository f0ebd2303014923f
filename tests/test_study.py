"""The study view: metrics against the learning rate with confidence bands, and logit − other head
paired by seed, marked where the interval excludes zero."""

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT

from logitlab.report.study import curves, differences, differences_markdown, plot_study, study_runs
from logitlab.report.table import complete, with_config

T_4DOF = 2.7764  # Student's t, 0.975 quantile, 4 degrees of freedom


def fake_study():
    """blobs, two learning rates, three heads, five seeds: softmax is worse than logit by exactly
    0.05 accuracy at every seed; softmax_strict scatters around logit by -0.02..0.02."""
    rows = []
    for lr in ("0.01", "0.1"):
        for seed in range(5):
            base = 0.9 + 0.01 * seed
            for head, acc in (("logit", base), ("softmax", base - 0.05), ("softmax_strict", base + 0.01 * (seed - 2))):
                rows.append({"run_id": f"{head}{lr}{seed}", "params.seed": str(seed), "params.optimizer.lr": lr,
                             "tags.dataset": "blobs", "tags.task": "multiclass", "tags.head": head,
                             "tags.trainer": "fit", "params.precision": "float32",
                             "metrics.test_accuracy": acc, "metrics.test_loss_f64": 1 - acc,
                             "metrics.clip_ceiling_fraction": 0.0, "metrics.loss_err_train_mean": 1e-7})
    return with_config(complete(pd.DataFrame(rows)))


def test_only_runs_that_vary_in_learning_rate_make_a_study():
    runs = fake_study()
    assert len(study_runs(runs)) == 30
    assert study_runs(runs[runs["params.optimizer.lr"] == "0.1"]).empty


def test_curves_are_means_over_seeds_with_a_95_percent_band():
    table = curves(study_runs(fake_study()), "test_accuracy").set_index(["precision", "head", "line", "lr"])
    logit = table.loc[("float32", "logit", "", 0.01)]
    assert logit["mean"] == pytest.approx(0.92) and logit["n"] == 5
    assert logit["ci95"] == pytest.approx(T_4DOF * np.std([0.9, 0.91, 0.92, 0.93, 0.94], ddof=1) / np.sqrt(5), rel=1e-4)


def test_differences_pair_by_seed_and_mark_intervals_that_exclude_zero():
    table = differences(fake_study()).set_index(["lr", "other"])
    assert len(table) == 4 and set(table["seeds"]) == {5}
    softmax = table.loc[(0.01, "softmax")]
    assert softmax["test_accuracy_diff"] == pytest.approx(0.05) and softmax["test_accuracy_excludes_0"]
    assert softmax["test_accuracy_ci95"] == pytest.approx(0, abs=1e-12), "the same gap at every seed"
    assert softmax["test_loss_f64_diff"] == pytest.approx(-0.05) and softmax["test_loss_f64_excludes_0"]
    strict = table.loc[(0.1, "softmax_strict")]
    assert strict["test_accuracy_diff"] == pytest.approx(0, abs=1e-12) and not strict["test_accuracy_excludes_0"]
    assert strict["test_accuracy_ci95"] == pytest.approx(T_4DOF * np.std([.02, .01, 0, -.01, -.02], ddof=1) / np.sqrt(5),
                                                         rel=1e-4)
    markdown = differences_markdown(differences(fake_study()))
    assert "**+0.05 ± 0**" in markdown and "| softmax_strict |" in markdown


def test_a_head_without_the_logit_head_beside_it_has_no_difference():
    runs = fake_study()
    assert differences(runs[runs["tags.head"] != "logit"]).empty


def test_the_study_picture_is_drawn_per_dataset_and_task(tmp_path):
    from PIL import Image

    [png] = plot_study(fake_study(), tmp_path)
    assert png.name == "study_blobs_multiclass.png" and Image.open(png).size[1] > 500


def test_any_sweep_over_the_learning_rate_gets_the_view_from_its_runs_table(tmp_path):
    """A sweep's runs from MLflow (report.runs=experiment) that vary the learning rate and the model,
    logged before `precision` existed: one float32 column, the heads as colours, the two models as
    line styles named in short words."""
    import matplotlib.pyplot as plt

    runs = fake_study()
    wider = runs.assign(**{"params.model.layers": "[784, 256]", "run_id": runs["run_id"] + "w",
                           "metrics.test_accuracy": runs["metrics.test_accuracy"] - 0.1})
    both = pd.concat([runs.assign(**{"params.model.layers": "[25, 15]"}), wider], ignore_index=True)
    both = with_config(complete(both.drop(columns="params.precision")))
    kept = []
    close, plt.close = plt.close, kept.append
    try:
        [png] = plot_study(both, tmp_path)
    finally:
        plt.close = close
    [fig] = kept
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["float32"]
    heads, models = ([t.get_text() for t in legend.get_texts()] for legend in fig.legends)
    assert heads == ["logit", "softmax", "softmax_strict"] and models == ["25-15", "784-256"]
    assert len(fig.axes[0].lines) == 6
    close(fig)


def test_the_study_view_redraws_from_the_committed_summary_alone(tmp_path):
    """docs/study/summary.csv (each config's mean and 95% half-width) is enough for the study view:
    one picture per dataset, the bands the summary's own."""
    import pandas as pd

    from logitlab.report.study import STUDY_METRICS, plot_study, study_from_summary, study_runs, summary_curves

    summary = pd.read_csv(ROOT / "docs" / "study" / "summary.csv")
    rows = study_from_summary(summary)
    written = plot_study(rows, tmp_path, summarized=True)
    assert sorted(p.name for p in written) == ["study_blobs_multiclass.png", "study_mnist_multiclass.png"]
    metric = next(m for m in STUDY_METRICS if m in summary)
    table = summary_curves(study_runs(rows[rows["tags.dataset"] == "mnist"]), metric)
    one = summary[(summary["dataset"] == "mnist") & (summary["head"] == "logit") & (summary["precision"] == "float32")
                  & (summary["config"] == "optimizer.lr=0.1")]
    got = table[(table["head"] == "logit") & (table["precision"] == "float32") & (table["lr"] == 0.1)]
    assert got["mean"].tolist() == one[metric].tolist() and got["ci95"].tolist() == one[f"{metric}_ci95"].tolist()
