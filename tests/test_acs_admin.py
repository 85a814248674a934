"""The access system party's page in the admin: the settings and the four buttons (设置密钥,
使用新密钥, 生成证书, 上传加密证书), in headless Chromium against the real server, ending with
the independent client signing through /acs/ with what the buttons produced; and, through the
test client, what the page refuses (a bad certificate, a clerk who may only look)."""

from __future__ import annotations

import json

import pytest

from accessids.acs import acs_settings_set
from accessids.models import AcsParty
from accessids.services import access_id_create, access_id_profile_set
from audit.models import AuditEvent
from tests.admin_users import PASSWORD, admin_login, admin_platform, client_for, fast_hashers, user_make  # noqa: F401  (fixtures)
from tests.test_acs_api import acs

pytestmark = [pytest.mark.django_db(transaction=True)]


def acs_url(access) -> str:
    return f"/admin/accessids/accessid/{access.pk}/acs/"


@pytest.mark.services
def test_browser_the_four_buttons_then_a_client_signs(platform, chromium, tmp_path):
    chief = user_make("chief", superuser=True)
    user_make("clerk", "view_accessid")
    access, _secret = access_id_create(name="Access system party")
    access_id_profile_set(access_id=access, name="acs", enabled=True)
    page, base = chromium.page, platform.base

    admin_login(chromium, base, "chief")
    page.goto(base + f"/admin/accessids/accessid/{access.pk}/change/")
    page.click("#acs-page")
    page.wait_for_selector("#acs-settings-form")
    page.fill("#id_sender_code", "S-BROWSER")
    page.select_option("#id_encryption", "rsa+aes")
    page.select_option("#id_signature", "md5")
    page.check("#id_token_required")
    page.click("#acs-settings-save")
    page.wait_for_selector("#acs-key-set")
    assert "saved" in page.inner_text(".messagelist")
    assert page.inner_text("#acs-key-version").strip() == "none"

    # 设置密钥: left empty, a key is generated and shown once.
    page.click("#acs-key-set")
    page.wait_for_selector("#acs-new-key")
    key = page.inner_text("#acs-new-key").strip()
    assert len(key) == 32
    chromium.screenshot("acs-key-generated")
    page.goto(base + acs_url(access))
    assert key not in page.content() and page.locator("#acs-pending-fingerprint").inner_text() != "none"

    # 使用新密钥, no grace (there was no key before).
    page.check("input[name=grace][value='0']")
    page.click("#acs-key-use")
    page.wait_for_selector("#acs-key-fingerprint")
    assert page.inner_text("#acs-key-version").strip() == "1"
    assert page.inner_text("#acs-pending-fingerprint").strip() == "none"

    # 生成证书: the public certificate downloads at once.
    with page.expect_download() as download_info:
        page.click("#acs-cert-generate")
    downloaded = download_info.value
    assert downloaded.suggested_filename == "acs-S-BROWSER-platform-certificate.pem"
    platform_cert = open(downloaded.path(), encoding="ascii").read()
    assert platform_cert.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE" not in platform_cert
    page.goto(base + acs_url(access))
    assert "RSA-2048" in page.inner_text("#acs-platform-certificate")

    # 上传加密证书: the party's certificate; the page shows its subject, fingerprint and expiry.
    client_key, client_cert = acs.make_client_keypair(2048, common_name="browser-party")
    cert_file = tmp_path / "party.pem"
    cert_file.write_text(client_cert)
    page.set_input_files("#id_certificate", str(cert_file))
    page.click("#acs-cert-upload")
    page.wait_for_selector(".messagelist")
    shown = page.inner_text("#acs-party-certificate")
    assert "browser-party" in shown and "RSA-2048" in shown
    assert page.locator("#acs-warnings").count() == 0
    chromium.screenshot("acs-party-configured")

    # What the buttons made works: the party's own client signs through /acs/.
    client = acs.AcsClient(base, "S-BROWSER", encryption="rsa+aes", secret_key=key, symmetric_key=None,
                           platform_certificate_pem=platform_cert, client_private_key_pem=client_key, use_token=True)
    result = client.call("sign", {"data": "浏览器"})
    assert result.ok and result.sign_ok is True and result.data["signature"], result.raw

    events = list(AuditEvent.objects.filter(access_id=access, profile="acs")
                  .exclude(event_type=AuditEvent.API_REQUEST).order_by("id"))
    assert [e.event_type for e in events][-5:] == [
        AuditEvent.ACS_CHANGED, AuditEvent.ACS_KEY_SET, AuditEvent.ACS_KEY_USED, AuditEvent.ACS_CERT_GENERATED,
        AuditEvent.ACS_CERT_UPLOADED]
    assert {(e.actor, e.source) for e in events[-5:]} == {(chief, "admin")}
    assert all(key not in str(e.details) + e.message for e in events)

    # A clerk who may only look sees the state, not the buttons.
    admin_login(chromium, base, "clerk")
    page.goto(base + acs_url(access))
    assert page.is_visible("#acs-state") and page.locator("#acs-key-set").count() == 0
    assert page.locator("#acs-settings-save").count() == 0
    chromium.screenshot("acs-clerk-view")


