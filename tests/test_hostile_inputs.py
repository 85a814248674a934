"""Hostile input against every endpoint (native, XML store, legacy sign-server) of a real
platform, in both test passes: on PostgreSQL + Redis (the platform shares the test
database) and on the embedded defaults (the platform's own SQLite in its var dir).

A data-driven table of malformed requests, each named, and for every one of them:
- a 4xx answer, never a 5xx;
- the documented error shape: native `{"success": false, "code", "message", "request_id",
  "details"?}` (docs/signing-api.md §3), legacy `{"code": <int>, "msg", "data": false}`
  (docs/sign-server-compat.md §5);
- no row written (XML documents, their versions, App Secrets, access IDs);
- exactly one audit event, found by the request id, with the answer's HTTP status and the
  native error code as its outcome (the claimed access ID kept for refusals before one is known).

Request heads the HTTP server itself refuses (431 too large, 414 request line too long, 400 a
control character in a header) never reach the application and so have no audit event; they
are checked apart, with the health endpoint answering within a second meanwhile.

Cases whose refusal is not what the docs promise fail with every problem listed, each line
starting with the case's kind and name.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad

from signclient import sign_headers
from tests.conftest import RPC_CREATE_ARGS, SimulatorProcess, rpc_access_id_create, test_database_url
from tests.live import ROOT, Platform, embedded_env, http, only_card_row, services_env, shared_database_flush
from tests.test_xml_api import BILLION_LAUGHS, CEB621, CEB_OPEN, PAY179_RAW, XXE

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]

MODE = os.environ.get("SIGNPLATFORM_TEST_BACKENDS", "services")
DEVICE = "hostile-card"
MAX_BODY = 2 * 1024 * 1024  # API_MAX_BODY_BYTES of the platform under test: a 413 costs little
LEGACY_KEY = "hostile-legacy-key-0123"  # 23 bytes: folded
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PAY179 = PAY179_RAW.decode("utf-8")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
NATIVE_KEYS = {"success", "code", "message", "request_id", "details"}


# --- the legacy cipher, from the spec ---------------------------------------------------------


def fold(key: str) -> bytes:
    folded = bytearray(16)
    for index, byte in enumerate(key.encode("utf-8")):
        folded[index % 16] ^= byte
    return bytes(folded)


def seal(plaintext: str | object, key: str = LEGACY_KEY) -> str:
    """The hex AES-128-ECB body a legacy client sends (a str is sent as it is, else its JSON)."""
    text = plaintext if isinstance(plaintext, str) else json.dumps(plaintext, ensure_ascii=False)
    return AES.new(fold(key), AES.MODE_ECB).encrypt(pad(text.encode("utf-8", "surrogatepass"), 16)).hex().upper()


def _opens_under_our_key(hex_text: str) -> bool:
    try:
        unpad(AES.new(fold(LEGACY_KEY), AES.MODE_ECB).decrypt(bytes.fromhex(hex_text)), 16).decode("utf-8")
        return True
    except ValueError:
        return False


def _foreign_cipher() -> str:
    """A well-formed ciphertext under a key no access ID has (and that does not open under ours)."""
    for n in range(100):
        candidate = seal({"str": f"foreign {n}", "pwdstr": ""}, key="a-key-nobody-has")
        if not _opens_under_our_key(candidate):
            return candidate
    raise AssertionError("no foreign ciphertext found")


# --- hostile documents ------------------------------------------------------------------------

NOT_WELL_FORMED = CEB621[:-5]
NOT_CEB = '<Order xmlns="urn:x"><orderNo>1</orderNo></Order>'
ALREADY_SIGNED = CEB621.replace(
    "</ceb:CEB621Message>",
    '<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo></ds:SignedInfo>'
    "<ds:SignatureValue>AAAA</ds:SignatureValue></ds:Signature></ceb:CEB621Message>",
)
EMPTY_ROOT = '<ceb:CEB621Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="x" version="v1.0"/>'
GBK_DECLARED = '<?xml version="1.0" encoding="GBK"?>' + CEB621
DEEP = 100_000


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int = DEEP) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def pay179(**changes) -> str:
    """The published 179 body with top-level fields replaced (a value of ... removes the field)."""
    payload = json.loads(PAY179)
    for name, value in changes.items():
        if value is ...:
            payload.pop(name, None)
        else:
            payload[name] = value
    return json.dumps(payload, ensure_ascii=False)


# --- the platform, its database, its callers -----------------------------------------------------


class Rows:
    """Read-only SQL on the platform's database: the shared test PostgreSQL database, or
    the embedded platform's own SQLite file."""

    SNAPSHOT = {
        "XML documents": "SELECT COUNT(*) FROM xmlstore_xmldocument",
        "deleted XML documents": "SELECT COUNT(*) FROM xmlstore_xmldocument WHERE deleted_at IS NOT NULL",
        "XML document versions": "SELECT COUNT(*) FROM xmlstore_xmldocumentversion",
        "access IDs": "SELECT COUNT(*) FROM accessids_accessid",
        "App Secrets": "SELECT COUNT(*) FROM accessids_appsecret",
        "current App Secrets": "SELECT COUNT(*) FROM accessids_appsecret WHERE state = 'current'",
    }

    def __init__(self, sqlite_path: Path | None):
        self.sqlite_path = sqlite_path

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.sqlite_path is None:
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        db = sqlite3.connect(self.sqlite_path, timeout=10, isolation_level=None)
        try:
            return list(db.execute(sql.replace("%s", "?"), params).fetchall())
        finally:
            db.close()

    def snapshot(self) -> dict[str, int]:
        return {name: self.query(sql)[0][0] for name, sql in self.SNAPSHOT.items()}

    def events(self, request_id: str) -> list[dict[str, Any]]:
        columns = ("event_type", "source", "endpoint", "outcome", "http_status", "access_key")
        rows = self.query(f"SELECT {', '.join(columns)} FROM audit_auditevent WHERE request_id = %s", (request_id,))
        return [dict(zip(columns, row, strict=True)) for row in rows]


@dataclass
class Caller:
    key: str
    secret: str


@dataclass
class Live:
    platform: Platform
    rows: Rows
    callers: dict[str, Caller] = field(default_factory=dict)
    other_document: int | None = None


