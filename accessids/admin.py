"""The admin for access IDs: the main interface for the people who run the platform.

Every write goes through accessids.services (which records the audit event). A new App
Secret is shown exactly once: after creating or rotating, the admin is redirected to a
reveal URL that carries a one-time ticket (not the secret); the first GET shows the
secret with Cache-Control: no-store, a reload only says it was already shown.

Permissions: view_accessid looks, change_accessid edits and enables/disables,
add_accessid creates, rotate_accessid rotates and revokes. Nobody deletes (disable
instead): audit events refer to access IDs."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Prefetch, Q
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext, override, pgettext

from audit.display import access_id_history_context
from audit.services import admin_change_context
from core.admin_mixins import ReadOnlyAdminMixin
from core.datetimes import datetime_display

from .acs import (
    ACCEPTED_RSA_BITS,
    acs_cert_generate,
    acs_cert_upload,
    acs_key_set,
    acs_key_use_new,
    acs_party_describe,
    acs_settings_set,
)
from .forms import (
    GRACE_LABELS,
    SCOPE_LABELS,
    AccessIdForm,
    AcsCertificateUploadForm,
    AcsKeySetForm,
    AcsSettingsForm,
    AcsUseNewKeyForm,
    RotateSecretForm,
)
from .models import SCOPES, AccessId, AcsParty, AppSecret
from .profiles import ACS, PROFILE_KINDS
from .services import (
    GRACE_CHOICES,
    AccessIdError,
    access_id_create,
    access_id_profile_set,
    access_id_set_enabled,
    access_id_set_legacy_key,
    access_id_update,
    app_secret_reveal,
    app_secret_reveal_ticket,
    app_secret_revoke_previous,
    app_secret_rotate,
)

ROTATE_PERMISSION = "accessids.rotate_accessid"
ADD_PERMISSION = "accessids.add_accessid"
# Fields the change form may edit, compared before/after to name what changed.
EDITABLE_FIELDS = ("name", "description", "expires_at", "scopes", "allowed_methods", "allowed_networks",
                   "rate_limit_per_minute")
STATUS_COLORS = {"enabled": "#1a7f37", "disabled": "#6e7781", "expired": "#cf222e"}
STATE_COLORS = {AppSecret.CURRENT: "#1a7f37", AppSecret.PREVIOUS: "#9a6700", AppSecret.REVOKED: "#6e7781"}


def _badge(color: str, text: str):
    return format_html('<span style="color:{};font-weight:bold">{}</span>', color, text)


class StatusFilter(admin.SimpleListFilter):
    title = gettext_lazy("status")
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("enabled", _("Enabled")), ("disabled", _("Disabled")), ("expired", _("Expired"))]

    def queryset(self, request, queryset):
        now = timezone.now()
        not_expired = Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        if self.value() == "enabled":
            return queryset.filter(not_expired, enabled=True)
        if self.value() == "disabled":
            return queryset.filter(enabled=False)
        if self.value() == "expired":
            return queryset.filter(enabled=True, expires_at__lte=now)
        return queryset


class ScopeFilter(admin.SimpleListFilter):
    title = gettext_lazy("scope")
    parameter_name = "scope"

    def lookups(self, request, model_admin):
        return [(scope, scope) for scope in SCOPES]

    def queryset(self, request, queryset):
        scope = self.value()
        if scope in SCOPES:
            # The JSON text holds each scope in quotes; works on PostgreSQL and SQLite alike.
            return queryset.filter(scopes__icontains=f'"{scope}"')
        return queryset


class AppSecretInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The secret versions of an access ID: read-only, with their last use."""

    model = AppSecret
    verbose_name = gettext_lazy("App Secret version")
    verbose_name_plural = gettext_lazy("App Secret versions (last use per version)")
    fields = ["version", "fingerprint", "state_display", "valid_until", "last_used_at", "created_at", "revoked_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    @admin.display(description=gettext_lazy("state"))
    def state_display(self, obj):
        if obj.state == AppSecret.PREVIOUS and obj.valid_until and obj.valid_until <= timezone.now():
            return _badge(STATE_COLORS[AppSecret.REVOKED], _("previous (grace period over)"))
        return _badge(STATE_COLORS.get(obj.state, "#000"), obj.get_state_display())

    # Seen by whoever may see the access ID; never added, changed or deleted (ReadOnlyAdminMixin).
    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("accessids.view_accessid") or request.user.has_perm("accessids.change_accessid")


@admin.register(AccessId)
class AccessIdAdmin(admin.ModelAdmin):
    form = AccessIdForm
    list_display = ["name", "key", "status_display", "scopes_display", "profiles_column", "current_fingerprint",
                    "legacy_key_column", "last_use_display"]
    list_display_links = ["name", "key"]
    list_filter = [StatusFilter, ScopeFilter]
    search_fields = ["name", "key", "description"]
    filter_horizontal = ["devices", "pools"]
    actions = ["disable_selected", "enable_selected"]
    inlines = [AppSecretInline]
    change_form_template = "admin/accessids/accessid/change_form.html"
    # Shown instead of the raw JSON to people who may only look.
    readable = {"scopes": "scopes_display", "allowed_methods": "allowed_methods_display",
                "allowed_networks": "allowed_networks_display", "devices": "devices_display", "pools": "pools_display",
                "enabled": "status_display", "legacy_aes_key": "legacy_key_display",
                "legacy_aes_key_remove": "legacy_key_display"}

    # --- lists and pages -------------------------------------------------------------

    def get_queryset(self, request):
        current = AppSecret.objects.filter(state=AppSecret.CURRENT)
        return super().get_queryset(request).prefetch_related(
            Prefetch("secrets", queryset=current, to_attr="current_secrets"), "profiles",
        )

    def get_fieldsets(self, request, obj=None):
        main = ["name", "description"]
        if obj is None:
            main.append("enabled")
        else:
            main = ["key", *main, "status_display"]
        fieldsets = [
            (None, {"fields": main}),
            (_("What it may do"), {"fields": ["scopes", "allowed_methods", "devices", "pools"]}),
            (_("Limits"), {"fields": ["allowed_networks", "rate_limit_per_minute", "expires_at"]}),
        ]
        legacy = ["legacy_aes_key"] if obj is None else ["legacy_key_display", "legacy_aes_key"]
        if obj is not None and obj.has_legacy_key:
            legacy.append("legacy_aes_key_remove")
        fieldsets.append((_("Legacy sign-server API"), {"fields": legacy, "classes": ["collapse"] if obj is None else []}))
        fieldsets.append((
            _("Client profiles (for client systems of the bridges this platform replaces)"),
            {"fields": AccessIdForm.profile_field_names() if self.has_change_permission(request, obj)
             else ["profiles_display"],
             "description": _("Each profile lets the clients of one older signing service call the platform by "
                              "changing only their base URL, with this access ID's App Secret. All are off until "
                              "turned on here; weak profiles say why."),
             "classes": ["collapse"] if obj is None else []},
        ))
        if obj is not None:
            fieldsets.append((pgettext("fieldset", "Use"), {"fields": ["current_fingerprint", "last_used_at", "last_secret_version",
                                                 "created_at", "updated_at"]}))
        if obj is not None and not self.has_change_permission(request, obj):
            fieldsets = [
                (title, {"fields": list(dict.fromkeys(self.readable.get(f, f) for f in opts["fields"]))})
                for title, opts in fieldsets
            ]
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["key", "status_display", "current_fingerprint", "last_used_at", "last_secret_version",
                "created_at", "updated_at", "legacy_key_display", "profiles_display"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name in ("devices", "pools") and field is not None:
            field.widget.can_add_related = False  # cards and pools are set up on their own pages
            field.help_text = AccessIdForm._meta.help_texts[db_field.name]  # without "hold down Control"
        return field

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def has_delete_permission(self, request, obj=None):
        return False  # disable instead: the audit history refers to access IDs

    # --- display columns ------------------------------------------------------------

    @admin.display(description=gettext_lazy("status"), ordering="enabled")
    def status_display(self, obj):
        return _badge(STATUS_COLORS.get(obj.status, "#000"), obj.status_label)

    @admin.display(description=gettext_lazy("scopes"))
    def scopes_display(self, obj):
        if not obj.scopes:
            return _("none")
        return format_html_join(", ", '<span title="{}">{}</span>',
                                ((SCOPE_LABELS.get(s, s), s) for s in obj.scopes))

    @admin.display(description=gettext_lazy("card methods allowed through RPC"))
    def allowed_methods_display(self, obj):
        return format_html_join(mark_safe("<br>"), "{}", ((m,) for m in obj.allowed_methods)) or _("none")

    @admin.display(description=gettext_lazy("allowed client networks"))
    def allowed_networks_display(self, obj):
        return format_html_join(mark_safe("<br>"), "{}", ((n,) for n in obj.allowed_networks)) or _("any address")

    @admin.display(description=gettext_lazy("last request"), ordering="last_used_at")
    def last_use_display(self, obj):
        if obj.last_used_at is None:
            return _("never")
        when = datetime_display(obj.last_used_at)
        if obj.last_secret_version is None:
            return when
        return format_html('{} <span class="secret-version" title="{}">v{}</span>', when,
                           _("signed with secret version %(version)s") % {"version": obj.last_secret_version},
                           obj.last_secret_version)

    @admin.display(description=gettext_lazy("card devices"))
    def devices_display(self, obj):
        names = [str(d) for d in obj.devices.order_by("slug")]
        return ", ".join(names) if names else _("the default card")

    @admin.display(description=gettext_lazy("card pools"))
    def pools_display(self, obj):
        return ", ".join(str(p) for p in obj.pools.order_by("slug")) or _("none")

    @admin.display(description=gettext_lazy("client profiles"))
    def profiles_display(self, obj):
        rows = {p.name: p for p in obj.profiles.all()} if obj and obj.pk else {}
        enabled = [rows[name] for name in PROFILE_KINDS if name in rows and rows[name].enabled]
        if not enabled:
            return _("none (native API only)")
        return format_html_join(mark_safe("<br>"), "{}{}", ((self._profile_line(p), self._profile_weak(p))
                                                            for p in enabled))

    @staticmethod
    def _profile_line(profile) -> str:
        values = {"profile": profile.name, "seconds": profile.window}
        if profile.is_default:
            return _("%(profile)s (±%(seconds)s s, default access ID)") % values
        return _("%(profile)s (±%(seconds)s s)") % values

    @staticmethod
    def _profile_weak(profile):
        if not profile.kind.weak:
            return ""
        return format_html(' <span style="color:#9a6700">{}</span>',
                           _("weak: %(reason)s") % {"reason": profile.kind.weak_reason})

    @admin.display(description=gettext_lazy("profiles"))
    def profiles_column(self, obj):
        names = [p.name for p in obj.profiles.all() if p.enabled]
        return ", ".join(names) or "—"

    @admin.display(description=gettext_lazy("legacy AES key"))
    def legacy_key_display(self, obj):
        if not obj.has_legacy_key:
            return _("not set (the old sign-server API is not open to this access ID)")
        return format_html('{} <code title="{}">{}</code>', pgettext("legacy AES key", "set"),
                           _("keyed fingerprint"), obj.legacy_key_fingerprint[:12])

    @admin.display(description=gettext_lazy("legacy key"), boolean=True)
    def legacy_key_column(self, obj):
        return obj.has_legacy_key

    @admin.display(description=gettext_lazy("current secret"))
    def current_fingerprint(self, obj):
        current = self._current_secret(obj)
        if current is None:
            return _("none")
        return format_html('<code title="{}">{}</code> (v{})',
                           _("fingerprint of secret version %(version)s") % {"version": current.version},
                           current.fingerprint, current.version)

    @staticmethod
    def _current_secret(obj):
        if hasattr(obj, "current_secrets"):
            return obj.current_secrets[0] if obj.current_secrets else None
        return obj.secrets.filter(state=AppSecret.CURRENT).first()

    # --- saving: through the services ------------------------------------------------

    def save_model(self, request, obj, form, change):
        context = admin_change_context(request)
        data = form.cleaned_data
        if not change:
            access, _secret = access_id_create(
                name=data["name"], scopes=data["scopes"], description=data["description"],
                allowed_methods=data["allowed_methods"], context=context, enabled=data["enabled"],
                expires_at=data["expires_at"], allowed_networks=data["allowed_networks"],
                rate_limit_per_minute=data["rate_limit_per_minute"], devices=list(data["devices"]),
                pools=list(data["pools"]),
            )
            del _secret  # shown once, from the reveal ticket, on the next page only
            if data.get("legacy_aes_key"):
                access_id_set_legacy_key(access_id=access, legacy_key=data["legacy_aes_key"], context=context)
            # The admin goes on with `obj` (save_related, the log entry, the redirect).
            self._profiles_save(access, form, context)
            obj.__dict__.update(access.__dict__)
            row = access.secrets.get(state=AppSecret.CURRENT)
            obj._reveal_token = app_secret_reveal_ticket(secret=row, user=request.user)
            return
        before = AccessId.objects.get(pk=obj.pk)
        changed = [f for f in EDITABLE_FIELDS if getattr(before, f) != getattr(obj, f)]
        for relation in ("devices", "pools"):
            if relation in form.changed_data:
                old = set(getattr(before, relation).values_list("pk", flat=True))
                if old != {item.pk for item in data[relation]}:
                    changed.append(relation)
        access_id_update(access_id=obj, changed=changed, context=context)
        if data.get("legacy_aes_key") or data.get("legacy_aes_key_remove"):
            access_id_set_legacy_key(access_id=obj, legacy_key=data.get("legacy_aes_key") or "", context=context)
        self._profiles_save(obj, form, context)

    @staticmethod
    def _profiles_save(access, form, context) -> None:
        for name, change in form.profile_changes().items():
            if change.get("enabled") is False:
                change["default"] = False  # a profile that is off is nobody's default
            access_id_profile_set(access_id=access, name=name, context=context, **change)

    def response_add(self, request, obj, post_url_continue=None):
        token = getattr(obj, "_reveal_token", None)
        if not token:
            return super().response_add(request, obj, post_url_continue)
        messages.success(request, _("The access ID %(key)s for “%(name)s” was created.")
                         % {"key": obj.key, "name": obj.name})
        return HttpResponseRedirect(self._reveal_url(obj, token))

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if add:
            context.update(show_save_and_add_another=False, show_save_and_continue=False)
        if obj is not None:
            secrets = list(obj.secrets.exclude(state=AppSecret.REVOKED).order_by("-version"))
            context.update(
                can_rotate=request.user.has_perm(ROTATE_PERMISSION),
                can_enable=self.has_change_permission(request, obj),
                current_secret=next((s for s in secrets if s.state == AppSecret.CURRENT), None),
                previous_secrets=[s for s in secrets if s.state == AppSecret.PREVIOUS],
                access=obj,
            )
            context.update(access_id_history_context(request, obj))  # its recent events and failure counts
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- actions on the list ------------------------------------------------------------

    def _set_enabled(self, request, queryset, enabled: bool) -> int:
        count = 0
        context = admin_change_context(request)
        for access in queryset:
            if access.enabled != enabled:
                access_id_set_enabled(access_id=access, enabled=enabled, context=context)
                self.log_change(request, access, "Enabled" if enabled else "Disabled")
                count += 1
        return count

    @admin.action(description=gettext_lazy("Disable the selected access IDs"), permissions=["change"])
    def disable_selected(self, request, queryset):
        count = self._set_enabled(request, queryset, False)
        self.message_user(request, ngettext(
            "%(count)d access ID disabled: its requests are refused from now on.",
            "%(count)d access IDs disabled: their requests are refused from now on.", count) % {"count": count})

    @admin.action(description=gettext_lazy("Enable the selected access IDs"), permissions=["change"])
    def enable_selected(self, request, queryset):
        count = self._set_enabled(request, queryset, True)
        self.message_user(request, ngettext("%(count)d access ID enabled.", "%(count)d access IDs enabled.", count)
                          % {"count": count})

    # --- extra pages: rotate, revoke, reveal, enable/disable ---------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/rotate/", wrap(self.rotate_view), name="%s_%s_rotate" % info),
            path("<path:object_id>/revoke-previous/", wrap(self.revoke_previous_view),
                 name="%s_%s_revoke_previous" % info),
            path("<path:object_id>/secret/<str:token>/", wrap(self.reveal_view), name="%s_%s_reveal" % info),
            path("<path:object_id>/acs/", wrap(self.acs_view), name="%s_%s_acs" % info),
            path("<path:object_id>/acs/certificate.pem", wrap(self.acs_certificate_view),
                 name="%s_%s_acs_certificate" % info),
            path("<path:object_id>/disable/", wrap(self.set_enabled_view), {"enabled": False},
                 name="%s_%s_disable" % info),
            path("<path:object_id>/enable/", wrap(self.set_enabled_view), {"enabled": True},
                 name="%s_%s_enable" % info),
            *super().get_urls(),
        ]

    def _url(self, name: str, *args) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args,
                       current_app=self.admin_site.name)

    def _reveal_url(self, obj, token: str) -> str:
        return self._url("reveal", obj.pk, token)

    def _object_or_404(self, request, object_id) -> AccessId:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such access ID.")
        return obj

    def _page(self, request, template: str, obj, title: str, **extra):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "original": obj,
            "access": obj,
            "title": title,
            "subtitle": str(obj),
            "has_view_permission": self.has_view_permission(request, obj),
            "change_url": self._url("change", obj.pk),
            **extra,
        }
        return TemplateResponse(request, f"admin/accessids/accessid/{template}", context)

    def rotate_view(self, request, object_id):
        if not request.user.has_perm(ROTATE_PERMISSION):
            raise PermissionDenied
        obj = self._object_or_404(request, object_id)
        form = RotateSecretForm(request.POST if request.method == "POST" else None, user=request.user)
        if request.method == "POST" and form.is_valid():
            grace_key = form.cleaned_data["grace"]
            with transaction.atomic():
                row, _secret = app_secret_rotate(access_id=obj, grace=GRACE_CHOICES[grace_key],
                                                 context=admin_change_context(request))
                del _secret  # shown once, from the reveal ticket
                token = app_secret_reveal_ticket(secret=row, user=request.user)
                with override("en"):  # the log entry is a record: in English, like the audit events
                    grace_label = str(dict(GRACE_LABELS)[grace_key])
                self.log_change(request, obj, f"Rotated the App Secret to version {row.version} "
                                              f"(old secret grace: {grace_label})")
            return HttpResponseRedirect(self._reveal_url(obj, token))
        current = obj.secrets.filter(state=AppSecret.CURRENT).first()
        previous = list(obj.secrets.filter(state=AppSecret.PREVIOUS))
        response = self._page(request, "rotate.html", obj, _("Rotate the App Secret"), form=form,
                              current_secret=current, previous_secrets=previous)
        add_never_cache_headers(response)
        return response

    def revoke_previous_view(self, request, object_id):
        if not request.user.has_perm(ROTATE_PERMISSION):
            raise PermissionDenied
        obj = self._object_or_404(request, object_id)
        previous = list(obj.secrets.filter(state=AppSecret.PREVIOUS).order_by("-version"))
        if request.method == "POST":
            with transaction.atomic():
                count = app_secret_revoke_previous(access_id=obj, context=admin_change_context(request))
                if count:
                    versions = ", ".join(f"v{s.version}" for s in previous)
                    self.log_change(request, obj, f"Revoked the previous App Secret ({versions})")
            if count:
                messages.success(request, _("The previous secret was revoked: requests signed with it are refused "
                                            "from now on."))
            else:
                messages.info(request, _("There was no previous secret to revoke."))
            return HttpResponseRedirect(self._url("change", obj.pk))
        if not previous:
            messages.info(request, _("There is no previous secret to revoke."))
            return HttpResponseRedirect(self._url("change", obj.pk))
        return self._page(request, "revoke_previous.html", obj, _("Revoke the previous App Secret"),
                          previous_secrets=previous)

    def reveal_view(self, request, object_id, token):
        user = request.user
        if not (user.has_perm(ADD_PERMISSION) or user.has_perm(ROTATE_PERMISSION)):
            raise PermissionDenied
        obj = self._object_or_404(request, object_id)
        revealed = app_secret_reveal(access_id=obj, token=token, user=user)
        if revealed is None:
            response = self._page(request, "reveal.html", obj, _("App Secret already shown"), secret=None)
            response.status_code = 410
        else:
            row, secret = revealed
            previous = list(obj.secrets.filter(state=AppSecret.PREVIOUS).exclude(pk=row.pk))
            response = self._page(request, "reveal.html", obj, _("New App Secret"), secret=secret, secret_row=row,
                                  previous_secrets=previous)
        add_never_cache_headers(response)  # includes no-store
        response["Referrer-Policy"] = "no-referrer"
        return response

    def set_enabled_view(self, request, object_id, enabled: bool):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self._object_or_404(request, object_id)
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        with transaction.atomic():
            count = self._set_enabled(request, [obj], enabled)
        if count:
            messages.success(request, (_("%(key)s is now enabled.") if enabled else _("%(key)s is now disabled."))
                             % {"key": obj.key})
        return HttpResponseRedirect(self._url("change", obj.pk))

    # --- the access system party: settings, keys, certificates (docs/client-profiles.md, acs) ---

    def acs_view(self, request, object_id):
        """The party's page: its settings and the four buttons — set key, use new key, generate
        certificate, upload encryption certificate. Each change goes through accessids.acs,
        which writes its audit event in the same transaction."""
        obj = self._object_or_404(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        can_change = self.has_change_permission(request, obj)
        can_keys = request.user.has_perm(ROTATE_PERMISSION)
        party = AcsParty.objects.filter(access_id=obj).first()
        initial = ({name: getattr(party, name) for name in AcsSettingsForm.base_fields} if party
                   else {"encryption": "aes", "signature": "md5", "token_required": True})
        forms = {"settings_form": AcsSettingsForm(initial=initial), "key_form": AcsKeySetForm(),
                 "use_form": AcsUseNewKeyForm(), "upload_form": AcsCertificateUploadForm()}
        revealed_key = None
        if request.method == "POST":
            action = request.POST.get("action", "")
            if action == "settings" and not can_change or action != "settings" and not can_keys:
                raise PermissionDenied
            context = admin_change_context(request)
            try:
                if action == "settings":
                    form = forms["settings_form"] = AcsSettingsForm(request.POST)
                    if form.is_valid():
                        acs_settings_set(access_id=obj, context=context, **form.cleaned_data)
                        messages.success(request, _("The access system settings were saved."))
                        return HttpResponseRedirect(self._url("acs", obj.pk))
                elif action == "key-set":
                    form = forms["key_form"] = AcsKeySetForm(request.POST)
                    if form.is_valid():
                        typed = form.cleaned_data["key"]
                        key = acs_key_set(access_id=obj, key=typed, context=context)
                        messages.success(request, _("The new key is pending: it is used once you press “Use new "
                                                    "key” (after the party has it)."))
                        if typed:
                            return HttpResponseRedirect(self._url("acs", obj.pk))
                        revealed_key = key  # generated: shown on this page only, once
                elif action == "key-use":
                    form = forms["use_form"] = AcsUseNewKeyForm(request.POST)
                    if form.is_valid():
                        grace = GRACE_CHOICES[form.cleaned_data["grace"]]
                        party = acs_key_use_new(access_id=obj, grace=grace, context=context)
                        messages.success(request, _("Key version %(version)s is in use now.")
                                         % {"version": party.key_version})
                        return HttpResponseRedirect(self._url("acs", obj.pk))
                elif action == "cert-generate":
                    if party is not None and party.certificate_pem and not request.POST.get("replace"):
                        raise AccessIdError(_("This party already has a certificate: tick “replace it” to make a "
                                              "new one (the party must then use the new certificate at once)."))
                    pem = acs_cert_generate(access_id=obj, context=context)
                    return self._pem_download(pem, obj)
                elif action == "cert-upload":
                    form = forms["upload_form"] = AcsCertificateUploadForm(request.POST, request.FILES)
                    if form.is_valid():
                        party = acs_cert_upload(access_id=obj, pem=form.cleaned_data["certificate"], context=context)
                        messages.success(request, _("The encryption certificate %(subject)s was stored.")
                                         % {"subject": party.party_certificate_subject})
                        return HttpResponseRedirect(self._url("acs", obj.pk))
                else:
                    raise AccessIdError(_("Unknown action."))
            except AccessIdError as exc:
                messages.error(request, _("Nothing was changed: %(error)s") % {"error": exc})
            party = AcsParty.objects.filter(access_id=obj).first()
        profile = obj.profiles.filter(name=ACS).first()
        response = self._page(
            request, "acs.html", obj, _("Access system (acs)"), party=party, state=acs_party_describe(party),
            can_change=can_change, can_keys=can_keys, revealed_key=revealed_key,
            profile_enabled=bool(profile and profile.enabled), weak_reason=PROFILE_KINDS[ACS].weak_reason,
            accepted_bits=", ".join(map(str, ACCEPTED_RSA_BITS)), **forms,
        )
        add_never_cache_headers(response)
        if revealed_key:
            response["Referrer-Policy"] = "no-referrer"
        return response

    @staticmethod
    def _pem_download(pem: str, obj) -> HttpResponse:
        party = AcsParty.objects.get(access_id=obj)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in party.sender_code)
        response = HttpResponse(pem, content_type="application/x-pem-file")
        response["Content-Disposition"] = f'attachment; filename="acs-{name}-platform-certificate.pem"'
        return response

    def acs_certificate_view(self, request, object_id):
        """The platform's public certificate for this party, again (it is no secret)."""
        obj = self._object_or_404(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        party = AcsParty.objects.filter(access_id=obj).first()
        if party is None or not party.certificate_pem:
            raise Http404("This party has no certificate yet.")
        return self._pem_download(party.certificate_pem, obj)
