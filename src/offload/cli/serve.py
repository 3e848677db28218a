"""``offload serve``: the HTTP service (and an embedded worker) until it is stopped, in one
process or in ``--processes N`` that share one listening socket."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import click

from offload.cli.context import LOG_LEVEL, Ctx, friendly, setup_logging
from offload.cli.processes import check_shared, children_env
from offload.worker import WorkerConfig


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
        if fd is not None:
            raise click.UsageError("--fd is for one process")
        check_shared(app)
        options = _child_options(workers, grace, queues, log_level, insecure, no_dashboard)
        spec = str(app_spec or obj.app_spec)
        sys.exit(
            serve_processes(
                obj, spec, host, port, processes, options, token_map, secret, insecure=insecure
            )
        )
    if fd is not None:
        # A supervised child: what its parent passed through the environment has been read,
        # and the subprocesses its jobs may start are not to inherit it.
        for name in _SHARED:
            os.environ.pop(name, None)
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


_SHARED = ("OFFLOAD_SECRET", "OFFLOAD_TOKENS", "OFFLOAD_URL")  # parent -> children, by env
GIVE_UP_AFTER = 5  # server processes in a row that die at start before --processes exits


def _child_options(
    workers: int, grace: float, queues: str | None, log_level: str, insecure: bool, bare: bool
) -> list[str]:
    """A child's ``offload serve`` options, the parent's own (but those that go by env)."""
    options = ["--workers", str(workers), "--grace", str(grace)] if workers else []
    options += ["--queues", queues] if queues else []
    options += ["--insecure"] if insecure else []
    options += ["--no-dashboard"] if bare else []
    return [*options, "--log-level", log_level]


def serve_processes(
    obj: Ctx,
    spec: str,
    host: str,
    port: int,
    processes: int,
    options: list[str],
    tokens: Mapping[str, Sequence[str]] | None,
    secret: str | None,
    *,
    insecure: bool,
) -> int:
    """Listen on ``host:port`` here, then run ``processes`` children of ``offload serve
    spec --fd N *options`` that accept on that one socket (the kernel spreads connections over
    them), supervised as ``offload worker --processes`` supervises its own.

    The children share what must agree across processes: the dashboard's session secret
    (random here unless given, so a login works whichever process answers), the tokens as
    read here (a restarted child cannot read a changed tokens file), and the ``--url``, all
    through the environment, never a command line."""
    import secrets

    from offload.server.service import check_exposure, listening_socket
    from offload.worker.supervisor import Supervisor

    check_exposure(host, tokens, insecure=insecure)  # refused here, before any child
    sock = listening_socket(host, port)
    env = children_env(obj.url)
    env["OFFLOAD_SECRET"] = secret or secrets.token_urlsafe(32)
    env.pop("OFFLOAD_TOKENS", None)
    if tokens:
        env["OFFLOAD_TOKENS"] = ";".join(f"{t}={','.join(s)}" for t, s in tokens.items())
    argv = [sys.executable, "-m", "offload", "serve", spec, "--host", host]
    argv += ["--fd", str(sock.fileno()), *options]
    bound = sock.getsockname()[1]
    logging.getLogger("offload.server").info(
        "%d server processes on http://%s:%d", processes, host, bound
    )
    # uvicorn stops at once on a second SIGINT (a second SIGTERM only repeats the first). A
    # server whose start fails exits; so do N of them, rather than hold the port with nobody
    # accepting (what runs offload serve restarts it, as it would one process).
    supervisor = Supervisor(
        argv,
        processes,
        env=env,
        pass_fds=[sock.fileno()],
        kind="server",
        again=signal.SIGINT,
        give_up_after=GIVE_UP_AFTER,
    )
    try:
        return supervisor.run()
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
