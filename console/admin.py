"""The audit log in the admin: a read-only, filterable history of every request and change,
an event page linking to the access ID and the XML document involved, a CSV export of the
filtered list streamed row by row, and the operations dashboard (console/dashboard.py).

Strictly read-only: nobody adds, changes or deletes an event here (no delete action
either); people with view_auditevent look. Built for large tables: the list counts
cheaply (no full count; PostgreSQL's estimate when nothing is filtered), filters offer
bounded choices, the search matches request id / certNo / data digest exactly or by
prefix on their indexes, and the export never holds more than a chunk of rows."""

from __future__ import annotations

import csv
import datetime
import json
from typing import Any, Iterator

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit.display import FAILED_OUTCOMES, outcome_badge
from audit.models import AuditEvent
from core.admin_mixins import ReadOnlyAdminMixin
from core.datetimes import datetime_display

from . import dashboard

CHAIN_FIELDS = ("seq", "prev_hash", "hash")
CHOICES_LIMIT = 50  # distinct values offered by a filter
CHOICES_TTL = 300  # seconds the distinct values are cached
ESTIMATE_ABOVE = 100_000  # unfiltered lists larger than this show PostgreSQL's row estimate
SEARCH_PREFIX_MIN = 6  # shorter terms match exactly only
EXPORT_CHUNK = 2000  # rows per database round trip
EXPORT_FLUSH = 500  # CSV rows per streamed piece


def model_fields() -> set[str]:
    return {f.name for f in AuditEvent._meta.get_fields()}


def chain_fields() -> list[str]:
    """The hash-chain columns, when the model has them."""
    names = model_fields()
    return [f for f in CHAIN_FIELDS if f in names]


def _distinct_values(field: str) -> list[str]:
    """Up to CHOICES_LIMIT distinct non-empty values of an indexed column, cached for a
    while (the index is read, not the table, but on millions of rows even that is not free)."""
    key = f"audit:filter-choices:{field}"
    try:
        values = cache.get(key)
    except Exception:  # the cache is an optimisation here
        values = None
    if values is None:
        values = list(AuditEvent.objects.exclude(**{field: ""}).order_by(field).values_list(field, flat=True)
                      .distinct()[:CHOICES_LIMIT])
        try:
            cache.set(key, values, CHOICES_TTL)
        except Exception:
            pass
    return values


# --- filters ------------------------------------------------------------------------------------


def _parse_moment(value: str, *, end: bool) -> datetime.datetime:
    """`YYYY-MM-DD` (the whole day: from its start, or up to its end) or `YYYY-MM-DDTHH:MM[:SS]`,
    in the active time zone."""
    tz = timezone.get_current_timezone()
    try:
        if "T" in value or " " in value:
            moment = datetime.datetime.fromisoformat(value.replace(" ", "T"))
            return moment if timezone.is_aware(moment) else timezone.make_aware(moment, tz)
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise IncorrectLookupParameters(_("not a date: %(value)s") % {"value": repr(value)}) from None
    if end:
        day += datetime.timedelta(days=1)
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min), tz)


class CreatedRangeFilter(admin.ListFilter):
    """From / to: two date inputs (a date and time are accepted too, e.g. from the dashboard's
    links). `to` includes its whole day."""

    title = gettext_lazy("date range")
    template = "admin/audit/date_range_filter.html"
    FROM, TO = "created_from", "created_to"

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        for name in (self.FROM, self.TO):
            if name in params:
                value = params.pop(name)[-1].strip()
                if value:
                    self.used_parameters[name] = value

    def has_output(self):
        return True

    def expected_parameters(self):
        return [self.FROM, self.TO]

    def queryset(self, request, queryset):
        start, end = self.used_parameters.get(self.FROM), self.used_parameters.get(self.TO)
        if start:
            queryset = queryset.filter(created_at__gte=_parse_moment(start, end=False))
        if end:
            queryset = queryset.filter(created_at__lt=_parse_moment(end, end=True))
        return queryset

    def choices(self, changelist):
        def field(name):
            value = self.used_parameters.get(name, "")
            return value, "datetime-local" if "T" in value else "date"

        (start, start_type), (end, end_type) = field(self.FROM), field(self.TO)
        yield {
            "selected": bool(self.used_parameters),
            "from": start, "from_type": start_type, "to": end, "to_type": end_type,
            "hidden": [(k, v) for k, values in changelist.filter_params.items() if k not in (self.FROM, self.TO)
                       for v in values],
            "clear_url": changelist.get_query_string(remove=[self.FROM, self.TO]),
        }


