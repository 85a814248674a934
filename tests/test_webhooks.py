"""Webhooks: deliveries written in the audit event's own transaction (none after a rollback,
none for disabled webhooks, no query at all when no webhook wants the event), notifications a
receiver verifies exactly like the platform verifies API calls, retries with growing gaps, a
receiver that comes back, giving up after the last attempt (and the admin showing it), several
workers never sending one notification twice, a slow receiver not holding up the others, the
admin's write-only secret; then a real platform whose card goes away notifying a receiver."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_event_record
from core.encryption import secret_decrypt
from tests.conftest import SimulatorProcess, database_text, test_database_url
from tests.live import Platform, only_card_row, poll, services_env
from tests.receivers import Received, Receiver, signature_valid
from tests.services import free_port
from tests.workers import WorkerThread
from webhooks import services
from webhooks.models import SECRET_PURPOSE, Webhook, WebhookDelivery
from webhooks.worker import WebhookWorker, embedded_worker_wanted

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

SECRET = "whsec-customs-ops-0123456789"
CARD_FAILURES = set(AuditEvent.CARD_FAILURES)


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def worker(transactional_db):
    w = WorkerThread(WebhookWorker()).start()
    yield w.worker
    w.stop()


@pytest.fixture
def fast_retries(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.3
    settings.WEBHOOK_TIMEOUT = 3.0
    return settings


def make(url: str = "http://127.0.0.1:9/hook", **fields) -> Webhook:
    fields.setdefault("name", "Customs operations on-call")
    return services.webhook_create(url=url, secret=fields.pop("secret", SECRET), **fields)


def fresh(delivery: WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery.objects.get(pk=delivery.pk)


def card_event(event_type: str = AuditEvent.CARD_DISCONNECTED, device: str = "card-a") -> AuditEvent:
    return audit_event_record(event_type=event_type, source="gateway", device=device, outcome="CARD_DISCONNECTED",
                              message="disconnected: connection closed by the E-Port control",
                              details={"url": "ws://127.0.0.1:61232"})


# --- the outbox --------------------------------------------------------------------------------


def test_a_card_failure_creates_one_delivery_per_matching_webhook_in_the_event_transaction():
    a = make(name="A", card_failures=True)
    b = make(name="B", card_failures=True, audit_feed=True)
    make(name="C", card_failures=False, audit_feed=True)
    make(name="D", card_failures=True, enabled=False)
    seen_by_another_connection: list[int] = []

    def count_elsewhere():
        seen_by_another_connection.append(WebhookDelivery.objects.count())
        connections.close_all()

    with transaction.atomic():
        event = card_event()
        inside = set(WebhookDelivery.objects.filter(audit_event_id=event.pk).values_list("webhook_id", flat=True))
        other = threading.Thread(target=count_elsewhere)
        other.start()
        other.join()
    assert inside == {a.pk, b.pk}
    assert seen_by_another_connection == [0]  # written in the event's transaction, not beside it

    deliveries = list(WebhookDelivery.objects.order_by("webhook__name"))
    assert [d.webhook_id for d in deliveries] == [a.pk, b.pk]
    for delivery in deliveries:
        assert (delivery.status, delivery.attempts, delivery.event_type) == ("pending", 0, "card.disconnected")
        assert delivery.payload == {
            "id": str(delivery.pk),
            "event": "card.disconnected",
            "occurred_at": event.created_at.astimezone(datetime.timezone.utc).isoformat(),
            "device": "card-a",
            "outcome": "CARD_DISCONNECTED",
            "message": "disconnected: connection closed by the E-Port control",
            "audit_event_id": event.pk,
        }
        assert delivery.payload["occurred_at"].endswith("+00:00")
        assert delivery.audit_event_id == event.pk


@pytest.mark.parametrize("event_type", sorted(CARD_FAILURES))
def test_every_card_failure_type_is_sent_and_other_card_events_are_not(event_type):
    hook = make(card_failures=True)
    card_event(event_type)
    card_event(AuditEvent.CARD_CONNECTED)
    card_event(AuditEvent.CARD_RECONNECTED)
    assert list(WebhookDelivery.objects.values_list("webhook_id", "event_type")) == [(hook.pk, event_type)]


def test_a_rolled_back_event_sends_nothing():
    make(card_failures=True)
    make(card_failures=True, audit_feed=True)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            card_event()
            assert WebhookDelivery.objects.count() == 2
            raise RuntimeError("the request failed after its audit event")
    assert WebhookDelivery.objects.count() == 0
    assert not AuditEvent.objects.filter(event_type=AuditEvent.CARD_DISCONNECTED).exists()


def test_api_requests_go_only_to_audit_feed_webhooks_without_any_secret():
    make(name="cards only", card_failures=True, audit_feed=False)
    feed = make(name="feed", card_failures=False, audit_feed=True)
    make(name="feed, disabled", audit_feed=True, enabled=False)
    event = audit_event_record(
        event_type=AuditEvent.API_REQUEST, request_id="2f1c7c0e-6b7e-4c55-9d8f-0d1f0d1f0d1f", access_key="AK0123ABCD",
        source="api", endpoint="POST /api/v1/sign", http_status=200, duration_ms=41.5, client_ip="10.1.2.3",
        device="default", cert_no="01A2B3C4", data_sha256="ab" * 32, secret_version=2, message="",
        details={"fields": ["data"]},
    )
    audit_event_record(event_type=AuditEvent.ACCESS_ID_CREATED, source="admin", access_key="AK0123ABCD")
    (delivery,) = WebhookDelivery.objects.all()
    assert delivery.webhook_id == feed.pk and delivery.event_type == "api.request"
    assert delivery.payload == {
        "id": str(delivery.pk), "event": "api.request", "occurred_at": delivery.payload["occurred_at"],
        "audit_event_id": event.pk, "device": "default", "outcome": "OK", "message": "",
        "request_id": "2f1c7c0e-6b7e-4c55-9d8f-0d1f0d1f0d1f", "access_id": "AK0123ABCD",
        "endpoint": "POST /api/v1/sign", "http_status": 200, "duration_ms": 41.5, "cert_no": "01A2B3C4",
        "data_sha256": "ab" * 32,
    }
    assert SECRET not in json.dumps(delivery.payload)


def test_with_no_webhook_an_audit_event_costs_no_query():
    services.enabled_webhooks.invalidate()
    card_event()  # reads the (empty) list once, then keeps it
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            audit_event_record(event_type=AuditEvent.API_REQUEST, source="api", endpoint="POST /api/v1/sign")
            card_event()
    assert not [q["sql"] for q in queries if "webhooks_" in q["sql"]]
    # A webhook saved in this process is seen by the very next event.
    hook = make(audit_feed=True)
    audit_event_record(event_type=AuditEvent.API_REQUEST, source="api")
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 1
    # Disabled (or deleted) elsewhere, with this process's list still cached: nothing is written.
    Webhook.objects.filter(pk=hook.pk).update(enabled=False)  # no signal: like another process
    audit_event_record(event_type=AuditEvent.API_REQUEST, source="api")
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 1


def test_the_web_process_runs_a_worker_unless_web_only(settings):
    assert embedded_worker_wanted()
    settings.WEBHOOK_WORKER_EMBEDDED = False
    assert not embedded_worker_wanted()


# --- sending -----------------------------------------------------------------------------------


def test_a_notification_is_signed_like_an_api_request_and_verifies(receiver, worker):
    # A path with percent-encoded UTF-8 (海关) and a query: both signed as the API spec says.
    hook = make(url=receiver.url("/hooks/%E6%B5%B7%E5%85%B3/in?team=customs%20ops&b=2&a="))
    delivery = services.webhook_send_test(webhook=hook)
    (request,) = receiver.wait(1)
    h = request.headers
    assert request.method == "POST" and request.path == "/hooks/%E6%B5%B7%E5%85%B3/in?team=customs%20ops&b=2&a="
    assert h["content-type"] == "application/json" and h["user-agent"].startswith("signplatform-webhooks/")
    assert h["x-webhook-event"] == "webhook.test" and h["x-delivery-id"] == str(delivery.pk)
    assert h["x-delivery-attempt"] == "1" and h["x-access-id"] == hook.key and hook.key.startswith("WH")
    assert abs(int(h["x-timestamp"]) - time.time() * 1000) < 60_000 and len(h["x-nonce"]) >= 16
    assert signature_valid(request, SECRET)
    assert request.json() == delivery.payload and request.json()["id"] == str(delivery.pk)
    # The string to sign, written out: what a receiver in any language rebuilds.
    expected_text = "\n".join(["HMAC-SHA256", "POST", "/hooks/海关/in", "a=&b=2&team=customs%20ops", hook.key,
                               h["x-timestamp"], h["x-nonce"], hashlib.sha256(request.body).hexdigest()])
    assert h["x-signature"] == hmac.new(SECRET.encode(), expected_text.encode(), hashlib.sha256).hexdigest()
    # Tampering, another secret, another path: rejected.
    tampered = Received(request.at, request.method, request.path, request.headers,
                        request.body.replace(b"webhook.test", b"card.error"))
    assert not signature_valid(tampered, SECRET)
    assert not signature_valid(request, SECRET + "x")
    assert not signature_valid(Received(request.at, "POST", "/other", request.headers, request.body), SECRET)

    poll(lambda: fresh(delivery).status == "delivered", 5, "delivered")
    delivery = fresh(delivery)
    assert (delivery.attempts, delivery.last_http_status, delivery.last_error) == (1, 200, "")
    assert delivery.delivered_at and delivery.last_attempt_at
    hook.refresh_from_db()
    assert (hook.last_delivery_status, hook.last_delivery_http_status) == ("delivered", 200)


def test_500_twice_then_200_is_delivered_on_the_third_attempt_with_growing_gaps(receiver, worker, fast_retries):
    receiver.statuses = [500, 500]
    delivery = services.webhook_send_test(webhook=make(url=receiver.url()))
    requests = receiver.wait(3, timeout=15)
    poll(lambda: fresh(delivery).status == "delivered", 5, "delivered")
    delivery = fresh(delivery)
    assert (delivery.attempts, delivery.last_http_status, delivery.last_error) == (3, 200, "")
    assert len(receiver.requests) == 3
    first_gap, second_gap = requests[1].at - requests[0].at, requests[2].at - requests[1].at
    assert first_gap >= 0.3 * 0.85 - 0.05, first_gap  # base 0.3 s (±15 %)
    assert second_gap > first_gap * 1.3, (first_gap, second_gap)  # doubled
    # Every attempt: same notification, new signature, each one valid.
    assert {r.headers["x-delivery-id"] for r in requests} == {str(delivery.pk)}
    assert len({r.body for r in requests}) == 1 and len({r.headers["x-nonce"] for r in requests}) == 3
    assert [r.headers["x-delivery-attempt"] for r in requests] == ["1", "2", "3"]
    assert all(signature_valid(r, SECRET) for r in requests)


def test_a_receiver_that_is_down_gets_it_once_it_listens(worker, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.3
    port = free_port()  # nothing listens here yet
    delivery = services.webhook_send_test(webhook=make(url=f"http://127.0.0.1:{port}/hook"))
    attempt_times: dict[int, object] = {}
    deadline = time.monotonic() + 15
    while len(attempt_times) < 4 and time.monotonic() < deadline:  # every attempt, none missed
        d = fresh(delivery)
        if d.attempts and d.last_attempt_at:
            attempt_times.setdefault(d.attempts, d.last_attempt_at)
        time.sleep(0.02)
    down = fresh(delivery)
    assert down.status == "pending" and down.last_http_status is None
    assert "connection refused" in down.last_error, down.last_error
    assert sorted(attempt_times) == [1, 2, 3, 4], attempt_times
    times = [attempt_times[n] for n in sorted(attempt_times)]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3 and gaps[0] < gaps[1] < gaps[2], gaps
    assert down.webhook.last_delivery_status == "retrying"

    receiver = Receiver(port=port).start()
    try:
        poll(lambda: fresh(delivery).status == "delivered", 15, "delivered after the receiver came back")
        assert len(receiver.requests) == 1 and signature_valid(receiver.requests[0], SECRET)
        assert fresh(delivery).attempts >= 5
    finally:
        receiver.stop()


def test_after_the_last_attempt_it_is_failed_and_the_admin_shows_it(receiver, worker, settings, admin_client):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.1
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.default_status = 503
    hook = make(name="Broker ERP", url=receiver.url())
    delivery = services.webhook_send_test(webhook=hook)
    poll(lambda: fresh(delivery).status == "failed", 15, "failed")
    delivery = fresh(delivery)
    assert delivery.attempts == 3 and len(receiver.requests) == 3
    assert delivery.last_http_status == 503
    assert delivery.last_error == "HTTP 503 Service Unavailable: receiver says no: maintenance window"
    time.sleep(0.5)
    assert len(receiver.requests) == 3  # no more attempts

    changelist = reverse("admin:webhooks_webhookdelivery_changelist")
    page = admin_client.get(changelist, {"status__exact": "failed"}).content.decode()
    assert str(delivery.pk) in page and "HTTP 503 Service Unavailable: receiver says no" in page
    assert "webhook.test" in page and "Broker ERP" in page
    for term in (str(delivery.pk), str(delivery.audit_event_id)):
        assert str(delivery.pk) in admin_client.get(changelist, {"q": term}).content.decode()
    assert str(delivery.pk) not in admin_client.get(changelist, {"q": "nothing-like-an-id"}).content.decode()
    page = admin_client.get(reverse("admin:webhooks_webhook_changelist")).content.decode()
    assert "failed" in page and "(HTTP 503)" in page

    detail = admin_client.get(reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk]))
    text = detail.content.decode()
    assert detail.status_code == 200 and 'id="retry-now"' in text
    assert "&quot;event&quot;: &quot;webhook.test&quot;," in text  # the body, pretty-printed
    assert 'name="_save"' not in text  # nothing to edit

    # The receiver is fixed; "Retry now" sends it once more.
    receiver.default_status = 200
    response = admin_client.post(reverse("admin:webhooks_webhookdelivery_retry", args=[delivery.pk]))
    assert response.status_code == 302
    poll(lambda: fresh(delivery).status == "delivered", 10, "delivered after Retry now")
    assert fresh(delivery).attempts == 4
    retried = AuditEvent.objects.get(event_type=services.WEBHOOK_DELIVERY_RETRIED)
    assert retried.source == "admin" and retried.actor_name == "admin" and str(delivery.pk) in retried.message
    # A delivered notification is not sent again.
    admin_client.post(changelist, {"action": "retry_now", "_selected_action": [str(delivery.pk)]})
    assert fresh(delivery).status == "delivered" and fresh(delivery).attempts == 4


def test_several_workers_never_send_one_notification_twice(receiver, transactional_db):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite deployments run one worker (several share PostgreSQL with SKIP LOCKED)")
    receiver.delay = 0.05
    hooks = [make(name=f"hook {n}", url=receiver.url(f"/h{n}")) for n in range(3)]
    deliveries = [services.webhook_send_test(webhook=hooks[n % 3]) for n in range(45)]
    workers = [WorkerThread(WebhookWorker(concurrency=6, per_webhook=3)).start() for _ in range(3)]
    try:
        receiver.wait(45, timeout=30)
        poll(lambda: WebhookDelivery.objects.filter(status="delivered").count() == 45, 10, "all delivered")
        time.sleep(0.5)
    finally:
        for w in workers:
            w.stop()
    ids = [r.headers["x-delivery-id"] for r in receiver.requests]
    assert sorted(ids) == sorted(str(d.pk) for d in deliveries)  # each exactly once
    assert set(WebhookDelivery.objects.values_list("attempts", flat=True)) == {1}


def test_a_slow_receiver_does_not_hold_up_the_others(worker, settings):
    settings.WEBHOOK_TIMEOUT = 10.0
    slow, fast = Receiver().start(), Receiver().start()
    try:
        slow.delay = 4.0
        slow_hook, fast_hook = make(name="slow", url=slow.url()), make(name="fast", url=fast.url())
        for _ in range(8):
            services.webhook_send_test(webhook=slow_hook)
        slow.wait(4, timeout=5)  # as many as it may have in flight
        started = time.monotonic()
        quick = services.webhook_send_test(webhook=fast_hook)
        fast.wait(1, timeout=3)
        poll(lambda: fresh(quick).status == "delivered", 3, "the fast receiver's notification")
        assert time.monotonic() - started < 2.5
        assert len(slow.requests) == 4  # at most 4 in flight per webhook
    finally:
        slow.delay = 0
        slow.stop()
        fast.stop()


def test_a_timeout_is_a_failed_attempt(receiver, worker, settings):
    settings.WEBHOOK_TIMEOUT = 0.5
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30
    receiver.delay = 2.0
    delivery = services.webhook_send_test(webhook=make(url=receiver.url()))
    poll(lambda: fresh(delivery).attempts == 1 and fresh(delivery).last_error, 5, "the first attempt's outcome")
    delivery = fresh(delivery)
    assert delivery.status == "pending" and delivery.last_error == "no answer within 0.5 s"
    assert (delivery.next_attempt_at - delivery.last_attempt_at).total_seconds() > 20
    receiver.delay = 0


# --- the admin ------------------------------------------------------------------------------------


def test_the_admin_keeps_the_secret_write_only_and_audits_every_change(admin_client):
    add = reverse("admin:webhooks_webhook_add")
    page = admin_client.get(add).content.decode()
    assert 'type="password"' in page and "Secret" in page
    form = {"name": "Customs broker ERP", "url": "https://erp.example.invalid/hooks/ukey", "card_failures": "on",
            "enabled": "on", "secret": ""}
    assert "This field is required" in admin_client.post(add, form).content.decode()
    assert "at least 16 characters" in admin_client.post(add, {**form, "secret": "short"}).content.decode()
    assert "Choose what to send" in admin_client.post(
        add, {**form, "secret": SECRET, "card_failures": ""}).content.decode()
    assert "Enter a valid URL" in admin_client.post(
        add, {**form, "secret": SECRET, "url": "ftp://erp.example.invalid/x"}).content.decode()
    assert admin_client.post(add, {**form, "secret": SECRET}).status_code == 302

    hook = Webhook.objects.get()
    assert hook.key.startswith("WH") and hook.card_failures and not hook.audit_feed and hook.enabled
    assert secret_decrypt(hook.secret_encrypted, purpose=SECRET_PURPOSE) == SECRET
    created = AuditEvent.objects.get(event_type=services.WEBHOOK_CREATED)
    assert created.source == "admin" and created.actor_name == "admin" and created.details["webhook"] == hook.key

    change = reverse("admin:webhooks_webhook_change", args=[hook.pk])
    page = admin_client.get(change).content.decode()
    assert SECRET not in page and "set (stored encrypted, not shown)" in page and hook.key in page
    assert 'id="send-test"' in page
    # Empty secret: kept.
    response = admin_client.post(change, {**form, "name": "Customs broker ERP (prod)", "secret": ""})
    assert response.status_code == 302
    hook.refresh_from_db()
    assert hook.name == "Customs broker ERP (prod)"
    assert secret_decrypt(hook.secret_encrypted, purpose=SECRET_PURPOSE) == SECRET
    changed = AuditEvent.objects.get(event_type=services.WEBHOOK_CHANGED)
    assert changed.details["fields"] == ["name"] and changed.details["secret_replaced"] is False
    # A new secret replaces it.
    admin_client.post(change, {**form, "secret": SECRET + "-v2"})
    hook.refresh_from_db()
    assert secret_decrypt(hook.secret_encrypted, purpose=SECRET_PURPOSE) == SECRET + "-v2"
    # Test events: the button and the list action, one audit event each.
    assert admin_client.post(reverse("admin:webhooks_webhook_send_test", args=[hook.pk])).status_code == 302
    changelist = reverse("admin:webhooks_webhook_changelist")
    admin_client.post(changelist, {"action": "send_test_event", "_selected_action": [hook.pk]})
    assert WebhookDelivery.objects.filter(webhook=hook, event_type="webhook.test").count() == 2
    assert AuditEvent.objects.filter(event_type=services.WEBHOOK_TEST_SENT).count() == 2
    # Disable / enable.
    admin_client.post(changelist, {"action": "disable_selected", "_selected_action": [hook.pk]})
    hook.refresh_from_db()
    assert not hook.enabled and AuditEvent.objects.filter(event_type=services.WEBHOOK_DISABLED).count() == 1
    admin_client.post(changelist, {"action": "enable_selected", "_selected_action": [hook.pk]})
    assert Webhook.objects.get().enabled
    # The secret is nowhere in clear: not in the database, not in any audit event.
    assert SECRET not in database_text()
    # A webhook with deliveries cannot be deleted (disable it instead); one without can.
    admin_client.post(reverse("admin:webhooks_webhook_delete", args=[hook.pk]), {"post": "yes"})
    assert Webhook.objects.filter(pk=hook.pk).exists()
    spare = make(name="spare")
    admin_client.post(reverse("admin:webhooks_webhook_delete", args=[spare.pk]), {"post": "yes"})
    assert not Webhook.objects.filter(pk=spare.pk).exists()
    assert AuditEvent.objects.filter(event_type=services.WEBHOOK_DELETED).count() == 1


# --- end to end: a real platform, a real card simulator -------------------------------------------


def test_a_card_that_goes_away_is_notified_to_the_receiver_signed(receiver, tmp_path):
    slug = "webhook-card"
    only_card_row(slug)
    hook = make(name="Operations on-call", url=receiver.url("/alerts/ukey"), card_failures=True)
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys")).start()
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                       UKEY_DEFAULT_DEVICE=slug, UKEY_RECONNECT_MAX="1", UKEY_PROBE_INTERVAL="3600",
                       UKEY_REQUEST_TIMEOUT="1.5")
    platform = Platform(env, tmp_path).start()
    try:
        platform.wait_card()
        assert not receiver.requests  # a card connecting is not a failure
        sim.stop()
        started = time.monotonic()
        request = receiver.wait_for(lambda r: r.headers.get("x-webhook-event") in CARD_FAILURES, timeout=15)
        assert time.monotonic() - started < 15
        assert signature_valid(request, SECRET) and request.headers["x-access-id"] == hook.key
        body = request.json()
        assert body["event"] in CARD_FAILURES and body["device"] == slug and body["message"]
        assert body["id"] == request.headers["x-delivery-id"]
        event = AuditEvent.objects.get(pk=body["audit_event_id"])
        assert (event.event_type, event.device, event.source) == (body["event"], slug, "gateway")
        poll(lambda: WebhookDelivery.objects.get(pk=body["id"]).status == "delivered", 5, "recorded as delivered")
    finally:
        platform.stop()
        sim.stop()
    assert "webhook delivery worker started" in platform.log


def test_retry_now_leaves_an_attempt_in_flight_alone(receiver, worker, settings):
    receiver.delay = 2.0
    delivery = services.webhook_send_test(webhook=make(url=receiver.url()))
    receiver.wait(1)
    with pytest.raises(services.WebhookError, match="being sent right now"):
        services.delivery_retry_now(delivery=fresh(delivery))
    poll(lambda: fresh(delivery).status == "delivered", 10, "delivered")
    assert len(receiver.requests) == 1
    with pytest.raises(services.WebhookError, match="already delivered"):
        services.delivery_retry_now(delivery=fresh(delivery))
    receiver.delay = 0


def test_webhook_prune_removes_only_old_finished_deliveries():
    import datetime
    import io

    from django.core.management import call_command
    from django.utils import timezone

    hook = make(card_failures=True)
    for _ in range(3):
        card_event()
    old, old_failed, pending = WebhookDelivery.objects.filter(webhook=hook).order_by("created_at")
    long_ago = timezone.now() - datetime.timedelta(days=40)
    WebhookDelivery.objects.filter(pk=old.pk).update(status=WebhookDelivery.DELIVERED, created_at=long_ago)
    WebhookDelivery.objects.filter(pk=old_failed.pk).update(status=WebhookDelivery.FAILED, created_at=long_ago)
    WebhookDelivery.objects.filter(pk=pending.pk).update(created_at=long_ago)  # still pending: kept
    card_event()  # a new one: kept
    out = io.StringIO()
    call_command("webhook_prune", "--older-than", "30d", stdout=out)
    assert "Removed 2 finished webhook deliveries" in out.getvalue()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {WebhookDelivery.PENDING}
    assert WebhookDelivery.objects.count() == 2
