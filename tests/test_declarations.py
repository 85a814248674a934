"""Declarations in the platform's process: JSON → XML (the standard's element order, compared
with hand-checked documents, and valid enough that customs' own XSDs took them during
development), field-by-field refusals, the exchange's envelope and receipt formats, company
registrations (audited, from the command line and the admin), and the submission worker
against a fake customs exchange server (tests/exchange.py, a real HTTP server on loopback
that verifies every signature): taken, refused, the server down and back (exactly once),
no answer (never sent twice), a worker that died while sending, receipts that accept,
reject, match by preNo, match nothing, and fire a webhook each; re-submitting.

Messages are signed here with a simulated card's real key (ukey.simulator.SimulatedCard),
exactly as core.ceb signs them; the live tests (test_declarations_live.py) sign through
the card gateway. The worker tests run on PostgreSQL: the test run's SQLite is an in-memory
shared-cache database, on which the worker's connection and the test's fail with "table is
locked" instead of waiting; test_declarations_sqlite.py runs the worker of a whole platform on
a SQLite file, as deployed."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from lxml import etree

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.ceb import (
    XmlInputError,
    ceb_document_check,
    ceb_document_digest,
    ceb_signature_insert,
    ceb_signed_info,
    ceb_verify,
    signature_method_uri,
)
from core.cebexchange import (
    CHINA_TZ,
    ReceiptFormatError,
    exchange_envelope,
    exchange_reply_ok,
    receipt_facts,
    receipt_outcome,
    receipt_query,
    receipt_records,
)
from core.cebmessages import (
    MESSAGES,
    CebDataError,
    Transfer,
    ceb_message_build,
    ceb_message_facts,
    declaration_json_load,
)
from core.jsontext import json_compact
from declarations import services
from declarations.models import Declaration, DeclarationEvent, Receipt, Registration, Submission
from declarations.services import declaration_prepare, declaration_record, registration_set
from declarations.worker import DeclarationWorker
from signing.services import CebSignResult
from tests.exchange import CHINA, FakeExchange
from tests.live import poll
from tests.services import free_port
from tests.workers import WorkerThread
from ukey.simulator import SimulatedCard
from webhooks.models import WebhookDelivery
from webhooks.services import webhook_create

VECTORS = Path(__file__).resolve().parent / "vectors" / "declarations"
TYPES = list(MESSAGES)
TRANSFER = Transfer(cop_code="4601630004", cop_name="海南示例进出口贸易有限公司", dxp_id="DXPENT0000530815")
DEFAULTS = {"ebpCode": "4601630004", "ebpName": "海南示例跨境电商平台有限公司", "ebcCode": "4601630004",
            "ebcName": "海南示例进出口贸易有限公司"}


def vector(message_type: str) -> dict:
    return declaration_json_load((VECTORS / f"{message_type}.json").read_bytes())


def vector_guids(index: int, message_type: str) -> dict:
    """The guids and appTime the hand-checked documents were written with."""
    return {"guid": f"{message_type[3:6]}00000-0000-4000-8000-00000000000{index}",
            "head_guid": f"{message_type[3:6]}00000-0000-4000-8000-0000000000{index}0", "app_time": "20260105093000"}


def build(message_type: str, data, **kwargs):
    guids = {"guid": "G" * 36, "head_guid": "H" * 36, "app_time": "20260105093000", **kwargs}
    return ceb_message_build(message_type, data, transfer=TRANSFER, defaults=DEFAULTS, **guids)


def refused(message_type: str, data) -> dict[str, list[str]]:
    with pytest.raises(CebDataError) as caught:
        build(message_type, data)
    return caught.value.fields


# --- JSON → XML ------------------------------------------------------------------------------------


@pytest.mark.parametrize("index, message_type", list(enumerate(TYPES, 1)))
def test_json_gives_exactly_the_hand_checked_document(index, message_type):
    request = vector(message_type)
    built = ceb_message_build(message_type, request["data"], transfer=TRANSFER, defaults=DEFAULTS,
                              **vector_guids(index, message_type))
    expected = (VECTORS / f"{message_type}.xml").read_bytes().decode("utf-8")
    assert built.xml == expected
    # Independently of the text: every element of the head is in the standard's order, no other.
    root = etree.fromstring(built.xml.encode("utf-8"))
    spec = MESSAGES[message_type]
    head = next(root.iter("{http://www.chinaport.gov.cn/ceb}" + spec.head.name))
    names = [etree.QName(child).localname for child in head]
    order = [f.name for f in spec.head.fields]
    assert names == sorted(names, key=order.index)
    assert all(f.name in names for f in spec.head.fields if f.required)
    assert [etree.QName(c).localname for c in root][-1] == "BaseTransfer"


def test_numbers_keep_the_client_text_and_defaults_fill_what_the_standard_fixes():
    built = build("CEB311Message", vector("CEB311Message")["data"])
    assert "<ceb:goodsValue>143.60</ceb:goodsValue>" in built.xml and "<ceb:price>22.00</ceb:price>" in built.xml
    assert "<ceb:orderType>I</ceb:orderType>" in built.xml and "<ceb:buyerIdType>1</ceb:buyerIdType>" in built.xml
    assert built.xml.count("<ceb:currency>142</ceb:currency>") == 3  # head and both items
    assert "<ceb:gnum>1</ceb:gnum>" in built.xml and "<ceb:gnum>2</ceb:gnum>" in built.xml  # numbered when left out
    assert "促销 &amp; 满减" in built.xml  # escaped
    assert built.keys == {"orderNo": "HN20260105-0001", "ebpCode": "4601630004", "ebcCode": "4601630004"}
    # The registration's defaults never override what the client sent.
    export = build("CEB303Message", vector("CEB303Message")["data"])
    assert "<ceb:ebpCode>4403160ABC</ceb:ebpCode>" in export.xml
    # 1.500000 fits the standard's 5 fraction digits as a value: written as the value.
    data = vector("CEB411Message")["data"]
    data["PaymentHead"]["amountPaid"] = decimal.Decimal("156.670000")
    assert "<ceb:amountPaid>156.67</ceb:amountPaid>" in build("CEB411Message", data).xml


def test_every_refused_field_is_named():
    data = vector("CEB311Message")["data"]
    head = data["OrderHead"]
    del head["buyerName"]  # missing mandatory
    head["goodsValue"] = "143.60"  # text in a number field
    head["orderNo"] = "X" * 61  # too long
    head["consigneeDistrict"] = "4601"  # wrong fixed length
    head["promotion"] = "x"  # unknown
    head["guid"] = "mine"  # generated by the platform
    head["freight"] = True  # a boolean is not a number
    head["taxTotal"] = decimal.Decimal("1.234567")  # too many fraction digits
    data["OrderList"][0]["qty"] = "one"
    data["OrderList"][1]["gnum"] = decimal.Decimal("2.5")
    data["BaseTransfer"] = {"copCode": "x"}
    fields = refused("CEB311Message", data)
    assert fields == {
        "data.OrderHead.buyerName": ["is required"],
        "data.OrderHead.goodsValue": ["must be a number, not a string"],
        "data.OrderHead.orderNo": ["too long: at most 60 characters (got 61)"],
        "data.OrderHead.consigneeDistrict": ["must be exactly 6 characters (got 4)"],
        "data.OrderHead.promotion": ["is not an element of OrderHead"],
        "data.OrderHead.guid": ["is generated by the platform: leave it out"],
        "data.OrderHead.freight": ["must be a number, not a boolean"],
        "data.OrderHead.taxTotal": ["at most 5 digits after the decimal point (got 6)"],
        "data.OrderList[0].qty": ["must be a number, not a string"],
        "data.OrderList[1].gnum": ["must be a whole number, not 2.5"],
        "data.BaseTransfer": ["is filled from the company registration: leave it out"],
    }


def test_refusals_of_shape_dates_and_lists():
    assert refused("CEB311Message", {"OrderHead": {}})["data.OrderList"] == ["is required: at least one item"]
    assert refused("CEB311Message", []) == {"data": ["must be an object, not an array"]}
    assert refused("CEB999Message", {}) == {"message_type": [f"must be one of {', '.join(MESSAGES)}"]}
    data = vector("CEB311Message")["data"]
    data["OrderList"] = [data["OrderList"][0]] * 100
    assert refused("CEB311Message", data) == {"data.OrderList": ["must have 1 to 99 items (got 100)"]}
    data = vector("CEB411Message")["data"]
    data["PaymentHead"]["payTime"] = "20261305092811"
    data["PaymentHead"]["payerName"] = "  "
    data["PaymentHead"]["telephone"] = "138\x01"
    assert refused("CEB411Message", data) == {
        "data.PaymentHead.payTime": ["must be a time YYYYMMDDhhmmss, not '20261305092811'"],
        "data.PaymentHead.payerName": ["must not be empty"],
        "data.PaymentHead.telephone": ["contains a control character XML cannot carry"],
    }
    data = vector("CEB621Message")["data"]
    data["InventoryHead"]["declTime"] = "2026-01-05"
    data["InventoryHead"]["packNo"] = 1234567890
    data["InventoryHead"]["grossWeight"] = decimal.Decimal("12345678901234567890")
    assert refused("CEB621Message", data) == {
        "data.InventoryHead.declTime": ["must be a date YYYYMMDD (8 digits)"],
        "data.InventoryHead.packNo": ["at most 9 digits"],
        "data.InventoryHead.grossWeight": ["at most 19 digits in all (got 20)"],
    }


def test_the_clients_data_is_kept_with_its_number_text():
    raw = b'{"a": 143.60, "b": [1, 2.50, "x\\"y"], "c": null, "d": true, "e": 1e2}'
    text = json_compact(declaration_json_load(raw))
    assert text == '{"a":143.60,"b":[1,2.50,"x\\"y"],"c":null,"d":true,"e":1E+2}'
    assert declaration_json_load(text) == declaration_json_load(raw)


def test_facts_of_a_message_the_client_built():
    xml = (VECTORS / "CEB621Message.xml").read_text(encoding="utf-8")
    facts = ceb_message_facts(xml)
    assert (facts.message_type, facts.guid, facts.head_guid) == (
        "CEB621Message", "62100000-0000-4000-8000-000000000003", "62100000-0000-4000-8000-000000000030")
    assert facts.keys["copNo"] == "COP20260105001" and facts.dxp_id == "DXPENT0000530815"
    with pytest.raises(XmlInputError) as caught:
        ceb_message_facts(xml.replace("</ceb:Inventory>", "</ceb:Inventory><ceb:Inventory>"
                                      + xml.split("<ceb:Inventory>")[1].split("</ceb:Inventory>")[0]
                                      + "</ceb:Inventory>", 1))
    assert caught.value.code == "not_one_document"
    with pytest.raises(XmlInputError) as caught:
        ceb_message_facts(xml.replace("CEB621Message", "CEB513Message"))
    assert caught.value.code == "not_supported"


# --- the exchange's formats ------------------------------------------------------------------------------


def test_the_envelope_carries_the_message_base64_in_the_documented_shape():
    sent_at = datetime.datetime(2026, 1, 5, 1, 30, 5, tzinfo=datetime.timezone.utc)
    body = exchange_envelope(signed_xml="<ceb:CEB311Message>订单</ceb:CEB311Message>", message_type="CEB311Message",
                             sent_at=sent_at)
    assert body.decode("utf-8") == (
        '{"Message":{"MessageHead":{"MessageId":"","MessageType":"CEB311Message.xml","SenderID":"SHOP",'
        '"ReceiverID":"PORT","SendTime":"2026-01-05 09:30:05","Version":"1.0"},'
        '"MessageBody":{"data":"PGNlYjpDRUIzMTFNZXNzYWdlPuiuouWNlTwvY2ViOkNFQjMxMU1lc3NhZ2U+"}}}')
    assert exchange_reply_ok("OK") and exchange_reply_ok(" OK\r\n") and exchange_reply_ok('"OK"')
    assert not exchange_reply_ok("ok") and not exchange_reply_ok("") and not exchange_reply_ok("报文签名验证失败")
    since = datetime.datetime(2026, 1, 5, 1, 0, 0, tzinfo=datetime.timezone.utc)
    assert receipt_query(message_type="CEB621Message", dxp_id="DXPENT1", since=since) == (
        "/ceb622msg", {"dxpid": "DXPENT1", "qryid": "20260105090000"})


def test_receipt_records_as_json_and_as_the_java_text_the_exchange_is_reported_to_answer():
    text = ("[{org_id=1, instm=1691397837000, agentcode=46016602EV, re_elist_guid_cus=9422f96b-ccbc, returnstatus=2, "
            "ebpcode=46016602EV, preno=B20230807570793612, returntime2=20230807164357, ebccode=46016602EV, "
            "returninfo=清单新增申报成功[3CQHDG][电商企业编码：46016602EV订单编号：JO_D807], returntime=1691397830000, "
            "re_elist_guid=3CQHDG-WEASLEY, customscode=6409}, {org_id=1, returnstatus=800, "
            "returninfo=[Code:2600;Desc:放行], re_elist_guid=4e7a2dab, invtno=64092023I000722460}]")
    first, second = receipt_records(text)
    assert first["returninfo"] == "清单新增申报成功[3CQHDG][电商企业编码：46016602EV订单编号：JO_D807]"
    facts = receipt_facts(first)
    assert facts.guids == ("3CQHDG-WEASLEY",) and facts.customs_ref == "9422f96b-ccbc"
    assert facts.keys == {"ebpCode": "46016602EV", "preNo": "B20230807570793612", "ebcCode": "46016602EV"}
    assert facts.return_time == datetime.datetime(2023, 8, 7, 16, 43, 57, tzinfo=CHINA_TZ)
    assert receipt_facts(second).keys == {"invtNo": "64092023I000722460"}
    as_json = json.dumps([{"re_order_guid": "G1", "returnStatus": "120", "orderNo": "SO1", "returnTime": "20260105093001123"}])
    (record,) = receipt_records(as_json)
    facts = receipt_facts(record)
    assert (facts.guids, facts.keys, facts.return_status) == (("G1",), {"orderNo": "SO1"}, "120")
    assert facts.return_time == datetime.datetime(2026, 1, 5, 9, 30, 1, 123000, tzinfo=CHINA_TZ)
    assert receipt_records('{"data": []}') == [] and receipt_records("[]") == [] and receipt_records("") == []
    for bad in ("<html>maintenance</html>", '{"code": 1}', "[1, 2]", "[{a}]"):
        with pytest.raises(ReceiptFormatError):
            receipt_records(bad)
    assert [receipt_outcome(c)[0] for c in ("2", "120", "100", "-301010", "800", "501", "4", "42")] == [
        "in_progress", "accepted", "rejected", "rejected", "accepted", "needs_attention", "needs_attention",
        "needs_attention"]


# --- registrations ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_registration_from_the_command_line_with_clear_output_and_an_audit_event():
    access, _ = access_id_create(name="ERP")
    out = io.StringIO()
    call_command("registration", "set", "--access-id", access.key, "--cop-code", "4601630004",
                 "--cop-name", "海南示例进出口贸易有限公司", "--dxp-id", "DXPENT0000530815", "--ebp-code", "4601630004",
                 stdout=out)
    text = out.getvalue()
    assert f"registration created for access ID {access.key}" in text
    assert "copCode          4601630004" in text and "dxpId            DXPENT0000530815" in text
    assert "exchange server  (CUSTOMS_CEB_SERVER)" in text
    event = AuditEvent.objects.get(event_type=AuditEvent.REGISTRATION_CHANGED)
    assert event.source == "command" and event.access_id_id == access.pk and event.details["created"] is True
    # A change names what changed; the same values again change nothing (no event).
    out = io.StringIO()
    call_command("registration", "set", "--access-id", access.key, "--server", "http://127.0.0.1:9/", stdout=out)
    assert "changed: server_url" in out.getvalue()
    call_command("registration", "set", "--access-id", access.key, "--server", "http://127.0.0.1:9/", stdout=io.StringIO())
    assert AuditEvent.objects.filter(event_type=AuditEvent.REGISTRATION_CHANGED).count() == 2
    out = io.StringIO()
    call_command("registration", "list", stdout=out)
    assert access.key in out.getvalue() and "DXPENT0000530815" in out.getvalue()
    out = io.StringIO()
    call_command("registration", "show", "--access-id", access.key, "--json", stdout=out)
    assert json.loads(out.getvalue())["server_url"] == "http://127.0.0.1:9/"
    with pytest.raises(CommandError, match="no access ID"):
        call_command("registration", "set", "--access-id", "AK000", "--cop-code", "C", stdout=io.StringIO())
    other, _ = access_id_create(name="ERP 2")
    with pytest.raises(CommandError, match="cop_name: is required"):
        call_command("registration", "set", "--access-id", other.key, "--cop-code", "C", "--dxp-id", "D",
                     stdout=io.StringIO())
    with pytest.raises(CommandError, match="cop_code"):
        call_command("registration", "set", "--access-id", other.key, "--cop-code", "C" * 19, "--cop-name", "N",
                     "--dxp-id", "D", stdout=io.StringIO())
    assert not Registration.objects.filter(access_id=other).exists()
    call_command("registration", "delete", "--access-id", access.key, stdout=io.StringIO())
    assert not Registration.objects.exists()
    assert AuditEvent.objects.filter(event_type=AuditEvent.REGISTRATION_DELETED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_registration_of_a_card_pool_in_the_admin_is_audited(admin_client):
    from signing.models import CardPool

    pool = CardPool.objects.create(slug="customs", enterprise="海南示例进出口贸易有限公司")
    add = reverse("admin:declarations_registration_add")
    form = {"pool": pool.pk, "cop_code": "4601630004", "cop_name": "海南示例进出口贸易有限公司", "dxp_id": "DXPENT0000530815",
            "server_url": "ftp://x"}
    assert "Enter a valid URL" in admin_client.post(add, form).content.decode()
    access, _ = access_id_create(name="ERP")
    both = admin_client.post(add, {**form, "server_url": "", "access_id": access.pk}).content.decode()
    assert "Choose either an access ID" in both
    assert admin_client.post(add, {**form, "server_url": "https://exchange.example.invalid:8090"}).status_code == 302
    registration = Registration.objects.get(pool=pool)
    assert registration.server_url == "https://exchange.example.invalid:8090"
    event = AuditEvent.objects.get(event_type=AuditEvent.REGISTRATION_CHANGED)
    assert (event.source, event.actor_name, event.device) == ("admin", "admin", "customs")
    change = reverse("admin:declarations_registration_change", args=[registration.pk])
    admin_client.post(change, {**form, "server_url": "", "dxp_id": "DXPENT0000000002"})
    registration.refresh_from_db()
    assert registration.dxp_id == "DXPENT0000000002" and registration.server_url == ""
    assert AuditEvent.objects.filter(event_type=AuditEvent.REGISTRATION_CHANGED).latest("id").details["fields"] == [
        "dxp_id", "server_url"]
    admin_client.post(reverse("admin:declarations_registration_delete", args=[registration.pk]), {"post": "yes"})
    assert not Registration.objects.exists() and AuditEvent.objects.filter(
        event_type=AuditEvent.REGISTRATION_DELETED, source="admin").exists()


# --- the worker against the fake exchange ----------------------------------------------------------------


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return SimulatedCard("rsa", tmp_path_factory.mktemp("declaration-card"))


@pytest.fixture
def fast(settings):
    settings.DECLARATION_RETRY_BASE_SECONDS = 0.2
    settings.DECLARATION_RETRY_MAX_SECONDS = 0.5
    settings.DECLARATION_RECEIPT_POLL_SECONDS = 0.3
    settings.CUSTOMS_CEB_TIMEOUT = 1.5
    return settings


@pytest.fixture
def exchange():
    fake = FakeExchange().start()
    yield fake
    fake.stop()


@pytest.fixture
def worker(transactional_db, fast):
    thread = WorkerThread(DeclarationWorker(poll_interval=0.2)).start()
    yield thread.worker
    thread.stop()


@pytest.fixture
def erp(transactional_db):
    access, _ = access_id_create(name="ERP")
    return access


def card_sign(card: SimulatedCard, xml: str, device: str = "test-card") -> CebSignResult:
    """What signing.services.ceb_xml_sign produces, with the simulated card's key in this process."""
    document = ceb_document_check(xml)
    digest = ceb_document_digest(document)
    method = signature_method_uri(card.algorithm)
    signed_info = ceb_signed_info(signature_method_uri=method, digest=digest)
    value = card.sign(signed_info.encode("utf-8"))
    signed_xml = ceb_signature_insert(xml, signed_info=signed_info, signature_value=value, cert_no=card.cert_no,
                                      certificate_b64=card.cert.der_base64, document=document)
    assert ceb_verify(signed_xml).valid
    return CebSignResult(signed_xml=signed_xml, message_type=document.message_type, digest_value=digest,
                         signature_value=value, signature_method=method, cert_no=card.cert_no,
                         algorithm=card.algorithm, device=device)


