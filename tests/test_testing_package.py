"""offload.testing: its helpers work without pytest, and its public names stay importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import offload.testing

# Run where pytest cannot be imported: ``sys.modules["pytest"] = None`` makes any import of
# it raise ImportError, as if it were not installed.
NO_PYTEST = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["pytest"] = None
    import offload.testing
    from offload.testing.helpers import claim_one, finish, lease_of, must_get, new_job, require
    from offload.backends.memory import MemoryBackend
    from offload.job import JobState
    from offload.outcome import Succeeded

    async def main() -> None:
        backend = MemoryBackend()
        await backend.open()
        try:
            require(backend, "inspect")  # declared: no skip, so no pytest needed
            rec = await finish(backend, Succeeded(b"1"))
            assert rec.state is JobState.SUCCEEDED, rec
            (job,) = await backend.enqueue([new_job()])
            assert lease_of(await claim_one(backend)).job_id == job.id
            assert (await must_get(backend, job.id)).state is JobState.RUNNING
        finally:
            await backend.close()

    asyncio.run(main())
    try:
        offload.testing.BackendConformance
    except ImportError:
        print("ok")
    """
)


def test_helpers_and_the_package_import_and_work_without_pytest() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_PYTEST], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    # The suite itself is pytest tests: asking for it is where pytest is needed.
    assert done.stdout.strip() == "ok"


def test_public_names_are_importable() -> None:
    for name in offload.testing.__all__:
        assert getattr(offload.testing, name) is not None, name
    from offload.testing import BackendConformance
    from offload.testing.conformance import BackendConformance as same

    assert BackendConformance is same
    areas = [c for c in BackendConformance.__mro__[1:] if c.__module__.startswith(same.__module__)]
    assert len(areas) == 8
    from_areas = {n for area in areas for n in vars(area) if n.startswith("test_")}
    assert {n for n in dir(BackendConformance) if n.startswith("test_")} == from_areas
