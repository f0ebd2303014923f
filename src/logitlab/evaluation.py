"""Test-set evaluation: loss, accuracy and the min/max of raw outputs and probabilities."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from logitlab import tracking
from logitlab.config import check_head, data_file, positive_int
from logitlab.data import atomic_path, load_processed

log = logging.getLogger(__name__)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: shifting by the max keeps exp() from overflowing."""
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def probabilities(outputs: np.ndarray, head: str) -> np.ndarray:
    """The softmax head already outputs probabilities; the logit head's outputs go through softmax."""
    return outputs if check_head(head) == "softmax" else softmax(outputs)


def output_stats(outputs: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "output_min": float(outputs.min()),
        "output_max": float(outputs.max()),
        "prob_min": float(probs.min()),
        "prob_max": float(probs.max()),
    }


def examples(outputs: np.ndarray, probs: np.ndarray, labels: np.ndarray, n: int) -> list[dict[str, Any]]:
    """The first `n` test examples: raw output vector, probabilities, argmax category, true label."""
    return [
        {
            "index": i,
            "label": int(labels[i]),
            "outputs": [float(v) for v in outputs[i]],
            "probabilities": [float(v) for v in probs[i]],
            "argmax": int(np.argmax(outputs[i])),
        }
        for i in range(min(n, len(outputs)))
    ]


def _write_json(path: Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def evaluate(cfg: DictConfig, root: Path, run_dir: Path, metrics_file: Path, predictions_file: Path) -> dict[str, float]:
    """Evaluate the model in `run_dir` on its test set, logging into its training run."""
    import keras
    import mlflow

    from logitlab.training import MODEL_FILE, predict_outputs

    info = tracking.read_run_file(run_dir, "train")
    dataset, head = info["dataset"], check_head(info["head"])
    stage_hint = f"train@{dataset}-{head}"
    data = load_processed(data_file(cfg, root, "processed", dataset), dataset)
    x, y = data["x_test"], data["y_test"]
    batch = positive_int(cfg.evaluate.batch_size, "evaluate.batch_size")

    model = keras.models.load_model(run_dir / MODEL_FILE)
    scores = model.evaluate(x, y, batch_size=batch, verbose=0, return_dict=True)
    outputs = predict_outputs(model, x, batch)
    probs = probabilities(outputs, head)
    metrics = {"test_loss": float(scores["loss"]), "test_accuracy": float(scores["accuracy"]),
               **output_stats(outputs, probs)}
    predictions = {"dataset": dataset, "head": head,
                   "examples": examples(outputs, probs, y, positive_int(cfg.evaluate.n_examples, "evaluate.n_examples"))}

    tracking.setup(cfg.tracking, root)
    uri = tracking.tracking_uri(cfg.tracking, root)
    with tracking.resume_run(info["run_id"], uri, stage_hint):
        mlflow.log_metrics(metrics)
        mlflow.log_dict(predictions, "predictions.json")
    _write_json(metrics_file, metrics)
    _write_json(predictions_file, predictions)
    log.info("%s-%s test: %s", dataset, head, ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()))
    return metrics
