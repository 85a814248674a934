"""Webhooks in the cp-md5 format (the Go chinaport-proxy's `ukey_malfunction` / `api_audit`
notifications, MD5-signed): a receiver that checks them exactly as one written for the proxy
does accepts the platform's card failures, its audit feed and its test events; a wrong secret,
another path or a changed body is refused; no request or response body (signed data) is ever
sent; native webhooks are unchanged; queued notifications keep their format; the admin
switches the format and audits it; then a real platform notifying a proxy receiver of an
/rpc request and of its card going away."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from urllib.parse import unquote, urlsplit

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_event_record
from signclient import sign_headers as native_sign_headers
from tests.admin_users import client_for, fast_hashers, user_make  # noqa: F401  (fast_hashers: autouse)
from tests.conftest import SimulatorProcess, rpc_access_id_create, test_database_url
from tests.live import Platform, http, only_card_row, poll, services_env
from tests.receivers import Received, Receiver, signature_valid
from tests.workers import WorkerThread
from webhooks import cp_md5, services
from webhooks.models import CP_MD5, NATIVE, Webhook, WebhookDelivery
from webhooks.worker import WebhookWorker, body_bytes

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

SECRET = "cp-proxy-receiver-secret-0123"
SIGNED_TEXT = "<ceb:CEB311Message>订单 SO-42 机密</ceb:CEB311Message>"
PROXY_WINDOW_MS = 3000  # the proxy's receivers accept a timestamp within 3 s


# --- a receiver written for the proxy -----------------------------------------------------------


def proxy_signature(method: str, path: str, timestamp: str, body: bytes, secret: str) -> str:
    """What a proxy receiver computes: MD5(METHOD + path + timestamp + raw body + secret)."""
    return hashlib.md5(method.upper().encode() + path.encode() + timestamp.encode() + body + secret.encode()
                       ).hexdigest()


def proxy_accepts(request: Received, secret: str, now_ms: float | None = None) -> str:
    """"" when a proxy receiver accepts `request`, else why not."""
    timestamp = request.headers.get("x-timestamp", "")
    signature = request.headers.get("x-signature", "")
    if not timestamp.isdigit() or not signature:
        return "missing X-Timestamp or X-Signature"
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    if abs(now_ms - int(timestamp)) > PROXY_WINDOW_MS:
        return "timestamp out of window"
    path = unquote(urlsplit(request.path).path)  # what Go's r.URL.Path holds
    if proxy_signature(request.method, path, timestamp, request.body, secret) != signature:
        return "invalid signature"
    return ""


class ProxyReceiver(Receiver):
    """An HTTP server on 127.0.0.1 that checks every notification like a receiver written for
    the chinaport-proxy: 200 when the MD5 signature verifies, 401 {"error": ...} otherwise."""

    def __init__(self, secret: str = SECRET) -> None:
        super().__init__()
        self.secret = secret
        self.verdicts: list[str] = []  # "" = accepted

    def url(self, path: str = "/webhook/failure") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, request: Received) -> tuple[int, bytes]:
        verdict = proxy_accepts(request, self.secret)
        if not verdict:
            try:
                json.loads(request.body)
            except ValueError:
                verdict = "body is not JSON"
        self.verdicts.append(verdict)
        return (401 if verdict else 200), json.dumps({"error": verdict} if verdict else {"ok": True}).encode()


@pytest.fixture
def proxy():
    r = ProxyReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def worker(transactional_db):
    w = WorkerThread(WebhookWorker()).start()
    yield w.worker
    w.stop()


def make(url: str, **fields) -> Webhook:
    fields.setdefault("name", "chinaport-proxy receiver")
    fields.setdefault("payload_format", CP_MD5)
    return services.webhook_create(url=url, secret=fields.pop("secret", SECRET), **fields)


def fresh(delivery: WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery.objects.get(pk=delivery.pk)


def card_event(event_type: str, message: str, outcome: str, device: str = "card-a") -> AuditEvent:
    return audit_event_record(event_type=event_type, source="gateway", device=device, outcome=outcome,
                              message=message, details={"url": "ws://127.0.0.1:61232"})


def api_event(**fields) -> AuditEvent:
    values = {"event_type": AuditEvent.API_REQUEST, "source": "api", "access_key": "AK0123ABCD",
              "client_ip": "10.1.2.3", "device": "card-a", "secret_version": 1, "http_status": 200,
              "duration_ms": 41.6, "message": ""}
    values.update(fields)
    return audit_event_record(**values)


def assert_no_signed_data(body: bytes) -> None:
    """Neither the proxy's request/response objects nor anything of the data signed."""
    payload = json.loads(body)
    assert "request" not in payload and "response" not in payload, payload
    text = body.decode("utf-8")
    for forbidden in (SIGNED_TEXT, "inData", "passwd", "signature", hashlib.sha256(SIGNED_TEXT.encode()).hexdigest(),
                      "0A1B2C3D", SECRET):
        assert forbidden not in text, forbidden


