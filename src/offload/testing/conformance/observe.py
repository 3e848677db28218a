"""Headers and progress: what a job carries from its producer, and what a running attempt
reports about itself (``set_progress``, fenced by the lease)."""

from __future__ import annotations

import msgspec
import pytest

from offload.backends.base import Backend
from offload.errors import CapabilityUnavailable
from offload.job import JobState, Lease, NewJob
from offload.outcome import RetryAt, Succeeded
from offload.testing.helpers import claim_one, claim_request, lease_of, must_get, new_job

HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-id": "é7"}


def _with_headers(job: NewJob, headers: dict[str, str]) -> NewJob:
    return msgspec.structs.replace(job, headers=headers)


class ObserveConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_headers_are_stored_and_read_back(self, backend: Backend) -> None:
        plain, tagged = new_job(), _with_headers(new_job(), HEADERS)
        recs = await backend.enqueue([plain, tagged])
        assert [r.headers for r in recs] == [{}, HEADERS]
        claimed = {j.id: j for j in await backend.claim(claim_request(limit=2))}
        assert claimed[tagged.id].headers == HEADERS and claimed[plain.id].headers == {}
        if backend.capabilities.inspect:
            assert (await must_get(backend, tagged.id)).headers == HEADERS
            assert (await must_get(backend, plain.id)).headers == {}

    async def test_headers_survive_a_retry(self, backend: Backend) -> None:
        await backend.enqueue([_with_headers(new_job(), HEADERS)])
        first = await claim_one(backend)
        await backend.complete([(lease_of(first), RetryAt(delay_s=0.0, error="boom"))])
        again = await claim_one(backend)
        assert (again.id, again.attempt, again.headers) == (first.id, 2, HEADERS)

    async def test_progress_is_written_under_the_lease(self, backend: Backend) -> None:
        if not backend.capabilities.progress:
            with pytest.raises(CapabilityUnavailable):
                await backend.set_progress([(Lease("x", "w1", 1), b"0.5")])
            return
        (rec,) = await backend.enqueue([new_job()])
        running = await claim_one(backend)
        lease = lease_of(running)
        assert await backend.set_progress([(lease, b'{"value":0.25}')]) == {rec.id}
        assert await backend.set_progress([(lease, b'{"value":0.5,"note":"half"}')]) == {rec.id}
        assert (await must_get(backend, rec.id)).progress == b'{"value":0.5,"note":"half"}'
        stale = [
            (Lease(rec.id, "someone-else", lease.attempt), b"1"),
            (Lease(rec.id, lease.worker_id, lease.attempt + 1), b"2"),
            (Lease("no-such-job", lease.worker_id, 1), b"3"),
        ]
        assert await backend.set_progress(stale) == set()
        await backend.complete([(lease, Succeeded(result=None))])
        assert await backend.set_progress([(lease, b"9")]) == set()
        done = await must_get(backend, rec.id)
        assert done.state is JobState.SUCCEEDED
        assert done.progress == b'{"value":0.5,"note":"half"}'  # the last one, kept

    async def test_progress_of_a_batch(self, backend: Backend) -> None:
        if not backend.capabilities.progress:
            pytest.skip("backend declares progress=False")
        await backend.enqueue([new_job(), new_job(queue="other")])
        a, b = await claim_one(backend), await claim_one(backend, "other")
        written = await backend.set_progress([(lease_of(a), b"0.1"), (lease_of(b), b"0.2")])
        assert written == {a.id, b.id}
        assert (await must_get(backend, a.id)).progress == b"0.1"
        assert (await must_get(backend, b.id)).progress == b"0.2"
        assert await backend.set_progress([]) == set()
