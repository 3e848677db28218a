"""Testing helpers and the backend conformance suite, for offload's tests and users' own.

- :mod:`offload.testing.helpers` (re-exported here): build jobs, claim, finish, inspect. It
  does not need pytest, and neither does importing this package.
- :mod:`offload.testing.conformance`: :class:`BackendConformance`, the contract of the Backend
  protocol as pytest tests, split by area. Importing the name from here loads it (and pytest)
  on first use.
- For your app's unit tests: :func:`eager` (jobs run inline, errors raised), :func:`in_memory`,
  :class:`JobRecorder` (``assert_enqueued``) and the pytest plugin
  :mod:`offload.testing.plugin` (``offload_app``, ``offload_jobs``); see docs/testing.md.
- :mod:`offload.testing.machine`: a hypothesis state machine that checks a backend against a
  model of the job states (needs hypothesis and pytest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    PROMPT_S,
    QUEUE,
    SHORT_LEASE_S,
    MakeBackend,
    claim_ids,
    claim_one,
    claim_request,
    drain_order,
    finish,
    lease_of,
    must_get,
    new_job,
    require,
)
from offload.testing.modes import eager, in_memory
from offload.testing.recorder import JobRecorder

if TYPE_CHECKING:
    from offload.testing.conformance import BackendConformance

__all__ = [
    "EXPIRY_WAIT_S",
    "PROMPT_S",
    "QUEUE",
    "SHORT_LEASE_S",
    "BackendConformance",
    "JobRecorder",
    "MakeBackend",
    "claim_ids",
    "claim_one",
    "claim_request",
    "drain_order",
    "eager",
    "finish",
    "in_memory",
    "lease_of",
    "must_get",
    "new_job",
    "require",
]


def __getattr__(name: str) -> object:
    # The suite is pytest tests: it is loaded when asked for, so that the helpers above can be
    # used (and this package imported) where pytest is not installed.
    if name == "BackendConformance":
        from offload.testing.conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
