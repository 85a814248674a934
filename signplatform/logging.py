"""Logging helpers: request id on every line, secrets masked, optional JSON lines."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import threading

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_registered: set[str] = set()
_registered_lock = threading.Lock()
# Key/value shapes that carry a PIN or a secret, whatever the value.
_SECRET_FIELD_RE = re.compile(
    r"""(?P<key>["']?(?:passwd|pwdstr|pin|password|secret|app_secret|aes_key)["']?\s*[:=]\s*)(?P<q>["']?)[^"',}\s]+(?P=q)""",
    re.IGNORECASE,
)


def redaction_register(value: str | None) -> None:
    """Mask this exact value (a card PIN, a secret) wherever it appears in a log line."""
    if value and len(value) >= 4:
        with _registered_lock:
            _registered.add(value)


def redact(text: str) -> str:
    text = _SECRET_FIELD_RE.sub(lambda m: f"{m.group('key')}{m.group('q')}***{m.group('q')}", text)
    for value in _registered:
        if value in text:
            text = text.replace(value, "***")
    return text


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class RedactingFilter(logging.Filter):
    """Renders the message once, masks secrets in it, and freezes the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id_var.get()),
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            payload["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)
