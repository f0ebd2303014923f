"""The comparison table: one row per variant, seeds aggregated as mean ± std."""

import numpy as np
import pandas as pd
import pytest

from logitlab.errors import UserError
from logitlab.report import METRICS, VARIANT, pipeline_run_ids, summarize, to_markdown


def fake_runs():
    rows = []
    for head, seed, acc in (("logit", "0", 0.90), ("logit", "1", 0.94), ("softmax_strict", "0", 0.80)):
        row = {"run_id": f"{head}{seed}", "params.seed": seed, "tags.numerics.train_loss_path": "logits",
               "tags.dataset": "blobs", "tags.task": "multiclass", "tags.head": head, "tags.trainer": "fit",
               "params.model.layers": "[25, 15]", "params.trainer.epochs": "10", "params.optimizer.lr": "0.001"}
        row.update({f"metrics.{m}": np.nan for m in METRICS})
        row["metrics.test_accuracy"] = acc
        rows.append(row)
    return pd.DataFrame(rows)


def test_seeds_aggregate_as_mean_and_std():
    table = summarize(fake_runs())
    assert list(table["head"]) == ["logit", "softmax_strict"]
    logit = table.iloc[0]
    assert logit["seeds"] == "0 1" and logit["runs"] == 2
    assert logit["test_accuracy"] == pytest.approx(0.92)
    assert logit["test_accuracy_std"] == pytest.approx(np.std([0.90, 0.94], ddof=1))
    assert np.isnan(table.iloc[1]["test_accuracy_std"])
    assert set(VARIANT.values()) <= set(table.columns)


def test_markdown_shows_mean_plus_minus_std():
    markdown = to_markdown(summarize(fake_runs()))
    assert "0.92 ± 0.028" in markdown
    assert "| 0.8 " in markdown.replace("  ", " ")
    assert markdown.splitlines()[0].startswith("| dataset")


def test_no_trained_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trained runs under .*; run the pipeline first: dvc repro"):
        pipeline_run_ids(tmp_path)


@pytest.mark.parametrize("override, message", [
    ("report.runs=latest", "unknown report.runs 'latest'; valid: pipeline, experiment"),
    ("report.digits=0", "report.digits must be a positive whole number, got 0"),
])
def test_bad_report_settings_are_user_errors(tmp_path, override, message):
    from helpers import ROOT
    from logitlab.config import compose_params
    from logitlab.report import report

    cfg = compose_params(ROOT, [override, f"tracking.uri='sqlite:///{tmp_path / 'mlflow.db'}'"])
    with pytest.raises(UserError, match=message):
        report(cfg, ROOT, tmp_path / "out")
    assert not (tmp_path / "out").exists()