class ValueFilter(admin.SimpleListFilter):
    """A filter on one column whose offered choices are bounded: a value given in the URL
    that is not among them is offered too (a filter without choices would be dropped by
    the changelist, and with it the filtering)."""

    def choices_for(self, request, model_admin) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        choices = list(self.choices_for(request, model_admin))
        value = self.value()
        if value and value not in {str(v) for v, _label in choices}:
            choices.append((value, value))
        return choices


class OutcomeFilter(ValueFilter):
    title = gettext_lazy("outcome")
    parameter_name = "outcome"
    FAILED = FAILED_OUTCOMES

    def choices_for(self, request, model_admin):
        return [(self.FAILED, _("Any failure")), *((v, v) for v in _distinct_values("outcome"))]

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.FAILED:
            return queryset.exclude(outcome=AuditEvent.OK)
        if value:
            return queryset.filter(outcome=value)
        return queryset


class AccessKeyFilter(ValueFilter):
    """By the access ID as claimed (the indexed `access_key`): also finds refused requests
    that named it before it was identified, and unknown IDs given in the URL."""

    title = gettext_lazy("access ID")
    parameter_name = "access"

    def choices_for(self, request, model_admin):
        from accessids.models import AccessId

        rows = AccessId.objects.order_by("name").values_list("key", "name")[:200]
        return [(key, f"{name} ({key})") for key, name in rows]

    def queryset(self, request, queryset):
        return queryset.filter(access_key=self.value()) if self.value() else queryset


class DeviceFilter(ValueFilter):
    title = gettext_lazy("card device")
    parameter_name = "device"

    def choices_for(self, request, model_admin):
        from signing.models import CardDevice

        return [(slug, name or slug) for slug, name in CardDevice.objects.order_by("slug").values_list("slug", "name")
                [:CHOICES_LIMIT]]

    def queryset(self, request, queryset):
        return queryset.filter(device=self.value()) if self.value() else queryset


class ProfileFilter(ValueFilter):
    """By the client profile a request came through (native, gys, x-signature, cp-md5, ...)."""

    title = gettext_lazy("client profile")
    parameter_name = "profile"

    def choices_for(self, request, model_admin):
        from accessids.profiles import AUDIT_PROFILES

        return [(name, name) for name in AUDIT_PROFILES]

    def queryset(self, request, queryset):
        return queryset.filter(profile=self.value()) if self.value() else queryset


class EndpointFilter(ValueFilter):
    title = gettext_lazy("endpoint")
    parameter_name = "endpoint"

    def choices_for(self, request, model_admin):
        return [(v, v) for v in _distinct_values("endpoint")]

    def queryset(self, request, queryset):
        return queryset.filter(endpoint=self.value()) if self.value() else queryset


# --- counting ------------------------------------------------------------------------------------


class AuditPaginator(Paginator):
    """Counts exactly, except the whole unfiltered table on PostgreSQL when it is large:
    there the planner's estimate (pg_class.reltuples) saves a full scan on every page."""

    estimated = False

    @cached_property
    def count(self):
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            connection = connections[queryset.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                   [connection.ops.quote_name(queryset.model._meta.db_table)])
                    row = cursor.fetchone()
                if row and row[0] >= ESTIMATE_ABOVE:
                    self.estimated = True
                    return int(row[0])
        return super().count


# --- CSV export --------------------------------------------------------------------------------


class _Echo:
    """csv.writer's file: hands each formatted line back instead of storing it."""

    def write(self, value: str) -> str:
        return value


