"""The pages that change something: login and logout, actions on one job, bulk actions,
pausing queues, and acting on a group of dead jobs. Each answers a POST (see Core.action:
CSRF-checked, admin only), except login, which needs a CSRF token but no session yet."""

from __future__ import annotations

import math
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from offload.errors import JobNotFound
from offload.job import JobFilter
from offload.server.dashboard import bulk
from offload.server.dashboard.core import Core, Page, PageError
from offload.server.dashboard.pages import Pages, parse_action
from offload.server.dashboard.params import (
    FILTER_KEYS,
    BadRequest,
    JobQuery,
    form_of,
    message,
    query_of,
)
from offload.server.dashboard.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Viewer,
    add_security_headers,
    delete_cookie,
    set_cookie,
)
from offload.server.http import retry_after
from offload.server.purge import Purge

MAX_QUEUE_NAME = 200


def throttled(wait_s: float | None) -> None:
    """Refuse a login attempt while this client has failed too often (429)."""
    if wait_s is not None:
        err = PageError(
            429,
            "Too many attempts",
            f"Too many failed logins from here: try again in {math.ceil(wait_s)} seconds.",
        )
        err.headers.update(retry_after(wait_s))
        raise err


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


class Actions:
    def __init__(self, core: Core, pages: Pages) -> None:
        self.core = core
        self.pages = pages

    # -- login and logout --------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """GET shows the form; POST checks the CSRF token and the API token."""
        guard = self.core.guard
        nonce, fresh = guard.csrf_nonce(request)
        page = Page(request, Viewer(frozenset(), False), guard.csrf_token(request, nonce))
        if guard.open:
            return add_security_headers(redirect(page.url("/")))
        failed = False
        try:
            msg = None
            if request.method == "POST":
                client = request.client.host if request.client else ""
                throttled(guard.throttle.retry_after(client))
                form = await form_of(request, ("token", "csrf"))
                if not guard.csrf_ok(request, form.get("csrf")):
                    raise PageError(403, "Form expired", "Reload the login page and try again.")
                cookie = guard.login(form.get("token", ""))
                if cookie is not None:
                    response = redirect(page.url("/"))
                    set_cookie(request, response, SESSION_COOKIE, cookie, int(SESSION_TTL_S))
                    return add_security_headers(response)
                guard.throttle.failed(client)
                failed = True
            else:
                msg = message(query_of(request, ("msg",)).get("msg"))
            response = self.core.render(
                page, "login.html", 401 if failed else 200, failed=failed, msg=msg, nav=""
            )
        except (PageError, BadRequest) as exc:
            err = exc if isinstance(exc, PageError) else PageError(400, "Bad request", str(exc))
            response = self.core.error(page, err)
            response.headers.update(err.headers)
        if fresh:
            set_cookie(request, response, CSRF_COOKIE, nonce, 30 * 24 * 3600)
        return add_security_headers(response)

    async def logout(self, page: Page, form: dict[str, str]) -> Response:
        response = redirect(page.url("/login", {"msg": "logged_out"}))
        delete_cookie(page.request, response, SESSION_COOKIE)
        return response

    # -- one job -----------------------------------------------------------------------------

    async def job_action(self, page: Page, form: dict[str, str]) -> Response:
        job_id = str(page.request.path_params["job_id"])
        action = parse_action(str(page.request.path_params["action"]))
        if len(job_id) > 200:
            raise JobNotFound(job_id[:200])
        if action is bulk.Action.DELETE:
            deleted = await self.core.call(lambda b: b.delete([job_id]))
            if not deleted:
                exists = await self.core.call(lambda b: b.get(job_id))
                if exists is None:
                    raise JobNotFound(job_id)
                raise PageError(409, "Not possible now", "A running job cannot be deleted.")
            return redirect(page.url("/jobs", {"msg": "deleted"}))
        if action is bulk.Action.RETRY:
            record = await self.core.call(lambda b: b.requeue(job_id))
        else:
            record = await self.core.call(lambda b: b.cancel(job_id))
        if record is None:
            raise JobNotFound(job_id)
        return redirect(page.url(f"/jobs/{job_id}", {"msg": action.past}))

    # -- many jobs ---------------------------------------------------------------------------

    async def bulk_apply(self, page: Page, form: dict[str, str]) -> Response:
        action = parse_action(form.get("action", ""))
        query = JobQuery.parse(form)
        try:
            until = float(form.get("until", ""))
            counted = int(form.get("count", ""))
        except ValueError:
            raise BadRequest("the confirmation form is incomplete") from None
        if not math.isfinite(until) or until > time.time() + 1:
            raise BadRequest("the confirmation form is incomplete")
        flt = query.to_filter()
        before = min(flt.created_before or until, until)
        bounded = JobFilter(
            state=flt.state,
            queue=flt.queue,
            task=flt.task,
            args_contains=flt.args_contains,
            created_after=flt.created_after,
            created_before=before,
        )
        jobs = await self.core.call(lambda b: bulk.matching(b, bounded, action))
        ids = [j.id for j in jobs]
        outcome = await self.core.call(lambda b: bulk.apply(b, action, ids))
        return self.core.render(
            page,
            "bulk_done.html",
            nav="jobs",
            action=action,
            counted=counted,
            outcome=outcome,
            back=page.url("/jobs", query.query_string()),
        )

    async def dead_group(self, page: Page, form: dict[str, str]) -> Response:
        action = parse_action(str(page.request.path_params["action"]))
        if action is bulk.Action.CANCEL:
            raise BadRequest("dead jobs can be retried or deleted")
        group_id = str(page.request.path_params["group_id"])
        groups, _ = await self.pages.dead_groups(
            form.get("queue") or None, form.get("task") or None
        )
        group = next((g for g in groups if g.id == group_id), None)
        if group is None:
            raise PageError(404, "Not found", "No dead jobs have this error any more.")
        ids = [j.id for j in group.jobs]
        outcome = await self.core.call(lambda b: bulk.apply(b, action, ids))
        return self.core.render(
            page,
            "bulk_done.html",
            nav="dead",
            action=action,
            counted=int(form["count"]) if form.get("count", "").isdigit() else len(ids),
            outcome=outcome,
            back=page.url("/dead"),
        )

    # -- queues ------------------------------------------------------------------------------

    async def pause(self, page: Page, form: dict[str, str]) -> Response:
        queue = form.get("queue", "")
        paused = form.get("paused", "")
        if not queue or len(queue) > MAX_QUEUE_NAME or paused not in ("0", "1"):
            raise BadRequest("give a queue and paused=1 or paused=0")
        await self.core.call(lambda b: b.set_paused(queue, paused == "1"))
        return redirect(page.url("/queues", {"msg": "paused" if paused == "1" else "resumed"}))

    async def purge(self, page: Page, form: dict[str, str]) -> Response:
        """Delete finished jobs for good: the form's one state, queue (blank: every queue) and
        age, checked as the API checks them (``offload.server.purge``)."""
        state = form.get("state", "")
        purge = Purge.parse([state], form.get("queue") or None, form.get("older_than") or None)
        await purge.run(self.core.app)
        return redirect(page.url("/queues", {"msg": "purged"}))


BULK_FIELDS = (*FILTER_KEYS, "action", "until", "count")
PURGE_FIELDS = ("state", "queue", "older_than")
