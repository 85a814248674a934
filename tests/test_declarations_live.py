"""Declarations end to end: the platform as `make run` starts it (a real card simulator behind
the gateway), a client calling `POST /api/v1/declarations`, and the fake customs exchange
server of tests/exchange.py on loopback, which checks every envelope, verifies every
signature with the certificate inside and serves receipts later.

- JSON → signed XML for each supported type, equal to the hand-checked documents (with the
  generated guids and time put back), the signature verifying with the card's certificate;
  submitted, receipts arrive, `accepted`; a refusing receipt gives `rejected` with its text.
- Bad JSON → 400 naming each field, nothing stored or sent.
- The Declarations screen in headless Chromium: list, search, timeline, re-submit.
- The platform killed between commit and send: sent after the restart, exactly once.

One platform for the module (its last test kills and restarts it)."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.ceb import ceb_verify
from core.certs import certificate_load
from declarations.models import Declaration, Submission
from declarations.services import registration_set
from tests.admin_users import admin_login, user_make
from tests.conftest import SimulatorProcess, test_database_url
from tests.exchange import FakeExchange
from tests.live import Platform, get_json, only_card_row, poll, services_env
from tests.test_api import assert_error, call, certificate
from xmlstore.models import XmlDocument

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

VECTORS = Path(__file__).resolve().parent / "vectors" / "declarations"
TYPES = ["CEB311Message", "CEB303Message", "CEB621Message", "CEB623Message", "CEB411Message", "CEB511Message"]
SLUG = "declare-rsa"
DXP_ID = "DXPENT0000530815"
SIGNATURE = re.compile(r'<ds:Signature xmlns:ds="http://www\.w3\.org/2000/09/xmldsig#">.*?</ds:Signature>', re.S)


@pytest.fixture(scope="module")
def live(django_db_setup, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("declarations")
    exchange = FakeExchange().start()
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys")).start()
    with django_db_blocker.unblock():
        only_card_row(SLUG)
        env = services_env(
            test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_DEFAULT_DEVICE=SLUG,
            UKEY_GATEWAY_MODE="embedded",  # one process: killing it kills everything of it
            UKEY_PROBE_INTERVAL="3600", CUSTOMS_CEB_SERVER=exchange.url, CUSTOMS_CEB_TIMEOUT="3",
            DECLARATION_RECEIPT_POLL_SECONDS="0.5", DECLARATION_RETRY_BASE_SECONDS="0.5",
            DECLARATION_RETRY_MAX_SECONDS="1",
        )
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        platform = Platform(env, tmp, name="declarations").start()
    platform.wait_card()
    yield platform, exchange
    platform.stop()
    sim.stop()
    exchange.stop()


def client(registered: bool = True):
    access, secret = access_id_create(name=f"Shop ERP {uuid.uuid4().hex[:8]}")
    if registered:
        registration_set(access_id=access, cop_code="4601630004", cop_name="海南示例进出口贸易有限公司", dxp_id=DXP_ID,
                         ebp_code="4601630004", ebp_name="海南示例跨境电商平台有限公司", ebc_code="4601630004",
                         ebc_name="海南示例进出口贸易有限公司")
    return access, secret


def declare(platform, access, secret, body: bytes | dict):
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    return call(platform, "POST", "/api/v1/declarations", raw_body=raw, access=access, secret=secret)


def detail(platform, access, secret, pk: int) -> dict:
    status, _, body = call(platform, "GET", f"/api/v1/declarations/{pk}", access=access, secret=secret)
    assert status == 200, body
    return body


def unsigned_as_written(body: dict, message_type: str) -> str:
    """The signed XML without its Signature, with the vector's guids and appTime put back."""
    index = TYPES.index(message_type) + 1
    text = SIGNATURE.sub("", body["signed_xml"])
    text = text.replace(body["guid"], f"{message_type[3:6]}00000-0000-4000-8000-00000000000{index}")
    text = text.replace(body["head_guid"], f"{message_type[3:6]}00000-0000-4000-8000-0000000000{index}0")
    return re.sub(r"<ceb:appTime>\d{14}</ceb:appTime>", "<ceb:appTime>20260105093000</ceb:appTime>", text)


