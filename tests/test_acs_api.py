"""The access system profile (docs/client-profiles.md §7) through a real running platform
(uvicorn, simulator, PostgreSQL, Redis), called by an independent client written from the spec
alone with the `cryptography` package (examples/acs/acs_client.py; it imports nothing of the
platform, whose ciphers use pycryptodome).

For every encryption mode: a token, a text and a CEB XML signed through /acs/..., the answer
decrypted and its signature verified with the card's certificate. Then the refusals — tampered
Data, a wrong MD5, an expired token, another party's token, a replay, Data encrypted with the
wrong key or certificate — each in the profile's shape with nothing stored and no card used;
"use new key" with grace; and one audit event per request with the profile's name."""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from accessids.acs import acs_cert_generate, acs_cert_upload, acs_key_set, acs_key_use_new, acs_settings_set
from accessids.models import AcsToken
from accessids.services import access_id_create, access_id_profile_set, access_id_set_enabled
from audit.models import AuditEvent
from core.ceb import ceb_verify
from core.certs import certificate_load, signature_verify
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import ROOT, CardPlatforms, Platform, services_env
from tests.test_api import certificate
from xmlstore.models import XmlDocument

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

TEXT = "报关单 No. 42 \"acs\" ünïcödé"
VECTORS = Path(__file__).resolve().parent / "vectors"
CEB = (VECTORS / "CEB621Message.xml").read_text("utf-8")
MODES = ("none", "aes", "des", "rsa", "rsa2", "rsa+aes", "rsa+des")


def _load_client():
    spec = importlib.util.spec_from_file_location("acs_client", ROOT / "examples" / "acs" / "acs_client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["acs_client"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


acs = _load_client()


@pytest.fixture(scope="module")
def acs_platform(django_db_setup, django_db_blocker, tmp_path_factory):
    def start(algorithm: str):
        tmp = tmp_path_factory.mktemp(f"acs-{algorithm}")
        sim = SimulatorProcess(algorithm=algorithm, key_dir=str(tmp / "keys")).start()
        with django_db_blocker.unblock():
            env = services_env(test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                               UKEY_DEFAULT_DEVICE=f"card-{algorithm}")
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start, db_blocker=django_db_blocker)
    yield platforms("rsa")[1]
    platforms.stop()


def party(platform, mode: str, *, sender: str | None = None, signature: str = "md5", token: bool = True,
          with_key: bool | None = None, client_bits: int | None = None):
    """An access ID with the acs profile, set up as an administrator would, and a client for it."""
    access, secret = access_id_create(name=f"ACS {mode} {sender or ''}")
    access_id_profile_set(access_id=access, name="acs", enabled=True)
    sender = sender or f"S-{mode.upper()}"
    acs_settings_set(access_id=access, sender_code=sender, encryption=mode, signature=signature,
                     token_required=token)
    # RSA and RSA2 parties sign with the App Secret here (no key set), the others with their key.
    key = None
    if with_key if with_key is not None else mode not in ("rsa", "rsa2"):
        key = acs_key_set(access_id=access)
        acs_key_use_new(access_id=access)
    platform_cert = client_key = None
    if "rsa" in mode:
        platform_cert = acs_cert_generate(access_id=access)
        client_key, client_cert = acs.make_client_keypair(client_bits or (1024 if mode == "rsa" else 2048))
        acs_cert_upload(access_id=access, pem=client_cert)
    client = acs.AcsClient(platform.base, sender, encryption=mode, secret_key=key or secret, symmetric_key=key,
                           platform_certificate_pem=platform_cert, client_private_key_pem=client_key,
                           signature=signature, use_token=token)
    return access, secret, key, client


def card_cert(platform, access, secret):
    return certificate_load(certificate(platform, access, secret)["certificate_pem"])


