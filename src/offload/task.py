"""Task: a registered function, its options, and the msgspec type of its arguments.

The function's signature is the contract: arguments are converted and validated against its
type hints when a job is enqueued (so a bad call fails in the caller, and nothing is stored),
and decoded with the same type when the job runs. The same type gives the JSON Schema that the
HTTP API publishes.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import msgspec

from offload.backends.retention import parse_task_retention
from offload.backoff import Backoff, ExponentialBackoff, retry_policy
from offload.errors import ConfigurationError, ValidationError
from offload.headers import check_headers
from offload.job import PRIORITY_MAX, PRIORITY_MIN, NewJob, new_job_id
from offload.limits import RateLimit, TaskLimits

if TYPE_CHECKING:
    from offload.app import App
    from offload.job import Job
    from offload.workflow.canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3  # like Celery's 3 retries; a task that needs more says so
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:<>\-]{1,200}$")  # <> for <locals> in qualnames


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-call options, set through ``task.options(...)``; None means the task's default."""

    delay: float | None = None
    run_at: datetime | float | None = None
    priority: int | None = None
    queue: str | None = None
    key: str | None = None
    max_attempts: int | None = None
    connection: Any = None  # a caller's DB connection, for transactional enqueue
    headers: Mapping[str, str] | None = None  # offload.headers: small metadata for the job
    unique_for: float | None = None  # seconds the key stays taken, finished jobs included
    on_conflict: str = "keep"  # "keep" the job holding the key, or "replace" it (debounce)

    def __post_init__(self) -> None:
        if self.delay is not None and (not isinstance(self.delay, int | float) or self.delay < 0):
            raise ValidationError("delay must be a number of seconds >= 0", argument="delay")
        if self.delay is not None and self.run_at is not None:
            raise ValidationError("give delay or run_at, not both", argument="run_at")
        if self.priority is not None:
            check_priority(self.priority)
        if self.queue is not None:
            check_name(self.queue, "queue")
        if self.key is not None and not (isinstance(self.key, str) and 0 < len(self.key) <= 500):
            raise ValidationError(
                "key must be a non-empty string of at most 500 characters", argument="key"
            )
        if self.max_attempts is not None:
            check_attempts(self.max_attempts)
        if self.headers is not None:
            check_headers(self.headers)
        check_unique(self.key, self.unique_for, self.on_conflict)

    def run_at_epoch(self) -> float | None:
        if isinstance(self.run_at, datetime):
            if self.run_at.tzinfo is None:
                raise ValidationError("run_at must be timezone-aware", argument="run_at")
            return self.run_at.timestamp()
        return None if self.run_at is None else float(self.run_at)


def check_unique(key: object, unique_for: object, on_conflict: object) -> None:
    """``unique_for`` and ``on_conflict`` qualify a ``key``: a window of seconds >= 0, and
    "keep" or "replace"."""
    if unique_for is not None and (
        isinstance(unique_for, bool)
        or not isinstance(unique_for, int | float)
        or not 0 <= unique_for < 10**9
    ):
        raise ValidationError("unique_for must be a number of seconds >= 0", argument="unique_for")
    if on_conflict not in ("keep", "replace"):
        raise ValidationError("on_conflict must be 'keep' or 'replace'", argument="on_conflict")
    if key is None and (unique_for is not None or on_conflict != "keep"):
        arg = "unique_for" if unique_for is not None else "on_conflict"
        raise ValidationError(f"{arg} needs a key (key=...)", argument=arg)


def check_priority(priority: object) -> None:
    if not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValidationError(
            f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
            "(higher runs first)",
            argument="priority",
        )


def check_attempts(max_attempts: object) -> None:
    if not isinstance(max_attempts, int) or not 1 <= max_attempts <= 1000:
        raise ValidationError(
            "max_attempts must be an integer from 1 to 1000", argument="max_attempts"
        )


def check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValidationError(
            f"{what} must be 1-200 characters of letters, digits, '_', '.', ':' or '-'",
            argument=what,
        )


