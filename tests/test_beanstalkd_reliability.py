"""The reliability harness's rows for beanstalk://?store= (short form, as in CI): kill -9
storm, graceful stop, poison job, stale lease, and the backend fault, which kills the run's own
beanstalkd (-9) and restarts it on its binlog. Lost 0 in every row. See docs/reliability.md."""

from __future__ import annotations

import pytest
from reliability.isolation import Unavailable, check
from reliability.scenarios import SHORT
from reliability.suite import run_one, table

from tests.services import unavailable

TESTS = (
    "kill -9 storm",
    "graceful stop",
    "poison job",
    "stale lease",
    "backend faults",
    "worker cut off",
)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("test", TESTS)
def test_short_form(test: str) -> None:
    try:
        check("beanstalkd")
    except Unavailable as exc:
        unavailable(str(exc))
    result = run_one("beanstalkd", test, SHORT)
    print("\n" + table([result]))
    assert not result.skipped, result.skipped
    assert result.lost == 0, table([result])
    assert result.ok, table([result])
