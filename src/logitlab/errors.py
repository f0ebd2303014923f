"""The exceptions a stage reports as one line, with the exit code that tells them apart; the
signals that end a run (SIGTERM, SIGINT) as one of them; and secrets kept out of every line logged
(the password of any URI becomes ***). The bottom of the package: it imports nothing of logitlab."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any


class UserError(Exception):
    """Bad input or a missing prerequisite: reported as one line, exit code 2, no traceback."""

    exit_code = 2


class RunFailed(Exception):
    """A job that could not complete (diverged training, an unusable tracking store): one line, exit 1."""

    exit_code = 1


class Diverged(RunFailed):
    """Training produced a non-finite loss; the run is FAILED and no model is written."""

    def __init__(self, epoch: int, name: str, value: float, limit: float | None = None):
        self.epoch, self.name, self.value = epoch, name, value
        what = f"became {value}" if limit is None else f"reached {value:.3g}, above trainer.max_loss={limit:g},"
        super().__init__(f"{name} {what} in epoch {epoch}: training diverged "
                         "(lower optimizer.lr); the run is FAILED and no model was written")


class StoreUnavailable(RunFailed):
    """The tracking store did not answer, or stayed locked, after bounded retries."""


class StoreDamaged(UserError):
    """The SQLite file of the tracking store is no database, or a damaged one: asking again cannot
    help, so it is never retried; one line naming the file and what to do, exit 2."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT during a run, raised as a KeyboardInterrupt so that every cleanup path runs."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(signal_name)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


# --------------------------------------------------------------------------- signals


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


# --------------------------------------------------------------------------- secrets

_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s'\"]*:)(?P<password>[^@\s'\"]+)(?P<at>@)")


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
