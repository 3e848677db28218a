"""The dashboard over HTTP (httpx against the ASGI app) on the memory and SQLite backends:
login and scopes, CSRF, escaping, headers, filters and paging, bulk actions, dead-job groups,
pausing, and mounting under a prefix. The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import offload
from offload.job import ClaimRequest, JobFilter, JobState
from offload.server import create_service
from offload.server.dashboard import create_dashboard
from offload.server.dashboard.grouping import error_shape, group_by_shape
from offload.server.dashboard.stats import oldest_waiting, percentile
from offload.server.throughput import Throughput
from offload.worker import Worker, WorkerConfig

ADMIN = "admin-token-0123456789"
READER = "reader-token-0123456789"
TOKENS = {ADMIN: ["admin"], READER: ["read"]}
XSS = '<script>window.__xss=1</script>"onmouseover=alert(1) x="'


def make_app(url: str) -> offload.App:
    app = offload.App(url)

    @app.task(name="add", expose=True)
    def add(a: int, b: int = 1) -> int:
        return a + b

    @app.task(name="echo", expose=True, queue="text")
    def echo(text: str) -> str:
        return text

    @app.task(name="lookup", max_attempts=1, queue="fragile")
    def lookup(user: str) -> None:
        raise KeyError(f"user {user!r} not found")

    @app.task(name="divide", max_attempts=1, queue="fragile")
    def divide(n: int) -> float:
        return 1 / (n - n)

    calls: dict[str, int] = {}

    @app.task(name="flaky", max_attempts=3, retry=offload.FixedBackoff(0))
    def flaky(key: str) -> str:
        calls[key] = calls.get(key, 0) + 1
        if calls[key] < 3:
            raise ConnectionError(f"try {calls[key]} of {key} refused")
        return "finally"

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"


class Browser:
    """An httpx client that keeps cookies and knows the page's CSRF token."""

    def __init__(
        self, client: httpx.AsyncClient, app: offload.App, service: Starlette | None = None
    ) -> None:
        self.client = client
        self.app = app
        self.service = service or Starlette()

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, **kw)

    async def csrf(self, path: str = "/queues") -> str:
        r = await self.client.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', r.text)
        assert found, r.text
        return found.group(1)

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> httpx.Response:
        if csrf:
            data = {**data, "csrf": await self.csrf()}
        return await self.client.post(path, data=data)

    async def login(self, token: str, prefix: str = "") -> httpx.Response:
        csrf = await self.csrf(f"{prefix}/login")
        return await self.client.post(f"{prefix}/login", data={"token": token, "csrf": csrf})


MakeBrowser = Callable[..., Awaitable[Browser]]


@pytest.fixture
async def browser_for(url: str) -> AsyncIterator[MakeBrowser]:
    """``await browser_for(login=TOKEN, **service_options)``: a logged-in client of a service."""
    opened: list[tuple[httpx.AsyncClient, Any]] = []

    async def make(
        login: str | None = ADMIN, base: str = "http://localhost", **options: Any
    ) -> Browser:
        options.setdefault("tokens", TOKENS)
        service = create_service(make_app(url), **options)
        lifespan = service.router.lifespan_context(service)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service), base_url=base)
        opened.append((client, lifespan))
        browser = Browser(client, service.state.offload.app, service)
        if login is not None and options["tokens"]:
            r = await browser.login(login)
            assert r.status_code == 303, r.text
        return browser

    yield make
    for client, lifespan in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def drain(app: offload.App, *queues: str) -> None:
    """Run every due job of ``queues`` to its end with a burst worker."""
    await Worker(app, WorkerConfig(queues=queues or ("default",), burst=True, poll_s=0.05)).run()


async def dead_jobs(app: offload.App) -> list[str]:
    """Five dead ``lookup`` jobs (one error shape) and two dead ``divide`` jobs (another)."""
    ids = [(await app.tasks["lookup"].aenqueue(f"user-{i}")).id for i in range(5)]
    ids += [(await app.tasks["divide"].aenqueue(i)).id for i in range(2)]
    await drain(app, "fragile")
    return ids


