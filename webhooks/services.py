"""Webhook writes and reads: the outbox (deliveries written with their audit event), the
cached list of enabled webhooks, changes made by operators (each with its audit event), and
what the delivery worker does in the database (claim due deliveries, record the outcome)."""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import F, Min
from django.utils import timezone
from django.utils.translation import gettext as _

from accessids.acs import AcsPartyInfo, acs_party_of
from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext
from core.encryption import MasterKeyError, secret_decrypt, secret_encrypt
from core.logging import redaction_register

from . import cp_md5
from .models import CP_MD5, NATIVE, SECRET_PURPOSE, Webhook, WebhookDelivery

logger = logging.getLogger("webhooks")

# Audit event types of changes to webhooks (the admin writes one per change).
WEBHOOK_CREATED = AuditEvent.WEBHOOK_CREATED
WEBHOOK_CHANGED = AuditEvent.WEBHOOK_CHANGED
WEBHOOK_DELETED = AuditEvent.WEBHOOK_DELETED
WEBHOOK_ENABLED = AuditEvent.WEBHOOK_ENABLED
WEBHOOK_DISABLED = AuditEvent.WEBHOOK_DISABLED
WEBHOOK_TEST_SENT = AuditEvent.WEBHOOK_TEST_SENT
WEBHOOK_DELIVERY_RETRIED = AuditEvent.WEBHOOK_DELIVERY_RETRIED

# The audit event fields a notification carries (never a secret, a PIN or signed data).
_COMMON_FIELDS = ("device", "outcome", "message")
_API_REQUEST_FIELDS = ("request_id", "endpoint", "http_status", "duration_ms", "cert_no", "data_sha256")
_RECEIPT_FIELDS = ("declaration", "message_type", "guid", "reference", "status", "receipt", "receipt_type",
                   "return_status", "return_info", "matched_by", "dxp_id")

SECRET_MIN_LENGTH = 16
CACHE_TTL = 10.0  # seconds: how long another process's webhook change may go unnoticed


class WebhookError(ValueError):
    pass


# --- the cached list of enabled webhooks ------------------------------------------------------


@dataclass(frozen=True)
class _Enabled:
    pk: int
    card_failures: bool
    audit_feed: bool
    declaration_receipts: bool


