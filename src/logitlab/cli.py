"""The command line of a pipeline app, checked before Hydra runs it.

Hydra reports a malformed override or an unknown config option in several lines, exits 1, and may
have created an output directory first. `check_command_line` composes the config once with the
same overrides (every value of a sweep for a config group, the first value of any other sweep)
and turns any mistake into one line naming the bad value and the valid ones, exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from logitlab.errors import UserError, first_line

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def _single_value(override) -> str | None:
    """The override with a sweep replaced by its first value (None: an interval, only a sweeper can pick)."""
    if not override.is_sweep_override():
        return override.input_line
    from hydra.errors import HydraException

    try:
        first = next(iter(override.sweep_string_iterator()))
    except (HydraException, StopIteration):
        return None
    prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(override.type.name, "")
    return f"{prefix}{override.get_key_element().lstrip('+')}={first}"


def check_overrides(config_dir: Path, config_name: str, overrides: Sequence[str], app: str) -> None:
    """Raise UserError for the first override that is malformed, names an unknown option of a config
    group, or does not apply to the composed config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed.append(parser.parse_override(line))
        except (OverrideParseException, HydraException) as exc:
            raise UserError(f"malformed override {line!r}: {first_line(exc)}; see {GRAMMAR}") from None

    with initialize_config_dir(str(config_dir), version_base="1.3", job_name=app):
        loader = GlobalHydra.instance().config_loader()
        for override in parsed:
            group = override.key_or_group
            options = loader.get_group_options(group) if override.value_type is not None else []
            if not options:
                continue
            try:
                values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                          else [override.value()])
            except HydraException:  # an interval over a group cannot be enumerated: the sweeper decides
                continue
            for value in values:
                if isinstance(value, str) and value not in options:
                    name = group.split("/")[-1]
                    raise UserError(f"unknown {name} {value!r} in override {override.input_line!r}; "
                                    f"valid: {', '.join(options)}")
        single = [s for s in map(_single_value, parsed) if s is not None]
        try:
            compose(config_name=config_name, overrides=single, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise UserError(_composition_error(exc, single, compose(config_name=config_name))) from None


def _composition_error(exc: BaseException, overrides: Sequence[str], base) -> str:
    """One line for a failed composition; an unknown key lists the keys its parent has."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    missing = (ConfigKeyError, ConfigAttributeError)
    cause = exc.__cause__ if isinstance(exc.__cause__, missing) else exc
    key = getattr(cause, "full_key", None)
    if isinstance(cause, missing) and key:
        parent_key, _, leaf = str(key).rpartition(".")
        parent = OmegaConf.select(base, parent_key) if parent_key else base
        line = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), key)
        if isinstance(parent, DictConfig):
            where = f"under {parent_key}" if parent_key else "at the top level"
            return (f"unknown key {key!r} in override {line!r}; valid {where}: {', '.join(map(str, parent))} "
                    f"(prefix + to add a new key)")
    message = first_line(exc)
    if cause is not exc:
        message += " " + first_line(cause)
    return f"cannot apply the overrides {' '.join(overrides)}: {message}"


def check_command_line(script: str, config_path: str, config_name: str, argv: Sequence[str] | None = None) -> None:
    """Check the Hydra command line of the app in `script` (its hydra.main's config_path and config_name
    as defaults): one line on stderr and exit 2 on a mistake; `--help` and the like pass untouched."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return
    app = Path(script).stem
    config_dir = (Path(script).resolve().parent / (args.config_path or config_path)).resolve()
    try:
        check_overrides(config_dir, args.config_name or config_name, args.overrides, app)
    except UserError as exc:
        print(f"logitlab {app}: error: {exc}", file=sys.stderr)
        sys.exit(2)
