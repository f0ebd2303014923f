"""The README's "Extend it" steps, followed as written in a copy of the project: a dataset the project
does not ship (scikit-learn's digits) and a new head (log_softmax), then the pipeline on them.

The steps are the README's own code blocks, each after a marker comment that says what to do with it:
`<!-- extend: create PATH -->` (the block is the file), `<!-- extend: edit PATH -->` (a diff: lines
with ' ' or '-' are found in the file as one run and replaced by the lines with ' ' or '+'), and
`<!-- extend: run -->` (shell commands). `make` targets run what they run, without make, which
would build a virtual environment of its own in the copy."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, ROOT, copy_project, run, subprocess_env

BIN = Path(PYTHON).parent
STEP = re.compile(r"<!-- extend: (create|edit|run)(?: (\S+))? -->\n```\w*\n(.*?)```", re.S)
# What each make target the steps name runs (the Makefile's recipes, less the set-up)
MAKE = {"make params": [PYTHON, "-m", "logitlab", "params"],
        "make repro": [PYTHON, "-m", "logitlab.stages.parallel", "--jobs", "2"]}
OUTPUTS = ("dvc.lock", "metrics/", "history/", "predictions/", "report/")  # what `dvc repro` rewrites


def section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Extend it", 1)[1].split("\n## ", 1)[0]


def steps() -> list[tuple[str, str | None, str]]:
    found = [(m[1], m[2], m[3]) for m in STEP.finditer(section())]
    assert found, "the README's Extend it section has no marked steps"
    return found


def said_files() -> set[str]:
    """The files the README says a user creates or edits (its sentence that lists them)."""
    sentence = section().split("The files you create or edit:", 1)[1].split(".\n", 1)[0]
    return {name for name in re.findall(r"`([^`]+)`", sentence) if "/" in name or "." in name}


def apply_edit(path: Path, diff: str) -> None:
    lines = diff.rstrip("\n").split("\n")
    assert all(line[:1] in " +-" for line in lines), f"not a diff for {path}: {diff}"
    old = "\n".join(line[1:] for line in lines if line[:1] in " -") + "\n"
    new = "\n".join(line[1:] for line in lines if line[:1] in " +") + "\n"
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the README's edit does not apply, looked for\n{old}"
    path.write_text(text.replace(old, new))


def env_of(project: Path) -> dict:
    """The copy's own package first: a user's clone is the one their environment has installed."""
    return subprocess_env(PYTHONPATH=str(project / "src"))


def follow(project: Path, *, run_commands: bool) -> list[str]:
    """Do the README's create and edit steps in `project`; the commands of its run steps, run or not."""
    commands = []
    for action, target, body in steps():
        if action == "create":
            (project / target).parent.mkdir(parents=True, exist_ok=True)
            (project / target).write_text(body)
        elif action == "edit":
            apply_edit(project / target, body)
        else:
            commands += [line.strip() for line in body.splitlines() if line.strip()]
    if run_commands:
        for command in commands:
            if command != "make repro":  # run by the caller, after the sizes are made small
                run(MAKE.get(command, command.split()), project, env_of(project))
    return commands


def git(project: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args], project).stdout


def changed(project: Path) -> set[str]:
    """What `git status` shows: modified, added and untracked files (not ignored ones)."""
    out = git(project, "status", "--porcelain", "--untracked-files=all")
    return {line[3:] for line in out.splitlines()}


def test_the_readme_steps_apply_and_make_a_dataset_and_a_head_the_stages_can_build(tmp_path, monkeypatch):
    """Fast: the steps apply to today's files, and the dataset and head they add compose, build,
    fetch and preprocess into what the stages need."""
    import numpy as np

    import logitlab.data
    from logitlab.data.dataset import dataset_of
    from logitlab.data.preprocess import check_processed
    from logitlab.model.heads import head_of
    from logitlab.schema import compose

    project = copy_project(tmp_path / "project")
    assert "make repro" in follow(project, run_commands=False)
    # this process imported logitlab from the project itself: the copy's new module joins its data package
    monkeypatch.setattr(logitlab.data, "__path__", [*logitlab.data.__path__, str(project / "src/logitlab/data")])
    assert {target for action, target, _ in steps() if target} | {"params.yaml", "dvc.yaml"} == said_files()  # make params writes the last two
    cfg = compose(project, ["dataset=digits", "model.head=log_softmax"])
    digits = dataset_of(cfg)
    assert digits.drawing().kind == "image" and digits.drawing().shape == (8, 8)
    assert digits.fetch(tmp_path / "raw.npz") == "sklearn.datasets.load_digits"
    arrays = digits.preprocess(tmp_path / "raw.npz")
    check_processed(arrays, "digits", digits.num_classes)
    assert arrays["x_train"].shape[1] == 64 and 0 <= arrays["x_train"].min() and arrays["x_train"].max() <= 1
    head = head_of(cfg)
    assert head.name == "log_softmax" and head.from_logits and head.activation == "log_softmax"
    z = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))  # log-probabilities: softmax gives them back
    np.testing.assert_allclose(head.probabilities(z, "multiclass"), [[0.7, 0.2, 0.1]], rtol=1e-6)


