"""What a hostile client tried against the dashboard (issue 16), kept as regression tests:
sessions and CSRF, the login throttle, the bulk limit (through httpx against the ASGI app), and
DNS rebinding in a real browser (headless Debian chromium with a host resolver rule, against
uvicorn on loopback). The API's attacks are in test_hostile.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload.job import JobState
from offload.server import create_service
from offload.server.throttle import DEFAULT_MAX_FAILURES
from tests.services import unavailable
from tests.test_hostile import (
    ADMIN,
    LOCAL,
    READER,
    TOKENS,
    Client,
    MakeClient,
    app_of,
    bearer,
    make_app,
    state_of,
)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
async def client_for(tmp_path: Path) -> AsyncIterator[MakeClient]:
    """``await client_for(**service_options)``: a loopback client of a service on SQLite."""
    opened: list[tuple[Client, Any]] = []

    async def make(**options: Any) -> Client:
        service = create_service(make_app(f"sqlite:///{tmp_path / 'jobs.db'}"), **options)
        lifespan = service.router.lifespan_context(service)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service), base_url=LOCAL)
        client.service = service  # type: ignore[attr-defined]
        opened.append((client, lifespan))
        return client

    yield make
    for client, lifespan in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def test_failed_logins_are_throttled(client_for: MakeClient) -> None:
    c = await client_for(tokens=TOKENS)
    csrf = csrf_of((await c.get("/login")).text)
    for _ in range(DEFAULT_MAX_FAILURES):
        r = await c.post("/login", data={"token": "wrong-0123456789abc", "csrf": csrf})
        assert r.status_code == 401
    r = await c.post("/login", data={"token": ADMIN, "csrf": csrf})
    assert r.status_code == 429 and "Too many" in r.text and "Retry-After" in r.headers
    assert (await c.get("/v1/queues", headers=bearer(READER))).status_code == 429


async def test_a_planted_csrf_pair_does_not_work_for_a_session(client_for: MakeClient) -> None:
    """The attacker takes a nonce and token from /login and plants the nonce in a victim's
    browser (a sibling domain can set cookies): the token was made for no session."""
    attacker = await client_for(tokens=TOKENS)
    form = await attacker.get("/login")
    nonce = attacker.cookies["offload_csrf"]
    token = csrf_of(form.text)
    victim = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=attacker.service),  # type: ignore[attr-defined]
        base_url=LOCAL,
    )
    async with victim:
        login = await victim.get("/login")
        csrf = csrf_of(login.text)
        assert (await victim.post("/login", data={"token": ADMIN, "csrf": csrf})).status_code == 303
        job = await app_of(attacker).tasks["hello"].aenqueue("x")
        victim.cookies.set("offload_csrf", nonce)
        r = await victim.post(f"/jobs/{job.id}/cancel", data={"csrf": token})
        assert r.status_code == 403 and "security token" in r.text
        assert await state_of(app_of(attacker), job.id) is JobState.QUEUED
        # The victim's own page gives the token that works with its session.
        page = await victim.get(f"/jobs/{job.id}")
        mine = csrf_of(page.text)
        r = await victim.post(f"/jobs/{job.id}/cancel", data={"csrf": mine})
        assert r.status_code == 303


async def test_a_bulk_action_over_the_limit_is_a_clear_4xx_page(
    client_for: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload.server.dashboard import bulk

    monkeypatch.setattr(bulk, "BULK_MAX", 5)  # the same path as 50,000, with fewer jobs
    c = await client_for()
    for i in range(7):
        await app_of(c).tasks["hello"].aenqueue(str(i))
    r = await c.get("/jobs/bulk", params={"action": "cancel", "task": "hello"})
    assert r.status_code == 422 and "More than 5 jobs match" in r.text
    assert "text/html" in r.headers["content-type"]


# -- DNS rebinding in a real browser ----------------------------------------------------------

REBOUND = "rebound.test"  # chromium resolves it to 127.0.0.1, as a rebinding attacker arranges


class LoopbackServer:
    """A token-less ``create_service`` on uvicorn in a thread, on a free loopback port."""

    def __init__(self, db: Path) -> None:
        import uvicorn

        self.app = make_app(f"sqlite:///{db}")
        config = uvicorn.Config(
            create_service(self.app), host="127.0.0.1", port=0, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="hostile-uvicorn")
        self.port = 0

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # uvicorn offers no event for this; startup, not work
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"


def test_a_rebinding_page_in_chromium_reads_and_changes_nothing(tmp_path: Path) -> None:
    """The attack as a browser runs it: a page of rebound.test:PORT, its name now resolving to
    127.0.0.1, is same-origin with the service, so its script may read whatever answers."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with LoopbackServer(tmp_path / "jobs.db") as live, sync_api.sync_playwright() as pw:
        local = f"http://127.0.0.1:{live.port}"
        job = httpx.post(f"{local}/v1/jobs", json={"task": "hello"}, timeout=10).json()
        rules = f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", rules])
        try:
            page = browser.new_page()
            evil = f"http://{REBOUND}:{live.port}"
            landing = page.goto(f"{evil}/")
            assert landing is not None and landing.status == 403  # even the page itself
            statuses = page.evaluate(
                """async (id) => {
                    const post = (path, body, type) => fetch(path, {
                        method: "POST", body, headers: {"Content-Type": type}});
                    const out = {};
                    for (const path of ["/v1/jobs", "/v1/jobs/" + id, "/metrics", "/jobs"]) {
                        const r = await fetch(path);
                        out[path] = [r.status, (await r.text()).includes(id)];
                    }
                    out.enqueue = (await post("/v1/jobs", '{"task":"hello"}',
                                              "application/json")).status;
                    out.cancel = (await post("/v1/jobs/" + id + "/cancel", "x",
                                             "text/plain")).status;
                    return out;
                }""",
                job["id"],
            )
            assert statuses == {
                "/v1/jobs": [403, False],
                f"/v1/jobs/{job['id']}": [403, False],
                "/metrics": [403, False],
                "/jobs": [403, False],
                "enqueue": 403,
                "cancel": 403,
            }
            # A cross-site post from that page to the service's own name (no CORS needed for
            # text/plain) is refused too.
            page.evaluate(
                """async ([url, id]) => {
                    await fetch(url + "/v1/jobs/" + id + "/cancel", {
                        method: "POST", mode: "no-cors", body: "x",
                        headers: {"Content-Type": "text/plain"}});
                }""",
                [local, job["id"]],
            )
            # The same browser on the service's own name is served.
            assert page.goto(f"{local}/jobs").status == 200  # type: ignore[union-attr]
        finally:
            browser.close()
        listed = httpx.get(f"{local}/v1/jobs", timeout=10).json()["jobs"]
        assert [(j["id"], j["state"]) for j in listed] == [(job["id"], "queued")]