def test_each_type_from_json_to_signed_xml_submitted_and_accepted(live):
    platform, exchange = live
    access, secret = client()
    card = certificate(platform, access, secret)
    created = {}
    for message_type in TYPES:
        status, headers, body = declare(platform, access, secret, (VECTORS / f"{message_type}.json").read_bytes())
        assert status == 201, body
        assert body["message_type"] == message_type and body["status"] == "signed"
        assert headers["X-Card-Device"] == SLUG and body["device"] == SLUG
        # Exactly the hand-checked document, signed: the signature verifies with the card's certificate.
        assert unsigned_as_written(body, message_type) == (VECTORS / f"{message_type}.xml").read_text(encoding="utf-8")
        check = ceb_verify(body["signed_xml"])
        assert check.valid, check.reason
        assert check.certificate.der == certificate_load(card["certificate_pem"]).der
        assert body["cert_no"] == card["cert_no"] and re.fullmatch(r"[0-9A-F-]{36}", body["guid"])
        created[message_type] = body
    for message_type, body in created.items():
        poll(lambda b=body: detail(platform, access, secret, b["id"])["status"] == "accepted", 20,
             f"{message_type} accepted")
        done = detail(platform, access, secret, body["id"])
        assert exchange.count(body["guid"]) == 1
        assert [r["return_status"] for r in done["receipts"]] == ["2", "120"]
        assert done["return_status"] == "120" and done["submission"]["status"] == "sent"
        assert [step["kind"] for step in done["timeline"]] == [
            "built", "signed", "queued", "submitted", "receipt", "receipt"]
    # Every declaration's document is in the XML store, signed, with its original.
    document = XmlDocument.objects.get(pk=created["CEB621Message"]["document_id"])
    assert document.signed and document.content == created["CEB621Message"]["signed_xml"]
    assert document.directory == "declarations/CEB621Message"
    status, _, page = call(platform, "GET", "/api/v1/declarations?status=accepted&reference=HN20260105-0001",
                           access=access, secret=secret)
    assert status == 200 and {r["message_type"] for r in page["results"]} == {"CEB311Message", "CEB621Message",
                                                                               "CEB623Message", "CEB411Message",
                                                                               "CEB511Message"}
    (event,) = AuditEvent.objects.filter(request_id=created["CEB311Message"]["request_id"])
    assert (event.endpoint, event.http_status, event.device) == ("POST /api/v1/declarations", 201, SLUG)
    assert event.details["declaration"] == created["CEB311Message"]["id"]


def test_a_refusing_receipt_gives_rejected_with_its_text(live):
    platform, exchange = live
    access, secret = client()
    request = json.loads((VECTORS / "CEB311Message.json").read_text(encoding="utf-8"))
    request["data"]["OrderHead"]["orderNo"] = "HN-REFUSED-1"
    exchange.script["HN-REFUSED-1"] = (("2", "新增申报成功[{guid}]"), ("100", "订购人身份信息校验未通过"))
    status, _, body = declare(platform, access, secret, request)
    assert status == 201, body
    poll(lambda: detail(platform, access, secret, body["id"])["status"] == "rejected", 20, "rejected")
    done = detail(platform, access, secret, body["id"])
    assert done["return_status"] == "100" and "订购人身份信息校验未通过" in done["status_text"]
    assert done["receipts"][-1]["outcome"] == "rejected"


