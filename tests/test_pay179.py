""""179" payment data against docs/ceb-xml-and-179.md section 2: the published sign
string byte for byte, key order and number text, field errors, the upload form, and the
upload to a real local HTTP server standing in for customs."""

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from core import pay179
from core.pay179 import Pay179Error
from tests.receivers import QuietServer

VECTORS = Path(__file__).resolve().parent / "vectors"  # copies of shared/spec/vectors

# vectors/179-payload.json and vectors/179-sign-string.txt (which has no trailing newline).
PAYLOAD_JSON = (VECTORS / "179-payload.json").read_bytes().decode("utf-8")
SIGN_STRING = (VECTORS / "179-sign-string.txt").read_bytes().decode("utf-8")


def body(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def minimal(**changes) -> dict:
    data = {
        "sessionID": "s-1",
        "payExchangeInfoHead": {"guid": "G"},
        "payExchangeInfoLists": [{"orderNo": "O1"}],
        "serviceTime": 1,
    }
    data.update(changes)
    return data


# --- the sign string --------------------------------------------------------------------


def test_published_vector_byte_for_byte():
    payload = pay179.pay179_parse(PAYLOAD_JSON.encode("utf-8"))
    assert pay179.pay179_sign_string(payload).encode("utf-8") == SIGN_STRING.encode("utf-8")


def test_official_key_order_regardless_of_the_client_order():
    shuffled = json.loads(PAYLOAD_JSON)
    shuffled["payExchangeInfoHead"] = dict(reversed(list(shuffled["payExchangeInfoHead"].items())))
    item = shuffled["payExchangeInfoLists"][0]
    item["goodsInfo"] = [dict(reversed(list(g.items()))) for g in item["goodsInfo"]]
    shuffled["payExchangeInfoLists"][0] = dict(reversed(list(item.items())))
    shuffled = dict(reversed(list(shuffled.items())))
    assert pay179.pay179_sign_string(pay179.pay179_parse(body(shuffled))) == SIGN_STRING


def test_unknown_keys_follow_the_known_ones_in_the_client_order():
    raw = (
        '{"serviceTime":"2","sessionID":"s","payExchangeInfoHead":{"zeta":1,"note":"n","alpha":2,"guid":"g"},'
        '"payExchangeInfoLists":[{"extra2":"x","goodsInfo":[{"sku":"k","itemLink":"l","gname":"g"}],'
        '"orderNo":"o","extra1":"y"}],"upload":true,"device":"card-1"}'
    ).encode()
    sign_string = pay179.pay179_sign_string(pay179.pay179_parse(raw))
    assert sign_string == (
        '"sessionID":"s"||"payExchangeInfoHead":"{"guid":"g","note":"n","zeta":1,"alpha":2}"||'
        '"payExchangeInfoLists":"[{"orderNo":"o","goodsInfo":[{"gname":"g","itemLink":"l","sku":"k"}],'
        '"extra2":"x","extra1":"y"}]"||"serviceTime":"2"'
    )
    assert "upload" not in sign_string and "device" not in sign_string


def test_missing_keys_are_left_out():
    payload = pay179.pay179_parse(body(minimal(payExchangeInfoHead={"payCode": "P", "guid": "G"})))
    assert pay179.pay179_sign_string(payload) == (
        '"sessionID":"s-1"||"payExchangeInfoHead":"{"guid":"G","payCode":"P"}"||'
        '"payExchangeInfoLists":"[{"orderNo":"O1"}]"||"serviceTime":"1"'
    )


@pytest.mark.parametrize("number", ["143.64", "100", "1.50", "1e3", "0.10", "-0", "12345678901234567890123"])
def test_numbers_keep_the_client_text(number):
    raw = (
        '{"sessionID":"s","payExchangeInfoHead":{"totalAmount":' + number + '},'
        '"payExchangeInfoLists":[{"orderNo":"o","amount":' + number + '}],"serviceTime":1544519952469}'
    ).encode()
    payload = pay179.pay179_parse(raw)
    sign_string = pay179.pay179_sign_string(payload)
    assert '"totalAmount":' + number + "}" in sign_string
    assert '"amount":' + number + "}" in sign_string
    form = pay179.pay179_upload_form(payload, cert_no="c", sign_value="v")
    assert '"totalAmount":' + number + "}" in form


def test_chinese_and_slashes_are_not_escaped_but_json_specials_are():
    raw = '{"sessionID":"会话","payExchangeInfoHead":{"note":"备注\\u6d4b a/b \\"q\\" \\\\"},' \
          '"payExchangeInfoLists":[{"orderNo":"订单"}],"serviceTime":"1"}'
    sign_string = pay179.pay179_sign_string(pay179.pay179_parse(raw.encode()))
    assert sign_string.startswith('"sessionID":"会话"||')
    assert '"note":"备注测 a/b \\"q\\" \\\\"' in sign_string
    assert '"orderNo":"订单"' in sign_string and "\\u" not in sign_string


def test_service_time_as_a_digit_string_keeps_its_form():
    payload = pay179.pay179_parse(body(minimal(serviceTime="1544519952469")))
    assert pay179.pay179_sign_string(payload).endswith('||"serviceTime":"1544519952469"')
    assert '"serviceTime":"1544519952469",' in pay179.pay179_upload_form(payload, cert_no="c", sign_value="v")
    number = pay179.pay179_parse(body(minimal(serviceTime=1544519952469)))
    assert '"serviceTime":1544519952469,' in pay179.pay179_upload_form(number, cert_no="c", sign_value="v")


def test_other_top_level_keys_are_kept_aside():
    payload = pay179.pay179_parse(body(minimal(upload=True, device="card-1")))
    assert payload.extra == {"upload": True, "device": "card-1"}


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,fields",
    [
        ({}, {"sessionID", "payExchangeInfoHead", "payExchangeInfoLists", "serviceTime"}),
        (minimal(sessionID=5), {"sessionID"}),
        (minimal(sessionID=""), {"sessionID"}),
        (minimal(payExchangeInfoHead="{}"), {"payExchangeInfoHead"}),
        (minimal(payExchangeInfoLists=[]), {"payExchangeInfoLists"}),
        (minimal(payExchangeInfoLists={"orderNo": "o"}), {"payExchangeInfoLists"}),
        (minimal(payExchangeInfoLists=[{"orderNo": "o"}, "x"]), {"payExchangeInfoLists[1]"}),
        (minimal(serviceTime=1.5), {"serviceTime"}),
        (minimal(serviceTime="soon"), {"serviceTime"}),
        (minimal(serviceTime=None), {"serviceTime"}),
    ],
    ids=["empty", "session-number", "session-empty", "head-string", "lists-empty", "lists-object",
         "lists-item", "time-float", "time-text", "time-null"],
)
def test_missing_or_mistyped_fields(data, fields):
    with pytest.raises(Pay179Error) as caught:
        pay179.pay179_parse(body(data))
    assert set(caught.value.field_errors) == fields
    assert all(caught.value.field_errors[name] for name in fields)
    assert caught.value.message


