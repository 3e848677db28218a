"""Grouping dead jobs by the shape of their error.

Two errors have the same shape when their first lines (``Type: message``, as the executor
writes them) are equal once the parts that vary from job to job are replaced: quoted values,
UUIDs and long hex or base32 ids, and numbers. ``KeyError: 'user 42'`` and ``KeyError: 'bob'``
share a shape; ``KeyError`` and ``ValueError`` never do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from offload.job import JobRecord

_MAX_SHAPE_CHARS = 300
_PATTERNS = [
    (re.compile(r"'(?:[^'\\]|\\.)*'"), "'…'"),
    (re.compile(r'"(?:[^"\\]|\\.)*"'), "'…'"),
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<id>"),
    # ids: a run of 12+ letters and digits holding both (hex, base32, ULIDs); digits alone are
    # a number, letters alone a word
    (re.compile(r"\b(?=[0-9a-zA-Z]*\d)(?=[0-9a-zA-Z]*[a-zA-Z])[0-9a-zA-Z]{12,}\b"), "<id>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "<n>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
]


def error_shape(error: str | None) -> str:
    """The normalised first line of an error (``(no error recorded)`` when there is none)."""
    line = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    if not line:
        return "(no error recorded)"
    for pattern, replacement in _PATTERNS:
        line = pattern.sub(replacement, line)
    return line[:_MAX_SHAPE_CHARS]


def shape_id(shape: str) -> str:
    """A short stable id of a shape, for URLs and forms."""
    return hashlib.sha256(shape.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class ErrorGroup:
    shape: str
    id: str
    jobs: list[JobRecord] = field(default_factory=list)
    tasks: set[str] = field(default_factory=set)
    queues: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self.jobs)

    @property
    def example(self) -> JobRecord:
        return self.jobs[0]

    @property
    def last_at(self) -> float | None:
        return max((j.finished_at or j.created_at for j in self.jobs), default=None)

    @property
    def first_at(self) -> float | None:
        return min((j.finished_at or j.created_at for j in self.jobs), default=None)


def group_by_shape(jobs: Iterable[JobRecord]) -> list[ErrorGroup]:
    """Groups, largest first (ties: most recent first); each group's jobs in the given order."""
    groups: dict[str, ErrorGroup] = {}
    for job in jobs:
        shape = error_shape(job.error)
        group = groups.get(shape)
        if group is None:
            group = groups[shape] = ErrorGroup(shape=shape, id=shape_id(shape))
        group.jobs.append(job)
        group.tasks.add(job.task)
        group.queues.add(job.queue)
    return sorted(groups.values(), key=lambda g: (-g.count, -(g.last_at or 0.0)))
