"""Access ID writes: creation, secret rotation with a grace period, revocation, enable/disable."""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets

from django.db import transaction
from django.utils import timezone

from .encryption import secret_encrypt
from .models import SCOPES, AccessId, AppSecret
from .secrets import SECRET_PURPOSE, AppSecretService

GRACE_CHOICES = {"0": datetime.timedelta(0), "1h": datetime.timedelta(hours=1),
                 "24h": datetime.timedelta(hours=24), "7d": datetime.timedelta(days=7)}
DEFAULT_GRACE = GRACE_CHOICES["24h"]
_GRACE_RE = re.compile(r"^(\d+)([smhd]?)$")


class AccessIdError(ValueError):
    """An operator asked for something that cannot be done (bad scope, grace, ...)."""


def grace_parse(text: str) -> datetime.timedelta:
    """`0`, `1h`, `24h`, `7d` (or any `<n>[s|m|h|d]`) → timedelta."""
    match = _GRACE_RE.match(text.strip().lower())
    if not match:
        raise AccessIdError(f"grace {text!r} is not like 0, 1h, 24h or 7d")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return datetime.timedelta(seconds=number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def scopes_parse(text: str | None) -> list[str]:
    """Comma-separated scopes; all scopes when empty."""
    if not text:
        return list(SCOPES)
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise AccessIdError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    return list(dict.fromkeys(scopes))


def secret_fingerprint(secret: str) -> str:
    """A short, non-reversible name for a secret, safe to show."""
    return hashlib.sha256(b"signplatform-fingerprint:" + secret.encode()).hexdigest()[:12]


def _secret_new(access: AccessId, version: int) -> tuple[AppSecret, str]:
    secret = secrets.token_urlsafe(32)  # 256 bits
    row = AppSecret.objects.create(
        access_id=access,
        version=version,
        secret_encrypted=secret_encrypt(secret, purpose=SECRET_PURPOSE),
        fingerprint=secret_fingerprint(secret),
        state=AppSecret.CURRENT,
    )
    return row, secret


@transaction.atomic
def access_id_create(*, name: str, scopes: list[str] | None = None, description: str = "") -> tuple[AccessId, str]:
    """Create an access ID and its first secret. Returns the secret in clear: show it once."""
    if not name.strip():
        raise AccessIdError("an access ID needs a name")
    access = AccessId.objects.create(
        key="AK" + secrets.token_hex(10).upper(),
        name=name.strip(),
        description=description,
        scopes=list(SCOPES) if scopes is None else scopes,
    )
    _, secret = _secret_new(access, 1)
    AppSecretService.invalidate(access.key)
    return access, secret


@transaction.atomic
def app_secret_rotate(*, access_id: AccessId, grace: datetime.timedelta = DEFAULT_GRACE) -> tuple[AppSecret, str]:
    """Issue a new current secret. The old current one stays valid for `grace` (none: revoked
    now); an older previous secret is revoked at once. Returns the new secret in clear."""
    access = AccessId.objects.select_for_update().get(pk=access_id.pk)
    now = timezone.now()
    access.secrets.filter(state=AppSecret.PREVIOUS).update(state=AppSecret.REVOKED, revoked_at=now)
    current = access.secrets.filter(state=AppSecret.CURRENT).first()
    if current is not None:
        if grace > datetime.timedelta(0):
            current.state, current.valid_until = AppSecret.PREVIOUS, now + grace
        else:
            current.state, current.revoked_at = AppSecret.REVOKED, now
        current.save(update_fields=["state", "valid_until", "revoked_at"])
    latest = access.secrets.order_by("-version").values_list("version", flat=True).first() or 0
    row, secret = _secret_new(access, latest + 1)
    AppSecretService.invalidate(access.key)
    return row, secret


@transaction.atomic
def app_secret_revoke_previous(*, access_id: AccessId) -> int:
    """End the grace period now. Returns how many secrets were revoked."""
    count = access_id.secrets.filter(state=AppSecret.PREVIOUS).update(state=AppSecret.REVOKED, revoked_at=timezone.now())
    AppSecretService.invalidate(access_id.key)
    return count


@transaction.atomic
def access_id_set_enabled(*, access_id: AccessId, enabled: bool) -> AccessId:
    access_id.enabled = enabled
    access_id.save(update_fields=["enabled", "updated_at"])
    AppSecretService.invalidate(access_id.key)
    return access_id
