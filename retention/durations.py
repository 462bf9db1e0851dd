"""Durations as written in policies: ``<n>s|m|h|d|w``, combinable (``1d12h``)."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"(?:\d+[smhdw])+")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX = timedelta(days=365 * 100 + 25)  # 100 years, leap days included


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raise ValueError with a message fit for a user."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: write a number and a unit (s, m, h, d, w), "
            "combinable as in 1d12h"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    if seconds > MAX.total_seconds():
        raise ValueError(f"duration {text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest form that parse_duration reads back to the same value."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):  # days, not weeks: "14d" reads as written
        size = _UNIT_SECONDS[unit]
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)
