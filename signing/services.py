"""Card devices (the default one from the environment, PINs encrypted at rest) and the
card operations the API performs: sign, pass-through calls, the certificate."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext
from core.ceb import (
    XmlInputError,
    ceb_document_check,
    ceb_document_digest,
    ceb_signature_insert,
    ceb_signed_info,
    ceb_verify,
    signature_method_uri,
)
from core.certs import CertificateError, CertificateInfo, certificate_load, signature_verify, signature_verify_digest
from core.dbthread import db_sync_to_async
from core.encryption import secret_decrypt, secret_encrypt
from core.errors import invalid_request, xml_input_error
from core.pay179 import Pay179Error, pay179_parse, pay179_sign_string, pay179_upload, pay179_upload_form
from core.workpool import FairPool
from ukey.client import UKeyCardError
from ukey.protocol import SIGN_METHODS

from .cards import device_status_get, ukey_call, ukey_reset
from .models import CardDevice, CardPool
from .pools import PoolEnterpriseError, pool_enterprise_check, pools_forget

T = TypeVar("T")
PIN_PURPOSE = "card-pin"


def card_device_pin(*, device: CardDevice) -> str:
    """The device's PIN in clear, for the gateway only."""
    if not device.pin_encrypted:
        return ""
    return secret_decrypt(device.pin_encrypted, purpose=PIN_PURPOSE)


def card_device_set_pin(*, device: CardDevice, pin: str, save: bool = True) -> CardDevice:
    """Store a new PIN (encrypted); an empty PIN removes it."""
    device.pin_encrypted = secret_encrypt(pin, purpose=PIN_PURPOSE) if pin else ""
    if save:
        device.save(update_fields=["pin_encrypted", "updated_at"])
    return device


@transaction.atomic
def card_device_create(*, slug: str, name: str = "", transport: str = CardDevice.TRANSPORT_URL, url: str = "",
                       pin: str = "", context: ChangeContext = COMMAND, **fields) -> CardDevice:
    """A new card device (validated), its PIN encrypted, with its audit event."""
    device = CardDevice(slug=slug, name=name, transport=transport, url=url, **fields)
    device.full_clean(exclude=["pin_encrypted"])
    card_device_set_pin(device=device, pin=pin, save=False)
    device.save(force_insert=True)
    context.record(event_type=AuditEvent.CARD_DEVICE_CREATED, device=device.slug,
                   details={"transport": device.transport, "url": device.url, "pin_set": device.has_pin})
    return device


@transaction.atomic
def card_pool_create(*, slug: str, devices: list[CardDevice], name: str = "", enterprise: str = "",
                     context: ChangeContext = COMMAND) -> CardPool:
    """A new card pool (validated; its cards must belong to one enterprise), with its audit event."""
    pool = CardPool(slug=slug, name=name, enterprise=enterprise)
    pool.full_clean(exclude=["devices"])
    try:
        pool.enterprise = pool_enterprise_check(devices=[d.slug for d in devices], enterprise=enterprise)
    except PoolEnterpriseError as exc:
        raise ValidationError({"devices": [str(exc)]}) from None
    pool.save(force_insert=True)
    pool.devices.set(devices)
    pools_forget()
    context.record(event_type=AuditEvent.CARD_POOL_CREATED, device=pool.slug,
                   details={"cards": sorted(d.slug for d in devices), "enterprise": pool.enterprise})
    return pool


def default_device_url() -> str:
    return settings.UKEY_URL or f"ws://127.0.0.1:{settings.UKEY_SIMULATOR_PORT}"


def default_device_pin() -> str:
    return settings.UKEY_PIN if settings.UKEY_URL else settings.UKEY_SIMULATOR_PIN