# --- card failures: ukey_malfunction -------------------------------------------------------------


def test_card_failures_reach_a_proxy_receiver_as_ukey_malfunction(proxy, worker):
    hook = make(proxy.url("/webhook/failure"), card_failures=True, audit_feed=False)
    failures = [
        (AuditEvent.CARD_ERROR, "UKEY_ERROR", "cus-sec_SpcSignDataAsPEM: 口令错误 (Custom50070)",
         "operation_failure", "cus-sec_SpcSignDataAsPEM"),
        (AuditEvent.CARD_DISCONNECTED, "CARD_DISCONNECTED", "disconnected: connection closed by the E-Port control",
         "connection_failure", ""),
        (AuditEvent.CARD_PROBE_FAILED, "PROBE_FAILED", "health probe cus-sec_SpcGetCertNo failed: timed out",
         "health_check_failure", ""),
        (AuditEvent.AGENT_RESTARTED, "AGENT_RESTARTED", "the agent restarted a stalled E-Port client",
         "health_check_failure", ""),
    ]
    events = [card_event(event_type, message, outcome) for event_type, outcome, message, _, _ in failures]
    card_event(AuditEvent.CARD_CONNECTED, "connected", "OK")  # not a failure: not sent
    requests = proxy.wait(4)
    poll(lambda: WebhookDelivery.objects.filter(status="delivered").count() == 4, 5, "all four delivered")
    assert WebhookDelivery.objects.count() == 4  # nothing for the card connecting
    assert proxy.verdicts == [""] * 4  # every one accepted by the proxy receiver

    by_event = {r.headers["x-webhook-event"]: r for r in requests}
    for event, (event_type, outcome, message, kind, method) in zip(events, failures, strict=True):
        request = by_event[event_type]
        delivery = WebhookDelivery.objects.get(audit_event_id=event.pk)
        assert delivery.payload_format == CP_MD5 and delivery.webhook_id == hook.pk
        assert request.body == body_bytes(delivery.payload)  # the stored body is the exact bytes sent and signed
        assert request.json() == {
            "event": "ukey_malfunction",
            "timestamp": int(event.created_at.timestamp() * 1000),
            "error": message,
            "details": {"type": kind, "method": method, "errors": [message], "device": "card-a", "outcome": outcome},
        }
        h = request.headers
        assert request.path == "/webhook/failure" and h["content-type"] == "application/json"
        assert h["x-delivery-id"] == str(delivery.pk) and h["x-delivery-attempt"] == "1"
        assert "x-nonce" not in h and "x-access-id" not in h  # the proxy's scheme: timestamp + signature only
        # The signature written out: lowercase hex MD5 of POST + path + timestamp + body + secret.
        expected = hashlib.md5(b"POST/webhook/failure" + h["x-timestamp"].encode() + request.body
                               + SECRET.encode()).hexdigest()
        assert h["x-signature"] == expected and abs(int(h["x-timestamp"]) - time.time() * 1000) < 60_000
        assert_no_signed_data(request.body)


# --- the audit feed: api_audit ---------------------------------------------------------------------


