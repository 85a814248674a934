"""Defects an independent attack found, each shown fixed against a running platform: no
signature handed to the wrong caller, no request without its audit event, no cheap way to
stall the server, no input that gets a 500 or is silently coerced."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import time

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509

from accessids.services import access_id_create, access_id_set_enabled
from audit.chain import chain_verify
from audit.models import AuditEvent
from audit.services import audit_event_record
from core.certs import certificate_load, signature_verify
from core.workpool import FairPool
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import ROOT, CardPlatforms, Platform, services_env
from tests.test_api import call, certificate
from tests.test_xml_api import CEB621, PAY179_RAW

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def hardening_platforms(django_db_setup, django_db_blocker, tmp_path_factory):
    """Platforms with their own simulator: "swap" answers one signing request in ten with the
    previous request's signature (a control or relay that mixes answers up)."""

    def start(kind: str):
        tmp = tmp_path_factory.mktemp(f"hardening-{kind}")
        extra = ["--fault", "swap", "--fault-rate", "0.1"] if kind == "swap" else []
        sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys"), extra=extra).start()
        with django_db_blocker.unblock():
            env = services_env(test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                               UKEY_DEFAULT_DEVICE=f"hardening-{kind}", UKEY_RECONNECT_MAX="0.5")
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start, db_blocker=django_db_blocker)
    yield platforms
    platforms.stop()


def test_a_control_that_mixes_answers_up_never_hands_a_signature_to_the_wrong_caller(hardening_platforms):
    _, platform = hardening_platforms("swap")
    access, secret = access_id_create(name="ERP, 200 orders")
    info = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    outcomes: dict[str, tuple[int, dict]] = {}

    def client(worker: int):
        for n in range(25):
            text = f"CEB311 order {worker}-{n} ¥{worker * 1000 + n}.00"
            for _attempt in range(20):  # the connection is reset after a mix-up: wait for it
                status, _, body = call(platform, "POST", "/api/v1/sign", {"data": text}, access=access,
                                       secret=secret)
                if status != 503:
                    break
                time.sleep(0.2)
            outcomes[text] = (status, body)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == 200
    signed = {text: body for text, (status, body) in outcomes.items() if status == 200}
    refused = {text: body for text, (status, body) in outcomes.items() if status != 200}
    wrong = [text for text, body in signed.items() if not signature_verify(info, text.encode(), body["signature"])]
    assert wrong == []  # zero signatures over somebody else's data handed out
    assert signed and refused, (len(signed), len(refused))
    assert {(outcomes[t][0], b["code"]) for t, b in refused.items()} == {(502, "UKEY_ERROR")}
    assert all("was not handed out" in body["message"] for body in refused.values())
    mixups = AuditEvent.objects.filter(event_type=AuditEvent.CARD_ERROR, outcome="ANSWER_MISMATCH",
                                       device="hardening-swap")
    assert mixups.count() >= len(refused) and "connection reset" in mixups.first().message
    # Each refused request still has its own audit event, with the outcome the caller saw.
    request_ids = [body["request_id"] for body in refused.values()]
    assert AuditEvent.objects.filter(request_id__in=request_ids, event_type=AuditEvent.API_REQUEST,
                                     outcome="UKEY_ERROR").count() == len(refused)


def test_rpc_signatures_are_checked_too(hardening_platforms):
    _, platform = hardening_platforms("swap")
    access, secret = access_id_create(name="rpc client", scopes=["sign", "rpc"],
                                      allowed_methods=["cus-sec_SpcSignDataAsPEM", "cus-sec_SpcGetSignCertAsPEM"])
    info = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    seen = {200: 0, 502: 0}
    for n in range(60):
        text = f"rpc order {n}"
        status, _, body = call(platform, "POST", "/api/v1/rpc",
                               {"_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": text}},
                               access=access, secret=secret)
        if status == 503:
            time.sleep(0.3)
            continue
        seen[status] += 1
        if status == 200:
            assert signature_verify(info, text.encode(), body["_args"]["Data"][0])
        else:
            assert body["code"] == "UKEY_ERROR", body
    assert seen[200] and seen[502], seen


# --- every request leaves its audit event, and is refused before the card ---------------------


def card_operations(sim) -> int:
    return asyncio.run(sim.control("sim_stats")).data[0]["operations"]


