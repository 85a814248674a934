"""The webhook admin: where operators tell the platform which systems to notify when a
customs signing card fails (and, optionally, about every API request), and where they see
what was sent, what is waiting for a retry and what failed.

Every change goes through webhooks.services (one audit event each). The secret is
write-only: entered once, stored encrypted, never shown again. Deliveries are a record:
nobody edits or deletes them; a failed or waiting one can be retried now."""

from __future__ import annotations

import json
import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from audit.models import AuditEvent
from audit.services import admin_change_context

from . import services
from .models import ACS, CP_MD5, NATIVE, Webhook, WebhookDelivery

STATUS_COLORS = {
    WebhookDelivery.PENDING: "#9a6700",
    WebhookDelivery.DELIVERED: "#1a7f37",
    WebhookDelivery.FAILED: "#cf222e",
    Webhook.RETRYING: "#9a6700",
}
EVENT_LABELS = {
    AuditEvent.CARD_DISCONNECTED: gettext_lazy("card connection lost"),
    AuditEvent.CARD_ERROR: gettext_lazy("card operation failed"),
    AuditEvent.CARD_PROBE_FAILED: gettext_lazy("card health probe failed"),
    AuditEvent.API_REQUEST: gettext_lazy("API request (audit feed)"),
    WebhookDelivery.TEST: gettext_lazy("test event"),
}


def _badge(color: str, text: str):
    return format_html('<span style="color:{};font-weight:bold">{}</span>', color, text)


def _formfield(db_field, **kwargs):
    if db_field.name == "url":
        kwargs["assume_scheme"] = "https"  # "erp.example.com/hook" means https://
    return db_field.formfield(**kwargs)


def _when(value) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


# --- webhooks ------------------------------------------------------------------------------------


