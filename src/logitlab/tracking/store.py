"""The MLflow store: one per project (SQLite at the project root unless told otherwise), one
experiment, and every call to it bounded: a busy store is retried a few times, one that stays
unreachable becomes one StoreUnavailable line instead of a hang or a silent loss."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from logitlab.errors import StoreDamaged, StoreUnavailable, first_line, redact_text
from logitlab.files import sqlite_damage

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
ENV_URI = "MLFLOW_TRACKING_URI"
# Where `dvc exp run --queue` runs an experiment: a temporary copy of the project inside it.
DVC_EXP_TMP = (".dvc", "tmp", "exps")

T = TypeVar("T")


def project_root(root: Path) -> Path:
    """`root`, or the project whose `.dvc/tmp/exps/` holds it: a queued DVC experiment runs in such a
    temporary copy, and its runs belong in the project's own store, not in a folder DVC deletes."""
    parts = root.resolve().parts
    for i in range(len(parts) - len(DVC_EXP_TMP), 0, -1):
        if parts[i:i + len(DVC_EXP_TMP)] == DVC_EXP_TMP:
            return Path(*parts[:i])
    return root


def tracking_uri(tracking: Any, root: Path) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db (what `mlflow ui` there reads)."""
    return tracking.uri or os.environ.get(ENV_URI) or f"sqlite:///{(project_root(root) / DEFAULT_DB).resolve()}"


def client_limits(tracking: Any) -> tuple[int, float]:
    """Bound MLflow's own HTTP retries (by default 7 retries with backoff 2 and a 120 s timeout: minutes
    before a dead server is reported); returns (retries, backoff seconds) for the store calls here."""
    retries, backoff, timeout = tracking.retries, float(tracking.backoff_s), tracking.timeout_s
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(max(1, round(backoff)))  # MLflow takes whole seconds
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    return retries, backoff


_limits = {"retries": 3, "backoff": 1.0}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (its query string dropped), None for any other store."""
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


def store_damaged(uri: str, reason: str) -> StoreDamaged:
    """The one line for a SQLite store that is no database or a damaged one. No stage reads the store
    to make its outputs, so a new store loses only the runs: the pipeline's are recorded again."""
    db = sqlite_path(uri) or redact_text(uri)
    return StoreDamaged(f"tracking store {db} is damaged ({reason[:200]}); remake it: move it aside, then "
                        "dvc repro -f records the pipeline's runs in a new store")


# Two writers inserting the same row at once: MLflow checks, then inserts (concurrent jobs logging
# one dataset to a server on PostgreSQL collide on "dataset_pk"); asked again, it finds the row.
INSERT_RACES = ("duplicate key value violates unique constraint", "unique constraint failed", "duplicate entry")


