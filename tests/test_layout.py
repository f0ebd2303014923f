"""The package's shape: no import cycle, every module a stage can import declared as that stage's
DVC dependency, and every module named in the README's Layout section."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "logitlab"
# Hydra imports this module in every process it starts (it registers the config schema).
PLUGIN = SRC / "hydra_plugins" / "logitlab" / "__init__.py"


def module_file(name: str) -> Path | None:
    """src/<name as path>.py, or its package's __init__.py; None outside the project."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(path: Path) -> set[Path]:
    """The project modules `path` imports, at the top or inside a function alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from logitlab.x import y`: y is a module (logitlab/x/y.py) or a name in logitlab.x
            names = [f"{node.module}.{alias.name}" if module_file(f"{node.module}.{alias.name}") else node.module
                     for alias in node.names]
        for name in names:
            if name.split(".")[0] != "logitlab":
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                target = module_file(".".join(parts[:i]))
                if target is not None and target != path:
                    found.add(target)
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imports(path))
    return seen


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def find_cycle(graph: dict) -> list | None:
    """One cycle of the directed graph {node: successors}, as a list of nodes, or None."""
    state: dict = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycle_inside_the_package():
    modules = sorted(PACKAGE.rglob("*.py"))
    graph = {m: {t for t in imports(m) if t.name != "__init__.py"} for m in modules}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(rel(p) for p in cycle)


def test_the_checks_see_cycles_and_imports_inside_functions():
    """The checks above would pass vacuously if they saw nothing: try them on known input."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    train_imports = {rel(p) for p in imports(PACKAGE / "stages" / "train.py")}
    assert "src/logitlab/train/loop.py" in train_imports and "src/logitlab/schema/__init__.py" in train_imports
    pipeline = {rel(p) for p in imports(ROOT / "pipelines" / "train.py")}
    assert "src/logitlab/stages/train.py" in pipeline, "an import inside main() counts"


# --------------------------------------------------------------------------- layers between packages

BOTTOM = {"errors", "files", "schema"}
# What each package of logitlab may import from logitlab (itself always): imports only point down.
# The README's Layout section shows the same table.
MAY_IMPORT = {
    "errors": {"files"},
    "files": {"errors"},
    "schema": {"errors", "files"},
    "data": BOTTOM,
    "model": BOTTOM,
    "tracking": BOTTOM,
    "train": BOTTOM | {"model", "data"},        # epochs reach MLflow through a sink the stage hands in
    "evaluate": BOTTOM | {"model", "data"},     # never train: what it needs of a model is handed to it
    "report": BOTTOM | {"evaluate", "model", "data", "tracking"},
    "serving": BOTTOM | {"evaluate", "model", "data", "tracking"},
    "stages": None,                             # the top: running a variant, the report, sweeps, the CLI
    "__main__": None,                           # `python -m logitlab`: the command line, as stages
    "__init__": set(),
}


def package_of(path: Path) -> str:
    """errors, files, schema, data, ..., for a module of logitlab (a top-level module is its own package)."""
    part = path.relative_to(PACKAGE).parts[0]
    return part[:-3] if part.endswith(".py") else part


def layer_violations(modules: list[Path]) -> list[str]:
    """Every import of `modules` that its package's row of MAY_IMPORT does not allow."""
    bad = []
    for module in modules:
        package = package_of(module)
        allowed = MAY_IMPORT.get(package, set())
        for target in imports(module):
            if not target.is_relative_to(PACKAGE):
                continue
            other = package_of(target)
            if other != package and other != "__init__" and allowed is not None and other not in allowed:
                bad.append(f"{rel(module)} ({package}) imports {rel(target)} ({other})")
    return sorted(bad)


def test_every_package_imports_only_what_its_layer_allows():
    modules = sorted(PACKAGE.rglob("*.py"))
    unknown = sorted({package_of(m) for m in modules} - set(MAY_IMPORT))
    assert not unknown, f"packages with no row in MAY_IMPORT: {unknown}"
    violations = layer_violations(modules)
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_layering_check_fails_on_a_planted_import(tmp_path, monkeypatch):
    """The same check on a copy of the package with one import planted against the table: schema
    importing the heads, as it once did."""
    import shutil

    copy = tmp_path / "src" / "logitlab"
    shutil.copytree(PACKAGE, copy)
    types = copy / "schema" / "types.py"
    types.write_text(types.read_text() + "\nfrom logitlab.model.heads import Head  # planted\n")
    here = __import__(__name__)
    for name, value in (("ROOT", tmp_path), ("SRC", tmp_path / "src"), ("PACKAGE", copy)):
        monkeypatch.setattr(here, name, value)
    assert layer_violations(sorted(copy.rglob("*.py"))) == [
        "src/logitlab/schema/types.py (schema) imports src/logitlab/model/__init__.py (model)",
        "src/logitlab/schema/types.py (schema) imports src/logitlab/model/heads.py (model)"]


