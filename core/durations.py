"""Durations as operators type them: `90s`, `15m`, `24h`, `180d`, `26w`."""

from __future__ import annotations

import datetime
import re

_DURATION_RE = re.compile(r"^(\d+)([a-z]?)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LONGEST = datetime.timedelta(days=100 * 365)


def duration_parse(text: str, *, units: str, default_unit: str = "") -> datetime.timedelta:
    """`<n><unit>` → timedelta, `unit` one of `units` (a bare number takes `default_unit`
    when there is one), at most LONGEST (100 years). Raises ValueError for anything else."""
    match = _DURATION_RE.match(text.strip().lower())
    unit = (match.group(2) or default_unit) if match else ""
    if not match or not unit or unit not in units:
        raise ValueError(f"{text!r} is not a duration like " + ", ".join(f"12{u}" for u in units))
    seconds = int(match.group(1)) * _SECONDS[unit]
    if seconds > LONGEST.total_seconds():
        raise ValueError(f"{text!r} is longer than 100 years")
    return datetime.timedelta(seconds=seconds)


def age_parse(text: str) -> datetime.timedelta:
    """The `--older-than` of the prune commands: days, weeks or hours. Raises ValueError
    with a message for the operator."""
    try:
        return duration_parse(text, units="dhw")
    except ValueError as exc:
        if "longer than" in str(exc):
            raise ValueError(f"--older-than {text!r} is longer than 100 years") from None
        raise ValueError(f"--older-than {text!r}: write it like 180d, 26w or 12h") from None
