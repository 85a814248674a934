"""Client profiles (docs/client-profiles.md): gys, x-signature and cp-md5 through a real
running platform (uvicorn, simulator, PostgreSQL, Redis). For each: a correct request signs
and the signature verifies with the card's certificate; a wrong secret, a stale timestamp, a
replay (also 50 concurrent copies at two web processes), a missing header and a profile that
is not enabled each fail in the profile's own shape; rotation grace holds for each; every
request is audited with its profile. Plus the gys string-to-sign example of the spec, the
`accessid profile` command, the admin, and the audit log and dashboard filtered by profile."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from accessids.models import AccessId, AccessIdProfile
from accessids.services import AccessIdError, access_id_create, access_id_profile_set, app_secret_rotate
from api.schemes import gys_parameters, gys_string_to_sign, scheme_for
from audit.chain import chain_verify
from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from signing.models import CardDevice
from tests.conftest import SimulatorProcess, rpc_access_id_create, test_database_url
from tests.live import ROOT, CardPlatforms, Platform, http, services_env
from tests.test_api import certificate
from tests.test_xml_api import FakeCustoms

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

TEXT = 'Zollanmeldung 报关单 "No. 42" \\ ünïcödé\nline 2'
VECTORS = Path(__file__).resolve().parent / "vectors"


# --- the gys string to sign (no platform needed) ----------------------------------------------


def test_gys_worked_example_of_the_spec_byte_for_byte():
    body = b'{"data":"hello","no_hash":false}'
    text = gys_string_to_sign(gys_parameters(body, ""), access_id="AKGYS0001", timestamp="1767225600000",
                              nonce="n0nce-0001")
    assert text == ("data=hello&gys_access_id=AKGYS0001&gys_nonce=n0nce-0001&gys_timestamp=1767225600000"
                    "&no_hash=false")


def test_gys_values_are_written_as_the_spec_says():
    body = ('{"z":null,"b":1.50,"a":"x y","obj":{"k2":1e3,"k1":[true,null,"q\\"uote"]},"n":-0,"中":"文"}'
            .encode("utf-8"))
    text = gys_string_to_sign(gys_parameters(body, ""), access_id="AK", timestamp="1", nonce="n")
    # nulls left out at the top, numbers as sent, objects compact in the order received,
    # keys sorted by code point (中 after the ASCII keys).
    assert text == ('a=x y&b=1.50&gys_access_id=AK&gys_nonce=n&gys_timestamp=1&n=-0'
                    '&obj={"k2":1e3,"k1":[true,null,"q\\"uote"]}&中=文')
    # No body: the query parameters.
    assert gys_string_to_sign(gys_parameters(b"", "device=card-1&b=2"), access_id="AK", timestamp="1",
                              nonce="n") == "b=2&device=card-1&gys_access_id=AK&gys_nonce=n&gys_timestamp=1"


# --- clients, as their source systems sign ------------------------------------------------------


def gys_request(access_key, secret, payload=None, *, query="", timestamp=None, nonce=None, drop=()):
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(time.time() * 1000)) if timestamp is None else str(timestamp)
    nonce = nonce or str(uuid.uuid4())
    text = gys_string_to_sign(gys_parameters(body, query), access_id=access_key, timestamp=timestamp, nonce=nonce)
    headers = {"gys_access_id": access_key, "gys_timestamp": timestamp, "gys_nonce": nonce,
               "gys_signature": hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()}
    if body:
        headers["Content-Type"] = "application/json"
    for name in drop:
        headers.pop(name)
    return body, headers


def xsig_headers(secret, *, access_key=None, timestamp=None, nonce=None):
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    nonce = nonce or secrets.token_hex(8)
    digest = hmac.new(secret.encode(), f"nonce={nonce}&timestamp={timestamp}".encode(), hashlib.sha256).digest()
    headers = {"X-Timestamp": timestamp, "X-Nonce": nonce, "X-Signature": base64.b64encode(digest).decode(),
               "Content-Type": "application/json"}
    if access_key:
        headers["X-Access-Id"] = access_key
    return headers


def md5_headers(secret, path, body: bytes, *, timestamp=None, method="POST"):
    timestamp = str(int(time.time() * 1000)) if timestamp is None else str(timestamp)
    signature = hashlib.md5(method.encode() + path.encode() + timestamp.encode() + body + secret.encode()).hexdigest()
    return {"X-Timestamp": timestamp, "X-Signature": signature, "Content-Type": "application/json"}


def send(platform, method, path, body: bytes, headers: dict):
    status, response_headers, content = http(method, platform.base + path, body=body or None, headers=headers)
    return status, response_headers, json.loads(content)


def request_events(access):
    """Its requests' events, by the access ID as claimed (refused before the look-up too)."""
    return list(AuditEvent.objects.filter(access_key=access.key, event_type=AuditEvent.API_REQUEST).order_by("id"))


