"""``redis://`` / ``rediss://`` — jobs in Redis, every change one Lua script (see docs/redis.md).

``backend`` holds the Backend, ``codec`` turns Redis hashes into records and back, and
``lua/`` the scripts (``_common.lua`` is prepended to each).
"""

from offload.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
