"""Retry policies per exception: the decision (offload.backoff.RetryPolicy) and the checks
made when a task is declared. The same policies through a worker on every backend are in the
conformance suite (offload.testing.conformance.retries)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import offload
from offload.backoff import ExponentialBackoff, FixedBackoff, retry_policy
from offload.context import JobContext
from offload.outcome import Dead, Outcome, RetryAt
from offload.testing.helpers import claim_one
from offload.worker.executor import execute
from offload.worker.threads import TaskThreads


class Transient(ConnectionError):
    pass


def test_default_retries_every_exception_with_the_task_backoff() -> None:
    policy = retry_policy(FixedBackoff(7))
    assert policy.delay_s(ValueError, 1) == 7
    assert policy.delay_s(TimeoutError, 2) == 7


def test_retry_on_matches_subclasses_and_nothing_else() -> None:
    policy = retry_policy(FixedBackoff(1), retry_on=ConnectionError)
    assert policy.delay_s(ConnectionError, 1) == 1
    assert policy.delay_s(Transient, 1) == 1
    assert policy.delay_s(OSError, 1) is None  # a base class is not matched, as with except
    assert policy.delay_s(ValueError, 1) is None


def test_give_up_on_wins_over_retry_on() -> None:
    policy = retry_policy(FixedBackoff(1), retry_on=(OSError,), give_up_on=(Transient,))
    assert policy.delay_s(Transient, 1) is None
    assert policy.delay_s(ConnectionResetError, 1) == 1


def test_backoff_of_the_nearest_class_in_the_mro() -> None:
    policy = retry_policy(
        FixedBackoff(1),
        backoff={OSError: FixedBackoff(10), ConnectionError: FixedBackoff(20)},
    )
    assert policy.delay_s(Transient, 1) == 20
    assert policy.delay_s(FileNotFoundError, 1) == 10
    assert policy.delay_s(ValueError, 1) == 1


def test_a_backoff_on_a_base_of_retry_on_applies() -> None:
    policy = retry_policy(FixedBackoff(1), retry_on=Transient, backoff={OSError: FixedBackoff(5)})
    assert policy.delay_s(Transient, 3) == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_on": "ConnectionError"}, "retry_on must be an exception class or a tuple"),
        ({"retry_on": (ValueError, 3)}, "retry_on: 3 is not an Exception subclass"),
        ({"give_up_on": KeyboardInterrupt}, "give_up_on: <class 'KeyboardInterrupt'>"),
        ({"retry_on": 42}, "retry_on must be an exception class or a tuple"),
        ({"retry_on": ValueError, "give_up_on": ValueError}, "in both retry_on and give_up_on"),
        ({"backoff": [ValueError]}, "backoff must map exception classes"),
        ({"backoff": {ValueError: 3}}, "backoff[ValueError] must be a Backoff"),
        ({"backoff": {"x": FixedBackoff(1)}}, "backoff: 'x' is not an Exception subclass"),
        (
            {"give_up_on": LookupError, "backoff": {KeyError: FixedBackoff(1)}},
            "backoff[KeyError] is for an exception that never retries",
        ),
        (
            {"retry_on": ConnectionError, "backoff": {ValueError: FixedBackoff(1)}},
            "backoff[ValueError] is for an exception that never retries",
        ),
        ({"retry": 5}, "retry must be a Backoff"),
    ],
)
def test_bad_options_are_a_configuration_error_naming_the_task(
    options: dict[str, Any], message: str
) -> None:
    app = offload.App("memory://")
    with pytest.raises(offload.ConfigurationError) as info:
        app.task(name="billing.charge", **options)(lambda: None)
    assert "billing.charge" in str(info.value)
    assert message in str(info.value)


async def test_the_executor_turns_the_policy_into_one_outcome() -> None:
    app = offload.App("memory://")

    @app.task(
        name="sync_contacts",
        max_attempts=5,
        retry_on=(ConnectionError, TimeoutError),
        give_up_on=Transient,
        backoff={TimeoutError: FixedBackoff(60), ConnectionError: ExponentialBackoff(jitter=0)},
    )
    async def sync_contacts(kind: str) -> None:
        raise {"conn": ConnectionResetError, "transient": Transient, "other": ValueError}[kind]()

    pool = TaskThreads(asyncio.get_running_loop(), 1, "test")
    outcomes: dict[str, Outcome] = {}
    try:
        for kind in ("conn", "transient", "other"):
            await sync_contacts.aenqueue(kind)
            job = await claim_one(app.backend)
            outcomes[kind] = await execute(app, job, pool, JobContext(job, "w1"))
    finally:
        pool.shutdown(wait=True, timeout_s=5)
    conn, transient, other = outcomes["conn"], outcomes["transient"], outcomes["other"]
    assert isinstance(conn, RetryAt) and conn.delay_s == 1.0  # ConnectionError's own backoff
    assert isinstance(transient, Dead) and "Transient" in transient.error
    assert isinstance(other, Dead) and "ValueError" in other.error
