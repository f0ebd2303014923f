"""A processed file, as every dataset's `preprocess` writes it (float32 features, int labels, each
split's positions in the fetched order), loaded for training and evaluation: the splits a job trains
and evaluates on, and its labels for the task."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from logitlab.errors import UserError
from logitlab.files import load_arrays
from logitlab.schema import Config

log = logging.getLogger(__name__)

# Every processed file has these: x_train, y_train, x_test, y_test, and each split's positions in
# the order the data was fetched (i_train, i_test), which `splits` uses to put them back together.
SPLITS = ("x_train", "y_train", "x_test", "y_test", "i_train", "i_test")


def check_processed(arrays: Mapping[str, np.ndarray], dataset: str, num_classes: int) -> None:
    """What a dataset's `preprocess` returned, before it is written: every split, 2-D float32 features
    of one width, as many labels as examples, labels in 0..num_classes-1. A plug-in that gets it wrong
    is told in one line, and nothing is written."""
    missing = [k for k in SPLITS if k not in arrays]
    if missing:
        raise UserError(f"datasets.{dataset}: preprocess returned no {', '.join(missing)}; it must return {', '.join(SPLITS)}")
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.ndim != 2 or x.dtype != np.float32 or len(x) != len(y):
            raise UserError(f"datasets.{dataset}: preprocess must return x_{split} as float32 (examples, features) "
                            f"and one label per example; got x_{split} {x.dtype} {x.shape}, y_{split} {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(f"datasets.{dataset}: labels of x_{split} span {y.min()}..{y.max()}, beyond "
                            f"datasets.{dataset}.num_classes={num_classes}")
    if arrays["x_train"].shape[1] != arrays["x_test"].shape[1]:
        raise UserError(f"datasets.{dataset}: x_train has {arrays['x_train'].shape[1]} features, "
                        f"x_test {arrays['x_test'].shape[1]}")


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