async def state_of(app: offload.App, job_id: str) -> JobState | None:
    record = await app.call(lambda b: b.get(job_id))
    return None if record is None else record.state


def job_links(html: str) -> list[str]:
    return re.findall(r'href="[^"]*/jobs/([0-9a-z]{26})"', html)


# -- login, scopes, cookies ------------------------------------------------------------------


async def test_pages_need_a_login(browser_for: MakeBrowser) -> None:
    b = await browser_for(login=None)
    for path in ("/", "/queues", "/jobs", "/dead", "/workers"):
        r = await b.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login"
    r = await b.get("/overview.json")
    assert r.status_code == 401
    r = await b.login("not-a-valid-token-at-all")
    assert r.status_code == 401 and "not valid" in r.text
    assert "offload_session" not in r.headers.get("set-cookie", "")
    r = await b.login(READER)
    assert r.status_code == 303
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("offload_session="))
    attrs = cookie.lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    assert "secure" not in attrs  # plain http here; see the https test
    assert READER not in cookie
    for path in ("/", "/queues", "/jobs", "/dead", "/workers", "/overview.json"):
        assert (await b.get(path)).status_code == 200, path


async def test_a_tampered_or_foreign_session_is_refused(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    value = b.client.cookies["offload_session"]
    body, _, sig = value.rpartition(".")
    forged = body.replace("v1.", "v1.9", 1) + "." + sig  # a later expiry, same signature
    other = await browser_for(login=ADMIN)  # another service instance: another secret
    for bad in (forged, "v1.1.x.y", "garbage", other.client.cookies["offload_session"]):
        b.client.cookies.set("offload_session", bad)
        assert (await b.get("/jobs")).status_code == 303, bad


async def test_the_session_cookie_is_secure_over_https(browser_for: MakeBrowser) -> None:
    b = await browser_for(login=None, base="https://offload.test")
    r = await b.login(ADMIN)
    cookies = r.headers.get_list("set-cookie")
    cookie = next(c for c in cookies if c.startswith("__Host-offload_session="))
    assert "secure" in cookie.lower() and "path=/;" in cookie.lower()
    assert "domain" not in cookie.lower()
    assert (await b.get("/jobs")).status_code == 200  # the prefixed cookie is the session


async def test_logout_ends_the_session(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    r = await b.post("/logout", {})
    assert r.status_code == 303 and r.headers["location"] == "/login?msg=logged_out"
    assert (await b.get("/jobs")).status_code == 303
    assert "You are logged out" in (await b.get("/login?msg=logged_out")).text


async def test_a_reader_sees_no_buttons_and_cannot_act(browser_for: MakeBrowser) -> None:
    b = await browser_for(login=READER)
    app = b.app
    ids = await dead_jobs(app)
    page = (await b.get(f"/jobs/{ids[0]}")).text
    assert "Your token can read, not act" in page and ">Retry<" not in page
    r = await b.post(f"/jobs/{ids[0]}/retry", {})
    assert r.status_code == 403 and await state_of(app, ids[0]) is JobState.DEAD
    r = await b.post("/queues/pause", {"queue": "fragile", "paused": "1"})
    assert r.status_code == 403 and await app.call(lambda b: b.paused_queues()) == set()


async def test_loopback_mode_needs_no_login_and_says_so(browser_for: MakeBrowser) -> None:
    b = await browser_for(tokens=None, base="http://127.0.0.1:8000")
    r = await b.get("/")
    assert r.status_code == 200 and "No API tokens are configured" in r.text
    assert "Log out" not in r.text
    await b.app.tasks["add"].aenqueue(1)
    job = (await b.app.call(lambda b: b.list_jobs(JobFilter()))).jobs[0]
    r = await b.post(f"/jobs/{job.id}/cancel", {})
    assert r.status_code == 303 and await state_of(b.app, job.id) is JobState.CANCELLED
    far = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_service(b.app), client=("203.0.113.9", 5000)),
        base_url="http://localhost",
    )
    async with far:
        assert (await far.get("/")).status_code == 403
    # A loopback client reaching us under another name (DNS rebinding) is refused too.
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        r = await b.get("/jobs", headers={"Host": host})
        assert r.status_code == 403 and "on this machine only" in r.text, host
    r = await b.client.post(f"/jobs/{job.id}/retry", headers={"Host": "evil.example"})
    assert r.status_code == 403 and await state_of(b.app, job.id) is JobState.CANCELLED
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.2"):
        assert (await b.get("/jobs", headers={"Host": host})).status_code == 200, host


