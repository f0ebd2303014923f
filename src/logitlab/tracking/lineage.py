"""Where a run's data came from: its training and test sets as MLflow dataset inputs whose digest is
the DVC hash of the processed file the run read (what `dvc.lock` records for that output), with the
file itself as the source; and the DVC experiment a run belongs to."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_md5_cache: dict[tuple[str, int, int, int], str] = {}

# Set by `dvc exp run` in the stages it runs (dvc.env): the experiment's name and the commit it is based on.
DVC_EXP_ENV = {"dvc.exp_name": "DVC_EXP_NAME", "dvc.exp_baseline_rev": "DVC_EXP_BASELINE_REV"}


def dvc_md5(path: Path) -> str:
    """DVC 3's hash of a file output: the md5 of its bytes. Kept per (path, inode, size, mtime) for
    the life of the process, as DVC's own state database does: a sweep hashes its data once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _md5_cache:
        with open(path, "rb") as f:
            _md5_cache[key] = hashlib.file_digest(f, "md5").hexdigest()
    return _md5_cache[key]


def datasets(name: str, processed: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray, splits: tuple[str, str] = ("train", "test")) -> tuple[Any, Any]:
    """The examples trained on and evaluated on as MLflow datasets (`<name>-<split>`, by default
    `<name>-train` and `<name>-test`): the arrays give the schema and profile, the processed file the
    source and the digest."""
    import mlflow.data

    digest, source = dvc_md5(processed), processed.resolve().as_uri()
    with warnings.catch_warnings():
        # MLflow 3 registers its local-file source twice and warns that the URI is ambiguous between
        # the two; they are the same class.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return tuple(mlflow.data.from_numpy(x, targets=y, source=source, name=f"{name}-{split}", digest=digest)
                     for split, x, y in ((splits[0], x_train, y_train), (splits[1], x_test, y_test)))


# The SLURM job a run trained in: which job to requeue or cancel, and how often it was requeued.
SLURM_ENV = {"slurm.job_id": "SLURM_JOB_ID", "slurm.array_job_id": "SLURM_ARRAY_JOB_ID",
             "slurm.array_task_id": "SLURM_ARRAY_TASK_ID", "slurm.restart_count": "SLURM_RESTART_COUNT"}


def slurm_tags() -> dict[str, str]:
    """The SLURM job this process runs in, as run tags (nothing outside SLURM)."""
    return {tag: os.environ[env] for tag, env in SLURM_ENV.items() if os.environ.get(env)}


def dvc_experiment_tags() -> dict[str, str]:
    """The DVC experiment a stage runs in, as run tags (nothing outside `dvc exp run`)."""
    return {tag: os.environ[env] for tag, env in DVC_EXP_ENV.items() if os.environ.get(env)}