@transaction.atomic
def card_device_sync_default() -> CardDevice:
    """Create or update the default device from UKEY_URL / UKEY_PIN (or the simulator's
    address and PIN when no UKEY_URL is set). The environment owns this device's URL and PIN."""
    device, created = CardDevice.objects.select_for_update().get_or_create(
        slug=settings.UKEY_DEFAULT_DEVICE,
        defaults={
            "name": "Default card" if settings.UKEY_URL else "Card simulator",
            "url": default_device_url(),
            "connect_timeout": settings.UKEY_CONNECT_TIMEOUT,
            "request_timeout": settings.UKEY_REQUEST_TIMEOUT,
            "queue_size": settings.UKEY_QUEUE_SIZE,
            "pipeline_depth": settings.UKEY_PIPELINE_DEPTH,
        },
    )
    pin = default_device_pin()
    changed = created or device.url != default_device_url()
    device.url = default_device_url()
    try:
        current_pin = card_device_pin(device=device)
    except Exception:  # unreadable under this master key: replace it
        current_pin = None
    if current_pin != pin:
        card_device_set_pin(device=device, pin=pin, save=False)
        changed = True
    if changed:
        device.save()
    return device


# --- Card operations for the API ---------------------------------------------------------


@dataclass(frozen=True)
class SignResult:
    signature: str
    cert_no: str
    algorithm: str
    device: str


async def data_sign(*, data: str, no_hash: bool, device: str, fallback_pin: str | None = None) -> SignResult:
    """Sign text with the card: `SpcSignDataAsPEM` (the card hashes), or with `no_hash`
    the hex SHA-1 of the UTF-8 text sent to `SpcSignDataNoHashAsPEM`. `fallback_pin`
    (legacy clients) is used only when the device has no PIN configured. The signature is
    verified over this caller's data with the card's certificate before it is returned."""
    if no_hash:
        method, in_data = "cus-sec_SpcSignDataNoHashAsPEM", hashlib.sha1(data.encode("utf-8")).hexdigest()
    else:
        method, in_data = "cus-sec_SpcSignDataAsPEM", data
    response = await ukey_call(method, {"inData": in_data}, device=device, fallback_pin=fallback_pin)
    values = response.result.data
    if not values or not isinstance(values[0], str):
        raise UKeyCardError(f"card {device} answered {method} without a signature", device=device)
    cert_no = str(values[1]) if len(values) > 1 else response.cert_no
    await signature_check(device=device, method=method, in_data=in_data, signature=values[0], cert_no=cert_no)
    return SignResult(signature=values[0], cert_no=cert_no, algorithm=response.algorithm, device=device)


_certificates: dict[tuple[str, str], tuple[float, CertificateInfo]] = {}
_CERTIFICATE_TTL = 300.0


async def _certificate_for(device: str, cert_no: str) -> CertificateInfo | None:
    """The card's certificate, if its certNo is `cert_no` (kept in this process a while)."""
    now = time.monotonic()
    cached = _certificates.get((device, cert_no))
    if cached and now - cached[0] < _CERTIFICATE_TTL:
        return cached[1]
    current = await certificate_get(device=device)
    if current["cert_no"] != cert_no:
        return None
    info = certificate_load(current["certificate_pem"])
    _certificates[(device, cert_no)] = (now, info)
    return info


async def signature_check(*, device: str, method: str, in_data: str, signature: str, cert_no: str) -> None:
    """A signature from the card is handed out only if it verifies over what this caller
    sent, with the certificate of the card that claims to have made it. Otherwise the
    answers were mixed up somewhere (the control, a relay): the connection is reset, a
    card.error event written by the gateway, and the caller gets UKEY_ERROR."""
    info = await _certificate_for(device, cert_no)
    if info is None:
        valid, why = False, f"certNo {cert_no!r} is not the card's"
    elif method == "cus-sec_SpcSignDataNoHashAsPEM":
        try:
            digest = bytes.fromhex(in_data)
        except ValueError:
            digest = b""
        valid, why = signature_verify_digest(info, digest, signature), "the signature does not verify over this digest"
    else:
        valid, why = signature_verify(info, in_data.encode("utf-8"), signature), \
            "the signature does not verify over this request's data"
    if not valid:
        await ukey_reset(device, reason=f"{method}: {why} (answer mixed up with another request?)")
        error = UKeyCardError(f"card {device} returned a signature that was not handed out: {why}", device=device)
        error.not_done = True
        raise error