# --- the platform ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customs():
    fake = FakeCustoms().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def profile_platforms(django_db_setup, django_db_blocker, tmp_path_factory, customs):
    def start(algorithm: str):
        tmp = tmp_path_factory.mktemp(f"profiles-{algorithm}")
        sim = SimulatorProcess(algorithm=algorithm, key_dir=str(tmp / "keys")).start()
        with django_db_blocker.unblock():
            env = services_env(test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                               UKEY_DEFAULT_DEVICE=f"card-{algorithm}", CUSTOMS_179_UPLOAD_URL=customs.url)
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start, db_blocker=django_db_blocker)
    yield platforms
    platforms.stop()


@pytest.fixture
def rsa(profile_platforms):
    return profile_platforms("rsa")


@pytest.fixture
def client(rsa):
    """An access ID with every profile enabled, the default one for x-signature and cp-md5."""
    sim, platform = rsa
    access, secret = rpc_access_id_create(name="ERP")  # cp-md5 is the proxy's /rpc
    for name in ("gys", "x-signature", "cp-md5"):
        access_id_profile_set(access_id=access, name=name, enabled=True, default=name != "gys")
    cert = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    return platform, access, secret, cert


def assert_signed(body, cert, text=TEXT):
    assert signature_verify(cert, text.encode("utf-8"), body["signature"]), body
    assert not signature_verify(cert, (text + ".").encode("utf-8"), body["signature"])


# --- gys -------------------------------------------------------------------------------------------


def test_gys_signs_and_refuses_in_its_own_shape(client):
    platform, access, secret, cert = client
    body, headers = gys_request(access.key, secret, {"data": TEXT, "no_hash": False})
    status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
    assert status == 200, answer
    assert_signed(answer, cert)
    # A GET signs its query parameters.
    _, headers = gys_request(access.key, secret, query="device=card-rsa")
    status, _, answer = send(platform, "GET", "/api/v1/certificate?device=card-rsa", b"", headers)
    assert status == 200 and answer["cert_no"], answer

    def refused(code, body, headers, message):
        status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
        assert (status, answer) == (400, {"success": False, "code": code, "message": message}), answer

    body, headers = gys_request(access.key, "wrong-secret", {"data": TEXT})
    refused("SIGNATURE_VALIDATION_FAILED", body, headers, "签名验证失败")
    body, headers = gys_request(access.key, secret, {"data": TEXT}, timestamp=int(time.time() * 1000) - 301_000)
    refused("INVALID_TIMESTAMP", body, headers, "请求时间戳无效或已过期")
    body, headers = gys_request("AKNOSUCHID0000000000", secret, {"data": TEXT})
    refused("INVALID_ACCESS_ID", body, headers, "无效的 Access ID")
    body, headers = gys_request(access.key, secret, {"data": TEXT}, drop=("gys_nonce",))
    refused("MISSING_AUTH_HEADERS", body, headers, "缺少认证请求头")
    body, headers = gys_request(access.key, secret, {"data": TEXT})
    assert send(platform, "POST", "/api/v1/sign", body, headers)[0] == 200
    refused("DUPLICATE_REQUEST", body, headers, "重复的请求（nonce 已使用）")
    # A changed body under the same headers: the signature covers it.
    refused("SIGNATURE_VALIDATION_FAILED", json.dumps({"data": TEXT + "!"}).encode(), headers, "签名验证失败")

    events = request_events(access)
    assert [e.profile for e in events] == ["native", *["gys"] * 8]
    assert [e.outcome for e in events[1:]] == [
        "OK", "OK", "SIGNATURE_VALIDATION_FAILED", "INVALID_TIMESTAMP", "MISSING_AUTH_HEADERS", "OK",
        "DUPLICATE_REQUEST", "SIGNATURE_VALIDATION_FAILED"]
    assert events[1].secret_version == 1
    # The unknown access ID is audited under the ID it claimed.
    assert AuditEvent.objects.filter(access_key="AKNOSUCHID0000000000", profile="gys",
                                     outcome="INVALID_ACCESS_ID").count() == 1


