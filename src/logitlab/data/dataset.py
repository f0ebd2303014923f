"""A dataset is a plug-in: a subclass of `Dataset` in one module, and conf/datasets/<name>.yaml that
names it (`_target_`) with its settings. `dataset_of` instantiates it with Hydra, as a job's config
says; the stages call its `fetch` and `preprocess`, the train stage reads what it wrote, and the
report draws its examples by what `drawing` says it is. Nothing else in the package names a dataset.

A subclass says:
- `Fetch` and `Preprocess`: dataclasses of its `fetch` and `preprocess` settings (typed and
  defaulted here, with one line for an unknown key or a value of the wrong type), and `check`, for
  what their types cannot say;
- `fetch(target)`: download or generate the raw data into the .npz `target` (returns where it came from);
- `preprocess(raw)`: the raw file to float32 features (N, n_features) and int labels 0..num_classes-1,
  as x_train, y_train, x_test, y_test, with each split's positions in the raw order (i_train, i_test);
- `drawing()`: how one example is drawn: an image of H x W (`Drawing.image(h, w)`), a point in
  the plane (`Drawing.points()`), or nothing (the default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from logitlab.errors import UserError, first_line
from logitlab.schema.plugins import instantiate_plugin

Kind = Literal["image", "points", "none"]


@dataclass(frozen=True)
class Drawing:
    """How the report draws one example: `image` (features reshaped to `shape`, H x W), `points` (two
    features: decision regions in the plane), or `none`."""

    kind: Kind = "none"
    shape: tuple[int, ...] = ()

    @classmethod
    def image(cls, height: int, width: int) -> Drawing:
        return cls("image", (height, width))

    @classmethod
    def points(cls) -> Drawing:
        return cls("points")


@dataclass
class NoSettings:
    """A dataset without settings of this kind."""


class Dataset:
    """One dataset's identity and settings; subclasses fetch and preprocess it."""

    Fetch: ClassVar[type] = NoSettings
    Preprocess: ClassVar[type] = NoSettings

    def __init__(self, name: str, num_classes: int, batch_size: int, binary: Any = None,
                 fetch: dict[str, Any] | None = None, preprocess: dict[str, Any] | None = None) -> None:
        self.name, self.num_classes, self.batch_size = name, num_classes, batch_size
        binary = binary or {}
        self.positive_class = int(binary["positive_class"] if isinstance(binary, dict) else binary.positive_class)
        self.fetch_settings = typed(self.Fetch, fetch or {}, f"datasets.{name}.fetch")
        self.preprocess_settings = typed(self.Preprocess, preprocess or {}, f"datasets.{name}.preprocess")
        self.check()

    def check(self) -> None:
        """What the settings' types cannot say (a UserError line naming the key); nothing by default."""

    def fetch(self, target: Path) -> str:
        raise NotImplementedError(f"{type(self).__name__}.fetch")

    def preprocess(self, raw: Path) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__}.preprocess")

    def drawing(self) -> Drawing:
        return Drawing()

    @property
    def remake_raw(self) -> str:
        return f"dvc repro -f fetch@{self.name}"


def typed(cls: type, values: dict[str, Any], key: str) -> Any:
    """`values` as an instance of the dataclass `cls`, its defaults filled in: an unknown key or a value
    of the wrong type is one UserError line naming `key`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        OmegaConfBaseException,
    )

    if not is_dataclass(cls):
        return dict(values)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
    except (ConfigKeyError, ConfigAttributeError) as exc:
        valid = ", ".join(f.name for f in fields(cls)) or "none"
        raise UserError(f"unknown key '{key}.{getattr(exc, 'full_key', '')}'; valid under {key}: {valid}") from None
    except OmegaConfBaseException as exc:
        raise UserError(f"{key}.{getattr(exc, 'full_key', '')}: {first_line(exc)}") from None


def dataset_of(cfg: Any, name: str | None = None) -> Dataset:
    """The dataset `name` (default: the job's) of a checked config, instantiated from its `_target_`;
    a class that cannot be found or built is one UserError line."""
    from dataclasses import asdict

    name = name or cfg.dataset
    spec = asdict(cfg.datasets[name])
    spec.pop("name", None)  # the entry's key is its name
    return instantiate_plugin(spec, Dataset, f"datasets.{name}", name=name)
