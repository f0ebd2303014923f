"""Jobs that resume where they stopped. A cluster preempts a job, times it out, or an operator runs
`scontrol requeue`; SLURM then starts the same job again, in the same folder (submitit's timeout
handling does the same through its own requeue). So after every epoch a training job saves, into
`<job folder>/.logitlab-checkpoint/state.npz` (one file, replaced atomically):
- the model's weights and its optimizer's state (Adam's moments, its step count, a loss scale);
- the epochs so far (their metrics), the id of the job's MLflow run, and the config's hash.
A job that starts and finds a checkpoint of the same config continues that MLflow run from the next
epoch: no second run, no epoch logged twice (an epoch the store missed when the job was killed is
logged from the checkpoint), and as many epochs in the end as an uninterrupted job. The `fit`
trainer's shuffle is seeded per epoch, so it resumes bit for bit. A finished job deletes its
checkpoint.

`trainer.checkpoint`: auto (inside a SLURM job, where requeues happen), true, false."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from logitlab.errors import first_line
from logitlab.files import DAMAGED, atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_DIR = ".logitlab-checkpoint"
STATE_FILE = "state.npz"


@dataclass(frozen=True)
class Resumed:
    """What a checkpoint holds besides the arrays."""

    run_id: str
    history: list[dict[str, float]]  # one dict of metrics per epoch done


def enabled(setting: bool | str) -> bool:
    """trainer.checkpoint: auto is on inside a SLURM job (SLURM_JOB_ID set)."""
    return bool(os.environ.get("SLURM_JOB_ID")) if setting == "auto" else bool(setting)


class Checkpoint:
    """The checkpoint of one job folder, for one config (`key`: its hash)."""

    def __init__(self, job_dir: Path, key: str) -> None:
        self.folder = job_dir / CHECKPOINT_DIR
        self.path = self.folder / STATE_FILE
        self.key = key

    def load(self) -> tuple[Resumed, dict[str, np.ndarray]] | None:
        """The saved state, or None: no checkpoint, one of another config, or a damaged one (each said
        in one line of the log; the job then starts from epoch 1). A damaged checkpoint does not fail
        the job: it only saves time, and a requeued job that failed on it would never get anywhere."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            state = json.loads(str(arrays.pop("state")))
            key, resumed = state["key"], Resumed(run_id=str(state["run_id"]), history=list(state["history"]))
        except (*DAMAGED, TypeError) as exc:  # TypeError: a state that is not the dict save() writes
            log.warning("checkpoint %s is damaged (%s): starting from epoch 1", self.path, first_line(exc))
            return None
        if key != self.key:
            log.warning("checkpoint %s is of another config: starting from epoch 1", self.path)
            return None
        return resumed, arrays

    def save(self, model: keras.Model, run_id: str, history: list[dict[str, float]]) -> None:
        arrays = {f"weight_{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        arrays.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
        arrays["state"] = np.array(json.dumps({"key": self.key, "run_id": run_id, "history": history}))
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def restore(model: keras.Model, arrays: dict[str, Any]) -> None:
    """The saved weights and optimizer state into the freshly built `model`."""
    weights = [arrays[f"weight_{i}"] for i in range(sum(k.startswith("weight_") for k in arrays))]
    model.set_weights(weights)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    saved = [arrays[f"optimizer_{i}"] for i in range(sum(k.startswith("optimizer_") for k in arrays))]
    if len(saved) != len(optimizer.variables):
        raise ValueError(f"the checkpoint has {len(saved)} optimizer variables, the optimizer {len(optimizer.variables)}")
    for variable, value in zip(optimizer.variables, saved):
        variable.assign(value)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the checkpoint after each epoch that did not diverge (`fit` calls it as a callback, the
    GradientTape loop directly), before the epoch's metrics go to the store."""

    def __init__(self, checkpoint: Checkpoint, run_id: str, history: list[dict[str, float]],
                 max_loss: float | None) -> None:
        super().__init__()
        self.checkpoint, self.run_id, self.history, self.max_loss = checkpoint, run_id, list(history), max_loss

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        from logitlab.train.loop import diverged

        if logs is None or diverged(epoch, logs, self.max_loss):
            return
        self.history.append({k: float(v) for k, v in logs.items()})
        self.checkpoint.save(self.model, self.run_id, self.history)
