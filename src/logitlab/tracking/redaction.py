"""Secrets out of everything logitlab logs: the password of any URI becomes ***."""

from __future__ import annotations

import logging
import re
from typing import Any

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
