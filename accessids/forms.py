"""Admin forms for access IDs, worded for the customs clerks who use them: scopes and card
methods as checkboxes, allowed networks one per line, the rotation confirmation."""

from __future__ import annotations

import ipaddress

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.legacy_cipher import legacy_key_fold
from ukey.protocol import RPC_METHODS

from .models import DEFAULT_RPC_METHODS, DEFAULT_SCOPES, SCOPES, AccessId
from .profiles import MAX_WINDOW_SECONDS, PROFILE_KINDS
from .selectors import access_id_name_holder
from .services import legacy_key_fingerprint

SCOPE_LABELS = {
    "sign": "Sign data (POST /api/v1/sign)",
    "sign_xml": "Sign customs XML messages",
    "verify_xml": "Check signed XML messages (POST /api/v1/verify/xml)",
    "sign_179": "Sign 179 payment data",
    "rpc": "Call card methods directly (POST /api/v1/rpc, only the methods ticked below)",
    "xml_read": "Read its own stored XML messages",
    "xml_write": "Store and delete its own XML messages",
    "xml_read_all": "Read the XML messages of every access ID (not only its own)",
    "rotate_self": "Rotate its own App Secret through the API",
    "declare": "Declare to customs: build, sign and submit CEB messages, read their receipts (/api/v1/declarations)",
}
SCOPE_CHOICES = [(scope, f"{scope} — {SCOPE_LABELS.get(scope, scope)}") for scope in SCOPES]

METHOD_LABELS = {
    "cus-sec_SpcSignDataAsPEM": "sign data",
    "cus-sec_SpcSignDataNoHashAsPEM": "sign a ready-made digest",
    "cus-sec_SpcGetCertNo": "certificate number",
    "cus-sec_SpcGetEntName": "company name",
    "cus-sec_SpcGetSignCertAsPEM": "signing certificate",
    "cus-sec_SpcGetEnvCertAsPEM": "encryption certificate",
    "cus-sec_SpcGetValidTimeFromCert": "certificate validity",
    "cus-sec_SpcSHA1DigestAsPEM": "SHA-1 digest",
    "cus-sec_SpcVerifySignData": "verify a signature",
    "cus-sec_SpcGetCardID": "card ID",
    "cus-sec_SpcGetUName": "card holder name",
    "cus-sec_SpcGetEntID": "company ID",
    "cus-sec_SpcGetEntMode": "company mode",
    "cus-sec_SpcGetCardUserInfo": "card user information",
}
METHOD_CHOICES = [
    (method, f"{method} — {METHOD_LABELS[method]}" if method in METHOD_LABELS else method)
    for method in RPC_METHODS
]

GRACE_LABELS = [
    ("0", "None — the old secret stops working immediately"),
    ("1h", "1 hour"),
    ("24h", "24 hours (recommended)"),
    ("7d", "7 days"),
]


