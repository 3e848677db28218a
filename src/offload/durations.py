"""Durations as people write them, one parser for the CLI, the HTTP API and backend URLs:
seconds (``3600``, ``1.5``) or a number with a unit, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""

from __future__ import annotations

import re

DURATION_HELP = "seconds, or a number with a unit: 90s, 15m, 12h, 7d, 2w"

_UNITS_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
DURATION_PATTERN = r"^(\d{1,12}(?:\.\d{1,12})?)([smhdw]?)$"
"""What a duration text matches (also the HTTP API's documented pattern)."""
_DURATION = re.compile(DURATION_PATTERN)


def parse_duration_s(value: object) -> float:
    """Seconds (>= 0) from a number or a duration text; ValueError for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value >= 0 and value != float("inf"):
            return float(value)
    elif isinstance(value, str) and (found := _DURATION.fullmatch(value)):
        return float(found.group(1)) * _UNITS_S[found.group(2)]
    raise ValueError(f"{value!r} is not a duration ({DURATION_HELP})")
