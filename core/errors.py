"""The one exception type for expected API failures (`ApiError`), its constructors, and
the error shape of docs/signing-api.md: `{"success": false, "code", "message", "request_id",
"details"?}`, `message` in Chinese for a request whose `Accept-Language` puts Chinese first. Mapping other exceptions to it is the exception handler's
job (signplatform/exception_handler.py)."""

from __future__ import annotations

from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response

from .logging import request_id_var

AUTH_SCHEME = "HMAC-SHA256"

# The Chinese `message` of every error (for `Accept-Language: zh…`): what the code means (the English
# `message` says more, e.g. which field; `details` stay as they are). The codes stay the stable interface.
MESSAGES_ZH = {
    "INVALID_REQUEST": "请求参数不正确",
    "MISSING_AUTH_HEADERS": "缺少认证请求头",
    "INVALID_NONCE": "随机数（nonce）格式不正确",
    "INVALID_TIMESTAMP": "请求时间戳无效或已过期",
    "INVALID_ACCESS_ID": "无效的 Access ID",
    "SIGNATURE_VALIDATION_FAILED": "签名验证失败",
    "PROFILE_NOT_ENABLED": "该 Access ID 未启用此接入方式",
    "ACCESS_ID_DISABLED": "Access ID 已停用或已过期",
    "IP_NOT_ALLOWED": "客户端地址不允许",
    "PERMISSION_DENIED": "无权限",
    "NOT_FOUND": "资源不存在",
    "METHOD_NOT_ALLOWED": "请求方法不允许",
    "DUPLICATE_REQUEST": "重复的请求（nonce 已使用）",
    "PAYLOAD_TOO_LARGE": "请求数据过大",
    "RATE_LIMITED": "请求过于频繁，请稍后重试",
    "INTERNAL_ERROR": "服务器内部错误，请把请求编号告知运维人员",
    "UKEY_ERROR": "签名设备返回错误",
    "UKEY_UNAVAILABLE": "签名设备不可用，请稍后重试",
    "UKEY_TIMEOUT": "签名设备响应超时",
    "NONCE_STORE_UNAVAILABLE": "服务暂时不可用，请稍后重试",
    "TOKEN_INVALID": "令牌无效，请重新获取",
    "TOKEN_EXPIRED": "令牌已过期，请重新获取",
    "DECRYPTION_FAILED": "数据解密失败",
    "ACS_NOT_CONFIGURED": "接入方的密钥或证书尚未配置，请联系管理员",
}
GENERIC_ZH = "请求失败"


def message_zh(code: str) -> str:
    return MESSAGES_ZH.get(code, GENERIC_ZH)


# True while a request whose Accept-Language prefers Chinese is answered (set by the request-id step).
chinese_var: ContextVar[bool] = ContextVar("api_chinese", default=False)


@lru_cache(maxsize=256)
def prefers_chinese(accept_language: str) -> bool:
    """Whether the language the client ranks first (highest q, then order) is Chinese."""
    best, best_q = "", 0.0
    for part in accept_language.split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if tag and q > best_q:
            best, best_q = tag.strip().lower(), q
    return best == "zh" or best.startswith("zh-")


class ApiError(exceptions.APIException):
    """An expected failure with the spec's code; `details` and `headers` are optional."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail=message, code=code)
        self.code = code
        self.message = message
        self.status_code = status
        self.details = details or {}
        self.headers = headers or {}


def invalid_request(message: str, fields: dict[str, Any] | None = None, *,
                    details: dict[str, Any] | None = None) -> ApiError:
    """400 INVALID_REQUEST; field errors always under `details.fields` (one shape for clients)."""
    merged = dict(details or {})
    if fields:
        merged["fields"] = fields
    return ApiError("INVALID_REQUEST", message, status=400, details=merged)


def not_found(message: str = "no such resource") -> ApiError:
    return ApiError("NOT_FOUND", message, status=404)


def permission_denied(message: str) -> ApiError:
    return ApiError("PERMISSION_DENIED", message, status=403)


def payload_too_large(limit: int) -> ApiError:
    return ApiError(
        "PAYLOAD_TOO_LARGE", f"the request body is larger than {limit} bytes", status=413, details={"limit": limit}
    )


def error_response(error: ApiError, request_id: str | None = None) -> Response:
    body: dict[str, Any] = {
        "success": False,
        "code": error.code,
        "message": message_zh(error.code) if chinese_var.get() else error.message,
        "request_id": request_id or request_id_var.get(),
    }
    if error.details:
        body["details"] = error.details
    response = Response(body, status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    if error.status_code == 401:
        response["WWW-Authenticate"] = AUTH_SCHEME
    return response


def xml_input_error(exc) -> ApiError:
    """400 INVALID_REQUEST for XML the platform will not work on (a core.ceb.XmlInputError:
    `message` and a stable `code`, e.g. DOCTYPE_FORBIDDEN)."""
    return invalid_request(exc.message, {"xml": [exc.message]}, details={"reason": exc.code})
