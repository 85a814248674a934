from django import forms
from django.contrib import admin
from django.utils.html import format_html

from .cards import device_status_get
from .models import CardDevice
from .services import card_device_set_pin


class CardDeviceForm(forms.ModelForm):
    pin = forms.CharField(
        label="Card PIN",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; never shown again. Leave blank to keep the current PIN.",
    )
    clear_pin = forms.BooleanField(label="Remove the stored PIN", required=False)

    class Meta:
        model = CardDevice
        fields = [
            "slug", "name", "url", "enabled", "connect_timeout", "request_timeout", "queue_size",
            "pipeline_depth", "signature_method",
        ]


@admin.register(CardDevice)
class CardDeviceAdmin(admin.ModelAdmin):
    form = CardDeviceForm
    list_display = ["slug", "name", "url", "enabled", "state", "cert_no", "queue_depth", "last_error", "pin_set"]
    list_filter = ["enabled"]
    search_fields = ["slug", "name", "url"]
    readonly_fields = ["pin_set", "state", "cert_no", "queue_depth", "last_error", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "url", "enabled"]}),
        ("PIN", {"fields": ["pin", "clear_pin", "pin_set"]}),
        ("Timeouts and queue", {"fields": ["connect_timeout", "request_timeout", "queue_size", "pipeline_depth",
                                            "signature_method"]}),
        ("Live state", {"fields": ["state", "cert_no", "queue_depth", "last_error", "created_at", "updated_at"]}),
    ]

    def save_model(self, request, obj, form, change):
        pin = form.cleaned_data.get("pin")
        if form.cleaned_data.get("clear_pin"):
            card_device_set_pin(device=obj, pin="", save=False)
        elif pin:
            card_device_set_pin(device=obj, pin=pin, save=False)
        super().save_model(request, obj, form, change)

    @admin.display(boolean=True, description="PIN set")
    def pin_set(self, obj):
        return obj.has_pin

    def _status(self, obj):
        return device_status_get(obj.slug) if obj and obj.pk else None

    @admin.display(description="State")
    def state(self, obj):
        status = self._status(obj)
        if status is None or not status.alive:
            color, text = "#888", "gateway not running"
        elif status.connected:
            color, text = "#1a7f37", "connected"
        else:
            color, text = "#cf222e", "disconnected"
        return format_html('<span style="color:{};font-weight:bold">{}</span>', color, text)

    @admin.display(description="certNo")
    def cert_no(self, obj):
        status = self._status(obj)
        return status.cert_no if status else ""

    @admin.display(description="Queue")
    def queue_depth(self, obj):
        status = self._status(obj)
        return status.queue_depth if status and status.alive else ""

    @admin.display(description="Last error")
    def last_error(self, obj):
        status = self._status(obj)
        return status.last_error if status else ""
