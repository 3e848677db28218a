"""How the commands print: JSON (``--json``) or text for people.

A job is printed in the HTTP API's shape (``offload.server.schemas.job_out``: RFC 3339 times,
decoded args and result), so a script can read ``offload jobs show --json`` and
``GET /v1/jobs/{id}`` alike.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import click
import msgspec

from offload.job import JobRecord
from offload.server.schemas import JobList, job_out

# The table shrinks or drops other columns before the id: an id must stay whole, to be copied
# into `offload jobs show`.
_DROP_FIRST = ("error", "attempt", "queue", "task")
_MIN_CUT = 8


def job_json(record: JobRecord) -> dict[str, Any]:
    """One job as the HTTP API shows it, as plain JSON values."""
    data: dict[str, Any] = msgspec.to_builtins(job_out(record))
    return data


def jobs_json(records: Sequence[JobRecord], next_cursor: str | None) -> dict[str, Any]:
    """A page of jobs as ``GET /v1/jobs`` shows it."""
    data: dict[str, Any] = msgspec.to_builtins(
        JobList(jobs=[job_out(r) for r in records], next_cursor=next_cursor)
    )
    return data


def emit(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())
        return
    for k, v in data.items():
        click.echo(f"{k:>16}: {v}")


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:60] if (text or "").strip() else ""


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, whole: Collection[str] = ()
) -> None:
    """A table for the terminal. Columns in ``whole`` are never cut: when the terminal is too
    narrow for every column, the others are shortened, then dropped (see _DROP_FIRST)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    natural = {h: max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)}
    widths = fit(natural, whole, console.width)
    out = Table(box=box.SIMPLE_HEAD)
    for name in widths:
        out.add_column(name, no_wrap=True, overflow="ellipsis", width=widths[name])
    index = [headers.index(name) for name in widths]
    for row in rows:
        out.add_row(*(row[i] for i in index))
    console.print(out)


def fit(natural: Mapping[str, int], whole: Collection[str], width: int) -> dict[str, int]:
    """Column widths for a table ``width`` characters wide: columns in ``whole`` keep their
    natural width; the others share what is left (the narrow ones whole, the wide ones cut),
    and are dropped in _DROP_FIRST order while fewer than _MIN_CUT characters are left each."""
    shown = list(natural)
    for drop in (None, *_DROP_FIRST):
        if drop in shown and len(shown) > 1:
            shown.remove(drop)
        cut = [h for h in shown if h not in whole]
        fixed = sum(natural[h] for h in shown if h in whole)
        left = width - _overhead(len(shown)) - fixed
        if left >= sum(min(natural[h], _MIN_CUT) for h in cut):
            break
    out = {h: natural[h] for h in shown}
    for i, h in enumerate(sorted(cut, key=lambda h: natural[h])):
        out[h] = max(1, min(natural[h], left // (len(cut) - i)))
        left -= out[h]
    return out


def _overhead(columns: int) -> int:
    return 3 * columns + 1  # SIMPLE_HEAD: one space of padding each side, one between, edges