def declare(card, access, server_url: str, message_type: str = "CEB311Message", *, data=None, submit=True,
            tamper: bool = False) -> Declaration:
    registration, _, _ = registration_set(access_id=access, cop_code=TRANSFER.cop_code, cop_name=TRANSFER.cop_name,
                                          dxp_id=TRANSFER.dxp_id, server_url=server_url, **{
                                              "ebp_code": DEFAULTS["ebpCode"], "ebp_name": DEFAULTS["ebpName"],
                                              "ebc_code": DEFAULTS["ebcCode"], "ebc_name": DEFAULTS["ebcName"]})
    prepared = declaration_prepare(message_type=message_type, data=data or vector(message_type)["data"],
                                   registration=registration, submit=submit)
    signed = card_sign(card, prepared.xml)
    if tamper:
        signed = CebSignResult(**{**signed.__dict__, "signed_xml": signed.signed_xml.replace("李小宝", "李大宝", 1)})
    with transaction.atomic():
        return declaration_record(access_pk=access.pk, prepared=prepared, signed=signed, request_id="req-1")


def fresh(declaration: Declaration) -> Declaration:
    return Declaration.objects.get(pk=declaration.pk)


def kinds(declaration: Declaration) -> list[str]:
    return list(declaration.events.order_by("at", "pk").values_list("kind", flat=True))