EXPORT_COLUMNS = [  # (CSV header, queryset column)
    ("time", "created_at"), ("event_type", "event_type"), ("outcome", "outcome"), ("http_status", "http_status"),
    ("access_id", "access_key"), ("access_id_name", "access_id__name"), ("endpoint", "endpoint"),
    ("device", "device"), ("cert_no", "cert_no"), ("data_sha256", "data_sha256"), ("duration_ms", "duration_ms"),
    ("client_ip", "client_ip"), ("request_id", "request_id"), ("source", "source"), ("profile", "profile"), ("actor", "actor_name"),
    ("secret_version", "secret_version"), ("message", "message"), ("details", "details"), ("event_id", "id"),
]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_columns() -> list[tuple[str, str]]:
    return EXPORT_COLUMNS + [(name, name) for name in chain_fields()]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return timezone.localtime(value).isoformat(timespec="milliseconds")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # a spreadsheet must not run text a client sent as a formula
    return value


def csv_rows(queryset: QuerySet) -> Iterator[bytes]:
    """The events as UTF-8 CSV (with a BOM, so that Excel reads the encoding), in pieces of
    EXPORT_FLUSH rows, read EXPORT_CHUNK rows at a time. On PostgreSQL inside one read
    transaction: a plain server-side cursor (not WITH HOLD, which would first copy the whole
    result on the server) and one consistent snapshot."""
    columns = export_columns()
    writer = csv.writer(_Echo())

    def rows() -> Iterator[bytes]:
        yield b"\xef\xbb\xbf" + writer.writerow([header for header, _column in columns]).encode("utf-8")
        piece: list[str] = []
        for values in queryset.values_list(*(column for _header, column in columns)).iterator(chunk_size=EXPORT_CHUNK):
            piece.append(writer.writerow([_cell(v) for v in values]))
            if len(piece) >= EXPORT_FLUSH:
                yield "".join(piece).encode("utf-8")
                piece = []
        if piece:
            yield "".join(piece).encode("utf-8")

    if connections[queryset.db].vendor == "postgresql":
        with transaction.atomic(using=queryset.db):
            yield from rows()
    else:  # SQLite: no long write-locking transaction; its cursor is read lazily anyway
        yield from rows()


class AsyncPieces:
    """The same pieces for an ASGI server, each read in the request's database thread (a
    plain iterator would be read completely into memory by Django's ASGI handler first).
    `close()` is registered by StreamingHttpResponse and called by the handler, in that same
    thread, when the response ends, also when the client went away: the read transaction
    and its cursor end there."""

    def __init__(self, pieces: Iterator[bytes]):
        self.pieces = pieces

    def __aiter__(self):
        return self._run()

    async def _run(self):
        step = sync_to_async(lambda: next(self.pieces, None), thread_sensitive=True)
        while (piece := await step()) is not None:
            yield piece

    def close(self) -> None:
        self.pieces.close()


# --- the admin ---------------------------------------------------------------------------------


