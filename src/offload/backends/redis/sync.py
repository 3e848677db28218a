"""The Redis backend's sync client: the same scripts, called from a sync caller's own thread.

A sync ``enqueue()`` (a Django or Flask view, a script, a sync task) would otherwise hop into
the event loop the backend lives on and back; redis-py's sync client is thread-safe (a pool
of connections), so the caller's thread does the one round trip itself. The client is made
on first use, so a worker that never enqueues from sync code never opens it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from offload.backends.redis.codec import translated

T = TypeVar("T")


class SyncClient:
    """One lazily made sync client (and its pool) of one backend instance."""

    def __init__(
        self,
        url: str,
        nodes: Sequence[tuple[str, int]] | None,
        options: Mapping[str, Any],
        sources: Sequence[str],
        on_reload: Callable[[], None],
    ) -> None:
        self._url = url
        self._nodes = nodes
        self._options = dict(options)
        self._sources = list(sources)
        self._on_reload = on_reload  # told when the scripts were gone (a restarted server)
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None

    def _get(self) -> redis.Redis:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._make()
            return self._client

    def _make(self) -> redis.Redis:
        kwargs: dict[str, Any] = {
            **self._options,
            # as the async client: an outage surfaces as BackendUnavailable within a second or
            # two; every script is safe to run twice
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
        }
        pool_size = kwargs.pop("pool_size", None)
        if self._nodes is not None:
            if pool_size is not None:
                kwargs["max_connections"] = pool_size
            nodes = [ClusterNode(h, p) for h, p in self._nodes]  # type: ignore[no-untyped-call]
            return cast(
                "redis.Redis", RedisCluster.from_url(self._url, startup_nodes=nodes, **kwargs)
            )
        if pool_size is None:
            return redis.Redis.from_url(self._url, **kwargs)
        pool = redis.BlockingConnectionPool.from_url(
            self._url, max_connections=pool_size, timeout=kwargs["socket_timeout"], **kwargs
        )
        return redis.Redis.from_pool(pool)

    def run(self, op: Callable[[redis.Redis], T]) -> T:
        """``op`` with engine errors translated; the scripts loaded again once on NOSCRIPT
        (after a server restart or SCRIPT FLUSH), then ``op`` again."""
        client = self._get()
        with translated():
            try:
                return op(client)
            except NoScriptError:
                self._on_reload()
                self._load_scripts(client)
                return op(client)

    def _load_scripts(self, client: redis.Redis) -> None:
        if self._nodes is not None:
            for source in self._sources:
                client.script_load(source)  # redis-py sends it to every master
            return
        pipe = client.pipeline(transaction=False)
        for source in self._sources:
            pipe.script_load(source)
        pipe.execute()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                client.close()
