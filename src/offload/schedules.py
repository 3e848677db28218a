"""Schedules declared in code: ``@app.task(schedule=Cron(...))`` or ``Every(...)``.

A schedule names tick times; every worker's scheduler (``worker/schedules.py``) enqueues each
due tick as a job whose key is derived from (schedule name, tick time), stored with a
``unique_for`` window (:data:`TICK_WINDOW_S`) that outlives the job: the backend's atomic dedup
makes each tick one job however many schedulers run, and no leader is elected.

Tick times are absolute: a cron expression is read in its time zone through ``zoneinfo``
(``cronsim`` follows cron's rules across DST: a time that does not exist that day runs at the
first time after it, a time that occurs twice runs once), and ``Every`` ticks at multiples of
its period since the Unix epoch, so every scheduler computes the same ticks.

Missed ticks (no worker was up, or every scheduler was paused in a long stall) follow the
schedule's ``missed`` policy; a tick later than ``grace`` seconds is missed:

* ``"latest"`` (default): run the latest due tick once, skip the older ones;
* ``"all"``: run each missed tick, at most :data:`CATCH_UP_MAX` (the latest ones);
* ``"none"``: skip them; only ticks within the grace run.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from offload.errors import ConfigurationError, ValidationError
from offload.job import NewJob, new_job_id

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from offload.task import Task

Missed = Literal["latest", "all", "none"]
MISSED_POLICIES: tuple[str, ...] = ("latest", "all", "none")
CATCH_UP_MAX = 100  # "all" runs at most this many missed ticks (the latest ones)
DEFAULT_GRACE_S = 30.0  # a tick up to this late is on time, not missed
# How long a tick's key holds after its job was created. Far longer than any scheduler's view
# can be stale (a few loop turns), so a tick that ran and finished is never enqueued again;
# short enough that finished tick jobs do not pin keys for long.
TICK_WINDOW_S = 3600.0


class ScheduleRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend keeps per schedule name: the latest tick enqueued (or skipped) and the
    job of the latest enqueued tick, and whether the schedule is paused."""

    name: str
    last_tick: float | None = None
    last_job_id: str | None = None
    paused: bool = False


@dataclass(frozen=True, kw_only=True)
class Schedule(abc.ABC):
    """What Cron and Every share. ``args``: the task's fixed arguments (by name)."""

    args: Mapping[str, Any] = field(default_factory=dict)
    missed: str = "latest"
    jitter: float = 0.0  # seconds: each tick's job runs up to this much later, at random
    grace: float = DEFAULT_GRACE_S
    name: str | None = None  # default: the task's name

    @abc.abstractmethod
    def ticks_between(self, after: float, until: float, limit: int) -> list[float]:
        """The latest ``limit`` ticks ``t`` with ``after < t <= until``, oldest first."""

    @abc.abstractmethod
    def next_after(self, t: float) -> float:
        """The first tick after ``t``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short text for people: "cron */5 * * * * (Europe/Paris)", "every 30s"."""

    def check(self) -> None:
        """Raise ValueError for a bad definition (the task's declaration names it)."""
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be one of {', '.join(MISSED_POLICIES)}")
        for what, value in (("jitter", self.jitter), ("grace", self.grace)):
            if not isinstance(value, int | float) or not 0 <= value < 10**8:
                raise ValueError(f"{what} must be a number of seconds >= 0")


@dataclass(frozen=True, kw_only=True)
class Cron(Schedule):
    """``Cron("*/5 * * * *", tz="Europe/Paris")``: a five-field cron expression (cronsim's
    syntax, incl. ``L``, ``#`` and ``@daily``-style aliases) in a time zone (default UTC)."""

    expr: str
    tz: str = "UTC"

    def __init__(self, expr: str, tz: str = "UTC", **options: Any) -> None:
        object.__setattr__(self, "expr", expr)
        object.__setattr__(self, "tz", tz)
        Schedule.__init__(self, **options)

    def _zone(self) -> ZoneInfo:
        # imported here, as cronsim is: zoneinfo loads sysconfig, which only a Cron needs
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"unknown time zone {self.tz!r}") from None

    def _iter(self, t: float, reverse: bool) -> Any:
        from cronsim import CronSim

        return CronSim(self.expr, datetime.fromtimestamp(t, self._zone()), reverse=reverse)

    def check(self) -> None:
        super().check()
        from cronsim import CronSimError

        if not isinstance(self.expr, str):
            raise ValueError("a cron expression is a string")
        try:
            self._iter(0.0, False)
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.expr!r}: {exc}") from None

    def ticks_between(self, after: float, until: float, limit: int) -> list[float]:
        # cronsim starts strictly before its start time; ticks fall on whole seconds.
        out: list[float] = []
        for dt in self._iter(math.floor(until) + 1.0, True):
            t = dt.timestamp()
            if t <= after or len(out) >= limit:
                break
            out.append(t)
        return out[::-1]

    def next_after(self, t: float) -> float:
        return float(next(self._iter(t, False)).timestamp())

    def describe(self) -> str:
        return f"cron {self.expr} ({self.tz})"


