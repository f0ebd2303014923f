"""make exps and make metrics: DVC's views of the committed metrics, run as a user runs them, in a
fresh git copy of the project; every number checked against metrics/*.json itself."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import PYTHON, ROOT, copy_project, subprocess_env

WIDTH = 100
DEFAULT = ("test_loss", "test_accuracy", "prob_min", "prob_max")
# The README's DVC-only view: one variant, two metrics, as much as DVC's own table fits in 100 columns.
DVC_ONLY = r"dvc exp show --drop '.*' --keep 'Experiment|metrics/mnist-logit\.json:(test_loss|prob_min)$'"
GIT = ["git", "-c", "user.name=logitlab", "-c", "user.email=dev@logitlab.invalid"]


def committed_metrics() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "metrics").glob("*.json"))}


def recipe(target: str) -> list[str]:
    """The Makefile's command lines for `target`."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def commit_all(project: Path, message: str = "base") -> None:
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=project, check=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project as git has it, committed in a repository of its own: a workspace and a baseline."""
    path = copy_project(tmp_path_factory.mktemp("views") / "project")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    commit_all(path)
    return path


def exps(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "logitlab", "exps", *args], cwd=project, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, check=False)


def parse(stdout: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = stdout.splitlines()
    header = lines[0].split()
    return header, [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


def agrees(cell: str, value: float) -> bool:
    """`cell` shows `value` to 4 significant digits, and is a whole number only if the value is one."""
    shown = float(cell)
    return math.isclose(shown, value, rel_tol=5e-4) and shown.is_integer() == float(value).is_integer()


def test_make_exps_fits_100_columns_and_shows_every_variant_as_its_file_says(project):
    assert recipe("exps")[0].startswith("$(BIN)/python -m logitlab exps"), recipe("exps")
    proc = exps(project)
    assert proc.returncode == 0, proc.stderr
    too_wide = [line for line in proc.stdout.splitlines() if len(line) > WIDTH]
    assert not too_wide, f"lines wider than {WIDTH}: {too_wide}"
    header, rows = parse(proc.stdout)
    assert header == ["Variant", "Experiment", *DEFAULT]
    metrics = committed_metrics()
    assert len(metrics) >= 16
    assert {(row["Variant"], row["Experiment"]) for row in rows} == {
        (variant, exp) for variant in metrics for exp in ("workspace", "main")}
    for row in rows:
        for column in DEFAULT:
            value = metrics[row["Variant"]][column]
            assert agrees(row[column], value), (row, column, value)


def test_the_tiniest_probability_stays_visible(project):
    """The lesson's point: how close a probability gets to 0. DVC metrics show's 5 decimals make it 0.0."""
    metrics = committed_metrics()
    variant = min((v for v in metrics if metrics[v]["prob_min"] > 0), key=lambda v: metrics[v]["prob_min"])
    smallest = metrics[variant]["prob_min"]
    assert round(smallest, 5) == 0, f"{variant}'s prob_min {smallest} no longer needs more than 5 decimals"
    proc = exps(project, "--variant", variant)
    assert proc.returncode == 0, proc.stderr
    _, rows = parse(proc.stdout)
    assert [row["Experiment"] for row in rows] == ["workspace", "main"]
    for row in rows:
        assert float(row["prob_min"]) != 0 and agrees(row["prob_min"], smallest), (row, smallest)
        assert re.fullmatch(r"\d\.\d{3}e-\d+", row["prob_min"]), row["prob_min"]


def test_a_variant_glob_other_columns_and_a_sort(project):
    columns = ("test_loss", "prob_min", "prob_exact1_count")
    proc = exps(project, "--variant", "mnist-*", "--columns", ",".join(columns), "--sort-by", "prob_min")
    assert proc.returncode == 0, proc.stderr
    header, rows = parse(proc.stdout)
    assert header == ["Variant", "Experiment", *columns]
    metrics = committed_metrics()
    assert {row["Variant"] for row in rows} == {v for v in metrics if v.startswith("mnist-")}
    values = [metrics[row["Variant"]]["prob_min"] for row in rows]
    assert values == sorted(values)
    for row in rows:
        assert row["prob_exact1_count"] == str(int(metrics[row["Variant"]]["prob_exact1_count"])), row


@pytest.mark.parametrize("args, named", [
    (["--variant", "mnist-*", "--variant", "cifar-*"], "'cifar-*'"),
    (["--columns", "test_loss,prob_minimum"], "'prob_minimum'"),
    (["--sort-by", "loss"], "'loss'"),
])
def test_bad_input_is_one_line_and_exit_2(project, args, named):
    proc = exps(project, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("logitlab exps: error: ") and named in lines[0], proc.stderr


def test_outside_a_dvc_project_is_one_line_and_exit_2(tmp_path):
    proc = exps(tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not inside of a DVC repository" in lines[0], proc.stderr


def test_an_experiment_is_listed_under_its_baseline_and_a_long_name_is_cut(tmp_path):
    """A real DVC experiment (`dvc exp save`) with a long name, in a small DVC project of two
    committed metrics files: its rows follow the baseline's, cut to fit, with its own numbers."""
    project = tmp_path / "small"
    (project / "metrics").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run([PYTHON, "-m", "dvc", "init", "-q"], cwd=project, env=subprocess_env(), check=True)
    metrics = committed_metrics()
    variants = sorted(metrics)[:2]
    for variant in variants:
        (project / "metrics" / f"{variant}.json").write_text(json.dumps(metrics[variant]))
    (project / "dvc.yaml").write_text("metrics:\n" + "".join(f"  - metrics/{v}.json\n" for v in variants))
    commit_all(project)
    changed = dict(metrics[variants[0]], prob_min=metrics[variants[0]]["prob_min"] / 1e20)
    (project / "metrics" / f"{variants[0]}.json").write_text(json.dumps(changed))
    name = "an-experiment-with-a-name-longer-than-the-room-left-for-it-" + "x" * 40
    saved = subprocess.run([PYTHON, "-m", "dvc", "exp", "save", "-n", name], cwd=project, env=subprocess_env(),
                           capture_output=True, text=True, timeout=300, check=False)
    assert saved.returncode == 0, saved.stderr
    proc = exps(project)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) == WIDTH
    _, rows = parse(proc.stdout)
    cut = rows[2]["Experiment"]
    assert cut.endswith("…") and name.startswith(cut[:-1]), cut
    assert [(row["Variant"], row["Experiment"]) for row in rows] == [
        (v, exp) for v in variants for exp in ("workspace", "main", cut)]
    assert agrees(rows[2]["prob_min"], changed["prob_min"])
    assert agrees(rows[1]["prob_min"], metrics[variants[0]]["prob_min"])


