"""Check 6 of the spec: scopes (403 PERMISSION_DENIED), then the per-access-ID rate limit
(429 RATE_LIMITED with Retry-After), counted atomically with Redis INCR."""

from __future__ import annotations

import logging
import time

from django.core.cache import caches
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from core.errors import ApiError, permission_denied

from .auth import ApiClient
from .schemes import SCHEMES_BY_NAME

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


def scopes_require(client: ApiClient, scopes: tuple[str, ...]) -> None:
    """403 PERMISSION_DENIED unless the client holds one of `scopes` (none listed: any)."""
    if scopes and not any(client.has_scope(scope) for scope in scopes):
        raise permission_denied(f"this access ID lacks the scope {' or '.join(scopes)}")


class HasScope(BasePermission):
    """The access ID must hold one of the view's `required_scopes` (none listed: any
    verified access ID; a dict gives them per HTTP method), and pass the view's
    `operation_permission_check` if it has one."""

    def has_permission(self, request, view) -> bool:
        client = request.user
        if not isinstance(client, ApiClient):
            return False
        scopes = getattr(view, "required_scopes", ())
        if isinstance(scopes, dict):
            scopes = scopes.get(request.method, ())
        scopes_require(client, scopes)
        if request.method in getattr(view, "request_line_bound", ()) and \
                not getattr(SCHEMES_BY_NAME.get(client.profile), "binds_request_line", True):
            raise permission_denied(
                f"{request.method} {request.path} needs a signature that covers the method and the path; the "
                f"{client.profile} profile's does not (the same headers could be sent here from another request)")
        check = getattr(view, "operation_permission_check", None)
        if check is not None:
            check(request, client)
        return True


def rate_limit_count(*, access_key: str, limit: int) -> tuple[bool, float]:
    """Count one request of this access ID in the current minute. Returns (allowed,
    seconds until the window ends). Raises NONCE_STORE_UNAVAILABLE (fail closed) when the
    shared store cannot be reached."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    retry_after = WINDOW_SECONDS * (window + 1) - now
    key = f"ratelimit:{access_key}:{window}"
    store = caches["nonces"]
    try:
        count = _count(store, key)
    except Exception as exc:  # fail closed, like the nonce store
        logger.error("rate limit store unreachable: %s", type(exc).__name__)
        raise ApiError("NONCE_STORE_UNAVAILABLE", "the rate limit store cannot be reached; retry later",
                       status=503, headers={"Retry-After": "5"}) from None
    return count <= limit, retry_after


def _count(store, key: str) -> int:
    """Add one to the window's counter and return it. Redis: one round trip (SET NX EX and
    INCR in one transaction); the local-memory cache: add, then incr."""
    get_client = getattr(getattr(store, "client", None), "get_client", None)
    if get_client is not None:
        full_key = store.make_key(key)
        pipe = get_client(write=True).pipeline(transaction=True)
        pipe.set(full_key, 0, ex=WINDOW_SECONDS * 2, nx=True)
        pipe.incr(full_key)
        return int(pipe.execute()[1])
    try:
        store.add(key, 0, timeout=WINDOW_SECONDS * 2)
        return store.incr(key)
    except ValueError:  # the key expired between add and incr
        store.add(key, 1, timeout=WINDOW_SECONDS * 2)
        return 1


class AccessIdRateThrottle(BaseThrottle):
    """Fixed one-minute windows per access ID; the counter lives in the shared cache
    (Redis INCR when configured), so every process counts together."""

    def allow_request(self, request, view) -> bool:
        client = request.user
        if not isinstance(client, ApiClient):
            return True
        allowed, self.retry_after = rate_limit_count(
            access_key=client.key, limit=client.access.rate_limit_per_minute
        )
        return allowed

    def wait(self) -> float:
        return getattr(self, "retry_after", WINDOW_SECONDS)
