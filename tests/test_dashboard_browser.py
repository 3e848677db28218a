"""The dashboard in a real browser: headless Debian chromium driven by Playwright, against a
real uvicorn server with an embedded worker on a temporary SQLite file.

Each page loads without console errors or CSP violations, the overview updates without a
reload, filtering narrows the list, a dead job is retried from its page, a bulk retry moves
exactly the counted jobs, hostile arguments stay text, an action without a CSRF token is
refused, and nothing scrolls sideways on a phone. Screenshots of every page are saved under
``$OFFLOAD_SCREENSHOTS`` (or a pytest temporary directory, printed at the end of each test).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.server import create_service
from tests.services import unavailable

CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin-token-0123456789"
TOKENS = {ADMIN: ["admin"]}
PAGES = ["/", "/queues", "/jobs", "/dead", "/workers"]
XSS = (
    '<script>window.__xss=1</script>"onmouseover=window.__xss=2 x="'
    "<img src=x onerror=window.__xss=3>"
)
# Runs before any page script (through the DevTools protocol, so the CSP does not apply to it).
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective));
"""

sync_api = pytest.importorskip("playwright.sync_api")


def make_app(url: str) -> offload.App:
    app = offload.App(url)

    @app.task(name="add", expose=True)
    def add(a: int, b: int = 1) -> int:
        return a + b

    @app.task(name="echo", expose=True, queue="text")
    def echo(text: str) -> str:
        return text

    @app.task(name="lookup", expose=True, max_attempts=1, queue="fragile")
    def lookup(user: str) -> None:
        raise KeyError(f"user {user!r} not found")

    return app


class LiveServer:
    """``create_service`` on uvicorn in a thread, on a free loopback port."""

    def __init__(self, db: Path) -> None:
        import uvicorn

        service = create_service(make_app(f"sqlite:///{db}"), workers=2, tokens=TOKENS)
        config = uvicorn.Config(
            service, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard-uvicorn")
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # uvicorn offers no event for this; startup, not work
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"

    def enqueue(self, task: str, args: dict[str, Any], wait: bool = False) -> dict[str, Any]:
        headers = {"Prefer": "wait=20"} if wait else {}
        r = self.api.post("/v1/jobs", json={"task": task, "args": args}, headers=headers)
        assert r.status_code in (200, 202), r.text
        job: dict[str, Any] = r.json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.api.get(f"/v1/jobs/{job_id}").json()
        return job


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(tmp_path / "jobs.db") as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = os.environ.get("OFFLOAD_SCREENSHOTS")
    folder = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"screenshots in {folder}")


class Watched:
    """A page whose console errors, uncaught errors, dialogs and CSP violations are kept."""

    def __init__(self, browser: Any, live: LiveServer, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.add_init_script(WATCH_CSP)
        self.live = live
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()  # our confirm() on delete/cancel; anything else fails check()

    def goto(self, path: str) -> Any:
        return self.page.goto(self.live.url + path)

    def login(self) -> None:
        self.goto("/login")
        self.page.fill("#token", ADMIN)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.live.url + "/")

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.page.evaluate("window.__csp") == []
        assert self.page.evaluate("window.__xss") is None

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def desk(chromium: Any, live: LiveServer) -> Iterator[Watched]:
    watched = Watched(chromium, live, viewport={"width": 1280, "height": 900})
    watched.login()
    yield watched
    watched.close()


def test_every_page_loads_cleanly(desk: Watched, live: LiveServer, shots: Path) -> None:
    job = live.enqueue("lookup", {"user": "ann"}, wait=True)
    assert job["state"] == "dead"
    live.enqueue("add", {"a": 1}, wait=True)
    for path in [*PAGES, f"/jobs/{job['id']}", "/jobs/bulk?action=retry&state=dead"]:
        response = desk.goto(path)
        assert response.status == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        name = path.strip("/").replace("/", "_").split("?")[0] or "overview"
        desk.page.screenshot(path=str(shots / f"desktop_{name}.png"), full_page=True)
        desk.check()


def test_the_overview_updates_without_reload(desk: Watched, live: LiveServer, shots: Path) -> None:
    page = desk.page
    sync_api.expect(page.locator('[data-field="status"]')).to_contain_text("Updated")
    before = int(page.inner_text('[data-field="succeeded"]'))
    page.evaluate("window.__same_page = true")
    for i in range(3):
        live.enqueue("add", {"a": i}, wait=True)
    sync_api.expect(page.locator('[data-field="succeeded"]')).to_have_text(
        str(before + 3), timeout=15_000
    )
    # The chart shows the burst: the succeeded line leaves the zero line.
    page.wait_for_function(
        """() => {
            const line = document.querySelector('#chart svg polyline.ok');
            if (!line) return false;
            const ys = line.getAttribute('points').split(' ').map(p => +p.split(',')[1]);
            return Math.min(...ys) < Math.max(...ys);
        }""",
        timeout=15_000,
    )
    assert page.evaluate("window.__same_page") is True  # no reload happened
    page.screenshot(path=str(shots / "desktop_overview_live.png"), full_page=True)
    desk.check()


