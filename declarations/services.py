"""Declaration writes: company registrations (audited), building and storing a declaration
with its signed document and its outbox row in one transaction, what the submission worker
does in the database (claim, record the exchange server's answer, recover), receipts
(matched, stored, the declaration's status moved, an audit event each: webhooks see them),
and re-submitting after a fix.

Contract: docs/declarations.md."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Min, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from accessids.models import AccessId
from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext, audit_event_record
from core.ceb import XmlInputError
from core.cebexchange import (
    ACCEPTED,
    ATTENTION,
    PROGRESS,
    RECEIPTS,
    REJECTED,
    china_time,
    receipt_facts,
    receipt_outcome,
)
from core.cebmessages import (
    CebDataError,
    Transfer,
    ceb_message_build,
    ceb_message_facts,
    declaration_json_load,
)
from core.dbthread import db_sync_to_async
from core.errors import ApiError, invalid_request, xml_input_error
from core.jsontext import json_compact
from signing.models import CardPool
from signing.pools import CardTarget, card_target_choose, card_target_run
from signing.services import CebSignResult, card_signature_method_override, ceb_xml_sign
from ukey.client import UKeyError
from xmlstore.services import XmlSignature, xml_document_write

from .models import Declaration, DeclarationEvent, Receipt, ReceiptCursor, Registration, Submission

logger = logging.getLogger("declarations")

DIRECTORY = "declarations"
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# The declaration columns of the key elements a receipt may name a document by.
KEY_COLUMNS = {"orderNo": "order_no", "ebpCode": "ebp_code", "ebcCode": "ebc_code", "copNo": "cop_no",
               "preNo": "pre_no", "invtNo": "invt_no", "payTransactionId": "pay_transaction_id",
               "payCode": "pay_code", "logisticsNo": "logistics_no", "logisticsCode": "logistics_code"}
# After the guids and what receipts taught (preNo, invtNo), the key elements tried in turn.
MATCH_KEYS = {
    "CEB311Message": (("orderNo", "ebpCode"),),
    "CEB303Message": (("orderNo", "ebpCode"),),
    "CEB621Message": (("copNo", "ebcCode"), ("orderNo", "ebpCode")),
    "CEB623Message": (("copNo", "ebcCode"), ("orderNo", "ebpCode")),
    "CEB411Message": (("payTransactionId", "payCode"),),
    "CEB511Message": (("logisticsNo", "logisticsCode"),),
}


class DeclarationError(ValueError):
    """A change the declaration's state does not allow (shown to the operator as it is)."""


# --- registrations --------------------------------------------------------------------------------

REGISTRATION_FIELDS = ("cop_code", "cop_name", "dxp_id", "ebp_code", "ebp_name", "ebc_code", "ebc_name", "server_url")


def registration_owner_label(*, access_id: AccessId | None, pool: CardPool | None) -> str:
    return f"card pool {pool.slug}" if pool is not None else f"access ID {access_id.key}"


@transaction.atomic
def registration_set(*, access_id: AccessId | None = None, pool: CardPool | None = None,
                     context: ChangeContext = COMMAND, **values: str | None) -> tuple[Registration, bool, list[str]]:
    """Create or change the registration of an access ID or of a card pool (exactly one);
    values left None keep what is there. Returns (registration, created, changed fields),
    with one audit event when anything changed. Raises ValidationError."""
    if (access_id is None) == (pool is None):
        raise ValidationError(_("a registration belongs to exactly one access ID or one card pool"))
    unknown = set(values) - set(REGISTRATION_FIELDS)
    if unknown:
        raise ValidationError(_("unknown registration fields: %(fields)s") % {"fields": ", ".join(sorted(unknown))})
    owner = {"access_id": access_id} if access_id is not None else {"pool": pool}
    registration = Registration.objects.select_for_update().filter(**owner).first()
    created = registration is None
    registration = registration or Registration(**owner)
    changed = []
    for name, value in values.items():
        if value is not None and getattr(registration, name) != value.strip():
            setattr(registration, name, value.strip())
            changed.append(name)
    for name in ("cop_code", "cop_name", "dxp_id"):
        if not getattr(registration, name):
            raise ValidationError({name: [_("is required")]})
    registration.full_clean()
    if not created and not changed:
        return registration, False, []
    registration.save()
    label = registration_owner_label(access_id=access_id, pool=pool)
    context.record(
        event_type=AuditEvent.REGISTRATION_CHANGED, access_id=access_id, device=pool.slug if pool else "",
        message=f"company registration {'created' if created else 'changed'} for {label}: "
                f"{registration.cop_name} ({registration.cop_code}), dxpId {registration.dxp_id}",
        details={"registration": registration.pk, "owner": label, "created": created, "fields": changed,
                 **{name: getattr(registration, name) for name in REGISTRATION_FIELDS}},
    )
    return registration, created, changed


