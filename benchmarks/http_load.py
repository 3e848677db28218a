"""Load on the HTTP service: enqueue throughput and ``Prefer: wait`` round trips, on SQLite.

    python benchmarks/http_load.py [--dir /tmp] [--duration 10] [--connections 16]
                                   [--client wrk|python] [--compare] [--wait-rate 200]
                                   [--url redis://...] [--enqueue-only] [--ceiling]
                                   [--profile] [--processes N]

Each phase starts a fresh server process (``run_server``, one process, access log off) on a
fresh SQLite file and points a load generator at it over loopback:

1. enqueue: ``POST /v1/jobs`` of a no-op task as fast as ``--connections`` keep-alive
   connections allow, for ``--duration`` seconds, with no worker; prints requests/s and latency
   percentiles. ``--compare`` runs it again with group commit off. ``--ceiling`` first runs
   the same load against the bare stack (:func:`ceiling_app`): the requests/s one process of
   Starlette on uvicorn serves here with no job system behind it.

2. wait: ``POST /v1/jobs`` with ``Prefer: wait=5`` at a fixed ``--wait-rate`` per second
   (open loop: requests are sent on schedule whatever the answers do), against a server with an
   embedded worker; prints latency percentiles of the whole round trip (enqueue, run, answer).

``--processes N`` serves the enqueue phase with ``offload serve --processes N`` (N processes
accepting on one port) instead of one. ``--profile`` samples the server process with py-spy
through the enqueue phase and prints where its CPU went, by component (offload's server, the
rest of offload, uvicorn, Starlette, asyncio, the backend's client) and by function
(``benchmarks/pyspy.py``).

The load generator is wrk (Debian's ``wrk``) when installed, else a small Python keep-alive
client in a separate process. Everything is bounded in count and time and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pyspy  # noqa: E402

BODY = b'{"task": "noop", "args": {"i": 1}}'
_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")
PROCESSES_START_S = 5.0  # ample for `offload serve --processes N` children to be accepting


def build_app(url: str) -> object:
    """The served app: one exposed no-op task (imported by the server process)."""
    import offload

    app = offload.App(url)

    @app.task(name="noop", expose=True)
    async def noop(i: int) -> None:
        """An async no-op: what is measured is the service, not the task."""

    return app


app = build_app("memory://")  # what `offload --url URL serve benchmarks.http_load:app` serves


# What offload answers to an enqueue, field for field (the ids and times of one answer): the
# ceiling sends a body of this size with the same headers.
_JOB = {
    "id": "01m941p2kjs5k3gzh4b9hxzppy", "queue": "default", "state": "queued", "args": {"i": 1},
    "priority": 0, "attempt": 0, "max_attempts": 3, "run_at": "2026-12-05T21:27:41.426358Z",
    "created_at": "2026-12-05T21:27:41.426358Z", "started_at": None, "finished_at": None,
    "key": None, "worker_id": None, "result": None, "error": None, "errors": [],
    "unreadable": [], "headers": {}, "progress": None, "fair_key": None, "retention": None,
}  # fmt: skip


def ceiling_app() -> object:
    """The stack with no job system: Starlette on the same uvicorn, one ``POST /v1/jobs`` that
    reads and decodes the body (msgspec) and answers 202 as offload does (a body of the same
    size, the same headers), with no store behind it. What ``--ceiling`` measures is how many
    requests/s one process of that stack serves here."""
    import msgspec
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    headers = {
        "Location": f"/v1/jobs/{_JOB['id']}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }

    async def post(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        out = msgspec.json.encode({"task": body["task"], **_JOB})
        return Response(out, status_code=202, headers=headers, media_type="application/json")

    return Starlette(routes=[Route("/v1/jobs", post, methods=["POST"])])


def start_ceiling(port: int) -> subprocess.Popen[str]:
    """:func:`ceiling_app` served as ``run_server`` serves offload: uvicorn, one process,
    access log off, the same GIL switch interval."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import uvicorn; "
        "from benchmarks.http_load import ceiling_app; "
        "from offload.server.service import DEFAULT_SWITCH_INTERVAL_S; "
        "sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL_S); "
        f"uvicorn.run(ceiling_app(), host='127.0.0.1', port={port}, log_level='warning', "
        "access_log=False)"
    )
    return _spawn([sys.executable, "-c", code], port)


