"""`make repro`: the DVC pipeline with independent stages side by side.

    python -m logitlab.stages.parallel [--jobs N]     N workers (default: the cores this process may use)

The pattern is DVC's own ("parallel stage execution"): several `dvc --wait-for-lock repro -s STAGE`
processes at once. Each takes DVC's read locks on its stage's deps and write locks on its outs,
holds the repository lock only while DVC checks the stage and writes `dvc.lock` (not while the
command runs), and waits for that lock instead of failing. What DVC leaves to us is the order, which
comes from DVC's own graph (`Repo.index.graph`, frozen stages cut from their deps as `dvc repro`
does): a stage starts once every stage it depends on has succeeded, and among the stages ready, in
`dvc repro`'s own serial order.

Which stages: those `dvc status` reports changed, and every stage downstream of them (a stage only
sees its upstream's new outputs once the upstream has run; where they come out the same, its
`dvc repro -s` finds it unchanged and skips it without starting its command). Nothing changed: no
worker at all. `--jobs 1` is `dvc repro` itself, today's serial run.

Each stage's TensorFlow gets its share of the cores (`cores.worker_env`: TF_NUM_INTRAOP_THREADS and
TF_NUM_INTEROP_THREADS, cores // N, unless set already), so that N stages at once do not each start a
thread per core.

Each worker is a fork of this process, which has DVC imported for the plan and its command line loaded
once after it, calling DVC's command line (`dvc.cli.main`, as DVC's own daemon does after its fork)
with stdout and stderr on the stage's log: a `dvc` process per stage would spend ~0.3 s of CPU
importing DVC again before it checks the stage.
What the child starts from is the plan's memory: no thread runs in it (tqdm's monitor is never
started), and DVC's Repo is closed. Where fork is missing, or a thread runs after all, the workers
are `dvc` processes as before.

Each stage's output goes to .dvc/tmp/repro/<stage>.log and is printed whole when the stage ends, so
logs never interleave. A stage that fails stops the others: SIGINT to each worker's process group
(DVC waits for its command; a train stage ends its MLflow run KILLED; DVC releases its locks),
SIGKILL to any group still there after a grace period; then the failed stage's log, and one line
naming it, exit 1. Ctrl-C or SIGTERM to this process stops the workers the same way.

Why a scheduler of our own rather than a library: paraffin (the maintained one) runs stages through
Celery workers and calls itself experimental; dask4dvc's last release is from 2023. The part DVC
does not do is small, and this keeps it to the standard library and DVC. (Light on purpose: its one
logitlab import, stages/cores.py, is standard library only; no TensorFlow or MLflow.)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from logitlab.stages.cores import cores, worker_env

PROG = "python -m logitlab.stages.parallel"
USAGE = f"usage: {PROG} [--jobs N]"
LOG_DIR = (".dvc", "tmp", "repro")  # .dvc/tmp is DVC's own scratch space, never in git
GRACE_S = 30.0  # after SIGINT, how long a stopped worker may take to end its run and release DVC's locks
POLL_S = 0.05


# --------------------------------------------------------------------------- the plan (pure)

def serial_order(needs: Mapping[str, Iterable[str]]) -> list[str]:
    """`dvc repro`'s order: a post-order walk of the graph, its stages taken in the given order (as
    DVC's plan_repro walks `networkx.dfs_postorder_nodes`); every stage after those it needs."""
    order: list[str] = []
    seen: set[str] = set()
    for start in needs:
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(needs[start]))]
        while stack:
            node, rest = stack[-1]
            for nxt in rest:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, iter(needs[nxt])))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def downstream(needs: Mapping[str, Iterable[str]], changed: Iterable[str]) -> set[str]:
    """The changed stages and every stage that depends on one of them, directly or not."""
    users: dict[str, set[str]] = {stage: set() for stage in needs}
    for stage, deps in needs.items():
        for dep in deps:
            users[dep].add(stage)
    found, todo = set(), [s for s in changed if s in needs]
    while todo:
        stage = todo.pop()
        if stage not in found:
            found.add(stage)
            todo.extend(users[stage])
    return found


