"""NonceStore: accept each (access ID, nonce) at most once across every server process.

With Redis: `SET key 1 NX EX ttl` on a cache alias that raises on connection errors;
only an explicit success claims the nonce. Without Redis: an insert into a table with a
unique constraint. Any failure to reach the store fails closed (NONCE_STORE_UNAVAILABLE).

A Redis that restarts without its data (no persistence, a failover to an empty replica)
forgets the nonces it held. So the store keeps an epoch key beside them: when this Redis
started (now minus its uptime, on the platform's clock). When the key is missing, Redis
lost its data and the epoch is written anew; a request signed before the epoch might be a
replay of one accepted before the loss, so it is refused (`StaleTimestamp`: sign anew);
after one timestamp window no such request is left. Losing the epoch key errs on the safe
side (a later epoch refuses more)."""

from __future__ import annotations

import datetime
import logging
import random
import time

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.utils import timezone

from accessids.profiles import MAX_WINDOW_SECONDS
from signing.models import UsedNonce

PROFILE_MAX_TTL = 2 * MAX_WINDOW_SECONDS + 60

logger = logging.getLogger(__name__)


class NonceStoreUnavailable(Exception):
    """The store could not say whether the nonce is fresh."""


class StaleTimestamp(Exception):
    """The request was signed before the nonce store's epoch: it cannot be told apart from a
    replay of a request accepted before the store lost its data."""

    def __init__(self, epoch_ms: int):
        super().__init__(f"signed before the nonce store's epoch {epoch_ms}")
        self.epoch_ms = epoch_ms


class NonceStore:
    """Claims nonces; `claim()` returns True the first time, False for a replay."""

    def __init__(self, ttl_seconds: int):
        self.ttl = ttl_seconds

    def claim(self, access_key: str, nonce: str, timestamp_ms: int | None = None, *, ttl: int | None = None) -> bool:
        """`ttl`: how long this claim is remembered (default: the store's)."""
        raise NotImplementedError


# KEYS[1] the nonce, KEYS[2] the epoch; ARGV ttl, the request's timestamp (ms).
# Returns {1, epoch} claimed, {0, epoch} already used, {-1, epoch} signed before the epoch,
# {-2, 0} no epoch (this Redis lost its data, or never had any).
_CLAIM_SCRIPT = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {-2, 0} end
if tonumber(ARGV[2]) < tonumber(epoch) then return {-1, epoch} end
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {1, epoch} end
return {0, epoch}
"""
EPOCH_KEY = "nonce-epoch"


class RedisNonceStore(NonceStore):
    def __init__(self, ttl_seconds: int, cache=None):
        super().__init__(ttl_seconds)
        self._cache = cache
        self._claim_script = None  # registered once; each call names the client it runs on

    def _claimed(self, client, keys: list[str], args: list) -> list:
        script = self._claim_script
        if script is None:
            script = self._claim_script = client.register_script(_CLAIM_SCRIPT)
        return script(keys=keys, args=args, client=client)

    def claim(self, access_key: str, nonce: str, timestamp_ms: int | None = None, *, ttl: int | None = None) -> bool:
        store = self._cache if self._cache is not None else caches["nonces"]
        epoch_key = store.make_key(EPOCH_KEY)
        keys = [store.make_key(f"nonce:{access_key}:{nonce}"), epoch_key]
        try:
            client = store.client.get_client(write=True)
            stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
            ttl = ttl or self.ttl
            result, epoch = self._claimed(client, keys, [ttl, stamp])
            if int(result) == -2:
                # Uptime in whole seconds, rounded down: the epoch is never before the real start.
                uptime_ms = int(client.info("server")["uptime_in_seconds"]) * 1000
                if client.set(epoch_key, int(time.time() * 1000) - uptime_ms, nx=True):
                    logger.warning("the nonce store (Redis) holds no epoch: it restarted without its data, or is "
                                   "new; requests signed before it started are refused")
                result, epoch = self._claimed(client, keys, [ttl, stamp])
        except Exception as exc:  # any client or connection error: we cannot know
            logger.error("nonce store unreachable: %s", type(exc).__name__)
            raise NonceStoreUnavailable(str(exc)) from None
        if int(result) == -1:
            raise StaleTimestamp(int(epoch))
        return int(result) == 1


def _db_time(value: datetime.datetime):
    """A datetime as the ORM would store it in `created_at` (the backend's own adaptation)."""
    return UsedNonce._meta.get_field("created_at").get_db_prep_value(value, connection)


class DatabaseNonceStore(NonceStore):
    PRUNE_PROBABILITY = 0.01

    def claim(self, access_key: str, nonce: str, timestamp_ms: int | None = None, *, ttl: int | None = None) -> bool:
        now = timezone.now()
        cutoff = now - datetime.timedelta(seconds=ttl or self.ttl)
        table = connection.ops.quote_name(UsedNonce._meta.db_table)
        # One statement: a new nonce is inserted, an expired claim of the same nonce is taken
        # over, a live one is left alone (no row changed: a replay). PostgreSQL and SQLite alike.
        sql = (f"INSERT INTO {table} (access_key, nonce, created_at) VALUES (%s, %s, %s) "
               f"ON CONFLICT (access_key, nonce) DO UPDATE SET created_at = excluded.created_at "
               f"WHERE {table}.created_at < %s")
        try:  # one statement: atomic on its own, no transaction around it
            with connection.cursor() as cursor:
                cursor.execute(sql, [access_key, nonce, _db_time(now), _db_time(cutoff)])
                claimed = cursor.rowcount == 1
        except DatabaseError as exc:
            logger.error("nonce store unreachable: %s", type(exc).__name__)
            raise NonceStoreUnavailable(str(exc)) from None
        if not claimed:
            return False
        if random.random() < self.PRUNE_PROBABILITY:
            # Native claims live `self.ttl`; a profile's (namespace "profile:AK...") may live
            # up to twice the longest window a profile can have.
            UsedNonce.objects.filter(created_at__lt=now - datetime.timedelta(seconds=self.ttl)).exclude(
                access_key__contains=":").delete()
            UsedNonce.objects.filter(created_at__lt=now - datetime.timedelta(seconds=PROFILE_MAX_TTL)).delete()
        return True


_store: NonceStore | None = None


def nonce_store() -> NonceStore:
    global _store
    ttl = int(settings.API_NONCE_TTL_SECONDS)
    if _store is None or _store.ttl != ttl:
        _store = RedisNonceStore(ttl) if settings.NONCE_STORE == "redis" else DatabaseNonceStore(ttl)
    return _store


def redis_persistence_warnings(cache=None) -> list[str]:
    """What an operator should know about the Redis behind the nonces (empty when it keeps
    its data, or when its configuration cannot be read, e.g. a managed Redis)."""
    store = cache if cache is not None else caches["nonces"]
    try:
        client = store.client.get_client(write=True)
        config = {**client.config_get("appendonly"), **client.config_get("save"),
                  **client.config_get("maxmemory-policy")}
    except Exception:
        return []
    warnings = []
    if config.get("appendonly") != "yes" and not config.get("save"):
        warnings.append(
            "Redis keeps no data across a restart (no AOF, no RDB snapshots): after a restart the platform "
            "refuses requests signed before it (they might be replays) for up to the timestamp window, and the "
            "rate limits start again; set appendonly yes")
    if str(config.get("maxmemory-policy", "")).startswith("allkeys"):
        warnings.append(
            f"Redis may evict any key (maxmemory-policy {config['maxmemory-policy']}): an evicted nonce could be "
            "replayed; use noeviction or a volatile-* policy")
    return warnings
