"""`GET /metrics`: counters that match exactly the requests a real platform answered (by
endpoint template and outcome), the duration histogram, replays, authentication failures,
rotations, card events and the card gauges read live from the gateway's state; who may
scrape (networks, Bearer token); and the same counting in-process from audit events."""

from __future__ import annotations

import json
import time
from collections import Counter as Tally

import pytest
from django.db import transaction
from django.test import RequestFactory, override_settings
from prometheus_client.parser import text_string_to_metric_families

from accessids.services import access_id_create
from audit.models import AuditEvent
from audit.services import audit_event_record
from signclient import sign_headers
from signplatform import metrics
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import Platform, http, only_card_row, poll, services_env
from tests.services import free_port
from tests.test_api import call

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

DEVICE = "metrics-card"


def scrape(platform, headers: dict | None = None) -> tuple[int, str, str]:
    status, response_headers, body = http("GET", platform.base + "/metrics", headers=headers or {})
    return status, response_headers.get("Content-Type", ""), body.decode("utf-8")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(values: dict, name: str, **labels) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def with_prefix(values: dict, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in values.items() if n == name}


# --- a real platform ----------------------------------------------------------------------------


@pytest.fixture
def card_platform(tmp_path):
    """A platform sharing the test database and Redis, its gateway in the web process (so
    the card events are counted where /metrics is served), with its own simulator."""
    sim = SimulatorProcess(key_dir=str(tmp_path / "keys")).start()
    only_card_row(DEVICE)
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                       UKEY_DEFAULT_DEVICE=DEVICE, UKEY_GATEWAY_MODE="embedded", UKEY_PROBE_INTERVAL="1",
                       UKEY_REQUEST_TIMEOUT="1", UKEY_CONNECT_TIMEOUT="1", UKEY_RECONNECT_MAX="1")
    platform = Platform(env, tmp_path, name="metrics").start()
    try:
        platform.wait_card()
        yield sim, platform
    finally:
        platform.stop()
        sim.stop()