def test_filtering_narrows_the_list(desk: Watched, live: LiveServer, shots: Path) -> None:
    live.enqueue("echo", {"text": "apple"})
    live.enqueue("echo", {"text": "banana"})
    live.enqueue("add", {"a": 5})
    page = desk.page
    desk.goto("/jobs")
    assert page.locator("table.jobs tbody tr").count() == 3
    page.fill("input[name=q]", "banana")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/jobs?*q=banana*")
    rows = page.locator("table.jobs tbody tr")
    assert rows.count() == 1 and "banana" in rows.first.inner_text()
    page.select_option("select[name=state]", "succeeded")
    page.fill("input[name=q]", "")
    page.fill("input[name=task]", "add")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/jobs?*task=add*")
    assert "state=succeeded" in page.url
    sync_api.expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    page.screenshot(path=str(shots / "desktop_jobs_filtered.png"), full_page=True)
    desk.check()


def test_a_dead_job_is_retried_from_its_page(desk: Watched, live: LiveServer) -> None:
    job = live.enqueue("lookup", {"user": "bob"}, wait=True)
    assert job["state"] == "dead"
    page = desk.page
    desk.goto("/queues")  # pause its queue, so the retried job stays queued to be seen
    row = page.locator("tr", has=page.locator('a[href="/jobs?queue=fragile"]'))
    row.get_by_role("button", name="Pause").click()
    sync_api.expect(page.locator(".flash")).to_contain_text("paused")
    desk.goto(f"/jobs/{job['id']}")
    assert "KeyError" in page.inner_text(".error-line")
    page.get_by_role("button", name="Retry").click()
    sync_api.expect(page.locator(".flash")).to_have_text("The job was queued again.")
    sync_api.expect(page.locator('h1 [data-field="state"]')).to_have_text("queued")
    assert live.job(job["id"])["state"] == "queued"
    desk.check()


def test_a_bulk_retry_moves_exactly_the_counted_jobs(desk: Watched, live: LiveServer) -> None:
    dead = [live.enqueue("lookup", {"user": f"u{i}"}, wait=True)["id"] for i in range(4)]
    page = desk.page
    desk.goto("/queues")
    page.locator("tr", has=page.locator('a[href="/jobs?queue=fragile"]')).get_by_role(
        "button", name="Pause"
    ).click()
    desk.goto("/jobs?state=dead&task=lookup")
    page.get_by_role("link", name="Retry…").click()
    sync_api.expect(page.locator('[data-field="count"]')).to_have_text("4")
    extra = live.enqueue("lookup", {"user": "late"})  # after the count: left alone
    page.get_by_role("button", name="Retry 4 jobs").click()
    sync_api.expect(page.locator('[data-field="outcome"]')).to_contain_text("4 retried")
    assert [live.job(i)["state"] for i in dead] == ["queued"] * 4
    assert live.job(extra["id"])["state"] in ("queued", "scheduled")  # never dead, never run
    desk.check()


def test_hostile_arguments_stay_text(desk: Watched, live: LiveServer, shots: Path) -> None:
    job = live.enqueue("echo", {"text": XSS}, wait=True)
    page = desk.page
    for path in (f"/jobs/{job['id']}", "/jobs", "/jobs?q=%3Cscript%3E"):
        desk.goto(path)
        cell = page.locator("pre.code, td.args").first
        cell.hover()
        assert "<script>window.__xss=1</script>" in cell.inner_text()
        assert page.locator("main img").count() == 0
        desk.check()
    assert desk.dialogs == []
    page.screenshot(path=str(shots / "desktop_hostile.png"), full_page=True)


def test_an_action_without_a_csrf_token_is_refused(desk: Watched, live: LiveServer) -> None:
    job = live.enqueue("lookup", {"user": "carl"}, wait=True)
    desk.goto(f"/jobs/{job['id']}")
    status = desk.page.evaluate(
        """async (id) => {
            const r = await fetch('/jobs/' + id + '/retry', {method: 'POST',
                headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'x=1'});
            return r.status;
        }""",
        job["id"],
    )
    assert status in (400, 403)
    status = desk.page.evaluate(
        """async (id) => (await fetch('/jobs/' + id + '/retry', {method: 'POST'})).status""",
        job["id"],
    )
    assert status == 403
    assert live.job(job["id"])["state"] == "dead"


def test_a_phone_never_scrolls_sideways(chromium: Any, live: LiveServer, shots: Path) -> None:
    job = live.enqueue("lookup", {"user": "a-rather-long-user-name-" * 4}, wait=True)
    live.enqueue("echo", {"text": "x" * 400})
    phone = Watched(
        chromium, live, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
    )
    try:
        phone.login()
        for path in [*PAGES, f"/jobs/{job['id']}", "/jobs/bulk?action=retry&state=dead"]:
            phone.goto(path)
            width = phone.page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} is {width}px wide"
            name = path.strip("/").replace("/", "_").split("?")[0] or "overview"
            phone.page.screenshot(path=str(shots / f"phone_{name}.png"), full_page=True)
            phone.check()
    finally:
        phone.close()