async def card_rpc(*, method: str, args: dict[str, Any], device: str) -> dict[str, Any]:
    """Run an allowed card method; returns the card's envelope. A `Result:false` answer
    raises UKeyCardError carrying the envelope."""
    clean = {k: v for k, v in args.items() if k != "passwd"}
    response = await ukey_call(method, clean, device=device, raise_card_errors=False)
    envelope = {"_method": method, "_status": "00", "_args": response.result.as_args()}
    data = response.result.data
    if response.result.ok and method in SIGN_METHODS:
        if not data or not isinstance(data[0], str) or not isinstance(clean.get("inData"), str):
            raise UKeyCardError(f"card {device} answered {method} without a signature", device=device)
        await signature_check(device=device, method=method, in_data=clean["inData"], signature=data[0],
                              cert_no=str(data[1]) if len(data) > 1 else response.cert_no)
    if not response.result.ok:
        error = UKeyCardError(f"card {device} refused {method}: {response.result.message}", device=device,
                              errors=response.result.errors)
        error.envelope = envelope
        raise error
    return envelope


async def certificate_get(*, device: str) -> dict[str, Any]:
    """The card's signing certificate and what it says, cached per device and certNo."""
    current = device_status_get(device)
    cert_no = current.cert_no if current else ""
    cache_key = f"ukey:cert:{device}:{cert_no}"
    if cert_no:
        cached = await cache.aget(cache_key)
        if cached:
            return cached
    response = await ukey_call("cus-sec_SpcGetSignCertAsPEM", device=device)
    try:
        info = certificate_load(str(response.result.data[0]))
    except (CertificateError, IndexError):
        raise UKeyCardError(f"card {device} returned no readable certificate", device=device) from None
    if not cert_no:
        cert_no = str((await ukey_call("cus-sec_SpcGetCertNo", device=device)).result.data[0])
    ent_name = current.ent_name if current and current.ent_name else ""
    if not ent_name:
        ent = await ukey_call("cus-sec_SpcGetEntName", device=device, raise_card_errors=False)
        ent_name = str(ent.result.data[0]) if ent.result.ok and ent.result.data else ""
    result = {
        "cert_no": cert_no,
        "algorithm": info.algorithm,
        "certificate_pem": info.pem,
        "subject": info.subject,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "ent_name": ent_name,
        "device": device,
    }
    await cache.aset(f"ukey:cert:{device}:{cert_no}", result, 300)  # under the certNo now known
    return result


# --- Customs payloads: CEB XML messages and 179 payment data -------------------------------


@dataclass(frozen=True)
class CebSignResult:
    signed_xml: str
    message_type: str
    digest_value: str
    signature_value: str
    signature_method: str
    cert_no: str
    algorithm: str
    device: str


_xml_pool: FairPool | None = None


def xml_work_slot(owner: str):
    """A slot of the XML work pool (XML_WORK_CONCURRENCY at once; one access ID at most half
    of them): lxml work on a multi-megabyte message runs in a thread, never on the event loop,
    and never more of it than memory and CPU allow."""
    global _xml_pool
    if _xml_pool is None or _xml_pool.size != settings.XML_WORK_CONCURRENCY:
        _xml_pool = FairPool(settings.XML_WORK_CONCURRENCY)
    return _xml_pool.slot(owner)


def card_signature_method_override(*, device: str) -> str:
    """The device's configured XML SignatureMethod ("" = from the certificate)."""
    return CardDevice.objects.filter(slug=device).values_list("signature_method", flat=True).first() or ""


_OVERRIDE_TTL = 2.0  # an admin's change takes effect within this (as card changes do)
_overrides: dict[str, tuple[float, str]] = {}


async def card_signature_method_override_recent(*, device: str) -> str:
    """`card_signature_method_override`, read at most every 2 s in this process (no database
    trip for every signed document)."""
    cached = _overrides.get(device)
    if cached and time.monotonic() - cached[0] < _OVERRIDE_TTL:
        return cached[1]
    value = await db_sync_to_async(card_signature_method_override)(device=device)
    _overrides[device] = (time.monotonic(), value)
    return value


# CEB documents up to this size are parsed and checked on the event loop: for them the
# hand-over to a thread costs more than the work (~0.1-1 ms); bigger ones go to a thread.
XML_INLINE_BYTES = 64 * 1024