def test_taken_by_the_exchange_then_its_receipts_accept_it_and_each_fires_a_webhook(card, erp, exchange, worker):
    hook = webhook_create(name="ERP receipts", url="http://127.0.0.1:9/hook", secret="whsec-receipts-0123456789",
                          card_failures=False, declaration_receipts=True)
    declaration = declare(card, erp, exchange.url)
    assert declaration.status == "signed" and declaration.submissions.count() == 1  # queued in its transaction
    taken = exchange.wait_taken(declaration.guid)
    assert ceb_verify(taken.xml).valid and taken.xml == declaration.document.content  # what was stored is what went
    assert taken.envelope["Message"]["MessageHead"]["MessageType"] == "CEB311Message.xml"
    poll(lambda: fresh(declaration).status == "accepted", 15, "accepted by its receipts")
    declaration = fresh(declaration)
    assert declaration.return_status == "120" and "海关入库" in declaration.status_text
    assert kinds(declaration) == ["built", "signed", "queued", "submitted", "receipt", "receipt"]
    receipts = list(declaration.receipts.order_by("return_time"))
    assert [(r.return_status, r.outcome, r.matched_by) for r in receipts] == [
        ("2", "in_progress", "guid"), ("120", "accepted", "guid")]
    assert receipts[0].return_info == f"新增申报成功[{declaration.head_guid}]"
    submission = declaration.submissions.get()
    assert (submission.status, submission.attempts, submission.reply) == ("sent", 1, "OK")
    assert exchange.count(declaration.guid) == 1
    submitted = AuditEvent.objects.get(event_type=AuditEvent.DECLARATION_SUBMITTED)
    assert submitted.access_id_id == erp.pk and submitted.details["declaration"] == declaration.pk
    receipt_events = AuditEvent.objects.filter(event_type=AuditEvent.DECLARATION_RECEIPT).order_by("id")
    assert [e.outcome for e in receipt_events] == ["IN_PROGRESS", "ACCEPTED"]
    deliveries = WebhookDelivery.objects.filter(webhook=hook).order_by("created_at")
    assert [d.event_type for d in deliveries] == ["declaration.receipt", "declaration.receipt"]
    assert [d.payload["receipt"]["return_status"] for d in deliveries] == ["2", "120"]
    assert deliveries[1].payload["receipt"]["declaration"] == declaration.pk
    # Polled again and again: the same records are kept once.
    time.sleep(1.0)
    assert declaration.receipts.count() == 2 and Receipt.objects.count() == 2
    (endpoint, params) = exchange.state.gets[-1]
    assert endpoint == "ceb312msg" and params["dxpid"] == TRANSFER.dxp_id and len(params["qryid"]) == 14