# -- CSRF, escaping, headers ------------------------------------------------------------------


async def test_an_action_without_a_valid_csrf_token_is_refused(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    ids = await dead_jobs(b.app)
    target = f"/jobs/{ids[0]}/retry"
    assert (await b.post(target, {}, csrf=False)).status_code == 403
    assert (await b.post(target, {"csrf": "forged"}, csrf=False)).status_code == 403
    # A token from another browser (another CSRF cookie) does not fit this one.
    other = await browser_for()
    r = await b.post(target, {"csrf": await other.csrf()}, csrf=False)
    assert r.status_code == 403 and "Form expired" in r.text
    # A cross-site request with this browser's own cookies and a stolen token is refused too.
    token = await b.csrf()
    r = await b.client.post(target, data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert await state_of(b.app, ids[0]) is JobState.DEAD
    r = await b.post(target, {})
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{ids[0]}?msg=retried"
    assert await state_of(b.app, ids[0]) is JobState.QUEUED


async def test_job_arguments_are_shown_as_text(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    job = await b.app.tasks["echo"].aenqueue(XSS)
    for path in (
        f"/jobs/{job.id}",
        "/jobs",
        f"/jobs?q={httpx.QueryParams({'q': '<script>'})['q']}",
    ):
        html = (await b.get(path)).text
        assert "<script>window" not in html and '"onmouseover' not in html, path
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html, path
    # No script on any page except our own file, no inline handlers, no inline styles.
    for path in ("/", "/queues", "/jobs", f"/jobs/{job.id}", "/dead", "/workers"):
        html = (await b.get(path)).text
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts and all(
            re.match(r'<script src="/static/dashboard\.js\?v=\w+"', t) for t in scripts
        )
        assert not re.search(r"\son[a-z]+=", html) and "style=" not in html, path


async def test_security_headers_on_every_kind_of_answer(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    for path in (
        "/",
        "/jobs",
        "/overview.json",
        "/jobs?nope=1",
        "/static/dashboard.js",
        "/static/dashboard.css",
        "/static/missing.js",
        "/jobs/" + "0" * 26,
    ):
        r = await b.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY"
    assert (
        (await b.get("/static/dashboard.js")).headers["content-type"].startswith("text/javascript")
    )
    assert (await b.get("/jobs")).headers["cache-control"] == "no-store"


async def test_bad_query_parameters_give_a_400_page(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    for path in (
        "/jobs?nope=1",
        "/jobs?state=sleeping",
        "/jobs?state=dead&state=queued",
        "/jobs?after=yesterday",
        "/jobs?after=2024-01-02T00:00&before=2024-01-01T00:00",
        "/jobs?cursor=not-a-cursor",
        "/jobs?limit=7",
        "/jobs?limit=-1",
        "/jobs?msg=<b>hi</b>",
        "/jobs?q=" + "x" * 600,
        "/?x=1",
        "/queues?paused=1",
        "/jobs/bulk?action=explode",
        "/jobs/bulk?action=retry&state=nope",
        "/dead?state=dead",
        "/workers?all=1",
    ):
        r = await b.get(path)
        assert r.status_code == 400, path
        assert r.headers["content-type"].startswith("text/html") and "Bad request" in r.text
        assert "<b>hi</b>" not in r.text
    assert (await b.get("/jobs/" + "z" * 26)).status_code == 404
    assert (await b.get("/jobs/" + "z" * 300)).status_code == 404
    r = await b.client.post(
        "/jobs/x/retry", content=b"\xff\xfe", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400


async def test_the_api_is_unchanged_beside_the_dashboard(browser_for: MakeBrowser) -> None:
    b = await browser_for(login=None, tokens=None, base="http://localhost")
    r = await b.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await b.get("/v1/queues")).status_code == 200
    off = await browser_for(login=None, tokens=None, dashboard=False)
    assert (await off.get("/")).status_code == 404
    assert (await off.get("/jobs")).status_code == 404


# -- jobs: filters, paging, detail ------------------------------------------------------------


async def test_filters_narrow_the_list_and_stay_in_the_url(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    app = b.app
    adds = [(await app.tasks["add"].aenqueue(i)).id for i in range(3)]
    texts = [(await app.tasks["echo"].aenqueue(t)).id for t in ("apple pie", "banana split")]
    dead = await dead_jobs(app)
    assert set(job_links((await b.get("/jobs")).text)) == {*adds, *texts, *dead}
    assert set(job_links((await b.get("/jobs?task=add")).text)) == set(adds)
    assert set(job_links((await b.get("/jobs?queue=text")).text)) == set(texts)
    assert set(job_links((await b.get("/jobs?q=banana")).text)) == {texts[1]}
    assert set(job_links((await b.get("/jobs?state=dead&task=divide")).text)) == set(dead[5:])
    assert set(job_links((await b.get("/jobs?state=succeeded")).text)) == set()
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    past = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3600))
    assert job_links((await b.get(f"/jobs?after={future}")).text) == []
    assert len(job_links((await b.get(f"/jobs?after={past}&before={future}")).text)) == 12
    html = (await b.get("/jobs?state=dead&task=lookup")).text
    assert 'value="lookup"' in html and '<option value="dead" selected>' in html
    # The bulk links carry the same filter.
    assert "/jobs/bulk?state=dead&amp;task=lookup&amp;action=retry" in html


async def test_cursor_paging_visits_every_job_once(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    ids = {(await b.app.tasks["echo"].aenqueue(f"n{i}")).id for i in range(45)}
    await b.app.tasks["add"].aenqueue(1)  # outside the filter
    seen: list[str] = []
    path: str | None = "/jobs?queue=text&limit=20"
    pages = 0
    while path:
        html = (await b.get(path)).text
        seen += job_links(html)
        pages += 1
        found = re.search(r'href="([^"]+)" rel="next"', html)
        path = found.group(1).replace("&amp;", "&") if found else None
        if path:
            assert "queue=text" in path and "limit=20" in path
    assert pages == 3 and len(seen) == 45 and set(seen) == ids


async def test_job_detail_shows_every_attempt(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    job = await b.app.tasks["flaky"].aenqueue("k1")
    await drain(b.app)
    assert await state_of(b.app, job.id) is JobState.SUCCEEDED
    html = (await b.get(f"/jobs/{job.id}")).text
    assert "ConnectionError: try 1 of k1 refused" in html
    assert "ConnectionError: try 2 of k1 refused" in html
    assert "Traceback (most recent call last)" in html
    assert html.count('<span class="badge dead">failed</span>') == 2
    assert '<span class="badge succeeded">succeeded</span>' in html
    assert "&#34;finally&#34;" in html  # the result, as JSON
    record = await b.app.call(lambda be: be.get(job.id))
    assert record is not None and record.errors[0].worker_id
    assert record.errors[0].worker_id in html


async def test_retry_cancel_delete_one_job(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    ids = await dead_jobs(b.app)
    html = (await b.get(f"/jobs/{ids[0]}")).text
    assert ">Retry</button>" in html and ">Cancel</button>" not in html
    r = await b.post(f"/jobs/{ids[0]}/retry", {})
    assert r.status_code == 303
    assert "The job was queued again" in (await b.get(r.headers["location"])).text
    assert await state_of(b.app, ids[0]) is JobState.QUEUED
    r = await b.post(f"/jobs/{ids[0]}/cancel", {})
    assert r.status_code == 303 and await state_of(b.app, ids[0]) is JobState.CANCELLED
    r = await b.post(f"/jobs/{ids[1]}/cancel", {})  # dead: cannot be cancelled
    assert r.status_code == 409 and await state_of(b.app, ids[1]) is JobState.DEAD
    r = await b.post(f"/jobs/{ids[0]}/delete", {})
    assert r.status_code == 303 and await state_of(b.app, ids[0]) is None
    assert (await b.post(f"/jobs/{ids[0]}/delete", {})).status_code == 404
    assert (await b.post(f"/jobs/{ids[1]}/explode", {})).status_code == 400


# -- bulk actions and dead groups -------------------------------------------------------------


async def test_bulk_retry_moves_exactly_the_counted_jobs(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    ids = await dead_jobs(b.app)
    html = (await b.get("/jobs/bulk?action=retry&state=dead&task=lookup")).text
    count = re.search(r'data-field="count">(\d+)<', html)
    assert count and count.group(1) == "5"
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
    assert form["task"] == "lookup" and form["count"] == "5"
    # A job created after the count is not touched by the confirmed action.
    late = (await b.app.tasks["lookup"].aenqueue("late")).id
    await drain(b.app, "fragile")
    r = await b.client.post("/jobs/bulk", data=form)
    assert r.status_code == 200 and "5 retried" in r.text
    states = {i: await state_of(b.app, i) for i in [*ids, late]}
    assert [i for i, s in states.items() if s is JobState.QUEUED] == ids[:5]
    assert all(states[i] is JobState.DEAD for i in [*ids[5:], late])


async def test_bulk_cancel_and_delete(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    queued = [(await b.app.tasks["echo"].aenqueue(f"t{i}")).id for i in range(4)]
    dead = await dead_jobs(b.app)
    html = (await b.get("/jobs/bulk?action=cancel")).text  # every job: only active ones count
    assert 'data-field="count">4<' in html
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
    assert (await b.client.post("/jobs/bulk", data=form)).status_code == 200
    assert {await state_of(b.app, i) for i in queued} == {JobState.CANCELLED}
    html = (await b.get("/jobs/bulk?action=delete&queue=fragile")).text
    assert 'data-field="count">7<' in html
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
    form.pop("csrf")
    assert (await b.client.post("/jobs/bulk", data=form)).status_code == 403  # CSRF again
    assert (await b.post("/jobs/bulk", form)).status_code == 200
    assert [await state_of(b.app, i) for i in dead] == [None] * 7
    html = (await b.get("/jobs/bulk?action=retry&state=queued")).text
    assert "No job matching this filter can be retried" in html


async def test_dead_jobs_are_grouped_by_error_shape(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    ids = await dead_jobs(b.app)
    html = (await b.get("/dead")).text
    assert "KeyError: &#39;…&#39;" in html or "KeyError: &#34;…&#34;" in html
    assert "ZeroDivisionError: division by zero" in html
    assert ">Retry 5</button>" in html and ">Retry 2</button>" in html
    action = re.search(r'action="(/dead/\w+/retry)" data-confirm="Retry 5', html)
    assert action
    r = await b.post(action.group(1), {"queue": "", "task": "", "count": "5"})
    assert r.status_code == 200 and "5 retried" in r.text
    assert [await state_of(b.app, i) for i in ids] == [JobState.QUEUED] * 5 + [JobState.DEAD] * 2
    html = (await b.get("/dead?task=divide")).text
    delete = re.search(r'action="(/dead/\w+/delete)"', html)
    assert delete
    r = await b.post(delete.group(1), {"queue": "", "task": "divide", "count": "2"})
    assert r.status_code == 200 and [await state_of(b.app, i) for i in ids[5:]] == [None, None]
    r = await b.post(delete.group(1), {"queue": "", "task": "divide", "count": "2"})
    assert r.status_code == 404


def test_error_shapes() -> None:
    same = [
        "KeyError: 'user 42 not found'",
        'KeyError: "bob"',
        "KeyError: 'x'\nTraceback (most recent call last): ...",
    ]
    assert len({error_shape(e) for e in same}) == 1
    assert error_shape("TimeoutError: took 3.5 s on job 01hzx4k9q2b7c8d9e0f1g2h3j4") == (
        "TimeoutError: took <n> s on job <id>"
    )
    assert error_shape("ValueError: 12") != error_shape("TypeError: 12")
    assert error_shape("") == error_shape(None) == "(no error recorded)"
    assert error_shape("E: " + "9" * 10_000) == "E: <n>"


async def test_group_by_shape_orders_by_size(mem_app: offload.App) -> None:
    await dead_jobs_for(mem_app)
    page = await mem_app.call(lambda b: b.list_jobs(JobFilter(state=JobState.DEAD)))
    groups = group_by_shape(page.jobs)
    assert [g.count for g in groups] == [3, 1]
    assert groups[0].tasks == {"t"} and groups[0].first_at and groups[0].last_at


async def dead_jobs_for(app: offload.App) -> None:
    @app.task(name="t", max_attempts=1)
    def t(n: int) -> None:
        raise ValueError(f"bad value {n}")

    @app.task(name="u", max_attempts=1)
    def u() -> None:
        raise OSError("disk")

    for n in range(3):
        await t.aenqueue(n)
    await u.aenqueue()
    await drain(app)


# -- queues, workers, overview -----------------------------------------------------------------


async def test_pausing_a_queue_stops_claims(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    job = await b.app.tasks["echo"].aenqueue("wait")
    r = await b.post("/queues/pause", {"queue": "text", "paused": "1"})
    assert r.status_code == 303 and r.headers["location"] == "/queues?msg=paused"
    html = (await b.get("/queues?msg=paused")).text
    assert "The queue is paused" in html and '<span class="badge paused">paused</span>' in html
    req = ClaimRequest(queues=("text",), limit=10, worker_id="probe")
    assert await b.app.call(lambda be: be.claim(req)) == []
    assert (await b.post("/queues/pause", {"queue": "text", "paused": "maybe"})).status_code == 400
    assert (await b.post("/queues/pause", {"queue": "text", "paused": "0"})).status_code == 303
    claimed = await b.app.call(lambda be: be.claim(req))
    assert [j.id for j in claimed] == [job.id]


async def test_queues_page_shows_depths_and_the_oldest_waiting_job(
    browser_for: MakeBrowser,
) -> None:
    b = await browser_for()
    first = await b.app.tasks["echo"].aenqueue("first")
    for i in range(3):
        await b.app.tasks["echo"].aenqueue(f"later {i}")
    html = (await b.get("/queues")).text
    row = html[html.index('href="/jobs?queue=text"') :]
    assert re.search(r'state=queued">4<', row)
    assert f'href="/jobs/{first.id}"' in row


async def test_oldest_waiting_is_found_in_few_reads(url: str) -> None:
    app = make_app(url)
    async with app:
        jobs = [await app.tasks["echo"].aenqueue(f"j{i}") for i in range(30)]
        oldest = await app.call(lambda b: oldest_waiting(b, "text"))
        assert oldest is not None and oldest.id == jobs[0].id
        assert await app.call(lambda b: oldest_waiting(b, "nothing-here")) is None


async def test_workers_page_lists_the_embedded_worker(browser_for: MakeBrowser) -> None:
    b = await browser_for(workers=3)
    worker = b.service.state.offload.workers[0]
    await worker.started.wait()
    info = worker.info()
    await b.app.call(lambda be: be.report_worker(info, ttl_s=30))  # its first report, now
    html = (await b.get("/workers")).text
    assert info.id in html and info.host in html and f">{info.pid}<" in html
    assert "1 worker · 0 busy slots · 3 idle" in html


async def test_overview_json_follows_new_jobs(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    first = (await b.get("/overview.json")).json()
    assert first["totals"]["queued"] == 0
    await b.app.tasks["add"].aenqueue(1)
    await b.app.tasks["echo"].aenqueue("x")
    data = (await b.get("/overview.json")).json()
    assert data["totals"]["queued"] == 2
    assert {q["name"]: q["depth"] for q in data["queues"]}["text"] == 1
    assert set(data) == {"at", "totals", "queues", "series", "latency", "slots"}
    html = (await b.get("/")).text
    assert 'data-field="waiting">2<' in html
    assert 'class="value" data-field="dead">0<' in html  # red only when there are dead jobs
    await b.app.tasks["lookup"].aenqueue("ann")
    await drain(b.app, "fragile")
    html = (await b.get("/")).text
    assert 'class="value bad" data-field="dead">1<' in html


async def test_overview_latency_comes_from_the_store(browser_for: MakeBrowser) -> None:
    b = await browser_for()
    for i in range(4):
        await b.app.tasks["add"].aenqueue(i)
    await drain(b.app)
    data = (await b.get("/overview.json")).json()
    assert data["latency"]["samples"] == 4
    assert 0 <= data["latency"]["p50_s"] <= data["latency"]["p95_s"] < 60


def test_percentiles_and_history() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    now = [1000.0]
    history = Throughput(clock=lambda: now[0])
    history.observe({"q": {JobState.SUCCEEDED: 10, JobState.DEAD: 1}})
    history.observe({"q": {JobState.SUCCEEDED: 10, JobState.DEAD: 1}})  # too soon: not kept
    now[0] += 2
    history.observe({"q": {JobState.SUCCEEDED: 20, JobState.DEAD: 3}})
    now[0] += 0.5  # too soon: not kept
    history.observe({"q": {JobState.SUCCEEDED: 99}})
    now[0] += 2
    # Retention deleted some of q's jobs; queue r is new (no jobs at all before).
    history.observe({"q": {JobState.SUCCEEDED: 5, JobState.DEAD: 3}, "r": {JobState.DEAD: 5}})
    assert history.series() == [(1002.0, 5.0, 1.0), (1004.5, 0.0, 2.0)]
    assert history.rates() == {"q": 0.0, "r": round(5 / 4.5, 3)}


async def test_the_api_and_the_dashboard_agree_on_throughput(browser_for: MakeBrowser) -> None:
    browser = await browser_for()
    now = [1000.0]
    browser.service.state.offload.throughput.clock = lambda: now[0]
    api = {"Authorization": f"Bearer {ADMIN}"}
    assert (await browser.get("/overview.json")).status_code == 200  # the first sample
    app = browser.app
    for i in range(3):
        await app.tasks["add"].aenqueue(i)
    await drain(app)
    await dead_jobs(app)  # 7 dead in "fragile"
    cancelled = await app.tasks["add"].aenqueue(9)
    await app.call(lambda b: b.cancel(cancelled.id))
    now[0] += 10
    queues = (await browser.get("/v1/queues", headers=api)).json()["queues"]
    from_api = {q["name"]: q["finished_per_s"] for q in queues}
    overview = (await browser.get("/overview.json")).json()["queues"]
    from_dashboard = {q["name"]: q["rate"] for q in overview}
    # Processed = succeeded + dead; the cancelled job was not processed.
    assert from_api["default"] == from_dashboard["default"] == 0.3
    assert from_api["fragile"] == from_dashboard["fragile"] == 0.7


def test_throughput_counts_succeeded_and_dead_not_cancelled() -> None:
    now = [0.0]
    throughput = Throughput(clock=lambda: now[0])
    throughput.observe({})
    now[0] = 2.0
    done = {JobState.SUCCEEDED: 2, JobState.DEAD: 2, JobState.CANCELLED: 6}
    throughput.observe({"q": done})
    assert throughput.rates() == {"q": 2.0}


@pytest.mark.parametrize(
    "exc",
    [
        offload.errors.JobNotFound("x"),
        offload.errors.InvalidState("not now"),
        offload.errors.QueueFull("q", 1, retry_after_s=3),
        offload.errors.BackendUnavailable("down"),
        offload.errors.CapabilityUnavailable("no"),
        offload.errors.ValidationError("bad"),
        RuntimeError("boom"),
    ],
)
async def test_the_api_and_the_dashboard_answer_an_error_alike(exc: Exception) -> None:
    from starlette.requests import Request

    from offload.server.auth import TokenAuth
    from offload.server.dashboard import Dashboard
    from offload.server.dashboard.core import Page
    from offload.server.dashboard.security import Viewer
    from offload.server.http import error_response, translate

    core = Dashboard(make_app("memory://"), TokenAuth.from_mapping(None)).core
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    page = Page(Request(scope), Viewer(frozenset({"admin"}), True), "csrf")

    async def fail() -> Any:
        raise exc

    shown = await core._run(page, fail())
    answered = error_response(translate(exc))
    assert shown.status_code == answered.status_code
    assert shown.headers.get("retry-after") == answered.headers.get("retry-after")


# -- mounting ---------------------------------------------------------------------------------


async def test_mounted_under_a_prefix(url: str) -> None:
    app = make_app(url)
    dashboard = create_dashboard(app, tokens=TOKENS)
    site = Starlette(routes=[Mount("/ops", app=dashboard)])
    transport = httpx.ASGITransport(app=site)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://site.test") as client:
            b = Browser(client, app)
            r = await client.get("/ops/jobs")
            assert r.status_code == 303 and r.headers["location"] == "/ops/login"
            r = await b.login(ADMIN, prefix="/ops")
            assert r.status_code == 303 and r.headers["location"] == "/ops/"
            assert "path=/ops/" in r.headers["set-cookie"].lower()
            ids = await dead_jobs(app)
            html = (await client.get("/ops/")).text
            hrefs = re.findall(r'(?:href|src|action|data-src)="([^"]+)"', html)
            assert hrefs and all(h.startswith("/ops/") for h in hrefs), hrefs
            static = re.search(r'src="(/ops/static/dashboard\.js\?v=\w+)"', html)
            assert static and (await client.get(static.group(1))).status_code == 200
            assert (await client.get("/ops/overview.json")).status_code == 200
            html = (await client.get(f"/ops/jobs/{ids[0]}")).text
            assert f'action="/ops/jobs/{ids[0]}/retry"' in html
            csrf = re.search(r'name="csrf" value="([^"]+)"', html)
            assert csrf
            r = await client.post(f"/ops/jobs/{ids[0]}/retry", data={"csrf": csrf.group(1)})
            assert r.headers["location"] == f"/ops/jobs/{ids[0]}?msg=retried"
            assert await state_of(app, ids[0]) is JobState.QUEUED
            r = await client.get("/ops/nothing")
            assert r.status_code == 404 and r.headers["x-content-type-options"] == "nosniff"
            assert (await client.get("/jobs")).status_code == 404  # nothing outside /ops
    finally:
        await app.close()


async def test_the_whole_service_under_a_prefix(url: str) -> None:
    service = create_service(make_app(url), tokens=None)
    site = Starlette(routes=[Mount("/offload", app=service)])
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=site)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            html = (await client.get("/offload/jobs")).text
            assert 'href="/offload/queues"' in html and 'href="/queues"' not in html
            assert (await client.get("/offload/v1/queues")).status_code == 200


async def test_a_job_page_shows_its_fair_key_and_its_own_retention(
    browser_for: MakeBrowser,
) -> None:
    b = await browser_for()

    @b.app.task(
        name="per_tenant", fair_key="tenant", retention={"succeeded": "2h", "dead": "forever"}
    )
    def per_tenant(tenant: str) -> None: ...

    job = await per_tenant.aenqueue("acme")
    page = (await b.get(f"/jobs/{job.id}")).text
    assert re.search(r'data-field="fair-key">tenant=&#34;acme&#34;<', page), page
    assert re.search(r'data-field="retention">succeeded 2 h · dead forever ', page), page
    plain = await b.app.tasks["add"].aenqueue(1)
    page = (await b.get(f"/jobs/{plain.id}")).text
    assert 'data-field="fair-key"' not in page and 'data-field="retention"' not in page
