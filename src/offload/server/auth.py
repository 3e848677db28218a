"""Bearer tokens with scopes.

Scopes: ``read`` (look at jobs, queues, workers, metrics), ``enqueue`` (``POST /v1/jobs``) and
``admin`` (cancel and retry jobs; implies the other two). ``/healthz``, ``/readyz`` and
``/openapi.json`` need no token.

With no token configured the service is open: that is only safe on a loopback interface, so
``run_server`` refuses any other host unless told ``insecure=True``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from offload.errors import ConfigurationError
from offload.server.http import HTTPError

SCOPES = frozenset({"read", "enqueue", "admin"})


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of token lengths.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class TokenAuth:
    """The configured tokens; ``check`` authorises one request for one scope."""

    _tokens: tuple[tuple[bytes, frozenset[str]], ...]

    @classmethod
    def from_mapping(cls, tokens: Mapping[str, Collection[str]] | None) -> TokenAuth:
        """``{token: scopes}``. Tokens must be at least 16 characters; scopes from SCOPES."""
        entries = []
        for token, scopes in (tokens or {}).items():
            if not isinstance(token, str) or len(token) < 16:
                raise ConfigurationError("an API token must be a string of 16 characters or more")
            if isinstance(scopes, str):
                raise ConfigurationError("give a token's scopes as a list, not one string")
            unknown = set(scopes) - SCOPES
            if unknown or not scopes:
                raise ConfigurationError(
                    f"token scopes must be some of {sorted(SCOPES)}, not {sorted(scopes)}"
                )
            entries.append((_digest(token), frozenset(scopes)))
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def scopes_of(self, authorization: str | None) -> frozenset[str] | None:
        """The scopes of the bearer token in an Authorization header; None if not valid."""
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            return None
        given = _digest(token.strip())
        found: frozenset[str] | None = None
        for digest, scopes in self._tokens:  # no early exit: time does not tell which matched
            if hmac.compare_digest(digest, given):
                found = scopes
        return found

    def check(self, authorization: str | None, scope: str) -> None:
        """Raise 401 (no or bad token) or 403 (token lacks ``scope``); pass when open."""
        if not self._tokens:
            return
        scopes = self.scopes_of(authorization)
        if scopes is None:
            raise HTTPError(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="offload"'},
            )
        if scope not in scopes and "admin" not in scopes:
            raise HTTPError(
                403,
                "forbidden",
                f"this token lacks the {scope!r} scope",
                headers={
                    "WWW-Authenticate": f'Bearer realm="offload", error="insufficient_scope", '
                    f'scope="{scope}"'
                },
            )


def parse_tokens(spec: str) -> dict[str, list[str]]:
    """Parse ``"TOKEN=read,enqueue;OTHER=admin"`` (the CLI's ``OFFLOAD_TOKENS`` form)."""
    tokens: dict[str, list[str]] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        token, sep, scopes = part.strip().rpartition("=")  # tokens may hold "="
        if not sep:
            raise ConfigurationError("tokens look like TOKEN=scope,scope;TOKEN=scope")
        tokens[token.strip()] = [s.strip() for s in scopes.split(",") if s.strip()]
    return tokens
