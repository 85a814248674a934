"""`core.rowsinsert.rows_insert`, the INSERT without the ORM's compilation that the request path
uses for audit events and new XML documents: a row it writes is stored exactly as the same
instance saved by `Model.save()` (every column as the database holds it: times, JSON, addresses,
booleans), `auto_now`/`auto_now_add` are filled, many rows keep their order across statements,
a model it cannot write as `save()` would is refused. Run on PostgreSQL and on SQLite (embedded)."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection, models
from django.db.models.signals import post_save, pre_save
from django.utils import timezone

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.rowsinsert import rows_insert
from xmlstore.models import XmlDocument

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]


def _columns(instance) -> dict:
    """The row as the database stores it, each column as text (no ORM conversion on the way back)."""
    model = type(instance)
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(f'CAST({quote(f.column)} AS TEXT)' for f in fields)} "
                       f"FROM {quote(model._meta.db_table)} WHERE {quote(model._meta.pk.column)} = %s", [instance.pk])
        return dict(zip([f.attname for f in fields], cursor.fetchone(), strict=True))


def _inserted(instance):
    with connection.cursor() as cursor:
        rows_insert(cursor, type(instance), [instance])
    return instance


def test_an_audit_event_reads_back_as_the_orm_writes_it():
    access, _ = access_id_create(name="ERP")
    when = timezone.now() - datetime.timedelta(minutes=3)

    def event(seq):  # seq is unique; not chained here (the chain is audit/chain.py's, tested there)
        return AuditEvent(event_type=AuditEvent.API_REQUEST, created_at=when, request_id="r-1", access_key=access.key,
                          access_id=access, source="api", profile="gys", endpoint="POST /api/v1/sign", outcome="OK",
                          http_status=200, duration_ms=1.25, client_ip="2001:DB8:0::1", message="签名 ok",
                          details={"document_id": 7, "path": "订单/a.xml", "nested": [1, None, True]},
                          seq=seq, prev_hash="a" * 64, hash="b" * 64)

    by_orm, raw = event(10**12), _inserted(event(10**12 + 1))
    by_orm.save()
    assert raw.pk and raw.pk != by_orm.pk and not raw._state.adding
    assert {**_columns(raw), "seq": None} == {**_columns(by_orm), "seq": None}
    stored = AuditEvent.objects.get(pk=raw.pk)
    assert stored.details["path"] == "订单/a.xml" and stored.client_ip == "2001:db8::1"
    assert AuditEvent.objects.filter(pk=raw.pk, created_at=when, client_ip="2001:db8::1").exists()


def test_a_new_xml_document_reads_back_as_the_orm_writes_it_with_its_times_filled():
    access, _ = access_id_create(name="ERP")
    started = timezone.now()

    def document(name):
        return XmlDocument(access_id=access, directory="出口", filename=name, content="<a>单</a>", sha256="c" * 64,
                           size=11, version=1, message_type="CEB621Message", signed=True, original_content="<a/>",
                           cert_no="7daebe6a", signed_at=started, device="sim", request_id="r-2", source="api")

    by_orm, raw = document("one.xml"), _inserted(document("two.xml"))
    by_orm.save()
    orm_columns, raw_columns = _columns(by_orm), _columns(raw)
    for name in ("filename", "created_at", "updated_at"):
        orm_columns.pop(name), raw_columns.pop(name)
    assert raw_columns == orm_columns
    row = XmlDocument.objects.get(pk=raw.pk)
    assert started <= row.created_at <= row.updated_at <= timezone.now()
    assert (row.signed, row.deleted_at, row.filename) == (True, None, "two.xml")
    assert XmlDocument.objects.filter(pk=raw.pk, signed=True, created_at__date=row.created_at.date()).exists()
    # New documents are written without Model.save(): no receiver may be waiting for their signals.
    assert not pre_save.has_listeners(XmlDocument) and not post_save.has_listeners(XmlDocument)


def test_many_rows_keep_their_order_across_statements():
    events = [AuditEvent(event_type=AuditEvent.API_REQUEST, request_id=f"r-{i}", seq=10**12 + i, prev_hash="", hash="",
                         details={"i": i}) for i in range(120)]  # more than one statement's variables
    with connection.cursor() as cursor:
        rows_insert(cursor, AuditEvent, events)
    pks = [e.pk for e in events]
    assert pks == sorted(pks) and len(set(pks)) == 120
    stored = dict(AuditEvent.objects.filter(pk__in=pks).values_list("pk", "request_id"))
    assert [stored[e.pk] for e in events] == [f"r-{i}" for i in range(120)]


class _Coded(models.CharField):  # a field that changes its value on the way to the database
    def pre_save(self, instance, add):
        return getattr(instance, self.attname).upper()


def test_a_model_it_would_write_differently_is_refused():
    class Marked(models.Model):
        code = _Coded(max_length=10)

        class Meta:
            app_label = "xmlstore"

    with connection.cursor() as cursor, pytest.raises(TypeError, match="code has its own pre_save"):
        rows_insert(cursor, Marked, [Marked(code="a")])
