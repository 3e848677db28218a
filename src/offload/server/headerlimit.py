"""A bound on the size of a request's headers (431 past it).

uvicorn's default parser (httptools) accepts headers of any size, and every handler that reads
one pays for it. This middleware refuses a request whose request line and headers together are
over the limit before any route sees it. It cannot stop the parser from buffering what arrives
first: a proxy in front (docs/security.md) bounds that.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from offload.server.http import HTTPError, error_response

DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # 8x what most proxies allow per line; cookies fit


class HeaderLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                response = error_response(
                    HTTPError(
                        431,
                        "headers_too_large",
                        f"the request's headers are over the limit of {self.max_bytes} bytes",
                    )
                )
                response.headers["Connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