def test_bad_json_is_refused_naming_each_field_and_nothing_is_stored_or_sent(live):
    platform, exchange = live
    access, secret = client()
    posts = len(exchange.state.posts)
    request = json.loads((VECTORS / "CEB311Message.json").read_text(encoding="utf-8"))
    head = request["data"]["OrderHead"]
    del head["consignee"]
    head["goodsValue"] = "143.60"
    head["orderNo"] = "N" * 61
    head["couponCode"] = "SPRING"
    request["data"]["OrderList"][0]["qty"] = "one"
    body = assert_error(declare(platform, access, secret, request), 400, "INVALID_REQUEST")
    assert body["details"]["fields"] == {
        "data.OrderHead.consignee": ["is required"],
        "data.OrderHead.goodsValue": ["must be a number, not a string"],
        "data.OrderHead.orderNo": ["too long: at most 60 characters (got 61)"],
        "data.OrderHead.couponCode": ["is not an element of OrderHead"],
        "data.OrderList[0].qty": ["must be a number, not a string"],
    }
    shapes = [
        ({"message_type": "CEB311Message"}, {"data": ["send either data (JSON built into a message) or xml, "
                                                       "not both or none"]}),
        ({"data": {}, "submit": "yes", "extra": 1}, {"extra": ["unknown field (expected message_type, data, xml, "
                                                               "submit, device)"],
                                                     "submit": ["must be a boolean, not a string"],
                                                     "message_type": ["is required with data: one of CEB311Message, "
                                                                      "CEB303Message, CEB621Message, CEB623Message, "
                                                                      "CEB411Message, CEB511Message"]}),
        ({"message_type": "CEB311Message", "data": []}, {"data": ["must be an object, not an array"]}),
        ({"xml": "<a/>"}, {"xml": ["the root element is <a> in no namespace; a customs message has root "
                                   "ceb:CEB<nnn>Message in namespace http://www.chinaport.gov.cn/ceb "
                                   "(e.g. ceb:CEB621Message)"]}),
    ]
    for request, fields in shapes:
        body = assert_error(declare(platform, access, secret, request), 400, "INVALID_REQUEST")
        assert body["details"]["fields"] == fields, body
    unregistered, unregistered_secret = client(registered=False)
    body = assert_error(declare(platform, unregistered, unregistered_secret,
                                (VECTORS / "CEB411Message.json").read_bytes()), 400, "INVALID_REQUEST")
    assert list(body["details"]["fields"]) == ["registration"]
    assert not Declaration.objects.exists() and not XmlDocument.objects.exists() and not Submission.objects.exists()
    assert len(exchange.state.posts) == posts
    refused = AuditEvent.objects.filter(endpoint="POST /api/v1/declarations", http_status=400)
    assert refused.count() == 2 + len(shapes) and {e.outcome for e in refused} == {"INVALID_REQUEST"}


def test_xml_given_is_signed_and_stored_and_not_sent_when_asked_not_to(live):
    platform, exchange = live
    access, secret = client()
    xml = (VECTORS / "CEB621Message.xml").read_text(encoding="utf-8")
    status, _, body = declare(platform, access, secret, {"xml": xml, "submit": False})
    assert status == 201, body
    assert body["source"] == "xml" and body["status"] == "signed" and body["submission"] is None
    assert body["guid"] == "62100000-0000-4000-8000-000000000003" and body["keys"]["copNo"] == "COP20260105001"
    assert SIGNATURE.sub("", body["signed_xml"]) == xml and ceb_verify(body["signed_xml"]).valid
    time.sleep(1.5)
    assert exchange.count(body["guid"]) == 0
    other, other_secret = client()
    assert_error(call(platform, "GET", f"/api/v1/declarations/{body['id']}", access=other, secret=other_secret),
                 404, "NOT_FOUND")


