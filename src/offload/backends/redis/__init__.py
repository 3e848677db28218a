"""``redis://`` / ``rediss://`` (and ``redis+cluster://`` / ``rediss+cluster://`` for a Redis
Cluster) — jobs in Redis, every change one Lua script (see docs/redis.md).

``connection`` holds the options, the clients and how scripts are called (``cluster`` the
cluster URL form, client and slot grouping); ``inspection`` what
an operator asks (list, counts, cancel, requeue, purge, workers); ``backend`` the Backend on
top of both (enqueue, claim, complete, recovery, waiting); ``codec`` turns Redis hashes into
records and back; ``lua/`` holds the scripts (``_common.lua`` is prepended to each).
"""

from offload.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
