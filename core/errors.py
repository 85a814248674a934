"""The one exception type for expected API failures (`ApiError`), its constructors, and
the error shape of docs/signing-api.md: `{"success": false, "code", "message",
"request_id", "details"?}`. Mapping other exceptions to it is the exception handler's
job (signplatform/exception_handler.py)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response

from .logging import request_id_var

AUTH_SCHEME = "HMAC-SHA256"


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
        "message": error.message,
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