def test_counters_match_the_requests_sent_and_card_gauges_follow_the_card(card_platform):
    sim, platform = card_platform
    access, secret = access_id_create(name="metrics ERP")
    sent: Tally = Tally()

    for text in ("one", "two"):
        status, _, body = call(platform, "POST", "/api/v1/sign", {"data": text}, access=access, secret=secret)
        assert status == 200, body
        sent["POST /api/v1/sign", "OK"] += 1
    # The same signed request twice: the second is a replay (409 DUPLICATE_REQUEST).
    raw = json.dumps({"data": "replayed"}).encode()
    headers = {"Content-Type": "application/json",
               **sign_headers("POST", platform.base + "/api/v1/sign", raw, access.key, secret)}
    assert http("POST", platform.base + "/api/v1/sign", body=raw, headers=headers)[0] == 200
    sent["POST /api/v1/sign", "OK"] += 1
    status, _, body = http("POST", platform.base + "/api/v1/sign", body=raw, headers=headers)
    assert (status, json.loads(body)["code"]) == (409, "DUPLICATE_REQUEST")
    sent["POST /api/v1/sign", "DUPLICATE_REQUEST"] += 1
    # A bad signature (401).
    status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret,
                           headers={"X-Signature": "0" * 64})
    assert (status, body["code"]) == (401, "SIGNATURE_VALIDATION_FAILED")
    sent["POST /api/v1/sign", "SIGNATURE_VALIDATION_FAILED"] += 1
    # Two different document ids: one endpoint label.
    for pk in (987654, 987655):
        status, _, body = call(platform, "GET", f"/api/v1/xml-documents/{pk}", access=access, secret=secret)
        assert (status, body["code"]) == (404, "NOT_FOUND")
        sent["GET /api/v1/xml-documents/{id}", "NOT_FOUND"] += 1
    # Paths that are no endpoint: "other", however many.
    for path in ("/api/v1/no-such-thing", "/api/v1/xml-documents/not-a-number"):
        status, _, body = call(platform, "GET", path, access=access, secret=secret)
        assert status == 404
        sent["other", "NOT_FOUND"] += 1
    # An unsigned call.
    status, _, body = call(platform, "GET", "/api/v1/certificate")
    assert (status, body["code"]) == (401, "MISSING_AUTH_HEADERS")
    sent["GET /api/v1/certificate", "MISSING_AUTH_HEADERS"] += 1
    # A self-rotation (its audit event is the rotation itself).
    status, _, body = call(platform, "POST", "/api/v1/access-ids/self/rotate", {"grace_seconds": 60},
                           access=access, secret=secret)
    assert status == 200, body
    sent["POST /api/v1/access-ids/self/rotate", "OK"] += 1

    status, content_type, text = scrape(platform)
    assert status == 200 and content_type.startswith("text/plain")
    values = samples(text)
    counted = {(dict(labels)["endpoint"], dict(labels)["outcome"]): v
               for labels, v in with_prefix(values, "signplatform_requests_total").items()}
    assert counted == {key: float(n) for key, n in sent.items()}
    # ... which is also what the audit log holds for these requests.
    audited = Tally((metrics.endpoint_label(e.endpoint), e.outcome) for e in AuditEvent.objects.filter(
        source="api").exclude(event_type__in=[AuditEvent.ACCESS_ID_CREATED]))
    assert audited == sent

    sign_total = sum(n for (endpoint, _), n in sent.items() if endpoint == "POST /api/v1/sign")
    assert value(values, "signplatform_request_duration_seconds_count", endpoint="POST /api/v1/sign") == sign_total
    assert value(values, "signplatform_request_duration_seconds_bucket",
                 endpoint="POST /api/v1/sign", le="+Inf") == sign_total
    assert value(values, "signplatform_request_duration_seconds_bucket",
                 endpoint="POST /api/v1/sign", le="0.005") is not None
    assert value(values, "signplatform_request_duration_seconds_bucket",
                 endpoint="POST /api/v1/sign", le="30.0") == sign_total
    assert value(values, "signplatform_request_duration_seconds_sum", endpoint="POST /api/v1/sign") > 0
    assert value(values, "signplatform_request_duration_seconds_count",
                 endpoint="GET /api/v1/xml-documents/{id}") == 2
    assert value(values, "signplatform_nonce_rejections_total") == 1
    assert value(values, "signplatform_auth_failures_total", code="SIGNATURE_VALIDATION_FAILED") == 1
    assert value(values, "signplatform_auth_failures_total", code="MISSING_AUTH_HEADERS") == 1
    assert value(values, "signplatform_auth_failures_total", code="INVALID_NONCE") == 0
    assert value(values, "signplatform_rotations_total", source="api") == 1
    # The card: up, its queue, its certificate's expiry, its connection event.
    assert value(values, "signplatform_card_up", device=DEVICE) == 1
    assert value(values, "signplatform_card_queue_depth", device=DEVICE) == 0
    expiry = value(values, "signplatform_card_certificate_expiry_timestamp_seconds", device=DEVICE)
    assert expiry and expiry > time.time()
    assert value(values, "signplatform_card_events_total", device=DEVICE, event="connected") == 1
    assert value(values, "process_resident_memory_bytes") > 0
    assert "python_info" in {name for name, _ in values}

    # The card goes away: card_up drops to 0 within a probe interval; the disconnect is counted.
    sim.stop()
    values = poll(lambda: (v := samples(scrape(platform)[2])) and
                  value(v, "signplatform_card_up", device=DEVICE) == 0 and v, 15, "card_up 0")
    poll(lambda: (value(samples(scrape(platform)[2]), "signplatform_card_events_total",
                        device=DEVICE, event="disconnected") or 0) >= 1, 10, "disconnect counted")
    # Scrapes are not requests: the request counters did not move.
    values = samples(scrape(platform)[2])
    counted = {(dict(labels)["endpoint"], dict(labels)["outcome"]): v
               for labels, v in with_prefix(values, "signplatform_requests_total").items()}
    assert counted == {key: float(n) for key, n in sent.items()}