def test_nul_in_the_path_or_a_copied_field_is_refused_with_one_event_and_the_card_untouched(hardening_platforms):
    sim, platform = hardening_platforms("plain")
    access, secret = access_id_create(name="NUL sender")
    before = card_operations(sim)
    pay179 = json.loads(PAY179_RAW)
    pay179["sessionID"] = "session\u0000id"
    cases = {
        "NUL in the path": ("POST", "/api/v1/sign%00", {"data": "x"}),
        "NUL in a path under a real endpoint": ("POST", "/api/v1/sign/xml%00x", {"data": "x"}),
        "NUL in the 179 sessionID": ("POST", "/api/v1/sign/179", pay179),
        "NUL in the data to sign": ("POST", "/api/v1/sign", {"data": "a\u0000b"}),
        "NUL in a search text": ("GET", "/api/v1/xml-documents?q=order%00", None),
    }
    for name, (method, path, payload) in cases.items():
        status, _, body = call(platform, method, path, payload, access=access, secret=secret)
        assert (status, body.get("code")) == (400, "INVALID_REQUEST"), (name, body)
        (event,) = AuditEvent.objects.filter(request_id=body["request_id"])
        assert event.outcome == "INVALID_REQUEST" and event.http_status == 400, name
        assert "\x00" not in event.endpoint + event.message, name
    assert card_operations(sim) == before  # no card operation for any of them
    # The NUL path is in the event, escaped, with the SHA-256 of what the request really had.
    (event,) = AuditEvent.objects.filter(endpoint="POST /api/v1/sign\\x00")
    assert event.details["escaped_sha256"]["endpoint"] == hashlib.sha256(b"POST /api/v1/sign\x00").hexdigest()


def test_any_text_is_stored_in_an_audit_event_and_the_chain_still_verifies():
    fields = {"endpoint": "POST /x\x00y", "message": "bad \ud800 surrogate \x00", "device": "d\x00",
              "details": {"session\x00": ["a\x00", {"k": "\udcff"}], "n": 1}}
    event = audit_event_record(event_type=AuditEvent.API_REQUEST, outcome="INVALID_REQUEST", **fields)
    event.refresh_from_db()
    assert event.endpoint == "POST /x\\x00y" and event.device == "d\\x00"
    assert event.message == "bad \\ud800 surrogate \\x00"
    assert event.details["session\\x00"] == ["a\\x00", {"k": "\\udcff"}] and event.details["n"] == 1
    assert set(event.details["escaped_sha256"]) == {"endpoint", "message", "device", "details"}
    assert chain_verify().ok


# --- no cheap way to stall it ------------------------------------------------------------------


def _certificate_with_rsa_modulus(pem: str, bits: int) -> str:
    cert = asn1_x509.Certificate.load(certificate_load(pem).der)
    modulus = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    tbs = cert["tbs_certificate"]
    tbs["subject_public_key_info"] = asn1_keys.PublicKeyInfo({
        "algorithm": {"algorithm": "rsa"},
        "public_key": asn1_keys.RSAPublicKey({"modulus": modulus, "public_exponent": 65537}),
    })
    cert["tbs_certificate"] = tbs
    return base64.b64encode(cert.dump(force=True)).decode("ascii")


def test_a_certificate_with_a_huge_rsa_key_is_refused_in_milliseconds(hardening_platforms):
    _, platform = hardening_platforms("plain")
    access, secret = access_id_create(name="verifier")
    status, _, signed = call(platform, "POST", "/api/v1/sign/xml", {"xml": CEB621}, access=access, secret=secret)
    assert status == 200, signed
    pem = certificate(platform, access, secret)["certificate_pem"]
    real_b64 = certificate_load(pem).der_base64
    assert real_b64 in signed["signed_xml"]
    for bits in (45_000, 8192, 512):
        hostile = signed["signed_xml"].replace(real_b64, _certificate_with_rsa_modulus(pem, bits))
        started = time.monotonic()
        status, _, body = call(platform, "POST", "/api/v1/verify/xml", {"xml": hostile}, access=access,
                               secret=secret)
        assert time.monotonic() - started < 0.5, bits
        assert (status, body["code"], body["details"]["reason"]) == (400, "INVALID_REQUEST", "CERTIFICATE_REFUSED")
        assert f"RSA key of {bits} bits" in body["message"]
    # The real one still verifies; /verify/xml needs its scope.
    status, _, body = call(platform, "POST", "/api/v1/verify/xml", {"xml": signed["signed_xml"]}, access=access,
                           secret=secret)
    assert status == 200 and body["valid"] is True
    no_scope, no_scope_secret = access_id_create(name="no verify", scopes=["sign"])
    status, _, body = call(platform, "POST", "/api/v1/verify/xml", {"xml": signed["signed_xml"]}, access=no_scope,
                           secret=no_scope_secret)
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")