# -- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    db: Path | str,
    port: int,
    *,
    workers: int,
    group_commit: bool,
    options: str = "",
    processes: int = 1,
) -> subprocess.Popen[str]:
    """A server on a fresh SQLite file ``db``, or on ``db`` itself when it is a URL; with
    ``processes`` > 1, ``offload serve --processes`` (group commit on, as the CLI has it)."""
    url = db if isinstance(db, str) else f"sqlite:///{db}" + (f"?{options}" if options else "")
    if processes > 1:
        if not group_commit:
            raise SystemExit("offload serve always commits in groups: --compare needs one process")
        argv = [sys.executable, "-m", "offload", "--url", url, "serve", "benchmarks.http_load:app"]
        argv += ["--port", str(port), "--processes", str(processes), "--log-level", "warning"]
        proc = _spawn(argv + (["--workers", str(workers)] if workers else []), port)
        # The supervisor listens before its children start, and the first child up would
        # take every keep-alive connection opened before the others: wait for all of them.
        time.sleep(PROCESSES_START_S)
        return proc
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from benchmarks.http_load import build_app; from offload.server import run_server; "
        f"run_server(build_app({url!r}), '127.0.0.1', {port}, workers={workers}, "
        f"group_commit={group_commit!r}, log_level='warning')"
    )
    return _spawn([sys.executable, "-c", code], port)


def _spawn(argv: list[str], port: int) -> subprocess.Popen[str]:
    """``argv`` in a child, once it accepts connections on ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(argv, env=env, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited at start") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the server did not start")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- a small keep-alive HTTP/1.1 client ----------------------------------------------------


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, body: bytes, extra: bytes = b"") -> int:
        self.writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = _LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    xs = sorted(latencies)
    if not xs:
        return {}

    def pick(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

    return {"p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99), "max_ms": pick(1.0)}


async def _closed_loop(port: int, connections: int, duration_s: float) -> dict[str, float]:
    conns = [await Conn.open(port) for _ in range(connections)]
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration_s

    async def run(conn: Conn) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            status = await conn.post(BODY)
            latencies.append(time.perf_counter() - t0)
            errors += status != 202

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed),
        **_percentiles(latencies),
    }


def _python_enqueue(port: int, connections: int, duration_s: float) -> dict[str, float]:
    return asyncio.run(_closed_loop(port, connections, duration_s))


def _in_child(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """Run the Python client in its own process, so it does not share the server's GIL."""
    with multiprocessing.Pool(1) as pool:
        return pool.apply(fn, args)


def python_enqueue_load(port: int, connections: int, duration_s: float) -> dict[str, float]:
    return _in_child(_python_enqueue, port, connections, duration_s)


def wrk_enqueue_load(port: int, connections: int, duration_s: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{int(duration_s)}s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}/v1/jobs",
            ],
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return round(float(m.group(1)) * scale, 2)

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(total.group(1)) if total else 0,
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "rps": round(float(rps.group(1))) if rps else 0,
        "p50_ms": ms("50%"),
        "p90_ms": ms("90%"),
        "p99_ms": ms("99%"),
    }


