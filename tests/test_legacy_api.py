"""The legacy Flask sign-server interface (docs/sign-server-compat.md) through a real
ASGI server: the spec's test vector, caller identification by legacy AES key, every error
row of the spec from a real request, the xml-files flow on the XML store, authorisation and
one audit event per call like native requests, /health reporting the card's real state,
and the PIN sent in `pwdstr` absent from logs, database and Redis traffic.

Two platforms (each with its own simulator):
- "pin": the default card has its PIN configured (UKEY_PIN), so `pwdstr` is ignored;
- "nopin": UKEY_URL without UKEY_PIN, so the card PIN comes from the client's `pwdstr`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest
from Crypto.Cipher import AES
from Crypto.Util.Padding import pad

from accessids.models import AccessId
from accessids.services import AccessIdError, access_id_create, access_id_set_enabled, access_id_set_legacy_key
from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from core.legacy_cipher import LegacyDecryptError, legacy_decrypt, legacy_encrypt, legacy_key_fold
from signing.models import CardDevice
from tests.conftest import SimulatorProcess, database_text, test_database_url
from tests.live import ROOT, CardPlatforms, Platform, http, only_card_row, poll, services_env
from tests.test_api import certificate, events
from xmlstore.models import XmlDocument, XmlDocumentVersion

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

VECTOR_KEY = "1234567887654321"
VECTOR_PLAINTEXT = '{"str": "test_data_string", "pwdstr": "00000000"}'
VECTOR_CIPHERTEXT = (
    "0D17722A876D74DDA0831417E57324BDE475E70F16DE01E943A6D301FC93C02BA4FFCBEAC915282410E7887D1F1C37289FEB5675CFB85A86A830FFE450D17B1A"
)
NOPIN_CARD_PIN = "PIN-5e8d2b64"  # the "nopin" platform's card: only a client's pwdstr unlocks it
IGNORED_PIN = "PIN-7f3a9c21"  # sent to the "pin" platform, whose configured PIN is used instead
HEX_RE = re.compile(r"[0-9A-F]+")


@pytest.fixture(scope="module")
def legacy_platforms(django_db_setup, django_db_blocker, tmp_path_factory):
    def start(kind: str) -> tuple[SimulatorProcess, Platform]:
        tmp = tmp_path_factory.mktemp(f"legacy-{kind}")
        slug = f"legacy-{kind}"
        sim_pin = NOPIN_CARD_PIN if kind == "nopin" else None
        sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys"),
                               **({"pin": sim_pin} if sim_pin else {})).start()
        with django_db_blocker.unblock():
            only_card_row(slug)
            env = services_env(
                test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN="" if kind == "nopin" else sim.pin,
                UKEY_DEFAULT_DEVICE=slug, UKEY_RECONNECT_MAX="1", UKEY_PROBE_INTERVAL="2",
                # The PIN-less card's calls cross Redis (the channel layer) so that the test of the
                # client's PIN can watch them; the other platform uses the card link (Unix socket).
                **({"UKEY_LINK": "0"} if kind == "nopin" else {}),
            )
            env.pop("API_MAX_BODY_BYTES", None)
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start, db_blocker=django_db_blocker)
    yield platforms
    platforms.stop()


@pytest.fixture
def pin_platform(legacy_platforms):
    return legacy_platforms("pin")


@pytest.fixture
def nopin_platform(legacy_platforms):
    return legacy_platforms("nopin")


# --- the cipher, written here from the spec (not the code under test) ---------------------------


def fold(key: str) -> bytes:
    folded = bytearray(16)
    for index, byte in enumerate(key.encode("utf-8")):
        folded[index % 16] ^= byte
    return bytes(folded)


def encrypt(key: str, plaintext: str | object) -> str:
    text = plaintext if isinstance(plaintext, str) else json.dumps(plaintext, ensure_ascii=False)
    return AES.new(fold(key), AES.MODE_ECB).encrypt(pad(text.encode("utf-8"), 16)).hex().upper()


def decrypt(key: str, hex_text: str) -> str:
    return legacy_decrypt(legacy_key_fold(key), hex_text)


def test_the_cipher_matches_the_spec_vector():
    assert encrypt(VECTOR_KEY, VECTOR_PLAINTEXT) == VECTOR_CIPHERTEXT
    assert legacy_encrypt(legacy_key_fold(VECTOR_KEY), VECTOR_PLAINTEXT) == VECTOR_CIPHERTEXT
    assert decrypt(VECTOR_KEY, VECTOR_CIPHERTEXT.lower()) == VECTOR_PLAINTEXT
    assert legacy_key_fold("abc") == fold("abc") and legacy_key_fold("x" * 40) == fold("x" * 40)


# --- helpers -----------------------------------------------------------------------------------


def post(platform, path: str, body: str | bytes, content_type: str | None = "text/plain"):
    raw = body.encode("utf-8") if isinstance(body, str) else body
    headers = {"Content-Type": content_type} if content_type else {}
    status, response_headers, content = http("POST", platform.base + path, body=raw, headers=headers)
    return status, response_headers, json.loads(content), content.decode("utf-8")


def send(platform, path: str, key: str, payload) -> tuple:
    return post(platform, path, encrypt(key, payload))


def assert_legacy(result, status: int, code: int, msg: str | None = None):
    got_status, headers, body, _raw = result
    assert (got_status, body.get("code")) == (status, code), body
    assert set(body) >= {"code", "msg", "data"} and body["msg"]
    if msg is not None:
        assert body["msg"] == msg, body
    if status >= 400:
        assert body["data"] is False, body
    return body


def audited(result, *, outcome: str, access: AccessId | None, endpoint: str) -> AuditEvent:
    """Exactly one audit event for this call, with the right outcome and caller."""
    status, headers, _body, _raw = result
    (event,) = events(request_id=headers["X-Request-ID"])
    assert (event.source, event.event_type, event.endpoint) == ("legacy", AuditEvent.API_REQUEST, endpoint)
    assert (event.outcome, event.http_status) == (outcome, status), (event.outcome, event.message)
    assert event.access_id_id == (access.pk if access else None)
    assert event.access_key == (access.key if access else "")
    return event


def with_legacy_key(name: str, key: str, **fields) -> tuple[AccessId, str]:
    access, secret = access_id_create(name=name, **fields)
    access_id_set_legacy_key(access_id=access, legacy_key=key)
    return access, secret


def card_certificate(platform, access, secret):
    return certificate_load(certificate(platform, access, secret)["certificate_pem"])


def manage(platform, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=platform.env, capture_output=True,
                          text=True, timeout=120)


# --- compat endpoints stay off until a legacy key exists -------------------------------------------


def test_compat_endpoints_are_off_without_any_legacy_key(pin_platform):
    _, platform = pin_platform
    access_id_create(name="native only")
    assert not AccessId.objects.exclude(legacy_aes_key_encrypted="").exists()
    for path in ("/getCode", "/xml-files/add", "/xml-files/list", "/xml-files/delete"):
        result = post(platform, path, VECTOR_CIPHERTEXT)
        assert_legacy(result, 404, 404)
        audited(result, outcome="NOT_FOUND", access=None, endpoint=f"POST {path}")
    # The service description and the health answer do not need a key.
    status, _, content = http("GET", platform.base + "/")
    assert status == 200 and json.loads(content)["endpoints"]


# --- POST /getCode: the spec's vector -----------------------------------------------------------------


def test_get_code_spec_vector(pin_platform):
    _, platform = pin_platform
    access, secret = with_legacy_key("legacy ERP", VECTOR_KEY)
    cert_info = certificate(platform, access, secret)
    cert = certificate_load(cert_info["certificate_pem"])

    bodies = {
        "as published, text/plain": (VECTOR_CIPHERTEXT, "text/plain"),
        "lower-case hex": (VECTOR_CIPHERTEXT.lower(), "text/plain"),
        "surrounding whitespace and newline": ("  \r\n" + VECTOR_CIPHERTEXT + "\n", "text/plain"),
        "application/json content type": (VECTOR_CIPHERTEXT, "application/json"),
        "form content type": (VECTOR_CIPHERTEXT, "application/x-www-form-urlencoded"),
        "no content type": (VECTOR_CIPHERTEXT, None),
    }
    for name, (body, content_type) in bodies.items():
        result = post(platform, "/getCode", body, content_type)
        status, headers, answer, raw = result
        assert status == 200, (name, answer)
        assert set(answer) == {"code", "msg", "data"} and (answer["code"], answer["msg"]) == (200, "成功"), name
        assert "成功" in raw  # Chinese as is, not \u escaped
        assert HEX_RE.fullmatch(answer["data"]), (name, answer["data"])  # upper-case hex
        text = decrypt(VECTOR_KEY, answer["data"])
        data = json.loads(text)
        assert list(data) == ["sign", "certNo"], text
        # json.dumps(..., ensure_ascii=False) with the default separators ", " and ": ".
        assert text == json.dumps(data, ensure_ascii=False)
        assert text == f'{{"sign": "{data["sign"]}", "certNo": "{data["certNo"]}"}}'
        assert data["certNo"] == cert_info["cert_no"]
        # The vector's pwdstr "00000000" is not this card's PIN: the configured PIN signs.
        assert signature_verify(cert, b"test_data_string", data["sign"]), name
        event = audited(result, outcome="OK", access=access, endpoint="POST /getCode")
        assert event.data_sha256 == hashlib.sha256(b"test_data_string").hexdigest()
        assert event.cert_no == data["certNo"] and event.device == "legacy-pin"
        assert event.client_ip == "127.0.0.1" and event.duration_ms > 0


# --- the key identifies the caller --------------------------------------------------------------------


def test_each_legacy_key_identifies_its_access_id(pin_platform):
    _, platform = pin_platform
    first, _ = with_legacy_key("shop A", "shop-A-key-0001")
    # The second one through the operator command, as an administrator would.
    made = manage(platform, "accessid", "create", "--name", "shop B", "--legacy-aes-key", "shop B 密钥 2", "--json")
    assert made.returncode == 0, made.stderr
    second = AccessId.objects.get(key=json.loads(made.stdout)["access_id"])
    assert second.has_legacy_key and "shop B 密钥 2" not in database_text()

    payload = {"str": "order 42", "pwdstr": ""}
    for access, key in ((first, "shop-A-key-0001"), (second, "shop B 密钥 2"), (first, "shop-A-key-0001")):
        result = send(platform, "/getCode", key, payload)
        answer = assert_legacy(result, 200, 200, "成功")
        assert json.loads(decrypt(key, answer["data"]))["sign"]
        audited(result, outcome="OK", access=access, endpoint="POST /getCode")

    # A key is never given twice: neither the same text nor one that folds to the same AES key.
    third, _ = access_id_create(name="shop C")
    for duplicate in ("shop-A-key-0001", "shop-A-key-0001" + "zz" * 8 + "zz" * 8):
        assert fold(duplicate) == fold("shop-A-key-0001")
        with pytest.raises(AccessIdError):
            access_id_set_legacy_key(access_id=third, legacy_key=duplicate)
    third.refresh_from_db()
    assert not third.has_legacy_key
    refused = manage(platform, "accessid", "create", "--name", "shop D", "--legacy-aes-key", "shop B 密钥 2")
    assert refused.returncode != 0 and "already belongs" in refused.stderr, refused
    assert not AccessId.objects.filter(name="shop D").exists()

    # Removing a key stops its clients (the other key keeps the endpoints on).
    removed = manage(platform, "accessid", "legacy-key", second.key, "--remove")
    assert removed.returncode == 0, removed.stderr
    result = send(platform, "/getCode", "shop B 密钥 2", payload)
    assert_legacy(result, 400, 400)
    audited(result, outcome="INVALID_REQUEST", access=None, endpoint="POST /getCode")


# --- every error row of the spec ------------------------------------------------------------------------


def test_get_code_request_errors(pin_platform):
    _, platform = pin_platform
    access, _ = with_legacy_key("legacy ERP", VECTOR_KEY)
    wrong_key_body = encrypt("another-key-9876", VECTOR_PLAINTEXT)
    with pytest.raises(LegacyDecryptError):  # so the case below is what it claims to be
        decrypt(VECTOR_KEY, wrong_key_body)

    anonymous = {
        "not hex": "this is not hex!",
        "odd-length hex": VECTOR_CIPHERTEXT[:-1],
        "hex, not whole blocks": VECTOR_CIPHERTEXT[:-2],
        "empty body": "",
        "hex under another key": wrong_key_body,
    }
    for body in anonymous.values():
        result = post(platform, "/getCode", body)
        assert_legacy(result, 400, 400)
        audited(result, outcome="INVALID_REQUEST", access=None, endpoint="POST /getCode")

    # These decrypt under the caller's key: refused, and attributed to it.
    attributed = {
        "a JSON list": ["test_data_string", "00000000"],
        "plain text": "test_data_string 00000000",
        "a JSON string": '"test_data_string"',
        "missing str": {"pwdstr": "00000000"},
        "missing pwdstr": {"str": "test_data_string"},
        "str is a number": {"str": 12345, "pwdstr": "00000000"},
        "str is null": {"str": None, "pwdstr": "00000000"},
        "pwdstr is a number": {"str": "x", "pwdstr": 0},
    }
    for name, payload in attributed.items():
        result = send(platform, "/getCode", VECTOR_KEY, payload)
        assert_legacy(result, 400, 400)
        event = audited(result, outcome="INVALID_REQUEST", access=access, endpoint="POST /getCode")
        assert event.message, name
    # Over the body limit (10 MiB by default), and the wrong method.
    result = post(platform, "/getCode", "A" * (10 * 1024 * 1024 + 2))
    assert_legacy(result, 413, 413)
    audited(result, outcome="PAYLOAD_TOO_LARGE", access=None, endpoint="POST /getCode")
    status, headers, content = http("GET", platform.base + "/getCode")
    assert status == 405 and json.loads(content)["data"] is False, content
    assert len(events(event_type=AuditEvent.API_REQUEST)) == len(anonymous) + len(attributed) + 2


def test_card_failure_and_the_pwdstr_fallback(nopin_platform, pin_platform):
    _, nopin = nopin_platform
    access, secret = with_legacy_key("legacy ERP", VECTOR_KEY)

    # No PIN configured: the client's pwdstr is the PIN; a wrong one is refused by the card.
    result = send(nopin, "/getCode", VECTOR_KEY, {"str": "declaration 1", "pwdstr": "00000000"})
    body = assert_legacy(result, 500, 500)
    assert "口令验证失败" in body["msg"] and "50006" in body["msg"], body
    event = audited(result, outcome="UKEY_ERROR", access=access, endpoint="POST /getCode")
    assert event.data_sha256 == hashlib.sha256(b"declaration 1").hexdigest()

    result = send(nopin, "/getCode", VECTOR_KEY, {"str": "declaration 1", "pwdstr": NOPIN_CARD_PIN})
    answer = assert_legacy(result, 200, 200, "成功")
    data = json.loads(decrypt(VECTOR_KEY, answer["data"]))
    assert signature_verify(card_certificate(nopin, access, secret), b"declaration 1", data["sign"])
    audited(result, outcome="OK", access=access, endpoint="POST /getCode")

    # A PIN configured on the device: a wrong pwdstr is ignored.
    _, pin = pin_platform
    result = send(pin, "/getCode", VECTOR_KEY, {"str": "declaration 2", "pwdstr": "wrong"})
    answer = assert_legacy(result, 200, 200, "成功")
    data = json.loads(decrypt(VECTOR_KEY, answer["data"]))
    assert signature_verify(card_certificate(pin, access, secret), b"declaration 2", data["sign"])


# --- /xml-files ---------------------------------------------------------------------------------------------

X1 = '<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb"><ceb:note>订单 SO-1 "引号"</ceb:note></ceb:CEB311Message>'
X1B = X1.replace("SO-1", "SO-1-B")
X2 = "<a>first</a>"
X3 = "<Z>upper</Z>"
X4 = "<top>level</top>"


def test_xml_files_flow(pin_platform):
    _, platform = pin_platform
    access, _ = with_legacy_key("legacy ERP", VECTOR_KEY)
    key = VECTOR_KEY

    for payload in ({"filename": "订单-001", "xml": X1, "directory": "in"},
                    {"filename": "a-first.xml", "xml": X2, "directory": "in"},
                    {"filename": "Z-upper", "xml": X3, "directory": "in"},
                    {"filename": "elsewhere", "xml": X4}):
        result = send(platform, "/xml-files/add", key, payload)
        body = assert_legacy(result, 200, 200, "新增成功")
        assert body == {"code": 200, "msg": "新增成功", "data": True}
        event = audited(result, outcome="OK", access=access, endpoint="POST /xml-files/add")
        assert event.data_sha256 == hashlib.sha256(payload["xml"].encode()).hexdigest()
    names = sorted(XmlDocument.objects.filter(access_id=access).values_list("directory", "filename"))
    assert names == [("", "elsewhere.xml"), ("in", "Z-upper.xml"), ("in", "a-first.xml"), ("in", "订单-001.xml")]
    assert set(XmlDocument.objects.values_list("source", flat=True)) == {"legacy"}

    def listing(payload) -> str:
        result = send(platform, "/xml-files/list", key, payload)
        answer = assert_legacy(result, 200, 200, "查询成功")
        assert HEX_RE.fullmatch(answer["data"])
        audited(result, outcome="OK", access=access, endpoint="POST /xml-files/list")
        return decrypt(key, answer["data"])

    text = listing({"directory": "in"})
    expected = [{"filename": "Z-upper.xml", "xml": X3}, {"filename": "a-first.xml", "xml": X2},
                {"filename": "订单-001.xml", "xml": X1}]
    assert json.loads(text) == expected  # sorted by filename
    assert text == json.dumps(expected, ensure_ascii=False)  # default separators, Chinese not escaped
    assert '"filename": "订单-001.xml", "xml": ' in text and "\\u" not in text
    assert json.loads(listing({})) == [{"filename": "elsewhere.xml", "xml": X4}]

    # The same name again: replaced, and the earlier content kept as version 1.
    result = send(platform, "/xml-files/add", key, {"filename": "订单-001.xml", "xml": X1B, "directory": "in"})
    assert_legacy(result, 200, 200, "新增成功")
    document = XmlDocument.objects.get(access_id=access, directory="in", filename="订单-001.xml")
    assert document.content == X1B and document.version == 2
    (version,) = XmlDocumentVersion.objects.filter(document=document)
    assert (version.version, version.content) == (1, X1)
    assert json.loads(listing({"directory": "in"}))[2] == {"filename": "订单-001.xml", "xml": X1B}

    # Delete: soft, gone from the list.
    result = send(platform, "/xml-files/delete", key, {"filename": "订单-001", "directory": "in"})
    assert assert_legacy(result, 200, 200, "删除成功")["data"] is True
    audited(result, outcome="OK", access=access, endpoint="POST /xml-files/delete")
    document.refresh_from_db()
    assert document.deleted_at is not None and document.content == X1B
    assert [f["filename"] for f in json.loads(listing({"directory": "in"}))] == ["Z-upper.xml", "a-first.xml"]
    # A new file of the same name is a new document.
    assert_legacy(send(platform, "/xml-files/add", key, {"filename": "订单-001", "xml": X1, "directory": "in"}),
                  200, 200)
    assert XmlDocument.objects.filter(directory="in", filename="订单-001.xml").count() == 2


def test_xml_files_errors_and_isolation(pin_platform):
    _, platform = pin_platform
    owner, _ = with_legacy_key("owner", VECTOR_KEY)
    other, _ = with_legacy_key("other", "other-legacy-key")
    assert_legacy(send(platform, "/xml-files/add", VECTOR_KEY, {"filename": "mine", "xml": X2, "directory": "in"}),
                  200, 200)
    stored = XmlDocument.objects.count()

    refused_add = {
        "missing filename": {"xml": X2},
        "missing xml": {"filename": "x"},
        "filename not a string": {"filename": 5, "xml": X2},
        "not well-formed": {"filename": "x", "xml": "<a>"},
        "DOCTYPE": {"filename": "x", "xml": '<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;</a>'},
        "directory ../": {"filename": "x", "xml": X2, "directory": "../etc"},
        "directory a/../../b": {"filename": "x", "xml": X2, "directory": "a/../../b"},
        "absolute directory with ..": {"filename": "x", "xml": X2, "directory": "/data/../etc"},
        "drive letter": {"filename": "x", "xml": X2, "directory": "C:/data/xml"},
        "drive letter, backslashes": {"filename": "x", "xml": X2, "directory": "D:\\xml\\in"},
        "backslash": {"filename": "x", "xml": X2, "directory": "\\\\server\\share"},
        "empty folder name": {"filename": "x", "xml": X2, "directory": "/a//b"},
        "filename with ../": {"filename": "../../x", "xml": X2},
        "windows path": {"filename": "C:\\x", "xml": X2},
    }
    for name, payload in refused_add.items():
        result = send(platform, "/xml-files/add", VECTOR_KEY, payload)
        body = assert_legacy(result, 400, 500)
        assert "root:x:0:0" not in body["msg"], name
        audited(result, outcome="INVALID_REQUEST", access=owner, endpoint="POST /xml-files/add")
    for path in ("/xml-files/list", "/xml-files/delete"):
        result = send(platform, path, VECTOR_KEY, {"filename": "mine", "directory": "../in"})
        assert_legacy(result, 400, 500)
        audited(result, outcome="INVALID_REQUEST", access=owner, endpoint=f"POST {path}")
    result = send(platform, "/xml-files/delete", VECTOR_KEY, {"directory": "in"})
    assert_legacy(result, 400, 500)
    assert XmlDocument.objects.count() == stored
    assert "root:x:0:0" not in database_text()

    # An absolute or nested directory (the sign-server README's own "/path/optional") is a
    # folder name in the store: leading slashes dropped, nothing on disk.
    for sent, stored_as in (("/path/optional", "path/optional"), ("/data/xml/in/", "data/xml/in"),
                            ("//a/b", "a/b")):
        result = send(platform, "/xml-files/add", VECTOR_KEY, {"filename": "abs", "xml": X2, "directory": sent})
        assert_legacy(result, 200, 200)
        assert XmlDocument.objects.filter(access_id=owner, directory=stored_as, filename="abs.xml",
                                          deleted_at=None).exists(), sent
        listed = send(platform, "/xml-files/list", VECTOR_KEY, {"directory": sent})
        assert [f["filename"] for f in json.loads(decrypt(VECTOR_KEY, assert_legacy(listed, 200, 200)["data"]))] \
            == ["abs.xml"]
        assert_legacy(send(platform, "/xml-files/delete", VECTOR_KEY, {"filename": "abs", "directory": sent}),
                      200, 200)
    assert not os.path.exists("/path/optional") and not os.path.exists(ROOT / "path")
    stored = XmlDocument.objects.count()

    # Deleting a file that does not exist.
    for name in ("nope", "nope.xml"):
        result = send(platform, "/xml-files/delete", VECTOR_KEY, {"filename": name, "directory": "in"})
        assert_legacy(result, 404, 500, "文件不存在: nope.xml")
        audited(result, outcome="NOT_FOUND", access=owner, endpoint="POST /xml-files/delete")

    # Another access ID sees none of it and cannot delete it.
    result = send(platform, "/xml-files/list", "other-legacy-key", {"directory": "in"})
    assert json.loads(decrypt("other-legacy-key", assert_legacy(result, 200, 200)["data"])) == []
    audited(result, outcome="OK", access=other, endpoint="POST /xml-files/list")
    result = send(platform, "/xml-files/delete", "other-legacy-key", {"filename": "mine", "directory": "in"})
    assert_legacy(result, 404, 500, "文件不存在: mine.xml")
    assert XmlDocument.objects.get(filename="mine.xml").deleted_at is None
    result = send(platform, "/xml-files/list", VECTOR_KEY, {"directory": "in"})
    assert [f["filename"] for f in json.loads(decrypt(VECTOR_KEY, assert_legacy(result, 200, 200)["data"]))] == [
        "mine.xml"]


# --- authorisation like native calls -----------------------------------------------------------------------


def test_legacy_calls_are_authorised_like_native_ones(pin_platform):
    _, platform = pin_platform
    payload = {"str": "x", "pwdstr": ""}

    disabled, _ = with_legacy_key("disabled", "key-disabled", enabled=False)
    result = send(platform, "/getCode", "key-disabled", payload)
    assert_legacy(result, 403, 403)
    audited(result, outcome="ACCESS_ID_DISABLED", access=disabled, endpoint="POST /getCode")

    # Disabled after use (its cached entry must not keep it working).
    active, _ = with_legacy_key("active", "key-active")
    assert_legacy(send(platform, "/getCode", "key-active", payload), 200, 200)
    access_id_set_enabled(access_id=active, enabled=False)
    result = send(platform, "/getCode", "key-active", payload)
    assert_legacy(result, 403, 403)
    audited(result, outcome="ACCESS_ID_DISABLED", access=active, endpoint="POST /getCode")

    outside, _ = with_legacy_key("branch", "key-branch", allowed_networks=["10.0.0.0/8"])
    result = send(platform, "/getCode", "key-branch", payload)
    assert_legacy(result, 403, 403)
    audited(result, outcome="IP_NOT_ALLOWED", access=outside, endpoint="POST /getCode")

    signer, _ = with_legacy_key("signer", "key-signer", scopes=["sign"])
    assert_legacy(send(platform, "/getCode", "key-signer", payload), 200, 200)
    for path, body in (("/xml-files/add", {"filename": "a", "xml": X2}), ("/xml-files/list", {}),
                       ("/xml-files/delete", {"filename": "a"})):
        result = send(platform, path, "key-signer", body)
        assert_legacy(result, 403, 403)
        audited(result, outcome="PERMISSION_DENIED", access=signer, endpoint=f"POST {path}")
    assert not XmlDocument.objects.exists()
    store_only, _ = with_legacy_key("store", "key-store", scopes=["xml_read", "xml_write"])
    result = send(platform, "/getCode", "key-store", payload)
    assert_legacy(result, 403, 403)
    audited(result, outcome="PERMISSION_DENIED", access=store_only, endpoint="POST /getCode")

    limited, _ = with_legacy_key("limited", "key-limited", rate_limit_per_minute=2)
    for _attempt in range(2):
        window = int(time.time() // 60)
        results = [send(platform, "/getCode", "key-limited", payload) for _ in range(3)]
        if int(time.time() // 60) == window:
            break
    assert [r[0] for r in results] == [200, 200, 429], [r[2] for r in results]
    assert_legacy(results[2], 429, 429)
    assert 1 <= int(results[2][1]["Retry-After"]) <= 60
    audited(results[2], outcome="RATE_LIMITED", access=limited, endpoint="POST /getCode")
    for r in results[:2]:
        audited(r, outcome="OK", access=limited, endpoint="POST /getCode")


# --- GET /health and GET / ---------------------------------------------------------------------------------------


def legacy_health(platform):
    status, _, content = http("GET", platform.base + "/health")
    return status, json.loads(content)


def test_health_reports_the_card_state_and_index_lists_the_endpoints(nopin_platform):
    sim, platform = nopin_platform
    # The card rows are per test (the database is emptied after each); put back this platform's.
    CardDevice.objects.exclude(slug="legacy-nopin").delete()
    CardDevice.objects.get_or_create(slug="legacy-nopin", defaults={"url": sim.url})

    status, body = poll(lambda: (r := legacy_health(platform))[0] == 200 and r, 30, "healthy")
    assert body == {"code": 200, "msg": "服务运行正常", "data": True, "sign_status": "healthy"}
    _, _, raw = http("GET", platform.base + "/health")
    assert "服务运行正常".encode() in raw

    sim.stop()
    try:
        status, body = poll(lambda: (r := legacy_health(platform))[0] == 503 and r, 30, "the gateway noticing")
        assert body["sign_status"] == "unhealthy" and body["data"] is False and body["code"] == 503, body
    finally:
        sim.start()
    poll(lambda: legacy_health(platform)[0] == 200, 30, "card reconnected")
    # The platform writes the reconnect's card event in the background; let it land before the
    # test's database is emptied (a TRUNCATE racing that insert deadlocks on PostgreSQL).
    poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.CARD_RECONNECTED, device="legacy-nopin").exists(),
         15, "the reconnect recorded")

    status, _, content = http("GET", platform.base + "/")
    index = json.loads(content)
    assert status == 200 and index["status"] == "running" and index["service"] and index["version"]
    paths = {(e["method"], e["path"]) for e in index["endpoints"]}
    assert {("POST", "/getCode"), ("POST", "/xml-files/add"), ("POST", "/xml-files/list"),
            ("POST", "/xml-files/delete"), ("GET", "/health")} <= paths


# --- the PIN in pwdstr goes nowhere -------------------------------------------------------------------------------


def test_pwdstr_pin_is_never_logged_stored_or_sent_in_clear(pin_platform, nopin_platform, tmp_path):
    _, pin = pin_platform
    _, nopin = nopin_platform
    access, _ = with_legacy_key("legacy ERP", VECTOR_KEY)
    port = urllib.parse.urlsplit(os.environ["REDIS_URL"]).port
    monitor_log = tmp_path / "monitor.txt"
    markers = [f"monitor-marker-{uuid.uuid4().hex}" for _ in range(2)]
    with open(monitor_log, "wb") as out:
        monitor = subprocess.Popen(["redis-cli", "-p", str(port), "MONITOR"], stdout=out, stderr=subprocess.STDOUT)
        try:
            poll(lambda: monitor_log.read_bytes().startswith(b"OK"), 10, "redis-cli MONITOR")
            # Ignored (device PIN configured) ...
            first = send(pin, "/getCode", VECTOR_KEY, {"str": markers[0], "pwdstr": IGNORED_PIN})
            # ... and used (no device PIN): it must still cross Redis encrypted.
            second = send(nopin, "/getCode", VECTOR_KEY, {"str": markers[1], "pwdstr": NOPIN_CARD_PIN})
            time.sleep(0.5)
        finally:
            monitor.terminate()
            monitor.wait(timeout=10)
    assert_legacy(first, 200, 200)
    assert_legacy(second, 200, 200)
    traffic = monitor_log.read_bytes().decode("utf-8", "replace")
    # The PIN-less card's call crossed Redis and was seen there: the check is not vacuous (the
    # other platform's call went over its card link, which carries the same sealed PIN).
    assert markers[1] in traffic, "the card request did not show in the Redis traffic"
    assert "fallback_pin" in traffic
    everything = "\n".join([traffic, pin.log, nopin.log, database_text(), json.dumps(first[2]),
                            json.dumps(second[2])])
    for secret_pin in (IGNORED_PIN, NOPIN_CARD_PIN):
        assert secret_pin not in everything, f"the client's PIN {secret_pin} leaked"
        assert secret_pin.encode().hex() not in everything.lower()