def test_exchange_down_retried_with_backoff_and_delivered_once_when_back(card, erp, worker):
    port = free_port()  # nothing listens here yet
    declaration = declare(card, erp, f"http://127.0.0.1:{port}")
    poll(lambda: Submission.objects.get(declaration=declaration).attempts >= 3, 15, "three attempts")
    submission = Submission.objects.get(declaration=declaration)
    assert submission.status in ("pending", "sending") and fresh(declaration).status == "signed"
    assert "connection refused" in submission.last_error or submission.status == "sending"
    exchange = FakeExchange(port=port).start()
    try:
        poll(lambda: fresh(declaration).status in ("submitted", "accepted"), 15, "delivered once it is back")
        time.sleep(1.0)
        assert exchange.count(declaration.guid) == 1 and len(exchange.state.posts) == 1
        submission = Submission.objects.get(declaration=declaration)
        # The third attempt may have been claimed before the exchange came back (then it failed and a
        # fourth delivered) or after (then it delivered): either way every attempt but the last failed.
        assert submission.status == "sent" and submission.attempts >= 3
        failed = declaration.events.filter(kind=DeclarationEvent.ATTEMPT_FAILED)
        assert failed.count() == submission.attempts - 1 and "connection refused" in failed.first().text
    finally:
        exchange.stop()


