"""The signed REST API (docs/signing-api.md) through a real ASGI server: every error
code produced by a real request, signatures that verify with the card's certificate
(RSA and SM2), replay protection across two server processes, rotation, and no secret
or PIN anywhere it should not be."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from signclient import sign_headers
from signing.cards import device_status_get
from signing.models import CardDevice
from tests.conftest import SimulatorProcess, database_text, rpc_access_id_create, test_database_url
from tests.live import CardPlatforms, Platform, http, poll, services_env
from tests.services import _start_redis, _started

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_BODY = 65536


@pytest.fixture(scope="module")
def card_platforms(django_db_setup, django_db_blocker, tmp_path_factory):
    """One platform per card algorithm (started on first use), sharing the test
    PostgreSQL and Redis, each with its own simulator as the default card."""

    def start(algorithm: str) -> tuple[SimulatorProcess, Platform]:
        tmp = tmp_path_factory.mktemp(f"api-{algorithm}")
        sim = SimulatorProcess(algorithm=algorithm, key_dir=str(tmp / "keys")).start()
        with django_db_blocker.unblock():
            env = services_env(
                test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                UKEY_DEFAULT_DEVICE=f"card-{algorithm}", UKEY_REQUEST_TIMEOUT="1.5",
                API_MAX_BODY_BYTES=str(MAX_BODY),
            )
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start, db_blocker=django_db_blocker)
    yield platforms
    platforms.stop()


@pytest.fixture
def rsa(card_platforms):
    return card_platforms("rsa")


def call(platform, method, path, payload=None, *, access=None, secret=None, raw_body=None, headers=None):
    """A request signed like a client would; `headers` overrides or removes (None) any header."""
    body = raw_body if raw_body is not None else (b"" if payload is None else json.dumps(payload).encode())
    all_headers = {"Content-Type": "application/json"} if body else {}
    if access is not None:
        all_headers.update(sign_headers(method, platform.base + path, body, access.key, secret))
    for name, value in (headers or {}).items():
        if value is None:
            all_headers.pop(name, None)
        else:
            all_headers[name] = value
    status, response_headers, content = http(method, platform.base + path, body=body or None, headers=all_headers)
    return status, response_headers, json.loads(content)


def assert_error(result, status, code):
    got_status, headers, body = result
    assert (got_status, body.get("code")) == (status, code), body
    assert body["success"] is False and body["message"]
    assert set(body) <= {"success", "code", "message", "request_id", "details"}, body
    assert UUID_RE.match(body["request_id"]) and headers["X-Request-ID"] == body["request_id"]
    if status == 401:
        assert headers["WWW-Authenticate"] == "HMAC-SHA256"
    return body


def certificate(platform, access, secret, device=None):
    status, _, body = call(platform, "GET", "/api/v1/certificate" + (f"?device={device}" if device else ""),
                           access=access, secret=secret)
    assert status == 200, body
    return body


def events(**filters):
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


# --- successful signing, verified with the card's certificate --------------------------


@pytest.mark.parametrize("algorithm, signature_length, cert_no_length", [("rsa", 172, 8), ("sm2", 88, 16)])
def test_sign_returns_a_signature_that_verifies_with_the_card_certificate(
    card_platforms, algorithm, signature_length, cert_no_length
):
    sim, platform = card_platforms(algorithm)
    access, secret = access_id_create(name=f"ERP {algorithm}")
    text = '<ceb:CEB311Message>订单 12345 "quoted"</ceb:CEB311Message>'

    status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": text}, access=access, secret=secret)
    assert status == 200, body
    assert set(body) == {"signature", "cert_no", "algorithm", "device", "request_id"}
    assert body["request_id"] == headers["X-Request-ID"]
    assert len(body["signature"]) == signature_length and len(body["cert_no"]) == cert_no_length
    assert body["algorithm"] == {"rsa": "RSA-SHA1", "sm2": "SM2-SM3"}[algorithm]
    assert body["device"] == f"card-{algorithm}"

    cert = certificate(platform, access, secret)
    assert cert["cert_no"] == body["cert_no"] and cert["algorithm"] == body["algorithm"]
    assert cert["device"] == f"card-{algorithm}" and cert["ent_name"]
    info = certificate_load(cert["certificate_pem"])
    assert signature_verify(info, text.encode("utf-8"), body["signature"])
    assert not signature_verify(info, (text + " ").encode("utf-8"), body["signature"])

    (event,) = events(request_id=body["request_id"])
    assert (event.outcome, event.http_status, event.endpoint) == ("OK", 200, "POST /api/v1/sign")
    assert event.access_id_id == access.pk and event.secret_version == 1
    assert event.cert_no == body["cert_no"] and event.device == f"card-{algorithm}"
    assert event.data_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert event.client_ip == "127.0.0.1" and event.duration_ms > 0


def test_sign_no_hash_sends_the_sha1_digest(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "payment 179", "no_hash": True},
                           access=access, secret=secret)
    assert status == 200, body
    info = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    # The card signed the SHA-1 digest of the text: a SHA1withRSA signature of the text.
    assert signature_verify(info, b"payment 179", body["signature"])


def test_json_spacing_and_key_order_do_not_matter_the_raw_bytes_are_signed(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    raw = b'{ "no_hash" : false ,\n  "data":"x" }'
    status, _, body = call(platform, "POST", "/api/v1/sign", raw_body=raw, access=access, secret=secret)
    assert status == 200, body


def test_rpc_passes_allowed_methods_through_and_drops_the_client_passwd(rsa):
    sim, platform = rsa
    plain, plain_secret = access_id_create(name="ERP by default")
    assert "rpc" not in plain.scopes and plain.allowed_methods == []
    assert_error(call(platform, "POST", "/api/v1/rpc", {"_method": "cus-sec_SpcGetCertNo", "args": {}},
                      access=plain, secret=plain_secret), 403, "PERMISSION_DENIED")
    access, secret = rpc_access_id_create(name="ERP")
    status, _, body = call(platform, "POST", "/api/v1/rpc", {"_method": "cus-sec_SpcGetCertNo", "args": {}},
                           access=access, secret=secret)
    assert status == 200, body
    assert body["_method"] == "cus-sec_SpcGetCertNo" and body["_status"] == "00"
    assert body["_args"]["Result"] is True and body["_args"]["Error"] == []
    assert re.fullmatch(r"[0-9a-f]{8}", body["_args"]["Data"][0])
    # A wrong client passwd is dropped: the server's PIN signs.
    status, _, body = call(platform, "POST", "/api/v1/rpc",
                           {"_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": "abc", "passwd": "00000000"}},
                           access=access, secret=secret)
    assert status == 200 and body["_args"]["Result"] is True, body


# --- every error code of the spec, from a real request ----------------------------------


def test_missing_headers(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}), 401, "MISSING_AUTH_HEADERS")
    assert set(body["details"]["missing"]) == {"X-Access-Id", "X-Timestamp", "X-Nonce", "X-Signature"}
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret,
                             headers={"X-Signature": None}), 401, "MISSING_AUTH_HEADERS")
    assert body["details"]["missing"] == ["X-Signature"]


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has space in it!!", "ünïcödé-nonce-1234"])
def test_invalid_nonce(rsa, nonce):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret,
                      headers={"X-Nonce": nonce}), 401, "INVALID_NONCE")


@pytest.mark.parametrize("offset_ms", [-301_000, 301_000])
def test_invalid_timestamp_reports_the_server_time(rsa, offset_ms):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    stamp = str(int(time.time() * 1000) + offset_ms)
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret,
                             headers={"X-Timestamp": stamp}), 401, "INVALID_TIMESTAMP")
    assert abs(body["details"]["server_time"] - time.time() * 1000) < 5000


def test_timestamp_in_seconds_is_refused(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret,
                      headers={"X-Timestamp": str(int(time.time()))}), 401, "INVALID_TIMESTAMP")


def test_unknown_access_id_is_audited_with_the_claimed_id(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret,
                             headers={"X-Access-Id": "AKDOESNOTEXIST"}), 401, "INVALID_ACCESS_ID")
    (event,) = events(request_id=body["request_id"])
    assert event.access_key == "AKDOESNOTEXIST" and event.access_id is None
    assert event.outcome == "INVALID_ACCESS_ID" and event.http_status == 401


def test_disabled_and_expired_access_ids(rsa):
    _, platform = rsa
    disabled, secret1 = access_id_create(name="old ERP", enabled=False)
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=disabled, secret=secret1),
                 403, "ACCESS_ID_DISABLED")
    expired, secret2 = access_id_create(
        name="trial", expires_at=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1))
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=expired, secret=secret2),
                 403, "ACCESS_ID_DISABLED")


def test_address_allow_list(rsa):
    _, platform = rsa
    outside, secret = access_id_create(name="branch office", allowed_networks=["10.0.0.0/8", "192.168.1.0/24"])
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=outside, secret=secret),
                 403, "IP_NOT_ALLOWED")
    inside, secret = access_id_create(name="head office", allowed_networks=["10.0.0.0/8", "127.0.0.0/8"])
    status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=inside, secret=secret)
    assert status == 200, body


def test_bad_signature_tells_the_hash_of_the_string_the_server_signed(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body_bytes = b'{"data": "x"}'
    stamp, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
    # Built by hand from the spec, not with the code under test.
    expected = "\n".join(["HMAC-SHA256", "POST", "/api/v1/sign", "b=2&c=%20d", access.key, stamp, nonce,
                          hashlib.sha256(body_bytes).hexdigest()])
    headers = {"X-Access-Id": access.key, "X-Timestamp": stamp, "X-Nonce": nonce,
               "X-Signature": hmac.new(b"not the secret", expected.encode(), hashlib.sha256).hexdigest(),
               "Content-Type": "application/json"}
    status, response_headers, content = http("POST", platform.base + "/api/v1/sign?c=+d&b=2", body=body_bytes,
                                             headers=headers)
    body = assert_error((status, response_headers, json.loads(content)), 401, "SIGNATURE_VALIDATION_FAILED")
    # A client that puts Chinese first reads the message in Chinese; the code and details stay.
    status, _, chinese_content = http("POST", platform.base + "/api/v1/sign?c=+d&b=2", body=body_bytes, headers={
        **headers, "X-Nonce": secrets.token_hex(16), "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    chinese = json.loads(chinese_content)
    assert (status, chinese["code"], chinese["message"]) == (401, "SIGNATURE_VALIDATION_FAILED", "签名验证失败")
    assert set(chinese) == set(body) and chinese["details"]["string_to_sign_sha256"] != body["details"][
        "string_to_sign_sha256"]  # another nonce, another string to sign
    assert body["details"]["string_to_sign_sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    assert secret not in content.decode()

    # The same hand-built string signed with the real secret is accepted.
    headers["X-Signature"] = hmac.new(secret.encode(), expected.encode(), hashlib.sha256).hexdigest()
    status, _, content = http("POST", platform.base + "/api/v1/sign?c=+d&b=2", body=body_bytes, headers=headers)
    assert status == 200, content


def test_a_tampered_body_fails_the_signature(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = json.dumps({"data": "pay 100"}).encode()
    headers = sign_headers("POST", platform.base + "/api/v1/sign", body, access.key, secret)
    status, _, content = http("POST", platform.base + "/api/v1/sign", body=b'{"data": "pay 900"}',
                              headers=dict(headers, **{"Content-Type": "application/json"}))
    assert status == 401 and json.loads(content)["code"] == "SIGNATURE_VALIDATION_FAILED"


def test_duplicate_nonce(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = json.dumps({"data": "x"}).encode()
    headers = dict(sign_headers("POST", platform.base + "/api/v1/sign", body, access.key, secret),
                   **{"Content-Type": "application/json"})
    first = http("POST", platform.base + "/api/v1/sign", body=body, headers=headers)
    assert first[0] == 200
    status, response_headers, content = http("POST", platform.base + "/api/v1/sign", body=body, headers=headers)
    assert_error((status, response_headers, json.loads(content)), 409, "DUPLICATE_REQUEST")


def test_a_nonce_burnt_by_a_forged_request_stays_usable_by_its_owner(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    nonce = secrets.token_hex(16)
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret="forged",
                      headers={"X-Nonce": nonce}), 401, "SIGNATURE_VALIDATION_FAILED")
    body = json.dumps({"data": "x"}).encode()
    stamp = str(int(time.time() * 1000))
    text = "\n".join(["HMAC-SHA256", "POST", "/api/v1/sign", "", access.key, stamp, nonce,
                      hashlib.sha256(body).hexdigest()])
    status, _, content = http("POST", platform.base + "/api/v1/sign", body=body, headers={
        "X-Access-Id": access.key, "X-Timestamp": stamp, "X-Nonce": nonce, "Content-Type": "application/json",
        "X-Signature": hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()})
    assert status == 200, content


def test_scopes_methods_and_devices_are_enforced(rsa):
    _, platform = rsa
    reader, secret = access_id_create(name="reader", scopes=["xml_read"])
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=reader, secret=secret),
                        403, "PERMISSION_DENIED")
    assert "sign" in body["message"]
    assert_error(call(platform, "POST", "/api/v1/rpc", {"_method": "cus-sec_SpcGetCertNo"}, access=reader,
                      secret=secret), 403, "PERMISSION_DENIED")
    assert_error(call(platform, "POST", "/api/v1/access-ids/self/rotate", {}, access=reader, secret=secret),
                 403, "PERMISSION_DENIED")

    rpc_user, secret = access_id_create(name="rpc", scopes=["rpc"], allowed_methods=["cus-sec_SpcGetCertNo"])
    assert_error(call(platform, "POST", "/api/v1/rpc", {"_method": "cus-sec_SpcGetEntName"}, access=rpc_user,
                      secret=secret), 403, "PERMISSION_DENIED")
    # Never passed through, whatever an access ID lists.
    rpc_user.allowed_methods = ["cus-sec_SpcChangePIN"]
    rpc_user.save()
    assert_error(call(platform, "POST", "/api/v1/rpc", {"_method": "cus-sec_SpcChangePIN",
                                                       "args": {"oldPin": "1", "newPin": "2"}},
                      access=rpc_user, secret=secret), 403, "PERMISSION_DENIED")

    other = CardDevice.objects.create(slug="other-card", url="ws://127.0.0.1:9")
    limited, secret = access_id_create(name="one card", devices=[other])
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x", "device": "card-rsa"}, access=limited,
                      secret=secret), 403, "PERMISSION_DENIED")


def test_rate_limit_per_access_id(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP", rate_limit_per_minute=2)
    for _attempt in range(2):
        window = int(time.time() // 60)
        results = [call(platform, "GET", "/api/v1/certificate", access=access, secret=secret) for _ in range(3)]
        if int(time.time() // 60) == window:
            break
    assert [r[0] for r in results] == [200, 200, 429]
    body = assert_error(results[2], 429, "RATE_LIMITED")
    retry_after = int(results[2][1]["Retry-After"])
    assert 1 <= retry_after <= 60 and body["details"]["retry_after"] == retry_after
    other, other_secret = access_id_create(name="other ERP", rate_limit_per_minute=2)
    assert call(platform, "GET", "/api/v1/certificate", access=other, secret=other_secret)[0] == 200


def test_invalid_request_bodies(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"no_hash": True}, access=access, secret=secret),
                        400, "INVALID_REQUEST")
    assert "data" in body["details"]["fields"]
    assert_error(call(platform, "POST", "/api/v1/sign", raw_body=b'{"data": ', access=access, secret=secret),
                 400, "INVALID_REQUEST")
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": ""}, access=access, secret=secret),
                 400, "INVALID_REQUEST")
    assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x", "device": "no-such-card"}, access=access,
                      secret=secret), 400, "INVALID_REQUEST")
    assert_error(call(platform, "POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": -1},
                      access=access, secret=secret), 400, "INVALID_REQUEST")


def test_unknown_path_is_not_found(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = assert_error(call(platform, "GET", "/api/v1/no-such-thing", access=access, secret=secret),
                        404, "NOT_FOUND")
    assert events(request_id=body["request_id"])[0].outcome == "NOT_FOUND"


def test_payload_too_large(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x" * (MAX_BODY + 1)}, access=access,
                             secret=secret), 413, "PAYLOAD_TOO_LARGE")
    assert body["details"]["limit"] == MAX_BODY


def test_card_errors_timeouts_and_unavailable_cards(rsa):
    sim, platform = rsa
    access, secret = rpc_access_id_create(name="ERP")
    # The card refuses (a signature that does not verify): 502 with the card's Error list.
    # (Missing or mistyped args never reach the card: 400, see the hostile-input tests.)
    refused = {"_method": "cus-sec_SpcVerifySignData", "args": {"inData": "x", "signData": "AAAA"}}
    body = assert_error(call(platform, "POST", "/api/v1/rpc", refused, access=access, secret=secret),
                        502, "UKEY_ERROR")
    assert body["details"]["errors"][-1] == "Err:Custom50100"
    assert body["details"]["envelope"]["_args"]["Result"] is False
    # A reader fault on a sign.
    asyncio.run(sim.control("sim_setFaults", {"faults": [{"kind": "reset", "count": 1}]}))
    body = assert_error(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret),
                        502, "UKEY_ERROR")
    assert body["details"]["errors"][-1] == "Err:Custom50070"

    # A card that never answers: 504 after the configured request timeout (1.5 s).
    asyncio.run(sim.control("sim_setFaults", {"faults": [{"kind": "noanswer", "count": 1}]}))
    started = time.monotonic()
    status_headers_body = call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret)
    assert_error(status_headers_body, 504, "UKEY_TIMEOUT")
    assert 1.4 < time.monotonic() - started < 10
    poll(lambda: (s := device_status_get("card-rsa")) and s.can_sign, 15, "card reconnected after the timeout")

    # A card with no gateway: 503 at once, with Retry-After.
    CardDevice.objects.create(slug="unplugged", url="ws://127.0.0.1:9")
    status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": "x", "device": "unplugged"},
                                 access=access, secret=secret)
    assert_error((status, headers, body), 503, "UKEY_UNAVAILABLE")
    assert int(headers["Retry-After"]) >= 1
    outcomes = [e.outcome for e in events(access_id=access, event_type=AuditEvent.API_REQUEST)]
    assert outcomes == ["UKEY_ERROR", "UKEY_ERROR", "UKEY_TIMEOUT", "UKEY_UNAVAILABLE"]


def test_nonce_store_down_fails_closed(tmp_path, rsa):
    """Its own Redis, stopped under a running web process: 503, nothing accepted."""
    redis_url = _start_redis(tmp_path)
    redis_proc = _started[-1]
    env = services_env(test_database_url(), tmp_path / "var", REDIS_URL=redis_url, UKEY_URL="ws://127.0.0.1:9")
    web = Platform(env, tmp_path, args=("--web-only",), name="web").start(migrate=False)
    try:
        access, secret = access_id_create(name="ERP")
        status, _, body = call(web, "GET", "/api/v1/no-card-needed", access=access, secret=secret)
        assert status == 404
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        status, headers, body = call(web, "GET", "/api/v1/certificate", access=access, secret=secret)
        assert_error((status, headers, body), 503, "NONCE_STORE_UNAVAILABLE")
        assert headers["Retry-After"]
        (event,) = events(request_id=body["request_id"])
        assert event.outcome == "NONCE_STORE_UNAVAILABLE" and event.access_id_id == access.pk
    finally:
        web.stop()
    # A --web-only process leaves webhook deliveries to the main process (which does deliver).
    assert "webhook delivery worker started" not in web.log
    assert "webhook delivery worker started" in rsa[1].log


# --- replay across processes, rotation ----------------------------------------------------


def test_the_same_request_fired_50_times_at_two_processes_is_accepted_once(rsa, tmp_path):
    _, platform = rsa
    second = Platform(dict(platform.env), tmp_path, args=("--web-only",), name="second").start(migrate=False)
    try:
        access, secret = access_id_create(name="ERP")
        body = json.dumps({"data": "declaration 4403"}).encode()
        headers = dict(sign_headers("POST", platform.base + "/api/v1/sign", body, access.key, secret),
                       **{"Content-Type": "application/json"})
        bases = [platform.base, second.base]
        barrier = threading.Barrier(50)

        def fire(i):
            barrier.wait()
            return http("POST", bases[i % 2] + "/api/v1/sign", body=body, headers=headers)[0]

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(fire, range(50)))
    finally:
        second.stop()
    assert sorted(statuses).count(200) == 1 and statuses.count(409) == 49, statuses
    outcomes = [e.outcome for e in events(access_id=access, event_type=AuditEvent.API_REQUEST)]
    assert len(outcomes) == 50 and outcomes.count("OK") == 1 and outcomes.count("DUPLICATE_REQUEST") == 49


def test_rotation_over_the_api_with_grace(rsa):
    _, platform = rsa
    access, first = access_id_create(name="ERP")
    status, headers, body = call(platform, "POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": 2},
                                 access=access, secret=first)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert set(body) == {"access_id", "secret", "secret_version", "previous_valid_until"}
    assert body["access_id"] == access.key and body["secret_version"] == 2
    second = body["secret"]
    assert second != first and len(second) >= 43
    until = datetime.datetime.fromisoformat(body["previous_valid_until"])
    assert 0 < (until - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 2

    # Both work during the grace period; the server records which one each request used.
    assert certificate(platform, access, first) and certificate(platform, access, second)
    versions = [e.secret_version for e in events(access_id=access, endpoint="GET /api/v1/certificate")]
    assert versions == [1, 2]
    time.sleep(max(0.0, (until - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 0.2)
    assert_error(call(platform, "GET", "/api/v1/certificate", access=access, secret=first),
                 401, "SIGNATURE_VALIDATION_FAILED")
    assert certificate(platform, access, second)

    # No grace: the old secret is refused at once.
    status, _, body = call(platform, "POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": 0},
                           access=access, secret=second)
    assert status == 200 and body["previous_valid_until"] is None
    third = body["secret"]
    assert_error(call(platform, "GET", "/api/v1/certificate", access=access, secret=second),
                 401, "SIGNATURE_VALIDATION_FAILED")
    assert certificate(platform, access, third)

    # A second rotation with grace revokes the older previous secret at once.
    fourth = call(platform, "POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": 3600},
                  access=access, secret=third)[2]["secret"]
    fifth = call(platform, "POST", "/api/v1/access-ids/self/rotate", {}, access=access, secret=fourth)[2]["secret"]
    assert certificate(platform, access, fourth) and certificate(platform, access, fifth)
    assert_error(call(platform, "GET", "/api/v1/certificate", access=access, secret=third),
                 401, "SIGNATURE_VALIDATION_FAILED")
    rotations = events(access_id=access, event_type=AuditEvent.ACCESS_ID_ROTATED)
    assert [e.details["new_version"] for e in rotations] == [2, 3, 4, 5]
    assert all(e.source == "api" and e.request_id and e.http_status == 200 for e in rotations)
    access.refresh_from_db()
    assert access.last_secret_version == 5


# --- no secret or PIN anywhere ----------------------------------------------------------------


def test_no_secret_or_pin_in_logs_responses_or_database(rsa):
    sim, platform = rsa
    access, first = rpc_access_id_create(name="ERP")
    responses = []
    responses.append(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=first))
    responses.append(call(platform, "POST", "/api/v1/rpc", {"_method": "cus-sec_SpcSignDataAsPEM",
                                                            "args": {"inData": "y", "passwd": sim.pin}},
                          access=access, secret=first))
    responses.append(call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=first + "x"))
    rotated = call(platform, "POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": 60}, access=access,
                   secret=first)
    second = rotated[2]["secret"]
    responses.append(call(platform, "GET", "/api/v1/certificate", access=access, secret=second))
    assert [r[0] for r in responses] == [200, 200, 401, 200]

    everything = "\n".join(json.dumps(r[2]) + str(r[1]) for r in responses)
    everything += "\n" + platform.log + "\n" + database_text()
    for needle in (first, second, sim.pin, base64.b64encode(sim.pin.encode()).decode()):
        assert needle not in everything
