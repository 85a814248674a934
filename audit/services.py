"""Audit writes. Call `audit_event_record` inside the same `transaction.atomic` block as
the change it describes, so that either both are stored or neither is."""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.networks import client_address

from .chain import ChainBroken, chain_append, chain_append_many, chain_verify, checkpoint_mac
from .models import AuditCheckpoint, AuditEvent

_MAX_MESSAGE = 500


def data_digest(text: str) -> str:
    """What the audit log keeps of signed or stored data: the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """Text every database takes: NUL (PostgreSQL refuses it in text and JSON) and lone
    surrogates (not encodable as UTF-8) written as visible escapes, e.g. `\\x00`."""
    if not _UNSTORABLE.search(value):
        return value
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def storable_json(value: Any) -> Any:
    """`storable_text` applied to every key and string of a JSON-like value."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable_json(v) for v in value]
    return value


def audit_event_build(
    *,
    event_type: str,
    outcome: str = AuditEvent.OK,
    request_id: str = "",
    access_id: Any = None,
    access_key: str = "",
    actor: Any = None,
    source: str = "",
    profile: str = "",
    endpoint: str = "",
    http_status: int | None = None,
    duration_ms: float | None = None,
    client_ip: str | None = None,
    device: str = "",
    cert_no: str = "",
    data_sha256: str = "",
    secret_version: int | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """One unsaved audit event (its fields made storable; see `audit_event_record`)."""
    access_pk = getattr(access_id, "pk", access_id)
    if access_id is not None and not access_key:
        access_key = getattr(access_id, "key", "")
    altered: dict[str, str] = {}

    def text(name: str, value: str | None, limit: int | None = None) -> str:
        value = value or ""
        safe = storable_text(value)
        if safe != value:
            altered[name] = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return safe[:limit] if limit else safe

    event = AuditEvent(
        event_type=event_type,
        outcome=text("outcome", outcome, 40),
        request_id=text("request_id", request_id, 36),
        access_id_id=access_pk,
        access_key=text("access_key", access_key, 64),
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=text("actor_name", getattr(actor, "get_username", lambda: "")() if actor is not None else ""),
        source=text("source", source, 20),
        profile=text("profile", profile, 20),
        endpoint=text("endpoint", endpoint, 200),
        http_status=http_status,
        duration_ms=duration_ms,
        client_ip=client_ip,
        device=text("device", device, 50),
        cert_no=text("cert_no", cert_no, 64),
        data_sha256=text("data_sha256", data_sha256, 64),
        secret_version=secret_version,
        message=text("message", message, _MAX_MESSAGE),
        details=storable_json(details or {}),
    )
    if event.details != (details or {}):
        altered["details"] = hashlib.sha256(repr(details).encode("utf-8", "surrogatepass")).hexdigest()
    if altered:  # what was escaped, and the SHA-256 of what the request really carried
        event.details = {**event.details, "escaped_sha256": altered}
    return event


def audit_event_record(**fields: Any) -> AuditEvent:
    """Store one audit event, chained to the one before it (audit/chain.py); the fields are
    those of `audit_event_build`. `access_id` is an AccessId (or its pk); `access_key` the
    access ID string as claimed by a request (kept even when no such access ID exists)."""
    return chain_append(audit_event_build(**fields))


def audit_events_record(*, events: list[dict[str, Any]]) -> list[AuditEvent]:
    """Store several audit events (each a dict of `audit_event_build` fields), chained in
    this order, with one lock of the chain and one insert: the group commit of concurrent
    requests' events. Call inside the transaction they belong to: if this fails, so does it
    (no savepoint)."""
    return chain_append_many([audit_event_build(**fields) for fields in events], savepoint=False)


@dataclass(frozen=True)
class ChangeContext:
    """Who makes a change and from where (admin user, command, API request), for the audit
    event the change writes."""

    source: str = "command"
    actor: Any = None
    request_id: str = ""
    client_ip: str | None = None
    endpoint: str = ""

    @classmethod
    def from_request(cls, request, *, source: str) -> ChangeContext:
        """The context of a change made through an HTTP request (admin or API)."""
        user = getattr(request, "user", None)
        return cls(
            source=source,
            actor=user if getattr(user, "is_authenticated", False) and getattr(user, "pk", None) else None,
            request_id=getattr(request, "request_id", ""),
            client_ip=client_address(request),
            endpoint=(f"{request.method} {request.path}" if source == "api" else request.path)[:200],
        )

    def record(self, *, event_type: str, **fields) -> AuditEvent:
        return audit_event_record(
            event_type=event_type, actor=self.actor, source=self.source, request_id=self.request_id,
            client_ip=self.client_ip, endpoint=self.endpoint, **fields,
        )


COMMAND = ChangeContext(source="command")


def admin_change_context(request) -> ChangeContext:
    """The context of a change made in the admin by `request.user`."""
    return ChangeContext.from_request(request, source="admin")


def audit_prune(*, older_than: datetime.timedelta, batch: int = 5000) -> AuditCheckpoint | None:
    """Remove the oldest events (the prefix of the chain created before now − older_than),
    after verifying the chain, and record a checkpoint so the rest still verifies.
    Returns the checkpoint, or None when nothing is old enough."""
    cutoff = timezone.now() - older_than
    report = chain_verify(batch=batch)
    if not report.ok:
        raise ChainBroken(report)
    first_new = AuditEvent.objects.filter(created_at__gte=cutoff, seq__isnull=False).order_by("seq").first()
    old = AuditEvent.objects.filter(created_at__lt=cutoff, seq__isnull=False)
    if first_new is not None:
        old = old.filter(seq__lt=first_new.seq)
    last = old.order_by("-seq").first()
    if last is None:
        return None
    with transaction.atomic():
        pruned = AuditEvent.objects.filter(seq__lte=last.seq).count()
        previous = AuditCheckpoint.objects.order_by("-seq").first()
        total = pruned + (previous.pruned if previous else 0)
        checkpoint = AuditCheckpoint.objects.create(
            seq=last.seq, last_hash=last.hash, pruned=total, older_than=cutoff,
            mac=checkpoint_mac(seq=last.seq, last_hash=last.hash, pruned=total),
        )
        while AuditEvent.objects.filter(seq__lte=last.seq).exists():
            ids = list(AuditEvent.objects.filter(seq__lte=last.seq).order_by("seq").values_list("id", flat=True)[:batch])
            AuditEvent.objects.filter(id__in=ids).delete()
        audit_event_record(
            event_type=AuditEvent.AUDIT_PRUNED, source="command",
            message=f"removed {pruned} events up to seq {last.seq} (created before {cutoff.isoformat()})",
            details={"pruned": pruned, "up_to_seq": last.seq, "checkpoint": checkpoint.pk},
        )
    return checkpoint
