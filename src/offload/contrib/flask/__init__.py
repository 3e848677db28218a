"""offload in a Flask app (``pip install 'offload[flask]'``): the extension and ``flask offload``.

.. code-block:: python

    jobs = Offload()            # or Offload(app), or Offload(app=offload.App(...))

    @jobs.task
    def send_welcome(email: str) -> None: ...

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["OFFLOAD_URL"] = "sqlite:///jobs.db"
        jobs.init_app(app)
        return app

Views call the sync API (``send_welcome.enqueue(...)``, ``jobs.app.get_job(id)``).
``flask offload worker`` runs a worker inside the app's context (so tasks can use the app's
config and extensions); ``flask offload jobs ...``, ``queues`` and ``enqueue`` are offload's own
commands, on this app's offload App.
"""

from __future__ import annotations

from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from offload.app import App
from offload.cli.context import Ctx
from offload.cli.jobs import enqueue, jobs, queues
from offload.contrib.workers import run, worker_config

CONFIG_URL = "OFFLOAD_URL"


class Offload:
    """The Flask extension: one offload App, its URL from ``app.config["OFFLOAD_URL"]``."""

    def __init__(self, app: Flask | None = None, *, offload_app: App | None = None) -> None:
        self.app = offload_app if offload_app is not None else App()
        self.task = self.app.task  # @jobs.task, as @app.task
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        url = app.config.get(CONFIG_URL)
        if url and url != self.app.url:
            self.app.use_url(url)
        app.extensions["offload"] = self
        app.cli.add_command(offload_group)


class _FlaskCtx(Ctx):
    """offload's CLI context, bound to the Flask app's offload App."""

    bound: Any = None

    def app(self, spec: str | None = None) -> App:
        app: App = self.bound
        return app

    def backend(self) -> Any:
        return self.app().backend


def _extension() -> Offload:
    ext = current_app.extensions.get("offload")
    if not isinstance(ext, Offload):
        raise click.UsageError("this Flask app has no offload extension (Offload(app))")
    return ext


@click.group("offload", cls=AppGroup)
@click.pass_context
def offload_group(ctx: click.Context) -> None:
    """offload's jobs: run a worker, list and steer jobs."""
    ctx.obj = _FlaskCtx(app_spec=None, url=None, bound=_extension().app)  # in the app context


@offload_group.command("worker")
@click.option("--queues", "-q", default="default", show_default=True)
@click.option("--concurrency", "-c", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--grace", type=click.FloatRange(0), default=25.0, show_default=True)
@click.option("--lease", type=click.FloatRange(1), default=30.0, show_default=True)
@click.option("--burst", is_flag=True, help="Exit once no job is due and none is running.")
def worker(queues: str, concurrency: int, grace: float, lease: float, burst: bool) -> None:
    """Run jobs inside the app's context, until SIGTERM (drain) or, with --burst, idle."""
    config = worker_config(queues, concurrency=concurrency, grace=grace, lease=lease, burst=burst)
    # The app context is pushed before the worker's loop starts: its tasks and the threads
    # of sync tasks run in copies of this context, so current_app works in every task.
    run(_extension().app, config)


offload_group.add_command(enqueue)
offload_group.add_command(jobs)
offload_group.add_command(queues)

__all__ = ["Offload"]