def test_a_refusal_is_never_retried_and_rejects(card, erp, exchange, worker):
    exchange.mode = "refuse"
    declaration = declare(card, erp, exchange.url)
    poll(lambda: fresh(declaration).status == "rejected", 10, "rejected")
    time.sleep(1.0)
    assert len(exchange.state.posts) == 1 and exchange.count(declaration.guid) == 0
    declaration = fresh(declaration)
    assert "refused by the exchange server" in declaration.status_text and "报文签名验证失败" in declaration.status_text
    submission = declaration.submissions.get()
    assert (submission.status, submission.attempts, submission.last_http_status) == ("refused", 1, 200)
    event = AuditEvent.objects.get(event_type=AuditEvent.DECLARATION_SUBMIT_FAILED)
    assert event.outcome == "REFUSED" and event.details["declaration"] == declaration.pk


def test_the_fake_exchange_refuses_a_signature_that_does_not_verify(card, erp, exchange, worker):
    declaration = declare(card, erp, exchange.url, tamper=True)
    poll(lambda: fresh(declaration).status == "rejected", 10, "refused")
    assert "签名验证失败" in fresh(declaration).status_text and "digest mismatch" in fresh(declaration).status_text


def test_5xx_is_retried(card, erp, exchange, worker):
    exchange.mode = "error500"
    declaration = declare(card, erp, exchange.url)
    poll(lambda: Submission.objects.get(declaration=declaration).attempts >= 2, 10, "two attempts")
    exchange.mode = "ok"
    poll(lambda: exchange.count(declaration.guid) == 1, 10, "taken")
    poll(lambda: fresh(declaration).submitted_at is not None, 5, "recorded")
    assert Submission.objects.get(declaration=declaration).status == "sent"


