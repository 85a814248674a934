"""The audit log in the admin: strictly read-only, every filter and the search narrowing the
list (the search on the indexes: exact or prefix, no UPPER()), the event page with its links
to the access ID and the XML document, the CSV export of exactly the filtered rows (and of
200,000 rows in bounded memory), an access ID's recent history and failure counts; then
the same through headless Chromium against a real server with real signed requests."""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import re
import time
import tracemalloc
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import sync_to_async
from django.contrib import admin
from django.core.cache import cache
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accessids.services import access_id_create
from audit.models import AuditEvent
from audit.services import audit_event_record
from console.admin import CHOICES_LIMIT, AuditEventAdmin, chain_fields
from signclient import ApiError, SignClient
from signing.models import CardDevice
from tests.admin_users import admin_login, admin_platform, client_for, fast_hashers, user_make  # noqa: F401  (fixtures)
from tests.live import poll
from xmlstore.services import xml_document_write

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

CHANGELIST = "/admin/audit/auditevent/"
EXPORT = "/admin/audit/auditevent/export/"
SHANGHAI = ZoneInfo("Asia/Shanghai")
CERT_A, CERT_B = "01691fe9a7d3", "03000000000cde6f"
SHA_A = "a" * 8 + "0123456789abcdef" * 3 + "b" * 8
SHA_B = "c" * 64
ROOT = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def fresh_choices():
    cache.clear()  # the filters' cached distinct values of an earlier test


@pytest.fixture
def chief():
    return user_make("chief", superuser=True)


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=SHANGHAI)


def event(**fields) -> AuditEvent:
    fields.setdefault("event_type", AuditEvent.API_REQUEST)
    fields.setdefault("source", "api")
    return AuditEvent.objects.create(**fields)


def seed():
    """Events of two access IDs, one unknown key, two cards, three endpoints, known times."""
    erp, _ = access_id_create(name="ERP Ningbo")
    wms, _ = access_id_create(name="WMS Haikou")
    AuditEvent.objects.all().delete()  # the creation events: only the rows below
    for slug in ("default", "card-b"):
        CardDevice.objects.get_or_create(slug=slug, defaults={"url": "ws://127.0.0.1:9", "name": f"Card {slug}"})
    e = {
        "sign_ok": event(created_at=at(2026, 3, 1, 9, 0), access_id=erp, access_key=erp.key, outcome="OK",
                         http_status=200, endpoint="POST /api/v1/sign", device="default", cert_no=CERT_A,
                         data_sha256=SHA_A, request_id="3f2a9c1e-0000-4000-8000-000000000001", duration_ms=21.5,
                         client_ip="10.0.0.5"),
        "sign_sig_fail": event(created_at=at(2026, 3, 1, 23, 59), access_id=erp, access_key=erp.key,
                               outcome="SIGNATURE_VALIDATION_FAILED", http_status=401, endpoint="POST /api/v1/sign",
                               request_id="3f2a9c1e-0000-4000-8000-000000000002", duration_ms=1.2),
        "xml_ok": event(created_at=at(2026, 3, 2, 0, 0), access_id=wms, access_key=wms.key, outcome="OK",
                        http_status=200, endpoint="POST /api/v1/sign/xml", device="card-b", cert_no=CERT_B,
                        data_sha256=SHA_B, request_id="7b1d0000-0000-4000-8000-000000000003", duration_ms=80.0),
        "xml_timeout": event(created_at=at(2026, 3, 3, 12, 0), access_id=wms, access_key=wms.key,
                             outcome="UKEY_TIMEOUT", http_status=504, endpoint="POST /api/v1/sign/xml",
                             device="card-b", request_id="7b1d0000-0000-4000-8000-000000000004", duration_ms=30000.0),
        "unknown": event(created_at=at(2026, 3, 3, 13, 0), access_key="AKUNKNOWN0000", outcome="INVALID_ACCESS_ID",
                         http_status=401, endpoint="GET /api/v1/certificate", request_id="req-unknown-5"),
        "card_down": event(created_at=at(2026, 3, 4, 8, 0), event_type=AuditEvent.CARD_DISCONNECTED,
                           source="gateway", device="default", outcome="CARD_DISCONNECTED", message="disconnected"),
    }
    return erp, wms, e


