"""Point your own App at a fresh in-memory backend for one test, eager or not.

``with offload.testing.eager(app): ...`` runs each job inline as it is enqueued (errors
raised); ``with offload.testing.in_memory(app): ...`` keeps jobs in memory for the test to
inspect or run. Either restores the app's own backend afterwards. In an async test use
``async with``: the app is then closed on the test's loop.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from offload.backends.memory import MemoryBackend
from offload.testing.eager import EagerBackend

if TYPE_CHECKING:
    from offload.app import App


class _Swap:
    def __init__(self, app: App, *, eager: bool) -> None:
        self.app = app
        self.eager = eager
        # The app's own backend: given as an instance (kept), or built from its URL (built
        # again on restore, since its connections belonged to a closed loop).
        self._given = app._given_backend
        self._url = app.url

    def __enter__(self) -> App:
        self.app.use_backend(EagerBackend(self.app) if self.eager else MemoryBackend())
        return self.app

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.app.close_sync()
        self._restore()

    async def __aenter__(self) -> App:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.app.close()
        self._restore()

    def _restore(self) -> None:
        if self._given is not None:
            self.app.use_backend(self._given)
        else:
            self.app.use_url(self._url)


def eager(app: App) -> _Swap:
    """Jobs of ``app`` run inline when enqueued, their errors raised (see ``EagerBackend``)."""
    return _Swap(app, eager=True)


def in_memory(app: App) -> _Swap:
    """``app`` on a fresh in-memory backend: jobs wait, for the test to inspect or run."""
    return _Swap(app, eager=False)
