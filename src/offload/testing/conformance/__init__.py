"""The backend conformance suite, written once and run against every backend.

A backend's test file subclasses :class:`BackendConformance` and supplies one fixture,
``make_backend``: an async factory whose every call returns a NEW opened backend instance on
the SAME isolated storage (the fixture closes them all and removes the storage afterwards)::

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        async def make_backend(self) -> AsyncIterator[MakeBackend]:
            ...

A test of a capability the backend declares False is skipped with that reason. Lease-expiry
tests wait out short leases (``SHORT_LEASE_S``): those sleeps are the point of the test.

The suite is split by area, one mixin per module; :class:`BackendConformance` combines them
and provides the fixtures they share (``backend``, and the ``make_backend`` a subclass must
override).
"""

from __future__ import annotations

import pytest

from offload.backends.base import Backend
from offload.testing.conformance.claim import ClaimConformance
from offload.testing.conformance.claim_on_wake import ClaimOnWakeConformance
from offload.testing.conformance.enqueue import EnqueueConformance
from offload.testing.conformance.fairness import FairnessConformance
from offload.testing.conformance.inspection import InspectionConformance
from offload.testing.conformance.leases import LeaseConformance
from offload.testing.conformance.limits import LimitConformance
from offload.testing.conformance.observe import ObserveConformance
from offload.testing.conformance.outcomes import OutcomeConformance
from offload.testing.conformance.retention import RetentionConformance
from offload.testing.conformance.retries import RetryPolicyConformance
from offload.testing.conformance.schedules import ScheduleConformance
from offload.testing.conformance.steering import SteeringConformance
from offload.testing.conformance.sync_enqueue import SyncEnqueueConformance
from offload.testing.conformance.unique import UniqueConformance
from offload.testing.conformance.waiting import WaitingConformance
from offload.testing.conformance.workflows import WorkflowConformance
from offload.testing.helpers import MakeBackend

__all__ = [
    "BackendConformance",
    "ClaimConformance",
    "ClaimOnWakeConformance",
    "EnqueueConformance",
    "FairnessConformance",
    "InspectionConformance",
    "LeaseConformance",
    "LimitConformance",
    "ObserveConformance",
    "OutcomeConformance",
    "RetentionConformance",
    "RetryPolicyConformance",
    "ScheduleConformance",
    "SteeringConformance",
    "SyncEnqueueConformance",
    "UniqueConformance",
    "WaitingConformance",
    "WorkflowConformance",
]


class BackendConformance(
    EnqueueConformance,
    ClaimConformance,
    LeaseConformance,
    OutcomeConformance,
    SteeringConformance,
    InspectionConformance,
    WaitingConformance,
    ObserveConformance,
    RetryPolicyConformance,
    RetentionConformance,
    UniqueConformance,
    ScheduleConformance,
    LimitConformance,
    FairnessConformance,
    WorkflowConformance,
    SyncEnqueueConformance,
    ClaimOnWakeConformance,
):
    """The contract of :class:`offload.backends.base.Backend`, as tests. Subclass it."""

    @pytest.fixture
    async def make_backend(self) -> MakeBackend:
        pytest.fail("a BackendConformance subclass must define the make_backend fixture")

    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> Backend:
        return await make_backend()