@pytest.mark.parametrize(
    "raw,words",
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'{"sessionID": ', "not valid JSON: line 1"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"sessionID":"a","sessionID":"b"}', "twice"),
        (b'{"serviceTime": NaN}', "not valid JSON"),
    ],
)
def test_body_that_is_not_a_json_object(raw, words):
    with pytest.raises(Pay179Error) as caught:
        pay179.pay179_parse(raw)
    assert words in caught.value.message and caught.value.field_errors == {}


# --- the upload -------------------------------------------------------------------------


def test_upload_form_is_the_same_serialisation_plus_cert_and_signature():
    payload = pay179.pay179_parse(PAYLOAD_JSON.encode("utf-8"))
    form = pay179.pay179_upload_form(payload, cert_no="013e20e7", sign_value="c2ln+/=")
    parsed = json.loads(form)
    assert list(parsed) == [
        "sessionID", "payExchangeInfoHead", "payExchangeInfoLists", "serviceTime", "certNo", "signValue",
    ]  # fmt: skip
    assert parsed["payExchangeInfoHead"] == json.loads(PAYLOAD_JSON)["payExchangeInfoHead"]
    assert parsed["serviceTime"] == 1544519952469
    assert (parsed["certNo"], parsed["signValue"]) == ("013e20e7", "c2ln+/=")
    head = SIGN_STRING.split('"payExchangeInfoHead":"', 1)[1].split('"||', 1)[0]
    lists = SIGN_STRING.split('"payExchangeInfoLists":"', 1)[1].split('"||', 1)[0]
    assert form == (
        '{"sessionID":"ad2254-8hewyf32-55616249","payExchangeInfoHead":' + head + ',"payExchangeInfoLists":'
        + lists + ',"serviceTime":1544519952469,"certNo":"013e20e7","signValue":"c2ln+/="}'
    )


