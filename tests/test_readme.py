"""Every bash and python block of README.md runs here, in order, as a newcomer runs it from the project
root, on a copy of the session's finished small pipeline (Sybil parses the README).

A block that cannot run here says so in the README itself, right above it, with Sybil's
`<!-- skip: next "the reason" -->` (or the `<!-- extend: ... -->` marker of a step that
tests/test_extend.py follows). A block of long-running servers is marked
`<!-- readme: servers URL -->`: each command in it is started, must answer URL, and is stopped; a
block that needs one running is marked `<!-- readme: with-server "COMMAND" URL -->`. No other block
is left out: the test fails on a bash or python block without a way to run it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from helpers import PYTHON, ROOT, subprocess_env, wait_for_http

README = ROOT / "README.md"
DIRECTIVE = re.compile(r"<!-- (readme|extend): (.*?) -->\s*$")
BLOCK_TIMEOUT_S = 900


def directive(example) -> tuple[str, str] | None:
    """The marker comment on the line right above a block, if any."""
    above = example.document.text[:example.start].rstrip("\n").rsplit("\n", 1)[-1]
    match = DIRECTIVE.search(above)
    return (match[1], match[2]) if match else None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def stop(proc: subprocess.Popen, url: str) -> None:
    """The server and its children (its own process group), by pid; back only once `url` is gone,
    so that the next block's server is the one that answers."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while answers(url) and time.monotonic() < deadline:  # the group's workers may outlive its leader a moment
        time.sleep(0.5)
    signal_group(signal.SIGKILL)
    assert not answers(url), f"{url} still answers after its server was stopped"


def started(command: str, project: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(["bash", "-c", command], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run_block(source: str, project: Path, env: dict, language: str) -> subprocess.CompletedProcess:
    cmd = ["bash", "-e", "-o", "pipefail", "-c", source] if language == "bash" else [PYTHON, "-"]
    proc = subprocess.run(cmd, cwd=project, env=env, input=None if language == "bash" else source,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert proc.returncode == 0, f"exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def evaluate(example) -> None:
    """How Sybil runs a bash or python block: in the project the test set in the document's namespace."""
    project, env, logs = (example.document.namespace[k] for k in ("project", "env", "logs"))
    language = example.region.lexemes["arguments"]
    source = example.parsed
    marked = directive(example)
    if marked and marked[0] == "extend":
        pytest.skip("a step of the README's Extend it section: tests/test_extend.py follows it")
    kind, _, args = (marked[1].partition(" ") if marked else ("", "", ""))
    if kind == "servers":
        url = args.strip()
        for n, command in enumerate(c for c in source.splitlines() if c.strip() and not c.startswith("#")):
            proc = started(command, project, env, logs / f"server-{example.line}-{n}.log")
            try:
                wait_for_http(url, proc, logs / f"server-{example.line}-{n}.log")
            finally:
                stop(proc, url)
    elif kind == "with-server":
        server, url = shlex.split(args)
        proc = started(server, project, env, logs / f"with-server-{example.line}.log")
        try:
            wait_for_http(url, proc, logs / f"with-server-{example.line}.log")
            out = run_block(source, project, env, language)
            assert "predictions" in json.loads(out.stdout), out.stdout  # the scoring server's answer
        finally:
            stop(proc, url)
    else:
        assert not marked, f"README.md line {example.line}: unknown marker {marked}"
        run_block(source, project, env, language)


def examples():
    sybil = Sybil(parsers=[SkipParser(), CodeBlockParser(language="bash", evaluator=evaluate),
                           CodeBlockParser(language="python", evaluator=evaluate)])
    return list(sybil.parse(README).examples())


EXAMPLES = examples()


@pytest.fixture(scope="module")
def readme_project(tiny_pipeline, tmp_path_factory):
    """A copy of the finished small pipeline, committed on `main` (for `dvc plots diff main
    workspace`), with the project's environment at .venv, as `make` leaves it."""
    tmp = tmp_path_factory.mktemp("readme")
    project = tmp / "project"
    shutil.copytree(tiny_pipeline["serial"], project, symlinks=True)
    venv = Path(PYTHON).parent.parent
    (project / ".venv").symlink_to(venv, target_is_directory=True)
    # The environment was installed from these very files: `make` in the copy must see its set-up
    # done, or it would `pip install -e` the copy into this environment, and every later test would
    # import logitlab from a temporary folder. make compares times to the nanosecond: in float
    # seconds the copies came out 74 ns newer than the stamp, and make reinstalled.
    stamp = venv / ".logitlab-installed"
    if stamp.is_file():
        for name in ("pyproject.toml", "requirements.lock"):
            os.utime(project / name, ns=(stamp.stat().st_mtime_ns,) * 2)
    git = ["git", "-c", "user.name=logitlab-tests", "-c", "user.email=tests@logitlab.invalid"]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "the finished pipeline"], cwd=project, check=True, capture_output=True)
    env = subprocess_env(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
    logs = tmp / "logs"
    logs.mkdir()
    return project, env, logs


def test_every_bash_and_python_block_can_be_run_here():
    code = [e for e in EXAMPLES if isinstance(e.region.parsed, str) and e.region.evaluator is evaluate]
    assert len(code) >= 20, "Sybil found the README's code blocks"
    fences = re.findall(r"^```(bash|python)$", README.read_text(), re.M)
    assert len(code) == len(fences), "every bash and python fence is an example"


@pytest.mark.slow  # the README's commands on a real pipeline
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line {e.line}" for e in EXAMPLES])
def test_readme_block(example, readme_project):
    project, env, logs = readme_project
    example.document.namespace.update(project=project, env=env, logs=logs)
    example.evaluate()


@pytest.mark.slow
def test_the_readme_commands_leave_no_untracked_file(readme_project):
    """After every block above ran in the copy (this test runs after them): whatever they wrote,
    git ignores it; a tracked file they change (dvc.lock, .dvc/config) is a change, not a stray."""
    project, _, _ = readme_project
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project,
                            capture_output=True, text=True, check=True).stdout
    assert [line for line in status.splitlines() if line.startswith("??")] == []


@pytest.mark.slow
def test_the_readme_commands_leave_this_environments_install_alone(readme_project):
    """After every block above ran in the copy: `import logitlab` is still this project's src/, not
    the copy's (a `make` there that reinstalled would point the shared environment at it)."""
    where = subprocess.run([PYTHON, "-c", "import logitlab; print(logitlab.__file__)"], cwd="/",
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to((ROOT / "src").resolve()), where
