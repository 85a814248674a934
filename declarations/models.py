"""Customs declarations: CEB messages the platform built (or was given), signed, submitted
to the customs data-exchange server and followed through their receipts.

- `Registration`: who transmits (BaseTransfer: copCode, copName, dxpId), the defaults of the
  documents, the exchange server. It belongs to a card pool, or to an access ID that signs
  with a single card (see the README: the enterprise in BaseTransfer must be the card's).
- `Declaration`: one message (one business document), its keys, its status.
- `DeclarationEvent`: its timeline (built, signed, queued, each attempt, submitted, each
  receipt, re-submitted).
- `Submission`: the outbox. Written in the same transaction as the declaration and its
  document, claimed by one worker at a time, retried with backoff, never sent twice.
- `Receipt`: every receipt record the exchange answered, matched to a declaration or not.
- `ReceiptCursor`: from when each receipt endpoint is queried next."""

from __future__ import annotations

import uuid

from django.core.validators import URLValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accessids.models import AccessId
from core.cebexchange import ACCEPTED, ATTENTION, PROGRESS, REJECTED
from core.cebmessages import MESSAGES
from signing.models import CardPool
from xmlstore.models import XmlDocument

# format_lazy: the label follows the language when the message titles are marked for translation.
MESSAGE_TYPES = [(name, format_lazy("{} {}", name[3:6], spec.title)) for name, spec in MESSAGES.items()]


