"""A fake customs data-exchange server for the tests: a real HTTP server on 127.0.0.1.

`POST /cebcmsg` checks the envelope (every key and value of docs/declarations.md §4),
base64-decodes the message, verifies its signature with the certificate inside
(core.ceb.ceb_verify) and answers the text OK, or a refusal (the reason in the text).
It counts what it took, per message guid. Receipts are written for every message it takes
(by default "2 declared" then "120 taken in by customs"; `script` names others per
document) and served later by `GET /ceb312msg?dxpid=..&qryid=yyyyMMddHHmmss` and the
other receipt endpoints, as JSON or as the `[{k=v, ...}]` text, records after qryid only.

Modes for the POST: "ok", "refuse" (a refusal text), "error500", "drop" (read the request,
close without an answer), "hang" (answer only after `hang_seconds`)."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
import zoneinfo
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from lxml import etree

from core.ceb import ceb_verify
from tests.receivers import QuietServer
from tests.services import free_port

CEB = "{http://www.chinaport.gov.cn/ceb}"
CHINA = zoneinfo.ZoneInfo("Asia/Shanghai")
HEAD_KEYS = ("Message", "MessageHead", "MessageBody")
RECEIPT_ENDPOINTS = {"CEB311Message": "ceb312msg", "CEB303Message": "ceb304msg", "CEB621Message": "ceb622msg",
                     "CEB623Message": "ceb624msg", "CEB411Message": "ceb412msg", "CEB511Message": "ceb512msg"}
HEADS = {"CEB311Message": "OrderHead", "CEB303Message": "OrderHead", "CEB621Message": "InventoryHead",
         "CEB623Message": "InvtCancel", "CEB411Message": "PaymentHead", "CEB511Message": "LogisticsHead"}
DEFAULT_SCRIPT = (("2", "新增申报成功[{guid}]"), ("120", "[Code:2600;Desc:海关入库]"))


@dataclass
class Taken:
    at: float
    message_type: str
    guid: str
    head_guid: str
    xml: str
    envelope: dict


@dataclass
class Post:
    at: float
    body: bytes
    answer: str
    status: int


@dataclass
class ExchangeState:
    posts: list[Post] = field(default_factory=list)
    taken: dict[str, list[Taken]] = field(default_factory=dict)
    receipts: dict[tuple[str, str], list[tuple[datetime.datetime, dict]]] = field(default_factory=dict)
    gets: list[tuple[str, dict]] = field(default_factory=list)


def _text(element, name: str) -> str:
    child = element.find(CEB + name)
    return (child.text or "").strip() if child is not None else ""


class FakeExchange:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.state = ExchangeState()
        self.mode = "ok"
        self.refuse_text = "报文签名验证失败"
        self.hang_seconds = 5.0
        self.receipt_format = "json"
        self.script: dict[str, tuple[tuple[str, str], ...]] = {}  # document reference -> receipts
        self.cond = threading.Condition()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- life cycle ---------------------------------------------------------------------------------
    def start(self) -> FakeExchange:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake._post(self, body)

            def do_GET(self):
                fake._get(self)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # --- what the tests read ------------------------------------------------------------------------
    def count(self, guid: str) -> int:
        with self.cond:
            return len(self.state.taken.get(guid, []))

    def posts_for(self, guid: str) -> int:
        """How many POSTs carried the message `guid` (taken or not)."""
        count = 0
        with self.cond:
            for post in self.state.posts:
                try:
                    data = json.loads(post.body)["Message"]["MessageBody"]["data"]
                    count += f'guid="{guid}"' in base64.b64decode(data).decode("utf-8")
                except (ValueError, KeyError, TypeError):
                    pass
        return count

    def taken(self) -> list[Taken]:
        with self.cond:
            return [t for items in self.state.taken.values() for t in items]

    def wait_taken(self, guid: str, timeout: float = 15.0) -> Taken:
        with self.cond:
            if not self.cond.wait_for(lambda: self.state.taken.get(guid), timeout):
                raise AssertionError(f"the exchange did not take {guid} within {timeout}s; posts: "
                                     f"{[p.answer for p in self.state.posts]}")
            return self.state.taken[guid][0]

    def add_receipt(self, message_type: str, dxp_id: str, record: dict, *, at: datetime.datetime | None = None):
        with self.cond:
            key = (RECEIPT_ENDPOINTS[message_type], dxp_id)
            self.state.receipts.setdefault(key, []).append((at or datetime.datetime.now(CHINA), record))

    # --- POST /cebcmsg --------------------------------------------------------------------------------
    def _answer(self, handler, status: int, text: str) -> None:
        raw = text.encode("utf-8")
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("Content-Length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw)
        except OSError:  # the client gave up (hang)
            pass

    def _check(self, body: bytes) -> tuple[str, dict, str]:
        """(problem, envelope, xml): what a customs exchange would refuse, "" when nothing."""
        try:
            envelope = json.loads(body)
        except ValueError:
            return "not JSON", {}, ""
        if list(envelope) != ["Message"] or list(envelope["Message"]) != ["MessageHead", "MessageBody"]:
            return f"envelope keys {json.dumps(envelope)[:100]}", envelope, ""
        head, payload = envelope["Message"]["MessageHead"], envelope["Message"]["MessageBody"]
        if list(head) != ["MessageId", "MessageType", "SenderID", "ReceiverID", "SendTime", "Version"]:
            return f"MessageHead keys {list(head)}", envelope, ""
        if (head["MessageId"], head["SenderID"], head["ReceiverID"], head["Version"]) != ("", "SHOP", "PORT", "1.0"):
            return f"MessageHead values {head}", envelope, ""
        try:
            sent = datetime.datetime.strptime(head["SendTime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
        except ValueError:
            return f"SendTime {head['SendTime']!r}", envelope, ""
        if abs((datetime.datetime.now(CHINA) - sent).total_seconds()) > 120:
            return f"SendTime {head['SendTime']} is not China's time now", envelope, ""
        if list(payload) != ["data"]:
            return f"MessageBody keys {list(payload)}", envelope, ""
        try:
            xml = base64.b64decode(payload["data"], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return "data is not base64 of UTF-8", envelope, ""
        root = etree.fromstring(xml.encode("utf-8"))
        if f"{etree.QName(root).localname}.xml" != head["MessageType"]:
            return f"MessageType {head['MessageType']} but the root is {etree.QName(root).localname}", envelope, xml
        result = ceb_verify(xml)
        if not result.valid:
            return f"签名验证失败: {result.reason}", envelope, xml
        return "", envelope, xml

    def _post(self, handler, body: bytes) -> None:
        path = urlsplit(handler.path).path
        if path != "/cebcmsg":
            self._answer(handler, 404, "no such endpoint")
            return
        mode = self.mode
        if mode == "drop":
            with self.cond:
                self.state.posts.append(Post(time.monotonic(), body, "(dropped)", 0))
                self.cond.notify_all()
            handler.close_connection = True
            try:
                handler.connection.shutdown(2)
            except OSError:
                pass
            return
        if mode == "hang":
            time.sleep(self.hang_seconds)
        problem, envelope, xml = self._check(body)
        if mode == "error500":
            status, answer = 500, "Internal Server Error"
        elif problem:
            status, answer = 200, f"报文校验失败: {problem}"
        elif mode == "refuse":
            status, answer = 200, self.refuse_text
        else:
            status, answer = 200, "OK"
        with self.cond:
            self.state.posts.append(Post(time.monotonic(), body, answer, status))
            if answer == "OK":
                self._take(envelope, xml)
            self.cond.notify_all()
        self._answer(handler, status, answer)

    def _take(self, envelope: dict, xml: str) -> None:
        root = etree.fromstring(xml.encode("utf-8"))
        message_type = etree.QName(root).localname
        head = next(root.iter(CEB + HEADS[message_type]))
        transfer = root.find(CEB + "BaseTransfer")
        guid, head_guid = root.get("guid"), _text(head, "guid")
        self.state.taken.setdefault(guid, []).append(
            Taken(time.monotonic(), message_type, guid, head_guid, xml, envelope))
        keys = {name: _text(head, name) for name in ("orderNo", "ebpCode", "ebcCode", "copNo", "invtNo",
                                                     "payCode", "payTransactionId", "logisticsCode", "logisticsNo")}
        reference = keys["orderNo"] if message_type in ("CEB311Message", "CEB303Message") else \
            keys["copNo"] or keys["payTransactionId"] or keys["logisticsNo"] or keys["orderNo"]
        dxp_id = _text(transfer, "dxpId")
        customs_guid, pre_no = str(uuid.uuid4()), "B" + datetime.datetime.now(CHINA).strftime("%Y%m%d") + "%09d" % (
            int(time.time() * 1000) % 10**9)
        script = self.script.get(reference, DEFAULT_SCRIPT)
        now = datetime.datetime.now(CHINA)
        for index, (status, info) in enumerate(script):
            at = now + datetime.timedelta(milliseconds=10 * index)
            # Inventories: the first receipt names the message's guid, later ones the exchange's own.
            guid = customs_guid if index and message_type == "CEB621Message" else head_guid
            record = self._receipt_record(message_type, status, info.format(guid=head_guid), at, keys, dxp_id,
                                          guid, customs_guid, pre_no)
            self.state.receipts.setdefault((RECEIPT_ENDPOINTS[message_type], dxp_id), []).append((at, record))

    @staticmethod
    def _receipt_record(message_type, status, info, at, keys, dxp_id, guid, customs_guid, pre_no) -> dict:
        """Receipt records shaped like those the exchange is reported to answer (docs/declarations.md §5)."""
        common = {"org_id": 1, "instm": int(at.timestamp() * 1000), "returnstatus": status, "returninfo": info,
                  "returntime": int(at.timestamp() * 1000), "returntime2": at.strftime("%Y%m%d%H%M%S"),
                  "trans_dxpid": dxp_id}
        if message_type in ("CEB311Message", "CEB303Message"):
            return {**common, "re_order_guid": guid, "ebpcode": keys["ebpCode"], "ebccode": keys["ebcCode"],
                    "orderno": keys["orderNo"]}
        if message_type == "CEB621Message":
            record = {**common, "re_elist_guid": guid, "re_elist_guid_cus": customs_guid, "preno": pre_no,
                      "ebpcode": keys["ebpCode"], "ebccode": keys["ebcCode"], "customscode": "6409"}
            if status not in ("1", "2"):
                record["invtno"] = "64092026I" + pre_no[-9:]
            return record
        if message_type == "CEB623Message":
            return {**common, "guid": guid, "copno": keys["copNo"], "preno": pre_no, "invtno": keys["invtNo"]}
        if message_type == "CEB411Message":
            return {**common, "guid": guid, "paycode": keys["payCode"], "paytransactionid": keys["payTransactionId"]}
        return {**common, "guid": guid, "logisticscode": keys["logisticsCode"], "logisticsno": keys["logisticsNo"]}

    # --- GET /ceb312msg and the other receipt endpoints ------------------------------------------------
    def _get(self, handler) -> None:
        parts = urlsplit(handler.path)
        endpoint = parts.path.strip("/")
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.cond:
            self.state.gets.append((endpoint, params))
        if endpoint not in RECEIPT_ENDPOINTS.values() or set(params) != {"dxpid", "qryid"}:
            self._answer(handler, 400, f"bad receipt query {handler.path}")
            return
        try:
            since = datetime.datetime.strptime(params["qryid"], "%Y%m%d%H%M%S").replace(tzinfo=CHINA)
        except ValueError:
            self._answer(handler, 400, f"bad qryid {params['qryid']}")
            return
        with self.cond:
            records = [r for at, r in self.state.receipts.get((endpoint, params["dxpid"]), []) if at >= since]
        if self.receipt_format == "java":
            text = "[" + ", ".join("{" + ", ".join(f"{k}={v}" for k, v in r.items()) + "}" for r in records) + "]"
        else:
            text = json.dumps(records, ensure_ascii=False)
        self._answer(handler, 200, text)
