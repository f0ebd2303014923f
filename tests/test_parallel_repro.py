"""`make repro` with independent stages side by side (logitlab.stages.parallel): the plan from DVC's graph,
the workers, a failure that stops the rest; the registry's aliases crowned by stages at once; the
real pipeline with two workers against a serial run, and a planted failure in it."""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import PARALLEL, PYTHON, repro, runs_of, subprocess_env
from logitlab.stages.cores import THREAD_VARIABLES
from logitlab.stages.parallel import (
    GRACE_S,
    Plan,
    StageFailed,
    downstream,
    repro_args,
    run,
    serial_order,
    without_hints,
)

DVC = str(Path(PYTHON).with_name("dvc"))
LOCK_ERRORS = ("Unable to acquire lock", "is busy, it is being blocked by", "LockError", "database is locked")

# e needs c and d, which both need b; a needs nothing; f needs a and e.
NEEDS = {"a": [], "b": [], "c": ["b"], "d": ["b"], "e": ["c", "d"], "f": ["a", "e"]}


# --------------------------------------------------------------------------- the plan

def test_serial_order_is_dvcs_post_order_walk():
    import networkx as nx  # what DVC's plan_repro walks

    order = serial_order(NEEDS)
    assert order == ["a", "b", "c", "d", "e", "f"]
    graph = nx.DiGraph()
    graph.add_nodes_from(["f", "e", "d", "c", "b", "a"])
    for stage, deps in NEEDS.items():
        graph.add_edges_from((stage, dep) for dep in deps)
    needs = {s: list(graph.successors(s)) for s in graph.nodes}
    assert serial_order(needs) == list(nx.dfs_postorder_nodes(graph))


def test_the_plan_is_the_changed_stages_and_everything_downstream():
    assert downstream(NEEDS, ["c"]) == {"c", "e", "f"}
    plan = Plan.of(NEEDS, ["c", "a"])
    assert plan.order == ("a", "c", "e", "f")
    assert plan.needs == {"a": set(), "c": set(), "e": {"c"}, "f": {"a", "e"}}, "only the stages of the plan"
    assert Plan.of(NEEDS, []).order == ()


def test_ready_stages_come_in_order_once_their_dependencies_succeeded():
    plan = Plan.of(NEEDS, NEEDS)
    assert plan.ready(done=[], started=[]) == ["a", "b"]
    assert plan.ready(done=[], started=["a", "b"]) == []
    assert plan.ready(done=["b"], started=["a", "b"]) == ["c", "d"]
    assert plan.ready(done=["b", "c"], started=["a", "b", "c", "d"]) == [], "e waits for d too"
    assert plan.ready(done=["a", "b", "c", "d"], started=["a", "b", "c", "d"]) == ["e"]


def test_dvcs_closing_lines_are_said_once():
    log = ("Running stage 'a':\n> echo a\nUpdating lock file 'dvc.lock'\n\nTo track the changes with git, run:\n\n"
           "\tgit add dvc.lock .gitignore\n\nTo enable auto staging, run:\n\n\tdvc config core.autostage true\n"
           "Use `dvc push` to send your updates to remote storage.\n")
    to_add = set()
    assert without_hints(log, to_add) == "Running stage 'a':\n> echo a\nUpdating lock file 'dvc.lock'\n"
    assert to_add == {"dvc.lock", ".gitignore"}
    assert without_hints("Stage 'b' didn't change, skipping\nData and pipelines are up to date.\n", to_add) == (
        "Stage 'b' didn't change, skipping\n")


# --------------------------------------------------------------------------- the workers (shell commands)

def stage_command(events: Path, seconds: dict, fail: str = ""):
    """A worker that logs its start and end with the time, sleeps, and fails if it is `fail`."""
    def command(stage):
        exit_code = 3 if stage == fail else 0
        script = (f"echo {stage} start $(date +%s.%N) >> {events}; echo working on {stage}; "
                  f"sleep {seconds.get(stage, 0.2)}; "
                  f"echo {stage} end $(date +%s.%N) >> {events}; exit {exit_code}")
        return ["sh", "-c", script]
    return command


