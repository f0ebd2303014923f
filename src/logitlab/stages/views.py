"""`make exps`: `dvc exp show` turned around, one row per variant x experiment, in 100 columns.

    python -m logitlab exps [--variant GLOB] [--columns F,F,...] [--sort-by F] [-A | -n N | --rev R ...]

DVC names a metric column by its file and field (`metrics/mnist-softmax.json:test_loss`): the 16
metrics files make hundreds of such columns, and even `--keep` leaves room for two of them in a
terminal. Here each variant (a metrics file, named by its stem) is a row per experiment, a variant's
experiments one under the other, and the columns are the fields a user compares: the test loss and
accuracy, and how close the probabilities come to 0 and to 1. The data is `dvc exp show --json`, so
the rows are what `dvc exp show` lists (the workspace, the baseline commit, its experiments; `-A`,
`-n`, `--rev`, `-a`, `-T` passed through to it).

Numbers keep 4 significant digits (`1.121e-27`, not DVC metrics show's `0.0`; `0.1280`), counts are
whole, and a value is never shown as a whole number it is not: 0.99997 stays 0.99997 rather than
`1`, since what separates the heads is whether a probability is exactly 1. A field a variant does
not have is `-`, a metrics file DVC could not read `!` (as in `dvc exp show`). The default columns
fit 100 characters: an experiment name too long for the room left is cut, ending in `…`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from logitlab.errors import UserError
from logitlab.stages.parallel import dvc_command

WIDTH = 100  # the default columns fit this many characters
COLUMNS = ("test_loss", "test_accuracy", "prob_min", "prob_max")
SEP = "  "
MISSING, ERRORED = "-", "!"
MIN_NAME = 10  # an experiment name is cut to fit the width, never shorter than this


@dataclass(frozen=True)
class Row:
    experiment: str
    variant: str
    fields: Mapping[str, object] | None  # None: DVC could not read the metrics file


# --------------------------------------------------------------------------- dvc exp show --json

def dvc_exp_show(root: Path, selection: Sequence[str] = ()) -> list[dict]:
    """`dvc exp show --json` in `root`, parsed; a failure is a UserError with DVC's own line."""
    cmd = [*dvc_command(), "exp", "show", "--json", *selection]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        said = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no output")
        raise UserError(f"`dvc exp show` failed in {root}: {said}")
    return json.loads(proc.stdout or "[]")


def _states(exps: Iterable[Mapping]) -> Iterator[tuple[str, Mapping]]:
    """(name, state) of every row `dvc exp show` lists: each baseline, then its experiments."""
    for state in exps:
        yield _name(state), state
        for exp_range in state.get("experiments") or ():
            for rev in exp_range.get("revs") or ():
                yield _name(rev), rev


def _name(state: Mapping) -> str:
    rev = state.get("rev") or "?"
    return state.get("name") or (rev if rev == "workspace" else rev[:7])


def _flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def rows_of(exps: Iterable[Mapping]) -> list[Row]:
    """One row per variant x experiment: a variant's rows together (its experiments side by side),
    variants and experiments in `dvc exp show`'s order. Experiments with no data (queued, or failed
    before any metrics) have no rows."""
    rows = []
    for name, state in _states(exps):
        metrics = (state.get("data") or {}).get("metrics") or {}
        for path, entry in metrics.items():
            data = entry.get("data") if isinstance(entry, Mapping) else None
            fields = _flatten(data) if isinstance(data, Mapping) else None
            rows.append(Row(name, Path(path).stem, fields))
    order = {variant: i for i, variant in reversed(list(enumerate(row.variant for row in rows)))}
    return sorted(rows, key=lambda row: order[row.variant])  # stable: experiments keep their order


# --------------------------------------------------------------------------- selection