@pytest.mark.slow
def test_the_readme_extension_runs_through_the_pipeline(tmp_path):
    """A copy of the project, the README's steps, then `make repro` on small sizes: the new stages
    run, each new variant has one FINISHED run and a registered model with its aliases, the report
    has their rows and the new dataset's picture, and git sees only the files the README names,
    the small sizes and the pipeline's outputs."""
    import mlflow
    from omegaconf import OmegaConf

    project = copy_project(tmp_path / "project")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the project as cloned")

    commands = follow(project, run_commands=True)
    assert commands == ["make params", "make repro"]
    assert changed(project) == said_files(), "the README's steps touch exactly the files it names"

    # Small sizes: a matrix of the new dataset and head beside blobs, 200 blobs points, 1 epoch.
    small = {"conf/config.yaml", "conf/datasets/blobs.yaml", "conf/trainer/fit.yaml", "params.yaml"}
    config = OmegaConf.load(project / "conf" / "config.yaml")
    config.pipeline = {"datasets": ["blobs", "digits"], "heads": ["logit", "log_softmax"], "binary_heads": ["logit"],
                       "gradient_tape": {"datasets": ["blobs"], "heads": ["logit"]}}
    OmegaConf.save(config, project / "conf" / "config.yaml")
    for path, change in (("conf/datasets/blobs.yaml", {"fetch": {"n_samples": 200}}),
                         ("conf/trainer/fit.yaml", {"epochs": 1})):
        OmegaConf.save(OmegaConf.merge(OmegaConf.load(project / path), change), project / path)
    run(MAKE["make params"], project, env_of(project))

    repro = run(MAKE["make repro"], project, env_of(project), timeout=1200)
    ran = set(re.findall(r"Running stage '([^']+)'", repro.stdout + repro.stderr))
    new_variants = {"digits-logit", "digits-log_softmax", "blobs-log_softmax", "digits-binary-logit"}
    assert {"fetch@digits", "preprocess@digits", "train@digits-logit", "train@digits-log_softmax",
            "train@blobs-log_softmax", "train_binary@digits-logit", "report"} <= ran, sorted(ran)

    store = f"sqlite:///{project / 'mlflow.db'}"
    client = mlflow.MlflowClient(store, registry_uri=store)
    experiment = client.get_experiment_by_name("logitlab")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "logitlab.variant" in r.data.tags]
    for variant in new_variants:
        mine = [r for r in runs if r.data.tags["logitlab.variant"] == variant]
        assert [r.info.status for r in mine] == ["FINISHED"], (variant, [r.info.status for r in mine])
    aliases = {name: set(client.get_registered_model(name).aliases)
               for name in ("logitlab-digits-25-15-relu", "logitlab-digits-binary-25-15-relu",
                            "logitlab-blobs-25-15-relu")}
    assert aliases["logitlab-digits-25-15-relu"] == {"logit", "log_softmax", "champion"}
    assert aliases["logitlab-digits-binary-25-15-relu"] == {"logit", "champion"}
    assert "log_softmax" in aliases["logitlab-blobs-25-15-relu"]

    summary = (project / "report" / "summary.csv").read_text()
    rows = [line.split(",") for line in summary.splitlines()]
    header = rows[0]
    pairs = {(r[header.index("dataset")], r[header.index("head")]) for r in rows[1:]}
    assert {("digits", "logit"), ("digits", "log_softmax"), ("blobs", "log_softmax")} <= pairs
    assert (project / "report" / "plots" / "digits_digits.png").is_file(), "an image dataset gets its example grid"
    metrics = json.loads((project / "metrics" / "digits-log_softmax.json").read_text())
    assert metrics["test_accuracy"] > 0.2 and "test_loss_f64" in metrics, "one epoch: better than chance (0.1)"

    stray = {path for path in changed(project)
             if path not in said_files() | small and not path.startswith(OUTPUTS)}
    assert not stray, f"files changed that neither the README nor the pipeline's outputs account for: {sorted(stray)}"
    untouched = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src/logitlab/stages", "src/logitlab/report",
                                "src/logitlab/model"], cwd=project)
    assert untouched.returncode == 0, "the package's stages, report and model are as cloned"
    cloned = subprocess.run(["git", "show", "HEAD:dvc.yaml"], cwd=project, capture_output=True, text=True,
                            check=True).stdout
    now = (project / "dvc.yaml").read_text()
    assert now.split("\nplots:\n")[0] == cloned.split("\nplots:\n")[0], "dvc.yaml's stages are as cloned"
    assert "history/digits-log_softmax.tsv: loss" in now, "make params drew the new variants' histories"
