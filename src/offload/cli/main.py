"""The ``offload`` group, its global options, and the commands that need only a backend."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping
from typing import Any

import click

from offload.backends.base import Migrating
from offload.cli.context import Ctx, friendly

# Each command's module is imported when that command runs (or ``--help`` lists them all): a
# worker process does not hold the inspection commands, nor the server's schemas they print with.
COMMANDS = {
    "worker": "offload.cli.processes:worker",
    "serve": "offload.cli.serve:serve",
    "enqueue": "offload.cli.jobs:enqueue",
    "jobs": "offload.cli.jobs:jobs",
    "queues": "offload.cli.jobs:queues",
    "schedules": "offload.cli.schedules:schedules",
    "workflows": "offload.cli.workflows:workflows",
}


class LazyGroup(click.Group):
    """A group whose commands named in ``lazy`` (name -> ``module:attribute``) are imported on
    first use (click's documented pattern for lazily loaded subcommands)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": None},
)
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


def run() -> None:
    """Console entry point."""
    main()
