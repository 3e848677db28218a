"""AdmissionControl behind a real uvicorn server, driven by concurrent httpx clients.

The test app holds every request on its own event, so ordering is decided by the test, never by
timing. A probe in front of the middleware reports when a request starts waiting (the middleware
starts listening on ``receive``) and when it sees a disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import uvicorn

from offload.asgi import AdmissionControl, Message, PriorityRule, Receive, Scope, Send


class HeldApp:
    """Answers ``200 <path>`` once the test releases that path; records who got in, in order."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.inside = 0
        self.max_inside = 0
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.hold = True

    def release(self, *paths: str) -> None:
        for path in paths:
            self.gates[path].set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.entered.append(path)
        self.inside += 1
        self.max_inside = max(self.max_inside, self.inside)
        self.arrived[path].set()
        try:
            if self.hold:
                await self.gates[path].wait()
            else:
                for _ in range(3):  # a little work that lets other requests interleave
                    await asyncio.sleep(0)
            body = b""
            if scope["method"] == "POST":
                more = True
                while more:
                    message = await receive()
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body or path.encode()})
        finally:
            self.inside -= 1


class Probe:
    """Outermost layer: signals when the middleware first listens on, or sees a disconnect."""

    def __init__(self, app: AdmissionControl) -> None:
        self.app = app
        self.queued: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.gone: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")

        async def probed() -> Message:
            self.queued[path].set()
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone[path].set()
            return message

        await self.app(scope, probed, send)


@contextlib.asynccontextmanager
async def serve(app: Probe) -> AsyncIterator[httpx.AsyncClient]:
    """A real uvicorn server on 127.0.0.1, and a client for it; no leftover tasks after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", http="httptools")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


def build(**options: object) -> tuple[HeldApp, AdmissionControl, Probe]:
    app = HeldApp()
    gate = AdmissionControl(app, **options)  # type: ignore[arg-type]
    return app, gate, Probe(gate)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """For the middleware's own counters, which have no event on purpose (its hot path stays
    free of notification work): yield to the loop until ``condition`` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


def start(client: httpx.AsyncClient, path: str) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.get(path))


