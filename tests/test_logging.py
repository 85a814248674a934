"""Logging: secrets masked in text and JSON output (message, args, extras, tracebacks), JSON
lines that stay valid JSON, the request id on every line; and a real platform with
LOG_FORMAT=json whose log holds no PIN or secret although a legacy client sent its PIN and
the card failed."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import time

import pytest
from django.conf import settings

from accessids.services import access_id_create, access_id_set_legacy_key
from audit.models import AuditEvent
from core.logging import (
    JsonFormatter,
    RedactingFilter,
    RequestIdFilter,
    TextFormatter,
    redact,
    redaction_register,
    request_id_var,
)
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import ROOT, Platform, http, only_card_row, poll, services_env
from tests.test_legacy_api import decrypt, encrypt

# --- in-process: every kind of secret, every place it can hide -------------------------------

REGISTERED_PIN = "73915824"  # a card PIN the gateway registered
SECRETS = {
    "passwd": "PW-a1b2c3d4",
    "pwdstr": "PS-e5f6a7b8",
    "pin": "PIN-c9d0e1f2",
    "secret": "SEC-0a1b2c3d",
    "app_secret": "APP-4e5f6a7b",
    "legacy_aes_key": "AES-8c9d0e1f",
    "fallback_pin": "FB-2a3b4c5d",
    "x_signature": "SIG-6e7f8a9b",
    "bearer": "TOK-0c1d2e3f",
    "registered": REGISTERED_PIN,
}


def _log_every_kind(logger: logging.Logger) -> None:
    s = SECRETS
    logger.info(f"card call passwd={s['passwd']} done")
    logger.info("legacy body %s", {"str": "text", "pwdstr": s["pwdstr"]})
    logger.info("frame %s", '{"_method":"cus-sec_SpcSignDataAsPEM","args":{"inData":"x","passwd":"%s"}}' % s["passwd"])
    logger.warning("args as a dict: %(who)s", {"who": {"pin": s["pin"], "ok": True}})
    logger.info("settings", extra={"payload": {"secret": s["secret"], "nested": [f"app_secret={s['app_secret']}"]},
                                   "legacy_aes_key": s["legacy_aes_key"]})
    logger.info("headers %s", {"X-Signature": s["x_signature"], "Authorization": f"Bearer {s['bearer']}"})
    logger.info('escaped JSON in JSON: "{\\"fallback_pin\\": \\"%s\\"}"', s["fallback_pin"])
    logger.error("the card said %s was wrong", REGISTERED_PIN)
    try:
        raise ValueError(f"could not use legacy_aes_key={s['legacy_aes_key']} nor pin '{REGISTERED_PIN}'")
    except ValueError:
        logger.exception("failed with app_secret: %s", s["app_secret"])
    logger.info("stack", stack_info=True, extra={"note": f"Authorization: Bearer {s['bearer']}"})


def _handler(formatter: logging.Formatter, *, filters: bool = True) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    if filters:  # as settings.LOGGING wires the console handler
        handler.addFilter(RequestIdFilter())
        handler.addFilter(RedactingFilter())
    return handler, stream


def _text_formatter() -> logging.Formatter:
    return logging.Formatter(settings.LOGGING["formatters"]["text"]["format"])


@pytest.fixture
def capture():
    """A logger with a text and a JSON handler, configured like settings.LOGGING's console."""
    redaction_register(REGISTERED_PIN)
    logger = logging.getLogger(f"test.logging.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    text, text_stream = _handler(_text_formatter())
    js, json_stream = _handler(JsonFormatter())
    logger.addHandler(text)
    logger.addHandler(js)
    yield logger, text_stream, json_stream
    logger.handlers.clear()


def _json_lines(output: str) -> list[dict]:
    lines = output.splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # every line, one JSON object


def test_settings_wire_the_filters_and_formatters():
    console = settings.LOGGING["handlers"]["console"]
    assert console["filters"] == ["request_id", "redact"]
    assert settings.LOGGING["filters"]["redact"]["()"] == "core.logging.RedactingFilter"
    assert settings.LOGGING["filters"]["request_id"]["()"] == "core.logging.RequestIdFilter"
    assert settings.LOGGING["formatters"]["json"]["()"] == "core.logging.JsonFormatter"
    assert "%(request_id)s" in settings.LOGGING["formatters"]["text"]["format"]


@pytest.mark.parametrize("request_id", ["0b9f6a4e-1d2c-4e3b-8a7f-6c5d4e3b2a19", None])
def test_every_kind_of_secret_is_masked_in_text_and_json(capture, request_id):
    logger, text_stream, json_stream = capture
    token = request_id_var.set(request_id) if request_id else None
    try:
        _log_every_kind(logger)
    finally:
        if token is not None:
            request_id_var.reset(token)
    expected_id = request_id or "-"
    text, js = text_stream.getvalue(), json_stream.getvalue()
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked in the text log"
        assert value not in js, f"{name} leaked in the JSON log"
    assert "***" in text and "***" in js
    # Text: every record's first line carries the request id.
    records = [line for line in text.splitlines() if line[:4].isdigit()]
    assert len(records) == 10 and all(f"[{expected_id}]" in line for line in records)
    # JSON: every line is one valid object with the request id.
    entries = _json_lines(js)
    assert len(entries) == 10
    assert all(e["request_id"] == expected_id and e["message"] and e["level"] for e in entries)
    by_message = {e["message"]: e for e in entries}
    failed = next(e for e in entries if e["message"].startswith("failed with app_secret"))
    assert "Traceback" in failed["exception"] and "ValueError" in failed["exception"]
    assert "legacy_aes_key=***" in failed["exception"]
    settings_entry = by_message["settings"]
    assert settings_entry["extra"] == {"payload": {"secret": "***", "nested": ["app_secret=***"]},
                                       "legacy_aes_key": "***"}
    stack = by_message["stack"]
    assert "stack" in stack and stack["extra"]["note"] == "Authorization: ***"
    # The shapes are kept, only the values go.
    assert 'card call passwd=*** done' in by_message
    assert "legacy body {'str': 'text', 'pwdstr': '***'}" in by_message
    assert "headers {'X-Signature': '***', 'Authorization': '***'}" in by_message
    assert "the card said *** was wrong" in by_message


def test_formatters_mask_even_without_the_filter():
    """A handler someone adds without the filters still gets masked lines."""
    redaction_register(REGISTERED_PIN)
    logger = logging.getLogger("test.logging.nofilter")
    logger.propagate = False
    text, text_stream = _handler(TextFormatter(settings.LOGGING["formatters"]["text"]["format"]), filters=False)
    js, json_stream = _handler(JsonFormatter(), filters=False)
    logger.addHandler(text)
    logger.addHandler(js)
    try:
        _log_every_kind(logger)
    finally:
        logger.handlers.clear()
    for value in SECRETS.values():
        assert value not in text_stream.getvalue() and value not in json_stream.getvalue()
    assert all(e["request_id"] == "-" for e in _json_lines(json_stream.getvalue()))


def test_json_lines_stay_valid_whatever_the_message(capture):
    logger, _, json_stream = capture
    logger.info("multi\nline\r\n\ttabs \"quotes\" \\ backslash \x00 nul")
    logger.info("lone surrogate \udc80 and 中文 text")
    logger.info("bad args %s %s", "only one")  # a broken call still gives one line
    logger.info("object extra", extra={"obj": object(), "items": {1, 2}, "number": 3})
    entries = _json_lines(json_stream.getvalue())
    assert len(entries) == 4
    assert entries[0]["message"].startswith("multi\nline")
    assert "中文" in entries[1]["message"]
    assert entries[2]["message"].startswith("bad args")
    assert entries[3]["extra"] == {"items": [1, 2], "number": 3}  # no "<object at 0x...>" noise


def test_redact_shapes():
    cases = {
        "passwd=1234&x=1": "passwd=***&x=1",
        '{"pwdstr": "a \\"b\\" c", "str": "keep"}': '{"pwdstr": "***", "str": "keep"}',
        "{'pin': 'with space', 'n': 1}": "{'pin': '***', 'n': 1}",
        "UKEY_PIN=1234 SIGNPLATFORM_MASTER_KEY=abcd METRICS_TOKEN=zz":
            "UKEY_PIN=*** SIGNPLATFORM_MASTER_KEY=*** METRICS_TOKEN=***",
        "appSecret: abc, legacyAesKey=def": "appSecret: ***, legacyAesKey=***",
        "'HTTP_X_SIGNATURE': 'ab12'": "'HTTP_X_SIGNATURE': '***'",
        "authorization=Basic dXNlcjpw rest": "authorization=*** rest",
        "sent Bearer abc.def-ghi= to it": "sent Bearer *** to it",
        'truncated "passwd":"2468...\' [95 bytes]': 'truncated "passwd":"***\' [95 bytes]',
        # not secrets: left alone
        "mapping: a, shipping=b, typing: c": "mapping: a, shipping=b, typing: c",
        "card default: connected, queue depth 0": "card default: connected, queue depth 0",
    }
    for text, expected in cases.items():
        assert redact(text) == expected, text


def test_websockets_frame_lines_never_show_a_pin(capture, monkeypatch):
    from websockets.frames import Frame, Opcode

    logger, text_stream, json_stream = capture
    pin = "PIN-4c7e19a2"  # not registered: a legacy client's pwdstr
    ws_logger = logging.getLogger("websockets.client")
    monkeypatch.setattr(ws_logger, "handlers", logger.handlers)
    monkeypatch.setattr(ws_logger, "propagate", False)
    monkeypatch.setattr(ws_logger, "level", logging.DEBUG)

    def frame_line(payload: str) -> str:
        text_stream.truncate(0)
        text_stream.seek(0)
        ws_logger.debug("> %s", Frame(Opcode.TEXT, payload.encode()))
        return text_stream.getvalue()

    def request(data: str) -> str:
        return '{"_method":"cus-sec_SpcSignDataAsPEM","_id":4,"args":{"inData":"%s","passwd":"%s"}}' % (data, pin)

    # The filter raised websockets' log size: an ordinary card request is logged whole, PIN masked.
    assert Frame.MAX_LOG_SIZE >= 1500
    line = frame_line(request("abcdefgh"))
    # The data being signed shows only as the start of its SHA-256 (issue 11: nothing signed in the log).
    digest = hashlib.sha256(b"abcdefgh").hexdigest()[:16]
    assert f'"inData":"sha256:{digest}…","passwd":"***"}}}}' in line and pin not in line and "abcdefgh" not in line
    # A long one is cut in the middle; its tail holds the PIN's key whole: the value is masked.
    line = frame_line(request("x" * 3000))
    # (the cut, "...", falls inside inData, which shows as its digest)
    assert '"inData":"sha256:' in line and "x" * 10 not in line and '"passwd":"***"}}' in line and pin not in line
    # With websockets' own size (75), the cut falls inside the key: the tail goes whole.
    monkeypatch.setattr(Frame, "MAX_LOG_SIZE", 75)
    line = frame_line(request("abcdefgh"))
    assert '{"_method":"cus-sec_SpcSignDataAsPEM","_id":4,"...***\' [' in line and "asswd" not in line
    assert pin not in line
    for cut_at in range(0, 40):  # wherever the cut falls, nothing of the PIN shows
        line = frame_line(request("y" * cut_at))
        assert "4c7e19a2"[-4:] not in line and "PIN-" not in line, line
    assert pin not in json_stream.getvalue()
    assert all(e["request_id"] == "-" for e in _json_lines(json_stream.getvalue()))


def test_registered_values_are_masked_as_is_and_json_escaped():
    redaction_register("pïn-ünïcode")
    assert redact("raw pïn-ünïcode") == "raw ***"
    assert redact(json.dumps({"v": "pïn-ünïcode"})) == '{"v": "***"}'
    redaction_register("abc")  # too short to register: would mask ordinary text
    assert redact("abc") == "abc"


# --- a real platform, LOG_FORMAT=json ----------------------------------------------------------

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CARD_PIN = "PIN-4c7e19a2"  # only the client's pwdstr unlocks the card (no device PIN)
WRONG_PIN = "PIN-0f5b8d63"
LEGACY_KEY = "legacy-log-key-93f1c2"


class JsonLogPlatform(Platform):
    """A Platform whose stderr (where the log handler writes) is kept apart from stdout (the
    command's own banner lines), so that every log line can be checked."""

    def start(self, *, migrate: bool = True) -> Platform:
        from tests.services import _wait_port

        self.stdout_path = self.log_path.with_suffix(".stdout")
        with open(self.log_path, "w") as err, open(self.stdout_path, "w") as out:
            if migrate:
                subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True,
                               stdout=out, stderr=err)
            self.proc = subprocess.Popen([sys.executable, "manage.py", "runplatform", *self.args], cwd=ROOT,
                                         env=self.env, stdout=out, stderr=err)
        _wait_port(self.port, self.proc, "runplatform", timeout=60)
        return self


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_platform_json_log_has_no_pin_or_secret_and_every_line_is_json(tmp_path):
    sim = SimulatorProcess(pin=CARD_PIN, key_dir=str(tmp_path / "keys")).start()
    platform = None
    try:
        only_card_row("log-card")
        access, secret = access_id_create(name="legacy log ERP")
        access_id_set_legacy_key(access_id=access, legacy_key=LEGACY_KEY)
        env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN="",
                           UKEY_DEFAULT_DEVICE="log-card", UKEY_RECONNECT_MAX="1", UKEY_PROBE_INTERVAL="1",
                           UKEY_REQUEST_TIMEOUT="1", LOG_FORMAT="json", LOG_LEVEL="DEBUG")
        platform = JsonLogPlatform(env, tmp_path).start()
        platform.wait_card()

        def get_code(pin: str, text: str):
            status, headers, body = http("POST", platform.base + "/getCode",
                                         body=encrypt(LEGACY_KEY, {"str": text, "pwdstr": pin}).encode(),
                                         headers={"Content-Type": "text/plain"})
            return status, headers["X-Request-ID"], json.loads(body)

        status, ok_id, body = get_code(CARD_PIN, "signed with the client's PIN")
        assert (status, body["code"]) == (200, 200), body
        assert json.loads(decrypt(LEGACY_KEY, body["data"]))["sign"]
        # The card refuses a wrong PIN: a card error, a 500, logged by the gateway and by Django.
        status, failed_id, body = get_code(WRONG_PIN, "refused by the card")
        assert (status, body["code"]) == (500, 500), body
        (event,) = AuditEvent.objects.filter(request_id=failed_id)
        assert event.outcome == "UKEY_ERROR"
        # The card goes away: more gateway lines, outside any request.
        sim.stop()
        poll(lambda: http("GET", platform.base + "/api/v1/health")[0] == 503, 10, "card down")
        poll(lambda: "card log-card: disconnected" in platform.log or "cannot connect" in platform.log, 10,
             "the lost card logged")
    finally:
        if platform is not None:
            platform.stop()
        sim.stop()

    log = platform.log
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) > 5
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(entry, dict) and entry["request_id"] and entry["level"] and "message" in entry, line
        entries.append(entry)
    for value in (CARD_PIN, WRONG_PIN, secret, LEGACY_KEY):
        assert value not in log, "a PIN or secret is in the log"
        assert value.encode().hex() not in log.lower()
    messages = " ".join(e["message"] for e in entries)
    frames = [e["message"] for e in entries
              if e["logger"].startswith("websockets") and "SpcSignDataAsPEM" in e["message"]]
    assert len(frames) >= 4 and all(f.endswith("bytes]") for f in frames)  # the card frames were logged (DEBUG)...
    assert "Custom50006" in messages  # ... and the card's refusal
    # Django's line about the failed request carries that request's id; lines outside a request "-".
    failed_lines = [e for e in entries if e["logger"] == "django.request" and "/getCode" in e["message"]]
    assert [e["request_id"] for e in failed_lines] == [failed_id], failed_lines
    assert all(UUID_RE.match(e["request_id"]) for e in entries if e["logger"] == "django.request")
    assert any(e["request_id"] == "-" for e in entries)
    assert ok_id != failed_id
