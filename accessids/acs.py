"""The access system profile's settings, keys and certificates (docs/client-profiles.md, acs):
the operations behind the admin's four buttons — set key, use new key, generate certificate,
upload encryption certificate — and the party's settings. Each writes its audit event in the
same transaction; keys and private keys are stored encrypted under the master key and never
written to an event (only a fingerprint)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext
from core import acs_crypto
from core.encryption import secret_decrypt, secret_encrypt

from .models import AccessId, AcsParty, AcsToken
from .secrets import AppSecretService
from .services import AccessIdError

logger = logging.getLogger(__name__)

KEY_PURPOSE = "acs-key"
PRIVATE_KEY_PURPOSE = "acs-private-key"
ACCEPTED_RSA_BITS = (1024, 2048, 3072, 4096)
CERT_DAYS = 3 * 365
MAX_GRACE = datetime.timedelta(days=7)
SETTINGS = ("sender_code", "encryption", "signature", "token_required", "open_confirmed")
TOKEN_LIFE = datetime.timedelta(hours=2)
MAX_TOKENS = 200  # valid tokens per party
CACHE_TTL = 300


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(b"signplatform-acs-key:" + key.encode("utf-8")).hexdigest()[:12]


def _party(access_id: AccessId) -> AcsParty:
    party = AcsParty.objects.select_for_update().filter(access_id=access_id).first()
    if party is None:
        raise AccessIdError(_("%(key)s has no access system settings yet: set its sender code first")
                            % {"key": access_id.key})
    return party


@transaction.atomic
def acs_settings_set(*, access_id: AccessId, context: ChangeContext = COMMAND, **changes: Any) -> AcsParty:
    """Create or change the party's settings (`sender_code`, `encryption`, `signature`,
    `token_required`, `open_confirmed`). A party with no token, no signature and no encryption
    is refused unless `open_confirmed` says the administrator wants it so."""
    unknown = sorted(set(changes) - set(SETTINGS))
    if unknown:
        raise AccessIdError(_("unknown setting(s) %(unknown)s") % {"unknown": ", ".join(unknown)})
    party = AcsParty.objects.select_for_update().filter(access_id=access_id).first()
    created = party is None
    if created:
        if not (changes.get("sender_code") or "").strip():
            raise AccessIdError(_("a new access system party needs its sender code (Ccode)"))
        party = AcsParty(access_id=access_id)
    before = {name: getattr(party, name) for name in SETTINGS}
    _party_changed(party.sender_code)
    for name, value in changes.items():
        if value is not None:
            setattr(party, name, value.strip() if isinstance(value, str) else value)
    if party.encryption not in acs_crypto.MODES:
        raise AccessIdError(_("encryption %(mode)s: choose from %(known)s")
                            % {"mode": repr(party.encryption), "known": ", ".join(acs_crypto.MODES)})
    if party.signature not in (AcsParty.MD5, AcsParty.NONE_SIGNATURE):
        raise AccessIdError(_("signature: md5 or none"))
    if not party.sender_code or len(party.sender_code) > 32 or not party.sender_code.isprintable():
        raise AccessIdError(_("the sender code is 1-32 printable characters"))
    holder = AcsParty.objects.filter(sender_code=party.sender_code).exclude(pk=party.pk).first()
    if holder is not None:
        raise AccessIdError(_("the sender code %(code)s already belongs to %(key)s")
                            % {"code": party.sender_code, "key": holder.access_id.key})
    if party.fully_open and not party.open_confirmed:
        raise AccessIdError(_("no token, no signature and no encryption: anyone knowing the sender code could sign; "
                              "confirm that this party is fully open (--open) or keep one of them"))
    party.save()
    _party_changed(party.sender_code)
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
        except acs_crypto.AcsCryptoError:
            size = acs_crypto.KEY_BYTES[algorithm]
            raise AccessIdError(_("a %(algorithm)s key is %(size)d characters (or %(digits)d hex digits)") % {
                "algorithm": algorithm.upper(), "size": size, "digits": 2 * size}) from None
    elif len(key) < 16:
        raise AccessIdError(_("the key (the signature's SecretKey) is at least 16 characters"))
    if key != key.strip() or not key.isprintable():
        raise AccessIdError(_("the key must be printable, without spaces at either end"))


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
    _party_changed(party.sender_code)
    context.record(event_type=AuditEvent.ACS_KEY_SET, access_id=access_id, profile="acs",
                   message="pending key set", details={"fingerprint": key_fingerprint(key)})
    return key


@transaction.atomic
def acs_key_use_new(*, access_id: AccessId, grace: datetime.timedelta = datetime.timedelta(hours=24),
                    context: ChangeContext = COMMAND) -> AcsParty:
    """"Use new key": the pending key becomes current; the old current one stays valid for
    `grace` (none: at once invalid)."""
    if grace < datetime.timedelta(0) or grace > MAX_GRACE:
        raise AccessIdError(_("the grace period is between 0 and 7 days"))
    party = _party(access_id)
    if not party.pending_key_encrypted:
        raise AccessIdError(_("there is no pending key: set one first"))
    now = timezone.now()
    had_key = bool(party.key_encrypted)
    if had_key and grace > datetime.timedelta(0):
        party.previous_key_encrypted, party.previous_key_valid_until = party.key_encrypted, now + grace
    else:
        party.previous_key_encrypted, party.previous_key_valid_until = "", None
    party.key_encrypted, party.pending_key_encrypted = party.pending_key_encrypted, ""
    party.key_version += 1
    party.save()
    # Tokens issued under a key that is no longer valid end now (those of the previous key
    # live on during its grace period).
    oldest_valid = party.key_version - 1 if party.previous_key_valid_until else party.key_version
    AcsToken.objects.filter(party=party, key_version__lt=oldest_valid).delete()
    _party_changed(party.sender_code)
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
    _party_changed(party.sender_code)
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
        raise AccessIdError(_("not an X.509 certificate (PEM or DER)")) from None
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise AccessIdError(_("the certificate's key is not RSA"))
    if public.key_size not in ACCEPTED_RSA_BITS:
        raise AccessIdError(_("an RSA key of %(bits)s bits; accepted: %(accepted)s")
                            % {"bits": public.key_size, "accepted": ", ".join(map(str, ACCEPTED_RSA_BITS))})
    now = timezone.now()
    if certificate.not_valid_after_utc <= now:
        raise AccessIdError(_("the certificate expired on %(date)s")
                            % {"date": f"{certificate.not_valid_after_utc:%Y-%m-%d}"})
    if certificate.not_valid_before_utc > now:
        raise AccessIdError(_("the certificate is valid only from %(date)s")
                            % {"date": f"{certificate.not_valid_before_utc:%Y-%m-%d}"})
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
    _party_changed(party.sender_code)
    context.record(
        event_type=AuditEvent.ACS_CERT_UPLOADED, access_id=access_id, profile="acs",
        message=f"encryption certificate {party.party_certificate_subject}",
        details={"subject": party.party_certificate_subject, "fingerprint": party.party_certificate_fingerprint,
                 "not_after": certificate.not_valid_after_utc.isoformat(),
                 "bits": certificate.public_key().key_size},
    )
    return party


# --- at request time: the party as a request needs it, its keys, its tokens -----------------

def _cache_key(sender_code: str) -> str:
    return "acs:party:" + hashlib.sha256(sender_code.encode("utf-8")).hexdigest()[:32]


def _party_changed(sender_code: str) -> None:
    """Drop the cached look-up once the change is committed (every process reads it anew)."""
    if sender_code:
        transaction.on_commit(lambda: _cache_call("delete", _cache_key(sender_code)))


def _cache_call(operation: str, *args):
    try:
        return getattr(cache, operation)(*args)
    except Exception as exc:  # the cache only speeds look-ups up
        logger.warning("access system cache unavailable (%s): %s", operation, type(exc).__name__)
        return None


@dataclass(frozen=True)
class AcsPartyInfo:
    """What a request of the access system profile needs to know about its party (keys
    still encrypted: they are decrypted per request, in memory only)."""

    pk: int
    access_key: str
    access_pk: int
    sender_code: str
    token_required: bool
    signature: str
    encryption: str
    key_version: int
    key_encrypted: str
    previous_key_encrypted: str
    previous_key_valid_until: datetime.datetime | None
    private_key_encrypted: str
    party_certificate_pem: str

    @property
    def signed(self) -> bool:
        return self.signature == AcsParty.MD5

    def previous_key_valid(self, now: datetime.datetime) -> bool:
        return bool(self.previous_key_encrypted and self.previous_key_valid_until
                    and self.previous_key_valid_until > now)


def acs_party_lookup(sender_code: str) -> AcsPartyInfo | None:
    """The party with this sender code (Ccode), or None; cached, dropped on every change."""
    if not sender_code or len(sender_code) > 32:
        return None
    cached = _cache_call("get", _cache_key(sender_code))
    if cached is not None:
        return cached or None
    party = AcsParty.objects.select_related("access_id").filter(sender_code=sender_code).first()
    if party is None:
        _cache_call("set", _cache_key(sender_code), False, 30)
        return None
    info = AcsPartyInfo(
        pk=party.pk, access_key=party.access_id.key, access_pk=party.access_id_id, sender_code=party.sender_code,
        token_required=party.token_required, signature=party.signature, encryption=party.encryption,
        key_version=party.key_version, key_encrypted=party.key_encrypted,
        previous_key_encrypted=party.previous_key_encrypted, previous_key_valid_until=party.previous_key_valid_until,
        private_key_encrypted=party.private_key_encrypted, party_certificate_pem=party.party_certificate_pem,
    )
    _cache_call("set", _cache_key(sender_code), info, CACHE_TTL)
    return info


@dataclass(frozen=True, repr=False)
class AcsSecretKey:
    """One `SecretKey` the party's MD5 signature may use now: its symmetric key (current, or
    the previous during its grace period), else its access ID's App Secret (with rotation grace)."""

    kind: str  # "key" or "app-secret"
    text: str
    version: int

    def __repr__(self) -> str:  # never the key itself
        return f"AcsSecretKey({self.kind} v{self.version})"


