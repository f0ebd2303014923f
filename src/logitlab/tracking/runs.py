"""A run's life: started (or nested under a sweep's run), owned by this process, fed params and
metrics without waiting for the store, and ended FINISHED, FAILED (an error, a diverged loss) or
KILLED (SIGTERM, Ctrl-C), the reason in `logitlab.status_reason`."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from logitlab.errors import (
    Diverged,
    Interrupted,
    StoreDamaged,
    StoreUnavailable,
    UserError,
    first_line,
    interrupts_end_the_run,
    redact_text,
)
from logitlab.tracking.reaper import TAG_REASON, process_tags, reap_stale
from logitlab.tracking.store import setup, store_call

log = logging.getLogger(__name__)

TAG_EPOCH = "logitlab.failed_epoch"
BUFFERING = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"


def open_store(tracking: Any, root: Path, found_by: str, create: bool = True) -> str | None:
    """What every stage that talks to the store does first: point MLflow at it (a clear error within
    seconds if it does not answer) and mark KILLED the runs that dead processes left RUNNING. With
    `create=False`, a store or experiment that does not exist stays so: None (store.setup)."""
    experiment_id = setup(tracking, root, create)
    if experiment_id is not None:
        reap_stale(experiment_id, found_by)
    return experiment_id


def async_buffering() -> int:
    """MLflow's async writer waits this many seconds for more writes to merge (default here: 1). Its
    writer thread otherwise waits on its queue with a 1 s timeout, and ending the run waits for that
    thread: ~1 s lost per run; buffering, it sleeps on an event that ending (and flush) sets at once.

    MLflow reads the variable as an int inside that thread: a value such as 0.5 kills the thread,
    and the run's next flush then waits forever for writes nobody makes. So a bad value is one line
    before the run starts."""
    value = os.environ.setdefault(BUFFERING, "1")
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise UserError(f"{BUFFERING}={value!r} is not a whole number of seconds; MLflow's writer takes "
                        "0, 1, 2, ... (logitlab's default: 1; unset it to use that)")
    return seconds


class RunLog:
    """A run's params, metrics and tags, sent without waiting for the store (MLflow's async logging:
    training goes on while a background thread writes), and every write checked by `flush`: a failed
    write is sent again synchronously with store_call's bounded retries, so nothing vanishes silently
    (as with mlflow.keras.MlflowCallback) and a store that stays down fails the run."""

    def __init__(self, run_id: str) -> None:
        import mlflow

        async_buffering()
        self.run_id = run_id
        self._client = mlflow.MlflowClient()
        self._pending: list[tuple[str, dict[str, list[Any]], Any]] = []
        self._sent: dict[int, list[Any]] = {}  # each step's metrics as sent, for link_model

    def log(self, metrics: Mapping[str, float], step: int = 0, model_id: str | None = None,
            dataset: Any = None) -> None:
        """Metrics at `step`; with `model_id` and `dataset` (an MLflow dataset), linked to that logged
        model and evaluated on that dataset, as the Models tab shows them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        link = {"model_id": model_id, "dataset_name": getattr(dataset, "name", None),
                "dataset_digest": getattr(dataset, "digest", None)}
        sent = [Metric(k, float(v), now, step, **link) for k, v in metrics.items()]
        if model_id is None and dataset is None:
            self._sent.setdefault(step, []).extend(sent)
        self.log_batch(f"log step {step} metrics", metrics=sent)

    def link_model(self, model_id: str, step: int) -> None:
        """Link the run's metrics of `step` to the logged model `model_id`, as MLflow's Model.log does:
        each is sent again with the model's id and its own timestamp, so the run's history keeps one
        point (the store drops the same metric twice) and the model gets its copy. Where this process
        logged nothing at `step` (a resumed job whose last epoch reached the run before it was
        killed), they are read back from the store.

        The link is written on its own, once the step's first writes are in the store: the same
        metric twice in one insert fails it, and the store then recovers row by row through the
        whole batch. Queued, MLflow's writer would merge it with everything else queued for the run:
        41-50 ms for a blobs run's one batch, against 11 ms and 5 ms written apart."""
        from mlflow.entities import Metric

        sent = self._sent.get(step)
        if sent is not None:
            self.flush()
        else:
            run = store_call("read the run", self._client.get_run, self.run_id)
            sent = [m for key in run.data.metrics
                    for m in store_call("read a metric's history", self._client.get_metric_history, self.run_id, key)
                    if m.step == step and m.model_id is None]
        store_call(f"link step {step} metrics to the model", self._client.log_batch, self.run_id, metrics=[
            Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, dataset_name=m.dataset_name,
                   dataset_digest=m.dataset_digest) for m in sent])

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # the most one MLflow batch takes
            self.log_batch("log params", params=items[start:start + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.log_batch("tag the run", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_batch(self, what: str, metrics: list[Any] = (), params: list[Any] = (), tags: list[Any] = ()) -> None:
        batch = {"metrics": list(metrics), "params": list(params), "tags": list(tags)}
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


def _end(run_id: str, status: str, tags: Mapping[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        store_call("tag the run's end", client.set_tag, run_id, key, value)
    store_call(f"end the run as {status}", mlflow.end_run, status)


@contextlib.contextmanager
def tracked_run(tracking: Any, root: Path, *, found_by: str, run_name: str | None = None,
                tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
                resume_run_id: str | None = None) -> Iterator[Any]:
    """Start a run in the project's store, owned by this process; or, with `resume_run_id`, take up
    that run again (a requeued job: it is RUNNING again, owned by this process, its last end's
    reason gone).

    The run ends FINISHED, or KILLED on SIGTERM, Ctrl-C and an exit of the process (sys.exit), or
    FAILED on any error, the reason in its tags; the exception then goes on."""
    import mlflow

    async_buffering()
    setup(tracking, root)
    if resume_run_id:
        client = mlflow.MlflowClient()
        if TAG_REASON in store_call("read the run", client.get_run, resume_run_id).data.tags:
            store_call("resume the run", client.delete_tag, resume_run_id, TAG_REASON)
        run = store_call("resume the run", mlflow.start_run, run_id=resume_run_id, tags={**(tags or {}), **process_tags()})
    else:
        run = store_call("start a run", mlflow.start_run, run_name=run_name, parent_run_id=parent_run_id,
                         tags={**(tags or {}), **process_tags()})
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
    except SystemExit as exc:  # the process leaves mid-run on purpose: submitit does, on SLURM's
        # preemption or timeout signal (USR2), once it has requeued the job (which resumes the run)
        _end_after_error(rid, "KILLED", {TAG_REASON: f"the process exited (code {exc.code}) during {found_by}"})
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
    except (StoreUnavailable, StoreDamaged) as exc:
        log.error("could not mark run %s %s: %s", run_id, status, exc)


# --------------------------------------------------------------------------- secrets
