from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext, pgettext

from audit.models import AuditEvent
from audit.services import admin_change_context
from core.datetimes import datetime_display

from .agents import AgentTokenError, agent_token_create, agent_token_rotate, agent_tokens_revoke
from .cards import device_status_get
from .models import AgentToken, CardDevice, CardPool
from .pools import PoolEnterpriseError, pool_cards, pool_enterprise_check, pool_read, pools_forget
from .services import card_device_set_pin

# What the admin records of a change (the PIN as "changed", never its value).
_AUDITED_FIELDS = ["slug", "name", "transport", "url", "enabled", "connect_timeout", "request_timeout", "queue_size",
                   "pipeline_depth", "signature_method"]


class CardDeviceForm(forms.ModelForm):
    pin = forms.CharField(
        label=gettext_lazy("Card PIN"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=gettext_lazy("Stored encrypted; never shown again. Leave blank to keep the current PIN."),
    )
    clear_pin = forms.BooleanField(label=gettext_lazy("Remove the stored PIN"), required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["transport"].required = False  # left out: a card the platform dials

    def clean_transport(self):
        return self.cleaned_data.get("transport") or CardDevice.TRANSPORT_URL

    class Meta:
        model = CardDevice
        fields = [
            "slug", "name", "transport", "url", "enabled", "connect_timeout", "request_timeout", "queue_size",
            "pipeline_depth", "signature_method",
        ]


@admin.register(CardDevice)
class CardDeviceAdmin(admin.ModelAdmin):
    form = CardDeviceForm
    list_display = ["slug", "name", "transport", "url", "enabled", "state", "cert_no", "queue_depth", "last_error",
                    "pin_set"]
    list_filter = ["enabled", "transport"]
    search_fields = ["slug", "name", "url"]
    readonly_fields = ["pin_set", "state", "cert_no", "queue_depth", "last_error", "agent_tokens_display",
                       "created_at", "updated_at"]
    actions = ["agent_token_issue", "agent_tokens_revoke_selected"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "transport", "url", "enabled"]}),
        (gettext_lazy("Card agent"), {
            "fields": ["agent_tokens_display"],
            "description": gettext_lazy("For a card behind an agent: issue or revoke its token with the actions of "
                                        "the list. The token is shown once, when it is issued.")}),
        ("PIN", {"fields": ["pin", "clear_pin", "pin_set"]}),
        (gettext_lazy("Timeouts and queue"), {"fields": ["connect_timeout", "request_timeout", "queue_size",
                                                         "pipeline_depth", "signature_method"]}),
        (gettext_lazy("Live state"), {"fields": ["state", "cert_no", "queue_depth", "last_error", "created_at",
                                                 "updated_at"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.slug == settings.UKEY_DEFAULT_DEVICE:
            fields += ["slug", "url"]  # the environment owns them (UKEY_URL; the PIN: UKEY_PIN)
        return fields

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is not None and obj.slug == settings.UKEY_DEFAULT_DEVICE and "pin" in form.base_fields:
            form.base_fields["pin"].help_text = _(
                "The default card's URL and PIN come from UKEY_URL and UKEY_PIN and are set again at every start; "
                "change them there. Everything else here is yours.")
        return form

    def save_model(self, request, obj, form, change):
        """The change and its audit event in one transaction (the admin's)."""
        pin = form.cleaned_data.get("pin")
        pin_change = ""
        if form.cleaned_data.get("clear_pin"):
            card_device_set_pin(device=obj, pin="", save=False)
            pin_change = "removed"
        elif pin:
            card_device_set_pin(device=obj, pin=pin, save=False)
            pin_change = "changed"
        super().save_model(request, obj, form, change)
        changed = [name for name in form.changed_data if name in _AUDITED_FIELDS]
        details = {"changed": changed, **({"pin": pin_change} if pin_change else {})}
        if not change:
            details = {"transport": obj.transport, "url": obj.url, "enabled": obj.enabled, "pin_set": obj.has_pin}
        elif not changed and not pin_change:
            return
        admin_change_context(request).record(
            event_type=AuditEvent.CARD_DEVICE_CHANGED if change else AuditEvent.CARD_DEVICE_CREATED,
            device=obj.slug, details=details,
            message=(f"changed {', '.join(changed + (['PIN'] if pin_change else []))}" if change else "created"))

    def delete_model(self, request, obj):
        admin_change_context(request).record(event_type=AuditEvent.CARD_DEVICE_DELETED, device=obj.slug,
                                             details={"transport": obj.transport, "url": obj.url})
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for device in queryset:
            self.delete_model(request, device)

    # --- agent tokens ------------------------------------------------------------------------------
    @admin.display(description=gettext_lazy("Agent tokens"))
    def agent_tokens_display(self, obj):
        if obj is None or not obj.pk or not obj.is_agent:
            return "—"
        rows = []
        for token in obj.agent_tokens.exclude(state=AgentToken.REVOKED):
            names = {"version": token.version, "state": AgentToken.STATE_SHORT.get(token.state, token.state),
                     "until": datetime_display(token.valid_until), "fingerprint": token.fingerprint}
            rows.append((_("v%(version)s %(state)s until %(until)s (…%(fingerprint)s)") if token.valid_until
                         else _("v%(version)s %(state)s (…%(fingerprint)s)")) % names)
        return "; ".join(rows) or _("none: issue one with the list's action")

    @admin.action(description=gettext_lazy("Issue a new agent token (shown once; the old one works 24 h more)"))
    def agent_token_issue(self, request, queryset):
        context = admin_change_context(request)
        issued = []
        for device in queryset:
            if not device.is_agent:
                self.message_user(request, _("%(slug)s is not an agent card") % {"slug": device.slug}, messages.WARNING)
                continue
            try:
                if device.agent_tokens.filter(state=AgentToken.CURRENT).exists():
                    row, token = agent_token_rotate(device=device, context=context)
                else:
                    row, token = agent_token_create(device=device, context=context)
            except AgentTokenError as exc:
                self.message_user(request, f"{device.slug}: {exc}", messages.ERROR)
                continue
            issued.append({"device": device, "version": row.version, "token": token})
        if not issued:
            return None
        # Shown in this response only: never stored in a message, a session or a log.
        response = TemplateResponse(request, "admin/signing/carddevice/agent_tokens.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "issued": issued,
            "title": _("Agent tokens issued")})
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description=gettext_lazy("Revoke the agent tokens (the agent is cut off at once)"))
    def agent_tokens_revoke_selected(self, request, queryset):
        context = admin_change_context(request)
        for device in queryset.filter(transport=CardDevice.TRANSPORT_AGENT):
            count = agent_tokens_revoke(device=device, context=context)
            self.message_user(request, ngettext("%(slug)s: %(count)d agent token(s) revoked",
                                                "%(slug)s: %(count)d agent token(s) revoked", count)
                              % {"slug": device.slug, "count": count})

    @admin.display(boolean=True, description=gettext_lazy("PIN set"))
    def pin_set(self, obj):
        return obj.has_pin

    def _status(self, obj):
        return device_status_get(obj.slug) if obj and obj.pk else None

    @admin.display(description=gettext_lazy("State"))
    def state(self, obj):
        status = self._status(obj)
        if status is None or not status.alive:
            color, text = "#888", _("gateway not running")
        elif status.connected:
            color, text = "#1a7f37", _("connected")
        else:
            color, text = "#cf222e", _("disconnected")
        return format_html('<span style="color:{};font-weight:bold">{}</span>', color, text)

    @admin.display(description=gettext_lazy("certNo"))
    def cert_no(self, obj):
        status = self._status(obj)
        return status.cert_no if status else ""

    @admin.display(description=gettext_lazy("Queue"))
    def queue_depth(self, obj):
        status = self._status(obj)
        return status.queue_depth if status and status.alive else ""

    @admin.display(description=gettext_lazy("Last error"))
    def last_error(self, obj):
        status = self._status(obj)
        return status.last_error if status else ""


# --- card pools ---------------------------------------------------------------------------------


class CardPoolForm(forms.ModelForm):
    class Meta:
        model = CardPool
        fields = ["slug", "name", "devices", "enterprise", "enabled"]

    def clean(self):
        data = super().clean()
        devices = data.get("devices")
        if devices is not None:
            try:
                data["enterprise"] = pool_enterprise_check(devices=[d.slug for d in devices],
                                                           enterprise=data.get("enterprise") or "")
            except PoolEnterpriseError as exc:
                self.add_error("devices", str(exc))
        return data


@admin.register(CardPool)
class CardPoolAdmin(admin.ModelAdmin):
    form = CardPoolForm
    list_display = ["slug", "name", "capacity", "enterprise", "enabled", "cards_display"]
    list_filter = ["enabled"]
    search_fields = ["slug", "name", "enterprise"]
    filter_horizontal = ["devices"]
    readonly_fields = ["capacity", "cards_state", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "enabled"],
                "description": gettext_lazy(
                    "A client names the pool's slug as its device (or the pool is its access ID's default); each "
                    "request goes to the least-loaded connected card, and once more to another card when its card "
                    "fails without answering.")}),
        (gettext_lazy("Cards"), {"fields": ["devices", "enterprise"]}),
        (gettext_lazy("Live state"), {"fields": ["capacity", "cards_state", "created_at", "updated_at"]}),
    ]

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if db_field.name == "devices":
            field.widget.can_add_related = False
            field.help_text = _("The cards of the pool (all of one enterprise, as their certificates say).")
        return field

    def save_model(self, request, obj, form, change):
        obj._before = set(obj.devices.values_list("slug", flat=True)) if change else set()
        obj._changed = [name for name in form.changed_data if name != "devices"]
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        """The cards are saved here, so the audit event is written here (same transaction)."""
        super().save_related(request, form, formsets, change)
        obj = form.instance
        cards = set(obj.devices.values_list("slug", flat=True))
        changed = list(obj._changed) + (["devices"] if cards != obj._before else [])
        pools_forget()
        if change and not changed:
            return
        details = {"cards": sorted(cards), "enterprise": obj.enterprise}
        if change:
            details.update(changed=changed, added=sorted(cards - obj._before), removed=sorted(obj._before - cards))
        admin_change_context(request).record(
            event_type=AuditEvent.CARD_POOL_CHANGED if change else AuditEvent.CARD_POOL_CREATED,
            device=obj.slug, details=details,
            message=f"changed {', '.join(changed)}" if change else "created")

    def delete_model(self, request, obj):
        admin_change_context(request).record(
            event_type=AuditEvent.CARD_POOL_DELETED, device=obj.slug,
            details={"cards": sorted(obj.devices.values_list("slug", flat=True))})
        super().delete_model(request, obj)
        pools_forget()

    def delete_queryset(self, request, queryset):
        for pool in queryset:
            self.delete_model(request, pool)

    def _cards(self, obj):
        info = pool_read(obj.slug) if obj and obj.pk else None
        return pool_cards(info, display=True)[1] if info else []

    @admin.display(description=gettext_lazy("Capacity"))
    def capacity(self, obj):
        cards = self._cards(obj)
        up = sum(1 for c in cards if c.up)
        color = "#1a7f37" if cards and up == len(cards) else ("#9a6700" if up else "#cf222e")
        return format_html('<span style="color:{};font-weight:bold">{}</span>', color,
                           _("%(up)d/%(size)d cards up") % {"up": up, "size": len(cards)})

    @admin.display(description=gettext_lazy("Cards"))
    def cards_display(self, obj):
        return ", ".join(obj.devices.order_by("slug").values_list("slug", flat=True)) or _("none")

    @admin.display(description=gettext_lazy("State of each card"))
    def cards_state(self, obj):
        rows = [(c.slug, pgettext("card state", "up") if c.up else c.reason) for c in self._cards(obj)]
        return format_html_join(mark_safe("<br>"), "<code>{}</code>: {}", rows) if rows else "—"
