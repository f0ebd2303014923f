"""What the types cannot say, checked once before any work (`load`): ranges, a head that serves the
task, a dataset that exists. Hydra does not run a dataclass's __post_init__ at composition
(hydra#981), hence the explicit check; code downstream takes the `Config` and does not check again.
A dataset's own settings are checked by its class when it is instantiated (logitlab.data.dataset)."""

from __future__ import annotations

import functools
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from logitlab.errors import UserError
from logitlab.schema.messages import config_error
from logitlab.schema.types import Config


def load(cfg: DictConfig) -> Config:
    """The composed config, typed and checked: one UserError line for the first bad value."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        # As plain data: a node Hydra composed is typed already, and keeps a key added with `+`.
        node = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
        plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        config = _typed(plain)
    except OmegaConfBaseException as exc:
        raise UserError(config_error(exc)) from None
    check(config)
    return config


@functools.cache
def _schema() -> DictConfig:
    """The schema as OmegaConf builds it from the dataclasses (~7 ms), once per process."""
    return OmegaConf.structured(Config)


# The plain configs merged last and their typed nodes, newest last: a sweep's jobs differ in a few values.
_MERGED: list[tuple[dict[str, Any], DictConfig]] = []
MERGED_KEPT = 4


def _typed(plain: dict[str, Any]) -> Config:
    """OmegaConf.to_object(OmegaConf.merge(schema, plain)), the plain config typed by the schema.

    Merging builds and checks every node again (~23 ms here). When a config of the same shape (the
    same keys at every level) was merged recently, a copy of its typed node gets only the values
    that differ, each checked by its node as merge checks it (~5 ms): a sweep's check loads every
    job's config, and each job loads its own. A value its node refuses is merged again from the
    start, so the error is the one merge gives."""
    for seen, typed in reversed(_MERGED):
        changes = _changed_values(seen, plain)
        if changes is None:
            continue
        import copy

        from omegaconf.errors import OmegaConfBaseException

        updated = copy.deepcopy(typed)
        try:
            for path, value in changes:
                node = updated
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = value
        except OmegaConfBaseException:
            break
        return OmegaConf.to_object(updated)  # type: ignore[return-value]
    typed = OmegaConf.merge(_schema(), plain)  # merge copies the schema: the cached one stays as it is
    config: Config = OmegaConf.to_object(typed)  # type: ignore[assignment]
    _MERGED.append((plain, typed))
    del _MERGED[:-MERGED_KEPT]
    return config


def _changed_values(old: Any, new: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]] | None:
    """The values of `new` that differ from `old`'s, by path (a list is one value), if both have the
    same keys at every level; None otherwise."""
    if isinstance(old, dict) and isinstance(new, dict):
        if old.keys() != new.keys():
            return None
        changes: list[tuple[tuple[Any, ...], Any]] = []
        for key, value in new.items():
            below = _changed_values(old[key], value, (*path, key))
            if below is None:
                return None
            changes += below
        return changes
    if isinstance(old, dict) or isinstance(new, dict):
        return None
    if type(old) is type(new) and old == new:
        return []
    return [(path, new)] if path else None


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any, key: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise UserError(f"{key} must be a positive whole number, got {value!r}")


def non_negative_int(value: Any, key: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise UserError(f"{key} must be a whole number >= 0, got {value!r}")


def positive(value: Any, key: str) -> None:
    if not (number(value) and value > 0):
        raise UserError(f"{key} must be a positive number, got {value!r}")


def fraction(value: Any, key: str, *, low_inclusive: bool = False) -> float:
    """A number in (0, 1), or [0, 1) with low_inclusive."""
    inside = number(value) and ((0 <= value < 1) if low_inclusive else (0 < value < 1))
    if not inside:
        raise UserError(f"{key} must be a number in {'[0, 1)' if low_inclusive else '(0, 1)'}, got {value!r}")
    return float(value)


def check(cfg: Config) -> None:
    """What types cannot say, key by key (the first bad one is the error)."""
    names = list(cfg.datasets)
    if cfg.dataset not in names:
        raise UserError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(sorted(names))}")
    for name, ds in cfg.datasets.items():
        positive_int(ds.num_classes, f"datasets.{name}.num_classes")
        positive_int(ds.batch_size, f"datasets.{name}.batch_size")
        if ds.binary.positive_class not in range(ds.num_classes):
            raise UserError(f"datasets.{name}.binary.positive_class must be in 0..{ds.num_classes - 1}, "
                            f"got {ds.binary.positive_class!r}")
    check_head(cfg)
    if not cfg.model.layers or not all(u > 0 for u in cfg.model.layers):
        raise UserError(f"model.layers must be a list of positive unit counts, got {cfg.model.layers!r}")
    non_negative_int(cfg.seed, "seed")
    t = cfg.trainer
    positive_int(t.epochs, "trainer.epochs")
    if t.batch_size is not None:
        positive_int(t.batch_size, "trainer.batch_size")
    for key in ("steps_per_execution", "shuffle_buffer", "log_every_n_steps"):
        positive_int(getattr(t, key), f"trainer.{key}")
    fraction(t.validation_split, "trainer.validation_split", low_inclusive=True)
    for key in ("jit_compile", "checkpoint"):
        if not (isinstance(getattr(t, key), bool) or getattr(t, key) == "auto"):
            raise UserError(f"trainer.{key} must be one of auto, true, false; got {getattr(t, key)!r}")
    if t.max_loss is not None:
        positive(t.max_loss, "trainer.max_loss")
    non_negative_int(t.verbose, "trainer.verbose")
    positive(cfg.optimizer.lr, "optimizer.lr")
    non_negative_int(cfg.tracking.retries, "tracking.retries")
    positive(cfg.tracking.backoff_s, "tracking.backoff_s")
    positive_int(cfg.tracking.timeout_s, "tracking.timeout_s")
    positive_int(cfg.report.digits, "report.digits")
    positive_int(cfg.evaluate.n_examples, "evaluate.n_examples")
    positive_int(cfg.evaluate.batch_size, "evaluate.batch_size")




def check_head(cfg: Config) -> None:
    """model.head names a head of `heads` that serves the task."""
    head, task = cfg.model.head, str(cfg.task)
    fitting = [name for name, spec in cfg.heads.items() if task in spec.tasks]
    if head not in cfg.heads or task not in cfg.heads[head].tasks:
        raise UserError(f"unknown model.head {head!r} for task {task}; valid: {', '.join(fitting)}")
