"""`/api/v1/xml-documents`: list, store, read, soft-delete XML documents.

An access ID sees its own documents; with the `xml_read_all` scope it reads everyone's
(it still deletes only its own). Someone else's document answers 404, not 403, so that
document ids do not reveal what exists."""

from __future__ import annotations

from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from api.base import SignedAPIView
from api.fields import StrictCharField
from api.serializers import XmlTextField
from api.views import ERRORS
from audit.services import data_digest
from core.dbthread import db_sync_to_async
from core.errors import invalid_request, not_found
from xmlstore.models import XmlDocument
from xmlstore.selectors import xml_documents_filter, xml_documents_visible
from xmlstore.services import xml_document_delete, xml_document_write

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


class DocumentSerializer(serializers.ModelSerializer):
    access_id = serializers.CharField(source="access_id.key")
    path = serializers.CharField()

    class Meta:
        model = XmlDocument
        fields = [
            "id", "directory", "filename", "path", "version", "sha256", "size", "message_type", "signed", "cert_no",
            "signature_method", "digest_value", "signed_at", "device", "access_id", "request_id", "created_at",
            "updated_at",
        ]


class DocumentDetailSerializer(DocumentSerializer):
    xml = serializers.CharField(source="content")
    original_xml = serializers.CharField(source="original_content", help_text="The unsigned original (signed only).")
    signature_value = serializers.CharField()
    versions = serializers.SerializerMethodField()

    class Meta(DocumentSerializer.Meta):
        fields = DocumentSerializer.Meta.fields + ["signature_value", "xml", "original_xml", "versions"]

    def get_versions(self, document) -> list[dict]:
        return [
            {"version": v.version, "sha256": v.sha256, "size": v.size, "signed": v.signed, "cert_no": v.cert_no,
             "written_at": v.written_at.isoformat(), "replaced_at": v.replaced_at.isoformat()}
            for v in document.versions.all()
        ]


class DocumentCreateSerializer(serializers.Serializer):
    filename = StrictCharField(help_text="File name; .xml is added when missing.")
    xml = XmlTextField(help_text="Well-formed XML (no DOCTYPE).")
    directory = StrictCharField(required=False, allow_blank=True, default="", help_text="Logical folder.")


class DocumentPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    pages = serializers.IntegerField()
    results = DocumentSerializer(many=True)


class DeletedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    deleted = serializers.BooleanField()
    deleted_at = serializers.DateTimeField()
    request_id = serializers.CharField()


MAX_PAGE = 1_000_000
MAX_ID = 2**63 - 1  # the id column's range (PostgreSQL bigint)


def _positive_int(value: str | None, *, name: str, default: int, maximum: int) -> int:
    if value in (None, ""):
        return default
    # isascii: str.isdigit() also accepts "²" and "٣", which int() refuses or misreads; the
    # length first, so a thousand-digit number is never converted.
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(maximum))) \
            or not 1 <= int(value) <= maximum:
        raise invalid_request(f"{name} must be a whole number from 1 to {maximum}", {name: ["invalid"]})
    return int(value)