def select(rows: list[Row], variants: Sequence[str] = (), columns: Sequence[str] = COLUMNS,
           sort_by: str | None = None) -> list[Row]:
    """The rows whose variant matches any of `variants` (globs; all when none), sorted by a field if
    asked (missing values last). An unknown variant, column or sort field is a UserError."""
    if not rows:
        raise UserError("`dvc exp show` lists no metrics: run `make repro` (or `dvc pull`) first")
    known_variants = sorted({row.variant for row in rows})
    for pattern in variants:
        if not fnmatch.filter(known_variants, pattern):
            raise UserError(f"no variant matches {pattern!r}; the variants: {', '.join(known_variants)}")
    known_fields = sorted({f for row in rows if row.fields for f in row.fields})
    for name in (*columns, *([sort_by] if sort_by else [])):
        if name not in known_fields:
            raise UserError(f"unknown metric {name!r}; the metrics: {', '.join(known_fields)}")
    chosen = [row for row in rows if not variants or any(fnmatch.fnmatchcase(row.variant, p) for p in variants)]
    if sort_by:
        def key(row: Row) -> tuple[bool, float]:
            value = (row.fields or {}).get(sort_by)
            number = _number(value)
            return (number is None, number if number is not None else 0.0)
        chosen.sort(key=key)
    return chosen


# --------------------------------------------------------------------------- the table

def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def fmt(value: object) -> str:
    """4 significant digits; whole numbers whole (counts, an exact 0 or 1); more digits where 4 would
    round a value to a whole number it is not (0.99997, not 1)."""
    number = _number(value)
    if number is None:
        return MISSING if value is None else str(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    for digits in range(4, 18):
        text = f"{number:#.{digits}g}"  # '#': trailing zeros kept, 0.1280 (4 digits, not 0.128)
        if not float(text).is_integer():
            return text
    return repr(number)


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def table(rows: Sequence[Row], columns: Sequence[str] = COLUMNS, width: int = WIDTH) -> list[str]:
    """The lines: a header, then a row each; experiment names cut (with …) where the rest would not
    fit `width` otherwise."""
    cells = [[ERRORED if row.fields is None else fmt(row.fields[c]) if c in row.fields else MISSING
              for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    variant_w = max([len("Variant"), *(len(row.variant) for row in rows)])
    rest = len(SEP) + variant_w + sum(len(SEP) + w for w in widths)
    name_w = max([len("Experiment"), *(len(row.experiment) for row in rows)])
    name_w = max(min(name_w, width - rest), MIN_NAME)

    def line(variant: str, name: str, values: Sequence[str]) -> str:
        numbers = SEP.join(v.rjust(w) for v, w in zip(values, widths, strict=True))
        return f"{variant.ljust(variant_w)}{SEP}{_cut(name, name_w).ljust(name_w)}{SEP}{numbers}"

    return [line("Variant", "Experiment", columns),
            *(line(row.variant, row.experiment, values) for row, values in zip(rows, cells, strict=True))]


# --------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", action="append", default=[], metavar="GLOB",
                        help="only these variants (metrics/<variant>.json), e.g. 'mnist-*'; repeatable")
    parser.add_argument("--columns", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                        default=list(COLUMNS), metavar="F,F,...",
                        help=f"the metrics to show (default: {','.join(COLUMNS)}, which fit {WIDTH} columns)")
    parser.add_argument("--sort-by", metavar="F", help="sort the rows by this metric, smallest first")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project (default: .)")
    dvc = parser.add_argument_group("which experiments (passed to dvc exp show)")
    dvc.add_argument("-A", "--all-commits", action="store_true", help="experiments of every commit")
    dvc.add_argument("-a", "--all-branches", action="store_true", help="experiments of every branch's tip")
    dvc.add_argument("-T", "--all-tags", action="store_true", help="experiments of every tag")
    dvc.add_argument("-n", "--num", type=int, metavar="N", help="experiments of the last N commits")
    dvc.add_argument("--rev", metavar="COMMIT", help="experiments derived from this commit (default: HEAD)")


def selection(args: argparse.Namespace) -> list[str]:
    flags = [flag for flag, on in (("-A", args.all_commits), ("-a", args.all_branches), ("-T", args.all_tags)) if on]
    if args.num is not None:
        flags += ["-n", str(args.num)]
    if args.rev:
        flags += ["--rev", args.rev]
    return flags


def run(args: argparse.Namespace) -> int:
    if not args.columns:
        raise UserError("--columns names no metric")
    root = args.root.resolve()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the project root with --root")
    rows = select(rows_of(dvc_exp_show(root, selection(args))), args.variant, args.columns, args.sort_by)
    try:
        print("\n".join(table(rows, args.columns)), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