def read_events(events: Path) -> dict:
    times: dict = {}
    for line in events.read_text().splitlines():
        stage, what, when = line.split()
        times.setdefault(stage, {})[what] = float(when)
    return times


def test_workers_respect_the_graph_and_the_number_of_jobs(tmp_path, capsys):
    events = tmp_path / "events"
    finished = run(Plan.of(NEEDS, NEEDS), 2, stage_command(events, {}), tmp_path / "logs")
    assert sorted(finished) == sorted(NEEDS)
    times = read_events(events)
    for stage, deps in NEEDS.items():
        for dep in deps:
            assert times[dep]["end"] <= times[stage]["start"], f"{stage} started before {dep} ended"
    spans = [(t["start"], t["end"]) for t in times.values()]
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most == 2, "two at a time, never more"
    out = capsys.readouterr().out
    assert "working on e\n[e: done after" in out, "each stage's log, whole, when it ends"


def test_a_failing_stage_stops_the_others_and_is_named(tmp_path, capsys):
    events = tmp_path / "events"
    slow = {"a": 60, "b": 0.5}
    started = time.monotonic()
    with pytest.raises(StageFailed) as failed:
        run(Plan.of(NEEDS, NEEDS), 2, stage_command(events, slow, fail="b"), tmp_path / "logs", grace=5)
    assert time.monotonic() - started < 20, "a's 60 s sleep was stopped"
    exc = failed.value
    assert (exc.stage, exc.code, exc.stopped, exc.not_started) == ("b", 3, ["a"], ["c", "d", "e", "f"])
    assert str(exc).startswith(f"stage b failed (exit 3); its log is above and in {tmp_path / 'logs' / 'b.log'}")
    assert str(exc).endswith("; stopped: a; not started: c, d, e, f")
    assert "end" not in read_events(events)["a"], "a never got to its end"
    out = capsys.readouterr().out
    assert "working on b\n[b: FAILED, exit 3 after" in out
    assert "[a: stopped after" in out


# --------------------------------------------------------------------------- a DVC project without TensorFlow