def allowed_networks_clean(text: str) -> list[str]:
    """One network per line (CIDR, or a single address) → normalised list; raises
    ValidationError naming every bad line."""
    networks: list[str] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            network = ipaddress.ip_network(line, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(line, strict=False)
            except ValueError:
                errors.append(f"line {number}: “{line}” is not an IP network like 10.0.0.0/8 or 192.168.1.20")
            else:
                errors.append(
                    f"line {number}: “{line}” has host bits set; did you mean {loose.with_prefixlen}?"
                )
            continue
        if str(network) not in networks:
            networks.append(str(network))
    if errors:
        raise ValidationError(errors)
    return networks


class NetworkListField(forms.CharField):
    """A list of networks edited as text, one per line."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 40, "spellcheck": "false",
                                   "placeholder": "10.20.0.0/16\n192.168.1.20"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(strip=False, **kwargs)

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return "\n".join(value)
        return value

    def to_python(self, value):
        return allowed_networks_clean(super().to_python(value) or "")

    def has_changed(self, initial, data):
        try:
            new = self.to_python(data)
        except ValidationError:
            return True
        return list(initial or []) != new


class AccessIdForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        label="What it may do (scopes)",
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple(attrs={"class": "radiolist"}),
        required=False,
        help_text=gettext_lazy(
            "Tick only what the client system needs. With nothing ticked it can call no signing endpoint. A new "
            "access ID gets the signing scopes; “rpc” (the card itself) and “xml_read_all” only on purpose."),
    )
    allowed_methods = forms.MultipleChoiceField(
        label="Card methods allowed through RPC",
        choices=METHOD_CHOICES,
        widget=forms.CheckboxSelectMultiple(attrs={"class": "radiolist"}),
        required=False,
        help_text=gettext_lazy(
            "Only used with the “rpc” scope, and only the methods ticked: none are ticked for a new access ID."),
    )
    allowed_networks = NetworkListField(
        label="Allowed client networks",
        help_text="One network per line, as CIDR (10.20.0.0/16) or a single address (192.168.1.20). "
        "Leave empty to allow any address.",
    )

    legacy_aes_key = forms.CharField(
        label="Legacy AES key",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}),
        help_text="Only for client systems still calling the old sign-server API (/getCode, /xml-files): the AES key "
        "they encrypt with. Their calls are then attributed to this access ID. Stored encrypted and never shown "
        "again; leave empty to keep the current key.",
    )
    legacy_aes_key_remove = forms.BooleanField(
        label="Remove the legacy AES key", required=False,
        help_text="Old sign-server clients using it are refused from now on.",
    )

    class Meta:
        model = AccessId
        fields = [
            "name", "description", "enabled", "expires_at", "scopes", "allowed_methods", "allowed_networks",
            "rate_limit_per_minute", "devices", "pools",
        ]
        labels = {
            "name": "Name",
            "description": "Notes",
            "enabled": "Enabled",
            "expires_at": "Expires at",
            "rate_limit_per_minute": "Requests per minute (limit)",
            "devices": "Card devices",
            "pools": "Card pools",
        }
        help_texts = {
            "name": "The client system that will use it, e.g. “ERP – Ningbo warehouse”.",
            "description": "Anything your colleagues should know: contact person, ticket number…",
            "enabled": "A disabled access ID is refused at once; nothing is deleted.",
            "expires_at": "Leave empty for no expiry. After this time every request is refused.",
            "rate_limit_per_minute": "Requests above this number per minute are refused with RATE_LIMITED.",
            "devices": "The UKey cards it may use. None selected (and no pool): the default card.",
            "pools": "Card pools it may use, and so every card in them. Its requests go to the first pool "
                     "(by slug) unless they name a card or another pool.",
        }
        widgets = {"description": forms.Textarea(attrs={"rows": 3, "cols": 60})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.initial.setdefault("scopes", list(DEFAULT_SCOPES))
            self.initial.setdefault("allowed_methods", list(DEFAULT_RPC_METHODS))
        self._profile_fields_add()

    # --- client profiles (docs/client-profiles.md): three fields per profile ---------------

    def _profile_fields_add(self) -> None:
        """The profile fields' initial values from the access ID's profiles."""
        rows = {p.name: p for p in self.instance.profiles.all()} if self.instance.pk else {}
        for kind in PROFILE_KINDS.values():
            row = rows.get(kind.name)
            self.initial.setdefault(f"profile_{kind.name}_enabled", bool(row and row.enabled))
            if kind.has_window:
                self.initial.setdefault(f"profile_{kind.name}_window", row.window_seconds if row else None)
            if kind.has_default:
                self.initial.setdefault(f"profile_{kind.name}_default", bool(row and row.is_default))

    @staticmethod
    def profile_field_names() -> list[str]:
        names = []
        for kind in PROFILE_KINDS.values():
            names.append(f"profile_{kind.name}_enabled")
            if kind.has_window:
                names.append(f"profile_{kind.name}_window")
            if kind.has_default:
                names.append(f"profile_{kind.name}_default")
        return names

    def profile_changes(self) -> dict[str, dict]:
        """{profile: {enabled?, window_seconds?, default?}} for the profiles whose fields changed."""
        changes: dict[str, dict] = {}
        for kind in PROFILE_KINDS.values():
            change = {}
            for suffix, key in (("enabled", "enabled"), ("window", "window_seconds"), ("default", "default")):
                name = f"profile_{kind.name}_{suffix}"
                if name in self.fields and name in self.changed_data:
                    change[key] = self.cleaned_data.get(name)
            if change:
                changes[kind.name] = change
        return changes

    def clean_legacy_aes_key(self):
        key = self.cleaned_data.get("legacy_aes_key") or ""
        if not key:
            return ""
        if key != key.strip():
            raise ValidationError("The key must not start or end with spaces.")
        holder = AccessId.objects.filter(legacy_key_fingerprint=legacy_key_fingerprint(legacy_key_fold(key)))
        if self.instance.pk:
            holder = holder.exclude(pk=self.instance.pk)
        if holder.exists():
            raise ValidationError("Another access ID already has this legacy AES key; each client system needs its own.")
        return key

    def clean(self):
        data = super().clean()
        if "rpc" in (data.get("scopes") or []) and not data.get("allowed_methods"):
            self.add_error("allowed_methods", _("Tick the card methods it may call through RPC (the “rpc” scope "
                                                "allows only those)."))
        if data.get("legacy_aes_key") and data.get("legacy_aes_key_remove"):
            self.add_error("legacy_aes_key_remove", "Either give a new key or remove the key, not both.")
        for kind in PROFILE_KINDS.values():
            if data.get(f"profile_{kind.name}_default") and not data.get(f"profile_{kind.name}_enabled"):
                self.add_error(f"profile_{kind.name}_default",
                               f"Turn the {kind.name} profile on to make this the default access ID for it.")
        return data

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give it a name.")
        holder = access_id_name_holder(name=name, exclude_pk=self.instance.pk)
        if holder is not None:
            raise ValidationError(_("Access ID %(key)s is already called “%(name)s”. Each client system needs a name "
                                    "of its own (capitals and full-width letters do not make a different name).")
                                  % {"key": holder.key, "name": holder.name})
        return name


class RotateSecretForm(forms.Form):
    grace = forms.ChoiceField(
        label="How long may the old secret still be used?",
        choices=GRACE_LABELS,
        initial="24h",
        widget=forms.RadioSelect(attrs={"class": "radiolist"}),
        help_text="During this grace period the client system can switch to the new secret without failed "
        "requests. Choose “None” if the old secret may have leaked.",
    )
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
        help_text="Enter your own admin password again to confirm.",
    )

    def __init__(self, *args, user, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_password(self):
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise ValidationError("That is not your password. Nothing was changed.", code="password_incorrect")
        return password


def _profile_form_fields() -> dict[str, forms.Field]:
    """Three fields per client profile: on/off, its time window, the default access ID."""
    fields: dict[str, forms.Field] = {}
    for kind in PROFILE_KINDS.values():
        warning = f" Weak: {kind.weak_reason}." if kind.weak else ""
        fields[f"profile_{kind.name}_enabled"] = forms.BooleanField(
            label=kind.label, required=False,
            help_text=f"Lets clients of {kind.source_system} call the platform unchanged.{warning}",
        )
        if kind.has_window:
            fields[f"profile_{kind.name}_window"] = forms.IntegerField(
                label=f"{kind.name}: time window (seconds)", required=False, min_value=1,
                max_value=MAX_WINDOW_SECONDS,
                help_text=f"How far a request's timestamp may be from the server's clock. "
                          f"Empty: {kind.window_seconds} s.",
            )
        if kind.has_default:
            fields[f"profile_{kind.name}_default"] = forms.BooleanField(
                label=f"{kind.name}: default access ID", required=False,
                help_text="Requests of this profile that name no access ID are this one's (one per platform: "
                          "ticking it here takes it from the access ID that had it).",
            )
    return fields


# Declared on the class (not added per instance) so the admin's fieldsets may name them.
for _name, _field in _profile_form_fields().items():
    AccessIdForm.base_fields[_name] = AccessIdForm.declared_fields[_name] = _field


# --- the access system party (docs/client-profiles.md, acs) ----------------------------------

ENCRYPTION_HELP = {
    "none": "No encryption: the payload and the answer travel in clear (use only inside a private network).",
    "aes": "AES-128-CBC with the party's key (recommended for symmetric keys).",
    "des": "DES-CBC: weak (a 56-bit key can be found by brute force). Only for old parties that cannot change.",
    "rsa": "RSA 1024-bit both ways: the party encrypts with the platform's certificate, the platform with the "
           "party's uploaded certificate. 1024-bit RSA is weak: only for old clients.",
    "rsa2": "RSA 2048-bit both ways (the platform's certificate / the party's uploaded certificate).",
    "rsa+aes": "A fresh AES key per message, wrapped with RSA 2048-bit (recommended for certificates).",
    "rsa+des": "A fresh DES key per message, wrapped with RSA: DES is weak; only for old parties.",
}


class AcsSettingsForm(forms.Form):
    sender_code = forms.CharField(
        label="Sender code (Ccode)", max_length=32,
        help_text="The code the party puts in Head.Ccode and in GET /acs/token/{sender}.",
    )
    encryption = forms.ChoiceField(
        label="Payload encryption", choices=[],
        help_text=" ".join(f"{mode}: {text}" for mode, text in ENCRYPTION_HELP.items()),
    )
    signature = forms.ChoiceField(
        label="Signature", choices=[("md5", "MD5 over the Head fields, Data and the key"),
                                    ("none", "none (weak: anyone who can encrypt can call)")],
    )
    token_required = forms.BooleanField(
        label="Token required", required=False,
        help_text="Requests carry a token from GET /acs/token/{sender}, valid two hours.",
    )
    open_confirmed = forms.BooleanField(
        label="Allow a fully open party", required=False,
        help_text="Without a token, a signature and encryption, anyone who knows the sender code can sign with the "
                  "card. Tick only if that is really wanted (e.g. a test system inside a closed network).",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .models import AcsParty

        self.fields["encryption"].choices = AcsParty.ENCRYPTIONS

    def clean_sender_code(self):
        code = self.cleaned_data["sender_code"].strip()
        if not code or not code.isprintable():
            raise ValidationError("1-32 printable characters.")
        return code


class AcsKeySetForm(forms.Form):
    key = forms.CharField(
        label="New key", required=False, strip=False, max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text="Leave empty to generate one (shown to you once). AES: 16 characters or 32 hex digits; DES: 8 "
                  "characters or 16 hex digits; otherwise (the signature's SecretKey) at least 16 characters. "
                  "The key stays pending until you press “Use new key”.",
    )


class AcsUseNewKeyForm(forms.Form):
    grace = forms.ChoiceField(
        label="How long may the old key still be used?", choices=GRACE_LABELS, initial="24h",
        widget=forms.RadioSelect(attrs={"class": "radiolist"}),
        help_text="Requests (and tokens) under the old key are accepted until then. Choose “None” if the old key "
                  "may have leaked.",
    )


class AcsCertificateUploadForm(forms.Form):
    certificate = forms.FileField(
        label="The party's encryption certificate",
        help_text="An X.509 certificate (PEM or DER) with an RSA public key of 1024, 2048, 3072 or 4096 bits, "
                  "not expired. The platform encrypts what it sends back to the party with it.",
    )

    def clean_certificate(self):
        upload = self.cleaned_data["certificate"]
        if upload.size > 64 * 1024:
            raise ValidationError("A certificate is a few kilobytes; this file is too large.")
        return upload.read()
