from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from signing.models import CardDevice, CardPool

from .profiles import MAX_WINDOW_SECONDS, PROFILE_CHOICES, PROFILE_KINDS

SCOPES = ("sign", "sign_xml", "verify_xml", "sign_179", "rpc", "xml_read", "xml_write", "xml_read_all",
          "rotate_self", "declare")
# What a new access ID gets when no scopes are given: signing (data, CEB XML, 179), checking
# signed XML, its own XML documents and rotating its own secret. Two are granted only on
# purpose: the raw card passthrough (`rpc`, and the card methods it may call) and reading
# other access IDs' XML documents (`xml_read_all`).
ON_PURPOSE_SCOPES = ("rpc", "xml_read_all")
DEFAULT_SCOPES = tuple(scope for scope in SCOPES if scope not in ON_PURPOSE_SCOPES)
DEFAULT_RPC_METHODS: tuple[str, ...] = ()
# AccessId.status (a code, compared in code and templates) as people read it.
STATUS_LABELS = {"enabled": _("enabled"), "disabled": _("disabled"), "expired": _("expired")}


class AccessId(models.Model):
    """One client system's identity for the signing API."""

    key = models.CharField(_("access ID"), max_length=40, unique=True, editable=False)
    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True, help_text=_("Leave empty for no expiry."))
    allowed_networks = models.JSONField(_("allowed networks"),
        default=list, blank=True, help_text=_("Client addresses allowed, as CIDR (e.g. 10.0.0.0/8). Empty: any.")
    )
    scopes = models.JSONField(_("scopes"), default=list, blank=True)
    allowed_methods = models.JSONField(_("allowed methods"),
        default=list, blank=True, help_text=_("Card methods allowed through /api/v1/rpc (needs the rpc scope).")
    )
    rate_limit_per_minute = models.PositiveIntegerField(_("rate limit per minute"), default=600, validators=[MinValueValidator(1)])
    devices = models.ManyToManyField(CardDevice, blank=True, help_text=_("Cards it may use. Empty: the default card."), verbose_name=_("devices"))
    pools = models.ManyToManyField(
        CardPool, blank=True,
        help_text=_("Card pools it may use (and so every card in them); its requests go to the first pool by default."), verbose_name=_("pools"),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True, editable=False)
    last_secret_version = models.PositiveIntegerField(_("last secret version"), null=True, blank=True, editable=False)
    # The sign-server compatible API: the legacy AES key (encrypted) that identifies this
    # access ID, and a keyed fingerprint of the folded key so no two access IDs share one.
    legacy_aes_key_encrypted = models.TextField(_("legacy aes key encrypted"), blank=True, editable=False)
    legacy_key_fingerprint = models.CharField(_("legacy key fingerprint"), max_length=64, null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("access ID")
        verbose_name_plural = _("access IDs")
        permissions = [("rotate_accessid", "Can rotate and revoke access ID secrets")]
        # The database's backstop (the services also fold full-width letters and non-ASCII case).
        constraints = [models.UniqueConstraint(Lower("name"), name="accessid_name_unique_ci")]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def has_legacy_key(self) -> bool:
        return bool(self.legacy_aes_key_encrypted)

    @property
    def status(self) -> str:
        if not self.enabled:
            return "disabled"
        return "expired" if self.is_expired else "enabled"

    @property
    def status_label(self) -> str:
        """The status as people read it (in the language of the page)."""
        return STATUS_LABELS[self.status]


class AppSecret(models.Model):
    """One version of an access ID's App Secret, stored encrypted."""

    CURRENT, PREVIOUS, REVOKED = "current", "previous", "revoked"
    STATES = [(CURRENT, _("current")), (PREVIOUS, _("previous (grace period)")), (REVOKED, _("revoked"))]

    access_id = models.ForeignKey(AccessId, on_delete=models.CASCADE, related_name="secrets", verbose_name=_("access id"))
    version = models.PositiveIntegerField(_("version"))
    secret_encrypted = models.TextField(_("secret encrypted"), editable=False)
    fingerprint = models.CharField(_("fingerprint"), max_length=16, editable=False)
    state = models.CharField(_("state"), max_length=10, choices=STATES, default=CURRENT)
    valid_until = models.DateTimeField(_("valid until"), null=True, blank=True, help_text=_("End of the grace period (previous secret)."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)
    # A one-time ticket that lets the admin who created or rotated this secret see it once
    # (its SHA-256 only; cleared when used or after a few minutes).
    reveal_token_hash = models.CharField(_("reveal token hash"), max_length=64, blank=True, editable=False)
    reveal_user_id = models.IntegerField(_("reveal user id"), null=True, blank=True, editable=False)
    reveal_expires_at = models.DateTimeField(_("reveal expires at"), null=True, blank=True, editable=False)

    class Meta:
        ordering = ["access_id", "-version"]
        verbose_name = _("app secret")
        verbose_name_plural = _("app secrets")
        constraints = [
            models.UniqueConstraint(fields=["access_id", "version"], name="app_secret_version_unique"),
            models.UniqueConstraint(
                fields=["access_id"], condition=models.Q(state="current"), name="app_secret_one_current"
            ),
        ]

    def __str__(self) -> str:
        return f"v{self.version} {self.fingerprint} ({self.state})"


class AccessIdProfile(models.Model):
    """One client profile (docs/client-profiles.md) of one access ID: on or off, its time
    window, and whether this access ID is the deployment's default for the profile (used by
    requests that carry no access ID, for the profiles that allow that)."""

    access_id = models.ForeignKey(AccessId, on_delete=models.CASCADE, related_name="profiles", verbose_name=_("access id"))
    name = models.CharField(_("profile"), max_length=20, choices=PROFILE_CHOICES)
    enabled = models.BooleanField(_("enabled"), default=False)
    window_seconds = models.PositiveIntegerField(
        _("time window (s)"), null=True, blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_WINDOW_SECONDS)],
        help_text=_("How far a request's timestamp may be from the server's clock. Empty: the profile's default."),
    )
    is_default = models.BooleanField(
        _("default access ID"), default=False,
        help_text=_("Requests of this profile that name no access ID are this access ID's (x-signature, cp-md5)."),
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["access_id", "name"]
        verbose_name = _("client profile")
        verbose_name_plural = _("client profiles")
        constraints = [
            models.UniqueConstraint(fields=["access_id", "name"], name="access_profile_unique"),
            models.UniqueConstraint(fields=["name"], condition=models.Q(is_default=True),
                                    name="access_profile_one_default"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({'on' if self.enabled else 'off'})"

    @property
    def kind(self):
        return PROFILE_KINDS[self.name]

    @property
    def window(self) -> int:
        return self.window_seconds or self.kind.window_seconds


class AcsParty(models.Model):
    """The access system profile's settings of one access ID (docs/client-profiles.md, acs):
    the party's sender code, what it requires (token, MD5 signature), how its payloads are
    encrypted, its symmetric keys, the platform's RSA key pair for it and its own certificate."""

    NONE_SIGNATURE, MD5 = "none", "md5"
    SIGNATURES = [(MD5, "MD5"), (NONE_SIGNATURE, _("none"))]
    ENCRYPTIONS = [("none", _("none")), ("aes", "AES"), ("des", _("DES (weak)")), ("rsa", _("RSA (1024-bit)")),
                   ("rsa2", _("RSA2 (2048-bit)")), ("rsa+aes", "RSA + AES"), ("rsa+des", _("RSA + DES (weak)"))]

    access_id = models.OneToOneField(AccessId, on_delete=models.CASCADE, related_name="acs", verbose_name=_("access id"))
    sender_code = models.CharField(_("sender code (Ccode)"), max_length=32, unique=True)
    token_required = models.BooleanField(_("token required"), default=True)
    signature = models.CharField(_("signature"), max_length=8, choices=SIGNATURES, default=MD5)
    encryption = models.CharField(_("encryption"), max_length=8, choices=ENCRYPTIONS, default="aes")
    open_confirmed = models.BooleanField(
        _("fully open allowed"), default=False,
        help_text=_("No token, no signature and no encryption: anyone who knows the sender code can sign."),
    )
    # Symmetric keys (AES/DES modes, and the SecretKey of the MD5 signature): current, pending
    # ("set key", not yet in use) and the previous one during its grace period.
    key_encrypted = models.TextField(_("key encrypted"), blank=True, editable=False)
    key_version = models.PositiveIntegerField(_("key version"), default=0, editable=False)
    pending_key_encrypted = models.TextField(_("pending key encrypted"), blank=True, editable=False)
    previous_key_encrypted = models.TextField(_("previous key encrypted"), blank=True, editable=False)
    previous_key_valid_until = models.DateTimeField(_("previous key valid until"), null=True, blank=True, editable=False)
    # The platform's RSA key pair for this party (its public certificate is what the party
    # encrypts with), and the party's certificate (what the platform encrypts answers with).
    private_key_encrypted = models.TextField(_("private key encrypted"), blank=True, editable=False)
    certificate_pem = models.TextField(_("certificate pem"), blank=True, editable=False)
    party_certificate_pem = models.TextField(_("party certificate pem"), blank=True, editable=False)
    party_certificate_subject = models.CharField(_("party certificate subject"), max_length=300, blank=True, editable=False)
    party_certificate_fingerprint = models.CharField(_("party certificate fingerprint"), max_length=64, blank=True, editable=False)
    party_certificate_not_after = models.DateTimeField(_("party certificate not after"), null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("access system party")
        verbose_name_plural = _("access system parties")

    def __str__(self) -> str:
        return f"{self.sender_code} ({self.encryption})"

    @property
    def fully_open(self) -> bool:
        return not self.token_required and self.signature == self.NONE_SIGNATURE and self.encryption == "none"


class AcsToken(models.Model):
    """A token of the access system profile (`GET /acs/token/{sender}`): only its SHA-256 is
    stored. Valid for two hours, several at once; it ends early when the party is disabled
    or when the key it was issued under stops being valid (`key_version`)."""

    party = models.ForeignKey(AcsParty, on_delete=models.CASCADE, related_name="tokens", verbose_name=_("party"))
    token_sha256 = models.CharField(_("token sha256"), max_length=64, unique=True)
    key_version = models.PositiveIntegerField(_("key version"))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires at"), db_index=True)

    class Meta:
        verbose_name = _("access system token")
        verbose_name_plural = _("access system tokens")

    def __str__(self) -> str:
        return f"token {self.token_sha256[:12]} of {self.party_id}"
