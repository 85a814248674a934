"""The access system profile (docs/client-profiles.md §7, `acs`): `GET /acs/token/{sender}` and
`POST /acs/sign`, `/acs/sign/xml`, `/acs/sign/179`.

A request is an envelope `{"Head": {"Sign", "Token", "Ccode", "Version"}, "Data": "<payload>"}`.
`AcsScheme` is one more authentication scheme behind the interface of api/schemes.py: it finds
the party by its sender code (Ccode), checks the MD5 signature against the party's valid keys,
the profile, the token, the access ID's state and address, claims the signature value once,
then decrypts `Data` and hands the native endpoint the native request body. Everything after
that — scopes, rate limit, card choice, the card call, the XML store, the one audit event — is
the native view's (`AcsSignView` & co. are the native views with the envelope around them).

Answers: `{"Head": {"Sign", "Ccode", "Status": "success"|"error", "Message": "<中文说明>"},
"Data": "<the native answer JSON, encrypted for the party>"}`, signed with the key that verified
the request. A refusal of authentication itself is neither encrypted nor signed (`Sign` empty,
`Data` the native error JSON in clear): the caller has not shown that it holds the key."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from rest_framework.response import Response

from accessids.acs import (
    AcsPartyInfo,
    AcsSecretKey,
    AcsTokenError,
    acs_envelope,
    acs_keys,
    acs_party_lookup,
    acs_signature_match,
    acs_symmetric_candidates,
    acs_token_check,
    acs_token_issue,
)
from accessids.profiles import ACS
from accessids.secrets import AppSecretService
from core import acs_crypto
from core.dbthread import db_sync_to_async
from core.errors import ApiError, invalid_request, message_zh
from core.jsontext import JsonInputError, json_loads_strict

from .auth import RequestAuthentication
from .base import ApiNotFoundView, SignedAPIView
from .errors import as_api_error
from .nonces import PROFILE_MAX_TTL
from .permissions import rate_limit_count
from .schemes import ApiClient, AuthScheme, access_usable_check, replay_claim, request_body, unauthorized
from .views import Sign179View, SignView, SignXmlView

logger = logging.getLogger(__name__)

HEAD_FIELDS_MAX = 16
# Head.Message: the Chinese message of every code an acs client may see (the native code and
# English message stay in Data); the shared table (core/errors.py) for the codes not worded here.
MESSAGES = {
    "OK": "成功",
    "INVALID_REQUEST": "请求格式不正确",
    "MISSING_AUTH_HEADERS": "缺少认证字段（Head.Ccode、Head.Sign 或 Head.Token）",
    "INVALID_ACCESS_ID": "未知的发送方代码（Ccode）",
    "PROFILE_NOT_ENABLED": "该接入方未启用 acs 接入方式",
    "DUPLICATE_REQUEST": "重复的请求（签名已使用）",
    "ACCESS_ID_DISABLED": "接入方已停用或已过期",
    "NOT_FOUND": "接口不存在",
    "INTERNAL_ERROR": "服务器内部错误",
}


def acs_message(code: str) -> str:
    return MESSAGES.get(code) or message_zh(code)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class AcsScheme(AuthScheme):
    """The access system's envelope as an authentication scheme (module docstring)."""

    name = ACS

    def recognises(self, request) -> bool:
        return request.path.startswith("/acs/")

    @staticmethod
    def envelope(body: bytes) -> tuple[dict[str, str], str]:
        """(Head, Data) of a request body, strictly: Head an object of strings, Data a string."""
        try:
            value = json_loads_strict(body)
        except JsonInputError as exc:
            raise invalid_request(f"the body is refused: {exc.message}") from None
        except ValueError as exc:
            raise invalid_request(f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict) or not isinstance(value.get("Head"), dict) or "Data" not in value:
            raise invalid_request('the body is {"Head": {...}, "Data": "..."}', {"Head": ["required, an object"]})
        head, data = value["Head"], value["Data"]
        if data is None:
            data = ""
        if not isinstance(data, str):
            raise invalid_request("Data is a string (the native body as JSON text, encrypted when the party "
                                  "encrypts)", {"Data": ["must be a string"]})
        if len(head) > HEAD_FIELDS_MAX:
            raise invalid_request(f"Head has more than {HEAD_FIELDS_MAX} fields", {"Head": ["too many fields"]})
        fields: dict[str, str] = {}
        for key, item in head.items():
            if item is None:
                item = ""
            if not isinstance(item, str) or key == "Data" or key == "SecretKey":
                raise invalid_request(f"Head.{key} must be a string", {f"Head.{key}": ["must be a string"]})
            fields[key] = item
        return fields, data

    def authenticate(self, request) -> ApiClient:
        head, data = self.envelope(request_body(request))
        sender = head.get("Ccode", "").strip()
        if not sender:
            raise unauthorized("MISSING_AUTH_HEADERS", "Head.Ccode (the sender code) is missing",
                               {"missing": ["Head.Ccode"]})
        info = acs_party_lookup(sender)
        if info is None:
            raise unauthorized("INVALID_ACCESS_ID", "unknown sender code (Head.Ccode)")
        request.claimed_access_key = info.access_key
        request.access_pk = info.access_pk
        request.acs_party = info
        access = AppSecretService.lookup(info.access_key)
        if access is None:
            raise unauthorized("INVALID_ACCESS_ID", "unknown sender code (Head.Ccode)")

        secret: AcsSecretKey | None = None
        signed_fields = {**{k: v for k, v in head.items() if k != "Sign"}, "Data": data}
        if info.signed:
            provided = head.get("Sign", "").strip()
            if not provided:
                raise unauthorized("MISSING_AUTH_HEADERS", "Head.Sign is missing", {"missing": ["Head.Sign"]})
            secret = acs_signature_match(info, signed_fields, provided)
            if secret is None:
                raise unauthorized("SIGNATURE_VALIDATION_FAILED",
                                   "Head.Sign does not match: MD5 of the Head fields except Sign, Data and "
                                   "SecretKey, empty ones left out, sorted, key=value joined with &")
            if secret.kind == "app-secret":
                request.secret_version = secret.version
        # Only now, to a caller who holds the key: is the profile on?
        if access.profile_window(ACS) is None:
            raise unauthorized("PROFILE_NOT_ENABLED", "the acs profile is not enabled for this party")
        issued_ms = None
        if info.token_required:
            token = head.get("Token", "").strip()
            if not token:
                raise unauthorized("MISSING_AUTH_HEADERS", "Head.Token is missing: GET /acs/token/{sender} first",
                                   {"missing": ["Head.Token"]})
            try:
                issued_ms = int(acs_token_check(info=info, token=token).timestamp() * 1000)
            except AcsTokenError as exc:
                raise unauthorized(exc.code, exc.message) from None
        access_usable_check(request, access)
        keys, secret = self._keys(info, secret, data)
        plaintext = self._decrypt(info, keys, secret, data)

        # No timestamp in this format: the signature value (or, unsigned, the whole envelope) is
        # claimed once, for longer than a token lives.
        value = head.get("Sign", "").strip().lower() if info.signed else _compact([sorted(head.items()), data])
        replay_claim(f"{ACS}:{info.access_key}", hashlib.sha256(value.encode("utf-8")).hexdigest(),
                     issued_ms or int(time.time() * 1000), window_seconds=PROFILE_MAX_TTL, what="signature")

        request.acs_secret = secret
        request.acs_verified = True
        # The native endpoint reads the native body.
        request._body = plaintext
        request.META["CONTENT_LENGTH"] = str(len(plaintext))
        request.META["CONTENT_TYPE"] = "application/json"
        return ApiClient(access=access, secret_version=getattr(request, "secret_version", None), profile=ACS)

    @staticmethod
    def _keys(info: AcsPartyInfo, secret: AcsSecretKey | None, data: str):
        """The message's keys; the party must be able to read the answer too (its certificate
        in the RSA modes), or the card is never used."""
        try:
            keys = acs_keys(info, secret)
        except acs_crypto.AcsCryptoError as exc:
            raise ApiError("ACS_NOT_CONFIGURED", str(exc), status=403) from None
        if info.encryption in acs_crypto.RSA_MODES:
            missing = [what for what, key in (("the platform's key pair (生成证书)", keys.private_key),
                                              ("the party's encryption certificate (上传加密证书)",
                                               keys.party_public_key)) if key is None]
            if missing:
                raise ApiError("ACS_NOT_CONFIGURED", f"not configured for this party: {', '.join(missing)}",
                               status=403)
        return keys, secret

    @staticmethod
    def _decrypt(info: AcsPartyInfo, keys: acs_crypto.AcsKeys, secret: AcsSecretKey | None, data: str) -> bytes:
        """Data in clear, as UTF-8 JSON text. An unsigned AES/DES party may use its previous
        key during the grace period: the key that gives JSON wins."""
        candidates = [keys]
        if info.encryption in (acs_crypto.AES_MODE, acs_crypto.DES_MODE) and (secret is None or secret.kind != "key"):
            algorithm = acs_crypto.SYMMETRIC[info.encryption]
            candidates = [acs_crypto.AcsKeys(mode=keys.mode, symmetric=acs_crypto.symmetric_key_bytes(k.text, algorithm))
                          for k in acs_symmetric_candidates(info)] or [keys]
        reason = "Data does not decrypt"
        for candidate in candidates:
            try:
                plaintext = acs_crypto.decrypt_from_party(candidate, data)
                json.loads(plaintext.decode("utf-8"))
                return plaintext
            except acs_crypto.AcsCryptoError as exc:
                reason = f"Data does not decrypt with this party's key: {exc}"
            except (UnicodeDecodeError, ValueError):
                reason = "Data decrypts, but not to UTF-8 JSON text (the native request body)"
        raise ApiError("DECRYPTION_FAILED", reason, status=400)

    def refuse(self, error: ApiError, request_id: str) -> Response:
        return acs_error_response(None, error, request_id)


