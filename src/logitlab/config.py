"""Composition of conf/ into params.yaml, and validation of a composed config."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from logitlab.errors import UserError
from logitlab.heads import head_spec

PARAMS_FILE = "params.yaml"
# Each trainer (logitlab.training.TRAINERS) and the whole-number settings of its own it must have.
TRAINER_SETTINGS = {"fit": ("steps_per_execution",), "gradient_tape": ("shuffle_buffer", "log_every_n_steps")}
CONF_DIR = "conf"


def compose_params(root: Path, overrides: list[str] | None = None) -> DictConfig:
    """conf/config.yaml composed as DVC's Hydra integration composes it (resolved, no hydra node)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str((root / CONF_DIR).resolve()), version_base=None):
        cfg = compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def write_params(root: Path) -> Path:
    """Regenerate params.yaml from conf/ with DVC's own composer, so `dvc exp run` writes the same shape."""
    from dvc.utils.hydra import compose_and_dump

    out = root / PARAMS_FILE
    compose_and_dump(out, str((root / CONF_DIR).resolve()), None, "config", "", [])
    return out


def under_root(root: Path, path: str | os.PathLike) -> Path:
    """A configured path: absolute as given, relative to the project root otherwise (never the cwd)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def data_file(cfg: DictConfig, root: Path, kind: str, dataset: str | None = None) -> Path:
    """<paths.raw|paths.processed>/<dataset>.npz."""
    return under_root(root, cfg.paths[kind]) / f"{dataset or cfg.dataset}.npz"


def dataset_config(cfg: DictConfig) -> DictConfig:
    """The settings of the dataset a job uses (`cfg.dataset` picks one of `cfg.datasets`)."""
    if not isinstance(cfg.dataset, str) or cfg.dataset not in cfg.datasets:
        raise UserError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(sorted(cfg.datasets))}")
    return cfg.datasets[cfg.dataset]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any, key: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise UserError(f"{key} must be a positive whole number, got {value!r}")
    return value


def non_negative_int(value: Any, key: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise UserError(f"{key} must be a whole number >= 0, got {value!r}")
    return value


def positive_float(value: Any, key: str) -> float:
    if not (_is_number(value) and value > 0):
        raise UserError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def fraction(value: Any, key: str, *, low_inclusive: bool = False) -> float:
    """A number in (0, 1), or [0, 1) with low_inclusive."""
    inside = _is_number(value) and ((0 <= value < 1) if low_inclusive else (0 < value < 1))
    if not inside:
        interval = "[0, 1)" if low_inclusive else "(0, 1)"
        raise UserError(f"{key} must be a number in {interval}, got {value!r}")
    return float(value)


def variant(cfg: DictConfig) -> str:
    """The name of a dataset x task x head x trainer combination: mnist-logit, blobs-binary-sigmoid_strict,
    mnist-logit-gradient_tape (the default task and trainer go unnamed)."""
    parts = [cfg.dataset, None if cfg.task == "multiclass" else cfg.task, cfg.model.head,
             None if cfg.trainer.name == "fit" else cfg.trainer.name]
    return "-".join(p for p in parts if p)


def batch_size(cfg: DictConfig) -> int:
    """trainer.batch_size, or the dataset's own when that is null."""
    value = cfg.trainer.batch_size
    key = "trainer.batch_size"
    if value is None:
        value, key = dataset_config(cfg).batch_size, f"datasets.{cfg.dataset}.batch_size"
    return positive_int(value, key)


def validate_training(cfg: DictConfig) -> None:
    """Every setting `train` reads, checked before any work starts."""
    ds = dataset_config(cfg)
    head_spec(cfg.task, cfg.model.head)
    if cfg.task == "binary" and ds.binary.positive_class not in range(ds.num_classes):
        raise UserError(f"datasets.{cfg.dataset}.binary.positive_class must be in 0..{ds.num_classes - 1}, "
                        f"got {ds.binary.positive_class!r}")
    if cfg.trainer.name not in TRAINER_SETTINGS:
        raise UserError(f"unknown trainer {cfg.trainer.name!r}; valid: {', '.join(TRAINER_SETTINGS)}")
    non_negative_int(cfg.seed, "seed")
    positive_int(cfg.trainer.epochs, "trainer.epochs")
    batch_size(cfg)
    for key in TRAINER_SETTINGS[cfg.trainer.name]:
        positive_int(cfg.trainer[key], f"trainer.{key}")
    fraction(cfg.trainer.validation_split, "trainer.validation_split", low_inclusive=True)
    jit = cfg.trainer.get("jit_compile", "auto")  # fit: XLA for every step, none, or where it gains
    if cfg.trainer.name == "fit" and not (isinstance(jit, bool) or jit == "auto"):
        raise UserError(f"trainer.jit_compile must be one of auto, true, false; got {jit!r}")
    if cfg.trainer.max_loss is not None:
        positive_float(cfg.trainer.max_loss, "trainer.max_loss")
    positive_float(cfg.optimizer.lr, "optimizer.lr")
    if cfg.optimizer.name != "adam":
        raise UserError(f"unknown optimizer.name {cfg.optimizer.name!r}; valid: adam")
    layers = cfg.model.layers
    if not isinstance(layers, ListConfig) or not all(isinstance(u, int) and u > 0 for u in layers):
        raise UserError(f"model.layers must be a list of positive unit counts, got {layers!r}")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys to strings, for MLflow params; lists become JSON."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
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


def run_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config of one job, as MLflow params: the chosen dataset's settings under `dataset.`,
    and every URI's password replaced by ***."""
    from logitlab.tracking import redact_text

    node = OmegaConf.to_container(cfg, resolve=True)
    node["dataset"] = node.pop("datasets")[cfg.dataset]
    return {key: redact_text(value) for key, value in flatten(node).items()}  # no password of a URI


def params_drift(root: Path) -> list[str]:
    """Dotted keys where params.yaml and the composition of conf/ differ (empty: they agree)."""
    path = root / PARAMS_FILE
    if not path.is_file():
        return ["<missing params.yaml>"]
    composed = flatten(compose_params(root))
    written = flatten(OmegaConf.load(path))
    return sorted(k for k in composed.keys() | written.keys() if composed.get(k) != written.get(k))
