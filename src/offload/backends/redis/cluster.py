"""Redis Cluster mode (``redis+cluster://``, ``rediss+cluster://``): the URL form, the client,
and how queues group by hash slot.

Every key of a queue carries the hash tag ``{<prefix>:<queue>}``, so each queue lives in one
slot; a script may only touch keys of one slot, so work over several queues is split into one
call per slot (:func:`slot_groups`). The few keys shared by all queues (the set of known
queues, the worker registry) carry the tag ``{<prefix>}``: they live in one slot of their own,
and every command on them touches that slot only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from offload.errors import ConfigurationError

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in SCHEMES


def _node(text: str, url: str) -> tuple[str, int]:
    host, port = text, "6379"
    if text.startswith("["):  # an IPv6 address: [::1]:7000
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif ":" in text:
        host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigurationError(f"bad port {port!r} in Redis Cluster URL {url!r}") from None
    if not host or not 0 < number < 65536:
        raise ConfigurationError(f"bad node {text!r} in Redis Cluster URL {url!r}")
    return host, number


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Split ``redis+cluster://[user:pass@]host:port,host:port[/0][?query]`` into a one-node
    URL redis-py reads (credentials, TLS, query options) and the startup nodes."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = [_node(h.strip(), url) for h in hosts.split(",") if h.strip()]
    if not nodes:
        raise ConfigurationError(f"no node in Redis Cluster URL {url!r}")
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(f"a Redis Cluster has database 0 only, not {parts.path!r}")
    host, port = nodes[0]
    netloc = (userinfo + "@" if userinfo else "") + (f"[{host}]" if ":" in host else host)
    one = urlunsplit((SCHEMES[parts.scheme.lower()], f"{netloc}:{port}", "", parts.query, ""))
    return one, nodes


def cluster_client(url: str, nodes: Sequence[tuple[str, int]], **kwargs: Any) -> aioredis.Redis:
    """A cluster client that follows MOVED/ASK redirections and failovers by itself.

    Typed as ``redis.asyncio.Redis``: the backend calls only commands and non-transactional
    pipelines, which both clients offer with the same signatures.
    """
    pool_size = kwargs.pop("max_connections", None)
    if pool_size is not None:
        kwargs["max_connections"] = pool_size  # per node; redis-py's default is 100
    client = RedisCluster.from_url(
        url, startup_nodes=[ClusterNode(h, p) for h, p in nodes], **kwargs
    )
    return cast("aioredis.Redis", client)


def slot_groups(queues: Sequence[str], base: Callable[[str], str]) -> list[list[str]]:
    """``queues`` grouped by the hash slot of their keys, in first-seen order."""
    groups: dict[int, list[str]] = {}
    for queue in queues:
        groups.setdefault(key_slot(base(queue).encode()), []).append(queue)
    return list(groups.values())
