"""An app with limited tasks, for tests that run real ``offload`` worker processes."""

from __future__ import annotations

import offload

app = offload.App("memory://")
RATE_PER_S = 20


@app.task(name="rated", rate_limit=f"{RATE_PER_S}/s")
def rated(i: int) -> int:
    return i


@app.task(name="per_account", concurrency_key="account", max_per_key=1)
def per_account(account: str, i: int) -> int:
    return i