def test_scrape_access_networks_and_token(tmp_path):
    token = "metrics-token-5b1f0c7e9a"
    only_card_row(DEVICE)
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=f"ws://127.0.0.1:{free_port()}",
                       UKEY_PIN="12345678", UKEY_DEFAULT_DEVICE=DEVICE, UKEY_GATEWAY_MODE="embedded",
                       METRICS_ALLOWED_NETWORKS="10.255.255.0/24,fd00:dead::/64", METRICS_TOKEN=token,
                       # uvicorn itself believes X-Forwarded-For from 127.0.0.1 unless told not to
                       # (runplatform does not pass proxy_headers=False): only TRUSTED_PROXIES should.
                       FORWARDED_ALLOW_IPS="")
    platform = Platform(env, tmp_path, name="metrics-acl").start()
    try:
        status, content_type, body = scrape(platform)
        assert (status, body) == (403, "forbidden\n") and content_type.startswith("text/plain")
        assert scrape(platform, {"Authorization": f"Bearer {token}"})[0] == 200
        status, _, body = scrape(platform, {"Authorization": f"Bearer {token}"})
        assert "signplatform_card_up" in body and "signplatform_requests_total" in body
        for wrong in (f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer ", f"Basic {token}", token):
            assert scrape(platform, {"Authorization": wrong})[::2] == (403, "forbidden\n"), wrong
        # X-Forwarded-For counts only from TRUSTED_PROXIES (none here).
        assert scrape(platform, {"X-Forwarded-For": "10.255.255.7"})[0] == 403
        # Only GET (a POST stops at the CSRF check already).
        assert http("POST", platform.base + "/metrics", body=b"",
                    headers={"Authorization": f"Bearer {token}"})[0] in (403, 405)
    finally:
        platform.stop()


# --- in-process ----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, label", [
    ("POST /api/v1/sign", "POST /api/v1/sign"),
    ("GET /api/v1/xml-documents/17", "GET /api/v1/xml-documents/{id}"),
    ("DELETE /api/v1/xml-documents/123456789", "DELETE /api/v1/xml-documents/{id}"),
    ("GET /api/v1/xml-documents/abc", "other"),
    ("GET /api/v1/whatever/1/2/3", "other"),
    ("GET /wp-login.php", "other"),
    ("POST /getCode", "POST /getCode"),
    ("GET /getCode", "GET /getCode"),
    ("POST /xml-files/add", "POST /xml-files/add"),
    ("BREW /api/v1/sign", "other"),
    ("", "other"),
    ("POST", "other"),
])
def test_endpoint_labels_are_route_templates_or_other(endpoint, label):
    assert metrics.endpoint_label(endpoint) == label


def _get(**meta):
    return RequestFactory().get("/metrics", **meta)


@override_settings(METRICS_ALLOWED_NETWORKS=["127.0.0.1/32", "::1/128"], METRICS_TOKEN="", TRUSTED_PROXIES=[])
def test_scrape_allowed_by_network_only_without_a_token():
    assert metrics.scrape_allowed(_get(REMOTE_ADDR="127.0.0.1"))
    assert metrics.scrape_allowed(_get(REMOTE_ADDR="::1"))
    assert metrics.scrape_allowed(_get(REMOTE_ADDR="::ffff:127.0.0.1"))
    assert not metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.5"))
    # No token configured: no Bearer value opens it, not even an empty one.
    assert not metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.5", HTTP_AUTHORIZATION="Bearer "))
    assert not metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.5", HTTP_AUTHORIZATION="Bearer"))


@override_settings(METRICS_ALLOWED_NETWORKS=["10.0.0.0/8", "not-a-network"], METRICS_TOKEN="tkn-1234",
                   TRUSTED_PROXIES=["192.0.2.1/32"])
