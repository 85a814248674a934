"""The access system profile's settings, keys and certificates (docs/client-profiles.md, acs):
the operations behind the admin's four buttons — set key, use new key, generate certificate,
upload encryption certificate — and the party's settings. Each writes its audit event in the
same transaction; keys and private keys are stored encrypted under the master key and never
written to an event (only a fingerprint)."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext
from core import acs_crypto
from core.encryption import secret_decrypt, secret_encrypt

from .models import AccessId, AcsParty
from .services import AccessIdError

KEY_PURPOSE = "acs-key"
PRIVATE_KEY_PURPOSE = "acs-private-key"
ACCEPTED_RSA_BITS = (1024, 2048, 3072, 4096)
CERT_DAYS = 3 * 365
MAX_GRACE = datetime.timedelta(days=7)
SETTINGS = ("sender_code", "encryption", "signature", "token_required", "open_confirmed")


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(b"signplatform-acs-key:" + key.encode("utf-8")).hexdigest()[:12]


def _party(access_id: AccessId) -> AcsParty:
    party = AcsParty.objects.select_for_update().filter(access_id=access_id).first()
    if party is None:
        raise AccessIdError(f"{access_id.key} has no access system settings yet: set its sender code first")
    return party


@transaction.atomic
def acs_settings_set(*, access_id: AccessId, context: ChangeContext = COMMAND, **changes: Any) -> AcsParty:
    """Create or change the party's settings (`sender_code`, `encryption`, `signature`,
    `token_required`, `open_confirmed`). A party with no token, no signature and no encryption
    is refused unless `open_confirmed` says the administrator wants it so."""
    unknown = sorted(set(changes) - set(SETTINGS))
    if unknown:
        raise AccessIdError(f"unknown setting(s) {', '.join(unknown)}")
    party = AcsParty.objects.select_for_update().filter(access_id=access_id).first()
    created = party is None
    if created:
        if not (changes.get("sender_code") or "").strip():
            raise AccessIdError("a new access system party needs its sender code (Ccode)")
        party = AcsParty(access_id=access_id)
    before = {name: getattr(party, name) for name in SETTINGS}
    for name, value in changes.items():
        if value is not None:
            setattr(party, name, value.strip() if isinstance(value, str) else value)
    if party.encryption not in acs_crypto.MODES:
        raise AccessIdError(f"encryption {party.encryption!r}: choose from {', '.join(acs_crypto.MODES)}")
    if party.signature not in (AcsParty.MD5, AcsParty.NONE_SIGNATURE):
        raise AccessIdError("signature: md5 or none")
    if not party.sender_code or len(party.sender_code) > 32 or not party.sender_code.isprintable():
        raise AccessIdError("the sender code is 1-32 printable characters")
    holder = AcsParty.objects.filter(sender_code=party.sender_code).exclude(pk=party.pk).first()
    if holder is not None:
        raise AccessIdError(f"the sender code {party.sender_code} already belongs to {holder.access_id.key}")
    if party.fully_open and not party.open_confirmed:
        raise AccessIdError("no token, no signature and no encryption: anyone knowing the sender code could sign; "
                            "confirm that this party is fully open (--open) or keep one of them")
    party.save()
    changed = sorted(name for name in SETTINGS if getattr(party, name) != before[name])
    if changed:
        context.record(
            event_type=AuditEvent.ACS_CHANGED, access_id=access_id, profile="acs",
            message=("created: " if created else "") + ", ".join(f"{n} {getattr(party, n)}" for n in changed),
            details={"changed": changed, **{n: getattr(party, n) for n in SETTINGS}, "fully_open": party.fully_open},
        )
    return party


def _key_check(party: AcsParty, key: str) -> None:
    algorithm = acs_crypto.SYMMETRIC.get(party.encryption)
    if algorithm in ("aes", "des") and party.encryption in (acs_crypto.AES_MODE, acs_crypto.DES_MODE):
        try:
            acs_crypto.symmetric_key_bytes(key, algorithm)
        except acs_crypto.AcsCryptoError as exc:
            raise AccessIdError(str(exc)) from None
    elif len(key) < 16:
        raise AccessIdError("the key (the signature's SecretKey) is at least 16 characters")
    if key != key.strip() or not key.isprintable():
        raise AccessIdError("the key must be printable, without spaces at either end")


@transaction.atomic
def acs_key_set(*, access_id: AccessId, key: str = "", context: ChangeContext = COMMAND) -> str:
    """"Set key": store `key` (generated when empty) as the pending key, to be made current by
    `acs_key_use_new`. Returns the key in clear, to show once."""
    party = _party(access_id)
    if not key:
        key = acs_crypto.symmetric_key_generate(
            "des" if party.encryption == acs_crypto.DES_MODE else "aes")
    _key_check(party, key)
    party.pending_key_encrypted = secret_encrypt(key, purpose=KEY_PURPOSE)
    party.save(update_fields=["pending_key_encrypted", "updated_at"])
    context.record(event_type=AuditEvent.ACS_KEY_SET, access_id=access_id, profile="acs",
                   message="pending key set", details={"fingerprint": key_fingerprint(key)})
    return key


@transaction.atomic
def acs_key_use_new(*, access_id: AccessId, grace: datetime.timedelta = datetime.timedelta(hours=24),
                    context: ChangeContext = COMMAND) -> AcsParty:
    """"Use new key": the pending key becomes current; the old current one stays valid for
    `grace` (none: at once invalid)."""
    if grace < datetime.timedelta(0) or grace > MAX_GRACE:
        raise AccessIdError("the grace period is between 0 and 7 days")
    party = _party(access_id)
    if not party.pending_key_encrypted:
        raise AccessIdError("there is no pending key: set one first")
    now = timezone.now()
    had_key = bool(party.key_encrypted)
    if had_key and grace > datetime.timedelta(0):
        party.previous_key_encrypted, party.previous_key_valid_until = party.key_encrypted, now + grace
    else:
        party.previous_key_encrypted, party.previous_key_valid_until = "", None
    party.key_encrypted, party.pending_key_encrypted = party.pending_key_encrypted, ""
    party.key_version += 1
    party.save()
    new = secret_decrypt(party.key_encrypted, purpose=KEY_PURPOSE)
    context.record(
        event_type=AuditEvent.ACS_KEY_USED, access_id=access_id, profile="acs",
        message=f"key version {party.key_version} in use"
        + (f"; the previous one valid until {party.previous_key_valid_until:%Y-%m-%d %H:%M}"
           if party.previous_key_valid_until else ""),
        details={"version": party.key_version, "fingerprint": key_fingerprint(new),
                 "grace_seconds": int(grace.total_seconds()) if had_key else 0},
    )
    return party


def acs_valid_keys(party: AcsParty, *, now: datetime.datetime | None = None) -> list[str]:
    """The symmetric keys a request may use now: the current one, the previous during grace."""
    now = now or timezone.now()
    keys = [secret_decrypt(party.key_encrypted, purpose=KEY_PURPOSE)] if party.key_encrypted else []
    if party.previous_key_encrypted and party.previous_key_valid_until and party.previous_key_valid_until > now:
        keys.append(secret_decrypt(party.previous_key_encrypted, purpose=KEY_PURPOSE))
    return keys


@transaction.atomic
def acs_cert_generate(*, access_id: AccessId, context: ChangeContext = COMMAND) -> str:
    """"Generate certificate": a new RSA key pair for this party (1024-bit for the RSA mode,
    2048-bit otherwise), the private key encrypted at rest; returns the public certificate
    (PEM) for the party."""
    party = _party(access_id)
    bits = acs_crypto.RSA_BITS.get(party.encryption, 2048)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "signplatform"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"acs {party.sender_code}")])
    now = timezone.now()
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS)).sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    party.private_key_encrypted = secret_encrypt(private, purpose=PRIVATE_KEY_PURPOSE)
    party.certificate_pem = pem
    party.save(update_fields=["private_key_encrypted", "certificate_pem", "updated_at"])
    context.record(
        event_type=AuditEvent.ACS_CERT_GENERATED, access_id=access_id, profile="acs",
        message=f"RSA-{bits} key pair generated",
        details={"bits": bits, "fingerprint": certificate.fingerprint(hashes.SHA256()).hex(),
                 "not_after": certificate.not_valid_after_utc.isoformat()},
    )
    return pem


def certificate_check(pem: str | bytes) -> x509.Certificate:
    """An uploaded encryption certificate: X.509 (PEM or DER), an RSA key of an accepted
    size, valid now. Raises AccessIdError saying what is wrong."""
    data = pem.encode("ascii", "ignore") if isinstance(pem, str) else pem
    try:
        certificate = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                       else x509.load_der_x509_certificate(data))
    except ValueError:
        raise AccessIdError("not an X.509 certificate (PEM or DER)") from None
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise AccessIdError("the certificate's key is not RSA")
    if public.key_size not in ACCEPTED_RSA_BITS:
        raise AccessIdError(f"an RSA key of {public.key_size} bits; accepted: {', '.join(map(str, ACCEPTED_RSA_BITS))}")
    now = timezone.now()
    if certificate.not_valid_after_utc <= now:
        raise AccessIdError(f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    if certificate.not_valid_before_utc > now:
        raise AccessIdError(f"the certificate is valid only from {certificate.not_valid_before_utc:%Y-%m-%d}")
    return certificate


@transaction.atomic
def acs_cert_upload(*, access_id: AccessId, pem: str | bytes, context: ChangeContext = COMMAND) -> AcsParty:
    """"Upload encryption certificate": the party's certificate, used to encrypt what goes
    back to it in the RSA modes."""
    certificate = certificate_check(pem)
    party = _party(access_id)
    party.party_certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    party.party_certificate_subject = certificate.subject.rfc4514_string()[:300]
    party.party_certificate_fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    party.party_certificate_not_after = certificate.not_valid_after_utc
    party.save()
    context.record(
        event_type=AuditEvent.ACS_CERT_UPLOADED, access_id=access_id, profile="acs",
        message=f"encryption certificate {party.party_certificate_subject}",
        details={"subject": party.party_certificate_subject, "fingerprint": party.party_certificate_fingerprint,
                 "not_after": certificate.not_valid_after_utc.isoformat(),
                 "bits": certificate.public_key().key_size},
    )
    return party
