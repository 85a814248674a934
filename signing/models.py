from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,49}$", _("Lower-case letters, digits, - and _ only."))


class CardDevice(models.Model):
    """An operator card (UKey) behind an E-Port control: the platform dials the control's
    WebSocket URL, or a card agent on the card's PC dials in to the platform."""

    TRANSPORT_URL = "url"
    TRANSPORT_AGENT = "agent"
    TRANSPORTS = [
        (TRANSPORT_URL, _("The platform connects to the control's URL")),
        (TRANSPORT_AGENT, _("A card agent on the card's PC connects to the platform")),
    ]

    slug = models.CharField(_("slug"), max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(_("name"), max_length=200, blank=True)
    transport = models.CharField(_("transport"), max_length=10, choices=TRANSPORTS, default=TRANSPORT_URL)
    url = models.CharField(
        _("WebSocket URL"),
        max_length=500,
        blank=True,
        help_text=_("The E-Port client control, e.g. ws://127.0.0.1:61232 (not used for an agent card)"),
    )
    pin_encrypted = models.TextField(blank=True, editable=False, help_text=_("Card PIN, AES-GCM encrypted."))
    enabled = models.BooleanField(_("enabled"), default=True)
    connect_timeout = models.FloatField(_("connect timeout"), default=5.0, validators=[MinValueValidator(0.1)],
                                        help_text=_("seconds"))
    request_timeout = models.FloatField(
        _("request timeout"), default=10.0, validators=[MinValueValidator(0.1)],
        help_text=_("seconds one card operation may take"),
    )
    queue_size = models.PositiveIntegerField(_("queue size"), default=256, validators=[MinValueValidator(1)])
    pipeline_depth = models.PositiveSmallIntegerField(
        _("pipeline depth"),
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(4)],
        help_text=_(
            "Requests outstanding at the control at once. The card still executes one at a time; "
            "2 lets the next request wait at the control so the card is never idle between operations."
        ),
    )
    signature_method = models.CharField(
        _("signature method"),
        max_length=10,
        blank=True,
        choices=[("", _("From the certificate"))] + [(method, method) for method in ("rsa-sha1", "sm2-sm3")],
        help_text=_("Override of the XML SignatureMethod; normally taken from the card certificate."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["slug"]
        verbose_name = _("card device")
        verbose_name_plural = _("card devices")

    def __str__(self) -> str:
        return self.name or self.slug

    @property
    def has_pin(self) -> bool:
        return bool(self.pin_encrypted)

    @property
    def is_agent(self) -> bool:
        return self.transport == self.TRANSPORT_AGENT

    def clean(self) -> None:
        if self.transport == self.TRANSPORT_URL and not self.url:
            raise ValidationError({"url": _("A card the platform connects to needs the control's URL.")})
        if self.slug and CardPool.objects.filter(slug=self.slug).exists():
            raise ValidationError({"slug": _("A card pool already has this slug; a card needs its own.")})


class CardPool(models.Model):
    """Cards used together: a request for the pool goes to its least-loaded connected card,
    and moves to another card once when its card fails without answering. All cards of a
    pool belong to one enterprise (the organization their certificates name)."""

    slug = models.CharField(
        _("slug"), max_length=50, unique=True, validators=[slug_validator],
        help_text=_("What clients name as their device to use the pool; not the slug of a card."),
    )
    name = models.CharField(_("name"), max_length=200, blank=True)
    devices = models.ManyToManyField(CardDevice, related_name="pools", verbose_name=_("cards"),
                                     help_text=_("The cards of the pool."))
    enterprise = models.CharField(
        _("enterprise"), max_length=200, blank=True,
        help_text=_("The enterprise every card's certificate must name (its O=). Empty: taken from the cards "
                    "when the pool is saved while they are connected; a card of another enterprise is never used."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["slug"]
        verbose_name = _("card pool")
        verbose_name_plural = _("card pools")

    def __str__(self) -> str:
        return self.name or self.slug

    def clean(self) -> None:
        if self.slug and CardDevice.objects.filter(slug=self.slug).exists():
            raise ValidationError({"slug": _("A card device already has this slug; a pool needs its own.")})


class AgentToken(models.Model):
    """What a card agent presents to connect for its device: stored only as a SHA-256 (the
    token is 256 random bits), rotated with a grace period like App Secrets, revocable."""

    CURRENT = "current"
    PREVIOUS = "previous"
    REVOKED = "revoked"
    STATES = [(CURRENT, pgettext_lazy("agent token state", "current")),
              (PREVIOUS, pgettext_lazy("agent token state", "previous (grace period)")),
              (REVOKED, pgettext_lazy("agent token state", "revoked"))]
    # The state in a short list of tokens (the admin, `__str__`): the value, in words.
    STATE_SHORT = {CURRENT: pgettext_lazy("agent token state", "current"),
                   PREVIOUS: pgettext_lazy("agent token state", "previous"),
                   REVOKED: pgettext_lazy("agent token state", "revoked")}

    device = models.ForeignKey(CardDevice, on_delete=models.CASCADE, related_name="agent_tokens")
    version = models.PositiveIntegerField()
    token_sha256 = models.CharField(max_length=64, unique=True, editable=False)
    state = models.CharField(max_length=10, choices=STATES, default=CURRENT)
    valid_until = models.DateTimeField(null=True, blank=True, help_text=_("Previous tokens: end of the grace period."))
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["device", "-version"]
        constraints = [models.UniqueConstraint(fields=["device", "version"], name="agent_token_version_unique")]
        verbose_name = _("agent token")
        verbose_name_plural = _("agent tokens")

    def __str__(self) -> str:
        return _("%(device)s agent token v%(version)s (%(state)s)") % {
            "device": self.device.slug, "version": self.version, "state": self.STATE_SHORT.get(self.state, self.state)}

    @property
    def fingerprint(self) -> str:
        return self.token_sha256[:12]


class UsedNonce(models.Model):
    """Nonces already accepted, when no Redis is configured: the unique constraint makes
    the claim atomic across every process sharing the database."""

    access_key = models.CharField(max_length=40)
    nonce = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["access_key", "nonce"], name="used_nonce_unique")]
