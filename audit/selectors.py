"""Reads of the audit log for the admin: the dashboard's figures, the cards' live state with
their certificate expiry, and an access ID's recent history.

Query strategy: every figure is aggregated in the database over an indexed range of
`created_at` (with `event_type` / `outcome` / the (access_id, -created_at) index), grouped
with TruncHour / TruncDate in the active time zone and counted with conditional counts
(`Count(filter=...)`, i.e. FILTER (WHERE ...) on PostgreSQL, CASE WHEN elsewhere); no row
is loaded into Python. The one exception is the latency percentiles on SQLite, which has
no percentile function: there they are computed in Python from the most recent
LATENCY_SAMPLE durations of the window (one indexed, LIMITed read of one column), and the
result says so (`method: "sample"`, `sampled: true` when the window held more)."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Aggregate, Count, FloatField, Q
from django.db.models.functions import TruncDate, TruncHour
from django.utils import timezone

from .models import AuditEvent

API = AuditEvent.API_REQUEST
OK = AuditEvent.OK
CERT_WARNING_DAYS = 30
LATENCY_SAMPLE = 20_000  # SQLite only: the newest durations the percentiles are computed from
TOP_ACCESS_IDS = 10
FAILURE_CODES = 20
HISTORY_LENGTH = 20


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or timezone.now()


def _requests(since: datetime.datetime, until: datetime.datetime | None = None, profile: str | None = None):
    """API request events since `since` (and before `until`), of one client profile if given."""
    events = AuditEvent.objects.filter(event_type=API, created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    if profile:
        events = events.filter(profile=profile)
    return events.order_by()


_COUNTS = {"ok": Count("id", filter=Q(outcome=OK)), "failed": Count("id", filter=~Q(outcome=OK))}


# --- requests over time -----------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One bar: the API requests of an hour or a day, successful and failed."""

    start: datetime.datetime  # aware, in the active time zone
    end: datetime.datetime
    ok: int
    failed: int

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "ok": self.ok, "failed": self.failed,
                "total": self.total}


def hourly_requests(*, now: datetime.datetime | None = None, profile: str | None = None, hours: int = 24) -> list[Bucket]:
    """API requests per local hour, oldest first: `hours` buckets ending with the current
    (partial) hour, empty hours included."""
    tz = timezone.get_current_timezone()
    now = _now(now)
    current = timezone.localtime(now, tz).replace(minute=0, second=0, microsecond=0)
    current_utc = current.astimezone(datetime.timezone.utc)
    starts = [(current_utc - datetime.timedelta(hours=h)).astimezone(tz) for h in range(hours - 1, -1, -1)]
    rows = (_requests(starts[0], now, profile).annotate(bucket=TruncHour("created_at", tzinfo=tz)).values("bucket")
            .annotate(**_COUNTS))
    counts = {int(r["bucket"].timestamp()): (r["ok"], r["failed"]) for r in rows}
    return [Bucket(start, (start + datetime.timedelta(hours=1)).astimezone(tz), *counts.get(int(start.timestamp()), (0, 0)))
            for start in starts]


def daily_requests(*, now: datetime.datetime | None = None, profile: str | None = None, days: int = 7) -> list[Bucket]:
    """API requests per local calendar day, oldest first: today and the `days - 1` before."""
    tz = timezone.get_current_timezone()
    now = _now(now)
    today = timezone.localtime(now, tz).date()
    dates = [today - datetime.timedelta(days=d) for d in range(days - 1, -1, -1)]

    def midnight(day: datetime.date) -> datetime.datetime:
        return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min), tz)

    rows = (_requests(midnight(dates[0]), now, profile).annotate(day=TruncDate("created_at", tzinfo=tz)).values("day")
            .annotate(**_COUNTS))
    counts = {r["day"]: (r["ok"], r["failed"]) for r in rows}
    return [Bucket(midnight(day), midnight(day + datetime.timedelta(days=1)), *counts.get(day, (0, 0)))
            for day in dates]


