"""NonceStore: accept each (access ID, nonce) at most once across every server process.

With Redis: `SET key 1 NX EX ttl` on a cache alias that raises on connection errors;
only an explicit success claims the nonce. Without Redis: an insert into a table with a
unique constraint. Any failure to reach the store fails closed (NONCE_STORE_UNAVAILABLE)."""

from __future__ import annotations

import datetime
import logging
import random

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from signing.models import UsedNonce

logger = logging.getLogger(__name__)


class NonceStoreUnavailable(Exception):
    """The store could not say whether the nonce is fresh."""


class NonceStore:
    """Claims nonces; `claim()` returns True the first time, False for a replay."""

    def __init__(self, ttl_seconds: int):
        self.ttl = ttl_seconds

    def claim(self, access_key: str, nonce: str) -> bool:
        raise NotImplementedError


class RedisNonceStore(NonceStore):
    def __init__(self, ttl_seconds: int, cache=None):
        super().__init__(ttl_seconds)
        self._cache = cache

    def claim(self, access_key: str, nonce: str) -> bool:
        store = self._cache if self._cache is not None else caches["nonces"]
        try:
            claimed = store.set(f"nonce:{access_key}:{nonce}", 1, timeout=self.ttl, nx=True)
        except Exception as exc:  # any client or connection error: we cannot know
            logger.error("nonce store unreachable: %s", type(exc).__name__)
            raise NonceStoreUnavailable(str(exc)) from None
        return claimed is True


class DatabaseNonceStore(NonceStore):
    PRUNE_PROBABILITY = 0.01

    def claim(self, access_key: str, nonce: str) -> bool:
        now = timezone.now()
        cutoff = now - datetime.timedelta(seconds=self.ttl)
        try:
            with transaction.atomic():
                # An expired claim of the same nonce no longer counts.
                UsedNonce.objects.filter(access_key=access_key, nonce=nonce, created_at__lt=cutoff).delete()
                UsedNonce.objects.create(access_key=access_key, nonce=nonce, created_at=now)
        except IntegrityError:
            return False
        except DatabaseError as exc:
            logger.error("nonce store unreachable: %s", type(exc).__name__)
            raise NonceStoreUnavailable(str(exc)) from None
        if random.random() < self.PRUNE_PROBABILITY:
            UsedNonce.objects.filter(created_at__lt=cutoff).delete()
        return True


_store: NonceStore | None = None


def nonce_store() -> NonceStore:
    global _store
    ttl = int(settings.API_NONCE_TTL_SECONDS)
    if _store is None or _store.ttl != ttl:
        _store = RedisNonceStore(ttl) if settings.NONCE_STORE == "redis" else DatabaseNonceStore(ttl)
    return _store
