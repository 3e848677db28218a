"""What a hostile client tried against the HTTP API and the dashboard (issue 16), kept as
regression tests: plain HTTP requests through httpx against the ASGI app, on the memory and
SQLite backends. docs/security.md states the threat model these defend; the dashboard's own
attacks (and a real browser) are in test_dashboard_hostile.py, ``offload serve``'s tokens in
test_server_tokens.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

import offload
from offload.job import JobFilter, JobState
from offload.server import create_service
from offload.server.metrics import MAX_QUEUE_LABELS, OTHER_QUEUE
from offload.server.throttle import DEFAULT_MAX_FAILURES, Throttle

ADMIN = "admin-token-0123456789"
ENQUEUER = "enqueue-token-0123456789"
READER = "reader-token-0123456789"
TOKENS = {ADMIN: ["admin"], ENQUEUER: ["enqueue"], READER: ["read"]}
LOCAL = "http://127.0.0.1:8000"
FOREIGN_HOSTS = ("evil.test:8000", "evil.test", "127.0.0.1.evil.test", "localhost.evil.test:80")

Client = httpx.AsyncClient
MakeClient = Callable[..., Awaitable[Client]]


def make_app(url: str) -> offload.App:
    app = offload.App(url)

    @app.task(name="hello", expose=True)
    def hello(name: str = "world") -> str:
        return f"hello {name}"

    @app.task(name="tree", expose=True)
    def tree(data: Any = None) -> None: ...

    @app.task(name="purge")  # not exposed, in the queue of the exposed ones
    def purge(secret: str) -> None: ...

    @app.task(name="rotate", queue="internal")  # not exposed: only Python producers use it
    def rotate(secret: str) -> str:
        return secret[::-1]

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
async def client_for(url: str) -> AsyncIterator[MakeClient]:
    """``await client_for(base=..., **service_options)``: a loopback client of a service."""
    opened: list[tuple[Client, Any]] = []

    async def make(base: str = LOCAL, **options: Any) -> Client:
        service = create_service(make_app(url), **options)
        lifespan = service.router.lifespan_context(service)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service), base_url=base)
        client.service = service  # type: ignore[attr-defined]
        opened.append((client, lifespan))
        return client

    yield make
    for client, lifespan in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def app_of(client: Client) -> offload.App:
    service: Starlette = client.service  # type: ignore[attr-defined]
    app: offload.App = service.state.offload.app
    return app


async def state_of(app: offload.App, job_id: str) -> JobState:
    record = await app.call(lambda b: b.get(job_id))
    assert record is not None
    return record.state


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- 1. DNS rebinding and cross-site requests in the token-less mode ---------------------------


async def test_a_foreign_host_is_refused_on_every_route(client_for: MakeClient) -> None:
    """A rebinding page (evil.test resolved to 127.0.0.1) sends its own name as Host."""
    c = await client_for()
    job = await app_of(c).tasks["hello"].aenqueue("x")
    for host in FOREIGN_HOSTS:
        h = {"Host": host}
        for path in ("/v1/jobs", f"/v1/jobs/{job.id}", "/v1/queues", "/v1/workers", "/metrics"):
            r = await c.get(path, headers=h)
            assert r.status_code == 403, (host, path)
            assert job.id not in r.text and "hello" not in r.text
        for path in ("/", "/jobs", f"/jobs/{job.id}", "/openapi.json", "/healthz"):
            assert (await c.get(path, headers=h)).status_code == 403, (host, path)
        r = await c.post("/v1/jobs", json={"task": "hello"}, headers=h)
        assert r.status_code == 403, host
        r = await c.post(f"/v1/jobs/{job.id}/cancel", headers=h)
        assert r.status_code == 403, host
    assert await state_of(app_of(c), job.id) is JobState.QUEUED
    assert len((await c.get("/v1/jobs")).json()["jobs"]) == 1  # nothing was enqueued
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", "127.0.0.2"):
        assert (await c.get("/v1/queues", headers={"Host": host})).status_code == 200, host


async def test_loopback_mode_refuses_cross_site_posts(client_for: MakeClient) -> None:
    """A page of another site (or another port of this machine) posting without CORS."""
    c = await client_for()
    job = await app_of(c).tasks["hello"].aenqueue("x")
    cancel = f"/v1/jobs/{job.id}/cancel"
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # localhost:3000 is the same site as localhost:8000
        {"Origin": "http://evil.test"},
        {"Origin": "http://127.0.0.1:3000"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
    ):
        r = await c.post(cancel, headers=headers, content=b"x=1")
        assert r.status_code in (403, 415), headers
        assert r.json()["error"]["code"] in ("cross_site", "unsupported_media_type"), headers
    r = await c.post(
        "/v1/jobs",
        content=b'{"task": "hello"}',
        headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
    )
    assert r.status_code == 403
    assert await state_of(app_of(c), job.id) is JobState.QUEUED
    # What a script or curl on this machine sends is still served.
    r = await c.post(cancel, headers={"Sec-Fetch-Site": "same-origin", "Origin": LOCAL})
    assert r.status_code == 200


async def test_with_tokens_any_host_is_served_and_tokens_decide(client_for: MakeClient) -> None:
    c = await client_for(tokens=TOKENS, base="http://jobs.example.com")
    assert (await c.get("/v1/queues", headers=bearer(READER))).status_code == 200
    assert (await c.get("/v1/queues")).status_code == 401


# -- 2. dedup keys never hand out another task's job -----------------------------------------


async def test_a_key_hit_on_another_tasks_job_is_a_conflict_without_the_record(
    client_for: MakeClient,
) -> None:
    c = await client_for(tokens=TOKENS, queues_per_task={"hello": ["internal"]})
    purge = await app_of(c).tasks["purge"].options(key="nightly-purge").aenqueue("s3cr3t")
    rotate = await app_of(c).tasks["rotate"].options(key="nightly-rotation").aenqueue("s3cr3t")
    attacks: list[tuple[dict[str, str], str, offload.Job]] = [
        ({}, "nightly-purge", purge),
        ({"queue": "internal"}, "nightly-rotation", rotate),
    ]
    for queue, key, secret in attacks:
        for prefer in ({}, {"Prefer": "wait=1"}):
            r = await c.post(
                "/v1/jobs",
                json={"task": "hello", "key": key, **queue},
                headers={**bearer(ENQUEUER), **prefer},
            )
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "key_conflict"
            assert "s3cr3t" not in r.text and secret.id not in r.text and secret.task not in r.text
            assert "Location" not in r.headers and "Idempotent-Replayed" not in r.headers


async def test_a_key_hit_on_the_same_task_returns_the_job(client_for: MakeClient) -> None:
    c = await client_for(tokens=TOKENS)
    body = {"task": "hello", "args": {"name": "a"}, "key": "k1"}
    first = await c.post("/v1/jobs", json=body, headers=bearer(ENQUEUER))
    again = await c.post("/v1/jobs", json=body, headers=bearer(ENQUEUER))
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_idempotency_keys_cannot_be_named_as_dedup_keys(client_for: MakeClient) -> None:
    """Another client's Idempotency-Key is stored as a key under a reserved prefix."""
    c = await client_for(tokens=TOKENS)
    theirs = await c.post(
        "/v1/jobs",
        json={"task": "hello", "args": {"name": "private"}},
        headers={**bearer(ENQUEUER), "Idempotency-Key": "order-1234"},
    )
    assert theirs.status_code == 202
    r = await c.post(
        "/v1/jobs",
        json={"task": "hello", "key": "idempotency:hello:order-1234"},
        headers=bearer(ENQUEUER),
    )
    assert r.status_code == 422 and r.json()["error"]["argument"] == "key"
    assert "private" not in r.text and theirs.json()["id"] not in r.text


