"""conf/ composed: the schema registered in Hydra's ConfigStore (`register`, run wherever Hydra
composes conf/, DVC's `dvc exp run -S` included, through the `hydra_plugins.logitlab` module Hydra
imports at start-up), params.yaml written with DVC's own composer, and the check that the two agree."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from logitlab.errors import UserError
from logitlab.schema.check import load
from logitlab.schema.flat import flatten
from logitlab.schema.messages import composition_error
from logitlab.schema.types import CONF_DIR, PARAMS_FILE, SCHEMA_NAME, Config


def register() -> None:
    """The schema in Hydra's ConfigStore, unless it is there already: Hydra runs its plugin modules
    again for every job of a joblib worker (Singleton.set_state re-creates its plugin registry), and
    building the schema's node costs ~9 ms."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    if f"{SCHEMA_NAME}.yaml" not in store.repo:
        store.store(name=SCHEMA_NAME, node=Config)


def compose(root: Path, overrides: list[str] | None = None) -> Config:
    """conf/config.yaml composed with `overrides` and loaded, a mistake as one UserError line (for
    tests and tools)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_params(root, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(composition_error(exc, overrides or [])) from None
    return load(cfg)


def compose_params(root: Path, overrides: list[str] | None = None) -> DictConfig:
    """conf/config.yaml composed as DVC's Hydra integration composes it (resolved, no hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str((root / CONF_DIR).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def write_params(root: Path) -> Path:
    """Regenerate params.yaml from conf/ with DVC's own composer, so `dvc exp run` writes the same shape."""
    from dvc.utils.hydra import compose_and_dump

    register()
    out = root / PARAMS_FILE
    compose_and_dump(out, str((root / CONF_DIR).resolve()), None, "config", "", [])
    return out


def params_drift(root: Path) -> list[str]:
    """Dotted keys where params.yaml and the composition of conf/ differ (empty: they agree)."""
    path = root / PARAMS_FILE
    if not path.is_file():
        return ["<missing params.yaml>"]
    composed = flatten(compose_params(root))
    written = flatten(OmegaConf.load(path))
    return sorted(k for k in composed.keys() | written.keys() if composed.get(k) != written.get(k))
