"""Backends, chosen by URL. Each engine's module is imported only when its URL is used, so
the core installs no driver; a missing driver fails with an install hint."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from offload.backends.base import Backend, Capabilities
from offload.errors import ConfigurationError, MissingDependency

# scheme -> (module, class (or factory) name, extra that installs its driver, driver module)
_SCHEMES: dict[str, tuple[str, str, str | None, str | None]] = {
    "memory": ("offload.backends.memory", "MemoryBackend", None, None),
    "sqlite": ("offload.backends.sqlite", "SQLiteBackend", None, None),
    "redis": ("offload.backends.redis", "RedisBackend", "redis", "redis"),
    "rediss": ("offload.backends.redis", "RedisBackend", "redis", "redis"),
    "redis+cluster": ("offload.backends.redis", "RedisBackend", "redis", "redis"),
    "rediss+cluster": ("offload.backends.redis", "RedisBackend", "redis", "redis"),
    "postgres": ("offload.backends.postgres", "PostgresBackend", "postgres", "psycopg"),
    "postgresql": ("offload.backends.postgres", "PostgresBackend", "postgres", "psycopg"),
    "amqp": ("offload.backends.rabbitmq", "rabbitmq_backend", "rabbitmq", "aio_pika"),
    "amqps": ("offload.backends.rabbitmq", "rabbitmq_backend", "rabbitmq", "aio_pika"),
    "beanstalk": ("offload.backends.beanstalkd", "beanstalk_backend", None, None),
}


def from_url(url: str, **options: Any) -> Backend:
    """Build the backend a URL names (``memory://``, ``sqlite:///path``, ``redis://...``,
    ``postgresql://...``, ``amqp://...?store=...``)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(sorted(_SCHEMES))
        msg = f"unknown backend URL scheme {scheme!r} in {url!r} (known: {known})"
        raise ConfigurationError(msg)
    module_name, class_name, extra, driver = _SCHEMES[scheme]
    if driver is not None:
        try:
            importlib.import_module(driver)
        except ImportError:
            raise MissingDependency(f"the {scheme}:// backend", extra or scheme) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigurationError(f"the {scheme}:// backend is not available yet") from None
        raise
    cls = getattr(module, class_name)
    backend: Backend = cls(url, **options)
    return backend


__all__ = ["Backend", "Capabilities", "from_url"]
