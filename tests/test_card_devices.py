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