def test_the_declarations_screen_lists_shows_the_timeline_and_resubmits(live, chromium):
    platform, exchange = live
    base = platform.base
    access, secret = client()
    request = json.loads((VECTORS / "CEB311Message.json").read_text(encoding="utf-8"))
    ok = declare(platform, access, secret, request)[2]
    request["data"]["OrderHead"]["orderNo"] = "HN-BROWSER-REFUSED"
    exchange.script["HN-BROWSER-REFUSED"] = (("100", "订单支付金额与支付单不一致"),)
    refused = declare(platform, access, secret, request)[2]
    poll(lambda: Declaration.objects.get(pk=ok["id"]).status == "accepted"
         and Declaration.objects.get(pk=refused["id"]).status == "rejected", 20, "accepted and rejected")
    user_make("chief", superuser=True)
    page = chromium.page
    admin_login(chromium, base, "chief")
    page.goto(base + "/admin/declarations/declaration/")
    assert page.locator("#result_list .decl-badge[data-status=accepted]").count() == 1
    assert page.locator("#result_list .decl-badge[data-status=rejected]").count() == 1
    chromium.screenshot("declarations-list")
    page.fill("#searchbar", "HN-BROWSER-REFUSED")
    page.press("#searchbar", "Enter")
    page.wait_for_load_state()
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1 and "HN-BROWSER-REFUSED" in rows.first.inner_text()
    rows.first.locator("th a").click()
    page.wait_for_selector("#decl-timeline")
    assert page.locator("#decl-status .decl-badge").get_attribute("data-status") == "rejected"
    assert "订单支付金额与支付单不一致" in page.locator("#decl-status-text").inner_text()
    assert page.locator(".decl-step").evaluate_all("steps => steps.map(s => s.dataset.kind)") == [
        "built", "signed", "queued", "submitted", "receipt"]
    signed, receipts = page.locator("#signed-pane").bounding_box(), page.locator("#receipts-pane").bounding_box()
    assert signed["x"] < receipts["x"] and abs(signed["y"] - receipts["y"]) < 5  # side by side
    assert "HN-BROWSER-REFUSED" in page.locator("#signed-pane").inner_text()
    assert page.locator("#decl-receipts .decl-receipt").count() == 1
    chromium.screenshot("declaration-rejected")
    # The fix (here: the data customs checks against), then re-submit: built and signed again.
    exchange.script.pop("HN-BROWSER-REFUSED")
    page.click("#resubmit")
    page.wait_for_selector(".messagelist .success")
    assert "re-submitted" in page.locator(".messagelist").inner_text()
    declaration = Declaration.objects.get(pk=refused["id"])
    assert declaration.resubmissions == 1 and declaration.guid != refused["guid"]
    poll(lambda: Declaration.objects.get(pk=refused["id"]).status == "accepted", 20, "accepted after the re-submission")
    assert exchange.count(declaration.guid) == 1 and exchange.count(refused["guid"]) == 1
    assert declaration.document_version == 2 and ceb_verify(declaration.document.content).valid
    page.reload()
    assert page.locator("#decl-status .decl-badge").get_attribute("data-status") == "accepted"
    kinds = page.locator(".decl-step").evaluate_all("steps => steps.map(s => s.dataset.kind)")
    assert kinds[5:] == ["resubmitted", "queued", "submitted", "receipt", "receipt"]
    assert page.locator("#resubmit").count() == 0  # an accepted declaration is not re-submitted
    chromium.screenshot("declaration-resubmitted")
    page.goto(base + "/admin/audit/auditevent/dashboard/")
    panel = page.locator("#dash-declarations-table")
    assert panel.locator("tr[data-status=accepted] td.num").inner_text() == "2"
    event = AuditEvent.objects.get(event_type=AuditEvent.DECLARATION_RESUBMITTED)
    assert event.actor_name == "chief" and event.source == "admin"


def test_killed_between_commit_and_send_it_is_sent_after_the_restart_exactly_once(live):
    platform, exchange = live
    access, secret = client()
    exchange.stop()  # the send cannot happen yet
    status, _, body = declare(platform, access, secret, (VECTORS / "CEB511Message.json").read_bytes())
    assert status == 201, body  # committed: declaration, document and outbox row
    poll(lambda: Submission.objects.get(declaration_id=body["id"]).attempts >= 1
         and Submission.objects.get(declaration_id=body["id"]).status == "pending", 10, "a failed attempt")
    platform.proc.kill()  # SIGKILL: no shutdown, nothing flushed
    platform.proc.wait()
    assert Submission.objects.get(declaration_id=body["id"]).status == "pending"
    exchange.start()
    platform.start(migrate=False)
    platform.wait_card()
    poll(lambda: Declaration.objects.get(pk=body["id"]).status in ("submitted", "accepted"), 20, "sent after restart")
    time.sleep(2.0)
    assert exchange.count(body["guid"]) == 1 and exchange.posts_for(body["guid"]) == 1  # exactly once
    assert get_json(platform.base + "/api/v1/health")[0] == 200