def assert_refused(result, http_status: int, code: str, message: str):
    """A refusal in the profile's shape: Head.Status error with the Chinese message; the native
    code and the English reason in Data."""
    assert result.http_status == http_status, (result.http_status, result.raw)
    assert result.head["Status"] == "error" and result.head["Message"] == message, result.raw
    data = result.data if isinstance(result.data, dict) else json.loads(result.raw["Data"])
    assert data["code"] == code and data["success"] is False and data["message"], data
    return data


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_signs_text_and_xml_for_an_independent_client(acs_platform, mode):
    access, secret, key, client = party(acs_platform, mode)
    cert = card_cert(acs_platform, access, secret)

    token = client.token()
    assert len(token) == 32 and AcsToken.objects.filter(party__access_id=access).count() == 1

    text = client.call("sign", {"data": TEXT}, token=token)
    assert text.ok and text.sign_ok is True, text.raw
    assert text.head["Ccode"] == client.sender and text.head["Message"] == "成功"
    if mode != "none":  # the answer's Data is ciphertext, readable only with the party's key
        assert TEXT not in text.raw["Data"] and text.data["signature"] not in text.raw["Data"]
    assert signature_verify(cert, TEXT.encode("utf-8"), text.data["signature"])
    assert not signature_verify(cert, (TEXT + ".").encode("utf-8"), text.data["signature"])

    xml = client.call("sign/xml", {"xml": CEB, "filename": f"order-{mode}.xml"}, token=token)
    assert xml.ok and xml.sign_ok is True, xml.raw
    verified = ceb_verify(xml.data["signed_xml"])
    assert verified.valid and verified.cert_no == text.data["cert_no"], verified.reason
    stored = XmlDocument.objects.get(pk=xml.data["document_id"])
    assert stored.filename == f"order-{mode}.xml" and stored.access_id_id == access.pk

    events = list(AuditEvent.objects.filter(access_id=access, event_type=AuditEvent.API_REQUEST).order_by("id"))
    assert [(e.profile, e.endpoint, e.outcome) for e in events] == [
        ("native", "GET /api/v1/certificate", "OK"),
        ("acs", f"GET /acs/token/{client.sender}", "OK"),
        ("acs", "POST /acs/sign", "OK"),
        ("acs", "POST /acs/sign/xml", "OK"),
    ]
    # The secret version is recorded when the App Secret was the SecretKey.
    assert events[2].secret_version == (None if key else 1)


def test_179_and_unsigned_or_tokenless_parties(acs_platform):
    access, secret, key, client = party(acs_platform, "aes", sender="S-179")
    payload = (VECTORS / "179-payload.json").read_text("utf-8")
    result = client.call("sign/179", payload)  # the raw JSON text: numbers keep the client's writing
    assert result.ok, result.raw
    assert result.data["sign_string"] == (VECTORS / "179-sign-string.txt").read_text("utf-8").strip()
    cert = card_cert(acs_platform, access, secret)
    assert signature_verify(cert, result.data["sign_string"].encode("utf-8"), result.data["signature"])

    # No signature, no token: the payload's encryption is what proves the caller.
    access2, _, key2, open_client = party(acs_platform, "aes", sender="S-NOSIGN", signature="none", token=False)
    result = open_client.call("sign", {"data": TEXT})
    assert result.ok and result.head["Sign"] == "" and result.sign_ok is None, result.raw
    tampered = open_client.call("sign", {"data": TEXT}, tamper=lambda env: env.update(
        Data=env["Data"][:-2] + ("00" if env["Data"][-2:] != "00" else "11")))
    assert_refused(tampered, 400, "DECRYPTION_FAILED", "数据解密失败")
    # An identical envelope again is a replay even without a signature.
    first = open_client.call("sign", {"data": "once"})
    assert first.ok
    assert_refused(open_client.send_raw("sign", first.request_bytes), 409, "DUPLICATE_REQUEST",
                   "重复的请求（签名已使用）")