def test_gys_native_checks_the_old_validator_lacked(client):
    platform, access, secret, _ = client
    limited, limited_secret = access_id_create(name="limited", scopes=["sign_xml"])
    access_id_profile_set(access_id=limited, name="gys", enabled=True)
    body, headers = gys_request(limited.key, limited_secret, {"data": "x"})
    status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
    assert (status, answer["code"], answer["success"]) == (400, "PERMISSION_DENIED", False), answer
    # Errors of the operation itself keep the native shape (the body is wrong, not the signature).
    body, headers = gys_request(access.key, secret, {"data": ""})
    status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
    assert (status, answer["code"]) == (400, "INVALID_REQUEST") and answer["request_id"], answer


# --- x-signature -------------------------------------------------------------------------------


def test_x_signature_signs_and_refuses_in_its_own_shape(client):
    platform, access, secret, cert = client
    body = json.dumps({"data": TEXT}).encode()
    for access_key in (None, access.key):  # the profile's default access ID, or named
        status, _, answer = send(platform, "POST", "/api/v1/sign", body, xsig_headers(secret, access_key=access_key))
        assert status == 200, answer
        assert_signed(answer, cert)

    def refused(headers, msg):
        status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
        assert (status, answer) == (401, {"code": 401, "msg": msg}), answer

    refused(xsig_headers("wrong-secret"), "signature_auth failed")
    refused(xsig_headers(secret, timestamp=int(time.time()) - 301), "Timestamp not in tolerance")
    headers = xsig_headers(secret)
    assert send(platform, "POST", "/api/v1/sign", body, headers)[0] == 200
    refused(headers, "nonce already used")
    missing = xsig_headers(secret)
    del missing["X-Nonce"]
    refused(missing, "signature_auth failed")
    refused(xsig_headers(secret, access_key="AKNOSUCHID0000000000"), "signature_auth failed")
    events = request_events(access)
    assert {e.profile for e in events[1:]} == {"x-signature"}
    assert [e.outcome for e in events[1:]] == ["OK", "OK", "SIGNATURE_VALIDATION_FAILED", "INVALID_TIMESTAMP",
                                               "OK", "DUPLICATE_REQUEST", "MISSING_AUTH_HEADERS"]


# --- cp-md5 ------------------------------------------------------------------------------------


def test_cp_md5_rpc_at_the_root_in_the_proxy_envelope(client):
    platform, access, secret, cert = client
    body = json.dumps({"_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": TEXT, "passwd": "88888888"}},
                      ensure_ascii=False).encode()
    for path in ("/rpc", "/api/v1/rpc"):
        status, headers, answer = send(platform, "POST", path, body, md5_headers(secret, path, body))
        assert status == 200, answer
        assert answer["_method"] == "cus-sec_SpcSignDataAsPEM" and answer["_status"] == "00"
        assert answer["_args"]["Result"] is True and answer["_args"]["Error"] == []
        assert signature_verify(cert, TEXT.encode(), answer["_args"]["Data"][0])
        assert headers["X-Request-ID"]
    # `args` may be omitted.
    body = b'{"_method":"cus-sec_SpcGetCertNo"}'
    status, _, answer = send(platform, "POST", "/rpc", body, md5_headers(secret, "/rpc", body))
    assert status == 200 and answer["_args"]["Data"][0], answer

    # The card refuses: 400 with the same envelope.
    body = b'{"_method":"cus-sec_SpcVerifySignData","args":{"inData":"x","signData":"AAAA"}}'
    status, headers, answer = send(platform, "POST", "/rpc", body, md5_headers(secret, "/rpc", body))
    assert status == 400 and answer["_args"]["Result"] is False and answer["_args"]["Error"], answer
    assert answer["_method"] == "cus-sec_SpcVerifySignData" and headers["X-Request-ID"]
    # No card connection: 503.
    CardDevice.objects.create(slug="unplugged", url="ws://127.0.0.1:9")
    AccessId.objects.get(pk=access.pk).devices.add(*CardDevice.objects.filter(slug__in=["unplugged", "card-rsa"]))
    body = b'{"_method":"cus-sec_SpcGetCertNo","device":"unplugged"}'
    status, headers, answer = send(platform, "POST", "/rpc", body, md5_headers(secret, "/rpc", body))
    assert status == 503 and answer["error"] and headers["X-Request-ID"], answer
    # A bad body: 400.
    body = b'{"_method": 5}'
    status, headers, answer = send(platform, "POST", "/rpc", body, md5_headers(secret, "/rpc", body))
    assert status == 400 and answer["error"] and headers["X-Request-ID"], answer