def stage_deps() -> dict[str, tuple[str, list[str]]]:
    """dvc.yaml's stages: (the pipelines/ script the command runs, its code deps)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        script = re.search(r"python (pipelines/\w+\.py)", stage["cmd"]).group(1)
        out[name] = (script, [d for d in stage["deps"] if "${" not in d])
    return out


def plugin_modules(used: set[Path]) -> set[Path]:
    """The plug-in modules a stage can instantiate: every dataset's `_target_` in params.yaml, and every
    head's where the stage can build heads (it imports logitlab.model.heads)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    specs = list(params["datasets"].values())
    if PACKAGE / "model" / "heads.py" in used:
        specs += list(params["heads"].values())
    found = set()
    for spec in specs:
        module = module_file(spec["_target_"].rpartition(".")[0])
        if module is not None:
            found |= closure(module)
    return found


def stage_modules(script: str) -> set[Path]:
    """Every project module a stage's process can import: its script's, the Hydra plugin's, and the
    plug-ins its config names, at the top of a module or inside a function alike."""
    used = closure(ROOT / script) | closure(PLUGIN)
    return {p for p in used | plugin_modules(used) if p.is_relative_to(SRC)}


def covered(path: Path, deps: list[str]) -> bool:
    return any(rel(path) == d or rel(path).startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_every_module_a_stage_can_import_is_its_dependency(stage):
    script, deps = stage_deps()[stage]
    assert script in deps, f"{stage}: its own script {script} is not a dependency"
    missing = sorted(rel(p) for p in stage_modules(script) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} imports {missing} without listing them in deps"


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_every_code_dependency_of_a_stage_is_imported_by_it(stage):
    """No more deps than imports: a listed file the stage never imports, or a listed folder with a
    module it never imports, would rerun the stage for a change that cannot affect it."""
    script, deps = stage_deps()[stage]
    used = {rel(p) for p in stage_modules(script)}
    unused = []
    for dep in deps:
        path = ROOT / dep
        if not dep.startswith("src/"):
            continue
        modules = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        unused += [rel(m) for m in modules if rel(m) not in used]
    assert not unused, f"dvc.yaml stage {stage} lists {unused} as deps but never imports them"


def test_the_data_stages_import_no_tracking_model_or_training_code():
    for script in ("pipelines/fetch.py", "pipelines/preprocess.py"):
        packages = {package_of(p) for p in stage_modules(script) if p.is_relative_to(PACKAGE)}
        assert not packages & {"tracking", "model", "train", "evaluate", "serving", "report"}, (script, packages)


def test_every_module_is_in_the_readme_layout():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1]
    missing = [rel(p) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and p.relative_to(PACKAGE).as_posix() not in layout]
    assert not missing, f"the README's Layout section does not list {missing}"


def test_dvc_lock_holds_only_the_stages_dvc_yaml_defines():
    """DVC keeps a lock entry after its stage is gone: a stale one is dead weight that `dvc repro`
    never rewrites (the evaluate stages' 762 lines did, once)."""
    from dvc.repo import Repo

    defined = {stage.addressing for stage in Repo(str(ROOT)).index.stages}
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert defined, "dvc.yaml defines no stage"
    assert locked <= defined, f"dvc.lock names stages dvc.yaml does not define: {sorted(locked - defined)}"


def test_dvc_lock_records_the_code_as_committed(tmp_path):
    """The lock's hash of every code and params dependency is what a clean checkout hashes to: a
    lock recorded from a working tree with stray files (an untracked module, a leftover copy) would
    make a fresh clone's `make repro` rerun every stage."""
    import json
    import subprocess

    from helpers import PYTHON, copy_project, subprocess_env

    project = copy_project(tmp_path / "project")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    proc = subprocess.run([str(Path(PYTHON).parent / "dvc"), "status", "--json"], cwd=project, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stale = {}
    for stage, changes in json.loads(proc.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            deps = {path: what for path, what in change.get("changed deps", {}).items()
                    if what == "modified" and not path.startswith("data/")}
            params = change.get("changed params", {})
            if deps or params:
                stale[stage] = {**deps, **params}
    assert not stale, f"dvc.lock disagrees with the committed code; run `make repro` and commit its lock: {stale}"
