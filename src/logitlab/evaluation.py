"""Test-set evaluation, logged into the training run: loss, accuracy, the min/max of raw outputs and
probabilities, the numerics that tell the heads apart, and the raw outputs themselves."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from logitlab import tracking
from logitlab.config import data_file, positive_int
from logitlab.data import load_processed
from logitlab.heads import head_spec
from logitlab.numerics import numerics, predicted_class, probabilities

log = logging.getLogger(__name__)

OUTPUTS_ARTIFACT = "outputs.npz"


def output_stats(outputs: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "output_min": float(outputs.min()),
        "output_max": float(outputs.max()),
        "prob_min": float(probs.min()),
        "prob_max": float(probs.max()),
    }


def examples(outputs: np.ndarray, probs: np.ndarray, labels: np.ndarray, task: str, n: int) -> list[dict[str, Any]]:
    """The first `n` test examples: raw output vector, probabilities, predicted category, true label."""
    predicted = predicted_class(probs, task)
    return [
        {
            "index": i,
            "label": int(labels[i]),
            "outputs": [float(v) for v in outputs[i]],
            "probabilities": [float(v) for v in probs[i]],
            "argmax": int(predicted[i]),
        }
        for i in range(min(n, len(outputs)))
    ]


def evaluate(cfg: DictConfig, root: Path, run_dir: Path, metrics_file: Path, predictions_file: Path) -> dict[str, float]:
    """Evaluate the model in `run_dir` on its test set, logging into its training run."""
    import keras
    import mlflow

    from logitlab.training import MODEL_FILE, task_labels

    info = tracking.read_run_file(run_dir, "train")
    dataset, head = info["dataset"], info["head"]
    task, trainer = info.get("task", "multiclass"), info.get("trainer", "fit")
    head_spec(task, head)
    stage_hint = f"the train stage of {info.get('run_name', dataset + '-' + head)}"
    data = load_processed(data_file(cfg, root, "processed", dataset), dataset)
    x = data["x_test"]
    y = task_labels(data["y_test"], task, cfg.datasets[dataset].binary.positive_class)
    batch = positive_int(cfg.evaluate.batch_size, "evaluate.batch_size")

    from logitlab import compiled
    from logitlab.models import forward

    model = keras.models.load_model(run_dir / MODEL_FILE)
    scores = compiled.evaluate(model, x, y, batch)
    outputs = forward(model, x, batch)
    probs = probabilities(outputs, task, head)
    labels = y.reshape(-1).astype(np.int64)
    metrics = {"test_loss": float(scores["loss"]), "test_accuracy": float(scores["accuracy"]),
               **output_stats(outputs, probs)}
    extra, tags = numerics(model, x, labels, task, head, batch, outputs)
    metrics.update(extra)
    n_examples = positive_int(cfg.evaluate.n_examples, "evaluate.n_examples")
    predictions = {"dataset": dataset, "task": task, "head": head, "trainer": trainer,
                   "examples": examples(outputs, probs, labels, task, n_examples)}

    with tracking.tracked_run(cfg.tracking, root, found_by="evaluate", run_id=info["run_id"], missing_hint=stage_hint):
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        mlflow.log_dict(predictions, "predictions.json")
        with tempfile.TemporaryDirectory() as tmp:  # raw test outputs, for the report's histograms
            np.savez(Path(tmp) / OUTPUTS_ARTIFACT, outputs=outputs, probabilities=probs, labels=labels)
            mlflow.log_artifact(str(Path(tmp) / OUTPUTS_ARTIFACT))
    tracking.write_json(metrics_file, metrics)
    tracking.write_json(predictions_file, predictions)
    log.info("%s test: %s", info.get("run_name", dataset), ", ".join(
        f"{k}={metrics[k]:.6g}" for k in ("test_loss", "test_accuracy", "output_min", "output_max", "prob_min", "prob_max")))
    return metrics

