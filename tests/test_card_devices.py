"""Card devices: the PIN is encrypted at rest and write-only in the admin."""

import pytest
from django.contrib.auth import get_user_model

from core.encryption import MasterKeyError, secret_decrypt, secret_encrypt
from signing.models import CardDevice
from signing.services import PIN_PURPOSE, card_device_pin, card_device_sync_default

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = get_user_model().objects.create_superuser("root", "", "a long admin pass")
    client.force_login(user)
    return client


def test_admin_sets_pin_encrypted_and_never_shows_it(admin_client):
    response = admin_client.post(
        "/admin/signing/carddevice/add/",
        {"slug": "office-pc", "name": "Office PC", "url": "ws://127.0.0.1:61232", "enabled": "on",
         "connect_timeout": "5", "request_timeout": "10", "queue_size": "256", "pipeline_depth": "1",
         "signature_method": "", "pin": "31415926"},
    )
    assert response.status_code == 302, response.content[:2000]
    device = CardDevice.objects.get(slug="office-pc")
    assert "31415926" not in device.pin_encrypted and device.pin_encrypted.startswith("gcm1:")
    assert card_device_pin(device=device) == "31415926"
    page = admin_client.get(f"/admin/signing/carddevice/{device.pk}/change/")
    assert page.status_code == 200 and b"31415926" not in page.content
    listing = admin_client.get("/admin/signing/carddevice/")
    assert b"gateway not running" in listing.content and b"31415926" not in listing.content
    # Saving without a PIN keeps it; "remove" clears it.
    admin_client.post(f"/admin/signing/carddevice/{device.pk}/change/",
                      {"slug": "office-pc", "name": "Office PC 2", "url": "ws://127.0.0.1:61232", "enabled": "on",
                       "connect_timeout": "5", "request_timeout": "10", "queue_size": "256",
                       "pipeline_depth": "1", "signature_method": ""})
    device.refresh_from_db()
    assert device.name == "Office PC 2" and card_device_pin(device=device) == "31415926"


def test_ciphertext_is_bound_to_its_purpose():
    stored = secret_encrypt("12345678", purpose=PIN_PURPOSE)
    assert secret_decrypt(stored, purpose=PIN_PURPOSE) == "12345678"
    with pytest.raises(MasterKeyError):
        secret_decrypt(stored, purpose="app-secret")
    tampered = stored[:-4] + ("AAAA" if not stored.endswith("AAAA") else "BBBB")
    with pytest.raises(MasterKeyError):
        secret_decrypt(tampered, purpose=PIN_PURPOSE)


def test_default_device_follows_the_environment(settings):
    settings.UKEY_URL = "ws://10.0.0.1:61232"
    settings.UKEY_PIN = "27182818"
    device = card_device_sync_default()
    assert device.url == "ws://10.0.0.1:61232" and card_device_pin(device=device) == "27182818"
    settings.UKEY_PIN = "16180339"
    assert card_device_pin(device=card_device_sync_default()) == "16180339"
    assert CardDevice.objects.filter(slug=settings.UKEY_DEFAULT_DEVICE).count() == 1


# --- cards managed live -------------------------------------------------------------------------


@pytest.fixture
def live_platform(tmp_path, transactional_db):
    from tests.conftest import SimulatorProcess, test_database_url
    from tests.live import Platform, only_card_row, services_env

    only_card_row("live-default")
    default_card = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "k1")).start()
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=default_card.url, UKEY_PIN=default_card.pin,
                       UKEY_DEFAULT_DEVICE="live-default", UKEY_GATEWAY_MODE="external", UKEY_FOLLOW_DEVICES="1")
    platform = Platform(env, tmp_path).start()
    platform.wait_card()
    yield platform
    platform.stop()
    default_card.stop()