class Registration(models.Model):
    """The company registration a declaration's BaseTransfer is filled from."""

    access_id = models.OneToOneField(
        AccessId, null=True, blank=True, on_delete=models.CASCADE, related_name="ceb_registration",
        verbose_name=_("access ID"), help_text=_("For an access ID that signs with a single card (no card pool)."),
    )
    pool = models.OneToOneField(
        CardPool, null=True, blank=True, on_delete=models.CASCADE, related_name="ceb_registration",
        verbose_name=_("card pool"), help_text=_("For every access ID whose declarations are signed by this pool."),
    )
    cop_code = models.CharField(_("copCode"), max_length=18, help_text=_("报文传输的企业代码: the transmitting "
                                "enterprise's customs code (it must be the signing card's enterprise)."))
    cop_name = models.CharField(_("copName"), max_length=100, help_text=_("报文传输的企业名称."))
    dxp_id = models.CharField(_("dxpId"), max_length=30, help_text=_("The enterprise's data-exchange user number "
                              "(DXPENT…), assigned by the China E-Port data centre. Receipts are queried for it."))
    ebp_code = models.CharField(_("ebpCode default"), max_length=18, blank=True,
                                help_text=_("E-commerce platform code used when a document leaves ebpCode out."))
    ebp_name = models.CharField(_("ebpName default"), max_length=100, blank=True)
    ebc_code = models.CharField(_("ebcCode default"), max_length=18, blank=True,
                                help_text=_("E-commerce enterprise code used when a document leaves ebcCode out."))
    ebc_name = models.CharField(_("ebcName default"), max_length=100, blank=True)
    server_url = models.CharField(
        _("exchange server"), max_length=300, blank=True, validators=[URLValidator(schemes=["http", "https"])],
        help_text=_("The customs data-exchange server (http(s)://host:port). Empty: CUSTOMS_CEB_SERVER."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["cop_code", "pk"]
        verbose_name = _("company registration")
        verbose_name_plural = _("company registrations")
        constraints = [
            models.CheckConstraint(
                condition=(Q(access_id__isnull=False, pool__isnull=True) | Q(access_id__isnull=True, pool__isnull=False)),
                name="registration_one_owner",
            )
        ]

    def __str__(self) -> str:
        return gettext("%(name)s (%(code)s) for %(owner)s") % {"name": self.cop_name, "code": self.cop_code,
                                                               "owner": self.owner_text}

    @property
    def owner_label(self) -> str:
        """Whose registration it is, in English: the audit records and the JSON output keep it."""
        if self.pool_id:
            return f"card pool {self.pool.slug}"
        return f"access ID {self.access_id.key}" if self.access_id_id else "nobody"

    @property
    def owner_text(self) -> str:
        """Whose registration it is, for people (in their language)."""
        if self.pool_id:
            return gettext("card pool %(slug)s") % {"slug": self.pool.slug}
        return gettext("access ID %(key)s") % {"key": self.access_id.key} if self.access_id_id else gettext("nobody")

    def defaults(self) -> dict[str, str]:
        return {"ebpCode": self.ebp_code, "ebpName": self.ebp_name, "ebcCode": self.ebc_code,
                "ebcName": self.ebc_name}


class Declaration(models.Model):
    """One CEB message and where it stands with customs."""

    SIGNED = "signed"
    SUBMITTED = "submitted"
    STATUSES = [
        (SIGNED, _("signed")),
        (SUBMITTED, _("submitted, waiting for a receipt")),
        (ACCEPTED, _("accepted")),
        (REJECTED, _("rejected")),
        (ATTENTION, _("needs attention")),
    ]
    FROM_JSON, FROM_XML = "json", "xml"

    access_id = models.ForeignKey(AccessId, on_delete=models.PROTECT, related_name="declarations",
                                  verbose_name=_("access ID"))
    message_type = models.CharField(_("message type"), max_length=20, choices=MESSAGE_TYPES, db_index=True)
    source = models.CharField(max_length=4, choices=[(FROM_JSON, _("built from JSON")), (FROM_XML, _("XML given"))])
    data = models.TextField(blank=True, help_text=_("The client's JSON (numbers as sent), to build it again."))
    original_xml = models.TextField(blank=True, help_text=_("The unsigned XML a client gave (source xml)."))
    guid = models.CharField(_("message guid"), max_length=36, db_index=True)
    head_guid = models.CharField(_("document guid"), max_length=36, blank=True, db_index=True)
    # The document's key elements (and what receipts taught: preNo, invtNo, the exchange's reference).
    order_no = models.CharField(_("orderNo"), max_length=60, blank=True, db_index=True)
    ebp_code = models.CharField(_("ebpCode"), max_length=18, blank=True)
    ebc_code = models.CharField(_("ebcCode"), max_length=18, blank=True)
    cop_no = models.CharField(_("copNo"), max_length=20, blank=True, db_index=True)
    pre_no = models.CharField(_("preNo"), max_length=18, blank=True, db_index=True)
    invt_no = models.CharField(_("invtNo"), max_length=18, blank=True, db_index=True)
    pay_transaction_id = models.CharField(_("payTransactionId"), max_length=60, blank=True, db_index=True)
    pay_code = models.CharField(_("payCode"), max_length=18, blank=True)
    logistics_no = models.CharField(_("logisticsNo"), max_length=60, blank=True, db_index=True)
    logistics_code = models.CharField(_("logisticsCode"), max_length=18, blank=True)
    customs_ref = models.CharField(_("exchange reference"), max_length=64, blank=True, db_index=True)
    # Who transmits it, where to, and who signed it.
    registration = models.ForeignKey(Registration, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="declarations")
    cop_code = models.CharField(_("copCode"), max_length=18, blank=True)
    dxp_id = models.CharField(_("dxpId"), max_length=30, blank=True, db_index=True)
    server_url = models.CharField(_("exchange server"), max_length=300, blank=True)
    device = models.CharField(_("card device"), max_length=50, blank=True)
    pool = models.CharField(_("card pool"), max_length=50, blank=True)
    cert_no = models.CharField(_("certNo"), max_length=64, blank=True)
    document = models.ForeignKey(XmlDocument, on_delete=models.PROTECT, related_name="declarations")
    document_version = models.PositiveIntegerField(default=1)
    # Where it stands.
    status = models.CharField(_("status"), max_length=20, choices=STATUSES, default=SIGNED, db_index=True)
    status_text = models.CharField(max_length=1000, blank=True, help_text=_("Why: a refusal, a receipt's returnInfo."))
    status_changed_at = models.DateTimeField(default=timezone.now)
    return_status = models.CharField(_("last returnStatus"), max_length=10, blank=True)
    request_id = models.CharField(max_length=36, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True, help_text=_("When the exchange server took it."))
    last_receipt_at = models.DateTimeField(null=True, blank=True)
    resubmissions = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = _("declaration")
        verbose_name_plural = _("declarations")
        permissions = [("resubmit_declaration", "Can re-submit declarations")]
        indexes = [
            models.Index(fields=["status", "submitted_at"], name="declaration_waiting"),
            models.Index(fields=["access_id", "-created_at"], name="declaration_access_recent"),
            models.Index(fields=["message_type", "dxp_id", "status"], name="declaration_receipt_target"),
        ]

    def __str__(self) -> str:
        return f"{self.message_type} {self.reference}"

    @property
    def reference(self) -> str:
        """What people call the document: its order, inventory, payment or waybill number."""
        return self.order_no or self.cop_no or self.pay_transaction_id or self.logistics_no or self.guid


class DeclarationEvent(models.Model):
    """One line of a declaration's timeline."""

    BUILT, SIGNED, QUEUED, ATTEMPT_FAILED, SUBMITTED = "built", "signed", "queued", "attempt_failed", "submitted"
    REFUSED, GAVE_UP, UNCONFIRMED, RECEIPT, RESUBMITTED = "refused", "gave_up", "unconfirmed", "receipt", "resubmitted"
    KINDS = [
        (BUILT, _("built")), (SIGNED, _("signed")), (QUEUED, _("queued for the exchange server")),
        (ATTEMPT_FAILED, _("attempt failed, will retry")), (SUBMITTED, _("taken by the exchange server")),
        (REFUSED, _("refused by the exchange server")), (GAVE_UP, _("given up")),
        (UNCONFIRMED, _("outcome unknown")), (RECEIPT, _("receipt")), (RESUBMITTED, _("re-submitted")),
    ]

    declaration = models.ForeignKey(Declaration, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=20, choices=KINDS)
    text = models.CharField(max_length=1000, blank=True)
    receipt = models.ForeignKey("Receipt", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["declaration", "at", "pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind}"


class Submission(models.Model):
    """The outbox: one signed message owed to the exchange server."""

    PENDING, SENDING, SENT = "pending", "sending", "sent"
    REFUSED, FAILED, UNCONFIRMED, SUPERSEDED = "refused", "failed", "unconfirmed", "superseded"
    STATUSES = [
        (PENDING, _("pending")), (SENDING, _("being sent")), (SENT, _("taken (OK)")), (REFUSED, _("refused")),
        (FAILED, _("given up")), (UNCONFIRMED, _("outcome unknown")), (SUPERSEDED, _("superseded by a re-submission")),
    ]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    declaration = models.ForeignKey(Declaration, on_delete=models.CASCADE, related_name="submissions")
    server_url = models.CharField(max_length=300)
    message_type = models.CharField(max_length=20)
    xml = models.TextField(help_text=_("The signed message, as it is sent (base64 in the envelope)."))
    status = models.CharField(max_length=12, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True, help_text=_("While being sent: claimed until then."))
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    reply = models.CharField(max_length=1000, blank=True, help_text=_("The exchange server's last answer."))
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="submission_due"),
            models.Index(fields=["lease_until"], condition=Q(status="sending"), name="submission_leased"),
        ]

    def __str__(self) -> str:
        return f"{self.message_type} to {self.server_url} ({self.status})"


class Receipt(models.Model):
    """One receipt record, exactly as the exchange answered it, and what it meant."""

    OUTCOMES = [(ACCEPTED, _("accepted")), (REJECTED, _("rejected")), (ATTENTION, _("needs attention")),
                (PROGRESS, _("in progress"))]

    receipt_type = models.CharField(_("receipt type"), max_length=20, db_index=True)  # CEB312Message, ...
    server_url = models.CharField(_("exchange server"), max_length=300)
    dxp_id = models.CharField(_("dxpId"), max_length=30)
    fingerprint = models.CharField(max_length=64, help_text=_("SHA-256 of the record: the same record is kept once."))
    declaration = models.ForeignKey(Declaration, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="receipts")
    matched_by = models.CharField(_("matched by"), max_length=40, blank=True, help_text=_("guid, preNo, orderNo, …; empty: unmatched"))
    return_status = models.CharField(_("returnStatus"), max_length=10, blank=True)
    return_info = models.TextField(_("returnInfo"), blank=True)
    return_time = models.DateTimeField(_("returnTime"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=20, choices=OUTCOMES)
    record = models.JSONField(_("record"), help_text=_("The record as the exchange answered it."))
    received_at = models.DateTimeField(_("received at"), default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name = _("receipt")
        verbose_name_plural = _("receipts")
        constraints = [models.UniqueConstraint(fields=["dxp_id", "receipt_type", "fingerprint"],
                                               name="receipt_once")]
        indexes = [models.Index(fields=["received_at"], condition=Q(declaration__isnull=True),
                                name="receipt_unmatched")]

    def __str__(self) -> str:
        return f"{self.receipt_type} {self.return_status} {self.return_info[:40]}"


class ReceiptCursor(models.Model):
    """A receipt endpoint of one exchange server and dxpId: from when it is queried next."""

    server_url = models.CharField(max_length=300)
    dxp_id = models.CharField(max_length=30)
    message_type = models.CharField(max_length=20)
    query_from = models.DateTimeField()
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["server_url", "dxp_id", "message_type"],
                                               name="receipt_cursor_unique")]

    def __str__(self) -> str:
        return f"{self.message_type} receipts of {self.dxp_id} at {self.server_url}"
