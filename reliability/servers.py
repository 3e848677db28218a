"""Servers of a run's own, so a test can kill -9 and restart them without disturbing anyone
else on the machine: a Redis with an append-only file, and a RabbitMQ node.

Each listens on loopback on a free port and keeps its data in a directory of its own; the
restart comes back on the same port and data, as a crashed server brought back by its
supervisor would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from reliability.isolation import Unavailable

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise Unavailable(f"{what} did not start on port {port}") from None
            time.sleep(0.05)  # a server starting: nothing to wait on but its port


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait()


class PrivateRedis:
    """``redis-server`` with ``appendonly yes`` and the given ``appendfsync`` policy."""

    def __init__(self, workdir: Path, fsync: str = "always") -> None:
        if shutil.which("redis-server") is None:
            raise Unavailable("redis-server is not installed")
        self.dir = workdir / "redis-data"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dir", str(self.dir), "--save", "", "--appendonly", "yes"]
        cmd += ["--appendfsync", self.fsync, "--daemonize", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "the private redis-server")
        self._wait_loaded()

    def _wait_loaded(self) -> None:
        """Until the server has replayed its append-only file (it answers LOADING before)."""
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def set_fsync(self, fsync: str) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.config_set("appendfsync", fsync)
        finally:
            client.close()
        self.fsync = fsync

    def crash_and_restart(self) -> None:
        """kill -9, then start again on the same port and append-only file."""
        assert self.proc is not None
        _kill(self.proc)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc)


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (its own node name, ports and database directory).

    ``rabbitmq-server`` drops to the ``rabbitmq`` user, so the node's directory is made outside
    the run's private temporary directory and handed to that user: this needs root, as the
    PostgreSQL restart does.
    """

    def __init__(self) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise Unavailable("rabbitmq-server is not installed")
        if os.geteuid() != 0:
            raise Unavailable("a private RabbitMQ node needs root (its server runs as rabbitmq)")
        self.dir = Path(tempfile.mkdtemp(prefix="offload-rel-rabbit-"))
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"offload_rel_{self.port}@localhost"
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        for child in self.dir.iterdir():
            shutil.chown(child, "rabbitmq", "rabbitmq")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "pid").unlink()
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["rabbitmq-server"], env=self._env(), stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        wait_port(self.port, self.proc, f"the private RabbitMQ node {self.node}")

    def _beam_pid(self) -> int:
        return int((self.dir / "pid").read_text().split()[0])

    def crash_and_restart(self) -> None:
        """kill -9 the node's Erlang VM, then start the node again on its database."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._beam_pid(), signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()
        self.start()

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(self._beam_pid(), signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running(server: PrivateRedis | PrivateRabbitMQ) -> Iterator[None]:
    server.start()
    try:
        yield
    finally:
        server.stop()