def listed(client: Client, query: str = "") -> set[int]:
    response = client.get(CHANGELIST + query)
    assert response.status_code == 200, (query, response.status_code, response.get("Location"))
    return {obj.pk for obj in response.context["cl"].result_list}


def ids(events: dict, *names: str) -> set[int]:
    return {events[n].pk for n in names}


# --- read-only ---------------------------------------------------------------------------------


def test_strictly_read_only_no_add_change_delete_or_actions(chief):
    _, _, e = seed()
    viewer = user_make("auditor", "view_auditevent")
    client = client_for(chief)
    target = e["sign_ok"]
    change = reverse("admin:audit_auditevent_change", args=[target.pk])
    delete = reverse("admin:audit_auditevent_delete", args=[target.pk])

    page = client.get(CHANGELIST).content.decode()
    assert f'href="{CHANGELIST}add/"' not in page
    assert "action-checkbox" not in page and 'name="action"' not in page and "delete_selected" not in page
    assert 'id="audit-export-csv"' in page and 'id="audit-dashboard-link"' in page
    for who in (client, client_for(viewer)):
        assert who.get(CHANGELIST + "add/").status_code == 403
        assert who.post(CHANGELIST + "add/", {"event_type": "api.request"}).status_code == 403
        assert who.get(delete).status_code == 403
        assert who.post(delete, {"post": "yes"}).status_code == 403
        assert who.post(change, {"outcome": "OK", "message": "edited"}).status_code == 403
        assert who.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [target.pk]}).status_code in (
            200, 302, 403)
        detail = who.get(change)
        assert detail.status_code == 200  # viewable
        html = detail.content.decode()
        assert 'name="_save"' not in html and 'name="_continue"' not in html and "deletelink" not in html
    target.refresh_from_db()
    assert target.outcome == "OK" and target.message == "" and AuditEvent.objects.filter(pk=target.pk).exists()
    assert AuditEvent.objects.count() == 6
    admin_instance = AuditEventAdmin(AuditEvent, None)
    assert admin_instance.actions is None and admin_instance.show_full_result_count is False
    # Without view_auditevent: nothing (not the list, an event, the export or the dashboard).
    nobody = client_for(user_make("nobody", "view_accessid"))
    for url in (CHANGELIST, change, EXPORT, "/admin/audit/auditevent/dashboard/",
                "/admin/audit/auditevent/dashboard/data/"):
        assert nobody.get(url).status_code == 403, url


# --- filters and search ------------------------------------------------------------------------


