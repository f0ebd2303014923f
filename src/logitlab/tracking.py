"""MLflow: one store per project (SQLite at the project root unless told otherwise), one experiment.

Every run this project starts goes through `tracked_run`, which
- tags it with the process that owns it (`logitlab.host`, `logitlab.pid`, `logitlab.process_start`),
  so that the next stage start can tell a run whose process died (SIGKILL, OOM) from a live one and
  mark it KILLED (`reap_stale`);
- ends it FINISHED, FAILED (an error, a diverged loss) or KILLED (SIGTERM, Ctrl-C), with the reason
  in `logitlab.status_reason`;
- retries a busy store (SQLite locked) a bounded number of times, and turns a store that stays
  unreachable into one clear StoreUnavailable line instead of a hang or a silent loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from logitlab.errors import Diverged, Interrupted, StoreUnavailable, first_line

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
RUN_FILE = "run.json"
ENV_URI = "MLFLOW_TRACKING_URI"
# Where `dvc exp run --queue` runs an experiment: a temporary copy of the project inside it.
DVC_EXP_TMP = (".dvc", "tmp", "exps")

TAG_HOST, TAG_PID, TAG_START = "logitlab.host", "logitlab.pid", "logitlab.process_start"
TAG_REASON, TAG_EPOCH = "logitlab.status_reason", "logitlab.failed_epoch"

T = TypeVar("T")


# --------------------------------------------------------------------------- the store


def project_root(root: Path) -> Path:
    """`root`, or the project whose `.dvc/tmp/exps/` holds it: a queued DVC experiment runs in such a
    temporary copy, and its runs belong in the project's own store, not in a folder DVC deletes."""
    parts = root.resolve().parts
    for i in range(len(parts) - len(DVC_EXP_TMP), 0, -1):
        if parts[i:i + len(DVC_EXP_TMP)] == DVC_EXP_TMP:
            return Path(*parts[:i])
    return root


def tracking_uri(tracking: Mapping[str, Any], root: Path) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db (what `mlflow ui` there reads)."""
    return tracking.get("uri") or os.environ.get(ENV_URI) or f"sqlite:///{(project_root(root) / DEFAULT_DB).resolve()}"


def _client_limits(tracking: Mapping[str, Any]) -> tuple[int, float]:
    """Bound MLflow's own HTTP retries (by default 7 retries with backoff 2 and a 120 s timeout: minutes
    before a dead server is reported); returns (retries, backoff seconds) for the store calls here."""
    from logitlab.config import non_negative_int, positive_float, positive_int

    retries = non_negative_int(tracking.get("retries", 3), "tracking.retries")
    backoff = positive_float(tracking.get("backoff_s", 1), "tracking.backoff_s")
    timeout = positive_int(tracking.get("timeout_s", 10), "tracking.timeout_s")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(max(1, round(backoff)))  # MLflow takes whole seconds
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    return retries, backoff


_limits = {"retries": 3, "backoff": 1.0}


def _busy(exc: BaseException) -> bool:
    """A store that may answer if asked again: SQLite locked, a database briefly unavailable."""
    text = str(exc).lower()
    return "locked" in text or "temporarily_unavailable" in text or "deadlock" in text or (
        getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE")


def store_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) against the tracking store: a busy store is retried with exponential backoff
    (tracking.retries times); one that still fails is a StoreUnavailable naming the store, never a hang.
    (MLflow's HTTP client retries connection errors itself, within the same bounds.)"""
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
            if _busy(exc) and attempt < retries:
                delay = backoff * 2 ** attempt
                log.warning("tracking store busy (%s), retry %d of %d in %.1fs", what, attempt + 1, retries, delay)
                time.sleep(delay)
                continue
            first = redact_text(first_line(exc))
            tries = f" after {attempt + 1} attempts" if attempt else ""
            raise StoreUnavailable(f"tracking store {redact(mlflow.get_tracking_uri())} failed to {what}{tries}: "
                                   f"{first[:300]}") from exc
    raise AssertionError("unreachable")


