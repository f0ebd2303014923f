"""The benchmark's baseline for a sweep: what a user writes without logitlab.

A plain loop in one process over the same jobs as logitlab's blobs sweep (one per seed): build the
lesson's 25-15 model with a logit head, compile it (Adam 0.001, SparseCategoricalCrossentropy with
from_logits=True, accuracy), `fit` it on the same processed blobs data, epochs, batch size and
validation split, and `evaluate` it on the test set, each job in its own MLflow run with
`mlflow.keras.autolog(log_models=False)` on. It logs params, per-epoch metrics and the test metrics;
no model, no datasets, no numerics (logitlab's jobs log all three).

    python benchmarks/autolog_loop.py --jobs 100 --store sqlite:///tmp/autolog.db
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "processed" / "blobs.npz")
    parser.add_argument("--store", required=True, help="MLflow tracking URI")
    args = parser.parse_args()

    import keras
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(args.store)
    mlflow.set_experiment("autolog-loop")
    mlflow.keras.autolog(log_models=False, silent=True)
    with np.load(args.data) as data:
        x, y, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    classes = int(max(y.max(), y_test.max())) + 1
    started = time.perf_counter()
    for seed in range(args.jobs):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(25, activation="relu"),
                                  keras.layers.Dense(15, activation="relu"), keras.layers.Dense(classes)])
        model.compile(optimizer=keras.optimizers.Adam(0.001),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        with mlflow.start_run(run_name=f"seed-{seed}"):
            mlflow.log_param("seed", seed)
            model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, validation_split=args.validation_split,
                      verbose=0)
            loss, accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
            mlflow.log_metrics({"test_loss": loss, "test_accuracy": accuracy})
    print(f"{args.jobs} jobs in {time.perf_counter() - started:.1f} s after start-up", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