def test_each_filter_and_the_search_narrow_the_list(chief):
    erp, wms, e = seed()
    client = client_for(chief)
    everything = set(ids(e, *e))
    assert listed(client) == everything

    # Date range: whole days in the active time zone, `to` inclusive; a time is accepted too.
    with timezone.override(SHANGHAI):
        assert listed(client, "?created_from=2026-03-01&created_to=2026-03-01") == ids(e, "sign_ok", "sign_sig_fail")
        assert listed(client, "?created_from=2026-03-02") == ids(e, "xml_ok", "xml_timeout", "unknown", "card_down")
        assert listed(client, "?created_to=2026-03-02") == ids(e, "sign_ok", "sign_sig_fail", "xml_ok")
        assert listed(client, "?created_from=2026-03-03T12:30&created_to=2026-03-03T23:00") == ids(e, "unknown")
        assert listed(client, "?created_at__year=2026&created_at__month=3&created_at__day=3") == ids(
            e, "xml_timeout", "unknown")  # the date hierarchy
        bad = client.get(CHANGELIST + "?created_from=yesterday")
        assert bad.status_code == 302 and "e=1" in bad["Location"]

    assert listed(client, "?event_type__exact=card.disconnected") == ids(e, "card_down")
    assert listed(client, "?outcome=UKEY_TIMEOUT") == ids(e, "xml_timeout")
    assert listed(client, "?outcome=__failed") == everything - ids(e, "sign_ok", "xml_ok")
    assert listed(client, f"?access={erp.key}") == ids(e, "sign_ok", "sign_sig_fail")
    assert listed(client, "?access=AKUNKNOWN0000") == ids(e, "unknown")  # a claimed key that does not exist
    assert listed(client, "?device=card-b") == ids(e, "xml_timeout", "xml_ok")
    assert listed(client, "?endpoint=POST+/api/v1/sign/xml") == ids(e, "xml_ok", "xml_timeout")
    assert listed(client, f"?access={wms.key}&outcome=__failed&device=card-b") == ids(e, "xml_timeout")

    # Search: request ID / certNo / data digest, exact or by prefix (6+ characters).
    assert listed(client, "?q=3f2a9c1e-0000-4000-8000-000000000002") == ids(e, "sign_sig_fail")
    assert listed(client, "?q=3f2a9c1e") == ids(e, "sign_ok", "sign_sig_fail")
    assert listed(client, "?q=req-unknown-5") == ids(e, "unknown")
    assert listed(client, f"?q={CERT_B}") == ids(e, "xml_ok")
    assert listed(client, f"?q={CERT_A.upper()}") == ids(e, "sign_ok")  # hex in either case
    assert listed(client, f"?q={SHA_A}") == ids(e, "sign_ok")
    assert listed(client, f"?q={SHA_A[:12]}") == ids(e, "sign_ok")
    assert listed(client, "?q=aaaa") == set()  # too short for a prefix: exact only
    assert listed(client, "?q=0123456789abcdef") == set()  # inside a digest, not its start: no match
    assert listed(client, f"?q={CERT_B}&outcome=__failed") == set()

    # Index-friendly: LIKE 'prefix%' on the columns themselves, never UPPER() or '%term%'.
    with CaptureQueriesContext(connection) as queries:
        listed(client, f"?q={SHA_A[:12]}")
    searched = [q["sql"] for q in queries if 'FROM "audit_auditevent"' in q["sql"] and "LIKE" in q["sql"]]
    assert searched
    for sql in searched:
        assert "UPPER(" not in sql and "LIKE '%" not in sql
        assert f"LIKE '{SHA_A[:12]}%'" in sql

    # The filters offer bounded choices, with the titles.
    page = client.get(CHANGELIST).content.decode()
    for title in ("By date range", "By event type", "By outcome", "By access ID", "By card device", "By endpoint"):
        assert title in page, title
    assert 'id="created-from"' in page and 'type="date"' in page
    assert f"ERP Ningbo ({erp.key})" in page and "Any failure" in page and "Card card-b" in page


def test_filter_choices_are_bounded_and_counting_is_cheap(chief):
    AuditEvent.objects.bulk_create(
        AuditEvent(event_type=AuditEvent.API_REQUEST, endpoint=f"GET /api/v1/thing-{i:03d}", outcome=f"CODE_{i:03d}")
        for i in range(CHOICES_LIMIT + 15)
    )
    client = client_for(chief)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CHANGELIST)
    cl = response.context["cl"]
    endpoint_filter = next(f for f in cl.filter_specs if f.title == "endpoint")
    outcome_filter = next(f for f in cl.filter_specs if f.title == "outcome")
    assert len(endpoint_filter.lookup_choices) == CHOICES_LIMIT
    assert len(outcome_filter.lookup_choices) == CHOICES_LIMIT + 1  # + "Any failure"
    assert cl.full_result_count is None  # show_full_result_count=False: no second count
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "audit_auditevent" in q["sql"]]
    assert len(counts) == 1, counts
    # A value beyond the offered choices still filters (the URL is the truth).
    assert len(listed(client, f"?endpoint=GET+/api/v1/thing-{CHOICES_LIMIT + 10:03d}")) == 1


# --- the event page ----------------------------------------------------------------------------