TOY = {
    "a": {"cmd": "sleep 1 && echo a > a.txt", "outs": ["a.txt"]},
    "b": {"cmd": "sleep 1 && cat a.txt > b.txt && echo b >> b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    "c": {"cmd": "sleep 1 && cat a.txt > c.txt && echo c >> c.txt", "deps": ["a.txt"], "outs": ["c.txt"]},
    "d": {"cmd": "cat b.txt c.txt > d.txt", "deps": ["b.txt", "c.txt"], "outs": ["d.txt"]},
    "e": {"cmd": "sleep 1 && echo e > e.txt", "outs": ["e.txt"]},
}


def toy_project(path: Path, stages: dict) -> Path:
    path.mkdir()
    env = subprocess_env()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=path, env=env, check=True)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def lock_of(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def changed_stages(project: Path) -> set:
    """What `dvc status` says is to run."""
    proc = subprocess.run([DVC, "status", "--json"], cwd=project, env=subprocess_env(), capture_output=True, text=True,
                          check=True)
    return set(json.loads(proc.stdout))


def assert_dvc_locks_released(project: Path) -> None:
    rwlock = json.loads((project / ".dvc" / "tmp" / "rwlock").read_text())
    assert not rwlock.get("write") and not any(rwlock.get("read", {}).values()), f"DVC's locks still held: {rwlock}"


# The forked workers run in a fresh Python (a scheduler is one thread; pytest's process is not), as
# `make repro` runs them.
FORK_ONE = """
import json, os, sys, time
from pathlib import Path
from logitlab.stages.parallel import fork_dvc
args, log, env, stop_after = json.loads(sys.argv[1])
worker = fork_dvc(args, Path(log), Path.cwd() / "p", dict(os.environ, **env))
print(worker.pid, flush=True)
if stop_after:
    time.sleep(stop_after)
    os.killpg(worker.pid, 2)
print(worker.wait(), os.getcwd(), "MARK" in os.environ)
"""


def fork_one(tmp_path: Path, args: list, env: dict, stop_after: float = 0) -> tuple[list, str]:
    """`fork_dvc(args)` from a fresh scheduler in tmp_path on the project tmp_path/p: what it printed
    (the child's pid; its exit, the scheduler's cwd, whether MARK is in its environment)
    and the child's log."""
    log = tmp_path / "stage.log"
    proc = subprocess.run([PYTHON, "-c", FORK_ONE, json.dumps([args, str(log), env, stop_after])], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split(), log.read_text()


def test_a_forked_worker_runs_dvc_in_its_own_session_directory_and_environment(tmp_path):
    session = "python -c 'import os; print(os.getsid(0))' > session.txt"
    project = toy_project(tmp_path / "p", {"s": {"cmd": f"echo $MARK > s.txt && {session}", "outs": ["s.txt"]}})
    (pid, code, cwd, marked), log = fork_one(tmp_path, repro_args("s"), {"MARK": "from-the-env"})
    assert (project / "session.txt").read_text().strip() == pid, \
        "the worker's own session, its command in it: a stop reaches the command through the worker's group"
    assert code == "0" and "Running stage 's':" in log and "> echo $MARK > s.txt &&" in log, log
    assert (project / "s.txt").read_text() == "from-the-env\n"
    assert lock_of(project)["s"]["outs"][0]["path"] == "s.txt"
    assert (cwd, marked) == (str(tmp_path), "False"), "the scheduler's own directory and environment unchanged"


def test_a_forked_worker_exits_as_the_dvc_process_would_when_dvc_exits(tmp_path):
    (tmp_path / "p").mkdir()
    (_, code, _, _), log = fork_one(tmp_path, ["--help"], {})  # argparse prints the help and exits 0
    assert code == "0" and log.startswith("usage: dvc") and "Traceback" not in log, log


def test_ctrl_c_to_a_forked_worker_stops_its_command_and_releases_dvcs_locks(tmp_path):
    project = toy_project(tmp_path / "p", {"slow": {"cmd": "sleep 60 && echo > slow.txt", "outs": ["slow.txt"]}})
    started = time.monotonic()
    (_, code, _, _), log = fork_one(tmp_path, repro_args("slow"), {}, stop_after=3)
    assert time.monotonic() - started < 30, "the 60 s command was stopped"
    assert int(code) != 0 and "Running stage 'slow':" in log, log
    assert not (project / "slow.txt").exists() and changed_stages(project) == {"slow"}
    assert_dvc_locks_released(project)


def test_dvc_reads_its_yaml_with_libyaml():
    """Each worker's DVC parses dvc.yaml and dvc.lock (~77 kB for this project) with ruamel.yaml's safe
    loader: its C parser when ruamel.yaml.clib is installed (~0.06 s), else pure Python (~0.35 s)."""
    from dvc.utils.serialize._yaml import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None and YAML(typ="safe").Parser is CParser, "make setup installs ruamel.yaml.clib"
    lock = (Path(__file__).parents[1] / "dvc.lock").read_text()
    assert parse_yaml(lock, "dvc.lock") == YAML(typ="safe", pure=True).load(lock), "what pure Python reads"


def test_the_plan_leaves_no_thread_behind_to_fork_from(tmp_path):
    """DVC's progress bars start tqdm's monitor thread; forked from a process where it ran, a
    worker would miss it and whatever lock it held. (The plan, then DVC's command line loaded for
    the workers, as `make repro` does.)"""
    project = toy_project(tmp_path / "p", {"s": {"cmd": "cp in.txt s.txt", "deps": ["in.txt"], "outs": ["s.txt"]}})
    (project / "in.txt").write_text("x" * 100)
    script = ("import threading; from pathlib import Path; "
              "from logitlab.stages.parallel import dvc_pipeline, forking_possible, load_dvc_command_line; "
              "needs, changed = dvc_pipeline(Path.cwd()); load_dvc_command_line(); "
              "print(sorted(changed), [t.name for t in threading.enumerate()], forking_possible())")
    proc = subprocess.run([PYTHON, "-c", script], cwd=tmp_path / "p", env=subprocess_env(), capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "['s'] ['MainThread'] True", proc.stdout + proc.stderr


@pytest.mark.slow  # a real app or server in a subprocess
def test_dvc_project_two_workers_give_the_serial_lock_and_rerun_nothing(tmp_path):
    env = subprocess_env()
    serial, parallel = toy_project(tmp_path / "serial", TOY), toy_project(tmp_path / "parallel", TOY)
    subprocess.run([*PARALLEL, "--jobs", "1"], cwd=serial, env=env, check=True, capture_output=True)
    first = subprocess.run([*PARALLEL, "--jobs", "2"], cwd=parallel, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert lock_of(parallel) == lock_of(serial), "entry by entry"
    assert first.stdout.count("Running stage") == len(TOY)
    assert first.stdout.count("git add") == 1, "DVC's closing hint once"
    again = subprocess.run([*PARALLEL, "--jobs", "2"], cwd=parallel, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "Data and pipelines are up to date.\n", again.stdout + again.stderr
    assert not any(word in first.stdout + first.stderr for word in LOCK_ERRORS)


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow  # a real app or server in a subprocess
@pytest.mark.parametrize("start", ["foreground", "sigint ignored"])
def test_dvc_project_a_planted_failure_stops_the_other_worker(tmp_path, start):
    """`sigint ignored`: make repro started as a script starts a command in the background (`make
    repro &`), SIGINT ignored and passed on through exec; the stop must still reach the stages."""
    stages = {"slow": {"cmd": "echo started > started.txt && sleep 60 && echo > slow.txt", "outs": ["slow.txt"]},
              # fails once slow's command runs: a stop then meets DVC running a command, not in its own checks
              "broken": {"cmd": "while [ ! -f started.txt ]; do sleep 0.1; done; sleep 1 && "
                                "python -c \"import sys; sys.exit('planted failure')\""},
              "after": {"cmd": "echo > after.txt", "deps": ["slow.txt"], "outs": ["after.txt"]}}
    project = toy_project(tmp_path / "p", stages)
    started = time.monotonic()
    proc = subprocess.run([*PARALLEL, "--jobs", "2"], cwd=project, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=_sigint_ignored if start == "sigint ignored" else None)
    assert time.monotonic() - started < GRACE_S - 5, "slow stopped by SIGINT, not killed after the grace period"
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m logitlab.stages.parallel: error: stage broken failed (exit 255); its log is above and in "
        ".dvc/tmp/repro/broken.log; stopped: slow; not started: after")
    assert "planted failure" in proc.stdout and "[broken: FAILED, exit 255 after" in proc.stdout
    assert (project / "started.txt").exists() and not (project / "slow.txt").exists(), "stopped, nothing half-written"
    assert changed_stages(project) == {"slow", "broken", "after"}, "no stage recorded as done"
    assert_dvc_locks_released(project)


@pytest.mark.parametrize("args, message", [
    (["--jobs", "x"], "--jobs must be a positive whole number, got 'x'"),
    (["--jobs", "0"], "--jobs must be a positive whole number, got '0'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_usage_mistake_is_one_line(args, message):
    proc = subprocess.run([*PARALLEL, *args], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 2
    usage = "usage: python -m logitlab.stages.parallel [--jobs N]"
    assert proc.stderr == f"python -m logitlab.stages.parallel: error: {message} ({usage})\n"


def test_the_scheduler_imports_neither_tensorflow_nor_mlflow():
    script = ("import sys, logitlab.stages.parallel; "
              "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=subprocess_env(), check=True)
    assert proc.stdout.strip() == "[]"


def test_each_worker_gets_its_share_of_the_cores_unless_its_threads_are_set(monkeypatch):
    from logitlab.stages import cores

    monkeypatch.setattr(cores, "cores", lambda: 8)
    env = cores.worker_env(2, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "4"}
    assert cores.worker_env(3, {})["TF_NUM_INTRAOP_THREADS"] == "2"
    assert cores.worker_env(16, {})["TF_NUM_INTEROP_THREADS"] == "1", "one thread at least"
    assert cores.worker_env(2, {"TF_NUM_INTRAOP_THREADS": "3"})["TF_NUM_INTRAOP_THREADS"] == "3", "the user's"


def test_tensorflow_in_a_worker_keeps_to_its_share():
    """TensorFlow reads the thread counts from the environment (its Python API does not report them):
    a worker given one thread uses at most one core's time for a matmul that would take every core."""
    script = ("import os, time, tensorflow as tf\n"
              "a = tf.random.normal((1500, 1500)); tf.matmul(a, a)\n"
              "start, before = time.perf_counter(), os.times()\n"
              "for _ in range(20): b = tf.matmul(a, a)\n"
              "b.numpy(); after = os.times()\n"
              "print((after.user + after.system - before.user - before.system) / (time.perf_counter() - start))")
    env = subprocess_env(**{name: "1" for name in THREAD_VARIABLES})
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert float(proc.stdout.split()[-1]) < 1.2, "one thread's CPU time per second of wall clock, at most"


# --------------------------------------------------------------------------- the registry's aliases

def test_aliases_crowned_at_once_by_several_processes_end_as_in_series(tmp_path, monkeypatch):
    """Eight registrations at once (threads, each its own lock file handle: flock serializes them as
    it does processes), the best one's alias set last, against a registry slow to answer: without the
    lock, a crowning that read the aliases before the best was set writes @champion after it."""
    import mlflow

    from logitlab.serving import registry

    class Registry:  # just what register() and crown() ask of MLflow's client
        def __init__(self):
            self.aliases, self.tags, self.guard = {}, {}, threading.Lock()

        def create_registered_model(self, name, description=""):
            pass

        def create_model_version(self, name, *, tags, **kwargs):
            with self.guard:
                version = str(len(self.tags) + 1)
                self.tags[version] = dict(tags)
            return type("Version", (), {"version": version})

        def set_registered_model_alias(self, name, alias, version):
            time.sleep(0.1 if alias == "h5" else 0.01)  # the best head comes a little later
            self.aliases[alias] = version

        def get_registered_model(self, name):
            aliases = dict(self.aliases)
            time.sleep(0.05 if "h5" in aliases else 0.2)  # a crowning without h5 writes after h5's
            return type("Model", (), {"aliases": aliases})

        def get_model_version(self, name, version):
            return type("Version", (), {"tags": self.tags[version]})

        def get_logged_model(self, model_id):
            return type("LoggedModel", (), {"tags": {}})

        def set_logged_model_tags(self, model_id, tags):
            pass

    fake = Registry()
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: fake)
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: f"sqlite:///{tmp_path / 'mlflow.db'}")
    losses = {f"h{i}": 1.0 + i / 10 for i in range(8)}
    losses["h5"] = 0.5  # the best: registered in the middle

    from logitlab.model.heads import Head

    def register(name):
        metrics = {"test_loss": losses[name], "test_accuracy": 0.5, "test_loss_f64": losses[name]}
        registry.register(f"m-{name}", "run", dataset="blobs", task="multiclass", layers=[25, 15], activation="relu",
                          head=Head(name, from_logits=True),
                          trainer="fit", variant=f"blobs-{name}", metrics=metrics)

    threads = [threading.Thread(target=register, args=(h,)) for h in losses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(fake.aliases) == {*losses, "champion"}
    assert fake.tags[fake.aliases["champion"]]["logitlab.variant"] == "blobs-h5"
    assert (tmp_path / "mlflow.db.aliases.lock").exists(), "the lock file sits beside the store"


# --------------------------------------------------------------------------- the real pipeline, small

VARIANTS = {f"{d}-{h}" for d in ("mnist", "blobs") for h in ("softmax", "logit")} | {
    "mnist-binary-logit", "blobs-binary-logit", "blobs-logit-gradient_tape"}
def masked(lock: dict) -> dict:
    """dvc.lock's entries with the hashes of the model folders left out: Keras writes the time of
    saving into model.keras (metadata.json's date_saved), so no two runs, serial or not, agree on
    them. The models' outputs are compared array by array instead."""
    def entry(e):
        if str(e.get("path", "")).split("/")[0] == "models":
            return {k: v for k, v in e.items() if k not in ("md5", "size")}
        return e
    return {stage: {k: [entry(e) for e in v] if k in ("deps", "outs") else v for k, v in fields.items()}
            for stage, fields in lock.items()}


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline from nothing (no data, no dvc.lock, no outputs, no tracking store): the
    session's serial run (`dvc repro`), and with two workers in another copy of the same project."""
    parallel = tmp_path_factory.mktemp("parallel") / "parallel"
    shutil.copytree(tiny_pipeline["base"], parallel, symlinks=True)
    parallel_run, parallel_s = repro(parallel, 2)
    serial_s = tiny_pipeline["serial_s"]
    print(f"\ntiny pipeline from nothing: --jobs 1 {serial_s:.1f} s, --jobs 2 {parallel_s:.1f} s "
          f"({parallel_s / serial_s:.2f}x)", file=sys.stderr)
    return {"serial": tiny_pipeline["serial"], "parallel": parallel, "serial_run": tiny_pipeline["serial_run"],
            "parallel_run": parallel_run, "serial_s": serial_s, "parallel_s": parallel_s}


def aliases(project: Path) -> dict:
    """Each registered model's aliases, by the variant of the version each points at (version
    numbers follow the order the stages registered in, which a parallel run does not fix)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = {}
    for model in client.search_registered_models():
        found[model.name] = {alias: client.get_model_version(model.name, v).tags["logitlab.variant"]
                             for alias, v in model.aliases.items()}
    return found


@pytest.mark.slow
def test_two_workers_give_what_a_serial_run_gives(pipelines):
    serial, parallel = pipelines["serial"], pipelines["parallel"]
    out = pipelines["parallel_run"].stdout + pipelines["parallel_run"].stderr
    assert pipelines["parallel_run"].stdout.count("Running stage") == 4 + len(VARIANTS) + 1, out[-4000:]
    for proc in (pipelines["serial_run"], pipelines["parallel_run"]):
        text = proc.stdout + proc.stderr
        assert not [e for e in LOCK_ERRORS if e in text], text[-4000:]
        assert "ERROR" not in text, text[-4000:]

    a, b = masked(lock_of(serial)), masked(lock_of(parallel))
    assert sorted(a) == sorted(b)
    for stage in a:
        assert b[stage] == a[stage], stage

    for folder in ("metrics", "history", "predictions"):
        names = sorted(p.name for p in (serial / folder).iterdir())
        assert names == sorted(p.name for p in (parallel / folder).iterdir()) and len(names) == len(VARIANTS)
        for name in names:
            assert (parallel / folder / name).read_bytes() == (serial / folder / name).read_bytes(), f"{folder}/{name}"
    assert (parallel / "report" / "summary.csv").read_bytes() == (serial / "report" / "summary.csv").read_bytes()
    import numpy as np

    for variant in VARIANTS:
        with np.load(serial / "models" / variant / "outputs.npz") as x, np.load(parallel / "models" / variant /
                                                                                 "outputs.npz") as y:
            assert sorted(x.files) == sorted(y.files)
            for key in x.files:
                assert np.array_equal(x[key], y[key]), f"{variant} {key}: bit for bit"

    runs = runs_of(f"sqlite:///{parallel / 'mlflow.db'}")
    trained = [r for r in runs if "logitlab.variant" in r.data.tags]
    assert sorted(r.info.run_name for r in trained) == sorted(VARIANTS), "one run per variant"
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in trained:
        metrics = json.loads((parallel / "metrics" / f"{r.info.run_name}.json").read_text())
        assert metrics["test_loss"] == r.data.metrics["test_loss"]
    assert aliases(parallel) == aliases(serial)
    assert {name: set(a) for name, a in aliases(parallel).items()} == {
        "logitlab-mnist-25-15-relu": {"softmax", "logit", "champion"},
        "logitlab-blobs-25-15-relu": {"softmax", "logit", "logit_gradient_tape", "champion"},
        "logitlab-mnist-binary-25-15-relu": {"logit", "champion"},
        "logitlab-blobs-binary-25-15-relu": {"logit", "champion"}}

    again, _ = repro(parallel, 2)
    assert again.stdout == "Data and pipelines are up to date.\n", "a second make repro runs nothing"
    assert changed_stages(parallel) == set()


# Fails 1 s after a train stage's command has started in this project: the stage is then importing
# TensorFlow (seconds), so it is stopped before it writes anything, however loaded the machine.
PLANTED_AFTER_TRAIN_STARTS = (  # one line: DVC runs each line of a cmd as a command of its own
    "python -c \"import os, sys, time, psutil; "
    "started = lambda: any('pipelines/train.py' in ' '.join(p.info['cmdline'] or []) and p.info['cwd'] == os.getcwd() "
    "for p in psutil.process_iter(['cmdline', 'cwd'])); "
    "[time.sleep(0.05) for _ in iter(started, True)]; time.sleep(1); sys.exit('planted failure')\"")


@pytest.mark.slow
def test_a_planted_failing_stage_stops_the_running_train_stage(pipelines):
    """After the two-worker run: a train stage to redo (its metrics file gone) and a planted stage
    that fails; the train stage is stopped, nothing of it half-written, DVC's locks released, and
    the stage is still to redo."""
    project = pipelines["parallel"]
    dvc_yaml = project / "dvc.yaml"
    original = dvc_yaml.read_text()
    stages = yaml.safe_load(original)
    stages["stages"]["planted"] = {"cmd": PLANTED_AFTER_TRAIN_STARTS, "deps": ["params.yaml"]}
    dvc_yaml.write_text(yaml.safe_dump(stages, sort_keys=False))
    (project / "metrics" / "blobs-logit.json").unlink()
    runs_before = len(runs_of(f"sqlite:///{project / 'mlflow.db'}"))

    proc = subprocess.run([*PARALLEL, "--jobs", "2"], cwd=project, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m logitlab.stages.parallel: error: stage planted failed (exit 255); its log is above and in "
        ".dvc/tmp/repro/planted.log; stopped: train@blobs-logit; not started: report")
    assert "planted failure" in proc.stdout and "[train@blobs-logit: stopped after" in proc.stdout
    assert not (project / "metrics" / "blobs-logit.json").exists(), "the stopped stage wrote nothing"
    leftover = [p.name for p in (project / "metrics").iterdir() if not p.name.endswith(".json")]
    assert not leftover, leftover
    runs = runs_of(f"sqlite:///{project / 'mlflow.db'}")
    assert "RUNNING" not in {r.info.status for r in runs}, "a run it had opened ended KILLED"
    assert len(runs) - runs_before <= 1

    assert_dvc_locks_released(project)
    dvc_yaml.write_text(original)
    assert changed_stages(project) == {"train@blobs-logit", "report"}, "the next make repro redoes the stopped stage"
