"""The Redis backend's connection: options, clients, the scripts and how they are called, and
where a job id lives (a job id does not name its queue). A ``redis+cluster://`` URL gives
cluster clients (see :mod:`offload.backends.redis.cluster`); everything else is the same.

Every state change is one Lua script of ``lua/`` (``_common.lua`` prepended), called by its
SHA; the scripts are loaded at open and again after a server restart (``NOSCRIPT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from offload.backends import retention
from offload.backends.common import check_known, masked
from offload.backends.redis.cluster import (
    cluster_client,
    is_cluster_url,
    parse_cluster_url,
    slot_groups,
)
from offload.backends.redis.codec import translated
from offload.backends.redis.limits import RedisLimits
from offload.backends.redis.sync import SyncClient
from offload.errors import BackendUnavailable, ConfigurationError

T = TypeVar("T")

SCRIPTS = (
    "enqueue claim heartbeat complete expired recover cancel requeue delete purge prune_own pause "
    "watch worker_report worker_list progress schedule workflow_put workflow_read"
).split()
OPTIONS = ("prefix", "timeout", "connect_timeout", "pool_size", *retention.OPTIONS)


def _load_sources() -> dict[str, str]:
    folder = resources.files("offload.backends.redis").joinpath("lua")
    common = folder.joinpath("_common.lua").read_text(encoding="utf-8")
    return {n: common + folder.joinpath(f"{n}.lua").read_text(encoding="utf-8") for n in SCRIPTS}


class RedisConnection:
    """The clients of one backend instance and the calls every part of it makes."""

    def __init__(self, url: str, **options: Any) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        ours: dict[str, Any] = {k: query.pop(k) for k in OPTIONS if k in query}
        check_known("Redis backend", options, OPTIONS)
        ours.update(options)
        try:
            self.prefix = str(ours.get("prefix", "offload"))
            self.retention = retention.parse_retention(ours)
            self.timeout_s = float(ours.get("timeout", 5.0))
            self.connect_timeout_s = float(ours.get("connect_timeout", 1.0))
            pool_size = ours.get("pool_size")
            self.pool_size = None if pool_size in (None, "") else int(pool_size)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis backend option in {url!r}: {exc}") from None
        if not self.prefix or any(c in self.prefix for c in "{}* ?[]\\"):
            raise ConfigurationError(f"bad Redis key prefix {self.prefix!r}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigurationError("timeouts must be > 0")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigurationError("pool_size must be >= 1")
        self._redis_url = urlunsplit(parts._replace(query=urlencode(query)))
        self._nodes: list[tuple[str, int]] | None = None
        if is_cluster_url(url):
            self._redis_url, self._nodes = parse_cluster_url(self._redis_url)
        self._url = masked(url)
        self._global = "{" + self.prefix + "}"
        self._sources = _load_sources()
        self._shas = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self._sources.items()}
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where open() ran
        sync_options = {
            "client_name": f"offload:{self.prefix}",
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
            "pool_size": self.pool_size,
        }
        # queues this instance added to the set of known queues (see RedisBackend._new_queues)
        self._known_queues: set[str] = set()
        self._sync = SyncClient(
            self._redis_url,
            self._nodes,
            sync_options,
            list(self._sources.values()),
            self._known_queues.clear,
        )
        self._queue_of: dict[str, str] = {}  # job id -> queue, for the jobs this instance holds
        self._limits = RedisLimits()
        self._turn = 0  # which slot a cluster claim over several slots asks first
        # redis-py's cluster pool fails a call past its bound instead of waiting: on a cluster
        # with pool_size, these make callers wait their turn (commands, blocking pops).
        self._gate: asyncio.Semaphore | None = None
        self._blocking_gate: asyncio.Semaphore | None = None
        if self._nodes is not None and self.pool_size is not None:
            self._gate = asyncio.Semaphore(self.pool_size)
            self._blocking_gate = asyncio.Semaphore(self.pool_size)

    @property
    def url(self) -> str:
        return self._url

    @property
    def _retention_arg(self) -> str:
        # The ttl set on a finished job's hash, a backstop behind the maintenance sweep: the
        # longest retention of any state, or none (-1) while some state is kept for ever.
        longest = self.retention.longest_s()
        return "-1" if longest is None else repr(longest)

    @property
    def cluster(self) -> bool:
        """Whether this backend talks to a Redis Cluster."""
        return self._nodes is not None

    def base(self, queue: str) -> str:
        """The key prefix (with its hash tag) of every key of ``queue``."""
        return "{" + self.prefix + ":" + queue + "}"

    def slot_groups(self, queues: Sequence[str]) -> list[list[str]]:
        """``queues`` split so that one script call may touch each group: all of them on a
        single server, one group per hash slot on a cluster."""
        if self._nodes is None:
            return [list(queues)]
        return slot_groups(queues, self.base)

    # -- connections -------------------------------------------------------------------------

    def _make_client(self, socket_timeout: float | None) -> aioredis.Redis:
        kwargs: dict[str, Any] = {
            "client_name": f"offload:{self.prefix}",
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self.connect_timeout_s,
            # Bounded: an outage surfaces as BackendUnavailable within about a second or two
            # rather than hanging. Every script is safe to run twice (see the scripts).
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
        }
        if self._nodes is not None:
            if self.pool_size is not None:
                kwargs["max_connections"] = self.pool_size
            return cluster_client(self._redis_url, self._nodes, **kwargs)
        if self.pool_size is None:
            return aioredis.Redis.from_url(self._redis_url, **kwargs)
        # A caller past the bound waits for a free connection (a reply timeout for commands;
        # a blocking pop waits as long as its own wait) instead of failing.
        wait = self.timeout_s if socket_timeout is not None else None
        pool = aioredis.BlockingConnectionPool.from_url(
            self._redis_url, max_connections=self.pool_size, timeout=wait, **kwargs
        )
        return aioredis.Redis.from_pool(pool)

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
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        client, blocking = self._client, self._blocking
        self._client = self._blocking = None
        self._loop = None
        self._sync.close()
        for c in (client, blocking):
            if c is not None:
                with contextlib.suppress(RedisError, OSError):
                    await c.aclose()

    async def _load_scripts(self, client: aioredis.Redis) -> None:
        if self._nodes is not None:
            for source in self._sources.values():
                await client.script_load(source)  # redis-py sends it to every master
            return
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
        gate = self._gate
        if gate is None:
            return await self._run_now(op)
        try:
            async with asyncio.timeout(self.timeout_s):
                await gate.acquire()
        except TimeoutError:
            msg = f"no Redis connection free within {self.timeout_s}s (pool_size={self.pool_size})"
            raise BackendUnavailable(msg) from None
        try:
            return await self._run_now(op)
        finally:
            gate.release()

    async def _run_now(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        client = self._conn()
        with translated():
            try:
                return await op(client)
            except NoScriptError:
                self._known_queues.clear()  # a restarted or flushed server: data gone too?
                await self._load_scripts(client)
                return await op(client)

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop the backend was opened on, from another thread, and wait:
        what a sync caller does for the rare call the sync client does not take."""
        loop = self._loop
        if loop is None or self._client is None:
            coro.close()
            raise BackendUnavailable("the Redis backend is not open (call open() first)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

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

    async def _blpop(self, keys: Sequence[str], timeout_s: float) -> bytes | None:
        """Pop the first of ``keys`` to hold an item, waiting up to ``timeout_s``; return that
        key's name, or None. On a cluster, keys in several slots wait side by side, one pop
        per slot (:meth:`_blpop_slots`)."""
        if self._nodes is None:
            return await self._blpop_one(keys, timeout_s)
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        if len(groups) == 1:
            return await self._blpop_one(keys, timeout_s)
        return await self._blpop_slots(list(groups.values()), timeout_s)

    async def _blpop_slots(self, groups: Sequence[Sequence[str]], timeout_s: float) -> bytes | None:
        """One pop per slot; the first to return ends the others through a stop key of their
        slot that only this call knows (cancelling a pop would close its connection)."""
        token = os.urandom(8).hex()
        stops = [f"{g[0]}:stop:{token}" for g in groups]
        waits = [
            asyncio.ensure_future(self._blpop_one([*g, stop], timeout_s))
            for g, stop in zip(groups, stops, strict=True)
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            ending = [stop for w, stop in zip(waits, stops, strict=True) if not w.done()]
            if ending:
                await self._run(functools.partial(self._push_stops, stops=ending))
            got = await asyncio.gather(*waits, return_exceptions=True)
        finally:
            for w in waits:
                w.cancel()  # only if ending them failed: pops left blocked
        woken = [g for g in got if isinstance(g, bytes) and g.decode() not in stops]
        errors = [g for g in got if isinstance(g, BaseException)]
        if len(woken) > 1:  # a token taken by a pop that was being ended: give it back
            await self._run(functools.partial(self._push_back, keys=woken[1:]))
        if not woken and errors:
            raise errors[0]
        return woken[0] if woken else None

    async def _blpop_then_eval(
        self,
        keys: Sequence[str],
        timeout_s: float,
        name: str,
        script_keys: Sequence[str],
        args: Sequence[Any],
    ) -> Any:
        """BLPOP ``keys`` with the script ``name`` sent behind it on the same connection.
        Redis runs a connection's commands in order, so the script runs the moment the pop
        ends (an item, or the timeout) and its reply comes back with the pop's: one round trip
        after the wake-up instead of two. Returns the script's reply (a NoScriptError
        instance when the scripts are gone), or None when the wait ended otherwise (a
        half-open connection, or no connection free in time). One slot: not on a cluster."""

        async def both(seconds: float) -> Any:
            blocking = self._blocking
            if blocking is None:
                raise BackendUnavailable("the Redis backend is not open (call open() first)")
            pipe = blocking.pipeline(transaction=False)
            pipe.blpop(list(keys), timeout=seconds)
            self._eval(pipe, name, script_keys, args)
            try:
                _, reply = await asyncio.wait_for(
                    pipe.execute(raise_on_error=False), seconds + self.timeout_s
                )
            except TimeoutError:
                return None  # a half-open connection: as good as a timeout
            return reply

        with translated():
            reply = await self._blocking_call(both, timeout_s)
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
        return reply

    @staticmethod
    async def _push_stops(client: aioredis.Redis, stops: Sequence[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for stop in stops:
            pipe.rpush(stop, 1)
            pipe.pexpire(stop, 60_000)  # gone soon even if its pop had already ended
        await pipe.execute()

    @staticmethod
    async def _push_back(client: aioredis.Redis, keys: Sequence[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.rpush(key, 1)
        await pipe.execute()

    async def _blpop_one(self, keys: Sequence[str], timeout_s: float) -> bytes | None:
        return await self._blocking_call(functools.partial(self._blpop_now, keys), timeout_s)

    async def _blocking_call(
        self, wait: Callable[[float], Awaitable[T]], timeout_s: float
    ) -> T | None:
        """``wait(seconds)`` (a blocking command) within ``timeout_s``, on a connection of the
        blocking client; with ``pool_size``, first a free one, the time spent getting it taken
        from the wait. None when that took the whole time: as good as a timeout."""
        gate = self._blocking_gate
        if gate is None:
            return await wait(timeout_s)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await gate.acquire()
        except TimeoutError:
            return None
        try:
            left = timeout_s - (time.monotonic() - started)
            # BLPOP's timeout 0 would mean "forever".
            return None if left < 0.001 else await wait(left)
        finally:
            gate.release()

    async def _blpop_now(self, keys: Sequence[str], timeout_s: float) -> bytes | None:
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