# -- 3. an HTTP enqueue names only the queues its task allows ---------------------------------


async def test_http_enqueue_cannot_fill_another_queue(client_for: MakeClient) -> None:
    c = await client_for(tokens=TOKENS)
    r = await c.post(
        "/v1/jobs",
        json={"task": "hello", "queue": "internal", "delay": 3600},
        headers=bearer(ENQUEUER),
    )
    assert r.status_code == 422 and r.json()["error"]["argument"] == "queue"
    assert (await app_of(c).call(lambda b: b.counts())).get("internal", {}) == {}
    r = await c.post(
        "/v1/jobs", json={"task": "hello", "queue": "default"}, headers=bearer(ENQUEUER)
    )
    assert r.status_code == 202  # its own queue, named
    c2 = await client_for(tokens=TOKENS, queues_per_task={"hello": ["bulk"]})
    ok = await c2.post("/v1/jobs", json={"task": "hello", "queue": "bulk"}, headers=bearer(ADMIN))
    assert ok.status_code == 202 and ok.json()["queue"] == "bulk"
    r = await c2.post("/v1/jobs", json={"task": "tree", "queue": "bulk"}, headers=bearer(ADMIN))
    assert r.status_code == 422


# -- 4. JSON nesting is bounded before decoding; anything stored stays listable ----------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