def acs_secret_keys(info: AcsPartyInfo, *, now: datetime.datetime | None = None) -> list[AcsSecretKey]:
    now = now or timezone.now()
    if info.key_encrypted:
        keys = [AcsSecretKey("key", secret_decrypt(info.key_encrypted, purpose=KEY_PURPOSE), info.key_version)]
        if info.previous_key_valid(now):
            keys.append(AcsSecretKey("key", secret_decrypt(info.previous_key_encrypted, purpose=KEY_PURPOSE),
                                     info.key_version - 1))
        return keys
    return [AcsSecretKey("app-secret", s.secret, s.version)
            for s in AppSecretService.valid_secrets(info.access_key, now=now)]


def acs_signature_match(info: AcsPartyInfo, fields: dict[str, str], provided: str) -> AcsSecretKey | None:
    """The SecretKey whose MD5 signature over `fields` is `provided` (constant time), or None."""
    provided_bytes = provided.strip().lower().encode("ascii", "replace")
    matched = None
    for key in acs_secret_keys(info):
        if hmac.compare_digest(acs_crypto.acs_sign(fields, key.text).encode("ascii"), provided_bytes) \
                and matched is None:
            matched = key
    return matched


@functools.lru_cache(maxsize=64)
def _rsa_key(pem: str):
    return acs_crypto.rsa_key_load(pem)