def test_scrape_allowed_through_a_trusted_proxy_and_by_token():
    assert metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.1.2.3"))
    assert not metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.9", HTTP_X_FORWARDED_FOR="10.1.2.3"))
    assert metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.9", HTTP_AUTHORIZATION="Bearer tkn-1234"))
    assert metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.9", HTTP_AUTHORIZATION="bearer  tkn-1234 "))
    assert not metrics.scrape_allowed(_get(REMOTE_ADDR="192.0.2.9", HTTP_AUTHORIZATION="Bearer tkn-12345"))


def _sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_audit_events_are_counted_once_committed():
    before = {
        "ok": _sample("signplatform_requests_total", endpoint="POST /getCode", outcome="OK"),
        "limited": _sample("signplatform_requests_total", endpoint="POST /api/v1/sign", outcome="RATE_LIMITED"),
        "hist": _sample("signplatform_request_duration_seconds_count", endpoint="POST /getCode"),
        "fast": _sample("signplatform_request_duration_seconds_bucket", endpoint="POST /getCode", le="0.025"),
        "nonce": _sample("signplatform_nonce_rejections_total"),
        "invalid_nonce": _sample("signplatform_auth_failures_total", code="INVALID_NONCE"),
        "admin": _sample("signplatform_rotations_total", source="admin"),
        "card": _sample("signplatform_card_events_total", device="unit-card", event="probe_failed"),
    }

    def request_event(endpoint, outcome, status, duration_ms, source="api"):
        audit_event_record(event_type=AuditEvent.API_REQUEST, source=source, endpoint=endpoint, outcome=outcome,
                           http_status=status, duration_ms=duration_ms)

    request_event("POST /getCode", "OK", 200, 12.0, source="legacy")
    request_event("POST /api/v1/sign", "RATE_LIMITED", 429, 1.0)
    request_event("POST /api/v1/sign", "DUPLICATE_REQUEST", 409, 1.0)
    request_event("POST /api/v1/sign", "INVALID_NONCE", 401, 1.0)
    access, _ = access_id_create(name="unit")
    audit_event_record(event_type=AuditEvent.ACCESS_ID_ROTATED, source="admin", access_id=access)
    audit_event_record(event_type=AuditEvent.CARD_PROBE_FAILED, source="gateway", device="unit-card",
                       outcome="PROBE_FAILED")
    # Rolled back: never counted.
    with pytest.raises(RuntimeError), transaction.atomic():
        request_event("POST /getCode", "OK", 200, 12.0, source="legacy")
        raise RuntimeError("rollback")

    assert _sample("signplatform_requests_total", endpoint="POST /getCode", outcome="OK") == before["ok"] + 1
    assert _sample("signplatform_requests_total", endpoint="POST /api/v1/sign",
                   outcome="RATE_LIMITED") == before["limited"] + 1
    assert _sample("signplatform_request_duration_seconds_count", endpoint="POST /getCode") == before["hist"] + 1
    assert _sample("signplatform_request_duration_seconds_bucket", endpoint="POST /getCode",
                   le="0.025") == before["fast"] + 1
    assert _sample("signplatform_nonce_rejections_total") == before["nonce"] + 1
    assert _sample("signplatform_auth_failures_total", code="INVALID_NONCE") == before["invalid_nonce"] + 1
    assert _sample("signplatform_rotations_total", source="admin") == before["admin"] + 1
    assert _sample("signplatform_card_events_total", device="unit-card", event="probe_failed") == before["card"] + 1


def test_the_registry_is_our_own():
    from prometheus_client import REGISTRY as DEFAULT

    assert metrics.REGISTRY is not DEFAULT
    assert DEFAULT.get_sample_value("signplatform_nonce_rejections_total") is None
    body, content_type = metrics.metrics_render()
    assert content_type.startswith("text/plain") and b"signplatform_nonce_rejections_total" in body
    assert b"_created" not in body