def test_event_page_links_access_id_document_request_and_shows_the_chain(chief):
    access, _ = access_id_create(name="ERP Ningbo")
    document = xml_document_write(access_id=access, directory="out", filename="CEB621.xml",
                                  content="<a>1</a>", request_id="req-doc-1", checked=True)
    with_doc = audit_event_record(
        event_type=AuditEvent.API_REQUEST, access_id=access, source="api", endpoint="POST /api/v1/sign/xml",
        outcome="OK", http_status=200, request_id="req-doc-1", cert_no=CERT_A, data_sha256=SHA_A, device="default",
        duration_ms=12.5, client_ip="10.1.2.3",
        details={"document_id": document.pk, "path": document.path, "version": 1, "note": "<b>x</b>"},
    )
    unknown = audit_event_record(event_type=AuditEvent.API_REQUEST, access_key="AKNOSUCH", source="api",
                                 outcome="INVALID_ACCESS_ID", http_status=401, request_id="req-x")
    client = client_for(chief)

    html = client.get(reverse("admin:audit_auditevent_change", args=[with_doc.pk])).content.decode()
    access_url = reverse("admin:accessids_accessid_change", args=[access.pk])
    document_url = reverse("admin:xmlstore_xmldocument_change", args=[document.pk])
    assert f'<a id="event-access-link" href="{access_url}">ERP Ningbo</a> <code>{access.key}</code>' in html
    assert f'<a id="event-document-link" href="{document_url}">{document.path}</a> (version 1)' in html
    assert f'href="{CHANGELIST}?q=req-doc-1"' in html  # every event of the request
    assert f'href="{CHANGELIST}?access={access.key}"' in html
    details = re.search(r'<pre class="audit-json" id="event-details">(.*?)</pre>', html, re.S).group(1)
    assert f"&quot;document_id&quot;: {document.pk}," in details and "&lt;b&gt;x&lt;/b&gt;" in details
    assert "\n  " in details  # indented
    for value in (CERT_A, SHA_A, "POST /api/v1/sign/xml", "10.1.2.3", "12.5", "default"):
        assert value in html, value
    with_doc.refresh_from_db()
    if chain_fields():  # the hash chain, read-only, when the model has it
        assert "Hash chain" in html
        for name in chain_fields():
            assert str(getattr(with_doc, name)) in html

    html = client.get(reverse("admin:audit_auditevent_change", args=[unknown.pk])).content.decode()
    assert "<code>AKNOSUCH</code> (claimed; no such access ID)" in html and "event-document-link" not in html

    # Someone who may read the audit log but not the access IDs or documents sees no links.
    auditor = client_for(user_make("auditor", "view_auditevent"))
    html = auditor.get(reverse("admin:audit_auditevent_change", args=[with_doc.pk])).content.decode()
    assert "event-access-link" not in html and "event-document-link" not in html
    assert f"{document.path} (id {document.pk})" in html


# --- CSV export ---------------------------------------------------------------------------------


def read_csv(response) -> list[list[str]]:
    raw = b"".join(response.streaming_content)  # small exports only; the big one streams
    assert raw.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(raw[3:].decode("utf-8"), newline="")))


def test_csv_export_has_exactly_the_filtered_rows_and_columns(chief):
    erp, wms, e = seed()
    hostile = event(access_key="=HYPERLINK(\"http://x\")", outcome="INVALID_ACCESS_ID", http_status=401,
                    message="+1 formula", created_at=at(2026, 3, 5, 10, 0))
    client = client_for(chief)

    response = client.get(EXPORT + f"?access={wms.key}&outcome=__failed")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="audit-events-\d{8}-\d{6}\.csv"', response["Content-Disposition"])
    rows = read_csv(response)
    header = rows[0]
    assert header[:20] == ["time", "event_type", "outcome", "http_status", "access_id", "access_id_name", "endpoint",
                           "device", "cert_no", "data_sha256", "duration_ms", "client_ip", "request_id", "source",
                           "profile", "actor", "secret_version", "message", "details", "event_id"]
    assert header[20:] == chain_fields()
    assert [r[header.index("event_id")] for r in rows[1:]] == [str(e["xml_timeout"].pk)]
    row = dict(zip(header, rows[1], strict=True))
    assert row["outcome"] == "UKEY_TIMEOUT" and row["access_id"] == wms.key and row["access_id_name"] == "WMS Haikou"
    assert row["time"] == "2026-03-03T12:00:00.000+08:00" and row["duration_ms"] == "30000.0"
    assert row["http_status"] == "504" and row["device"] == "card-b" and row["details"] == "{}"

    def exported(query: str) -> list[int]:
        return [int(r[header.index("event_id")]) for r in read_csv(client.get(EXPORT + query))[1:]]

    # The same rows in the same order as the list, for every filter and the search.
    for query in ("", "?outcome=__failed", f"?access={erp.key}", "?device=card-b", "?q=3f2a9c1e",
                  "?created_from=2026-03-02&created_to=2026-03-03", "?event_type__exact=card.disconnected",
                  "?endpoint=POST+/api/v1/sign/xml&o=1"):
        in_list = [obj.pk for obj in client.get(CHANGELIST + query + ("&" if "?" in query else "?") + "all=")
                   .context["cl"].result_list]
        assert exported(query) == in_list, query
    assert exported("") == sorted(exported(""), key=lambda pk: AuditEvent.objects.get(pk=pk).created_at,
                                  reverse=True)

    # Text a client sent never becomes a spreadsheet formula.
    (hostile_row,) = [dict(zip(header, r, strict=True)) for r in read_csv(client.get(EXPORT + "?created_from=2026-03-05"))[1:]]
    assert hostile_row["access_id"] == "'=HYPERLINK(\"http://x\")" and hostile_row["message"] == "'+1 formula"
    assert int(hostile_row["event_id"]) == hostile.pk

    assert client.get(EXPORT + "?created_from=nonsense").status_code == 400
    assert client_for(user_make("nosy", "view_accessid")).get(EXPORT).status_code == 403
    assert len(read_csv(client_for(user_make("auditor", "view_auditevent")).get(EXPORT))) == 1 + 7