def test_no_answer_after_sending_is_never_sent_again_and_a_receipt_settles_it(card, erp, exchange, worker):
    exchange.mode = "drop"
    declaration = declare(card, erp, exchange.url)
    poll(lambda: fresh(declaration).status == "needs_attention", 10, "outcome unknown")
    time.sleep(1.0)
    assert len(exchange.state.posts) == 1  # not sent twice
    submission = declaration.submissions.get()
    assert submission.status == "unconfirmed" and "no answer after sending" in submission.last_error
    assert "may or may not" in fresh(declaration).status_text
    # It did reach customs: the receipt names its guid.
    now = datetime.datetime.now(CHINA)
    exchange.add_receipt("CEB311Message", TRANSFER.dxp_id, {
        "re_order_guid": declaration.head_guid, "orderno": declaration.order_no, "returnstatus": "120",
        "returninfo": "[Code:2600;Desc:海关入库]", "returntime2": now.strftime("%Y%m%d%H%M%S")})
    poll(lambda: fresh(declaration).status == "accepted", 15, "accepted by the receipt")
    submission.refresh_from_db()
    assert submission.status == "sent" and submission.reply == "confirmed by a receipt"


def test_a_submission_left_by_a_dead_worker_is_not_sent_again(card, erp, exchange, fast):
    declaration = declare(card, erp, exchange.url)
    (job,) = services.submissions_claim(room=1)  # a worker took it, and died
    Submission.objects.filter(pk=job.id).update(lease_until=timezone.now() - datetime.timedelta(seconds=1))
    thread = WorkerThread(DeclarationWorker(poll_interval=0.2)).start()
    try:
        poll(lambda: fresh(declaration).status == "needs_attention", 15, "outcome unknown")
    finally:
        thread.stop()
    assert exchange.count(declaration.guid) == 0 and not exchange.state.posts
    submission = declaration.submissions.get()
    assert submission.status == "unconfirmed" and "lease expired" in submission.last_error


