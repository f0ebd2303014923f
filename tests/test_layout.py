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
    train_imports = {rel(p) for p in imports(PACKAGE / "train" / "stage.py")}
    assert "src/logitlab/train/loop.py" in train_imports and "src/logitlab/schema.py" in train_imports
    pipeline = {rel(p) for p in imports(ROOT / "pipelines" / "train.py")}
    assert "src/logitlab/train/stage.py" in pipeline, "an import inside main() counts"


def stage_deps() -> dict[str, tuple[str, list[str]]]:
    """dvc.yaml's stages: (the pipelines/ script the command runs, its code deps)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        script = re.search(r"python (pipelines/\w+\.py)", stage["cmd"]).group(1)
        out[name] = (script, [d for d in stage["deps"] if "${" not in d])
    return out


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_every_module_a_stage_can_import_is_its_dependency(stage):
    script, deps = stage_deps()[stage]
    assert script in deps, f"{stage}: its own script {script} is not a dependency"
    used = closure(ROOT / script) | closure(PLUGIN)
    missing = sorted(rel(p) for p in used
                     if p.is_relative_to(SRC) and not any(rel(p) == d or rel(p).startswith(d.rstrip("/") + "/")
                                                         for d in deps))
    assert not missing, f"dvc.yaml stage {stage} imports {missing} without listing them in deps"


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
