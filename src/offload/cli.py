"""The ``offload`` command. The only place that reads environment variables (each option's
``--help`` names its variable). Every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
import msgspec

from offload.app import App
from offload.backends.base import Migrating
from offload.errors import OffloadError, ValidationError
from offload.job import JobFilter, JobRecord, JobState
from offload.worker import Worker, WorkerConfig

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
    app_spec: str | None
    url: str | None

    def app(self, spec: str | None = None) -> App:
        return load_app(spec or self.app_spec, self.url)


LOG_LEVEL = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


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


# -- worker ----------------------------------------------------------------------------------


@main.command()
@click.argument("app_spec", required=False, metavar="[MODULE:ATTR]")
@click.option(
    "--queues",
    "-q",
    default="default",
    show_default=True,
    help="Comma-separated queues to take jobs from.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Jobs run at once per process (slots).",
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(1, 512),
    default=1,
    show_default=True,
    help="Worker processes to supervise (restarted if they die).",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=25.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM/SIGINT.",
)
@click.option(
    "--lease",
    type=click.FloatRange(1),
    default=30.0,
    show_default=True,
    help="Seconds a claim holds a job without a heartbeat.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(0.1),
    default=None,
    help="Seconds between heartbeats (less than --lease; default: a third of it).",
)
@click.option(
    "--recover",
    type=click.FloatRange(0.05),
    default=5.0,
    show_default=True,
    help="Seconds between looks for jobs whose worker was lost (expired leases).",
)
@click.option("--burst", is_flag=True, help="Exit once no job is due and none is running.")
@LOG_LEVEL
@click.pass_obj
@friendly
def worker(
    obj: Ctx,
    app_spec: str | None,
    queues: str,
    concurrency: int,
    processes: int,
    grace: float,
    lease: float,
    heartbeat: float | None,
    recover: float,
    burst: bool,
    log_level: str,
) -> None:
    """Run jobs: claim at most the free slots, retry failures, drain on SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    spec = app_spec or obj.app_spec
    beat = heartbeat if heartbeat is not None else lease / 3
    names = tuple(q.strip() for q in queues.split(",") if q.strip())
    config = WorkerConfig(
        queues=names,
        concurrency=concurrency,
        lease_s=lease,
        heartbeat_s=beat,
        grace_s=grace,
        recover_s=recover,
        burst=burst,
    )
    app = obj.app(spec)  # import once in the parent too: fail fast on a bad app
    if processes > 1:
        from offload.worker.supervisor import Supervisor

        argv = [sys.executable, "-m", "offload", *(["--url", obj.url] if obj.url else [])]
        argv += ["worker", str(spec), "--queues", ",".join(names)]
        argv += ["--concurrency", str(concurrency), "--grace", str(grace), "--lease", str(lease)]
        argv += ["--heartbeat", str(beat), "--recover", str(recover), "--log-level", log_level]
        argv += ["--burst"] if burst else []
        sys.exit(Supervisor(argv, processes).run())
    asyncio.run(run_worker(app, config))


async def run_worker(app: App, config: WorkerConfig) -> None:
    """Run one worker until SIGTERM/SIGINT (twice to skip the grace), then close the app."""
    w = Worker(app, config)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        w.request_stop(force=signals > 1)

    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, on_signal)
    log = logging.getLogger("offload.worker")
    log.info(
        "worker %s: queues %s, %d slots, backend %s",
        w.id,
        ",".join(config.queues),
        config.concurrency,
        app.backend.url,
    )
    try:
        await w.run()
    finally:
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)
        await app.close()
    log.info("worker %s stopped after %d jobs", w.id, w.jobs_done)


# -- serve -------------------------------------------------------------------------------------


