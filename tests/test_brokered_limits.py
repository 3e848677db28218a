"""Limits on a broker with a state store (offload.backends.brokered.limited): a job with limits
never travels through the broker, whatever path puts it back (enqueue, retry, snooze, requeue),
and real workers keep its limits; the store-less forms refuse it, naming the fix. The engines'
contract (concurrent claimers, rates, a dead claimer's slot) is LimitConformance, run on both
stored forms by tests/test_rabbitmq_backend.py and tests/test_beanstalkd_stored.py."""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import offload
from offload.backends.base import Backend
from offload.backends.beanstalkd.broker import Outgoing as PutItem
from offload.backends.beanstalkd.claim import parse_body
from offload.backends.beanstalkd.direct import DirectBeanstalkBackend
from offload.backends.beanstalkd.stored import StoredBeanstalkBackend
from offload.backends.rabbitmq.connection import Outgoing
from offload.backends.rabbitmq.direct import DirectRabbitMQBackend
from offload.backends.rabbitmq.stored import RabbitMQBackend
from offload.control import Retry, Snooze
from offload.errors import CapabilityUnavailable
from offload.job import ClaimRequest, JobState, NewJob, new_job_id
from offload.worker import Worker, WorkerConfig
from tests.procs import kill_all, ledger_lines, start_worker, stop, wait_for
from tests.services import backend_url
from tests.test_beanstalkd_stored import Make as MakeStalk
from tests.test_beanstalkd_stored import make_stalk  # noqa: F401 (fixture)
from tests.test_rabbitmq_backend import Make as MakeRabbit
from tests.test_rabbitmq_backend import make_rabbit  # noqa: F401 (fixture)

STORE_LESS = ["amqp://guest:guest@127.0.0.1:5672/", "beanstalk://127.0.0.1:11300/"]


@pytest.mark.parametrize("url", STORE_LESS)
async def test_a_store_less_broker_refuses_limited_jobs_naming_the_fix(url: str) -> None:
    app = offload.App(url)

    @app.task(name="rated", rate_limit="1/s")
    def rated() -> None: ...

    assert not app.backend.capabilities.limits
    with pytest.raises(CapabilityUnavailable, match=r"\?store="):
        await rated.aenqueue()
    # The backend itself refuses too (a NewJob built by hand), before any broker call.
    backend = app.backend
    assert isinstance(backend, DirectRabbitMQBackend | DirectBeanstalkBackend)
    job = NewJob(id=new_job_id(), task="rated", queue="q", args=b"{}", limits=("1/1000/x",))
    with pytest.raises(CapabilityUnavailable, match=r"store"):
        await backend.enqueue([job])


def spy_rabbit(backend: RabbitMQBackend) -> list[str]:
    """The job id of every message the backend publishes from now on."""
    sent: list[str] = []
    broker = backend._broker
    publish = broker.publish

    async def recording(items: Sequence[Outgoing]) -> None:
        sent.extend(i.job_id for i in items)
        await publish(items)

    broker.publish = recording  # type: ignore[method-assign]
    return sent


def spy_stalk(backend: StoredBeanstalkBackend) -> list[str]:
    sent: list[str] = []
    bs = backend._bs
    put = bs.put

    async def recording(items: Sequence[PutItem]) -> list[int]:
        sent.extend(p[0] for p in map(parse_body, (i.body for i in items)) if p is not None)
        return await put(items)

    bs.put = recording  # type: ignore[method-assign]
    return sent


