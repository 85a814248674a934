"""Durations as operators type them: `90s`, `15m`, `24h`, `180d`, `26w`."""

from __future__ import annotations

import datetime
import re

from django.utils.translation import gettext as _

_DURATION_RE = re.compile(r"^(\d+)([a-z]?)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LONGEST = datetime.timedelta(days=100 * 365)


def duration_parse(text: str, *, units: str, default_unit: str = "") -> datetime.timedelta:
    """`<n><unit>` → timedelta, `unit` one of `units` (a bare number takes `default_unit`
    when there is one), at most LONGEST (100 years). Raises ValueError for anything else."""
    match = _DURATION_RE.match(text.strip().lower())
    unit = (match.group(2) or default_unit) if match else ""
    if not match or not unit or unit not in units:
        raise ValueError(_("%(text)s is not a duration like %(examples)s")
                         % {"text": repr(text), "examples": ", ".join(f"12{u}" for u in units)})
    seconds = int(match.group(1)) * _SECONDS[unit]
    if seconds > LONGEST.total_seconds():
        raise DurationTooLong(_("%(text)s is longer than 100 years") % {"text": repr(text)})
    return datetime.timedelta(seconds=seconds)


class DurationTooLong(ValueError):
    """A duration longer than LONGEST."""


def age_parse(text: str) -> datetime.timedelta:
    """The `--older-than` of the prune commands: days, weeks or hours. Raises ValueError
    with a message for the operator."""
    try:
        return duration_parse(text, units="dhw")
    except DurationTooLong:
        raise ValueError(_("--older-than %(text)s is longer than 100 years") % {"text": repr(text)}) from None
    except ValueError:
        raise ValueError(_("--older-than %(text)s: write it like 180d, 26w or 12h") % {"text": repr(text)}) from None
