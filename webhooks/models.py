"""Webhooks: where the platform notifies other systems (card failures, the per-request audit
feed), and every notification it owes them (`WebhookDelivery`, the outbox).

A delivery row is written in the same transaction as the audit event it reports (see
`services.deliveries_enqueue`), so a rolled-back request notifies nobody and a committed
event is never lost; `worker.py` sends the rows with retries."""

from __future__ import annotations

import secrets
import uuid

from django.core.validators import URLValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

SECRET_PURPOSE = "webhook-secret"

# The wire formats a webhook can send (see services.py for the bodies, worker.py for the
# signatures).
NATIVE = "native"
CP_MD5 = "cp-md5"
ACS = "acs"
PAYLOAD_FORMATS = [
    (NATIVE, _("native (HMAC-SHA256, signed like the platform's API)")),
    (CP_MD5, _("cp-md5 (chinaport-proxy receivers, MD5: weak)")),
    (ACS, _("acs (an access system party: encrypted and signed with the party's keys)")),
]


def webhook_key_generate() -> str:
    """The webhook's identifier, sent as X-Access-Id: "WH" + 20 hex digits."""
    return "WH" + secrets.token_hex(10).upper()


class Webhook(models.Model):
    """A receiver URL and what it is told about."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    LAST_STATUSES = [(DELIVERED, _("delivered")), (RETRYING, _("attempt failed, will retry")), (FAILED, _("failed"))]

    name = models.CharField(_("name"), max_length=200, help_text=_("Who receives it, e.g. “Operations on-call”."))
    url = models.URLField(
        _("receiver URL"), max_length=500, validators=[URLValidator(schemes=["http", "https"])],
        help_text=_("http:// or https:// address the notifications are POSTed to."),
    )
    key = models.CharField(
        _("webhook ID"), max_length=40, unique=True, editable=False, default=webhook_key_generate,
        help_text=_("Sent as X-Access-Id with every notification."),
    )
    secret_encrypted = models.TextField(editable=False, blank=True)
    card_failures = models.BooleanField(
        _("card failures"), default=True,
        help_text=_("Notify when a card operation fails, the connection to a card is lost, "
                    "or a card's health probe fails."),
    )
    audit_feed = models.BooleanField(
        _("audit feed"), default=False,
        help_text=_("Send every API request's audit event (one notification per request: high volume)."),
    )
    declaration_receipts = models.BooleanField(
        _("declaration receipts"), default=False,
        help_text=_("Send every customs receipt of a declaration (accepted, rejected, in progress, or matching no "
                    "declaration); in the native and acs formats (the cp-md5 format has no such notification)."),
    )
    payload_format = models.CharField(
        _("payload format"), max_length=10, choices=PAYLOAD_FORMATS, default=NATIVE,
        help_text=_("native: the platform's own JSON, signed like its API requests (HMAC-SHA256 with X-Access-Id, "
                    "X-Timestamp, X-Nonce, X-Signature), for receivers written for this platform. "
                    "cp-md5: the chinaport-proxy's ukey_malfunction and api_audit notifications, signed like the "
                    "proxy's (X-Timestamp and X-Signature = MD5 of POST + path + timestamp + body + secret), only "
                    "for receivers written for the Go chinaport-proxy that cannot change. Its MD5 signature is "
                    "weak (MD5 is broken, and the secret is appended to the hashed text): use it on a private "
                    "network. acs: the native notification as the Data of the access system's envelope, encrypted "
                    "and MD5-signed for the access system party chosen below, with its current key or certificate. "
                    "Notifications already queued keep the format they were written in."),
    )
    acs_party = models.ForeignKey(
        "accessids.AccessId", on_delete=models.PROTECT, null=True, blank=True, related_name="acs_webhooks",
        verbose_name=_("access system party"),
        help_text=_("acs format only: the access ID whose access system settings (sender code, encryption, keys, "
                    "the party's certificate) encrypt and sign the notifications."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    # The last delivery attempt, as the worker saw it.
    last_delivery_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_delivery_status = models.CharField(max_length=10, choices=LAST_STATUSES, blank=True, editable=False)
    last_delivery_http_status = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    last_delivery_error = models.CharField(_("last delivery error"), max_length=500, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("webhook")
        verbose_name_plural = _("webhooks")

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted)

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.payload_format == ACS:
            if self.acs_party_id is None:
                raise ValidationError({"acs_party": _("The acs format needs the access system party it is sent to.")})
            from accessids.models import AcsParty

            if not AcsParty.objects.filter(access_id_id=self.acs_party_id).exists():
                raise ValidationError({"acs_party": _("This access ID has no access system settings (sender code, "
                                                      "encryption, keys): set them on its “Access system” page "
                                                      "first.")})
        elif self.acs_party_id is not None:
            self.acs_party = None  # only the acs format uses it


class WebhookDelivery(models.Model):
    """One notification owed to one webhook, and how sending it went."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    STATUSES = [(PENDING, _("pending")), (DELIVERED, _("delivered")), (FAILED, _("failed"))]
    TEST = "webhook.test"

    id = models.UUIDField(_("delivery ID"), primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.PROTECT, related_name="deliveries", verbose_name=_("webhook"))
    event_type = models.CharField(_("event"), max_length=40, db_index=True)
    payload = models.JSONField(_("payload"))
    # The format the payload was written in (the webhook's when the delivery was queued): the
    # worker signs it the same way, whatever the webhook's format is by then.
    payload_format = models.CharField(_("payload format"), max_length=10, choices=PAYLOAD_FORMATS, default=NATIVE)
    status = models.CharField(_("status"), max_length=10, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), default=timezone.now)
    last_attempt_at = models.DateTimeField(_("last attempt"), null=True, blank=True)
    last_http_status = models.PositiveSmallIntegerField(_("last HTTP status"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    # The audit event it reports (a plain number: audit_prune may remove old events).
    audit_event_id = models.BigIntegerField(_("audit event"), null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        indexes = [
            # What the worker asks every second: a webhook's due pending deliveries.
            models.Index(fields=["webhook", "next_attempt_at"], condition=Q(status="pending"),
                         name="webhook_delivery_due"),
            models.Index(fields=["status", "-created_at"], name="webhook_delivery_status"),
        ]

    def __str__(self) -> str:
        return _("%(event)s to %(webhook)s (%(status)s)") % {
            "event": self.event_type, "webhook": self.webhook.name, "status": self.get_status_display()}