class RunLog:
    """A run's params and metrics, sent without waiting for the store (MLflow's async logging:
    training goes on while a background thread writes), and every write checked by `flush`: a failed
    write is sent again synchronously with store_call's bounded retries, so nothing vanishes silently
    (as with mlflow.keras.MlflowCallback) and a store that stays down fails the run."""

    def __init__(self, run_id: str) -> None:
        import mlflow

        # MLflow's writer thread otherwise waits on its queue with a 1 s timeout, and ending the run
        # waits for that thread: ~1 s lost per run. Buffering, it sleeps on an event that ending (and
        # flush) sets at once, and merges what arrived meanwhile into one write.
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
        self.run_id = run_id
        self._client = mlflow.MlflowClient()
        self._pending: list[tuple[str, dict[str, list[Any]], Any]] = []

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.log_batch(f"log step {step} metrics", metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # the most one MLflow batch takes
            self.log_batch("log params", params=items[start:start + 100])

    def log_batch(self, what: str, metrics: list[Any] = (), params: list[Any] = ()) -> None:
        batch = {"metrics": list(metrics), "params": list(params)}
        operations = store_call(what, self._client.log_batch, self.run_id, **batch, synchronous=False)
        self._pending.append((what, batch, operations))

    def flush(self) -> None:
        """Wait for every write sent so far; resend the failed ones synchronously."""
        import mlflow
        from mlflow.exceptions import MlflowException

        pending, self._pending = self._pending, []
        if pending:
            mlflow.flush_async_logging()  # write what is buffered now rather than at the next wake-up
        for what, batch, operations in pending:
            try:
                operations.wait()
            except MlflowException as exc:
                log.warning("tracking store: async write failed (%s): %s; writing again",
                            what, redact_text(first_line(exc))[:300])
                store_call(what, self._client.log_batch, self.run_id, **batch)


def setup(tracking: Mapping[str, Any], root: Path) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id. The store is
    asked once per process (and again when another store or experiment was set up meanwhile)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _limits["retries"], _limits["backoff"] = _client_limits(tracking)
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
    if redact(uri) != uri:  # MLflow prints "View run at <tracking URI>/...", credentials included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    name = tracking["experiment"]
    if _active.get("experiment") == (uri, name):  # a later job of a sweep, or evaluate after train
        return _active["experiment_id"]
    with _first_use_lock(uri):
        experiment = store_call("open experiment " + repr(name), mlflow.get_experiment_by_name, name)
        if experiment is None:
            # A SQLite store keeps its artifacts beside the DB file; a server decides for itself.
            location = None
            if uri.startswith("sqlite:///"):
                location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).resolve().as_uri()
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