def _busy(exc: BaseException) -> bool:
    """A store that may answer if asked again: SQLite locked, a database briefly unavailable, an
    insert that lost a race to another writer."""
    text = str(exc).lower()
    return "locked" in text or "temporarily_unavailable" in text or "deadlock" in text or (
        getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE") or any(race in text for race in INSERT_RACES)


def store_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) against the tracking store: a busy store is retried with exponential backoff
    (tracking.retries times); one that still fails is a StoreUnavailable naming the store, never a hang.
    A damaged SQLite file is a StoreDamaged at once. (MLflow's HTTP client retries connection errors
    itself, within the same bounds.)"""
    import mlflow
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    failures = (MlflowException, requests.RequestException, OSError, sqlalchemy.exc.SQLAlchemyError)
    retries, backoff = _limits["retries"], _limits["backoff"]
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except failures as exc:
            damage = sqlite_damage(exc)
            if damage:
                raise store_damaged(mlflow.get_tracking_uri(), damage) from exc
            if _busy(exc) and attempt < retries:
                delay = backoff * 2 ** attempt
                log.warning("tracking store busy (%s), retry %d of %d in %.1fs", what, attempt + 1, retries, delay)
                time.sleep(delay)
                continue
            first = redact_text(first_line(exc))
            tries = f" after {attempt + 1} attempts" if attempt else ""
            raise StoreUnavailable(f"tracking store {redact_text(mlflow.get_tracking_uri())} failed to {what}{tries}: "
                                   f"{first[:300]}") from exc
    raise AssertionError("unreachable")


# A SQLite store stays in SQLite's default (rollback journal) mode. WAL mode saved ~15 ms of a
# tracked run's commits, within this machine's drift, but its -wal and -shm files belong to the
# database they sit beside: a store moved aside (the README's advice for a damaged one, and the
# pipeline test's "no store") while any process still had it open left them to the new store,
# which then failed with "disk I/O error"; and a process that exits without closing its
# connections (these processes freeze their objects at exit) leaves its commits in the -wal file.
def setup(tracking: Any, root: Path, create: bool = True) -> str | None:
    """Point MLflow at the project's store and experiment; returns the experiment id. The store is
    asked once per process (and again when another store or experiment was set up meanwhile).

    With `create=False` (a command that only reads), a store or experiment that does not exist yet is
    not made: None, and no SQLite file (nor its lock file) is created, since asking would create it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _limits["retries"], _limits["backoff"] = client_limits(tracking)
    uri = tracking_uri(tracking, root)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; put the user's value back, or the
    # next job of a multirun in this process would take this job's store for the user's choice.
    user_env = os.environ.get(ENV_URI)
    mlflow.set_tracking_uri(uri)
    if user_env is None:
        os.environ.pop(ENV_URI, None)
    else:
        os.environ[ENV_URI] = user_env
    _quiet_store_tracebacks()
    if redact_text(uri) != uri:  # MLflow prints "View run at <tracking URI>/...", credentials included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    name = tracking.experiment
    if _active.get("experiment") == (uri, name):  # a later job of a sweep, or the report after training in one process
        return _active["experiment_id"]
    db = sqlite_path(uri)
    if not create and db is not None and not db.is_file():
        return None
    with _first_use_lock(uri) if create else contextlib.nullcontext():
        experiment = store_call("open experiment " + repr(name), mlflow.get_experiment_by_name, name)
        if experiment is None and not create:
            return None
        if experiment is None:
            # A SQLite store keeps its artifacts beside the DB file; a server decides for itself.
            location = (db.parent / ARTIFACTS_DIR).resolve().as_uri() if db is not None else None
            try:
                mlflow.create_experiment(name, artifact_location=location,
                                         tags={"mlflow.experimentKind": "custom_model_development"})
            except MlflowException as exc:  # created meanwhile by a concurrent job, or the store failed
                if _busy(exc):
                    raise
            experiment = store_call("open experiment " + repr(name), mlflow.get_experiment_by_name, name)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    _active.update(experiment=(uri, name), experiment_id=experiment.experiment_id)
    return experiment.experiment_id


# The store and experiment `setup` made active in this process: each job of an in-process sweep
# (and evaluate after train) would otherwise ask the store for the experiment again.
_active: dict[str, Any] = {}


def _first_use_lock(uri: str) -> contextlib.AbstractContextManager:
    """Serialize the first use of a SQLite store between processes: two jobs that both find no
    database would both create MLflow's tables ("table ... already exists")."""
    db = sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(db.with_name(db.name + ".lock"))


class _NoTraceback(logging.Filter):
    """MLflow's SQL store logs each locked-database error with a full traceback before raising it;
    store_call retries or reports it in one line, so keep the message and drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        record.msg, record.args = str(record.getMessage()).splitlines()[0], ()
        return True


def _quiet_store_tracebacks() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoTraceback) for f in logger.filters):
        logger.addFilter(_NoTraceback())


def runs_link(experiment_id: str) -> str:
    """Where the runs table is (MLflow 3 opens experiments in its GenAI view otherwise): on the
    tracking server in use, without credentials, or where `mlflow ui` serves a local store."""
    from urllib.parse import urlsplit

    import mlflow

    parts = urlsplit(mlflow.get_tracking_uri())
    base = (f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path.rstrip("/")
            if parts.scheme in ("http", "https") else "http://127.0.0.1:5000")
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