def event_label(event: AuditEvent) -> str:
    return f"{datetime_display(event.created_at)} {event.event_type} {event.outcome}"


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["time_display", "event_type_display", "outcome_display", "access_display", "profile", "endpoint",
                    "device", "cert_no", "duration_display", "client_ip"]
    list_display_links = ["time_display"]
    list_filter = [CreatedRangeFilter, "event_type", OutcomeFilter, AccessKeyFilter, ProfileFilter, DeviceFilter,
                   EndpointFilter]
    date_hierarchy = "created_at"
    search_fields = ["request_id", "cert_no", "data_sha256"]  # matched by get_search_results below
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    list_select_related = ["access_id"]
    sortable_by = ["time_display"]  # the created_at index; other orders would sort millions of rows
    paginator = AuditPaginator
    actions = None
    change_list_template = "admin/audit/auditevent/change_list.html"
    change_form_template = "admin/audit/auditevent/change_form.html"

    @property
    def search_help_text(self) -> str:
        return _("A request ID, a certNo or the SHA-256 of signed data: the whole value, or its first %(count)s or "
                 "more characters.") % {"count": SEARCH_PREFIX_MIN}

    # --- the list -----------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("time"), ordering="created_at")
    def time_display(self, obj: AuditEvent) -> str:
        return datetime_display(obj.created_at)

    @admin.display(description=gettext_lazy("event type"))
    def event_type_display(self, obj: AuditEvent):
        return format_html('<span title="{}">{}</span>', obj.event_type, obj.get_event_type_display())

    @admin.display(description=gettext_lazy("outcome"))
    def outcome_display(self, obj: AuditEvent):
        return outcome_badge(obj.outcome, obj.http_status, breakable=True)

    @admin.display(description=gettext_lazy("access ID"))
    def access_display(self, obj: AuditEvent):
        if not obj.access_key:
            return "—"
        if obj.access_id_id and obj.access_id:
            return format_html('{} <code class="audit-key">{}</code>', obj.access_id.name, obj.access_key)
        return format_html('<code class="audit-key" title="{}">{}</code>', _("unknown access ID"), obj.access_key)

    @admin.display(description=gettext_lazy("duration"))
    def duration_display(self, obj: AuditEvent) -> str:
        return "" if obj.duration_ms is None else f"{obj.duration_ms:.1f} ms"

    def get_search_results(self, request, queryset, search_term):
        """Each word matches a request ID, certNo or data digest exactly, or as a prefix when
        long enough (LIKE 'abc%': the columns' btree / varchar_pattern_ops indexes)."""
        terms = search_term.split()
        for term in terms:
            match = Q()
            for value in {term, term.lower()}:
                for column in ("request_id", "cert_no", "data_sha256"):
                    lookup = "startswith" if len(value) >= SEARCH_PREFIX_MIN else "exact"
                    match |= Q(**{f"{column}__{lookup}": value})
            queryset = queryset.filter(match)
        return queryset, False

    def changelist_view(self, request, extra_context=None):
        # Nine columns next to the filters: the list takes the navigation sidebar's room too.
        extra_context = {"can_view_dashboard": self.has_view_permission(request), "is_nav_sidebar_enabled": False,
                         **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    # --- the event page ------------------------------------------------------------------------

    def get_fieldsets(self, request, obj=None):
        fieldsets = [
            (None, {"fields": ["time_full", "event_type_display", "outcome_display", "http_status_display",
                               "message"]}),
            (_("Who"), {"fields": ["access_link", "actor_name", "source", "profile", "client_ip_display"]}),
            (_("Request"), {"fields": ["request_link", "endpoint", "duration_display", "secret_version"]}),
            (_("Card and signature"), {"fields": ["device", "cert_no", "data_sha256", "document_link"]}),
            (_("Details"), {"fields": ["details_pretty", "id"]}),
        ]
        chain = chain_fields()
        if chain:
            fieldsets.append((_("Hash chain"), {
                "fields": chain,
                "description": _("Each event's hash covers its content and the previous event's hash "
                                 "(python manage.py audit_verify checks the chain)."),
            }))
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        return [field for _name, options in self.get_fieldsets(request, obj) for field in options["fields"]]

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            user = request.user
            obj._can_view_access = user.has_perm("accessids.view_accessid") or user.has_perm(
                "accessids.change_accessid")
            obj._can_view_document = user.has_perm("xmlstore.view_xmldocument") or user.has_perm(
                "xmlstore.change_xmldocument")
        return obj

    @admin.display(description=gettext_lazy("time"))
    def time_full(self, obj: AuditEvent) -> str:
        when = timezone.localtime(obj.created_at)
        return f"{datetime_display(when)}.{when.microsecond // 1000:03d} ({when.tzname()}, UTC{when:%z})"

    @admin.display(description=gettext_lazy("HTTP status"))
    def http_status_display(self, obj: AuditEvent):
        return "—" if obj.http_status is None else obj.http_status

    @admin.display(description=gettext_lazy("client address"))
    def client_ip_display(self, obj: AuditEvent):
        return obj.client_ip or "—"

    @admin.display(description=gettext_lazy("access ID"))
    def access_link(self, obj: AuditEvent):
        if obj.access_id_id and obj.access_id:
            access = obj.access_id
            if getattr(obj, "_can_view_access", False):
                url = reverse("admin:accessids_accessid_change", args=[access.pk])
                return format_html('<a id="event-access-link" href="{}">{}</a> <code>{}</code>', url, access.name,
                                   access.key)
            return format_html("{} <code>{}</code>", access.name, access.key)
        if obj.access_key:
            return format_html("<code>{}</code> ({})", obj.access_key, _("claimed; no such access ID"))
        return "—"

    @admin.display(description=gettext_lazy("request ID"))
    def request_link(self, obj: AuditEvent):
        if not obj.request_id:
            return "—"
        url = reverse("admin:audit_auditevent_changelist") + "?" + urlencode({"q": obj.request_id})
        return format_html('<code>{}</code> (<a id="event-request-events" href="{}">{}</a>)',
                           obj.request_id, url, _("every event of this request"))

    @admin.display(description=gettext_lazy("XML document"))
    def document_link(self, obj: AuditEvent):
        details = obj.details if isinstance(obj.details, dict) else {}
        try:
            document_id = int(details.get("document_id"))
        except (TypeError, ValueError):
            return "—"
        from xmlstore.models import XmlDocument

        label = details.get("path") or _("document %(id)s") % {"id": document_id}
        if not XmlDocument.objects.filter(pk=document_id).exists():
            return format_html("{} ({})", label, _("id %(id)s, no longer stored") % {"id": document_id})
        if getattr(obj, "_can_view_document", False):
            url = reverse("admin:xmlstore_xmldocument_change", args=[document_id])
            version = details.get("version")
            link = format_html('<a id="event-document-link" href="{}">{}</a>', url, label)
            return format_html("{} ({})", link, _("version %(version)s") % {"version": version}) if version else link
        return format_html("{} (id {})", label, document_id)

    @admin.display(description=gettext_lazy("details"))
    def details_pretty(self, obj: AuditEvent):
        if not obj.details:
            return "—"
        text = json.dumps(obj.details, indent=2, ensure_ascii=False, sort_keys=True)
        return format_html('<pre class="audit-json" id="event-details">{}</pre>', text)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["title"] = _("Audit event")
        if obj is not None:  # in local time (the model's str() is UTC)
            context["subtitle"] = event_label(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- extra pages: export, dashboard ----------------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("export/", wrap(self.export_view), name="%s_%s_export" % info),
            path("dashboard/", wrap(self.dashboard_view), name="%s_%s_dashboard" % info),
            path("dashboard/data/", wrap(self.dashboard_data_view), name="%s_%s_dashboard_data" % info),
            *super().get_urls(),
        ]

    def get_changelist(self, request, **kwargs):
        changelist = super().get_changelist(request, **kwargs)
        if getattr(request, "_audit_export", False):
            # The export needs the filtered queryset only: no count, no page.
            return type("ExportChangeList", (changelist,), {"get_results": lambda self, request: None})
        return changelist

    def export_view(self, request):
        """The filtered list (same query string as the changelist) as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        request._audit_export = True
        try:
            queryset = self.get_changelist_instance(request).queryset
        except IncorrectLookupParameters as exc:
            return HttpResponseBadRequest(_("Invalid filter: %(error)s") % {"error": exc})
        pieces = csv_rows(queryset)
        content = AsyncPieces(pieces) if isinstance(request, ASGIRequest) else pieces
        response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="audit-events-{stamp}.csv"'
        response["X-Content-Type-Options"] = "nosniff"
        return response

    def _dashboard_allowed(self, request) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def dashboard_view(self, request):
        self._dashboard_allowed(request)
        admin_context = {**self.admin_site.each_context(request), "opts": self.opts,
                         "app_label": self.opts.app_label, "has_view_permission": True}
        return dashboard.dashboard_page(request, admin_context=admin_context)

    def dashboard_data_view(self, request):
        self._dashboard_allowed(request)
        return dashboard.dashboard_data(request)