class WebhookForm(forms.ModelForm):
    secret = forms.CharField(
        label=gettext_lazy("Secret"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = Webhook
        fields = ["name", "url", "secret", "card_failures", "audit_feed", "declaration_receipts", "payload_format", "acs_party",
                  "enabled"]
        formfield_callback = _formfield

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        length = {"count": services.SECRET_MIN_LENGTH}
        if self.instance.pk is None:
            self.fields["secret"].required = True
            self.fields["secret"].help_text = _(
                "The key the receiver checks each notification's X-Signature with (at least %(count)s characters; "
                "give it to the receiver's administrators). Stored encrypted and never shown again.") % length
        else:
            self.fields["secret"].label = _("New secret")
            self.fields["secret"].help_text = _(
                "The key the receiver checks each notification's X-Signature with (at least %(count)s characters; "
                "give it to the receiver's administrators). Stored encrypted and never shown again. Leave empty to "
                "keep the current secret.") % length
        # A form posted without the format (a client of the form from before it existed)
        # keeps the webhook's format, native for a new one; neither counts as a change.
        if "acs_party" in self.fields:  # only access IDs that have access system settings
            self.fields["acs_party"].queryset = self.fields["acs_party"].queryset.filter(acs__isnull=False)
        payload_format = self.fields["payload_format"]
        payload_format.required = False
        payload_format.empty_value = self.instance.payload_format or NATIVE

    def clean_secret(self):
        secret = self.cleaned_data.get("secret") or ""
        if secret:
            try:
                services.secret_check(secret)
            except services.WebhookError as exc:
                raise ValidationError(str(exc)) from None
        return secret

    def clean(self):
        cleaned = super().clean()
        if not any(cleaned.get(name) for name in ("card_failures", "audit_feed", "declaration_receipts")):
            self.add_error(None, _("Choose what to send: card failures, the audit feed, declaration receipts."))
        return cleaned


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["name", "url_display", "enabled_display", "sends_display", "format_display",
                    "last_delivery_display", "deliveries_link"]
    list_display_links = ["name"]
    list_filter = ["enabled", "card_failures", "audit_feed", "declaration_receipts", "payload_format"]
    search_fields = ["name", "url", "key"]
    actions = ["send_test_event", "enable_selected", "disable_selected"]
    change_form_template = "admin/webhooks/webhook/change_form.html"

    def get_fieldsets(self, request, obj=None):
        fieldsets = [
            (None, {"fields": ["name", "url"] if obj is None else ["key", "name", "url"]}),
            (_("What to send"), {"fields": ["card_failures", "audit_feed", "declaration_receipts", "payload_format", "acs_party",
                                         "enabled"]}),
            (_("Signing"), {"fields": ["secret"] if obj is None else ["secret_display", "secret", "receiver_help"]}),
        ]
        if obj is not None:
            fieldsets.append((_("Last delivery"), {"fields": ["last_delivery_display", "last_delivery_error",
                                                           "deliveries_link", "created_at", "updated_at"]}))
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["key", "secret_display", "receiver_help", "last_delivery_display", "last_delivery_error",
                "deliveries_link", "created_at", "updated_at"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "url":
            kwargs["assume_scheme"] = "https"  # "erp.example.com/hook" means https://
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one at a time, from the webhook's page (audited)
        return actions

    # --- writes (through services: one audit event each) ---------------------------------------

    def save_model(self, request, obj, form, change):
        secret = form.cleaned_data.get("secret") or ""
        if change:
            services.webhook_update(webhook=obj, changed=form.changed_data, secret=secret,
                                    context=admin_change_context(request))
        else:
            services.webhook_add(webhook=obj, secret=secret, context=admin_change_context(request))

    def delete_model(self, request, obj):
        services.webhook_delete(webhook=obj, context=admin_change_context(request))

    @admin.action(description=gettext_lazy("Send a test event"), permissions=["change"])
    def send_test_event(self, request, queryset):
        sent, skipped = [], []
        for webhook in queryset:
            if not webhook.enabled:
                skipped.append(webhook.name)
                continue
            services.webhook_send_test(webhook=webhook, context=admin_change_context(request))
            sent.append(webhook.name)
        if sent:
            self.message_user(request, _("Test event queued for %(names)s: it is sent within a few seconds, see "
                                         "Webhook deliveries for the receiver's answer.") % {"names": ", ".join(sent)},
                              messages.SUCCESS)
        if skipped:
            self.message_user(request, _("Not sent to disabled webhooks: %(names)s.") % {"names": ", ".join(skipped)},
                              messages.WARNING)

    @admin.action(description=gettext_lazy("Enable selected webhooks"), permissions=["change"])
    def enable_selected(self, request, queryset):
        changed = sum(services.webhook_set_enabled(webhook=w, enabled=True, context=admin_change_context(request))
                      for w in queryset)
        self.message_user(request, ngettext("%(count)s webhook enabled.", "%(count)s webhooks enabled.", changed)
                          % {"count": changed}, messages.SUCCESS)

    @admin.action(description=gettext_lazy("Disable selected webhooks (pending notifications wait)"), permissions=["change"])
    def disable_selected(self, request, queryset):
        changed = sum(services.webhook_set_enabled(webhook=w, enabled=False, context=admin_change_context(request))
                      for w in queryset)
        self.message_user(request, ngettext(
            "%(count)s webhook disabled; its pending notifications are kept and sent when it is enabled again.",
            "%(count)s webhooks disabled; their pending notifications are kept and sent when they are enabled again.",
            changed) % {"count": changed}, messages.SUCCESS)

    def get_urls(self):
        return [
            path("<path:object_id>/send-test/", self.admin_site.admin_view(self.send_test_view),
                 name="webhooks_webhook_send_test"),
            *super().get_urls(),
        ]

    def send_test_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        webhook = self.get_object(request, unquote(object_id))
        if webhook is None:
            raise Http404
        if not self.has_change_permission(request, webhook):
            raise PermissionDenied
        change_url = reverse("admin:webhooks_webhook_change", args=[webhook.pk])
        if not webhook.enabled:
            self.message_user(request, _("This webhook is disabled: enable it first."), messages.WARNING)
            return HttpResponseRedirect(change_url)
        delivery = services.webhook_send_test(webhook=webhook, context=admin_change_context(request))
        delivery_url = reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk])
        self.message_user(request, format_html(
            _('Test event queued: it is sent within a few seconds. <a href="{url}">See the delivery</a> for the '
              "receiver's answer."), url=delivery_url), messages.SUCCESS)
        return HttpResponseRedirect(change_url)

    # --- display ---------------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("receiver URL"), ordering="url")
    def url_display(self, obj):
        return format_html('<code title="{}">{}</code>', _("webhook ID %(key)s") % {"key": obj.key}, obj.url)

    @admin.display(description=gettext_lazy("status"), ordering="enabled")
    def enabled_display(self, obj):
        return _badge("#1a7f37", _("enabled")) if obj.enabled else _badge("#6e7781", _("disabled"))

    @admin.display(description=gettext_lazy("sends"))
    def sends_display(self, obj):
        what = [label for label, on in ((_("card failures"), obj.card_failures), (_("audit feed"), obj.audit_feed),
                                        (_("declaration receipts"), obj.declaration_receipts)) if on]
        return ", ".join(what) or _("nothing")

    @admin.display(description=gettext_lazy("format"), ordering="payload_format")
    def format_display(self, obj):
        if obj.payload_format in (CP_MD5, ACS):
            return format_html('<span title="{}">{} {}</span>', _("its MD5 signature is weak"),
                               obj.payload_format, _badge("#9a6700", _("weak")))
        return obj.payload_format

    @admin.display(description=gettext_lazy("last delivery"), ordering="last_delivery_at")
    def last_delivery_display(self, obj):
        if not obj.last_delivery_at:
            return _("none yet")
        label = dict(Webhook.LAST_STATUSES).get(obj.last_delivery_status, obj.last_delivery_status)
        http = f" (HTTP {obj.last_delivery_http_status})" if obj.last_delivery_http_status else ""
        return format_html('{}<br><span title="{}">{}{}</span>', _when(obj.last_delivery_at),
                           obj.last_delivery_error, _badge(STATUS_COLORS.get(obj.last_delivery_status, "#000"), label),
                           http)

    @admin.display(description=gettext_lazy("notifications"))
    def deliveries_link(self, obj):
        base = reverse("admin:webhooks_webhookdelivery_changelist")
        return format_html('<a href="{}?{}">{}</a> · <a href="{}?{}">{}</a> · <a href="{}?{}">{}</a>',
                           base, urlencode({"webhook__id__exact": obj.pk}), _("all"),
                           base, urlencode({"webhook__id__exact": obj.pk, "status__exact": "failed"}), _("failed"),
                           base, urlencode({"webhook__id__exact": obj.pk, "status__exact": "pending"}), _("pending"))

    @admin.display(description=gettext_lazy("current secret"))
    def secret_display(self, obj):
        return _("set (stored encrypted, not shown)") if obj.has_secret else _("not set")

    @admin.display(description=gettext_lazy("how the receiver checks a notification"))
    def receiver_help(self, obj):
        if obj.payload_format == ACS:
            return format_html(_(
                "acs format: each notification is a POST of the access system's envelope "
                "<code>{{\"Head\": {{\"Sign\", \"Ccode\", \"Status\", \"Message\"}}, \"Data\"}}</code>, "
                "Data being the native notification JSON encrypted as the party {party} encrypts (with its current "
                "key, or its uploaded certificate) and Head.Sign the MD5 signature made with the party's current key "
                "(docs/client-profiles.md, acs). The webhook's secret is not used in this format. "
                "<code>X-Delivery-Id</code> is the same for every attempt; any answer other than 2xx is retried."),
                party=obj.acs_party)
        if obj.payload_format == CP_MD5:
            return format_html(_(
                "cp-md5 format: the chinaport-proxy's notifications (<code>ukey_malfunction</code> for card "
                "failures, <code>api_audit</code> for the audit feed, without request or response bodies), each a "
                "POST of JSON with <code>X-Timestamp</code> (Unix milliseconds) and <code>X-Signature</code> = "
                "lowercase hex MD5 of <code>POST</code> + the URL's path (without the query) + "
                "<code>X-Timestamp</code> + the body + this secret, as the proxy signs them. "
                "<strong>MD5 is weak</strong>: use this format only for receivers that cannot change, on a private "
                "network. <code>X-Delivery-Id</code> is the same for every attempt of one notification: the "
                "receiver uses it to ignore repeats. Any answer other than 2xx is retried. "
                "(Webhook ID {key}, not sent in this format.)"), key=obj.key)
        return format_html(_(
            "Each notification is a POST of JSON with the headers <code>X-Access-Id: {key}</code>, "
            "<code>X-Timestamp</code>, <code>X-Nonce</code> and <code>X-Signature</code>, signed exactly like the "
            "platform's API requests (HMAC-SHA256 with this secret over <code>HMAC-SHA256\\nPOST\\n&lt;path&gt;\\n"
            "&lt;query&gt;\\n&lt;X-Access-Id&gt;\\n&lt;X-Timestamp&gt;\\n&lt;X-Nonce&gt;\\n&lt;SHA-256 of the body&gt;"
            "</code>). <code>X-Delivery-Id</code> is the same for every attempt of one notification: the receiver "
            "uses it to ignore repeats. Any answer other than 2xx is retried."), key=obj.key)


# --- deliveries ----------------------------------------------------------------------------------


class EventFilter(admin.SimpleListFilter):
    title = gettext_lazy("event")
    parameter_name = "event"

    def lookups(self, request, model_admin):
        return list(EVENT_LABELS.items())

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(event_type=self.value())
        return queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_display", "event_display", "webhook_name", "status_display", "attempts",
                    "next_attempt_display", "last_error_short"]
    list_filter = ["status", EventFilter, "webhook"]
    list_select_related = ["webhook"]
    search_fields = ["id", "audit_event_id"]  # handled by get_search_results (exact matches)
    search_help_text = gettext_lazy("A delivery ID (X-Delivery-Id) or an audit event number.")
    show_full_result_count = False
    actions = ["retry_now"]
    change_form_template = "admin/webhooks/webhookdelivery/change_form.html"
    fieldsets = [
        (gettext_lazy("Notification"), {"fields": ["id", "webhook_link", "event_display", "payload_format", "audit_event_link",
                                     "created_at"]}),
        (gettext_lazy("Sending"), {"fields": ["status_display", "attempts", "last_attempt_at", "next_attempt_display",
                                "last_http_status", "last_error", "delivered_at"]}),
        (gettext_lazy("Body sent (JSON)"), {"fields": ["payload_display"]}),
    ]
    readonly_fields = ["id", "webhook_link", "event_display", "payload_format", "audit_event_link", "created_at",
                       "status_display", "attempts", "last_attempt_at", "next_attempt_display", "last_http_status",
                       "last_error", "delivered_at", "payload_display"]

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        if term.isdigit():
            return queryset.filter(audit_event_id=int(term)), False
        return queryset.none(), False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False,
                         "show_save_and_add_another": False, "show_delete": False}
        return super().change_view(request, object_id, form_url, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST":  # nothing here is edited
            return HttpResponseNotAllowed(["GET"])
        return super().changeform_view(request, object_id, form_url, extra_context)

    # --- retry -------------------------------------------------------------------------------------

    def _retry(self, request, delivery) -> bool:
        try:
            services.delivery_retry_now(delivery=delivery, context=admin_change_context(request))
        except services.WebhookError as exc:
            self.message_user(request, f"{delivery.pk}: {exc}", messages.WARNING)
            return False
        return True

    @admin.action(description=gettext_lazy("Retry now"), permissions=["change"])
    def retry_now(self, request, queryset):
        retried = 0
        for delivery in queryset.exclude(status=WebhookDelivery.DELIVERED):
            retried += self._retry(request, delivery)
        skipped = queryset.filter(status=WebhookDelivery.DELIVERED).count()
        if retried:
            self.message_user(request, ngettext(
                "%(count)s notification will be sent again within a few seconds (one more attempt if it failed).",
                "%(count)s notifications will be sent again within a few seconds (one more attempt for failed ones).",
                retried) % {"count": retried}, messages.SUCCESS)
        if skipped:
            self.message_user(request, _("%(count)s already delivered: not sent again.") % {"count": skipped},
                              messages.WARNING)

    def get_urls(self):
        return [
            path("<path:object_id>/retry/", self.admin_site.admin_view(self.retry_view),
                 name="webhooks_webhookdelivery_retry"),
            *super().get_urls(),
        ]

    def retry_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        delivery = self.get_object(request, unquote(object_id))
        if delivery is None:
            raise Http404
        if not self.has_change_permission(request, delivery):
            raise PermissionDenied
        if self._retry(request, delivery):
            self.message_user(request, _("The notification will be sent again within a few seconds."), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk]))

    # --- display -----------------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("created"), ordering="created_at")
    def created_display(self, obj):
        return _when(obj.created_at)

    @admin.display(description=gettext_lazy("webhook"), ordering="webhook__name")
    def webhook_name(self, obj):
        return obj.webhook.name

    @admin.display(description=gettext_lazy("event"), ordering="event_type")
    def event_display(self, obj):
        label = EVENT_LABELS.get(obj.event_type)
        return format_html('<span title="{}">{}</span>', label or "", obj.event_type)

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_display(self, obj):
        badge = _badge(STATUS_COLORS.get(obj.status, "#000"), obj.get_status_display())
        if obj.last_http_status is None:
            return badge
        return format_html('{}<br><span title="{}">HTTP {}</span>', badge, _("the receiver's last answer"),
                           obj.last_http_status)

    @admin.display(description=gettext_lazy("next attempt"), ordering="next_attempt_at")
    def next_attempt_display(self, obj):
        if obj.status != WebhookDelivery.PENDING:
            return "—"
        if obj.next_attempt_at <= timezone.now():
            return _("due now")
        return _when(obj.next_attempt_at)

    @admin.display(description=gettext_lazy("last error"))
    def last_error_short(self, obj):
        if not obj.last_error:
            return ""
        text = obj.last_error if len(obj.last_error) <= 60 else obj.last_error[:59] + "…"
        return format_html('<span title="{}">{}</span>', obj.last_error, text)

    @admin.display(description=gettext_lazy("webhook"))
    def webhook_link(self, obj):
        url = reverse("admin:webhooks_webhook_change", args=[obj.webhook_id])
        return format_html('<a href="{}">{}</a> → <code>{}</code>', url, obj.webhook, obj.webhook.url)

    @admin.display(description=gettext_lazy("audit event"))
    def audit_event_link(self, obj):
        if obj.audit_event_id is None:
            return ""
        try:
            url = reverse("admin:audit_auditevent_change", args=[obj.audit_event_id])
        except NoReverseMatch:
            return obj.audit_event_id
        return format_html('<a href="{}">#{}</a>', url, obj.audit_event_id)

    @admin.display(description=gettext_lazy("body"))
    def payload_display(self, obj):
        text = json.dumps(obj.payload, ensure_ascii=False, indent=2, sort_keys=True)
        return format_html('<pre class="webhook-payload" style="white-space:pre-wrap;margin:0">{}</pre>', text)
