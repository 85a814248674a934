"""The cp-md5 webhook format: notifications shaped and signed like the Go chinaport-proxy's,
for receivers written for the proxy (the client-profiles spec, client-profiles.md, section cp-md5).

The field names follow the proxy's published webhook documentation (its "Webhooks" guide:
failure webhook and audit webhook; the source itself was not available to read):

    {"event": "ukey_malfunction", "timestamp": <Unix ms>, "error": "<what went wrong>",
     "details": {"type": "operation_failure" | "connection_failure" | "health_check_failure",
                 "method": "<card method, or "">", "errors": ["<what went wrong>"],
                 "device": "<card>", "outcome": "<platform error code>"}}

    {"event": "api_audit", "timestamp": <Unix ms>, "request_id": "...", "method": "...",
     "success": true, "error": "", "duration_ms": 41,
     "endpoint": "POST /rpc", "http_status": 200, "access_id": "AK...", "device": "<card>"}

`device`, `outcome`, `endpoint`, `http_status` and `access_id` are the platform's additions (a
receiver that does not know them ignores them). The proxy's `request` and `response` objects
are **never** sent: they hold the data to sign and the signatures. Nothing here carries a
secret, a PIN, signed data or a digest of it.

`timestamp` in the body is when the event happened (the same for every attempt); the
X-Timestamp header is when the attempt was sent.

Signature (per attempt): X-Timestamp = Unix milliseconds; X-Signature = lowercase hex
MD5("POST" + path + X-Timestamp + body + secret), UTF-8, the path being the receiver URL's
percent-decoded path without the query ("/" when empty), the body the exact bytes POSTed.
MD5 with the secret appended is weak (MD5 collisions; a plain hash, not an HMAC): the format exists only
for receivers that cannot change."""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from audit.models import AuditEvent
from ukey.protocol import RPC_METHODS

UKEY_MALFUNCTION = "ukey_malfunction"
API_AUDIT = "api_audit"

OPERATION_FAILURE = "operation_failure"
CONNECTION_FAILURE = "connection_failure"
HEALTH_CHECK_FAILURE = "health_check_failure"

# The platform's card failures as the proxy's malfunction types.
MALFUNCTION_TYPES = {
    AuditEvent.CARD_ERROR: OPERATION_FAILURE,  # a card operation failed (refused, timed out, connection lost mid-call)
    AuditEvent.CARD_DISCONNECTED: CONNECTION_FAILURE,  # the connection to the card's E-Port control was lost
    AuditEvent.CARD_PROBE_FAILED: HEALTH_CHECK_FAILURE,  # the periodic health probe failed
    # A card agent restarted a stalled E-Port client: its watchdog found the client not answering,
    # which is what the proxy's periodic health check reports, so it is sent as a
    # health_check_failure (rather than left out: the card was unavailable meanwhile).
    AuditEvent.AGENT_RESTARTED: HEALTH_CHECK_FAILURE,
}

_CARD_METHODS = frozenset(RPC_METHODS)


def unix_ms(value) -> int:
    return int(value.timestamp() * 1000)


def _card_method(text: str) -> str:
    """The card method a card-operation failure names ("cus-sec_SpcSignDataAsPEM: ..."), or ""."""
    head = text.split(":", 1)[0].split(" ", 1)[0]
    return head if head in _CARD_METHODS else ""


def malfunction(*, event_type: str, created_at, device: str, outcome: str, message: str) -> dict[str, Any]:
    """A `ukey_malfunction` notification for a card failure."""
    kind = MALFUNCTION_TYPES.get(event_type, OPERATION_FAILURE)
    error = message or outcome
    return {
        "event": UKEY_MALFUNCTION,
        "timestamp": unix_ms(created_at),
        "error": error,
        "details": {
            "type": kind,
            "method": _card_method(message) if kind == OPERATION_FAILURE else "",
            "errors": [error] if error else [],
            "device": device,
            "outcome": outcome,
        },
    }


def api_audit(event: AuditEvent) -> dict[str, Any]:
    """An `api_audit` notification for an API request's audit event (no request or response body)."""
    details = event.details if isinstance(event.details, dict) else {}
    card_method = details.get("method")
    # The proxy names the card method (its only endpoint is /rpc); other endpoints are named
    # by HTTP method and path.
    method = card_method if isinstance(card_method, str) and card_method in _CARD_METHODS else event.endpoint
    success = event.outcome == AuditEvent.OK and (event.http_status or 200) < 400
    if success:
        error = ""
    elif event.message and event.outcome:
        error = f"{event.outcome}: {event.message}"
    else:
        error = event.message or event.outcome or "failed"
    return {
        "event": API_AUDIT,
        "timestamp": unix_ms(event.created_at),
        "request_id": event.request_id,
        "method": method,
        "success": success,
        "error": error,
        # Whole milliseconds: receivers written in Go decode the proxy's integer into an int.
        "duration_ms": int(round(event.duration_ms or 0)),
        "endpoint": event.endpoint,
        "http_status": event.http_status,
        "access_id": event.access_key,
        "device": event.device,
    }


def payload_for_event(event: AuditEvent) -> dict[str, Any] | None:
    """The cp-md5 body for an audit event, or None when the format has no notification for it."""
    if event.event_type == AuditEvent.API_REQUEST:
        return api_audit(event)
    if event.event_type in MALFUNCTION_TYPES:
        return malfunction(event_type=event.event_type, created_at=event.created_at, device=event.device,
                           outcome=event.outcome, message=event.message)
    return None


def payload_for_test(*, created_at, message: str, delivery_id: str, audit_feed: bool) -> dict[str, Any]:
    """What "Send a test event" sends, in the shape the receiver's real notifications take: an
    `api_audit` of a successful request when the webhook sends the audit feed (harmless to log),
    else a `ukey_malfunction` (what a failures-only receiver is written for) whose error says
    it is a test. Both carry "test": true; X-Webhook-Event is webhook.test."""
    if audit_feed:
        return {
            "event": API_AUDIT,
            "timestamp": unix_ms(created_at),
            "request_id": delivery_id,
            "method": "webhook.test",
            "success": True,
            "error": "",
            "duration_ms": 0,
            "test": True,
            "message": message,
        }
    text = f"test: {message} (not a card failure)"
    return {
        "event": UKEY_MALFUNCTION,
        "timestamp": unix_ms(created_at),
        "error": text,
        "details": {"type": OPERATION_FAILURE, "method": "", "errors": [text], "device": "", "outcome": "TEST"},
        "test": True,
    }


def signature(path: str, timestamp: str, body: bytes, secret: str) -> str:
    """Lowercase hex MD5 of "POST" + path + timestamp + body + secret (UTF-8; the body as sent)."""
    text = b"POST" + path.encode("utf-8") + timestamp.encode("utf-8") + body + secret.encode("utf-8")
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def signed_path(url: str) -> str:
    """The receiver URL's path as signed: percent-decoded, without the query, "/" when empty."""
    return unquote(urlsplit(url).path) or "/"


def sign_headers(url: str, body: bytes, secret: str) -> dict[str, str]:
    timestamp = str(int(time.time() * 1000))
    return {"X-Timestamp": timestamp, "X-Signature": signature(signed_path(url), timestamp, body, secret)}
