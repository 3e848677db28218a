"""offload's HTTP service: the REST API, metrics and auth (see docs/http.md).

The names below import the server's dependencies (the ``server`` extra) when first used, so
that ``offload.server.schemas`` (the job's JSON shape, which the CLI prints too) needs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload.server.auth import SCOPES, parse_tokens
    from offload.server.guard import is_loopback
    from offload.server.service import create_service, run_server

__all__ = ["SCOPES", "create_service", "is_loopback", "parse_tokens", "run_server"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'offload.server' has no attribute {name!r}")
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
    except ImportError:  # pragma: no cover - depends on what is installed
        from offload.errors import MissingDependency

        raise MissingDependency("the HTTP service", "server") from None
    from offload.server import auth, guard, service

    if name in ("SCOPES", "parse_tokens"):
        return getattr(auth, name)
    return getattr(guard if name == "is_loopback" else service, name)