@transaction.atomic
def registration_delete(*, registration: Registration, context: ChangeContext = COMMAND) -> None:
    """Declarations keep what they were built with (their copCode, dxpId, server)."""
    label = registration.owner_label
    context.record(event_type=AuditEvent.REGISTRATION_DELETED, access_id=registration.access_id_id,
                   device=registration.pool.slug if registration.pool_id else "",
                   message=f"company registration of {label} deleted ({registration.cop_code})",
                   details={"registration": registration.pk, "owner": label, "cop_code": registration.cop_code,
                            "dxp_id": registration.dxp_id})
    registration.delete()


def registration_for(*, access_pk: int, pool_slug: str | None) -> Registration | None:
    """The registration a declaration signed through `pool_slug` (or a single card) uses:
    the pool's, else the access ID's."""
    if pool_slug:
        return Registration.objects.filter(pool__slug=pool_slug).first()
    return Registration.objects.filter(access_id_id=access_pk).first()


# --- building --------------------------------------------------------------------------------------


def new_guid() -> str:
    """36 characters, upper case, as the standard asks (a UUID)."""
    return str(uuid.uuid4()).upper()


@dataclass
class PreparedDeclaration:
    """A declaration built (or read) and checked, not yet signed or stored."""

    message_type: str
    source: str
    xml: str  # unsigned
    guid: str
    head_guid: str
    keys: dict[str, str]
    data: str  # the client's JSON, numbers as sent ("" for XML)
    registration: Registration | None
    cop_code: str
    dxp_id: str
    server_url: str
    submit: bool
    built_at: datetime.datetime = field(default_factory=timezone.now)


def declaration_prepare(*, message_type: str | None, data: Any = None, xml: str | None = None,
                        registration: Registration | None, submit: bool,
                        now: datetime.datetime | None = None) -> PreparedDeclaration:
    """Build the unsigned message from `data` (or read the client's `xml`) and check that it
    can be submitted. Raises INVALID_REQUEST naming every refused field; nothing is stored."""
    now = now or timezone.now()
    server_url = (registration.server_url if registration else "") or settings.CUSTOMS_CEB_SERVER
    if xml is not None:
        try:
            facts = ceb_message_facts(xml)
        except XmlInputError as exc:
            raise xml_input_error(exc) from None
        if message_type and message_type != facts.message_type:
            raise invalid_request(f"message_type is {message_type} but the XML is a {facts.message_type}",
                                  {"message_type": [f"does not match the XML's root ({facts.message_type})"]})
        prepared = PreparedDeclaration(
            message_type=facts.message_type, source=Declaration.FROM_XML, xml=xml, guid=facts.guid,
            head_guid=facts.head_guid, keys=facts.keys, data="", registration=registration,
            cop_code=facts.cop_code, dxp_id=facts.dxp_id or (registration.dxp_id if registration else ""),
            server_url=server_url, submit=submit, built_at=now,
        )
    else:
        if registration is None:
            raise invalid_request(
                "no company registration for this access ID (or the card pool it signs with): an administrator "
                "sets one in the admin or with `manage.py registration set`",
                {"registration": ["missing: BaseTransfer (copCode, copName, dxpId) is filled from it"]})
        transfer = Transfer(cop_code=registration.cop_code, cop_name=registration.cop_name,
                            dxp_id=registration.dxp_id)
        try:
            built = ceb_message_build(message_type or "", data, transfer=transfer, guid=new_guid(),
                                      head_guid=new_guid(), app_time=china_time(now, "%Y%m%d%H%M%S"),
                                      defaults=registration.defaults())
        except CebDataError as exc:
            raise invalid_request(f"the declaration is refused: {exc.message}", exc.fields) from None
        prepared = PreparedDeclaration(
            message_type=built.message_type, source=Declaration.FROM_JSON, xml=built.xml, guid=built.guid,
            head_guid=built.head_guid, keys=built.keys, data=json_compact(data), registration=registration,
            cop_code=registration.cop_code, dxp_id=registration.dxp_id, server_url=server_url, submit=submit,
            built_at=now,
        )
    if submit and not prepared.server_url:
        raise invalid_request("no customs exchange server is configured (CUSTOMS_CEB_SERVER, or the registration's "
                              "server); send \"submit\": false to sign and store only",
                              {"submit": ["no exchange server configured"]})
    if submit and not prepared.dxp_id:
        raise invalid_request("the message has no BaseTransfer dxpId, so its receipts could not be followed",
                              {"xml": ["BaseTransfer/dxpId is missing"]})
    return prepared