async def test_deeply_nested_bodies_are_refused_cleanly(client_for: MakeClient) -> None:
    c = await client_for()
    for depth in (100, 1_000, 100_000):
        body = b'{"task": "tree", "args": {"data": ' + nested(depth) + b"}}"
        r = await c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_deep", depth
    ok = b'{"task": "tree", "args": {"data": ' + nested(60) + b"}}"
    r = await c.post("/v1/jobs", content=ok, headers={"Content-Type": "application/json"})
    assert r.status_code == 202
    # Brackets inside strings are not nesting.
    text = b'{"task": "tree", "args": {"data": "' + b"[{" * 5000 + b'"}}'
    r = await c.post("/v1/jobs", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 202


async def test_an_unterminated_string_of_escaped_quotes_is_refused_at_once(
    client_for: MakeClient,
) -> None:
    """The nesting check must stay linear on text that is not JSON: an unterminated string
    of escaped quotes made its string regex retry at every quote (quadratic: an 80 KB body
    held the event loop 27 s; this 600 KB one would hold it for most of an hour, past the
    test's timeout)."""
    c = await client_for()
    body = b"[" * 70 + b'"' + b'\\"' * 200_000
    r = await c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400


async def test_a_deeply_nested_cursor_is_a_clean_422(client_for: MakeClient) -> None:
    import base64

    c = await client_for()
    for depth in (300, 3_000):
        cursor = base64.urlsafe_b64encode(nested(depth)).decode()
        r = await c.get("/v1/jobs", params={"cursor": cursor})
        assert r.status_code == 422 and r.json()["error"]["argument"] == "cursor", depth


async def test_a_deeply_nested_stored_job_stays_listable(client_for: MakeClient) -> None:
    """A job stored before the bound (or by a Python producer) must not break any page."""
    c = await client_for()
    app = app_of(c)
    deep = b'{"data": ' + nested(5_000) + b"}"
    new = app.tasks["tree"].options().prepare_json(deep)
    await app.call(lambda b: b.enqueue([new]))
    await app.tasks["hello"].aenqueue("fine")
    page = await c.get("/v1/jobs")
    assert page.status_code == 200
    jobs = {j["task"]: j for j in page.json()["jobs"]}
    assert jobs["tree"]["args"] is None and jobs["tree"]["unreadable"] == ["args"]
    assert jobs["hello"]["args"] == {"name": "fine"} and jobs["hello"]["unreadable"] == []
    r = await c.get(f"/v1/jobs/{new.id}")
    assert r.status_code == 200 and r.json()["unreadable"] == ["args"]
    for path in ("/jobs", f"/jobs/{new.id}", "/"):
        r = await c.get(path)
        assert r.status_code == 200, path
    assert "too deeply nested" in (await c.get(f"/jobs/{new.id}")).text
    listed = await app.call(lambda b: b.list_jobs(JobFilter()))
    assert len(listed.jobs) == 2


# -- 5. the weaker points ---------------------------------------------------------------------


async def test_queue_labels_of_metrics_are_bounded(client_for: MakeClient) -> None:
    """Queue names come from stored jobs too: 300 of them must not make 300 series."""
    c = await client_for()
    app = app_of(c)
    small = len((await c.get("/metrics")).content)
    for i in range(300):
        await app.tasks["hello"].options(queue=f"q{i:03}").aenqueue("x")
    await app.tasks["hello"].aenqueue("x")  # the app's own queue, used last
    r = await c.get("/metrics")
    assert r.status_code == 200
    labels = {
        line.split('queue="', 1)[1].split('"', 1)[0]
        for line in r.text.splitlines()
        if line.startswith("offload_queue_jobs{")
    }
    assert len(labels) <= MAX_QUEUE_LABELS + 1 and OTHER_QUEUE in labels
    assert "default" in labels  # the app's own queues keep their names
    assert len(r.content) < small + 60_000
    # The jobs are all counted, under their own label or the shared one.
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in r.text.splitlines()
        if line.startswith("offload_queue_jobs{") and 'state="queued"' in line
    )
    assert total == 301


