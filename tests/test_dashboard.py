"""The operations dashboard: figures for events seeded at known times (hourly and daily
buckets, success rates, latency p50/p95 both ways, top access IDs, failures by code), all
aggregated in the database; the SVG charts; certificate expiry levels; the JSON endpoint and
its permissions; then headless Chromium against a real platform with a real card simulator
(whose certificate expires in 10 days): charts drawn, the card connected with an expiry
warning, figures updating without a reload, and the card shown disconnected after the
simulator stops — without a reload."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from asn1crypto import x509 as asn1_x509
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accessids.services import access_id_create
from audit import selectors
from audit.models import AuditEvent
from audit.selectors import Bucket, cert_expiry, percentile
from console import selectors as console_selectors
from console.dashboard import nice_ceiling, stacked_bars_svg
from core import certs
from tests.admin_users import (
    admin_login,
    client_for,
    fast_hashers,  # noqa: F401  (fixtures)
    user_make,
)
from tests.conftest import test_database_url
from tests.live import Platform, poll, services_env

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

DASHBOARD = "/admin/audit/auditevent/dashboard/"
DATA = "/admin/audit/auditevent/dashboard/data/"
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime.datetime(2026, 3, 10, 12, 30, tzinfo=SHANGHAI)


def request_at(when: datetime.datetime, key: str, outcome: str = "OK", duration: float | None = 10.0, **fields):
    return AuditEvent(created_at=when, event_type=AuditEvent.API_REQUEST, source="api", access_key=key,
                      outcome=outcome, http_status=200 if outcome == "OK" else 401, duration_ms=duration,
                      endpoint="POST /api/v1/sign", **fields)


def seed_known_times(erp_key: str, wms_key: str) -> None:
    """Around NOW (2026-03-10 12:30 Shanghai). The 24-hour window starts 2026-03-09 12:30, the
    hourly chart at 13:00 that day, the 7-day window 2026-03-03 12:30, the daily chart on
    2026-03-04. Durations in the last 24 h: 10, 20, ..., 70 ms."""
    t = datetime.datetime
    AuditEvent.objects.bulk_create([
        # the current hour, 12:00-12:30: 3 successes, 1 failure
        request_at(t(2026, 3, 10, 12, 0, tzinfo=SHANGHAI), erp_key, duration=10.0),
        request_at(t(2026, 3, 10, 12, 10, tzinfo=SHANGHAI), erp_key, duration=20.0),
        request_at(t(2026, 3, 10, 12, 29, 59, tzinfo=SHANGHAI), erp_key, duration=30.0),
        request_at(t(2026, 3, 10, 12, 20, tzinfo=SHANGHAI), erp_key, "SIGNATURE_VALIDATION_FAILED", duration=40.0),
        # 11:00-12:00: 2 successes
        request_at(t(2026, 3, 10, 11, 5, tzinfo=SHANGHAI), wms_key, duration=50.0),
        request_at(t(2026, 3, 10, 11, 59, tzinfo=SHANGHAI), erp_key, duration=60.0),
        # the oldest hour of the chart (yesterday 13:00-14:00): 1 failure of an unknown key
        request_at(t(2026, 3, 9, 13, 10, tzinfo=SHANGHAI), "AKUNKNOWN", "UKEY_TIMEOUT", duration=70.0),
        # outside 24 h, inside 7 days
        request_at(t(2026, 3, 9, 12, 10, tzinfo=SHANGHAI), wms_key, duration=5000.0),
        request_at(t(2026, 3, 4, 10, 0, tzinfo=SHANGHAI), wms_key, duration=5000.0),
        # inside the rolling 7 days, before the daily chart's first day
        request_at(t(2026, 3, 3, 23, 59, tzinfo=SHANGHAI), wms_key, "INVALID_TIMESTAMP", duration=None),
        # outside everything
        request_at(t(2026, 3, 3, 12, 0, tzinfo=SHANGHAI), wms_key, "INVALID_TIMESTAMP"),
        request_at(t(2026, 3, 10, 12, 31, tzinfo=SHANGHAI), erp_key, "FUTURE"),
        # not API requests
        AuditEvent(created_at=t(2026, 3, 10, 12, 5, tzinfo=SHANGHAI), event_type=AuditEvent.ACCESS_ID_ROTATED,
                   source="admin", access_key=erp_key, outcome="OK"),
        AuditEvent(created_at=t(2026, 3, 10, 9, 0, tzinfo=SHANGHAI), event_type=AuditEvent.CARD_ERROR,
                   source="gateway", device="default", outcome="UKEY_TIMEOUT"),
        AuditEvent(created_at=t(2026, 3, 10, 10, 0, tzinfo=SHANGHAI), event_type=AuditEvent.CARD_DISCONNECTED,
                   source="gateway", device="default", outcome="CARD_DISCONNECTED"),
        AuditEvent(created_at=t(2026, 3, 8, 10, 0, tzinfo=SHANGHAI), event_type=AuditEvent.CARD_ERROR,
                   source="gateway", device="default", outcome="UKEY_TIMEOUT"),  # older than 24 h
    ])


def test_figures_for_events_at_known_times():
    erp, _ = access_id_create(name="ERP Ningbo")
    wms, _ = access_id_create(name="WMS Haikou")
    AuditEvent.objects.all().delete()
    seed_known_times(erp.key, wms.key)

    with timezone.override(SHANGHAI), CaptureQueriesContext(connection) as queries:
        hourly = selectors.hourly_requests(now=NOW)
        daily = selectors.daily_requests(now=NOW)
        success = selectors.success_rates(now=NOW)
        exact = selectors.latency_percentiles(now=NOW)
        sampled = selectors.latency_percentiles(now=NOW, method="sample")
        top = console_selectors.top_access_ids(now=NOW)
        failures = selectors.failures_by_code(now=NOW)
        card_failures = selectors.card_failures(now=NOW)

    assert len(hourly) == 24
    assert hourly[0].start == datetime.datetime(2026, 3, 9, 13, 0, tzinfo=SHANGHAI)
    assert hourly[-1].start == datetime.datetime(2026, 3, 10, 12, 0, tzinfo=SHANGHAI)
    assert [(b.ok, b.failed) for b in hourly if b.total] == [(0, 1), (2, 0), (3, 1)]
    assert (hourly[0].failed, hourly[22].ok, hourly[23].ok, hourly[23].failed) == (1, 2, 3, 1)
    assert sum(b.total for b in hourly) == 7

    assert [b.start.date() for b in daily] == [datetime.date(2026, 3, d) for d in range(4, 11)]
    assert [(b.ok, b.failed) for b in daily] == [(1, 0), (0, 0), (0, 0), (0, 0), (0, 0), (1, 1), (5, 1)]

    assert success["24h"] == {"total": 7, "ok": 5, "failed": 2, "rate": 71.43}
    assert success["7d"] == {"total": 10, "ok": 7, "failed": 3, "rate": 70.0}

    # percentile_cont of 10..70: p50 = 40, p95 = 60 + 0.7 * 10 = 67 — and the same from the sample.
    assert (exact["p50"], exact["p95"], exact["count"], exact["method"]) == (40.0, 67.0, 7, "percentile_cont")
    assert (sampled["p50"], sampled["p95"], sampled["count"], sampled["sampled"]) == (40.0, 67.0, 7, False)

    assert [(r["key"], r["name"], r["total"], r["failed"]) for r in top] == [
        (erp.key, "ERP Ningbo", 5, 1), (wms.key, "WMS Haikou", 1, 0), ("AKUNKNOWN", "", 1, 1)]
    assert top[0]["rate"] == 80.0 and top[0]["pk"] == erp.pk and top[2]["pk"] is None
    assert failures == [{"outcome": "SIGNATURE_VALIDATION_FAILED", "count": 1}, {"outcome": "UKEY_TIMEOUT", "count": 1}]
    assert card_failures == {"default": 2}

    # Aggregated in the database: one query per figure, each grouped or aggregated over an
    # indexed created_at range; no query reads the events' rows (except the bounded sample).
    audit_queries = [q["sql"] for q in queries if 'FROM "audit_auditevent"' in q["sql"]]
    assert len(audit_queries) == 8
    for sql in audit_queries:
        assert '"audit_auditevent"."created_at" >=' in sql
        if "LIMIT 20001" not in sql:
            assert "COUNT(" in sql or "PERCENTILE_CONT(" in sql, sql
    assert sum("PERCENTILE_CONT(0.5) WITHIN GROUP" in sql for sql in audit_queries) == 1


def test_percentile_and_sample_limit(monkeypatch):
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile(list(map(float, range(1, 101))), 0.95) == pytest.approx(95.05)
    now = timezone.now()
    AuditEvent.objects.bulk_create(request_at(now - datetime.timedelta(minutes=i), "AK1", duration=float(i))
                                   for i in range(1, 31))
    monkeypatch.setattr(selectors, "LATENCY_SAMPLE", 10)
    sampled = selectors.latency_percentiles(now=now, method="sample")
    # The newest 10 (durations 1..10), flagged as a sample.
    assert (sampled["count"], sampled["sampled"], sampled["p50"]) == (10, True, 5.5)
    assert selectors.latency_percentiles(now=now)["p50"] == 15.5  # PostgreSQL: all 30


def test_svg_chart_bars_axis_and_tooltips():
    start = datetime.datetime(2026, 3, 10, 10, 0, tzinfo=SHANGHAI)
    buckets = [Bucket(start + datetime.timedelta(hours=i), start + datetime.timedelta(hours=i + 1), ok, failed)
               for i, (ok, failed) in enumerate([(8, 2), (0, 0), (3, 0), (0, 4)])]
    with timezone.override(SHANGHAI):
        svg = str(stacked_bars_svg(buckets, chart_id="c<1>", title="Requests & <failures>"))
    assert svg.startswith('<svg id="c&lt;1&gt;" class="audit-chart" role="img" aria-label="Requests &amp; &lt;failures&gt;"')
    assert svg.count('class="bar-ok"') == 2 and svg.count('class="bar-failed"') == 2
    assert svg.count('<g class="bar"') == 4 and 'data-peak="10"' in svg
    heights = {(m[0], float(m[1])) for m in re.findall(r'class="bar-(ok|failed)" x="[\d.]+" y="[\d.]+" width="[\d.]+" '
                                                         r'height="([\d.]+)"', svg)}
    plot = 220 - 12 - 30
    assert heights == {("ok", round(plot * 8 / 10, 1)), ("failed", round(plot * 2 / 10, 1)),
                       ("ok", round(plot * 3 / 10, 1)), ("failed", round(plot * 4 / 10, 1))}
    assert "<title>2026-03-10 10:00: 10 requests, 2 failed</title>" in svg
    assert ">10:00</text>" in svg and ">13:00</text>" in svg
    empty = str(stacked_bars_svg([Bucket(start, start, 0, 0)], chart_id="e", title="t"))
    assert "No API requests in this period" in empty and "bar-ok" not in empty
    assert nice_ceiling(0) == (1.0, 0.25) and nice_ceiling(10) == (10, 5) and nice_ceiling(7) == (8, 2)
    assert nice_ceiling(1234) == (1500, 500)


def test_certificate_expiry_levels_and_card_table(monkeypatch):
    now = timezone.now()
    assert cert_expiry(None) is None and cert_expiry("not a date") is None
    assert cert_expiry((now + datetime.timedelta(days=400)).isoformat(), now=now)["level"] == "ok"
    assert cert_expiry((now + datetime.timedelta(days=30, hours=1)).isoformat(), now=now)["level"] == "ok"
    soon = cert_expiry((now + datetime.timedelta(days=29, hours=23)).isoformat(), now=now)
    assert soon["level"] == "warning" and soon["days_left"] == 29
    assert cert_expiry(now - datetime.timedelta(seconds=1), now=now)["level"] == "expired"
    naive_utc = (now + datetime.timedelta(days=5, minutes=-1)).astimezone(datetime.timezone.utc).replace(tzinfo=None)
    assert cert_expiry(naive_utc.isoformat(), now=now)["days_left"] == 4  # naive is UTC; 4.99 days: "in 4 days"

    def state(slug, connected, not_after, **extra):
        return {"slug": slug, "name": slug, "connected": connected, "gateway_running": True,
                "since": now.isoformat() if connected else None, "last_ok_at": now.isoformat(),
                "last_error": extra.get("last_error", ""), "last_error_at": extra.get("last_error_at"),
                "queue_depth": extra.get("queue_depth", 0), "cert_no": f"cert-{slug}", "algorithm": "RSA",
                "ent_name": None, "cert_not_after": not_after}

    states = [
        state("healthy", True, (now + datetime.timedelta(days=400)).isoformat(), queue_depth=3),
        state("soon", True, (now + datetime.timedelta(days=12, hours=2)).isoformat()),
        state("gone", False, (now - datetime.timedelta(days=2)).isoformat(), last_error="disconnected: <b>boom</b>",
              last_error_at=now.isoformat()),
        state("unknown", False, None),
    ]
    monkeypatch.setattr("signing.selectors.card_device_states", lambda **_: states)
    client = client_for(user_make("operator", "view_auditevent"))

    html = client.get(DASHBOARD).content.decode()
    rows = {slug: html.split(f'id="card-{slug}"', 1)[1].split("</tr>", 1)[0]
            for slug in ("healthy", "soon", "gone", "unknown")}
    assert 'data-state="connected"' in rows["healthy"] and '<td class="card-queue">3</td>' in rows["healthy"]
    assert 'class="card-expiry expiry-warning" data-level="warning"' in rows["soon"]
    assert "Expires soon:" in rows["soon"] and "(in 12 days)" in rows["soon"]
    assert 'class="card-expiry expiry-expired" data-level="expired"' in rows["gone"] and "EXPIRED" in rows["gone"]
    assert 'data-state="disconnected"' in rows["gone"] and "disconnected: &lt;b&gt;boom&lt;/b&gt;" in rows["gone"]
    assert 'data-level="unknown"' in rows["unknown"]
    assert 'class="card-expiry expiry-ok" data-level="ok"' in rows["healthy"]
    figure = re.sub(r"\s+", " ", html.split('id="fig-cards"', 1)[1].split("</div>", 1)[0])
    assert "2 / 4" in figure and "2 certificates expiring" in figure

    body = client.get(DATA).json()
    levels = {c["slug"]: (c["cert_expiry"] or {}).get("level") for c in body["cards"]}
    assert levels == {"healthy": "ok", "soon": "warning", "gone": "expired", "unknown": None}
    assert body["cert_warnings"] == 2 and body["cards_connected"] == 2
    assert 'expiry-warning' in body["html"]["cards"] and "certificate expires in 12 days" in body["html"]["cards_compact"]


def test_json_endpoint_page_index_and_permissions():
    erp, _ = access_id_create(name="ERP Ningbo")
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        [request_at(now - datetime.timedelta(minutes=5 + i), erp.key, duration=float(i + 1)) for i in range(9)]
        + [request_at(now - datetime.timedelta(minutes=3), erp.key, "RATE_LIMITED", duration=1.0)]
    )
    operator = client_for(user_make("operator", "view_auditevent"))

    response = operator.get(DATA)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert set(body) >= {"generated_at", "refresh_seconds", "success", "latency", "hourly", "daily",
                         "top_access_ids", "failures_by_code", "cards", "cards_connected", "cert_warnings", "html"}
    assert body["refresh_seconds"] == 5
    assert body["success"]["24h"] == {"total": 10, "ok": 9, "failed": 1, "rate": 90.0, "level": "bad"}
    assert body["latency"]["p50"] == 4.5 and body["latency"]["method"] == "percentile_cont"
    assert len(body["hourly"]) == 24 and sum(b["total"] for b in body["hourly"]) == 10
    assert len(body["daily"]) == 7 and sum(b["total"] for b in body["daily"]) == 10
    assert body["top_access_ids"] == [{"key": erp.key, "name": "ERP Ningbo", "total": 10, "ok": 9, "failed": 1,
                                       "rate": 90.0}]
    assert body["failures_by_code"] == [{"outcome": "RATE_LIMITED", "count": 1}]
    html = body["html"]
    assert set(html) == {"figures", "cards", "cards_compact", "top_access_ids", "failures_by_code", "hourly_chart",
                         "daily_chart", "generated", "profiles", "declarations"}
    assert html["hourly_chart"].startswith('<svg id="chart-hourly"') and 'class="bar-ok"' in html["hourly_chart"]
    assert html["daily_chart"].startswith('<svg id="chart-daily"')
    assert body["declarations"] == {"by_status": {"signed": 0, "submitted": 0, "accepted": 0, "rejected": 0,
                                                  "needs_attention": 0}, "total": 0, "queued": 0,
                                    "unmatched_receipts": 0, "oldest_waiting": None}
    assert "No declaration is waiting for a receipt" in html["declarations"]
    assert "RATE_LIMITED" in html["failures_by_code"] and erp.key in html["top_access_ids"]
    assert html["generated"].startswith("Figures of ")

    page = operator.get(DASHBOARD).content.decode()
    for marker in ('id="audit-dashboard" data-url="/admin/audit/auditevent/dashboard/data/" data-refresh="5"',
                   '<svg id="chart-hourly"', '<svg id="chart-daily"', 'No card device is enabled.', 'id="dash-top-table"',
                   'id="dash-failures-table"', "/static/audit/dashboard.js"):
        assert marker in page, marker
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from another site
    home = operator.get("/admin/").content.decode()
    assert '<a href="/admin/audit/auditevent/dashboard/" id="home-dashboard-link">Operations dashboard</a>' in home
    assert 'data-url="/admin/audit/auditevent/dashboard/data/"' in home

    clerk = client_for(user_make("clerk", "view_accessid"))
    assert clerk.get(DATA).status_code == 403 and clerk.get(DASHBOARD).status_code == 403
    assert "home-dashboard-link" not in clerk.get("/admin/").content.decode()
    anonymous = Client().get(DATA)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


# --- Headless Chromium against a real platform and card simulator ------------------------------


def short_lived_card(key_dir: Path, days: int) -> str:
    """A simulator key directory whose RSA card certificate expires in `days` days (the
    simulator itself always issues 730 days). Returns the certNo."""
    from ukey.simulator import SimulatedCard

    card = SimulatedCard("rsa", key_dir)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    old = asn1_x509.Certificate.load((key_dir / "rsa" / "cert.der").read_bytes())["tbs_certificate"]
    tbs = asn1_x509.TbsCertificate({
        "version": "v3",
        "serial_number": old["serial_number"].native,
        "signature": {"algorithm": certs.OID_SHA1_WITH_RSA},
        "issuer": old["issuer"].copy(),
        "validity": {"not_before": asn1_x509.Time(name="utc_time", value=now - datetime.timedelta(days=365)),
                     "not_after": asn1_x509.Time(name="utc_time", value=now + datetime.timedelta(days=days))},
        "subject": old["subject"].copy(),
        "subject_public_key_info": old["subject_public_key_info"].copy(),
    })
    cert = asn1_x509.Certificate({"tbs_certificate": tbs, "signature_algorithm": {"algorithm": certs.OID_SHA1_WITH_RSA},
                                  "signature_value": certs.rsa_sha1_sign(card._rsa_key, tbs.dump())})
    (key_dir / "rsa" / "cert.der").write_bytes(cert.dump())
    assert certs.certificate_load(cert.dump()).not_after.date() == (now + datetime.timedelta(days=days)).date()
    return card.cert_no


def test_browser_dashboard_live_card_state_without_reload(simulator_factory, tmp_path, chromium):
    key_dir = tmp_path / "sim-keys"
    cert_no = short_lived_card(key_dir, days=10)
    sim = simulator_factory(key_dir=str(key_dir))
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                       DASHBOARD_REFRESH_SECONDS="2")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the server runs async code for real
    platform = Platform(env, tmp_path, name="dashboard-browser").start()
    try:
        health = platform.wait_card()
        assert health["devices"][0]["cert_no"] == cert_no
        _browse(platform, sim, chromium)
    finally:
        platform.stop()


def _browse(platform: Platform, sim, chromium) -> None:
    user_make("chief", superuser=True)
    erp, _ = access_id_create(name="ERP Ningbo")
    wms, _ = access_id_create(name="WMS Haikou")
    now = timezone.now()
    seeded = []
    for hour in range(24):  # a working day's traffic, some failures
        for i in range(3 + (hour * 7) % 11):
            outcome = "OK" if (hour + i) % 9 else ("UKEY_TIMEOUT" if hour % 2 else "SIGNATURE_VALIDATION_FAILED")
            seeded.append(request_at(now - datetime.timedelta(hours=hour, minutes=i), erp.key if i % 3 else wms.key,
                                     outcome, duration=12.0 + (i * 37 + hour) % 180))
    for day in range(1, 7):
        seeded += [request_at(now - datetime.timedelta(days=day, minutes=m), erp.key, duration=20.0)
                   for m in range(20 + day * 5)]
    AuditEvent.objects.bulk_create(seeded)
    expected_24h = selectors.success_rates()["24h"]["total"]
    page = chromium.page
    base = platform.base

    admin_login(chromium, base, "chief")
    page.wait_for_selector("#home-card-default .state-connected")  # the admin home's live card strip
    page.click("#home-dashboard-link")
    page.wait_for_url(base + DASHBOARD)

    assert page.locator("svg#chart-hourly rect.bar-ok").count() >= 20
    assert page.locator("svg#chart-hourly rect.bar-failed").count() >= 3
    assert page.locator("svg#chart-daily rect.bar-ok").count() == 7
    assert int(page.inner_text("#fig-requests-24h .dash-figure-value")) == expected_24h
    card = page.locator("#card-default")
    assert card.locator(".card-state").inner_text() == "connected"
    expiry = card.locator(".card-expiry")
    assert expiry.get_attribute("data-level") == "warning" and "Expires soon" in expiry.inner_text()
    assert "expiry-warning" in expiry.get_attribute("class")
    assert page.locator("#dash-top-table tbody tr").count() == 2
    assert page.locator("#dash-failures-table tr[data-outcome='UKEY_TIMEOUT']").count() == 1
    chromium.screenshot("dashboard")

    # Updating without a reload: a marker on the window survives every update.
    page.evaluate("window.__sameDocument = 'yes'")
    AuditEvent.objects.bulk_create([request_at(timezone.now(), erp.key, "RATE_LIMITED") for _ in range(5)])
    # Functions, not expression strings: the page's CSP forbids eval, which Playwright would need.
    page.wait_for_function("(n) => Number(document.querySelector('#fig-requests-24h .dash-figure-value')"
                           ".textContent) === n", arg=expected_24h + 5, timeout=20_000)
    assert page.locator("#dash-failures-table tr[data-outcome='RATE_LIMITED']").count() == 1
    assert int(page.get_attribute("#audit-dashboard", "data-updates")) >= 1

    sim.stop()
    page.wait_for_function("() => document.querySelector('#card-default .card-state').dataset.state"
                           " === 'disconnected'", timeout=30_000)
    assert page.evaluate("window.__sameDocument") == "yes"  # not reloaded
    assert card.locator(".card-state").inner_text() == "disconnected"
    poll(lambda: card.locator(".card-last-error").inner_text().strip() not in ("", "—"), 15, "the last error shown")
    assert page.inner_text("#fig-cards .dash-figure-value").replace(" ", "") == "0/1"
    chromium.screenshot("dashboard-card-down")
