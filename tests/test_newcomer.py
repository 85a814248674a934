"""What a newcomer meets first: the page at `/` (and the JSON legacy clients keep getting
there), the favicon, the admin at 1366 px with one date format, Swagger's "Try it out" signing
for real, every API operation described, and a Ctrl-C that is not counted as a failure."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from core.certs import certificate_load, signature_verify
from signclient import SignClient
from tests.live import ROOT, Platform, embedded_env

CHROME_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
                 "application/signed-exchange;v=b3;q=0.7")
JAVA_DEFAULT_ACCEPT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"  # HttpURLConnection's


# --- GET / and the favicon (Django's test client) -------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["application/json", "*/*", JAVA_DEFAULT_ACCEPT, None])
def test_get_root_keeps_the_legacy_json_for_clients(client, accept):
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = client.get("/", **headers)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "running" and {e["path"] for e in body["endpoints"]} >= {"/getCode", "/health"}
    assert "Accept" in response["Vary"]


@pytest.mark.django_db
def test_get_root_shows_a_browser_a_landing_page_and_the_json_on_request(client):
    page = client.get("/", HTTP_ACCEPT=CHROME_ACCEPT)
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    for link in ('href="/admin/"', 'href="/api/v1/docs/"', 'href="/api/v1/health"', 'href="/api/v1/schema/"'):
        assert link in html
    assert "Accept" in page["Vary"] and "Content-Security-Policy" in page  # an HTML page of the platform
    as_json = client.get("/?format=json", HTTP_ACCEPT=CHROME_ACCEPT)
    assert as_json["Content-Type"] == "application/json" and as_json.json()["status"] == "running"
    assert client.post("/", HTTP_ACCEPT=CHROME_ACCEPT).status_code == 405  # GET only, as before


@pytest.mark.django_db
def test_the_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    icon = b"".join(response.streaming_content)
    assert icon[:4] == b"\x00\x00\x01\x00" and b"PNG" in icon[:40]  # an ICO holding a PNG


def test_every_operation_of_the_api_is_described():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    undescribed = [f"{method.upper()} {path}" for path, operations in schema["paths"].items()
                   for method, operation in operations.items() if not operation.get("description")]
    assert undescribed == []


# --- the platform in a browser ------------------------------------------------------------------


def _manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """`make run` as a newcomer gets it: embedded defaults, its own card simulator, an admin
    from the environment and an access ID made with the command (the default scopes)."""
    from core.ports import port_free

    tmp = tmp_path_factory.mktemp("newcomer")
    env = embedded_env(tmp / "var", UKEY_SIMULATOR_PORT=str(port_free()), UKEY_SIMULATOR_KEY_DIR=str(tmp / "sim"),
                       DJANGO_SUPERUSER_USERNAME="newcomer", DJANGO_SUPERUSER_PASSWORD="a-newcomer-password-1")
    platform = Platform(env, tmp, args=("--prepare",)).start(migrate=False)
    try:
        platform.wait_card()
        access = json.loads(_manage(env, "accessid", "create", "--name", "Swagger trial", "--json"))
        yield platform, access
    finally:
        platform.stop()


def test_the_admin_fits_a_laptop_with_one_date_format_and_no_missing_file(newcomer, chromium):
    platform, access = newcomer
    page = chromium.page
    page.set_viewport_size({"width": 1366, "height": 768})
    failed = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    # Some traffic, so that the lists have rows with dates in them.
    client = SignClient(platform.base, access["access_id"], access["secret"])
    client.sign("a first request")
    page.goto(platform.base + "/")
    assert page.title() == "Signing platform"
    page.click("#link-admin")
    page.fill("#id_username", "newcomer")
    page.fill("#id_password", "a-newcomer-password-1")
    page.click("input[type=submit]")
    page.wait_for_url(platform.base + "/admin/")
    lists = ["/admin/accessids/accessid/", "/admin/signing/carddevice/", "/admin/xmlstore/xmldocument/",
             "/admin/audit/auditevent/", "/admin/webhooks/webhookdelivery/"]
    for path in ["/admin/", *lists, "/admin/audit/auditevent/dashboard/"]:
        page.goto(platform.base + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1366, f"{path} is {width} px wide"
        overflow = page.evaluate("[...document.querySelectorAll('#changelist .results')]"
                                 ".map(e => e.scrollWidth - e.clientWidth)")
        assert all(extra <= 1 for extra in overflow), f"{path}: the table is cut off by {overflow} px"
        # Dates: the language's one format (English: 2026-12-07 14:30:05), never Django's
        # "Dec. 7, 2026, 2:30 p.m." beside it.
        text = page.inner_text("#content")
        assert not re.search(r"\b[ap]\.m\.", text), f"{path} shows a date in another format"
        chromium.screenshot("newcomer" + path.replace("/", "-").rstrip("-"))
    page.goto(platform.base + "/admin/audit/auditevent/")
    times = page.locator("#result_list .field-time_display")
    assert times.count() >= 2
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", times.nth(i).inner_text().strip())
               for i in range(times.count()))
    page.goto(platform.base + "/admin/")
    page.click("text=View site")
    assert page.locator("#link-docs").is_visible()  # the landing page, not raw JSON
    assert failed == []  # no favicon.ico (or anything else) missing on any page


def test_swagger_try_it_out_signs_in_the_browser_and_keeps_the_secret_nowhere(newcomer, chromium):
    platform, access = newcomer
    page = chromium.page
    page.goto(platform.base + "/api/v1/docs/")
    sign_op = "#operations-api-api_v1_sign_create"
    page.wait_for_selector(sign_op)
    page.fill("#signing-access-id", access["access_id"])
    page.fill("#signing-secret", access["secret"])
    page.click(f"{sign_op} .opblock-summary")
    page.click(f"{sign_op} button.try-out__btn")
    text = "报关单 4403 signed from Swagger"
    page.fill(f"{sign_op} textarea.body-param__text", json.dumps({"data": text}, ensure_ascii=False))
    with page.expect_response(lambda r: r.url.endswith("/api/v1/sign")) as answered:
        page.click(f"{sign_op} button.execute")
    response = answered.value
    assert response.status == 200, response.text()
    request_headers = response.request.headers
    assert request_headers["x-access-id"] == access["access_id"] and len(request_headers["x-signature"]) == 64
    body = response.json()
    cert = certificate_load(SignClient(platform.base, access["access_id"], access["secret"]).certificate()
                            ["certificate_pem"])
    assert signature_verify(cert, text.encode(), body["signature"])
    chromium.screenshot("swagger-try-it-out-signed")
    # A GET with a query (Chinese, a space, a plus): the canonical query string is built in the page.
    list_op = "#operations-api-xml_documents_list"
    page.click(f"{list_op} .opblock-summary")
    page.click(f"{list_op} button.try-out__btn")
    page.fill(f"{list_op} input[placeholder='q']", "报关 a+b")
    with page.expect_response(lambda r: "/api/v1/xml-documents?" in r.url) as listed:
        page.click(f"{list_op} button.execute")
    assert listed.value.status == 200, listed.value.text()
    assert "HMAC-SHA256\nGET\n/api/v1/xml-documents\n" in page.text_content("#signing-last")
    # Nothing of it kept by the browser: no storage, no cookie; the page sent only the signature.
    stored = page.evaluate("JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")
    cookies = json.dumps(chromium.context.cookies())
    for place in (stored, cookies, json.dumps(request_headers)):
        assert access["secret"] not in place
    # A wrong secret is refused as any client's would be.
    page.fill("#signing-secret", access["secret"] + "x")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/sign")) as refused:
        page.click(f"{sign_op} button.execute")
    assert refused.value.status == 401 and refused.value.json()["code"] == "SIGNATURE_VALIDATION_FAILED"


# --- a planned stop is not a failure -------------------------------------------------------------


def _stop_and_read_events(platform: Platform, sig: signal.Signals, read) -> list[tuple[str, str]]:
    platform.proc.send_signal(sig)
    assert platform.proc.wait(timeout=60) == 0 or platform.proc.returncode in (-sig, 128 + sig)
    return read()


def test_ctrl_c_records_a_planned_stop_not_a_lost_card(tmp_path):
    """Embedded mode (`make run`): SIGINT, as a terminal's Ctrl-C delivers it."""
    from core.ports import port_free

    env = embedded_env(tmp_path / "var", UKEY_SIMULATOR_PORT=str(port_free()),
                       UKEY_SIMULATOR_KEY_DIR=str(tmp_path / "sim"))
    platform = Platform(env, tmp_path).start()
    platform.wait_card()
    code = ("import json; from audit.models import AuditEvent as E; from audit.selectors import card_failures; "
            "print(json.dumps({'events': list(E.objects.filter(device='default').order_by('seq')"
            ".values_list('event_type', 'outcome')), 'failures': card_failures()}))")

    def read():
        return json.loads(_manage(env, "shell", "-c", code).strip().splitlines()[-1])

    result = _stop_and_read_events(platform, signal.SIGINT, read)
    types = [event_type for event_type, _ in result["events"]]
    assert types[0] == "card.connected" and types[-1] == "card.gateway_stopped", types
    assert "card.disconnected" not in types and result["failures"] == {}
    assert result["events"][-1][1] == "OK"


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_sigterm_with_separate_gateway_processes_records_a_planned_stop_not_a_lost_card(tmp_path):
    """Redis mode: runplatform's children (the simulator, `ukey_gateway --all`) are stopped in
    order, the gateway before the card it talks to."""
    from audit.models import AuditEvent
    from audit.selectors import card_failures
    from core.ports import port_free
    from tests.conftest import test_database_url
    from tests.live import only_card_row, services_env

    only_card_row("stop-default")
    env = services_env(test_database_url(), tmp_path / "var", UKEY_DEFAULT_DEVICE="stop-default",
                       UKEY_SIMULATOR_PORT=str(port_free()), UKEY_SIMULATOR_KEY_DIR=str(tmp_path / "sim"),
                       UKEY_GATEWAY_MODE="external")
    env.pop("UKEY_URL", None)
    platform = Platform(env, tmp_path).start()
    platform.wait_card()

    def read():
        return list(AuditEvent.objects.filter(device="stop-default").order_by("seq")
                    .values_list("event_type", "outcome"))

    events = _stop_and_read_events(platform, signal.SIGTERM, read)
    types = [event_type for event_type, _ in events]
    assert "card.connected" in types and types[-1] == "card.gateway_stopped", types
    assert "card.disconnected" not in types and "stop-default" not in card_failures()