def _device_form(**fields):
    return {"slug": "office-pc", "name": "Office PC", "transport": "url", "url": "ws://127.0.0.1:9",
            "enabled": "on", "connect_timeout": "5", "request_timeout": "10", "queue_size": "256",
            "pipeline_depth": "1", "signature_method": "", **fields}


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_card_added_in_the_admin_signs_within_seconds_and_every_change_is_audited(live_platform, admin_client,
                                                                                     tmp_path):
    from accessids.services import access_id_create
    from audit.models import AuditEvent
    from tests.conftest import SimulatorProcess
    from tests.live import poll
    from tests.test_api import call

    platform = live_platform
    new_card = SimulatorProcess(algorithm="sm2", key_dir=str(tmp_path / "k2")).start()
    try:
        response = admin_client.post("/admin/signing/carddevice/add/",
                                     _device_form(url=new_card.url, pin=new_card.pin))
        assert response.status_code == 302, response.content[:1000]
        device = CardDevice.objects.get(slug="office-pc")
        access, secret = access_id_create(name="ERP", devices=[device])
        poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "new card"}, access=access,
                          secret=secret)[0] == 200, 10, "the new card signing, no restart")
        created = AuditEvent.objects.get(event_type=AuditEvent.CARD_DEVICE_CREATED, device="office-pc")
        assert created.actor.username == "root" and created.details["pin_set"] is True
        assert new_card.pin not in repr(created.details) + created.message
        # Disabled in the admin: it stops being served; enabled again: back.
        admin_client.post(f"/admin/signing/carddevice/{device.pk}/change/",
                          {**_device_form(url=new_card.url), "enabled": ""})
        poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access,
                          secret=secret)[2].get("code") == "UKEY_UNAVAILABLE", 10, "the disabled card no longer served")
        changed = AuditEvent.objects.filter(event_type=AuditEvent.CARD_DEVICE_CHANGED, device="office-pc").first()
        assert changed.details["changed"] == ["enabled"] and changed.actor.username == "root"
        admin_client.post(f"/admin/signing/carddevice/{device.pk}/change/", _device_form(url=new_card.url))
        poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "again"}, access=access,
                          secret=secret)[0] == 200, 10, "enabled again")
        admin_client.post(f"/admin/signing/carddevice/{device.pk}/delete/", {"post": "yes"})
        assert AuditEvent.objects.filter(event_type=AuditEvent.CARD_DEVICE_DELETED, device="office-pc").exists()
    finally:
        new_card.stop()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_second_start_that_cannot_listen_leaves_the_default_card_alone(live_platform):
    import subprocess
    import sys

    from django.contrib.auth import get_user_model

    from audit.models import AuditEvent
    from tests.live import ROOT

    platform = live_platform
    before = CardDevice.objects.get(slug="live-default")
    events = AuditEvent.objects.count()
    # Another card, same port; and an administrator `make run` would create (or re-password).
    env = dict(platform.env, UKEY_URL="ws://127.0.0.1:9", DJANGO_SUPERUSER_USERNAME="second-run",
               DJANGO_SUPERUSER_PASSWORD="a-password-for-the-second-run")
    result = subprocess.run([sys.executable, "manage.py", "runplatform", "--prepare"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{platform.port}" in result.stderr and "Nothing was changed" in result.stderr
    assert "Signing platform on" not in result.stdout  # no success banner above the error
    after = CardDevice.objects.get(slug="live-default")
    assert (after.url, after.pin_encrypted, after.updated_at) == (before.url, before.pin_encrypted, before.updated_at)
    assert not get_user_model().objects.filter(username="second-run").exists()
    assert AuditEvent.objects.count() == events


def test_the_admin_issues_an_agent_token_once_and_keeps_only_its_hash(admin_client):
    from signing.agents import agent_token_check
    from tests.conftest import database_text

    response = admin_client.post("/admin/signing/carddevice/add/", _device_form(slug="agent-pc", transport="agent",
                                                                                url=""))
    assert response.status_code == 302, response.content[:1000]
    device = CardDevice.objects.get(slug="agent-pc")
    page = admin_client.post("/admin/signing/carddevice/", {"action": "agent_token_issue",
                                                             "_selected_action": [device.pk]})
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    token = page.content.decode().split('<code class="agent-token">', 1)[1].split("</code>", 1)[0]
    assert agent_token_check(token).device == device
    assert token not in database_text()
    again = admin_client.get(f"/admin/signing/carddevice/{device.pk}/change/").content.decode()
    assert token not in again and "v1 current" in again


@pytest.mark.embedded
def test_in_the_embedded_mode_a_card_added_from_the_command_line_signs_without_a_restart(tmp_path):
    import json
    import subprocess
    import sys

    from signclient import SignClient
    from tests.conftest import SimulatorProcess
    from tests.live import ROOT, Platform, embedded_env, poll

    default_card = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "k1")).start()
    new_card = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "k2")).start()
    env = embedded_env(tmp_path / "var", UKEY_URL=default_card.url, UKEY_PIN=default_card.pin)
    platform = Platform(env, tmp_path).start()
    try:
        platform.wait_card()

        def manage(*args, **extra_env):
            return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**platform.env, **extra_env},
                                  capture_output=True, text=True, check=True, timeout=60).stdout

        manage("carddevice", "create", "--slug", "second-card", "--url", new_card.url, "--pin-env", "PIN",
               PIN=new_card.pin)
        created = json.loads(manage("accessid", "create", "--name", "ERP", "--json"))
        client = SignClient(platform.base, created["access_id"], created["secret"])
        answer = poll(lambda: _sign_or_none(client, "second-card"), 10, "the added card signing")
        assert answer["device"] == "second-card"
        listing = manage("carddevice", "list")
        assert "second-card" in listing and "see /api/v1/health" in listing
    finally:
        platform.stop()
        default_card.stop()
        new_card.stop()


def _sign_or_none(client, device: str):
    from signclient import ApiError

    try:
        return client.request("POST", "/api/v1/sign", {"data": "x", "device": device})
    except ApiError:
        return None
