"""offload's HTTP service: the REST API, metrics and auth (see docs/http.md)."""

from offload.server.auth import SCOPES, parse_tokens
from offload.server.service import create_service, is_loopback, run_server

__all__ = ["SCOPES", "create_service", "is_loopback", "parse_tokens", "run_server"]
