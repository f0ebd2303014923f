"""Files the pipeline writes and reads: written atomically, read with a clear word when damaged.

Every file is written to a temporary name beside its target, then renamed into place: a failed or
interrupted stage never leaves a partial file at an output path. A file that cannot be read (missing,
truncated, not what it should be) is a UserError naming the file and the DVC command that remakes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from logitlab.errors import UserError, first_line

# A variant's model folder: its Keras model, and every test output with the decision grid (2-D inputs).
MODEL_FILE, OUTPUTS_FILE = "model.keras", "outputs.npz"
# What reading a damaged .npz, .json or .keras file raises.
DAMAGED = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` (same suffix), renamed onto it only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_UMASK)  # as open() would create it, not mkstemp's owner-only 0600
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> Path:
    """`payload` as indented JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def save_arrays(target: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Uncompressed .npz, written atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def require(path: Path, remake: str) -> Path:
    """`path`, or a UserError naming the command that makes it."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run its stage first: {remake.replace(' -f ', ' ')}")
    return path


def damaged(path: Path, exc: BaseException, remake: str) -> UserError:
    """The one line for a file that exists but cannot be read."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"{path} is damaged ({reason[:200]}); remake it: {remake}")


# SQLite's result codes for a file that is no database (SQLITE_NOTADB) and for one whose pages are
# broken (SQLITE_CORRUPT; its extended codes share the low byte).
SQLITE_NOTADB, SQLITE_CORRUPT = 26, 11


def sqlite_damage(exc: BaseException) -> str | None:
    """SQLite's word, if `exc` or what caused it (SQLAlchemy and MLflow wrap it) is SQLite finding
    that a file is no database or a damaged one ("file is not a database", "database disk image is
    malformed"); None for any other error: a locked or busy database is not damaged."""
    import sqlite3

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlite_errorcode", -1) & 0xFF
        if isinstance(current, sqlite3.DatabaseError) and code in (SQLITE_NOTADB, SQLITE_CORRUPT):
            return first_line(current)
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return None


def check_sqlite(path: Path, remake: str) -> None:
    """A UserError naming `path` and `remake` if the SQLite file there is no database or a damaged one,
    by SQLite's quick_check (every page is read: meant for small files, such as an optuna study's). No
    file is no damage; a check that cannot run (the file locked by a writer) is left to the file's user."""
    import sqlite3

    if not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            problems = [line for (row,) in db.execute("PRAGMA quick_check") for line in str(row).splitlines()]
    except sqlite3.DatabaseError as exc:
        if sqlite_damage(exc) is None:
            return
        raise damaged(path, exc, remake) from None
    if problems != ["ok"]:  # e.g. "*** in database main ***", "Page 15: btreeInitPage() returns error code 11"
        found = [line for line in problems if not line.startswith("***")] or ["SQLite's quick_check failed"]
        raise damaged(path, ValueError(found[0]), remake)


def load_arrays(path: Path, keys: tuple[str, ...], *, remake: str) -> dict[str, np.ndarray]:
    """Arrays from an .npz this pipeline wrote; a missing, truncated or incomplete file names `remake`,
    the command that makes it again (e.g. `dvc repro -f preprocess@mnist`)."""
    require(path, remake)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{path} lacks arrays {missing}; remake it: {remake}")
            return {k: npz[k] for k in keys}
    except DAMAGED as exc:
        raise damaged(path, exc, remake) from None


def read_json(path: Path, *, remake: str) -> Any:
    require(path, remake)
    try:
        return json.loads(path.read_text())
    except DAMAGED as exc:
        raise damaged(path, exc, remake) from None


def read_tsv(path: Path, columns: tuple[str, ...], *, remake: str) -> Any:
    """A tab-separated table this pipeline wrote, as a DataFrame with at least `columns`."""
    import pandas as pd

    require(path, remake)
    try:
        table = pd.read_csv(path, sep="\t")
        missing = [c for c in columns if c not in table]
        if missing:
            raise ValueError(f"no column {missing[0]!r}")
        return table
    except (*DAMAGED, pd.errors.ParserError) as exc:
        raise damaged(path, exc, remake) from None