async def _xml_work(owner: str, size: int, work: Callable[[], T]) -> T:
    async with xml_work_slot(owner):
        return work() if size <= XML_INLINE_BYTES else await asyncio.to_thread(work)


async def ceb_xml_sign(*, xml: str, device: str, owner: str, signature_method: str = "") -> CebSignResult:
    """Sign a CEB message (docs/ceb-xml-and-179.md §1) and verify the result before
    returning it. `owner` (the access ID) shares the XML work pool fairly. Refuses hostile or unsuitable XML with INVALID_REQUEST; a signature that
    does not verify with the card's certificate is never returned (UKEY_ERROR)."""
    def prepare():
        document = ceb_document_check(xml)
        return document, ceb_document_digest(document)

    try:
        document, digest = await _xml_work(owner, len(xml), prepare)
    except XmlInputError as exc:
        raise xml_input_error(exc) from None
    message_type = document.message_type
    status = device_status_get(device)
    certificate = await _certificate_for(device, status.cert_no) if status and status.cert_no else None
    if certificate is None:
        certificate = certificate_load((await certificate_get(device=device))["certificate_pem"])
    method_uri = signature_method_uri(certificate.algorithm, signature_method)
    signed_info = ceb_signed_info(signature_method_uri=method_uri, digest=digest)
    signed = await data_sign(data=signed_info, no_hash=False, device=device)
    der_b64 = certificate.der_base64

    def assemble():
        text = ceb_signature_insert(
            xml, signed_info=signed_info, signature_value=signed.signature, cert_no=signed.cert_no,
            certificate_b64=der_b64, document=document,
        )
        return text, ceb_verify(text)

    signed_xml, check = await _xml_work(owner, len(xml), assemble)
    if not check.valid:
        raise UKeyCardError(
            f"card {device} produced a signature that does not verify, so it was not returned: {check.reason}",
            device=device,
        )
    return CebSignResult(
        signed_xml=signed_xml,
        message_type=message_type,
        digest_value=digest,
        signature_value=signed.signature,
        signature_method=method_uri,
        cert_no=signed.cert_no,
        algorithm=signed.algorithm,
        device=device,
    )


@dataclass(frozen=True)
class Pay179SignResult:
    sign_string: str
    signature: str
    cert_no: str
    upload: dict[str, Any] | None
    device: str


async def pay179_sign(*, raw_body: bytes, upload: bool,
                      on_card: Callable[[Callable[[str], Awaitable[SignResult]]], Awaitable[SignResult]],
                      session_field: str = "sessionID", ignored: tuple[str, ...] = ("upload",),
                      ) -> Pay179SignResult:
    """Build the exact 179 string (ceb-xml-and-179.md §2), sign it with the card that
    `on_card(sign)` runs `sign(device)` on, and when asked post it to customs
    (CUSTOMS_179_UPLOAD_URL) once it is signed; the upload's outcome is reported, never
    raised: the signature stays valid whatever customs answers."""
    try:
        payload = pay179_parse(raw_body, session_field=session_field, ignored=ignored)
        sign_string = pay179_sign_string(payload)
    except Pay179Error as exc:
        raise invalid_request(exc.message, exc.field_errors) from None
    signed = await on_card(lambda device: data_sign(data=sign_string, no_hash=False, device=device))
    report = None
    if upload:
        result = await pay179_upload(
            url=settings.CUSTOMS_179_UPLOAD_URL,
            pay_ex_info_str=pay179_upload_form(payload, cert_no=signed.cert_no, sign_value=signed.signature),
            timeout=settings.CUSTOMS_179_UPLOAD_TIMEOUT,
        )
        report = {
            "ok": result.ok,
            "url": result.url,
            "http_status": result.http_status,
            "code": result.code,
            "message": result.message,
            "reply": result.reply,
            "error": result.error,
            "duration_ms": result.duration_ms,
        }
    return Pay179SignResult(sign_string=sign_string, signature=signed.signature, cert_no=signed.cert_no,
                            upload=report, device=signed.device)
