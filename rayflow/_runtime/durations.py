"""Durations as users write them: 30, 2.5, "30s", "5m", "24h", "7d"."""

from __future__ import annotations

import math
import re

from rayflow.errors import InvalidArgument

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: float | int | str | None) -> float | None:
    """Seconds for `value`, None for None. Raises `InvalidArgument` (a ValueError) on nonsense."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidArgument(f"a duration cannot be negative: {value!r}")
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            seconds = math.inf
        if not math.isfinite(seconds):
            raise InvalidArgument(f"a duration must be finite: {str(value)[:40]!r}…")
        return seconds
    match = _PATTERN.match(value)
    if not match:
        raise InvalidArgument(
            f"not a duration: {value!r}; use seconds or a string like '30s', '5m', '24h', '7d'"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):  # hundreds of digits: float() says inf
        raise InvalidArgument(f"not a duration: {value[:40]!r}… ({len(value)} characters)")
    return seconds
