"""The commands that enqueue and inspect: ``enqueue``, ``jobs ...``, ``queues``."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from offload.app import App
from offload.cli.context import Ctx, friendly
from offload.cli.output import emit, first_line, job_json, jobs_json, table
from offload.durations import parse_duration_s
from offload.errors import ValidationError
from offload.job import FINAL_STATES, JobFilter, JobRecord, JobState, LimitUsage
from offload.limits import describe


@click.command()
@click.argument("task_name", metavar="TASK")
@click.option(
    "--args",
    "args_json",
    default="{}",
    show_default=True,
    help="Arguments as a JSON object (by name) or array (by position).",
)
@click.option("--queue", default=None)
@click.option("--delay", type=click.FloatRange(0), default=None, help="Seconds to wait first.")
@click.option("--priority", type=int, default=None, help="0-9, higher runs first.")
@click.option("--key", default=None, help="Dedup key: an active job with it is returned instead.")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0),
    default=None,
    help="Wait this many seconds for the result and print it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def enqueue(
    obj: Ctx,
    task_name: str,
    args_json: str,
    queue: str | None,
    delay: float | None,
    priority: int | None,
    key: str | None,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Enqueue one job of TASK."""
    app = obj.app()
    task = app.get_task(task_name)
    try:
        parsed = msgspec.json.decode(args_json)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"--args is not valid JSON: {exc}") from None
    bound = task.options(queue=queue, delay=delay, priority=priority, key=key)
    if isinstance(parsed, list):
        job = bound.enqueue(*parsed)
    elif isinstance(parsed, dict):
        job = bound.enqueue(**parsed)
    else:
        raise ValidationError("--args must be a JSON object or array")
    try:
        if wait_s is not None:
            result = job.result(timeout=wait_s)
            emit({"id": job.id, "state": job.state.value, "result": result}, as_json)
        else:
            emit(job_json(job.record), as_json) if as_json else click.echo(job.id)
    finally:
        app.close_sync()


@click.group()
def jobs() -> None:
    """List, show, retry and cancel jobs."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None)
@click.option("--queue", default=None)
@click.option("--task", "task_name", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", default=None, help="Continue from a previous page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def jobs_list(
    obj: Ctx,
    state: str | None,
    queue: str | None,
    task_name: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    flt = JobFilter(
        state=JobState(state) if state else None,
        queue=queue,
        task=task_name,
        limit=limit,
        cursor=cursor,
    )
    page = obj.with_app(lambda app: app.run_sync(lambda b: b.list_jobs(flt)))
    if as_json:
        emit(jobs_json(page.jobs, page.next_cursor), True)
        return
    rows = [
        [j.id, j.task, j.queue, j.state.value, f"{j.attempt}/{j.max_attempts}", first_line(j.error)]
        for j in page.jobs
    ]
    table(
        ["id", "task", "queue", "state", "attempt", "error"], rows, whole=("id", "state", "attempt")
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def jobs_show(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Show one job."""
    job = obj.with_app(lambda app: app.get_job(job_id))
    emit(job_json(job.record), as_json)


@jobs.command("retry")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def jobs_retry(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Queue a dead or cancelled job again."""
    _steer(obj, job_id, as_json, "retry")


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def jobs_cancel(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Cancel a scheduled, queued or running job."""
    _steer(obj, job_id, as_json, "cancel")


def _steer(obj: Ctx, job_id: str, as_json: bool, action: str) -> None:
    async def act(b: Any) -> JobRecord | None:
        record: JobRecord | None = await (
            b.requeue(job_id) if action == "retry" else b.cancel(job_id)
        )
        return record

    record = obj.with_app(lambda app: app.run_sync(act))
    if record is None:
        raise click.ClickException(f"no job with id {job_id!r}")
    emit(job_json(record), as_json) if as_json else click.echo(f"{record.id} {record.state}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limits", "show_limits", is_flag=True, help="Only the jobs each limit holds.")
@click.pass_obj
@friendly
def queues(obj: Ctx, as_json: bool, show_limits: bool) -> None:
    """Depth of each queue by state, and the jobs running and waiting under each limit."""
    if show_limits:
        usage = obj.with_app(_limit_usage)
        if as_json:
            click.echo(msgspec.json.encode(usage).decode())
        else:
            _limit_table(usage)
        return
    counts, usage = obj.with_app(
        lambda app: (app.run_sync(lambda b: b.counts()), _limit_usage(app))
    )
    data = {q: {s.value: by.get(s, 0) for s in JobState} for q, by in sorted(counts.items())}
    if as_json:
        emit(data, True)
        return
    table(
        ["queue", *[s.value for s in JobState]],
        [[q, *[str(v) for v in by.values()]] for q, by in data.items()],
        whole=[s.value for s in JobState],
    )
    if usage:
        _limit_table(usage)


def _limit_usage(app: App) -> list[LimitUsage]:
    if not app.backend.capabilities.limits:
        return []  # it stores no limited job
    return app.run_sync(lambda b: b.limit_usage())


def _limit_table(usage: list[LimitUsage]) -> None:
    table(
        ["queue", "limit", "running", "waiting"],
        [[u.queue, describe(u.limit), str(u.running), str(u.waiting)] for u in usage],
        whole=["running", "waiting"],
    )


class Duration(click.ParamType[float]):
    """Seconds (``3600``) or a number with a unit: ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return parse_duration_s(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@jobs.command("purge")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(s.value for s in FINAL_STATES)),
    default=[JobState.DEAD.value],
    show_default=True,
    help="Delete jobs in this final state (repeat for several).",
)
@click.option(
    "--older-than",
    "older_than_s",
    type=Duration(),
    default="0",
    show_default=True,
    help="Only jobs that finished longer ago than this (3600, 90s, 15m, 12h, 7d, 2w).",
)
@click.option("--queue", default=None, help="Only jobs of this queue (default: every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def jobs_purge(
    obj: Ctx, states: tuple[str, ...], older_than_s: float, queue: str | None, as_json: bool
) -> None:
    """Delete finished jobs (dead ones by default) for good, and say how many."""
    wanted = [JobState(s) for s in states]
    deleted = obj.with_app(
        lambda app: app.run_sync(lambda b: b.purge(wanted, older_than_s=older_than_s, queue=queue))
    )
    if as_json:
        emit({"deleted": deleted}, True)
    else:
        click.echo(f"deleted {deleted} {'job' if deleted == 1 else 'jobs'}")
