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

from omegaconf.errors import OmegaConfBaseException as OmegaConfError

from logitlab.errors import UserError, first_line
from logitlab.schema import composition_error, load, register

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
# Config groups that hold every entry at once (conf/config.yaml's defaults place each under its name),
# and the key that chooses one: `datasets=mnist` is a newcomer's way of saying `dataset=mnist`.
CATALOGS = {"datasets": "dataset", "heads": "model.head"}


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

    register()
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
            if group in CATALOGS and override.value_type is not None and override.package is None:
                options = loader.get_group_options(group)
                typed = str(override.value()) if not override.is_sweep_override() else ""
                example = typed if typed in options else (options[0] if options else "NAME")
                raise UserError(f"{group!r} holds every {group[:-1]}'s settings; choose one with "
                                f"{CATALOGS[group]}=NAME, e.g. {CATALOGS[group]}={example} "
                                f"(valid: {', '.join(options)}), not {override.input_line!r}")
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
            cfg = compose(config_name=config_name, overrides=single, return_hydra_config=True)
        except (HydraException, OmegaConfError, ValueError) as exc:
            raise UserError(composition_error(exc, single)) from None
    load(cfg)  # the schema's checks: ranges, a head that fits the task, a dataset that exists


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