@functools.lru_cache(maxsize=64)
def _private_key(encrypted: str):
    return acs_crypto.rsa_key_load(secret_decrypt(encrypted, purpose=PRIVATE_KEY_PURPOSE))


def acs_keys(info: AcsPartyInfo, secret_key: AcsSecretKey | None) -> acs_crypto.AcsKeys:
    """The keys one message of this party is decrypted and encrypted with: for AES/DES, the
    symmetric key that verified its signature (else the current one); for the RSA modes, the
    platform's private key and the party's certificate. Raises AcsCryptoError naming what is
    not configured."""
    mode = info.encryption
    symmetric = None
    if mode in (acs_crypto.AES_MODE, acs_crypto.DES_MODE):
        if secret_key is not None and secret_key.kind == "key":
            text = secret_key.text
        elif info.key_encrypted:
            text = secret_decrypt(info.key_encrypted, purpose=KEY_PURPOSE)
        else:
            raise acs_crypto.AcsCryptoError("no key is set for this party (设置密钥, then 使用新密钥)")
        symmetric = acs_crypto.symmetric_key_bytes(text, acs_crypto.SYMMETRIC[mode])
    private = party_public = None
    if mode in acs_crypto.RSA_MODES:
        if info.private_key_encrypted:
            private = _private_key(info.private_key_encrypted)
        if info.party_certificate_pem:
            party_public = _rsa_key(info.party_certificate_pem)
    return acs_crypto.AcsKeys(mode=mode, symmetric=symmetric, private_key=private, party_public_key=party_public)


