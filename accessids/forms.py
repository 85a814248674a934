"""Admin forms for access IDs, worded for the customs clerks who use them: scopes and card
methods as checkboxes, allowed networks one per line, the rotation confirmation."""

from __future__ import annotations

import ipaddress

from django import forms
from django.core.exceptions import ValidationError
from django.utils.functional import lazy
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.legacy_cipher import legacy_key_fold
from ukey.protocol import RPC_METHODS

from .models import DEFAULT_RPC_METHODS, DEFAULT_SCOPES, SCOPES, AccessId
from .profiles import MAX_WINDOW_SECONDS, PROFILE_KINDS
from .selectors import access_id_name_holder
from .services import legacy_key_fingerprint


def _lazy_text(make) -> str:
    """Text put together when it is shown, in the language of that page: the fields and
    choices below are built once, at import."""
    return lazy(make, str)()


SCOPE_LABELS = {
    "sign": gettext_lazy("Sign data (POST /api/v1/sign)"),
    "sign_xml": gettext_lazy("Sign customs XML messages"),
    "verify_xml": gettext_lazy("Check signed XML messages (POST /api/v1/verify/xml)"),
    "sign_179": gettext_lazy("Sign 179 payment data"),
    "rpc": gettext_lazy("Call card methods directly (POST /api/v1/rpc, only the methods ticked below)"),
    "xml_read": gettext_lazy("Read its own stored XML messages"),
    "xml_write": gettext_lazy("Store and delete its own XML messages"),
    "xml_read_all": gettext_lazy("Read the XML messages of every access ID (not only its own)"),
    "rotate_self": gettext_lazy("Rotate its own App Secret through the API"),
    "declare": gettext_lazy("Declare to customs: build, sign and submit CEB messages, read their receipts "
                            "(/api/v1/declarations)"),
}
SCOPE_CHOICES = [(scope, format_lazy("{} — {}", scope, SCOPE_LABELS.get(scope, scope))) for scope in SCOPES]

METHOD_LABELS = {
    "cus-sec_SpcSignDataAsPEM": gettext_lazy("sign data"),
    "cus-sec_SpcSignDataNoHashAsPEM": gettext_lazy("sign a ready-made digest"),
    "cus-sec_SpcGetCertNo": gettext_lazy("certificate number"),
    "cus-sec_SpcGetEntName": gettext_lazy("company name"),
    "cus-sec_SpcGetSignCertAsPEM": gettext_lazy("signing certificate"),
    "cus-sec_SpcGetEnvCertAsPEM": gettext_lazy("encryption certificate"),
    "cus-sec_SpcGetValidTimeFromCert": gettext_lazy("certificate validity"),
    "cus-sec_SpcSHA1DigestAsPEM": gettext_lazy("SHA-1 digest"),
    "cus-sec_SpcVerifySignData": gettext_lazy("verify a signature"),
    "cus-sec_SpcGetCardID": gettext_lazy("card ID"),
    "cus-sec_SpcGetUName": gettext_lazy("card holder name"),
    "cus-sec_SpcGetEntID": gettext_lazy("company ID"),
    "cus-sec_SpcGetEntMode": gettext_lazy("company mode"),
    "cus-sec_SpcGetCardUserInfo": gettext_lazy("card user information"),
}
METHOD_CHOICES = [
    (method, format_lazy("{} — {}", method, METHOD_LABELS[method]) if method in METHOD_LABELS else method)
    for method in RPC_METHODS
]

