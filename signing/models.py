from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,49}$", "Lower-case letters, digits, - and _ only.")


class CardDevice(models.Model):
    """An operator card (UKey) reachable through an E-Port control's WebSocket."""

    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    url = models.CharField(
        "WebSocket URL",
        max_length=500,
        help_text="The E-Port client control, e.g. ws://127.0.0.1:61232 or wss://wss.singlewindow.cn:61231",
    )
    pin_encrypted = models.TextField(blank=True, editable=False, help_text="Card PIN, AES-GCM encrypted.")
    enabled = models.BooleanField(default=True)
    connect_timeout = models.FloatField(default=5.0, validators=[MinValueValidator(0.1)], help_text="seconds")
    request_timeout = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1)], help_text="seconds one card operation may take"
    )
    queue_size = models.PositiveIntegerField(default=256, validators=[MinValueValidator(1)])
    pipeline_depth = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(4)],
        help_text=(
            "Requests outstanding at the control at once. The card still executes one at a time; "
            "2 lets the next request wait at the control so the card is never idle between operations."
        ),
    )
    signature_method = models.CharField(
        max_length=10,
        blank=True,
        choices=[("", "From the certificate"), ("rsa-sha1", "rsa-sha1"), ("sm2-sm3", "sm2-sm3")],
        help_text="Override of the XML SignatureMethod; normally taken from the card certificate.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name or self.slug

    @property
    def has_pin(self) -> bool:
        return bool(self.pin_encrypted)


class UsedNonce(models.Model):
    """Nonces already accepted, when no Redis is configured: the unique constraint makes
    the claim atomic across every process sharing the database."""

    access_key = models.CharField(max_length=40)
    nonce = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["access_key", "nonce"], name="used_nonce_unique")]
