"""Purging finished jobs over HTTP: the parameters the API (``POST /v1/jobs/purge``) and the
dashboard's purge form share, checked once, and the call that deletes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from offload.app import App
from offload.durations import DURATION_HELP, parse_duration_s
from offload.job import FINAL_STATES, JobState
from offload.server.http import HTTPError

DEFAULT_STATES = (JobState.DEAD,)  # as `offload jobs purge`: the failures a person looked at
_FINAL = ", ".join(sorted(s.value for s in FINAL_STATES))


@dataclass(frozen=True)
class Purge:
    """Delete the jobs in ``states`` of ``queue`` (every queue: None) that finished more
    than ``older_than_s`` ago."""

    states: tuple[JobState, ...]
    queue: str | None
    older_than_s: float

    @classmethod
    def parse(cls, states: Sequence[str], queue: str | None, older_than: str | None) -> Purge:
        """From request parameters; a 422 naming the parameter for anything invalid."""
        wanted: list[JobState] = []
        for raw in states:
            state = next((s for s in FINAL_STATES if s.value == raw), None)
            if state is None:
                raise _invalid("state", f"state must be a finished state ({_FINAL})")
            wanted.append(state)
        try:
            older_than_s = 0.0 if older_than is None else parse_duration_s(older_than)
        except ValueError:
            raise _invalid(
                "older_than", f"older_than must be a duration: {DURATION_HELP}"
            ) from None
        return cls(tuple(dict.fromkeys(wanted)) or DEFAULT_STATES, queue or None, older_than_s)

    async def run(self, app: App) -> int:
        """Delete the jobs (the backend does it in bounded batches); return how many."""
        deleted: int = await app.call(
            lambda b: b.purge(list(self.states), older_than_s=self.older_than_s, queue=self.queue)
        )
        return deleted


def _invalid(argument: str, message: str) -> HTTPError:
    return HTTPError(422, "invalid_request", message, argument=argument)
