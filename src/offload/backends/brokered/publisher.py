"""What the brokered parts need of a broker, whichever it is (RabbitMQ, Beanstalkd)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from offload.job import JobRecord


class JobPublisher(Protocol):
    """Publishes the message of each job record, so that a worker will be handed that job."""

    async def publish_jobs(self, jobs: Sequence[JobRecord], now: float | None = None) -> None:
        """Publish one message per job, each due now or after what remains of its delay
        (``run_at`` measured from ``now``, the store's time; from ``created_at`` when None).
        Returns once the broker holds every message; raises BackendUnavailable otherwise
        (some may have been published: a job may get a spare message, never none)."""
        ...

    async def notify(self) -> None:
        """Wake the workers waiting for work (best effort: a lost note costs a poll)."""
        ...