def acs_symmetric_candidates(info: AcsPartyInfo) -> list[AcsSecretKey]:
    """The symmetric keys a request of an unsigned AES/DES party may be encrypted with."""
    now = timezone.now()
    if not info.key_encrypted:
        return []
    keys = [AcsSecretKey("key", secret_decrypt(info.key_encrypted, purpose=KEY_PURPOSE), info.key_version)]
    if info.previous_key_valid(now):
        keys.append(AcsSecretKey("key", secret_decrypt(info.previous_key_encrypted, purpose=KEY_PURPOSE),
                                 info.key_version - 1))
    return keys


class AcsTokenError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _token_hash(token: str) -> str:
    return hashlib.sha256(b"signplatform-acs-token:" + token.encode("utf-8")).hexdigest()


def acs_token_issue(*, info: AcsPartyInfo) -> tuple[str, datetime.datetime]:
    """A new token for the party (only its hash is stored) and when it expires. Older valid
    tokens stay valid; expired ones of the party are removed."""
    now = timezone.now()
    token = secrets.token_hex(16)
    expires = now + TOKEN_LIFE
    with transaction.atomic():
        AcsToken.objects.filter(party_id=info.pk, expires_at__lte=now).delete()
        AcsToken.objects.create(party_id=info.pk, token_sha256=_token_hash(token), key_version=info.key_version,
                                created_at=now, expires_at=expires)
        # Several tokens live at once, but not without bound (anyone may ask for tokens): beyond
        # MAX_TOKENS the oldest end.
        surplus = list(AcsToken.objects.filter(party_id=info.pk).order_by("-created_at", "-pk")
                       .values_list("pk", flat=True)[MAX_TOKENS:MAX_TOKENS + 100])
        if surplus:
            AcsToken.objects.filter(pk__in=surplus).delete()
    return token, expires


def acs_token_check(*, info: AcsPartyInfo, token: str) -> datetime.datetime:
    """When the token was issued, if it is valid for this party now; AcsTokenError otherwise."""
    if not token or len(token) > 128:
        raise AcsTokenError("TOKEN_INVALID", "the token is not valid")
    row = AcsToken.objects.filter(token_sha256=_token_hash(token)).values_list(
        "party_id", "key_version", "created_at", "expires_at").first()
    if row is None or row[0] != info.pk:  # unknown, or another party's: told apart for nobody
        raise AcsTokenError("TOKEN_INVALID", "the token is not valid for this sender; get a new one")
    _party_pk, key_version, created_at, expires_at = row
    now = timezone.now()
    if expires_at <= now:
        raise AcsTokenError("TOKEN_EXPIRED", "the token expired; get a new one")
    if key_version != info.key_version and not (key_version == info.key_version - 1 and info.previous_key_valid(now)):
        raise AcsTokenError("TOKEN_INVALID", "the token was issued under a key that is no longer valid; get a new one")
    return created_at


def _certificate_facts(pem: str) -> dict[str, Any] | None:
    if not pem:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return None
    return {"subject": certificate.subject.rfc4514_string(),
            "fingerprint": certificate.fingerprint(hashes.SHA256()).hex(),
            "bits": certificate.public_key().key_size, "not_after": certificate.not_valid_after_utc}


