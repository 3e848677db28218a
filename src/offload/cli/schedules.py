"""``offload schedules``: list the app's schedules; pause and resume one."""

from __future__ import annotations

from datetime import datetime

import click

from offload.app import App
from offload.cli.context import Ctx, friendly
from offload.cli.output import emit, table
from offload.schedule_status import ScheduleStatus, schedule_statuses


def _when(t: float | None) -> str:
    return (
        "-"
        if t is None
        else datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    )


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """Schedules: next and last run, the last job and its state (pause/resume one)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedules_list, as_json=as_json)


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def schedules_list(obj: Ctx, as_json: bool) -> None:
    """List the schedules (the default command)."""
    rows: list[ScheduleStatus] = obj.with_app(
        lambda app: app.run_sync(lambda b: schedule_statuses(app, b))
    )
    if as_json:
        emit({"schedules": rows}, True)
        return
    table(
        ["name", "schedule", "state", "next run", "last tick", "last job", "job state"],
        [
            [
                s.name,
                s.schedule,
                "paused" if s.paused else "active",
                _when(s.next_run_at),
                _when(s.last_tick_at),
                s.last_job_id or "-",
                s.last_job_state.value if s.last_job_state else "-",
            ]
            for s in rows
        ],
        whole=("name", "state", "job state"),
    )


@schedules.command("pause")
@click.argument("name")
@click.pass_obj
@friendly
def schedules_pause(obj: Ctx, name: str) -> None:
    """Pause schedule NAME: its ticks are skipped until it is resumed."""
    _set_paused(obj, name, True)


@schedules.command("resume")
@click.argument("name")
@click.pass_obj
@friendly
def schedules_resume(obj: Ctx, name: str) -> None:
    """Resume schedule NAME from its next tick (ticks during the pause are not run)."""
    _set_paused(obj, name, False)


def _set_paused(obj: Ctx, name: str, paused: bool) -> None:
    def act(app: App) -> None:
        if name not in app.schedules:
            raise click.ClickException(f"no schedule named {name!r} in this app")
        app.run_sync(lambda b: b.set_schedule_paused(name, paused))

    obj.with_app(act)
    click.echo(f"{name} {'paused' if paused else 'resumed'}")