def test_a_rejecting_receipt_gives_rejected_with_its_text(card, erp, exchange, worker):
    exchange.script["HN20260105-0001"] = (("2", "新增申报成功[{guid}]"), ("100", "订购人身份信息校验未通过"))
    declaration = declare(card, erp, exchange.url)
    poll(lambda: fresh(declaration).status == "rejected", 15, "rejected by its receipt")
    declaration = fresh(declaration)
    assert declaration.return_status == "100" and "订购人身份信息校验未通过" in declaration.status_text
    assert "海关退单" in declaration.status_text


def test_inventory_receipts_in_the_text_form_match_by_the_preno_the_first_one_taught(card, erp, exchange, worker):
    exchange.receipt_format = "java"
    exchange.script["COP20260105001"] = (("2", "清单新增申报成功[{guid}]"), ("120", "[Code:1800;Desc:逻辑校验通过]"),
                                         ("800", "[Code:2600;Desc:放行]"))
    declaration = declare(card, erp, exchange.url, "CEB621Message")
    poll(lambda: fresh(declaration).return_status == "800", 15, "released")
    declaration = fresh(declaration)
    assert declaration.status == "accepted" and declaration.pre_no.startswith("B") and declaration.invt_no
    assert list(declaration.receipts.order_by("return_time").values_list("matched_by", flat=True)) == [
        "guid", "preNo", "preNo"]