async def declaration_sign(*, xml: str, target: CardTarget, owner: str, trace: dict[str, Any]) -> CebSignResult:
    """Sign the message as /api/v1/sign/xml does (verified before it is returned), on the
    target's card (a pool's least-loaded one); `trace` names the card."""

    async def sign(card: str) -> CebSignResult:
        override = await db_sync_to_async(card_signature_method_override)(device=card)
        return await ceb_xml_sign(xml=xml, device=card, owner=owner, signature_method=override)

    return await card_target_run(target, sign, trace=trace)


# --- storing -----------------------------------------------------------------------------------------


def _event(declaration: Declaration, kind: str, text: str = "", *, at: datetime.datetime | None = None,
           receipt: Receipt | None = None) -> DeclarationEvent:
    return DeclarationEvent.objects.create(declaration=declaration, kind=kind, text=text[:1000],
                                           at=at or timezone.now(), receipt=receipt)


def _filename(prepared: PreparedDeclaration) -> str:
    reference = next(iter(prepared.keys.values()), "") or "document"
    return f"{prepared.message_type}-{_FILENAME_UNSAFE.sub('_', reference)[:60]}-{prepared.guid[:8]}.xml"


def _keys_apply(declaration: Declaration, keys: dict[str, str]) -> None:
    for name, column in KEY_COLUMNS.items():
        setattr(declaration, column, keys.get(name, "")[:Declaration._meta.get_field(column).max_length])


def _signature(prepared: PreparedDeclaration, signed: CebSignResult) -> XmlSignature:
    return XmlSignature(original_content=prepared.xml, cert_no=signed.cert_no,
                        signature_method=signed.signature_method, digest_value=signed.digest_value,
                        signature_value=signed.signature_value, device=signed.device)


def declaration_record(*, access_pk: int, prepared: PreparedDeclaration, signed: CebSignResult, request_id: str,
                       pool: str = "", now: datetime.datetime | None = None) -> Declaration:
    """Store a signed declaration: its document in the XML store, the declaration, its
    timeline and, when it is to be submitted, its outbox row. Call inside the transaction
    of the request's audit event: all of it exists, or none."""
    now = now or timezone.now()
    document = xml_document_write(
        access_id=access_pk, directory=f"{DIRECTORY}/{prepared.message_type}", filename=_filename(prepared),
        content=signed.signed_xml, request_id=request_id, source="api", message_type=prepared.message_type,
        signature=_signature(prepared, signed), checked=True,
    )
    declaration = Declaration(
        access_id_id=access_pk, message_type=prepared.message_type, source=prepared.source, data=prepared.data,
        original_xml=prepared.xml if prepared.source == Declaration.FROM_XML else "", guid=prepared.guid[:36],
        head_guid=prepared.head_guid[:36], registration=prepared.registration, cop_code=prepared.cop_code,
        dxp_id=prepared.dxp_id, server_url=prepared.server_url, device=signed.device, pool=pool,
        cert_no=signed.cert_no, document=document, document_version=document.version, request_id=request_id,
        created_at=prepared.built_at, signed_at=now, status_changed_at=now,
    )
    _keys_apply(declaration, prepared.keys)
    declaration.save()
    built = "built from JSON" if prepared.source == Declaration.FROM_JSON else "received as XML"
    _event(declaration, DeclarationEvent.BUILT, f"{built}; guid {prepared.guid}", at=prepared.built_at)
    _event(declaration, DeclarationEvent.SIGNED, f"signed by card {signed.device} (certNo {signed.cert_no}), "
                                                 f"stored as {document.path} v{document.version}", at=now)
    if prepared.submit:
        _submission_queue(declaration, signed.signed_xml, now)
    return declaration


def _submission_queue(declaration: Declaration, xml: str, now: datetime.datetime) -> Submission:
    submission = Submission.objects.create(declaration=declaration, server_url=declaration.server_url,
                                           message_type=declaration.message_type, xml=xml, next_attempt_at=now,
                                           created_at=now)
    _event(declaration, DeclarationEvent.QUEUED, f"queued for {declaration.server_url}", at=now)
    transaction.on_commit(wake_local_workers)
    return submission


# Declaration workers running in this process, woken when new submissions commit.
_local_workers: set = set()


def wake_local_workers() -> None:
    for worker in list(_local_workers):
        worker.wake()


# --- the outbox: what the worker does in the database ---------------------------------------------------


@dataclass(repr=False)
class SubmissionJob:
    id: str
    declaration_id: int
    server_url: str
    message_type: str
    xml: str
    attempts: int  # including this one
    started: bool = False  # the request left (its outcome is then unknown until answered)

    def __repr__(self) -> str:
        return f"SubmissionJob({self.id}, declaration {self.declaration_id}, attempt {self.attempts})"


