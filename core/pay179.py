""""179" payment data (公告2018年第179号): the string the card signs and the customs upload.

Contract: docs/ceb-xml-and-179.md, section 2. The customs side rebuilds the string
from the uploaded JSON, so key order and the client's number text must survive untouched:
the request body is parsed keeping both, and serialised by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.http_client_errors import connect_error_text
from core.jsontext import JsonNumber, json_compact

HEAD_KEYS = (
    "guid", "initalRequest", "initalResponse", "ebpCode", "payCode", "payTransactionId",
    "totalAmount", "currency", "verDept", "payType", "tradingTime", "note",
)  # fmt: skip
LIST_ITEM_KEYS = ("orderNo", "goodsInfo", "recpAccount", "recpCode", "recpName")
GOODS_KEYS = ("gname", "itemLink")

CODE_SUCCESS = "10000"
KNOWN_CODES = {
    "10000": "accepted by customs",
    "20000": "customs says certNo or signValue is missing from the upload",
    "20004": (
        "customs does not know this certificate: the card's certificate (certNo) is not registered "
        "for 179 payment data uploads; register it with the single window first"
    ),
}
REPLY_TEXT_LIMIT = 2000

_DIGITS = re.compile(r"[0-9]+")


class Pay179Error(ValueError):
    """A request body that is not 179 payment data; `field_errors` maps field names to problems."""

    def __init__(self, message: str, field_errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field_errors = field_errors or {}


@dataclass
class Pay179Payload:
    session_id: str
    head: dict[str, Any]
    lists: list[dict[str, Any]]
    service_time: str  # a JsonNumber when the client sent a number, a plain str for a string
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys (upload, device, ...)


@dataclass(frozen=True)
class UploadResult:
    ok: bool
    url: str
    http_status: int | None
    code: str
    message: str
    reply: Any
    error: str
    duration_ms: int


# --- parsing ---------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)  # two values for one key: which one customs reads is anyone's guess
        result[key] = value
    return result


def _constant_refuse(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def pay179_parse(raw: bytes, *, session_field: str = "sessionID", ignored: tuple[str, ...] = ()) -> Pay179Payload:
    """Parse a 179 request body, keeping key order and the client's number text. The
    session ID is read from `session_field` (the chinaport-proxy calls it `sessionId`);
    `ignored` fields are request options, not payment data.

    Raises Pay179Error for invalid JSON, a non-object body and missing or mistyped fields."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Pay179Error(f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=_object_from_pairs,
            parse_float=JsonNumber,
            parse_int=JsonNumber,
            parse_constant=_constant_refuse,
        )
    except _DuplicateKey as exc:
        raise Pay179Error(f"the JSON has the key {exc.args[0]!r} twice in one object") from None
    except json.JSONDecodeError as exc:
        raise Pay179Error(
            f"the request body is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError as exc:
        raise Pay179Error(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Pay179Error("the request body must be a JSON object")

    errors: dict[str, list[str]] = {}

    def problem(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    session_id = data.get(session_field)
    if session_field not in data:
        problem(session_field, "this field is required")
    elif type(session_id) is not str or not session_id:
        problem(session_field, "must be a non-empty string (the sessionID customs sent with its request)")

    head = data.get("payExchangeInfoHead")
    if "payExchangeInfoHead" not in data:
        problem("payExchangeInfoHead", "this field is required")
    elif not isinstance(head, dict):
        problem("payExchangeInfoHead", "must be a JSON object")

    lists = data.get("payExchangeInfoLists")
    if "payExchangeInfoLists" not in data:
        problem("payExchangeInfoLists", "this field is required")
    elif not isinstance(lists, list) or not lists:
        problem("payExchangeInfoLists", "must be a non-empty JSON array of objects")
    else:
        for index, item in enumerate(lists):
            if not isinstance(item, dict):
                problem(f"payExchangeInfoLists[{index}]", "must be a JSON object")

    service_time = data.get("serviceTime")
    if "serviceTime" not in data:
        problem("serviceTime", "this field is required")
    elif not isinstance(service_time, str) or not _DIGITS.fullmatch(service_time):
        problem("serviceTime", "must be the time in milliseconds, as a whole number or a string of digits")

    if errors:
        raise Pay179Error("the 179 payment data is incomplete or malformed", errors)
    known = (session_field, "payExchangeInfoHead", "payExchangeInfoLists", "serviceTime", *ignored)
    return Pay179Payload(
        session_id=session_id,
        head=head,
        lists=lists,
        service_time=service_time,
        extra={key: value for key, value in data.items() if key not in known},
    )


# --- serialisation ---------------------------------------------------------------------


def _ordered(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The official keys first in the official order, then the client's other keys in its order."""
    result = {key: obj[key] for key in keys if key in obj}
    result.update((key, value) for key, value in obj.items() if key not in result)
    return result


def _list_item_ordered(item: dict[str, Any]) -> dict[str, Any]:
    result = _ordered(item, LIST_ITEM_KEYS)
    goods = result.get("goodsInfo")
    if isinstance(goods, list):
        result["goodsInfo"] = [_ordered(g, GOODS_KEYS) if isinstance(g, dict) else g for g in goods]
    return result


def _head_json(payload: Pay179Payload) -> str:
    return json_compact(_ordered(payload.head, HEAD_KEYS))


def _lists_json(payload: Pay179Payload) -> str:
    return json_compact([_list_item_ordered(item) for item in payload.lists])


def pay179_sign_string(payload: Pay179Payload) -> str:
    """The exact string the card signs for a 179 upload (spec section 2)."""
    return (
        f'"sessionID":"{payload.session_id}"'
        f'||"payExchangeInfoHead":"{_head_json(payload)}"'
        f'||"payExchangeInfoLists":"{_lists_json(payload)}"'
        f'||"serviceTime":"{payload.service_time}"'
    )


def pay179_upload_form(payload: Pay179Payload, *, cert_no: str, sign_value: str) -> str:
    """The `payExInfoStr` form value: the same serialisation plus certNo and signValue."""
    return (
        "{"
        f'"sessionID":{json_compact(payload.session_id)},'
        f'"payExchangeInfoHead":{_head_json(payload)},'
        f'"payExchangeInfoLists":{_lists_json(payload)},'
        f'"serviceTime":{json_compact(payload.service_time)},'
        f'"certNo":{json_compact(cert_no)},'
        f'"signValue":{json_compact(sign_value)}'
        "}"
    )


# --- upload ----------------------------------------------------------------------------




async def pay179_upload(*, url: str, pay_ex_info_str: str, timeout: float) -> UploadResult:
    """POST the form field `payExInfoStr` to the customs upload URL and read its answer.

    Never raises for network problems: they are described in the result's `error`."""
    started = time.monotonic()

    def result(
        *, status: int | None = None, code: str = "", message: str, reply: Any = None, error: str = ""
    ) -> UploadResult:
        return UploadResult(
            ok=status is not None and 200 <= status < 300 and code == CODE_SUCCESS and not error,
            url=url,
            http_status=status,
            code=code,
            message=message,
            reply=reply,
            error=error,
            duration_ms=round((time.monotonic() - started) * 1000),
        )

    try:
        # asyncio.timeout bounds the whole exchange; httpx's own timeout is per network step.
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.post(url, data={"payExInfoStr": pay_ex_info_str})
    except (TimeoutError, httpx.TimeoutException):
        error = f"timed out after {timeout:g} s: customs did not answer in time"
        return result(message=f"the upload did not complete: {error}", error=error)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        error = f"the upload URL {url!r} is not a usable http(s) URL: {exc}"
        return result(message=error, error=error)
    except httpx.ConnectError as exc:
        error = connect_error_text(exc, url)
        return result(message=f"the upload did not reach customs: {error}", error=error)
    except (httpx.HTTPError, OSError) as exc:
        error = f"the request failed: {exc.__class__.__name__}: {exc}"
        return result(message=f"the upload did not complete: {error}", error=error)

    status = response.status_code
    text = response.text
    try:
        reply: Any = json.loads(text)
        is_json = True
    except ValueError:
        reply, is_json = text[:REPLY_TEXT_LIMIT], False
    code = ""
    customs_message = ""
    if isinstance(reply, dict) and is_json:
        code = "" if reply.get("code") is None else str(reply["code"])
        customs_message = str(reply.get("msg") or reply.get("message") or "")

    error = ""
    if not 200 <= status < 300:
        error = f"HTTP {status} {response.reason_phrase}".rstrip()
    elif not is_json:
        error = f"reply is not JSON (HTTP {status}, {response.headers.get('content-type', 'no content type')})"
    elif not code:
        error = "reply JSON has no code field"
    message = customs_message or KNOWN_CODES.get(code) or (
        f"customs answered code {code}" if code and not error else f"unexpected reply from customs: {error}"
    )
    return result(status=status, code=code, message=message, reply=reply, error=error)