def test_a_receipt_that_matches_nothing_is_kept_and_shown(card, erp, exchange, worker, admin_client):
    declaration = declare(card, erp, exchange.url)
    exchange.wait_taken(declaration.guid)
    exchange.add_receipt("CEB311Message", TRANSFER.dxp_id, {
        "re_order_guid": "00000000-0000-0000-0000-000000000000", "orderno": "NOT-OURS-1", "returnstatus": "100",
        "returninfo": "不是我们的订单"})
    poll(lambda: Receipt.objects.filter(declaration__isnull=True).exists(), 15, "the stray receipt")
    stray = Receipt.objects.get(declaration__isnull=True)
    assert stray.return_info == "不是我们的订单" and stray.outcome == "rejected" and stray.record["orderno"] == "NOT-OURS-1"
    event = AuditEvent.objects.get(event_type=AuditEvent.DECLARATION_RECEIPT, outcome="UNMATCHED")
    assert "matches no declaration" in event.message
    page = admin_client.get(reverse("admin:declarations_receipt_changelist"), {"matched": "no"}).content.decode()
    assert "不是我们的订单" in page and "matches no declaration" in page
    assert fresh(declaration).status != "rejected"  # nobody else's status moved


def test_resubmitting_a_refused_xml_declaration_sends_it_again_once(card, erp, exchange, worker, admin_user):
    from audit.services import ChangeContext

    exchange.mode = "refuse"
    xml = (VECTORS / "CEB411Message.xml").read_text(encoding="utf-8")
    registration, _, _ = registration_set(access_id=erp, cop_code="C1", cop_name="N", dxp_id=TRANSFER.dxp_id,
                                          server_url=exchange.url)
    prepared = declaration_prepare(message_type=None, xml=xml, registration=registration, submit=True)
    with transaction.atomic():
        declaration = declaration_record(access_pk=erp.pk, prepared=prepared, signed=card_sign(card, xml),
                                         request_id="req-2")
    poll(lambda: fresh(declaration).status == "rejected", 10, "refused")
    exchange.mode = "ok"
    services.declaration_resubmit(declaration=fresh(declaration), context=ChangeContext(source="admin", actor=admin_user))
    poll(lambda: fresh(declaration).status in ("submitted", "accepted"), 10, "taken after the re-submission")
    assert exchange.count(declaration.guid) == 1 and len(exchange.state.posts) == 2
    declaration = fresh(declaration)
    assert declaration.resubmissions == 1 and "resubmitted" in kinds(declaration)
    assert [s.status for s in declaration.submissions.order_by("created_at")] == ["refused", "sent"]
    event = AuditEvent.objects.get(event_type=AuditEvent.DECLARATION_RESUBMITTED)
    assert event.actor_name == "admin" and "sent again as it is" in event.message
    with pytest.raises(services.DeclarationError, match="not re-submitted"):
        services.declaration_resubmit(declaration=fresh(declaration))


def test_several_workers_never_send_one_declaration_twice(card, erp, exchange, fast):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite deployments run one worker (several share PostgreSQL with SKIP LOCKED)")
    declarations = [declare(card, erp, exchange.url, data={**vector("CEB311Message")["data"], "OrderHead": {
        **vector("CEB311Message")["data"]["OrderHead"], "orderNo": f"SO-{n}"}}) for n in range(12)]
    workers = [WorkerThread(DeclarationWorker(poll_interval=0.2, concurrency=3)).start() for _ in range(3)]
    try:
        poll(lambda: Submission.objects.filter(status="sent").count() == 12, 30, "all taken")
        time.sleep(0.5)
    finally:
        for thread in workers:
            thread.stop()
    assert sorted(t.guid for t in exchange.taken()) == sorted(d.guid for d in declarations)
    assert set(Submission.objects.values_list("attempts", flat=True)) == {1}


def test_the_dashboard_counts_by_status_and_names_the_oldest_waiting(card, erp, admin_client):
    older = declare(card, erp, "http://127.0.0.1:9", submit=False)
    newer = declare(card, erp, "http://127.0.0.1:9", "CEB621Message", submit=False)
    declare(card, erp, "http://127.0.0.1:9", "CEB411Message", submit=False)
    an_hour_ago = timezone.now() - datetime.timedelta(minutes=61)
    Declaration.objects.filter(pk=older.pk).update(status="submitted", submitted_at=an_hour_ago)
    Declaration.objects.filter(pk=newer.pk).update(status="submitted", submitted_at=timezone.now())
    body = admin_client.get(reverse("admin:audit_auditevent_dashboard_data")).json()
    figures = body["declarations"]
    assert figures["by_status"] == {"signed": 1, "submitted": 2, "accepted": 0, "rejected": 0, "needs_attention": 0}
    assert figures["oldest_waiting"]["id"] == older.pk and figures["oldest_waiting"]["minutes"] == 61
    html = body["html"]["declarations"]
    assert "CEB311Message HN20260105-0001" in html and "(61 min ago)" in html
    assert reverse("admin:declarations_declaration_change", args=[older.pk]) in html
