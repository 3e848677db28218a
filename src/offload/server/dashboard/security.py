"""Sessions, CSRF tokens and the security headers of the dashboard.

Design (docs/dashboard.md says the same for users):

* **Session cookie** ``offload_session`` = ``v1.<expires>.<fingerprint>.<signature>``. The
  fingerprint is HMAC(secret, SHA-256(token)) cut to 16 bytes: it names which configured token
  logged in without revealing anything about it (neither the token nor its digest). The
  signature is HMAC(secret, the rest). Each request looks the fingerprint up among the tokens
  configured *now*, so removing a token ends its sessions, and its scopes are the current ones.
  HttpOnly, SameSite=Strict, Secure when the request came over https, Path = the dashboard's
  root. The secret is random per dashboard instance unless given: a restart logs everyone out.
* **Cookie names over https** carry the ``__Host-`` prefix (``__Host-offload_session``,
  ``__Host-offload_csrf``, Path=/): a browser then refuses them from a sibling domain or over
  http, so a neighbour cannot plant one. Plain http (the loopback mode) cannot use the prefix.
* **CSRF**: a signed double-submit token bound to the session. A random nonce lives in the
  ``offload_csrf`` cookie (HttpOnly, SameSite=Strict); every form carries HMAC(secret, nonce,
  session cookie). A page on another site can neither read the cookies nor compute the token;
  a nonce and token pair taken from the login page and planted in a victim's browser fails,
  since it was made for no session or another one. A POST whose Sec-Fetch-Site header says
  another site is refused too (the Origin is not compared with Host: proxies rewrite Host).
* **Throttle**: failed logins count against the client with bad bearer tokens of the API
  (offload.server.throttle); past the limit the login answers 429.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from offload.server.auth import TokenAuth
from offload.server.guard import loopback_host
from offload.server.throttle import Throttle

SESSION_COOKIE = "offload_session"
CSRF_COOKIE = "offload_csrf"
HOST_PREFIX = "__Host-"  # over https: Secure, Path=/, no Domain, enforced by the browser
SESSION_TTL_S = 12 * 3600.0  # a working day; then log in again
ALL_SCOPES = frozenset({"read", "enqueue", "admin"})

# default-src 'self' covers scripts, styles, fonts and fetches; nothing inline, nothing foreign.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"\x00".join(parts), hashlib.sha256).digest()


@dataclass(frozen=True)
class Viewer:
    """Who is looking: their scopes, and whether they logged in (or the dashboard is open)."""

    scopes: frozenset[str]
    logged_in: bool

    @property
    def can_act(self) -> bool:
        return "admin" in self.scopes

    @property
    def can_read(self) -> bool:
        return bool(self.scopes & {"read", "admin"})


class Guard:
    """Authenticates dashboard requests against the service's tokens."""

    def __init__(
        self,
        auth: TokenAuth,
        secret: bytes | None = None,
        *,
        loopback_only: bool = False,
        throttle: Throttle | None = None,
    ) -> None:
        self.auth = auth
        self.throttle = throttle or Throttle()
        self.secret = secret or secrets.token_bytes(32)
        self.loopback_only = loopback_only and not auth.enabled
        # TokenAuth keeps only digests; the fingerprints are derived from those.
        self._by_fp = {self._fingerprint(d): s for d, s in auth._tokens}

    @property
    def open(self) -> bool:
        """No tokens configured: everyone who reaches the dashboard may do everything."""
        return not self.auth.enabled

    def _fingerprint(self, token_digest: bytes) -> str:
        return _b64(_mac(self.secret, b"token", token_digest)[:16])

    def host_ok(self, request: Request) -> bool:
        """Without tokens, only a loopback Host header is served: a page of another site whose
        name was made to resolve to 127.0.0.1 (DNS rebinding) is same-origin with it otherwise,
        and could read the dashboard and post its forms."""
        if not self.loopback_only:
            return True
        return loopback_host(request.headers.get("host"))

    # -- sessions ----------------------------------------------------------------------------

    def login(self, token: str) -> str | None:
        """The session cookie value for a valid ``token``, or None."""
        if self.auth.scopes_of(f"Bearer {token}") is None:
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        expires = int(time.time() + SESSION_TTL_S)
        body = f"v1.{expires}.{self._fingerprint(digest)}"
        return f"{body}.{_b64(_mac(self.secret, b'session', body.encode()))}"

    def viewer(self, request: Request) -> Viewer | None:
        """The viewer of this request; None when a login is needed."""
        if self.open:
            return Viewer(ALL_SCOPES, logged_in=False)
        value = request.cookies.get(cookie_name(request, SESSION_COOKIE), "")
        body, _, sig = value.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
            return None
        expected = _b64(_mac(self.secret, b"session", body.encode()))
        if not hmac.compare_digest(expected, sig) or int(parts[1]) < time.time():
            return None
        scopes = self._by_fp.get(parts[2])
        return Viewer(scopes, logged_in=True) if scopes else None

    # -- CSRF --------------------------------------------------------------------------------

    def csrf_nonce(self, request: Request) -> tuple[str, bool]:
        """This browser's CSRF nonce, and whether it is new (and must be set as a cookie)."""
        nonce = request.cookies.get(cookie_name(request, CSRF_COOKIE), "")
        if 16 <= len(nonce) <= 64 and nonce.isascii():
            return nonce, False
        return _b64(secrets.token_bytes(18)), True

    def csrf_token(self, request: Request, nonce: str) -> str:
        """The token of the forms of a page: bound to this browser's nonce and its session."""
        session = request.cookies.get(cookie_name(request, SESSION_COOKIE), "")
        return _b64(_mac(self.secret, b"csrf", nonce.encode(), session.encode()))

    def csrf_ok(self, request: Request, token: str | None) -> bool:
        """True when a POST carries the token of this browser's nonce and comes from us."""
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        nonce = request.cookies.get(cookie_name(request, CSRF_COOKIE), "")
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.csrf_token(request, nonce), token)


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_name(request: Request, name: str) -> str:
    """``name`` as this request's cookie: with the ``__Host-`` prefix over https."""
    return HOST_PREFIX + name if _https(request) else name


def cookie_path(request: Request) -> str:
    if _https(request):
        return "/"  # the __Host- prefix requires it
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return f"{root}/"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        cookie_name(request, name),
        value,
        max_age=max_age,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )


def delete_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        cookie_name(request, name),
        path=cookie_path(request),
        secure=_https(request),
        httponly=True,
        samesite="strict",
    )


def add_security_headers(response: Response, *, cache: bool = False) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not cache:  # pages show job data: keep them out of shared and back-button caches
        response.headers.setdefault("Cache-Control", "no-store")
    return response