def test_cp_md5_refusals(client):
    platform, access, secret, _ = client
    body = b'{"_method":"cus-sec_SpcGetCertNo","args":{}}'

    def refused(headers, expected_body=body):
        status, response_headers, answer = send(platform, "POST", "/rpc", expected_body, headers)
        assert status == 401 and set(answer) == {"error"} and answer["error"], answer
        assert response_headers["X-Request-ID"]

    refused(md5_headers("wrong-secret", "/rpc", body))
    refused(md5_headers(secret, "/rpc", body, timestamp=int(time.time() * 1000) - 3_500))  # ±3 s by default
    refused(md5_headers(secret, "/api/v1/rpc", body))  # signed for another path
    refused(md5_headers(secret, "/rpc", body + b" "))  # the body as sent is hashed
    headers = md5_headers(secret, "/rpc", body)
    assert send(platform, "POST", "/rpc", body, headers)[0] == 200
    refused(headers)  # the same signature again: a replay
    refused({"X-Signature": headers["X-Signature"], "Content-Type": "application/json"})  # no X-Timestamp
    # A wider window for this access ID. A request 10 s old is refused by any nonce store whose
    # Redis is younger than that (api/nonces.py, its epoch): wait for it when this test runs first.
    uptime = redis.Redis.from_url(os.environ["REDIS_URL"]).info("server")["uptime_in_seconds"]
    time.sleep(max(0, 12 - uptime))
    access_id_profile_set(access_id=access, name="cp-md5", window_seconds=30)
    status, _, answer = send(platform, "POST", "/rpc", body,
                             md5_headers(secret, "/rpc", body, timestamp=int(time.time() * 1000) - 10_000))
    assert status == 200, answer
    outcomes = [e.outcome for e in request_events(access) if e.profile == "cp-md5"]
    assert outcomes == ["SIGNATURE_VALIDATION_FAILED", "INVALID_TIMESTAMP", "SIGNATURE_VALIDATION_FAILED",
                        "SIGNATURE_VALIDATION_FAILED", "OK", "DUPLICATE_REQUEST", "MISSING_AUTH_HEADERS", "OK"]


def test_cp_md5_customs179_signs_and_uploads(client, customs):
    platform, access, secret, cert = client
    payload = json.loads((VECTORS / "179-payload.json").read_text("utf-8"))
    sign_string = (VECTORS / "179-sign-string.txt").read_bytes().decode("utf-8")
    proxy = {"sessionId": payload.pop("sessionID"), **payload, "realTimeDataUpload": True}
    body = json.dumps(proxy, ensure_ascii=False).encode("utf-8")
    customs.reset("10000")
    status, _, answer = send(platform, "POST", "/api/customs179", body, md5_headers(secret, "/api/customs179", body))
    assert status == 200, answer
    assert answer["sign_string"] == sign_string
    assert signature_verify(cert, sign_string.encode("utf-8"), answer["signature"])
    assert answer["upload"]["ok"] is True and len(customs.received) == 1
    # Without the upload flag, nothing is sent.
    body = json.dumps({**proxy, "realTimeDataUpload": False}, ensure_ascii=False).encode("utf-8")
    status, _, answer = send(platform, "POST", "/api/customs179", body, md5_headers(secret, "/api/customs179", body))
    assert status == 200 and "upload" not in answer and len(customs.received) == 1, answer
    event = request_events(access)[-1]
    assert (event.profile, event.endpoint, event.outcome) == ("cp-md5", "POST /api/customs179", "OK")