def test_numbers_never_round_to_a_whole_number_they_are_not():
    from logitlab.stages.views import fmt

    below_one = float(np.float32(1) - np.finfo(np.float32).epsneg)  # the largest float32 under 1
    assert float(fmt(below_one)) < 1 and agrees(fmt(below_one), below_one), fmt(below_one)
    assert fmt(1.0) == "1" and fmt(0.0) == "0" and fmt(63.0) == "63" and fmt(None) == "-"
    for variant, fields in committed_metrics().items():
        for field, value in fields.items():
            assert agrees(fmt(value), value), (variant, field, value, fmt(value))


def test_make_metrics_shows_every_value_as_its_file_stores_it(project):
    """DVC rounds to --precision decimals; the Makefile's precision leaves every value whole."""
    (command,) = recipe("metrics")
    match = re.fullmatch(r"\$\(BIN\)/dvc metrics show --precision (\d+)", command)
    assert match, command
    proc = subprocess.run([PYTHON, "-m", "dvc", "metrics", "show", "--precision", match.group(1)], cwd=project,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    header, rows = parse(proc.stdout)
    assert header[0] == "Path"
    metrics = committed_metrics()
    assert sorted(row["Path"] for row in rows) == sorted(f"metrics/{v}.json" for v in metrics)
    for row in rows:
        fields = metrics[Path(row["Path"]).stem]
        for field in header[1:]:
            shown = row[field]
            assert (shown == "-") if field not in fields else float(shown) == fields[field], (row["Path"], field, shown)


def test_the_readmes_dvc_only_view_fits_and_shows_the_tiny_probability(project):
    readme = (ROOT / "README.md").read_text()
    assert DVC_ONLY in readme, "the README shows another DVC-only command than the one tested here"
    proc = subprocess.run([PYTHON, "-m", "dvc", *shlex.split(DVC_ONLY)[1:]], cwd=project, check=False,
                          env=subprocess_env(COLUMNS=str(WIDTH)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= WIDTH for line in lines) and "…" not in proc.stdout, proc.stdout
    workspace = next(line for line in lines if "workspace" in line).split()
    assert agrees(workspace[-1], committed_metrics()["mnist-logit"]["prob_min"]), workspace


def test_the_readmes_example_is_what_the_command_prints(project):
    """The README's example output, from the committed metrics: a test fails when they disagree."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```text\n\$ (python -m logitlab exps[^\n]*)\n(.*?)```", readme, re.DOTALL)
    assert block, "the README shows no example of python -m logitlab exps"
    command, shown = block.groups()
    proc = exps(project, *shlex.split(command)[4:])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown, (f"the README's example is out of date; in a fresh clone on main, {command} "
                                  f"prints:\n{proc.stdout}")