@dataclass(frozen=True)
class SubmitOutcome:
    """SENT: the exchange answered OK. REFUSED: it answered, not OK (never retried).
    RETRY: it was not taken and may be sent again (no connection, 5xx). FAILED: it cannot be
    sent as configured. UNCONFIRMED: the request left but no answer came (maybe taken)."""

    SENT, REFUSED, RETRY, FAILED, UNCONFIRMED = "sent", "refused", "retry", "failed", "unconfirmed"

    kind: str
    http_status: int | None = None
    reply: str = ""
    error: str = ""


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt: the base doubling per failed attempt, capped, ±15 %."""
    base = float(settings.DECLARATION_RETRY_BASE_SECONDS)
    cap = float(settings.DECLARATION_RETRY_MAX_SECONDS)
    return min(cap, min(cap, base * 2 ** max(0, attempts - 1)) * random.uniform(0.85, 1.15))


def submission_lease() -> datetime.timedelta:
    """How long a claimed submission is left alone: longer than one attempt can take."""
    return datetime.timedelta(seconds=2 * float(settings.CUSTOMS_CEB_TIMEOUT) + 30)


def submissions_claim(*, room: int, now: datetime.datetime | None = None) -> list[SubmissionJob]:
    """Take up to `room` due submissions and lease them (status sending, attempts + 1).
    Rows another worker is claiming are skipped (PostgreSQL SKIP LOCKED); SQLite runs its
    write transactions one at a time. One read and no transaction when nothing is due."""
    now = now or timezone.now()
    if room <= 0 or not Submission.objects.filter(status=Submission.PENDING, next_attempt_at__lte=now).exists():
        return []
    with transaction.atomic():
        rows = list(
            Submission.objects.select_for_update(skip_locked=True)
            .filter(status=Submission.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at")
            .values_list("pk", "declaration_id", "server_url", "message_type", "xml", "attempts")[:room]
        )
        if not rows:
            return []
        Submission.objects.filter(pk__in=[row[0] for row in rows]).update(
            status=Submission.SENDING, attempts=F("attempts") + 1, last_attempt_at=now,
            lease_until=now + submission_lease())
    return [SubmissionJob(id=str(pk), declaration_id=decl, server_url=url, message_type=mtype, xml=xml,
                          attempts=attempts + 1)
            for pk, decl, url, mtype, xml, attempts in rows]


def submission_next_due() -> datetime.datetime | None:
    return Submission.objects.filter(status=Submission.PENDING).aggregate(first=Min("next_attempt_at"))["first"]


def _declaration_status(declaration: Declaration, status: str, text: str, now: datetime.datetime) -> None:
    if declaration.status != status:
        declaration.status_changed_at = now
    declaration.status = status
    declaration.status_text = text[:1000]


def _audit(declaration: Declaration, *, event_type: str, outcome: str, message: str, **details) -> AuditEvent:
    return audit_event_record(
        event_type=event_type, source="declarations", access_id=declaration.access_id_id, outcome=outcome,
        device=declaration.device, cert_no=declaration.cert_no, message=message,
        details={"declaration": declaration.pk, "message_type": declaration.message_type, "guid": declaration.guid,
                 "reference": declaration.reference, "status": declaration.status, **details},
    )


def submission_finish(job: SubmissionJob, outcome: SubmitOutcome, *, now: datetime.datetime | None = None) -> str:
    """Record one attempt's outcome; returns the submission's status afterwards, or "" when
    the claim was lost (nothing recorded). The declaration's status, its timeline and (for
    the final outcomes) an audit event change in the same transaction."""
    now = now or timezone.now()
    fields: dict[str, Any] = {"last_http_status": outcome.http_status, "last_error": outcome.error[:500],
                              "reply": outcome.reply[:1000], "lease_until": None}
    if outcome.kind == SubmitOutcome.SENT:
        fields.update(status=Submission.SENT, sent_at=now, last_error="")
    elif outcome.kind == SubmitOutcome.REFUSED:
        fields.update(status=Submission.REFUSED)
    elif outcome.kind == SubmitOutcome.UNCONFIRMED:
        fields.update(status=Submission.UNCONFIRMED)
    elif outcome.kind == SubmitOutcome.FAILED or job.attempts >= int(settings.DECLARATION_SUBMIT_MAX_ATTEMPTS):
        fields.update(status=Submission.FAILED)
    else:
        fields.update(status=Submission.PENDING, next_attempt_at=now + datetime.timedelta(seconds=retry_delay(job.attempts)))
    with transaction.atomic():
        # The declaration first, then its submission, then the audit chain: the order every
        # writer of the declarations app takes its locks in.
        declaration = Declaration.objects.select_for_update().get(pk=job.declaration_id)
        updated = Submission.objects.filter(pk=job.id, status=Submission.SENDING, attempts=job.attempts).update(**fields)
        if not updated:
            return ""
        status = fields["status"]
        answer = f"HTTP {outcome.http_status}: {outcome.reply[:300]!r}" if outcome.http_status else outcome.error
        if status == Submission.SENT:
            declaration.submitted_at = declaration.submitted_at or now
            if declaration.status == Declaration.SIGNED:
                _declaration_status(declaration, Declaration.SUBMITTED, "taken by the exchange server", now)
            declaration.save()
            _event(declaration, DeclarationEvent.SUBMITTED, f"the exchange server answered OK (attempt {job.attempts})",
                   at=now)
            _audit(declaration, event_type=AuditEvent.DECLARATION_SUBMITTED, outcome=AuditEvent.OK,
                   message=f"{declaration} taken by {job.server_url} (attempt {job.attempts})", attempts=job.attempts)
        elif status == Submission.PENDING:
            _event(declaration, DeclarationEvent.ATTEMPT_FAILED,
                   f"attempt {job.attempts} failed: {answer}; next attempt at "
                   f"{timezone.localtime(fields['next_attempt_at']):%H:%M:%S}", at=now)
        else:
            kind, code, text = {
                Submission.REFUSED: (DeclarationEvent.REFUSED, "REFUSED", f"refused by the exchange server: {answer}"),
                Submission.UNCONFIRMED: (DeclarationEvent.UNCONFIRMED, "UNCONFIRMED",
                                         f"sent, but no answer came ({answer}): the exchange server may or may not "
                                         "have it; a receipt will tell, else re-submit"),
                Submission.FAILED: (DeclarationEvent.GAVE_UP, "GAVE_UP",
                                    f"not sent after {job.attempts} attempt{'s' if job.attempts != 1 else ''}: "
                                    f"{answer}; re-submit once the exchange server can be reached"),
            }[status]
            if declaration.status in (Declaration.SIGNED, Declaration.SUBMITTED):
                _declaration_status(declaration, REJECTED if status == Submission.REFUSED else ATTENTION, text, now)
                declaration.save()
            _event(declaration, kind, text, at=now)
            _audit(declaration, event_type=AuditEvent.DECLARATION_SUBMIT_FAILED, outcome=code, message=text,
                   attempts=job.attempts, http_status=outcome.http_status)
    return status


def submissions_release(jobs: list[SubmissionJob]) -> None:
    """Give back claimed submissions whose request never left (shutdown): due at once, the
    attempt not counted."""
    for job in jobs:
        Submission.objects.filter(pk=job.id, status=Submission.SENDING, attempts=job.attempts).update(
            status=Submission.PENDING, attempts=F("attempts") - 1, next_attempt_at=timezone.now(), lease_until=None)


def submissions_recover(*, now: datetime.datetime | None = None) -> int:
    """Submissions whose lease ran out while being sent: the process sending them stopped
    (killed) and nobody knows whether the request left. They are not sent again (that could
    declare twice): they become "outcome unknown" and the declaration needs attention,
    unless a receipt already settled it."""
    now = now or timezone.now()
    stale = list(Submission.objects.filter(status=Submission.SENDING, lease_until__lt=now)
                 .values_list("pk", "declaration_id", "server_url", "message_type", "attempts"))
    for pk, declaration_id, server_url, message_type, attempts in stale:
        job = SubmissionJob(id=str(pk), declaration_id=declaration_id, server_url=server_url,
                            message_type=message_type, xml="", attempts=attempts, started=True)
        submission_finish(job, SubmitOutcome(SubmitOutcome.UNCONFIRMED,
                                             error="the platform stopped while sending it (lease expired)"), now=now)
    return len(stale)


# --- receipts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptTarget:
    server_url: str
    dxp_id: str
    message_type: str
    query_from: datetime.datetime


def receipt_targets(*, now: datetime.datetime | None = None) -> list[ReceiptTarget]:
    """The receipt endpoints worth asking now: those of declarations waiting for a receipt
    (submitted), or that changed within DECLARATION_RECEIPT_FOLLOW_HOURS (an accepted
    inventory is still released or inspected later). Each from its cursor, which starts a
    little before the oldest such declaration was submitted."""
    now = now or timezone.now()
    follow = now - datetime.timedelta(hours=float(settings.DECLARATION_RECEIPT_FOLLOW_HOURS))
    overlap = datetime.timedelta(seconds=float(settings.DECLARATION_RECEIPT_OVERLAP_SECONDS))
    rows = (Declaration.objects
            .filter(Q(status=Declaration.SUBMITTED) | Q(status__in=[ACCEPTED, ATTENTION], status_changed_at__gte=follow))
            .exclude(server_url="").exclude(dxp_id="")
            .values("server_url", "dxp_id", "message_type")
            .annotate(first=Min(Coalesce("submitted_at", "signed_at", "created_at"))).order_by())
    targets = []
    for row in rows:
        start = (row["first"] or now) - overlap
        cursor, _ = ReceiptCursor.objects.get_or_create(server_url=row["server_url"], dxp_id=row["dxp_id"],
                                                        message_type=row["message_type"],
                                                        defaults={"query_from": start})
        query_from = min(cursor.query_from, now - datetime.timedelta(seconds=1))  # "before now", says the exchange
        targets.append(ReceiptTarget(row["server_url"], row["dxp_id"], row["message_type"], query_from))
    return targets


def _fingerprint(record: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _match(target: ReceiptTarget, facts) -> tuple[Declaration | None, str]:
    candidates = Declaration.objects.select_for_update().filter(message_type=target.message_type,
                                                                dxp_id=target.dxp_id).order_by("-created_at")
    if facts.guids:
        found = candidates.filter(Q(guid__in=facts.guids) | Q(head_guid__in=facts.guids)).first()
        if found:
            return found, "guid"
    for name, column in (("preNo", "pre_no"), ("invtNo", "invt_no")):
        if facts.keys.get(name) and (found := candidates.filter(**{column: facts.keys[name]}).first()):
            return found, name
    if facts.customs_ref and (found := candidates.filter(customs_ref=facts.customs_ref).first()):
        return found, "exchange reference"
    if facts.names_message:
        # It names the message it answers (re_order_guid, ...) and that is none of ours: an
        # older message (before a re-submission, say), not another one with the same number.
        return None, ""
    for key, qualifier in MATCH_KEYS[target.message_type]:
        value = facts.keys.get(key)
        if not value:
            continue
        rows = list(candidates.filter(**{KEY_COLUMNS[key]: value})[:20])
        if facts.keys.get(qualifier):
            rows = [d for d in rows if getattr(d, KEY_COLUMNS[qualifier]) in ("", facts.keys[qualifier])]
        if rows:
            return rows[0], key
    return None, ""


def _receipt_apply(declaration: Declaration, receipt: Receipt, facts, meaning: str, now: datetime.datetime) -> None:
    """What a receipt does to its declaration: it learns the references customs gave (preNo,
    invtNo), and takes the receipt's outcome unless a later receipt already decided it; a
    receipt that says "in progress" never undoes an outcome."""
    for name, column in (("preNo", "pre_no"), ("invtNo", "invt_no")):
        if facts.keys.get(name) and not getattr(declaration, column):
            setattr(declaration, column, facts.keys[name][:18])
    if facts.customs_ref and not declaration.customs_ref:
        declaration.customs_ref = facts.customs_ref[:64]
    latest = (declaration.receipts.exclude(pk=receipt.pk).exclude(outcome=PROGRESS)
              .order_by(F("return_time").desc(nulls_last=True)).first())
    when = receipt.return_time or now
    if declaration.status == Declaration.SIGNED:  # the OK was lost, but customs has it
        _declaration_status(declaration, Declaration.SUBMITTED, "a receipt shows the exchange server took it", now)
        declaration.submitted_at = declaration.submitted_at or now
    if receipt.outcome != PROGRESS and (latest is None or latest.return_time is None or when >= latest.return_time):
        _declaration_status(declaration, receipt.outcome, f"{receipt.return_status} {meaning}: {receipt.return_info}", now)
    declaration.return_status = receipt.return_status[:10]
    declaration.last_receipt_at = now
    declaration.save()
    if receipt.matched_by == "guid":
        # This very message reached customs: never send it again.
        Submission.objects.filter(declaration=declaration, status__in=[Submission.PENDING, Submission.UNCONFIRMED]) \
            .update(status=Submission.SENT, sent_at=now, reply="confirmed by a receipt", lease_until=None)


def receipts_record(*, target: ReceiptTarget, records: list[dict[str, str]],
                    polled_at: datetime.datetime) -> list[Receipt]:
    """Store the new receipt records of one poll (a record already kept is skipped), match
    each to a declaration (its guid, preNo/invtNo, then its key elements) and apply it; one
    audit event per receipt (the webhooks' declaration receipts), matched or not. The
    cursor moves to the poll's start less the overlap."""
    receipt_type, _ = RECEIPTS[target.message_type]
    stored = []
    for record in records:
        # One transaction per receipt: the audit chain's lock is taken last and held briefly, so
        # this never waits for a declaration while holding it (the worker's other writes take
        # the declaration first, then the chain: no deadlock).
        with transaction.atomic():
            # One worker at a time records a target's receipts (several may poll the same endpoint).
            ReceiptCursor.objects.select_for_update().filter(server_url=target.server_url, dxp_id=target.dxp_id,
                                                             message_type=target.message_type).first()
            receipt = _receipt_record_one(target, receipt_type, record)
            if receipt is not None:
                stored.append(receipt)
    overlap = datetime.timedelta(seconds=float(settings.DECLARATION_RECEIPT_OVERLAP_SECONDS))
    ReceiptCursor.objects.filter(server_url=target.server_url, dxp_id=target.dxp_id,
                                 message_type=target.message_type).update(
        query_from=max(target.query_from, polled_at - overlap), last_polled_at=polled_at, last_ok_at=polled_at,
        last_error="", last_count=len(records))
    return stored


def _receipt_record_one(target: ReceiptTarget, receipt_type: str, record: dict[str, str]) -> Receipt | None:
    fingerprint = _fingerprint(record)
    if Receipt.objects.filter(dxp_id=target.dxp_id, receipt_type=receipt_type, fingerprint=fingerprint).exists():
        return None
    now = timezone.now()
    facts = receipt_facts(record)
    outcome, meaning = receipt_outcome(facts.return_status)
    declaration, matched_by = _match(target, facts)
    receipt = Receipt.objects.create(
        receipt_type=receipt_type, server_url=target.server_url, dxp_id=target.dxp_id, fingerprint=fingerprint,
        declaration=declaration, matched_by=matched_by, return_status=facts.return_status[:10],
        return_info=facts.return_info, return_time=facts.return_time, outcome=outcome, record=record, received_at=now,
    )
    text = f"{receipt_type} {facts.return_status} {meaning}: {facts.return_info}"
    if declaration is not None:
        _receipt_apply(declaration, receipt, facts, meaning, now)
        _event(declaration, DeclarationEvent.RECEIPT, text, at=now, receipt=receipt)
        _audit(declaration, event_type=AuditEvent.DECLARATION_RECEIPT, outcome=outcome.upper(), message=text,
               receipt=receipt.pk, return_status=facts.return_status, return_info=facts.return_info[:300],
               matched_by=matched_by)
    else:
        audit_event_record(
            event_type=AuditEvent.DECLARATION_RECEIPT, source="declarations", outcome="UNMATCHED",
            message=f"{text} (matches no declaration)",
            details={"receipt": receipt.pk, "receipt_type": receipt_type, "dxp_id": target.dxp_id,
                     "return_status": facts.return_status, "return_info": facts.return_info[:300],
                     "guids": list(facts.guids), "keys": facts.keys},
        )
    return receipt


def receipt_poll_failed(*, target: ReceiptTarget, error: str, polled_at: datetime.datetime) -> None:
    ReceiptCursor.objects.filter(server_url=target.server_url, dxp_id=target.dxp_id,
                                 message_type=target.message_type).update(last_polled_at=polled_at,
                                                                           last_error=error[:500])


# --- re-submitting after a fix -----------------------------------------------------------------------------

RESUBMITTABLE = (Declaration.SIGNED, REJECTED, ATTENTION)


@dataclass
class ResubmitPlan:
    declaration: Declaration
    prepared: PreparedDeclaration | None  # None: send the signed XML as it is
    target: CardTarget | None


def declaration_resubmit_plan(*, declaration: Declaration) -> ResubmitPlan:
    """What re-submitting will do: a declaration built from JSON is built again (new guids,
    the current registration's BaseTransfer) and must be signed again; one received as XML
    is sent again as it was signed. Raises DeclarationError when it may not be re-submitted."""
    if declaration.status not in RESUBMITTABLE:
        raise DeclarationError(_("a %(status)s declaration is not re-submitted (only signed, rejected or "
                                 "needs-attention ones)") % {"status": declaration.get_status_display()})
    if declaration.submissions.filter(status=Submission.SENDING).exists():
        raise DeclarationError(_("it is being sent right now; look again in a few seconds"))
    if declaration.source == Declaration.FROM_XML:
        if not (declaration.server_url or settings.CUSTOMS_CEB_SERVER):
            raise DeclarationError(_("no customs exchange server is configured (CUSTOMS_CEB_SERVER)"))
        return ResubmitPlan(declaration=declaration, prepared=None, target=None)
    access = declaration.access_id
    registration = registration_for(access_pk=access.pk, pool_slug=declaration.pool or None)
    try:
        prepared = declaration_prepare(message_type=declaration.message_type,
                                       data=declaration_json_load(declaration.data), registration=registration,
                                       submit=True)
        target = card_target_choose(devices=tuple(access.devices.values_list("slug", flat=True)),
                                    pools=tuple(access.pools.values_list("slug", flat=True)),
                                    requested=declaration.pool or None)  # its pool, else the access ID's card
    except ApiError as exc:
        fields = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in exc.details.get("fields", {}).items())
        raise DeclarationError(exc.message + (f" ({fields})" if fields else "")) from None
    except UKeyError as exc:
        raise DeclarationError(_("its card cannot be used: %(error)s") % {"error": exc.message}) from None
    return ResubmitPlan(declaration=declaration, prepared=prepared, target=target)


