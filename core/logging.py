"""Logging helpers: request id on every line, secrets masked, optional JSON lines.

Masking (`RedactingFilter`, on the console handler; the formatters mask a record that did
not go through it), applied once per record to the rendered message (args included), the
exception traceback, the stack, and any `extra=` fields:

1. every value registered with `redaction_register()` (the card PINs the gateway loads), as is
   and JSON-escaped, becomes `***`;
2. key/value shapes that carry a secret, whatever the value: a key containing passwd /
   password / passphrase / pwd / pwdstr / pin / secret / aes_key / legacy_key / master_key /
   token / api_key / authorization / x-signature / cookie / sessionid / csrftoken as a word
   or a word part (`fallback_pin`, `legacy_aes_key`, `UKEY_PIN`, `appSecret`, `HTTP_X_SIGNATURE`),
   optionally quoted or JSON-escaped, then `=`, `:` or `=>`, then the value, quoted or not:
   `passwd=1234`, `"pwdstr": "1234"`, `'pin': '1234'`, `\\"secret\\": \\"x\\"`,
   `Authorization: Bearer x` → `passwd=***`, `"pwdstr": "***"`, `'pin': '***'`, ... ;
3. `Bearer <token>` anywhere;
4. the data a card signs (`"inData"`, `"szInfo"` in card frames) is replaced by the start of
   its SHA-256, so a DEBUG log never holds what was signed (even cut short by websockets);
5. websockets' DEBUG frame lines: frames up to 1500 characters are logged whole (so rule 2 sees
   their `"passwd"`); a longer frame, cut in the middle by websockets, loses its tail unless the
   tail holds the PIN's key whole: the cut can split the key, and the PIN is a card request's last field.
In `extra=` dicts, the value of a key that names a secret is masked whole, whatever its type.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import json
import logging
import os
import re
import threading
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

MASK = "***"

_registered: set[str] = set()
_registered_lock = threading.Lock()
_registered_re: re.Pattern[str] | None = None

# A key naming a secret: starts a word, or a part of one (after _ or -, or a camelCase hump).
_SECRET_KEY = (
    r"(?:(?<![A-Za-z0-9])|(?<=[a-z])(?=[A-Z]))"
    r"(?i:passw(?:or)?d|passphrase|pwdstr|pwd|pin|secret|aes[_-]?key|legacy[_-]?key|master[_-]?key"
    r"|token|api[_-]?key|authorization|x[_-]signature|cookie|sessionid|csrftoken)"
    r"[A-Za-z0-9_-]*"
)
_SECRET_FIELD_RE = re.compile(
    # key, its closing quote (maybe JSON-escaped), the separator
    r"(?P<key>" + _SECRET_KEY + r"""(?:\\*["'])?\s*(?:=>|[:=])\s*)"""
    r"(?:"
    r'(?P<dq>"(?:[^"\\\n]|\\.)*")'  # "double quoted" (JSON)
    r"|(?P<sq>'(?:[^'\\\n]|\\.)*')"  # 'single quoted' (repr)
    r"""|(?P<eq>\\+["'])(?P<eqv>.*?)(?P=eq)"""  # \"escaped\" (JSON inside a JSON string)
    r"""|(?P<open>\\*["']?)(?P<bare>(?:(?i:bearer|basic|token|digest|hmac-sha256)\s+)?[^\s"',;&}\])>]+)"""
    r")"
    # or a bearer token anywhere
    r"|(?<![A-Za-z0-9])(?P<scheme>(?i:bearer))\s+(?P<token>[A-Za-z0-9\-._~+/]+=*)"
)
# Cheap test first: most lines contain none of these (lower case), and skip the regex.
_HINTS = ("pass", "pwd", "pin", "secret", "key", "token", "autho", "signa", "cookie", "session", "csrf", "bearer")
# A dict key (in `extra=` fields) that names a secret.
_SECRET_KEY_NAME_RE = re.compile(_SECRET_KEY)


_CARD_DATA_RE = re.compile(r"""(?P<key>\\*["'](?:inData|szInfo)\\*["']\s*:\s*(?P<q>\\*["']))(?P<value>(?:[^"'\\]|\\[^"'])*)""")


def _card_data_digest(match: re.Match[str]) -> str:
    digest = hashlib.sha256(match.group("value").encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{match.group('key')}sha256:{digest}…"


def _mask_field(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return f"{match.group('scheme')} {MASK}"
    key = match.group("key")
    if match.group("dq") is not None:
        return f'{key}"{MASK}"'
    if match.group("sq") is not None:
        return f"{key}'{MASK}'"
    if match.group("eq") is not None:
        quote = match.group("eq")
        return f"{key}{quote}{MASK}{quote}"
    return f"{key}{match.group('open')}{MASK}"


def redaction_register(value: str | None) -> None:
    """Mask this exact value (a card PIN, a secret) wherever it appears in a log line."""
    global _registered_re
    if not value or len(value) < 4:
        return
    with _registered_lock:
        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        if forms <= _registered:
            return
        _registered.update(forms)
        # Longest first, so a value containing another is masked whole.
        alternatives = sorted(_registered, key=len, reverse=True)
        _registered_re = re.compile("|".join(re.escape(v) for v in alternatives))


def redact(text: str) -> str:
    """`text` with every secret masked (see the module docstring)."""
    if not text:
        return text
    lowered = text.lower()
    if any(hint in lowered for hint in _HINTS):
        text = _SECRET_FIELD_RE.sub(_mask_field, text)
    if "indata" in lowered or "szinfo" in lowered:
        text = _CARD_DATA_RE.sub(_card_data_digest, text)
    registered = _registered_re
    if registered is not None:
        text = registered.sub(MASK, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    """An `extra=` value made safe to log: strings masked, containers walked (values under a
    secret-naming key masked whole), anything else rendered as masked text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if depth < 8 and isinstance(value, dict):
        return {
            str(k): (MASK if _SECRET_KEY_NAME_RE.search(str(k)) else _redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if depth < 8 and isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v, depth + 1) for v in value]
    return redact(str(value))


# The attributes every LogRecord has; anything else came from `extra=`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "request_id", "taskName", "_redacted",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


_OBJECT_REPR_RE = re.compile(r"^<[\w.]+ object at 0x[0-9a-fA-F]+>$")
_PLAIN_TYPES = (str, int, float, bool, type(None), dict, list, tuple, set, frozenset)


def _plain_object(value: Any) -> bool:
    """An object that renders as `<Foo object at 0x...>` (websockets passes its connection
    along): noise in a log line."""
    if isinstance(value, _PLAIN_TYPES):
        return False
    try:
        return bool(_OBJECT_REPR_RE.match(str(value)))
    except Exception:
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items()
        if k not in _RECORD_FIELDS and not k.startswith("_") and not _plain_object(v)
    }


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # wrong args for the format: keep both rather than lose the line
        return f"{record.msg} {record.args!r}"


# websockets' DEBUG frame lines: "> TEXT '<head>...<tail>' [119 bytes]" (by default a 48-character
# head and a 24-character tail). The cut can fall inside the PIN's key (`..."asswd":"1234"}}'`),
# where no key/value pattern can see it, and the PIN travels last in a card request: the tail of
# a cut frame is masked whole unless it holds the PIN's key whole (then the pattern masks the value).
# `RedactingFilter` also raises websockets' log size (unless WEBSOCKETS_MAX_LOG_SIZE is set) so
# that ordinary card frames are logged whole and masked field by field.
_FRAME_RE = re.compile(r"^(?P<head>[<>] (?:TEXT|BINARY|CONT) )(?P<data>.*)(?P<meta> \[[^\]]*\])$", re.DOTALL)
_WHOLE_PIN_KEY_RE = re.compile(r'"(?:passwd|pwdstr|pin|password)"\s*:', re.IGNORECASE)
FRAME_LOG_SIZE = 1500


def _frame_cut() -> int:
    try:
        from websockets.frames import Frame

        return Frame.MAX_LOG_SIZE // 3 - 1
    except Exception:  # pragma: no cover - websockets is a dependency
        return 24


def _frame_tail_mask(message: str) -> str:
    match = _FRAME_RE.match(message)
    if not match:
        return message
    data, cut = match.group("data"), _frame_cut()
    if len(data) != 3 * cut + 3 or data[2 * cut:2 * cut + 3] != "...":
        return message
    if _WHOLE_PIN_KEY_RE.search(data[2 * cut + 3:]):
        return message
    quote = data[-1] if data[-1] in "'\"" else ""
    return f"{match.group('head')}{data[:2 * cut + 3]}{MASK}{quote}{match.group('meta')}"


def record_redact(record: logging.LogRecord) -> logging.LogRecord:
    """Render the message once, mask secrets in it and everywhere else in the record, and
    freeze the result (args dropped). Idempotent."""
    if getattr(record, "_redacted", False):
        return record
    message = _message(record)
    if record.name.startswith("websockets"):
        message = _frame_tail_mask(message)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for name, value in _extras(record).items():
        setattr(record, name, MASK if _SECRET_KEY_NAME_RE.search(name) else _redact_value(value))
    record.msg = redact(message)
    record.args = None
    record._redacted = True
    return record


def _request_id(record: logging.LogRecord) -> str:
    """The id of the request the record is about: the current one, or — for Django's
    `django.request` lines, written after the middleware has finished — the one passed as
    `extra={"request": ...}`; "-" outside a request."""
    current = request_id_var.get()
    if current == "-":
        current = getattr(getattr(record, "request", None), "request_id", None) or current
    return str(current)


class RequestIdFilter(logging.Filter):
    """`record.request_id` on every record (see `_request_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = _request_id(record)
        return True


def _websockets_log_size() -> None:
    """Card frames up to FRAME_LOG_SIZE characters are logged whole (not cut in the middle),
    so that their PIN field is found by its key. An explicit WEBSOCKETS_MAX_LOG_SIZE wins."""
    if os.environ.get("WEBSOCKETS_MAX_LOG_SIZE"):
        return
    try:
        from websockets.frames import Frame
    except ImportError:  # pragma: no cover - websockets is a dependency
        return
    Frame.MAX_LOG_SIZE = max(Frame.MAX_LOG_SIZE, FRAME_LOG_SIZE)


class RedactingFilter(logging.Filter):
    """Renders the message once, masks secrets in it (and in the traceback and extras), and
    freezes the result."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        _websockets_log_size()

    def filter(self, record: logging.LogRecord) -> bool:
        record_redact(record)
        return True


class TextFormatter(logging.Formatter):
    """The text format, masking records that did not go through `RedactingFilter`, with the
    request id always available as `%(request_id)s`."""

    def format(self, record: logging.LogRecord) -> str:
        if not getattr(record, "request_id", None):
            record.request_id = _request_id(record)
        return super().format(record_redact(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, request_id, message, and
    `exception`, `stack`, `extra` when there are."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or _request_id(record)
        record_redact(record)
        payload: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "request_id": request_id,
            "message": record.getMessage(),
        }
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        extra = _extras(record)
        if extra:
            payload["extra"] = extra
        line = json.dumps(payload, ensure_ascii=False, default=str)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape everything rather than break the line
            line = json.dumps(payload, ensure_ascii=True, default=str)
        return line