@pytest.fixture(scope="module")
def live(django_db_setup, django_db_blocker, tmp_path_factory):
    """One simulator and one platform for the module, on the pass's backends."""
    tmp = tmp_path_factory.mktemp("hostile")
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys")).start()
    settings = dict(UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_DEFAULT_DEVICE=DEVICE, API_MAX_BODY_BYTES=str(MAX_BODY),
                    UKEY_RECONNECT_MAX="1")
    platform = None
    try:
        if MODE == "services":
            with django_db_blocker.unblock():
                only_card_row(DEVICE)
                platform = Platform(services_env(test_database_url(), tmp / "var", **settings), tmp).start()
            platform.wait_card()  # so that a request that wrongly reaches the card always gets as far
            yield Live(platform, Rows(None))
        else:
            platform = Platform(embedded_env(tmp / "var", **settings), tmp).start()
            platform.wait_card()
            live = Live(platform, Rows(tmp / "var" / "db.sqlite3"))
            live.callers = {
                "main": _cli_access_id(platform, "hostile main", legacy_key=LEGACY_KEY),
                "other": _cli_access_id(platform, "hostile other"),
                "narrow": _cli_access_id(platform, "hostile narrow", scopes="sign"),
            }
            yield live
    finally:
        if platform is not None:
            platform.stop()
            if MODE == "services":
                shared_database_flush(django_db_blocker)
        sim.stop()


def _cli_access_id(platform: Platform, name: str, *, legacy_key: str = "", scopes: str = "") -> Caller:
    """`manage.py accessid create --json` against the embedded platform's own database."""
    args = [sys.executable, "manage.py", "accessid", "create", "--name", name, "--json"]
    env = dict(platform.env)
    if legacy_key:
        env["HOSTILE_LEGACY_KEY"] = legacy_key
        args += ["--legacy-aes-key-env", "HOSTILE_LEGACY_KEY"]
    args += ["--scopes", scopes] if scopes else list(RPC_CREATE_ARGS)  # the main caller calls /rpc too
    created = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    credentials = json.loads(created.stdout)
    return Caller(credentials["access_id"], credentials["secret"])


@pytest.fixture
def target(live):
    """The platform with three callers ("main" has a legacy key; "narrow" only the `sign`
    scope) and a document that belongs to "other". On PostgreSQL they are made anew for each
    test (a transactional test empties the shared database after itself)."""
    if MODE == "services":
        from accessids.services import access_id_create, access_id_set_legacy_key

        main, main_secret = rpc_access_id_create(name="hostile main")
        access_id_set_legacy_key(access_id=main, legacy_key=LEGACY_KEY)
        other, other_secret = access_id_create(name="hostile other")
        narrow, narrow_secret = access_id_create(name="hostile narrow", scopes=["sign"])
        live.callers = {"main": Caller(main.key, main_secret), "other": Caller(other.key, other_secret),
                        "narrow": Caller(narrow.key, narrow_secret)}
        live.other_document = None
    if live.other_document is None:
        body = json.dumps({"filename": "others.xml", "xml": CEB621, "directory": "private"}).encode()
        status, _, content = signed(live, "other", "POST", "/api/v1/xml-documents", body)
        assert status == 201, content
        live.other_document = json.loads(content)["id"]
    return live


def exchange(live: Live, method: str, path: str, body: bytes = b"", headers: dict | None = None, *,
             chunked: bool = False):
    """(status, headers, body) of one request sent with exactly these headers (http.client adds
    no Content-Type of its own, unlike urllib); `chunked`: without Content-Length, in 64 KiB chunks."""
    connection = HTTPConnection("127.0.0.1", live.platform.port, timeout=20)
    payload: Any = body or None
    if chunked:
        payload = (body[offset:offset + 65536] for offset in range(0, len(body), 65536))
    try:
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def signed(live: Live, who: str, method: str, path: str, body: bytes = b"", *, content_type="application/json"):
    caller = live.callers[who]
    headers = sign_headers(method, live.platform.base + path, body, caller.key, caller.secret)
    if body:
        headers["Content-Type"] = content_type
    return exchange(live, method, path, body, headers)


# --- the table of hostile requests ----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Any
    content: bytes
    claimed_key: str  # the X-Access-Id sent ("" for none or for legacy)


@dataclass
class Case:
    kind: str
    name: str
    legacy: bool
    method: str
    path: str
    send: Callable[[Live, dict], Answer]
    status: int
    code: str | int  # native: the error code; legacy: the envelope's integer code
    outcome: str  # the audit event's outcome
    reason: str | None = None  # native XML refusals: details.reason
    identified: bool = True  # legacy: the caller is known (its key decrypted the body)

    @property
    def label(self) -> str:
        return f"[{self.kind}] {self.name}"


def native(kind: str, name: str, method: str, path: str, body: str | bytes | object = b"", *,
           status: int = 400, code: str = "INVALID_REQUEST", who: str | None = "main",
           content_type: str | None = "application/json", headers: dict | None = None,
           save_as: str | None = None, reuse: str | None = None, reason: str | None = None,
           chunked: bool = False) -> Case:
    """A native request: `body` bytes or text are sent as they are, anything else as JSON;
    signed by `who` (None: unsigned); `headers` override or (None) remove signed headers;
    `save_as`/`reuse`: keep the exact request, or send a kept one again (a replay)."""
    if isinstance(body, (bytes, str)):
        raw = body.encode("utf-8") if isinstance(body, str) else body
    else:
        raw = json.dumps(body).encode("utf-8")

    def send(live: Live, saved: dict) -> Answer:
        if reuse:
            request_headers = dict(saved[reuse])
        else:
            request_headers = {"Content-Type": content_type} if raw and content_type else {}
            if who is not None:
                caller = live.callers[who]
                request_headers.update(sign_headers(method, live.platform.base + path, raw, caller.key,
                                                    caller.secret))
            for header, value in (headers or {}).items():
                if value is None:
                    request_headers.pop(header, None)
                else:
                    request_headers[header] = value
        if save_as:
            saved[save_as] = request_headers
        status_, response_headers, content = exchange(live, method, path, raw, request_headers, chunked=chunked)
        return Answer(status_, response_headers, content, request_headers.get("X-Access-Id", "").strip()[:64])

    return Case(kind, name, False, method, path, send, status, code, code, reason=reason)


def legacy(kind: str, name: str, path: str, body: str | bytes = b"", *, method: str = "POST", status: int = 400,
           code: int = 400, outcome: str = "INVALID_REQUEST", identified: bool = True,
           headers: dict | None = None, chunked: bool = False) -> Case:
    raw = body.encode("utf-8") if isinstance(body, str) else body

    def send(live: Live, saved: dict) -> Answer:
        request_headers = {"Content-Type": "text/plain", **(headers or {})}
        status_, response_headers, content = exchange(live, method, path, raw, request_headers, chunked=chunked)
        return Answer(status_, response_headers, content, "")

    return Case(kind, name, True, method, path, send, status, code, outcome, identified=identified)