async def _open_loop_wait(port: int, rate: float, duration_s: float) -> dict[str, float]:
    """Send on a fixed schedule; a request takes the longest-idle free connection or opens
    one (an idle connection the server closed after its keep-alive timeout is replaced)."""
    free: deque[Conn] = deque([await Conn.open(port) for _ in range(16)])
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        conn = free.popleft() if free else await Conn.open(port)
        try:
            status = await conn.post(BODY, b"Prefer: wait=5\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            conn.close()
            errors += 1
            free.append(await Conn.open(port))
            return
        latencies.append(time.perf_counter() - scheduled)  # from when it was due: no omission
        errors += status != 200
        free.append(conn)

    start = time.perf_counter()
    tasks = []
    n = int(rate * duration_s)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for c in free:
        c.close()
    return {"requests": n, "errors": errors, "rate": rate, **_percentiles(latencies)}


def _python_wait(port: int, rate: float, duration_s: float) -> dict[str, float]:
    return asyncio.run(_open_loop_wait(port, rate, duration_s))


def wait_load(port: int, rate: float, duration_s: float) -> dict[str, float]:
    return _in_child(_python_wait, port, rate, duration_s)


# -- main ----------------------------------------------------------------------------------


def phase(
    db_dir: Path,
    name: str,
    *,
    workers: int,
    group_commit: bool,
    load: object,
    options: str,
    url: str | None = None,
    profile_s: float | None = None,
    processes: int = 1,
) -> dict[str, float]:
    """One load on a fresh server; with ``profile_s``, the server's CPU profile over that
    many seconds of the load is printed after it."""
    db: Path | str = url if url else db_dir / f"{name}.db"
    port = _free_port()
    server = start_server(
        db, port, workers=workers, group_commit=group_commit, options=options, processes=processes
    )
    sampler = None
    if profile_s:
        raw = db_dir / f"{name}.pyspy"
        sampler = pyspy.record(server.pid, profile_s, raw)
    try:
        result: dict[str, float] = load(port)  # type: ignore[operator]
    finally:
        stop_server(server)
        if sampler is not None:
            sampler.wait(timeout=60)
    if sampler is not None:
        print(f"## where the server's CPU went ({name})\n\n{pyspy.report(raw)}\n")
    if isinstance(db, Path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--client", choices=["wrk", "python"], default=None)
    parser.add_argument("--compare", action="store_true", help="also run without group commit")
    parser.add_argument("--wait-rate", type=float, default=200.0)
    parser.add_argument("--wait-duration", type=float, default=10.0)
    parser.add_argument(
        "--sqlite-options",
        default="",
        help="URL query of the SQLite backend, e.g. synchronous=normal",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="serve this backend URL instead of a fresh SQLite file (its data is left there)",
    )
    parser.add_argument("--enqueue-only", action="store_true", help="skip the Prefer: wait phase")
    parser.add_argument(
        "--ceiling", action="store_true", help="first, the same load on the bare stack"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server through the enqueue phase"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="offload serve --processes N (enqueue phase)"
    )
    args = parser.parse_args()
    if args.profile and args.processes > 1:
        parser.error("--profile samples one server process: use it without --processes")
    client = args.client or ("wrk" if shutil.which("wrk") else "python")
    enqueue = wrk_enqueue_load if client == "wrk" else python_enqueue_load
    if args.ceiling:
        port = _free_port()
        server = start_ceiling(port)
        try:
            result = enqueue(port, args.connections, args.duration)
        finally:
            stop_server(server)
        print(json.dumps({"phase": "ceiling", "client": client, **result}))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp_dir = Path(tmp)
        runs = [("enqueue", True)] + ([("enqueue_no_group_commit", False)] if args.compare else [])
        for name, group in runs:
            result = phase(
                tmp_dir,
                name,
                workers=0,
                group_commit=group,
                load=lambda port: enqueue(port, args.connections, args.duration),
                options=args.sqlite_options,
                url=args.url,
                profile_s=max(1.0, args.duration - 1) if args.profile else None,
                processes=args.processes,
            )
            print(
                json.dumps(
                    {"phase": name, "client": client, "connections": args.connections, **result}
                )
            )
        if args.enqueue_only:
            return
        result = phase(
            tmp_dir,
            "prefer_wait",
            workers=8,
            group_commit=True,
            load=lambda port: wait_load(port, args.wait_rate, args.wait_duration),
            options=args.sqlite_options,
        )
        print(json.dumps({"phase": "prefer_wait", "client": "python", **result}))


if __name__ == "__main__":
    main()