def declaration_resubmit_commit(*, plan: ResubmitPlan, signed: CebSignResult | None, pool: str = "",
                                context: ChangeContext = COMMAND) -> Declaration:
    """Queue the re-submission: earlier unsent submissions are superseded; a rebuilt message
    becomes the next version of the declaration's document; one audit event."""
    now = timezone.now()
    with transaction.atomic():
        declaration = Declaration.objects.select_for_update().get(pk=plan.declaration.pk)
        if declaration.status not in RESUBMITTABLE:
            raise DeclarationError(_("it became %(status)s meanwhile") % {"status": declaration.get_status_display()})
        if declaration.submissions.filter(status=Submission.SENDING).exists():
            raise DeclarationError(_("it is being sent right now; look again in a few seconds"))
        declaration.submissions.filter(status__in=[Submission.PENDING, Submission.UNCONFIRMED]).update(
            status=Submission.SUPERSEDED, lease_until=None)
        prepared = plan.prepared
        if prepared is not None and signed is not None:
            document = xml_document_write(
                access_id=declaration.access_id_id, directory=declaration.document.directory,
                filename=declaration.document.filename, content=signed.signed_xml, request_id=context.request_id,
                source="admin" if context.source == "admin" else "api", message_type=prepared.message_type,
                signature=_signature(prepared, signed), checked=True)
            declaration.document, declaration.document_version = document, document.version
            declaration.guid, declaration.head_guid = prepared.guid, prepared.head_guid
            _keys_apply(declaration, prepared.keys)
            declaration.pre_no = declaration.invt_no = declaration.customs_ref = ""
            declaration.registration, declaration.cop_code = prepared.registration, prepared.cop_code
            declaration.dxp_id, declaration.server_url = prepared.dxp_id, prepared.server_url
            declaration.device, declaration.pool, declaration.cert_no = signed.device, pool, signed.cert_no
            declaration.signed_at = now
            xml = signed.signed_xml
            what = (f"built again (guid {prepared.guid}, BaseTransfer {prepared.cop_code}/{prepared.dxp_id}) and "
                    f"signed by card {signed.device}, stored as {document.path} v{document.version}")
        else:
            declaration.server_url = declaration.server_url or settings.CUSTOMS_CEB_SERVER
            xml = declaration.document.content
            what = "the signed message is sent again as it is"
        declaration.resubmissions += 1
        declaration.submitted_at = None
        declaration.return_status = ""
        _declaration_status(declaration, Declaration.SIGNED, "re-submitted", now)
        declaration.save()
        who = getattr(context.actor, "get_username", lambda: "")() or context.source
        _event(declaration, DeclarationEvent.RESUBMITTED, f"re-submitted by {who}: {what}", at=now)
        _submission_queue(declaration, xml, now)
        context.record(event_type=AuditEvent.DECLARATION_RESUBMITTED, access_id=declaration.access_id_id,
                       device=declaration.device, cert_no=declaration.cert_no,
                       message=f"{declaration} re-submitted: {what}",
                       details={"declaration": declaration.pk, "message_type": declaration.message_type,
                                "guid": declaration.guid, "resubmissions": declaration.resubmissions})
    return declaration


def declaration_resubmit(*, declaration: Declaration, context: ChangeContext = COMMAND) -> Declaration:
    """Re-submit after a fix (a corrected registration or exchange server): plan, sign again
    with a card when the message is rebuilt, queue. Call from synchronous code (the admin)."""
    plan = declaration_resubmit_plan(declaration=declaration)
    signed, trace = None, {}
    if plan.prepared is not None:
        signed = async_to_sync(declaration_sign)(xml=plan.prepared.xml, target=plan.target,
                                                 owner=declaration.access_id.key, trace=trace)
    return declaration_resubmit_commit(plan=plan, signed=signed, pool=trace.get("pool", ""), context=context)
