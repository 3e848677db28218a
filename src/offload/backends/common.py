"""What every engine shares, written once: list cursors, URL options, password masking, the
collapse of same-key jobs in one batch, and the rule for a job whose lease expired.

An engine module applies these; it never re-states them. The lease-expiry rule follows River's
rescuer: the decision (back to the queue, or dead after ``max_attempts``, and the error
recorded) is computed here in Python from the expired job's fields; each engine only writes
that decision, fenced on the lease it found, so a job that was finished or re-leased in the
meantime is left alone.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from offload.errors import ConfigurationError
from offload.job import AttemptError, JobRecord, JobState, NewJob

LEASE_EXPIRED_ERROR = "lease expired (worker lost)"
"""The error recorded for an attempt whose worker stopped heartbeating (killed, cut off)."""

INVALID_CURSOR = "invalid cursor"

_log = logging.getLogger("offload.backends")


# -- list cursors ----------------------------------------------------------------------------


def encode_cursor(position: float, job_id: str) -> str:
    """An opaque cursor for "jobs after (``position``, ``job_id``)" in newest-first order.

    ``position`` is the engine's sort value (``created_at`` seconds, or Redis's microseconds);
    the cursor round-trips it exactly (JSON keeps a float's shortest repr and an int as is).
    """
    return base64.urlsafe_b64encode(msgspec.json.encode([position, job_id])).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (position, job id) a cursor carries; ValueError for anything else (untrusted)."""
    try:
        position, job_id = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))
        if isinstance(position, bool) or not isinstance(position, int | float):
            raise TypeError("position")
        if not isinstance(job_id, str) or not math.isfinite(position):
            raise TypeError("job id")
        return position, job_id
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise ValueError(INVALID_CURSOR) from exc


# -- URLs and their options -------------------------------------------------------------------


def masked(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for logs, errors and ``.url``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"0", "false", "off", "no"})


def flag(name: str, value: Any) -> bool:
    """A boolean URL or keyword option. One rule for every engine: an unknown spelling is a
    :class:`ConfigurationError`, never silently false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be 1 or 0 (true or false), not {value!r}")


def check_known(engine: str, opts: Mapping[str, Any], known: Sequence[str]) -> None:
    """Refuse options the engine does not know (a typo must not be a silent default)."""
    unknown = set(opts) - set(known)
    if unknown:
        raise ConfigurationError(
            f"unknown {engine} option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


# -- enqueue ------------------------------------------------------------------------------------


def collapse_same_key(jobs: Sequence[NewJob]) -> tuple[list[NewJob], list[int]]:
    """Keep the first job of each (queue, key) in a batch.

    Returns the jobs to store and, for each job of ``jobs``, the index in that list of the job
    that stands for it. Keys are scoped by queue: one key on two queues is two jobs.
    """
    batch: list[NewJob] = []
    first_by_key: dict[tuple[str, str], int] = {}
    where: list[int] = []
    for job in jobs:
        scoped = (job.queue, job.key) if job.key is not None else None
        if scoped is not None and scoped in first_by_key:
            where.append(first_by_key[scoped])
            continue
        if scoped is not None:
            first_by_key[scoped] = len(batch)
        where.append(len(batch))
        batch.append(job)
    return batch, where


def new_record(new: NewJob, now: float) -> JobRecord:
    """The record a new job is stored as at ``now`` (the backend's clock): queued when due,
    else scheduled; no attempt yet. For engines that build records in Python."""
    run_at = new.run_at if new.run_at is not None else now + new.delay_s
    return JobRecord(
        id=new.id,
        task=new.task,
        queue=new.queue,
        args=new.args,
        state=JobState.QUEUED if run_at <= now else JobState.SCHEDULED,
        priority=new.priority,
        attempt=0,
        max_attempts=new.max_attempts,
        run_at=run_at,
        created_at=now,
        key=new.key,
        headers=dict(new.headers),
        limits=new.limits,
        retention=new.retention,
    )


# -- the lease-expiry rule --------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiredLease:
    """What happens to one running job whose lease expired, decided by :func:`expired_lease`.

    ``state`` is ``queued`` (attempts left: due at once) or ``dead``; ``error`` is appended to
    the job's errors either way, and also becomes the job's final ``error`` when dead.
    """

    state: JobState
    error: AttemptError

    @property
    def dead(self) -> bool:
        return self.state is JobState.DEAD


def expired_lease(
    attempt: int, max_attempts: int, worker_id: str | None, now: float
) -> ExpiredLease:
    """The fate of a running job whose lease expired at or before ``now``.

    The lost attempt counts (it was counted at claim): a job that kills its worker every time
    still reaches ``dead`` after ``max_attempts``.
    """
    state = JobState.DEAD if attempt >= max_attempts else JobState.QUEUED
    err = AttemptError(attempt=attempt, at=now, error=LEASE_EXPIRED_ERROR, worker_id=worker_id)
    return ExpiredLease(state=state, error=err)


# -- added for sqlite/postgres --


RECOVER_BATCH = 1000
"""How many expired leases one recovery transaction finds and writes: bounded, so that a mass
expiry (a fleet lost at once) never holds the writer or row locks for one huge statement."""


@dataclass(frozen=True)
class ExpiredJob:
    """One expired running job as an engine found it, with the fate decided for it.

    ``attempt`` and ``worker_id`` are the lease it was found with: the fence of the write.
    """

    id: str
    attempt: int
    worker_id: str | None
    fate: ExpiredLease


def decide_expired(found: Sequence[Sequence[Any]], now: float) -> list[ExpiredJob]:
    """The decision for each found ``(id, attempt, max_attempts, worker_id)``, on the
    backend's clock ``now`` (the time the jobs were found expired).

    Stored rows are untrusted: one whose counters do not read as integers is skipped with a
    warning (as Redis's recovery does) rather than failing every recovery pass after it.
    """
    out: list[ExpiredJob] = []
    for job_id, attempt, max_attempts, worker_id in found:
        try:
            n, most = _as_int(attempt), _as_int(max_attempts)
        except (TypeError, ValueError):
            _log.warning("job %s: unreadable attempt counters; left for an operator", job_id)
            continue
        wid = worker_id if isinstance(worker_id, str) or worker_id is None else str(worker_id)
        out.append(ExpiredJob(str(job_id), n, wid, expired_lease(n, most, wid, now)))
    return out


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not an integer: {value!r}")
    return value


def encoded_error(err: AttemptError) -> str:
    """One errors-history entry as the JSON object an engine appends to its stored array."""
    return msgspec.json.encode(err).decode()


def cannot_cancel(job_id: str, state: JobState) -> str:
    return f"job {job_id} already {state}; it cannot be cancelled"


def cannot_requeue(job_id: str, state: JobState) -> str:
    return f"job {job_id} is {state}; only dead or cancelled jobs retry"


def key_held(job_id: str) -> str:
    """Requeueing a job whose (queue, key) a newer active job holds: the key is not given up."""
    return f"job {job_id} cannot be retried: an active job of its queue holds the same key"