async def fill(
    client: httpx.AsyncClient, app: HeldApp, probe: Probe, running: list[str], queued: list[str]
) -> dict[str, asyncio.Task[httpx.Response]]:
    """Start ``running`` (each admitted) then ``queued`` (each waiting), in that order."""
    tasks = {}
    for path in running:
        tasks[path] = start(client, path)
        await app.arrived[path].wait()
    for path in queued:
        tasks[path] = start(client, path)
        await probe.queued[path].wait()
    return tasks


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": 0, "max_queue": 1}, "max_concurrency"),
        ({"max_concurrency": "8", "max_queue": 1}, "max_concurrency"),
        ({"max_concurrency": 1, "max_queue": -1}, "max_queue"),
        ({"max_concurrency": 1, "max_queue": 1, "overflow": "drop_newest"}, "overflow"),
        ({"max_concurrency": 1, "max_queue": 1, "queue_timeout": 0}, "queue_timeout"),
        ({"max_concurrency": 1, "max_queue": 1, "retry_after": -1}, "retry_after"),
    ],
)
def test_bad_input_raises_at_construction(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdmissionControl(HeldApp(), **options)  # type: ignore[arg-type]


def test_priority_rule_needs_something_to_match() -> None:
    with pytest.raises(ValueError, match="path_prefix"):
        PriorityRule(priority=1)


async def test_admits_in_fifo_order_and_never_exceeds_the_limit() -> None:
    app, gate, probe = build(max_concurrency=2, max_queue=10)
    async with serve(probe) as client:
        waiting = [f"/q{i}" for i in range(6)]
        tasks = await fill(client, app, probe, ["/a", "/b"], waiting)
        assert gate.stats.in_flight == 2 and gate.stats.waiting == 6
        for path in ["/a", "/b", *waiting]:
            app.release(path)
            assert (await tasks[path]).text == path
    assert app.entered == ["/a", "/b", *waiting]
    assert app.max_inside == 2
    assert gate.stats.in_flight == 0 and gate.stats.waiting == 0 and gate.stats.admitted == 8


async def test_many_concurrent_clients_never_exceed_the_limit() -> None:
    app, gate, probe = build(max_concurrency=4, max_queue=1000)
    app.hold = False
    async with serve(probe) as client:
        responses = await asyncio.gather(*(client.get(f"/{i}") for i in range(150)))
    assert [r.status_code for r in responses] == [200] * 150
    assert app.max_inside == 4
    assert gate.stats.admitted == 150 and gate.stats.in_flight == 0


async def test_drop_oldest_sheds_exactly_the_longest_waiters() -> None:
    app, gate, probe = build(max_concurrency=1, max_queue=2, retry_after=7)
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/run"], ["/old1", "/old2"])
        tasks |= await fill(client, app, probe, [], ["/new1"])
        shed = await tasks["/old1"]
        assert shed.status_code == 503 and shed.headers["retry-after"] == "7"
        tasks |= await fill(client, app, probe, [], ["/new2"])
        assert (await tasks["/old2"]).status_code == 503
        app.release("/run", "/new1", "/new2")
        assert [(await tasks[p]).status_code for p in ("/run", "/new1", "/new2")] == [200] * 3
    assert app.entered == ["/run", "/new1", "/new2"]
    assert gate.stats.shed == {"overflow": 2, "timeout": 0, "disconnect": 0}


async def test_reject_new_rejects_exactly_the_newcomers() -> None:
    app, gate, probe = build(max_concurrency=1, max_queue=2, overflow="reject_new")
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/run"], ["/old1", "/old2"])
        for path in ("/new1", "/new2"):
            rejected = await client.get(path)
            assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
        app.release("/run", "/old1", "/old2")
        assert [(await t).status_code for t in tasks.values()] == [200] * 3
    assert app.entered == ["/run", "/old1", "/old2"]
    assert gate.stats.shed["overflow"] == 2


async def test_timed_out_waiter_is_shed_and_never_reaches_the_app() -> None:
    app, gate, probe = build(max_concurrency=1, max_queue=5, queue_timeout=0.05)
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/run"], ["/late"])
        assert (await tasks["/late"]).status_code == 503
        app.release("/run")
        assert (await tasks["/run"]).status_code == 200
    assert app.entered == ["/run"]
    assert gate.stats.shed["timeout"] == 1 and gate.stats.waiting == 0


async def test_disconnected_waiter_leaves_at_once_and_never_reaches_the_app() -> None:
    app, gate, probe = build(max_concurrency=1, max_queue=5)
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/run"], ["/gone", "/stays"])
        tasks["/gone"].cancel()  # httpx closes the connection
        await probe.gone["/gone"].wait()
        await eventually(lambda: gate.stats.waiting == 1)
        app.release("/run", "/stays")
        assert (await tasks["/stays"]).status_code == 200
    assert app.entered == ["/run", "/stays"]
    assert gate.stats.shed["disconnect"] == 1


async def test_higher_class_first_and_health_checks_bypass() -> None:
    app, gate, probe = build(
        max_concurrency=1,
        max_queue=3,
        priority_rules=[
            PriorityRule(priority=1, path_prefix="/vip"),
            PriorityRule(priority=2, header="x-tenant", header_value="gold"),
        ],
        bypass_paths=["/healthz"],
    )
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/run"], ["/low1", "/vip1", "/low2"])
        gold = asyncio.create_task(client.get("/low-gold", headers={"x-tenant": "gold"}))
        await probe.queued["/low-gold"].wait()
        # The queue was full: the oldest of the lowest class made room for the gold request.
        assert (await tasks.pop("/low1")).status_code == 503
        app.release("/healthz")
        assert (await client.get("/healthz")).status_code == 200
        app.release("/run", "/low-gold", "/vip1", "/low2")
        assert [(await t).status_code for t in (*tasks.values(), gold)] == [200] * 4
    assert app.entered == ["/run", "/healthz", "/low-gold", "/vip1", "/low2"]
    assert gate.stats.bypassed == 1


async def test_body_of_a_waiting_request_reaches_the_app_whole() -> None:
    app, _gate, probe = build(max_concurrency=1, max_queue=5)
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/run"], [])
        body = bytes(range(256)) * 1000  # larger than one read from the socket
        post = asyncio.create_task(client.post("/post", content=body))
        await probe.queued["/post"].wait()
        app.release("/run", "/post")
        assert (await post).content == body
        await tasks["/run"]


async def test_storm_of_cancellations_leaks_nothing() -> None:
    app, gate, probe = build(max_concurrency=3, max_queue=40, queue_timeout=2)
    async with serve(probe) as client:
        tasks = await fill(client, app, probe, ["/r0", "/r1", "/r2"], [])
        storm = [start(client, f"/s{i}") for i in range(60)]
        # 60 arrivals for 40 places: the 20 oldest are answered 503 once all have arrived.
        pending: set[asyncio.Task[httpx.Response]] = set(storm)
        while len(pending) > 40:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert gate.stats.waiting == 40 and gate.stats.shed["overflow"] == 20
        for i, task in enumerate(storm):
            if i % 3:
                task.cancel()
        app.release("/r0", "/r1", "/r2", *(f"/s{i}" for i in range(60)))
        await asyncio.gather(*tasks.values(), *storm, return_exceptions=True)
        await eventually(lambda: gate.stats.in_flight == 0 and gate.stats.waiting == 0)
    assert app.inside == 0 and app.max_inside == 3
    stats = gate.stats
    assert stats.admitted + sum(stats.shed.values()) == 63
    assert sum(len(queue) for queue in gate._queues.values()) == 0
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


# Direct ASGI calls, no server: paths that a real client cannot aim at precisely.


async def _no_receive() -> Message:
    await asyncio.Event().wait()  # never: the app under test does not read
    raise AssertionError


async def _discard(message: Message) -> None:
    pass


def http_scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "GET", "path": path, "headers": headers or []}


