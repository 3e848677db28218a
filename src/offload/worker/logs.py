"""Log records that say which job they came from, and a JSON format for machines.

While an attempt runs, every record carries ``job_id``, ``job_task`` and ``job_attempt``
(None outside a job), read from the running job's context variable, so a task's own
``logging`` calls, a library's, and the worker's are tagged alike, in async and sync tasks.

``offload worker`` installs :func:`install_record_factory` (every record of the process) and
one of the formatters below. An app that embeds a worker in its own process can add
:class:`JobLogFilter` to its handlers instead, and use the fields in its own format.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from offload.context import CURRENT

JOB_FIELDS = ("job_id", "job_task", "job_attempt")


def _tag(record: logging.LogRecord) -> None:
    ctx = CURRENT.get()
    if ctx is None:
        record.job_id = record.job_task = record.job_attempt = None
    else:
        record.job_id, record.job_task, record.job_attempt = ctx.id, ctx.task, ctx.attempt


class JobLogFilter(logging.Filter):
    """Adds the job fields to each record it sees (add it to a handler); drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            _tag(record)
        return True


def install_record_factory() -> None:
    """Make every new LogRecord of this process carry the job fields (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_offload_job_fields", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _tag(record)
        return record

    factory._offload_job_fields = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class TextFormatter(logging.Formatter):
    """``time logger message``, then ``[job=… task=… attempt=…]`` inside a job."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return text
        task, attempt = getattr(record, "job_task", None), getattr(record, "job_attempt", None)
        tag = f" [job={job_id} task={task} attempt={attempt}]"
        head, sep, rest = text.partition("\n")  # after the message, before a traceback
        return head + tag + sep + rest


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the job fields inside a job, ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "job_id", None) is not None:
            for name in JOB_FIELDS:
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def use_format(log_format: str) -> None:
    """Tag every record with the job fields and format the root handlers' output as
    ``text`` or ``json`` (after ``logging.basicConfig``)."""
    install_record_factory()
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
