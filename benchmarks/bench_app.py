"""The app the benchmarks run: no-op tasks taking one integer. The URL comes from
``offload --url`` (the CLI), so one module serves every backend."""

from __future__ import annotations

import offload

app = offload.App("memory://")


@app.task(name="noop")
def noop(i: int) -> None:
    """A sync no-op: runs in the worker's thread pool, like the peers' tasks."""


@app.task(name="anoop")
async def anoop(i: int) -> None:
    """An async no-op: runs on the worker's event loop."""


@app.task(name="afair", fair_key="key")
async def afair(key: int, i: int) -> None:
    """``anoop`` with a fair key: claims rotate among keys (benchmarks/limits.py --fair)."""


@app.task(name="akeyed", concurrency_key="key", max_per_key=1)
async def akeyed(key: int, i: int) -> None:
    """``anoop`` under a per-key concurrency limit of 1 (benchmarks/limits.py)."""