# --- across profiles ----------------------------------------------------------------------------


def test_a_profile_not_enabled_is_refused_in_its_shape(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="native only")
    body, headers = gys_request(access.key, secret, {"data": "x"})
    status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
    assert (status, answer["code"]) == (400, "PROFILE_NOT_ENABLED"), answer
    status, _, answer = send(platform, "POST", "/api/v1/sign", b'{"data":"x"}',
                             xsig_headers(secret, access_key=access.key))
    assert (status, answer) == (401, {"code": 401, "msg": "signature_auth failed"})
    rpc = b'{"_method":"cus-sec_SpcGetCertNo"}'
    status, _, answer = send(platform, "POST", "/rpc", rpc, {**md5_headers(secret, "/rpc", rpc),
                                                             "X-Access-Id": access.key})
    assert status == 401 and "not enabled" in answer["error"]
    # Turned off again after use: refused at once.
    access_id_profile_set(access_id=access, name="gys", enabled=True)
    body, headers = gys_request(access.key, secret, {"data": "x"})
    assert send(platform, "POST", "/api/v1/sign", body, headers)[0] == 200
    access_id_profile_set(access_id=access, name="gys", enabled=False)
    body, headers = gys_request(access.key, secret, {"data": "x"})
    assert send(platform, "POST", "/api/v1/sign", body, headers)[2]["code"] == "PROFILE_NOT_ENABLED"
    assert [e.outcome for e in request_events(access)] == ["PROFILE_NOT_ENABLED", "PROFILE_NOT_ENABLED",
                                                           "PROFILE_NOT_ENABLED", "OK", "PROFILE_NOT_ENABLED"]


def test_rotation_grace_holds_for_every_profile(client):
    platform, access, old, _ = client
    _, new = app_secret_rotate(access_id=access, grace=__import__("datetime").timedelta(hours=1))
    rpc = b'{"_method":"cus-sec_SpcGetCertNo"}'
    for secret in (old, new):
        body, headers = gys_request(access.key, secret, {"data": "x"})
        assert send(platform, "POST", "/api/v1/sign", body, headers)[0] == 200
        assert send(platform, "POST", "/api/v1/sign", b'{"data":"x"}', xsig_headers(secret))[0] == 200
        assert send(platform, "POST", "/rpc", rpc, md5_headers(secret, "/rpc", rpc))[0] == 200
        time.sleep(0.002)  # cp-md5 signatures differ by their millisecond timestamp
    events = request_events(access)[-6:]
    assert [(e.profile, e.secret_version) for e in events] == [
        ("gys", 1), ("x-signature", 1), ("cp-md5", 1), ("gys", 2), ("x-signature", 2), ("cp-md5", 2)]
    # Once the grace period is over, the old secret is refused everywhere.
    _, newest = app_secret_rotate(access_id=access, grace=__import__("datetime").timedelta(0))
    body, headers = gys_request(access.key, new, {"data": "x"})
    assert send(platform, "POST", "/api/v1/sign", body, headers)[2]["code"] == "SIGNATURE_VALIDATION_FAILED"
    assert send(platform, "POST", "/api/v1/sign", b'{"data":"x"}', xsig_headers(new))[0] == 401
    assert send(platform, "POST", "/rpc", rpc, md5_headers(new, "/rpc", rpc))[0] == 401