@dataclass(frozen=True)
class Plan:
    """The stages to run, in `dvc repro`'s order, each with the stages of the plan it waits for."""

    order: tuple[str, ...]
    needs: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, needs: Mapping[str, Iterable[str]], changed: Iterable[str]) -> Plan:
        wanted = downstream(needs, changed)
        order = tuple(s for s in serial_order(needs) if s in wanted)
        return cls(order, {s: frozenset(d for d in needs[s] if d in wanted) for s in order})

    def ready(self, done: Iterable[str], started: Iterable[str]) -> list[str]:
        """The stages not started yet whose every dependency has succeeded, in order."""
        done, started = set(done), set(started)
        return [s for s in self.order if s not in started and self.needs[s] <= done]


# --------------------------------------------------------------------------- DVC's graph

def dvc_pipeline(root: Path) -> tuple[dict[str, list[str]], set[str]]:
    """From DVC: each stage's name with the stages it depends on (in DVC's graph order), frozen
    stages cut from theirs as `dvc repro` does; and the stages `dvc status` reports changed."""
    from dvc.repo import Repo
    from dvc.progress import Tqdm

    # tqdm's monitor is a thread that DVC's progress bars would start in this process; the workers
    # are forks of it, and a fork should have no thread to lose (the children start their own)
    Tqdm.monitor_interval = 0

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge goes from a stage to each stage whose outputs it reads
        needs = {stage.addressing: [] if stage.frozen else [dep.addressing for dep in graph.successors(stage)]
                 for stage in graph.nodes}
        changed = set(repo.status())
    return needs, changed


def dvc_command() -> list[str]:
    """This Python's DVC (the project's venv), as `make` and the stages use it."""
    script = Path(sys.executable).with_name("dvc")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dvc"]


def repro_args(stage: str) -> list[str]:
    """DVC's arguments for one stage: `dvc <these>`."""
    return ["--wait-for-lock", "repro", "--single-item", stage]


def repro_command(stage: str) -> list[str]:
    return [*dvc_command(), *repro_args(stage)]


# --------------------------------------------------------------------------- the workers

