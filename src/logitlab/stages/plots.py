"""dvc.yaml's top-level plots of the training histories, written by `make params` from params.yaml.

For each dataset x task, two plots: the training loss per epoch and the validation loss per epoch,
every variant of that dataset x task a line of its own colour (DVC colours a plot's lines by the file
they come from; `dvc plots diff` adds the revision). A GradientTape history has one epoch and no
val_loss: it is a point in the loss plot. DVC cannot glob a plot's files, and the variants are
params.yaml's `pipeline:` lists, so the list is generated here rather than written by hand; a test
checks it names exactly the history files the train stages write.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

DVC_FILE = "dvc.yaml"
TEMPLATE = "variants"   # .dvc/plots/variants.json
FIRST = ["report/plots"]  # the report's pictures, before the histories


def history_files(params: dict[str, Any]) -> dict[tuple[str, str], list[tuple[str, bool]]]:
    """(dataset, task) -> [(history file, whether it has val_loss)], in the order dvc.yaml's train,
    train_binary and train_tape matrices name their outputs."""
    pipeline, history = params["pipeline"], params["paths"]["history"]
    validates = float(params["trainer"]["validation_split"]) > 0
    groups: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for dataset in pipeline["datasets"]:
        groups[(dataset, "multiclass")] = [(f"{history}/{dataset}-{head}.tsv", validates) for head in pipeline["heads"]]
    for dataset in pipeline["datasets"]:
        groups[(dataset, "binary")] = [(f"{history}/{dataset}-binary-{head}.tsv", validates)
                                       for head in pipeline["binary_heads"]]
    tape = pipeline["gradient_tape"]
    for dataset in tape["datasets"]:  # one pass, no validation split: `pipeline.gradient_tape.overrides`
        groups.setdefault((dataset, "multiclass"), []).extend(
            (f"{history}/{dataset}-{head}-gradient_tape.tsv", False) for head in tape["heads"])
    return groups


def plots_section(params: dict[str, Any]) -> list[Any]:
    """dvc.yaml's `plots:` for these params."""
    section: list[Any] = list(FIRST)
    for (dataset, task), files in history_files(params).items():
        for field, label, wanted in (("loss", "training loss", files),
                                     ("val_loss", "validation loss", [f for f in files if f[1]])):
            if not wanted:
                continue
            section.append({f"{field}_{dataset}_{task}": {
                "template": TEMPLATE, "x": "epoch", "y": {path: field for path, _ in wanted},
                "title": f"{dataset}, {task}: {label} per epoch",
                "x_label": "epoch", "y_label": label}})
    return section


def _yaml():
    from ruamel.yaml import YAML  # DVC's own YAML library: a round trip keeps dvc.yaml's comments and anchors

    yaml = YAML()
    yaml.width = 4096  # no re-wrapping of the stages' long commands
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _load_params(root: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from logitlab.schema import PARAMS_FILE

    return OmegaConf.to_container(OmegaConf.load(root / PARAMS_FILE), resolve=True)


def rendered(root: Path) -> str:
    """dvc.yaml with its `plots:` as params.yaml says; a UserError if dvc.yaml is not a YAML mapping."""
    from ruamel.yaml import YAMLError

    from logitlab.errors import UserError, first_line

    yaml = _yaml()
    try:
        data = yaml.load((root / DVC_FILE).read_text(encoding="utf8"))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{root / DVC_FILE} is not valid YAML{where} ({first_line(str(getattr(exc, 'problem', exc)))}); "
                        "fix it (git diff dvc.yaml shows what changed), then run `make params`") from None
    if not isinstance(data, dict):
        raise UserError(f"{root / DVC_FILE} is not a mapping of stages and plots; restore it: git checkout dvc.yaml")
    data["plots"] = plots_section(_load_params(root))
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def write_plots(root: Path) -> Path:
    from logitlab.files import write_text

    path = root / DVC_FILE
    write_text(path, rendered(root))
    return path


def plots_drift(root: Path) -> bool:
    """Whether dvc.yaml's `plots:` disagree with params.yaml's variants."""
    return rendered(root) != (root / DVC_FILE).read_text(encoding="utf8")
