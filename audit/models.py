from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ukey import gateway as card_gateway


class AuditEvent(models.Model):
    """One thing that happened: an API request (any outcome) or a change made by an
    administrator or an operator command. Never holds a secret, a PIN or signed data
    (only its SHA-256)."""

    API_REQUEST = "api.request"
    ACCESS_ID_CREATED = "accessid.created"
    ACCESS_ID_CHANGED = "accessid.changed"
    ACCESS_ID_ROTATED = "accessid.rotated"
    ACCESS_ID_PREVIOUS_REVOKED = "accessid.previous_revoked"
    ACCESS_ID_ENABLED = "accessid.enabled"
    ACCESS_ID_DISABLED = "accessid.disabled"
    ACCESS_ID_PROFILE_CHANGED = "accessid.profile_changed"
    ACS_CHANGED = "accessid.acs_changed"
    ACS_KEY_SET = "accessid.acs_key_set"
    ACS_KEY_USED = "accessid.acs_key_used"
    ACS_CERT_GENERATED = "accessid.acs_cert_generated"
    ACS_CERT_UPLOADED = "accessid.acs_cert_uploaded"
    MASTER_KEY_ROTATED = "platform.master_key_rotated"
    PROCESS_EXITED = "platform.process_exited"  # a supervised process died and is being restarted
    BACKUP_CREATED = "platform.backup_created"
    BACKUP_RESTORED = "platform.backup_restored"
    # The card, as its gateway reports it (source "gateway", `device` set; ukey/gateway.py names them).
    CARD_CONNECTED = card_gateway.CARD_CONNECTED
    CARD_RECONNECTED = card_gateway.CARD_RECONNECTED
    CARD_DISCONNECTED = card_gateway.CARD_DISCONNECTED
    CARD_ERROR = card_gateway.CARD_ERROR
    CARD_PROBE_FAILED = card_gateway.CARD_PROBE_FAILED
    CARD_GATEWAY_STOPPED = card_gateway.CARD_GATEWAY_STOPPED  # a planned stop: not a failure
    # Card devices and their agents (the program on the card's PC that dials in).
    CARD_DEVICE_CREATED = "card.device_created"
    CARD_DEVICE_CHANGED = "card.device_changed"
    CARD_DEVICE_DELETED = "card.device_deleted"
    CARD_POOL_CREATED = "card.pool_created"
    CARD_POOL_CHANGED = "card.pool_changed"
    CARD_POOL_DELETED = "card.pool_deleted"
    AGENT_TOKEN_CREATED = "card.agent_token_created"
    AGENT_TOKEN_ROTATED = "card.agent_token_rotated"
    AGENT_TOKEN_REVOKED = "card.agent_token_revoked"
    AGENT_CONNECTED = "card.agent_connected"
    AGENT_DISCONNECTED = "card.agent_disconnected"
    AGENT_REFUSED = "card.agent_refused"
    AGENT_REPLACED = "card.agent_replaced"
    AGENT_RESTARTED = card_gateway.CARD_AGENT_RESTARTED  # the agent restarted a stalled E-Port client
    AUDIT_PRUNED = "audit.pruned"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_CHANGED = "webhook.changed"
    WEBHOOK_DELETED = "webhook.deleted"
    WEBHOOK_ENABLED = "webhook.enabled"
    WEBHOOK_DISABLED = "webhook.disabled"
    WEBHOOK_TEST_SENT = "webhook.test_sent"
    WEBHOOK_DELIVERY_RETRIED = "webhook.delivery_retried"
    # Customs declarations (declarations/): registrations, the exchange server's answers, receipts.
    REGISTRATION_CHANGED = "declaration.registration_changed"
    REGISTRATION_DELETED = "declaration.registration_deleted"
    DECLARATION_SUBMITTED = "declaration.submitted"
    DECLARATION_SUBMIT_FAILED = "declaration.submit_failed"
    DECLARATION_RECEIPT = "declaration.receipt"
    DECLARATION_RESUBMITTED = "declaration.resubmitted"
    CARD_FAILURES = (CARD_DISCONNECTED, CARD_ERROR, CARD_PROBE_FAILED, AGENT_RESTARTED)
    EVENT_TYPES = [
        (API_REQUEST, _("API request")),
        (ACCESS_ID_CREATED, _("Access ID created")),
        (ACCESS_ID_CHANGED, _("Access ID changed")),
        (ACCESS_ID_ROTATED, _("Secret rotated")),
        (ACCESS_ID_PREVIOUS_REVOKED, _("Previous secret revoked")),
        (ACCESS_ID_ENABLED, _("Access ID enabled")),
        (ACCESS_ID_DISABLED, _("Access ID disabled")),
        (ACCESS_ID_PROFILE_CHANGED, _("Access ID client profile changed")),
        (ACS_CHANGED, _("Access system settings changed")),
        (ACS_KEY_SET, _("Access system key set (pending)")),
        (ACS_KEY_USED, _("Access system new key in use")),
        (ACS_CERT_GENERATED, _("Access system certificate generated")),
        (ACS_CERT_UPLOADED, _("Access system encryption certificate uploaded")),
        (MASTER_KEY_ROTATED, _("Master key rotated")),
        (PROCESS_EXITED, _("Platform process exited (restarted)")),
        (BACKUP_CREATED, _("Backup created")),
        (BACKUP_RESTORED, _("Backup restored")),
        (CARD_CONNECTED, _("Card connected")),
        (CARD_RECONNECTED, _("Card reconnected")),
        (CARD_DISCONNECTED, _("Card disconnected")),
        (CARD_ERROR, _("Card operation failed")),
        (CARD_PROBE_FAILED, _("Card health probe failed")),
        (CARD_GATEWAY_STOPPED, _("Card gateway stopped (planned)")),
        (CARD_DEVICE_CREATED, _("Card device created")),
        (CARD_DEVICE_CHANGED, _("Card device changed")),
        (CARD_DEVICE_DELETED, _("Card device deleted")),
        (CARD_POOL_CREATED, _("Card pool created")),
        (CARD_POOL_CHANGED, _("Card pool changed")),
        (CARD_POOL_DELETED, _("Card pool deleted")),
        (AGENT_TOKEN_CREATED, _("Agent token created")),
        (AGENT_TOKEN_ROTATED, _("Agent token rotated")),
        (AGENT_TOKEN_REVOKED, _("Agent tokens revoked")),
        (AGENT_CONNECTED, _("Card agent connected")),
        (AGENT_DISCONNECTED, _("Card agent disconnected")),
        (AGENT_REFUSED, _("Card agent refused")),
        (AGENT_REPLACED, _("Card agent replaced by a newer connection")),
        (AGENT_RESTARTED, _("Card agent restarted the E-Port client")),
        (AUDIT_PRUNED, _("Audit log pruned")),
        (WEBHOOK_CREATED, _("Webhook created")),
        (WEBHOOK_CHANGED, _("Webhook changed")),
        (WEBHOOK_DELETED, _("Webhook deleted")),
        (WEBHOOK_ENABLED, _("Webhook enabled")),
        (WEBHOOK_DISABLED, _("Webhook disabled")),
        (WEBHOOK_TEST_SENT, _("Webhook test sent")),
        (WEBHOOK_DELIVERY_RETRIED, _("Webhook delivery retried")),
        (REGISTRATION_CHANGED, _("Company registration set")),
        (REGISTRATION_DELETED, _("Company registration deleted")),
        (DECLARATION_SUBMITTED, _("Declaration taken by the exchange server")),
        (DECLARATION_SUBMIT_FAILED, _("Declaration not submitted (refused, given up, unknown)")),
        (DECLARATION_RECEIPT, _("Declaration receipt")),
        (DECLARATION_RESUBMITTED, _("Declaration re-submitted")),
    ]
    OK = "OK"

    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    event_type = models.CharField(_("event type"), max_length=40, choices=EVENT_TYPES, db_index=True)
    request_id = models.CharField(_("request ID"), max_length=36, blank=True, db_index=True)
    # The access ID as claimed (kept when it does not exist, and when the row is gone).
    access_key = models.CharField(_("access ID"), max_length=64, blank=True, db_index=True)
    access_id = models.ForeignKey(
        "accessids.AccessId", null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(_("acting user"), max_length=150, blank=True)
    source = models.CharField(_("source"), max_length=20, blank=True, help_text=_("api, admin or command"))
    # The client profile an API request came through (native, gys, x-signature, cp-md5,
    # sign-server: docs/client-profiles.md); empty for events that are not requests.
    profile = models.CharField(_("client profile"), max_length=20, blank=True, db_index=True)
    endpoint = models.CharField(_("endpoint"), max_length=200, blank=True, db_index=True)
    outcome = models.CharField(_("outcome code"), max_length=40, default=OK, db_index=True)
    http_status = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    duration_ms = models.FloatField(_("duration (ms)"), null=True, blank=True)
    client_ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    device = models.CharField(_("card device"), max_length=50, blank=True)
    cert_no = models.CharField(_("certNo"), max_length=64, blank=True, db_index=True)
    data_sha256 = models.CharField(_("SHA-256 of the signed data"), max_length=64, blank=True, db_index=True)
    secret_version = models.PositiveIntegerField(_("secret version"), null=True, blank=True)
    message = models.CharField(_("message"), max_length=500, blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)
    # The hash chain (audit/chain.py): place, the previous event's hash, this event's hash.
    seq = models.BigIntegerField(_("seq"), unique=True, null=True, editable=False)
    prev_hash = models.CharField(_("previous hash"), max_length=64, blank=True, editable=False)
    hash = models.CharField(_("hash"), max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        indexes = [models.Index(fields=["access_id", "-created_at"], name="audit_access_recent")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event_type} {self.outcome}"


class AuditChainHead(models.Model):
    """The one row every append locks: the last seq and hash of the chain."""

    seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64)

    class Meta:
        verbose_name = _("audit chain head")


class AuditCheckpoint(models.Model):
    """Where the chain starts after a prune: the seq and hash of the last removed event,
    MACed with the chain key so that it cannot be forged from the database alone."""

    created_at = models.DateTimeField(default=timezone.now)
    seq = models.BigIntegerField(unique=True)
    last_hash = models.CharField(max_length=64)
    pruned = models.BigIntegerField(help_text=_("events removed so far, all prunes together"))
    older_than = models.DateTimeField(help_text=_("events created before this were removed"))
    mac = models.CharField(max_length=64)

    class Meta:
        ordering = ["-seq"]