def test_the_audit_feed_reaches_a_proxy_receiver_as_api_audit_without_any_body(proxy, worker):
    make(proxy.url("/webhook/audit"), card_failures=False, audit_feed=True)
    signed = api_event(request_id="2f1c7c0e-6b7e-4c55-9d8f-0d1f0d1f0d1f", endpoint="POST /rpc",
                       cert_no="0A1B2C3D", data_sha256=hashlib.sha256(SIGNED_TEXT.encode()).hexdigest(),
                       details={"method": "cus-sec_SpcSignDataAsPEM"})
    failed = api_event(request_id="9b2e7c0e-1111-4c55-9d8f-0d1f0d1f0d1f", endpoint="POST /api/v1/sign",
                       outcome="UKEY_TIMEOUT", http_status=504, duration_ms=1500.4,
                       message="the card did not answer within 1.5 s", details={"fields": ["data"]})
    card_event(AuditEvent.CARD_ERROR, "cus-sec_SpcGetCertNo: failed", "UKEY_ERROR")  # not for this webhook
    proxy.wait(2)
    poll(lambda: WebhookDelivery.objects.filter(status="delivered").count() == 2, 5, "both delivered")
    assert proxy.verdicts == ["", ""]
    bodies = {r.json()["request_id"]: r for r in proxy.requests}

    ok = bodies[signed.request_id].json()
    assert ok == {
        "event": "api_audit", "timestamp": int(signed.created_at.timestamp() * 1000),
        "request_id": signed.request_id, "method": "cus-sec_SpcSignDataAsPEM", "success": True, "error": "",
        "duration_ms": 42, "endpoint": "POST /rpc", "http_status": 200, "access_id": "AK0123ABCD",
        "device": "card-a",
    }
    bad = bodies[failed.request_id].json()
    assert (bad["method"], bad["success"], bad["duration_ms"]) == ("POST /api/v1/sign", False, 1500)
    assert bad["error"] == "UKEY_TIMEOUT: the card did not answer within 1.5 s" and bad["http_status"] == 504
    # Types a receiver written in Go for the proxy decodes: int milliseconds, bool, string.
    for body in (ok, bad):
        assert type(body["timestamp"]) is int and type(body["duration_ms"]) is int
        assert type(body["success"]) is bool and type(body["error"]) is str
    for request in proxy.requests:
        assert request.headers["x-webhook-event"] == "api.request"
        assert_no_signed_data(request.body)


# --- refused: a wrong secret, another path, a changed body ---------------------------------------------


