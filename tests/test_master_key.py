"""Master key rotation over every encrypted column: after `rotate_master_key` and a restart, a
platform signs with an App Secret and a card PIN stored before the rotation and delivers a
webhook signed with a webhook secret stored before it. The list of encrypted columns is
checked against the models, so a new `*_encrypted` field cannot be left out."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from accessids.services import access_id_create
from core.certs import certificate_load, signature_verify
from core.encryption import MasterKeyError, master_key, master_key_file_ensure, secret_decrypt
from signclient import SignClient
from signing.models import CardDevice
from signing.services import card_device_set_pin
from signplatform import master_key as rotation
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import Platform, get_json, only_card_row, poll, services_env
from tests.receivers import Receiver, signature_valid
from webhooks import services as webhook_services
from webhooks.models import SECRET_PURPOSE as WEBHOOK_SECRET_PURPOSE
from webhooks.models import Webhook, WebhookDelivery

WEBHOOK_SECRET = "whsec-rotation-0123456789abcdef"


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_after_a_rotation_old_app_secrets_card_pins_and_webhook_secrets_all_still_work(tmp_path, settings):
    key_file = tmp_path / "master.key"
    key_file.write_text(master_key_file_ensure().read_text())
    settings.SIGNPLATFORM_MASTER_KEY_FILE = key_file
    old_key = master_key()

    # The default card belongs to the environment (UKEY_URL/UKEY_PIN); "stored-pin" is a second
    # card whose PIN exists only in the database, encrypted under the old key.
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys")).start()
    only_card_row("rotation-default")
    stored = card_device_set_pin(device=CardDevice.objects.create(slug="stored-pin", url=sim.url), pin=sim.pin)
    access, secret = access_id_create(name="ERP before the rotation")
    access.devices.set([stored])
    hook = webhook_services.webhook_create(name="Audit feed", url="http://127.0.0.1:9/unused", secret=WEBHOOK_SECRET,
                                           card_failures=False, audit_feed=True)
    old_hook_secret = Webhook.objects.get(pk=hook.pk).secret_encrypted

    out = io.StringIO()
    call_command("rotate_master_key", stdout=out)
    assert "1 webhook secret(s)" in out.getvalue() and "1 card PIN(s)" in out.getvalue()
    assert master_key() != old_key
    new_hook_secret = Webhook.objects.get(pk=hook.pk).secret_encrypted
    assert new_hook_secret != old_hook_secret
    assert secret_decrypt(new_hook_secret, purpose=WEBHOOK_SECRET_PURPOSE) == WEBHOOK_SECRET
    with pytest.raises(MasterKeyError):
        secret_decrypt(new_hook_secret, purpose=WEBHOOK_SECRET_PURPOSE, key=old_key)

    receiver = Receiver().start()
    Webhook.objects.filter(pk=hook.pk).update(url=receiver.url("/audit"))
    # Every process restarts after a rotation: this platform starts with the new key only.
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                       UKEY_DEFAULT_DEVICE="rotation-default", SIGNPLATFORM_MASTER_KEY=key_file.read_text().strip())
    platform = Platform(env, tmp_path).start()
    try:
        poll(lambda: (h := get_json(platform.base + "/api/v1/health")[2])["status"] == "ok"
             and {d["slug"] for d in h["devices"]} == {"rotation-default", "stored-pin"}, 30, "both cards connected")
        client = SignClient(platform.base, access.key, secret)
        text = "CEB311 order 2026-12-02 after the master key rotation"
        body = client.request("POST", "/api/v1/sign", {"data": text, "device": "stored-pin"})
        assert body["device"] == "stored-pin"
        cert = client.request("GET", "/api/v1/certificate?device=stored-pin")
        assert signature_verify(certificate_load(cert["certificate_pem"]), text.encode("utf-8"), body["signature"])

        request = receiver.wait_for(lambda r: r.path == "/audit"
                                    and r.json().get("endpoint") == "POST /api/v1/sign", timeout=15)
        assert signature_valid(request, WEBHOOK_SECRET) and request.headers["x-access-id"] == hook.key
        poll(lambda: WebhookDelivery.objects.filter(webhook=hook, status=WebhookDelivery.DELIVERED).exists(), 10,
             "the delivery recorded as delivered")
        assert not WebhookDelivery.objects.filter(webhook=hook, status=WebhookDelivery.FAILED).exists()
    finally:
        platform.stop()
        sim.stop()
        receiver.stop()


@pytest.mark.embedded
def test_every_encrypted_model_field_is_in_the_rotation_list(monkeypatch):
    assert rotation.encrypted_columns_check() == []
    # Leave the webhook secrets out (the bug this list fixed): the check names the field.
    without_webhooks = tuple(c for c in rotation.ENCRYPTED_COLUMNS if c.model != "webhooks.Webhook")
    monkeypatch.setattr(rotation, "ENCRYPTED_COLUMNS", without_webhooks)
    (error,) = rotation.encrypted_columns_check()
    assert error.id == "signplatform.E001" and "webhooks.Webhook.secret_encrypted" in error.msg
    # An entry for a column that does not exist is an error too.
    ghost = rotation.EncryptedColumn("ghost", "ghost(s)", "signing.CardDevice", "ghost_encrypted", "ghost")
    monkeypatch.setattr(rotation, "ENCRYPTED_COLUMNS", (*rotation.ENCRYPTED_COLUMNS, ghost))
    assert {e.id for e in rotation.encrypted_columns_check()} == {"signplatform.E001", "signplatform.E002"}
