"""offload in a FastAPI (or any Starlette) app (``pip install 'offload[fastapi]'``).

.. code-block:: python

    jobs = offload.App("postgresql://.../app")
    integration = Offload(jobs)
    api = FastAPI(lifespan=integration.lifespan)
    integration.mount(api, "/offload", tokens={...})  # offload's API and dashboard

    @api.post("/thumbnails")
    async def make(app: Annotated[offload.App, Depends(integration.dependency)]): ...

``lifespan`` opens the App on the server's loop when the server starts (a backend that is
down is logged, and the first enqueue tries again), runs the lifespan of each service mounted
with ``mount`` (so ``workers=N`` embeds a worker in the web process; a framework does not run
a mounted app's lifespan itself), and at shutdown drains those workers and closes the App.
``lifespan(api, then=your_lifespan)`` nests your own lifespan inside.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from offload.app import App
from offload.errors import BackendUnavailable

log = logging.getLogger("offload.contrib.fastapi")

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class Offload:
    """Ties one offload App to a FastAPI/Starlette app: lifespan, dependency, mounts."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.services: list[Starlette] = []

    def dependency(self) -> App:
        """For ``Depends(...)``: the App (a dependency, so a test can override it)."""
        return self.app

    def mount(self, web: Starlette, path: str = "/offload", **options: Any) -> Starlette:
        """Mount offload's HTTP API (``path``/v1/...) and dashboard (``path``/) on ``web``.

        ``options`` are ``offload.server.create_service``'s: ``tokens``, ``workers``,
        ``dashboard``, ``insecure``... Without tokens it answers loopback clients only.
        """
        from offload.server import create_service

        service = create_service(self.app, **options)
        web.mount(path, service)
        self.services.append(service)
        return service

    def lifespan(
        self, web: Any, *, then: Lifespan | None = None
    ) -> AbstractAsyncContextManager[None]:
        return self._lifespan(web, then)

    @asynccontextmanager
    async def _lifespan(self, web: Any, then: Lifespan | None) -> AsyncIterator[None]:
        try:
            await self.app.open()
        except BackendUnavailable as exc:  # serve anyway: enqueues answer with the error
            log.warning("the offload backend is unavailable at startup: %s", exc)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self.app.close)
            for service in self.services:
                await stack.enter_async_context(service.router.lifespan_context(service))
            if then is not None:
                await stack.enter_async_context(then(web))
            yield


__all__ = ["Offload"]
