"""Priority classes: which requests are admitted first when several wait."""

from __future__ import annotations

from dataclasses import dataclass

from offload.admission.types import Scope


@dataclass(frozen=True)
class PriorityRule:
    """Puts matching requests in class ``priority`` (default class: 0; higher admitted first).

    A rule matches when the path starts with ``path_prefix`` (if given) and the request carries
    header ``header`` (if given), equal to ``header_value`` when that is given too. Rules are
    tried in order; the first match wins. Negative priorities make a class below the default.
    """

    priority: int
    path_prefix: str | None = None
    header: str | None = None
    header_value: str | None = None

    def __post_init__(self) -> None:
        if self.path_prefix is None and self.header is None:
            raise ValueError("PriorityRule needs a path_prefix, a header, or both")
        if self.header_value is not None and self.header is None:
            raise ValueError("PriorityRule.header_value needs a header name")

    def matches(self, scope: Scope) -> bool:
        if self.path_prefix is not None and not scope["path"].startswith(self.path_prefix):
            return False
        if self.header is None:
            return True
        name = self.header.lower().encode("latin-1")
        for key, value in scope["headers"]:
            if key == name and (
                self.header_value is None or value == self.header_value.encode("latin-1")
            ):
                return True
        return False
