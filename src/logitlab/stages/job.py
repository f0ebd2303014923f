"""The Hydra job a stage runs in (`Job`, `current_job`), the project root of its config
(`config_root`), and the files a sweep's jobs leave in its folder: the sweep's parent run
(`.logitlab-sweep.json`), failed and skipped jobs. No tracking store involved: every stage imports
this, the data stages included."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitlab.files import write_json

SWEEP_FILE = ".logitlab-sweep.json"
FAILED_DIR = ".logitlab-failed"
SKIPPED_DIR = ".logitlab-skipped"
CONFIG_HASH_TAG = "logitlab.config_hash"   # logitlab.schema.config_hash of a training run
GROUP_TAG = "logitlab.group"               # logitlab.schema.group_hash: the config without its seed
KIND_TAG = "logitlab.kind"
SWEEP_TAG = "logitlab.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
# The Hydra apps whose jobs are MLflow runs, and so get a parent run.
TRACKED_APPS = ("train",)


@dataclass(frozen=True)
class Job:
    """The Hydra job a stage runs in."""

    multirun: bool
    num: int              # the job's number in its sweep (0 for a single run)
    overrides: list[str]  # the job's own overrides
    dir: Path             # its output folder
    sweep_dir: Path       # its sweep's folder (multirun)


def current_job() -> Job:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return Job(multirun=multirun, num=hc.job.num if multirun else 0,  # only multirun jobs are numbered
               overrides=list(hc.overrides.task), dir=Path(hc.runtime.output_dir),
               sweep_dir=Path(str(hc.sweep.dir)).resolve())


def config_root(hydra: Any) -> Path:
    """The project root of a composed config (`hydra`: its hydra node): the folder of its primary
    config (params.yaml, as DVC stages use), or the parent of `conf/` (config.yaml, as sweeps use)."""
    for source in hydra.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            path = Path(source.path)
            return path.parent if path.name == "conf" else path
    raise RuntimeError("no primary config directory in hydra.runtime.config_sources")


def read_sweep(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_failure(sweep_dir: Path, num: int, overrides: list[str], message: str) -> None:
    """One failed job of the sweep running in `sweep_dir` (read by MlflowSweep.on_multirun_end)."""
    info = read_sweep(sweep_dir) or {}
    write_json(sweep_dir / FAILED_DIR / f"{num}.json",
           {"sweep_id": info.get("sweep_id"), "num": num, "overrides": overrides, "error": message})


def record_skip(sweep_dir: Path, num: int, overrides: list[str], run_id: str) -> None:
    """One job of the sweep in `sweep_dir` skipped by sweep.resume: `run_id` had finished it."""
    info = read_sweep(sweep_dir) or {}
    write_json(sweep_dir / SKIPPED_DIR / f"{num}.json",
               {"sweep_id": info.get("sweep_id"), "num": num, "overrides": overrides, "run_id": run_id})


def _records(sweep_dir: Path, folder: str, sweep_id: str | None) -> list[dict[str, Any]]:
    path = sweep_dir / folder
    found = [json.loads(p.read_text()) for p in path.glob("*.json")] if path.is_dir() else []
    return sorted((f for f in found if f.get("sweep_id") == sweep_id), key=lambda f: f["num"])


def failures(sweep_dir: Path, sweep_id: str | None) -> list[dict[str, Any]]:
    return _records(sweep_dir, FAILED_DIR, sweep_id)


def skips(sweep_dir: Path, sweep_id: str | None) -> list[dict[str, Any]]:
    return _records(sweep_dir, SKIPPED_DIR, sweep_id)
