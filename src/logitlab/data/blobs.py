"""Blobs: the reference's make_blobs, split into a stratified, seeded train and test set; points in
the plane, drawn as decision regions."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.data.dataset import Dataset, Drawing
from logitlab.files import load_arrays, save_arrays
from logitlab.schema.check import fraction, positive, positive_int

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


@dataclass
class BlobsFetch:  # sklearn's make_blobs
    n_samples: int = 2000
    centers: list[Any] = field(default_factory=list)
    cluster_std: float = 1.0
    random_state: int = 30


@dataclass
class BlobsPreprocess:  # a stratified train/test split
    test_size: float = 0.2
    random_state: int = 0


class Blobs(Dataset):
    """conf/datasets/blobs.yaml: `_target_: logitlab.data.blobs.Blobs`."""

    Fetch, Preprocess = BlobsFetch, BlobsPreprocess

    def check(self) -> None:
        positive_int(self.fetch_settings.n_samples, f"datasets.{self.name}.fetch.n_samples")
        positive(self.fetch_settings.cluster_std, f"datasets.{self.name}.fetch.cluster_std")
        fraction(self.preprocess_settings.test_size, f"datasets.{self.name}.preprocess.test_size")

    def fetch(self, target: Path) -> str:
        return generate_blobs(asdict(self.fetch_settings), target)

    def preprocess(self, raw: Path) -> dict[str, np.ndarray]:
        return preprocess_blobs(asdict(self.preprocess_settings), raw)

    def drawing(self) -> Drawing:
        return Drawing.points()
