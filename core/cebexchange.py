"""The customs data-exchange server, as the platform speaks to it: the envelope a signed CEB
message is posted in, what counts as "taken", the receipt endpoints, how a receipt record
is read and what its returnStatus means for a declaration.

Pure functions: no I/O. Contract: docs/declarations.md §4–§6 (what is documented publicly,
and what the platform chose where nothing is)."""

from __future__ import annotations

import base64
import datetime
import json
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

from core.cebmessages import MESSAGES

# Customs and its exchange work in China's time: appTime, SendTime, qryid, returnTime.
CHINA_TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
SUBMIT_PATH = "/cebcmsg"
OK_REPLY = "OK"

# message type -> (its receipt's message type, the receipt query endpoint)
RECEIPTS: dict[str, tuple[str, str]] = {
    "CEB311Message": ("CEB312Message", "ceb312msg"),
    "CEB303Message": ("CEB304Message", "ceb304msg"),
    "CEB621Message": ("CEB622Message", "ceb622msg"),
    "CEB623Message": ("CEB624Message", "ceb624msg"),
    "CEB411Message": ("CEB412Message", "ceb412msg"),
    "CEB511Message": ("CEB512Message", "ceb512msg"),
}
assert set(RECEIPTS) == set(MESSAGES)


def china_time(moment: datetime.datetime, fmt: str) -> str:
    return moment.astimezone(CHINA_TZ).strftime(fmt)


# --- submitting -------------------------------------------------------------------------------


