"""Durations as operators type them: `90s`, `15m`, `24h`, `180d`, `26w`."""

from __future__ import annotations

import datetime
import re

_DURATION_RE = re.compile(r"^(\d{1,9})([a-z]?)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_parse(text: str, *, units: str, default_unit: str = "") -> datetime.timedelta:
    """`<n><unit>` → timedelta, `unit` one of `units` (a bare number takes `default_unit`
    when there is one). Raises ValueError for anything else."""
    match = _DURATION_RE.match(text.strip().lower())
    unit = (match.group(2) or default_unit) if match else ""
    if not match or not unit or unit not in units:
        raise ValueError(f"{text!r} is not a duration like " + ", ".join(f"12{u}" for u in units))
    try:
        return datetime.timedelta(seconds=int(match.group(1)) * _SECONDS[unit])
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def age_parse(text: str) -> datetime.timedelta:
    """The `--older-than` of the prune commands: days, weeks or hours. Raises ValueError
    with a message for the operator."""
    try:
        return duration_parse(text, units="dhw")
    except ValueError:
        raise ValueError(f"--older-than {text!r}: write it like 180d, 26w or 12h") from None