@contextlib.contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """Serialize the first use of a SQLite store between processes: two jobs that both find no
    database would both create MLflow's tables ("table ... already exists")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def open_store(tracking: Mapping[str, Any], root: Path, found_by: str) -> str:
    """What every stage that talks to the store does first: point MLflow at it (a clear error within
    seconds if it does not answer) and mark KILLED the runs that dead processes left RUNNING."""
    experiment_id = setup(tracking, root)
    reap_stale(experiment_id, found_by)
    return experiment_id


def runs_link(experiment_id: str) -> str:
    """Where the runs table is (MLflow 3 opens experiments in its GenAI view otherwise): on the
    tracking server in use, without credentials, or where `mlflow ui` serves a local store."""
    import mlflow
    from urllib.parse import urlsplit

    parts = urlsplit(mlflow.get_tracking_uri())
    base = (f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path.rstrip("/")
            if parts.scheme in ("http", "https") else "http://127.0.0.1:5000")
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


# --------------------------------------------------------------------------- run files


def write_json(path: Path, payload: Any) -> Path:
    """`payload` as indented JSON, written atomically (the run file, a sweep's bookkeeping)."""
    from logitlab.data import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_run_file(run_dir: Path, info: Mapping[str, Any]) -> Path:
    return write_json(run_dir / RUN_FILE, dict(info))


def read_run_file(run_dir: Path, stage_hint: str) -> dict[str, Any]:
    from logitlab.errors import UserError

    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; train first: dvc repro {stage_hint}")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- runs and their processes


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a live process (None: no such process, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else fields[19]


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_START: _process_start(pid) or ""}


def process_alive(pid: str | None, start: str | None) -> bool:
    """Is the process that tagged a run still that same process (not a dead one whose pid was reused)?"""
    if not pid or not pid.isdigit():
        return True  # not ours to judge
    if Path("/proc/self/stat").exists():
        current = _process_start(int(pid))
        return current is not None and (not start or current == start)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(experiment_id: str, found_by: str) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owning process on this host is gone.

    Runs of other hosts are left alone: only their own host can tell whether they still live."""
    import mlflow

    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = store_call("search running runs", client.search_runs, [experiment_id],
                         filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
                         max_results=1000)
    reaped = []
    for run in running:
        tags = run.data.tags
        if process_alive(tags.get(TAG_PID), tags.get(TAG_START)):
            continue
        reason = (f"its process {tags.get(TAG_PID)} on {host} ended without closing the run "
                  f"(killed, e.g. SIGKILL or out of memory); marked KILLED by {found_by}")
        store_call("mark a stale run", client.set_tag, run.info.run_id, TAG_REASON, reason)
        store_call("mark a stale run", client.set_terminated, run.info.run_id, "KILLED")
        log.warning("run %s (%s) was left RUNNING by a dead process: marked KILLED", run.info.run_id, run.info.run_name)
        reaped.append(run.info.run_id)
    return reaped


_pending: dict[str, str | None] = {"signal": None}


@contextlib.contextmanager
def interrupts_end_the_run() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise Interrupted (a KeyboardInterrupt). The signal is
    also remembered, and `check_interrupted` (called every epoch) raises it again: an exception raised
    while Python runs a destructor or a callback is printed and dropped, and the run must still end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _pending["signal"] = signal.Signals(signum).name
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _pending["signal"] = None


def check_interrupted() -> None:
    """Raise Interrupted if SIGTERM or SIGINT arrived during the run (see interrupts_end_the_run)."""
    if _pending["signal"]:
        raise Interrupted(_pending["signal"])


def _end(run_id: str, status: str, tags: Mapping[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        store_call("tag the run's end", client.set_tag, run_id, key, value)
    store_call(f"end the run as {status}", mlflow.end_run, status)


@contextlib.contextmanager
def tracked_run(tracking: Mapping[str, Any], root: Path, *, found_by: str, run_name: str | None = None,
                run_id: str | None = None, missing_hint: str = "", tags: Mapping[str, str] | None = None,
                parent_run_id: str | None = None) -> Iterator[Any]:
    """Start (or, with run_id, reopen) a run in the project's store, owned by this process.

    The run ends FINISHED, or KILLED on SIGTERM and Ctrl-C, or FAILED on any error, the reason in
    its tags; the exception then goes on."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from logitlab.errors import UserError

    setup(tracking, root)
    owner = process_tags()
    if run_id is None:
        run = store_call("start a run", mlflow.start_run, run_name=run_name, parent_run_id=parent_run_id,
                         tags={**(tags or {}), **owner})
    else:
        try:
            mlflow.get_run(run_id)
        except MlflowException as exc:
            if _busy(exc):
                store_call("read run " + run_id, mlflow.get_run, run_id)
            raise UserError(f"run {run_id} is not in the tracking store {redact(mlflow.get_tracking_uri())}; "
                            f"retrain it: dvc repro -f {missing_hint}") from exc
        run = store_call("reopen run " + run_id, mlflow.start_run, run_id=run_id)
        store_call("tag the run", mlflow.set_tags, {**(tags or {}), **owner})
    rid = run.info.run_id
    try:
        with interrupts_end_the_run():
            yield run
    except KeyboardInterrupt as exc:
        name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        _end_after_error(rid, "KILLED", {TAG_REASON: f"interrupted by {name} during {found_by}"})
        raise
    except Diverged as exc:
        _end_after_error(rid, "FAILED", {TAG_REASON: str(exc), TAG_EPOCH: str(exc.epoch)})
        raise
    except BaseException as exc:
        _end_after_error(rid, "FAILED", {TAG_REASON: redact_text(f"{type(exc).__name__}: {exc}")[:5000]})
        raise
    _end(rid, "FINISHED", {})


def _end_after_error(run_id: str, status: str, tags: Mapping[str, str]) -> None:
    """End the run while another exception is on its way; a store failing now is logged, not raised
    over the original error (and the run's dead process gets it reaped later)."""
    try:
        _end(run_id, status, tags)
    except StoreUnavailable as exc:
        log.error("could not mark run %s %s: %s", run_id, status, exc)


# --------------------------------------------------------------------------- secrets

_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s'\"]*:)(?P<password>[^@\s'\"]+)(?P<at>@)")


def redact(uri: str) -> str:
    """A URI without its password, for messages."""
    return redact_text(uri)


def redact_text(text: str) -> str:
    """Text with the password of every URI in it replaced by ***."""
    return _URI_PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", text)


def redact_logs() -> None:
    """Redact URI passwords in every log record of this process, whatever handlers are configured
    later: Hydra itself logs each job's overrides ("#0 : ... tracking.uri=...") and reconfigures its
    handlers between jobs, so the redaction sits in the record factory."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "logitlab_redacts", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record stays as it is, for logging to report
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record

    redacting.logitlab_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)
