"""MNIST: fetched from the first configured source that delivers the canonical arrays (uint8
images (N, 28, 28), uint8 labels, every array's sha256 pinned in conf/datasets/mnist.yaml), then
flattened to 784 features and scaled to [0, 1]."""

from __future__ import annotations

import gzip
import hashlib
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.data.dataset import Dataset, Drawing
from logitlab.data.sources import (
    DEFAULT_FORMAT,
    SOURCE_FAILURES,
    SOURCE_TYPES,
    SourceError,
    restricted_unpickle,
)
from logitlab.errors import UserError
from logitlab.files import load_arrays, save_arrays
from logitlab.schema.check import positive

log = logging.getLogger(__name__)

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
REMAKE_RAW = "dvc repro -f fetch@mnist"


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


def _load_format(path: Path, fmt: str) -> dict[str, np.ndarray]:
    if fmt == "keras_npz":
        return _from_keras_npz(path)
    if fmt == "pickle_gz":
        return _from_pickle_gz(path.read_bytes())
    raise SourceError(f"unknown format {fmt!r}; valid: keras_npz, pickle_gz")


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
                path = SOURCE_TYPES[kind](source, Path(workdir), float(fetch.get("timeout_s", 30)))
                arrays = _load_format(path, source.get("format") or DEFAULT_FORMAT[kind])
                check_mnist_arrays(arrays)
                _check_array_digests(arrays, fetch.get("array_sha256"))
            except SOURCE_FAILURES as exc:
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


def preprocess_mnist(settings: Mapping[str, Any], raw: Path) -> dict[str, np.ndarray]:
    arrays = load_arrays(raw, MNIST_KEYS, remake=REMAKE_RAW)
    try:
        check_mnist_arrays(arrays)
    except SourceError as exc:
        raise UserError(f"{raw} is not canonical MNIST: {exc}; remake it: {REMAKE_RAW}") from exc
    scale = settings["scale"]  # > 0, as logitlab.schema checked it
    out = {}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        out[f"x_{split}"] = x.reshape(len(x), -1).astype(np.float32) / np.float32(scale)
        out[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int32)
    n_train = len(out["x_train"])  # fetched as the training set, then the test set
    out["i_train"] = np.arange(n_train, dtype=np.int64)
    out["i_test"] = np.arange(n_train, n_train + len(out["x_test"]), dtype=np.int64)
    return out


@dataclass
class MnistFetch:
    sources: list[Any] = field(default_factory=list)            # tried in order (logitlab.data.sources)
    timeout_s: float = 30.0
    array_sha256: dict[str, Any] | None = field(default_factory=dict)  # each canonical array's sha256; null: unchecked


@dataclass
class MnistPreprocess:
    scale: float = 255.0


class Mnist(Dataset):
    """conf/datasets/mnist.yaml: `_target_: logitlab.data.mnist.Mnist`."""

    Fetch, Preprocess = MnistFetch, MnistPreprocess

    def check(self) -> None:
        positive(self.fetch_settings.timeout_s, f"datasets.{self.name}.fetch.timeout_s")
        positive(self.preprocess_settings.scale, f"datasets.{self.name}.preprocess.scale")

    def fetch(self, target: Path) -> str:
        return fetch_mnist(asdict(self.fetch_settings), target)

    def preprocess(self, raw: Path) -> dict[str, np.ndarray]:
        return preprocess_mnist(asdict(self.preprocess_settings), raw)

    def drawing(self) -> Drawing:
        return Drawing.image(28, 28)
