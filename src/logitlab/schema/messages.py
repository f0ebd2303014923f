"""One line for a value the schema refuses: the key, the bad value and what is valid."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from logitlab.errors import first_line
from logitlab.schema.types import Config


def config_error(exc: BaseException) -> str:
    """One line for a value the schema refuses: the key, the bad value, what is valid."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = getattr(exc, "full_key", None) or ""
    message = first_line(exc)
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key(str(key))
    return f"{key}: {message}" if key else message


def composition_error(exc: BaseException, overrides: list[str] | tuple[str, ...]) -> str:
    """One line for a composition Hydra refused: the key, the bad value and what is valid."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        OmegaConfBaseException,
        ValidationError,
    )

    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = str(getattr(cause, "full_key", "") or "")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        line = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), key)
        return unknown_key(key, line)
    if isinstance(cause, ValidationError) and key:
        return config_error(cause)
    message = first_line(exc)
    if cause is not exc:
        message += " " + first_line(cause)
    return f"cannot apply the overrides {' '.join(overrides)}: {message}"


def unknown_key(key: str, override: str | None = None) -> str:
    """`unknown key 'trainer.epochz'; valid under trainer: name, epochs, ...`"""
    parent_key, _, _ = key.rpartition(".")
    node = OmegaConf.structured(Config)
    parent = OmegaConf.select(node, parent_key) if parent_key else node
    where = f"under {parent_key}" if parent_key else "at the top level"
    valid = f"; valid {where}: {', '.join(map(str, parent))}" if isinstance(parent, DictConfig) and len(parent) else ""
    return f"unknown key {key!r}" + (f" in override {override!r}" if override else "") + valid
