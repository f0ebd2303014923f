"""Runs whose process died: every run is tagged with the process that owns it, and the next stage
start marks KILLED the RUNNING runs of this host whose process is gone (SIGKILL, out of memory)."""

from __future__ import annotations

import logging
import os
import socket

import psutil

from logitlab.tracking.store import store_call

log = logging.getLogger(__name__)

TAG_HOST, TAG_PID, TAG_START = "logitlab.host", "logitlab.pid", "logitlab.process_start"
TAG_REASON = "logitlab.status_reason"


def _process_start(pid: int) -> str | None:
    """When a live process started (None: no such process, or a zombie), as psutil tells it."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return f"{process.create_time():.2f}"
    except psutil.Error:
        return None


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_START: _process_start(pid) or ""}


def process_alive(pid: str | None, start: str | None) -> bool:
    """Is the process that tagged a run still that same process (not a dead one whose pid was reused)?"""
    if not pid or not pid.isdigit():
        return True  # not ours to judge
    current = _process_start(int(pid))
    return current is not None and (not start or current == start)


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