GRACE_LABELS = [
    ("0", gettext_lazy("None — the old secret stops working immediately")),
    ("1h", gettext_lazy("1 hour")),
    ("24h", gettext_lazy("24 hours (recommended)")),
    ("7d", gettext_lazy("7 days")),
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
                errors.append(_("line %(number)s: “%(line)s” is not an IP network like 10.0.0.0/8 or 192.168.1.20")
                              % {"number": number, "line": line})
            else:
                errors.append(_("line %(number)s: “%(line)s” has host bits set; did you mean %(network)s?")
                              % {"number": number, "line": line, "network": loose.with_prefixlen})
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
        label=gettext_lazy("What it may do (scopes)"),
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple(attrs={"class": "radiolist"}),
        required=False,
        help_text=gettext_lazy(
            "Tick only what the client system needs. With nothing ticked it can call no signing endpoint. A new "
            "access ID gets the signing scopes; “rpc” (the card itself) and “xml_read_all” only on purpose."),
    )
    allowed_methods = forms.MultipleChoiceField(
        label=gettext_lazy("Card methods allowed through RPC"),
        choices=METHOD_CHOICES,
        widget=forms.CheckboxSelectMultiple(attrs={"class": "radiolist"}),
        required=False,
        help_text=gettext_lazy(
            "Only used with the “rpc” scope, and only the methods ticked: none are ticked for a new access ID."),
    )
    allowed_networks = NetworkListField(
        label=gettext_lazy("Allowed client networks"),
        help_text=gettext_lazy("One network per line, as CIDR (10.20.0.0/16) or a single address (192.168.1.20). "
                               "Leave empty to allow any address."),
    )

    legacy_aes_key = forms.CharField(
        label=gettext_lazy("Legacy AES key"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}),
        help_text=gettext_lazy(
            "Only for client systems still calling the old sign-server API (/getCode, /xml-files): the AES key they "
            "encrypt with. Their calls are then attributed to this access ID. Stored encrypted and never shown "
            "again; leave empty to keep the current key."),
    )
    legacy_aes_key_remove = forms.BooleanField(
        label=gettext_lazy("Remove the legacy AES key"), required=False,
        help_text=gettext_lazy("Old sign-server clients using it are refused from now on."),
    )

    class Meta:
        model = AccessId
        fields = [
            "name", "description", "enabled", "expires_at", "scopes", "allowed_methods", "allowed_networks",
            "rate_limit_per_minute", "devices", "pools",
        ]
        labels = {
            "name": gettext_lazy("Name"),
            "description": gettext_lazy("Notes"),
            "enabled": gettext_lazy("Enabled"),
            "expires_at": gettext_lazy("Expires at"),
            "rate_limit_per_minute": gettext_lazy("Requests per minute (limit)"),
            "devices": gettext_lazy("Card devices"),
            "pools": gettext_lazy("Card pools"),
        }
        help_texts = {
            "name": gettext_lazy("The client system that will use it, e.g. “ERP – Ningbo warehouse”."),
            "description": gettext_lazy("Anything your colleagues should know: contact person, ticket number…"),
            "enabled": gettext_lazy("A disabled access ID is refused at once; nothing is deleted."),
            "expires_at": gettext_lazy("Leave empty for no expiry. After this time every request is refused."),
            "rate_limit_per_minute": gettext_lazy(
                "Requests above this number per minute are refused with RATE_LIMITED."),
            "devices": gettext_lazy("The UKey cards it may use. None selected (and no pool): the default card."),
            "pools": gettext_lazy("Card pools it may use, and so every card in them. Its requests go to the first "
                                  "pool (by slug) unless they name a card or another pool."),
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
            raise ValidationError(_("The key must not start or end with spaces."))
        holder = AccessId.objects.filter(legacy_key_fingerprint=legacy_key_fingerprint(legacy_key_fold(key)))
        if self.instance.pk:
            holder = holder.exclude(pk=self.instance.pk)
        if holder.exists():
            raise ValidationError(_("Another access ID already has this legacy AES key; each client system needs its "
                                    "own."))
        return key

    def clean(self):
        data = super().clean()
        if "rpc" in (data.get("scopes") or []) and not data.get("allowed_methods"):
            self.add_error("allowed_methods", _("Tick the card methods it may call through RPC (the “rpc” scope "
                                                "allows only those)."))
        if data.get("legacy_aes_key") and data.get("legacy_aes_key_remove"):
            self.add_error("legacy_aes_key_remove", _("Either give a new key or remove the key, not both."))
        for kind in PROFILE_KINDS.values():
            if data.get(f"profile_{kind.name}_default") and not data.get(f"profile_{kind.name}_enabled"):
                self.add_error(f"profile_{kind.name}_default",
                               _("Turn the %(profile)s profile on to make this the default access ID for it.")
                               % {"profile": kind.name})
        return data

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError(_("Give it a name."))
        holder = access_id_name_holder(name=name, exclude_pk=self.instance.pk)
        if holder is not None:
            raise ValidationError(_("Access ID %(key)s is already called “%(name)s”. Each client system needs a name "
                                    "of its own (capitals and full-width letters do not make a different name).")
                                  % {"key": holder.key, "name": holder.name})
        return name


class RotateSecretForm(forms.Form):
    grace = forms.ChoiceField(
        label=gettext_lazy("How long may the old secret still be used?"),
        choices=GRACE_LABELS,
        initial="24h",
        widget=forms.RadioSelect(attrs={"class": "radiolist"}),
        help_text=gettext_lazy("During this grace period the client system can switch to the new secret without "
                               "failed requests. Choose “None” if the old secret may have leaked."),
    )
    password = forms.CharField(
        label=gettext_lazy("Your password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
        help_text=gettext_lazy("Enter your own admin password again to confirm."),
    )

    def __init__(self, *args, user, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_password(self):
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise ValidationError(_("That is not your password. Nothing was changed."), code="password_incorrect")
        return password


def _profile_form_fields() -> dict[str, forms.Field]:
    """Three fields per client profile: on/off, its time window, the default access ID."""
    fields: dict[str, forms.Field] = {}
    for kind in PROFILE_KINDS.values():
        if kind.weak:
            help_text = _lazy_text(lambda kind=kind: _(
                "Lets clients of %(system)s call the platform unchanged. Weak: %(reason)s.")
                % {"system": kind.source_system, "reason": kind.weak_reason})
        else:
            help_text = _lazy_text(lambda kind=kind: _("Lets clients of %(system)s call the platform unchanged.")
                                   % {"system": kind.source_system})
        fields[f"profile_{kind.name}_enabled"] = forms.BooleanField(
            label=kind.label, required=False, help_text=help_text,
        )
        if kind.has_window:
            fields[f"profile_{kind.name}_window"] = forms.IntegerField(
                label=_lazy_text(lambda kind=kind: _("%(profile)s: time window (seconds)") % {"profile": kind.name}),
                required=False, min_value=1, max_value=MAX_WINDOW_SECONDS,
                help_text=_lazy_text(lambda kind=kind: _(
                    "How far a request's timestamp may be from the server's clock. Empty: %(seconds)s s.")
                    % {"seconds": kind.window_seconds}),
            )
        if kind.has_default:
            fields[f"profile_{kind.name}_default"] = forms.BooleanField(
                label=_lazy_text(lambda kind=kind: _("%(profile)s: default access ID") % {"profile": kind.name}),
                required=False,
                help_text=gettext_lazy("Requests of this profile that name no access ID are this one's (one per "
                                       "platform: ticking it here takes it from the access ID that had it)."),
            )
    return fields


# Declared on the class (not added per instance) so the admin's fieldsets may name them.
for _name, _field in _profile_form_fields().items():
    AccessIdForm.base_fields[_name] = AccessIdForm.declared_fields[_name] = _field


# --- the access system party (docs/client-profiles.md, acs) ----------------------------------

ENCRYPTION_HELP = {
    "none": gettext_lazy("No encryption: the payload and the answer travel in clear (use only inside a private "
                         "network)."),
    "aes": gettext_lazy("AES-128-CBC with the party's key (recommended for symmetric keys)."),
    "des": gettext_lazy("DES-CBC: weak (a 56-bit key can be found by brute force). Only for old parties that "
                        "cannot change."),
    "rsa": gettext_lazy("RSA 1024-bit both ways: the party encrypts with the platform's certificate, the platform "
                        "with the party's uploaded certificate. 1024-bit RSA is weak: only for old clients."),
    "rsa2": gettext_lazy("RSA 2048-bit both ways (the platform's certificate / the party's uploaded certificate)."),
    "rsa+aes": gettext_lazy("A fresh AES key per message, wrapped with RSA 2048-bit (recommended for "
                            "certificates)."),
    "rsa+des": gettext_lazy("A fresh DES key per message, wrapped with RSA: DES is weak; only for old parties."),
}


class AcsSettingsForm(forms.Form):
    sender_code = forms.CharField(
        label=gettext_lazy("Sender code (Ccode)"), max_length=32,
        help_text=gettext_lazy("The code the party puts in Head.Ccode and in GET /acs/token/{sender}."),
    )
    encryption = forms.ChoiceField(
        label=gettext_lazy("Payload encryption"), choices=[],
        help_text=_lazy_text(lambda: " ".join(f"{mode}: {text}" for mode, text in ENCRYPTION_HELP.items())),
    )
    signature = forms.ChoiceField(
        label=gettext_lazy("Signature"),
        choices=[("md5", gettext_lazy("MD5 over the Head fields, Data and the key")),
                 ("none", gettext_lazy("none (weak: anyone who can encrypt can call)"))],
    )
    token_required = forms.BooleanField(
        label=gettext_lazy("Token required"), required=False,
        help_text=gettext_lazy("Requests carry a token from GET /acs/token/{sender}, valid two hours."),
    )
    open_confirmed = forms.BooleanField(
        label=gettext_lazy("Allow a fully open party"), required=False,
        help_text=gettext_lazy("Without a token, a signature and encryption, anyone who knows the sender code can "
                               "sign with the card. Tick only if that is really wanted (e.g. a test system inside "
                               "a closed network)."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .models import AcsParty

        self.fields["encryption"].choices = AcsParty.ENCRYPTIONS

    def clean_sender_code(self):
        code = self.cleaned_data["sender_code"].strip()
        if not code or not code.isprintable():
            raise ValidationError(_("1-32 printable characters."))
        return code


class AcsKeySetForm(forms.Form):
    key = forms.CharField(
        label=gettext_lazy("New key"), required=False, strip=False, max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text=gettext_lazy(
            "Leave empty to generate one (shown to you once). AES: 16 characters or 32 hex digits; DES: 8 "
            "characters or 16 hex digits; otherwise (the signature's SecretKey) at least 16 characters. The key "
            "stays pending until you press “Use new key”."),
    )


class AcsUseNewKeyForm(forms.Form):
    grace = forms.ChoiceField(
        label=gettext_lazy("How long may the old key still be used?"), choices=GRACE_LABELS, initial="24h",
        widget=forms.RadioSelect(attrs={"class": "radiolist"}),
        help_text=gettext_lazy("Requests (and tokens) under the old key are accepted until then. Choose “None” if "
                               "the old key may have leaked."),
    )


class AcsCertificateUploadForm(forms.Form):
    certificate = forms.FileField(
        label=gettext_lazy("The party's encryption certificate"),
        help_text=gettext_lazy("An X.509 certificate (PEM or DER) with an RSA public key of 1024, 2048, 3072 or "
                               "4096 bits, not expired. The platform encrypts what it sends back to the party with "
                               "it."),
    )

    def clean_certificate(self):
        upload = self.cleaned_data["certificate"]
        if upload.size > 64 * 1024:
            raise ValidationError(_("A certificate is a few kilobytes; this file is too large."))
        return upload.read()