async def test_csv_export_under_asgi_streams_an_async_iterator(chief):
    """What uvicorn serves: an async iterator (a plain one would be read whole into memory by
    Django's ASGI handler), each piece read in the request's database thread."""

    @sync_to_async
    def prepare():
        erp, _, _ = seed()
        sync = Client()
        sync.force_login(chief)
        return erp, b"".join(sync.get(EXPORT + f"?access={erp.key}").streaming_content)

    erp, expected = await prepare()
    client = AsyncClient()
    await client.aforce_login(chief)
    response = await client.get(EXPORT + f"?access={erp.key}")
    assert response.status_code == 200 and response.is_async
    pieces = [piece async for piece in response.streaming_content]
    assert b"".join(pieces) == expected and expected.count(b"\r\n") == 3


EXPORT_ROWS = 200_000
MEMORY_LIMIT = 64 * 1024 * 1024
# What the export holds at most: one chunk of EXPORT_CHUNK (2,000) rows as Python objects and
# one piece of CSV text; it does not grow with the number of rows (~7 MB for 50,000 or 200,000).
STREAM_LIMIT = 16 * 1024 * 1024


def test_csv_export_of_200000_events_streams_in_bounded_memory(chief):
    access, _ = access_id_create(name="Volume ERP")
    base = timezone.now() - datetime.timedelta(days=3)
    started = time.monotonic()
    batch = 10_000
    for offset in range(0, EXPORT_ROWS, batch):
        AuditEvent.objects.bulk_create(
            [AuditEvent(created_at=base + datetime.timedelta(seconds=i), event_type=AuditEvent.API_REQUEST,
                        source="api", access_id_id=access.pk, access_key=access.key, endpoint="POST /api/v1/sign",
                        outcome="OK" if i % 10 else "UKEY_TIMEOUT", http_status=200 if i % 10 else 504,
                        request_id=f"00000000-0000-4000-8000-{i:012d}", device="default", cert_no=CERT_A,
                        data_sha256=hashlib.sha256(str(i).encode()).hexdigest(), duration_ms=10.0 + i % 90, client_ip="10.0.0.7",
                        secret_version=1, message="" if i % 10 else "UKEY_TIMEOUT after 30s")
             for i in range(offset, offset + batch)],
            batch_size=batch,
        )
    seeded = time.monotonic() - started
    client = client_for(chief)

    tracemalloc.start()
    try:
        started = time.monotonic()
        response = client.get(EXPORT + f"?access={access.key}&event_type__exact=api.request")
        assert response.status_code == 200 and response.streaming
        rows = size = pieces = 0
        first = last = b""
        for piece in response.streaming_content:  # never joined: counted as it arrives
            pieces += 1
            size += len(piece)
            rows += piece.count(b"\r\n")
            if not first:
                first = piece
            last = piece
        response.close()
        _, peak = tracemalloc.get_traced_memory()
        elapsed = time.monotonic() - started
    finally:
        tracemalloc.stop()

    assert rows == EXPORT_ROWS + 1  # the header and every event (no CR/LF inside these values)
    assert first.startswith(b"\xef\xbb\xbftime,event_type,")
    assert last.endswith(b"\r\n")
    print(f"\nCSV export: {EXPORT_ROWS} events (seeded in {seeded:.1f} s), {size / 1e6:.1f} MB in {pieces} pieces "
          f"in {elapsed:.1f} s; peak traced Python memory {peak / 1e6:.2f} MB "
          f"({100 * peak / size:.1f} % of the CSV)")
    assert peak < MEMORY_LIMIT and peak < STREAM_LIMIT
    assert peak < size / 4  # far below the size of the CSV itself

    # On this table the search reads the varchar_pattern_ops indexes, not the rows.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_auditevent")
    digest = hashlib.sha256(b"123456").hexdigest()
    searched, _ = AuditEventAdmin(AuditEvent, admin.site).get_search_results(None, AuditEvent.objects.all(),
                                                                              digest[:12])
    plan = searched.explain()
    assert "audit_auditevent_data_sha256_" in plan and "_like" in plan and "Seq Scan" not in plan, plan
    assert list(searched.values_list("request_id", flat=True)) == ["00000000-0000-4000-8000-000000123456"]

    # Unfiltered, the list shows PostgreSQL's row estimate instead of counting 200,000 rows.
    page = client.get(CHANGELIST)
    assert page.context["cl"].paginator.estimated and 'id="audit-estimate"' in page.content.decode()
    assert abs(page.context["cl"].result_count - EXPORT_ROWS) < EXPORT_ROWS * 0.1
    filtered = client.get(CHANGELIST + f"?access={access.key}&outcome=UKEY_TIMEOUT")
    assert not filtered.context["cl"].paginator.estimated
    assert filtered.context["cl"].result_count == EXPORT_ROWS // 10