@main.command()
@click.argument("app_spec", required=False, metavar="[MODULE:ATTR]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(0, 10_000),
    default=0,
    show_default=True,
    help="Slots of a worker embedded in the server process (0: none, run `offload worker`).",
)
@click.option(
    "--queues",
    "-q",
    default=None,
    help="Comma-separated queues for the embedded worker (default: every queue of the app).",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=25.0,
    show_default=True,
    help="Seconds the embedded worker's jobs get to finish at shutdown.",
)
@click.option(
    "--tokens",
    envvar="OFFLOAD_TOKENS",
    show_envvar=True,
    default=None,
    metavar="TOKEN=SCOPES;...",
    help="API tokens and their scopes (read, enqueue, admin), e.g. 'T1=read;T2=admin'.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve a non-loopback host without tokens (anyone who reaches the port is admin).",
)
@click.option(
    "--secret",
    envvar="OFFLOAD_SECRET",
    show_envvar=True,
    default=None,
    help="Signs dashboard sessions; give every server process the same one (default: random "
    "per process, so a restart logs everyone out).",
)
@click.option("--no-dashboard", is_flag=True, help="Serve the API only.")
@LOG_LEVEL
@click.pass_obj
@friendly
def serve(
    obj: Ctx,
    app_spec: str | None,
    host: str,
    port: int,
    workers: int,
    queues: str | None,
    grace: float,
    tokens: str | None,
    insecure: bool,
    secret: str | None,
    no_dashboard: bool,
    log_level: str,
) -> None:
    """Serve the HTTP API and the dashboard, with an embedded worker when --workers > 0."""
    from offload.server import parse_tokens, run_server  # MissingDependency names the extra
    from offload.server.service import default_queues

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    app = obj.app(app_spec)
    config = None
    if workers > 0:
        names = (
            tuple(q.strip() for q in queues.split(",") if q.strip())
            if queues
            else default_queues(app)
        )
        config = WorkerConfig(queues=names, concurrency=workers, grace_s=grace)
    elif queues:
        raise click.UsageError("--queues needs --workers")
    if secret is not None and len(secret) < 16:
        raise click.UsageError("--secret must be 16 characters or more")
    run_server(
        app,
        host=host,
        port=port,
        workers=workers,
        worker_config=config,
        tokens=parse_tokens(tokens) if tokens else None,
        insecure=insecure,
        log_level=log_level,
        dashboard=not no_dashboard,
        dashboard_secret=secret.encode() if secret else None,
    )


# -- enqueue and inspect -----------------------------------------------------------------------


@main.command()
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
            _emit({"id": job.id, "state": job.state.value, "result": result}, as_json)
        else:
            _emit(_job_dict(job.record), as_json) if as_json else click.echo(job.id)
    finally:
        app.close_sync()


@main.group()
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
    page = _with_app(obj, lambda app: app.run_sync(lambda b: b.list_jobs(flt)))
    if as_json:
        _emit({"jobs": [_job_dict(j) for j in page.jobs], "next_cursor": page.next_cursor}, True)
        return
    rows = [
        [j.id, j.task, j.queue, j.state.value, f"{j.attempt}/{j.max_attempts}", _first(j.error)]
        for j in page.jobs
    ]
    _table(["id", "task", "queue", "state", "attempt", "error"], rows)
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def jobs_show(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Show one job."""
    job = _with_app(obj, lambda app: app.get_job(job_id))
    _emit(_job_dict(job.record), as_json)


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

    record = _with_app(obj, lambda app: app.run_sync(act))
    if record is None:
        raise click.ClickException(f"no job with id {job_id!r}")
    _emit(_job_dict(record), as_json) if as_json else click.echo(f"{record.id} {record.state}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def queues(obj: Ctx, as_json: bool) -> None:
    """Depth of each queue by state."""
    counts = _with_app(obj, lambda app: app.run_sync(lambda b: b.counts()))
    data = {q: {s.value: by.get(s, 0) for s in JobState} for q, by in sorted(counts.items())}
    if as_json:
        _emit(data, True)
        return
    _table(
        ["queue", *[s.value for s in JobState]],
        [[q, *[str(v) for v in by.values()]] for q, by in data.items()],
    )


@main.command()
@click.pass_obj
@friendly
def migrate(obj: Ctx) -> None:
    """Create or upgrade the backend's schema (PostgreSQL)."""
    backend = obj.app().backend
    # Not through app.run_sync: that opens the backend, which refuses an out-of-date schema.
    if not isinstance(backend, Migrating):
        click.echo(f"{type(backend).__name__} needs no migrations")
        return
    applied = asyncio.run(backend.migrate())
    click.echo(f"schema up to date ({applied} migrations applied)")


# -- helpers ---------------------------------------------------------------------------------


def _with_app(obj: Ctx, fn: Callable[[App], R]) -> R:
    app = obj.app()
    try:
        return fn(app)
    finally:
        app.close_sync()


def _first(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:60] if (text or "").strip() else ""


def _job_dict(rec: JobRecord) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(rec)
    for field in ("args", "result"):
        raw = getattr(rec, field)
        try:
            data[field] = None if raw is None else msgspec.json.decode(raw)
        except msgspec.DecodeError:
            data[field] = raw.decode("utf-8", "replace") if raw is not None else None
    return data


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())
        return
    for k, v in data.items():
        click.echo(f"{k:>16}: {v}")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def run() -> None:
    """Console entry point."""
    main()


if __name__ == "__main__":
    run()
