"""How the admin shows audit events, for every screen that does: the outcome badge, and an
access ID's recent history on its page (templates/admin/accessids/accessid/change_form.html)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from . import selectors
from .models import AuditEvent

OUTCOME_COLORS = {"ok": "#1a7f37", "client": "#9a6700", "failure": "#cf222e"}
# The audit list's outcome filter value for "any failure".
FAILED_OUTCOMES = "__failed"


def outcome_badge(outcome: str, http_status: int | None, *, breakable: bool = False):
    """The outcome code in green (OK), amber (refused: 4xx) or red (failed). `breakable`: long
    codes may wrap after their underscores (narrow list columns)."""
    text = format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in outcome.split("_"))) if breakable \
        else outcome
    if outcome == AuditEvent.OK:
        color = OUTCOME_COLORS["ok"]
    elif http_status is not None and 400 <= http_status < 500:
        color = OUTCOME_COLORS["client"]
    else:
        color = OUTCOME_COLORS["failure"]
    return format_html('<span class="audit-outcome" style="color:{};font-weight:bold">{}</span>', color, text)


def access_id_history_context(request, access) -> dict[str, Any]:
    """For templates/admin/accessids/accessid/change_form.html: the access ID's last events
    and failure counts, for people who may view the audit log."""
    if not request.user.has_perm("audit.view_auditevent"):
        return {"audit_history_allowed": False}
    events = selectors.access_id_recent_events(access.pk)
    return {
        "audit_history_allowed": True,
        "audit_history": [
            {"event": e, "badge": outcome_badge(e.outcome, e.http_status),
             "url": reverse("admin:audit_auditevent_change", args=[e.pk])}
            for e in events
        ],
        "audit_failures": selectors.access_id_failure_counts(access.pk),
        "audit_events_url": reverse("admin:audit_auditevent_changelist") + "?" + urlencode({"access": access.key}),
        "audit_failures_url": reverse("admin:audit_auditevent_changelist") + "?" + urlencode(
            {"access": access.key, "outcome": FAILED_OUTCOMES}),
        "audit_history_length": selectors.HISTORY_LENGTH,
    }
