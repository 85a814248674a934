"""Authentication schemes: the native HMAC request signing (docs/signing-api.md §1) and the
client profiles of the systems the platform replaces (docs/client-profiles.md), one class
each behind one interface.

A scheme recognises its requests, says what they present (access ID, timestamp, nonce,
signature), computes the message it signs and the signature over it, and describes a
refusal in its own wire shape. `AuthScheme.authenticate` runs the checks once for all of
them, in the native order:

1. the scheme's headers, present and well-formed
2. the timestamp inside the window (per access ID and profile for the profiles)
3. the access ID exists (the profile's default when the request names none), and has the
   profile enabled
4. the signature, against every valid secret (rotation grace included), in constant time
5. the access ID is enabled and may be used from the client's address
6. the nonce — or, for a scheme without one, the signature value — claimed once

Every check raises an `ApiError` with the native code; `refuse()` turns it into the
profile's shape. What follows authentication (scopes, rate limit, card choice, the one
audit event, metrics) is the view's, the same for every scheme. The sign-server profile
(api/legacy.py) implements the same interface with decryption as its proof."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from rest_framework.response import Response

from accessids import profiles
from accessids.secrets import AccessIdAuthInfo, AppSecretService
from core.errors import ApiError, error_response, payload_too_large
from core.jsontext import JsonInputError, JsonNumber, json_compact, json_loads_strict
from core.networks import address_allowed, client_address
from signclient import string_to_sign

from .nonces import PROFILE_MAX_TTL, NonceStoreUnavailable, StaleTimestamp, nonce_store

# The failures of authentication itself (as opposed to what an authenticated access ID may
# do): profiles answer these with their own status code.
AUTH_FAILURES = frozenset({
    "MISSING_AUTH_HEADERS", "INVALID_NONCE", "INVALID_TIMESTAMP", "INVALID_ACCESS_ID",
    "SIGNATURE_VALIDATION_FAILED", "DUPLICATE_REQUEST", "PROFILE_NOT_ENABLED",
})
_DIGITS_RE = re.compile(r"^[0-9]{1,16}$")


@dataclass(frozen=True)
class ApiClient:
    """`request.user` of a verified API request: the calling client system."""

    access: AccessIdAuthInfo
    secret_version: int | None
    profile: str = profiles.NATIVE

    is_authenticated = True
    is_anonymous = False

    @property
    def key(self) -> str:
        return self.access.key

    def has_scope(self, scope: str) -> bool:
        return scope in self.access.scopes

    def __str__(self) -> str:
        return self.access.key


@dataclass(frozen=True)
class Presented:
    """What a request carries for authentication, as its scheme reads it."""

    access_key: str  # "" when the request names none (the profile's default is used)
    timestamp: str  # as sent
    timestamp_ms: int | None  # None when not a number
    nonce: str  # "" for schemes without one
    signature: str


@dataclass(frozen=True)
class Verified:
    """A request whose signature checks passed (`AuthScheme.verify`), its nonce not yet claimed."""

    info: AccessIdAuthInfo
    presented: Presented
    secret_version: int
    window: int


def unauthorized(code: str, message: str, details: dict | None = None) -> ApiError:
    return ApiError(code, message, status=401, details=details)


def access_usable_check(request, info: AccessIdAuthInfo) -> None:
    """Check 3b of the native API, asked only of a caller who proved it holds the secret
    (answered earlier, it would tell anyone that the access ID exists)."""
    if not AppSecretService.is_active(info):
        raise ApiError("ACCESS_ID_DISABLED", "this access ID is disabled or expired", status=403)
    if not address_allowed(client_address(request), info.allowed_networks):
        raise ApiError("IP_NOT_ALLOWED", "this access ID may not be used from this address", status=403)


def replay_claim(namespace: str, value: str, timestamp_ms: int, *, window_seconds: int | None, what: str) -> None:
    """Claim `value` (a nonce or a signature) once in `namespace`, remembered for longer
    than the window on either side of the server's clock (None: the native window, whose
    nonces live API_NONCE_TTL_SECONDS)."""
    # A profile's claims are kept as long as its widest possible window needs: an administrator may
    # widen the window after a claim was made.
    ttl = None if window_seconds is None else PROFILE_MAX_TTL
    try:
        fresh = nonce_store().claim(namespace, value, timestamp_ms, ttl=ttl)
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
        raise ApiError("DUPLICATE_REQUEST", f"this {what} was already used; sign every request anew", status=409)


def request_body(request) -> bytes:
    try:
        return request.body
    except Exception:  # RequestDataTooBig when Content-Length lied
        raise payload_too_large(settings.API_MAX_BODY_BYTES) from None


class AuthScheme:
    """One way to authenticate a request; subclasses fill in the hooks."""

    name = profiles.NATIVE
    # Does the signature cover the method and the path? A scheme whose signature does not (gys,
    # x-signature) cannot be told from the same headers sent to another endpoint by whoever saw
    # them, so the endpoints that change credentials or delete refuse it (`request_line_bound`).
    binds_request_line = True

    @property
    def kind(self) -> profiles.ProfileKind | None:
        return profiles.PROFILE_KINDS.get(self.name)

    # --- hooks ----------------------------------------------------------------------
    def recognises(self, request) -> bool:
        raise NotImplementedError

    def present(self, request) -> Presented:
        """The request's credentials; raises MISSING_AUTH_HEADERS / INVALID_NONCE."""
        raise NotImplementedError

    def message(self, request, presented: Presented, access_key: str, body: bytes) -> str:
        """The text the signature covers."""
        raise NotImplementedError

    def sign(self, secret: str, message: str) -> str:
        raise NotImplementedError

    def normalised(self, signature: str) -> str:
        return signature.lower()

    def replay_value(self, presented: Presented) -> tuple[str, str]:
        """(value claimed once, what it is called in the refusal)."""
        return presented.nonce, "nonce"

    def signature_failure(self, message: str) -> ApiError:
        return unauthorized("SIGNATURE_VALIDATION_FAILED", "the signature does not match")

    def refuse(self, error: ApiError, request_id: str) -> Response:
        """The error in this scheme's wire shape."""
        return error_response(error, request_id)

    # --- the checks, once for every scheme --------------------------------------------
    def window_seconds(self, info: AccessIdAuthInfo | None) -> int:
        kind = self.kind
        if kind is None:
            return int(settings.API_TIMESTAMP_TOLERANCE_SECONDS)
        return (info.profile_window(self.name) if info else None) or kind.window_seconds

    def timestamp_refusal(self, window: int, now_ms: int) -> ApiError:
        return unauthorized(
            "INVALID_TIMESTAMP",
            f"the timestamp must be within {window} s of the server's clock",
            {"server_time": now_ms},
        )

    def access_key_for(self, presented: Presented) -> str:
        if presented.access_key:
            return presented.access_key
        kind = self.kind
        return (AppSecretService.profile_default(self.name) or "") if kind and kind.has_default else ""

    def authenticate(self, request) -> ApiClient:
        """Checks 1–6 (module docstring), stopping at the first failure."""
        return self.claim(request, self.verify(request))

    def verify(self, request) -> Verified:
        """Checks 1–5: who the caller is, proven by the signature. Changes nothing (a refusal
        raises before anything is written; only caches are filled)."""
        try:
            presented = self.present(request)
        except ApiError:
            if not getattr(request, "claimed_access_key", "") and self.kind is not None and self.kind.has_default:
                # A request naming no access ID is the default one's: audited as such.
                request.claimed_access_key = (AppSecretService.profile_default(self.name) or "")[:64]
            raise
        access_key = self.access_key_for(presented)
        request.claimed_access_key = (presented.access_key or access_key)[:64]
        info = AppSecretService.lookup(access_key) if access_key and len(access_key) <= 64 else None

        window = self.window_seconds(info)
        now_ms = int(time.time() * 1000)
        if presented.timestamp_ms is None or abs(now_ms - presented.timestamp_ms) > window * 1000:
            raise self.timestamp_refusal(window, now_ms)
        if info is None:
            raise unauthorized("INVALID_ACCESS_ID", "unknown access ID")
        request.access_pk = info.pk

        text = self.message(request, presented, info.key, request_body(request))
        provided = self.normalised(presented.signature).encode()
        matched = None
        for candidate in AppSecretService.valid_secrets_of(info):
            if hmac.compare_digest(self.sign(candidate.secret, text).encode(), provided) and matched is None:
                matched = candidate.version
        if matched is None:
            raise self.signature_failure(text)
        request.secret_version = matched
        # Only now, to a caller who holds the secret: is the profile enabled (answered earlier, it
        # would tell anyone which profiles an access ID has)?
        if self.kind is not None and info.profile_window(self.name) is None:
            raise unauthorized("PROFILE_NOT_ENABLED", f"the {self.name} profile is not enabled for this access ID")

        access_usable_check(request, info)
        return Verified(info=info, presented=presented, secret_version=matched, window=window)

    def claim(self, request, verified: Verified) -> ApiClient:
        """Check 6: the nonce (or the signature) claimed once; the one write of authentication."""
        info, presented = verified.info, verified.presented
        value, what = self.replay_value(presented)
        namespace = info.key if self.kind is None else f"{self.name}:{info.key}"
        if self.kind is not None:  # any length the scheme allows fits the store's column
            value = hashlib.sha256(value.encode("utf-8")).hexdigest()
        replay_claim(namespace, value, presented.timestamp_ms,
                     window_seconds=verified.window if self.kind else None, what=what)
        return ApiClient(access=info, secret_version=verified.secret_version, profile=self.name)