async def test_one_access_id_cannot_take_the_whole_xml_pool():
    pool = FairPool(4)
    assert pool.share == 2
    held: list[str] = []
    release = asyncio.Event()

    async def work(key: str):
        async with pool.slot(key):
            held.append(key)
            await release.wait()

    greedy = [asyncio.create_task(work("greedy")) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert held == ["greedy", "greedy"]  # its share, not the pool
    honest = asyncio.create_task(work("honest"))
    await asyncio.sleep(0.05)
    assert held.count("honest") == 1 and pool.busy == 3
    release.set()
    await asyncio.gather(*greedy, honest)
    assert pool.busy == 0 and len(held) == 11


# --- the smaller ones ----------------------------------------------------------------------------


def test_a_disabled_access_id_looks_like_any_other_to_someone_without_its_secret(hardening_platforms):
    _, platform = hardening_platforms("plain")
    access, secret = access_id_create(name="disabled")
    access_id_set_enabled(access_id=access, enabled=False)
    status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret="not the secret")
    assert (status, body["code"]) == (401, "SIGNATURE_VALIDATION_FAILED")
    status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret)
    assert (status, body["code"]) == (403, "ACCESS_ID_DISABLED")


def test_admin_logins_lock_out_a_user_and_address_after_five_failures(client, django_user_model):
    django_user_model.objects.create_superuser("chief", password="right-password-1")
    django_user_model.objects.create_superuser("deputy", password="right-password-2")
    login = "/admin/login/?next=/admin/"
    for _ in range(4):
        response = client.post(login, {"username": "chief", "password": "wrong"})
        assert response.status_code == 200 and b"Please enter the correct" in response.content
    response = client.post(login, {"username": "chief", "password": "wrong"})  # the fifth locks
    assert response.status_code == 429 and 'id="login-locked"' in response.content.decode()
    # The right password no longer gets in, from this address, for a while.
    response = client.post(login, {"username": "chief", "password": "right-password-1"})
    assert response.status_code == 429 and 'id="login-locked"' in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another user from the same address is not locked out.
    response = client.post(login, {"username": "deputy", "password": "right-password-2"})
    assert response.status_code == 302 and client.session["_auth_user_id"]


def test_admin_pages_carry_a_content_security_policy(admin_client):
    response = admin_client.get("/admin/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"


def _settings_in(env: dict) -> dict:
    code = ("import json; from django.conf import settings as s; print(json.dumps({k: getattr(s, k, None) for k in "
            "('SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SECURE_HSTS_SECONDS', 'SECURE_SSL_REDIRECT', "
            "'SECURE_PROXY_SSL_HEADER')}))")
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_https_deployments_turn_on_secure_cookies_hsts_and_the_proxy_header(tmp_path):
    plain = _settings_in({"SIGNPLATFORM_VAR_DIR": str(tmp_path / "a")})
    assert plain == {"SESSION_COOKIE_SECURE": False, "CSRF_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0,
                     "SECURE_SSL_REDIRECT": False, "SECURE_PROXY_SSL_HEADER": None}
    https = _settings_in({"SIGNPLATFORM_VAR_DIR": str(tmp_path / "b"), "SECURE_COOKIES": "1",
                          "SECURE_HSTS_SECONDS": "31536000", "SECURE_SSL_REDIRECT": "1", "SECURE_PROXY_SSL_HEADER": "1"})
    assert https == {"SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "SECURE_HSTS_SECONDS": 31536000,
                     "SECURE_SSL_REDIRECT": True, "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}


def test_var_and_the_sqlite_database_are_private_to_their_user(tmp_path):
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True, timeout=120,
                   env={**env, "SIGNPLATFORM_VAR_DIR": str(var)})
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for name in ("db.sqlite3", "django-secret-key", "audit-chain.key"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
    # An existing var/ that others could read is tightened at the next start.
    var.chmod(0o755)
    (var / "db.sqlite3").chmod(0o644)
    subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, check=True, timeout=120, capture_output=True,
                   env={**env, "SIGNPLATFORM_VAR_DIR": str(var)})
    assert stat.S_IMODE(var.stat().st_mode) == 0o700 and stat.S_IMODE((var / "db.sqlite3").stat().st_mode) == 0o600
