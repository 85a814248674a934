"""`as_api_error`: any exception of an API request as the ApiError it is answered with
(unexpected ones become a 500 without internals)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions

from core.errors import ApiError, invalid_request, not_found, payload_too_large, permission_denied
from ukey.client import UKeyError

logger = logging.getLogger("signplatform.api")


def as_api_error(exc: Exception) -> ApiError:
    """Map any exception to an ApiError (unexpected ones become a 500 without internals)."""
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
    if isinstance(exc, SuspiciousOperation) and not isinstance(exc, RequestDataTooBig):
        # e.g. TooManyFieldsSent (more than DATA_UPLOAD_MAX_NUMBER_FIELDS query parameters)
        return invalid_request(f"the request is refused: {exc}")
    if isinstance(exc, RequestDataTooBig):
        return payload_too_large(settings.API_MAX_BODY_BYTES)
    if isinstance(exc, (exceptions.PermissionDenied, DjangoPermissionDenied)):
        return permission_denied(str(getattr(exc, "detail", "") or "permission denied"))
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return ApiError("MISSING_AUTH_HEADERS", str(exc.detail), status=401)
    if isinstance(exc, exceptions.APIException):
        return ApiError(str(exc.default_code).upper(), str(exc.detail), status=exc.status_code)
    logger.exception("unhandled error in an API request")
    return ApiError("INTERNAL_ERROR", "internal error; quote the request id to the operator", status=500)