def test_refusals_in_the_profiles_shape_store_nothing_and_use_no_card(acs_platform):
    access, secret, key, client = party(acs_platform, "aes", sender="S-HOSTILE")
    other_access, _, _, other = party(acs_platform, "des", sender="S-OTHER")
    documents, card_events = XmlDocument.objects.count(), AuditEvent.objects.filter(cert_no__gt="").count()
    token = client.token()

    # Tampered Data: the signature covers it.
    tampered = client.call("sign/xml", {"xml": CEB}, token=token,
                           tamper=lambda env: env.update(Data=env["Data"][:-1] + ("0" if env["Data"][-1] != "0" else "1")))
    refusal = assert_refused(tampered, 401, "SIGNATURE_VALIDATION_FAILED", "签名验证失败")
    assert tampered.head["Sign"] == "" and "MD5" in refusal["message"]  # not signed: the caller proved nothing
    # A wrong MD5.
    assert_refused(client.call("sign", {"data": TEXT}, token=token, tamper={"Sign": "0" * 32}),
                   401, "SIGNATURE_VALIDATION_FAILED", "签名验证失败")
    # Signed with a wrong SecretKey.
    wrong = acs.AcsClient(acs_platform.base, client.sender, encryption="aes", secret_key="x" * 32,
                          symmetric_key=key)
    assert_refused(wrong.call("sign", {"data": TEXT}, token=token), 401, "SIGNATURE_VALIDATION_FAILED", "签名验证失败")
    # Encrypted with another key, signed right: it does not decrypt.
    other_key = "0123456789abcdef0123456789abcdef"
    wrong_cipher = acs.AcsClient(acs_platform.base, client.sender, encryption="aes", secret_key=key,
                                 symmetric_key=other_key)
    assert_refused(wrong_cipher.call("sign/xml", {"xml": CEB}, token=token), 400, "DECRYPTION_FAILED", "数据解密失败")
    # Another party's token; no token; an unknown token; an expired one.
    assert_refused(client.call("sign", {"data": TEXT}, token=other.token()), 401, "TOKEN_INVALID", "令牌无效，请重新获取")
    assert_refused(client.call("sign", {"data": TEXT}, token=""), 401, "MISSING_AUTH_HEADERS",
                   "缺少认证字段（Head.Ccode、Head.Sign 或 Head.Token）")
    assert_refused(client.call("sign", {"data": TEXT}, token="f" * 32), 401, "TOKEN_INVALID", "令牌无效，请重新获取")
    old = client.token()
    AcsToken.objects.filter(party__access_id=access).update(expires_at=datetime.datetime(2020, 1, 1,
                                                                                         tzinfo=datetime.UTC))
    assert_refused(client.call("sign", {"data": TEXT}, token=old), 401, "TOKEN_EXPIRED", "令牌已过期，请重新获取")
    token = client.token()
    # A replay of an accepted request (its exact bytes).
    accepted = client.call("sign", {"data": "first"}, token=token)
    assert accepted.ok
    assert_refused(client.send_raw("sign", accepted.request_bytes), 409, "DUPLICATE_REQUEST", "重复的请求（签名已使用）")
    # An unknown sender; a body that is no envelope.
    stranger = acs.AcsClient(acs_platform.base, "S-NOBODY", encryption="aes", secret_key=key, symmetric_key=key)
    assert_refused(stranger.call("sign", {"data": TEXT}), 401, "INVALID_ACCESS_ID", "未知的发送方代码（Ccode）")
    assert_refused(client.send_raw("sign", b'{"Head": "x"}'), 400, "INVALID_REQUEST", "请求格式不正确")
    assert_refused(client.send_raw("nothing/here", b"{}"), 404, "NOT_FOUND", "接口不存在")

    assert XmlDocument.objects.count() == documents
    assert AuditEvent.objects.filter(cert_no__gt="").count() == card_events + 1  # only the accepted one
    outcomes = list(AuditEvent.objects.filter(access_id=access, event_type=AuditEvent.API_REQUEST, profile="acs")
                    .order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["OK", "SIGNATURE_VALIDATION_FAILED", "SIGNATURE_VALIDATION_FAILED",
                        "SIGNATURE_VALIDATION_FAILED", "DECRYPTION_FAILED", "TOKEN_INVALID", "MISSING_AUTH_HEADERS",
                        "TOKEN_INVALID", "OK", "TOKEN_EXPIRED", "OK", "OK", "DUPLICATE_REQUEST", "INVALID_REQUEST",
                        "NOT_FOUND"][:len(outcomes)] and len(outcomes) == 13
    assert AuditEvent.objects.filter(profile="acs", outcome="INVALID_ACCESS_ID", access_key="").exists()

    # The profile turned off, the party disabled: refused, and its tokens are gone.
    access_id_profile_set(access_id=access, name="acs", enabled=False)
    assert not AcsToken.objects.filter(party__access_id=access).exists()
    assert_refused(client.call("sign", {"data": TEXT}, token=token), 401, "PROFILE_NOT_ENABLED",
                   "该接入方未启用 acs 接入方式")
    access_id_set_enabled(access_id=other_access, enabled=False)
    with pytest.raises(acs.AcsError) as refused:
        other.token()
    assert refused.value.http_status == 403 and refused.value.body["code"] == "ACCESS_ID_DISABLED"
    assert refused.value.body["message"] == "接入方已停用或已过期" and refused.value.body["status"] == "error"


def test_rsa_data_encrypted_with_the_wrong_certificate_and_a_party_without_its_certificate(acs_platform):
    access, secret, _, client = party(acs_platform, "rsa2", sender="S-RSA-WRONG")
    stranger_key, stranger_cert = acs.make_client_keypair(2048)
    wrong = acs.AcsClient(acs_platform.base, client.sender, encryption="rsa2", secret_key=secret,
                          platform_certificate_pem=stranger_cert, client_private_key_pem=client.client_private_key_pem)
    token = client.token()
    assert_refused(wrong.call("sign", {"data": TEXT}, token=token), 400, "DECRYPTION_FAILED", "数据解密失败")
    # RSA+AES whose party has not uploaded its certificate: nothing can go back to it, so nothing is signed.
    access2, secret2 = access_id_create(name="ACS half configured")
    access_id_profile_set(access_id=access2, name="acs", enabled=True)
    acs_settings_set(access_id=access2, sender_code="S-HALF", encryption="rsa+aes", signature="md5")
    platform_cert = acs_cert_generate(access_id=access2)
    half = acs.AcsClient(acs_platform.base, "S-HALF", encryption="rsa+aes", secret_key=secret2,
                         platform_certificate_pem=platform_cert)
    with pytest.raises(acs.AcsError) as refused:  # a token would go back encrypted for the party
        half.token()
    assert (refused.value.http_status, refused.value.body["code"]) == (403, "ACS_NOT_CONFIGURED")
    assert "上传加密证书" in refused.value.body["detail"]
    acs_settings_set(access_id=access2, token_required=False)
    assert_refused(half.call("sign", {"data": TEXT}, token=""), 403, "ACS_NOT_CONFIGURED",
                   "接入方的密钥或证书尚未配置，请联系管理员")


def test_use_new_key_with_grace(acs_platform):
    access, secret, old_key, old_client = party(acs_platform, "aes", sender="S-GRACE")
    old_token = old_client.token()
    assert old_client.call("sign", {"data": TEXT}, token=old_token).ok
    new_key = acs_key_set(access_id=access, key="")
    # Pending until used: the new key is not accepted yet.
    new_client = acs.AcsClient(acs_platform.base, "S-GRACE", encryption="aes", secret_key=new_key,
                               symmetric_key=new_key)
    assert_refused(new_client.call("sign", {"data": TEXT}, token=old_token), 401, "SIGNATURE_VALIDATION_FAILED",
                   "签名验证失败")
    acs_key_use_new(access_id=access, grace=datetime.timedelta(seconds=3))
    used_at = time.monotonic()
    # Both keys during the grace period (the old key's token too); the answer is signed with the key the caller used.
    old = old_client.call("sign", {"data": "old key"}, token=old_token)
    assert old.ok and old.sign_ok is True, old.raw
    new = new_client.call("sign", {"data": "new key"}, token=new_client.token())
    assert new.ok and new.sign_ok is True, new.raw
    time.sleep(max(0.0, 3.2 - (time.monotonic() - used_at)))
    assert_refused(old_client.call("sign", {"data": TEXT}, token=new_client.token()), 401,
                   "SIGNATURE_VALIDATION_FAILED", "签名验证失败")
    # Tokens issued under the old key ended with it.
    assert_refused(new_client.call("sign", {"data": TEXT}, token=old_token), 401, "TOKEN_INVALID",
                   "令牌无效，请重新获取")
    assert new_client.call("sign", {"data": "still fine"}, token=new_client.token()).ok
    types = list(AuditEvent.objects.filter(access_id=access, profile="acs").exclude(event_type=AuditEvent.API_REQUEST)
                 .order_by("id").values_list("event_type", "source"))
    assert {source for _, source in types} == {"command"} and [t for t, _ in types] == [
        AuditEvent.ACCESS_ID_PROFILE_CHANGED, AuditEvent.ACS_CHANGED, AuditEvent.ACS_KEY_SET, AuditEvent.ACS_KEY_USED,
                                     AuditEvent.ACS_KEY_SET, AuditEvent.ACS_KEY_USED]


def test_hostile_envelopes_are_refused_in_the_profiles_shape(acs_platform):
    from tests.live import http

    def post(body: bytes, path: str = "/acs/sign"):
        status, headers, content = http("POST", acs_platform.base + path, body=body,
                                        headers={"Content-Type": "application/json"})
        return status, headers, json.loads(content)

    cases = [
        (b"", 400), (b"not json", 400), (b"[]", 400), (b'{"Head": {}, "Data": 1}', 400),
        (b'{"Head": {"Ccode": {"x": 1}}, "Data": ""}', 400), (b'{"Head": {"Ccode": "\\u0000"}, "Data": ""}', 400),
        (json.dumps({"Head": {f"k{i}": "v" for i in range(40)}, "Data": ""}).encode(), 400),
        (json.dumps({"Head": {"Ccode": "S" * 5000}, "Data": ""}).encode(), 401),
        (b'{"Head": {"Ccode": "S-NOBODY", "Sign": "x"}, "Data": "zz"}', 401),
        (b'{"Head": {"Ccode": "S-NOBODY"}, "Data": "' + b"[" * 10000 + b'"}', 401),
    ]
    for body, expected in cases:
        status, headers, answer = post(body)
        assert status == expected, (body[:60], status, answer)
        assert answer["Head"]["Status"] == "error" and answer["Head"]["Sign"] == "" and headers["X-Request-ID"]
        assert json.loads(answer["Data"])["success"] is False
    status, _, content = http("GET", acs_platform.base + "/acs/sign")  # no envelope: refused before the method
    assert status == 400 and json.loads(content)["Head"]["Message"] == "请求格式不正确"
    status, _, content = http("GET", acs_platform.base + "/acs/token/%00%0a")
    assert status == 400 and json.loads(content)["status"] == "error"
    status, _, content = http("GET", acs_platform.base + "/acs/token/" + "A" * 300)
    assert status == 401 and json.loads(content)["code"] == "INVALID_ACCESS_ID"
