"""Request signing (docs/signing-api.md §1): HMAC-SHA256 over the string to sign,
with a timestamp window and a nonce claimed once across every process.

`HmacSignatureAuthentication` runs the spec's checks 1–5 in order; scopes and the rate
limit (check 6) are the view's permission and throttle classes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass

from django.conf import settings
from rest_framework.authentication import BaseAuthentication

from accessids.secrets import AccessIdAuthInfo, AppSecretService
from core.errors import AUTH_SCHEME, ApiError, payload_too_large
from core.networks import address_allowed, client_address
from signclient import string_to_sign

from .nonces import NonceStoreUnavailable, StaleTimestamp, nonce_store

logger = logging.getLogger(__name__)

HEADERS = ("X-Access-Id", "X-Timestamp", "X-Nonce", "X-Signature")
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_DIGITS_RE = re.compile(r"^[0-9]{1,16}$")


def string_to_sign_for(request, *, access_id: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The spec's eight lines for this request (the path percent-decoded, as Django has it)."""
    return string_to_sign(
        request.method, request.path, request.META.get("QUERY_STRING", ""), access_id, timestamp, nonce, body
    )


def signature_compute(secret: str, text: str) -> str:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ApiClient:
    """`request.user` of a verified API request: the calling client system."""

    access: AccessIdAuthInfo
    secret_version: int

    is_authenticated = True
    is_anonymous = False

    @property
    def key(self) -> str:
        return self.access.key

    def has_scope(self, scope: str) -> bool:
        return scope in self.access.scopes

    def __str__(self) -> str:
        return self.access.key


def _unauthorized(code: str, message: str, details: dict | None = None) -> ApiError:
    return ApiError(code, message, status=401, details=details)


class HmacSignatureAuthentication(BaseAuthentication):
    """Checks 1–5 of the spec, in order, stopping at the first failure."""

    def authenticate_header(self, request) -> str:
        return AUTH_SCHEME

    def authenticate(self, request):
        django_request = request._request
        headers = django_request.headers
        # The body limit first: nothing below should read an oversized body.
        length = django_request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > settings.API_MAX_BODY_BYTES:
            raise payload_too_large(settings.API_MAX_BODY_BYTES)

        # 1. the four headers, present and well-formed
        values = {name: (headers.get(name) or "").strip() for name in HEADERS}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise _unauthorized("MISSING_AUTH_HEADERS", f"missing header(s): {', '.join(missing)}",
                                {"missing": missing})
        access_key, timestamp, nonce, signature = (values[name] for name in HEADERS)
        django_request.claimed_access_key = access_key[:64]
        if not NONCE_RE.match(nonce):
            raise _unauthorized("INVALID_NONCE", "X-Nonce must be 16-64 characters from A-Z a-z 0-9 _ -")

        # 2. timestamp window
        now_ms = int(time.time() * 1000)
        tolerance_ms = settings.API_TIMESTAMP_TOLERANCE_SECONDS * 1000
        if not _DIGITS_RE.match(timestamp) or abs(now_ms - int(timestamp)) > tolerance_ms:
            raise _unauthorized(
                "INVALID_TIMESTAMP",
                f"X-Timestamp must be Unix time in milliseconds within {settings.API_TIMESTAMP_TOLERANCE_SECONDS} s "
                "of the server's clock",
                {"server_time": now_ms},
            )

        # 3. the access ID exists
        info = AppSecretService.lookup(access_key) if len(access_key) <= 64 else None
        if info is None:
            raise _unauthorized("INVALID_ACCESS_ID", "unknown access ID")
        django_request.access_pk = info.pk

        # 4. signature over the raw body bytes, against every valid secret, in constant time
        try:
            body = django_request.body
        except Exception:  # RequestDataTooBig when Content-Length lied
            raise payload_too_large(settings.API_MAX_BODY_BYTES) from None
        text = string_to_sign_for(django_request, access_id=access_key, timestamp=timestamp, nonce=nonce, body=body)
        provided = signature.lower().encode()
        matched = None
        for candidate in AppSecretService.valid_secrets(access_key):
            if hmac.compare_digest(signature_compute(candidate.secret, text).encode(), provided) and matched is None:
                matched = candidate.version
        if matched is None:
            raise _unauthorized(
                "SIGNATURE_VALIDATION_FAILED",
                "the signature does not match; compare details.string_to_sign_sha256 with the SHA-256 of your string to sign",
                {"string_to_sign_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()},
            )
        django_request.secret_version = matched

        # 3b. only now, to a caller who proved it holds the secret: is the access ID usable from
        # here? (Answered before the signature, these would tell anyone that the ID exists.)
        if not AppSecretService.is_active(info):
            raise ApiError("ACCESS_ID_DISABLED", "this access ID is disabled or expired", status=403)
        if not address_allowed(client_address(django_request), info.allowed_networks):
            raise ApiError("IP_NOT_ALLOWED", "this access ID may not be used from this address", status=403)

        # 5. the nonce, claimed only now that the signature is known to be the caller's
        try:
            fresh = nonce_store().claim(access_key, nonce, int(timestamp))
        except StaleTimestamp as exc:
            raise ApiError(
                "DUPLICATE_REQUEST",
                "this request was signed before the nonce store last lost its data, so it cannot be told apart "
                "from a replay; sign it anew with the current time",
                status=409, details={"not_before": exc.epoch_ms},
            ) from None
        except NonceStoreUnavailable:
            raise ApiError(
                "NONCE_STORE_UNAVAILABLE", "the nonce store cannot be reached; retry later", status=503,
                headers={"Retry-After": "5"},
            ) from None
        if not fresh:
            raise ApiError("DUPLICATE_REQUEST", "this nonce was already used; sign every request anew", status=409)
        return ApiClient(access=info, secret_version=matched), matched