class FakeCustoms:
    """A local HTTP server answering the upload as configured, recording what it received."""

    def __init__(self, *, status=200, reply=b"", content_type="application/json;charset=UTF-8", delay=0.0):
        self.received: list[tuple[str, str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((self.path, self.headers.get("Content-Type", ""), data))
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ceb2grab/grab/realTimeDataUpload"
        # A short poll interval: shutdown() waits up to one interval.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def form(self) -> dict[str, list[str]]:
        assert len(self.received) == 1
        path, content_type, data = self.received[0]
        assert path == "/ceb2grab/grab/realTimeDataUpload"
        assert content_type.startswith("application/x-www-form-urlencoded")
        return urllib.parse.parse_qs(data.decode("ascii"), keep_blank_values=True, strict_parsing=True)


@pytest.fixture
def customs():
    started = []

    def start(**kwargs) -> FakeCustoms:
        server = FakeCustoms(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def form_value() -> str:
    payload = pay179.pay179_parse(PAYLOAD_JSON.encode("utf-8"))
    return pay179.pay179_upload_form(payload, cert_no="013e20e7", sign_value="c2lnbmF0dXJl")


async def test_upload_success(customs, form_value):
    server = customs(reply=b'{"code":"10000","message":"","total":0,"data":null,"serviceTime":1533271915544}')
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=5)
    assert server.form() == {"payExInfoStr": [form_value]}
    assert result.ok and result.code == "10000" and result.http_status == 200 and result.error == ""
    assert result.message == "accepted by customs"
    assert result.reply["serviceTime"] == 1533271915544 and result.url == server.url
    assert result.duration_ms >= 0


async def test_upload_certificate_not_registered(customs, form_value):
    server = customs(reply='{"code":"20004","message":"证书未备案"}'.encode())
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=5)
    assert server.form() == {"payExInfoStr": [form_value]}
    assert not result.ok and result.code == "20004" and result.error == ""
    assert result.message == "证书未备案"


@pytest.mark.parametrize("code,words", [("20004", "not registered"), ("20000", "missing")])
async def test_known_codes_are_explained_when_customs_says_nothing(customs, form_value, code, words):
    server = customs(reply=('{"code":"' + code + '"}').encode())
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=5)
    assert not result.ok and result.code == code and words in result.message


async def test_upload_reply_not_json(customs, form_value):
    server = customs(reply=b"<html>maintenance</html>", content_type="text/html")
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=5)
    assert server.form() == {"payExInfoStr": [form_value]}
    assert not result.ok and result.http_status == 200 and result.code == ""
    assert result.error.startswith("reply is not JSON") and result.reply == "<html>maintenance</html>"


async def test_upload_reply_text_is_cut(customs, form_value):
    server = customs(reply=b"x" * 5000, content_type="text/plain")
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=5)
    assert result.reply == "x" * 2000


async def test_upload_http_500(customs, form_value):
    server = customs(status=500, reply=b"Internal Server Error", content_type="text/plain")
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=5)
    assert server.form() == {"payExInfoStr": [form_value]}
    assert not result.ok and result.http_status == 500
    assert result.error == "HTTP 500 Internal Server Error" and "HTTP 500" in result.message


async def test_upload_connection_refused(form_value):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/upload"
    result = await pay179.pay179_upload(url=url, pay_ex_info_str=form_value, timeout=5)
    assert not result.ok and result.http_status is None and result.code == ""
    assert "connection refused" in result.error and result.url == url


async def test_upload_timeout(customs, form_value):
    server = customs(reply=b'{"code":"10000"}', delay=2.0)
    result = await pay179.pay179_upload(url=server.url, pay_ex_info_str=form_value, timeout=0.3)
    assert server.form() == {"payExInfoStr": [form_value]}
    assert not result.ok and result.http_status is None
    assert result.error.startswith("timed out after 0.3 s")
    assert result.duration_ms < 2000


async def test_upload_bad_url(form_value):
    result = await pay179.pay179_upload(url="ftp://example.invalid/x", pay_ex_info_str=form_value, timeout=1)
    assert not result.ok and "not a usable http(s) URL" in result.error
