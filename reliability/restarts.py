"""Server restarts on servers of the run's own (reliability.servers): a Redis with an
append-only file killed -9 and restarted, first with ``appendfsync always`` and then with
``everysec``, and a RabbitMQ node killed -9 and restarted during a drain.

The PostgreSQL and Beanstalkd restarts are in the backend-fault test (outage.py); SQLite has
no server. A kill -9 of the server process loses nothing written to the kernel, so with
``everysec`` too every acknowledged job must survive: the second that ``everysec`` may lose
is lost only when the machine itself goes down (docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Callable

from reliability.harness import Result, Run
from reliability.isolation import unique_name
from reliability.outage import fault_rounds
from reliability.scenarios import Form
from reliability.servers import PrivateRabbitMQ, PrivateRedis, running

NOT_APPLICABLE = {
    "sqlite": "no server to restart for SQLite (an embedded file)",
    "postgres": "server restart: PostgreSQL's is in the backend-fault test",
    "beanstalkd": "server restart: Beanstalkd's is in the backend-fault test",
}


def server_restart(kind: str, run: Run, result: Result, form: Form) -> None:
    if kind in NOT_APPLICABLE:
        result.skipped = NOT_APPLICABLE[kind]
        return
    if kind == "redis":
        _redis(run, result, form)
    elif kind == "rabbitmq":
        _rabbitmq(run, result, form)
    else:
        result.skipped = f"no server restart for {kind}"


def _redis(run: Run, result: Result, form: Form) -> None:
    server = PrivateRedis(run.workdir, fsync="always")
    with running(server):
        private = Run(f"{server.url}?prefix={unique_name('offload_rel')}", run.workdir)
        rounds = iter(range(form.fault_rounds))

        def crash() -> None:
            # Half the rounds with fsync at every write, then the default of most deployments.
            if next(rounds) == (form.fault_rounds + 1) // 2:
                server.set_fsync("everysec")
            server.crash_and_restart()

        try:
            fault_rounds(
                private, result, form, crash,
                "redis-server killed (-9) and restarted on its append-only file "
                "(appendfsync always, then everysec)",
            )  # fmt: skip
        finally:
            private.close()


def _rabbitmq(run: Run, result: Result, form: Form) -> None:
    server = PrivateRabbitMQ()
    with running(server):
        store = f"sqlite:///{run.workdir / 'private-state.db'}"
        url = f"{server.url}?prefix={unique_name('offload_rel')}&store={store}"
        private = Run(url, run.workdir)
        crash: Callable[[], None] = server.crash_and_restart
        try:
            fault_rounds(private, result, form, crash, "RabbitMQ node killed (-9) and restarted")
        finally:
            private.close()
