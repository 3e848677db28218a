"""Every route and every error of the HTTP API, through httpx against the ASGI app, on the
memory and SQLite backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

import offload
from offload.server import create_service

Client = httpx.AsyncClient
MakeClient = Callable[..., Awaitable[Client]]


def make_app(url: str) -> offload.App:
    app = offload.App(url, queue_limits={"tiny": 1})

    @app.task(name="add", expose=True)
    def add(a: int, b: int = 1) -> int:
        return a + b

    @app.task(name="boom", expose=True, max_attempts=1)
    def boom() -> None:
        raise RuntimeError("boom")

    @app.task(name="later", expose=True, queue="tiny")
    def later(n: int) -> int:
        return n

    @app.task(name="secret")
    def secret() -> None: ...

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
async def client_for(url: str) -> AsyncIterator[MakeClient]:
    """``await client_for(workers=N, **service_options)``: a client of a running service."""
    stack: list[tuple[Starlette, Client, Any]] = []

    async def make(**options: Any) -> Client:
        service = create_service(make_app(url), **options)
        lifespan = service.router.lifespan_context(service)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=service)
        client = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        stack.append((service, client, lifespan))
        return client

    yield make
    for _, client, lifespan in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def error_of(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["error"]
    assert set(body) <= {"code", "message", "argument"}
    assert "Traceback" not in body["message"]
    return body


async def stored(client: Client) -> list[dict[str, Any]]:
    r = await client.get("/v1/jobs", params={"limit": 500})
    assert r.status_code == 200
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


# -- enqueue and read -----------------------------------------------------------------------


async def test_enqueue_answers_202_with_location(client_for: MakeClient) -> None:
    client = await client_for()
    r = await client.post("/v1/jobs", json={"task": "add", "args": {"a": 2}, "priority": 5})
    assert r.status_code == 202
    job = r.json()
    assert job["state"] == "queued" and job["args"] == {"a": 2, "b": 1} and job["priority"] == 5
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    got = await client.get(r.headers["location"])
    assert got.status_code == 200 and got.json()["id"] == job["id"]


async def test_enqueue_options(client_for: MakeClient) -> None:
    client = await client_for(queues_per_task={"add": ["other"]})
    r = await client.post(
        "/v1/jobs",
        json={"task": "add", "args": {"a": 1}, "queue": "other", "delay": 60, "max_attempts": 7},
    )
    job = r.json()
    assert (job["queue"], job["state"], job["max_attempts"]) == ("other", "scheduled", 7)
    r = await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 1}, "run_at": "2000-01-01T00:00:00Z"}
    )
    assert r.json()["state"] == "queued"


async def test_prefer_wait_returns_the_result(client_for: MakeClient) -> None:
    client = await client_for(workers=2)
    r = await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 40, "b": 2}}, headers={"Prefer": "wait=5"}
    )
    assert r.status_code == 200
    assert r.headers["preference-applied"] == "wait=5"
    assert r.json()["state"] == "succeeded" and r.json()["result"] == 42
    r = await client.post("/v1/jobs", json={"task": "boom"}, headers={"Prefer": "wait=5"})
    assert r.status_code == 200 and r.json()["state"] == "dead"
    assert "RuntimeError: boom" in r.json()["error"]


async def test_prefer_wait_times_out_with_202(client_for: MakeClient) -> None:
    client = await client_for(max_wait_s=0.1)  # no worker: the job cannot finish
    r = await client.post(
        "/v1/jobs",
        json={"task": "add", "args": {"a": 1}},
        headers={"Prefer": "respond-async, wait=30"},
    )
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "wait=0.1"  # capped at the service's maximum
    r = await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 1}}, headers={"Prefer": "x"}
    )
    assert r.status_code == 202 and "preference-applied" not in r.headers


async def test_get_with_wait(client_for: MakeClient) -> None:
    client = await client_for(workers=1)
    job = (await client.post("/v1/jobs", json={"task": "add", "args": {"a": 1}})).json()
    r = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 5})
    assert r.status_code == 200 and r.json()["result"] == 2
    r = await client.get(f"/v1/jobs/{job['id']}", params={"wait": "soon"})
    assert r.status_code == 422 and error_of(r)["argument"] == "wait"
    r = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 10_000})
    assert r.status_code == 422


async def test_idempotency_key_returns_the_same_job(client_for: MakeClient) -> None:
    client = await client_for()
    body = {"task": "add", "args": {"a": 1}}
    headers = {"Idempotency-Key": "order-17"}
    first = await client.post("/v1/jobs", json=body, headers=headers)
    again = await client.post("/v1/jobs", json=body, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    racing = await asyncio.gather(
        *(client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"}) for _ in range(10))
    )
    assert len({r.json()["id"] for r in racing}) == 1
    other = await client.post("/v1/jobs", json={"task": "add", "args": {"a": 2}}, headers=headers)
    assert other.status_code == 409 and error_of(other)["code"] == "idempotency_key_reused"
    bad = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "\x7f"})
    assert bad.status_code == 422 and error_of(bad)["argument"] == "Idempotency-Key"
    assert len(await stored(client)) == 2


async def test_list_filter_and_page(client_for: MakeClient) -> None:
    client = await client_for(queues_per_task={"add": ["q2"]})
    for i in range(5):
        await client.post("/v1/jobs", json={"task": "add", "args": {"a": i}})
    await client.post("/v1/jobs", json={"task": "add", "args": {"a": 9}, "queue": "q2"})
    page = (await client.get("/v1/jobs", params={"queue": "default", "limit": 3})).json()
    assert len(page["jobs"]) == 3 and page["next_cursor"]
    rest = (
        await client.get(
            "/v1/jobs", params={"queue": "default", "limit": 3, "cursor": page["next_cursor"]}
        )
    ).json()
    ids = [j["id"] for j in page["jobs"] + rest["jobs"]]
    assert len(ids) == len(set(ids)) == 5 and rest["next_cursor"] is None
    assert [j["args"]["a"] for j in page["jobs"]] == [4, 3, 2]  # newest first
    r = await client.get("/v1/jobs", params={"state": "queued", "task": "add", "queue": "q2"})
    assert [j["args"]["a"] for j in r.json()["jobs"]] == [9]
    for params, arg in (
        ({"limit": 0}, "limit"),
        ({"limit": 100_000}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"state": "done"}, "state"),
        ({"cursor": "garbage!"}, "cursor"),
    ):
        r = await client.get("/v1/jobs", params=params)
        assert r.status_code == 422 and error_of(r)["argument"] == arg, params


async def test_cancel_and_retry(client_for: MakeClient) -> None:
    client = await client_for()
    job = (await client.post("/v1/jobs", json={"task": "add", "args": {"a": 1}})).json()
    r = await client.post(f"/v1/jobs/{job['id']}/retry")
    assert r.status_code == 409 and error_of(r)["code"] == "invalid_state"
    r = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = await client.post(f"/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["state"] == "queued"
    for action in ("cancel", "retry"):
        r = await client.post(f"/v1/jobs/nope/{action}")
        assert r.status_code == 404 and error_of(r)["code"] == "job_not_found"


async def test_cancel_a_finished_job_is_a_conflict(client_for: MakeClient) -> None:
    client = await client_for(workers=1)
    r = await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 1}}, headers={"Prefer": "wait=5"}
    )
    assert r.json()["state"] == "succeeded"
    r = await client.post(f"/v1/jobs/{r.json()['id']}/cancel")
    assert r.status_code == 409


async def test_queues_and_workers(client_for: MakeClient) -> None:
    client = await client_for(workers=3)
    await client.post("/v1/jobs", json={"task": "add", "args": {"a": 1}, "delay": 3600})
    await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 1}}, headers={"Prefer": "wait=5"}
    )
    queues = {q["name"]: q for q in (await client.get("/v1/queues")).json()["queues"]}
    assert queues["default"]["states"]["scheduled"] == 1
    assert queues["default"]["states"]["succeeded"] == 1
    assert queues["default"]["depth"] == 1 and not queues["default"]["paused"]
    assert queues["tiny"]["limit"] == 1
    await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 1}}, headers={"Prefer": "wait=5"}
    )
    again = {q["name"]: q for q in (await client.get("/v1/queues")).json()["queues"]}
    assert again["default"]["finished_per_s"] > 0  # one more finished since the first look
    workers = (await client.get("/v1/workers")).json()["workers"]
    assert [w["concurrency"] for w in workers] == [3]


async def test_health_ready_metrics(client_for: MakeClient) -> None:
    client = await client_for(workers=1)
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await client.post(
        "/v1/jobs", json={"task": "add", "args": {"a": 1}}, headers={"Prefer": "wait=5"}
    )
    await client.post("/v1/jobs", json={"task": "boom"}, headers={"Prefer": "wait=5"})
    text = (await client.get("/metrics")).text
    for line in (
        'offload_jobs_enqueued_total{queue="default",task="add"} 1.0',
        'offload_jobs_started_total{queue="default",task="add"} 1.0',
        'offload_jobs_succeeded_total{queue="default",task="add"} 1.0',
        'offload_jobs_failed_total{queue="default",task="boom"} 1.0',
        'offload_jobs_dead_total{queue="default",task="boom"} 1.0',
        'offload_queue_jobs{queue="default",state="succeeded"} 1.0',
        'offload_worker_slots{state="idle"} 1.0',
        "offload_backend_up 1.0",
        'offload_job_wait_seconds_count{queue="default"} 2.0',
        'offload_job_run_seconds_count{queue="default",task="add"} 1.0',
    ):
        assert line in text, line


async def test_two_services_keep_their_own_metrics(client_for: MakeClient) -> None:
    one, two = await client_for(), await client_for()
    await one.post("/v1/jobs", json={"task": "add", "args": {"a": 1}})
    assert "offload_jobs_enqueued_total{" in (await one.get("/metrics")).text
    assert "offload_jobs_enqueued_total{" not in (await two.get("/metrics")).text


# -- bad input: a clear 4xx and nothing stored ------------------------------------------------


async def test_bad_requests_store_nothing(client_for: MakeClient) -> None:
    client = await client_for(max_body_bytes=1000)
    json_ct = {"content-type": "application/json"}
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        ({"content": b"{not json", "headers": json_ct}, 400, "malformed_json", None),
        ({"content": b"[]", "headers": json_ct}, 422, "invalid_request", None),
        ({"content": b"task=add"}, 415, "unsupported_media_type", None),
        (
            {"content": b"{}", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
            None,
        ),
        ({"json": {"task": "add", "args": {"a": "x" * 2000}}}, 413, "body_too_large", None),
        ({"json": {"task": "add", "args": {"a": "one"}}}, 422, "invalid_arguments", "a"),
        ({"json": {"task": "add", "args": {"b": 1}}}, 422, "invalid_arguments", "a"),
        ({"json": {"task": "add", "args": {"a": 1, "c": 1}}}, 422, "invalid_arguments", "c"),
        ({"json": {"task": "add", "args": [1]}}, 422, "invalid_arguments", None),
        (
            {"json": {"task": "add", "args": {"a": 1}, "priority": 99}},
            422,
            "invalid_request",
            "priority",
        ),
        ({"json": {"task": "add", "args": {"a": 1}, "delay": -1}}, 422, "invalid_request", "delay"),
        (
            {"json": {"task": "add", "args": {"a": 1}, "queue": "no spaces"}},
            422,
            "invalid_request",
            "queue",
        ),
        (
            {"json": {"task": "add", "args": {"a": 1}, "run_at": "2030-01-01T00:00:00"}},
            422,
            "invalid_request",
            "run_at",
        ),
        (
            {
                "json": {
                    "task": "add",
                    "args": {"a": 1},
                    "delay": 1,
                    "run_at": "2030-01-01T00:00:00Z",
                }
            },
            422,
            "invalid_arguments",
            "run_at",
        ),
        (
            {"json": {"task": "add", "args": {"a": 1}, "colour": "red"}},
            422,
            "invalid_request",
            "colour",
        ),
        ({"json": {"args": {}}}, 422, "invalid_request", "task"),
        ({"json": {"task": "nope"}}, 404, "unknown_task", None),
        ({"json": {"task": "secret"}}, 404, "unknown_task", None),
    ]
    for kwargs, status, code, argument in cases:
        r = await client.post("/v1/jobs", **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        err = error_of(r)
        assert (err["code"], err.get("argument")) == (code, argument), (kwargs, err)
    # An unknown task and one not exposed read exactly alike.
    unknown = error_of(await client.post("/v1/jobs", json={"task": "nope"}))["message"]
    hidden = error_of(await client.post("/v1/jobs", json={"task": "secret"}))["message"]
    assert unknown.replace("nope", "X") == hidden.replace("secret", "X")
    assert await stored(client) == []


async def test_body_limit_holds_while_streaming(client_for: MakeClient) -> None:
    client = await client_for(max_body_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"task": "add", "args": {"a": 1}, "key": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    r = await client.post(
        "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
    assert await stored(client) == []


async def test_integral_floats_are_integers(client_for: MakeClient) -> None:
    client = await client_for()
    r = await client.post("/v1/jobs", json={"task": "add", "args": {"a": 2.0}, "priority": 3.0})
    assert r.status_code == 202 and r.json()["args"]["a"] == 2 and r.json()["priority"] == 3
    r = await client.post("/v1/jobs", json={"task": "add", "args": {"a": 2.5}})
    assert r.status_code == 422


async def test_unknown_routes_and_methods_answer_json(client_for: MakeClient) -> None:
    client = await client_for()
    r = await client.get("/v2/nothing")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = await client.delete("/v1/jobs")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = await client.get("/v1/jobs/" + "x" * 300)
    assert r.status_code == 404


async def test_backend_down_is_503_never_a_false_202(client_for: MakeClient, url: str) -> None:
    if url.startswith("memory"):
        pytest.skip("the memory backend cannot be down")
    client = await client_for()
    service: Starlette = client._transport.app  # type: ignore[attr-defined]
    app = service.state.offload.app
    await app.backend.close()  # the store is gone: every operation fails with BackendUnavailable
    r = await client.post("/v1/jobs", json={"task": "add", "args": {"a": 1}})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert error_of(r)["code"] == "backend_unavailable"
    for path in ("/v1/jobs", "/v1/jobs/x", "/v1/queues", "/v1/workers"):
        assert (await client.get(path)).status_code == 503, path
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "unavailable"}
    assert "offload_backend_up 0.0" in (await client.get("/metrics")).text
    assert (await client.get("/healthz")).status_code == 200


async def test_a_job_shows_its_fair_key_and_its_own_retention(tmp_path: Path) -> None:
    """The fields a task's ``fair_key=`` and ``retention=`` stamp on a job are shown over
    HTTP (and a job without them shows nulls)."""
    app = make_app(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name="per_tenant", expose=True, fair_key="tenant", retention={"dead": "forever"})
    def per_tenant(tenant: str) -> None: ...

    @app.task(name="short", expose=True, retention="1h")
    def short() -> None: ...

    service = create_service(app)
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            shown = []
            for task, args in (
                ("per_tenant", {"tenant": "acme"}),
                ("short", {}),
                ("add", {"a": 1}),
            ):
                r = await client.post("/v1/jobs", json={"task": task, "args": args})
                assert r.status_code in (200, 201, 202), r.text
                r = await client.get(f"/v1/jobs/{r.json()['id']}")
                shown.append({k: r.json()[k] for k in ("fair_key", "retention")})
    assert shown == [
        {"fair_key": 'tenant="acme"', "retention": {"dead": "forever"}},
        {"fair_key": None, "retention": {"succeeded": 3600.0, "dead": 3600.0, "cancelled": 3600.0}},
        {"fair_key": None, "retention": None},
    ]