def test_the_page_refuses_bad_certificates_and_acts_only_for_those_allowed(db):
    chief = user_make("chief2", superuser=True)
    clerk = user_make("clerk2", "view_accessid")
    access, _ = access_id_create(name="party")
    acs_settings_set(access_id=access, sender_code="S-PAGE", encryption="rsa2")
    admin = client_for(chief)
    page = admin.get(acs_url(access))
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    text = page.content.decode()
    assert "platform has no certificate" in text and "encryption certificate is missing" in text

    from django.core.files.uploadedfile import SimpleUploadedFile

    refused = admin.post(acs_url(access), {"action": "cert-upload",
                                           "certificate": SimpleUploadedFile("x.pem", b"not a certificate")},
                         follow=True)
    assert "Nothing was changed: not an X.509 certificate" in refused.content.decode()
    assert AcsParty.objects.get(access_id=access).party_certificate_pem == ""
    # Replacing the platform's certificate must be asked for.
    admin.post(acs_url(access), {"action": "cert-generate"})
    first = AcsParty.objects.get(access_id=access).certificate_pem
    again = admin.post(acs_url(access), {"action": "cert-generate"}, follow=True)
    assert "tick “replace it”" in again.content.decode()
    assert AcsParty.objects.get(access_id=access).certificate_pem == first
    # Settings that would open the party to anyone need the explicit confirmation.
    opened = admin.post(acs_url(access), {"action": "settings", "sender_code": "S-PAGE", "encryption": "none",
                                          "signature": "none"}, follow=True)
    assert "confirm that this party is fully open" in opened.content.decode()
    assert AcsParty.objects.get(access_id=access).encryption == "rsa2"

    looker = client_for(clerk)
    assert looker.get(acs_url(access)).status_code == 200
    assert looker.post(acs_url(access), {"action": "key-set", "key": ""}).status_code == 403
    assert looker.post(acs_url(access), {"action": "settings", "sender_code": "X", "encryption": "aes",
                                         "signature": "md5"}).status_code == 403
    assert AcsParty.objects.get(access_id=access).pending_key_encrypted == ""


# --- outbound: webhooks in the acs format ----------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("mode", ["aes", "rsa+des"])
def test_acs_webhooks_are_encrypted_and_signed_for_the_party(mode):
    from accessids.acs import acs_cert_generate, acs_cert_upload, acs_key_set, acs_key_use_new
    from audit.services import audit_event_record
    from tests.receivers import Receiver
    from tests.workers import WorkerThread
    from webhooks import services
    from webhooks.models import ACS, WebhookDelivery
    from webhooks.worker import WebhookWorker

    access, secret = access_id_create(name=f"party {mode}")
    acs_settings_set(access_id=access, sender_code=f"S-HOOK-{mode}", encryption=mode)
    key = acs_key_set(access_id=access)
    acs_key_use_new(access_id=access)
    client_key = None
    if "rsa" in mode:
        acs_cert_generate(access_id=access)
        client_key, client_cert = acs.make_client_keypair(2048)
        acs_cert_upload(access_id=access, pem=client_cert)
    receiver = Receiver().start()
    worker = WorkerThread(WebhookWorker()).start()
    try:
        with pytest.raises(Exception, match="access system party it is sent to"):
            services.webhook_create(name="no party", url=receiver.url(), secret="w" * 24, payload_format=ACS)
        webhook = services.webhook_create(name="party receiver", url=receiver.url("/acs/notify"), secret="w" * 24,
                                          payload_format=ACS, acs_party=access, audit_feed=True)
        audit_event_record(event_type=AuditEvent.CARD_DISCONNECTED, source="gateway", device="card-a",
                           outcome="CARD_DISCONNECTED", message="connection to the card lost")
        services.webhook_send_test(webhook=webhook)
        got = receiver.wait(2)
    finally:
        worker.stop()
        receiver.stop()
    bodies = []
    for request in got:
        envelope = json.loads(request.body)
        head, data = envelope["Head"], envelope["Data"]
        assert head["Ccode"] == f"S-HOOK-{mode}" and head["Status"] == "success"
        # What the party's own client checks: the signature with its key, then Data decrypts.
        assert acs.verify_sign(head, data, key) is True
        assert acs.verify_sign(head, data, "another key 0123456789") is False
        body = json.loads(acs.decrypt(mode, data, symmetric_key=key, private_key=client_key))
        assert body["id"] == request.headers["x-delivery-id"] and "x-signature" not in request.headers
        bodies.append(body)
    by_event = {body["event"]: body for body in bodies}
    assert by_event["card.disconnected"]["message"] == "connection to the card lost"
    assert set(by_event) == {"card.disconnected", "webhook.test"}
    assert WebhookDelivery.objects.filter(webhook=webhook, status=WebhookDelivery.DELIVERED).count() == 2