def _header(request, name: str) -> str:
    return (request.headers.get(name) or "").strip()


def _timestamp_ms(text: str, *, seconds: bool = False) -> int | None:
    if not _DIGITS_RE.match(text):
        return None
    return int(text) * 1000 if seconds else int(text)


# --- native ---------------------------------------------------------------------------------

NATIVE_HEADERS = ("X-Access-Id", "X-Timestamp", "X-Nonce", "X-Signature")
NATIVE_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def signature_compute(secret: str, text: str) -> str:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


class NativeScheme(AuthScheme):
    """docs/signing-api.md §1: the eight-line string to sign, lowercase hex HMAC-SHA256."""

    name = profiles.NATIVE

    def recognises(self, request) -> bool:
        return True  # the fallback: its refusals name the headers a request lacks

    def present(self, request) -> Presented:
        values = {name: _header(request, name) for name in NATIVE_HEADERS}
        missing = [name for name, value in values.items() if not value]
        if missing:
            request.claimed_access_key = values["X-Access-Id"][:64]
            raise unauthorized("MISSING_AUTH_HEADERS", f"missing header(s): {', '.join(missing)}",
                               {"missing": missing})
        access_key, timestamp, nonce, signature = (values[name] for name in NATIVE_HEADERS)
        if not NATIVE_NONCE_RE.match(nonce):
            request.claimed_access_key = access_key[:64]
            raise unauthorized("INVALID_NONCE", "X-Nonce must be 16-64 characters from A-Z a-z 0-9 _ -")
        return Presented(access_key, timestamp, _timestamp_ms(timestamp), nonce, signature)

    def timestamp_refusal(self, window: int, now_ms: int) -> ApiError:
        return unauthorized(
            "INVALID_TIMESTAMP",
            f"X-Timestamp must be Unix time in milliseconds within {window} s of the server's clock",
            {"server_time": now_ms},
        )

    def message(self, request, presented: Presented, access_key: str, body: bytes) -> str:
        return string_to_sign(request.method, request.path, request.META.get("QUERY_STRING", ""), access_key,
                              presented.timestamp, presented.nonce, body)

    def sign(self, secret: str, message: str) -> str:
        return signature_compute(secret, message)

    def signature_failure(self, message: str) -> ApiError:
        return unauthorized(
            "SIGNATURE_VALIDATION_FAILED",
            "the signature does not match; compare details.string_to_sign_sha256 with the SHA-256 of your string to sign",
            {"string_to_sign_sha256": hashlib.sha256(message.encode("utf-8")).hexdigest()},
        )