def acs_party_describe(party: AcsParty | None) -> dict[str, Any]:
    """What the admin shows of a party: its keys by fingerprint, its certificates, and what
    is missing or weak in its settings (never a key itself)."""
    if party is None:
        return {"warnings": [_("Set the sender code and the security settings first.")]}
    now = timezone.now()

    def fingerprint(encrypted: str) -> str:
        return key_fingerprint(secret_decrypt(encrypted, purpose=KEY_PURPOSE)) if encrypted else ""

    state: dict[str, Any] = {
        "key_version": party.key_version,
        "key_fingerprint": fingerprint(party.key_encrypted),
        "pending_fingerprint": fingerprint(party.pending_key_encrypted),
        "previous_fingerprint": fingerprint(party.previous_key_encrypted)
        if party.previous_key_valid_until and party.previous_key_valid_until > now else "",
        "previous_valid_until": party.previous_key_valid_until
        if party.previous_key_valid_until and party.previous_key_valid_until > now else None,
        "platform_certificate": _certificate_facts(party.certificate_pem),
        "party_certificate": _certificate_facts(party.party_certificate_pem),
        "tokens_valid": party.tokens.filter(expires_at__gt=now).count(),
    }
    warnings = []
    mode = party.encryption
    if party.fully_open:
        warnings.append(_("Fully open: no token, no signature and no encryption. Anyone who knows the sender code "
                          "can sign with the card."))
    if mode in (acs_crypto.DES_MODE, acs_crypto.RSA_DES):
        warnings.append(_("DES is weak (a 56-bit key): offered only for old parties that cannot change."))
    if mode == acs_crypto.RSA_MODE:
        warnings.append(_("RSA 1024-bit is weak: offered only for old clients."))
    if party.signature == AcsParty.NONE_SIGNATURE:
        warnings.append(_("No signature: whoever can encrypt for this party (or anyone, without encryption) can "
                          "call."))
    if mode == acs_crypto.NONE and party.token_required:
        warnings.append(_("Without encryption the token is handed out in clear to anyone who asks for it: it proves "
                          "nothing on its own; the MD5 signature is what identifies the party."))
    if mode in (acs_crypto.AES_MODE, acs_crypto.DES_MODE) and not party.key_encrypted:
        warnings.append(_("No key is in use yet: set a key, give it to the party, then press “Use new key”."))
    if mode in acs_crypto.RSA_MODES:
        if not party.certificate_pem:
            warnings.append(_("The platform has no certificate for this party yet: generate one and give it to the "
                              "party (it encrypts its requests with it)."))
        if not party.party_certificate_pem:
            warnings.append(_("The party's encryption certificate is missing: upload it (answers are encrypted with "
                              "it)."))
        facts = state["party_certificate"]
        if facts and facts["not_after"] <= now:
            warnings.append(_("The party's encryption certificate has expired: upload its new one."))
    state["warnings"] = warnings
    return state


def acs_party_of(access_pk: int) -> AcsPartyInfo | None:
    """The party of an access ID (by its primary key), or None."""
    sender = AcsParty.objects.filter(access_id_id=access_pk).values_list("sender_code", flat=True).first()
    return acs_party_lookup(sender) if sender else None


def acs_envelope(info: AcsPartyInfo, *, payload_text: str, ok: bool, message: str,
                 secret: AcsSecretKey | None = None) -> dict[str, Any]:
    """What the platform sends a party — an answer or a notification: `{"Head": {"Sign",
    "Ccode", "Status", "Message"}, "Data"}`, Data encrypted as the party encrypts and the Head
    signed (when the party signs) with `secret` (the key its request used) or the current key.
    Raises AcsCryptoError when the party's keys or certificate are not there."""
    head = {"Sign": "", "Ccode": info.sender_code, "Status": "success" if ok else "error", "Message": message}
    data = acs_crypto.encrypt_for_party(acs_keys(info, secret), payload_text.encode("utf-8"))
    if info.signed:
        key = secret or next(iter(acs_secret_keys(info)), None)
        if key is not None:
            head["Sign"] = acs_crypto.acs_sign({**head, "Data": data}, key.text)
    return {"Head": head, "Data": data}