# --- an access ID's page -----------------------------------------------------------------------


def test_access_id_page_shows_recent_history_and_failure_counts(chief):
    access, _ = access_id_create(name="ERP Ningbo")
    other, _ = access_id_create(name="Other")
    now = timezone.now()
    # Its creation event an hour ago: older than every request below.
    AuditEvent.objects.filter(access_id=access).update(created_at=now - datetime.timedelta(hours=1))
    recent = []
    for i in range(25):  # newest first: i minutes ago
        outcome = "OK" if i % 5 else "RATE_LIMITED"
        recent.append(event(created_at=now - datetime.timedelta(minutes=i), access_id=access, access_key=access.key,
                            outcome=outcome, http_status=200 if outcome == "OK" else 429,
                            endpoint="POST /api/v1/sign", cert_no=CERT_A))
    for days in (2, 3):  # failures within 7 days but not 24 hours
        event(created_at=now - datetime.timedelta(days=days), access_id=access, access_key=access.key,
              outcome="SIGNATURE_VALIDATION_FAILED", http_status=401, endpoint="POST /api/v1/sign")
    event(created_at=now - datetime.timedelta(days=9), access_id=access, access_key=access.key,
          outcome="SIGNATURE_VALIDATION_FAILED", http_status=401)  # older than 7 days
    event(created_at=now, access_id=other, access_key=other.key, outcome="IP_NOT_ALLOWED", http_status=403)
    client = client_for(chief)

    html = client.get(reverse("admin:accessids_accessid_change", args=[access.pk])).content.decode()
    section = html.split('id="accessid-history"', 1)[1].split("</section>", 1)[0]
    shown = [int(pk) for pk in re.findall(r'<tr class="accessid-event" data-event="(\d+)">', section)]
    # The newest 20 (its creation event is older than all 25 requests).
    assert shown == [e.pk for e in recent[:20]]
    first = section.split('data-event="%d"' % recent[0].pk, 1)[1].split("</tr>", 1)[0]
    assert f'href="{reverse("admin:audit_auditevent_change", args=[recent[0].pk])}"' in first
    assert "RATE_LIMITED" in first and CERT_A in first and "POST /api/v1/sign" in first

    counts = {o: (int(a), int(b)) for o, a, b in re.findall(
        r'<tr data-outcome="([A-Z_]+)"><td><code>[A-Z_]+</code></td><td class="num">(\d+)</td>'
        r'<td class="num">(\d+)</td>', section)}
    assert counts == {"RATE_LIMITED": (5, 5), "SIGNATURE_VALIDATION_FAILED": (0, 2)}
    summary = re.sub(r"<[^>]+>|\s+", " ", section.split('id="accessid-activity-summary">', 1)[1].split("</p>", 1)[0])
    # 24 h: 25 requests and the creation event; 7 days: + the two older failures.
    assert re.sub(r" +", " ", summary).strip() == (
        "Last 24 hours: 26 events, 5 failed · last 7 days: 28 events, 7 failed.")
    assert f'href="{CHANGELIST}?access={access.key}"' in section
    assert f'href="{CHANGELIST}?access={access.key}&amp;outcome=__failed"' in section

    # Someone who may see the access ID but not the audit log does not get its history.
    clerk = client_for(user_make("clerk", "view_accessid"))
    html = clerk.get(reverse("admin:accessids_accessid_change", args=[access.pk])).content.decode()
    assert 'id="accessid-history"' not in html and "accessid-secret-panel" in html


