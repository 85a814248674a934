"""DRF's EXCEPTION_HANDLER: the one place that turns any exception into the error shape
of docs/signing-api.md (`{"success": false, "code", "message", "request_id", "details"?}`)."""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response

from api.errors import as_api_error
from core.errors import error_response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every API error leaves through here."""
    request = context.get("request")
    request_id = getattr(getattr(request, "_request", request), "request_id", None)
    return error_response(as_api_error(exc), request_id)
