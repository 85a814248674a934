"""The operations dashboard: an admin page (reached through AuditEventAdmin.get_urls, so
behind the admin's login and the view_auditevent permission) and the JSON it polls.

Charts are SVG drawn here on the server (nothing from a CDN, no chart library): the page
shows them at once, and the JSON carries the same fragments re-rendered, which
`console/static/audit/dashboard.js` swaps in every DASHBOARD_REFRESH_SECONDS without a reload
(static files and templates keep the audit screens' `audit/` namespace).
Every text in a fragment is escaped (format_html / the template engine)."""

from __future__ import annotations

import datetime
import math
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.dates import WEEKDAYS_ABBR
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accessids.profiles import AUDIT_PROFILES
from audit import selectors as audit_selectors
from audit.display import FAILED_OUTCOMES
from audit.models import AuditEvent
from audit.selectors import Bucket
from core.datetimes import datetime_display

from . import selectors

OK_COLOR = "#1a7f37"
FAILED_COLOR = "#cf222e"
AXIS_COLOR = "#8c959f"
GRID_COLOR = "#d0d7de"
TEXT_COLOR = "#57606a"


# --- SVG charts --------------------------------------------------------------------------------


def nice_ceiling(value: float, ticks: int = 4) -> tuple[float, float]:
    """(axis maximum, tick step): a step of 1, 2 or 5 × 10^k giving at most `ticks` ticks."""
    if value <= 0:
        return 1.0, 1.0 / ticks if ticks else 1.0
    raw = value / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1)  # counts are whole numbers
    return step * math.ceil(value / step), step


def _strftime(moment: datetime.datetime, fmt: str) -> str:
    """strftime, with `%a` (the weekday) in the active language rather than the C locale's."""
    return moment.strftime(fmt.replace("%a", str(WEEKDAYS_ABBR[moment.weekday()]).replace("%", "%%")))


def stacked_bars_svg(buckets: list[Bucket], *, chart_id: str, title: str, label: str = "%H:00",
                     label_every: int = 1, tooltip: str = "%Y-%m-%d %H:%M", width: int = 720,
                     height: int = 220) -> SafeString:
    """A bar per bucket, successful requests (green) below failed ones (red), with a y axis
    and a <title> per bar (the browser's tooltip)."""
    left, right, top, bottom = 44, 8, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((b.total for b in buckets), default=0)
    y_max, step = nice_ceiling(peak)
    scale = plot_h / y_max
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.72, 1.0)
    parts: list[str] = [
        format_html('<svg id="{}" class="audit-chart" role="img" aria-label="{}" viewBox="0 0 {} {}" '
                    'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg" '
                    'data-peak="{}" data-bars="{}">', chart_id, title, width, height, peak, len(buckets)),
        format_html("<title>{}</title>", title),
    ]
    tick = 0.0
    while tick <= y_max + 1e-9:
        y = top + plot_h - tick * scale
        parts.append(format_html('<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1"/>',
                                 left, width - right, f"{y:.1f}", f"{y:.1f}", GRID_COLOR if tick else AXIS_COLOR))
        parts.append(format_html('<text x="{}" y="{}" text-anchor="end" font-size="11" fill="{}">{}</text>',
                                 left - 6, f"{y + 4:.1f}", TEXT_COLOR, f"{tick:g}"))
        tick += step
    for i, bucket in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        local = timezone.localtime(bucket.start)
        text = ngettext("%(when)s: %(count)s request, %(failed)s failed",
                        "%(when)s: %(count)s requests, %(failed)s failed", bucket.total) % {
            "when": _strftime(local, tooltip), "count": bucket.total, "failed": bucket.failed}
        parts.append(format_html('<g class="bar" data-start="{}" data-ok="{}" data-failed="{}"><title>{}</title>',
                                 bucket.start.isoformat(), bucket.ok, bucket.failed, text))
        ok_h, failed_h = bucket.ok * scale, bucket.failed * scale
        base = top + plot_h
        if bucket.ok:
            parts.append(format_html('<rect class="bar-ok" x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
                                     f"{x:.1f}", f"{base - ok_h:.1f}", f"{bar_w:.1f}", f"{ok_h:.1f}", OK_COLOR))
        if bucket.failed:
            parts.append(format_html('<rect class="bar-failed" x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
                                     f"{x:.1f}", f"{base - ok_h - failed_h:.1f}", f"{bar_w:.1f}", f"{failed_h:.1f}",
                                     FAILED_COLOR))
        parts.append(mark_safe("</g>"))
        if i % label_every == 0 or i == len(buckets) - 1:
            parts.append(format_html('<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="{}">{}</text>',
                                     f"{x + bar_w / 2:.1f}", height - bottom + 16, TEXT_COLOR, _strftime(local, label)))
    if not peak:
        parts.append(format_html('<text class="chart-empty" x="{}" y="{}" text-anchor="middle" font-size="13" '
                                 'fill="{}">{}</text>', left + plot_w / 2, top + plot_h / 2, TEXT_COLOR,
                                 _("No API requests in this period")))
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(parts))  # every part was escaped by format_html


