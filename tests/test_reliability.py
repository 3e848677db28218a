"""The reliability harness, short form: every fault test against every backend that exists.

Real worker processes, real services (skipped locally when a service is down, failed in CI).
A test fails on any lost job (every acknowledged job must end succeeded with a finish line,
but the poison job, dead), on a job run twice that the fault could not have taken (duplicates
are a set, not a count), on a recovery time past its bound, or on a broken guarantee of its
own (poison job not dead after exactly max_attempts, a late completion accepted, a job running
after its graceful release, an enqueue on a full disk that is not StorageFull, a worker log
storm, memory or open files growing under a steady load). The disk-full test mounts a tmpfs:
skipped locally when that is not permitted. See docs/reliability.md."""

from __future__ import annotations

import pytest
from reliability.isolation import Unavailable, check
from reliability.scenarios import SHORT
from reliability.suite import TESTS, run_one, table

from tests.services import unavailable

KINDS = ("sqlite", "redis", "postgres", "rabbitmq")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("test", list(TESTS))
@pytest.mark.parametrize("kind", KINDS)
def test_short_form(kind: str, test: str) -> None:
    try:
        check(kind)
    except Unavailable as exc:
        if "not part of this build" in str(exc):
            pytest.skip(str(exc))
        unavailable(str(exc))
    result = run_one(kind, test, SHORT)
    print("\n" + table([result]))
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.lost == 0, table([result])
    assert result.ok, table([result])