async def run_accounts(backend: Backend, sent: list[str]) -> None:
    """Jobs of four accounts under ``max_per_key=1`` through real workers (two instances of
    the backend would be two processes; one worker with 8 slots is enough to overlap them),
    one of each account retried and one snoozed; plus one unlimited job. Checks the limit,
    the order per account, and that only the unlimited job ever had a message."""
    app = offload.App(backend=backend)
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    order: dict[str, list[int]] = {}
    tries: dict[tuple[str, int], int] = {}

    @app.task(name="step", concurrency_key="account")
    async def step(account: str, i: int) -> None:
        running[account] = running.get(account, 0) + 1
        most[account] = max(most.get(account, 0), running[account])
        await asyncio.sleep(0.01)
        running[account] -= 1
        n = tries[account, i] = tries.get((account, i), 0) + 1
        if i == 1 and n == 1:
            raise Retry(delay=0.2)
        if i == 2 and n == 1:
            raise Snooze(0.1)
        order.setdefault(account, []).append(i)

    @app.task(name="free")
    async def free() -> None: ...

    async with app:
        jobs = await app.aenqueue_many(
            [step.prepare(f"a{k}", i) for i in range(4) for k in range(4)]
        )
        (unlimited,) = await app.aenqueue_many([free.prepare()])
        worker = Worker(app, WorkerConfig(concurrency=8, poll_s=0.2))
        running_worker = asyncio.create_task(worker.run())
        try:
            for j in [*jobs, unlimited]:
                done = await app.backend.wait_done(j.id, 30)
                assert done is not None and done.state is JobState.SUCCEEDED, done
        finally:
            await worker.stop()
            await running_worker
        assert most == {f"a{k}": 1 for k in range(4)}
        # in order per account, except where a retry or snooze let a later job go first
        assert {a: sorted(o) for a, o in order.items()} == {f"a{k}": [0, 1, 2, 3] for k in range(4)}
        assert tries[("a0", 1)] == 2 and tries[("a0", 2)] == 2
        counts = await app.backend.counts()
        assert counts["default"] == {JobState.SUCCEEDED: 17}
    assert sent == [unlimited.id]


async def test_rabbitmq_limited_jobs_stay_out_of_the_broker(make_rabbit: MakeRabbit) -> None:  # noqa: F811
    backend = await make_rabbit()
    await run_accounts(backend, spy_rabbit(backend))


async def test_beanstalkd_limited_jobs_stay_out_of_the_broker(make_stalk: MakeStalk) -> None:  # noqa: F811
    backend = await make_stalk()
    await run_accounts(backend, spy_stalk(backend))


async def test_a_requeued_limited_job_gets_no_message(make_rabbit: MakeRabbit) -> None:  # noqa: F811
    backend = await make_rabbit()
    sent = spy_rabbit(backend)
    job = NewJob(id=new_job_id(), task="t", queue="q", args=b"{}", limits=("1/0/x",))
    (rec,) = await backend.enqueue([job])
    await backend.cancel(rec.id)
    again = await backend.requeue(rec.id)
    assert again is not None and again.state is JobState.QUEUED
    (got,) = await backend.claim(ClaimRequest(queues=("q",), limit=5, worker_id="w"))
    assert got.id == rec.id
    assert sent == []


async def idle_rounds(backend: Backend, seconds: float) -> int:
    """A worker's idle loop (claim, then wait) for ``seconds``: how many rounds it made."""
    rounds = 0
    stop = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < stop:
        assert await backend.claim(ClaimRequest(queues=("q",), limit=5, worker_id="w")) == []
        await backend.wait_for_work(["q"], 0.3)
        rounds += 1
    return rounds


async def no_spin_on_a_job_whose_message_is_elsewhere(
    backend: RabbitMQBackend | StoredBeanstalkBackend,
) -> None:
    """A due job without limits stored with no message (its producer died before publishing;
    the outbox publishes it only after ``orphan_after_s``): the store's wait returns at once
    for it, again and again. The limited lane must not turn that into a spin, and a limited
    job enqueued meanwhile still starts at once."""
    orphan = NewJob(id=new_job_id(), task="t", queue="q", args=b"{}")
    await backend.store.enqueue([orphan])
    rounds = await idle_rounds(backend, 2.0)
    assert rounds <= 16, (
        rounds
    )  # ~12 (2 quick rounds a second, then the caller's timeouts); a spin: hundreds
    job = NewJob(id=new_job_id(), task="t", queue="q", args=b"{}", limits=("1/0/x",))
    (rec,) = await backend.enqueue([job])
    (got,) = await backend.claim(ClaimRequest(queues=("q",), limit=5, worker_id="w"))
    assert got.id == rec.id


