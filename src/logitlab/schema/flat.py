"""A config as MLflow sees it: flattened to dotted params (`run_params`), and the hash that says two
jobs train the same thing (`config_hash`)."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from logitlab.schema.types import Config


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys to strings, for MLflow params; lists become JSON."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    elif not isinstance(node, dict):
        node = plain(node)
    flat: dict[str, str] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def plain(value: Any) -> Any:
    """A loaded config (`Config`, or any part of it) as plain data: what
    `OmegaConf.to_container(OmegaConf.structured(value), resolve=True, enum_to_str=True)` gives for
    it (tests/test_schema.py compares the two), in ~0.1 ms instead of ~20: `load` has typed and
    resolved every value already, so the fields are walked as they are."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def run_params(cfg: Config) -> dict[str, str]:
    """The resolved config of one job as MLflow params, the chosen dataset's settings under `dataset.`
    and the chosen head's under `model.head_spec.` (the other datasets and heads left out)."""
    node = plain(cfg)
    node["dataset"] = node.pop("datasets")[cfg.dataset]
    node["model"]["head_spec"] = node.pop("heads")[cfg.model.head]
    return flatten(node)


# What a run's config hash leaves out: where files go and runs are recorded, the other stages'
# settings, and what only shows or saves progress; none of it changes what a job trains.
NOT_HASHED = ("paths.", "tracking.", "layout", "pipeline.", "report.", "sweep.", "trainer.verbose", "trainer.checkpoint")


def config_hash(cfg: Config, leave_out: tuple[str, ...] = (), params: dict[str, str] | None = None) -> str:
    """A hash of the resolved config of one job but NOT_HASHED (Hydra's own settings are not in it):
    two jobs with the same hash train the same thing. Tagged on every run
    (`logitlab.config_hash`); a checkpoint resumes only the config it was saved for. `params`: the
    job's `run_params(cfg)`, when the caller has them."""
    import hashlib

    params = run_params(cfg) if params is None else params
    kept = {k: v for k, v in params.items() if not k.startswith(NOT_HASHED + leave_out)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def group_hash(cfg: Config, params: dict[str, str] | None = None) -> str:
    """The config hash without the seed: the runs of one config over several seeds share it (tagged
    `logitlab.group`, so the MLflow runs table's "Group by" aggregates the seeds)."""
    return config_hash(cfg, leave_out=("seed",), params=params)
