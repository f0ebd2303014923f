"""A sweep's job configs at the cost of one composition per choice of config groups.

Hydra composes every job of a multirun from the YAML files again: `ConfigLoader.load_sweep_config`
parses the files, builds the defaults list and merges it, ~0.1 s a job here, and a grid sweep pays
it twice (BasicSweeper's `validate_batch_is_legal` composes each job before launching it, the
launcher again to run it). Only the config-group overrides change what is composed; the others are
applied to the composed config afterwards (`ConfigLoaderImpl._apply_overrides_to_config`). So
`SweepComposer` composes once per distinct choice of groups (Hydra's own `load_sweep_config`), and
makes each job's config from a copy of that with the same function Hydra uses, then sets what Hydra
derives from the whole override list: `hydra.overrides.task` and `.hydra`, and
`hydra.job.override_dirname`. The result is Hydra's config for the job, node for node
(tests/test_sweep_compose.py compares them); a job whose overrides the copy refuses is composed by
Hydra itself, for Hydra's own error.

`install(loader)` gives the config loader Hydra holds for the multirun this `load_sweep_config`
(`SweepCheck.on_multirun_start` does, before Hydra builds the sweeper and the launcher): every
launcher composes its jobs through that method of that loader, the basic one in this process,
joblib's and submitit's in their worker processes, where the loader arrives pickled. There each
process keeps its compositions between the jobs it runs (`_BASES`, by the sweep's token), so a
parallel launcher's worker composes once per choice of groups too.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Per process: a sweep's token -> its compositions, by (config name, hydra overrides, group overrides).
_BASES: dict[str, dict[tuple[Any, ...], DictConfig]] = {}


class SweepComposer:
    """`load_sweep_config(master, overrides)` as Hydra's, composing once per choice of config groups."""

    def __init__(self, loader: Any, token: str | None = None) -> None:
        self.loader = loader
        self.token = token or uuid.uuid4().hex
        self.bases = _BASES.setdefault(self.token, {})
        self._parsed: dict[str, Any] = {}
        self._groups: dict[str, bool] = {}
        self._parser: Any = None

    def __getstate__(self) -> dict[str, Any]:  # what a launcher's worker process gets: no compositions
        return {"loader": self.loader, "token": self.token}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["loader"], state["token"])  # type: ignore[misc]

    def hydra_compose(self, master: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """Hydra's own load_sweep_config, whatever is installed on the loader."""
        return type(self.loader).load_sweep_config(self.loader, master, list(overrides))

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """Hydra's ConfigLoader.load_sweep_config, its parameters' names included (callers pass them by name)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        master = master_config
        hydra_lines = [str(o) for o in master.hydra.overrides.hydra]
        try:
            parsed = [self._parse(line) for line in [*hydra_lines, *sweep_overrides]]
        except HydraException:
            return self.hydra_compose(master, sweep_overrides)
        job = parsed[len(hydra_lines):]
        group_overrides = [o for o in job if self._is_group(o)]
        groups = tuple(o.input_line for o in group_overrides)
        key = (str(master.hydra.job.config_name), tuple(hydra_lines), groups)
        if key not in self.bases:
            self.bases[key] = self.hydra_compose(master, list(groups))
        base = self.bases[key]
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config([o for o in job if not self._is_group(o)], cfg)
        except (HydraException, OmegaConfBaseException, ValueError):
            return self.hydra_compose(master, sweep_overrides)
        # What Hydra appends from the whole override list, after what the config itself had there.
        base_parsed = [*parsed[:len(hydra_lines)], *group_overrides]
        app = [o for o in parsed if not o.is_hydra_override()]
        for name, mine, of_base in (("hydra", [o for o in parsed if o.is_hydra_override()],
                                     [o for o in base_parsed if o.is_hydra_override()]),
                                    ("task", app, [o for o in base_parsed if not o.is_hydra_override()])):
            had = list(base.hydra.overrides[name])
            cfg.hydra.overrides[name] = had[:len(had) - len(of_base)] + [o.input_line for o in mine]
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(overrides=app, kv_sep=dirname.kv_sep,
                                                               item_sep=dirname.item_sep,
                                                               exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=master, to_config=cfg)
        return cfg

    def _parse(self, line: str) -> Any:
        if line not in self._parsed:
            if self._parser is None:
                from hydra.core.override_parser.overrides_parser import OverridesParser

                self._parser = OverridesParser.create(config_loader=self.loader)
            self._parsed[line] = self._parser.parse_override(line)
        return self._parsed[line]

    def _is_group(self, override: Any) -> bool:
        """Whether Hydra takes the override as a config-group choice (hydra's defaults_list.Overrides)."""
        line = override.input_line
        if line not in self._groups:
            self._groups[line] = (self.loader.repository.group_exists(override.key_or_group)
                                  and not isinstance(override.value(), dict))
        return self._groups[line]


def install(loader: Any, composer: SweepComposer | None = None) -> SweepComposer:
    """Make `loader.load_sweep_config` the composer's (on this loader object only); returns it."""
    composer = composer or SweepComposer(loader)
    loader.load_sweep_config = composer.load_sweep_config
    return composer


def uninstall(loader: Any) -> None:
    """Hydra's own load_sweep_config on `loader` again; this process forgets the sweep's compositions."""
    installed = vars(loader).pop("load_sweep_config", None)
    composer = getattr(installed, "__self__", None)
    if isinstance(composer, SweepComposer):
        _BASES.pop(composer.token, None)