async def test_rabbitmq_no_spin_on_a_job_whose_message_is_elsewhere(
    make_rabbit: MakeRabbit,  # noqa: F811
) -> None:
    await no_spin_on_a_job_whose_message_is_elsewhere(await make_rabbit())


async def test_beanstalkd_no_spin_on_a_job_whose_message_is_elsewhere(
    make_stalk: MakeStalk,  # noqa: F811
) -> None:
    await no_spin_on_a_job_whose_message_is_elsewhere(await make_stalk())


def test_kill9_mid_run_with_limited_jobs_loses_nothing(tmp_path: Path) -> None:
    """RabbitMQ with a Redis store, 200 jobs of 10 accounts under ``max_per_key=1``: kill -9
    the worker in the middle and start another. Every job succeeds; only what the killed one
    held runs again; the killed worker's slots come back after its lease (the accounts it held
    go on); and no two finished runs of one account ever overlapped."""
    from tests.apps.limited import keyed_record

    n_accounts, per_account, concurrency = 10, 20, 8
    ledger = tmp_path / "ledger.txt"
    with backend_url("rabbitmq_redis", tmp_path) as url:
        app = offload.App(url)
        task = app.task(name="keyed_record", concurrency_key="account", max_attempts=5)(
            keyed_record.fn  # as tests.apps.limited declares it
        )
        jobs = [
            task.prepare(f"a{k}", i, str(ledger))
            for k in range(n_accounts)
            for i in range(per_account)  # one account's jobs in a row: only the limit spreads them
        ]
        try:
            app.enqueue_many(jobs)
            flags = ["--concurrency", str(concurrency), "--lease", "2", "--heartbeat", "0.5"]
            first = start_worker(url, *flags, app="tests.apps.limited:app")
            second = None
            try:
                wait_for(lambda: len(ends(ledger)) >= len(jobs) // 3, 60, "a third of the jobs")
                killed_at = time.time()
                first.send_signal(signal.SIGKILL)
                first.wait()
                second = start_worker(url, *flags, app="tests.apps.limited:app")

                def all_done() -> bool:
                    by_state = app.run_sync(lambda b: b.counts()).get("default", {})
                    return sum(by_state.get(s, 0) for s in JobState if s.final) >= len(jobs)

                wait_for(all_done, 90, "every job to finish after the kill")
                assert stop(second) == 0
            finally:
                kill_all([p for p in (first, second) if p is not None])
            counts = app.run_sync(lambda b: b.counts())["default"]
        finally:
            app.close_sync()
    assert counts.get(JobState.SUCCEEDED, 0) == len(jobs)  # nothing lost
    lines = [ln.split() for ln in ledger_lines(ledger)]
    starts = collections.Counter((a, i) for kind, a, i, *_ in lines if kind == "start")
    assert len(starts) == len(jobs)
    # Re-runs: what the killed worker was running (at most a run per slot), and what it had
    # finished whose outcome was not written yet (a slot frees when its job ends, before the
    # Completer's next write): those ended just before the kill, never long before it.
    killed = str(first.pid)
    ended = {(a, i): float(at) for kind, a, i, pid, at in lines if kind == "end" and pid == killed}
    rerun = [k for k, n in starts.items() if n > 1]
    assert sum(starts[k] - 1 for k in rerun if k not in ended) <= concurrency
    assert [k for k in rerun if k in ended and ended[k] < killed_at - 5.0] == []
    runs: dict[str, list[tuple[float, float]]] = {}
    begun: dict[tuple[str, str, str], float] = {}
    for kind, account, i, pid, at in lines:
        if kind == "start":
            begun[account, i, pid] = float(at)
        else:
            runs.setdefault(account, []).append((begun[account, i, pid], float(at)))
    for account, spans in runs.items():
        spans.sort()
        overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
        assert overlaps == [], (account, overlaps)


def ends(ledger: Path) -> list[str]:
    return [ln for ln in ledger_lines(ledger) if ln.startswith("end ")]
