"""Reads for the console: the dashboard's figures, joining the audit log with access IDs and
the cards' live state."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from accessids.models import AccessId
from audit.selectors import (
    TOP_ACCESS_IDS,
    card_failures,
    cert_expiry,
    daily_requests,
    failures_by_code,
    hourly_requests,
    latency_percentiles,
    local_time_parse,
    requests_by_access_key,
    requests_by_profile,
    success_rates,
)
from declarations.selectors import declaration_figures
from signing import selectors as signing_selectors


def top_access_ids(*, now: datetime.datetime | None = None, hours: int = 24,
                   limit: int = TOP_ACCESS_IDS, profile: str | None = None) -> list[dict[str, Any]]:
    """The access IDs (as claimed: unknown ones too) with the most API requests."""
    rows = requests_by_access_key(now=now, hours=hours, limit=limit, profile=profile)
    known = {a["key"]: a for a in AccessId.objects.filter(key__in=[r["access_key"] for r in rows])
             .values("pk", "key", "name")}
    return [
        {"key": r["access_key"], "pk": known.get(r["access_key"], {}).get("pk"),
         "name": known.get(r["access_key"], {}).get("name", ""), "total": r["total"], "ok": r["ok"],
         "failed": r["failed"], "rate": round(100.0 * r["ok"] / r["total"], 2) if r["total"] else None}
        for r in rows
    ]


def card_states(*, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """Every enabled card's live state (signing.selectors.card_device_states) with its
    certificate expiry and its failure events of the last 24 hours."""
    failures = card_failures(now=now)
    cards = []
    for state in signing_selectors.card_device_states(display=True):
        card = dict(state)
        card["expiry"] = cert_expiry(state.get("cert_not_after"), now=now)
        card["last_error_at_dt"] = local_time_parse(state.get("last_error_at"))
        card["last_ok_at_dt"] = local_time_parse(state.get("last_ok_at"))
        card["since_dt"] = local_time_parse(state.get("since"))
        card["failures_24h"] = failures.get(state["slug"], 0)
        cards.append(card)
    return cards


def dashboard(*, now: datetime.datetime | None = None, profile: str | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, computed for one instant; the request figures of one
    client profile when `profile` is given."""
    now = now or timezone.now()
    cards = card_states(now=now)
    return {
        "now": now,
        "profile": profile or "",
        "profiles": requests_by_profile(now=now),
        "hourly": hourly_requests(now=now, profile=profile),
        "daily": daily_requests(now=now, profile=profile),
        "success": success_rates(now=now, profile=profile),
        "latency": latency_percentiles(now=now, profile=profile),
        "top_access_ids": top_access_ids(now=now, profile=profile),
        "failures_by_code": failures_by_code(now=now, profile=profile),
        "cards": cards,
        "pools": signing_selectors.card_pool_states(display=True),
        "cards_connected": sum(1 for c in cards if c["connected"]),
        "cert_warnings": sum(1 for c in cards if c["expiry"] and c["expiry"]["level"] != "ok"),
        "declarations": declaration_figures(now=now),
    }