# --- Headless Chromium against the real server -------------------------------------------


def test_browser_changelist_event_page_export_and_access_id_history(platform, chromium):
    user_make("chief", superuser=True)
    access, secret = access_id_create(name="ERP Ningbo")
    api = SignClient(platform.base, access.key, secret)
    signed = api.sign("订单 48037605991776256")
    xml = (ROOT / "vectors" / "CEB621Message.xml").read_text(encoding="utf-8")
    signed_xml = api.sign_xml(xml, filename="CEB621-browser.xml", directory="out")
    with pytest.raises(ApiError):
        SignClient(platform.base, access.key, "wrong-secret").certificate()
    poll(lambda: AuditEvent.objects.filter(access_id=access, event_type=AuditEvent.API_REQUEST).count() >= 3, 10,
         "the three requests' events")
    xml_event = AuditEvent.objects.get(request_id=signed_xml["request_id"])
    page = chromium.page
    base = platform.base

    admin_login(chromium, base, "chief")
    assert page.is_visible("#home-dashboard-link")

    page.goto(base + CHANGELIST)
    rows = page.locator("#result_list tbody tr")
    assert rows.count() >= 4  # three requests, the access ID's creation, card events
    failed_row = page.locator("#result_list tbody tr:has-text('SIGNATURE_VALIDATION_FAILED')")
    assert failed_row.count() == 1 and access.key in failed_row.inner_text()
    assert page.locator(".audit-outcome", has_text="OK").count() >= 2
    chromium.screenshot("audit-changelist")

    # Filter by outcome with the sidebar, then by search; the export link keeps the query.
    page.click("#changelist-filter a:has-text('Any failure')")
    page.wait_for_url("**outcome=__failed**")
    assert page.locator("#result_list tbody tr").count() == 1
    href = page.get_attribute("#audit-export-csv", "href")
    assert href.startswith(EXPORT + "?") and "outcome=__failed" in href
    with page.expect_download() as download_info:
        page.click("#audit-export-csv")
    exported = Path(download_info.value.path()).read_bytes()
    assert exported.startswith(b"\xef\xbb\xbftime,") and exported.count(b"\r\n") == 2
    assert b"SIGNATURE_VALIDATION_FAILED" in exported

    page.click("#changelist-filter-extra-actions a")  # clear all filters; the search keeps them otherwise
    page.wait_for_url(base + CHANGELIST + "?")
    page.fill("#searchbar", signed_xml["request_id"][:13])
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=**")
    assert page.locator("#result_list tbody tr").count() == 1
    page.click("#result_list tbody tr th a")
    page.wait_for_url(f"**{CHANGELIST}{xml_event.pk}/change/**")
    assert page.inner_text("#event-document-link") == "out/CEB621-browser.xml"
    assert signed_xml["cert_no"] in page.content() and page.is_visible("#event-details")
    chromium.screenshot("audit-event")
    page.click("#event-document-link")
    page.wait_for_url(f"**/admin/xmlstore/xmldocument/{signed_xml['document_id']}/change/")

    page.goto(base + reverse("admin:accessids_accessid_change", args=[access.pk]))
    history = page.locator("#accessid-history-table tbody tr")
    assert history.count() == 4  # three requests and the creation
    assert page.locator("#accessid-failures tr[data-outcome='SIGNATURE_VALIDATION_FAILED']").count() == 1
    page.locator("#accessid-history").scroll_into_view_if_needed()
    chromium.screenshot("accessid-history")
    assert signed["cert_no"] == signed_xml["cert_no"]
