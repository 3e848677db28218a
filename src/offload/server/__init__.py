"""offload's HTTP service: the REST API, metrics and auth (see docs/http.md)."""

try:
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
except ImportError:  # pragma: no cover - depends on what is installed
    from offload.errors import MissingDependency

    raise MissingDependency("the HTTP service", "server") from None

from offload.server.auth import SCOPES, parse_tokens
from offload.server.service import create_service, is_loopback, run_server

__all__ = ["SCOPES", "create_service", "is_loopback", "parse_tokens", "run_server"]
