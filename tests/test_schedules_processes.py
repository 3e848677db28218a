"""The schedule guarantee with real processes: three workers per backend, more started and
killed with SIGKILL in the middle, against an every-second schedule for 20 s; each tick of
that time becomes exactly one job, which succeeds. Every backend runs at once (each with its
own workers), so the test costs its 20 s once, not once per backend."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import offload
from offload.job import JobFilter, JobRecord, JobState
from tests.procs import kill_all, start_worker, stop, wait_for
from tests.services import (
    BEANSTALKD_HOST,
    BEANSTALKD_PORT,
    backend_url,
    require_beanstalkd,
    services_required,
    unique_name,
)

RUN_S = 20.0
WAITING = (JobState.QUEUED, JobState.SCHEDULED)
APP = "tests.apps.scheduled:app"
FLAGS = ("--concurrency", "2", "--lease", "3", "--heartbeat", "0.5", "--recover", "0.5")
KINDS = ("sqlite", "postgres", "redis", "redis_cluster", "rabbitmq", "beanstalkd")


@contextlib.contextmanager
def some_url(kind: str, tmp_path: Path) -> Iterator[str | None]:
    """The isolated URL of ``kind``, or None when its service is not up (and not required)."""
    if kind == "beanstalkd":
        try:
            require_beanstalkd()
        except pytest.skip.Exception:
            yield None
            return
        store = f"sqlite:///{tmp_path / 'state.db'}"
        yield f"beanstalk://{BEANSTALKD_HOST}:{BEANSTALKD_PORT}/?prefix={unique_name()}&store={store}"
        return
    try:
        with backend_url(kind, tmp_path) as url:
            yield url
    except pytest.skip.Exception:
        if services_required():
            raise
        yield None


def all_jobs(url: str) -> list[JobRecord]:
    app = offload.App(url)
    out: list[JobRecord] = []
    cursor = None
    try:
        while True:
            flt = JobFilter(task="beat", cursor=cursor, limit=200)
            page = app.run_sync(lambda b, f=flt: b.list_jobs(f))  # type: ignore[misc]
            out.extend(page.jobs)
            cursor = page.next_cursor
            if cursor is None:
                return out
    finally:
        app.close_sync()


def test_every_tick_runs_once_with_workers_killed(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for kind in KINDS:
            (tmp_path / kind).mkdir()
            url = stack.enter_context(some_url(kind, tmp_path / kind))
            if url is not None:
                urls[kind] = url
        if not urls:
            pytest.skip("no backend service is up")
        procs: dict[str, list[subprocess.Popen[str]]] = {k: [] for k in urls}
        try:
            for kind, url in urls.items():
                procs[kind] = [start_worker(url, *FLAGS, app=APP) for _ in range(3)]
            # The run starts once every backend has its first tick (starting up to fifteen
            # interpreters on a loaded machine can take seconds); the middle: SIGKILL one
            # worker of each backend, start two more, kill another.
            wait_for(lambda: all(all_jobs(u) for u in urls.values()), 60, "the first ticks")
            started = time.time()
            for at, action in ((4.0, "kill"), (6.0, "start"), (10.0, "kill"), (11.0, "start")):
                time.sleep(max(0.0, started + at - time.time()))
                for kind, url in urls.items():
                    live = [p for p in procs[kind] if p.poll() is None]
                    if action == "kill":
                        live[0].send_signal(signal.SIGKILL)
                        live[0].wait()
                    else:
                        procs[kind].append(start_worker(url, *FLAGS, app=APP))
            time.sleep(max(0.0, started + RUN_S - time.time()))
            ended = time.time()
            for kind in urls:
                for p in procs[kind]:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
            for kind in urls:
                for p in procs[kind]:
                    if p.returncode != -signal.SIGKILL:
                        # -SIGTERM: a late starter still importing had no handler yet.
                        code = stop(p)
                        assert code in (0, -signal.SIGTERM), f"a {kind} worker exited {code}"
        finally:
            kill_all([p for ps in procs.values() for p in ps])
        report = {kind: check(kind, all_jobs(url), started, ended) for kind, url in urls.items()}
    missing = sorted(set(KINDS) - set(urls))
    print(f"\nticks per backend: {report}; not run (service down): {missing}")


def check(kind: str, jobs: list[JobRecord], started: float, ended: float) -> int:
    """Every tick from the first to the last one a scheduler had time to see has exactly one
    job, and it succeeded. Returns the number of ticks checked.

    On a broker with a store, a tick stored by a worker SIGKILLed before it published the
    message waits for the outbox (``brokered/outbox.py``, 30 s): it may still be waiting,
    never claimed, when the run ends; that is delivery's guarantee, not the schedule's."""
    ticks = Counter(round(int(j.key.rsplit("@", 1)[1].split(":")[0]) / 1000) for j in jobs if j.key)
    assert ticks, f"{kind}: no tick was enqueued"
    doubled = {t: n for t, n in ticks.items() if n > 1}
    assert not doubled, f"{kind}: ticks enqueued more than once: {doubled}"
    first, last = min(ticks), int(ended) - 2
    assert first <= started + 1 and last - first >= RUN_S - 4, (first, last, started)
    missing = [t for t in range(first, last + 1) if t not in ticks]
    assert not missing, f"{kind}: ticks never enqueued: {missing}"
    unfinished = [j for j in jobs if j.state is not JobState.SUCCEEDED and j.run_at <= last]
    if kind in ("rabbitmq", "beanstalkd"):
        unfinished = [j for j in unfinished if not (j.state in WAITING and j.attempt == 0)]
    assert not unfinished, f"{kind}: tick jobs not succeeded: {unfinished[:3]}"
    return last - first + 1
