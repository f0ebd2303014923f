"""Plug-ins chosen by the config: an entry whose `_target_` names a class (a dataset, a head) is
built with Hydra's `instantiate`, and every way that can go wrong is one UserError line naming the
entry. The schema knows no plug-in: the caller says which base class the entry must derive from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from logitlab.errors import UserError, first_line

T = TypeVar("T")


def instantiate_plugin(spec: Mapping[str, Any], base: type[T], key: str, **kwargs: Any) -> T:
    """`spec` (`_target_` and its settings) built as a `base`, with `kwargs` added; `key` names the
    entry in messages (e.g. `datasets.blobs`)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = spec.get("_target_")
    cls = locate(str(target), key)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"{key}: {target!r} is not a {base.__module__}.{base.__qualname__}")
    try:
        return instantiate(dict(spec), **kwargs, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{key}: cannot build {target!r}: {first_line(cause or exc)}") from None


def locate(target: str, key: str) -> Any:
    """The class a dotted `_target_` names (module.Class), or one UserError line saying why not."""
    import importlib

    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"{key}: cannot find the class {target!r}: {first_line(exc)}") from None