def test_50_concurrent_copies_at_two_processes_are_accepted_once_for_every_profile(client, tmp_path):
    platform, access, secret, _ = client
    second = Platform(dict(platform.env), tmp_path, args=("--web-only",), name="second").start(migrate=False)
    try:
        gys_body, gys_headers = gys_request(access.key, secret, {"data": "declaration 4403"})
        xsig_body = b'{"data":"declaration 4403"}'
        rpc = b'{"_method":"cus-sec_SpcGetCertNo"}'
        cases = {
            "gys": ("/api/v1/sign", gys_body, gys_headers),
            "x-signature": ("/api/v1/sign", xsig_body, xsig_headers(secret)),
            # the cp-md5 window is ±3 s: give the 50 copies room on a loaded machine
            "cp-md5": ("/rpc", rpc, None),
        }
        access_id_profile_set(access_id=access, name="cp-md5", window_seconds=60)
        bases = [platform.base, second.base]
        results = {}
        for name, (path, body, headers) in cases.items():
            headers = headers or md5_headers(secret, path, body)
            barrier = threading.Barrier(50)

            def fire(i, path=path, body=body, headers=headers, barrier=barrier):
                barrier.wait()
                return http("POST", bases[i % 2] + path, body=body, headers=headers)[0]

            with ThreadPoolExecutor(50) as pool:
                results[name] = list(pool.map(fire, range(50)))
    finally:
        second.stop()
    refused_status = {"gys": 400, "x-signature": 401, "cp-md5": 401}
    for name, statuses in results.items():
        assert statuses.count(200) == 1 and statuses.count(refused_status[name]) == 49, (name, statuses)
        outcomes = [e.outcome for e in request_events(access) if e.profile == name]
        assert outcomes.count("OK") == 1 and outcomes.count("DUPLICATE_REQUEST") == 49, (name, outcomes)


# --- the request's scheme is recognised by its headers --------------------------------------------


def test_schemes_are_recognised_by_their_headers(rf):
    def named(path="/api/v1/sign", **headers):
        return scheme_for(rf.post(path, data=b"{}", content_type="application/json", headers=headers)).name

    ms = "1767225600000"
    assert named() == "native"
    assert named(X_Signature="ab" * 32, X_Nonce="n" * 16, X_Access_Id="AK", X_Timestamp=ms) == "native"
    assert named(X_Signature="ab" * 32, X_Nonce="n" * 16, X_Access_Id="AK", X_Timestamp="1767225600") == "native"
    assert named(X_Nonce="n" * 16, X_Access_Id="AK", X_Timestamp=ms) == "native"  # lost its signature
    assert named(gys_access_id="AK") == "gys"
    # cp-md5 only where the proxy answered.
    assert named(X_Signature="ab" * 16, X_Timestamp=ms) == "native"
    assert named("/api/v1/rpc", X_Signature="ab" * 16, X_Timestamp=ms) == "cp-md5"
    assert named("/rpc") == named("/rpc", X_Timestamp=ms) == named("/api/customs179") == "cp-md5"
    assert named("/rpc", X_Signature="ab" * 32, X_Nonce="n" * 16, X_Access_Id="AK", X_Timestamp=ms) == "native"
    assert named(X_Signature=base64.b64encode(b"x" * 32).decode(), X_Timestamp="1") == "x-signature"
    assert named(X_Timestamp="1767225600", X_Nonce="abc") == "x-signature"  # lost its signature


# --- operators: the command and the admin ----------------------------------------------------------


