"""A parallel train sweep's fork server (Linux): the process its joblib workers are forked from,
which imports the app's modules while the sweep is checked (`fork_server`, called by
stages/workers.start_workers), and is stopped before a sweep that ends before its launch prints its
error line (`exit_before_launch`, called by stages/sweep_check and stages/sweep) or, otherwise, as
the sweep's process exits. Apart from stages/workers.py, so that the sweep's check can stop it
without an import cycle."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import Any, NoReturn

log = logging.getLogger(__name__)


# The module the fork server imports before it forks a train sweep's workers (`fork_server`).
WARM_MODULE = "logitlab.stages.warm"
_stopped_at_exit: list[Any] = []  # the fork server, once started: stopped as this process exits


def fork_server(app: str, workers: int) -> bool:
    """On Linux, for the train app: the joblib launcher's workers are forked from a server process
    (multiprocessing's fork server, a start method loky supports) that is started now and imports
    the app's modules once (WARM_MODULE), while this process checks the sweep and opens its MLflow
    run; each worker then starts with everything imported, instead of importing it itself (~5 s a
    worker, on the cores the check needs too). Measured on 2 cores (AMD EPYC), the numerics study's
    45-job subset, alternating: 24.0-27.3 s against 28.2-30.7 s (three runs each); its first job
    started 6.8-7.7 s after the command, against 9.7-10.9 s.

    The server has the environment loky would give the workers (joblib's limits on OpenMP and BLAS
    threads, and share_cores's TensorFlow threads), since the workers inherit the server's. The
    server is started before anything of TensorFlow has run (it only imports), and it is one per
    process: a later sweep in the same process reuses it, as loky reuses its executor. Returns
    whether the workers will be forked; elsewhere (macOS, where a fork without exec is not safe and
    Python's own default is spawn, and Windows) loky starts them as before, and start_workers warms
    them up."""
    if app != "train" or not sys.platform.startswith("linux"):
        return False
    import multiprocessing
    from multiprocessing import forkserver

    from joblib._parallel_backends import LokyBackend
    from joblib.externals.loky.backend.context import set_start_method

    multiprocessing.get_context("forkserver").set_forkserver_preload([WARM_MODULE])
    limits = {k: v for k, v in LokyBackend()._prepare_worker_env(n_jobs=workers).items() if k not in os.environ}
    os.environ.update(limits)
    try:
        forkserver.ensure_running()  # returns at once; the server imports while this process goes on
    except OSError as exc:  # no Unix socket or pipe for it here: the workers import for themselves
        log.warning("no fork server for the sweep's workers (%s); each imports the app itself", exc)
        return False
    finally:
        for name in limits:
            del os.environ[name]
    if not _stopped_at_exit:
        _stopped_at_exit.extend(_fork_servers())
        atexit.register(_stop, _stopped_at_exit)
    set_start_method("forkserver", force=True)  # the launcher's loky executor forks its workers there
    return True


def _fork_servers() -> list[Any]:
    """This process's fork server (multiprocessing's, started by ensure_running), as psutil sees it:
    by the pid multiprocessing keeps for it (`_forkserver_pid`, a private attribute), else among this
    process's children by its command line. The pid comes first because ensure_running returns once
    it has forked the server, maybe before the server has exec'd: until then its command line is this
    process's, and under load a search by command line found nothing, so the server was never
    stopped and printed TensorFlow's lines after a refused sweep's error line."""
    import psutil
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if isinstance(pid, int):
        with contextlib.suppress(psutil.Error):
            return [psutil.Process(pid)]
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                found.append(child)
    return found


def _stop(processes: list[Any]) -> None:
    """At this process's exit: the fork server goes too. It would otherwise stay until its workers
    have gone, or, after a sweep refused by its check, import TensorFlow for seconds after the
    command has exited, printing TensorFlow's start-up lines after the sweep's error. Workers already
    forked do not need it."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    psutil.wait_procs(processes, timeout=1)  # reaped: no zombie left behind


def stop_fork_server() -> None:
    """Stop this process's fork server now (and reap it), rather than as the process exits."""
    _stop(_stopped_at_exit)


def exit_before_launch(line: str, code: int) -> NoReturn:
    """How a sweep that ends before its launch ends (refused by its check, stages/sweep_check; its
    store does not answer, stages/sweep.MlflowSweep): the fork server is stopped first, since, still
    importing, it would print TensorFlow's start-up lines after the error line; then the one error
    line, and the exit with `code`."""
    stop_fork_server()
    print(line, file=sys.stderr)
    sys.exit(code)
