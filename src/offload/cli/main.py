"""The ``offload`` group, its global options, and the commands that need only a backend."""

from __future__ import annotations

import asyncio

import click

from offload.backends.base import Migrating
from offload.cli.context import Ctx, friendly
from offload.cli.jobs import enqueue, jobs, queues
from offload.cli.processes import serve, worker
from offload.cli.schedules import schedules
from offload.cli.workflows import workflows


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": None})
@click.option(
    "--app",
    "app_spec",
    envvar="OFFLOAD_APP",
    show_envvar=True,
    metavar="MODULE:ATTR",
    help="The offload.App to use.",
)
@click.option(
    "--url", envvar="OFFLOAD_URL", show_envvar=True, help="Override the app's backend URL."
)
@click.version_option(package_name="offload")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None, url: str | None) -> None:
    """offload: durable background jobs."""
    ctx.obj = Ctx(app_spec=app_spec, url=url)


@main.command()
@click.pass_obj
@friendly
def migrate(obj: Ctx) -> None:
    """Create or upgrade the backend's schema (PostgreSQL). Needs only --url."""
    backend = obj.backend()
    # Not through app.run_sync: that opens the backend, which refuses an out-of-date schema.
    if not isinstance(backend, Migrating):
        click.echo(f"{type(backend).__name__} needs no migrations")
        return
    applied = asyncio.run(backend.migrate())
    click.echo(f"schema up to date ({applied} migrations applied)")


for command in (worker, serve, enqueue, jobs, queues, schedules, workflows):
    main.add_command(command)


def run() -> None:
    """Console entry point."""
    main()
