"""The one exception type for expected API failures and the one place that turns any
exception into the error shape of shared/spec/signing-api.md §2:
`{"success": false, "code", "message", "request_id", "details"?}`."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response

from .logging import request_id_var

logger = logging.getLogger("signplatform.api")

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


def as_api_error(exc: Exception) -> ApiError:
    """Map any exception to an ApiError (unexpected ones become a 500 without internals)."""
    from signing.ukey.client import UKeyError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UKeyError):
        details: dict[str, Any] = {"device": exc.device} if exc.device else {}
        if exc.errors:
            details["errors"] = exc.errors
        if getattr(exc, "envelope", None):
            details["envelope"] = exc.envelope
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return ApiError(exc.code, exc.message, status=exc.http_status, details=details, headers=headers)
    if isinstance(exc, exceptions.ValidationError):
        return invalid_request("the request body is not valid", exc.detail)
    if isinstance(exc, exceptions.ParseError):
        return invalid_request(f"the request body is not valid JSON: {exc.detail}")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return ApiError("INVALID_REQUEST", str(exc.detail), status=415)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return ApiError("METHOD_NOT_ALLOWED", str(exc.detail), status=405)
    if isinstance(exc, exceptions.NotAcceptable):
        return ApiError("INVALID_REQUEST", str(exc.detail), status=406)
    if isinstance(exc, (exceptions.NotFound, Http404)):
        return not_found()
    if isinstance(exc, exceptions.Throttled):
        wait = max(1, int(round(exc.wait or 1)))
        return ApiError(
            "RATE_LIMITED",
            f"rate limit exceeded; retry in {wait} s",
            status=429,
            details={"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, RequestDataTooBig):
        from django.conf import settings

        return payload_too_large(settings.API_MAX_BODY_BYTES)
    if isinstance(exc, (exceptions.PermissionDenied, DjangoPermissionDenied)):
        return permission_denied(str(getattr(exc, "detail", "") or "permission denied"))
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return ApiError("MISSING_AUTH_HEADERS", str(exc.detail), status=401)
    if isinstance(exc, exceptions.APIException):
        return ApiError(str(exc.default_code).upper(), str(exc.detail), status=exc.status_code)
    logger.exception("unhandled error in an API request")
    return ApiError("INTERNAL_ERROR", "internal error; quote the request id to the operator", status=500)


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


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every API error leaves through here."""
    request = context.get("request")
    request_id = getattr(getattr(request, "_request", request), "request_id", None)
    return error_response(as_api_error(exc), request_id)
