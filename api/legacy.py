"""The sign-server compatible endpoints (docs/sign-server-compat.md): `POST /getCode`,
`POST /xml-files/add|list|delete`, `GET /` (and `GET /health` in views.py).

The caller is the access ID whose legacy AES key decrypts the body; from there a legacy
call is treated like a native one: the access ID must be active, called from an allowed
address, hold the scope, stay within its rate limit, and every call writes one audit
event (source "legacy"). Answers keep the legacy envelope `{"code", "msg", "data"}`.

Stricter than the old server on purpose: the PIN in `pwdstr` is used only when the card
device has none configured and is never logged; `directory` is a name in the database."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from accessids.profiles import SIGN_SERVER
from accessids.secrets import AccessIdAuthInfo, AppSecretService
from accessids.services import legacy_keys_all
from audit.models import AuditEvent
from audit.services import audit_event_record, data_digest
from core.dbthread import db_sync_to_async
from core.errors import ApiError
from core.jsontext import JsonInputError, json_loads_strict
from core.legacy_cipher import LegacyDecryptError, legacy_data_encrypt, legacy_decrypt
from core.networks import client_address
from signing.pools import CARD_HEADER, card_target_for, card_target_run, card_trace_audit
from signing.services import data_sign
from ukey.client import UKeyError
from xmlstore.selectors import xml_document_find, xml_documents_in_directory
from xmlstore.services import xml_directory_clean, xml_document_delete, xml_document_write, xml_filename_clean

from .permissions import rate_limit_count
from .schemes import ApiClient, AuthScheme, access_usable_check

logger = logging.getLogger(__name__)

LEGACY_PATHS = frozenset({"/getCode", "/xml-files/add", "/xml-files/list", "/xml-files/delete"})
SERVICE_NAME = "signplatform (sign-server compatible API)"
SERVICE_VERSION = "1.0.0"
ENDPOINTS = [
    {"method": "POST", "path": "/getCode", "description": "签名 (sign data with the card)"},
    {"method": "POST", "path": "/xml-files/add", "description": "新增XML文件 (store an XML document)"},
    {"method": "POST", "path": "/xml-files/list", "description": "查询XML文件 (list XML documents)"},
    {"method": "POST", "path": "/xml-files/delete", "description": "删除XML文件 (delete an XML document)"},
    {"method": "GET", "path": "/health", "description": "健康检查 (card state)"},
]


class LegacyError(Exception):
    """An answer in the legacy error shape: HTTP status, envelope code, message; `outcome`
    is the native error code written to the audit log."""

    def __init__(self, http_status: int, code: int, msg: str, *, outcome: str, headers: dict | None = None):
        super().__init__(msg)
        self.http_status, self.code, self.msg, self.outcome = http_status, code, msg, outcome
        self.headers = headers or {}


@dataclass
class LegacyCall:
    """One legacy request on its way through: who, what, and what to audit."""

    request: Any
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    access: AccessIdAuthInfo | None = None
    folded_key: bytes = b""
    audit: dict[str, Any] = field(default_factory=dict)
    card_trace: dict[str, Any] = field(default_factory=dict)
    audit_recorded: bool = False

    def audit_fields(self, *, http_status: int, outcome: str, message: str = "") -> dict[str, Any]:
        fields = {
            "event_type": AuditEvent.API_REQUEST,
            "source": "legacy",
            "profile": SIGN_SERVER,
            "request_id": self.request.request_id,
            "access_id": self.access.pk if self.access else None,
            "access_key": self.access.key if self.access else "",
            "endpoint": f"{self.request.method} {self.endpoint}",
            "outcome": outcome,
            "http_status": http_status,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "client_ip": client_address(self.request),
            "message": message,
        }
        fields.update(self.audit)
        return card_trace_audit(self.card_trace, fields)

    def commit_with_audit(self, write):
        """A write and its audit event in one transaction (call from a DB thread)."""
        with transaction.atomic():
            result = write()
            audit_event_record(**self.audit_fields(http_status=200, outcome=AuditEvent.OK))
        self.audit_recorded = True
        return result


def _envelope(code: int, msg: str, data: Any, *, status: int = 200, **extra) -> JsonResponse:
    body = {"code": code, "msg": msg, "data": data, **extra}
    return JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})


def _identify(body: bytes) -> tuple[str, bytes, Any]:
    """(access ID key, folded key, decoded JSON) for the legacy key that decrypts the body.
    A key that gives JSON wins; one that only gives text is still named as the caller."""
    keys = legacy_keys_all()
    if not keys:
        raise LegacyError(404, 404, "兼容接口未启用：没有访问ID配置旧版AES密钥 (no access ID has a legacy AES key)",
                          outcome="NOT_FOUND")
    text_only: tuple[str, bytes] | None = None
    for access_key, folded in keys:
        try:
            text = legacy_decrypt(folded, body)
        except LegacyDecryptError:
            continue
        try:
            return access_key, folded, json_loads_strict(text)
        except JsonInputError as exc:  # JSON, but refused (too deep, a NUL): still this caller's
            return access_key, folded, exc
        except ValueError:
            text_only = text_only or (access_key, folded)
    if text_only is not None:
        return text_only[0], text_only[1], None
    raise LegacyError(400, 400, "请求数据解密失败 (the body is not hex AES ciphertext under any configured key)",
                      outcome="INVALID_REQUEST")


# The native codes of the shared checks, in the sign-server's words (envelope code = HTTP status).
_LEGACY_MESSAGES = {
    "ACCESS_ID_DISABLED": "访问ID已停用或已过期 (access ID disabled or expired)",
    "IP_NOT_ALLOWED": "客户端地址不允许 (address not allowed)",
    "NONCE_STORE_UNAVAILABLE": "限流存储不可用，请稍后重试 (rate limit store unavailable)",
    "RATE_LIMITED": "请求过于频繁 (rate limit exceeded)",
}


class SignServerScheme(AuthScheme):
    """The sign-server profile (docs/sign-server-compat.md): the caller is the access ID
    whose legacy AES key decrypts the body; no timestamp, no nonce, no App Secret."""

    name = SIGN_SERVER

    def recognises(self, request) -> bool:
        return request.path in LEGACY_PATHS

    def authenticate(self, request) -> ApiClient:
        """The access ID whose legacy key decrypts the body, if it may be used from here. The
        decrypted JSON (or why it was refused) and the folded key stay on the request
        (`legacy_payload`, `legacy_folded_key`): the answer is encrypted with that key."""
        try:
            body = request.body
        except RequestDataTooBig:
            raise LegacyError(413, 413, f"请求数据过大 (body over {settings.API_MAX_BODY_BYTES} bytes)",
                              outcome="PAYLOAD_TOO_LARGE") from None
        access_key, request.legacy_folded_key, request.legacy_payload = _identify(body)
        info = AppSecretService.lookup(access_key)
        if info is None:  # removed in between
            raise LegacyError(400, 400, "请求数据解密失败", outcome="INVALID_REQUEST")
        request.legacy_access = info
        access_usable_check(request, info)
        return ApiClient(access=info, secret_version=None, profile=self.name)

    def refuse(self, error: ApiError, request_id: str) -> LegacyError:
        message = _LEGACY_MESSAGES.get(error.code, error.message)
        return LegacyError(error.status_code, error.status_code, message, outcome=error.code, headers=error.headers)


SCHEME = SignServerScheme()


def _begin(call: LegacyCall, scope: str) -> dict[str, Any]:
    """Authenticate the caller (the sign-server scheme), then the checks every profile
    shares: the scope and the rate limit; returns the decrypted JSON object."""
    request = call.request
    try:
        try:
            SCHEME.authenticate(request)
        finally:  # the key names the caller even when it may not call from here: audited as its
            call.access = getattr(request, "legacy_access", None)
            call.folded_key = getattr(request, "legacy_folded_key", b"")
        info = call.access
        if scope not in info.scopes:
            raise LegacyError(403, 403, f"无权限：访问ID缺少 {scope} 权限 (scope {scope} missing)",
                              outcome="PERMISSION_DENIED")
        allowed, retry_after = rate_limit_count(access_key=info.key, limit=info.rate_limit_per_minute)
        if not allowed:
            raise ApiError("RATE_LIMITED", "rate limit exceeded", status=429,
                           headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})
    except ApiError as exc:
        raise SCHEME.refuse(exc, request.request_id) from None
    payload = request.legacy_payload
    if isinstance(payload, JsonInputError):
        raise LegacyError(400, 400, f"请求数据不符合要求 (the decrypted JSON is refused: {payload.message})",
                          outcome="INVALID_REQUEST")
    if not isinstance(payload, dict):
        raise LegacyError(400, 400, "请求数据不是JSON对象 (the decrypted body is not a JSON object)",
                          outcome="INVALID_REQUEST")
    return payload


def _audit(call: LegacyCall, response: JsonResponse, outcome: str, message: str) -> None:
    audit_event_record(**call.audit_fields(http_status=response.status_code, outcome=outcome, message=message))


async def _run(request, endpoint: str, scope: str, handler) -> JsonResponse:
    """Run one legacy POST: identify and authorise the caller for `scope`, then
    `handler(call, payload)`; errors become legacy envelopes; exactly one audit event."""
    call = LegacyCall(request=request, endpoint=endpoint)
    outcome, message = AuditEvent.OK, ""
    try:
        if request.method != "POST":
            raise LegacyError(405, 405, "请求方法不允许，请使用 POST", outcome="METHOD_NOT_ALLOWED")
        if getattr(request, "refused_host", None) is not None:
            raise LegacyError(400, 400, "请求的主机名不在允许列表中 (the Host header is not allowed)",
                              outcome="INVALID_REQUEST")
        payload = await db_sync_to_async(_begin)(call, scope)
        try:
            response = await handler(call, payload)
        except ApiError as exc:  # the XML store refused a name or the content
            raise _xml_error(exc) from None
    except LegacyError as exc:
        response = _envelope(exc.code, exc.msg, False, status=exc.http_status)
        for name, value in exc.headers.items():
            response[name] = value
        outcome, message = exc.outcome, exc.msg
    except Exception:
        logger.exception("legacy %s failed", endpoint)
        response = _envelope(500, "服务器内部错误 (internal error)", False, status=500)
        outcome, message = "INTERNAL_ERROR", "internal error"
    if not call.audit_recorded:
        try:
            await db_sync_to_async(_audit)(call, response, outcome, message)
        except Exception:
            logger.exception("the audit event of this legacy request could not be written")
            response = _envelope(500, "审计记录失败 (the request could not be recorded)", False, status=500)
    return response


def _string_field(payload: dict, name: str, *, required: bool, code: int = 400) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise LegacyError(400, code, f"缺少参数: {name}", outcome="INVALID_REQUEST")
        return None
    if not isinstance(value, str):
        raise LegacyError(400, code, f"参数 {name} 必须是字符串", outcome="INVALID_REQUEST")
    return value


_DRIVE = re.compile(r"^[A-Za-z]:")


def legacy_directory(value: str | None) -> str:
    """A sign-server client's `directory` as a folder name of the XML store, never a path on
    disk: leading slashes dropped (`/data/xml/in` → `data/xml/in`), then the native rule
    (a trailing slash dropped; empty names such as `a//b`, `.`, `..`, a backslash refused);
    a drive letter (`C:`) is refused."""
    text = (value or "").strip()
    if _DRIVE.match(text):
        raise LegacyError(400, 500, f"参数错误: directory 不能包含盘符 ({text[:2]})", outcome="INVALID_REQUEST")
    return xml_directory_clean(text.lstrip("/"))


def _xml_error(exc: ApiError) -> LegacyError:
    return LegacyError(400, 500, f"参数错误: {exc.message}", outcome="INVALID_REQUEST")


@csrf_exempt
async def get_code(request):
    """Sign `str` with the card; `pwdstr` is the card PIN, used only when none is configured."""

    async def handle(call: LegacyCall, payload: dict) -> JsonResponse:
        text = _string_field(payload, "str", required=True)
        if not text.strip():
            raise LegacyError(400, 400, "参数 str 不能为空 (str must not be empty or only white space)",
                              outcome="INVALID_REQUEST")
        pin = _string_field(payload, "pwdstr", required=True)
        call.audit["data_sha256"] = data_digest(text)
        try:
            target = await card_target_for(devices=call.access.devices, pools=call.access.pools, requested=None)
            result = await card_target_run(
                target, lambda device: data_sign(data=text, no_hash=False, device=device, fallback_pin=pin or None),
                trace=call.card_trace)
        except UKeyError as exc:
            text_error = "; ".join(exc.errors) or exc.message
            raise LegacyError(500, 500, text_error, outcome=exc.code) from None
        call.audit["cert_no"] = result.cert_no
        data = legacy_data_encrypt(call.folded_key, {"sign": result.signature, "certNo": result.cert_no})
        response = _envelope(200, "成功", data)
        response[CARD_HEADER] = result.device
        return response

    return await _run(request, "/getCode", "sign", handle)


@csrf_exempt
async def xml_files_add(request):
    async def handle(call: LegacyCall, payload: dict) -> JsonResponse:
        filename = _string_field(payload, "filename", required=True, code=500)
        xml = _string_field(payload, "xml", required=True, code=500)
        directory = legacy_directory(_string_field(payload, "directory", required=False, code=500))
        call.audit["data_sha256"] = data_digest(xml)

        def store():
            document = xml_document_write(
                access_id=call.access.pk, directory=directory, filename=filename, content=xml,
                request_id=request.request_id, source="legacy",
            )
            call.audit["details"] = {"document_id": document.pk, "path": document.path, "version": document.version}

        await db_sync_to_async(call.commit_with_audit)(store)
        return _envelope(200, "新增成功", True)

    return await _run(request, "/xml-files/add", "xml_write", handle)


@csrf_exempt
async def xml_files_list(request):
    async def handle(call: LegacyCall, payload: dict) -> JsonResponse:
        directory = legacy_directory(_string_field(payload, "directory", required=False, code=500))

        rows = await db_sync_to_async(xml_documents_in_directory)(access_pk=call.access.pk, directory=directory)
        call.audit["details"] = {"count": len(rows), "directory": directory}
        files = [{"filename": row["filename"], "xml": row["content"]} for row in rows]
        return _envelope(200, "查询成功", legacy_data_encrypt(call.folded_key, files))

    return await _run(request, "/xml-files/list", "xml_read", handle)


@csrf_exempt
async def xml_files_delete(request):
    async def handle(call: LegacyCall, payload: dict) -> JsonResponse:
        filename = _string_field(payload, "filename", required=True, code=500)
        directory = legacy_directory(_string_field(payload, "directory", required=False, code=500))

        def delete():
            document = xml_document_find(access_pk=call.access.pk, directory=directory, filename=filename)
            if document is None:
                # The name is valid here (the look-up checked it): the stored form, `.xml` added.
                raise LegacyError(404, 500, f"文件不存在: {xml_filename_clean(filename)}", outcome="NOT_FOUND")
            xml_document_delete(document=document, request_id=request.request_id)
            call.audit["details"] = {"document_id": document.pk, "path": document.path}

        await db_sync_to_async(call.commit_with_audit)(delete)
        return _envelope(200, "删除成功", True)

    return await _run(request, "/xml-files/delete", "xml_write", handle)


def _browser_navigation(request) -> bool:
    """A person opening the page: browsers ask for text/html *and* application/xhtml+xml when
    they navigate. Every other client keeps the JSON: curl and most libraries (*/*), an explicit
    application/json, and Java's HttpURLConnection, whose default Accept puts text/html first
    but no XHTML. `?format=json` shows the JSON in a browser."""
    if request.GET.get("format") == "json":
        return False
    accept = request.headers.get("Accept", "")
    return ("application/xhtml+xml" in accept
            and request.get_preferred_type(["text/html", "application/json"]) == "text/html")


@require_GET
def service_index(request):
    """`GET /`: what this service is and which legacy endpoints it answers; a small landing page
    for a browser (docs/sign-server-compat.md §4.6)."""
    if _browser_navigation(request):
        response = render(request, "landing.html", {"version": SERVICE_VERSION})
    else:
        response = JsonResponse(
            {
                "service": SERVICE_NAME,
                "version": SERVICE_VERSION,
                "status": "running",
                "endpoints": ENDPOINTS,
                "api": {"native": "/api/v1/", "docs": "/api/v1/docs/", "admin": "/admin/"},
            },
            json_dumps_params={"ensure_ascii": False},
        )
    patch_vary_headers(response, ["Accept"])
    return response