class Forked:
    """A forked child as `run` sees a worker: Popen's pid, poll, wait and returncode (minus the
    signal's number where a signal ended it)."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def _reaped(self, options: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, options)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reaped(os.WNOHANG)

    def wait(self) -> int:
        return self._reaped(0)


Process = subprocess.Popen | Forked
Start = Callable[[list[str], Path, Path | None, Mapping[str, str] | None], Process]


def popen(command: list[str], log: Path, cwd: Path | None, env: Mapping[str, str] | None) -> subprocess.Popen:
    """`command` in a session of its own, SIGINT at its default action, its output on `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_sigint_default)


def fork_dvc(args: list[str], log: Path, cwd: Path | None, env: Mapping[str, str] | None) -> Forked:
    """`dvc <args>` as a fork of this process (DVC imported already): in a session of its own, Ctrl-C
    as a KeyboardInterrupt (DVC ends its command and releases its locks, as the `dvc` process does),
    its output on `log`, in `cwd` and `env`."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 255
    try:  # the child: never returns
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out, nothing = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), os.open(os.devnull, os.O_RDONLY)
        for fd, onto in ((nothing, 0), (out, 1), (out, 2)):
            os.dup2(fd, onto)
        os.close(out)
        os.close(nothing)
        if cwd is not None:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        from dvc.cli import main as dvc_main

        code = dvc_main(args)
    except SystemExit as exc:  # what a `dvc` process would exit with, by sys.exit's rules
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):  # a message: printed, and exit status 1
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - whatever it was, it is the stage's log's
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110
                pass
        os._exit(code if isinstance(code, int) else 255)


def load_dvc_command_line() -> None:
    """What `dvc.cli.main` would otherwise load in every forked worker: DVC's command line, its
    commands' modules and what building its parser imports (a stage's check: ~0.23 s forked from a
    scheduler that has done this, ~0.28 s without)."""
    from dvc.cli.parser import get_main_parser

    get_main_parser()


def forking_possible() -> bool:
    """Fork where it is safe: this platform has it and no other thread runs here."""
    return hasattr(os, "fork") and threading.active_count() == 1


@dataclass
class Worker:
    stage: str
    proc: Process
    log: Path
    started: float = field(default_factory=time.monotonic)


class StageFailed(Exception):
    def __init__(self, stage: str, code: int, log: Path, stopped: list[str], not_started: list[str]):
        self.stage, self.code, self.log, self.stopped, self.not_started = stage, code, log, stopped, not_started
        shown = os.path.relpath(log) if log.is_absolute() and log.is_relative_to(Path.cwd()) else log
        parts = [f"stage {stage} failed (exit {code}); its log is above and in {shown}"]
        if stopped:
            parts.append(f"stopped: {', '.join(stopped)}")
        if not_started:
            parts.append(f"not started: {', '.join(not_started)}")
        super().__init__("; ".join(parts))


def log_path(logs: Path, stage: str) -> Path:
    return logs / (stage.replace(os.sep, "_").replace(":", "_") + ".log")


def _sigint_default() -> None:
    """In a worker, before DVC starts: SIGINT back to its default action. A process started with SIGINT
    ignored (`make repro &` from a script: a shell starts background commands so) passes that on
    through exec, to DVC, the shell and the stage's command, and `stop` could then only kill them
    after its grace period, DVC's locks left behind and the runs RUNNING. (preexec_fn: this scheduler
    runs no threads.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_group(worker: Worker, sig: int) -> None:
    try:
        os.killpg(worker.proc.pid, sig)  # its own session: the group is DVC, the shell and the stage's command
    except (ProcessLookupError, PermissionError):
        pass


def stop(workers: Sequence[Worker], grace: float = GRACE_S) -> None:
    """SIGINT to every worker's process group; SIGKILL to the groups whose leader is still there
    after `grace` seconds. Returns once every worker has exited."""
    for worker in workers:
        if worker.proc.poll() is None:
            _signal_group(worker, signal.SIGINT)
    deadline = time.monotonic() + grace
    while any(w.proc.poll() is None for w in workers) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for worker in workers:
        if worker.proc.poll() is None:
            _signal_group(worker, signal.SIGKILL)
            worker.proc.wait()


# What DVC says once at the end of a `dvc repro`: here once at the end rather than after every stage
# (and "up to date" after a skipped stage would read as if the whole pipeline were).
HINTS = ("To track the changes with git, run:", "To enable auto staging, run:", "dvc config core.autostage true",
         "Use `dvc push` to send your updates to remote storage.", "Data and pipelines are up to date.")


def without_hints(text: str, to_add: set[str]) -> str:
    """`text` without DVC's closing lines; the files its `git add` hint names go into `to_add`."""
    kept, in_hint = [], False
    for line in text.splitlines(keepends=True):
        bare = line.strip()
        if bare == HINTS[0]:
            in_hint = True
        elif in_hint and bare.startswith("git add "):
            to_add.update(bare.split()[2:])
            in_hint = False
        elif bare not in HINTS:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    text = "".join(kept)
    return text if not text or text.endswith("\n") else text + "\n"


def _show(worker: Worker, out, note: str, to_add: set[str]) -> None:
    out.write(without_hints(worker.log.read_text(errors="replace"), to_add))
    out.write(f"[{worker.stage}: {note} after {time.monotonic() - worker.started:.1f} s]\n\n")
    out.flush()


def run(plan: Plan, jobs: int, command: Callable[[str], list[str]], logs: Path, cwd: Path | None = None,
        out=None, grace: float = GRACE_S, to_add: set[str] | None = None,
        env: Mapping[str, str] | None = None, start: Start = popen) -> list[str]:
    """Run the plan's stages, `jobs` at a time, each as `start(command(stage), log, cwd, env)`: a
    process group of its own (in `env`: None, this process's environment); returns the stages in the
    order they finished.
    Raises StageFailed once a stage fails and the others are stopped; on KeyboardInterrupt the
    workers are stopped and it is raised again. The files DVC's hints say to `git add` go into
    `to_add`."""
    out = out or sys.stdout
    to_add = set() if to_add is None else to_add
    logs.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    running: dict[str, Worker] = {}
    try:
        while len(done) < len(plan.order):
            for stage in plan.ready(done, [*done, *running])[:max(0, jobs - len(running))]:
                path = log_path(logs, stage)
                running[stage] = Worker(stage, start(command(stage), path, cwd, env), path)
            if not running:
                raise AssertionError(f"no stage can start: {sorted(set(plan.order) - set(done))}")
            finished = [w for w in running.values() if w.proc.poll() is not None]
            if not finished:
                time.sleep(POLL_S)
                continue
            for worker in finished:
                del running[worker.stage]
                if worker.proc.returncode != 0:
                    others = list(running.values())
                    stop(others, grace)
                    for other in others:
                        _show(other, out, "stopped", to_add)
                    _show(worker, out, f"FAILED, exit {worker.proc.returncode}", to_add)
                    started = {worker.stage, *done, *running}
                    raise StageFailed(worker.stage, worker.proc.returncode, worker.log,
                                      [w.stage for w in others], [s for s in plan.order if s not in started])
                done.append(worker.stage)
                _show(worker, out, "done", to_add)
    except KeyboardInterrupt:
        stop(list(running.values()), grace)
        raise
    return done


# --------------------------------------------------------------------------- the command

def _interrupt(signum, frame):  # SIGTERM: stop the workers as Ctrl-C does
    raise KeyboardInterrupt


def parse_jobs(argv: Sequence[str]) -> int:
    """--jobs N from the command line; a mistake is one line on stderr and exit 2."""

    class OneLine(argparse.ArgumentParser):
        def error(self, message: str):
            print(f"{PROG}: error: {message} ({USAGE})", file=sys.stderr)
            sys.exit(2)

    parser = OneLine(prog=PROG, description="Run the DVC pipeline with independent stages side by side.")
    parser.add_argument("--jobs", "-j", default=None, help="workers (default: the cores available)")
    args = parser.parse_args(argv)
    if args.jobs is None or args.jobs == "":
        return cores()
    if not args.jobs.isdigit() or int(args.jobs) < 1:
        parser.error(f"--jobs must be a positive whole number, got {args.jobs!r}")
    return int(args.jobs)


def main(argv: Sequence[str] | None = None) -> int:
    jobs = parse_jobs(sys.argv[1:] if argv is None else argv)
    if jobs == 1:  # today's serial run, exactly
        command = [*dvc_command(), "repro"]
        os.execv(command[0], command)
    from dvc.exceptions import DvcException

    try:
        from dvc.repo import Repo

        root = Path(Repo.find_root())
        needs, changed = dvc_pipeline(root)
    except DvcException as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    plan = Plan.of(needs, changed)
    if not plan.order:
        print("Data and pipelines are up to date.")
        return 0
    print(f"{len(plan.order)} of {len(needs)} stages to check or run, {jobs} at a time: {', '.join(plan.order)}\n",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    start, to_add = time.monotonic(), set()
    try:
        load_dvc_command_line()
        command, launch = (repro_args, fork_dvc) if forking_possible() else (repro_command, popen)
        finished = run(plan, jobs, command, root.joinpath(*LOG_DIR), cwd=root, to_add=to_add,
                       env=worker_env(jobs), start=launch)
    except StageFailed as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the running stages were stopped", file=sys.stderr)
        return 130
    if to_add:
        print(f"To track the changes with git, run:\n\n\tgit add {' '.join(sorted(to_add))}\n")
    print(f"{len(finished)} stages in {time.monotonic() - start:.1f} s with {jobs} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
