"""How long finished jobs are kept: one policy for every engine, read from the URL.

Finished jobs are deleted by default, so that a service running for months does not grow its
SQLite file or its Redis memory without bound. The defaults follow River's and Oban's
pruners, longer where a person has to act:

* ``succeeded``: 3 days. A result is read within seconds (``job.result()``, ``Prefer: wait``);
  three days still covers a weekend for "did last Friday's job run?".
* ``dead`` and ``cancelled``: 14 days. A dead job waits for a person to look at it, retry it or
  purge it; two weeks covers a holiday or an on-call rotation.

URL options (every engine that stores jobs; a broker's store takes them in its own URL):
``retention`` sets all three, ``retention_succeeded`` / ``retention_dead`` /
``retention_cancelled`` one each (they win over ``retention``). A value is seconds or a
duration (``90s``, ``15m``, ``12h``, ``3d``, ``2w``); ``forever`` keeps jobs until purged.

Engines prune in batches of :data:`PRUNE_BATCH` rows, one short transaction (or script) each,
so a backlog of millions never holds the SQLite writer, a PostgreSQL lock or Redis for long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from offload.durations import parse_duration_s
from offload.errors import ConfigurationError
from offload.job import KEPT_FOREVER_S, JobRecord, JobRetention, JobState

DAY_S = 86_400.0
DEFAULT_SUCCEEDED_S = 3 * DAY_S
DEFAULT_DEAD_S = 14 * DAY_S
DEFAULT_CANCELLED_S = 14 * DAY_S

# Rows per delete. 1000 deletes of small rows take a few ms on SQLite and PostgreSQL and well
# under a millisecond per job in a Redis script: short enough that enqueues and claims queued
# behind one batch do not notice, big enough that a backlog clears at thousands per second.
PRUNE_BATCH = 1000

OPTIONS = ("retention", "retention_succeeded", "retention_dead", "retention_cancelled")
"""The URL options :func:`parse_retention` reads (add them to an engine's known options)."""

FOREVER = "forever"
STATES = ("succeeded", "dead", "cancelled")


@dataclass(frozen=True)
class Retention:
    """Seconds a finished job is kept, by final state; None keeps it until purged."""

    succeeded_s: float | None = DEFAULT_SUCCEEDED_S
    dead_s: float | None = DEFAULT_DEAD_S
    cancelled_s: float | None = DEFAULT_CANCELLED_S

    def of(self, state: JobState) -> float | None:
        """The retention of ``state`` (a final state)."""
        return {
            JobState.SUCCEEDED: self.succeeded_s,
            JobState.DEAD: self.dead_s,
            JobState.CANCELLED: self.cancelled_s,
        }[state]

    def pruned(self) -> list[tuple[JobState, float]]:
        """The final states whose jobs are deleted, with their age in seconds."""
        states = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)
        return [(s, age) for s in states if (age := self.of(s)) is not None]

    def longest_s(self) -> float | None:
        """The longest retention, None when some state is kept forever."""
        ages = [self.succeeded_s, self.dead_s, self.cancelled_s]
        return None if any(a is None for a in ages) else max(a for a in ages if a is not None)


def past_retention(job: JobRecord, policy: Retention, now: float) -> bool:
    """Whether ``job`` is finished and past its retention at ``now``: its own for its state
    (its task's ``retention=``) when it has one, else ``policy`` (the backend's). The rule
    every engine applies, in SQL or Lua where it does not build records in Python."""
    if not job.state.final or job.finished_at is None:
        return False
    own = job.retention.of(job.state) if job.retention is not None else None
    age = own if own is not None else policy.of(job.state)
    return age is not None and job.finished_at + age <= now


def parse_retention(opts: Mapping[str, Any]) -> Retention:
    """The policy a URL's (or constructor keywords') options ask for; ConfigurationError for
    a value that is not seconds, a duration or ``forever``."""
    every = opts.get("retention")
    values = {}
    for state, default in (
        ("succeeded", DEFAULT_SUCCEEDED_S),
        ("dead", DEFAULT_DEAD_S),
        ("cancelled", DEFAULT_CANCELLED_S),
    ):
        given = opts.get(f"retention_{state}", every)
        values[f"{state}_s"] = default if given in (None, "") else _age_s(state, given)
    return Retention(**values)


def _age_s(state: str, value: Any) -> float | None:
    if isinstance(value, str) and value.strip().lower() == FOREVER:
        return None
    try:
        return parse_duration_s(value)
    except ValueError:
        raise ConfigurationError(
            f"retention of {state} jobs must be seconds >= 0, a duration like 12h or 3d, "
            f"or {FOREVER!r}; not {value!r}"
        ) from None


def parse_task_retention(task: str, value: Any) -> JobRetention | None:
    """A task's ``retention=`` as the value its jobs carry: one duration (seconds, ``"12h"``,
    a ``timedelta``, or ``"forever"``) for every final state, or a mapping of some of
    ``succeeded`` / ``dead`` / ``cancelled`` to one (the states left out keep the backend's
    retention). None: the backend's for every state. ConfigurationError naming the task."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in STATES)
        if unknown or not value:
            raise ConfigurationError(
                f"task {task!r}: retention takes the states {', '.join(STATES)}; "
                f"not {', '.join(unknown) or 'an empty mapping'}"
            )
        ages = {s: _task_age_s(task, s, value[s]) if s in value else None for s in STATES}
        return JobRetention(ages["succeeded"], ages["dead"], ages["cancelled"])
    age = _task_age_s(task, "finished", value)
    return JobRetention(age, age, age)


def _task_age_s(task: str, state: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    try:
        age = _age_s(state, value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"task {task!r}: {exc}") from None
    return KEPT_FOREVER_S if age is None else age