# --- gys --------------------------------------------------------------------------------------

GYS_HEADERS = ("gys_access_id", "gys_timestamp", "gys_nonce", "gys_signature")
_GYS_NONCE_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
# Chinese messages for the gys validator's codes (and the native checks it did not have).
_GYS_MESSAGES = {
    "MISSING_AUTH_HEADERS": "缺少认证请求头",
    "INVALID_NONCE": "gys_nonce 格式不正确（1-128 个可见 ASCII 字符）",
    "INVALID_TIMESTAMP": "请求时间戳无效或已过期",
    "INVALID_ACCESS_ID": "无效的 Access ID",
    "SIGNATURE_VALIDATION_FAILED": "签名验证失败",
    "DUPLICATE_REQUEST": "重复的请求（nonce 已使用）",
    "PROFILE_NOT_ENABLED": "该 Access ID 未启用 gys 接入方式",
    "ACCESS_ID_DISABLED": "Access ID 已停用或已过期",
    "IP_NOT_ALLOWED": "客户端地址不允许",
    "PERMISSION_DENIED": "无权限",
    "RATE_LIMITED": "请求过于频繁，请稍后重试",
    "NONCE_STORE_UNAVAILABLE": "服务暂时不可用，请稍后重试",
    "PAYLOAD_TOO_LARGE": "请求数据过大",
}


