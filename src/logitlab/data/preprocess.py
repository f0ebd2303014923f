"""The data stages: fetch (or generate) a dataset's raw file, preprocess it into float32 train/test
arrays, and load those for training: what DVC's fetch@ and preprocess@ stages run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.data.blobs import generate_blobs, preprocess_blobs
from logitlab.data.mnist import MNIST_KEYS, fetch_mnist, preprocess_mnist
from logitlab.errors import UserError
from logitlab.files import load_arrays, save_arrays
from logitlab.schema import Config

log = logging.getLogger(__name__)

# Each dataset of the schema (logitlab.schema.DatasetsConf) and its fetcher: (its `fetch` settings, the raw file to write) -> where the data came from.
FETCHERS: dict[str, Callable[[Mapping[str, Any], Path], str]] = {
    "mnist": fetch_mnist,
    "blobs": generate_blobs,
}
# Each dataset's preprocessor: (its `preprocess` settings, the raw file) -> float32 train/test arrays.
PREPROCESSORS: dict[str, Callable[[Mapping[str, Any], Path], dict[str, np.ndarray]]] = {
    "mnist": preprocess_mnist,
    "blobs": preprocess_blobs,
}
# Every processed file has these: x_train, y_train, x_test, y_test, and each split's positions in
# the order the data was fetched (i_train, i_test), which `splits` uses to put them back together.
SPLITS = (*MNIST_KEYS, "i_train", "i_test")


def fetch(cfg: Config, root: Path, job: Any = None) -> None:
    """Fetch (MNIST) or generate (blobs) the raw data of `cfg.dataset` (`job`: the Hydra job, unused)."""
    FETCHERS[cfg.dataset](asdict(cfg.ds.fetch), cfg.path(root, "raw"))


def preprocess(cfg: Config, root: Path, job: Any = None) -> dict[str, np.ndarray]:
    """Raw data of `cfg.dataset` to float32 features (MNIST: flattened to 784, scaled to [0, 1]) and
    int32 labels (`job`: the Hydra job, unused)."""
    arrays = PREPROCESSORS[cfg.dataset](asdict(cfg.ds.preprocess), cfg.path(root, "raw"))
    target = cfg.path(root, "processed")
    save_arrays(target, arrays)
    log.info("%s preprocessed: x_train %s, x_test %s -> %s",
             cfg.dataset, arrays["x_train"].shape, arrays["x_test"].shape, target)
    return arrays


def remake_processed(dataset: str) -> str:
    return f"dvc repro -f preprocess@{dataset}"


def load_processed(path: Path, dataset: str) -> dict[str, np.ndarray]:
    """A processed file; missing or damaged, a UserError naming the command that remakes it."""
    return load_arrays(path, SPLITS, remake=remake_processed(dataset))


def splits(data: Mapping[str, np.ndarray], train_on: str, evaluate_on: str) -> dict[str, np.ndarray]:
    """x_train, y_train, x_eval, y_eval of a processed file. train_on=all trains on every example, the
    two splits joined in the order the data was fetched (the blobs notebooks fit all 2,000 points);
    evaluate_on=train evaluates on the examples trained on (the notebooks print their statistics on
    the training set), test on the test split."""
    x, y = data["x_train"], data["y_train"]
    if train_on == "all":
        order = np.argsort(np.concatenate([data["i_train"], data["i_test"]]), kind="stable")
        x, y = np.concatenate([x, data["x_test"]])[order], np.concatenate([y, data["y_test"]])[order]
    if evaluate_on == "train":
        return {"x_train": x, "y_train": y, "x_eval": x, "y_eval": y}
    return {"x_train": x, "y_train": y, "x_eval": data["x_test"], "y_eval": data["y_test"]}


def task_labels(y: np.ndarray, task: str, positive_class: int) -> np.ndarray:
    """Multi-class labels as they are; binary ones as float32 (N, 1): 1 for `positive_class`, else 0."""
    if task == "binary":
        return (y == positive_class).astype(np.float32).reshape(-1, 1)
    return y


def labels_in_range(labels: np.ndarray, cfg: Config) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= cfg.ds.num_classes):
        raise UserError(f"labels of {cfg.dataset} span {labels.min()}..{labels.max()}, beyond "
                        f"datasets.{cfg.dataset}.num_classes={cfg.ds.num_classes}; remake: "
                        f"{remake_processed(cfg.dataset)}")