def success_rates(*, now: datetime.datetime | None = None, profile: str | None = None) -> dict[str, dict[str, Any]]:
    """Requests, successes and the success rate over the last 24 hours and 7 days (one query)."""
    now = _now(now)
    day_ago, week_ago = now - datetime.timedelta(hours=24), now - datetime.timedelta(days=7)
    last_day = Q(created_at__gte=day_ago)
    row = _requests(week_ago, now, profile).aggregate(
        total_7d=Count("id"), ok_7d=Count("id", filter=Q(outcome=OK)),
        total_24h=Count("id", filter=last_day), ok_24h=Count("id", filter=last_day & Q(outcome=OK)),
    )
    rates = {}
    for window in ("24h", "7d"):
        total, ok = row[f"total_{window}"], row[f"ok_{window}"]
        rates[window] = {"total": total, "ok": ok, "failed": total - ok,
                         "rate": round(100.0 * ok / total, 2) if total else None}
    return rates


# --- latency -----------------------------------------------------------------------------


class PercentileCont(Aggregate):
    """PostgreSQL's ordered-set aggregate: percentile_cont(p) WITHIN GROUP (ORDER BY x)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()
    allow_distinct = False

    def __init__(self, expression, fraction: float, **extra):
        fraction = float(fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("a percentile is between 0 and 1")
        super().__init__(expression, fraction=repr(fraction), **extra)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks: what percentile_cont computes."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * weight


def latency_percentiles(*, now: datetime.datetime | None = None, profile: str | None = None, hours: int = 24,
                        method: str | None = None) -> dict[str, Any]:
    """p50 and p95 of the API requests' duration (ms) over the last `hours`, every outcome.
    `method`: "percentile_cont" (PostgreSQL, exact) or "sample" (any database); by default
    the first on PostgreSQL, the second elsewhere."""
    now = _now(now)
    timed = _requests(now - datetime.timedelta(hours=hours), now, profile).filter(duration_ms__isnull=False)
    if method is None:
        method = "percentile_cont" if connections[timed.db].vendor == "postgresql" else "sample"
    if method == "percentile_cont":
        row = timed.aggregate(count=Count("duration_ms"), p50=PercentileCont("duration_ms", 0.5),
                              p95=PercentileCont("duration_ms", 0.95))
        return {"p50": _ms(row["p50"]), "p95": _ms(row["p95"]), "count": row["count"], "method": method,
                "sampled": False}
    # The newest LATENCY_SAMPLE durations (the created_at index, read backwards, stops there).
    newest = list(timed.order_by("-created_at").values_list("duration_ms", flat=True)[: LATENCY_SAMPLE + 1])
    sampled = len(newest) > LATENCY_SAMPLE
    values = sorted(newest[:LATENCY_SAMPLE])
    return {"p50": _ms(percentile(values, 0.5)), "p95": _ms(percentile(values, 0.95)), "count": len(values),
            "method": "sample", "sampled": sampled}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- who and what failed ----------------------------------------------------------------------


def requests_by_access_key(*, now: datetime.datetime | None = None, profile: str | None = None, hours: int = 24,
                           limit: int = TOP_ACCESS_IDS) -> list[dict[str, Any]]:
    """The access keys (as claimed: unknown ones too) with the most API requests, with their
    ok and failed counts."""
    now = _now(now)
    return list(
        _requests(now - datetime.timedelta(hours=hours), now, profile).exclude(access_key="")
        .values("access_key").annotate(total=Count("id"), **_COUNTS).order_by("-total", "access_key")[:limit]
    )


def failures_by_code(*, now: datetime.datetime | None = None, profile: str | None = None, hours: int = 24,
                     limit: int = FAILURE_CODES) -> list[dict[str, Any]]:
    """Failed API requests per outcome code, most frequent first."""
    now = _now(now)
    rows = (_requests(now - datetime.timedelta(hours=hours), now, profile).exclude(outcome=OK).values("outcome")
            .annotate(count=Count("id")).order_by("-count", "outcome")[:limit])
    return [{"outcome": r["outcome"], "count": r["count"]} for r in rows]


def requests_by_profile(*, now: datetime.datetime | None = None, hours: int = 24) -> list[dict[str, Any]]:
    """API requests per client profile (native, gys, ...) with their ok and failed counts."""
    now = _now(now)
    return list(
        _requests(now - datetime.timedelta(hours=hours), now).exclude(profile="").values("profile")
        .annotate(total=Count("id"), **_COUNTS).order_by("-total", "profile")
    )


def card_failures(*, now: datetime.datetime | None = None, hours: int = 24) -> dict[str, int]:
    """Card events that are failures (disconnects, failed operations and probes) per device."""
    now = _now(now)
    rows = (AuditEvent.objects.filter(created_at__gte=now - datetime.timedelta(hours=hours), created_at__lt=now,
                                      event_type__in=AuditEvent.CARD_FAILURES)
            .order_by().values("device").annotate(count=Count("id")))
    return {r["device"]: r["count"] for r in rows}


# --- cards --------------------------------------------------------------------------------


def cert_expiry(not_after: str | datetime.datetime | None, *,
                now: datetime.datetime | None = None) -> dict[str, Any] | None:
    """How soon a certificate expires: level "ok", "warning" (fewer than CERT_WARNING_DAYS
    days left) or "expired"; None when the expiry is not known."""
    if not not_after:
        return None
    if isinstance(not_after, str):
        try:
            not_after = datetime.datetime.fromisoformat(not_after)
        except ValueError:
            return None
    if timezone.is_naive(not_after):
        not_after = timezone.make_aware(not_after, datetime.timezone.utc)
    left = not_after - _now(now)
    days_left = left.total_seconds() / 86400
    if left.total_seconds() <= 0:
        level = "expired"
    elif days_left < CERT_WARNING_DAYS:
        level = "warning"
    else:
        level = "ok"
    return {"not_after": timezone.localtime(not_after), "days_left": math.floor(days_left), "level": level}


def local_time_parse(value: str | None) -> datetime.datetime | None:
    """An ISO 8601 time (as the card status has them) in local time; None if unreadable."""
    if not value:
        return None
    try:
        return timezone.localtime(datetime.datetime.fromisoformat(value))
    except ValueError:
        return None


# --- one access ID ----------------------------------------------------------------------------


def access_id_recent_events(access_pk: int, *, limit: int = HISTORY_LENGTH) -> list[AuditEvent]:
    """Its newest events (the (access_id, -created_at) index), only the listed columns."""
    return list(
        AuditEvent.objects.filter(access_id_id=access_pk).order_by("-created_at", "-id")
        .only("id", "created_at", "event_type", "endpoint", "outcome", "http_status", "cert_no", "actor_name",
              "duration_ms")[:limit]
    )


def access_id_failure_counts(access_pk: int, *, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Its failed events per outcome code over the last 24 hours and 7 days, with the totals."""
    now = _now(now)
    day = Q(created_at__gte=now - datetime.timedelta(hours=24))
    week = AuditEvent.objects.filter(access_id_id=access_pk, created_at__gte=now - datetime.timedelta(days=7),
                                     created_at__lte=now).order_by()
    totals = week.aggregate(total_7d=Count("id"), total_24h=Count("id", filter=day),
                            failed_7d=Count("id", filter=~Q(outcome=OK)),
                            failed_24h=Count("id", filter=day & ~Q(outcome=OK)))
    rows = (week.exclude(outcome=OK).values("outcome")
            .annotate(last_7d=Count("id"), last_24h=Count("id", filter=day)).order_by("-last_7d", "outcome"))
    return {**totals, "by_outcome": [dict(r) for r in rows]}
