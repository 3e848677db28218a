"""What every command shares: the app or backend named on the command line (or in the
environment), and turning offload's errors into one line on stderr."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click
import msgspec

from offload.app import App
from offload.backends import from_url
from offload.backends.base import Backend
from offload.errors import OffloadError

P = ParamSpec("P")
R = TypeVar("R")


def load_app(spec: str | None, url: str | None) -> App:
    """Import ``module:attr`` (from the current directory too) and apply a URL override."""
    if not spec:
        raise click.UsageError("no app given: pass module:attr or set OFFLOAD_APP")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.UsageError(f"app must look like module:attr, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.ClickException(f"{spec!r} is not an offload.App")
    if url:
        app.use_url(url)
    return app


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn offload errors into one clear line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OffloadError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


class Ctx(msgspec.Struct):
    """The global options: ``--app`` (OFFLOAD_APP) and ``--url`` (OFFLOAD_URL)."""

    app_spec: str | None
    url: str | None

    def app(self, spec: str | None = None) -> App:
        return load_app(spec or self.app_spec, self.url)

    def backend(self) -> Backend:
        """The app's backend when an app is given, else the one ``--url`` names: commands
        that only touch storage (``migrate``) need no app."""
        if self.app_spec:
            return self.app().backend
        if self.url:
            return from_url(self.url)
        raise click.UsageError(
            "no backend given: pass --url (or set OFFLOAD_URL), or an app (--app, OFFLOAD_APP)"
        )

    def with_app(self, fn: Callable[[App], R]) -> R:
        """``fn(app)``, closing the app afterwards."""
        app = self.app()
        try:
            return fn(app)
        finally:
            app.close_sync()


LOG_LEVEL = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(message)s")