def gys_value_text(value: Any) -> str:
    """A parameter's value as the gys string to sign writes it: a string as it is, anything
    else (numbers as sent, true/false, null, objects and arrays with their keys in the order
    received) as compact JSON."""
    if isinstance(value, str) and not isinstance(value, JsonNumber):
        return value
    return json_compact(value)


def gys_string_to_sign(params: list[tuple[str, Any]] | dict[str, Any], *, access_id: str, timestamp: str,
                       nonce: str) -> str:
    """docs/client-profiles.md, gys: the parameters (nulls left out) and the three gys
    headers, sorted by key in code point order, `key=value` joined with `&`."""
    items = list(params.items()) if isinstance(params, dict) else list(params)
    items = [(key, value) for key, value in items if value is not None]
    items += [("gys_access_id", access_id), ("gys_timestamp", timestamp), ("gys_nonce", nonce)]
    items.sort(key=lambda item: item[0])
    return "&".join(f"{key}={gys_value_text(value)}" for key, value in items)


def _pairs_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonInputError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def gys_parameters(body: bytes, query: str) -> list[tuple[str, Any]]:
    """The request's parameters: a JSON object body's top-level fields, else the query's."""
    if not body.strip():
        try:
            return parse_qsl(query, keep_blank_values=True, max_num_fields=settings.DATA_UPLOAD_MAX_NUMBER_FIELDS)
        except ValueError:
            raise unauthorized("SIGNATURE_VALIDATION_FAILED", "too many query parameters") from None
    try:
        data = json_loads_strict(body, object_pairs_hook=_pairs_unique, parse_float=JsonNumber, parse_int=JsonNumber)
    except (ValueError, UnicodeDecodeError) as exc:
        raise unauthorized("SIGNATURE_VALIDATION_FAILED", f"the body is not a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise unauthorized("SIGNATURE_VALIDATION_FAILED", "the body is not a JSON object")
    if query:
        raise unauthorized("SIGNATURE_VALIDATION_FAILED",
                           "a request with a body must not carry query parameters (they would not be signed)")
    reserved = sorted(set(data) & set(GYS_HEADERS))
    if reserved:
        raise unauthorized("SIGNATURE_VALIDATION_FAILED", f"the body must not contain {', '.join(reserved)}")
    return list(data.items())


class GysScheme(AuthScheme):
    """HMAC-SHA256 over the sorted parameters, headers with underscores."""

    name = profiles.GYS
    binds_request_line = False

    @staticmethod
    def headers(request) -> dict[str, str]:
        """The gys headers as sent. Django drops header names with underscores from META
        under ASGI (they could be confused with hyphens), so they are read from the ASGI
        scope; a hyphenated spelling (`gys-access-id`, what some proxies forward) counts too."""
        found: dict[str, str] = {}
        scope = getattr(request, "scope", None)
        if scope is not None:
            for name, value in scope.get("headers", ()):
                header = name.decode("latin-1").lower().replace("-", "_")
                if header in GYS_HEADERS and header not in found:
                    found[header] = value.decode("latin-1")
            return found
        for header in GYS_HEADERS:  # WSGI (and the test client): META
            value = request.META.get("HTTP_" + header.upper())
            if value is not None:
                found[header] = value
        return found

    def recognises(self, request) -> bool:
        return bool(self.headers(request))

    def present(self, request) -> Presented:
        sent = self.headers(request)
        values = {header: (sent.get(header) or "").strip() for header in GYS_HEADERS}
        missing = [header for header, value in values.items() if not value]
        request.claimed_access_key = values["gys_access_id"][:64]
        if missing:
            raise unauthorized("MISSING_AUTH_HEADERS", f"missing header(s): {', '.join(missing)}",
                               {"missing": missing})
        access_key, timestamp, nonce, signature = (values[header] for header in GYS_HEADERS)
        if not _GYS_NONCE_RE.match(nonce):
            raise unauthorized("INVALID_NONCE", "gys_nonce must be 1-128 visible ASCII characters")
        return Presented(access_key, timestamp, _timestamp_ms(timestamp), nonce, signature)

    def message(self, request, presented: Presented, access_key: str, body: bytes) -> str:
        params = gys_parameters(body, request.META.get("QUERY_STRING", ""))
        return gys_string_to_sign(params, access_id=presented.access_key, timestamp=presented.timestamp,
                                  nonce=presented.nonce)

    def sign(self, secret: str, message: str) -> str:
        return signature_compute(secret, message)

    def refuse(self, error: ApiError, request_id: str) -> Response:
        status = error.status_code if error.status_code >= 500 or error.code == "PAYLOAD_TOO_LARGE" else 400
        message = _GYS_MESSAGES.get(error.code, error.message)
        response = Response({"success": False, "code": error.code, "message": message}, status=status)
        if error.code == "RATE_LIMITED" or status == 503:
            for name, value in error.headers.items():
                response[name] = value
        return response


# --- x-signature -------------------------------------------------------------------------------

_XSIG_RE = re.compile(r"^[A-Za-z0-9+/]{43}=?$")
_XSIG_NONCE_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_XSIG_MESSAGES = {
    "INVALID_TIMESTAMP": "Timestamp not in tolerance",
    "DUPLICATE_REQUEST": "nonce already used",
}


class XSignatureScheme(AuthScheme):
    """HMAC-SHA256 (Base64) over `nonce=...&timestamp=...`; the body is not covered."""

    name = profiles.X_SIGNATURE
    binds_request_line = False

    def recognises(self, request) -> bool:
        """A Base64 signature; or, without a native one, a timestamp in seconds (so a request
        that lost or garbled its X-Signature is still refused in this profile's shape)."""
        signature = _header(request, "X-Signature")
        if _XSIG_RE.match(signature):
            return True
        return not _NATIVE_SIGNATURE_RE.match(signature) and bool(_SECONDS_RE.match(_header(request, "X-Timestamp")))

    def present(self, request) -> Presented:
        access_key, timestamp = _header(request, "X-Access-Id"), _header(request, "X-Timestamp")
        nonce, signature = _header(request, "X-Nonce"), _header(request, "X-Signature")
        request.claimed_access_key = access_key[:64]
        missing = [name for name, value in (("X-Signature", signature), ("X-Timestamp", timestamp), ("X-Nonce", nonce))
                   if not value]
        if missing:
            raise unauthorized("MISSING_AUTH_HEADERS", f"missing header(s): {', '.join(missing)}",
                               {"missing": missing})
        if not _XSIG_NONCE_RE.match(nonce):
            raise unauthorized("INVALID_NONCE", "X-Nonce must be 1-128 visible ASCII characters")
        return Presented(access_key, timestamp, _timestamp_ms(timestamp, seconds=True), nonce, signature)

    def message(self, request, presented: Presented, access_key: str, body: bytes) -> str:
        return f"nonce={presented.nonce}&timestamp={presented.timestamp}"

    def sign(self, secret: str, message: str) -> str:
        digest = hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    def normalised(self, signature: str) -> str:
        return signature if signature.endswith("=") else signature + "="

    def refuse(self, error: ApiError, request_id: str) -> Response:
        if error.code in AUTH_FAILURES:
            return Response({"code": 401, "msg": _XSIG_MESSAGES.get(error.code, "signature_auth failed")}, status=401)
        response = Response({"code": error.status_code, "msg": error.message}, status=error.status_code)
        for name, value in error.headers.items():
            response[name] = value
        return response


# --- cp-md5 ------------------------------------------------------------------------------------

_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")
_NATIVE_SIGNATURE_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SECONDS_RE = re.compile(r"^[0-9]{1,10}$")
# Where the cp-md5 scheme applies: the proxy's endpoints (and the native rpc it mirrors).
PROXY_ONLY_PATHS = frozenset({"/rpc", "/api/customs179"})
CP_MD5_PATHS = PROXY_ONLY_PATHS | {"/api/v1/rpc"}


class CpMd5Scheme(AuthScheme):
    """chinaport-proxy: MD5(METHOD + PATH + TIMESTAMP + BODY + SECRET), no nonce: the
    signature value is claimed once. Only on the proxy's endpoints (the query is not signed)."""

    name = profiles.CP_MD5

    def recognises(self, request) -> bool:
        """On the proxy's own endpoints, every request that is not plainly native (a nonce, a
        64-hex signature): a missing or garbled header is refused in the proxy's shape. On
        `/api/v1/rpc`, only a 32-hex signature without a nonce."""
        if request.path not in CP_MD5_PATHS or _header(request, "X-Nonce"):
            return False
        signature = _header(request, "X-Signature")
        if request.path in PROXY_ONLY_PATHS:
            return not _NATIVE_SIGNATURE_RE.match(signature)
        return bool(_MD5_RE.match(signature))

    def present(self, request) -> Presented:
        access_key, timestamp = _header(request, "X-Access-Id"), _header(request, "X-Timestamp")
        request.claimed_access_key = access_key[:64]
        signature = _header(request, "X-Signature")
        missing = [name for name, value in (("X-Timestamp", timestamp), ("X-Signature", signature)) if not value]
        if missing:
            raise unauthorized("MISSING_AUTH_HEADERS", f"missing header(s): {', '.join(missing)}",
                               {"missing": missing})
        return Presented(access_key, timestamp, _timestamp_ms(timestamp), "", signature)

    def message(self, request, presented: Presented, access_key: str, body: bytes) -> str:
        # Bytes, not text: the body is hashed exactly as sent (kept as latin-1 code points).
        return (request.method.upper() + request.path + presented.timestamp).encode("utf-8").decode("latin-1") \
            + body.decode("latin-1")

    def sign(self, secret: str, message: str) -> str:
        return hashlib.md5(message.encode("latin-1") + secret.encode("utf-8"), usedforsecurity=False).hexdigest()

    def replay_value(self, presented: Presented) -> tuple[str, str]:
        return presented.signature.lower(), "signature"

    def refuse(self, error: ApiError, request_id: str) -> Response:
        status = 401 if error.code in AUTH_FAILURES else error.status_code
        response = Response({"error": error.message}, status=status)
        for name, value in error.headers.items():
            response[name] = value
        return response


# Asked in this order; the native scheme takes what no profile recognises.
SCHEMES: tuple[AuthScheme, ...] = (GysScheme(), CpMd5Scheme(), XSignatureScheme(), NativeScheme())
SCHEMES_BY_NAME = {scheme.name: scheme for scheme in SCHEMES}


def scheme_for(request) -> AuthScheme:
    return next(scheme for scheme in SCHEMES if scheme.recognises(request))