async def test_websocket_and_lifespan_pass_through_at_capacity() -> None:
    app, gate, _ = build(max_concurrency=1, max_queue=0)
    running = asyncio.create_task(gate(http_scope("/run"), _no_receive, _discard))
    await app.arrived["/run"].wait()
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    gate.app = inner
    for kind in ("websocket", "lifespan"):
        await gate({"type": kind, "path": "/ws"}, _no_receive, _discard)
    assert seen == ["websocket", "lifespan"] and gate.stats.in_flight == 1
    app.release("/run")
    gate.app = app
    await running


async def test_slot_granted_to_a_cancelled_waiter_is_given_back() -> None:
    entered: list[str] = []
    queued = asyncio.Event()
    go = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.append(scope["path"])
        await go.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        tasks[1].cancel()  # the slot was handed to /wait just now; it has not run yet

    async def receive_when_queued() -> Message:
        queued.set()
        return await _no_receive()

    gate = AdmissionControl(app, max_concurrency=1, max_queue=5)
    tasks.append(asyncio.create_task(gate(http_scope("/run"), _no_receive, _discard)))
    tasks.append(asyncio.create_task(gate(http_scope("/wait"), receive_when_queued, _discard)))
    await queued.wait()
    go.set()
    await tasks[0]
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert entered == ["/run"]
    assert gate.stats.admitted == 2  # /wait was granted the slot, and gave it back
    assert (gate.stats.in_flight, gate.stats.waiting) == (0, 0)


async def test_waiter_past_its_deadline_is_shed_even_if_its_timer_has_not_run() -> None:
    import time

    app, gate, probe = build(max_concurrency=1, max_queue=5, queue_timeout=0.05)
    running = asyncio.create_task(probe(http_scope("/run"), _no_receive, _discard))
    await app.arrived["/run"].wait()
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    waiting = asyncio.create_task(probe(http_scope("/late"), _no_receive, record))
    await probe.queued["/late"].wait()
    # The event loop stalls past /late's deadline, as in a busy or paused process.
    time.sleep(0.1)  # noqa: ASYNC251 - the stall is the point
    app.release("/run", "/late")  # /run's slot frees before /late's timer gets a turn to run
    await asyncio.gather(running, waiting)
    assert app.entered == ["/run"]  # /late was not run late
    assert sent[0]["status"] == 503 and gate.stats.shed["timeout"] == 1


async def test_app_that_raises_releases_its_slot_once() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    gate = AdmissionControl(broken, max_concurrency=1, max_queue=0)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await gate(http_scope("/x"), _no_receive, _discard)
    assert gate.stats.in_flight == 0 and gate.stats.admitted == 3


async def test_expect_continue_request_is_not_listened_to_while_waiting() -> None:
    app, _gate, probe = build(max_concurrency=1, max_queue=5, queue_timeout=0.02)
    running = asyncio.create_task(probe(http_scope("/run"), _no_receive, _discard))
    await app.arrived["/run"].wait()
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    expect = [(b"expect", b"100-continue")]
    await probe(http_scope("/upload", expect), _no_receive, record)
    assert not probe.queued["/upload"].is_set()  # receive untouched: no 100 Continue invited
    assert sent[0]["status"] == 503
    app.release("/run")
    await running


def test_metrics_go_to_the_given_registry_and_never_the_global_one() -> None:
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    gate = AdmissionControl(HeldApp(), max_concurrency=2, max_queue=1, registry=registry)
    assert gate.registry is registry
    text = generate_latest(registry).decode()
    for name in ("in_flight", "waiting", "limit", "admitted_total", "wait_seconds_bucket"):
        assert f"offload_admission_{name}" in text
    assert 'offload_admission_shed_total{reason="timeout"} 0.0' in text
    assert "offload_admission_limit 2.0" in text
    private = AdmissionControl(HeldApp(), max_concurrency=1, max_queue=1).registry
    assert private is not None and private is not REGISTRY
    assert REGISTRY.get_sample_value("offload_admission_admitted_total") is None


def test_without_prometheus_client_metrics_stay_in_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    gate = AdmissionControl(HeldApp(), max_concurrency=1, max_queue=1)
    assert gate.registry is None and gate.stats.limit == 1


def test_the_admission_docs_examples_are_executed() -> None:
    # tests/test_docs.py runs every python block of docs/*.md in a fresh interpreter; this
    # guards that docs/admission.md keeps examples for it to run.
    from tests.test_docs import BLOCKS

    assert sum(name.startswith("docs/admission.md#") for name, _ in BLOCKS) >= 4