def _arguments_type(fn: Callable[..., Any], name: str) -> tuple[type[msgspec.Struct], list[str]]:
    """A msgspec Struct with one field per parameter, and the positional-only names."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise ConfigurationError(f"task {name}: cannot resolve type hints: {exc}") from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    positional_only: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigurationError(f"task {name}: *args/**kwargs cannot be validated; name them")
        if p.kind is p.POSITIONAL_ONLY:
            positional_only.append(p.name)
        hint = hints.get(p.name, Any)
        fields.append((p.name, hint) if p.default is p.empty else (p.name, hint, p.default))
    struct = msgspec.defstruct(f"{name}.args", fields, forbid_unknown_fields=True, kw_only=True)
    return struct, positional_only


def _positional_call(signature: inspect.Signature) -> tuple[tuple[str, ...], int]:
    """The parameters a call may pass by position, and how many of them it must pass. A call
    with only positional arguments, at least that many and at most all, binds them in order;
    none (``(), 1``) when a keyword-only parameter is required, or for ``*args``/``**kwargs``
    (refused at registration anyway): such calls go through bind()."""
    params = signature.parameters.values()
    if any(
        (p.kind is p.KEYWORD_ONLY and p.default is p.empty)
        or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in params
    ):
        return (), 1
    names = tuple(p.name for p in params if p.kind is not p.KEYWORD_ONLY)
    required = sum(1 for p in params if p.kind is not p.KEYWORD_ONLY and p.default is p.empty)
    return names, required


def _error_argument(message: str) -> str | None:
    match = re.search(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)", message)
    if match:
        return match.group(1)
    match = re.search(r"(?:required field|unknown field) `([^`]+)`", message)
    return match.group(1) if match else None


@dataclass(frozen=True)
class TaskConfig:
    name: str
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry: Backoff = field(default_factory=ExponentialBackoff)
    timeout_s: float | None = None
    expose: bool = False
    # Per-exception retry policy, checked into Task.retry_policy (offload.backoff.RetryPolicy);
    # the defaults retry every failure after ``retry``.
    retry_on: type[Exception] | tuple[type[Exception], ...] | None = None
    give_up_on: type[Exception] | tuple[type[Exception], ...] = ()
    backoff: Mapping[type[Exception], Backoff] | None = None
    rate_limit: str | RateLimit | None = None
    concurrency_key: str | None = None
    max_per_key: int | None = None
    # How long its finished jobs are kept, instead of the backend's retention (one duration,
    # "forever", or a mapping by final state): offload.backends.retention.parse_task_retention.
    retention: Any = None
    fair_key: str | None = None


class Task(Generic[P, R]):
    """A function registered with ``@app.task``. Calling it runs the function directly."""

    def __init__(self, app: App, fn: Callable[P, R], config: TaskConfig) -> None:
        try:
            check_name(config.name, "task name")
            check_name(config.queue, "queue")
            check_priority(config.priority)
            check_attempts(config.max_attempts)
        except ValidationError as exc:
            raise ConfigurationError(f"task {config.name!r}: {exc}") from None
        if config.timeout_s is not None and config.timeout_s <= 0:
            raise ConfigurationError(f"task {config.name}: timeout must be > 0 seconds")
        try:
            self.retry_policy = retry_policy(
                config.retry, config.retry_on, config.give_up_on, config.backoff
            )
        except ValueError as exc:
            raise ConfigurationError(f"task {config.name!r}: {exc}") from None
        self.app = app
        self.fn = fn
        self.config = config
        self.is_async = inspect.iscoroutinefunction(fn)
        self.args_type, self._positional_only = _arguments_type(fn, config.name)
        self._signature = inspect.signature(fn)
        self._positional = _positional_call(self._signature)
        self.limits = TaskLimits.declare(
            config.name,
            list(self._signature.parameters),
            config.rate_limit,
            config.concurrency_key,
            config.max_per_key,
            config.fair_key,
        )
        self.retention = parse_task_retention(config.name, config.retention)
        self._decoder = msgspec.json.Decoder(self.args_type)
        self._return_type: Any = typing.get_type_hints(fn).get("return", Any)
        self._args_without: dict[str, type[msgspec.Struct]] = {}  # see args_type_without
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.config.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.config.queue}>"

    # -- arguments -------------------------------------------------------------------------

    def encode_args(self, *args: Any, **kwargs: Any) -> bytes:
        """Validate a Python call against the signature; return the JSON of its arguments."""
        names, required = self._positional
        if not kwargs and required <= len(args) <= len(names):
            # what bind() gives for this call, at a fifth of its cost
            given = dict(zip(names, args, strict=False))
        else:
            try:
                given = dict(self._signature.bind(*args, **kwargs).arguments)
            except TypeError as exc:
                raise ValidationError(f"task {self.name}: {exc}") from None
        try:
            value = msgspec.convert(given, self.args_type, strict=True)
            return msgspec.json.encode(value)
        except (msgspec.ValidationError, TypeError) as exc:
            arg = _error_argument(str(exc))
            where = f"argument {arg!r}" if arg else "arguments"
            raise ValidationError(
                f"task {self.name}: invalid {where}: {exc}", argument=arg
            ) from None

    def args_type_without(self, name: str) -> type[msgspec.Struct]:
        """The arguments' type less parameter ``name`` (the one a workflow step receives from
        the step before it), built once per name."""
        found = self._args_without.get(name)
        if found is None:
            fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
                (f.name, f.type) if f.required else (f.name, f.type, f.default)
                for f in msgspec.structs.fields(self.args_type)
                if f.name != name
            ]
            found = msgspec.defstruct(f"{self.name}.args_without_{name}", fields, kw_only=True)
            self._args_without[name] = found
        return found

    def validate_json(self, args: bytes) -> bytes:
        """Validate JSON arguments (e.g. from HTTP); return them normalised (defaults filled)."""
        return msgspec.json.encode(self.decode_args(args))

    def decode_args(self, args: bytes) -> msgspec.Struct:
        """Decode stored arguments. Raises ValidationError for anything that does not fit."""
        try:
            return self._decoder.decode(args)
        except msgspec.ValidationError as exc:
            arg = _error_argument(str(exc))
            where = f"argument {arg!r}" if arg else "arguments"
            raise ValidationError(
                f"task {self.name}: invalid {where}: {exc}", argument=arg
            ) from None
        except msgspec.DecodeError as exc:
            raise ValidationError(
                f"task {self.name}: arguments are not valid JSON: {exc}"
            ) from None

    def call_with(self, decoded: msgspec.Struct) -> Any:
        """Call the function with decoded arguments (positional-only ones by position)."""
        values = {f: getattr(decoded, f) for f in decoded.__struct_fields__}
        positional = [values.pop(n) for n in self._positional_only]
        return self.fn(*positional, **values)

    def decode_result(self, raw: bytes | None) -> Any:
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw, type=self._return_type)
        except msgspec.MsgspecError:
            return msgspec.json.decode(raw)

    def limit_buckets(self, args: bytes, queue: str) -> tuple[str, ...]:
        """The limits a job of this task with these arguments carries, in ``queue``."""
        own = self.limits.buckets(args) if self.limits is not None else []
        rules = self.app.queue_rules.get(queue)
        buckets = (*own, *rules.buckets) if rules is not None else tuple(own)
        if buckets:  # here, so HTTP enqueues refuse too
            fair = self.limits is not None and self.limits.fair_key is not None
            self.app.check_limits_supported(self.name, fair=fair)
        return buckets

    def args_schema(self) -> dict[str, Any]:
        """The JSON Schema of this task's arguments (an object, one property per parameter)."""
        schema: dict[str, Any] = msgspec.json.schema(self.args_type)
        return schema

    # -- workflow steps (offload.chain, offload.group) ---------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step; after another step, that step's result is its first argument."""
        return BoundTask(self, EnqueueOptions()).s(*args, **kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable workflow step: it never receives the previous step's result."""
        return BoundTask(self, EnqueueOptions()).si(*args, **kwargs)

    # -- enqueueing ------------------------------------------------------------------------

    def options(self, **options: Any) -> BoundTask[P, R]:
        """Per-call options: ``delay``, ``run_at``, ``priority``, ``queue``, ``key``,
        ``unique_for``, ``on_conflict``, ``max_attempts``, ``connection``, ``headers``. They
        never mix with the task's own arguments (see docs/schedules.md for
        ``unique_for``/``on_conflict``)."""
        try:
            opts = EnqueueOptions(**options)
        except TypeError as exc:
            raise ValidationError(f"task {self.name}: {exc}") from None
        return BoundTask(self, opts)

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> NewJob:
        """A validated job, not yet stored: pass a list of them to ``app.enqueue_many``."""
        return BoundTask(self, EnqueueOptions()).prepare(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store a job that runs this task with these arguments; return its handle."""
        return BoundTask(self, EnqueueOptions()).enqueue(*args, **kwargs)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``enqueue`` for async code."""
        return await BoundTask(self, EnqueueOptions()).aenqueue(*args, **kwargs)


class BoundTask(Generic[P, R]):
    """A task with per-call options applied (``task.options(...)``)."""

    def __init__(self, task: Task[P, R], opts: EnqueueOptions) -> None:
        self.task = task
        self.opts = opts

    def options(self, **options: Any) -> BoundTask[P, R]:
        return BoundTask(self.task, replace(self.opts, **options))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        from offload.workflow.canvas import Signature  # the canvas imports this module

        return Signature(self.task, args, kwargs, immutable=False, opts=self.opts)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        from offload.workflow.canvas import Signature

        return Signature(self.task, args, kwargs, immutable=True, opts=self.opts)

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> NewJob:
        return self.prepare_json(self.task.encode_args(*args, **kwargs))

    def prepare_json(self, args: bytes) -> NewJob:
        """A job from already-validated JSON arguments."""
        cfg, o = self.task.config, self.opts
        queue = o.queue or cfg.queue
        return NewJob(
            id=new_job_id(),
            task=cfg.name,
            queue=queue,
            args=args,
            priority=cfg.priority if o.priority is None else o.priority,
            max_attempts=o.max_attempts or cfg.max_attempts,
            delay_s=float(o.delay or 0.0),
            run_at=o.run_at_epoch(),
            key=o.key,
            headers=dict(o.headers) if o.headers else {},
            unique_for=None if o.unique_for is None else float(o.unique_for),
            on_conflict="replace" if o.on_conflict == "replace" else "keep",
            limits=self.task.limit_buckets(args, queue),
            retention=self.task.retention,
        )

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        job = self.prepare(*args, **kwargs)
        return self.task.app.enqueue_many([job], connection=self.opts.connection)[0]

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        job = self.prepare(*args, **kwargs)
        jobs = await self.task.app.aenqueue_many([job], connection=self.opts.connection)
        return jobs[0]


TaskFunction = Callable[..., Any] | Callable[..., Awaitable[Any]]
