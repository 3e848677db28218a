"""The guard of the token-less mode: who may talk to a service that has no API tokens.

Without tokens, being on this machine is the credential. Three things keep it one:

* the client address is loopback (a far client gets 403);
* the ``Host`` header names this machine (a loopback name or IP literal). A browser on this
  machine showing a page of ``evil.test`` whose name was made to resolve to 127.0.0.1 (DNS
  rebinding) is same-origin with this service otherwise, and could read and change every job.
  The browser always sends the name it resolved, which is the attacker's: no port check is
  needed on top, since a page never chooses the Host header of its requests;
* a request that changes something (any POST of the API) comes from no other site: a
  ``Sec-Fetch-Site`` other than same-origin or none, an ``Origin`` that is not this Host, or a
  body type a page can send without a CORS preflight (text/plain, forms) are refused, so a page
  on another port of this machine cannot cancel jobs with a simple form post.

With tokens none of this applies: a browser never adds a bearer token by itself, so a request
without one is refused anyway (the dashboard's cookie sessions have their own CSRF defence).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from offload.server.http import HTTPError, error_response, is_json

LOOPBACK_MESSAGE = (
    "this server has no API tokens and answers on this machine only (loopback clients, "
    "loopback host names): open it at http://127.0.0.1:PORT/ or http://localhost:PORT/"
)
SAFE_FETCH_SITES = frozenset({"same-origin", "none"})


def is_loopback(host: str) -> bool:
    """True for a loopback address (v4 or v6, brackets allowed) and for ``localhost``."""
    if host in ("127.0.0.1", "::1") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name of a Host header value, without its port (IPv6 literals without brackets)."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def loopback_host(host: str | None) -> bool:
    """True when a Host header names this machine; a request without one is not a browser's."""
    return host is None or is_loopback(host_name(host.strip()))


def cross_site(headers: Headers) -> HTTPError | None:
    """Why a state-changing request of the token-less API looks sent by another site, or None."""
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is not None and site.lower() not in SAFE_FETCH_SITES:
        reason = f"Sec-Fetch-Site: {site}"
    elif origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        reason = f"Origin: {origin}"
    else:
        content_type = headers.get("content-type")
        if content_type and not is_json(content_type):
            return HTTPError(415, "unsupported_media_type", "send no body or application/json")
        return None
    return HTTPError(
        403,
        "cross_site",
        f"this server has no API tokens and refuses requests of other sites ({reason})",
    )


class LoopbackOnly:
    """Without tokens, only clients on this machine, naming it, may use the service (403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            far = bool(client) and not is_loopback(str(client[0]))  # type: ignore[index]
            if far or not loopback_host(Headers(scope=scope).get("host")):
                response = error_response(HTTPError(403, "forbidden", LOOPBACK_MESSAGE))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
