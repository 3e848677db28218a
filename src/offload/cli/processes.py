"""``offload worker`` and ``offload serve``: the commands that run until they are stopped."""

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


# -- serve -------------------------------------------------------------------------------------


@click.command()
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
    help="API tokens and their scopes (read, enqueue, admin), e.g. 'T1=read;T2=admin'. "
    "Prefer the environment variable or --tokens-file: a command line shows in `ps`.",
)
@click.option(
    "--tokens-file",
    envvar="OFFLOAD_TOKENS_FILE",
    show_envvar=True,
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A file of API tokens, TOKEN=SCOPES per line (or ';'-separated); lines starting with "
    "'#' are comments.",
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
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Server processes sharing the port, each with its own embedded worker when "
    "--workers > 0: more use more cores. A dead one is restarted.",
)
@click.option("--fd", type=int, default=None, hidden=True)  # a child's inherited socket
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
    tokens_file: str | None,
    insecure: bool,
    secret: str | None,
    no_dashboard: bool,
    processes: int,
    fd: int | None,
    log_level: str,
) -> None:
    """Serve the HTTP API and the dashboard, with an embedded worker when --workers > 0."""
    from offload.server import run_server  # MissingDependency names the extra
    from offload.server.service import default_queues

    setup_logging(log_level)
    token_map = _tokens(click.get_current_context(), tokens, tokens_file)
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
    if processes > 1:
        from offload.server.service import check_exposure

        if fd is not None:
            raise click.UsageError("--fd is for one process")
        check_shared(app)
        check_exposure(host, token_map, insecure=insecure)  # refused here, before any child
        argv = [*(["--workers", str(workers), "--grace", str(grace)] if workers else [])]
        argv += [*(["--queues", queues] if queues else []), "--log-level", log_level]
        argv += [
            *(["--insecure"] if insecure else []),
            *(["--no-dashboard"] if no_dashboard else []),
        ]
        argv += ["--tokens-file", tokens_file] if tokens_file else []
        spec = app_spec or obj.app_spec
        sys.exit(serve_processes(obj, str(spec), host, port, processes, argv, tokens, secret))
    run_server(
        app,
        host=host,
        port=port,
        workers=workers,
        worker_config=config,
        tokens=token_map,
        insecure=insecure,
        log_level=log_level,
        dashboard=not no_dashboard,
        dashboard_secret=secret.encode() if secret else None,
        fd=fd,
    )


def serve_processes(
    obj: Ctx,
    spec: str,
    host: str,
    port: int,
    processes: int,
    options: list[str],
    tokens: str | None,
    secret: str | None,
) -> int:
    """Listen on ``host:port`` here, then run ``processes`` children of ``offload serve
    spec --fd N *options`` that accept on that one socket (the kernel spreads connections over
    them), supervised as ``offload worker --processes`` supervises its own.

    The children share what must agree across processes: the dashboard's session secret
    (random here unless given, so a login works whichever process answers), the tokens of
    ``--tokens`` and the ``--url``, all through the environment, never a command line."""
    import secrets

    from offload.server.service import listening_socket
    from offload.worker.supervisor import Supervisor

    sock = listening_socket(host, port)
    env = children_env(obj.url)
    env["OFFLOAD_SECRET"] = secret or secrets.token_urlsafe(32)
    if tokens:
        env["OFFLOAD_TOKENS"] = tokens
    argv = [sys.executable, "-m", "offload", "serve", spec, "--host", host]
    argv += ["--fd", str(sock.fileno()), *options]
    bound = sock.getsockname()[1]
    logging.getLogger("offload.server").info(
        "%d server processes on http://%s:%d", processes, host, bound
    )
    try:
        return Supervisor(argv, processes, env=env, pass_fds=[sock.fileno()], kind="server").run()
    finally:
        sock.close()


def _tokens(ctx: click.Context, spec: str | None, path: str | None) -> dict[str, list[str]] | None:
    """The API tokens of ``--tokens`` and ``--tokens-file`` (both may be given), with a
    warning when they came on the command line, where every user of the machine can read
    them (``ps``, /proc)."""
    from offload.server import parse_tokens

    if spec and ctx.get_parameter_source("tokens") is click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "warning: --tokens on the command line is visible to every user of this machine "
            "(ps); use OFFLOAD_TOKENS or --tokens-file",
            err=True,
        )
    found: dict[str, list[str]] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        found.update(parse_tokens(";".join(ln for ln in lines if ln and not ln.startswith("#"))))
    if spec:
        found.update(parse_tokens(spec))
    return found or None