def _answer(request, *, ok: bool, code: str, payload: dict[str, Any], status: int,
            headers: dict[str, str] | None = None) -> Response:
    """The acs answer envelope. Encrypted for the party and signed with the key that verified
    the request once the request was authenticated; in clear and unsigned before."""
    info: AcsPartyInfo | None = getattr(request, "acs_party", None) if request is not None else None
    text = _compact(payload)
    if info is not None and getattr(request, "acs_verified", False):
        body = acs_envelope(info, payload_text=text, ok=ok, message=acs_message(code),
                            secret=getattr(request, "acs_secret", None))
    else:
        body = {"Head": {"Sign": "", "Ccode": info.sender_code if info else "", "Status": "success" if ok else "error",
                         "Message": acs_message(code)}, "Data": text}
    response = Response(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    response.acs_wrapped = True
    return response


def acs_error_response(request, error: ApiError, request_id: str | None = None) -> Response:
    payload: dict[str, Any] = {"success": False, "code": error.code, "message": error.message}
    if request_id or request is not None:
        payload["request_id"] = request_id or getattr(request, "request_id", "")
    if error.details:
        payload["details"] = error.details
    try:
        return _answer(request, ok=False, code=error.code, payload=payload, status=error.status_code,
                       headers=error.headers)
    except acs_crypto.AcsCryptoError:  # the party's keys changed meanwhile: say it in clear
        request.acs_verified = False
        return _answer(request, ok=False, code=error.code, payload=payload, status=error.status_code,
                       headers=error.headers)


SCHEME = AcsScheme()


class AcsAuthentication(RequestAuthentication):
    scheme = SCHEME


class AcsEnvelopeMixin:
    """A native view with the access system's envelope around it: every answer, success or
    refusal, in the acs shape (the audit event keeps the native code)."""

    authentication_classes = [AcsAuthentication]
    schema = None  # documented in docs/client-profiles.md, not in the native OpenAPI document

    def handle_exception(self, exc):
        django_request = self.request._request
        error = as_api_error(exc)
        django_request.audit_error = (error.code, error.message)
        response = acs_error_response(django_request, error)
        response.exception = True
        return response

    def finalize_response(self, request, response, *args, **kwargs):
        data = getattr(response, "data", None)
        if not getattr(response, "acs_wrapped", False) and isinstance(data, dict):
            django_request = request._request
            if response.status_code >= 400:  # e.g. the audit event could not be written
                error = ApiError(str(data.get("code") or "ERROR"), str(data.get("message") or ""),
                                 status=response.status_code)
                response = acs_error_response(django_request, error)
            else:
                try:
                    response = _answer(django_request, ok=True, code="OK", payload=data,
                                       status=response.status_code,
                                       headers={name: value for name, value in response.items()
                                                if name.lower().startswith("x-")})
                except acs_crypto.AcsCryptoError as exc:  # the party's keys changed during the request
                    django_request.audit_error = ("ACS_NOT_CONFIGURED", str(exc))
                    response = acs_error_response(django_request, ApiError("ACS_NOT_CONFIGURED", str(exc),
                                                                           status=403))
        return super().finalize_response(request, response, *args, **kwargs)


class AcsSignView(AcsEnvelopeMixin, SignView):
    """`POST /acs/sign`: `POST /api/v1/sign` in the envelope."""


class AcsSignXmlView(AcsEnvelopeMixin, SignXmlView):
    """`POST /acs/sign/xml`: `POST /api/v1/sign/xml` in the envelope (the document is stored)."""


class AcsSign179View(AcsEnvelopeMixin, Sign179View):
    """`POST /acs/sign/179`: `POST /api/v1/sign/179` in the envelope."""


class AcsNotFoundView(AcsEnvelopeMixin, ApiNotFoundView):
    """Any other path under /acs/: NOT_FOUND in the envelope (audited)."""

    authentication_classes = []

    async def dispatch(self, request, *args, **kwargs):
        request.auth_scheme = SCHEME
        return await super().dispatch(request, *args, **kwargs)


class AcsTokenView(SignedAPIView):
    """`GET /acs/token/{sender}`: a new token for the party, valid two hours, encrypted as the
    party encrypts (`{"status": "success", "data": "..."}`). Counts against the access ID's
    rate limit; audited like every request."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []
    schema = None

    def handle_exception(self, exc):
        django_request = self.request._request
        error = as_api_error(exc)
        django_request.audit_error = (error.code, error.message)
        body = {"status": "error", "code": error.code, "message": acs_message(error.code),
                "detail": error.message, "request_id": django_request.request_id}
        response = Response(body, status=error.status_code, headers=error.headers)
        response.exception = True
        return response

    async def get(self, request, sender: str):
        django_request = request._request
        django_request.auth_scheme = SCHEME  # audited as the acs profile
        token, encrypted = await db_sync_to_async(self._issue)(django_request, sender)
        del token
        return Response({"status": "success", "data": encrypted})

    @staticmethod
    def _issue(request, sender: str) -> tuple[str, str]:
        info = acs_party_lookup(sender.strip())
        if info is None:
            raise unauthorized("INVALID_ACCESS_ID", "unknown sender code")
        request.claimed_access_key, request.access_pk, request.acs_party = info.access_key, info.access_pk, info
        access = AppSecretService.lookup(info.access_key)
        if access is None or access.profile_window(ACS) is None:
            raise unauthorized("PROFILE_NOT_ENABLED", "the acs profile is not enabled for this party")
        access_usable_check(request, access)
        allowed, retry_after = rate_limit_count(access_key=access.key, limit=access.rate_limit_per_minute)
        if not allowed:
            wait = max(1, int(retry_after + 0.999))
            raise ApiError("RATE_LIMITED", f"rate limit exceeded; retry in {wait} s", status=429,
                           headers={"Retry-After": str(wait)})
        keys, _ = AcsScheme._keys(info, None, "")
        token, expires = acs_token_issue(info=info)
        request.audit["details"] = {"token_expires_at": expires.isoformat()}
        return token, acs_crypto.encrypt_for_party(keys, token.encode("ascii"))