@dataclass(frozen=True, kw_only=True)
class Every(Schedule):
    """``Every(seconds=30)`` (also ``minutes=``, ``hours=``): ticks at whole multiples of the
    period since the Unix epoch, the same instants on every machine."""

    period: float

    def __init__(
        self, *, seconds: float = 0, minutes: float = 0, hours: float = 0, **options: Any
    ) -> None:
        try:
            period = float(seconds) + 60.0 * float(minutes) + 3600.0 * float(hours)
        except (TypeError, ValueError):
            period = math.nan
        object.__setattr__(self, "period", period)
        Schedule.__init__(self, **options)

    def check(self) -> None:
        super().check()
        if not 1.0 <= self.period <= 366 * 86400:  # False for nan too
            raise ValueError("an interval must be from 1 second to 366 days")

    def ticks_between(self, after: float, until: float, limit: int) -> list[float]:
        last = math.floor(until / self.period)
        first = max(math.floor(after / self.period) + 1, last - limit + 1)
        return [k * self.period for k in range(first, last + 1)]

    def next_after(self, t: float) -> float:
        return (math.floor(t / self.period) + 1) * self.period

    def describe(self) -> str:
        return f"every {self.period:g}s"


@dataclass(frozen=True)
class BoundSchedule:
    """A schedule given to a task: what a scheduler needs to enqueue its ticks."""

    name: str
    task: Task[Any, Any]
    schedule: Schedule
    args: bytes  # the fixed arguments, validated against the task's signature

    def due(self, last_tick: float, now: float) -> tuple[list[float], float | None]:
        """The ticks to enqueue now, given the latest tick already enqueued (or skipped), and
        the latest tick passed (None: none is due); ticks before it not returned are skipped
        by the ``missed`` policy."""
        s = self.schedule
        ticks = s.ticks_between(last_tick, now, CATCH_UP_MAX + 1)
        if not ticks:
            return [], None
        late = now - s.grace
        missed = len(ticks) > CATCH_UP_MAX or ticks[0] < late
        if not missed or s.missed == "all":
            return ticks[-CATCH_UP_MAX:], ticks[-1]
        if s.missed == "latest":
            return ticks[-1:], ticks[-1]
        return [t for t in ticks if t >= late], ticks[-1]

    def key(self, tick: float) -> str:
        return f"schedule:{self.name}@{round(tick * 1000)}"

    def job(self, tick: float, rng: Callable[[], float] = random.random) -> NewJob:
        cfg = self.task.config
        return NewJob(
            id=new_job_id(),
            task=cfg.name,
            queue=cfg.queue,
            args=self.args,
            priority=cfg.priority,
            max_attempts=cfg.max_attempts,
            run_at=tick + self.schedule.jitter * rng(),
            key=self.key(tick),
            unique_for=TICK_WINDOW_S,
            limits=self.task.limit_buckets(self.args, cfg.queue),  # as a plain enqueue's
            retention=self.task.retention,
        )


def bind(schedule: object, task: Task[Any, Any]) -> BoundSchedule:
    """Check ``schedule`` for ``task``; a bad one is a ConfigurationError naming the task."""
    if not isinstance(schedule, Schedule):
        raise ConfigurationError(
            f"task {task.name}: schedule must be offload.Cron(...) or offload.Every(...)"
        )
    try:
        schedule.check()
        if not isinstance(schedule.args, Mapping):
            raise ValueError("args must be a mapping of argument names to values")
        args = task.encode_args(**schedule.args)
        if task.limits is not None:  # a tick's limit key must be among its args, as any job's
            task.limits.buckets(args)
    except (ValueError, ValidationError) as exc:
        raise ConfigurationError(f"task {task.name}: bad schedule: {exc}") from None
    from offload.task import check_name

    name = schedule.name or task.name
    try:
        check_name(name, "schedule name")
    except ValidationError as exc:
        raise ConfigurationError(f"task {task.name}: {exc}") from None
    return BoundSchedule(name=name, task=task, schedule=schedule, args=args)


def bind_all(
    given: Schedule | Sequence[Schedule] | None,
    task: Task[Any, Any],
    *,
    taken: Mapping[str, BoundSchedule],
) -> list[BoundSchedule]:
    """The schedules ``@app.task(schedule=...)`` gives ``task``; names must be unique."""
    if given is None:
        return []
    many = [given] if isinstance(given, Schedule) else list(given)
    bound = [bind(s, task) for s in many]
    names = [b.name for b in bound]
    clash = sorted({n for n in names if n in taken or names.count(n) > 1})
    if clash:
        raise ConfigurationError(
            f"task {task.name}: schedule name {clash[0]!r} is taken; give each schedule a name="
        )
    return bound


__all__ = ["Cron", "Every", "Schedule", "ScheduleRecord"]


def advanced(
    rec: ScheduleRecord | None, name: str, tick: float, job_id: str | None
) -> ScheduleRecord:
    """``Backend.advance_schedule``'s rule, for engines that keep records in Python."""
    if rec is None:
        return ScheduleRecord(name=name, last_tick=tick, last_job_id=job_id)
    if rec.last_tick is not None and tick <= rec.last_tick:
        return rec
    return msgspec.structs.replace(rec, last_tick=tick, last_job_id=job_id or rec.last_job_id)