class _EnabledCache:
    """The enabled webhooks, in this process's memory: the audit receiver runs for every API
    request and must not query anything when no webhook wants the event. Dropped on every
    Webhook save/delete in this process, and re-read after CACHE_TTL for other processes'."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: tuple[_Enabled, ...] | None = None
        self._expires = 0.0
        self._generation = 0

    def get(self) -> tuple[_Enabled, ...]:
        now = time.monotonic()
        rows, expires, generation = self._rows, self._expires, self._generation
        if rows is not None and now < expires:
            return rows
        rows = tuple(
            _Enabled(pk, card, feed, receipts)
            for pk, card, feed, receipts in Webhook.objects.filter(enabled=True)
            .values_list("pk", "card_failures", "audit_feed", "declaration_receipts")
        )
        with self._lock:
            if generation == self._generation:  # not invalidated while reading
                self._rows, self._expires = rows, now + CACHE_TTL
        return rows

    def invalidate(self) -> None:
        with self._lock:
            self._rows = None
            self._generation += 1


enabled_webhooks = _EnabledCache()


def enabled_webhooks_invalidate() -> None:
    """Now, and again when the transaction commits (so nobody caches the old state in between)."""
    enabled_webhooks.invalidate()
    transaction.on_commit(enabled_webhooks.invalidate)


# --- the outbox ------------------------------------------------------------------------------


def _flag_for(event_type: str) -> str | None:
    if event_type in AuditEvent.CARD_FAILURES:
        return "card_failures"
    if event_type == AuditEvent.API_REQUEST:
        return "audit_feed"
    if event_type == AuditEvent.DECLARATION_RECEIPT:
        return "declaration_receipts"
    return None


def payload_for_event(event: AuditEvent) -> dict[str, Any]:
    """The notification body for an audit event, without its `id` (the delivery's)."""
    payload: dict[str, Any] = {
        "event": event.event_type,
        "occurred_at": event.created_at.astimezone(datetime.timezone.utc).isoformat(),
        "audit_event_id": event.pk,
    }
    for name in _COMMON_FIELDS:
        payload[name] = getattr(event, name)
    if event.event_type == AuditEvent.API_REQUEST:
        payload["access_id"] = event.access_key
        for name in _API_REQUEST_FIELDS:
            payload[name] = getattr(event, name)
    if event.event_type == AuditEvent.DECLARATION_RECEIPT:
        # What the receipt said and which declaration it concerns (no personal data of the documents).
        payload["access_id"] = event.access_key
        payload["receipt"] = {k: event.details.get(k) for k in _RECEIPT_FIELDS if k in event.details}
    return payload


def _delivery(webhook_id: int, event_type: str, payload: dict[str, Any], audit_event_id: int | None,
              payload_format: str = NATIVE) -> WebhookDelivery:
    """A delivery row. Native bodies (also the Data of acs ones) carry the delivery's ID as "id";
    cp-md5 bodies are the proxy's envelope as it is (the ID is in the X-Delivery-Id header)."""
    delivery = WebhookDelivery(webhook_id=webhook_id, event_type=event_type, audit_event_id=audit_event_id,
                               payload_format=payload_format)
    delivery.payload = dict(payload) if payload_format == CP_MD5 else {"id": str(delivery.id), **payload}
    return delivery


def deliveries_enqueue(event: AuditEvent) -> list[WebhookDelivery]:
    """The deliveries an audit event owes, written in the caller's transaction (the event's).
    Costs no query when no enabled webhook wants this kind of event."""
    flag = _flag_for(event.event_type)
    if flag is None:
        return []
    candidates = [w.pk for w in enabled_webhooks.get() if getattr(w, flag)]
    if not candidates:
        return []
    # The cache may be a few seconds old (another process disabled or deleted a webhook):
    # the rows are checked inside the transaction, so no delivery points at a missing webhook.
    webhooks = list(Webhook.objects.filter(pk__in=candidates, enabled=True, **{flag: True})
                    .values_list("pk", "payload_format"))
    if not webhooks:
        return []
    # The body is built now, once per format, and stored: what the admin shows is what is sent
    # (and signed), on every attempt.
    payloads: dict[str, dict[str, Any] | None] = {}
    rows = []
    for pk, payload_format in webhooks:
        if payload_format not in payloads:
            payloads[payload_format] = (cp_md5.payload_for_event(event) if payload_format == CP_MD5
                                        else payload_for_event(event))
        payload = payloads[payload_format]
        if payload is not None:
            rows.append(_delivery(pk, event.event_type, payload, event.pk, payload_format))
    if not rows:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(rows)
    transaction.on_commit(wake_local_workers)
    return deliveries


# Delivery workers running in this process, woken when new deliveries commit.
_local_workers: set = set()


def wake_local_workers() -> None:
    for worker in list(_local_workers):
        worker.wake()


# --- secrets ---------------------------------------------------------------------------------


def secret_check(secret: str) -> str:
    if len(secret) < SECRET_MIN_LENGTH:
        raise WebhookError(_("the secret must be at least %(count)s characters long") % {"count": SECRET_MIN_LENGTH})
    if secret != secret.strip():
        raise WebhookError(_("the secret must not start or end with spaces"))
    return secret


def webhook_set_secret(webhook: Webhook, secret: str) -> None:
    """Store the secret encrypted (the caller saves the row)."""
    webhook.secret_encrypted = secret_encrypt(secret_check(secret), purpose=SECRET_PURPOSE)


# --- changes by operators (one audit event each) -------------------------------------------------


def _record(context: ChangeContext, *, event_type: str, webhook: Webhook, message: str, **details) -> AuditEvent:
    return context.record(event_type=event_type, message=message,
                          details={"webhook": webhook.key, "name": webhook.name, "url": webhook.url, **details})


def _what(webhook: Webhook) -> list[str]:
    return [name for name, on in (("card failures", webhook.card_failures), ("audit feed", webhook.audit_feed),
                                  ("declaration receipts", webhook.declaration_receipts)) if on]


def _settings(webhook: Webhook) -> dict[str, Any]:
    """What a webhook sends, as its change events record it."""
    settings_ = {"card_failures": webhook.card_failures, "audit_feed": webhook.audit_feed,
                 "declaration_receipts": webhook.declaration_receipts, "enabled": webhook.enabled,
                 "payload_format": webhook.payload_format}
    if webhook.acs_party_id:
        settings_["acs_party"] = webhook.acs_party.key
    return settings_


def webhook_create(*, name: str, url: str, secret: str, card_failures: bool = True, audit_feed: bool = False,
                   declaration_receipts: bool = False, enabled: bool = True, payload_format: str = NATIVE,
                   acs_party=None, context: ChangeContext = COMMAND) -> Webhook:
    webhook = Webhook(name=name, url=url, card_failures=card_failures, audit_feed=audit_feed,
                      declaration_receipts=declaration_receipts, enabled=enabled, payload_format=payload_format,
                      acs_party=acs_party)
    webhook.full_clean(exclude=["secret_encrypted"])
    return webhook_add(webhook=webhook, secret=secret, context=context)


@transaction.atomic
def webhook_add(*, webhook: Webhook, secret: str, context: ChangeContext = COMMAND) -> Webhook:
    """Save a new (validated) webhook with its secret."""
    webhook_set_secret(webhook, secret)
    webhook.save(force_insert=True)
    _record(context, event_type=WEBHOOK_CREATED, webhook=webhook,
                   message=f"webhook {webhook.name} created ({', '.join(_what(webhook)) or 'nothing selected'}; "
                           f"{webhook.payload_format} format)",
                   **_settings(webhook))
    return webhook


@transaction.atomic
def webhook_update(*, webhook: Webhook, changed: Iterable[str], secret: str = "",
                   context: ChangeContext = COMMAND) -> Webhook:
    """Save `webhook` whose fields `changed` were edited (and a new secret when given)."""
    changed = [name for name in changed if name != "secret"]
    if secret:
        webhook_set_secret(webhook, secret)
    webhook.save()
    if changed or secret:
        what = changed + (["secret"] if secret else [])
        _record(context, event_type=WEBHOOK_CHANGED, webhook=webhook,
                       message=f"webhook {webhook.name} changed: {', '.join(what)}",
                       fields=changed, secret_replaced=bool(secret), **_settings(webhook))
    return webhook


@transaction.atomic
def webhook_set_enabled(*, webhook: Webhook, enabled: bool, context: ChangeContext = COMMAND) -> bool:
    """Returns whether anything changed."""
    if webhook.enabled == enabled:
        return False
    webhook.enabled = enabled
    webhook.save(update_fields=["enabled", "updated_at"])
    _record(context, event_type=WEBHOOK_ENABLED if enabled else WEBHOOK_DISABLED, webhook=webhook,
                   message=f"webhook {webhook.name} {'enabled' if enabled else 'disabled'}")
    return True


@transaction.atomic
def webhook_delete(*, webhook: Webhook, context: ChangeContext = COMMAND) -> None:
    """Only a webhook without deliveries can go (ProtectedError otherwise): disable it instead."""
    _record(context, event_type=WEBHOOK_DELETED, webhook=webhook, message=f"webhook {webhook.name} deleted")
    webhook.delete()


@transaction.atomic
def webhook_send_test(*, webhook: Webhook, context: ChangeContext = COMMAND) -> WebhookDelivery:
    """A `webhook.test` notification, sent like any other (signed, retried)."""
    who = getattr(context.actor, "get_username", lambda: "")() or context.source
    message = f"test notification sent from the signing platform by {who}"
    event = _record(context, event_type=WEBHOOK_TEST_SENT, webhook=webhook, message=f"test event sent to {webhook.name}")
    if webhook.payload_format == CP_MD5:
        delivery = _delivery(webhook.pk, WebhookDelivery.TEST, {}, event.pk, CP_MD5)
        delivery.payload = cp_md5.payload_for_test(created_at=event.created_at, message=message,
                                                   delivery_id=str(delivery.pk), audit_feed=webhook.audit_feed)
    else:
        payload = {
            "event": WebhookDelivery.TEST,
            "occurred_at": event.created_at.astimezone(datetime.timezone.utc).isoformat(),
            "audit_event_id": event.pk,
            "device": "",
            "outcome": AuditEvent.OK,
            "message": message,
        }
        delivery = _delivery(webhook.pk, WebhookDelivery.TEST, payload, event.pk, webhook.payload_format)
    delivery.save(force_insert=True)
    transaction.on_commit(wake_local_workers)
    return delivery


@transaction.atomic
def delivery_retry_now(*, delivery: WebhookDelivery, context: ChangeContext = COMMAND) -> WebhookDelivery:
    """Send again at once: a failed delivery gets one more attempt (it is failed again if that
    attempt fails too), a pending one stops waiting for its backoff."""
    delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
    if delivery.status == WebhookDelivery.DELIVERED:
        raise WebhookError(_("this notification was already delivered"))
    if delivery_in_flight(delivery):
        raise WebhookError(_("this notification is being sent right now; look again in a few seconds"))
    previous = delivery.status
    delivery.status = WebhookDelivery.PENDING
    delivery.next_attempt_at = timezone.now()
    delivery.save(update_fields=["status", "next_attempt_at"])
    _record(context, event_type=WEBHOOK_DELIVERY_RETRIED, webhook=delivery.webhook,
                   message=f"delivery {delivery.pk} ({delivery.event_type}) to {delivery.webhook.name} "
                           f"retried now (was {previous}, {delivery.attempts} attempts)",
                   delivery=str(delivery.pk), previous_status=previous, attempts=delivery.attempts)
    transaction.on_commit(wake_local_workers)
    return delivery


# --- the worker's database side ------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: the base doubling per
    attempt, capped, with ±15 % jitter (so receivers that come back are not hit all at once)."""
    base = float(settings.WEBHOOK_RETRY_BASE_SECONDS)
    cap = float(settings.WEBHOOK_RETRY_MAX_SECONDS)
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return min(cap, delay * random.uniform(0.85, 1.15))


def claim_lease() -> datetime.timedelta:
    """How long a claimed delivery is left alone by other workers (longer than one attempt)."""
    return datetime.timedelta(seconds=float(settings.WEBHOOK_TIMEOUT) + 30)


def delivery_in_flight(delivery: WebhookDelivery) -> bool:
    """Claimed by a worker and not finished: its next attempt is the claim's lease."""
    if delivery.status != WebhookDelivery.PENDING or delivery.last_attempt_at is None:
        return False
    leased = abs((delivery.next_attempt_at - delivery.last_attempt_at) - claim_lease()) < datetime.timedelta(seconds=1)
    return leased and delivery.next_attempt_at > timezone.now()


@dataclass(repr=False)
class DeliveryJob:
    """One attempt, as the worker needs it (the secret in clear: never logged)."""

    id: str
    webhook_id: int
    webhook_name: str
    url: str
    key: str
    secret: str | None
    event_type: str
    payload: dict
    attempts: int  # including this one
    secret_error: str = ""
    payload_format: str = NATIVE  # how the payload was written, hence how it is signed
    acs_party: AcsPartyInfo | None = None  # the party an acs delivery is encrypted and signed for

    def __repr__(self) -> str:
        return f"DeliveryJob({self.id}, {self.event_type} -> {self.webhook_name}, attempt {self.attempts})"


@dataclass
class Claim:
    jobs: list[DeliveryJob] = field(default_factory=list)
    # When the next delivery this worker may take falls due (None: none pending).
    next_due: datetime.datetime | None = None


def deliveries_claim(*, room: int, in_flight: dict[int, int], per_webhook: int, offset: int = 0) -> Claim:
    """Take up to `room` due deliveries, at most `per_webhook` in flight per webhook, and
    lease them (attempts + 1, next attempt pushed past the attempt's timeout). Rows another
    worker is claiming are skipped (PostgreSQL SKIP LOCKED), so nobody sends one twice;
    SQLite runs its write transactions one at a time (BEGIN IMMEDIATE). When nothing is due
    this is one read, no transaction."""
    claim = Claim()
    now = timezone.now()
    # Each enabled webhook's earliest pending delivery (the partial index "webhook_delivery_due").
    earliest = dict(
        WebhookDelivery.objects.filter(status=WebhookDelivery.PENDING, webhook__enabled=True)
        .order_by().values("webhook_id").annotate(first=Min("next_attempt_at")).values_list("webhook_id", "first")
    )
    upcoming = [first for first in earliest.values() if first > now]
    claim.next_due = min(upcoming) if upcoming else None
    ready = sorted(pk for pk, first in earliest.items() if first <= now and in_flight.get(pk, 0) < per_webhook)
    if not ready:
        return claim
    start = offset % len(ready)  # fairness: a different webhook goes first each round
    ready = ready[start:] + ready[:start]
    webhooks = {row[0]: row for row in Webhook.objects.filter(pk__in=ready, enabled=True)
                .values_list("pk", "name", "url", "key", "secret_encrypted", "acs_party_id")}
    lease_until = now + claim_lease()
    with transaction.atomic():
        for pk in ready:
            space = min(per_webhook - in_flight.get(pk, 0), room - len(claim.jobs))
            if pk not in webhooks or space <= 0:
                continue
            rows = list(
                WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(webhook_id=pk, status=WebhookDelivery.PENDING, next_attempt_at__lte=now)
                .order_by("next_attempt_at")
                .values_list("pk", "event_type", "payload", "attempts", "payload_format")[:space]
            )
            if not rows:
                continue
            WebhookDelivery.objects.filter(pk__in=[row[0] for row in rows]).update(
                attempts=F("attempts") + 1, last_attempt_at=now, next_attempt_at=lease_until
            )
            _, name, url, key, secret_encrypted, acs_party_pk = webhooks[pk]
            party = acs_party_of(acs_party_pk) if acs_party_pk else None
            secret, secret_error = None, ""
            try:
                secret = secret_decrypt(secret_encrypted, purpose=SECRET_PURPOSE)
                redaction_register(secret)
            except MasterKeyError as exc:
                secret_error = f"the webhook's secret cannot be decrypted ({exc}): enter it again in the admin"
            claim.jobs.extend(
                DeliveryJob(id=str(d_pk), webhook_id=pk, webhook_name=name, url=url, key=key, secret=secret,
                            event_type=event_type, payload=payload, attempts=attempts + 1,
                            secret_error=secret_error, payload_format=payload_format, acs_party=party)
                for d_pk, event_type, payload, attempts, payload_format in rows
            )
    return claim


@dataclass
class Outcome:
    ok: bool
    http_status: int | None = None
    error: str = ""


def delivery_finish(job: DeliveryJob, outcome: Outcome) -> str:
    """Record an attempt's outcome; returns the delivery's status afterwards ("delivered",
    "retrying", "failed"), or "" when the claim was lost (nothing recorded)."""
    now = timezone.now()
    error = outcome.error[:500]
    fields: dict[str, Any] = {"last_http_status": outcome.http_status, "last_error": error}
    if outcome.ok:
        fields.update(status=WebhookDelivery.DELIVERED, delivered_at=now, last_error="")
        result = Webhook.DELIVERED
    elif job.attempts >= int(settings.WEBHOOK_MAX_ATTEMPTS):
        fields.update(status=WebhookDelivery.FAILED)
        result = Webhook.FAILED
    else:
        fields.update(next_attempt_at=now + datetime.timedelta(seconds=retry_delay(job.attempts)))
        result = Webhook.RETRYING
    with transaction.atomic():
        updated = WebhookDelivery.objects.filter(
            pk=job.id, status=WebhookDelivery.PENDING, attempts=job.attempts
        ).update(**fields)
        if not updated:
            return ""
        Webhook.objects.filter(pk=job.webhook_id).update(
            last_delivery_at=now, last_delivery_status=result, last_delivery_http_status=outcome.http_status,
            last_delivery_error="" if outcome.ok else error,
        )
    return result


def deliveries_release(jobs: Iterable[DeliveryJob]) -> None:
    """Give back claimed deliveries whose attempt was interrupted (shutdown): due at once, the
    interrupted attempt not counted."""
    for job in jobs:
        WebhookDelivery.objects.filter(pk=job.id, status=WebhookDelivery.PENDING, attempts=job.attempts).update(
            attempts=F("attempts") - 1, next_attempt_at=timezone.now()
        )