def test_accessid_profile_command(rsa, tmp_path):
    _, platform = rsa
    first, _ = access_id_create(name="first")
    second, _ = access_id_create(name="second")
    env = platform.env

    def run(*args):
        result = subprocess.run([sys.executable, "manage.py", "accessid", "profile", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        return result

    result = run(first.key, "--enable", "x-signature", "--default", "--window-seconds", "60", "--json")
    assert result.returncode == 0, result.stderr
    listing = {p["profile"]: p for p in json.loads(result.stdout)["profiles"]}
    assert listing["x-signature"] == {"profile": "x-signature", "enabled": True, "window_seconds": 60,
                                      "default": True, "weak": True}
    assert listing["gys"]["enabled"] is False and listing["gys"]["weak"] is False
    # The default moves to the second access ID.
    assert run(second.key, "--enable", "x-signature", "--default").returncode == 0
    defaults = AccessIdProfile.objects.filter(name="x-signature", is_default=True)
    assert [p.access_id.key for p in defaults] == [second.key]
    # gys has no default access ID; an unknown profile is refused by name.
    result = run(first.key, "--enable", "gys", "--default")
    assert result.returncode != 0 and "no default access ID" in result.stderr
    result = run(first.key, "--enable", "acs-nope")
    assert result.returncode != 0 and "invalid choice" in result.stderr
    result = run(first.key, "--disable", "x-signature")
    assert result.returncode == 0 and "disabled" in result.stdout
    assert not AccessIdProfile.objects.get(access_id=first, name="x-signature").enabled
    # Every change is audited with the profile's name.
    changes = AuditEvent.objects.filter(event_type=AuditEvent.ACCESS_ID_PROFILE_CHANGED, source="command")
    assert [(e.access_key, e.profile) for e in changes.order_by("id")] == [
        (first.key, "x-signature"), (second.key, "x-signature"), (first.key, "x-signature")]
    assert chain_verify().ok
    with pytest.raises(AccessIdError):
        access_id_profile_set(access_id=first, name="cp-md5", window_seconds=99_999)


def test_admin_shows_and_changes_profiles_and_filters_by_profile(client, admin_client, admin_user):
    platform, access, secret, _ = client
    body, headers = gys_request(access.key, secret, {"data": "x"})
    assert send(platform, "POST", "/api/v1/sign", body, headers)[0] == 200
    change_url = f"/admin/accessids/accessid/{access.pk}/change/"
    page = admin_client.get(change_url).content.decode()
    assert "Client profiles" in page and 'name="profile_gys_enabled"' in page
    assert "MD5 is broken" in page and "not the request body" in page  # why the weak ones are weak
    listing = admin_client.get("/admin/accessids/accessid/").content.decode()
    assert "cp-md5, gys, x-signature" in listing

    # Changing them in the form: through the service, audited with the admin user.
    other, _ = access_id_create(name="other")
    form = {
        "name": "other", "description": "", "scopes": ["sign"], "allowed_methods": [], "allowed_networks": "",
        "rate_limit_per_minute": "600", "expires_at_0": "", "expires_at_1": "",
        "secrets-TOTAL_FORMS": "1", "secrets-INITIAL_FORMS": "1", "secrets-MIN_NUM_FORMS": "0",
        "secrets-MAX_NUM_FORMS": "0", "secrets-0-id": str(other.secrets.get().pk), "secrets-0-access_id": str(other.pk),
        "profile_gys_enabled": "on", "profile_cp-md5_enabled": "on", "profile_cp-md5_default": "on",
        "profile_cp-md5_window": "10", "_save": "Save",
    }
    saved = admin_client.post(f"/admin/accessids/accessid/{other.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    rows = {p.name: p for p in AccessIdProfile.objects.filter(access_id=other)}
    assert rows["gys"].enabled and rows["cp-md5"].enabled and rows["cp-md5"].is_default
    assert rows["cp-md5"].window == 10 and "x-signature" not in rows
    assert not AccessIdProfile.objects.get(access_id=access, name="cp-md5").is_default  # taken over
    changes = AuditEvent.objects.filter(event_type=AuditEvent.ACCESS_ID_PROFILE_CHANGED, access_id=other)
    assert sorted(e.profile for e in changes) == ["cp-md5", "gys"]
    assert {(e.source, e.actor_id) for e in changes} == {("admin", admin_user.pk)}
    # A default without the profile on is refused with a message on the field.
    refused = admin_client.post(f"/admin/accessids/accessid/{other.pk}/change/",
                                {**form, "profile_x-signature_default": "on"})
    assert refused.status_code == 200 and "Turn the x-signature profile on" in refused.content.decode()

    # The audit log and the dashboard filtered by profile.
    shown = admin_client.get("/admin/audit/auditevent/?profile=gys").context["cl"].result_list
    assert shown and {e.profile for e in shown} == {"gys"}
    shown = admin_client.get("/admin/audit/auditevent/?profile=native").context["cl"].result_list
    assert any(e.endpoint.startswith("GET /api/v1/certificate") for e in shown)
    data = admin_client.get("/admin/audit/auditevent/dashboard/data/?profile=gys").json()
    assert data["profile"] == "gys"
    counts = {r["profile"]: r["total"] for r in data["requests_by_profile"]}
    assert counts["gys"] >= 1 and counts["native"] >= 1
    assert data["success"]["24h"]["total"] == AuditEvent.objects.filter(
        event_type=AuditEvent.API_REQUEST, profile="gys").count()
    assert 'data-profile="gys"' in data["html"]["profiles"]


# --- what a hostile client tries ------------------------------------------------------------------


def test_a_lost_or_garbled_signature_is_refused_in_the_profile_shape(client):
    platform, access, secret, _ = client
    rpc = b'{"_method":"cus-sec_SpcGetCertNo"}'
    for headers in ({}, {"X-Timestamp": str(int(time.time() * 1000))}, {"X-Signature": "garbled"}):
        status, response_headers, answer = send(platform, "POST", "/rpc", rpc,
                                                {"Content-Type": "application/json", **headers})
        assert status == 401 and set(answer) == {"error"}, (headers, answer)
    for path in ("/api/customs179",):
        status, _, answer = send(platform, "POST", path, b"{}", {"Content-Type": "application/json"})
        assert status == 401 and set(answer) == {"error"}, answer
    body = b'{"data":"x"}'
    lost = xsig_headers(secret)
    del lost["X-Signature"]
    garbled = {**xsig_headers(secret), "X-Signature": "invalid"}
    for headers in (lost, garbled):
        status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
        assert (status, answer) == (401, {"code": 401, "msg": "signature_auth failed"}), answer
    # Every one audited, the default access ID's as such.
    outcomes = [e.outcome for e in request_events(access)[-6:]]
    assert outcomes == ["MISSING_AUTH_HEADERS"] * 5 + ["SIGNATURE_VALIDATION_FAILED"]


def test_cp_md5_is_only_for_the_proxy_endpoints(client):
    platform, access, secret, _ = client
    status, _, answer = send(platform, "GET", "/api/v1/certificate", b"",
                             md5_headers(secret, "/api/v1/certificate", b"", method="GET"))
    assert (status, answer["code"]) == (401, "MISSING_AUTH_HEADERS"), answer  # the native scheme's refusal


def test_endpoints_that_change_credentials_or_delete_refuse_schemes_that_do_not_sign_the_path(client):
    platform, access, secret, _ = client
    body, headers = gys_request(access.key, secret, {})
    status, _, answer = send(platform, "POST", "/api/v1/access-ids/self/rotate", b"",
                             {k: v for k, v in headers.items() if k != "Content-Type"})
    assert (status, answer["code"]) == (400, "PERMISSION_DENIED"), answer
    status, _, answer = send(platform, "POST", "/api/v1/access-ids/self/rotate", b"{}", xsig_headers(secret))
    assert status == 403 and answer["code"] == 403 and "method and the path" in answer["msg"], answer
    assert AccessId.objects.get(pk=access.pk).secrets.count() == 1  # nothing rotated
    body, headers = gys_request(access.key, secret, {"filename": "a.xml", "xml": "<a>1</a>"})
    status, _, answer = send(platform, "POST", "/api/v1/xml-documents", body, headers)
    assert status == 201, answer
    status, _, answer = send(platform, "DELETE", f"/api/v1/xml-documents/{answer['id']}", b"",
                             gys_request(access.key, secret)[1])
    assert (status, answer["code"]) == (400, "PERMISSION_DENIED"), answer


def test_a_profile_is_only_named_to_a_caller_who_holds_the_secret(rsa):
    _, platform = rsa
    access, _ = access_id_create(name="no profiles")
    body, headers = gys_request(access.key, "not-its-secret", {"data": "x"})
    status, _, answer = send(platform, "POST", "/api/v1/sign", body, headers)
    assert (status, answer["code"]) == (400, "SIGNATURE_VALIDATION_FAILED"), answer


def test_a_bad_host_on_the_proxy_endpoint_is_answered_and_audited(client):
    platform, access, secret, _ = client
    rpc = b'{"_method":"cus-sec_SpcGetCertNo"}'
    for path in ("/rpc", "/api/v1/rpc"):
        headers = {**md5_headers(secret, path, rpc), "Host": "evil.example"}
        status, _, answer = send(platform, "POST", path, rpc, headers)
        assert status == 400, answer
        assert answer == {"error": answer["error"]} if path == "/rpc" else answer["code"] == "INVALID_REQUEST"
        assert AuditEvent.objects.filter(endpoint=f"POST {path}", outcome="INVALID_REQUEST").exists()