def ratio_bar_svg(ok: int, failed: int, peak: int) -> SafeString:
    """A small horizontal bar for a table row: its length relative to `peak`, split into
    successful and failed parts."""
    peak = max(peak, 1)
    ok_w, failed_w = 100.0 * ok / peak, 100.0 * failed / peak
    return format_html(
        '<svg class="hbar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">'
        '<rect class="bar-ok" x="0" y="0" width="{}" height="10" fill="{}"/>'
        '<rect class="bar-failed" x="{}" y="0" width="{}" height="10" fill="{}"/></svg>',
        f"{ok_w:.2f}", OK_COLOR, f"{ok_w:.2f}", f"{failed_w:.2f}", FAILED_COLOR,
    )


# --- the page and its data ---------------------------------------------------------------------


def success_level(rate: float | None) -> str:
    """How a success rate is coloured: good from 99 %, warn from 95 %, bad below."""
    if rate is None:
        return "none"
    return "good" if rate >= 99 else "warn" if rate >= 95 else "bad"


def _events_url(**params) -> str:
    return reverse("admin:audit_auditevent_changelist") + "?" + urlencode(params)


def _since_param(moment: datetime.datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")


def _decorate(data: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
    """Links and bars for the tables."""
    day_ago = _since_param(data["now"] - datetime.timedelta(hours=24))
    can_view_access = request.user.has_perm("accessids.view_accessid") or request.user.has_perm(
        "accessids.change_accessid")
    peak = max((r["total"] for r in data["top_access_ids"]), default=0)
    for row in data["top_access_ids"]:
        row["bar"] = ratio_bar_svg(row["ok"], row["failed"], peak)
        row["events_url"] = _events_url(access=row["key"], event_type__exact=AuditEvent.API_REQUEST,
                                        created_from=day_ago)
        row["access_url"] = (reverse("admin:accessids_accessid_change", args=[row["pk"]])
                             if row["pk"] and can_view_access else "")
    peak = max((r["count"] for r in data["failures_by_code"]), default=0)
    for row in data["failures_by_code"]:
        row["bar"] = ratio_bar_svg(0, row["count"], peak)
        row["events_url"] = _events_url(outcome=row["outcome"], event_type__exact=AuditEvent.API_REQUEST,
                                        created_from=day_ago)
    for card in data["cards"]:
        card["events_url"] = _events_url(device=card["slug"], created_from=day_ago)
    data["hourly_svg"] = stacked_bars_svg(data["hourly"], chart_id="chart-hourly", label_every=3,
                                          title=_("API requests per hour, last 24 hours"))
    data["daily_svg"] = stacked_bars_svg(data["daily"], chart_id="chart-daily", label="%a %m-%d",
                                         tooltip="%Y-%m-%d (%a)", title=_("API requests per day, last 7 days"))
    data["failures_url"] = _events_url(outcome=FAILED_OUTCOMES, event_type__exact=AuditEvent.API_REQUEST,
                                       created_from=day_ago)
    for window in data["success"].values():
        window["level"] = success_level(window["rate"])
    data["changelist_url"] = reverse("admin:audit_auditevent_changelist")
    can_view_declarations = request.user.has_perm("declarations.view_declaration")
    data["declarations_url"] = reverse("admin:declarations_declaration_changelist") if can_view_declarations else ""
    data["receipts_url"] = reverse("admin:declarations_receipt_changelist")
    # The client profile filter: every profile that had requests, and the one chosen.
    counts = {row["profile"]: row["total"] for row in data["profiles"]}
    data["profile_choices"] = [
        {"name": name, "total": counts.get(name, 0), "selected": name == data["profile"],
         "url": "?" + urlencode({"profile": name}),
         "events_url": _events_url(profile=name, event_type__exact=AuditEvent.API_REQUEST, created_from=day_ago)}
        for name in AUDIT_PROFILES if counts.get(name) or name == data["profile"]
    ]
    if data["profile"]:  # the tables' links keep the filter
        for row in [*data["top_access_ids"], *data["failures_by_code"]]:
            row["events_url"] += "&" + urlencode({"profile": data["profile"]})
    data["warning_days"] = audit_selectors.CERT_WARNING_DAYS
    data["latency_sample"] = audit_selectors.LATENCY_SAMPLE
    return data


FRAGMENTS = {
    "figures": "admin/audit/dashboard/figures.html",
    "cards": "admin/audit/dashboard/cards.html",
    "cards_compact": "admin/audit/dashboard/cards_compact.html",
    "top_access_ids": "admin/audit/dashboard/top_access_ids.html",
    "failures_by_code": "admin/audit/dashboard/failures.html",
    "profiles": "admin/audit/dashboard/profiles.html",
    "declarations": "admin/audit/dashboard/declarations.html",
}


def profile_param(request: HttpRequest) -> str:
    """The client profile the request figures are filtered by (`?profile=`), "" for all."""
    value = request.GET.get("profile", "")
    return value if value in AUDIT_PROFILES else ""


def dashboard_context(request: HttpRequest, *, now: datetime.datetime | None = None) -> dict[str, Any]:
    return _decorate(selectors.dashboard(now=now, profile=profile_param(request) or None), request)


def _fragments(data: dict[str, Any], request: HttpRequest) -> dict[str, str]:
    html = {name: render_to_string(template, {"d": data}, request=request) for name, template in FRAGMENTS.items()}
    html["hourly_chart"] = str(data["hourly_svg"])
    html["daily_chart"] = str(data["daily_svg"])
    html["generated"] = _("Figures of %(time)s") % {"time": datetime_display(data["now"])}
    return html


def dashboard_json(data: dict[str, Any]) -> dict[str, Any]:
    """The figures as plain JSON (the html fragments are added by the view)."""
    cards = []
    for card in data["cards"]:
        expiry = card["expiry"]
        cards.append({
            **{k: card.get(k) for k in ("slug", "name", "connected", "gateway_running", "since", "last_ok_at",
                                        "last_error", "last_error_at", "queue_depth", "cert_no", "algorithm",
                                        "cert_not_after", "failures_24h")},
            "cert_expiry": None if expiry is None else {"level": expiry["level"], "days_left": expiry["days_left"],
                                                        "not_after": expiry["not_after"].isoformat()},
        })
    return {
        "generated_at": data["now"].isoformat(),
        "refresh_seconds": settings.DASHBOARD_REFRESH_SECONDS,
        "success": data["success"],
        "latency": data["latency"],
        "hourly": [b.as_dict() for b in data["hourly"]],
        "daily": [b.as_dict() for b in data["daily"]],
        "top_access_ids": [{k: r[k] for k in ("key", "name", "total", "ok", "failed", "rate")}
                           for r in data["top_access_ids"]],
        "failures_by_code": [{k: r[k] for k in ("outcome", "count")} for r in data["failures_by_code"]],
        "profile": data["profile"],
        "requests_by_profile": [{k: r[k] for k in ("profile", "total", "ok", "failed")} for r in data["profiles"]],
        "cards": cards,
        "pools": [{k: p[k] for k in ("slug", "name", "enterprise", "up", "size", "cards")} for p in data["pools"]],
        "cards_connected": data["cards_connected"],
        "cert_warnings": data["cert_warnings"],
        "declarations": {
            "by_status": {row["status"]: row["count"] for row in data["declarations"]["by_status"]},
            "total": data["declarations"]["total"],
            "queued": data["declarations"]["queued"],
            "unmatched_receipts": data["declarations"]["unmatched_receipts"],
            "oldest_waiting": None if data["declarations"]["oldest_waiting"] is None else {
                "id": data["declarations"]["oldest_waiting"]["pk"],
                "label": data["declarations"]["oldest_waiting"]["label"],
                "since": data["declarations"]["oldest_waiting"]["since"].isoformat(),
                "minutes": data["declarations"]["oldest_waiting"]["minutes"],
            },
        },
    }


def dashboard_page(request: HttpRequest, *, admin_context: dict[str, Any]) -> TemplateResponse:
    data = dashboard_context(request)
    context = {
        **admin_context,
        "title": _("Operations dashboard"),
        "d": data,
        "data_url": reverse("admin:audit_auditevent_dashboard_data")
        + (f"?{urlencode({'profile': data['profile']})}" if data["profile"] else ""),
        "refresh_seconds": settings.DASHBOARD_REFRESH_SECONDS,
    }
    response = TemplateResponse(request, "admin/audit/dashboard.html", context)
    add_never_cache_headers(response)
    return response


def dashboard_data(request: HttpRequest) -> JsonResponse:
    data = dashboard_context(request)
    body = dashboard_json(data)
    body["html"] = _fragments(data, request)
    response = JsonResponse(body, json_dumps_params={"ensure_ascii": False})
    add_never_cache_headers(response)
    return response
