"""``redis://`` and ``rediss://`` — jobs in Redis, every state change one Lua script.

Layout (see docs/redis.md): each queue's keys share the hash tag ``{<prefix>:<queue>}``, so
each script call that touches one queue stays in one Redis Cluster slot; a few global keys
(known queues, workers) share the tag ``{<prefix>}``. Times come from the server (``TIME``
inside the scripts) as integer microseconds.

A job id does not name its queue: an instance remembers the queue of the jobs it claimed
(for heartbeats and completions); any other lookup by id asks each known queue in one
pipelined round trip. Jobs read back are untrusted: one that does not decode is skipped by
reads and put to ``dead`` when a claim meets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError, RedisError

from offload.backends.base import Capabilities, check_purge_states
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.backends.redis.codec import (
    BLOB,
    ENC,
    FINAL_STATE_NAMES,
    PACKED,
    WORKER,
    Undecodable,
    attempt_errors,
    decode_cursor,
    encode_cursor,
    frame,
    from_hash,
    from_us,
    matches,
    outcome_fields,
    pairs,
    to_us,
    translated,
)
from offload.errors import BackendUnavailable, ConfigurationError, InvalidState, QueueFull
from offload.job import (
    ClaimRequest,
    JobFilter,
    JobPage,
    JobRecord,
    JobState,
    Lease,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Dead, Outcome

_log = logging.getLogger("offload.backends.redis")
T = TypeVar("T")

SCRIPTS = (
    "enqueue claim heartbeat complete recover cancel requeue delete purge pause maintain watch "
    "worker_report worker_list"
).split()
BATCH = 1000  # jobs one recover or maintenance call handles per queue: keeps scripts short
DONE_WAIT_MARGIN_S = 5.0  # a waiter's note outlives its wait, so a finish always sees it


def _load_sources() -> dict[str, str]:
    folder = resources.files("offload.backends.redis").joinpath("lua")
    common = folder.joinpath("_common.lua").read_text(encoding="utf-8")
    return {n: common + folder.joinpath(f"{n}.lua").read_text(encoding="utf-8") for n in SCRIPTS}


class RedisBackend:
    """Jobs in Redis (or anything speaking its protocol with Lua, 7.0 or later).

    Options (URL query or keyword arguments; a keyword wins): ``prefix`` (default
    ``offload``), ``retention`` (seconds a finished job is kept before :meth:`run_maintenance`
    deletes it; unset: kept until purged), ``timeout`` (seconds to wait for a reply, default
    5), ``connect_timeout`` (default 1). Other query parameters go to redis-py as they are.
    """

    capabilities = Capabilities(notify=True)

    def __init__(self, url: str, **options: Any) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        ours: dict[str, Any] = {
            k: query.pop(k)
            for k in ("prefix", "retention", "timeout", "connect_timeout")
            if k in query
        }
        unknown = set(options) - {"prefix", "retention", "timeout", "connect_timeout"}
        if unknown:
            raise ConfigurationError(f"unknown Redis backend options: {', '.join(sorted(unknown))}")
        ours.update(options)
        try:
            self.prefix = str(ours.get("prefix", "offload"))
            retention = ours.get("retention")
            self.retention_s = None if retention in (None, "") else float(retention)
            self.timeout_s = float(ours.get("timeout", 5.0))
            self.connect_timeout_s = float(ours.get("connect_timeout", 1.0))
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis backend option in {url!r}: {exc}") from None
        if not self.prefix or any(c in self.prefix for c in "{}* ?[]\\"):
            raise ConfigurationError(f"bad Redis key prefix {self.prefix!r}")
        if (self.retention_s or 0) < 0 or self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigurationError("retention must be >= 0, timeouts > 0")
        self._redis_url = urlunsplit(parts._replace(query=urlencode(query)))
        netloc = parts.netloc
        if parts.password:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        self._url = urlunsplit(parts._replace(netloc=netloc))
        self._global = "{" + self.prefix + "}"
        self._sources = _load_sources()
        self._shas = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self._sources.items()}
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._queue_of: dict[str, str] = {}  # job id -> queue, for the jobs this instance holds

    @property
    def url(self) -> str:
        return self._url

    @property
    def _retention_arg(self) -> str:
        return "-1" if self.retention_s is None else repr(self.retention_s)

    def base(self, queue: str) -> str:
        """The key prefix (with its hash tag) of every key of ``queue``."""
        return "{" + self.prefix + ":" + queue + "}"

    # -- connections -------------------------------------------------------------------------

    def _make_client(self, socket_timeout: float | None) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._redis_url,
            client_name=f"offload:{self.prefix}",
            socket_timeout=socket_timeout,
            socket_connect_timeout=self.connect_timeout_s,
            # Bounded: an outage surfaces as BackendUnavailable within about a second or two
            # rather than hanging. Every script is safe to run twice (see the scripts).
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
        )

    async def open(self) -> None:
        if self._client is not None:
            return
        client = self._make_client(self.timeout_s)
        blocking = self._make_client(None)  # blocking pops wait longer than any reply timeout
        try:
            with translated():
                await self._load_scripts(client)
        except BaseException:
            await client.aclose()
            await blocking.aclose()
            raise
        self._client, self._blocking = client, blocking

    async def close(self) -> None:
        client, blocking = self._client, self._blocking
        self._client = self._blocking = None
        for c in (client, blocking):
            if c is not None:
                with contextlib.suppress(RedisError, OSError):
                    await c.aclose()

    async def _load_scripts(self, client: aioredis.Redis) -> None:
        pipe = client.pipeline(transaction=False)
        for source in self._sources.values():
            pipe.script_load(source)
        await pipe.execute()

    def _conn(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable("the Redis backend is not open (call open() first)")
        return self._client

    async def _run(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``op`` with engine errors translated; reload scripts once on NOSCRIPT (after a
        server restart or SCRIPT FLUSH) and run it again."""
        client = self._conn()
        with translated():
            try:
                return await op(client)
            except NoScriptError:
                await self._load_scripts(client)
                return await op(client)

    def _eval(self, target: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return target.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)

    async def _per_queue(self, name: str, calls: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Run script ``name`` once per queue (``calls``: queue -> argv) in one round trip."""
        if not calls:
            return {}

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for queue, argv in calls.items():
                self._eval(pipe, name, [self.base(queue)], argv)
            return list(await pipe.execute())

        return dict(zip(calls, await self._run(op), strict=True))

    async def known_queues(self) -> list[str]:
        """Every queue a job was ever enqueued to (or paused) under this prefix."""
        raw = await self._run(lambda c: c.smembers(f"{self._global}:queues"))
        return sorted(q.decode() if isinstance(q, bytes) else str(q) for q in raw)

    async def _locate(self, job_ids: Sequence[str]) -> dict[str, tuple[str, dict[bytes, bytes]]]:
        """The queue and hash of each stored job among ``job_ids`` (one round trip per call
        after the list of queues)."""
        queues = await self.known_queues()
        if not job_ids or not queues:
            return {}

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for job_id in job_ids:
                for queue in queues:
                    pipe.hgetall(f"{self.base(queue)}:j:{job_id}")
            return list(await pipe.execute())

        hashes = iter(await self._run(op))
        found: dict[str, tuple[str, dict[bytes, bytes]]] = {}
        for job_id in job_ids:
            for queue in queues:
                h = next(hashes)
                if h and job_id not in found:
                    found[job_id] = (queue, h)
        return found

    async def _queues_of(self, job_ids: Sequence[str]) -> dict[str, str]:
        known = {i: self._queue_of[i] for i in job_ids if i in self._queue_of}
        missing = [i for i in job_ids if i not in known]
        if missing:
            known.update({i: q for i, (q, _) in (await self._locate(missing)).items()})
        return known

    # -- producing ---------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        if not jobs:
            return []
        queues = list(dict.fromkeys(j.queue for j in jobs))
        index = {q: i + 1 for i, q in enumerate(queues)}
        limits = limits or {}
        fields: list[bytes | str | int] = []
        for j in jobs:
            priority = min(max(j.priority, 0), 9)
            blob = ENC.encode((j.task, j.args, priority, j.max_attempts, j.key))
            run_at = "" if j.run_at is None else to_us(j.run_at)
            fields += [
                index[j.queue],
                j.id,
                blob,
                priority,
                j.max_attempts,
                run_at,
                max(to_us(j.delay_s), 0),
                j.key or "",
            ]
        keys = [self.base(q) for q in queues]
        argv = [frame(fields), *(limits.get(q, -1) for q in queues)]

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.sadd(f"{self._global}:queues", *queues)
            self._eval(pipe, "enqueue", keys, argv)
            return list(await pipe.execute())

        _, reply = await self._run(op)
        if reply[0] == 0:
            queue = queues[int(reply[1]) - 1]
            raise QueueFull(queue, limits[queue])
        now = int(reply[0])
        out = [self._fresh(j, now) for j in jobs]
        for k in range(1, len(reply), 3):
            pos, dup_id = int(reply[k]), reply[k + 1].decode()
            queue = jobs[pos].queue
            try:
                out[pos] = from_hash(dup_id, queue, pairs(reply[k + 2]))
            except Undecodable as exc:
                raise BackendUnavailable(f"cannot read the job the key refers to: {exc}") from None
        return out

    @staticmethod
    def _fresh(j: NewJob, now_us: int) -> JobRecord:
        run_at = to_us(j.run_at) if j.run_at is not None else now_us + max(to_us(j.delay_s), 0)
        return JobRecord(
            id=j.id,
            task=j.task,
            queue=j.queue,
            args=j.args,
            state=JobState.QUEUED if run_at <= now_us else JobState.SCHEDULED,
            priority=min(max(j.priority, 0), 9),
            attempt=0,
            max_attempts=j.max_attempts,
            run_at=run_at / 1e6,
            created_at=now_us / 1e6,
            key=j.key,
        )

    # -- consuming ---------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        if req.limit <= 0 or not req.queues or req.job_ids == ():
            return []
        queues = list(dict.fromkeys(req.queues))
        keys = [self.base(q) for q in queues]
        argv = [req.limit, req.worker_id, max(to_us(req.lease_s), 0), os.urandom(8).hex()]
        if req.job_ids is not None:
            argv += dict.fromkeys(req.job_ids)  # the script takes only these, when due
        raw = await self._run(lambda c: self._eval(c, "claim", keys, argv))
        reply = PACKED.decode(raw)
        started, expires = from_us(reply[0]), from_us(reply[1])
        out: list[JobRecord] = []
        undecodable: list[tuple[Lease, Outcome]] = []
        for k in range(2, len(reply), 7):
            qi, raw_id, blob, attempt, run_at, created, errors = reply[k : k + 7]
            job_id, queue = raw_id.decode(), queues[int(qi) - 1]
            self._queue_of[job_id] = queue
            try:
                task, args, priority, max_attempts, key = BLOB.decode(blob)
                rec = JobRecord(
                    id=job_id,
                    task=task,
                    queue=queue,
                    args=args,
                    state=JobState.RUNNING,
                    priority=priority,
                    attempt=int(attempt),
                    max_attempts=max_attempts,
                    run_at=from_us(run_at),
                    created_at=from_us(created),
                    key=key,
                    started_at=started,
                    worker_id=req.worker_id,
                    lease_expires_at=expires,
                    errors=attempt_errors(errors),
                )
            except (ValueError, TypeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("burying undecodable job %s: %s", job_id, exc)
                lease = Lease(job_id=job_id, worker_id=req.worker_id, attempt=int(attempt))
                undecodable.append((lease, Dead(f"undecodable job record: {exc}")))
                continue
            out.append(rec)
        if undecodable:
            await self.complete(undecodable)
        return out

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        where = await self._queues_of([lease.job_id for lease in leases])
        calls: dict[str, list[Any]] = {}
        for lease in leases:
            if lease.job_id in where:
                calls.setdefault(where[lease.job_id], [max(to_us(lease_s), 0)]).extend(
                    (lease.job_id, lease.worker_id, lease.attempt)
                )
        replies = await self._per_queue("heartbeat", calls)
        held = {i.decode() for ids in replies.values() for i in ids}
        for lease in leases:
            if lease.job_id not in held:
                self._queue_of.pop(lease.job_id, None)
        return held

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        where = await self._queues_of([lease.job_id for lease, _ in results])
        fields: dict[str, list[bytes | str | int]] = {}
        for lease, outcome in results:
            if lease.job_id in where:
                fields.setdefault(where[lease.job_id], []).extend(outcome_fields(lease, outcome))
        calls = {q: [self._retention_arg, frame(f)] for q, f in fields.items()}
        await self._per_queue("complete", calls)
        for lease, _ in results:
            self._queue_of.pop(lease.job_id, None)

    async def recover(self) -> int:
        argv = [self._retention_arg, LEASE_EXPIRED_ERROR, BATCH]
        calls = {q: argv for q in await self.known_queues()}
        return sum(int(n) for n in (await self._per_queue("recover", calls)).values())

    async def run_maintenance(self) -> int:
        """Delete finished jobs past the retention (none when it is unset) and forget lapsed
        workers. Concurrent callers share the work: each job is deleted, and counted, once."""
        await self.workers()
        if self.retention_s is None:
            return 0
        deleted = 0
        pending = await self.known_queues()
        while pending:
            replies = await self._per_queue(
                "maintain", {q: [repr(self.retention_s), BATCH] for q in pending}
            )
            deleted += sum(int(n) for n in replies.values())
            pending = [q for q, n in replies.items() if int(n) >= BATCH]
        return deleted

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        queues = list(dict.fromkeys(queues))
        if not queues:
            await asyncio.sleep(max(timeout_s, 0.0))
            return

        async def probe(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.time()
            for q in queues:
                pipe.exists(f"{self.base(q)}:paused")
                pipe.zcard(f"{self.base(q)}:ready")
                pipe.zrange(f"{self.base(q)}:sched", 0, 0, withscores=True)
            return list(await pipe.execute())

        reply = await self._run(probe)
        secs, micros = reply[0]
        now_us = secs * 1_000_000 + micros
        for k in range(1, len(reply), 3):
            paused, ready, first_due = reply[k : k + 3]
            if paused:
                continue
            if ready:
                return
            if first_due:
                timeout_s = min(timeout_s, (first_due[0][1] - now_us) / 1e6)
        if timeout_s <= 0.001:
            return
        await self._blpop([f"{self.base(q)}:wake" for q in queues], timeout_s)

    async def _blpop(self, keys: Sequence[str], timeout_s: float) -> bytes | None:
        blocking = self._blocking
        if blocking is None:
            raise BackendUnavailable("the Redis backend is not open (call open() first)")
        with translated():
            try:
                got: Any = await asyncio.wait_for(
                    blocking.blpop(list(keys), timeout=timeout_s), timeout_s + self.timeout_s
                )
            except TimeoutError:
                return None  # a half-open connection: as good as a timeout
        return None if got is None else bytes(got[0])

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        found = await self._locate([job_id])
        if job_id not in found:
            return None
        queue, h = found[job_id]
        base = self.base(queue)
        if h.get(b"s", b"").decode() not in FINAL_STATE_NAMES and timeout_s > 0:
            ttl_us = to_us(timeout_s + DONE_WAIT_MARGIN_S)
            argv = [job_id, ttl_us]
            # Noted first, then the state read in the same step: a finish after it signals.
            state = await self._run(lambda c: self._eval(c, "watch", [base], argv))
            if state is not None and state.decode() not in FINAL_STATE_NAMES:
                done = f"{base}:done:{job_id}"
                if await self._blpop([done], timeout_s) is not None:
                    # Pass the signal on to any other waiter on this job.
                    await self._run(lambda c: c.rpush(done, 1))
        return await self.get(job_id)

    # -- inspecting and steering -------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        found = await self._locate([job_id])
        if job_id not in found:
            return None
        queue, h = found[job_id]
        try:
            return from_hash(job_id, queue, h)
        except Undecodable as exc:
            _log.warning("%s", exc)
            return None

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        limit = max(1, flt.limit)
        cursor = decode_cursor(flt.cursor) if flt.cursor else None
        before = to_us(flt.created_before) if flt.created_before is not None else None
        hi: str | int = "+inf" if cursor is None else cursor[0]
        if before is not None and cursor is None:
            hi = f"({before}"
        lo: str | int = "-inf" if flt.created_after is None else to_us(flt.created_after)
        queues = [flt.queue] if flt.queue is not None else await self.known_queues()
        found: list[tuple[int, str, JobRecord]] = []
        for queue in queues:
            found += await self._scan_created(queue, flt, hi, lo, limit + 1, cursor, before)
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        page = found[:limit]
        nxt = encode_cursor(page[-1][0], page[-1][1]) if len(found) > limit else None
        return JobPage(jobs=[rec for _, _, rec in page], next_cursor=nxt)

    async def _scan_created(
        self,
        queue: str,
        flt: JobFilter,
        hi: str | int,
        lo: str | int,
        want: int,
        cursor: tuple[int, str] | None,
        before: int | None,
    ) -> list[tuple[int, str, JobRecord]]:
        """Up to ``want`` jobs of ``queue`` matching ``flt``, newest first, walking the
        creation index in chunks."""
        base, offset, chunk = self.base(queue), 0, min(max(want, 100), 1000)
        out: list[tuple[int, str, JobRecord]] = []

        async def window(client: aioredis.Redis, start: int) -> list[tuple[bytes, float]]:
            key = f"{base}:created"
            got: Any = await client.zrevrangebyscore(key, hi, lo, start, chunk, withscores=True)
            return [(raw, float(score)) for raw, score in got]

        async def fetch(client: aioredis.Redis, ids: list[bytes]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for raw in ids:
                pipe.hgetall(f"{base}:j:{raw.decode()}")
            return list(await pipe.execute())

        while len(out) < want:
            entries = await self._run(functools.partial(window, start=offset))
            if not entries:
                break
            offset += len(entries)
            ids = [raw for raw, _ in entries]
            hashes = await self._run(functools.partial(fetch, ids=ids))
            for (raw, score), h in zip(entries, hashes, strict=True):
                created, job_id = int(score), raw.decode()
                if not h or (before is not None and created >= before):
                    continue
                if cursor is not None and (created, job_id) >= cursor:
                    continue
                try:
                    rec = from_hash(job_id, queue, h)
                except Undecodable as exc:
                    _log.warning("%s", exc)
                    continue
                if matches(rec, flt):
                    out.append((created, job_id, rec))
            if len(entries) < chunk:
                break
        return out[:want]

    async def counts(self) -> dict[str, dict[JobState, int]]:
        queues = await self.known_queues()
        sets = [
            ("ready", JobState.QUEUED),
            ("sched", JobState.SCHEDULED),
            ("lease", JobState.RUNNING),
            ("succeeded", JobState.SUCCEEDED),
            ("dead", JobState.DEAD),
            ("cancelled", JobState.CANCELLED),
        ]

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for q in queues:
                for name, _ in sets:
                    pipe.zcard(f"{self.base(q)}:{name}")
            return list(await pipe.execute())

        numbers = iter(await self._run(op))
        out: dict[str, dict[JobState, int]] = {}
        for q in queues:
            by_state = {state: int(next(numbers)) for _, state in sets}
            if any(by_state.values()):
                out[q] = {s: n for s, n in by_state.items() if n}
        return out

    async def _steer(self, name: str, job_id: str, argv: Sequence[Any]) -> JobRecord | None:
        where = await self._queues_of([job_id])
        if job_id not in where:
            return None
        queue = where[job_id]
        reply = (await self._per_queue(name, {queue: [job_id, *argv]}))[queue]
        if not reply:
            return None
        if reply[0] == b"invalid":
            state = reply[1].decode()
            if state == "key":
                msg = f"job {job_id} cannot be retried: another active job holds its key"
                raise InvalidState(msg)
            verb = "cancelled" if name == "cancel" else "retried"
            raise InvalidState(f"job {job_id} is {state}; it cannot be {verb}")
        return from_hash(job_id, queue, pairs(reply[1]))

    async def cancel(self, job_id: str) -> JobRecord | None:
        try:
            return await self._steer("cancel", job_id, [self._retention_arg, "cancelled"])
        except Undecodable as exc:
            _log.warning("%s", exc)
            return None

    async def requeue(self, job_id: str) -> JobRecord | None:
        try:
            return await self._steer("requeue", job_id, [])
        except Undecodable as exc:
            _log.warning("%s", exc)
            return None

    async def delete(self, job_ids: Sequence[str]) -> int:
        where = await self._queues_of(list(dict.fromkeys(job_ids)))
        calls: dict[str, list[str]] = {}
        for job_id, queue in where.items():
            calls.setdefault(queue, []).append(job_id)
        return sum(int(n) for n in (await self._per_queue("delete", calls)).values())

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        check_purge_states(states)
        if not states:
            return 0
        queues = [queue] if queue is not None else await self.known_queues()
        argv = [max(to_us(older_than_s), 0), *(s.value for s in states)]
        return sum(
            int(n) for n in (await self._per_queue("purge", dict.fromkeys(queues, argv))).values()
        )

    async def set_paused(self, queue: str, paused: bool) -> None:
        async def op(client: aioredis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.sadd(f"{self._global}:queues", queue)
            self._eval(pipe, "pause", [self.base(queue)], ["1" if paused else "0"])
            await pipe.execute()

        await self._run(op)

    async def paused_queues(self) -> set[str]:
        queues = await self.known_queues()

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for q in queues:
                pipe.exists(f"{self.base(q)}:paused")
            return list(await pipe.execute())

        return {q for q, p in zip(queues, await self._run(op), strict=True) if p}

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        argv = [info.id, msgspec.json.encode(info), max(to_us(ttl_s), 0)]
        await self._run(lambda c: self._eval(c, "worker_report", [self._global], argv))

    async def remove_worker(self, worker_id: str) -> None:
        await self._run(lambda c: self._eval(c, "worker_list", [self._global], [worker_id]))

    async def workers(self) -> list[WorkerInfo]:
        rows = await self._run(lambda c: self._eval(c, "worker_list", [self._global], []))
        out = []
        for _, report, seen in rows:
            try:
                info = WORKER.decode(report)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # untrusted storage: skip a report that does not decode
            out.append(msgspec.structs.replace(info, last_seen_at=from_us(seen)))
        return out
