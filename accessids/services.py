"""Access ID writes: creation, changes, secret rotation with a grace period, revocation,
enable/disable, one-time reveal tickets, last-use bookkeeping.

Every change writes its audit event in the same transaction (`actor` is the admin user,
`source` says where the change came from: admin, command or api)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext
from core.durations import duration_parse
from core.encryption import master_key, secret_decrypt, secret_encrypt
from core.legacy_cipher import legacy_key_fold
from ukey.protocol import RPC_METHODS

from .models import DEFAULT_RPC_METHODS, DEFAULT_SCOPES, SCOPES, AccessId, AccessIdProfile, AcsToken, AppSecret
from .profiles import ACS, MAX_WINDOW_SECONDS, PROFILE_KINDS
from .secrets import SECRET_PURPOSE, AppSecretService
from .selectors import access_id_name_holder

GRACE_CHOICES = {"0": datetime.timedelta(0), "1h": datetime.timedelta(hours=1),
                 "24h": datetime.timedelta(hours=24), "7d": datetime.timedelta(days=7)}
DEFAULT_GRACE = GRACE_CHOICES["24h"]
MAX_GRACE = GRACE_CHOICES["7d"]
REVEAL_TTL = datetime.timedelta(minutes=10)


class AccessIdError(ValueError):
    """An operator asked for something that cannot be done (bad scope, grace, ...)."""




def _name_check(name: str, *, exclude_pk: int | None = None) -> None:
    """Two access IDs never share a name (case and full-width letters aside): the name is how
    people tell client systems apart in the admin, the audit log and the dashboard."""
    holder = access_id_name_holder(name=name, exclude_pk=exclude_pk)
    if holder is not None:
        raise AccessIdError(_("the name “%(name)s” is taken by access ID %(key)s; choose another")
                            % {"name": holder.name, "key": holder.key})


def grace_parse(text: str) -> datetime.timedelta:
    """`0`, `1h`, `24h`, `7d` (or any `<n>[s|m|h|d]`) → timedelta, at most 7 days."""
    try:
        grace = duration_parse(text, units="smhd", default_unit="s")
    except ValueError:
        raise AccessIdError(_("grace %(grace)s is not like 0, 1h, 24h or 7d") % {"grace": repr(text)}) from None
    if grace > MAX_GRACE:
        raise AccessIdError(_("grace %(grace)s is longer than 7 days") % {"grace": repr(text)})
    return grace


def scopes_parse(text: str | None) -> list[str]:
    """Comma-separated scopes; the default scopes when empty."""
    if not text:
        return list(DEFAULT_SCOPES)
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise AccessIdError(_("unknown scope(s) %(unknown)s; choose from %(known)s")
                            % {"unknown": ", ".join(unknown), "known": ", ".join(SCOPES)})
    return list(dict.fromkeys(scopes))


def methods_parse(text: str | None) -> list[str]:
    """Comma-separated card methods for /rpc, or `all`; none when empty."""
    if not text:
        return list(DEFAULT_RPC_METHODS)
    if text.strip() == "all":
        return list(RPC_METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(RPC_METHODS))
    if unknown:
        raise AccessIdError(_("unknown card method(s) %(unknown)s; choose from %(known)s")
                            % {"unknown": ", ".join(unknown), "known": ", ".join(RPC_METHODS)})
    return list(dict.fromkeys(methods))


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
def access_id_create(
    *,
    name: str,
    scopes: list[str] | None = None,
    description: str = "",
    allowed_methods: list[str] | None = None,
    context: ChangeContext = COMMAND,
    **fields: Any,
) -> tuple[AccessId, str]:
    """Create an access ID and its first secret. Returns the secret in clear: show it once.
    `fields` may set enabled, expires_at, allowed_networks, rate_limit_per_minute."""
    if not name.strip():
        raise AccessIdError(_("an access ID needs a name"))
    _name_check(name)
    devices = fields.pop("devices", None)
    pools = fields.pop("pools", None)
    access = AccessId.objects.create(
        key="AK" + secrets.token_hex(10).upper(),
        name=name.strip(),
        description=description,
        scopes=list(DEFAULT_SCOPES) if scopes is None else scopes,
        allowed_methods=list(DEFAULT_RPC_METHODS) if allowed_methods is None else allowed_methods,
        **fields,
    )
    if devices:
        access.devices.set(devices)
    if pools:
        access.pools.set(pools)
    row, secret = _secret_new(access, 1)
    context.record(
        event_type=AuditEvent.ACCESS_ID_CREATED,
        access_id=access,
        secret_version=row.version,
        details={"name": access.name, "scopes": access.scopes, "fingerprint": row.fingerprint},
    )
    AppSecretService.invalidate(access.key)
    return access, secret


LEGACY_KEY_PURPOSE = "legacy-aes-key"


def legacy_key_fingerprint(folded_key: bytes, *, key: bytes | None = None) -> str:
    """Keyed with the master key: legacy keys are often guessable, so an unkeyed hash in
    the database would give them away."""
    return hmac.new(key or master_key(), b"legacy-aes-key:" + folded_key, hashlib.sha256).hexdigest()


@transaction.atomic
def access_id_set_legacy_key(*, access_id: AccessId, legacy_key: str, context: ChangeContext = COMMAND) -> AccessId:
    """Give the access ID a legacy sign-server AES key (stored encrypted), or remove it with
    an empty `legacy_key`. Two access IDs never share a key: the key identifies the caller."""
    access = AccessId.objects.select_for_update().get(pk=access_id.pk)
    if legacy_key:
        if legacy_key != legacy_key.strip():
            raise AccessIdError(_("the legacy AES key must not start or end with spaces"))
        fingerprint = legacy_key_fingerprint(legacy_key_fold(legacy_key))
        holder = AccessId.objects.filter(legacy_key_fingerprint=fingerprint).exclude(pk=access.pk).first()
        if holder is not None:
            raise AccessIdError(_("this legacy AES key already belongs to access ID %(key)s; keys must differ")
                                % {"key": holder.key})
        access.legacy_aes_key_encrypted = secret_encrypt(legacy_key, purpose=LEGACY_KEY_PURPOSE)
        access.legacy_key_fingerprint = fingerprint
    else:
        access.legacy_aes_key_encrypted, access.legacy_key_fingerprint = "", None
    access.save(update_fields=["legacy_aes_key_encrypted", "legacy_key_fingerprint", "updated_at"])
    context.record(
        event_type=AuditEvent.ACCESS_ID_CHANGED,
        access_id=access,
        details={"changed": ["legacy_aes_key"], "legacy_aes_key": "set" if legacy_key else "removed",
                 "legacy_key_fingerprint": (access.legacy_key_fingerprint or "")[:12]},
    )
    access_id.legacy_aes_key_encrypted = access.legacy_aes_key_encrypted
    access_id.legacy_key_fingerprint = access.legacy_key_fingerprint
    return access


def legacy_keys_all() -> list[tuple[str, bytes]]:
    """(access ID key, folded legacy AES key) for every access ID with a legacy key."""
    rows = (
        AccessId.objects.exclude(legacy_aes_key_encrypted="")
        .order_by("pk")
        .values_list("key", "legacy_aes_key_encrypted")
    )
    return [(key, legacy_key_fold(secret_decrypt(stored, purpose=LEGACY_KEY_PURPOSE))) for key, stored in rows]


@transaction.atomic
def access_id_update(*, access_id: AccessId, changed: list[str], context: ChangeContext) -> AccessId:
    """Save edits made to `access_id` (an admin form) and record which fields changed."""
    if "name" in changed:
        _name_check(access_id.name, exclude_pk=access_id.pk)
    access_id.save()
    if changed:
        context.record(event_type=AuditEvent.ACCESS_ID_CHANGED, access_id=access_id, details={"changed": sorted(changed)})
    AppSecretService.invalidate(access_id.key)
    return access_id


@transaction.atomic
def app_secret_rotate(
    *, access_id: AccessId, grace: datetime.timedelta = DEFAULT_GRACE, context: ChangeContext = COMMAND,
    **event_fields: Any,
) -> tuple[AppSecret, str]:
    """Issue a new current secret. The old current one stays valid for `grace` (none: revoked
    now); an older previous secret is revoked at once. Returns the new secret in clear."""
    if grace < datetime.timedelta(0) or grace > MAX_GRACE:
        raise AccessIdError(_("the grace period must be between 0 and 7 days"))
    access = AccessId.objects.select_for_update().get(pk=access_id.pk)
    now = timezone.now()
    revoked = list(access.secrets.filter(state=AppSecret.PREVIOUS).values_list("version", flat=True))
    access.secrets.filter(state=AppSecret.PREVIOUS).update(state=AppSecret.REVOKED, revoked_at=now)
    current = access.secrets.filter(state=AppSecret.CURRENT).first()
    if current is not None:
        if grace > datetime.timedelta(0):
            current.state, current.valid_until = AppSecret.PREVIOUS, now + grace
        else:
            current.state, current.revoked_at = AppSecret.REVOKED, now
            revoked.append(current.version)
        current.save(update_fields=["state", "valid_until", "revoked_at"])
    latest = access.secrets.order_by("-version").values_list("version", flat=True).first() or 0
    row, secret = _secret_new(access, latest + 1)
    details = {
        "new_version": row.version,
        "fingerprint": row.fingerprint,
        "grace_seconds": int(grace.total_seconds()),
        "previous_version": current.version if current is not None else None,
        "previous_valid_until": current.valid_until.isoformat() if current and current.valid_until else None,
        "revoked_versions": sorted(revoked),
    }
    details.update(event_fields.pop("details", {}))
    context.record(event_type=AuditEvent.ACCESS_ID_ROTATED, access_id=access, details=details, **event_fields)
    AppSecretService.invalidate(access.key)
    row.previous = current  # what the caller reports about the old secret
    return row, secret


@transaction.atomic
def app_secret_revoke_previous(*, access_id: AccessId, context: ChangeContext = COMMAND) -> int:
    """End the grace period now. Returns how many secrets were revoked."""
    versions = list(access_id.secrets.filter(state=AppSecret.PREVIOUS).values_list("version", flat=True))
    count = access_id.secrets.filter(state=AppSecret.PREVIOUS).update(
        state=AppSecret.REVOKED, revoked_at=timezone.now()
    )
    if count:
        context.record(
            event_type=AuditEvent.ACCESS_ID_PREVIOUS_REVOKED, access_id=access_id, details={"revoked_versions": versions}
        )
    AppSecretService.invalidate(access_id.key)
    return count


@transaction.atomic
def access_id_set_enabled(*, access_id: AccessId, enabled: bool, context: ChangeContext = COMMAND) -> AccessId:
    changed = access_id.enabled != enabled
    access_id.enabled = enabled
    access_id.save(update_fields=["enabled", "updated_at"])
    if not enabled:  # a disabled party's access system tokens end with it
        AcsToken.objects.filter(party__access_id=access_id).delete()
    if changed:
        context.record(
            event_type=AuditEvent.ACCESS_ID_ENABLED if enabled else AuditEvent.ACCESS_ID_DISABLED, access_id=access_id
        )
    AppSecretService.invalidate(access_id.key)
    return access_id


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def app_secret_reveal_ticket(*, secret: AppSecret, user: Any) -> str:
    """A one-time token that lets `user` see this secret once, within REVEAL_TTL."""
    token = secrets.token_urlsafe(24)
    AppSecret.objects.filter(pk=secret.pk).update(
        reveal_token_hash=_token_hash(token), reveal_user_id=user.pk, reveal_expires_at=timezone.now() + REVEAL_TTL
    )
    return token


@transaction.atomic
def app_secret_reveal(*, access_id: AccessId, token: str, user: Any) -> tuple[AppSecret, str] | None:
    """Redeem a reveal ticket: the secret in clear the first time, None ever after."""
    if not token:
        return None
    row = (
        AppSecret.objects.select_for_update()
        .filter(access_id=access_id, reveal_token_hash=_token_hash(token), reveal_user_id=user.pk)
        .exclude(state=AppSecret.REVOKED)
        .first()
    )
    if row is None:
        return None
    fresh = row.reveal_expires_at is not None and row.reveal_expires_at > timezone.now()
    AppSecret.objects.filter(pk=row.pk).update(reveal_token_hash="", reveal_user_id=None, reveal_expires_at=None)
    if not fresh:
        return None
    return row, secret_decrypt(row.secret_encrypted, purpose=SECRET_PURPOSE)


# Last use is written at most this often per access ID and secret version (the audit
# events carry the exact version of every request).
LAST_USED_EVERY = datetime.timedelta(seconds=30)
_last_used_written: dict[tuple[int, int], datetime.datetime] = {}


def access_id_mark_used(*, access_pk: int, version: int, when: datetime.datetime | None = None) -> bool:
    """Record that a request verified with this secret version. Returns whether it wrote."""
    when = when or timezone.now()
    key = (access_pk, version)
    last = _last_used_written.get(key)
    if last is not None and when - last < LAST_USED_EVERY:
        return False
    _last_used_written[key] = when
    AccessId.objects.filter(pk=access_pk).update(last_used_at=when, last_secret_version=version)
    AppSecret.objects.filter(access_id_id=access_pk, version=version).update(last_used_at=when)
    return True


_UNSET: Any = object()


@transaction.atomic
def access_id_profile_set(
    *, access_id: AccessId, name: str, enabled: bool | None = None, window_seconds: int | None = _UNSET,
    default: bool | None = None, context: ChangeContext = COMMAND,
) -> AccessIdProfile:
    """Turn a client profile on or off for an access ID, set its time window (None: the
    profile's default) and whether the access ID is the deployment's default for it (taken
    from whichever access ID held it). One audit event per change, in its transaction."""
    kind = PROFILE_KINDS.get(name)
    if kind is None:
        raise AccessIdError(_("unknown profile %(name)s; choose from %(known)s")
                            % {"name": repr(name), "known": ", ".join(PROFILE_KINDS)})
    if window_seconds is not _UNSET and window_seconds is not None and not 1 <= window_seconds <= MAX_WINDOW_SECONDS:
        raise AccessIdError(_("the time window must be between 1 and %(max)s seconds") % {"max": MAX_WINDOW_SECONDS})
    if window_seconds is not _UNSET and window_seconds is not None and not kind.has_window:
        raise AccessIdError(_("the %(name)s profile has no time window (its requests carry no timestamp)")
                            % {"name": name})
    if default and not kind.has_default:
        raise AccessIdError(_("the %(name)s profile always names its access ID: it has no default access ID")
                            % {"name": name})
    access = AccessId.objects.select_for_update().get(pk=access_id.pk)
    profile, _created = AccessIdProfile.objects.get_or_create(access_id=access, name=name)
    before = {"enabled": profile.enabled, "window_seconds": profile.window_seconds, "default": profile.is_default}
    if enabled is not None:
        profile.enabled = enabled
    if window_seconds is not _UNSET:
        profile.window_seconds = window_seconds
    previous_default = None
    if default is not None:
        if default and not profile.is_default:
            holder = (AccessIdProfile.objects.select_for_update().filter(name=name, is_default=True)
                      .exclude(pk=profile.pk).select_related("access_id").first())
            if holder is not None:
                previous_default = holder.access_id.key
                holder.is_default = False
                holder.save(update_fields=["is_default", "updated_at"])
                AppSecretService.invalidate(holder.access_id.key)
        profile.is_default = default
    profile.save()
    if name == ACS and not profile.enabled:  # its tokens end with the profile
        AcsToken.objects.filter(party__access_id=access).delete()
    after = {"enabled": profile.enabled, "window_seconds": profile.window_seconds, "default": profile.is_default}
    changed = sorted(key for key in after if after[key] != before[key])
    if changed:
        details: dict[str, Any] = {"profile": name, "changed": changed, **after, "window": profile.window,
                                   "weak": kind.weak}
        if previous_default:
            details["default_taken_from"] = previous_default
        context.record(
            event_type=AuditEvent.ACCESS_ID_PROFILE_CHANGED, access_id=access, profile=name,
            message=f"{name}: " + ", ".join(f"{key} {before[key]} → {after[key]}" for key in changed),
            details=details,
        )
    AppSecretService.invalidate(access.key)
    AppSecretService.invalidate_profile_default(name)
    return profile
