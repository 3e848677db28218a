"""Encoding between offload's values and the Redis backend's storage: job hashes, framed
batches for the scripts, packed replies, expired-lease decisions, and error translation.

Everything read back is untrusted: decoders raise :class:`Undecodable` (or skip a damaged
history) rather than let a malformed record crash a caller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import msgspec
from redis.exceptions import RedisClusterException, RedisError

from offload.backends.common import expired_lease
from offload.errors import BackendUnavailable, describe
from offload.job import (
    AttemptError,
    JobFilter,
    JobRecord,
    JobRetention,
    JobState,
    Lease,
    WorkerInfo,
)
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded

_log = logging.getLogger("offload.backends.redis")


class Blob(msgspec.Struct, array_like=True, frozen=True):
    """A job's immutable part (hash field ``d``). ``headers`` is written only when there are
    some, so a job without them has the five items older releases wrote and read."""

    task: str
    args: bytes
    priority: int
    max_attempts: int
    key: str | None
    headers: dict[str, str] = {}


BLOB = msgspec.msgpack.Decoder(Blob)
ENC = msgspec.msgpack.Encoder()


def encode_blob(task: str, args: bytes, priority: int, max_attempts: int, key: str | None,
                headers: dict[str, str]) -> bytes:  # fmt: skip
    if headers:
        return ENC.encode((task, args, priority, max_attempts, key, headers))
    return ENC.encode((task, args, priority, max_attempts, key))


class RawError(msgspec.Struct, frozen=True):
    attempt: int
    at: int
    error: str
    worker_id: str | None = None


_ERRORS = msgspec.json.Decoder(list[RawError])
WORKER = msgspec.json.Decoder(WorkerInfo)
PACKED = msgspec.msgpack.Decoder(list[bytes])


class Undecodable(Exception):
    pass


def from_us(us: bytes | int) -> float:
    return int(us) / 1e6


def to_us(seconds: float) -> int:
    return round(seconds * 1e6)


def attempt_errors(raw: bytes | None) -> tuple[AttemptError, ...]:
    if not raw:
        return ()
    try:
        items = _ERRORS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ()  # a damaged history must not make the job unreadable
    return tuple(
        AttemptError(attempt=e.attempt, at=e.at / 1e6, error=e.error, worker_id=e.worker_id)
        for e in items
    )


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def from_hash(job_id: str, queue: str, h: Mapping[bytes, bytes]) -> JobRecord:
    """A record from a job hash; raises Undecodable when it is malformed."""
    try:
        blob = BLOB.decode(h[b"d"])
        task, args, priority, max_attempts, key = (
            blob.task, blob.args, blob.priority, blob.max_attempts, blob.key
        )  # fmt: skip
        t, f, lease = h.get(b"t"), h.get(b"f"), h.get(b"l")
        return JobRecord(
            id=job_id,
            task=task,
            queue=queue,
            args=args,
            state=JobState(h[b"s"].decode()),
            priority=priority,
            attempt=int(h[b"a"]),
            max_attempts=max_attempts,
            run_at=from_us(h[b"r"]),
            created_at=from_us(h[b"c"]),
            key=key,
            started_at=None if t is None else from_us(t),
            finished_at=None if f is None else from_us(f),
            worker_id=_text(h.get(b"w")),
            lease_expires_at=None if lease is None else from_us(lease),
            result=h.get(b"o"),
            error=_text(h.get(b"e")),
            errors=attempt_errors(h.get(b"x")),
            headers=blob.headers,
            progress=h.get(b"g"),
            limits=split_limits(h.get(b"b")),
            retention=decode_retention(h.get(b"v")),
        )
    except (KeyError, ValueError, TypeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Undecodable(f"undecodable job record {job_id}: {exc}") from None


def encode_retention(own: JobRetention | None) -> str:
    """A job's own retention as its hash field ``v`` keeps it (``_common.lua``): seconds by
    final state, comma-separated, empty for the backend's; '' for none at all."""
    if own is None:
        return ""
    return ",".join("" if s is None else repr(s) for s in msgspec.structs.astuple(own))


def decode_retention(raw: bytes | None) -> JobRetention | None:
    if not raw:
        return None
    parts = raw.decode().split(",")
    if len(parts) != 3:
        raise ValueError(f"a retention of {len(parts)} states")
    return JobRetention(*(float(p) if p else None for p in parts))


def split_limits(raw: bytes | None) -> tuple[str, ...]:
    """A job's limit buckets, kept newline-joined in its hash field ``b`` (absent: none)."""
    return tuple(raw.decode().split("\n")) if raw else ()


def pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def outcome_fields(lease: Lease, outcome: Outcome) -> list[bytes | str | int]:
    head: list[bytes | str | int] = [lease.job_id, lease.worker_id, lease.attempt]
    if isinstance(outcome, Succeeded):
        if outcome.result is None:
            return [*head, "s", 0, ""]
        return [*head, "S", 0, outcome.result]
    if isinstance(outcome, RetryAt):
        return [*head, "R", max(to_us(outcome.delay_s), 0), outcome.error]
    if isinstance(outcome, Dead):
        return [*head, "D", 0, outcome.error]
    if isinstance(outcome, Cancelled):
        return [*head, "C", 0, outcome.reason]
    assert isinstance(outcome, Snoozed)
    return [*head, "Z", max(to_us(outcome.delay_s), 0), ""]


def frame(fields: Sequence[bytes | str | int]) -> bytes:
    """Fields as the scripts read a batch: each a 4-byte big-endian length, then its bytes."""
    parts: list[bytes] = []
    for f in fields:
        raw = f if isinstance(f, bytes) else str(f).encode()
        parts.append(len(raw).to_bytes(4, "big"))
        parts.append(raw)
    return b"".join(parts)


def expired_argv(reply: Sequence[bytes]) -> list[bytes | str | int]:
    """The decisions for the jobs ``expired.lua`` found, as ``recover.lua`` takes them: the
    server's time (us), then id, worker id, attempt, fate, error per job. Each fate is
    :func:`~offload.backends.common.expired_lease`'s, at the server's time (never ours).
    A damaged job (attempt counts that do not read as numbers, or missing, or no worker id)
    is skipped with a warning, as the SQL engines do: it must not stop every recovery pass."""
    now_us = int(reply[0])
    out: list[bytes | str | int] = [now_us]
    for k in range(1, len(reply), 4):
        raw_id, attempt, max_attempts, worker = reply[k : k + 4]
        try:
            if raw_id is None or worker is None:
                raise TypeError("no id or worker id")
            fate = expired_lease(int(attempt), int(max_attempts), _text(worker), now_us / 1e6)
        except (TypeError, ValueError):
            _log.warning("job %r: unreadable lease fields; left for an operator", raw_id)
            continue
        out += [raw_id, worker, int(attempt), fate.state.value, fate.error.error]
    return out


def matches(j: JobRecord, f: JobFilter) -> bool:
    return (
        (f.state is None or j.state is f.state)
        and (f.task is None or j.task == f.task)
        and (f.args_contains is None or f.args_contains.encode() in j.args)
    )


FINAL_STATE_NAMES = frozenset(s.value for s in JobState if s.final)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Engine errors become BackendUnavailable (the operation did not take effect, or its
    effect is safe to repeat); nothing redis-specific escapes."""
    try:
        yield
    except (RedisError, RedisClusterException) as exc:
        raise BackendUnavailable(f"Redis: {describe(exc)}") from exc
    except OSError as exc:
        raise BackendUnavailable(f"Redis: {describe(exc)}") from exc
