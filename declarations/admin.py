"""Declarations in the admin: company registrations (each change audited), the Declarations
screen (status badges, search by order number, each declaration's timeline with the signed
XML beside its receipts, re-submit after a fix) and every receipt, including those that
matched no declaration (kept and shown, never dropped).

Declarations and receipts are read-only here: they change through the API, the worker and
the re-submit button (permission `resubmit_declaration`), each with its audit event."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit.services import admin_change_context
from core.admin_mixins import ReadOnlyAdminMixin
from core.cebexchange import RECEIPTS, receipt_outcome
from ukey.client import UKeyError
from xmlstore.admin import highlight_css, human_size, xml_highlighted

from . import selectors
from .models import Declaration, Receipt, Registration
from .services import (
    REGISTRATION_FIELDS,
    RESUBMITTABLE,
    DeclarationError,
    declaration_resubmit,
    registration_delete,
    registration_set,
)

OUTCOME_CLASSES = {"signed": "signed", "submitted": "submitted", "accepted": "accepted", "rejected": "rejected",
                   "needs_attention": "attention", "in_progress": "submitted"}


def _when(moment):
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    return format_html('<span class="xml-when">{}</span>{}', local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S"))


def status_badge(value: str, label: str):
    return format_html('<span class="decl-badge decl-badge-{}" data-status="{}">{}</span>',
                       OUTCOME_CLASSES.get(value, "signed"), value, label)


# --- registrations -------------------------------------------------------------------------------------


class RegistrationForm(forms.ModelForm):
    class Meta:
        model = Registration
        fields = ["access_id", "pool", *REGISTRATION_FIELDS]

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is None and bool(cleaned.get("access_id")) == bool(cleaned.get("pool")):
            raise ValidationError(_("Choose either an access ID (it signs with one card) or a card pool, not both."))
        return cleaned


@admin.register(Registration)
class RegistrationAdmin(admin.ModelAdmin):
    form = RegistrationForm
    list_display = ["cop_name", "cop_code", "dxp_id", "owner_display", "server_display", "updated_at"]
    search_fields = ["cop_code", "cop_name", "dxp_id", "access_id__key", "access_id__name", "pool__slug"]
    list_select_related = ["access_id", "pool"]

    def get_fieldsets(self, request, obj=None):
        owner = ["owner_display"] if obj is not None else ["access_id", "pool"]
        return [
            (_("Whose declarations"), {"fields": owner, "description": _(
                "A card pool's registration serves every access ID signing through the pool (a pool is one "
                "enterprise's); an access ID's own serves its declarations signed with a single card.")}),
            (_("BaseTransfer (who transmits)"), {"fields": ["cop_code", "cop_name", "dxp_id"]}),
            (_("Defaults of the documents"), {"fields": ["ebp_code", "ebp_name", "ebc_code", "ebc_name"]}),
            (_("Customs exchange server"), {"fields": ["server_url"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return ["owner_display"] if obj is not None else []

    @admin.display(description=gettext_lazy("for"))
    def owner_display(self, obj: Registration) -> str:
        return obj.owner_text

    @admin.display(description=gettext_lazy("exchange server"), ordering="server_url")
    def server_display(self, obj: Registration):
        return format_html("<code>{}</code>", obj.server_url) if obj.server_url else "CUSTOMS_CEB_SERVER"

    def save_model(self, request, obj, form, change):
        values = {name: form.cleaned_data.get(name, "") or "" for name in REGISTRATION_FIELDS}
        owner = {"access_id": obj.access_id} if obj.access_id_id else {"pool": obj.pool}
        saved, _, _ = registration_set(**owner, context=admin_change_context(request), **values)
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        registration_delete(registration=obj, context=admin_change_context(request))

    def delete_queryset(self, request, queryset):
        for registration in queryset:
            registration_delete(registration=registration, context=admin_change_context(request))


# --- declarations ----------------------------------------------------------------------------------------


class WaitingFilter(admin.SimpleListFilter):
    title = gettext_lazy("waiting")
    parameter_name = "waiting"

    def lookups(self, request, model_admin):
        return [("queued", _("signed, queued for the exchange")), ("receipt", _("submitted, no receipt yet"))]

    def queryset(self, request, queryset):
        if self.value() == "queued":
            return queryset.filter(status=Declaration.SIGNED, submissions__status="pending").distinct()
        if self.value() == "receipt":
            return queryset.filter(status=Declaration.SUBMITTED, last_receipt_at__isnull=True)
        return queryset


@admin.register(Declaration)
class DeclarationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "status_display", "type_display", "reference_display", "access_display", "return_status",
                    "created_display", "submitted_display", "receipt_display"]
    list_display_links = ["id", "reference_display"]
    list_filter = ["status", "message_type", WaitingFilter, ("access_id", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["=order_no", "=cop_no", "=invt_no", "=pre_no", "=pay_transaction_id", "=logistics_no", "=guid",
                     "=head_guid", "=request_id"]
    search_help_text = gettext_lazy(
        "An order number (orderNo), copNo, invtNo, preNo, payment or waybill number, a guid or request ID.")
    list_select_related = ["access_id"]
    list_per_page = 50
    actions = ["resubmit_selected"]
    detail_template = "admin/declarations/declaration/detail.html"

    class Media:
        css = {"all": ["xmlstore/admin.css", "declarations/admin.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).defer("data", "original_xml")

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_display(self, obj: Declaration):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=gettext_lazy("type"), ordering="message_type")
    def type_display(self, obj: Declaration):
        return format_html('<span title="{}">{}</span>', obj.get_message_type_display(), obj.message_type[3:6])

    @admin.display(description=gettext_lazy("created"), ordering="created_at")
    def created_display(self, obj: Declaration):
        return _when(obj.created_at)

    @admin.display(description=gettext_lazy("submitted"), ordering="submitted_at")
    def submitted_display(self, obj: Declaration):
        return _when(obj.submitted_at)

    @admin.display(description=gettext_lazy("last receipt"), ordering="last_receipt_at")
    def receipt_display(self, obj: Declaration):
        return _when(obj.last_receipt_at)

    @admin.display(description=gettext_lazy("reference"), ordering="order_no")
    def reference_display(self, obj: Declaration) -> str:
        return obj.reference

    @admin.display(description=gettext_lazy("access ID"), ordering="access_id__name")
    def access_display(self, obj: Declaration):
        return format_html('{} <code class="xml-access-key">{}</code>', obj.access_id.name, obj.access_id.key)

    def has_resubmit_permission(self, request) -> bool:
        return request.user.has_perm("declarations.resubmit_declaration")

    # --- the detail page -------------------------------------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [path("<path:object_id>/resubmit/", self.admin_site.admin_view(self.resubmit_view),
                     name="%s_%s_resubmit" % info), *super().get_urls()]

    def _declaration_or_404(self, request, object_id) -> Declaration:
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            return Declaration.objects.select_related("access_id", "document", "registration").get(pk=unquote(object_id))
        except (Declaration.DoesNotExist, ValueError, TypeError):
            raise Http404("No such declaration.") from None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """A detail page instead of a form: the timeline, the signed XML beside the receipts."""
        declaration = self._declaration_or_404(request, object_id)
        if request.method not in ("GET", "HEAD"):
            raise PermissionDenied
        html, truncated = xml_highlighted(declaration.document.content)
        receipts = [{"row": r, "badge": status_badge(r.outcome, receipt_outcome(r.return_status)[1])}
                    for r in selectors.declaration_receipts(declaration)]
        submission = selectors.declaration_submission(declaration)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "original": declaration,
            "declaration": declaration,
            "title": f"{declaration.message_type} {declaration.reference}",
            "status": status_badge(declaration.status, declaration.get_status_display()),
            "timeline": selectors.declaration_timeline(declaration),
            "receipts": receipts,
            "receipt_type": RECEIPTS[declaration.message_type][0],
            "submission": submission,
            "xml_html": html,
            "xml_truncated": truncated,
            "xml_size": human_size(declaration.document.size),
            "highlight_css": highlight_css(),
            "document_url": reverse("admin:xmlstore_xmldocument_change", args=[declaration.document_id]),
            "can_resubmit": self.has_resubmit_permission(request) and declaration.status in RESUBMITTABLE,
            "resubmit_url": reverse("admin:declarations_declaration_resubmit", args=[declaration.pk]),
            "has_view_permission": True,
            "media": self.media,
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.detail_template, context)

    def resubmit_view(self, request, object_id):
        if request.method != "POST":
            raise PermissionDenied
        if not self.has_resubmit_permission(request):
            raise PermissionDenied
        declaration = self._declaration_or_404(request, object_id)
        self._resubmit(request, declaration)
        return HttpResponseRedirect(reverse("admin:declarations_declaration_change", args=[declaration.pk]))

    def _resubmit(self, request, declaration: Declaration) -> bool:
        try:
            declaration_resubmit(declaration=declaration, context=admin_change_context(request))
        except DeclarationError as exc:
            self.message_user(request, _("%(declaration)s: not re-submitted: %(error)s")
                              % {"declaration": declaration, "error": exc}, messages.ERROR)
            return False
        except UKeyError as exc:
            self.message_user(request, _("%(declaration)s: not re-submitted, the card could not sign: %(error)s")
                              % {"declaration": declaration, "error": exc.message}, messages.ERROR)
            return False
        self.message_user(request, _("%(declaration)s: re-submitted; it is on its way to the exchange server.")
                          % {"declaration": declaration}, messages.SUCCESS)
        return True

    @admin.action(description=gettext_lazy("Re-submit the selected declarations (after a fix)"))
    def resubmit_selected(self, request, queryset):
        if not self.has_resubmit_permission(request):
            raise PermissionDenied
        for declaration in queryset.select_related("access_id", "document")[:50]:
            self._resubmit(request, declaration)

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not self.has_resubmit_permission(request):
            actions.pop("resubmit_selected", None)
        return actions


class MatchedFilter(admin.SimpleListFilter):
    title = gettext_lazy("matched")
    parameter_name = "matched"

    def lookups(self, request, model_admin):
        return [("no", _("matches no declaration")), ("yes", _("matched"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(declaration__isnull=True)
        if self.value() == "yes":
            return queryset.filter(declaration__isnull=False)
        return queryset


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "outcome_display", "receipt_type", "return_status", "info_display", "declaration_link",
                    "return_time", "received_at"]
    list_filter = [MatchedFilter, "outcome", "receipt_type"]
    search_fields = ["return_info", "=declaration__order_no", "=declaration__cop_no", "=declaration__guid"]
    readonly_fields = ["receipt_type", "outcome", "return_status", "return_info", "return_time", "declaration_link",
                       "matched_by", "dxp_id", "server_url", "record", "received_at"]
    fields = readonly_fields
    list_select_related = ["declaration"]

    class Media:
        css = {"all": ["declarations/admin.css"]}

    @admin.display(description=gettext_lazy("outcome"), ordering="outcome")
    def outcome_display(self, obj: Receipt):
        return status_badge(obj.outcome, obj.get_outcome_display())

    @admin.display(description=gettext_lazy("returnInfo"))
    def info_display(self, obj: Receipt) -> str:
        return obj.return_info[:120]

    @admin.display(description=gettext_lazy("declaration"))
    def declaration_link(self, obj: Receipt):
        if obj.declaration_id is None:
            return format_html('<span class="decl-unmatched">{}</span>', _("matches no declaration"))
        return format_html('<a href="{}">{}</a>', reverse("admin:declarations_declaration_change",
                                                          args=[obj.declaration_id]), obj.declaration)