async def test_run_at_in_the_distant_past_means_now(client_for: MakeClient) -> None:
    c = await client_for()
    r = await c.post("/v1/jobs", json={"task": "hello", "run_at": "0001-01-01T00:00:00Z"})
    assert r.status_code == 202
    job = r.json()
    assert job["state"] == "queued" and job["run_at"] >= job["created_at"][:4]
    assert job["run_at"] == job["created_at"]
    r = await c.post(
        "/v1/jobs", json={"task": "hello", "run_at": "0001-01-01T00:00:00Z", "delay": 5}
    )
    assert r.status_code == 422  # both at once is still refused


async def test_oversized_headers_are_refused(client_for: MakeClient) -> None:
    c = await client_for()
    r = await c.get("/v1/queues", headers={"X-Big": "a" * 100_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    many = {f"X-H{i}": "b" * 1000 for i in range(100)}
    assert (await c.get("/healthz", headers=many)).status_code == 431
    assert (await c.get("/healthz", headers={"X-Ok": "c" * 8000})).status_code == 200


async def test_waiting_requests_are_bounded(client_for: MakeClient) -> None:
    c = await client_for(max_waiting=1)
    state = c.service.state.offload  # type: ignore[attr-defined]
    job = (await c.post("/v1/jobs", json={"task": "hello"})).json()
    r = await c.get(f"/v1/jobs/{job['id']}", params={"wait": 0.05})
    assert r.status_code == 200 and state.waiting == 0  # a wait gives its slot back
    state.waiting = 1  # another request holds the only slot
    r = await c.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert r.json()["error"]["code"] == "too_many_waiters"
    r = await c.post("/v1/jobs", json={"task": "hello"}, headers={"Prefer": "wait=30"})
    assert r.status_code == 202 and "Preference-Applied" not in r.headers  # stored, not held
    assert (await c.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 200
    r = await c.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
    assert r.status_code == 200  # a finished job needs no waiting
    state.waiting = 0


async def test_bad_bearer_tokens_are_throttled_per_client(client_for: MakeClient) -> None:
    c = await client_for(tokens=TOKENS)
    for i in range(DEFAULT_MAX_FAILURES):
        r = await c.get("/v1/queues", headers=bearer(f"guess-{i:04}-0123456789"))
        assert r.status_code == 401
    r = await c.get("/v1/queues", headers=bearer("guess-last-0123456789"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # While throttled, even a good token from this client is refused: no oracle.
    assert (await c.get("/v1/queues", headers=bearer(READER))).status_code == 429
    # The dashboard's login shares the budget.
    form = await c.get("/login")
    assert form.status_code == 200
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = await c.post("/login", data={"token": ADMIN, "csrf": csrf})
    assert r.status_code == 429
    # Another client is not affected.
    service = c.service  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=service, client=("127.0.0.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as other:
        assert (await other.get("/v1/queues", headers=bearer(READER))).status_code == 200


def test_the_throttle_forgets_old_failures() -> None:
    now = [0.0]
    t = Throttle(max_failures=2, window_s=10, clock=lambda: now[0])
    t.failed("a")
    t.failed("a")
    assert t.retry_after("a") == 10 and t.retry_after("b") is None
    now[0] = 10.5
    assert t.retry_after("a") is None


async def test_the_trailing_slash_redirect_does_not_follow_a_foreign_host(
    client_for: MakeClient,
) -> None:
    c = await client_for(tokens=TOKENS)
    for path in ("/v1/jobs/", "/v1/queues/", "/jobs/"):
        r = await c.get(path, headers={"Host": "evil.test", **bearer(READER)})
        assert r.status_code == 404, path
        assert "evil.test" not in r.headers.get("location", ""), path


async def test_json_answers_are_not_sniffed_nor_cached(client_for: MakeClient) -> None:
    c = await client_for(tokens=TOKENS)
    job = (await c.post("/v1/jobs", json={"task": "hello"}, headers=bearer(ADMIN))).json()
    for r in (
        await c.get("/v1/jobs", headers=bearer(READER)),
        await c.get(f"/v1/jobs/{job['id']}", headers=bearer(READER)),
        await c.get("/v1/jobs/nope", headers=bearer(READER)),
        await c.get("/v1/jobs"),  # 401
        await c.get("/metrics", headers=bearer(READER)),
        await c.get("/openapi.json"),
        await c.get("/healthz"),
    ):
        assert r.headers["X-Content-Type-Options"] == "nosniff", r.url
        assert r.headers["Cache-Control"] == "no-store", r.url
