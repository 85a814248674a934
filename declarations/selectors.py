"""Declaration reads: what an access ID may see, filtered; the dashboard's figures."""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .models import Declaration, Receipt, Registration

LIST_STATUSES = [value for value, _ in Declaration.STATUSES]


def declarations_visible(*, access_pk: int) -> QuerySet[Declaration]:
    return Declaration.objects.filter(access_id_id=access_pk).select_related("document")


def declarations_filter(declarations: QuerySet[Declaration], *, status: str | None = None,
                        message_type: str | None = None, reference: str | None = None,
                        guid: str | None = None) -> QuerySet[Declaration]:
    """`reference`: the exact order, inventory (copNo), payment or waybill number."""
    if status:
        declarations = declarations.filter(status=status)
    if message_type:
        declarations = declarations.filter(message_type=message_type)
    if reference:
        declarations = declarations.filter(Q(order_no=reference) | Q(cop_no=reference) | Q(invt_no=reference)
                                           | Q(pay_transaction_id=reference) | Q(logistics_no=reference))
    if guid:
        declarations = declarations.filter(Q(guid=guid.upper()) | Q(head_guid=guid.upper()))
    return declarations


def declaration_timeline(declaration: Declaration) -> list[dict[str, Any]]:
    return [{"at": e.at, "kind": e.kind, "label": e.get_kind_display(), "text": e.text, "receipt": e.receipt_id}
            for e in declaration.events.all()]


def declaration_receipts(declaration: Declaration) -> QuerySet[Receipt]:
    return declaration.receipts.order_by("return_time", "pk")


def declaration_submission(declaration: Declaration):
    """Its newest outbox row (None when it was never to be submitted)."""
    return declaration.submissions.order_by("-created_at").first()


def registration_of(*, access_pk: int | None = None, pool_slug: str | None = None) -> Registration | None:
    if pool_slug:
        return Registration.objects.filter(pool__slug=pool_slug).select_related("pool").first()
    return Registration.objects.filter(access_id_id=access_pk).select_related("access_id").first()


def declaration_figures(*, now: datetime.datetime | None = None) -> dict[str, Any]:
    """For the dashboard: declarations by status, the oldest one still waiting for a receipt,
    how many are queued or retrying, and receipts that matched nothing."""
    now = now or timezone.now()
    counts = dict(Declaration.objects.order_by().values_list("status").annotate(n=Count("pk")))
    oldest = (Declaration.objects.filter(status=Declaration.SUBMITTED).order_by("submitted_at", "pk")
              .only("pk", "message_type", "order_no", "cop_no", "pay_transaction_id", "logistics_no", "guid",
                    "submitted_at").first())
    waiting = None
    if oldest is not None:
        waiting = {"pk": oldest.pk, "label": str(oldest), "since": oldest.submitted_at,
                   "minutes": int((now - oldest.submitted_at).total_seconds() // 60)}
    return {
        "by_status": [{"status": value, "label": label, "count": counts.get(value, 0)}
                      for value, label in Declaration.STATUSES],
        "total": sum(counts.values()),
        "oldest_waiting": waiting,
        "queued": Declaration.objects.filter(status=Declaration.SIGNED, submissions__status="pending").distinct().count(),
        "unmatched_receipts": Receipt.objects.filter(declaration__isnull=True).count(),
    }
