"""AppSecretService: the single way to find an access ID's valid secrets.

Look-ups are cached (django-redis when configured, so every process shares the entry)
and the entry is deleted on every change, after the transaction commits; a rotation or
a disable therefore takes effect at once everywhere. The cache holds the encrypted
secrets only: plaintext exists just in the memory of the request that verifies."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from core.encryption import secret_decrypt

logger = logging.getLogger(__name__)

SECRET_PURPOSE = "app-secret"
CACHE_TTL = 300


def _cache_call(operation: str, *args):
    """The cache only speeds look-ups up: when it is unreachable, read the database."""
    try:
        return getattr(cache, operation)(*args)
    except Exception as exc:
        logger.warning("access ID cache unavailable (%s): %s", operation, type(exc).__name__)
        return None


@dataclass(frozen=True)
class AccessIdAuthInfo:
    key: str
    pk: int
    enabled: bool
    expires_at: datetime.datetime | None
    allowed_networks: tuple[str, ...]
    scopes: tuple[str, ...]
    allowed_methods: tuple[str, ...]
    rate_limit_per_minute: int
    devices: tuple[str, ...]  # card slugs it may use; empty: the default card
    # (version, encrypted secret, valid_until or None) for the current and previous secret
    secrets: tuple[tuple[int, str, datetime.datetime | None], ...]
    pools: tuple[str, ...] = ()  # card pool slugs it may use (the first is its default)
    # (name, time window in seconds) of each client profile enabled for it
    profiles: tuple[tuple[str, int], ...] = ()

    def profile_window(self, name: str) -> int | None:
        """The time window of an enabled profile; None when the profile is not enabled."""
        return next((window for profile, window in self.profiles if profile == name), None)


@dataclass(frozen=True)
class ValidSecret:
    version: int
    secret: str


class AppSecretService:
    @staticmethod
    def _cache_key(key: str) -> str:
        return f"accessid:auth:{key}"

    @classmethod
    def lookup(cls, key: str) -> AccessIdAuthInfo | None:
        """What authentication needs to know about an access ID (None if it does not exist)."""
        cached = _cache_call("get", cls._cache_key(key))
        if cached is not None:
            return cached or None
        from .models import AccessId, AppSecret

        access = AccessId.objects.filter(key=key).first()
        if access is None:
            _cache_call("set", cls._cache_key(key), False, 30)  # remember misses briefly
            return None
        secrets = tuple(
            (s.version, s.secret_encrypted, s.valid_until)
            for s in access.secrets.filter(state__in=[AppSecret.CURRENT, AppSecret.PREVIOUS]).order_by("-version")
        )
        info = AccessIdAuthInfo(
            key=access.key,
            pk=access.pk,
            enabled=access.enabled,
            expires_at=access.expires_at,
            allowed_networks=tuple(access.allowed_networks or ()),
            scopes=tuple(access.scopes or ()),
            allowed_methods=tuple(access.allowed_methods or ()),
            rate_limit_per_minute=access.rate_limit_per_minute,
            devices=tuple(access.devices.order_by("slug").values_list("slug", flat=True)),
            secrets=secrets,
            pools=tuple(access.pools.order_by("slug").values_list("slug", flat=True)),
            profiles=tuple((p.name, p.window) for p in access.profiles.filter(enabled=True).order_by("name")),
        )
        _cache_call("set", cls._cache_key(key), info, CACHE_TTL)
        return info

    @classmethod
    def profile_default(cls, name: str) -> str | None:
        """The access ID that requests of profile `name` without an access ID belong to (the
        one marked default, while the profile is enabled for it), or None."""
        cache_key = f"accessid:profile-default:{name}"
        cached = _cache_call("get", cache_key)
        if cached is not None:
            return cached or None
        from .models import AccessIdProfile

        key = (AccessIdProfile.objects.filter(name=name, is_default=True, enabled=True)
               .values_list("access_id__key", flat=True).first())
        _cache_call("set", cache_key, key or "", CACHE_TTL)
        return key

    @classmethod
    def invalidate_profile_default(cls, name: str) -> None:
        transaction.on_commit(lambda: _cache_call("delete", f"accessid:profile-default:{name}"))

    @staticmethod
    def is_active(info: AccessIdAuthInfo, *, now: datetime.datetime | None = None) -> bool:
        """Enabled and not expired."""
        return info.enabled and (info.expires_at is None or info.expires_at > (now or timezone.now()))

    @classmethod
    def valid_secrets(cls, key: str, *, now: datetime.datetime | None = None) -> list[ValidSecret]:
        """The secrets a request of this access ID may be signed with right now:
        the current one, and the previous one until its grace period ends."""
        info = cls.lookup(key)
        return [] if info is None else cls.valid_secrets_of(info, now=now)

    @staticmethod
    def valid_secrets_of(info: AccessIdAuthInfo, *, now: datetime.datetime | None = None) -> list[ValidSecret]:
        """`valid_secrets` of an access ID already looked up (no second look-up)."""
        now = now or timezone.now()
        return [
            ValidSecret(version=version, secret=secret_decrypt(stored, purpose=SECRET_PURPOSE))
            for version, stored, valid_until in info.secrets
            if valid_until is None or valid_until > now
        ]

    @classmethod
    def invalidate(cls, key: str) -> None:
        """Drop the cached entry once the surrounding transaction has committed."""
        transaction.on_commit(lambda: _cache_call("delete", cls._cache_key(key)))
