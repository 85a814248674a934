"""Card device writes: the default device from the environment, PINs encrypted at rest."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from accessids.encryption import secret_decrypt, secret_encrypt

from .models import CardDevice

PIN_PURPOSE = "card-pin"


def card_device_pin(*, device: CardDevice) -> str:
    """The device's PIN in clear, for the gateway only."""
    if not device.pin_encrypted:
        return ""
    return secret_decrypt(device.pin_encrypted, purpose=PIN_PURPOSE)


def card_device_set_pin(*, device: CardDevice, pin: str, save: bool = True) -> CardDevice:
    """Store a new PIN (encrypted); an empty PIN removes it."""
    device.pin_encrypted = secret_encrypt(pin, purpose=PIN_PURPOSE) if pin else ""
    if save:
        device.save(update_fields=["pin_encrypted", "updated_at"])
    return device


def default_device_url() -> str:
    return settings.UKEY_URL or f"ws://127.0.0.1:{settings.UKEY_SIMULATOR_PORT}"


def default_device_pin() -> str:
    return settings.UKEY_PIN if settings.UKEY_URL else settings.UKEY_SIMULATOR_PIN


@transaction.atomic
def card_device_sync_default() -> CardDevice:
    """Create or update the default device from UKEY_URL / UKEY_PIN (or the simulator's
    address and PIN when no UKEY_URL is set). The environment owns this device's URL and PIN."""
    device, created = CardDevice.objects.select_for_update().get_or_create(
        slug=settings.UKEY_DEFAULT_DEVICE,
        defaults={
            "name": "Default card" if settings.UKEY_URL else "Card simulator",
            "url": default_device_url(),
            "connect_timeout": settings.UKEY_CONNECT_TIMEOUT,
            "request_timeout": settings.UKEY_REQUEST_TIMEOUT,
            "queue_size": settings.UKEY_QUEUE_SIZE,
            "pipeline_depth": settings.UKEY_PIPELINE_DEPTH,
        },
    )
    pin = default_device_pin()
    changed = created or device.url != default_device_url()
    device.url = default_device_url()
    try:
        current_pin = card_device_pin(device=device)
    except Exception:  # unreadable under this master key: replace it
        current_pin = None
    if current_pin != pin:
        card_device_set_pin(device=device, pin=pin, save=False)
        changed = True
    if changed:
        device.save()
    return device
