"""Blobs: the reference's make_blobs, split into a stratified, seeded train and test set (the
settings as logitlab.schema checked them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.files import load_arrays, save_arrays

log = logging.getLogger(__name__)


def generate_blobs(gen: Mapping[str, Any], target: Path) -> str:
    """sklearn's make_blobs with the configured parameters."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=gen["n_samples"],
        centers=np.asarray(gen["centers"], dtype=np.float64),
        cluster_std=gen["cluster_std"],
        random_state=gen["random_state"],
    )
    save_arrays(target, {"x": x, "y": y})
    log.info("blobs: %d samples, %d classes -> %s", len(x), len(np.unique(y)), target)
    return "make_blobs"


def preprocess_blobs(split: Mapping[str, Any], raw: Path) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    arrays = load_arrays(raw, ("x", "y"), remake="dvc repro -f fetch@blobs")
    x, y = arrays["x"], arrays["y"]
    i_train, i_test = train_test_split(np.arange(len(x)), test_size=split["test_size"],
                                       random_state=split["random_state"], stratify=y)
    return {
        "x_train": x[i_train].astype(np.float32), "y_train": y[i_train].astype(np.int32),
        "x_test": x[i_test].astype(np.float32), "y_test": y[i_test].astype(np.int32),
        "i_train": i_train.astype(np.int64), "i_test": i_test.astype(np.int64),
    }


