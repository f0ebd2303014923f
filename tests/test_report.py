"""The comparison table: one row per variant, seeds aggregated as mean ± std."""

import numpy as np
import pandas as pd
import pytest

from logitlab.errors import UserError
from helpers import ROOT
from logitlab.report.table import METRICS, VARIANT, pipeline_runs, pipeline_variants, summarize, to_markdown
from logitlab.schema import compose


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


def test_precisions_stay_apart_and_runs_without_one_are_float32():
    runs = fake_runs()
    mixed = runs.iloc[[0]].assign(**{"params.precision": "mixed_float16", "metrics.test_accuracy": 0.5})
    table = summarize(pd.concat([runs, mixed], ignore_index=True))
    logit = table[table["head"] == "logit"].set_index("precision")
    assert logit.loc["float32", "test_accuracy"] == pytest.approx(0.92) and logit.loc["float32", "runs"] == 2
    assert logit.loc["mixed_float16", "test_accuracy"] == 0.5
    assert "mixed_float16" in to_markdown(table)


def test_markdown_shows_mean_plus_minus_std():
    markdown = to_markdown(summarize(fake_runs()))
    assert "0.92 ± 0.028" in markdown
    assert "| 0.8 " in markdown.replace("  ", " ")
    assert markdown.splitlines()[0].startswith("| dataset")


def test_the_pipeline_variants_are_the_dvc_matrices():
    names = [v.variant for v in pipeline_variants(compose(ROOT))]
    assert names[:4] == ["mnist-softmax", "mnist-logit", "mnist-softmax_strict", "mnist-sigmoid"]
    assert "blobs-binary-sigmoid_strict" in names and "mnist-logit-gradient_tape" in names
    assert len(names) == len(set(names)) == 16


def test_a_variant_without_files_names_its_stage(tmp_path):
    cfg = compose(ROOT, [f"paths.metrics={tmp_path}", f"paths.predictions={tmp_path}"])
    with pytest.raises(UserError, match=f"{tmp_path / 'mnist-softmax.json'} does not exist; run its stage first: "
                                        "dvc repro train@mnist-softmax"):
        pipeline_runs(cfg, ROOT)


def test_a_damaged_metrics_file_names_the_command_that_remakes_it(tmp_path):
    cfg = compose(ROOT, [f"paths.metrics={tmp_path}", f"paths.predictions={tmp_path}", "pipeline.datasets=[blobs]",
                         "pipeline.heads=[logit]", "pipeline.binary_heads=[]", "pipeline.gradient_tape.datasets=[]"])
    (tmp_path / "blobs-logit.json").write_text('{"test_loss": 0.1, "test_acc')
    with pytest.raises(UserError, match=r"blobs-logit.json is damaged \(.*\); remake it: dvc repro -f train@blobs-logit$"):
        pipeline_runs(cfg, ROOT)