def hostile_cases(live: Live) -> list[Case]:
    now_ms = int(time.time() * 1000)
    main = live.callers["main"].key
    other_doc = live.other_document
    sign = "/api/v1/sign"
    docs = "/api/v1/xml-documents"
    rotate = "/api/v1/access-ids/self/rotate"
    cases = [
        # --- authentication (docs/signing-api.md §2 checks 1-5) ---
        native("missing auth headers", "no signing header at all", "POST", sign, {"data": "x"}, who=None,
               status=401, code="MISSING_AUTH_HEADERS"),
        native("missing auth headers", "no X-Signature", "POST", sign, {"data": "x"},
               headers={"X-Signature": None}, status=401, code="MISSING_AUTH_HEADERS"),
        native("missing auth headers", "blank X-Nonce", "POST", sign, {"data": "x"}, headers={"X-Nonce": "   "},
               status=401, code="MISSING_AUTH_HEADERS"),
        native("missing auth headers", "only X-Access-Id, GET", "GET", "/api/v1/certificate", who=None,
               headers={"X-Access-Id": main}, status=401, code="MISSING_AUTH_HEADERS"),
        native("bad nonce", "too short", "POST", sign, {"data": "x"}, headers={"X-Nonce": "short"},
               status=401, code="INVALID_NONCE"),
        native("bad nonce", "65 characters", "POST", sign, {"data": "x"}, headers={"X-Nonce": "n" * 65},
               status=401, code="INVALID_NONCE"),
        native("bad nonce", "spaces and punctuation", "POST", sign, {"data": "x"},
               headers={"X-Nonce": "has space; in it!!"}, status=401, code="INVALID_NONCE"),
        native("bad nonce", "non-ASCII letters", "POST", sign, {"data": "x"},
               headers={"X-Nonce": "ünïcödé-nonce-12345"}, status=401, code="INVALID_NONCE"),
        native("stale timestamp", "ten minutes old", "POST", sign, {"data": "x"},
               headers={"X-Timestamp": str(now_ms - 600_000)}, status=401, code="INVALID_TIMESTAMP"),
        native("stale timestamp", "seconds instead of milliseconds", "POST", sign, {"data": "x"},
               headers={"X-Timestamp": str(now_ms // 1000)}, status=401, code="INVALID_TIMESTAMP"),
        native("future timestamp", "ten minutes ahead", "POST", sign, {"data": "x"},
               headers={"X-Timestamp": str(now_ms + 600_000)}, status=401, code="INVALID_TIMESTAMP"),
        native("future timestamp", "17 digits", "POST", sign, {"data": "x"}, headers={"X-Timestamp": "9" * 17},
               status=401, code="INVALID_TIMESTAMP"),
        native("non-digit timestamp", "letters", "POST", sign, {"data": "x"}, headers={"X-Timestamp": "yesterday"},
               status=401, code="INVALID_TIMESTAMP"),
        native("non-digit timestamp", "negative", "POST", sign, {"data": "x"}, headers={"X-Timestamp": "-1"},
               status=401, code="INVALID_TIMESTAMP"),
        native("non-digit timestamp", "exponent form", "POST", sign, {"data": "x"}, headers={"X-Timestamp": "1.7e12"},
               status=401, code="INVALID_TIMESTAMP"),
        native("unknown access ID", "well-formed, never issued", "POST", sign, {"data": "x"},
               headers={"X-Access-Id": "AK" + "0" * 20}, status=401, code="INVALID_ACCESS_ID"),
        native("unknown access ID", "200 characters", "POST", sign, {"data": "x"},
               headers={"X-Access-Id": "AK" + "F" * 198}, status=401, code="INVALID_ACCESS_ID"),
        native("unknown access ID", "Latin-1 letters", "GET", "/api/v1/certificate",
               headers={"X-Access-Id": "AKÄÖÜ" + "0" * 17}, status=401, code="INVALID_ACCESS_ID"),
        native("wrong signature", "all zeros", "POST", sign, {"data": "x"}, headers={"X-Signature": "0" * 64},
               status=401, code="SIGNATURE_VALIDATION_FAILED"),
        native("wrong signature", "not hex", "POST", sign, {"data": "x"}, headers={"X-Signature": "zz" * 40},
               status=401, code="SIGNATURE_VALIDATION_FAILED"),
        native("wrong signature", "signed by another access ID's secret", "POST", sign, {"data": "x"}, who="other",
               headers={"X-Access-Id": main}, status=401, code="SIGNATURE_VALIDATION_FAILED"),
        native("replayed nonce", "first use (a refused body)", "POST", sign, {"data": 12345}, save_as="replay",
               status=400, code="INVALID_REQUEST"),
        native("replayed nonce", "the same request again", "POST", sign, {"data": 12345}, reuse="replay",
               status=409, code="DUPLICATE_REQUEST"),
        # --- bodies that are not JSON objects ---
        native("not JSON", "plain text", "POST", sign, b"sign this please"),
        native("not JSON", "truncated object", "POST", sign, b'{"data": "x"'),
        native("not JSON", "single quotes", "POST", "/api/v1/rpc", b"{'_method': 'cus-sec_SpcGetCertNo'}"),
        native("not JSON", "invalid UTF-8", "POST", sign, b'{"data": "\xff\xfe\xfd"}'),
        native("JSON array instead of object", "sign", "POST", sign, b'["data", "x"]'),
        native("JSON array instead of object", "sign/179", "POST", "/api/v1/sign/179", b"[" + PAY179.encode() + b"]"),
        native("JSON array instead of object", "xml-documents", "POST", docs, b'[{"filename": "a", "xml": "<a/>"}]'),
        native("JSON scalar instead of object", "null", "POST", sign, b"null"),
        native("JSON scalar instead of object", "a string", "POST", rotate, b'"86400"'),
        native("deep nesting", "100000 nested arrays", "POST", sign, deep_array()),
        native("deep nesting", "100000 nested objects", "POST", "/api/v1/sign/179", deep_object()),
        native("deep nesting", "33 levels, just past the limit", "POST", sign,
               '{"data": "x", "n": ' + deep_array(33) + "}"),
        native("NUL in a string", "in data", "POST", sign, b'{"data": "a\\u0000b"}'),
        native("NUL in a string", "in a key", "POST", docs, b'{"filename": "a", "xml": "<a/>", "x\\u0000": 1}'),
        native("NUL in a string", "in XML", "POST", "/api/v1/sign/xml",
               json.dumps({"xml": CEB621.replace("<ceb:orderNo>", "<ceb:orderNo>\x00", 1)})),
        native("lone surrogate", "in data", "POST", sign, b'{"data": "\\ud800"}'),
        native("lone surrogate", "low surrogate in a key", "POST", "/api/v1/rpc",
               b'{"_method": "cus-sec_SpcGetCertNo", "args": {"\\udfff": "x"}}'),
        native("NaN or Infinity", "NaN", "POST", sign, b'{"data": "x", "n": NaN}'),
        native("NaN or Infinity", "-Infinity in 179 data", "POST", "/api/v1/sign/179",
               PAY179.replace("1544519952469", "-Infinity")),
        native("huge number", "1e400", "POST", sign, b'{"data": "x", "n": 1e400}'),
        native("huge number", "an integer of 5000 digits", "POST", rotate,
               b'{"grace_seconds": ' + b"9" * 5000 + b"}"),
        native("empty body", "sign", "POST", sign, b""),
        native("empty body", "sign/xml", "POST", "/api/v1/sign/xml", b""),
        native("empty body", "sign/179", "POST", "/api/v1/sign/179", b""),
        native("wrong Content-Type", "text/plain", "POST", sign, {"data": "x"}, content_type="text/plain",
               status=415),
        native("wrong Content-Type", "form encoded", "POST", sign, b"data=x",
               content_type="application/x-www-form-urlencoded", status=415),
        native("wrong Content-Type", "XML for sign/xml", "POST", "/api/v1/sign/xml", CEB621,
               content_type="application/xml", status=415),
        native("wrong Content-Type", "none at all", "POST", "/api/v1/rpc", b'{"_method": "cus-sec_SpcGetCertNo"}',
               content_type=None, status=415),
        native("bogus charset", "charset=hex (a codec, not a text encoding)", "POST", sign, {"data": "x"},
               content_type="application/json; charset=hex"),
        native("bogus charset", "charset=utf-32 on UTF-8 bytes", "POST", sign, {"data": "x"},
               content_type="application/json; charset=utf-32"),
        native("payload too large", "sign, 2.1 MiB", "POST", sign, {"data": "x" * (MAX_BODY + 100_000)},
               status=413, code="PAYLOAD_TOO_LARGE"),
        native("payload too large", "unsigned", "POST", "/api/v1/sign/xml", b"<" * (MAX_BODY + 1), who=None,
               status=413, code="PAYLOAD_TOO_LARGE"),
        # --- wrong field types and values ---
        native("number where a string is required", "data", "POST", sign, {"data": 12345}),
        native("number where a string is required", "sign/xml xml", "POST", "/api/v1/sign/xml", {"xml": 621}),
        native("number where a string is required", "rpc _method", "POST", "/api/v1/rpc", {"_method": 123},
               status=403, code="PERMISSION_DENIED"),
        native("other JSON types where a string is required", "data: null", "POST", sign, {"data": None}),
        native("other JSON types where a string is required", "data: array", "POST", sign, {"data": ["x"]}),
        native("other JSON types where a string is required", "data: object", "POST", sign, {"data": {"x": 1}}),
        native("other JSON types where a string is required", "rpc _method: array", "POST", "/api/v1/rpc",
               {"_method": ["cus-sec_SpcGetCertNo"]}, status=403, code="PERMISSION_DENIED"),
        native("empty required string", "data", "POST", sign, {"data": ""}),
        native("empty required string", "data of only spaces and newlines", "POST", sign, {"data": "  \n "}),
        native("string where a boolean is required", "no_hash: yes", "POST", sign, {"data": "x", "no_hash": "yes"}),
        native("string where a boolean is required", "no_hash: 1", "POST", sign, {"data": "x", "no_hash": 1}),
        native("string where a boolean is required", "179 upload: true as text", "POST", "/api/v1/sign/179",
               pay179(upload="true")),
        native("unknown device", "sign", "POST", sign, {"data": "x", "device": "no-such-card"}),
        native("unknown device", "device: number", "POST", sign, {"data": "x", "device": 7}),
        native("unknown device", "certificate?device=unknown", "GET", "/api/v1/certificate?device=unknown"),
        native("unknown device", "certificate?device=%00", "GET", "/api/v1/certificate?device=%00"),
        native("unknown device", "179 device: object", "POST", "/api/v1/sign/179", pay179(device={"slug": "x"})),
        native("filename of the wrong type", "sign/xml filename: 12345", "POST", "/api/v1/sign/xml",
               {"xml": CEB621, "filename": 12345}),
        native("filename of the wrong type", "xml-documents filename: 12345", "POST", docs,
               {"filename": 12345, "xml": "<a>1</a>"}),
        # --- XML (docs/ceb-xml-and-179.md §1.1) ---
        native("DOCTYPE / entity bomb", "billion laughs, sign/xml", "POST", "/api/v1/sign/xml",
               {"xml": BILLION_LAUGHS}, reason="doctype_forbidden"),
        native("DOCTYPE / entity bomb", "XXE, verify/xml", "POST", "/api/v1/verify/xml", {"xml": XXE},
               reason="doctype_forbidden"),
        native("DOCTYPE / entity bomb", "billion laughs, xml-documents", "POST", docs,
               {"filename": "bomb.xml", "xml": BILLION_LAUGHS}, reason="doctype_forbidden"),
        native("XML not well-formed", "sign/xml", "POST", "/api/v1/sign/xml", {"xml": NOT_WELL_FORMED},
               reason="not_well_formed"),
        native("XML not well-formed", "verify/xml", "POST", "/api/v1/verify/xml", {"xml": "<a><b></a>"},
               reason="not_well_formed"),
        native("XML not well-formed", "xml-documents", "POST", docs, {"filename": "x.xml", "xml": "<a>&undefined;</a>"},
               reason="not_well_formed"),
        native("XML not well-formed", "only whitespace, verify/xml", "POST", "/api/v1/verify/xml", {"xml": "   "}),
        native("not a CEB root", "sign/xml", "POST", "/api/v1/sign/xml", {"xml": NOT_CEB}, reason="not_ceb"),
        native("XML already signed", "sign/xml", "POST", "/api/v1/sign/xml", {"xml": ALREADY_SIGNED},
               reason="already_signed"),
        native("XML empty root", "sign/xml", "POST", "/api/v1/sign/xml", {"xml": EMPTY_ROOT}, reason="empty_root"),
        native("XML bad encoding", "GBK declaration", "POST", "/api/v1/sign/xml", {"xml": GBK_DECLARED},
               reason="bad_encoding"),
        native("XML missing", "verify/xml without xml", "POST", "/api/v1/verify/xml", {"signed_xml": CEB621}),
        native("XML missing", "verify/xml xml: array", "POST", "/api/v1/verify/xml", {"xml": [CEB621]}),
        # --- names in the XML store ---
        native("path traversal in names", "sign/xml filename ../x", "POST", "/api/v1/sign/xml",
               {"xml": CEB621, "filename": "../x"}),
        native("path traversal in names", "sign/xml directory /etc", "POST", "/api/v1/sign/xml",
               {"xml": CEB621, "directory": "/etc"}),
        native("path traversal in names", "xml-documents directory a/../../b", "POST", docs,
               {"filename": "a.xml", "xml": "<a>1</a>", "directory": "a/../../b"}),
        native("backslash in a name", "xml-documents filename a\\b", "POST", docs,
               {"filename": "a\\b.xml", "xml": "<a>1</a>"}),
        native("backslash in a name", "sign/xml directory C:\\x", "POST", "/api/v1/sign/xml",
               {"xml": CEB621, "directory": "C:\\x"}),
        native("name too long or only dots", "filename of 250 characters", "POST", docs,
               {"filename": "f" * 250, "xml": "<a>1</a>"}),
        native("name too long or only dots", "filename ...", "POST", docs, {"filename": "...", "xml": "<a>1</a>"}),
        # --- 179 payment data (docs/ceb-xml-and-179.md §2.1) ---
        native("179 missing fields", "only sessionID", "POST", "/api/v1/sign/179", {"sessionID": "s-1"}),
        native("179 missing fields", "no payExchangeInfoLists", "POST", "/api/v1/sign/179",
               pay179(payExchangeInfoLists=...)),
        native("179 missing fields", "no serviceTime", "POST", "/api/v1/sign/179", pay179(serviceTime=...)),
        native("179 duplicate keys", "sessionID twice", "POST", "/api/v1/sign/179",
               PAY179.replace("{", '{"sessionID": "injected",', 1)),
        native("179 duplicate keys", "totalAmount twice in the head", "POST", "/api/v1/sign/179",
               PAY179.replace('"totalAmount": 100,', '"totalAmount": 100, "totalAmount": 1,')),
        native("179 wrong types", "sessionID: number", "POST", "/api/v1/sign/179", pay179(sessionID=123)),
        native("179 wrong types", "payExchangeInfoHead: string", "POST", "/api/v1/sign/179",
               pay179(payExchangeInfoHead="head")),
        native("179 wrong types", "payExchangeInfoLists: empty", "POST", "/api/v1/sign/179",
               pay179(payExchangeInfoLists=[])),
        native("179 wrong types", "serviceTime: not digits", "POST", "/api/v1/sign/179", pay179(serviceTime="soon")),
        # --- /xml-documents list parameters ---
        native("bad page parameter", "page=99999999999999999999", "GET", docs + "?page=99999999999999999999"),
        native("bad page parameter", "page=0", "GET", docs + "?page=0"),
        native("bad page parameter", "page=-1", "GET", docs + "?page=-1"),
        native("bad page parameter", "page=superscript two", "GET", docs + "?page=%C2%B2"),
        native("bad page_size parameter", "page_size=10000", "GET", docs + "?page_size=10000"),
        native("bad page_size parameter", "page_size=0", "GET", docs + "?page_size=0"),
        native("bad page_size parameter", "page_size=1e3", "GET", docs + "?page_size=1e3"),
        native("control character in a query", "q with %00", "GET", docs + "?q=order%00"),
        native("control character in a query", "directory with %0A", "GET", docs + "?directory=in%0Aout"),
        native("bad boolean parameter", "signed=maybe", "GET", docs + "?signed=maybe"),
        native("bad boolean parameter", "signed=2", "GET", docs + "?signed=2"),
        native("path traversal in names", "list directory=../x", "GET", docs + "?directory=../x"),
        native("backslash in a name", "list filename=a%5Cb", "GET", docs + "?filename=a%5Cb"),
        # --- /xml-documents/<id> ---
        native("document id out of range", "GET a 20-digit id", "GET", docs + "/99999999999999999999",
               status=404, code="NOT_FOUND"),
        native("document id out of range", "DELETE a 40-digit id", "DELETE", docs + "/" + "9" * 40,
               status=404, code="NOT_FOUND"),
        native("document id out of range", "GET id 0", "GET", docs + "/0", status=404, code="NOT_FOUND"),
        native("another access ID's document", "GET", "GET", f"{docs}/{other_doc}", status=404, code="NOT_FOUND"),
        native("another access ID's document", "DELETE", "DELETE", f"{docs}/{other_doc}", status=404,
               code="NOT_FOUND"),
        native("document id not a number", "GET /xml-documents/abc", "GET", docs + "/abc", status=404,
               code="NOT_FOUND"),
        # --- /rpc ---
        native("rpc method not allowed", "PIN change", "POST", "/api/v1/rpc",
               {"_method": "cus-sec_SpcChangePIN", "args": {"oldPin": "1", "newPin": "2"}},
               status=403, code="PERMISSION_DENIED"),
        native("rpc method not allowed", "unknown method", "POST", "/api/v1/rpc", {"_method": "no_such_method"},
               status=403, code="PERMISSION_DENIED"),
        native("rpc method not allowed", "security_ family", "POST", "/api/v1/rpc",
               {"_method": "security_Decrypt", "args": {}}, status=403, code="PERMISSION_DENIED"),
        native("rpc args not an object", "args: string", "POST", "/api/v1/rpc",
               {"_method": "cus-sec_SpcGetCertNo", "args": "inData=x"}),
        native("rpc args not an object", "args: array", "POST", "/api/v1/rpc",
               {"_method": "cus-sec_SpcSignDataAsPEM", "args": ["x"]}),
        native("rpc method missing", "no _method", "POST", "/api/v1/rpc", {"args": {}}),
        # --- /access-ids/self/rotate ---
        native("bad grace_seconds", "a string", "POST", rotate, {"grace_seconds": "10"}),
        native("bad grace_seconds", "negative", "POST", rotate, {"grace_seconds": -1}),
        native("bad grace_seconds", "10**9", "POST", rotate, {"grace_seconds": 10**9}),
        native("bad grace_seconds", "true", "POST", rotate, {"grace_seconds": True}),
        native("bad grace_seconds", "a fraction", "POST", rotate, {"grace_seconds": 1.5}),
        native("bad grace_seconds", "null", "POST", rotate, {"grace_seconds": None}),
        # --- scopes, methods, paths ---
        native("missing scope", "xml-documents list without xml_read", "GET", docs, who="narrow",
               status=403, code="PERMISSION_DENIED"),
        native("missing scope", "rotate without rotate_self", "POST", rotate, {"grace_seconds": 0}, who="narrow",
               status=403, code="PERMISSION_DENIED"),
        native("missing scope", "sign/179 without sign_179", "POST", "/api/v1/sign/179", PAY179, who="narrow",
               status=403, code="PERMISSION_DENIED"),
        native("method not allowed", "GET /sign", "GET", sign, status=405, code="METHOD_NOT_ALLOWED"),
        native("method not allowed", "PUT /xml-documents/<id>", "PUT", f"{docs}/{other_doc}", {"xml": "<a/>"},
               status=405, code="METHOD_NOT_ALLOWED"),
        native("method not allowed", "DELETE /sign/xml", "DELETE", "/api/v1/sign/xml", status=405,
               code="METHOD_NOT_ALLOWED"),
        native("unknown path", "/api/v1/nope", "GET", "/api/v1/nope", status=404, code="NOT_FOUND"),
        native("unknown path", "/api/v1/sign/ (trailing slash)", "POST", "/api/v1/sign/", {"data": "x"},
               status=404, code="NOT_FOUND"),
        native("unknown path", "unsigned /api/v1/admin", "GET", "/api/v1/admin", who=None, status=404,
               code="NOT_FOUND"),
        native("unknown path", "a newline in the path", "GET", "/api/v1/x%0Ay"),  # a control character: 400
        native("control character in the path", "/api/v1/sign%00", "POST", "/api/v1/sign%00", {"data": "x"}),
        native("control character in the path", "/api/v1/xml-documents/%00", "GET", docs + "/%00"),
        native("control character in the path", "unsigned /api/v1/%00/x", "GET", "/api/v1/%00/x", who=None),
        # --- found by this module's first runs, and their neighbours ---
        native("too many query parameters", "xml-documents with 1001 parameters", "GET",
               docs + "?" + "&".join(f"p{n}=1" for n in range(1001))),
        native("too many query parameters", "certificate with 1001 parameters", "GET",
               "/api/v1/certificate?" + "&".join(f"device={n}" for n in range(1001))),
        native("Host header not allowed", "certificate", "GET", "/api/v1/certificate",
               headers={"Host": "evil.example"}),
        native("Host header not allowed", "sign", "POST", sign, {"data": "x"}, headers={"Host": "evil.example:80"}),
        native("rpc args the card cannot take", "SpcSignDataAsPEM without inData", "POST", "/api/v1/rpc",
               {"_method": "cus-sec_SpcSignDataAsPEM", "args": {}}),
        native("rpc args the card cannot take", "SpcSignDataAsPEM with a numeric inData", "POST", "/api/v1/rpc",
               {"_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": 123}}),
        native("chunked body too large", "sign, 2.1 MiB without Content-Length", "POST", sign,
               {"data": "x" * (MAX_BODY + 100_000)}, chunked=True, status=413, code="PAYLOAD_TOO_LARGE"),
        native("XML nested too deeply", "sign/xml, 100000 nested elements", "POST", "/api/v1/sign/xml",
               {"xml": CEB621.replace("</ceb:CEB621Message>", "<a>" * DEEP + "</a>" * DEEP + "</ceb:CEB621Message>")},
               reason="not_well_formed"),
        native("XML nested too deeply", "xml-documents, 100000 nested elements", "POST", docs,
               {"filename": "deep.xml", "xml": "<a>" * DEEP + "</a>" * DEEP}, reason="not_well_formed"),
        native("XML bad encoding", "UTF-16 declaration, verify/xml", "POST", "/api/v1/verify/xml",
               {"xml": '<?xml version="1.0" encoding="UTF-16"?>' + CEB621}, reason="bad_encoding"),
        native("DOCTYPE / entity bomb", "parameter-entity XXE after a comment, sign/xml", "POST", "/api/v1/sign/xml",
               {"xml": '<!-- hi --><!doctype ceb:CEB621Message [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                       + CEB_OPEN + "<ceb:x>1</ceb:x></ceb:CEB621Message>"}, reason="doctype_forbidden"),
        native("control character in a name", "sign/xml filename with U+0001", "POST", "/api/v1/sign/xml",
               {"xml": CEB621, "filename": "a\u0001b"}),
        native("control character in a name", "xml-documents directory with a tab", "POST", docs,
               {"filename": "a.xml", "xml": "<a>1</a>", "directory": "in\tout"}),
        native("null where a string is required", "xml-documents directory: null", "POST", docs,
               {"filename": "a.xml", "xml": "<a>1</a>", "directory": None}),
        native("null where a string is required", "179 upload: null", "POST", "/api/v1/sign/179", pay179(upload=None)),
        native("179 wrong types", "payExchangeInfoLists of numbers", "POST", "/api/v1/sign/179",
               pay179(payExchangeInfoLists=[1, 2])),
        native("bad grace_seconds", "hex text", "POST", rotate, {"grace_seconds": "0x10"}),
    ]
    # --- the legacy sign-server API (docs/sign-server-compat.md) ---
    foreign = _foreign_cipher()
    cases += [
        legacy("legacy body not hex", "getCode, words", "/getCode", "please sign this", identified=False),
        legacy("legacy body not hex", "getCode, odd length", "/getCode", "ABC", identified=False),
        legacy("legacy body not hex", "xml-files/add, bytes that are not ASCII", "/xml-files/add",
               b"\xff\xfe" + seal({"filename": "a", "xml": "<a/>"}).encode(), identified=False),
        legacy("legacy body empty", "getCode", "/getCode", b"", identified=False),
        legacy("legacy cipher length", "getCode, 15 bytes of ciphertext", "/getCode", "00" * 15, identified=False),
        legacy("legacy cipher under no key", "getCode", "/getCode", foreign, identified=False),
        legacy("legacy cipher under no key", "xml-files/list", "/xml-files/list", foreign, identified=False),
        legacy("legacy cipher of non-JSON", "getCode", "/getCode", seal("str=hello&pwdstr=")),
        legacy("legacy cipher of non-JSON", "xml-files/delete", "/xml-files/delete", seal("<filename>a</filename>")),
        legacy("legacy cipher of a JSON array", "getCode", "/getCode", seal(["str", "hello"])),
        legacy("legacy cipher of a JSON array", "xml-files/add", "/xml-files/add", seal([{"filename": "a"}])),
        legacy("legacy JSON missing str", "getCode", "/getCode", seal({"pwdstr": ""})),
        legacy("legacy JSON missing str", "getCode, missing pwdstr", "/getCode", seal({"str": "x"})),
        legacy("legacy str not a string", "str: 123", "/getCode", seal({"str": 123, "pwdstr": ""})),
        legacy("legacy str not a string", "pwdstr: number", "/getCode", seal({"str": "x", "pwdstr": 88888888})),
        legacy("legacy str not a string", "str: null", "/getCode", seal({"str": None, "pwdstr": ""})),
        legacy("legacy deep JSON", "getCode, 100000 nested arrays", "/getCode", seal(deep_array())),
        legacy("legacy deep JSON", "xml-files/add, 100000 nested objects", "/xml-files/add", seal(deep_object())),
        legacy("legacy JSON with NUL", "getCode", "/getCode", seal('{"str": "a\\u0000b", "pwdstr": ""}')),
        legacy("legacy JSON with NUL", "xml-files/add filename", "/xml-files/add",
               seal('{"filename": "a\\u0000.xml", "xml": "<a/>"}')),
        legacy("legacy JSON with lone surrogate", "getCode", "/getCode", seal('{"str": "\\ud800", "pwdstr": ""}')),
        legacy("legacy JSON with NaN", "getCode", "/getCode", seal('{"str": "x", "pwdstr": "", "n": NaN}')),
        legacy("legacy wrong method", "GET /getCode", "/getCode", method="GET", status=405, code=405,
               outcome="METHOD_NOT_ALLOWED", identified=False),
        legacy("legacy wrong method", "PUT /xml-files/add", "/xml-files/add", seal({"filename": "a", "xml": "<a/>"}),
               method="PUT", status=405, code=405, outcome="METHOD_NOT_ALLOWED", identified=False),
        legacy("legacy payload too large", "getCode, 2.1 MiB", "/getCode", "A" * (MAX_BODY + 100_000), status=413,
               code=413, outcome="PAYLOAD_TOO_LARGE", identified=False),
        legacy("legacy path traversal", "add filename ../x", "/xml-files/add",
               seal({"filename": "../x", "xml": "<a>1</a>"}), code=500),
        # An absolute directory is a folder name for the sign-server ("/etc" → "etc"); with
        # ".." or a drive letter it is still refused.
        legacy("legacy path traversal", "add directory /../etc", "/xml-files/add",
               seal({"filename": "a.xml", "xml": "<a>1</a>", "directory": "/../etc"}), code=500),
        legacy("legacy path traversal", "add directory C:\\Windows", "/xml-files/add",
               seal({"filename": "a.xml", "xml": "<a>1</a>", "directory": "C:\\Windows"}), code=500),
        legacy("legacy path traversal", "add directory a/../b", "/xml-files/add",
               seal({"filename": "a.xml", "xml": "<a>1</a>", "directory": "a/../b"}), code=500),
        legacy("legacy path traversal", "list directory ../../etc", "/xml-files/list",
               seal({"directory": "../../etc"}), code=500),
        legacy("legacy path traversal", "delete filename ../x", "/xml-files/delete", seal({"filename": "../x"}),
               code=500),
        legacy("legacy backslash in a name", "add filename a\\b", "/xml-files/add",
               seal({"filename": "a\\b", "xml": "<a>1</a>"}), code=500),
        legacy("legacy backslash in a name", "delete filename ..\\x", "/xml-files/delete",
               seal({"filename": "..\\x"}), code=500),
        legacy("legacy backslash in a name", "list directory C:\\", "/xml-files/list", seal({"directory": "C:\\"}),
               code=500),
        legacy("legacy field of the wrong type", "add filename: 12345", "/xml-files/add",
               seal({"filename": 12345, "xml": "<a>1</a>"}), code=500),
        legacy("legacy field of the wrong type", "add xml: object", "/xml-files/add",
               seal({"filename": "a.xml", "xml": {"a": 1}}), code=500),
        legacy("legacy field of the wrong type", "list directory: true", "/xml-files/list",
               seal({"directory": True}), code=500),
        legacy("legacy field missing", "add without xml", "/xml-files/add", seal({"filename": "a.xml"}), code=500),
        legacy("legacy field missing", "delete without filename", "/xml-files/delete", seal({"directory": "in"}),
               code=500),
        legacy("legacy hostile XML", "add with a DOCTYPE", "/xml-files/add",
               seal({"filename": "bomb.xml", "xml": BILLION_LAUGHS}), code=500),
        legacy("legacy hostile XML", "add XXE", "/xml-files/add", seal({"filename": "xxe.xml", "xml": XXE}),
               code=500),
        legacy("legacy hostile XML", "add not well-formed", "/xml-files/add",
               seal({"filename": "broken.xml", "xml": "<a><b></a>"}), code=500),
        legacy("legacy body empty", "only whitespace", "/xml-files/list", "  \r\n\t ", identified=False),
        legacy("legacy empty text to sign", "getCode str empty", "/getCode", seal({"str": "", "pwdstr": ""})),
        legacy("legacy empty text to sign", "getCode str only spaces", "/getCode", seal({"str": "   ", "pwdstr": ""})),
        # Refused before the body is read (like a wrong method): nobody identified.
        legacy("legacy Host header not allowed", "getCode", "/getCode", seal({"str": "x", "pwdstr": ""}),
               headers={"Host": "evil.example"}, identified=False),
        legacy("legacy chunked body too large", "getCode, 2.1 MiB", "/getCode", "A" * (MAX_BODY + 100_000),
               chunked=True, status=413, code=413, outcome="PAYLOAD_TOO_LARGE", identified=False),
        legacy("legacy bad names", "add filename of 250 characters", "/xml-files/add",
               seal({"filename": "f" * 250, "xml": "<a>1</a>"}), code=500),
        legacy("legacy bad names", "list directory a//b", "/xml-files/list", seal({"directory": "a//b"}), code=500),
        legacy("legacy bad names", "add filename only dots", "/xml-files/add", seal({"filename": "..", "xml": "<a/>"}),
               code=500),
        legacy("legacy delete of no document", "someone else's name", "/xml-files/delete",
               seal({"filename": "others.xml", "directory": "private"}), status=404, code=500, outcome="NOT_FOUND"),
    ]
    return cases


# --- the checks ------------------------------------------------------------------------------------


def problems_of(case: Case, answer: Answer, rows: Rows, main_key: str) -> list[str]:
    """What is wrong with the answer to one hostile request (empty: nothing)."""
    found: list[str] = []
    try:
        body = json.loads(answer.content)
    except ValueError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if (answer.status, code) != (case.status, case.code):  # every expected status is a 4xx
        not_4xx = "" if 400 <= answer.status <= 499 else " (not a 4xx)"
        found.append(f"answered {answer.status}{not_4xx} {code}, expected {case.status} {case.code}: "
                     + repr(answer.content[:200].decode("utf-8", "replace")))
    request_id = answer.headers.get("X-Request-ID") or ""
    if not UUID_RE.match(request_id):
        found.append(f"no X-Request-ID header (got {request_id!r})")
    if not isinstance(body, dict):
        found.append("the body is not a JSON object")
    elif case.legacy:
        found.extend(_legacy_shape_problems(body))
    else:
        found.extend(_native_shape_problems(case, answer, body, request_id))
    if request_id:
        found.extend(_audit_problems(case, answer, rows.events(request_id), code, main_key))
    return found


def _legacy_shape_problems(body: dict) -> list[str]:
    if (isinstance(body.get("code"), int) and not isinstance(body["code"], bool)
            and isinstance(body.get("msg"), str) and body["msg"] and body.get("data") is False):
        return []
    return [f"not the legacy error envelope: {body!r}"[:300]]


def _native_shape_problems(case: Case, answer: Answer, body: dict, request_id: str) -> list[str]:
    if not (NATIVE_KEYS - {"details"} <= set(body) <= NATIVE_KEYS and body["success"] is False
            and isinstance(body["code"], str) and isinstance(body["message"], str) and body["message"]
            and (isinstance(body.get("details"), dict) and body["details"] or "details" not in body)):
        return [f"not the documented error shape: {body!r}"[:300]]
    found = []
    if body["request_id"] != request_id:
        found.append(f"request_id {body['request_id']!r} is not the X-Request-ID {request_id!r}")
    reason = body.get("details", {}).get("reason")
    if case.reason and reason != case.reason:
        found.append(f"details.reason {reason!r}, expected {case.reason!r}")
    if answer.status == 401 and answer.headers.get("WWW-Authenticate") != "HMAC-SHA256":
        found.append("a 401 without WWW-Authenticate: HMAC-SHA256")
    return found


def _audit_problems(case: Case, answer: Answer, events: list[dict], code: Any, main_key: str) -> list[str]:
    """Exactly one event, the answer's status, the native code as outcome, the (claimed) caller."""
    if len(events) != 1 or events[0]["event_type"] != "api.request":
        return [f"audit events for request {answer.headers.get('X-Request-ID')}: {events}, expected exactly one"]
    (event,) = events
    found = []
    outcome = code if not case.legacy and isinstance(code, str) else case.outcome
    if event["http_status"] != answer.status:
        found.append(f"audit http_status {event['http_status']}, answered {answer.status}")
    if event["outcome"] == "OK" or event["outcome"] != outcome:
        found.append(f"audit outcome {event['outcome']!r}, expected {outcome!r}")
    if event["source"] != ("legacy" if case.legacy else "api"):
        found.append(f"audit source {event['source']!r}")
    endpoint = f"{case.method} {unquote(case.path.split('?')[0])}"
    if not CONTROL_RE.search(endpoint) and event["endpoint"] != endpoint:
        found.append(f"audit endpoint {event['endpoint']!r}, expected {endpoint!r}")
    if case.legacy:
        access_key = main_key if case.identified else ""
    else:
        access_key = answer.claimed_key
    if event["access_key"] != access_key:
        found.append(f"audit access_key {event['access_key']!r}, expected {access_key!r}")
    return found


def test_hostile_requests_get_a_documented_4xx_write_nothing_and_are_audited(target):
    live = target
    cases = hostile_cases(live)
    kinds = {case.kind for case in cases}
    assert len(kinds) >= 40 and len(cases) >= 100, (len(kinds), len(cases))
    assert len({case.label for case in cases}) == len(cases), "case names must be unique"
    assert all(400 <= case.status <= 499 for case in cases)

    saved: dict = {}
    failures: list[str] = []
    before = live.rows.snapshot()
    for case in cases:
        try:
            answer = case.send(live, saved)
        except Exception as exc:  # a reset connection, a timeout: the platform did not answer
            failures.append(f"{case.label}: no answer: {exc!r}")
            continue
        problems = problems_of(case, answer, live.rows, live.callers["main"].key)
        failures.extend(f"{case.label}: {problem}" for problem in problems)
        after = live.rows.snapshot()
        if after != before:
            changed = {name: (before[name], after[name]) for name in after if after[name] != before[name]}
            failures.append(f"{case.label}: rows written for a refused request: {changed}")
            before = after
    assert not failures, f"{len(failures)} problem(s) in {len(cases)} hostile requests:\n" + "\n".join(failures)

    # The platform is still well: the other caller's document is intact, the main secret still signs.
    status, _, content = signed(live, "other", "GET", f"/api/v1/xml-documents/{live.other_document}")
    assert status == 200 and json.loads(content)["filename"] == "others.xml", content
    status, _, content = signed(live, "main", "GET", "/api/v1/xml-documents?page_size=1")
    assert status == 200, content


# --- oversized request heads: refused by the HTTP server itself ------------------------------------


def raw_exchange(port: int, data: bytes, *, chunk: int = 64 * 1024, pause: float = 0.0) -> bytes:
    """Send `data` over a fresh connection (stopping once the server answers), return its answer."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for offset in range(0, len(data), chunk):
                sock.sendall(data[offset:offset + chunk])
                if select.select([sock], [], [], pause)[0]:
                    break
        except OSError:  # the server answered and closed while we were still sending
            pass
        try:
            while part := sock.recv(65536):
                answer += part
        except OSError:
            pass
    return answer


def test_oversized_request_heads_are_refused_by_the_server_while_health_answers_promptly(live):
    """431/414 (signplatform/http_server.py) and 400 for a control character in a header come
    from the HTTP server before the application, so no audit event is expected; meanwhile,
    with a slow unfinished head held open too, /api/v1/health answers within a second."""
    port = live.platform.port
    head = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    huge_header = head + b"X-Padding: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
    attacks = {
        "1 MiB header": (huge_header, 431),
        "101 headers": (head + b"".join(b"X-H%d: v\r\n" % n for n in range(101)) + b"\r\n", 431),
        "20 KiB request line": (b"GET /api/v1/health?q=" + b"x" * (20 * 1024) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                                414),
        "control character in a header": (head + b"X-Access-Id: AK\x01" + b"0" * 19 + b"\r\n\r\n", 400),
        **{f"1 MiB header, connection {n}": (huge_header, 431) for n in range(2, 5)},
    }
    answers: dict[str, bytes] = {}

    def attack(name: str, data: bytes) -> None:
        # In 16 KiB steps 20 ms apart, so that the health check runs while heads are arriving.
        answers[name] = raw_exchange(port, data, chunk=16 * 1024, pause=0.02)

    threads = [threading.Thread(target=attack, args=(name, data)) for name, (data, _) in attacks.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(head + b"X-Slow: " + b"s" * (32 * 1024))  # under the limits, never finished
        for thread in threads:
            thread.start()
        started = time.monotonic()
        status, _, content = http("GET", live.platform.base + "/api/v1/health", timeout=5)
        elapsed = time.monotonic() - started
        for thread in threads:
            thread.join(30)
    assert elapsed < 1.0, f"/api/v1/health took {elapsed:.2f} s during the attack"
    assert status in (200, 503) and json.loads(content)["status"] in ("ok", "degraded", "down"), content
    for name, (_, expected) in attacks.items():
        answer = answers.get(name, b"")
        assert answer.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1 %d " % expected), (name, answer[:200])
    status, _, _ = http("GET", live.platform.base + "/api/v1/health", timeout=5)
    assert status in (200, 503)
