"""Dates and times as people read them: in the current time zone and in the active language's
DATETIME_FORMAT (signplatform/formats), the same as Django's own admin columns."""

from __future__ import annotations

import datetime

from django.utils import formats, timezone


def datetime_display(value: datetime.datetime | None, *, empty: str = "") -> str:
    if value is None:
        return empty
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")
