"""``offload worker``: the command that runs workers until they are stopped, and what it
shares with ``offload serve --processes`` (supervised children)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

import click

from offload.app import App
from offload.cli.context import LOG_LEVEL, Ctx, friendly, setup_logging
from offload.hooks import Hook
from offload.worker import Worker, WorkerConfig, WorkerListener

# -- worker ----------------------------------------------------------------------------------


@click.command()
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
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or one JSON object per line; both name the job a record is from.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (with --processes, one endpoint for all).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Interface the metrics endpoint listens on.",
)
@click.option("--metrics-dir", hidden=True, default=None)  # a supervised child's samples
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
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_dir: str | None,
    log_level: str,
) -> None:
    """Run jobs: claim at most the free slots, retry failures, drain on SIGTERM."""
    from offload.worker.logs import use_format

    setup_logging(log_level)
    use_format(log_format)
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
        check_shared(app)
        argv = [sys.executable, "-m", "offload", "worker", str(spec), "--queues", ",".join(names)]
        argv += ["--concurrency", str(concurrency), "--grace", str(grace), "--lease", str(lease)]
        argv += ["--heartbeat", str(beat), "--recover", str(recover), "--log-level", log_level]
        argv += ["--log-format", log_format] + (["--burst"] if burst else [])
        sys.exit(supervise(app, argv, processes, metrics_host, metrics_port, url=obj.url))
    if metrics_port is not None and metrics_dir is None:
        run_with_metrics(app, config, metrics_host, metrics_port)
        return
    from offload.worker.metrics import job_metrics

    # A supervised child writes its samples where its supervisor reads them.
    asyncio.run(run_worker(app, config, [job_metrics()] if metrics_dir is not None else []))


def run_with_metrics(app: App, config: WorkerConfig, host: str, port: int) -> None:
    """One worker process with its own metrics endpoint."""
    from offload.worker import metrics

    hook = metrics.job_metrics()
    metrics.watch_queues(hook.registry, metrics.depth_reader(app))
    endpoint = metrics.serve(hook, host, port)
    logging.getLogger("offload.worker").info("metrics on http://%s:%d/metrics", host, endpoint.port)
    try:
        asyncio.run(run_worker(app, config, [hook], before_close=endpoint.close))
    finally:
        endpoint.close()


def supervise(
    app: App, argv: list[str], processes: int, host: str, port: int | None, *, url: str | None
) -> int:
    """Run ``processes`` children of ``argv``; with a port, one metrics endpoint for all."""
    from offload.worker.supervisor import Supervisor

    env = children_env(url)
    if port is None:
        return Supervisor(argv, processes, env=env).run()
    from offload.worker.metrics import Aggregate

    aggregate = Aggregate(host, port, app)
    logging.getLogger("offload.worker").info(
        "metrics of %d processes on http://%s:%d/metrics", processes, host, aggregate.endpoint.port
    )
    try:
        argv = [*argv, "--metrics-dir", aggregate.path]
        env = aggregate.child_env(env)
        return Supervisor(argv, processes, env=env, on_exit=aggregate.process_dead).run()
    finally:
        aggregate.close()
        app.close_sync()  # the connection the queue depth was read through


def check_shared(app: App) -> None:
    """``--processes N`` needs a backend the processes share: a memory:// store lives in one."""
    if not app.backend.capabilities.cross_process:
        raise click.UsageError(
            f"--processes needs a backend that processes share; {app.backend.url} lives in one "
            "process (use sqlite://, postgresql://, redis://, amqp:// or beanstalk://)"
        )


def children_env(url: str | None) -> dict[str, str]:
    """The environment of supervised children: this one, with ``--url`` in ``OFFLOAD_URL``
    rather than on their command lines, where every user of the machine could read a
    password in it (``ps``)."""
    env = dict(os.environ)
    if url:
        env["OFFLOAD_URL"] = url
    return env


async def run_worker(
    app: App,
    config: WorkerConfig,
    listeners: Sequence[Hook | WorkerListener] = (),
    *,
    before_close: Callable[[], None] | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT (twice to skip the grace), then close the app
    (``before_close`` first: what reads through the app must stop before it closes)."""
    w = Worker(app, config, listeners=listeners)
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
        if before_close is not None:
            await asyncio.to_thread(before_close)
        await app.close()
    log.info("worker %s stopped after %d jobs", w.id, w.jobs_done)