def exchange_envelope(*, signed_xml: str, message_type: str, sent_at: datetime.datetime) -> bytes:
    """The JSON body of `POST {server}/cebcmsg`: the signed message base64-encoded (UTF-8)
    under Message.MessageBody.data, with the MessageHead the exchange expects."""
    body = {
        "Message": {
            "MessageHead": {
                "MessageId": "",
                "MessageType": f"{message_type}.xml",
                "SenderID": "SHOP",
                "ReceiverID": "PORT",
                "SendTime": china_time(sent_at, "%Y-%m-%d %H:%M:%S"),
                "Version": "1.0",
            },
            "MessageBody": {"data": base64.b64encode(signed_xml.encode("utf-8")).decode("ascii")},
        }
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def exchange_reply_ok(text: str) -> bool:
    """The exchange took the message: it answered the text OK (a JSON string "OK" too)."""
    reply = text.strip()
    return reply == OK_REPLY or reply == json.dumps(OK_REPLY)


# --- receipts -----------------------------------------------------------------------------------


def receipt_query(*, message_type: str, dxp_id: str, since: datetime.datetime) -> tuple[str, dict[str, str]]:
    """(path, query) of the receipt endpoint for a message type: the exchange answers the
    receipts of `dxp_id` from `since` on (qryid, China time yyyyMMddHHmmss)."""
    _, endpoint = RECEIPTS[message_type]
    return f"/{endpoint}", {"dxpid": dxp_id, "qryid": china_time(since, "%Y%m%d%H%M%S")}


class ReceiptFormatError(ValueError):
    pass


_JAVA_RECORD_SPLIT = re.compile(r"\}\s*,\s*\{")
_JAVA_PAIR_SPLIT = re.compile(r",\s+(?=[A-Za-z][A-Za-z0-9_]*=)")


def _java_map_list(text: str) -> list[dict[str, str]]:
    """`[{k=v, k=v}, {...}]`, the text a Java List<Map> prints (what the receipt endpoints
    are reported to answer). A value that itself contains ", name=" would be cut there."""
    inner = text.strip()[1:-1].strip()
    if not inner:
        return []
    if not (inner.startswith("{") and inner.endswith("}")):
        raise ReceiptFormatError("not a list of {key=value, ...} records")
    records = []
    for chunk in _JAVA_RECORD_SPLIT.split(inner[1:-1]):
        record = {}
        for pair in _JAVA_PAIR_SPLIT.split(chunk.strip()):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            if not sep:
                raise ReceiptFormatError(f"{pair[:60]!r} is not key=value")
            record[key.strip()] = value.strip()
        records.append(record)
    return records


def receipt_records(body: str) -> list[dict[str, str]]:
    """The receipt records of an answer of a receipt endpoint: a JSON array of objects (or an
    object whose "data" is one), or the `[{key=value, ...}]` text form. Keys are lower-cased,
    values text. Raises ReceiptFormatError for anything else."""
    text = body.strip().lstrip("\ufeff")
    if not text:
        return []
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
        if not (text.startswith("[") and text.endswith("]")):
            raise ReceiptFormatError(f"neither JSON nor a [{{key=value}}] list: {text[:80]!r}") from None
        raw = _java_map_list(text)
    else:
        if isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
            parsed = parsed["data"]
        if not isinstance(parsed, list) or not all(isinstance(r, dict) for r in parsed):
            raise ReceiptFormatError("the JSON is not an array of receipt objects")
        raw = parsed
    return [{str(k).lower(): "" if v is None else str(v) for k, v in record.items()} for record in raw]


# Receipt keys, lower-cased, to the element names of the standard.
_KEY_NAMES = {name.lower(): name for spec in MESSAGES.values() for name in spec.keys}
_GUID_KEY = re.compile(r"(?:^|_)guid$")
_MESSAGE_GUID_KEY = re.compile(r"^re_[a-z]+_guid$")  # re_order_guid, re_elist_guid: the message answered
_CUSTOMS_REF_KEY = re.compile(r"_guid_cus$")


@dataclass(frozen=True)
class ReceiptFacts:
    guids: tuple[str, ...]  # the declaration's guid as the receipt names it (guid, re_order_guid, ...)
    names_message: bool  # it has a re_*_guid: it says which message it answers (a plain guid may be its own)
    keys: dict[str, str]  # key elements by the standard's names (orderNo, copNo, preNo, invtNo, ...)
    customs_ref: str  # the exchange's own reference of the document (re_elist_guid_cus), if any
    return_status: str
    return_info: str
    return_time: datetime.datetime | None


def _return_time(record: dict[str, str]) -> datetime.datetime | None:
    for key in ("returntime2", "returntime"):
        value = record.get(key, "").strip()
        if not value.isdigit():
            continue
        try:
            if len(value) == 17:
                parsed = datetime.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(microsecond=int(value[14:]) * 1000)
            elif len(value) == 14:
                parsed = datetime.datetime.strptime(value, "%Y%m%d%H%M%S")
            elif 10 <= len(value) <= 13:  # Unix time in ms
                return datetime.datetime.fromtimestamp(int(value) / 1000, tz=datetime.timezone.utc)
            else:
                continue
        except ValueError:
            continue
        return parsed.replace(tzinfo=CHINA_TZ)
    return None


def receipt_facts(record: dict[str, str]) -> ReceiptFacts:
    guids = tuple(dict.fromkeys(v.strip() for k, v in record.items()
                                if _GUID_KEY.search(k) and not _CUSTOMS_REF_KEY.search(k) and v.strip()))
    keys = {_KEY_NAMES[k]: v.strip() for k, v in record.items() if k in _KEY_NAMES and v.strip()}
    ref = next((v.strip() for k, v in record.items() if _CUSTOMS_REF_KEY.search(k) and v.strip()), "")
    names_message = any(_MESSAGE_GUID_KEY.match(k) and v.strip() for k, v in record.items())
    return ReceiptFacts(guids=guids, names_message=names_message, keys=keys, customs_ref=ref,
                        return_status=record.get("returnstatus", "").strip(),
                        return_info=record.get("returninfo", "").strip(), return_time=_return_time(record))


# --- what a returnStatus means ----------------------------------------------------------------------

ACCEPTED, REJECTED, ATTENTION, PROGRESS = "accepted", "rejected", "needs_attention", "in_progress"
# The codes the standard lists (returnStatus of CEB312/412/512/622/624 and CEB304).
RETURN_STATUSES: dict[str, tuple[str, str]] = {
    "1": (PROGRESS, "电子口岸已暂存 (stored at the e-port, not declared)"),
    "2": (PROGRESS, "电子口岸申报中 (being declared at the e-port)"),
    "3": (PROGRESS, "发送海关成功 (sent to customs)"),
    "4": (ATTENTION, "发送海关失败 (could not be sent to customs)"),
    "100": (REJECTED, "海关退单 (refused by customs)"),
    "120": (ACCEPTED, "海关入库 (taken in by customs)"),
    "300": (PROGRESS, "人工审核 (manual review)"),
    "399": (ACCEPTED, "海关审结 (customs review concluded)"),
    "500": (PROGRESS, "查验 (inspection)"),
    "501": (ATTENTION, "扣留移送通关 (detained, passed to clearance)"),
    "502": (ATTENTION, "扣留移送缉私 (detained, passed to anti-smuggling)"),
    "503": (ATTENTION, "扣留移送法规 (detained, passed to legal)"),
    "599": (ATTENTION, "其它扣留 (detained)"),
    "700": (ATTENTION, "退运 (returned)"),
    "800": (ACCEPTED, "放行 (released)"),
    "899": (ACCEPTED, "结关 (cleared)"),
}


def receipt_outcome(return_status: str) -> tuple[str, str]:
    """(outcome, meaning) of a returnStatus: a negative number is a refusal (the standard:
    处理异常回执); a code the standard does not list needs a person to look."""
    code = return_status.strip()
    if code in RETURN_STATUSES:
        return RETURN_STATUSES[code]
    if re.fullmatch(r"-\d+", code):
        return REJECTED, "处理异常 (refused: processing error)"
    return ATTENTION, f"unknown returnStatus {code!r}"
