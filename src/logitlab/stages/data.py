"""The data stages, fetch@<dataset> and preprocess@<dataset>: the job's dataset plug-in
(logitlab.data.dataset) fetches or generates its raw file, then preprocesses it into float32
train/test arrays. They import the data plug-ins and the schema only: no tracking store, model or
trainer, so a change to those reruns no data stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.data.dataset import dataset_of
from logitlab.data.preprocess import check_processed
from logitlab.files import save_arrays
from logitlab.schema import Config

log = logging.getLogger(__name__)


def fetch(cfg: Config, root: Path, job: Any = None) -> str:
    """Fetch or generate the raw data of `cfg.dataset` (`job`: the Hydra job, unused); returns where it came from."""
    return dataset_of(cfg).fetch(cfg.path(root, "raw"))


def preprocess(cfg: Config, root: Path, job: Any = None) -> dict[str, np.ndarray]:
    """Raw data of `cfg.dataset` to float32 features and int32 labels (`job`: the Hydra job, unused)."""
    dataset = dataset_of(cfg)
    arrays = dataset.preprocess(cfg.path(root, "raw"))
    check_processed(arrays, cfg.dataset, dataset.num_classes)
    target = cfg.path(root, "processed")
    save_arrays(target, arrays)
    log.info("%s preprocessed: x_train %s, x_test %s -> %s",
             cfg.dataset, arrays["x_train"].shape, arrays["x_test"].shape, target)
    return arrays