def test_a_wrong_secret_is_detected_by_the_receiver(proxy, worker, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30  # one attempt is enough here
    make(proxy.url("/webhook/failure"), secret=SECRET + "-not-the-receivers")
    event = card_event(AuditEvent.CARD_DISCONNECTED, "disconnected", "CARD_DISCONNECTED")
    (request,) = proxy.wait(1)
    assert proxy.verdicts == ["invalid signature"]
    delivery = WebhookDelivery.objects.get(audit_event_id=event.pk)
    poll(lambda: fresh(delivery).last_http_status == 401, 5, "the receiver's refusal recorded")
    delivery = fresh(delivery)
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.last_error == 'HTTP 401 Unauthorized: {"error": "invalid signature"}'
    # With the webhook's own secret it verifies; tampered with, or at another path, it does not.
    assert proxy_accepts(request, SECRET + "-not-the-receivers") == ""
    tampered = Received(request.at, request.method, request.path, request.headers,
                        request.body.replace(b"connection_failure", b"operation_failure"))
    assert proxy_accepts(tampered, SECRET + "-not-the-receivers") == "invalid signature"
    moved = Received(request.at, request.method, "/webhook/other", request.headers, request.body)
    assert proxy_accepts(moved, SECRET + "-not-the-receivers") == "invalid signature"
    # A replayed copy after the proxy's window is refused too.
    late = time.time() * 1000 + PROXY_WINDOW_MS + 1000
    assert proxy_accepts(request, SECRET + "-not-the-receivers", now_ms=late) == "timestamp out of window"


def test_the_signature_covers_the_decoded_path_without_the_query(proxy, worker):
    make(proxy.url("/hooks/%E6%B5%B7%E5%85%B3/in?team=customs&b=2"))
    card_event(AuditEvent.CARD_PROBE_FAILED, "probe failed", "PROBE_FAILED")
    (request,) = proxy.wait(1)
    assert request.path == "/hooks/%E6%B5%B7%E5%85%B3/in?team=customs&b=2" and proxy.verdicts == [""]
    h = request.headers
    assert h["x-signature"] == hashlib.md5("POST/hooks/海关/in".encode() + h["x-timestamp"].encode() + request.body
                                           + SECRET.encode()).hexdigest()
    assert cp_md5.signature("/hooks/海关/in", h["x-timestamp"], request.body, SECRET) == h["x-signature"]


# --- test events -----------------------------------------------------------------------------------


def test_a_test_event_is_one_a_proxy_receiver_accepts(proxy, worker):
    feed = make(proxy.url("/webhook/audit"), name="audit", card_failures=False, audit_feed=True)
    alerts = make(proxy.url("/webhook/failure"), name="alerts", card_failures=True, audit_feed=False)
    feed_test = services.webhook_send_test(webhook=feed)
    alert_test = services.webhook_send_test(webhook=alerts)
    proxy.wait(2)
    poll(lambda: WebhookDelivery.objects.filter(status="delivered").count() == 2, 5, "both delivered")
    assert proxy.verdicts == ["", ""]
    by_path = {r.path: r for r in proxy.requests}

    audit = by_path["/webhook/audit"]
    assert audit.headers["x-webhook-event"] == "webhook.test" and audit.headers["x-delivery-id"] == str(feed_test.pk)
    body = audit.json()
    assert {k: body[k] for k in ("event", "request_id", "method", "success", "error", "duration_ms", "test")} == {
        "event": "api_audit", "request_id": str(feed_test.pk), "method": "webhook.test", "success": True,
        "error": "", "duration_ms": 0, "test": True}
    assert type(body["timestamp"]) is int and "test notification" in body["message"]

    alert = by_path["/webhook/failure"].json()
    assert alert["event"] == "ukey_malfunction" and alert["test"] is True
    assert alert["details"]["type"] in ("operation_failure", "connection_failure", "health_check_failure")
    assert "not a card failure" in alert["error"] and fresh(alert_test).payload == alert


# --- native webhooks are unchanged; queued notifications keep their format ---------------------------------


def test_native_webhooks_are_unchanged_next_to_a_cp_md5_one(proxy, worker):
    native_receiver = Receiver().start()
    try:
        native = services.webhook_create(name="native", url=native_receiver.url("/hooks/native"), secret=SECRET,
                                         card_failures=True)
        assert native.payload_format == NATIVE  # the default
        make(proxy.url("/webhook/failure"))
        event = card_event(AuditEvent.CARD_DISCONNECTED, "disconnected: connection closed", "CARD_DISCONNECTED")
        (request,) = native_receiver.wait(1)
        proxy.wait(1)
        delivery = WebhookDelivery.objects.get(webhook=native)
        assert delivery.payload_format == NATIVE
        assert request.json() == delivery.payload == {
            "id": str(delivery.pk), "event": "card.disconnected",
            "occurred_at": event.created_at.astimezone(datetime.timezone.utc).isoformat(),
            "device": "card-a", "outcome": "CARD_DISCONNECTED", "message": "disconnected: connection closed",
            "audit_event_id": event.pk,
        }
        h = request.headers
        assert h["x-access-id"] == native.key and h["x-nonce"] and signature_valid(request, SECRET)
        assert proxy_accepts(request, SECRET) != ""  # native notifications are not MD5-signed
    finally:
        native_receiver.stop()


def test_queued_notifications_keep_the_format_they_were_written_in(proxy, transactional_db):
    hook = make(proxy.url("/webhook/failure"))
    event = card_event(AuditEvent.CARD_ERROR, "cus-sec_SpcGetCertNo: failed (Custom1)", "UKEY_ERROR")
    hook.payload_format = NATIVE  # switched after the first failure was queued
    services.webhook_update(webhook=hook, changed=["payload_format"])
    card_event(AuditEvent.CARD_ERROR, "cus-sec_SpcGetCertNo: failed again (Custom1)", "UKEY_ERROR")
    w = WorkerThread(WebhookWorker()).start()
    try:
        proxy.wait(2)
    finally:
        w.stop()
    first = WebhookDelivery.objects.get(audit_event_id=event.pk)
    assert first.payload_format == CP_MD5 and first.payload["event"] == "ukey_malfunction"
    assert proxy.verdicts[[r.headers["x-delivery-id"] for r in proxy.requests].index(str(first.pk))] == ""
    later = WebhookDelivery.objects.exclude(pk=first.pk).get()
    assert later.payload_format == NATIVE and later.payload["event"] == "card.error"  # the new format from now on


# --- the admin ----------------------------------------------------------------------------------------


def test_the_admin_chooses_the_format_per_webhook_and_audits_the_change():
    client = client_for(user_make("ops", "add_webhook", "change_webhook", "view_webhook"))
    add = reverse("admin:webhooks_webhook_add")
    page = client.get(add).content.decode()
    assert 'name="payload_format"' in page and '<option value="native" selected>' in page
    assert '<option value="cp-md5">' in page and "MD5 signature is weak" in page
    form = {"name": "Proxy-era ERP", "url": "https://erp.example.invalid/webhook/failure", "card_failures": "on",
            "enabled": "on", "secret": SECRET, "payload_format": "cp-md5"}
    assert client.post(add, {**form, "payload_format": "sha1"}).status_code == 200  # not a choice: refused
    assert not Webhook.objects.exists()
    assert client.post(add, form).status_code == 302
    hook = Webhook.objects.get()
    assert hook.payload_format == CP_MD5
    created = AuditEvent.objects.get(event_type=services.WEBHOOK_CREATED)
    assert created.details["payload_format"] == "cp-md5" and "cp-md5 format" in created.message
    assert created.actor_name == "ops"

    changelist = client.get(reverse("admin:webhooks_webhook_changelist")).content.decode()
    assert "cp-md5" in changelist and "weak" in changelist
    assert "Proxy-era ERP" in client.get(reverse("admin:webhooks_webhook_changelist"),
                                         {"payload_format__exact": "cp-md5"}).content.decode()
    change = reverse("admin:webhooks_webhook_change", args=[hook.pk])
    page = client.get(change).content.decode()
    assert '<option value="cp-md5" selected>' in page and "MD5 is weak" in page and SECRET not in page

    # A post without the field (a client of the form from before it existed): the format is kept.
    assert client.post(change, {k: v for k, v in form.items() if k != "payload_format"} | {"secret": ""}
                       ).status_code == 302
    hook.refresh_from_db()
    assert hook.payload_format == CP_MD5 and not AuditEvent.objects.filter(event_type=services.WEBHOOK_CHANGED)
    # Switched back to native: one audited change naming the field, the secret kept.
    assert client.post(change, {**form, "secret": "", "payload_format": "native"}).status_code == 302
    hook.refresh_from_db()
    assert hook.payload_format == NATIVE
    changed = AuditEvent.objects.get(event_type=services.WEBHOOK_CHANGED)
    assert changed.details["fields"] == ["payload_format"] and changed.details["payload_format"] == "native"
    assert changed.details["secret_replaced"] is False and "payload_format" in changed.message
    assert "HMAC-SHA256" in client.get(change).content.decode()
    # Nothing else changed: no event.
    client.post(change, {**form, "secret": "", "payload_format": "native"})
    assert AuditEvent.objects.filter(event_type=services.WEBHOOK_CHANGED).count() == 1


# --- end to end: a real platform, a real card simulator ------------------------------------------------


def test_a_real_platform_notifies_a_proxy_receiver_of_an_rpc_request_and_a_lost_card(proxy, tmp_path):
    slug = "cp-md5-card"
    only_card_row(slug)
    make(proxy.url("/webhook/ukey"), card_failures=True, audit_feed=True)
    access, secret = rpc_access_id_create(name="ERP (proxy client)")
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys")).start()
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                       UKEY_DEFAULT_DEVICE=slug, UKEY_RECONNECT_MAX="1", UKEY_PROBE_INTERVAL="3600",
                       UKEY_REQUEST_TIMEOUT="1.5")
    platform = Platform(env, tmp_path).start()
    try:
        platform.wait_card()
        url = platform.base + "/api/v1/rpc"
        body = json.dumps({"_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": SIGNED_TEXT}},
                          ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", **native_sign_headers("POST", url, body, access.key, secret)}
        status, response_headers, content = http("POST", url, body=body, headers=headers)
        assert status == 200, content
        request_id = response_headers["X-Request-ID"]
        audit = proxy.wait_for(lambda r: r.json().get("event") == "api_audit"
                               and r.json().get("request_id") == request_id, timeout=15)
        payload = audit.json()
        assert (payload["method"], payload["success"], payload["error"]) == ("cus-sec_SpcSignDataAsPEM", True, "")
        assert type(payload["duration_ms"]) is int and payload["device"] == slug
        signature = json.loads(content)["_args"]["Data"][0]
        assert signature.encode() not in audit.body
        assert_no_signed_data(audit.body)

        sim.stop()
        lost = proxy.wait_for(lambda r: r.json().get("event") == "ukey_malfunction", timeout=15)
        details = lost.json()["details"]
        assert details["type"] in ("connection_failure", "operation_failure", "health_check_failure")
        assert details["device"] == slug and lost.json()["error"]
        with proxy.cond:
            assert all(not verdict for verdict in proxy.verdicts), proxy.verdicts  # every one verified
        delivery_id = lost.headers["x-delivery-id"]
        poll(lambda: WebhookDelivery.objects.get(pk=delivery_id).status == "delivered", 5, "recorded as delivered")
    finally:
        platform.stop()
        sim.stop()