def _text_param(value: str | None, *, name: str) -> str | None:
    """A query text: no NUL or other control character (no column holds them)."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise invalid_request(f"{name} must not contain control characters", {name: ["invalid"]})
    return value


def _bool_param(value: str | None, *, name: str) -> bool | None:
    if value in (None, ""):
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise invalid_request(f"{name} must be true or false", {name: ["invalid"]})


READ_SCOPES = ("xml_read", "xml_read_all")


class XmlDocumentListView(SignedAPIView):
    required_scopes = {"GET": READ_SCOPES, "POST": ("xml_write",)}

    @extend_schema(
        description=gettext_lazy(
            "The calling access ID's stored XML documents (everyone's with `xml_read_all`), newest first, without "
            "their content: filter by folder, file name, signed or not, or text in the name or content (an order "
            "number). Scope `xml_read`."),
        operation_id="xml_documents_list",
        parameters=[
            OpenApiParameter("directory", str, description="Exact folder (empty: the top folder)."),
            OpenApiParameter("filename", str, description="Exact file name (.xml may be left out)."),
            OpenApiParameter("signed", bool),
            OpenApiParameter("q", str, description="Text in the file name or the content, e.g. an order number."),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description=f"At most {MAX_PAGE_SIZE}; default {DEFAULT_PAGE_SIZE}."),
        ],
        responses={200: DocumentPageSerializer, **ERRORS},
    )
    async def get(self, request):
        params = request.query_params
        page = _positive_int(params.get("page"), name="page", default=1, maximum=MAX_PAGE)
        size = _positive_int(params.get("page_size"), name="page_size", default=DEFAULT_PAGE_SIZE,
                             maximum=MAX_PAGE_SIZE)
        signed = _bool_param(params.get("signed"), name="signed")
        client = request.user

        def query():
            documents = xml_documents_filter(
                xml_documents_visible(access_pk=client.access.pk, read_all=client.has_scope("xml_read_all")),
                directory=_text_param(params.get("directory"), name="directory"),
                filename=_text_param(params.get("filename"), name="filename"),
                signed=signed,
                q=_text_param(params.get("q"), name="q"),
            ).defer("content", "original_content", "signature_value")
            count = documents.count()
            rows = list(documents.order_by("directory", "filename", "pk")[(page - 1) * size: page * size])
            return count, DocumentSerializer(rows, many=True).data

        count, results = await db_sync_to_async(query)()
        return Response({"count": count, "page": page, "page_size": size, "pages": -(-count // size),
                         "results": results})

    @extend_schema(
        request=DocumentCreateSerializer, responses={201: DocumentSerializer, **ERRORS},
        description=gettext_lazy(
            "Store an XML document under a folder and file name. Writing a name that exists keeps the old content "
            "as a version. The XML is parsed defused (no DOCTYPE) and is not signed here: use /api/v1/sign/xml. "
            "Scope `xml_write`."),
    )
    async def post(self, request):
        serializer = DocumentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        request.audit["data_sha256"] = data_digest(values["xml"])

        def store():
            document = xml_document_write(
                access_id=request.user.access.pk, directory=values["directory"], filename=values["filename"],
                content=values["xml"], request_id=request.request_id, source="api",
            )
            request.audit["details"] = {"document_id": document.pk, "path": document.path,
                                        "version": document.version}
            return DocumentSerializer(document).data

        data = await db_sync_to_async(self.commit_with_audit)(request, store, status_code=201)
        return Response(data, status=201)


class XmlDocumentDetailView(SignedAPIView):
    required_scopes = {"GET": READ_SCOPES, "DELETE": ("xml_write",)}
    request_line_bound = ("DELETE",)  # a GET's headers must not delete the document

    def _document(self, request, pk: int, *, for_delete: bool) -> XmlDocument:
        client = request.user
        read_all = client.has_scope("xml_read_all") and not for_delete
        if pk > MAX_ID:
            raise not_found(f"no XML document {pk}")
        document = xml_documents_visible(access_pk=client.access.pk, read_all=read_all).filter(pk=pk).first()
        if document is None:
            raise not_found(f"no XML document {pk}")
        request.audit["details"] = {"document_id": document.pk, "path": document.path}
        return document

    @extend_schema(
        operation_id="xml_documents_retrieve", responses={200: DocumentDetailSerializer, **ERRORS},
        description=gettext_lazy(
            "One stored document with its content (signed and unsigned original when it was signed here) and its "
            "earlier versions. Scope `xml_read` (another access ID's document: `xml_read_all`)."),
    )
    async def get(self, request, pk: int):
        def read():
            document = self._document(request, pk, for_delete=False)
            return DocumentDetailSerializer(document).data

        return Response(await db_sync_to_async(read)())

    @extend_schema(
        responses={200: DeletedSerializer, **ERRORS},
        description=gettext_lazy(
            "Delete one of the calling access ID's documents: a soft delete, the document and its versions stay "
            "for administrators. Scope `xml_write`."),
    )
    async def delete(self, request, pk: int):
        def delete():
            document = xml_document_delete(
                document=self._document(request, pk, for_delete=True), request_id=request.request_id
            )
            return DeletedSerializer({"id": document.pk, "deleted": True, "deleted_at": document.deleted_at,
                                      "request_id": request.request_id}).data

        return Response(await db_sync_to_async(self.commit_with_audit)(request, delete))
