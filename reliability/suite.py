"""Which tests exist, how one runs on one backend, and the table of figures."""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from reliability.clock import clock_step
from reliability.cutoff import cut_off
from reliability.diskfull import disk_full
from reliability.harness import Failure, Result, Run
from reliability.isolation import Unavailable, isolated_url
from reliability.outage import backend_fault
from reliability.restarts import server_restart
from reliability.retention import retention_soak
from reliability.scenarios import FULL, SHORT, Form, graceful, poison, stale_lease, storm
from reliability.soak import soak
from reliability.workflows import workflow_storm

Scenario = Callable[[Run, Result, Form], None]
KindScenario = Callable[[str, Run, Result, Form], None]  # one that depends on the backend kind


def _any_kind(scenario: Scenario) -> KindScenario:
    return lambda kind, run, result, form: scenario(run, result, form)


TESTS: dict[str, KindScenario] = {
    "kill -9 storm": _any_kind(storm),
    "graceful stop": _any_kind(graceful),
    "poison job": _any_kind(poison),
    "stale lease": _any_kind(stale_lease),
    "backend faults": backend_fault,
    "server restart": server_restart,
    "worker cut off": cut_off,
    "clock steps": clock_step,
    "sqlite disk full": disk_full,
    "soak": soak,
    "retention soak": retention_soak,
    "workflow storm": workflow_storm,
}
FORMS = {"short": SHORT, "full": FULL}


def run_one(kind: str, test: str, form: Form, workdir: Path | None = None) -> Result:
    """Run ``test`` on a fresh isolated ``kind`` backend; its figures and problems.

    A backend that cannot run here is reported as skipped; a run that could not get where it
    needed to (a timeout) is reported as a problem, never raised.
    """
    result = Result(backend=kind, test=test)
    with tempfile.TemporaryDirectory(prefix="offload-rel-", dir=workdir) as tmp:
        try:
            with isolated_url(kind, Path(tmp)) as url:
                run = Run(url, Path(tmp))
                try:
                    TESTS[test](kind, run, result, form)
                finally:
                    run.close()
        except Unavailable as exc:
            result.skipped = str(exc)
        except Failure as exc:
            result.problems.append(str(exc))
        except Exception as exc:
            result.problems.append(f"{type(exc).__name__}: {exc}")
            result.notes.append(traceback.format_exc(limit=3).replace("\n", " | "))
    return result


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}s"


COLUMNS = (
    "backend",
    "test",
    "acknowledged",
    "completed",
    "dead",
    "lost",
    "duplicated (allowed)",
    "worst delay before a lost lease was recovered",
    "time to recover",
    "verdict",
)


def table(results: Sequence[Result]) -> str:
    """A Markdown table of the figures, then one line per note and problem."""
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)]
    for r in results:
        if r.skipped:
            rows.append([r.backend, r.test, *["—"] * 7, f"skipped: {r.skipped}"])
            continue
        rows.append(
            [
                r.backend,
                r.test,
                str(r.acknowledged),
                str(r.completed),
                str(r.dead),
                str(r.lost),
                f"{r.duplicated} (≤ {r.duplicates_allowed})",
                _s(r.worst_lease_recovery_s),
                _s(r.recover_s),
                "ok" if r.ok else "FAILED",
            ]
        )
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    for r in results:
        for note in r.notes:
            lines.append(f"- {r.backend} / {r.test}: {note}")
        for problem in r.problems:
            lines.append(f"- {r.backend} / {r.test}: **FAILED**: {problem}")
    return "\n".join(lines)
